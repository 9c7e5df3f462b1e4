//! `cargo xtask demo`: the main job on a fresh machine, end to end.
//!
//! set up -> train the default small ResNet on Fashion-MNIST (CPU) -> export fp32 and int8 ->
//! classify Fashion-MNIST test images and real photos with the device binary, natively and
//! under qemu-aarch64 -> stream a camera-like clip (ffmpeg, YUYV) through `device live` ->
//! torchvision's ResNet-50 file through `host import` and export, classifying the photos ->
//! an mp4 through `device live --view`, the page screenshotted by headless Chromium ->
//! latency report and fp32/int8 accuracy table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, cargo, profile_dir, qemu_runner, root, venv_python};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Skip the set-up step (apt, rustup targets, venv).
    #[arg(long)]
    pub no_setup: bool,
    /// Run directory (training outputs, exported models, samples).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training epochs (default: host train's default for the demo model).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub epochs: Option<u32>,
    /// Reuse an existing checkpoint in --out instead of training again.
    #[arg(long)]
    pub skip_train: bool,
    /// Skip the qemu-aarch64 runs.
    #[arg(long)]
    pub no_qemu: bool,
}

/// The camera-like clip: 320x240 YUYV at 10 fps, each still shown for one second.
const CLIP_W: u32 = 320;
const CLIP_H: u32 = 240;
const CLIP_FPS: u32 = 10;
const CLIP_FRAMES_PER_IMAGE: u32 = CLIP_FPS;

struct Step {
    started: Instant,
    name: String,
}

fn step(name: &str) -> Step {
    step_owned(name.to_string())
}

fn step_owned(name: String) -> Step {
    eprintln!("\n\x1b[1;36m== {name}\x1b[0m");
    Step { started: Instant::now(), name }
}

impl Drop for Step {
    fn drop(&mut self) {
        eprintln!("\x1b[36m== {} took {:.1} s\x1b[0m", self.name, self.started.elapsed().as_secs_f64());
    }
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    if !args.no_setup {
        let _s = step("set up");
        setup::run(&setup::Args { no_apt: false })?;
    }
    let out = root().join(&args.out);
    let bin = profile_dir(None, "release");
    let (host, device) = (bin.join("host"), bin.join("device"));
    {
        let _s = step("build host and device (release)");
        cmd::run(cargo().args(["build", "--release", "-p", "host", "-p", "device"]))?;
    }
    let arm_device = if args.no_qemu {
        None
    } else {
        let _s = step("cross-build device for aarch64");
        Some(cmd::cross_build_device("release", &[])?)
    };

    if !(args.skip_train && out.join("checkpoint.safetensors").exists()) {
        let _s = step("train on Fashion-MNIST (CPU)");
        let mut c = Command::new(&host);
        c.args(["train", "--dataset", "fashion-mnist", "--out"]).arg(&out);
        if let Some(e) = args.epochs {
            c.args(["--epochs", &e.to_string()]);
        }
        cmd::run(&mut c)?;
    }

    let models = {
        let _s = step("export fp32 and int8 (BN folded, calibrated), with ONNX");
        let mut models = Vec::new();
        for (name, flags) in [("fp32", &[][..]), ("int8", &["--int8"][..])] {
            let model = out.join(format!("model.{name}.evw"));
            let onnx = out.join(format!("model.{name}.onnx"));
            cmd::run(Command::new(&host).arg("export").arg("--checkpoint").arg(&out).args(flags).arg("--out").arg(&model).arg("--onnx").arg(&onnx))?;
            models.push((name, model));
        }
        models
    };
    let int8 = &models[1].1;

    let samples = out.join("samples");
    {
        let _s = step("sample inputs: Fashion-MNIST test images and scikit-image photos");
        cmd::run(Command::new(venv_python()).arg(root().join("tools/demo_samples.py")).arg(&samples).args(["--count", "8"]))?;
    }
    let fmnist = sorted_files(&samples.join("fmnist"))?;
    let photos = sorted_files(&samples.join("photos"))?;

    {
        let _s = step("classify with the device binary (x86, int8)");
        cmd::run(Command::new(&device).arg("classify").arg("--model").arg(int8).args(["--top-k", "3"]).args(&fmnist).args(&photos))?;
    }
    if let Some(arm) = &arm_device {
        for &(cpu, board) in crate::test::QEMU_CPUS {
            let _s = step_owned(format!("classify under qemu-aarch64 -cpu {cpu} ({board})"));
            let runner = qemu_runner(cpu);
            let mut words = runner.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or("qemu-aarch64"));
            c.args(words).arg(arm).arg("classify").arg("--model").arg(int8).args(["--top-k", "1"]).args(&fmnist[..4]).arg(&photos[0]);
            cmd::run(&mut c)?;
        }
    }

    {
        let _s = step("live: a camera-like YUYV clip (ffmpeg pipe) through device live");
        live_clip(&device, int8, &samples)?;
    }
    {
        let _s = step("ImageNet-shaped model: torchvision's ResNet-50 file (random weights) -> host import -> export -> classify the photos");
        imagenet_model(&host, &device, &out, &photos)?;
    }
    {
        let _s = step("video file: clip.mp4 (ffmpeg) through device live --source clip.mp4 --view, the page screenshotted by headless Chromium");
        live_view(&device, int8, &samples, &out)?;
    }

    let _s = step("latency report (device bench, 1 thread)");
    let mut report = Vec::new();
    for (name, model) in &models {
        let json = cmd::output(Command::new(&device).arg("bench").arg("--model").arg(model).args(["--threads", "1", "--warmup", "20", "--iters", "200", "--json"]))?;
        report.push((name, json.trim().to_string()));
    }
    drop(_s);

    println!("\n=== accuracy (Fashion-MNIST test set, 10,000 images) ===");
    print_accuracy(&out)?;
    println!("\n=== latency (device bench, this x86 machine, 1 thread, 200 runs) ===");
    print_latency(&report)?;
    println!("\ndemo finished in {:.1} min; outputs in {}", start.elapsed().as_secs_f64() / 60.0, out.display());
    Ok(())
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{} holds no files", dir.display());
    }
    Ok(v)
}

/// ffmpeg turns the clip stills (Fashion-MNIST test images, then the photos) into a real-time (`realtime` filter) 10 fps
/// slideshow of raw YUYV frames on a pipe, which `device live --source -` classifies as they
/// come (one line per frame; the latest frame wins when inference is slower).
fn live_clip(device: &Path, model: &Path, samples: &Path) -> Result<()> {
    let stills = sorted_files(&samples.join("clip"))?;
    let frames = CLIP_FRAMES_PER_IMAGE * stills.len() as u32;
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-framerate", "1", "-i"])
        .arg(samples.join("clip/%03d.png"))
        .args(["-vf", &format!("scale={CLIP_W}:{CLIP_H},fps={CLIP_FPS},realtime"), "-frames:v", &frames.to_string()])
        .args(["-pix_fmt", "yuyv422", "-f", "rawvideo", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ffmpeg")?;
    let pipe = ffmpeg.stdout.take().context("ffmpeg stdout")?;
    let mut live = Command::new(device)
        .arg("live")
        .arg("--model")
        .arg(model)
        .args(["--source", "-", "--width", &CLIP_W.to_string(), "--height", &CLIP_H.to_string(), "--format", "yuyv"])
        .stdin(pipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting device live")?;
    // Echo the per-frame lines as they come (the summary follows on stderr at the end).
    let mut classified = 0;
    for line in std::io::BufRead::lines(std::io::BufReader::new(live.stdout.take().context("device live stdout")?)) {
        let line = line.context("reading device live's output")?;
        classified += usize::from(line.contains(" ms"));
        println!("{line}");
    }
    let status = live.wait()?;
    let ff = ffmpeg.wait()?;
    if !status.success() || !ff.success() {
        bail!("live clip failed: device {status}, ffmpeg {ff}");
    }
    if classified == 0 {
        bail!("live clip: device live classified no frame (ffmpeg produced none?)");
    }
    Ok(())
}

/// torchvision's ResNet-50 as torchvision publishes it (`.pth`; its random init, since nothing
/// can be downloaded here), imported into a run directory, exported fp32 without data, and the
/// photos classified with ImageNet's class names. Random weights: the classes are arbitrary; the
/// point is the path (a real `resnet50-11ad3fa6.pth` takes the same commands).
fn imagenet_model(host: &Path, device: &Path, out: &Path, photos: &[PathBuf]) -> Result<()> {
    let dir = out.join("imagenet");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the previous {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pth = dir.join("resnet50.pth");
    cmd::run(Command::new(venv_python()).arg(root().join("tools/torchvision_weights.py")).arg("resnet50").arg(&pth))?;
    let run = dir.join("run");
    cmd::run(Command::new(host).arg("import").arg("--weights").arg(&pth).args(["--arch", "resnet50", "--out"]).arg(&run))?;
    let model = dir.join("resnet50.fp32.evw");
    cmd::run(Command::new(host).arg("export").arg("--checkpoint").arg(&run).arg("--out").arg(&model)
        .arg("--onnx").arg(dir.join("resnet50.fp32.onnx")).args(["--parity-samples", "8"]))?;
    println!("(random weights: the classes below are arbitrary; the labels are ImageNet's 1000)");
    cmd::run(Command::new(device).arg("classify").arg("--model").arg(&model).args(["--top-k", "3"]).args(photos))
}

/// The clip stills as an H.264 `.mp4` (ffmpeg), played by `device live --source clip.mp4
/// --realtime --view 127.0.0.1:0`; once results come, headless Chromium screenshots the page to
/// OUT/live-view.png.
fn live_view(device: &Path, model: &Path, samples: &Path, out: &Path) -> Result<()> {
    let clip = out.join("clip.mp4");
    cmd::run(Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-framerate", "1", "-i"])
        .arg(samples.join("clip/%03d.png"))
        .args(["-vf", &format!("scale=640:480,fps={CLIP_FPS}"), "-pix_fmt", "yuv420p"])
        .arg(&clip))?;
    let mut live = Command::new(device)
        .arg("live")
        .arg("--model")
        .arg(model)
        .arg("--source")
        .arg(&clip)
        .args(["--realtime", "--loop", "--top-k", "3", "--view", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting device live")?;
    let result = (|| -> Result<()> {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(live.stderr.take().context("device live stderr")?));
        let url = loop {
            let line = lines.next().context("device live ended before serving its page")??;
            eprintln!("{line}");
            if let Some(rest) = line.strip_prefix("view: ") {
                break rest.split_whitespace().next().unwrap_or(rest).to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let latest = loop {
            let body = http_get(&addr, "/result.json").unwrap_or_default();
            if body.contains("\"frame\"") {
                break body;
            }
            if Instant::now() > deadline {
                bail!("{url}: no result after 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        println!("{url}result.json: {}", latest.trim());
        let shot = out.join("live-view.png");
        let o = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,600", "--virtual-time-budget=3000"])
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .output()
            .context("running chromium (apt-get install chromium, or cargo xtask setup)")?;
        if !shot.is_file() {
            bail!("chromium wrote no screenshot: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        println!("the live page as Chromium rendered it: {}", shot.display());
        Ok(())
    })();
    let _ = live.kill();
    let _ = live.wait();
    result
}

/// The body of `GET path` from the HTTP server at `addr` (HOST:PORT).
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn json_file(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{}: not JSON", path.display()))
}

/// Training's last epoch (metrics.jsonl) and what `host export` measured on the test set.
fn print_accuracy(out: &Path) -> Result<()> {
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).context("reading metrics.jsonl")?;
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().context("metrics.jsonl is empty")?)?;
    println!(
        "training: {} epochs, {:.0} s, test top-1 {:.2}%  top-5 {:.2}%",
        last["epoch"], last["elapsed_train_seconds"].as_f64().unwrap_or(0.0), last["test_top1"].as_f64().unwrap_or(0.0), last["test_top5"].as_f64().unwrap_or(0.0)
    );
    println!("{:<6} {:>9} {:>10} {:>16} {:>22}", "model", "size", "top-1", "top-1 agreement", "ONNX Runtime parity");
    for name in ["fp32", "int8"] {
        let r = json_file(&out.join(format!("model.{name}.export.json")))?;
        let ort = match r["ort"]["max_rel_err"].as_f64() {
            Some(e) => format!("{e:.1e} rel, top-1 {:.0}%", r["ort"]["top1_agreement"].as_f64().unwrap_or(0.0) * 100.0),
            None => "skipped".into(),
        };
        println!(
            "{:<6} {:>6.0} kB {:>9.2}% {:>15.2}% {:>22}",
            name,
            r["bytes"].as_f64().unwrap_or(0.0) / 1000.0,
            r["exported_top1"].as_f64().unwrap_or(0.0),
            r["top1_agreement"].as_f64().unwrap_or(0.0) * 100.0,
            ort
        );
    }
    Ok(())
}

/// One row per model from `device bench --json`.
fn print_latency(report: &[(&&str, String)]) -> Result<()> {
    println!("{:<6} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>9} {:>8}", "model", "p50 ms", "p90 ms", "p99 ms", "fps", "preproc ms", "infer ms", "load ms", "RSS MB");
    for (name, json) in report {
        let b: serde_json::Value = serde_json::from_str(json).with_context(|| format!("device bench {name}: not JSON"))?;
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<6} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>11.2} {:>11.2} {:>9.1} {:>8.1}",
            name,
            f(&b["latency_ms"]["p50"]),
            f(&b["latency_ms"]["p90"]),
            f(&b["latency_ms"]["p99"]),
            f(&b["throughput_fps"]),
            f(&b["stages_ms"]["preprocess"]["p50"]),
            f(&b["stages_ms"]["inference"]["p50"]),
            f(&b["load_ms"]),
            f(&b["peak_rss_kib"]) / 1024.0
        );
    }
    if let Some((_, json)) = report.first() {
        let b: serde_json::Value = serde_json::from_str(json)?;
        println!("CPU features (CPUID / HWCAP): {}; tract's kernel set: {}", b["cpu"]["features"], b["cpu"]["tract"]["isa_level"]);
    }
    Ok(())
}
