//! `shared::preprocess` against torchvision golden vectors (`testdata/preprocess`, written by
//! `tools/gen_preprocess_vectors.py`; see its docstring for how each case is computed).
//!
//! Tolerances:
//! - Float path (torchvision v2 `resize(antialias=True)` / `resized_crop` on a float tensor, then
//!   `center_crop`, `/255`, `normalize`): max abs difference <= 1e-4 on the normalized output
//!   (measured: 1.2e-6, worst case the YUYV ImageNet case).
//! - PIL path (`Resize`, `CenterCrop`, `ToTensor`, `Normalize` on a PIL image; PIL rounds to
//!   uint8 after each pass): |rust - pil| <= one 8-bit step, `1 / 255 / std[c]` (0.0175 for the
//!   ImageNet std 0.224, 0.0111 for Fashion-MNIST), plus 1e-4, per channel. Measured max abs
//!   difference: 0.0174 = 0.99 step over the full outputs (the generator's measurement), 0.0170
//!   on the stored subsample checked here. The brief expected about 2 steps, 0.04.
//!
//! Timing: `cargo test -p shared --release --test preprocess_torchvision -- --ignored --nocapture`.

use std::path::PathBuf;

use serde_json::Value;
use shared::preprocess::{resized_crop, resized_crop_scratch_len, resized_crop_scratch_len_exact};
use shared::{Frame, PixelFormat, Preprocess};

const FLOAT_TOL: f32 = 1e-4;
/// PIL path: this many 8-bit steps (`1/255/std`) plus `FLOAT_TOL`.
const PIL_STEPS: f32 = 1.0;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/preprocess")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(name: &str) -> Vec<f32> {
    read(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn manifest() -> Value {
    serde_json::from_slice(&read("cases.json")).unwrap()
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().unwrap() as u32
}

fn f32x3(v: &Value) -> [f32; 3] {
    let a: Vec<f32> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    [a[0], a[1], a[2]]
}

/// The kept indices of one output axis (`null` in the manifest: all of them).
fn indices(v: &Value, n: usize) -> Vec<usize> {
    match v.as_array() {
        Some(a) => a.iter().map(|x| x.as_u64().unwrap() as usize).collect(),
        None => (0..n).collect(),
    }
}

/// Runs one case through the Rust code; returns the full CHW output.
fn compute(case: &Value, frame: &Frame<'_>) -> Vec<f32> {
    let mean = f32x3(&case["mean"]);
    let std = f32x3(&case["std"]);
    let channels = case["channels"].as_u64().unwrap() as u8;
    match case["op"].as_str().unwrap() {
        "preprocess" => {
            let p = Preprocess { resize: u32_of(&case["resize"]), crop: u32_of(&case["crop"]), mean, std, channels };
            p.validate().unwrap();
            let mut scratch = vec![f32::NAN; p.scratch_len(frame.width(), frame.height())];
            let mut out = vec![f32::NAN; p.output_len()];
            p.run(frame, &mut scratch, &mut out).unwrap();
            assert_eq!(p.run_to_vec(frame).unwrap(), out, "run_to_vec differs from run");
            out
        }
        "resized_crop" => {
            let b = &case["box"];
            let src_box = [u32_of(&b[0]), u32_of(&b[1]), u32_of(&b[2]), u32_of(&b[3])];
            let (ow, oh) = (u32_of(&case["out_w"]), u32_of(&case["out_h"]));
            let flip = case["flip"].as_bool().unwrap();
            let n = resized_crop_scratch_len_exact(src_box, ow, oh, channels);
            assert!(n <= resized_crop_scratch_len(src_box, ow, channels));
            let mut scratch = vec![f32::NAN; n];
            let mut out = vec![f32::NAN; channels as usize * (ow * oh) as usize];
            resized_crop(frame, src_box, ow, oh, flip, mean, std, channels, &mut scratch, &mut out).unwrap();
            out
        }
        op => panic!("unknown op {op}"),
    }
}

#[test]
fn matches_torchvision() {
    let m = manifest();
    let cases = m["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let (mut worst_float, mut worst_pil, mut worst_steps) = (0.0f32, 0.0f32, 0.0f32);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let format: PixelFormat = serde_json::from_value(case["format"].clone()).unwrap();
        let input = read(case["input"].as_str().unwrap());
        let frame = Frame::new(&input, u32_of(&case["width"]), u32_of(&case["height"]), format).unwrap();
        let out = compute(case, &frame);

        let shape: Vec<usize> =
            case["out_shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let (c, h, w) = (shape[0], shape[1], shape[2]);
        assert_eq!(out.len(), c * h * w, "{name}");
        let (rows, cols) = (indices(&case["rows"], h), indices(&case["cols"], w));
        let mut picked: Vec<(usize, f32)> = Vec::new();
        for ch in 0..c {
            for &y in &rows {
                for &x in &cols {
                    picked.push((ch, out[(ch * h + y) * w + x]));
                }
            }
        }

        let expected = f32s(case["expected"].as_str().unwrap());
        assert_eq!(expected.len(), picked.len(), "{name}");
        let mut err = 0.0f32;
        for (i, (&(_, got), &want)) in picked.iter().zip(&expected).enumerate() {
            assert!(got.is_finite(), "{name}: element {i} is {got}");
            err = err.max((got - want).abs());
        }
        assert!(err <= FLOAT_TOL, "{name}: max abs error {err} vs torchvision float path");
        worst_float = worst_float.max(err);

        let mut line = format!("{name:30} float {err:.2e}");
        if let Some(pil) = case["pil_expected"].as_str() {
            let pil = read(pil);
            assert_eq!(pil.len(), picked.len(), "{name}");
            let (mean, std) = (f32x3(&case["mean"]), f32x3(&case["std"]));
            let (mut e, mut steps) = (0.0f32, 0.0f32);
            for (&(ch, got), &p) in picked.iter().zip(&pil) {
                let want = (p as f32 / 255.0 - mean[ch]) / std[ch];
                let step = 1.0 / 255.0 / std[ch];
                let d = (got - want).abs();
                assert!(d <= PIL_STEPS * step + FLOAT_TOL, "{name}: {d} from the PIL pipeline (one step = {step})");
                e = e.max(d);
                steps = steps.max(d / step);
            }
            worst_pil = worst_pil.max(e);
            worst_steps = worst_steps.max(steps);
            line += &format!("   PIL {e:.4} ({steps:.2} steps)");
        }
        println!("{line}");
    }
    println!("worst: float {worst_float:.2e}, PIL {worst_pil:.4} ({worst_steps:.2} 8-bit steps)");
}

/// The presets are the constants the golden cases were computed with.
#[test]
fn presets_match_the_vectors() {
    let m = manifest();
    let find = |name: &str| m["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let as_pre = |c: &Value| Preprocess {
        resize: u32_of(&c["resize"]),
        crop: u32_of(&c["crop"]),
        mean: f32x3(&c["mean"]),
        std: f32x3(&c["std"]),
        channels: c["channels"].as_u64().unwrap() as u8,
    };
    assert_eq!(as_pre(&find("chelsea_imagenet")), Preprocess::IMAGENET_EVAL);
    assert_eq!(as_pre(&find("camera_fmnist_45x37")), Preprocess::FASHION_MNIST);
}

/// Preprocess timing for camera-sized frames (release: a few ms for 1080p RGB on x86).
#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture"]
fn timing_1080p() {
    let (w, h) = (1920u32, 1080u32);
    for format in [PixelFormat::Rgb8, PixelFormat::Yuyv, PixelFormat::Gray8] {
        let n = format.frame_len(w, h) as usize;
        let data: Vec<u8> = (0..n).map(|i| ((i * 31) ^ (i >> 11)) as u8).collect();
        let frame = Frame::new(&data, w, h, format).unwrap();
        let p = Preprocess::IMAGENET_EVAL;
        let mut scratch = vec![0.0; p.scratch_len(w, h)];
        let mut out = vec![0.0; p.output_len()];
        p.run(&frame, &mut scratch, &mut out).unwrap();
        // Wall time per run (minimum and median of 100), and the mean on-CPU time of this thread
        // (Linux schedstat; coarse per run, exact enough over 100 runs), which stays meaningful
        // on a busy machine.
        let runs = 100;
        let mut wall = Vec::new();
        let cpu0 = thread_cpu_ns();
        for _ in 0..runs {
            let t = std::time::Instant::now();
            p.run(&frame, &mut scratch, &mut out).unwrap();
            std::hint::black_box(&out);
            wall.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let cpu = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) as f64 * 1e-6 / runs as f64),
            _ => String::from("n/a"),
        };
        wall.sort_by(f64::total_cmp);
        println!(
            "{format:?} {w}x{h} -> 3x224x224 ms per frame: wall min {:.2} median {:.2}, mean on-CPU {cpu} (scratch {} KiB)",
            wall[0],
            wall[runs / 2],
            scratch.len() * 4 / 1024
        );
    }
}

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`), if available.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
