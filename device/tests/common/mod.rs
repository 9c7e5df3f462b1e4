//! Test fixtures: models from `tools/make_test_models.py` (generated on first use with the venv
//! python, then cached) and compact files converted from them with `device::commands::convert`.
//!
//! - `DEVICE_FIXTURES`: fixture folder (default `<workspace>/target/device-fixtures`).
//! - `DEVICE_TEST_PYTHON`: python with torch/onnxruntime (default `<workspace>/.venv/bin/python`).
//!
//! Missing fixtures that cannot be made fail the tests, naming the command that makes them. The
//! aarch64 cross tests under qemu use the fixtures a native `cargo test -p device` made (or
//! `.venv/bin/python tools/make_test_models.py`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use device::commands::convert::{convert, ConvertOptions};
use shared::graph::Form;
use shared::preprocess::Preprocess;
use shared::weights::Precision;
use shared::ResNetConfig;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("DEVICE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/device-fixtures"))
}

static LOCK: Mutex<()> = Mutex::new(());

/// The fixture folder with `arch`'s files, made by `tools/make_test_models.py` with the venv
/// python when they are missing (one test process makes them, the others wait for it). Missing
/// fixtures that cannot be made fail the test with the command that makes them: a test never
/// passes without its fixtures.
pub fn fixtures(arch: &str) -> PathBuf {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = fixtures_dir();
    // Written last by tools/make_test_models.py (and the integer-ONNX parity file, added later,
    // so that fixture folders made before it regenerate).
    let marker = dir.join(format!("{arch}.exact.parity.safetensors"));
    let integer = dir.join(format!("{arch}.integer.parity.safetensors"));
    let complete = || marker.exists() && integer.exists();
    if complete() {
        return dir;
    }
    let python = std::env::var_os("DEVICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let script = workspace().join("tools/make_test_models.py");
    let made = if python.exists() {
        generate(&dir, arch, &complete, || {
            // An older folder: its marker goes first, so nobody takes it for complete meanwhile.
            let _ = std::fs::remove_file(&marker);
            let started = std::time::Instant::now();
            eprintln!("making the {arch} fixtures in {}", dir.display());
            let status = std::process::Command::new(&python)
                .arg(&script)
                .args(["--out", dir.to_str().unwrap(), "--models", arch])
                .status();
            eprintln!(
                "{arch} fixtures: {status:?} after {:.0?}",
                started.elapsed()
            );
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{} exited with {s}", script.display())),
                Err(e) => Err(format!("cannot run {}: {e}", python.display())),
            }
        })
    } else {
        Err(format!("there is no {}", python.display()))
    };
    let why = match made {
        Ok(()) if complete() => return dir,
        Ok(()) => format!("{} wrote no {}", script.display(), marker.display()),
        Err(why) => why,
    };
    panic!(
        "the {arch} test fixtures are missing in {} and could not be made ({why}). Make them with\n  \
         {} {} --out {} --models {arch}\n(`cargo xtask setup` makes the venv with torch and onnxruntime; \
         DEVICE_TEST_PYTHON names another python)",
        dir.display(),
        python.display(),
        script.display(),
        dir.display()
    )
}

/// Runs `make` unless another process is making the same fixtures: the lock file
/// `DIR/.ARCH.lock` holds the pid of the one that makes them, and the others wait until the
/// fixtures are `complete` or that process is gone (a lock left by a killed process is stale).
fn generate(
    dir: &Path,
    arch: &str,
    complete: &dyn Fn() -> bool,
    make: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = dir.join(format!(".{arch}.lock"));
    loop {
        if complete() {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                drop(f);
                let made = make();
                let _ = std::fs::remove_file(&lock);
                return made;
            }
            Err(_) => {
                let holder = std::fs::read_to_string(&lock)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                let age = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let stale = match holder {
                    Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
                    // Created but its pid not written yet, or never written.
                    None => age > std::time::Duration::from_secs(60),
                };
                if stale {
                    eprintln!("removing the stale lock {}", lock.display());
                    let _ = std::fs::remove_file(&lock);
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        }
    }
}

/// The names of the nodes of `plan` whose op is called `op`.
pub fn nodes_of<'a>(plan: &'a tract_core::prelude::TypedModel, op: &str) -> Vec<&'a str> {
    plan.nodes()
        .iter()
        .filter(|n| n.op.name() == op)
        .map(|n| n.name.as_str())
        .collect()
}

/// A command running the binary `exe`. The aarch64 cross tests run under qemu-user, which cannot
/// start another aarch64 program by itself (no binfmt_misc in containers): `cargo xtask test`
/// sets `DEVICE_TEST_RUNNER` to its qemu command line (`qemu-aarch64 -L /usr/aarch64-linux-gnu
/// -cpu max`), which then runs `exe` too.
pub fn device_command(exe: &str) -> std::process::Command {
    match std::env::var("DEVICE_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            // Found on this process's PATH, so that a test may give the child another one.
            let program = words.next().unwrap();
            let resolved = std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
                .unwrap_or_else(|| program.into());
            let mut c = std::process::Command::new(resolved);
            c.args(words).arg(exe);
            c
        }
        _ => std::process::Command::new(exe),
    }
}

pub fn config(arch: &str) -> (ResNetConfig, Preprocess) {
    match arch {
        "resnet8" => (
            ResNetConfig::resnet8().with_in_channels(1),
            Preprocess::FASHION_MNIST,
        ),
        "resnet18" => (ResNetConfig::resnet18(), Preprocess::IMAGENET_EVAL),
        "resnet50" => (ResNetConfig::resnet50(), Preprocess::IMAGENET_EVAL),
        _ => panic!("unknown fixture {arch}"),
    }
}

/// The class labels `tools/make_test_models.py` wrote into `ARCH.json`.
pub fn labels(dir: &Path, arch: &str) -> Vec<String> {
    let path = dir.join(format!("{arch}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    json["labels"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no `labels` list", path.display()))
        .iter()
        .map(|l| l.as_str().expect("labels are strings").to_string())
        .collect()
}

/// A compact weights file for `arch` (cached in the fixture folder).
pub fn compact(dir: &Path, arch: &str, form: Form, precision: Precision) -> PathBuf {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = dir.join(format!("{arch}.{form:?}.{precision:?}.evw").to_lowercase());
    if path.exists() {
        return path;
    }
    let (config, preprocess) = config(arch);
    let labels = labels(dir, arch);
    let sd = std::fs::read(dir.join(format!("{arch}.state_dict.safetensors"))).unwrap();
    let q = (precision == Precision::Int8)
        .then(|| std::fs::read(dir.join(format!("{arch}.int8.safetensors"))).unwrap());
    let opts = ConvertOptions {
        config,
        form,
        precision,
        preprocess,
        labels,
        producer: "device tests".into(),
    };
    let bytes = convert(&sd, q.as_deref(), &opts).unwrap();
    // Write then rename: other test binaries may read concurrently.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}
