//! `host eval`: top-1 / top-5 of a checkpoint on a dataset's test split, through the `shared`
//! eval preprocessing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::builder::PossibleValuesParser;
use serde::Serialize;
use shared::preprocess::Preprocess;
use shared::ResNetConfig;
use tch::nn;

use crate::checkpoint::{check_finite, config_from_metadata, read_weights_file, write_atomic, RunDir};
use crate::data::{DataOptions, Dataset, DatasetSpec};
use crate::device;
use crate::model::{config_from_tensors, ModelOptions, ResNet};
use crate::args::{int_in, EvalDataArgs, RuntimeArgs, StemArg, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};
use crate::train::{evaluate, model_config, Criterion};

/// Result file written next to the checkpoint (or to `--out`).
pub const EVAL_FILE: &str = "eval.json";

#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// A run directory (from `host train --out`) or a safetensors state_dict file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: EvalDataArgs,
    /// Architecture, for a bare weights file without host metadata (e.g. torchvision's).
    #[arg(long, value_parser = PossibleValuesParser::new(ResNetConfig::NAMES))]
    pub arch: Option<String>,
    /// Stem, for a bare weights file (default as for `host train`).
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    /// Network input side (default: the run's, else the dataset's).
    #[arg(long, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: Option<u32>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Where to write the JSON result (default: eval.json in the run directory, or next to the file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct EvalReport<'a> {
    checkpoint: String,
    dataset: String,
    arch: &'a str,
    test_top1: f64,
    test_top5: f64,
    test_loss: f64,
    images: usize,
    skipped_images: usize,
    seconds: f64,
}

pub fn main(args: EvalArgs) -> Result<()> {
    if args.data.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = args.runtime.device.resolve()?;
    device::configure(device);
    device::set_threads(args.runtime.threads);

    // What to evaluate: a run directory (or its checkpoint.safetensors) brings its dataset,
    // config and preprocessing, and every file is checked against its run.json.
    // The run's dataset (`Some(None)`: a `host import` run, which has none) and input side.
    let (weights, run_dataset, run_image_size, run_config, run_preprocess, out_dir): (PathBuf, Option<Option<DatasetSpec>>, Option<u32>, _, Option<Preprocess>, PathBuf);
    let (tensors, meta) = if let Some(run) = RunDir::of(&args.checkpoint) {
        let state = run.load_state()?;
        (weights, run_dataset, run_image_size, run_config, run_preprocess) =
            (run.checkpoint(), Some(state.dataset(&run.args())?), state.image_size(), Some(state.config), Some(state.preprocess));
        out_dir = run.dir.clone();
        run.read_checkpoint()?
    } else if args.checkpoint.is_file() {
        out_dir = args.checkpoint.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (weights, run_dataset, run_image_size, run_config, run_preprocess) = (args.checkpoint.clone(), None, None, None, None);
        read_weights_file(&weights)?
    } else {
        bail!("--checkpoint {}: no such file or directory", args.checkpoint.display());
    };
    check_finite(&weights, &tensors)?;

    let spec = match (&args.data.dataset, run_dataset) {
        (Some(d), _) => d.clone(),
        (None, Some(Some(d))) => d,
        (None, Some(None)) => bail!(
            "{}: imported with `host import`, the run has no dataset: pass --dataset (e.g. imagefolder:DIR with DIR/val)",
            args.checkpoint.display()
        ),
        (None, None) => DatasetSpec::default(),
    };
    let image_size = args.image_size.or(run_image_size);
    let data = Dataset::open_test(&spec, &DataOptions { limit_test: args.data.limit_test, image_size, ..Default::default() })?;

    let config = match (run_config.or_else(|| config_from_metadata(&meta)), &args.arch) {
        (Some(c), None) => c,
        (found, Some(arch)) => {
            let c = model_config(arch, args.stem, &spec, data.classes.len(), data.in_channels)?;
            // A bare torchvision file: take classes, channels and stem from the tensors.
            config_from_tensors(c, &tensors).or(found).unwrap_or(c)
        }
        (None, None) => bail!("{}: no host metadata in this file; pass --arch", weights.display()),
    };
    if config.num_classes as usize != data.classes.len() {
        bail!(
            "{}: the network has {} classes, the dataset {spec} has {}",
            weights.display(),
            config.num_classes,
            data.classes.len()
        );
    }
    let preprocess = match run_preprocess {
        Some(p) if args.image_size.is_none() && args.data.dataset.is_none() => p,
        _ => data.presets.eval,
    };

    let vs = nn::VarStore::new(device);
    let model = ResNet::new(&vs, &config, ModelOptions::default())?;
    model.load_state_dict(&tensors, &weights, &[])?;
    let criterion = Criterion { label_smoothing: 0.0 };
    let ev = evaluate(&model, &criterion, data.test.as_ref(), &preprocess, args.data.batch_size, device, None)?;
    let report = EvalReport {
        checkpoint: weights.display().to_string(),
        dataset: spec.to_string(),
        arch: args.arch.as_deref().unwrap_or("from checkpoint"),
        test_top1: ev.top1,
        test_top5: ev.top5,
        test_loss: ev.loss,
        images: ev.images,
        skipped_images: ev.skipped,
        seconds: ev.seconds,
    };
    let json = serde_json::to_string(&report)?;
    let out = args.out.unwrap_or_else(|| out_dir.join(EVAL_FILE));
    write_atomic(&out, format!("{json}\n").as_bytes())?;
    println!(
        "top1 {:.2}%  top5 {:.2}%  loss {:.4}  ({} images, {} unreadable, {:.1}s)",
        ev.top1, ev.top5, ev.loss, ev.images, ev.skipped, ev.seconds
    );
    println!("{json}");
    Ok(())
}
