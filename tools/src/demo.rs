//! `cargo xtask demo`: the main job on a fresh machine.

use anyhow::Result;

use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Skip the set-up step (apt, rustup targets, venv).
    #[arg(long)]
    pub no_setup: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::Args { no_apt: false })?;
    }
    eprintln!("not yet: train (issue #3), export int8 (#4), classify and latency report (#5), live stream (#6)");
    Ok(())
}
