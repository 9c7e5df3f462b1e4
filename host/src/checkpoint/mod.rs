//! A run directory and its files. Each save switches the whole directory from one complete
//! state to the next through one manifest ([`manifest`]), so a kill at any instant leaves a state
//! `--resume` continues exactly, and every read is checked against the recorded checksums:
//!
//! | file | holds |
//! |---|---|
//! | `run.json` | the [`Manifest`]: epoch, step, and the size and CRC-32 of each file below; the one record of the state |
//! | `checkpoint.safetensors` | the model's `state_dict` (torchvision names, fp32, running stats, `num_batches_tracked`); metadata `format: pt`, `host.epoch`, `host.step`, `host.config` |
//! | `train_state.safetensors` | `momentum_buffer.<param>` tensors; metadata: epoch, step, loss scale and its growth tracker |
//! | `args.json` | [`RunState`]: epoch and step done, every flag, the seed, the network config, the eval `Preprocess`, class names |
//! | `metrics.jsonl` | one JSON object per epoch |
//! | `labels.txt` | class names, one per line |

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use shared::preprocess::Preprocess;
use shared::{Form, ResNetConfig};
use tch::{Device, Kind, Tensor};

use crate::data::DatasetSpec;
use crate::loss_scale::LossScaler;
use crate::model::ResNet;
use crate::optim::Sgd;

pub mod manifest;

pub use manifest::{Manifest, FAIL_AFTER_ENV, MANIFEST_FILE};

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
    /// Every `host train` flag (a serialized `TrainArgs`); for a run written by `host import`,
    /// `arch`, `image_size`, `dataset: null` and `imported_from` (see [`RunState::imported_from`]).
    pub args: serde_json::Value,
    /// The command line of the invocation that wrote this state.
    pub command: Vec<String>,
    pub host_version: String,
}

impl RunState {
    /// The architecture name (`resnet50`, ...).
    pub fn arch(&self) -> &str {
        self.args.get("arch").and_then(|a| a.as_str()).unwrap_or("resnet")
    }

    /// The network input side the run was made for, where recorded.
    pub fn image_size(&self) -> Option<u32> {
        self.args.get("image_size").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
    }

    /// The weights file a `host import` run was made from; `None` for a trained run.
    pub fn imported_from(&self) -> Option<&str> {
        self.args.get("imported_from").and_then(|v| v.as_str())
    }

    /// The dataset the run was trained on (`args_file` is named in errors); `None` for an
    /// imported run, which has none.
    pub fn dataset(&self, args_file: &Path) -> Result<Option<DatasetSpec>> {
        match self.args.get("dataset") {
            None | Some(serde_json::Value::Null) if self.imported_from().is_some() => Ok(None),
            None => Ok(Some(DatasetSpec::default())),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| anyhow!("{}: bad `dataset`: {e}", args_file.display())),
        }
    }
}

/// The metadata of `checkpoint.safetensors`: `format: pt` (as torch's safetensors files say),
/// the epoch and step it holds, and the network config.
pub fn checkpoint_metadata(config: &ResNetConfig, epoch: u32, step: u64) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (META_EPOCH.to_string(), epoch.to_string()),
        (META_STEP.to_string(), step.to_string()),
        (META_CONFIG.to_string(), serde_json::to_string(config)?),
    ]))
}

/// Writes `bytes` to `path` atomically: `path.tmp`, fsync, rename over `path`, fsync the
/// directory. On failure the temporary file is removed and any previous `path` is intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.file_name().is_none() {
        bail!("{}: not a file path", path.display());
    }
    let tmp = manifest::staged(path);
    let result = manifest::write_synced(&tmp, bytes).and_then(|()| manifest::rename(&tmp, path));
    if result.is_err() && tmp.is_file() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    manifest::sync_dir(path.parent().unwrap_or(Path::new(".")));
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
    parse_safetensors(path, &bytes)
}

/// The tensors of a weights file: safetensors, or a `torch.save` state_dict (`.pth`, `.pt`,
/// `.bin`: torchvision's checkpoints, read by [`crate::pth`]; no metadata).
pub fn read_weights_file(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pth" | "pt" | "bin") => Ok((crate::pth::read_state_dict(path)?, HashMap::new())),
        _ => read_safetensors(path),
    }
}

/// Tensors (on the CPU) and metadata of safetensors `bytes` read from `path` (named in errors).
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
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

/// The files of a state, in the order a save stages them.
pub const STATE_FILES: [&str; 5] = [CHECKPOINT_FILE, TRAIN_STATE_FILE, ARGS_FILE, METRICS_FILE, LABELS_FILE];
/// Files whose presence without `run.json` marks a run directory of an older host.
const LEGACY_FILES: [&str; 4] = [CHECKPOINT_FILE, TRAIN_STATE_FILE, ARGS_FILE, METRICS_FILE];

/// Where a run directory's files are.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// `RUN_DIR` itself, or the run directory of `RUN_DIR/checkpoint.safetensors` (where it has
    /// a `run.json`); `None` for anything else (e.g. a bare weights file).
    pub fn of(path: &Path) -> Option<Self> {
        if path.is_dir() {
            return Some(Self::new(path));
        }
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        (path.file_name().is_some_and(|n| n == CHECKPOINT_FILE) && dir.join(MANIFEST_FILE).is_file())
            .then(|| Self::new(dir))
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
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
    /// Whether a save was committed here (`run.json` exists).
    pub fn has_checkpoint(&self) -> bool {
        self.manifest().is_file()
    }

    /// Start-up of `host train` here: finishes or rolls back an interrupted save (see
    /// [`manifest::recover`]) and returns the committed manifest, `None` where no save was
    /// committed (a run killed during its first save starts over). Refuses a directory holding
    /// run files but no `run.json` (an older host's run) rather than overwrite it.
    pub fn recover(&self) -> Result<Option<Manifest>> {
        let m = manifest::recover(&self.dir, &STATE_FILES)?;
        if m.is_none() {
            if let Some(f) = LEGACY_FILES.iter().map(|f| self.dir.join(f)).find(|p| p.exists()) {
                bail!(
                    "{} holds {} but no {MANIFEST_FILE} (a run directory of an older host): it cannot be resumed \
                     or overwritten; choose another --out",
                    self.dir.display(),
                    f.display()
                );
            }
        }
        Ok(m)
    }

    /// The committed manifest; an error where none was committed.
    pub fn committed(&self) -> Result<Manifest> {
        Manifest::load(&self.dir)?.ok_or_else(|| {
            anyhow!(
                "{}: no {MANIFEST_FILE}: not a `host train` run directory with a checkpoint (none saved yet, or \
                 written by an older host)",
                self.dir.display()
            )
        })
    }

    /// The bytes of the state file `name`, checked against `run.json` (an error names the file
    /// and says it is corrupt). Retried where a save commits between the two reads (an eval
    /// while the run trains).
    pub fn read_verified(&self, name: &str) -> Result<Vec<u8>> {
        let mut m = self.committed()?;
        for _ in 0..10 {
            match m.read(&self.dir, name) {
                Ok(bytes) => return Ok(bytes),
                Err(e) => match Manifest::load(&self.dir)? {
                    Some(now) if now != m => m = now,
                    _ => return Err(e),
                },
            }
        }
        m.read(&self.dir, name)
    }

    /// The checkpoint's tensors and metadata, checked against `run.json`.
    pub fn read_checkpoint(&self) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
        parse_safetensors(&self.checkpoint(), &self.read_verified(CHECKPOINT_FILE)?)
    }

    /// `labels.txt`, checked against `run.json`.
    pub fn read_labels(&self) -> Result<Vec<String>> {
        let text = String::from_utf8(self.read_verified(LABELS_FILE)?)
            .map_err(|_| anyhow!("{}: not UTF-8 text", self.labels().display()))?;
        Ok(parse_labels(&text))
    }

    /// Saves the state after an epoch as one unit ([`manifest::commit`]): model, optimizer
    /// state, `args.json`, the committed metrics plus `metrics_line`, and the labels.
    pub fn save(&self, model: &ResNet, opt: &Sgd, scaler: &LossScaler, state: &RunState, metrics_line: &str) -> Result<()> {
        let mut metrics = if self.has_checkpoint() {
            String::from_utf8(self.read_verified(METRICS_FILE)?)
                .map_err(|_| anyhow!("{}: not UTF-8 text", self.metrics().display()))?
        } else {
            String::new()
        };
        metrics.push_str(metrics_line);
        metrics.push('\n');

        let checkpoint = to_safetensors_bytes(&model.state_dict(), checkpoint_metadata(&model.config, state.epoch, state.step)?)?;
        let meta = HashMap::from([
            (META_EPOCH.to_string(), state.epoch.to_string()),
            (META_STEP.to_string(), state.step.to_string()),
            (META_LOSS_SCALE.to_string(), scaler.scale.to_string()),
            (META_GROWTH_TRACKER.to_string(), scaler.growth_tracker.to_string()),
        ]);
        let train_state = to_safetensors_bytes(&opt.state(), meta)?;
        let files = [
            (CHECKPOINT_FILE, checkpoint),
            (TRAIN_STATE_FILE, train_state),
            (ARGS_FILE, serde_json::to_string_pretty(state)?.into_bytes()),
            (METRICS_FILE, metrics.into_bytes()),
            (LABELS_FILE, labels_bytes(&state.classes)),
        ];
        manifest::commit(&self.dir, state.epoch, state.step, &files)?;
        Ok(())
    }

    /// Reads `args.json`, checked against `run.json`.
    pub fn load_state(&self) -> Result<RunState> {
        let path = self.args();
        let bytes = self.read_verified(ARGS_FILE)?;
        let state: RunState =
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a host run state", path.display()))?;
        if state.format != RUN_FORMAT {
            bail!("{}: format `{}` is not `{RUN_FORMAT}`", path.display(), state.format);
        }
        Ok(state)
    }

    /// Restores model weights, optimizer state and loss scaler for `state` (from
    /// [`load_state`](Self::load_state)); all three are checked against `run.json`, so they are
    /// one saved state by construction.
    pub fn restore(&self, state: &RunState, model: &ResNet, opt: &mut Sgd, scaler: &mut LossScaler) -> Result<()> {
        let m = self.committed()?;
        if (m.epoch, m.step) != (state.epoch, state.step) {
            bail!(
                "{}: epoch {} step {}, but {} says epoch {} step {}",
                self.manifest().display(),
                m.epoch,
                m.step,
                self.args().display(),
                state.epoch,
                state.step
            );
        }
        let ck = self.checkpoint();
        let (tensors, _) = self.read_checkpoint()?;
        model.load_state_dict(&tensors, &ck, &[])?;

        let ts = self.train_state();
        let (tensors, meta) = parse_safetensors(&ts, &self.read_verified(TRAIN_STATE_FILE)?)?;
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

/// Every floating-point tensor is finite; the error names the file and the tensor.
pub fn check_finite(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if t.is_floating_point() {
            let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
            if bad > 0 {
                bail!("{}: tensor `{name}` has {bad} non-finite values (NaN or infinity)", path.display());
            }
        }
    }
    Ok(())
}

/// Every tensor of a state_dict read from `path` is a parameter (or buffer) of `arch` as
/// `config` builds it, and is finite; the error names the file and the first stray tensor.
pub fn check_against_graph(path: &Path, tensors: &HashMap<String, Tensor>, config: &ResNetConfig, arch: &str) -> Result<()> {
    let mut expected = std::collections::BTreeSet::new();
    config.for_each_param(Form::Training, |p| {
        expected.insert(p.name.to_string());
    });
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if !expected.contains(name.as_str()) {
            bail!(
                "{}: tensor `{name}` is not a parameter of `{arch}`: the checkpoint does not match the architecture",
                path.display()
            );
        }
    }
    check_finite(path, tensors)
}

/// `labels.txt`'s text: one class name per line, `\r` and empty lines dropped.
pub fn parse_labels(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim_end_matches('\r').to_string()).filter(|l| !l.is_empty()).collect()
}

/// `labels.txt`'s bytes for `classes`.
pub fn labels_bytes(classes: &[String]) -> Vec<u8> {
    (classes.join("\n") + "\n").into_bytes()
}

/// The network config stored in a host checkpoint's metadata, if any.
pub fn config_from_metadata(meta: &HashMap<String, String>) -> Option<ResNetConfig> {
    meta.get(META_CONFIG).and_then(|s| serde_json::from_str(s).ok())
}

/// Loads a `state_dict`-named weights file (safetensors or torchvision's `.pth`; torchvision/timm
/// names, or a host checkpoint) into `model`, except tensors under the `exclude` prefixes. A run directory (or its `checkpoint.safetensors`) is read checked against its `run.json`.
pub fn load_weights(path: &Path, model: &ResNet, exclude: &[String]) -> Result<()> {
    let tensors = match RunDir::of(path) {
        Some(run) => run.read_checkpoint()?.0,
        None => read_weights_file(path)?.0,
    };
    model.load_state_dict(&tensors, path, exclude)
}
