//! `host import`: a published state_dict (torchvision's `.pth`, or safetensors) -> a run
//! directory that `host export` and `host eval` take like a trained one.
//!
//! The file is read in Rust ([`crate::pth`]: nothing in it is executed), checked against the
//! architecture (every tensor present, shaped as the `shared` graph says, finite), and written
//! as one committed state ([`crate::checkpoint::manifest::commit`]): `checkpoint.safetensors`,
//! `args.json` (the network config, the ImageNet eval preprocessing, `dataset: null` and
//! `imported_from`) and `labels.txt`. A 1000-class network gets the ImageNet class names
//! torchvision's weights come with; other class counts need `--labels`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::builder::PossibleValuesParser;
use serde::Serialize;
use shared::{ResNetConfig, Stem};
use tch::{nn, Device};

use crate::args::{int_in, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};
use crate::checkpoint::{
    check_against_graph, checkpoint_metadata, labels_bytes, manifest, parse_labels, read_weights_file, to_safetensors_bytes,
    RunDir, RunState, ARGS_FILE, CHECKPOINT_FILE, LABELS_FILE, RUN_FORMAT,
};
use crate::model::{config_from_tensors, ModelOptions, ResNet};
use crate::presets::{Presets, IMAGENET_TRAIN_SIZE};

/// The 1,000 ImageNet-1k class names in class-index order, as torchvision's weights metadata
/// lists them (`torchvision.models._meta._IMAGENET_CATEGORIES`): index 281 is `tabby`.
pub const IMAGENET_CLASSES: &str = include_str!("imagenet_classes.txt");

#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The state_dict to import: torchvision's `.pth` (torch.save; a training checkpoint wrapping
    /// it under `state_dict` or `model` is unwrapped), `.pt`, `.bin`, or `.safetensors`.
    #[arg(long)]
    pub weights: PathBuf,
    /// The architecture the weights are for.
    #[arg(long, value_parser = PossibleValuesParser::new(ResNetConfig::NAMES))]
    pub arch: String,
    /// The run directory to write (must not hold a run yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Class names, one per line, in class-index order (default for 1000 classes: ImageNet's).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Network input side: the eval preprocessing is Resize(side x 256/224) + CenterCrop(side)
    /// with ImageNet's mean and std, as torchvision's weights expect.
    #[arg(long, default_value_t = IMAGENET_TRAIN_SIZE, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: u32,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// What `host import` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub out: String,
    pub from: String,
    pub arch: String,
    pub params: u64,
    pub classes: usize,
    /// `imagenet` (the built-in names) or the `--labels` file.
    pub labels: String,
    pub image_size: u32,
}

/// Class names from `--labels`, or ImageNet's for 1000 classes.
fn class_names(args: &ImportArgs, classes: usize) -> Result<(Vec<String>, String)> {
    let (text, source) = match &args.labels {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("--labels {}: cannot read it as text", path.display()))?,
            path.display().to_string(),
        ),
        None if classes == 1000 => (IMAGENET_CLASSES.to_string(), "imagenet".to_string()),
        None => bail!(
            "{}: the network has {classes} classes, not ImageNet's 1000: pass --labels FILE (one class name per line)",
            args.weights.display()
        ),
    };
    let names = parse_labels(&text);
    if names.len() != classes {
        bail!("--labels {source}: {} names for a network with {classes} classes", names.len());
    }
    Ok((names, source))
}

/// `host import`.
pub fn main(args: ImportArgs) -> Result<()> {
    let report = run(&args)?;
    println!(
        "imported {} ({} params, {} classes, labels: {}) from {} into {}",
        report.arch, report.params, report.classes, report.labels, report.from, report.out
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

pub fn run(args: &ImportArgs) -> Result<ImportReport> {
    let run = RunDir::new(&args.out);
    if run.recover()?.is_some() {
        bail!("--out {} already holds a run; choose another directory", args.out.display());
    }
    let (tensors, _) = read_weights_file(&args.weights)?;
    let base = ResNetConfig::from_name(&args.arch).ok_or_else(|| anyhow!("unknown architecture `{}`", args.arch))?;
    let config = config_from_tensors(base, &tensors).ok_or_else(|| {
        anyhow!(
            "{}: no `fc.bias` or `conv1.weight` tensor: not a state_dict of a torchvision-style ResNet",
            args.weights.display()
        )
    })?;
    config.validate().map_err(|e| anyhow!("{}: {e}", args.weights.display()))?;
    // Tensors the architecture does not have are an error (a ResNet-50 file named as a
    // ResNet-18 one), as are non-finite values.
    check_against_graph(&args.weights, &tensors, &config, &args.arch)?;
    if config.stem == Stem::Small && args.image_size == IMAGENET_TRAIN_SIZE {
        eprintln!("note: {} has a small-image stem (3x3 first conv) but is set up for {} px inputs; see --image-size", args.weights.display(), args.image_size);
    }
    // Loading into the graph's network checks that every parameter is there, shaped right.
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, &config, ModelOptions::default())?;
    model
        .load_state_dict(&tensors, &args.weights, &[])
        .with_context(|| format!("{} does not hold `{}` weights", args.weights.display(), args.arch))?;
    let (classes, labels_source) = class_names(args, config.num_classes as usize)?;
    let from = std::fs::canonicalize(&args.weights).unwrap_or_else(|_| args.weights.clone());
    let state = RunState {
        format: RUN_FORMAT.into(),
        epoch: 0,
        step: 0,
        train_seconds: 0.0,
        seed: 0,
        config,
        preprocess: Presets::imagenet(args.image_size).eval,
        classes,
        args: serde_json::json!({
            "arch": args.arch,
            "image_size": args.image_size,
            "dataset": null,
            "imported_from": from.display().to_string(),
        }),
        command: std::env::args().collect(),
        host_version: env!("CARGO_PKG_VERSION").into(),
    };
    let checkpoint = to_safetensors_bytes(&model.state_dict(), checkpoint_metadata(&config, 0, 0)?)?;
    std::fs::create_dir_all(&run.dir).with_context(|| format!("cannot create {}", run.dir.display()))?;
    let files = [
        (CHECKPOINT_FILE, checkpoint),
        (ARGS_FILE, serde_json::to_string_pretty(&state)?.into_bytes()),
        (LABELS_FILE, labels_bytes(&state.classes)),
    ];
    manifest::commit(&run.dir, 0, 0, &files)?;
    Ok(ImportReport {
        out: run.dir.display().to_string(),
        from: args.weights.display().to_string(),
        arch: args.arch.clone(),
        params: config.num_params(),
        classes: state.classes.len(),
        labels: labels_source,
        image_size: args.image_size,
    })
}
