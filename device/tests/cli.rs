//! The `device` binary end to end: classify, bench --json, parity, bad model files. In the
//! aarch64 cross tests the binary runs under `DEVICE_TEST_RUNNER` (qemu-aarch64).
#![cfg(feature = "engine")] // the binary and the engine

mod common;

use std::path::Path;
use std::process::Output;

use shared::graph::Form;
use shared::weights::Precision;

/// Runs the `device` binary (through `DEVICE_TEST_RUNNER` in the qemu cross tests, see
/// `common::device_command`); a binary that cannot be spawned fails the test.
fn device(args: &[&str]) -> Output {
    let mut c = common::device_command(env!("CARGO_BIN_EXE_device"));
    c.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

/// `device COMMAND --model MODEL ARGS...`.
fn run_on(command: &str, model: &Path, args: &[&str]) -> Output {
    device(&[&[command, "--model", model.to_str().unwrap()][..], args].concat())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn image(dir: &Path, name: &str, w: u32, h: u32) -> String {
    let p = dir.join(name);
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 90])
    })
    .save(&p)
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn labels_file_or_ev_labels_names_the_classes_as_jetson_inference_prints_them() {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::Int8);
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "a.png", 28, 28);
    let classes = common::labels(&dir, "resnet8").len();
    let names: Vec<String> = (0..classes).map(|i| format!("thing-{i}")).collect();
    let labels = tmp.path().join("labels.txt");
    std::fs::write(&labels, names.join("\n") + "\n").unwrap();
    let line_ok = |out: &str| {
        // `  97.95% class #3 (thing-3)`: the index and the name from the file.
        out.lines().skip(1).all(|l| {
            let Some((_, rest)) = l.split_once("% class #") else { return false };
            let (k, name) = rest.split_once(' ').unwrap();
            name == format!("(thing-{k})")
        })
    };
    let o = run_on("classify", &model, &["--labels", labels.to_str().unwrap(), "--top-k", "3", &img]);
    let out = text(&o.stdout);
    assert!(o.status.success() && out.lines().count() == 4 && line_ok(&out), "{out}{}", text(&o.stderr));
    // $EV_LABELS, as deploy's release.env sets it for the service.
    let o = common::device_command(env!("CARGO_BIN_EXE_device"))
        .args(["classify", "--model", model.to_str().unwrap(), "--top-k", "2", &img])
        .env("EV_LABELS", &labels)
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success() && line_ok(&out), "{out}{}", text(&o.stderr));
    // A file with the wrong number of lines is an error that says so.
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    let o = run_on("classify", &model, &["--labels", labels.to_str().unwrap(), &img]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("labels.txt has 2 lines, the model has"), "{err}");
}

#[test]
fn classify_prints_top_k_with_labels_and_latency() {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::Int8);
    let tmp = tempfile::tempdir().unwrap();
    let a = image(tmp.path(), "a.png", 64, 48);
    let b = image(tmp.path(), "b.jpg", 28, 28);
    let o = run_on("classify", &model, &["--top-k", "3", &a, &b]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(
        out.lines().filter(|l| l.contains(" ms)")).count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l
                .trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit()))
            .count(),
        6,
        "{out}"
    );
    let labels = common::labels(&dir, "resnet8");
    assert!(labels.iter().any(|l| out.contains(l)), "{out}");

    let o = run_on("classify", &model, &["--json", &a]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["top"].as_array().unwrap().len(), 5);
    let sum: f64 = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["score"].as_f64().unwrap())
        .sum();
    assert!(sum <= 1.0 + 1e-5);
}

#[test]
fn bench_json_has_every_metric() {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    let o = run_on(
        "bench",
        &model,
        &["--warmup", "2", "--iters", "10", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["p50", "p90", "p99", "mean"] {
        assert!(v["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    for s in ["preprocess", "inference", "postprocess"] {
        assert!(v["stages_ms"][s]["mean"].as_f64().is_some(), "{s}: {v}");
    }
    assert!(v["throughput_fps"].as_f64().unwrap() > 0.0);
    assert!(v["load_ms"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_kib"].as_u64().unwrap() > 0);
    assert!(!v["cpu"]["features"].as_array().unwrap().is_empty());
    assert_eq!(v["iters"], 10);

    // --model-only (what instruction counts compare): the model alone, preprocessing and
    // ranking out of the loop, so their stages read 0 and the latency is the inference's.
    let o = run_on("bench", &model, &["--warmup", "1", "--iters", "5", "--model-only", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stages_ms"]["preprocess"]["mean"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["stages_ms"]["postprocess"]["mean"].as_f64(), Some(0.0), "{v}");
    let inference = v["stages_ms"]["inference"]["p50"].as_f64().unwrap();
    assert!(inference > 0.0 && v["latency_ms"]["p50"].as_f64() == Some(inference), "{v}");
    assert_eq!(v["iters"], 5);
}

#[test]
fn parity_command_reports_agreement() {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    let parity = dir.join("resnet8.parity.safetensors");
    let o = run_on(
        "parity",
        &model,
        &["--parity", parity.to_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["max_rel_err_vs_host_fp32"].as_f64().unwrap() <= 1e-4,
        "{v}"
    );
    assert_eq!(v["top1_agreement_vs_host_fp32"].as_f64().unwrap(), 1.0);
}

#[test]
fn bad_model_files_fail_with_a_clear_message_and_nonzero_exit() {
    let dir = common::fixtures("resnet8");
    let good = std::fs::read(common::compact(
        &dir,
        "resnet8",
        Form::Folded,
        Precision::F32,
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "x.png", 28, 28);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.bin",
            b"hello, not a model".to_vec(),
            "neither a compact weights file",
        ),
        (
            "truncated.evw",
            good[..good.len() / 2].to_vec(),
            "checksum mismatch",
        ),
        (
            "flipped.evw",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n / 2] ^= 1;
                b
            },
            "corrupt",
        ),
        ("empty.onnx", vec![], "ONNX"),
        (
            "broken.onnx",
            vec![0x08, 0x07, 0x12, 0xff, 0xff, 0xff],
            "ONNX",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = device(&["classify", "--model", p.to_str().unwrap(), &img]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(name) && err.contains(want),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let o = device(&["classify", "--model", "/nonexistent/model.evw", &img]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("cannot open model file /nonexistent/model.evw"));
}

#[test]
fn live_from_a_folder_as_json_lines() {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..4 {
        image(tmp.path(), &format!("{i:02}.png"), 40 + i, 30);
    }
    let o = run_on(
        "live",
        &model,
        &["--source", tmp.path().to_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["frame"], 3);
    assert!(text(&o.stderr).contains("4 frames, 0 dropped"));
}
