//! What a hostile run of `device` found (issue #19, points 1 and 5-7), each through the binary:
//! a model file rewritten while it loads (never a signal), truncated JPEGs (reported corrupt, not
//! classified), `--format mjpeg` on raw frames, a stdin producer killed mid-frame, images over the
//! decode limit (a clear error at low RSS), and the range of every numeric flag.
#![cfg(feature = "engine")] // the binary and the engine

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use device::io::decode::check_jpeg_complete;
use shared::graph::Form;
use shared::weights::Precision;

fn device() -> Command {
    common::device_command(env!("CARGO_BIN_EXE_device"))
}

fn run(args: &[&str]) -> Output {
    let mut c = device();
    c.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn model() -> String {
    let dir = common::fixtures("resnet8");
    let m = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    m.to_str().unwrap().to_string()
}

/// A JPEG with enough detail for a few kilobytes of entropy-coded data.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503);
        image::Rgb([(v >> 3) as u8, (x * 5 + y) as u8, (v >> 11) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&img, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// A clean failure: exit code 1 (or 2 for clap's usage errors), an `error: ` line, no panic,
/// no signal.
fn assert_clean_error(o: &Output, want: &[&str]) {
    let err = text(&o.stderr);
    assert_eq!(o.status.signal(), None, "killed by a signal: {err}");
    assert!(matches!(o.status.code(), Some(1 | 2)), "{:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("error: "), "{err}");
    for w in want {
        assert!(err.contains(w), "wanted `{w}` in: {err}");
    }
}

// ---- point 5: the model file changes while it loads ----

#[test]
fn a_model_file_rewritten_while_it_loads_never_kills_with_a_signal() {
    // ResNet-18: a longer load is a wider window for the rewrites. Under qemu (the aarch64
    // cross tests) loads are slow: ResNet-8, fewer of them.
    let emulated = std::env::var("DEVICE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    let (arch, loads) = if emulated { ("resnet8", 10) } else { ("resnet18", 40) };
    let dir = common::fixtures(arch);
    let good = std::fs::read(common::compact(&dir, arch, Form::Folded, Precision::F32)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.evw");
    std::fs::write(&path, &good).unwrap();
    let img = write(tmp.path(), "x.jpg", &jpeg(32, 32));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path, good) = (stop.clone(), path.clone(), good.clone());
        // Truncates the file in place (the same inode a map would see) to a few sizes and
        // writes it back whole, over and over.
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                f.set_len((good.len() * (k % 7) / 8) as u64).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
                f.write_all_at(&good, 0).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        })
    };
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..loads {
        let o = run(&["classify", "--model", path.to_str().unwrap(), &img]);
        let err = text(&o.stderr);
        assert_eq!(o.status.signal(), None, "killed by a signal: {err}");
        assert!(!err.contains("panicked"), "{err}");
        match o.status.code() {
            Some(0) => ok += 1,
            Some(1) => {
                assert!(err.starts_with("error: ") && err.contains("model.evw"), "{err}");
                failed += 1
            }
            c => panic!("exit {c:?}: {err}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("{arch}: {ok} loads succeeded, {failed} refused the changing file");
}

// ---- point 6: inputs that passed as if fine ----

#[test]
fn jpeg_completeness_is_checked_at_every_truncation() {
    let full = jpeg(48, 40);
    check_jpeg_complete(&full).unwrap();
    // Trailing bytes after the end marker are fine (cameras pad frames).
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 17]);
    check_jpeg_complete(&padded).unwrap();
    // Every prefix is truncated. The end marker is the last two bytes.
    for n in 0..full.len() - 1 {
        assert!(
            check_jpeg_complete(&full[..n]).is_err(),
            "a JPEG cut at {n} of {} bytes passed",
            full.len()
        );
    }
    // An FF D9 inside a segment (an EXIF thumbnail) does not end the image.
    let mut app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD8, 0xFF, 0xD9];
    app1.extend_from_slice(&full[2..full.len() / 2]);
    let e = check_jpeg_complete(&app1).unwrap_err();
    assert!(format!("{e}").contains("truncated"), "{e}");
}

#[test]
fn classify_reports_a_truncated_jpeg_as_corrupt() {
    let model = model();
    let tmp = tempfile::tempdir().unwrap();
    let full = jpeg(64, 48);
    let good = write(tmp.path(), "good.jpg", &full);
    let half = write(tmp.path(), "half.jpg", &full[..full.len() / 2]);
    let o = run(&["classify", "--model", &model, &good, &half]);
    // The good image is classified, the truncated one named and counted; the exit code says
    // that not every image was classified.
    assert_clean_error(&o, &["half.jpg", "truncated", "1 of 2 images"]);
    let out = text(&o.stdout);
    assert!(out.contains("good.jpg"), "{out}");
    assert!(!out.contains("half.jpg"), "{out}");
    // JSON: one object per image, the corrupt one with its error.
    let o = run(&["classify", "--model", &model, "--json", &half, &good]);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0]["error"].as_str().unwrap().contains("truncated"));
    assert!(lines[1]["top"].is_array());
}

#[test]
fn mjpeg_format_on_raw_frames_is_an_error_not_zero_frames() {
    let model = model();
    let tmp = tempfile::tempdir().unwrap();
    // Four 64x48 YUYV frames in video range (no FF byte anywhere).
    let raw: Vec<u8> = (0..64 * 48 * 2 * 4).map(|i| 16 + (i % 200) as u8).collect();
    let f = write(tmp.path(), "clip.yuyv", &raw);
    let o = run(&["live", "--model", &model, "--source", &f, "--format", "mjpeg"]);
    assert_clean_error(&o, &["no JPEG", &format!("{} bytes", raw.len())]);
}

/// Runs `device live` on the output of a producer that writes `bytes` and then kills itself with
/// SIGKILL (as a crashed ffmpeg would).
fn live_from_killed_producer(model: &str, bytes: &[u8], format: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "stream", bytes);
    let mut producer = Command::new("sh")
        .args(["-c", &format!("cat {f}; kill -9 $$")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = producer.stdout.take().unwrap();
    let mut c = device();
    c.args(["live", "--model", model, "--source", "-", "--format", format]);
    c.args(["--width", "64", "--height", "48"]);
    let o = c.stdin(Stdio::from(stdout)).output().unwrap();
    assert_eq!(producer.wait().unwrap().signal(), Some(libc::SIGKILL));
    o
}

#[test]
fn a_stdin_producer_killed_mid_frame_is_reported() {
    let model = model();
    let frame = jpeg(64, 48);
    // Two whole JPEGs and half of a third.
    let mut mjpeg = [frame.clone(), frame.clone()].concat();
    mjpeg.extend_from_slice(&frame[..frame.len() / 2]);
    let o = live_from_killed_producer(&model, &mjpeg, "mjpeg");
    assert_clean_error(&o, &["ended in the middle of MJPEG frame 2", "stopped by an error"]);
    // Raw frames: two and a half.
    let n = 64 * 48 * 2;
    let o = live_from_killed_producer(&model, &vec![100u8; n * 5 / 2], "yuyv");
    assert_clean_error(&o, &["ended in the middle of frame 2", "stopped by an error"]);
    // Killed between two frames: nothing is lost, the summary says where the stream ended.
    let o = live_from_killed_producer(&model, &vec![100u8; n * 2], "yuyv");
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("end of stream"), "{err}");
}

#[test]
fn zero_max_frames_and_zero_top_k_are_errors() {
    let model = model();
    let tmp = tempfile::tempdir().unwrap();
    let img = write(tmp.path(), "x.jpg", &jpeg(32, 32));
    let o = run(&["classify", "--model", &model, "--top-k", "0", &img]);
    assert_clean_error(&o, &["--top-k", "1..=20"]);
    let o = run(&[
        "live", "--model", &model, "--source", tmp.path().to_str().unwrap(), "--max-frames", "0",
    ]);
    assert_clean_error(&o, &["--max-frames", "0 is not in 1.."]);
}

// ---- point 1 (device): every numeric flag is range-checked up front ----

#[test]
fn numeric_flags_out_of_range_name_the_flag_and_the_range() {
    // No model is read: the check comes before anything else.
    let m = "/nonexistent.evw";
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["classify", "-m", m, "--threads", "0", "x.png"], &["--threads", "1..=256"]),
        (vec!["classify", "-m", m, "--threads", "-1", "x.png"], &["--threads"]),
        (vec!["classify", "-m", m, "--top-k", "21", "x.png"], &["--top-k", "1..=20"]),
        (vec!["classify", "-m", m, "--input-size", "0x224", "x.png"], &["--input-size", "16..=4096"]),
        (vec!["classify", "-m", m, "--input-size", "224", "x.png"], &["--input-size", "HxW"]),
        (vec!["classify", "-m", m, "--max-megapixels", "0", "x.png"], &["--max-megapixels", "1..=1024"]),
        (vec!["bench", "-m", m, "--iters", "0"], &["--iters", "1.."]),
        (vec!["bench", "-m", m, "--warmup", "-3"], &["--warmup"]),
        (vec!["live", "-m", m, "--source", "-", "--width", "0"], &["--width", "1..=16384"]),
        (vec!["live", "-m", m, "--source", "-", "--height", "99999"], &["--height", "1..=16384"]),
        (vec!["live", "-m", m, "--source", "-", "--top-k", "0"], &["--top-k", "1..=20"]),
        (vec!["live", "-m", m, "--source", "-", "--led-min-score", "1.5"], &["--led-min-score", "[0, 1]"]),
        (vec!["live", "-m", m, "--source", "-", "--led-min-score", "NaN"], &["--led-min-score"]),
        (vec!["convert", "--state-dict", m, "--arch", "resnet18", "-o", "/tmp/x", "--classes", "0"], &["--classes", "1.."]),
        (vec!["convert", "--state-dict", m, "--arch", "resnet18", "-o", "/tmp/x", "--in-channels", "2"], &["--in-channels", "1 or 3"]),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with("error: "), "{args:?}: {err}");
        for w in want {
            assert!(first.contains(w), "{args:?}: wanted `{w}` in the first line: {err}");
        }
    }
}

// ---- point 7: decode limits ----

/// A 20000x20000 grayscale PNG: 400 megapixels, about a megabyte on disk.
fn huge_png(dir: &Path) -> PathBuf {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let (w, h) = (20_000u32, 20_000u32);
    // Zeroed pages from the allocator: no memory is touched until the encoder reads them.
    let pixels = vec![0u8; (w * h) as usize];
    let p = dir.join("huge.png");
    let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    PngEncoder::new_with_quality(f, CompressionType::Fast, FilterType::NoFilter)
        .write_image(&pixels, w, h, image::ExtendedColorType::L8)
        .unwrap();
    p
}

/// Runs `args` and returns its output and the child's peak RSS in MiB (from wait4's rusage).
fn run_measured(args: &[&str], dir: &Path) -> (i32, String, f64) {
    let err_path = dir.join("stderr.txt");
    let mut c = device();
    let child = c
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status), "not a normal exit: {status:#x}");
    let err = std::fs::read_to_string(&err_path).unwrap();
    (libc::WEXITSTATUS(status), err, usage.ru_maxrss as f64 / 1024.0)
}

/// Peak RSS allowed for the refused 400-megapixel PNG (decoding it took 1,541 MiB before the
/// limit). Under qemu the measured process is the emulator, whose own code cache adds to it.
fn rss_bound() -> f64 {
    let emulated = std::env::var("DEVICE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    if emulated { 600.0 } else { 200.0 }
}

#[test]
fn a_20000x20000_png_is_refused_at_low_rss() {
    let model = model();
    let tmp = tempfile::tempdir().unwrap();
    let png = huge_png(tmp.path());
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes");
    let png = png.to_str().unwrap();
    let (code, err, rss) = run_measured(&["classify", "--model", &model, png], tmp.path());
    eprintln!("classify huge.png: exit {code}, peak RSS {rss:.0} MiB: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("huge.png") && err.contains("20000x20000 is 400.0 megapixels"), "{err}");
    assert!(err.contains("--max-megapixels"), "{err}");
    assert!(rss < rss_bound(), "peak RSS {rss:.0} MiB");
    // The folder source skips it as corrupt and classifies the rest.
    std::fs::write(tmp.path().join("small.jpg"), jpeg(40, 30)).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let (code, err, rss) = run_measured(&["live", "--model", &model, "--source", dir], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("400.0 megapixels") && err.contains("1 frames, 0 dropped"), "{err}");
    assert!(err.contains("1 corrupt skipped"), "{err}");
    assert!(rss < rss_bound(), "peak RSS {rss:.0} MiB");
}

#[test]
fn max_megapixels_applies_to_files_and_mjpeg_frames() {
    let model = model();
    let tmp = tempfile::tempdir().unwrap();
    let big = jpeg(1200, 1000);
    let f = write(tmp.path(), "big.jpg", &big);
    let o = run(&["classify", "--model", &model, "--max-megapixels", "1", &f]);
    assert_clean_error(&o, &["1200x1000 is 1.2 megapixels, above the limit of 1 megapixels"]);
    let o = run(&["classify", "--model", &model, "--max-megapixels", "2", &f]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // An MJPEG stream: the big frame is skipped and counted, the small ones classified.
    let small = jpeg(64, 48);
    let stream = [small.clone(), big, small].concat();
    let s = write(tmp.path(), "clip.mjpeg", &stream);
    let o = run(&["live", "--model", &model, "--source", &s, "--max-megapixels", "1"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("2 frames, 0 dropped") && err.contains("1 corrupt skipped"), "{err}");
    // Every frame over the limit: an error, not a run of zero frames.
    let s = write(tmp.path(), "big.mjpeg", &jpeg(1200, 1000));
    let o = run(&["live", "--model", &model, "--source", &s, "--max-megapixels", "1"]);
    assert_clean_error(&o, &["none of the 1 frames"]);
}
