//! Running commands, the repository layout and the environment every step shares.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (tools/ lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tools/ has a parent").to_path_buf()
}

/// The project's Python virtual environment.
pub fn venv() -> PathBuf {
    root().join(".venv")
}

pub fn venv_python() -> PathBuf {
    venv().join("bin/python")
}

pub const AARCH64: &str = "aarch64-unknown-linux-gnu";
pub const QEMU_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// A `cargo` command in the workspace root with what building `host` needs: tch's build script
/// takes libtorch from the venv's torch (`LIBTORCH_USE_PYTORCH=1` with the venv first on PATH).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    with_venv(&mut c);
    c
}

/// Puts the venv first on PATH and points tch at its libtorch.
pub fn with_venv(c: &mut Command) -> &mut Command {
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{}:{path}", venv().join("bin").display()))
        .env("LIBTORCH_USE_PYTORCH", "1")
        .env("VIRTUAL_ENV", venv())
}

/// Runs `c`, echoing it, and fails with its exit status.
pub fn run(c: &mut Command) -> Result<()> {
    let shown = format!("{c:?}");
    eprintln!("\x1b[1m$ {}\x1b[0m", shown.replace('"', ""));
    let status = c.status().with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs `c` and returns its stdout.
pub fn output(c: &mut Command) -> Result<String> {
    let shown = format!("{c:?}");
    let out = c.output().with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// Whether a qemu `-cpu` model has FEAT_FP16 (f16 arithmetic).
pub fn qemu_cpu_has_fp16(cpu: &str) -> bool {
    matches!(cpu, "cortex-a55" | "cortex-a76" | "neoverse-n1" | "max")
}

/// Guest environment for qemu CPU models with FEAT_FP16. Under qemu-user /proc/cpuinfo is the x86
/// host's, and tract picks its fp16 kernels from it (device reads HWCAP, which follows -cpu):
/// tell tract what a board's /proc/cpuinfo would: its kind `a75` means fp16 + dotprod to it and
/// nothing else. Without it an f16 plan runs tract's generic f16 code (3x slower under qemu, same
/// results).
pub const TRACT_FP16_ENV: &str = "TRACT_CPU_AARCH64_KIND=a75";

/// The qemu runner for aarch64 binaries with a given CPU model.
pub fn qemu_runner(cpu: &str) -> String {
    let tract_kind = if qemu_cpu_has_fp16(cpu) { format!(" -E {TRACT_FP16_ENV}") } else { String::new() };
    format!("qemu-aarch64 -L {QEMU_SYSROOT} -cpu {cpu}{tract_kind}")
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Where cargo puts a profile's artifacts (`dev` builds land in `debug/`).
pub fn profile_dir(target: Option<&str>, profile: &str) -> PathBuf {
    let dir = if profile == "dev" { "debug" } else { profile };
    match target {
        Some(t) => target_dir().join(t).join(dir),
        None => target_dir().join(dir),
    }
}

/// Cross-builds `device` for aarch64 with `features` (e.g. `gpio`) and returns the binary's path.
pub fn cross_build_device(profile: &str, features: &[&str]) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "device", "--target", AARCH64, "--profile", profile]);
    if !features.is_empty() {
        c.args(["--features", &features.join(",")]);
    }
    run(&mut c)?;
    Ok(profile_dir(Some(AARCH64), profile).join("device"))
}
