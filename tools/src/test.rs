//! `cargo xtask test`: every test the project has, as CI runs it.
//!
//! Everything builds in the release profile, so the demo and the benchmarks reuse the same
//! artifacts instead of building the world twice.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::{self, cargo, output, qemu_runner, root, AARCH64};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Skip the set-up step (apt, rustup targets, venv).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip the device tests cross-built for aarch64 under qemu (QEMU_CPUS).
    #[arg(long)]
    pub no_qemu: bool,
}

/// CPU models the aarch64 tests run under, one kernel family each (tract picks its kernels from
/// the CPU features): Raspberry Pi 4 (cortex-a72: NEON, no fp16 arithmetic, no dotprod),
/// Raspberry Pi 5 (cortex-a76: fp16 and dotprod, the `arm64simd_*_dot` kernels Jetson Orin's
/// A78 runs too) and `max` (fp16, dotprod and SVE: the `sve_*` kernels).
/// Each with what it stands for (the demo prints it).
pub const QEMU_CPUS: &[(&str, &str)] = &[
    ("cortex-a72", "Pi 4"),
    ("cortex-a76", "Pi 5: fp16, dotprod"),
    ("max", "fp16, dotprod, SVE"),
];

/// The fuzz targets in fuzz/ (docs/fuzzing.md), each run for [`FUZZ_SECONDS`] from its seeds.
pub const FUZZ_TARGETS: &[&str] = &["weights", "parity", "mjpeg", "raw"];
pub const FUZZ_SECONDS: u32 = 10;

pub fn run(args: &Args) -> Result<()> {
    let start = std::time::Instant::now();
    // How long each step took (CI's log says where its time goes).
    let mark = |step: &str| eprintln!("xtask test: {step} done at {:.0} s", start.elapsed().as_secs_f64());
    if !args.no_setup {
        setup::run(&setup::Args { no_apt: false })?;
        mark("set-up");
    }
    // 1. The whole workspace on x86, host (libtorch) included. The device tests make their
    //    fixtures with the venv (tools/make_test_models.py) when they are missing.
    //    With device's `gpio` feature (LED and button on real GPIO lines), so that it is built
    //    and its tests run; in one build with the rest (the feature changes libc's features, so a
    //    separate build would compile tract again).
    cmd::run(cargo().args(["test", "--workspace", "--release", "--no-fail-fast", "--features", "device/gpio"]))?;
    mark("1 (x86 workspace)");
    // 2. shared stays no_std on a bare-metal target.
    cmd::run(cargo().args(["check", "-p", "shared", "--target", "thumbv7em-none-eabihf", "--no-default-features"]))?;
    cmd::run(cargo().args(["check", "-p", "shared", "--target", "thumbv7em-none-eabihf", "--no-default-features", "--features", "defmt"]))?;
    // 3. The device crate, cross-built for aarch64 and run under qemu on each of QEMU_CPUS.
    //    The tests spawn the aarch64 `device` binary too: DEVICE_TEST_RUNNER runs it under the
    //    same qemu (containers have no binfmt_misc). The fixtures were made natively in step 1.
    //    Every device test on the first CPU model; on the others only what depends on the CPU's
    //    features (the plans, their kernels and parity: the unit tests, parity, int8_kernels).
    //    The CLI, sources, live page and hostile-input tests run the same code on any aarch64.
    if !args.no_qemu {
        for (i, &(cpu, _)) in QEMU_CPUS.iter().enumerate() {
            let mut c = cargo();
            c.args(["test", "-p", "device", "--release", "--no-fail-fast", "--target", AARCH64]);
            if i > 0 {
                c.args(["--lib", "--test", "parity", "--test", "int8_kernels"]);
            }
            cmd::run(c
                .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", qemu_runner(cpu))
                .env("DEVICE_TEST_RUNNER", qemu_runner(cpu)))?;
            mark(&format!("3 (aarch64 under qemu -cpu {cpu})"));
        }
    }
    // 4. A short coverage-guided run of each fuzz target (libFuzzer); a crash fails.
    let fuzzers = build_fuzz_targets()?;
    for target in FUZZ_TARGETS {
        cmd::run(&mut fuzz(&fuzzers, target)?)?;
    }
    mark("4 (fuzz)");
    eprintln!("all tests passed");
    Ok(())
}

/// The instrumentation `cargo fuzz build --sanitizer none --codegen-units 16` (cargo-fuzz 0.13.2)
/// gives the fuzz targets, copied from its `--verbose` rustc lines: libFuzzer's coverage counters
/// and comparison tracing, `--cfg fuzzing`, debug assertions (overflow checks in every crate).
/// Built with the same flags and target dir, `cargo fuzz run` (docs/fuzzing.md) reuses these
/// artifacts; CI needs no cargo-fuzz install (42 s of a fresh run). Stable flags only: no
/// sanitizer, which needs nightly's -Zsanitizer.
const FUZZ_RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg fuzzing",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cdebug-assertions",
    "-Ccodegen-units=16",
];

/// Builds every fuzz target (fuzz/, its own workspace) as `cargo fuzz build` does: release, for
/// the host triple given explicitly so that build scripts are not instrumented. Returns the
/// folder of the binaries.
fn build_fuzz_targets() -> Result<PathBuf> {
    let rustc = output(Command::new("rustc").arg("-vV"))?;
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("`rustc -vV` names no host triple")?
        .trim()
        .to_string();
    let fuzz = root().join("fuzz");
    cmd::run(cargo()
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(fuzz.join("Cargo.toml"))
        .args(["--target", &host, "--target-dir"])
        .arg(fuzz.join("target"))
        .env("RUSTFLAGS", FUZZ_RUSTFLAGS.join(" ")))?;
    Ok(fuzz.join("target").join(host).join("release"))
}

/// Runs fuzz target TARGET (a libFuzzer binary in `bin_dir`) for [`FUZZ_SECONDS`] from its
/// committed seeds (fuzz/seeds/TARGET); new inputs go to the ignored fuzz/corpus/TARGET, a
/// crashing input to fuzz/artifacts/TARGET/, as `cargo fuzz run` puts them.
fn fuzz(bin_dir: &Path, target: &str) -> Result<Command> {
    let corpus = root().join("fuzz/corpus").join(target);
    let artifacts = root().join("fuzz/artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut c = Command::new(bin_dir.join(target));
    c.arg(&corpus)
        .arg(root().join("fuzz/seeds").join(target))
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    Ok(c)
}
