//! Test fixtures: models from `tools/make_test_models.py` (generated on first use with the venv
//! python, then cached) and compact files converted from them with `device::commands::convert`.
//!
//! - `DEVICE_FIXTURES`: fixture folder (default `<workspace>/target/device-fixtures`).
//! - `DEVICE_TEST_PYTHON`: python with torch/onnxruntime (default `<workspace>/.venv/bin/python`).
//! - `DEVICE_REQUIRE_FIXTURES=1`: missing fixtures fail the tests instead of skipping them (CI).
//!
//! Under qemu (aarch64 cross tests) generate the fixtures first on the host:
//! `.venv/bin/python tools/make_test_models.py` (or a native `cargo test -p device`).
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

/// The fixture folder with `arch`'s files, generating them if needed. None (test skipped) when
/// they are missing and cannot be made, unless DEVICE_REQUIRE_FIXTURES is set.
pub fn fixtures(arch: &str) -> Option<PathBuf> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = fixtures_dir();
    // Written last by tools/make_test_models.py (and the integer-ONNX parity file, added later,
    // so that fixture folders made before it regenerate).
    let marker = dir.join(format!("{arch}.exact.parity.safetensors"));
    let integer = dir.join(format!("{arch}.integer.parity.safetensors"));
    let complete = || marker.exists() && integer.exists();
    if !complete() {
        let python = std::env::var_os("DEVICE_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv/bin/python"));
        // A lock file so parallel test binaries generate once.
        let lock = dir.join(format!(".{arch}.lock"));
        let _ = std::fs::create_dir_all(&dir);
        let mut owned = false;
        for _ in 0..1200 {
            if complete() {
                break;
            }
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
                .is_ok()
            {
                owned = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        if owned {
            // An older folder: its marker goes first, so nobody takes it for complete meanwhile.
            let _ = std::fs::remove_file(&marker);
            let status = std::process::Command::new(&python)
                .arg(workspace().join("tools/make_test_models.py"))
                .args(["--out", dir.to_str().unwrap(), "--models", arch])
                .status();
            let _ = std::fs::remove_file(&lock);
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!(
                    "could not generate fixtures with {}: {status:?}",
                    python.display()
                );
            }
        }
    }
    if complete() {
        Some(dir)
    } else if std::env::var_os("DEVICE_REQUIRE_FIXTURES").is_some() {
        panic!(
            "fixtures for {arch} are missing in {} (run tools/make_test_models.py)",
            dir.display()
        );
    } else {
        eprintln!(
            "SKIPPED: fixtures for {arch} missing in {} (run tools/make_test_models.py)",
            dir.display()
        );
        None
    }
}

/// A command running the binary `exe`. The aarch64 cross tests run under qemu-user, which cannot
/// start another aarch64 program by itself (no binfmt_misc in containers): `cargo xtask test`
/// sets `DEVICE_TEST_RUNNER` to its qemu command line (`qemu-aarch64 -L /usr/aarch64-linux-gnu
/// -cpu max`), which then runs `exe` too.
pub fn device_command(exe: &str) -> std::process::Command {
    match std::env::var("DEVICE_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut c = std::process::Command::new(words.next().unwrap());
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

/// A compact weights file for `arch` (cached in the fixture folder).
pub fn compact(dir: &Path, arch: &str, form: Form, precision: Precision) -> PathBuf {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = dir.join(format!("{arch}.{form:?}.{precision:?}.evw").to_lowercase());
    if path.exists() {
        return path;
    }
    let (config, preprocess) = config(arch);
    let labels: Vec<String> = if arch == "resnet8" {
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        vec![]
    };
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
