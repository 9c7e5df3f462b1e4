//! `cargo xtask setup`: installs, idempotently, everything the project needs on a fresh machine.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{self, have, output, root, venv, venv_python};

/// Debian packages: the aarch64 cross linker and sysroot, qemu-user to run aarch64 binaries,
/// the Fashion-MNIST data set, ffmpeg for camera-like streams and video sources, OpenSSH for the
/// deploy tests, Chromium for the headless test of `device live --view`'s page, libjpeg-turbo's
/// headers and library for host's JPEG decoder (scaled and partial decoding, `host/build.rs`).
pub const APT_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user",
    "dataset-fashion-mnist",
    "ffmpeg",
    "openssh-server",
    "openssh-client",
    "chromium",
    "libjpeg62-turbo-dev",
];

pub const RUST_TARGETS: &[&str] = &["aarch64-unknown-linux-gnu", "thumbv7em-none-eabihf"];

#[derive(clap::Args)]
pub struct Args {
    /// Skip the apt packages (for machines where you install them yourself).
    #[arg(long)]
    pub no_apt: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_apt {
        apt()?;
    }
    rust_targets()?;
    python()?;
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !Command::new("dpkg").args(["-s", p]).output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root_user = output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false);
    let sudo = |args: &[&str]| {
        let mut c = if root_user { Command::new(args[0]) } else { Command::new("sudo") };
        c.args(if root_user { &args[1..] } else { args }).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    cmd::run(&mut sudo(&["apt-get", "update", "-qq"]))?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    cmd::run(&mut sudo(&install)).context("installing Debian packages")
}

fn rust_targets() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    for t in RUST_TARGETS {
        if !installed.lines().any(|l| l.trim() == *t) {
            cmd::run(Command::new("rustup").args(["target", "add", t]))?;
        }
    }
    Ok(())
}

fn python() -> Result<()> {
    let requirements = root().join("tools/requirements.txt");
    let stamp = venv().join(".requirements-installed");
    let wanted = std::fs::read_to_string(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && venv_python().exists() {
        return Ok(());
    }
    if !venv_python().exists() {
        let python = if have("python3") { "python3" } else { "python" };
        cmd::run(Command::new(python).args(["-m", "venv"]).arg(venv()))?;
    }
    cmd::run(Command::new(venv_python()).args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"]).arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}
