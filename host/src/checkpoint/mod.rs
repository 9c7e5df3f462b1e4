//! A run directory and its files, all written atomically (temporary file, fsync, rename), so an
//! interrupted run never leaves a broken file behind:
//!
//! | file | holds |
//! |---|---|
//! | `checkpoint.safetensors` | the model's `state_dict` (torchvision names, fp32, running stats, `num_batches_tracked`); metadata `format: pt`, `host.epoch`, `host.step`, `host.config` |
//! | `train_state.safetensors` | `momentum_buffer.<param>` tensors; metadata: epoch, step, loss scale and its growth tracker |
//! | `args.json` | [`RunState`]: epoch and step done, every flag, the seed, the network config, the eval `Preprocess`, class names |
//! | `metrics.jsonl` | one JSON object per epoch |
//! | `labels.txt` | class names, one per line |
//!
//! The three state files are written in that order and each carries the epoch; resuming checks
//! they agree, so a crash between two renames is reported instead of resumed wrongly.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use shared::preprocess::Preprocess;
use shared::ResNetConfig;
use tch::{Device, Kind, Tensor};

use crate::loss_scale::LossScaler;
use crate::model::ResNet;
use crate::optim::Sgd;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const TRAIN_STATE_FILE: &str = "train_state.safetensors";
pub const ARGS_FILE: &str = "args.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LABELS_FILE: &str = "labels.txt";
/// `format` of `args.json`.
pub const RUN_FORMAT: &str = "host-train-run/1";

const META_EPOCH: &str = "host.epoch";
const META_STEP: &str = "host.step";
const META_CONFIG: &str = "host.config";
const META_LOSS_SCALE: &str = "host.loss_scale";
const META_GROWTH_TRACKER: &str = "host.loss_scale_growth_tracker";

/// `args.json`: everything needed to resume exactly, and what `host export` embeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Seconds spent training (not evaluating) over all epochs, resumed ones included.
    pub train_seconds: f64,
    pub seed: u64,
    pub config: ResNetConfig,
    /// The evaluation preprocessing, exactly what a deployment must apply.
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    /// Every `host train` flag (a serialized `TrainArgs`).
    pub args: serde_json::Value,
    /// The command line of the invocation that wrote this state.
    pub command: Vec<String>,
    pub host_version: String,
}

/// Writes `bytes` to `path` atomically: `path.tmp`, fsync, rename over `path`, fsync the
/// directory. On failure the temporary file is removed and any previous `path` is intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!("{}.tmp", file_name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Persist the rename; not all filesystems allow opening a directory, so best effort.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A CPU tensor's bytes as a safetensors view.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store a {other:?} tensor in safetensors"),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Serializes named tensors (any device or memory format) with string metadata.
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let owned = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.to_device(Device::Cpu).contiguous();
            let dtype = dtype_of(t.kind()).with_context(|| format!("tensor `{name}`"))?;
            let numel = t.numel();
            let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut data, numel).with_context(|| format!("tensor `{name}`"))?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((name.as_str(), Owned { dtype, shape, data }))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(owned.iter().map(|(n, o)| (*n, o)), Some(metadata)).map_err(|e| anyhow!("safetensors: {e}"))
}

/// A safetensors file's tensors (on the CPU) and metadata. Errors name the file.
pub fn read_safetensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| anyhow!("{}: tensor `{name}` has unsupported dtype {:?}", path.display(), view.dtype()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        map.insert(name, t);
    }
    Ok((map, metadata))
}

/// Where a run directory's files are.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }
    pub fn train_state(&self) -> PathBuf {
        self.dir.join(TRAIN_STATE_FILE)
    }
    pub fn args(&self) -> PathBuf {
        self.dir.join(ARGS_FILE)
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join(METRICS_FILE)
    }
    pub fn labels(&self) -> PathBuf {
        self.dir.join(LABELS_FILE)
    }
    /// Whether a checkpoint (or its run state) exists here.
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint().exists() || self.args().exists()
    }

    /// Saves model, optimizer state and `args.json` (in that order, each atomically).
    pub fn save(&self, model: &ResNet, opt: &Sgd, scaler: &LossScaler, state: &RunState) -> Result<()> {
        let epoch = state.epoch.to_string();
        let step = state.step.to_string();
        let meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (META_EPOCH.to_string(), epoch.clone()),
            (META_STEP.to_string(), step.clone()),
            (META_CONFIG.to_string(), serde_json::to_string(&model.config)?),
        ]);
        let bytes = to_safetensors_bytes(&model.state_dict(), meta)?;
        write_atomic(&self.checkpoint(), &bytes)?;

        let meta = HashMap::from([
            (META_EPOCH.to_string(), epoch),
            (META_STEP.to_string(), step),
            (META_LOSS_SCALE.to_string(), scaler.scale.to_string()),
            (META_GROWTH_TRACKER.to_string(), scaler.growth_tracker.to_string()),
        ]);
        let bytes = to_safetensors_bytes(&opt.state(), meta)?;
        write_atomic(&self.train_state(), &bytes)?;

        write_atomic(&self.args(), serde_json::to_string_pretty(state)?.as_bytes())
    }

    /// Reads `args.json`.
    pub fn load_state(&self) -> Result<RunState> {
        let path = self.args();
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let state: RunState =
            serde_json::from_str(&text).with_context(|| format!("{}: not a host run state", path.display()))?;
        if state.format != RUN_FORMAT {
            bail!("{}: format `{}` is not `{RUN_FORMAT}`", path.display(), state.format);
        }
        Ok(state)
    }

    /// Restores model weights, optimizer state and loss scaler for `state` (from
    /// [`load_state`](Self::load_state)), checking the three files belong to the same epoch.
    pub fn restore(&self, state: &RunState, model: &ResNet, opt: &mut Sgd, scaler: &mut LossScaler) -> Result<()> {
        let ck = self.checkpoint();
        let (tensors, meta) = read_safetensors(&ck)?;
        check_epoch(&ck, &meta, state)?;
        model.load_state_dict(&tensors, &ck, &[])?;

        let ts = self.train_state();
        let (tensors, meta) = read_safetensors(&ts)?;
        check_epoch(&ts, &meta, state)?;
        opt.load_state(&tensors, &ts)?;
        let parse = |key: &str| -> Result<&String> {
            meta.get(key).ok_or_else(|| anyhow!("{}: metadata `{key}` is missing", ts.display()))
        };
        scaler.scale = parse(META_LOSS_SCALE)?.parse().with_context(|| format!("{}: bad loss scale", ts.display()))?;
        scaler.growth_tracker =
            parse(META_GROWTH_TRACKER)?.parse().with_context(|| format!("{}: bad growth tracker", ts.display()))?;
        Ok(())
    }
}

fn check_epoch(path: &Path, meta: &HashMap<String, String>, state: &RunState) -> Result<()> {
    let epoch = meta.get(META_EPOCH).and_then(|e| e.parse::<u32>().ok());
    let step = meta.get(META_STEP).and_then(|e| e.parse::<u64>().ok());
    if epoch != Some(state.epoch) || step != Some(state.step) {
        bail!(
            "{} is from epoch {epoch:?} step {step:?} but {ARGS_FILE} says epoch {} step {}: the run was \
             interrupted while saving; it cannot be resumed exactly",
            path.display(),
            state.epoch,
            state.step
        );
    }
    Ok(())
}

/// The network config stored in a host checkpoint's metadata, if any.
pub fn config_from_metadata(meta: &HashMap<String, String>) -> Option<ResNetConfig> {
    meta.get(META_CONFIG).and_then(|s| serde_json::from_str(s).ok())
}

/// Loads a `state_dict`-named safetensors file (torchvision/timm style, or a host checkpoint)
/// into `model`, except tensors under the `exclude` prefixes.
pub fn load_weights(path: &Path, model: &ResNet, exclude: &[String]) -> Result<()> {
    let (tensors, _) = read_safetensors(path)?;
    model.load_state_dict(&tensors, path, exclude)
}
