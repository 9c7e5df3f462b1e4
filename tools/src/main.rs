//! `cargo xtask ...`: the project's one entry point for set-up, tests, the demo, cross-builds and
//! deployment. Everything a fresh machine needs is installed by `setup`, which the other commands
//! call first.

mod armbench;
mod cmd;
mod demo;
mod deploy;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, test, demo, cross-build and deploy the edge-vision toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the project needs: apt packages, rustup targets, the Python venv (torch 2.11.0).
    Setup(setup::Args),
    /// Run every test: workspace (host included), no_std check, aarch64 device tests under qemu.
    Test(test::Args),
    /// The main job: train a small ResNet on Fashion-MNIST, export int8, classify, report latency.
    Demo(demo::Args),
    /// Cross-build the device binary for aarch64 boards.
    Cross {
        /// Build profile.
        #[arg(long, default_value = "release")]
        profile: String,
        /// With the GPIO LED/button support (`--features gpio`).
        #[arg(long)]
        gpio: bool,
    },
    /// Cross-build device, copy it and a model to a board over SSH, switch atomically, bench there.
    Deploy(Box<deploy::Args>),
    /// Count aarch64 instructions per inference (qemu + ../shared/armcount) of the device's fp32, fp16
    /// and int8 plans and of ONNX Runtime's aarch64 wheel on Pi 4, Pi 5 and Orin CPUs: table + JSON.
    Armbench(armbench::Args),
    /// Switch a board back to the release deployed before the current one.
    Rollback(deploy::RollbackArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Cross { profile, gpio } => {
            let features: &[&str] = if gpio { &["gpio"] } else { &[] };
            cmd::cross_build_device(&profile, features).map(|path| println!("{}", path.display()))
        }
        Command::Deploy(args) => deploy::run(&args),
        Command::Rollback(args) => deploy::rollback(&args),
        Command::Armbench(args) => armbench::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
