//! End-to-end `host train` / `eval` / `info` / `bench-train` through the binary: a short run
//! learns and writes its files, exact resume, atomic checkpoints, and one clear error line for
//! bad input.

mod common;

use std::path::Path;

use common::{assert_error, fmnist, host, metrics, stderr, stdout, TempDir};
use host::checkpoint::{read_safetensors, write_atomic};

/// A small Fashion-MNIST run: 512 training and 128 test images, batch 64, 2 epochs.
fn small_run(out: &Path, extra: &[&str]) -> std::process::Output {
    let dataset = fmnist();
    let mut args = vec![
        "train", "--dataset", &dataset, "--limit-train", "512", "--limit-test", "128", "--batch-size", "64",
        "--epochs", "2", "--seed", "3", "--lr", "0.2", "--warmup-epochs", "0.5", "--device", "cpu", "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    host(&args)
}

fn same_tensors(a: &Path, b: &Path) {
    let (ta, _) = read_safetensors(a).unwrap();
    let (tb, _) = read_safetensors(b).unwrap();
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let y = &tb[name];
        assert_eq!(x.size(), y.size(), "{name}");
        let d = (x.to_kind(tch::Kind::Double) - y.to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
        assert_eq!(d, 0.0, "{name} differs by {d}");
    }
}

fn no_tmp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left-over temporary file {name}");
    }
}

#[test]
fn train_learns_resumes_exactly_and_evaluates() {
    let dir = TempDir::new("train");
    let straight = dir.join("straight");
    let o = small_run(&straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("epoch 1/2") && text.contains("epoch 2/2"), "{text}");

    // Files and metrics.
    for f in ["checkpoint.safetensors", "train_state.safetensors", "args.json", "metrics.jsonl", "labels.txt"] {
        assert!(straight.join(f).is_file(), "{f}");
    }
    no_tmp_files(&straight);
    let labels = std::fs::read_to_string(straight.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().collect::<Vec<_>>()[..2], ["T-shirt/top", "Trouser"]);
    assert_eq!(labels.lines().count(), 10);
    let m = metrics(&straight);
    assert_eq!(m.len(), 2);
    for (i, line) in m.iter().enumerate() {
        assert_eq!(line["epoch"], i + 1);
        for key in ["train_loss", "test_top1", "test_top5", "images_per_sec"] {
            assert!(line[key].as_f64().is_some_and(f64::is_finite), "{key} in {line}");
        }
    }
    let loss = |i: usize| m[i]["train_loss"].as_f64().unwrap();
    assert!(loss(1) < 10f64.ln(), "second epoch's loss {} is not below chance", loss(1));
    assert!(loss(1) < loss(0), "loss did not decrease: {} -> {}", loss(0), loss(1));
    assert!(m[1]["test_top1"].as_f64().unwrap() > 20.0, "well above chance (10%): {}", m[1]);
    let args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("args.json")).unwrap()).unwrap();
    assert_eq!(args["epoch"], 2);
    assert_eq!(args["preprocess"]["crop"], 28);
    assert_eq!(args["args"]["arch"], "resnet8");
    assert_eq!(args["config"]["in_channels"], 1);

    // Exact resume: 1 epoch, stop, resume for the second -> the same weights and metrics.
    let split = dir.join("split");
    let o = small_run(&split, &["--run-epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&split).len(), 1);
    let o = host(&["train", "--resume", "--out", split.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("epoch 2/2"), "{}", stdout(&o));
    same_tensors(&straight.join("checkpoint.safetensors"), &split.join("checkpoint.safetensors"));
    same_tensors(&straight.join("train_state.safetensors"), &split.join("train_state.safetensors"));
    let (a, b) = (metrics(&straight), metrics(&split));
    for key in ["train_loss", "test_top1", "test_top5", "test_loss"] {
        assert_eq!(a[1][key], b[1][key], "{key}");
    }
    // Resuming a run with a flag that changes the computation is refused.
    let o = host(&["train", "--resume", "--out", split.to_str().unwrap(), "--batch-size", "32", "--epochs", "3"]);
    assert_error(&o, &["--batch-size", "resumed run"]);

    // eval on the run directory reproduces the run's last test accuracy.
    let o = host(&["eval", "--checkpoint", straight.to_str().unwrap(), "--device", "cpu", "--limit-test", "128"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(straight.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["test_top1"], a[1]["test_top1"]);
    assert_eq!(eval["test_top5"], a[1]["test_top5"]);
    assert!(stdout(&o).contains("top1"));

    // A checkpoint write that fails leaves the old checkpoint intact and no temporary file:
    // a directory squatting on the temporary name makes the write fail (even as root).
    let before = std::fs::read(straight.join("checkpoint.safetensors")).unwrap();
    std::fs::create_dir(straight.join("checkpoint.safetensors.tmp")).unwrap();
    let o = host(&["train", "--resume", "--out", straight.to_str().unwrap(), "--epochs", "3"]);
    assert_error(&o, &["checkpoint.safetensors.tmp"]);
    assert_eq!(std::fs::read(straight.join("checkpoint.safetensors")).unwrap(), before);
    std::fs::remove_dir(straight.join("checkpoint.safetensors.tmp")).unwrap();
    no_tmp_files(&straight);
    // ... and the run can still be resumed from it.
    assert_eq!(metrics(&straight).len(), 2);
}

#[test]
fn write_atomic_replaces_or_keeps() {
    let dir = TempDir::new("atomic");
    let p = dir.join("f.bin");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    std::fs::create_dir(dir.join("f.bin.tmp")).unwrap();
    assert!(write_atomic(&p, b"three").is_err());
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
}

#[test]
fn amp_bf16_on_cpu_trains_without_warning_flood() {
    let dir = TempDir::new("bf16");
    let run = dir.join("run");
    let o = host(&[
        "train", "--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--batch-size", "16",
        "--epochs", "1", "--device", "cpu", "--amp", "bf16", "--channels-last", "--out", run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.to_lowercase().contains("deprecat") && !err.contains("Warning"), "stderr: {err}");
    assert_eq!(metrics(&run).len(), 1);
}

#[test]
fn bad_input_is_one_error_line() {
    let dir = TempDir::new("bad");
    let out = dir.join("run");
    let out = out.to_str().unwrap();

    let o = host(&["train", "--dataset", "fashion-mnist:/nonexistent/fmnist", "--out", out]);
    assert_error(&o, &["/nonexistent/fmnist", "does not exist"]);

    let o = host(&["train", "--dataset", "imagefolder:/nonexistent/imagenet", "--out", out]);
    assert_error(&o, &["/nonexistent/imagenet"]);

    let o = host(&["train", "--resume", "--out", out]);
    assert_error(&o, &["--resume", "no checkpoint"]);

    if !tch::Cuda::is_available() {
        let o = host(&["train", "--device", "cuda", "--dataset", "synthetic", "--out", out]);
        assert_error(&o, &["--device cuda", "no CUDA GPU"]);
        let o = host(&["bench-train", "--device", "cuda"]);
        assert_error(&o, &["no CUDA GPU"]);
    }

    // Wrong idx magic.
    let bad = dir.join("fmnist");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(bad.join(f), b"\x00\x00\x08\x07garbage").unwrap();
    }
    let o = host(&["train", "--dataset", &format!("fashion-mnist:{}", bad.display()), "--out", out]);
    assert_error(&o, &["train-images-idx3-ubyte", "not an idx file"]);

    // Empty class folder.
    let folder = dir.join("folder");
    std::fs::create_dir_all(folder.join("train/cat")).unwrap();
    std::fs::create_dir_all(folder.join("val/cat")).unwrap();
    let o = host(&["train", "--dataset", &format!("imagefolder:{}", folder.display()), "--out", out]);
    assert_error(&o, &["class folder `cat` holds no image"]);

    let o = host(&["eval", "--checkpoint", "/nonexistent/run"]);
    assert_error(&o, &["/nonexistent/run"]);
    assert!(!Path::new(out).join("checkpoint.safetensors").exists());
}

#[test]
fn info_and_bench_train() {
    let o = host(&["info", "--arch", "resnet50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("layer4.2.conv3") && text.contains("25557032 parameters"), "{text}");
    assert!(text.contains("4.1"), "ResNet-50 is about 4.1 GMACs: {text}");

    let o = host(&[
        "bench-train", "--arch", "resnet8", "--stem", "small", "--image-size", "32", "--num-classes", "10",
        "--batch-size", "8", "--warmup-steps", "1", "--steps", "3", "--device", "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in ["images_per_sec", "step_ms_p50", "step_ms_mean"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert_eq!(r["batch_size"], 8);
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["steps"], 3);
}
