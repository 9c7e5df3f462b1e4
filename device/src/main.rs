//! The `device` command line: classify, live, bench, parity, inspect, convert.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use device::commands::bench::{self, BenchOptions};
use device::engine::{ComputePrecision, ConvAlgorithm, Engine, EngineOptions};
use device::commands::parity::{compare, Parity};
use device::engine::pipeline::{Image, Pipeline};
use device::commands::flags::{self, int_in};
use device::engine::pipeline::MAX_TOP_K;
use device::io::decode::DecodeLimits;
use device::io::cameras;
use device::io::child::VideoOptions;
use device::io::source::{open_source_with_video, StreamFormat};
use device::commands::{inspect, live, record, report, view};
use shared::graph::Form;
use shared::preprocess::{Frame, PixelFormat, Preprocess};
use shared::weights::Precision;
use shared::ResNetConfig;

#[derive(Parser)]
#[command(
    name = "device",
    version,
    about = "Run exported ResNets with tract on Linux boards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a compact weights file from `host export`, or an ONNX file.
    #[arg(long, short)]
    model: PathBuf,
    /// Worker threads for tract's matrix products (1..=256).
    #[arg(long, default_value_t = 1, value_parser = int_in::<usize>(1, 256))]
    threads: usize,
    /// Float precision: auto (f16 for fp16 files on CPUs with fp16 arithmetic), f32 or f16.
    #[arg(long, value_enum, default_value_t = ComputePrecision::Auto)]
    precision: ComputePrecision,
    /// Input size HxW, each side 16..=4096 (default: the model's own).
    #[arg(long, value_parser = flags::input_size)]
    input_size: Option<(u32, u32)>,
    /// Float convs: auto (on x86 with AVX-512: Winograd for 3x3 stride 1, a direct
    /// conv for the 7x7 stem; tract's im2col + matrix product elsewhere) or tract (always
    /// tract's im2col + matrix product; `direct` is accepted as the old name).
    #[arg(long, value_enum, default_value_t = ConvAlgorithm::Auto)]
    conv: ConvAlgorithm,
    /// Class names, one per line, replacing the model's own (default: $EV_LABELS, which
    /// `cargo xtask deploy` sets to the labels.txt it uploads).
    #[arg(long, env = "EV_LABELS")]
    labels: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<Engine> {
        let engine = Engine::load(
            &self.model,
            &EngineOptions {
                threads: self.threads,
                precision: self.precision,
                input_size: self.input_size,
                conv: self.conv,
                labels: self.labels.clone(),
            },
        )?;
        for note in &engine.info().notes {
            eprintln!("note: {note}");
        }
        Ok(engine)
    }
}

/// How large an image `classify`, `bench --image` and `live` decode.
#[derive(Args, Clone, Copy)]
struct DecodeArgs {
    /// Largest image or frame to decode, in megapixels (1..=1024): larger ones are an error
    /// (classify) or skipped as corrupt (live), before their pixels take memory.
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MEGAPIXELS,
        value_parser = int_in::<u32>(1, u64::from(DecodeLimits::MAX_MEGAPIXELS)))]
    max_megapixels: u32,
}

impl DecodeArgs {
    fn limits(self) -> DecodeLimits {
        DecodeLimits::megapixels(self.max_megapixels)
    }
}

/// `--top-k`: 1 to what the pipeline ranks.
fn top_k() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    int_in::<usize>(1, MAX_TOP_K as u64)
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files: top-k labels and scores, and the latency per image. An image that
    /// cannot be decoded (truncated, corrupt, over --max-megapixels) is reported and skipped;
    /// the exit code is then 1.
    #[command(allow_negative_numbers = true)]
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Classes to print per image (1..=20).
        #[arg(long, default_value_t = 5, value_parser = top_k())]
        top_k: usize,
        /// One JSON object per image.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Classify a live stream: a V4L2 camera, raw frames on stdin (`-`), a folder or a file.
    /// The closing line on stderr counts the frames and says how the run ended (an error line
    /// starts with it); a stream that breaks off in the middle of a frame (a producer killed) is
    /// an error (exit code 1).
    #[command(allow_negative_numbers = true)]
    Live(LiveArgs),
    /// Measure latency, throughput, load time, peak RSS and per-stage time.
    #[command(allow_negative_numbers = true)]
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Untimed runs first (0..=100000).
        #[arg(long, default_value_t = 5, value_parser = int_in::<usize>(0, 100_000))]
        warmup: usize,
        /// Timed runs (1..=1000000).
        #[arg(long, default_value_t = 50, value_parser = int_in::<usize>(1, 1_000_000))]
        iters: usize,
        /// Frame to classify (default: a synthetic 640x480 RGB frame).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Run the model alone on the frame preprocessed once, as ONNX Runtime's benchmarks
        /// time `session.run` on a fixed tensor: no preprocessing or ranking in the loop (their
        /// stages read 0). What instruction counts per inference (`cargo xtask armbench`) compare.
        #[arg(long)]
        model_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare the model's logits with a parity file from `host export`.
    #[command(allow_negative_numbers = true)]
    Parity {
        #[command(flatten)]
        model: ModelArgs,
        /// The parity file (default: <model without extension>.parity.safetensors).
        #[arg(long)]
        parity: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print what runs for a model on this CPU: its features, the kernels plugged and why, the
    /// plan passes and what they replaced, the matrix-product nodes and their kernels.
    #[command(allow_negative_numbers = true)]
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Also time every node of the plan on one input (slowest first).
        #[arg(long)]
        profile: bool,
        /// Also print every node of the optimized plan (op, inputs, output type and shape).
        #[arg(long)]
        plan: bool,
    },
    /// List the V4L2 cameras: their pixel formats and frame sizes, and the mode `live` picks.
    Cameras,
    /// Convert a torchvision state_dict (safetensors) into a compact weights file.
    #[command(allow_negative_numbers = true)]
    Convert(ConvertArgs),
}

#[derive(Args)]
struct LiveArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// What to classify: /dev/videoN, a video file (mp4, mkv, webm, mov...: decoded by an ffmpeg
    /// child), a stream URL (rtsp://, rtmp://, http(s)://, udp://, srt://: ffmpeg), csi://N (the
    /// board camera: rpicam-vid/libcamera-vid on a Pi, gst-launch-1.0 on a Jetson), `-` (raw or
    /// MJPEG frames on stdin), a folder of images, or a raw/MJPEG file.
    #[arg(long)]
    source: String,
    /// Start a video file again at its end.
    #[arg(long = "loop")]
    looped: bool,
    /// Pace a video file at its frame rate (as a camera would; stale frames are then dropped).
    #[arg(long)]
    realtime: bool,
    /// Serve a live page on HOST:PORT (`:PORT` is 127.0.0.1; give 0.0.0.0:PORT to reach it from
    /// other machines): the video, the labels, latency and fps; /stream.mjpg, /result.json,
    /// /events. A slow or gone browser never slows the classifier.
    #[arg(long, value_name = "HOST:PORT")]
    view: Option<String>,
    /// Write the classified video to this file (mp4, H.264 via an ffmpeg child) with the top-1
    /// label drawn on it; frames the encoder cannot keep up with are left out, never waited for.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Frame width (1..=16384): raw frames, /dev/videoN and csi:// need it; a video is scaled to it.
    #[arg(long, value_parser = int_in::<u32>(1, 16384))]
    width: Option<u32>,
    /// Frame height (1..=16384).
    #[arg(long, value_parser = int_in::<u32>(1, 16384))]
    height: Option<u32>,
    /// yuyv, rgb24, gray or mjpeg (default: for /dev/videoN the camera's best mode, see
    /// `device cameras`; yuyv for raw frames on stdin or in a file).
    #[arg(long)]
    format: Option<StreamFormat>,
    /// Classes to print per frame (1..=20).
    #[arg(long, default_value_t = 1, value_parser = top_k())]
    top_k: usize,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many frames (at least 1).
    #[arg(long, value_parser = int_in::<u64>(1, u64::MAX))]
    max_frames: Option<u64>,
    /// GPIO chip for --led-line / --button-line (feature `gpio`).
    #[arg(long, default_value = "/dev/gpiochip0")]
    gpio_chip: String,
    /// Light this GPIO line (0..=65535) while --led-class is the top-1 class.
    #[arg(long, value_parser = int_in::<u32>(0, 65535))]
    led_line: Option<u32>,
    /// Class index or label that lights the LED.
    #[arg(long)]
    led_class: Option<String>,
    /// Lowest top-1 score (0..=1) that lights the LED.
    #[arg(long, default_value_t = 0.5, value_parser = flags::float_in(0.0f32, 1.0))]
    led_min_score: f32,
    /// Classify only when the button on this GPIO line (0..=65535, active low) is pressed.
    #[arg(long, value_parser = int_in::<u32>(0, 65535))]
    button_line: Option<u32>,
}

#[derive(Args)]
struct ConvertArgs {
    #[arg(long)]
    state_dict: PathBuf,
    /// Architecture preset: resnet8, resnet18, resnet20, resnet34, resnet50, ...
    #[arg(long)]
    arch: String,
    /// Input channels: 1 or 3.
    #[arg(long, value_parser = flags::channels)]
    in_channels: Option<u8>,
    /// Output classes (1..=100000).
    #[arg(long, value_parser = int_in::<u32>(1, 100_000))]
    classes: Option<u32>,
    /// training (conv + BatchNorm) or folded.
    #[arg(long, default_value = "folded")]
    form: String,
    /// f32, f16 or int8 (int8 needs --int8-params).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// safetensors with the int8 tensors of each quantized layer (docs/weights-format.md names).
    #[arg(long)]
    int8_params: Option<PathBuf>,
    /// imagenet or fashion-mnist.
    #[arg(long, default_value = "imagenet")]
    preprocess: String,
    /// Labels file, one per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long, short)]
    output: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Classify {
            model,
            decode,
            top_k,
            json,
            images,
        } => classify(&model, &decode.limits(), top_k, json, &images),
        Command::Live(args) => live_cmd(args),
        Command::Bench {
            model,
            decode,
            warmup,
            iters,
            image,
            model_only,
            json,
        } => bench_cmd(&model, &decode.limits(), &BenchOptions { warmup, iters }, image, model_only, json),
        Command::Parity {
            model,
            parity,
            json,
        } => parity_cmd(&model, parity, json),
        Command::Inspect {
            model,
            profile,
            plan,
        } => inspect::run(&mut model.load()?, inspect::Show { plan, profile }),
        Command::Cameras => cameras_cmd(),
        Command::Convert(args) => convert_cmd(args),
    }
}

fn cameras_cmd() -> Result<()> {
    let found = cameras::list();
    if found.is_empty() {
        println!("no /dev/video* devices");
    }
    for path in found {
        match cameras::query(&path) {
            Ok(formats) => {
                println!("{}: {}", path.display(), cameras::describe(&formats));
                match cameras::choose(&formats, None, None) {
                    Ok((code, w, h)) => println!("  device live picks {} {w}x{h}", cameras::fourcc_text(code)),
                    Err(e) => println!("  {e}"),
                }
            }
            // Metadata nodes and other non-capture devices.
            Err(e) => println!("{}: {e:#}", path.display()),
        }
    }
    Ok(())
}

fn classify(
    model: &ModelArgs,
    limits: &DecodeLimits,
    top_k: usize,
    json: bool,
    images: &[PathBuf],
) -> Result<()> {
    let mut pipeline = Pipeline::new(model.load()?, top_k);
    let mut out = std::io::stdout().lock();
    let mut unreadable = vec![];
    for path in images {
        // Reported (a JSON object with "error", or a warning) and counted: the others are
        // still classified, the exit code says that not all were.
        let img = match Image::open_with_limits(path, limits) {
            Ok(img) => img,
            Err(e) => {
                if json {
                    let line = serde_json::json!({"image": path.display().to_string(), "error": format!("{e:#}")});
                    writeln!(out, "{line}")?;
                } else {
                    eprintln!("warning: skipped: {e:#}");
                }
                unreadable.push(path.display().to_string());
                continue;
            }
        };
        let c = pipeline
            .classify(&img.frame()?)
            .with_context(|| format!("image {}", path.display()))?;
        let ms = c.times.total().as_secs_f64() * 1e3;
        if json {
            let top: Vec<_> = c
                .top
                .iter()
                .map(|&(k, s)| serde_json::json!({"class": k, "label": pipeline.label(k), "score": s}))
                .collect();
            let line = serde_json::json!({"image": path.display().to_string(), "top": top, "latency_ms": ms,
                "inference_ms": c.times.inference.as_secs_f64() * 1e3});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}  ({ms:.1} ms)", path.display())?;
            for &(k, s) in &c.top {
                writeln!(out, "  {:6.2}% {}", s * 100.0, pipeline.class_text(k))?;
            }
        }
    }
    anyhow::ensure!(
        unreadable.is_empty(),
        "{} of {} images could not be classified (unreadable, corrupt or over --max-megapixels): {}",
        unreadable.len(),
        images.len(),
        unreadable.join(", ")
    );
    Ok(())
}

fn live_cmd(a: LiveArgs) -> Result<()> {
    let mut pipeline = Pipeline::new(a.model.load()?, a.top_k);
    let video = VideoOptions { looped: a.looped, realtime: a.realtime, size: None };
    let (mut width, mut height) = (a.width.unwrap_or(0), a.height.unwrap_or(0));
    let mut format = a.format.unwrap_or(StreamFormat::Raw(PixelFormat::Yuyv));
    let size = a.width.zip(a.height);
    if a.source.starts_with("/dev/video") && (size.is_none() || a.format.is_none()) {
        // The camera's modes, --width/--height/--format as overrides.
        (format, width, height) = cameras::negotiate(Path::new(&a.source), a.format, size)?;
        eprintln!("note: {}: {} {width}x{height}", a.source, cameras::fourcc_text(cameras::pixel_format(format)));
    }
    let source = open_source_with_video(&a.source, width, height, format, a.decode.limits(), video)?;
    let led_class = match &a.led_class {
        None => None,
        Some(c) => Some(match c.parse::<u32>() {
            Ok(k) => k,
            Err(_) => pipeline
                .engine()
                .info()
                .labels
                .iter()
                .position(|l| l == c)
                .with_context(|| {
                    format!("--led-class `{c}` is neither a class index nor a label of this model")
                })? as u32,
        }),
    };
    let (mut gate, mut led) = gpio_hooks(&a, led_class)?;
    let mut viewer = match &a.view {
        Some(addr) => {
            let v = view::Viewer::start(addr)?;
            eprintln!("view: http://{}/ (frames: /stream.mjpg, results: /result.json, /events)", v.addr);
            Some(v)
        }
        None => None,
    };
    let mut recorder = match &a.output {
        Some(out) => {
            // A video file's own frame rate, else a camera's usual 30.
            let fps = if device::io::child::is_video_file(&a.source) {
                device::io::child::probe(&a.source).ok().and_then(|i| i.fps).unwrap_or(30.0)
            } else {
                30.0
            };
            Some(record::Recorder::new(out, fps, !source.is_live())?)
        }
        None => None,
    };
    let mut on_result = |r: live::FrameResult<'_>| -> Result<()> {
        led(r.classification)?;
        if let Some(rec) = recorder.as_mut() {
            rec.add(r.frame.clone(), &r.top1())?;
        }
        if let Some(v) = viewer.as_mut() {
            let json = r.json();
            v.publish(r.frame, json);
        }
        Ok(())
    };
    let mut out = std::io::stdout().lock();
    let opts = live::LiveOptions {
        json: a.json,
        max_frames: a.max_frames,
    };
    let summary = live::run(
        &mut pipeline,
        source,
        &opts,
        &mut out,
        &mut *gate,
        &mut on_result,
    )?;
    eprintln!("{}", summary.line(false));
    if let Some(rec) = recorder {
        let (out, dropped) = (a.output.clone().unwrap_or_default(), rec.dropped);
        rec.finish()?;
        eprintln!("recorded {} ({dropped} frames left out while the encoder was behind)", out.display());
    }
    Ok(())
}

type Gate = Box<dyn FnMut() -> Result<bool>>;
type OnResult = Box<dyn FnMut(&device::engine::pipeline::Classification) -> Result<()>>;

#[cfg(feature = "gpio")]
fn gpio_hooks(a: &LiveArgs, led_class: Option<u32>) -> Result<(Gate, OnResult)> {
    use device::io::gpio::{cdev, Button, ClassLed};
    let gate: Gate = match a.button_line {
        Some(line) => {
            let mut b = Button::new(cdev::input(&a.gpio_chip, line)?, true);
            Box::new(move || b.pressed().context("reading the button"))
        }
        None => Box::new(|| Ok(true)),
    };
    let on: OnResult = match (a.led_line, led_class) {
        (Some(line), Some(class)) => {
            let mut led = ClassLed::new(cdev::output(&a.gpio_chip, line)?, class, a.led_min_score)?;
            Box::new(move |c| led.update(&c.top).map(|_| ()).context("driving the LED"))
        }
        (Some(_), None) => bail!("--led-line needs --led-class"),
        _ => Box::new(|_| Ok(())),
    };
    Ok((gate, on))
}

#[cfg(not(feature = "gpio"))]
fn gpio_hooks(a: &LiveArgs, _led_class: Option<u32>) -> Result<(Gate, OnResult)> {
    if a.led_line.is_some() || a.button_line.is_some() {
        bail!("GPIO options need a build with `--features gpio`");
    }
    Ok((Box::new(|| Ok(true)), Box::new(|_| Ok(()))))
}

fn bench_cmd(
    model: &ModelArgs,
    limits: &DecodeLimits,
    opts: &BenchOptions,
    image: Option<PathBuf>,
    model_only: bool,
    json: bool,
) -> Result<()> {
    anyhow::ensure!(opts.iters >= 1, "--iters must be at least 1");
    let start = Instant::now();
    let mut pipeline = Pipeline::new(model.load()?, 5);
    let _ = start;
    let img = match image {
        Some(p) => Image::open_with_limits(&p, limits)?,
        None => {
            // A deterministic synthetic camera frame.
            let (w, h) = (640u32, 480u32);
            let data = (0..w * h * 3)
                .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect();
            Image {
                data,
                width: w,
                height: h,
            }
        }
    };
    let frame = Frame::new(&img.data, img.width, img.height, PixelFormat::Rgb8)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = if model_only {
        bench::measure_model(&mut pipeline, &frame, opts)?
    } else {
        bench::measure(&mut pipeline, &frame, opts)?
    };
    let rss = bench::peak_rss_kib();
    if json {
        let mut doc = report::bench_json(pipeline.engine(), &m, rss, (img.width, img.height));
        doc["model_only"] = model_only.into();
        println!("{doc}");
    } else {
        if model_only {
            println!("model only   the frame preprocessed once; the loop runs the model alone");
        }
        print!(
            "{}",
            report::bench_text(pipeline.engine(), &m, rss, (img.width, img.height))
        );
    }
    Ok(())
}

fn parity_cmd(model: &ModelArgs, parity: Option<PathBuf>, json: bool) -> Result<()> {
    let path = parity.unwrap_or_else(|| {
        let stem = model
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        let stem = stem.split('.').next().unwrap_or(stem);
        model
            .model
            .with_file_name(format!("{stem}.parity.safetensors"))
    });
    let p = Parity::read(&path)?;
    let mut engine = model.load()?;
    let info = engine.info().clone();
    anyhow::ensure!(
        [p.input_shape[1], p.input_shape[2], p.input_shape[3]]
            == [
                info.channels as usize,
                info.height as usize,
                info.width as usize
            ],
        "parity inputs are {:?}, the model takes 1x{}x{}x{}",
        p.input_shape,
        info.channels,
        info.height,
        info.width
    );
    let (mut worst, mut agree, mut agree_int8, mut worst_int8) = (0f32, 0usize, 0usize, 0f32);
    for i in 0..p.len() {
        let logits = engine.run(p.input(i))?.to_vec();
        worst = worst.max(compare::rel_err(&logits, p.logits(i)));
        agree += usize::from(compare::argmax(&logits) == compare::argmax(p.logits(i)));
        if let Some(q) = p.logits_int8(i) {
            worst_int8 = worst_int8.max(compare::max_abs_diff(&logits, q));
            agree_int8 += usize::from(compare::argmax(&logits) == compare::argmax(q));
        }
    }
    let n = p.len().max(1) as f64;
    let doc = serde_json::json!({
        "model": info.path.display().to_string(), "compute": info.compute.name(), "samples": p.len(),
        "max_rel_err_vs_host_fp32": worst, "top1_agreement_vs_host_fp32": agree as f64 / n,
        "max_abs_diff_vs_ort_int8": p.logits_int8.as_ref().map(|_| worst_int8),
        "top1_agreement_vs_ort_int8": p.logits_int8.as_ref().map(|_| agree_int8 as f64 / n),
    });
    if json {
        println!("{doc}");
    } else {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

fn convert_cmd(a: ConvertArgs) -> Result<()> {
    let mut config = ResNetConfig::from_name(&a.arch).with_context(|| {
        format!(
            "unknown --arch `{}` (known: {})",
            a.arch,
            ResNetConfig::NAMES.join(", ")
        )
    })?;
    if let Some(c) = a.in_channels {
        config = config.with_in_channels(c);
    }
    if let Some(k) = a.classes {
        config = config.with_classes(k);
    }
    let form = match a.form.as_str() {
        "training" => Form::Training,
        "folded" => Form::Folded,
        f => bail!("unknown --form `{f}` (training or folded)"),
    };
    let precision = match a.precision.as_str() {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        "int8" => Precision::Int8,
        p => bail!("unknown --precision `{p}` (f32, f16 or int8)"),
    };
    let preprocess = match a.preprocess.as_str() {
        "imagenet" => Preprocess::IMAGENET_EVAL,
        "fashion-mnist" => Preprocess::FASHION_MNIST,
        p => bail!("unknown --preprocess `{p}` (imagenet or fashion-mnist)"),
    };
    let labels = match &a.labels {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read labels {}", p.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => vec![],
    };
    let sd = std::fs::read(&a.state_dict)
        .with_context(|| format!("cannot read {}", a.state_dict.display()))?;
    let q = a
        .int8_params
        .as_ref()
        .map(std::fs::read)
        .transpose()
        .context("cannot read --int8-params")?;
    let opts = device::commands::convert::ConvertOptions {
        config,
        form,
        precision,
        preprocess,
        labels,
        producer: format!(
            "device convert {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
    };
    let bytes = device::commands::convert::convert(&sd, q.as_deref(), &opts)
        .with_context(|| format!("converting {}", a.state_dict.display()))?;
    std::fs::write(&a.output, bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    Ok(())
}
