//! `cargo xtask test`: every test the project has, as CI runs it.
//!
//! Everything builds in the release profile, so the demo and the benchmarks reuse the same
//! artifacts instead of building the world twice.

use anyhow::Result;

use crate::cmd::{self, cargo, qemu_runner, AARCH64};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Skip the set-up step (apt, rustup targets, venv).
    #[arg(long)]
    pub no_setup: bool,
    /// Also run the device tests cross-built for aarch64 under qemu (cortex-a72 and max).
    /// Opt-in until they have been run end to end within CI's time limit (issue #5).
    #[arg(long)]
    pub qemu: bool,
}

/// CPU models the aarch64 tests run under: Raspberry Pi 4 (no fp16 arithmetic) and a recent core
/// with fp16 and dot-product instructions (Pi 5, Jetson Orin).
pub const QEMU_CPUS: &[&str] = &["cortex-a72", "max"];

pub fn run(args: &Args) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::Args { no_apt: false })?;
    }
    // 1. The whole workspace on x86, host (libtorch) included.
    cmd::run(cargo().args(["test", "--workspace", "--release", "--no-fail-fast"]))?;
    // 2. shared stays no_std on a bare-metal target.
    cmd::run(cargo().args(["check", "-p", "shared", "--target", "thumbv7em-none-eabihf", "--no-default-features"]))?;
    cmd::run(cargo().args(["check", "-p", "shared", "--target", "thumbv7em-none-eabihf", "--no-default-features", "--features", "defmt"]))?;
    // 3. The device crate, cross-built for aarch64 and run under qemu on two CPU models.
    if args.qemu {
        for cpu in QEMU_CPUS {
            cmd::run(cargo()
                .args(["test", "-p", "device", "--release", "--target", AARCH64])
                .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", qemu_runner(cpu)))?;
        }
    }
    eprintln!("all tests passed");
    Ok(())
}
