//! The run directory as a unit (`run.json`), through the binary: a kill after every file
//! operation of a save leaves a directory that `--resume` (or, before the first commit, a plain
//! rerun) continues to bit-identical weights and metrics; `--epochs 0` is refused; a corrupted
//! file is refused by eval, export and resume, naming the file; eval refuses non-finite weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::{assert_error, assert_usage_error, host, stderr, stdout, TempDir};
use host::checkpoint::{read_safetensors, to_safetensors_bytes, FAIL_AFTER_ENV, MANIFEST_FILE};

/// A tiny synthetic run: 64 training images of 16 px, batch 32 (2 steps an epoch), 2 epochs.
fn tiny_args(out: &Path) -> Vec<String> {
    let flags = "train --dataset synthetic --image-size 16 --limit-train 64 --limit-test 32 --batch-size 32 --epochs 2 \
                 --seed 5 --lr 0.1 --warmup-epochs 0.5 --device cpu --threads 1 --workers 1 --out";
    let mut args: Vec<String> = flags.split_whitespace().map(String::from).collect();
    args.push(out.to_str().unwrap().to_string());
    args
}

fn run_host(args: &[String], fail_after: Option<u64>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
    cmd.args(args).env_remove(FAIL_AFTER_ENV);
    if let Some(n) = fail_after {
        cmd.env(FAIL_AFTER_ENV, n.to_string());
    }
    cmd.output().expect("cannot run the host binary")
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed:\n{}\n{}", stdout(o), stderr(o));
}

fn resume_args(out: &Path) -> Vec<String> {
    vec!["train".into(), "--resume".into(), "--out".into(), out.to_str().unwrap().into()]
}

/// The deterministic fields of each metrics.jsonl line (not the timings).
fn metrics(run: &Path) -> Vec<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ["epoch", "step", "train_loss", "test_loss", "test_top1", "test_top5", "lr", "loss_scale", "skipped_steps"]
                .iter()
                .map(|k| v[k].clone())
                .collect()
        })
        .collect()
}

/// Bitwise equal tensors (NaN-safe: compares the bytes).
fn same_tensors(a: &Path, b: &Path) {
    let (ta, _) = read_safetensors(a).unwrap();
    let (tb, _) = read_safetensors(b).unwrap();
    assert_eq!(ta.len(), tb.len(), "{} vs {}", a.display(), b.display());
    for (name, x) in &ta {
        let y = &tb[name];
        assert_eq!(x.size(), y.size(), "{name}");
        assert_eq!(x.kind(), y.kind(), "{name}");
        let bytes = |t: &tch::Tensor| {
            let t = t.contiguous();
            let n = t.numel();
            let mut v = vec![0u8; n * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut v, n);
            v
        };
        assert!(bytes(x) == bytes(y), "{name} differs between {} and {}", a.display(), b.display());
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The run in `dir` is the straight run's final state, with no temporary file left.
fn same_run(straight: &Path, dir: &Path) {
    same_tensors(&straight.join("checkpoint.safetensors"), &dir.join("checkpoint.safetensors"));
    same_tensors(&straight.join("train_state.safetensors"), &dir.join("train_state.safetensors"));
    assert_eq!(metrics(straight), metrics(dir), "metrics of {}", dir.display());
    let manifest = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(MANIFEST_FILE)).unwrap()).unwrap()
    };
    let (a, b) = (manifest(straight), manifest(dir));
    assert_eq!((&a["epoch"], &a["step"]), (&b["epoch"], &b["step"]));
    assert_eq!(file_names(straight), file_names(dir), "files of {}", dir.display());
}

#[test]
fn kill_after_every_file_operation_of_a_save_resumes_exactly() {
    let tmp = TempDir::new("kill-every-op");
    let straight = tmp.join("straight");
    ok(&run_host(&tiny_args(&straight), None), "the uninterrupted run");
    assert_eq!(metrics(&straight).len(), 2);

    // N = 1, 2, ... until a run completes, two at a time (2 cores, 1 libtorch thread each).
    let next = AtomicU64::new(1);
    let completed_at = AtomicU64::new(u64::MAX);
    let killed = Mutex::new(Vec::new());
    let trial = |n: u64| {
        let dir = tmp.join(&format!("kill-{n}"));
        let o = run_host(&tiny_args(&dir), Some(n));
        if o.status.success() {
            completed_at.fetch_min(n, Ordering::SeqCst);
            return;
        }
        assert!(stderr(&o).contains(FAIL_AFTER_ENV), "run {n} failed otherwise:\n{}", stderr(&o));
        let staged: Vec<String> = file_names(&dir).into_iter().filter(|f| f.ends_with(".tmp")).collect();
        if dir.join(MANIFEST_FILE).is_file() {
            if !staged.is_empty() {
                // A reader may use the directory mid-switch, and changes nothing.
                let report = tmp.join(&format!("eval-{n}.json"));
                let o = host(&[
                    "eval", "--checkpoint", dir.to_str().unwrap(), "--device", "cpu", "--threads", "1", "--limit-test",
                    "32", "--out", report.to_str().unwrap(),
                ]);
                ok(&o, &format!("eval after kill {n} (staged: {staged:?})"));
                let left: Vec<String> = file_names(&dir).into_iter().filter(|f| f.ends_with(".tmp")).collect();
                assert_eq!(left, staged, "eval changed the directory");
            }
            ok(&run_host(&resume_args(&dir), None), &format!("--resume after kill {n}"));
        } else {
            // Killed during the first save: no checkpoint yet; --resume and eval say so clearly,
            // a plain rerun starts over.
            // (It may first note the .tmp files it removed.)
            let o = run_host(&resume_args(&dir), None);
            let err = stderr(&o);
            let last = err.lines().last().unwrap_or_default();
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(last.starts_with("error: --resume: no checkpoint"), "{err}");
            assert!(err.lines().rev().skip(1).all(|l| l.starts_with("note: ")), "{err}");
            let o = host(&["eval", "--checkpoint", dir.to_str().unwrap(), "--device", "cpu"]);
            assert_error(&o, &[MANIFEST_FILE, "not a `host train` run directory"]);
            ok(&run_host(&tiny_args(&dir), None), &format!("the rerun after kill {n}"));
        }
        same_run(&straight, &dir);
        killed.lock().unwrap().push(n);
        std::fs::remove_dir_all(&dir).unwrap();
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n > completed_at.load(Ordering::SeqCst) || n > 500 {
                    break;
                }
                trial(n);
            });
        }
    });
    let end = completed_at.load(Ordering::SeqCst);
    let mut killed = killed.into_inner().unwrap();
    killed.sort();
    // Two saves of 5 files (2 operations to write, 1 to rename each) and run.json (3).
    assert_eq!(end, 2 * (5 * 3 + 3) + 1, "file operations of two saves");
    assert_eq!(killed, (1..end).collect::<Vec<_>>(), "every kill point was tried and continued");
}

#[test]
fn epochs_zero_is_refused_and_claims_no_file() {
    let tmp = TempDir::new("epochs-zero");
    for flag in ["--epochs", "--run-epochs"] {
        let out = tmp.join("run");
        let mut args: Vec<String> = tiny_args(&out).into_iter().filter(|a| a != "--epochs" && a != "2").collect();
        args.extend([flag.to_string(), "0".to_string()]);
        let o = run_host(&args, None);
        assert_usage_error(&o, &[flag, "1..=100000"]);
        assert!(!stdout(&o).contains("checkpoint:"), "{}", stdout(&o));
        assert!(!out.join("checkpoint.safetensors").exists() && !out.join(MANIFEST_FILE).exists());
    }
}

/// Changes `count` bytes spread over the tensor data of a safetensors file.
fn flip_tensor_bytes(path: &Path, count: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = 8 + header..bytes.len();
    assert!(data.len() > count);
    for i in 0..count {
        let at = data.start + i * (data.len() / count) + 1;
        bytes[at] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_files_are_refused_by_eval_export_and_resume() {
    let tmp = TempDir::new("corrupt");
    let run = tmp.join("run");
    let mut args = tiny_args(&run);
    args.extend(["--run-epochs".to_string(), "1".to_string()]);
    ok(&run_host(&args, None), "host train");
    let run_s = run.to_str().unwrap();
    let out = tmp.join("m.evw");
    let out_s = out.to_str().unwrap();
    let ck = run.join("checkpoint.safetensors");
    let good = std::fs::read(&ck).unwrap();

    // Eval of the intact run works (and the same checks pass).
    ok(&host(&["eval", "--checkpoint", run_s, "--device", "cpu"]), "eval");

    flip_tensor_bytes(&ck, 50);
    let ck_s = ck.to_str().unwrap();
    let needles = ["checkpoint.safetensors is corrupt", "CRC-32"];
    assert_error(&host(&["eval", "--checkpoint", run_s, "--device", "cpu"]), &needles);
    assert_error(&host(&["eval", "--checkpoint", ck_s, "--device", "cpu"]), &needles);
    assert_error(&host(&["export", "--checkpoint", run_s, "--out", out_s, "--int8", "--device", "cpu"]), &needles);
    assert_error(&host(&["export", "--checkpoint", ck_s, "--out", out_s, "--device", "cpu"]), &needles);
    assert_error(&run_host(&resume_args(&run), None), &needles);
    assert!(!out.exists());
    std::fs::write(&ck, &good).unwrap();

    // The optimizer state, the run state and the labels are checked as well.
    for (file, needle) in [
        ("train_state.safetensors", "train_state.safetensors is corrupt"),
        ("args.json", "args.json is corrupt"),
    ] {
        let path = run.join(file);
        let before = std::fs::read(&path).unwrap();
        let mut bytes = before.clone();
        let at = bytes.len() - 3;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_error(&run_host(&resume_args(&run), None), &[needle]);
        std::fs::write(&path, &before).unwrap();
    }
    let labels = run.join("labels.txt");
    let before = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, b"cat\n").unwrap();
    assert_error(&host(&["export", "--checkpoint", run_s, "--out", out_s, "--device", "cpu"]), &["labels.txt is corrupt"]);
    std::fs::write(&labels, &before).unwrap();

    // Restored, the run resumes.
    ok(&run_host(&resume_args(&run), None), "--resume of the restored run");

    // eval refuses non-finite weights (a bare weights file: no run.json to catch it first).
    let (map, meta) = read_safetensors(&ck).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> = map.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let w = tensors.iter_mut().find(|t| t.0 == "layer1.0.conv1.weight").unwrap();
    w.1 = w.1.index_fill(0, &tch::Tensor::from_slice(&[0i64]), f64::INFINITY);
    let bare: PathBuf = tmp.join("inf.safetensors");
    std::fs::write(&bare, to_safetensors_bytes(&tensors, meta).unwrap()).unwrap();
    let o = host(&["eval", "--checkpoint", bare.to_str().unwrap(), "--dataset", "synthetic", "--image-size", "16", "--device", "cpu"]);
    assert_error(&o, &["inf.safetensors", "layer1.0.conv1.weight", "non-finite"]);
}
