//! The network, built once by walking `shared`'s graph ([`ResNetConfig::walk`] in
//! [`Form::Training`]); nothing here writes the architecture down a second time.
//!
//! Every parameter and buffer is registered in a [`nn::VarStore`] under the path
//! `root / "layer1" / "0" / "conv1"` + `"weight"`, so the store's names are exactly torchvision's
//! `state_dict` names, BatchNorm running statistics and `num_batches_tracked` included: a saved
//! checkpoint *is* a torchvision state_dict, and torchvision weights load unchanged.
//!
//! The forward pass runs the materialized ops over a value table indexed by
//! [`ValueId`](shared::ValueId), dropping each value after its last use.
//!
//! Mixed precision (`--amp`) is done here rather than with libtorch autocast, which `tch` only
//! drives through deprecated CUDA-only entry points that print a warning at every step and cannot
//! select bf16. The policy is autocast's for the ops a ResNet uses: the input, convolutions and
//! the classifier compute in the reduced dtype (weights cast per step from fp32 masters);
//! BatchNorm takes the reduced-precision activation with fp32 parameters and statistics (as
//! cuDNN does under autocast); ReLU, pooling and additions run in the activation's dtype; the
//! logits are returned in fp32 so the loss is computed in fp32.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use shared::{Form, Node, ParamKind, ParamSpec, ResNetConfig, Stem};
use tch::{nn, Device, Kind, Tensor};

use crate::device::{to_channels_last, Amp};

/// BatchNorm running-statistics momentum (torchvision default).
pub const BN_MOMENTUM: f64 = 0.1;

/// How to build and run the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Zero-initialise the last BatchNorm weight of every residual block, so each block starts
    /// as the identity (Goyal et al. 2017; NVIDIA's recipe; torchvision `zero_init_residual`).
    pub zero_init_residual: bool,
    /// Keep 4-D weights and activations in NHWC memory order (`torch.channels_last`).
    pub channels_last: bool,
    /// Compute dtype of convolutions and the classifier.
    pub amp: Amp,
    /// In training mode, BatchNorm normalizes with the statistics of the whole global batch,
    /// summed over the ranks of a data-parallel job ([`crate::dist::allreduce_autograd`]; on a
    /// single process the same formula over the local batch): `host train --sync-bn`.
    pub sync_bn: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self { zero_init_residual: true, channels_last: false, amp: Amp::Off, sync_bn: false }
    }
}

/// One named tensor of the model, in `state_dict` order.
#[derive(Debug)]
pub struct NamedTensor {
    pub name: String,
    pub kind: ParamKind,
    pub tensor: Tensor,
}

/// Where one op of a walk reads and writes: value-table slots
/// ([`ValueId::index`](shared::ValueId::index)), taken from the node. `host export`'s network
/// uses it too.
#[derive(Debug)]
pub(crate) struct Wiring {
    /// The values the op reads, in operand order ([`Node::inputs`]).
    pub inputs: Vec<usize>,
    pub output: usize,
}

impl Wiring {
    pub fn of(node: &Node<'_>) -> Self {
        Self { inputs: node.inputs().iter().map(|v| v.index()).collect(), output: node.output().index() }
    }

    /// `last_use[v]`: index of the last op (in `ops` order) that reads value `v`.
    pub fn last_uses<'a>(ops: impl IntoIterator<Item = &'a Wiring>, num_values: usize) -> Vec<usize> {
        let mut last_use = vec![0; num_values];
        for (i, w) in ops.into_iter().enumerate() {
            for &v in &w.inputs {
                last_use[v] = i;
            }
        }
        last_use
    }

    /// Stores `y`, the result of op number `step`, after dropping the inputs no later op reads.
    pub fn store<T>(&self, step: usize, last_use: &[usize], values: &mut [Option<T>], y: T) {
        for &v in &self.inputs {
            if last_use[v] == step {
                values[v] = None;
            }
        }
        values[self.output] = Some(y);
    }
}

/// One materialized node of the walk; its operands are in its [`Wiring`].
#[derive(Debug)]
enum Op {
    Conv { weight: Tensor, bias: Option<Tensor>, stride: i64, padding: i64 },
    BatchNorm { weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor },
    Relu,
    MaxPool { kernel: i64, stride: i64, padding: i64 },
    Add,
    GlobalAvgPool,
    Linear { weight: Tensor, bias: Tensor },
}

/// A ResNet on libtorch.
#[derive(Debug)]
pub struct ResNet {
    pub config: ResNetConfig,
    pub options: ModelOptions,
    ops: Vec<(Wiring, Op)>,
    /// Every parameter and buffer, in `state_dict` order.
    tensors: Vec<NamedTensor>,
    num_values: usize,
    /// `last_use[v]`: index of the last op that reads value `v` (values are dropped after it).
    last_use: Vec<usize>,
    logits: usize,
}

/// Training-mode BatchNorm over the global batch of a data-parallel job: per channel, the sums of
/// `x` and `x^2` and the sample count are summed over ranks in one differentiable all-reduce (fp32),
/// giving the batch mean and biased variance; the running statistics get the unbiased variance,
/// as `torch.nn.SyncBatchNorm` does. Without a process group it is the same over the local batch.
fn sync_batch_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, running_mean: &Tensor, running_var: &Tensor) -> Result<Tensor> {
    let c = weight.size()[0];
    let xf = x.to_kind(Kind::Float);
    let dims = [0i64, 2, 3];
    let sum = xf.sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let sum_sq = (&xf * &xf).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let shape = x.size();
    let count = Tensor::full([1], (shape[0] * shape[2] * shape[3]) as f64, (Kind::Float, x.device()));
    let local = Tensor::cat(&[sum, sum_sq, count], 0);
    let stats = if crate::dist::sync_bn_active() { crate::dist::allreduce_autograd(&local)? } else { local };
    let n = stats.narrow(0, 2 * c, 1);
    let mean = stats.narrow(0, 0, c) / &n;
    let var = (stats.narrow(0, c, c) / &n - &mean * &mean).clamp_min(0.0);
    {
        let _guard = tch::no_grad_guard();
        let unbiased = &var * (&n / (&n - 1.0).clamp_min(1.0));
        let _ = running_mean.shallow_clone().g_mul_scalar_(1.0 - BN_MOMENTUM).g_add_(&(mean.detach() * BN_MOMENTUM));
        let _ = running_var.shallow_clone().g_mul_scalar_(1.0 - BN_MOMENTUM).g_add_(&(unbiased.detach() * BN_MOMENTUM));
    }
    let scale = weight * (var + f64::from(shared::graph::BN_EPS)).rsqrt();
    let shift = bias - &mean * &scale;
    let y = &xf * scale.view([1, c, 1, 1]) + shift.view([1, c, 1, 1]);
    Ok(y.to_kind(x.kind()))
}

/// `root / "layer1" / "0" / "conv1"` for the layer name `layer1.0.conv1`.
fn layer_path<'a>(root: &nn::Path<'a>, layer: &str) -> nn::Path<'a> {
    layer.split('.').fold(root.clone(), |p, c| p / c)
}

/// A fresh tensor for `spec`, initialised as torchvision does. `linear_fan_in` is the
/// classifier's input width (`nn.Linear` bounds its weight and bias by it).
fn init_tensor(spec: &ParamSpec, linear_fan_in: f64, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = spec.shape().iter().map(|&d| i64::from(d)).collect();
    let opts = (Kind::Float, device);
    Ok(match spec.kind {
        // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out).
        ParamKind::ConvWeight => {
            let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
            Tensor::randn(&shape, opts) * (2.0 / fan_out).sqrt()
        }
        ParamKind::ConvBias | ParamKind::BnBias | ParamKind::BnRunningMean => Tensor::zeros(&shape, opts),
        ParamKind::BnWeight | ParamKind::BnRunningVar => Tensor::ones(&shape, opts),
        ParamKind::BnNumBatchesTracked => Tensor::zeros(&shape, (Kind::Int64, device)),
        // nn.Linear's reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        ParamKind::LinearWeight | ParamKind::LinearBias => {
            let bound = 1.0 / linear_fan_in.sqrt();
            Tensor::zeros(&shape, opts).uniform_(-bound, bound)
        }
        ParamKind::AffineScale | ParamKind::AffineShift => {
            bail!("`{}`: the training graph has no Affine nodes", spec.name)
        }
    })
}

impl ResNet {
    /// Builds the network under `root` (normally `vs.root()`), initialised like torchvision
    /// (kaiming-normal fan-out convs, BN weight 1 / bias 0, `nn.Linear` default) with libtorch's
    /// global RNG: call `tch::manual_seed` first for a reproducible init.
    pub fn new(vs: &nn::VarStore, config: &ResNetConfig, options: ModelOptions) -> Result<Self> {
        config.validate().map_err(|e| anyhow!("{e}"))?;
        let root = &vs.root();
        let device = vs.device();
        let mut ops = Vec::new();
        let mut tensors: Vec<NamedTensor> = Vec::new();
        let mut logits = 0;
        let _guard = tch::no_grad_guard();
        config.walk::<anyhow::Error>(Form::Training, |node| {
            let layer = node.name().map(|n| layer_path(root, n));
            let mut own = Vec::new();
            let mut specs = Vec::new();
            node.for_each_param(|spec| specs.push(spec));
            let linear_fan_in = match *node {
                Node::Linear { in_features, .. } => f64::from(in_features),
                _ => 1.0,
            };
            for spec in &specs {
                let mut t = init_tensor(spec, linear_fan_in, device)?;
                if options.channels_last && spec.kind == ParamKind::ConvWeight {
                    t = to_channels_last(&t);
                }
                let leaf = spec.name.rsplit('.').next().unwrap_or_default();
                let path = layer.as_ref().ok_or_else(|| anyhow!("parameter `{}` has no layer", spec.name))?;
                let registered = path.add(leaf, t, spec.kind.is_trainable());
                own.push(registered.shallow_clone());
                tensors.push(NamedTensor { name: spec.name.to_string(), kind: spec.kind, tensor: registered });
            }
            let mut own = own.into_iter();
            let mut take = || own.next().ok_or_else(|| anyhow!("node {node:?} yielded too few parameters"));
            let op = match *node {
                Node::Input { .. } => return Ok(()),
                Node::Conv { stride, padding, bias, .. } => Op::Conv {
                    weight: take()?,
                    bias: if bias { Some(take()?) } else { None },
                    stride: i64::from(stride),
                    padding: i64::from(padding),
                },
                Node::BatchNorm { .. } => Op::BatchNorm {
                    weight: take()?,
                    bias: take()?,
                    running_mean: take()?,
                    running_var: take()?,
                    num_batches_tracked: take()?,
                },
                Node::Affine { name, .. } => bail!("`{name}`: the training graph has no Affine nodes"),
                Node::Relu { .. } => Op::Relu,
                Node::MaxPool { kernel, stride, padding, .. } => {
                    Op::MaxPool { kernel: i64::from(kernel), stride: i64::from(stride), padding: i64::from(padding) }
                }
                Node::Add { .. } => Op::Add,
                Node::GlobalAvgPool { .. } => Op::GlobalAvgPool,
                Node::Linear { .. } => Op::Linear { weight: take()?, bias: take()? },
            };
            let wiring = Wiring::of(node);
            logits = wiring.output;
            ops.push((wiring, op));
            Ok(())
        })?;

        // Names must be unique: a repeated name would have been renamed `name__N` by the store.
        let stored = vs.len();
        if stored != tensors.len() {
            bail!("the var store holds {stored} tensors for {} graph parameters (name clash?)", tensors.len());
        }

        let num_values = config.num_values(Form::Training);
        let last_use = Wiring::last_uses(ops.iter().map(|(w, _)| w), num_values);
        let model = Self { config: *config, options, ops, tensors, num_values, last_use, logits };
        if options.zero_init_residual {
            model.zero_init_residual();
        }
        Ok(model)
    }

    /// Zeroes the weight of the BatchNorm that ends each residual block's main branch: the
    /// BatchNorm whose output is the left operand of an `Add` (the walk adds `main + shortcut`).
    /// Pre-activation (v2) blocks end in a convolution and are left alone.
    fn zero_init_residual(&self) {
        let _guard = tch::no_grad_guard();
        for (add, op) in &self.ops {
            if let Op::Add = op {
                let lhs = add.inputs[0];
                if let Some((_, Op::BatchNorm { weight, .. })) = self.ops.iter().find(|(w, _)| w.output == lhs) {
                    let _ = weight.shallow_clone().zero_();
                }
            }
        }
    }

    /// Every parameter and buffer, in `state_dict` order.
    pub fn named_tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// The tensor named `name` (torchvision name), if any.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name).map(|t| &t.tensor)
    }

    /// The parameters gradient descent updates, in `state_dict` order.
    pub fn trainable(&self) -> impl Iterator<Item = &NamedTensor> {
        self.tensors.iter().filter(|t| t.kind.is_trainable())
    }

    pub fn device(&self) -> Device {
        self.tensors.first().map_or(Device::Cpu, |t| t.tensor.device())
    }

    /// Logits `[N, num_classes]` in fp32 for a batch `[N, in_channels, H, W]` (fp32, any memory
    /// format). `train` selects batch statistics (and updates the running ones) vs running stats.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(x, train).expect("only --sync-bn's collectives can fail; training calls f_forward_t")
    }

    /// [`forward_t`](Self::forward_t), with the error of a failed SyncBatchNorm collective.
    pub fn f_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let compute = self.options.amp.compute_kind();
        let cast = |t: &Tensor| match compute {
            Some(k) => t.to_kind(k),
            None => t.shallow_clone(),
        };
        let mut values: Vec<Option<Tensor>> = (0..self.num_values).map(|_| None).collect();
        let x = if self.options.channels_last { to_channels_last(x) } else { x.shallow_clone() };
        values[0] = Some(cast(&x));
        for (i, (wiring, op)) in self.ops.iter().enumerate() {
            let arg = |k: usize| {
                values[wiring.inputs[k]].as_ref().expect("the graph walk defines every value before its use")
            };
            let y = match op {
                Op::Conv { weight, bias, stride, padding } => {
                    let b = bias.as_ref().map(cast);
                    arg(0).conv2d(&cast(weight), b.as_ref(), [*stride; 2], [*padding; 2], [1, 1], 1)
                }
                Op::BatchNorm { weight, bias, running_mean, running_var, num_batches_tracked }
                    if train && self.options.sync_bn =>
                {
                    {
                        let _guard = tch::no_grad_guard();
                        let _ = num_batches_tracked.shallow_clone().g_add_scalar_(1);
                    }
                    sync_batch_norm(arg(0), weight, bias, running_mean, running_var)?
                }
                Op::BatchNorm { weight, bias, running_mean, running_var, num_batches_tracked } => {
                    if train {
                        let _guard = tch::no_grad_guard();
                        let _ = num_batches_tracked.shallow_clone().g_add_scalar_(1);
                    }
                    Tensor::batch_norm(
                        arg(0),
                        Some(weight),
                        Some(bias),
                        Some(running_mean),
                        Some(running_var),
                        train,
                        BN_MOMENTUM,
                        f64::from(shared::graph::BN_EPS),
                        true,
                    )
                }
                Op::Relu => arg(0).relu(),
                Op::MaxPool { kernel, stride, padding } => {
                    arg(0).max_pool2d([*kernel; 2], [*stride; 2], [*padding; 2], [1, 1], false)
                }
                Op::Add => arg(0) + arg(1),
                Op::GlobalAvgPool => arg(0).mean_dim([2i64, 3].as_slice(), false, None),
                Op::Linear { weight, bias } => arg(0).linear(&cast(weight), Some(&cast(bias))),
            };
            wiring.store(i, &self.last_use, &mut values, y);
        }
        Ok(values[self.logits].take().expect("the walk ends with the classifier").to_kind(Kind::Float))
    }

    /// Copies tensors from a `state_dict`-named map into the model (e.g. torchvision or timm
    /// weights, or a host checkpoint). Every model tensor must be present with the model's shape,
    /// except names starting with one of `exclude` (kept as initialised) and
    /// `num_batches_tracked` (optional, as in the weights format). Floating tensors are converted
    /// to fp32; extra tensors in the map are ignored. `source` names the file in errors.
    pub fn load_state_dict(&self, map: &HashMap<String, Tensor>, source: &Path, exclude: &[String]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let excluded = |name: &str| {
            exclude.iter().any(|p| name == p || name.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.')))
        };
        for t in &self.tensors {
            if excluded(&t.name) {
                continue;
            }
            let Some(src) = map.get(&t.name) else {
                if t.kind == ParamKind::BnNumBatchesTracked {
                    continue;
                }
                bail!("{}: tensor `{}` is missing", source.display(), t.name);
            };
            if src.size() != t.tensor.size() {
                bail!(
                    "{}: tensor `{}` has shape {:?}, the model expects {:?}",
                    source.display(),
                    t.name,
                    src.size(),
                    t.tensor.size()
                );
            }
            let src = src.to_device(t.tensor.device()).to_kind(t.tensor.kind());
            t.tensor
                .shallow_clone()
                .f_copy_(&src)
                .with_context(|| format!("{}: copying tensor `{}`", source.display(), t.name))?;
        }
        Ok(())
    }

    /// The `state_dict` as contiguous CPU tensors, in order (for saving).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.tensors.iter().map(|t| (t.name.clone(), t.tensor.to_device(Device::Cpu).contiguous())).collect()
    }
}

/// The architecture's config with the classes, input channels and stem the tensors have
/// (`fc.bias`, `conv1.weight`: a 7x7 first conv is the ImageNet stem).
pub fn config_from_tensors(base: ResNetConfig, tensors: &HashMap<String, Tensor>) -> Option<ResNetConfig> {
    let fc = tensors.get("fc.bias")?.size();
    let conv1 = tensors.get("conv1.weight")?.size();
    let stem = if conv1.get(2) == Some(&7) { Stem::ImageNet } else { Stem::Small };
    Some(base.with_classes(u32::try_from(*fc.first()?).ok()?).with_in_channels(u8::try_from(*conv1.get(1)?).ok()?).with_stem(stem))
}
