//! The whole pipeline across crates, with the real binaries: `host train` (a ResNet-8, one
//! short epoch on a Fashion-MNIST subset) -> `host export` (fp32, and int8 with the integer ONNX)
//! -> `device parity` on the parity files the exports wrote.
//!
//! - fp32: the device's logits within 1e-4 (relative) of the host's, same top-1.
//! - int8: the device's logits against ONNX Runtime's on the exported int8 ONNX (which `host
//!   export` ran and stored in the parity file): within one quantization step of the logits
//!   (`(max - min) / 255`) - measured: equal, bit for bit, since both compute the format's
//!   integer sums exactly - and the same top-1.
//! - int8 ONNX through tract-onnx (`device classify` on it): the compact file's top-1.
//!
//! Needs the release binaries of `host` and `device` next to this test's (`cargo test
//! --workspace --release` builds them) and the venv with onnxruntime (`cargo xtask setup`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/<profile>/`: this test runs from its `deps/` folder.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --release -p {name}, or cargo test --workspace --release)",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    let o = Command::new(bin(name)).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The last stdout line as JSON.
fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

#[test]
fn trained_exported_model_runs_on_the_device_like_the_host_and_onnx_runtime() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-to-device");
    let _ = std::fs::remove_dir_all(&dir);
    let data = std::env::var("HOST_TEST_FASHION_MNIST")
        .unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into());
    let (run_dir, data) = (dir.join("run"), format!("fashion-mnist:{data}"));
    let mut train = vec![
        "train",
        "--dataset",
        &data,
        "--out",
        run_dir.to_str().unwrap(),
    ];
    train.extend(
        "--arch resnet8 --epochs 1 --warmup-epochs 0.2 --limit-train 2500 --limit-test 200 --batch-size 50 --device cpu"
            .split_whitespace(),
    );
    run("host", &train);
    let run_dir = run_dir.to_str().unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();

    // `host export` of the run, and `device parity` of what it wrote.
    let export = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--checkpoint",
            run_dir,
            "--limit-test",
            "400",
            "--out",
            out,
        ];
        args.extend(extra);
        json(&run("host", &[&args[..], &["--json"]].concat()))
    };
    let parity = |model: &str, parity: &str| {
        json(&run(
            "device",
            &["parity", "--model", model, "--parity", parity, "--json"],
        ))
    };

    // fp32: device vs host.
    let fp32 = path("fp32.evw");
    export(&fp32, &["--no-ort"]);
    let p = parity(&fp32, &path("fp32.parity.safetensors"));
    eprintln!("fp32: {p}");
    assert!(f(&p, "max_rel_err_vs_host_fp32") <= 1e-4, "{p}");
    assert_eq!(f(&p, "top1_agreement_vs_host_fp32"), 1.0, "{p}");

    // int8: device vs ONNX Runtime on the integer ONNX.
    let (int8, onnx) = (path("int8.evw"), path("int8.onnx"));
    let r = export(&int8, &["--int8", "--onnx", &onnx]);
    let step = f(&r["ort"], "step");
    assert!(step > 0.0, "export ran no ONNX Runtime check: {r}");
    let p = parity(&int8, &path("int8.parity.safetensors"));
    let diff = f(&p, "max_abs_diff_vs_ort_int8");
    eprintln!("int8: {p}; |device - ORT| = {:.3} steps", diff / step);
    assert!(
        diff <= step,
        "device int8 vs ONNX Runtime: {} steps ({p})",
        diff / step
    );
    assert_eq!(f(&p, "top1_agreement_vs_ort_int8"), 1.0, "{p}");
    assert!(f(&p, "top1_agreement_vs_host_fp32") >= 0.95, "{p}");

    // The int8 ONNX through tract-onnx and the compact file: the same top-1 on a test image.
    let image = dir.join("item.png");
    let pixels: Vec<u8> = (0..28 * 28).map(|i| ((i * 37) % 251) as u8).collect();
    image::save_buffer(&image, &pixels, 28, 28, image::ExtendedColorType::L8).unwrap();
    let top = |model: &str| {
        let o = run(
            "device",
            &[
                "classify",
                "--model",
                model,
                "--top-k",
                "1",
                "--json",
                image.to_str().unwrap(),
            ],
        );
        json(&o)["top"][0]["class"].clone()
    };
    assert_eq!(top(&onnx), top(&int8));
}
