//! `host train`, laid out like torchvision's `references/classification/train.py`:
//! [`load_data`], [`train_one_epoch`], [`evaluate`], [`main`]. `main` goes data -> model ->
//! criterion -> optimizer -> schedule -> resume -> epoch loop (train, evaluate, checkpoint,
//! metrics line).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::builder::PossibleValuesParser;
use clap::ArgAction;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use shared::preprocess::Preprocess;
use shared::{ResNetConfig, Stem};
use tch::{nn, Device, Kind, Tensor};

use crate::args::{
    float_in, float_within, int_in, Bounds, ComputeArgs, RuntimeArgs, StemArg, MAX_BATCH, MAX_EPOCHS, MAX_IMAGE_SIDE,
    MAX_THREADS, MIN_IMAGE_SIDE,
};
use crate::checkpoint::{RunDir, RunState, RUN_FORMAT};
use crate::data::{DataOptions, Dataset, DatasetSpec, LoaderSpec, Source};
use crate::device;
use crate::dist::launch::{self, Launch};
use crate::dist::{self, Group, Rank, Reducer};
use crate::loss_scale::{LossScaleConfig, LossScaler};
use crate::model::{ModelOptions, ResNet};
use crate::optim::{Sgd, SgdConfig};
use crate::presets::Transform;
use crate::rng::{epoch_order, Purpose, Rng};
use crate::schedule::WarmupCosine;

/// The default demo: ResNet-8 (small stem, 78k parameters) on Fashion-MNIST; the exact command
/// and its measured accuracy and time are in `host/README.md`. Eight epochs: 91.1% test top-1
/// after 356 s of training on the 2-core CI machine (1,300-1,650 img/s); three epochs stop at 88.6%.
pub const DEFAULT_ARCH: &str = "resnet8";
pub const DEFAULT_EPOCHS: u32 = 8;
pub const DEFAULT_BATCH_SIZE: usize = 128;
/// NVIDIA recipe: lr 0.256 for a batch of 256, scaled linearly with the batch size.
pub const LR_PER_256: f64 = 0.256;
pub const REFERENCE_BATCH: f64 = 256.0;
/// Most ranks of a data-parallel job (`--nproc-per-node`, `--nnodes`).
pub const MAX_RANKS: u64 = 65_536;
/// Progress-bar refresh interval in steps (each refresh reads the loss back from the device).
const PROGRESS_EVERY: u64 = 10;

/// `host train` flags. Recipe defaults are NVIDIA's ResNet-50 v1.5 recipe.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Dataset: `fashion-mnist[:DIR]` (idx files, raw or .gz; default DIR
    /// /usr/share/datasets/fashion-mnist), `imagefolder:PATH` (PATH/train and PATH/val, one
    /// folder per class, JPEG/PNG) or `synthetic` (generated, 10 classes).
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetSpec,
    /// Network architecture.
    #[arg(long, default_value = DEFAULT_ARCH, value_parser = PossibleValuesParser::new(ResNetConfig::NAMES))]
    pub arch: String,
    /// Stem; default: small for fashion-mnist, imagenet otherwise.
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    /// Total training epochs (sets the length of the cosine schedule).
    #[arg(long, default_value_t = DEFAULT_EPOCHS, value_parser = int_in::<u32>(1, MAX_EPOCHS))]
    pub epochs: u32,
    /// Stop after this many epochs in this invocation (continue later with --resume).
    #[arg(long, value_parser = int_in::<u32>(1, MAX_EPOCHS))]
    pub run_epochs: Option<u32>,
    /// Images per optimizer step.
    #[arg(short = 'b', long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub batch_size: usize,
    /// Peak learning rate; default 0.256 x batch-size / 256.
    #[arg(long, value_parser = float_within(Bounds { lo: 0.0f64, hi: 100.0, open_lo: true, open_hi: false }))]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.875, value_parser = float_within(Bounds { lo: 0.0f64, hi: 1.0, open_lo: false, open_hi: true }))]
    pub momentum: f64,
    /// Weight decay (conv and linear weights only; not BatchNorm, not biases).
    #[arg(long, default_value_t = 1.0 / 32768.0, value_parser = float_in(0.0f64, 1.0))]
    pub weight_decay: f64,
    /// Label smoothing of the cross-entropy loss.
    #[arg(long, default_value_t = 0.1, value_parser = float_within(Bounds { lo: 0.0f64, hi: 1.0, open_lo: false, open_hi: true }))]
    pub label_smoothing: f64,
    /// Mixup alpha (0: off; NVIDIA uses 0.2 for long runs).
    #[arg(long, default_value_t = 0.0, value_parser = float_in(0.0f64, 100.0))]
    pub mixup: f64,
    /// Epochs of linear learning-rate warm-up before the cosine decay (fractions allowed;
    /// NVIDIA uses 8 for 90+ epoch ImageNet runs).
    #[arg(long, default_value_t = 1.0, value_parser = float_in(0.0f64, MAX_EPOCHS as f64))]
    pub warmup_epochs: f64,
    /// Zero-initialise the last BatchNorm weight of each residual block (true/false).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub zero_init_residual: bool,
    /// Seed of weight init, data order, augmentation and mixup.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub compute: ComputeArgs,
    /// Initial fp16 loss scale.
    #[arg(long, default_value_t = 65536.0, value_parser = float_within(Bounds { lo: 0.0f64, hi: 1e9, open_lo: true, open_hi: false }))]
    pub loss_scale: f64,
    /// Finite fp16 steps before the loss scale doubles.
    #[arg(long, default_value_t = 2000, value_parser = int_in::<u64>(1, u64::MAX))]
    pub loss_scale_growth_interval: u64,
    /// Continue the run in --out from its last checkpoint (flags come from its args.json;
    /// only --epochs, --run-epochs, --device, --threads, --workers and --eval-batch-size may change).
    #[arg(long)]
    pub resume: bool,
    /// Initialise from a state_dict: safetensors, or torchvision's `.pth` (torch.save) file.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// With --init-from: keep the fresh init for tensors under this name prefix (e.g. `fc` to
    /// fine-tune on a different number of classes). Repeatable.
    #[arg(long)]
    pub init_exclude: Vec<String>,
    /// Run directory: checkpoint, optimizer state, args.json, metrics.jsonl, labels.txt, run.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Train on the first N training images only.
    #[arg(long, value_parser = int_in::<usize>(1, u64::MAX))]
    pub limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = int_in::<usize>(1, u64::MAX))]
    pub limit_test: Option<usize>,
    /// Network input side (default: 28 for fashion-mnist, 224 for imagefolder, 32 for synthetic).
    #[arg(long, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: Option<u32>,
    /// Image decode / augmentation threads (default: all cores).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_THREADS))]
    pub workers: Option<usize>,
    /// Evaluation batch size (default: the training batch size).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub eval_batch_size: Option<usize>,
    /// Data-parallel: start N ranks of this command on this machine (as torchrun does), one per
    /// GPU with --device cuda. --batch-size is per rank: the global batch is ranks x batch-size.
    /// Without it, torchrun's environment (WORLD_SIZE > 1, RANK, ...) makes this process a rank.
    #[arg(long, value_parser = int_in::<usize>(1, MAX_RANKS))]
    #[serde(skip)]
    pub nproc_per_node: Option<usize>,
    /// With --nproc-per-node: machines in the job (MASTER_ADDR and MASTER_PORT: rank 0's machine).
    #[arg(long, default_value_t = 1, value_parser = int_in::<usize>(1, MAX_RANKS))]
    #[serde(skip, default = "one")]
    pub nnodes: usize,
    /// With --nproc-per-node: this machine's index in 0..nnodes (its ranks are node-rank x N + local).
    #[arg(long, default_value_t = 0, value_parser = int_in::<usize>(0, MAX_RANKS))]
    #[serde(skip)]
    pub node_rank: usize,
    /// BatchNorm statistics over the global batch (summed over all ranks) instead of each rank's.
    #[arg(long)]
    #[serde(default)]
    pub sync_bn: bool,
    /// Seconds a collective waits for the other ranks before the job stops with an error.
    #[arg(long, default_value_t = dist::DEFAULT_TIMEOUT_S, value_parser = int_in::<u64>(1, 86_400))]
    #[serde(default = "default_dist_timeout")]
    pub dist_timeout: u64,
    /// Ranks the run trains on (from WORLD_SIZE; saved, so that --resume keeps the global batch).
    #[arg(skip = 1usize)]
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn default_dist_timeout() -> u64 {
    dist::DEFAULT_TIMEOUT_S
}

/// Flags that may differ when resuming (they do not change the computation).
const RESUME_OVERRIDABLE: [&str; 9] =
    ["epochs", "run_epochs", "device", "threads", "workers", "eval_batch_size", "resume", "out", "dist_timeout"];

impl TrainArgs {
    /// Images per optimizer step over all ranks.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.world_size
    }

    /// `--lr`, or 0.256 per 256 images of the global batch.
    pub fn base_lr(&self) -> f64 {
        self.lr.unwrap_or(LR_PER_256 * self.global_batch() as f64 / REFERENCE_BATCH)
    }

    fn data_options(&self) -> DataOptions {
        DataOptions { limit_train: self.limit_train, limit_test: self.limit_test, image_size: self.image_size }
    }

    /// For `--resume`: the saved flags, with the explicitly given overridable ones applied. An
    /// explicit flag that would change the computation is an error.
    pub fn merge_for_resume(&self, saved: &serde_json::Value, explicit: &[String]) -> Result<TrainArgs> {
        let mut merged = saved.clone();
        let current = serde_json::to_value(self)?;
        let (Some(m), Some(c)) = (merged.as_object_mut(), current.as_object()) else {
            bail!("args.json: `args` is not an object");
        };
        for id in explicit {
            let Some(new) = c.get(id) else { continue };
            if RESUME_OVERRIDABLE.contains(&id.as_str()) {
                m.insert(id.clone(), new.clone());
            } else if m.get(id) != Some(new) {
                bail!(
                    "--{}: {} differs from the resumed run's {}; a resumed run keeps its flags",
                    id.replace('_', "-"),
                    new,
                    m.get(id).map_or("(unset)".to_string(), |v| v.to_string())
                );
            }
        }
        serde_json::from_value(merged).context("args.json: cannot read the saved flags")
    }
}

/// The network config for a dataset: preset `arch`, classes and channels from the data, stem
/// from `--stem` or the dataset.
pub fn model_config(arch: &str, stem: Option<StemArg>, spec: &DatasetSpec, classes: usize, in_channels: u8) -> Result<ResNetConfig> {
    let base = ResNetConfig::from_name(arch).ok_or_else(|| anyhow!("unknown architecture `{arch}`"))?;
    let stem = match stem {
        Some(s) => s.into(),
        None if matches!(spec, DatasetSpec::FashionMnist(_)) => Stem::Small,
        None => Stem::ImageNet,
    };
    Ok(base.with_classes(classes as u32).with_in_channels(in_channels).with_stem(stem))
}

/// Opens both splits of the dataset.
pub fn load_data(args: &TrainArgs) -> Result<Dataset> {
    Dataset::open(&args.dataset, &args.data_options())
}

/// Cross-entropy with label smoothing, mean over the batch.
#[derive(Clone, Copy, Debug)]
pub struct Criterion {
    pub label_smoothing: f64,
}

impl Criterion {
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        logits.cross_entropy_loss::<Tensor>(target, None, tch::Reduction::Mean, -100, self.label_smoothing)
    }
}

/// One mixed batch: `lam * x + (1 - lam) * x.flip(0)`, targets mixed the same way in the loss.
pub struct Mixup {
    pub lam: f64,
}

/// The state one optimizer step needs.
pub struct Trainer<'a> {
    pub model: &'a ResNet,
    pub opt: Sgd,
    pub scaler: LossScaler,
    pub criterion: Criterion,
    /// Data-parallel: averages the gradients over ranks during backward.
    pub reducer: Option<&'a Reducer>,
}

/// What one step did.
pub struct StepOutcome {
    /// The (unscaled) loss, still on the device.
    pub loss: Tensor,
    /// `false` when fp16 gradients overflowed and the update was skipped.
    pub applied: bool,
}

impl Trainer<'_> {
    /// Forward, loss, backward (with the reducer: gradients averaged over ranks, bucket by bucket
    /// as backward produces them), unscale + overflow check, SGD update: one training step, the
    /// same code `host train` and `host bench-train` run. Errors come from collectives only.
    pub fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64, mixup: Option<&Mixup>) -> Result<StepOutcome> {
        let (x, loss_of): (Tensor, Box<dyn Fn(&Tensor) -> Tensor>) = match mixup {
            Some(&Mixup { lam }) => {
                let x = x * lam + x.flip([0]) * (1.0 - lam);
                let (y, y2, c) = (y.shallow_clone(), y.flip([0]), self.criterion);
                (x, Box::new(move |logits| c.loss(logits, &y) * lam + c.loss(logits, &y2) * (1.0 - lam)))
            }
            None => {
                let (y, c) = (y.shallow_clone(), self.criterion);
                (x.shallow_clone(), Box::new(move |logits| c.loss(logits, &y)))
            }
        };
        let logits = self.model.f_forward_t(&x, true)?;
        let loss = loss_of(&logits);
        self.opt.zero_grad();
        if let Some(r) = self.reducer {
            r.prepare_for_backward()?;
        }
        if let Err(e) = self.scaler.scale_loss(&loss).f_backward() {
            return Err(match self.reducer {
                Some(r) => r.backward_error(e),
                None => anyhow!("backward: {e}"),
            });
        }
        let applied = self.scaler.unscale(self.opt.params());
        if applied {
            self.opt.step(lr);
        }
        self.scaler.update(applied);
        Ok(StepOutcome { loss: loss.detach(), applied })
    }
}

/// Statistics of one training epoch.
#[derive(Clone, Debug, Default)]
pub struct EpochStats {
    pub loss: f64,
    pub images: usize,
    pub seconds: f64,
    pub skipped: usize,
    pub first_skip: Option<String>,
    pub skipped_steps: u64,
    pub last_lr: f64,
}

/// A batch as device tensors `[N, C, H, W]` and `[N]`.
pub fn batch_tensors(images: &[f32], labels: &[i64], shape: [i64; 3], device: Device) -> (Tensor, Tensor) {
    let n = labels.len() as i64;
    // On CUDA: pinned host memory and asynchronous copies.
    let x = crate::data::to_device(images, &[n, shape[0], shape[1], shape[2]], device);
    let y = crate::data::to_device(labels, &[n], device);
    (x, y)
}

fn progress_bar(len: u64, prefix: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix);
    pb
}

/// One pass over the training data; `step` is the global step counter (advanced here). With a
/// process group, this rank trains on its [`dist::shard`] of the epoch and the returned loss and
/// image counts are summed over ranks.
#[allow(clippy::too_many_arguments)]
pub fn train_one_epoch(
    trainer: &mut Trainer,
    train: &dyn Source,
    transform: &Transform,
    schedule: &WarmupCosine,
    step: &mut u64,
    epoch: u32,
    epochs: u32,
    args: &TrainArgs,
    device: Device,
    group: Option<&Group>,
) -> Result<EpochStats> {
    let order = epoch_order(train.len(), args.seed, u64::from(epoch));
    let order = match group {
        Some(g) => dist::shard(&order, g.rank, g.world, args.batch_size),
        None => order,
    };
    let loader = LoaderSpec {
        source: train,
        transform,
        order,
        batch_size: args.batch_size,
        drop_last: true,
        seed: args.seed,
        epoch: u64::from(epoch),
    };
    let shape = transform.sample_shape();
    let pb = progress_bar(loader.num_batches() as u64, format!("epoch {}/{epochs}", epoch + 1), group.is_none_or(|g| g.rank == 0));
    let mut stats = EpochStats::default();
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut steps_in_epoch = 0u64;
    let start = Instant::now();
    loader.for_each(|batch| {
        stats.skipped += batch.skipped;
        if stats.first_skip.is_none() {
            stats.first_skip = batch.first_skip.clone();
        }
        if batch.len() < 2 {
            if let Some(g) = group {
                // Every rank must take part in every step's collectives: no rank may skip one.
                bail!(
                    "rank {}: step {} has {} readable image(s) of {} on this rank (the rest are unreadable: {}); \
                     a data-parallel step needs at least 2 per rank: remove the unreadable files or raise --batch-size",
                    g.rank,
                    *step,
                    batch.len(),
                    args.batch_size,
                    batch.first_skip.as_deref().unwrap_or("?")
                );
            }
            return Ok(()); // BatchNorm needs two samples; only corrupt files shrink a batch this far
        }
        let (x, y) = batch_tensors(&batch.images, &batch.labels, shape, device);
        let lr = schedule.lr(*step);
        let mixup = (args.mixup > 0.0).then(|| Mixup {
            lam: Rng::stream(args.seed, Purpose::Mixup, u64::from(epoch), *step).beta(args.mixup, args.mixup),
        });
        let out = trainer.step(&x, &y, lr, mixup.as_ref())?;
        loss_sum += out.loss.to_kind(Kind::Double) * batch.len() as f64;
        if !out.applied {
            stats.skipped_steps += 1;
        }
        *step += 1;
        steps_in_epoch += 1;
        stats.images += batch.len();
        stats.last_lr = lr;
        if steps_in_epoch % PROGRESS_EVERY == 0 {
            let mean = loss_sum.double_value(&[]) / stats.images as f64;
            let ips = stats.images as f64 / start.elapsed().as_secs_f64();
            pb.set_message(format!("loss {mean:.4} | {ips:.0} img/s | lr {lr:.4}"));
        }
        pb.inc(1);
        Ok(())
    })?;
    device::synchronize(device);
    pb.finish_and_clear();
    if let Some(g) = group {
        let counts = Tensor::from_slice(&[stats.images as f64, stats.skipped as f64]).to_device(device);
        let totals = Tensor::cat(&[loss_sum.view([1]), counts], 0);
        g.allreduce_sum(&[&totals], "summing the epoch's training loss over ranks")?;
        let t: Vec<f64> = Vec::try_from(&totals.to_device(Device::Cpu))?;
        loss_sum = Tensor::from(t[0]);
        stats.images = t[1] as usize;
        stats.skipped = t[2] as usize;
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.loss = if stats.images > 0 { loss_sum.double_value(&[]) / stats.images as f64 } else { f64::NAN };
    if !stats.loss.is_finite() {
        bail!(
            "training diverged in epoch {} (mean loss {}); lower --lr or use --amp off",
            epoch + 1,
            stats.loss
        );
    }
    Ok(stats)
}

/// Top-1 / top-5 accuracy (percent) and mean loss over a split.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalStats {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
    pub skipped: usize,
    pub seconds: f64,
}

/// Evaluates `model` on `source` with the `shared` eval preprocessing. With a process group, each
/// rank evaluates every `world`-th image and the sums are all-reduced: every rank returns the
/// statistics of the whole split.
pub fn evaluate(
    model: &ResNet,
    criterion: &Criterion,
    source: &dyn Source,
    preprocess: &Preprocess,
    batch_size: usize,
    device: Device,
    group: Option<&Group>,
) -> Result<EvalStats> {
    let _guard = tch::no_grad_guard();
    let transform = Transform::Eval(*preprocess);
    let loader = LoaderSpec {
        source,
        transform: &transform,
        order: match group {
            Some(g) => dist::shard_strided(source.len(), g.rank, g.world),
            None => (0..source.len()).collect(),
        },
        batch_size,
        drop_last: false,
        seed: 0,
        epoch: 0,
    };
    let shape = transform.sample_shape();
    let k = (model.config.num_classes as i64).min(5);
    let zeros = || Tensor::zeros([], (Kind::Double, device));
    let (mut loss_sum, mut top1, mut top5) = (zeros(), zeros(), zeros());
    let mut stats = EvalStats::default();
    let start = Instant::now();
    loader.for_each(|batch| {
        stats.skipped += batch.skipped;
        if batch.is_empty() {
            return Ok(());
        }
        let (x, y) = batch_tensors(&batch.images, &batch.labels, shape, device);
        let logits = model.forward_t(&x, false);
        loss_sum += criterion.loss(&logits, &y).to_kind(Kind::Double) * batch.len() as f64;
        let (_, pred) = logits.topk(k, 1, true, true);
        let hit = pred.eq_tensor(&y.view([-1, 1])).to_kind(Kind::Double);
        top1 += hit.select(1, 0).sum(Kind::Double);
        top5 += hit.sum(Kind::Double);
        stats.images += batch.len();
        Ok(())
    })?;
    if let Some(g) = group {
        let counts = Tensor::from_slice(&[stats.images as f64, stats.skipped as f64]).to_device(device);
        let totals = Tensor::cat(&[loss_sum.view([1]), top1.view([1]), top5.view([1]), counts], 0);
        g.allreduce_sum(&[&totals], "summing the evaluation over ranks")?;
        let t: Vec<f64> = Vec::try_from(&totals.to_device(Device::Cpu))?;
        (loss_sum, top1, top5) = (Tensor::from(t[0]), Tensor::from(t[1]), Tensor::from(t[2]));
        stats.images = t[3] as usize;
        stats.skipped = t[4] as usize;
    }
    if stats.images == 0 {
        bail!("no readable test image");
    }
    let n = stats.images as f64;
    stats.loss = loss_sum.double_value(&[]) / n;
    stats.top1 = 100.0 * top1.double_value(&[]) / n;
    stats.top5 = 100.0 * top5.double_value(&[]) / n;
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// One `metrics.jsonl` line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    /// Training images per second (data loading included, evaluation excluded).
    pub images_per_sec: f64,
    pub lr: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Training seconds since the start of the run (resumed runs included).
    pub elapsed_train_seconds: f64,
    pub skipped_images: usize,
    pub skipped_steps: u64,
    pub loss_scale: f64,
    pub step: u64,
}

/// The run directory of `args.out` and the flags to train with: for `--resume`, its saved state
/// and the saved flags with the explicit overridable ones applied; otherwise a fresh directory.
/// A save a kill interrupted is first finished or rolled back ([`RunDir::recover`]).
/// In a data-parallel job, only rank 0 may finish or roll back an interrupted save; the other
/// ranks (`writer` false) open the directory after it, read-only.
fn open_run(args: TrainArgs, explicit: &[String], writer: bool) -> Result<(RunDir, TrainArgs, Option<RunState>)> {
    let run = RunDir::new(&args.out);
    let committed = if writer { run.recover()?.is_some() } else { run.has_checkpoint() };
    let resumed = if args.resume {
        if !committed {
            bail!(
                "--resume: no checkpoint in {} ({} not found: no epoch was saved yet; start the run without --resume)",
                run.dir.display(),
                run.manifest().display()
            );
        }
        let state = run.load_state()?;
        if let Some(from) = state.imported_from() {
            bail!(
                "--resume: {} was made by `host import` from {from}, not by training: there is nothing to resume; \
                 fine-tune it with `host train --init-from {} --out NEW_DIR`",
                run.dir.display(),
                run.dir.display()
            );
        }
        Some(state)
    } else {
        if committed {
            bail!(
                "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
                run.dir.display()
            );
        }
        None
    };
    let world = args.world_size;
    let args = match &resumed {
        Some(state) => args.merge_for_resume(&state.args, explicit)?,
        None => args,
    };
    if args.world_size != world {
        bail!(
            "--resume: {} was trained on {} rank(s) (global batch {}) and this job has {world}; \
             resume it with {} rank(s) so that every step sees the same global batch",
            run.dir.display(),
            args.world_size,
            args.global_batch(),
            args.world_size
        );
    }
    let args = TrainArgs { world_size: world, ..args };
    if args.batch_size == 0 || args.eval_batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if args.epochs == 0 || args.run_epochs == Some(0) {
        bail!("--epochs and --run-epochs must be at least 1: an epoch is the unit a run directory is saved in");
    }
    Ok((run, args, resumed))
}

/// The network, seeded by `--seed`, initialised from `--init-from` unless resuming.
fn build_model(args: &TrainArgs, vs: &nn::VarStore, config: &ResNetConfig, resuming: bool) -> Result<ResNet> {
    tch::manual_seed(args.seed as i64);
    let options = ModelOptions { sync_bn: args.sync_bn, ..args.compute.model_options(args.zero_init_residual) };
    let model = ResNet::new(vs, config, options)?;
    if let (Some(path), false) = (&args.init_from, resuming) {
        crate::checkpoint::load_weights(path, &model, &args.init_exclude)?;
    }
    Ok(model)
}

/// Criterion, optimizer, loss scaler (in the [`Trainer`]) and the learning-rate schedule.
fn build_trainer<'a>(
    args: &TrainArgs,
    model: &'a ResNet,
    steps_per_epoch: u64,
    reducer: Option<&'a Reducer>,
) -> (Trainer<'a>, WarmupCosine) {
    let criterion = Criterion { label_smoothing: args.label_smoothing };
    let opt = Sgd::new(model, SgdConfig { momentum: args.momentum, weight_decay: args.weight_decay });
    let warmup_steps = (args.warmup_epochs * steps_per_epoch as f64).round() as u64;
    let schedule = WarmupCosine::new(args.base_lr(), warmup_steps, steps_per_epoch * u64::from(args.epochs));
    let scale_config = LossScaleConfig {
        init_scale: args.loss_scale,
        growth_interval: args.loss_scale_growth_interval,
        ..LossScaleConfig::default()
    };
    let scaler = LossScaler::new(scale_config, args.compute.amp.needs_loss_scaling());
    (Trainer { model, opt, scaler, criterion, reducer }, schedule)
}

/// Restores a resumed run's weights, optimizer and loss scaler (or creates the run directory);
/// returns the (epoch, step, training seconds) to continue from.
fn resume(
    run: &RunDir,
    resumed: Option<&RunState>,
    config: &ResNetConfig,
    trainer: &mut Trainer<'_>,
    writer: bool,
) -> Result<(u32, u64, f64)> {
    let Some(state) = resumed else {
        if writer {
            std::fs::create_dir_all(&run.dir).with_context(|| format!("cannot create {}", run.dir.display()))?;
        }
        return Ok((0, 0, 0.0));
    };
    if state.config != *config {
        bail!("{}: the saved network config differs from the one these flags build", run.args().display());
    }
    run.restore(state, trainer.model, &mut trainer.opt, &mut trainer.scaler)?;
    Ok((state.epoch, state.step, state.train_seconds))
}

/// The line `host train` prints first: network, data, batch, device, epochs.
fn describe(args: &TrainArgs, config: &ResNetConfig, data: &Dataset, device: Device, threads: usize, first: u32, end: u32) -> String {
    format!(
        "train {} ({} params) on {} ({} train / {} test images, {} classes), {} on {}, {threads} threads, amp {}{}, epochs {}..{} of {}",
        args.arch,
        config.num_params(),
        args.dataset,
        data.train.len(),
        data.test.len(),
        data.classes.len(),
        match (args.world_size, args.batch_size) {
            (1, 1) => "1 image/step".to_string(),
            (1, b) => format!("batch {b}"),
            (w, b) => format!("{w} ranks x batch {b} (global batch {})", w * b),
        },
        device::device_name(device),
        args.compute.amp.name(),
        if args.compute.channels_last { ", channels-last" } else { "" },
        first,
        end,
        args.epochs
    )
}

/// The line printed after each epoch.
fn epoch_line(m: &EpochMetrics, epochs: u32, first_skip: Option<&str>) -> String {
    let mut line = format!(
        "epoch {}/{epochs}  train_loss {:.4}  test_top1 {:.2}%  test_top5 {:.2}%  {:.0} img/s  train {:.1}s  eval {:.1}s  total {:.1}s",
        m.epoch, m.train_loss, m.test_top1, m.test_top5, m.images_per_sec, m.train_seconds, m.eval_seconds,
        m.elapsed_train_seconds
    );
    if m.skipped_images > 0 {
        line += &format!("  skipped {} unreadable image(s)", m.skipped_images);
        if let Some(why) = first_skip {
            line += &format!(" (first: {why})");
        }
    }
    if m.skipped_steps > 0 {
        line += &format!("  {} overflow step(s) skipped, loss scale {}", m.skipped_steps, m.loss_scale);
    }
    line
}

/// This process's device: `--device`, with `cuda` meaning `cuda:LOCAL_RANK` in a data-parallel
/// job (one GPU per local rank, as torchrun jobs do).
fn rank_device(args: &TrainArgs, rank: Option<&Rank>) -> Result<Device> {
    let device = args.runtime.device.resolve()?;
    match (rank, device) {
        (Some(r), Device::Cuda(0)) if r.local_world > 1 => {
            let count = tch::Cuda::device_count() as usize;
            if r.local_rank >= count {
                bail!(
                    "rank {} (local rank {}): this machine has {count} CUDA device(s) for {} local ranks; \
                     start at most {count} ranks per machine",
                    r.rank,
                    r.local_rank,
                    r.local_world
                );
            }
            Ok(Device::Cuda(r.local_rank))
        }
        _ => Ok(device),
    }
}

/// Joins the data-parallel job of torchrun's environment, if any.
fn join_group(args: &TrainArgs, rank: Option<&Rank>, device: Device) -> Result<Option<Group>> {
    let Some(r) = rank else { return Ok(None) };
    let nccl = device.is_cuda() && dist::has_nccl();
    if device.is_cuda() && !nccl && r.is_main() {
        eprintln!(
            "note: this host binary was built without NCCL (see host/README.md); gradients of CUDA tensors \
             are all-reduced by Gloo through host memory"
        );
    }
    Group::init(r, Duration::from_secs(args.dist_timeout), nccl).map(Some)
}

/// Every rank starts from rank 0's weights and BatchNorm statistics (they are equal already when
/// all ranks built the network from the same seed or checkpoint; this makes it certain).
fn sync_model(group: &Group, model: &ResNet) -> Result<()> {
    let params: Vec<&Tensor> = model.trainable().map(|t| &t.tensor).collect();
    group.verify_params(&params)?;
    broadcast_tensors(group, model, |_| true, "broadcasting rank 0's initial weights")
}

/// Rank 0's values of the model tensors `keep` selects, in place on every rank.
fn broadcast_tensors(group: &Group, model: &ResNet, keep: impl Fn(&crate::model::NamedTensor) -> bool, what: &str) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let views: Vec<Tensor> = model.named_tensors().iter().filter(|t| keep(t)).map(|t| t.tensor.detach()).collect();
    let refs: Vec<&Tensor> = views.iter().collect();
    group.broadcast(&refs, 0, what)
}

/// `host train`: data -> model -> criterion, optimizer, schedule -> resume -> epoch loop (train,
/// evaluate, checkpoint, metrics). `explicit` lists the flags given on the command line (clap
/// ids), which `--resume` needs to tell overrides from defaults.
///
/// Data-parallel: with `--nproc-per-node` this process only launches and watches the ranks
/// ([`launch::run`]); with torchrun's environment it is one rank: it joins the process group,
/// trains on its shard of each epoch with gradients averaged by the DDP reducer, and only rank 0
/// writes the run directory and prints.
pub fn main(args: TrainArgs, explicit: &[String]) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        return launch::run(&Launch { nproc_per_node: n, nnodes: args.nnodes, node_rank: args.node_rank });
    }
    if args.nnodes != 1 || args.node_rank != 0 {
        bail!("--nnodes and --node-rank go with --nproc-per-node");
    }
    let rank = Rank::from_env()?;
    let writer = rank.as_ref().is_none_or(Rank::is_main);
    let device = rank_device(&args, rank.as_ref())?;
    let group = join_group(&args, rank.as_ref(), device)?;
    let args = TrainArgs { world_size: rank.as_ref().map_or(1, |r| r.world), ..args };
    // Rank 0 opens (and may repair) the run directory before the others read it.
    if let (Some(g), false) = (&group, writer) {
        g.barrier("waiting for rank 0 to open the run directory")?;
    }
    let (run, args, resumed) = open_run(args, explicit, writer)?;
    if let (Some(g), true) = (&group, writer) {
        g.barrier("waiting for the other ranks to start")?;
    }
    device::configure(device);
    let per_rank = |n: Option<usize>| {
        n.or_else(|| {
            let local = rank.as_ref()?.local_world;
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            Some((cores / local).max(1))
        })
    };
    let threads = device::set_threads(per_rank(args.runtime.threads));
    crate::data::init_workers(per_rank(args.workers));

    let data = load_data(&args)?;
    let steps_per_epoch = (data.train.len() / args.global_batch()) as u64;
    if steps_per_epoch == 0 {
        bail!(
            "the global batch ({} rank(s) x --batch-size {}) is larger than the {} training images",
            args.world_size,
            args.batch_size,
            data.train.len()
        );
    }
    let config = model_config(&args.arch, args.stem, &args.dataset, data.classes.len(), data.in_channels)?;
    let vs = nn::VarStore::new(device);
    let model = build_model(&args, &vs, &config, resumed.is_some())?;
    let reducer = match &group {
        Some(g) => {
            if args.sync_bn {
                g.enable_sync_bn();
            }
            let params: Vec<&Tensor> = model.trainable().map(|t| &t.tensor).collect();
            Some(Reducer::new(g, &params)?)
        }
        None => None,
    };
    let (mut trainer, schedule) = build_trainer(&args, &model, steps_per_epoch, reducer.as_ref());
    let criterion = trainer.criterion;
    let (mut epoch, mut step, mut train_seconds) = resume(&run, resumed.as_ref(), &config, &mut trainer, writer)?;
    if let Some(g) = &group {
        sync_model(g, &model)?;
    }

    let end = match args.run_epochs {
        Some(n) => args.epochs.min(epoch + n),
        None => args.epochs,
    };
    let eval_batch = args.eval_batch_size.unwrap_or(args.batch_size);
    if writer {
        println!("{}", describe(&args, &config, &data, device, threads, epoch + 1, end));
    }
    let train_transform = Transform::Train(data.presets.train.clone());
    let command: Vec<String> = std::env::args().collect();
    while epoch < end {
        let stats = train_one_epoch(
            &mut trainer,
            data.train.as_ref(),
            &train_transform,
            &schedule,
            &mut step,
            epoch,
            args.epochs,
            &args,
            device,
            group.as_ref(),
        )?;
        if let Some(g) = &group {
            // Without --sync-bn each rank has its own running statistics: evaluate and save rank
            // 0's (DDP's broadcast_buffers does the same at every forward).
            broadcast_tensors(g, &model, |t| !t.kind.is_trainable(), "broadcasting rank 0's BatchNorm statistics")?;
        }
        let ev = evaluate(&model, &criterion, data.test.as_ref(), &data.presets.eval, eval_batch, device, group.as_ref())?;
        epoch += 1;
        train_seconds += stats.seconds;
        if !writer {
            continue;
        }
        let state = RunState {
            format: RUN_FORMAT.into(),
            epoch,
            step,
            train_seconds,
            seed: args.seed,
            config,
            preprocess: data.presets.eval,
            classes: data.classes.clone(),
            args: serde_json::to_value(&args)?,
            command: command.clone(),
            host_version: env!("CARGO_PKG_VERSION").into(),
        };
        let m = EpochMetrics {
            epoch,
            train_loss: stats.loss,
            test_loss: ev.loss,
            test_top1: ev.top1,
            test_top5: ev.top5,
            images_per_sec: stats.images as f64 / stats.seconds,
            lr: stats.last_lr,
            train_seconds: stats.seconds,
            eval_seconds: ev.seconds,
            elapsed_train_seconds: train_seconds,
            skipped_images: stats.skipped + ev.skipped,
            skipped_steps: stats.skipped_steps,
            loss_scale: trainer.scaler.scale,
            step,
        };
        // Weights, optimizer state, args.json and this metrics line: saved as one unit.
        run.save(&model, &trainer.opt, &trainer.scaler, &state, &serde_json::to_string(&m)?)?;
        println!("{}", epoch_line(&m, args.epochs, stats.first_skip.as_deref()));
    }
    if writer && run.has_checkpoint() {
        println!("checkpoint: {}", run.checkpoint().display());
    }
    Ok(())
}
