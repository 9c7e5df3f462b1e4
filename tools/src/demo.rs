//! `cargo xtask demo`: the main job on a fresh machine, end to end.
//!
//! set up -> train the default small ResNet on Fashion-MNIST (CPU) -> export fp32 and int8 ->
//! classify Fashion-MNIST test images and real photos with the device binary, natively and
//! under qemu-aarch64 -> stream a camera-like clip (ffmpeg, YUYV) through `device live` ->
//! latency report and fp32/int8 accuracy table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, cargo, profile_dir, qemu_runner, root, venv_python, AARCH64};
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
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Reuse an existing checkpoint in --out instead of training again.
    #[arg(long)]
    pub skip_train: bool,
    /// Skip the qemu-aarch64 runs.
    #[arg(long)]
    pub no_qemu: bool,
}

/// Frames of the camera-like clip: 320x240 YUYV, 4 photos x 10 frames at 10 fps.
const CLIP_W: u32 = 320;
const CLIP_H: u32 = 240;
const CLIP_FRAMES: u32 = 40;

struct Step {
    started: Instant,
    name: &'static str,
}

fn step(name: &'static str) -> Step {
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
        Some(cmd::cross_build_device("release")?)
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
        for cpu in ["cortex-a72", "max"] {
            let _s = step(if cpu == "max" { "classify under qemu-aarch64 -cpu max (fp16, dotprod)" } else { "classify under qemu-aarch64 -cpu cortex-a72 (Pi 4)" });
            let runner = qemu_runner(cpu);
            let mut words = runner.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or("qemu-aarch64"));
            c.args(words).arg(arm).arg("classify").arg("--model").arg(int8).args(["--top-k", "1"]).args(&fmnist[..4]).arg(&photos[0]);
            cmd::run(&mut c)?;
        }
    }

    {
        let _s = step("live: a camera-like YUYV clip from the photos, piped through ffmpeg");
        live_clip(&device, int8, &samples)?;
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
    println!("\n=== latency (device bench, x86 here, 1 thread) ===");
    for (name, json) in &report {
        println!("{name}: {json}");
    }
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

/// ffmpeg turns the photos into a 10 fps slideshow of raw YUYV frames on a pipe, which
/// `device live --source -` classifies as they come.
fn live_clip(device: &Path, model: &Path, samples: &Path) -> Result<()> {
    let list = samples.join("clip.txt");
    let photos = std::fs::read_to_string(samples.join("photos.txt"))?;
    let concat: String = photos.lines().map(|p| format!("file '{p}'\nduration 1\n")).collect();
    std::fs::write(&list, concat)?;
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "concat", "-safe", "0", "-i"])
        .arg(&list)
        .args(["-vf", &format!("scale={CLIP_W}:{CLIP_H},fps=10"), "-frames:v", &CLIP_FRAMES.to_string()])
        .args(["-pix_fmt", "yuyv422", "-f", "rawvideo", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ffmpeg")?;
    let pipe = ffmpeg.stdout.take().context("ffmpeg stdout")?;
    let status = Command::new(device)
        .arg("live")
        .arg("--model")
        .arg(model)
        .args(["--source", "-", "--width", &CLIP_W.to_string(), "--height", &CLIP_H.to_string(), "--format", "yuyv"])
        .stdin(pipe)
        .status()
        .context("starting device live")?;
    let ff = ffmpeg.wait()?;
    if !status.success() || !ff.success() {
        bail!("live clip failed: device {status}, ffmpeg {ff}");
    }
    Ok(())
}

/// The last epoch of metrics.jsonl and what `host export` recorded.
fn print_accuracy(out: &Path) -> Result<()> {
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).context("reading metrics.jsonl")?;
    if let Some(last) = metrics.lines().last() {
        println!("training, last epoch: {last}");
    }
    for name in ["fp32", "int8"] {
        let report = out.join(format!("model.{name}.export.json"));
        if let Ok(s) = std::fs::read_to_string(&report) {
            println!("export {name}: {}", s.trim());
        }
    }
    Ok(())
}
