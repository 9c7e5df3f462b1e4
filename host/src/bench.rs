//! `host bench-train`: training images per second on synthetic data, in the spirit of NVIDIA's
//! `main.py --training-only --prof 100 --raport-file`.
//!
//! Measuring is kept apart from reporting: [`measure`] builds the state once (model, optimizer,
//! one synthetic batch resident on the device, like NVIDIA's synthetic loader), runs
//! `warmup_steps` untimed steps (cuDNN autotuning, allocator warm-up), then `steps` timed steps,
//! each the exact `host train` step ([`Trainer::step`]) followed by a device synchronization;
//! [`main`] prints the result as one JSON object. `tools/bench_train_pytorch.py` prints the same
//! keys for PyTorch eager.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::builder::PossibleValuesParser;
use serde::Serialize;
use shared::{ResNetConfig, Stem};
use tch::{nn, Kind, Tensor};

use crate::device;
use crate::loss_scale::{LossScaleConfig, LossScaler};
use crate::model::ResNet;
use crate::optim::{Sgd, SgdConfig};
use crate::args::{int_in, ComputeArgs, RuntimeArgs, StemArg, MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};
use crate::train::{Criterion, Trainer, LR_PER_256, REFERENCE_BATCH};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet50", value_parser = PossibleValuesParser::new(ResNetConfig::NAMES))]
    pub arch: String,
    /// Images per step.
    #[arg(short = 'b', long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub batch_size: usize,
    /// Input side.
    #[arg(long, default_value_t = 224, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: u32,
    /// Classes of the classifier.
    #[arg(long, default_value_t = 1000, value_parser = int_in::<u32>(1, MAX_CLASSES))]
    pub num_classes: u32,
    /// Stem (default: imagenet).
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Untimed steps first.
    #[arg(long, default_value_t = 20, value_parser = int_in::<usize>(0, 1_000_000))]
    pub warmup_steps: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 100, value_parser = int_in::<usize>(1, 1_000_000))]
    pub steps: usize,
    /// Seed of the weights and the synthetic batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The printed JSON object (same keys as tools/bench_train_pytorch.py).
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub framework: String,
    pub arch: String,
    pub batch_size: usize,
    pub image_size: u32,
    pub amp: String,
    pub channels_last: bool,
    pub device: String,
    pub warmup_steps: usize,
    pub steps: usize,
    pub images_per_sec: f64,
    pub step_ms_mean: f64,
    pub step_ms_p50: f64,
    pub step_ms_p90: f64,
    pub step_ms_min: f64,
    pub final_loss: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

pub fn measure(args: &BenchArgs) -> Result<BenchResult> {
    if args.steps == 0 || args.batch_size == 0 {
        bail!("--steps and --batch-size must be at least 1");
    }
    let device = args.runtime.device.resolve()?;
    device::configure(device);
    device::set_threads(args.runtime.threads);
    let stem = match args.stem {
        Some(s) => s.into(),
        None => Stem::ImageNet,
    };
    let config = ResNetConfig::from_name(&args.arch)
        .ok_or_else(|| anyhow!("unknown architecture `{}`", args.arch))?
        .with_classes(args.num_classes)
        .with_in_channels(3)
        .with_stem(stem);

    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(device);
    let options = args.compute.model_options(true);
    let model = ResNet::new(&vs, &config, options)?;
    let opt = Sgd::new(&model, SgdConfig { momentum: 0.875, weight_decay: 1.0 / 32768.0 });
    let scaler = LossScaler::new(LossScaleConfig::default(), args.compute.amp.needs_loss_scaling());
    let mut trainer = Trainer { model: &model, opt, scaler, criterion: Criterion { label_smoothing: 0.1 }, reducer: None };
    let lr = LR_PER_256 * args.batch_size as f64 / REFERENCE_BATCH;

    let side = i64::from(args.image_size);
    let x = Tensor::randn([args.batch_size as i64, 3, side, side], (Kind::Float, device));
    let x = if args.compute.channels_last { device::to_channels_last(&x) } else { x };
    let y = Tensor::randint(i64::from(args.num_classes), [args.batch_size as i64], (Kind::Int64, device));

    for _ in 0..args.warmup_steps {
        trainer.step(&x, &y, lr, None)?;
    }
    device::synchronize(device);
    let mut ms = Vec::with_capacity(args.steps);
    let mut last = None;
    for _ in 0..args.steps {
        let t0 = Instant::now();
        let out = trainer.step(&x, &y, lr, None)?;
        device::synchronize(device);
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        last = Some(out.loss);
    }
    let total_s: f64 = ms.iter().sum::<f64>() / 1e3;
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(BenchResult {
        framework: format!("host (tch {}, libtorch)", "0.24.0"),
        arch: args.arch.clone(),
        batch_size: args.batch_size,
        image_size: args.image_size,
        amp: args.compute.amp.name().into(),
        channels_last: args.compute.channels_last,
        device: device::device_name(device),
        warmup_steps: args.warmup_steps,
        steps: args.steps,
        images_per_sec: (args.batch_size * args.steps) as f64 / total_s,
        step_ms_mean: total_s * 1e3 / args.steps as f64,
        step_ms_p50: percentile(&sorted, 0.5),
        step_ms_p90: percentile(&sorted, 0.9),
        step_ms_min: sorted[0],
        final_loss: last.map_or(f64::NAN, |l| l.double_value(&[])),
    })
}

pub fn main(args: BenchArgs) -> Result<()> {
    let r = measure(&args)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
