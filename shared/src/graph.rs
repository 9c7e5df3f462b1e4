//! The canonical walk of a ResNet: every node in execution order, with torchvision names.
//!
//! Host (tch) and device (tract) both build their networks by walking this graph; nobody else
//! writes the architecture down. Values are single-assignment: every node writes one new
//! [`ValueId`], so a consumer keeps a `Vec` of values indexed by id.
//!
//! Two forms exist: [`Form::Training`] (convs without bias, BatchNorm with running stats, exactly
//! torchvision's `state_dict`) and [`Form::Folded`] (BatchNorm folded into the preceding conv's
//! weight and bias; a BatchNorm that follows no conv, as in pre-activation v2, becomes a
//! per-channel [`Node::Affine`]).

use core::fmt::Write as _;

use heapless::String;

use crate::config::{Block, ResNetConfig, Stem, Variant, EXPANSION};
pub use crate::name::{LayerName, ParamName, NAME_CAP, PARAM_NAME_CAP};

/// Which parameter set the graph is expressed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Form {
    /// torchvision's layout: conv (no bias) + BatchNorm.
    Training,
    /// BatchNorm folded into convs (conv has a bias); leftover BatchNorms become [`Node::Affine`].
    Folded,
}

/// A value (activation tensor) in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One node of the graph. Activations are NCHW; `GlobalAvgPool` flattens to `[N, C]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Node<'a> {
    /// The image batch, `[N, channels, H, W]`. Always value 0.
    Input { output: ValueId, channels: u32 },
    /// 2-D convolution, square kernel, symmetric zero padding, no dilation, one group.
    Conv {
        name: &'a str,
        input: ValueId,
        output: ValueId,
        in_channels: u32,
        out_channels: u32,
        kernel: u32,
        stride: u32,
        padding: u32,
        bias: bool,
    },
    /// BatchNorm2d (eps [`BN_EPS`]) with `weight`, `bias`, `running_mean`, `running_var`.
    BatchNorm { name: &'a str, input: ValueId, output: ValueId, channels: u32 },
    /// `y = x * weight[c] + bias[c]`: a BatchNorm folded on its own (Folded form only).
    Affine { name: &'a str, input: ValueId, output: ValueId, channels: u32 },
    Relu { input: ValueId, output: ValueId },
    /// Max pooling, square window, symmetric padding (padding counts as -inf).
    MaxPool { input: ValueId, output: ValueId, kernel: u32, stride: u32, padding: u32 },
    /// Element-wise sum of two values of the same shape.
    Add { lhs: ValueId, rhs: ValueId, output: ValueId },
    /// Mean over H and W, flattened to `[N, C]`.
    GlobalAvgPool { input: ValueId, output: ValueId },
    /// Fully connected layer `y = x W^T + b`, `weight: [out, in]`.
    Linear { name: &'a str, input: ValueId, output: ValueId, in_features: u32, out_features: u32 },
}

/// The values a node reads ([`Node::inputs`]): at most two.
pub type Inputs = heapless::Vec<ValueId, 2>;

/// BatchNorm epsilon (torchvision default).
pub const BN_EPS: f32 = 1e-5;

impl Node<'_> {
    /// The value this node writes.
    pub fn output(&self) -> ValueId {
        match *self {
            Node::Input { output, .. }
            | Node::Conv { output, .. }
            | Node::BatchNorm { output, .. }
            | Node::Affine { output, .. }
            | Node::Relu { output, .. }
            | Node::MaxPool { output, .. }
            | Node::Add { output, .. }
            | Node::GlobalAvgPool { output, .. }
            | Node::Linear { output, .. } => output,
        }
    }

    /// The values this node reads, in operand order (`Add`: `lhs`, then `rhs`); none for `Input`.
    pub fn inputs(&self) -> Inputs {
        match *self {
            Node::Input { .. } => Inputs::new(),
            Node::Conv { input, .. }
            | Node::BatchNorm { input, .. }
            | Node::Affine { input, .. }
            | Node::Relu { input, .. }
            | Node::MaxPool { input, .. }
            | Node::GlobalAvgPool { input, .. }
            | Node::Linear { input, .. } => Inputs::from_array([input]),
            Node::Add { lhs, rhs, .. } => Inputs::from_array([lhs, rhs]),
        }
    }

    /// The layer name for nodes that own parameters.
    pub fn name(&self) -> Option<&str> {
        match *self {
            Node::Conv { name, .. }
            | Node::BatchNorm { name, .. }
            | Node::Affine { name, .. }
            | Node::Linear { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Calls `f` for every parameter or buffer of this node, in torchvision `state_dict` order.
    pub fn for_each_param(&self, mut f: impl FnMut(ParamSpec)) {
        let p = |name: &str, suffix: &str, kind: ParamKind, shape: &[u32]| {
            let mut full = ParamName::new();
            // Layer names are at most NAME_CAP and suffixes at most 20 bytes: this cannot fail.
            let _ = write!(full, "{name}.{suffix}");
            let mut s = [1u32; 4];
            s[..shape.len()].copy_from_slice(shape);
            ParamSpec { name: full, kind, shape: s, rank: shape.len() as u8 }
        };
        match *self {
            Node::Conv { name, in_channels, out_channels, kernel, bias, .. } => {
                f(p(name, "weight", ParamKind::ConvWeight, &[out_channels, in_channels, kernel, kernel]));
                if bias {
                    f(p(name, "bias", ParamKind::ConvBias, &[out_channels]));
                }
            }
            Node::BatchNorm { name, channels, .. } => {
                f(p(name, "weight", ParamKind::BnWeight, &[channels]));
                f(p(name, "bias", ParamKind::BnBias, &[channels]));
                f(p(name, "running_mean", ParamKind::BnRunningMean, &[channels]));
                f(p(name, "running_var", ParamKind::BnRunningVar, &[channels]));
                f(p(name, "num_batches_tracked", ParamKind::BnNumBatchesTracked, &[]));
            }
            Node::Affine { name, channels, .. } => {
                f(p(name, "weight", ParamKind::AffineScale, &[channels]));
                f(p(name, "bias", ParamKind::AffineShift, &[channels]));
            }
            Node::Linear { name, in_features, out_features, .. } => {
                f(p(name, "weight", ParamKind::LinearWeight, &[out_features, in_features]));
                f(p(name, "bias", ParamKind::LinearBias, &[out_features]));
            }
            _ => {}
        }
    }
}

/// What a parameter is, so a consumer can pick the right initialisation, weight decay or
/// quantisation without parsing names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ParamKind {
    ConvWeight,
    ConvBias,
    BnWeight,
    BnBias,
    BnRunningMean,
    BnRunningVar,
    /// An `i64` scalar counter torchvision keeps; shape `[]`.
    BnNumBatchesTracked,
    AffineScale,
    AffineShift,
    LinearWeight,
    LinearBias,
}

impl ParamKind {
    /// Learned by gradient descent (as opposed to a running statistic or counter).
    pub fn is_trainable(self) -> bool {
        !matches!(self, ParamKind::BnRunningMean | ParamKind::BnRunningVar | ParamKind::BnNumBatchesTracked)
    }
    /// Weight decay applies to conv and linear weights only (NVIDIA recipe: not BN, not biases).
    pub fn takes_weight_decay(self) -> bool {
        matches!(self, ParamKind::ConvWeight | ParamKind::LinearWeight)
    }
}

/// One named parameter: `layer1.0.conv1.weight`, `[64, 64, 3, 3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: ParamName,
    pub kind: ParamKind,
    shape: [u32; 4],
    rank: u8,
}

impl ParamSpec {
    pub fn shape(&self) -> &[u32] {
        &self.shape[..self.rank as usize]
    }
    pub fn numel(&self) -> u64 {
        self.shape().iter().map(|&d| u64::from(d)).product()
    }
}

struct Walker<'f, E, F: FnMut(&Node<'_>) -> Result<(), E>> {
    form: Form,
    next: u32,
    visit: &'f mut F,
}

impl<E, F: FnMut(&Node<'_>) -> Result<(), E>> Walker<'_, E, F> {
    fn fresh(&mut self) -> ValueId {
        let v = ValueId(self.next);
        self.next += 1;
        v
    }

    fn emit(&mut self, node: Node<'_>) -> Result<ValueId, E> {
        let out = node.output();
        (self.visit)(&node)?;
        Ok(out)
    }

    /// conv, then (Training form) its BatchNorm. `bn` names the BN that follows, if any.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: Option<&str>,
        input: ValueId,
        in_channels: u32,
        out_channels: u32,
        kernel: u32,
        stride: u32,
    ) -> Result<ValueId, E> {
        let folded = self.form == Form::Folded && bn.is_some();
        let output = self.fresh();
        let x = self.emit(Node::Conv {
            name: conv,
            input,
            output,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            bias: folded,
        })?;
        match bn {
            Some(bn) if !folded => self.batch_norm(bn, x, out_channels),
            _ => Ok(x),
        }
    }

    /// A BatchNorm that follows no conv (pre-activation): Affine in the folded form.
    fn batch_norm(&mut self, name: &str, input: ValueId, channels: u32) -> Result<ValueId, E> {
        let output = self.fresh();
        match self.form {
            Form::Training => self.emit(Node::BatchNorm { name, input, output, channels }),
            Form::Folded => self.emit(Node::Affine { name, input, output, channels }),
        }
    }

    fn relu(&mut self, input: ValueId) -> Result<ValueId, E> {
        let output = self.fresh();
        self.emit(Node::Relu { input, output })
    }

    fn add(&mut self, lhs: ValueId, rhs: ValueId) -> Result<ValueId, E> {
        let output = self.fresh();
        self.emit(Node::Add { lhs, rhs, output })
    }
}

fn join(prefix: &str, leaf: &str) -> LayerName {
    let mut s = LayerName::new();
    // Prefixes are `layerS.B` (at most 10 bytes) and leaves at most 12: this cannot fail.
    let _ = write!(s, "{prefix}.{leaf}");
    s
}

impl ResNetConfig {
    /// Walks the graph in execution order, calling `visit` once per node. The last node is the
    /// classifier `fc`, whose output is the logits `[N, num_classes]`.
    pub fn walk<E>(&self, form: Form, mut visit: impl FnMut(&Node<'_>) -> Result<(), E>) -> Result<(), E> {
        let mut w = Walker { form, next: 0, visit: &mut visit };
        let pre_act = self.variant == Variant::V2;

        let input = w.fresh();
        w.emit(Node::Input { output: input, channels: u32::from(self.in_channels) })?;

        // Stem.
        let stem_c = u32::from(self.stem_width);
        let (k, s) = match self.stem {
            Stem::ImageNet => (7, 2),
            Stem::Small => (3, 1),
        };
        let mut x = w.conv_bn("conv1", Some("bn1"), input, u32::from(self.in_channels), stem_c, k, s)?;
        x = w.relu(x)?;
        if self.stem == Stem::ImageNet {
            let output = w.fresh();
            x = w.emit(Node::MaxPool { input: x, output, kernel: 3, stride: 2, padding: 1 })?;
        }

        // Residual stages.
        let mut c = stem_c;
        for stage in 0..self.num_stages() {
            let planes = u32::from(self.base_width) << stage;
            let out_c = self.stage_out_channels(stage);
            for b in 0..u32::from(self.stages[stage]) {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let mut prefix = String::<12>::new();
                let _ = write!(prefix, "layer{}.{}", stage + 1, b);
                let n = |leaf| join(&prefix, leaf);
                let needs_proj = stride != 1 || c != out_c;

                // Pre-activation: bn1-relu on the block input feeds both branches.
                let (main_in, shortcut_src) = if pre_act {
                    let y = w.batch_norm(&n("bn1"), x, c)?;
                    let y = w.relu(y)?;
                    (y, if needs_proj { y } else { x })
                } else {
                    (x, x)
                };
                // Main branch: names of the BN after each conv (v2 shifts them by one).
                let bn_after = |i: usize| -> LayerName { n(["bn1", "bn2", "bn3", "bn4"][if pre_act { i + 1 } else { i }]) };
                let y = match self.block {
                    Block::Basic => {
                        let y = w.conv_bn(&n("conv1"), Some(&bn_after(0)), main_in, c, planes, 3, stride)?;
                        let y = w.relu(y)?;
                        let bn2 = bn_after(1);
                        w.conv_bn(&n("conv2"), (!pre_act).then_some(&*bn2), y, planes, planes, 3, 1)?
                    }
                    Block::Bottleneck => {
                        let width = planes * u32::from(self.width_per_group) / 64;
                        let (s1, s2) = if self.variant == Variant::V1 { (stride, 1) } else { (1, stride) };
                        let y = w.conv_bn(&n("conv1"), Some(&bn_after(0)), main_in, c, width, 1, s1)?;
                        let y = w.relu(y)?;
                        let y = w.conv_bn(&n("conv2"), Some(&bn_after(1)), y, width, width, 3, s2)?;
                        let y = w.relu(y)?;
                        let bn3 = bn_after(2);
                        w.conv_bn(&n("conv3"), (!pre_act).then_some(&*bn3), y, width, planes * EXPANSION, 1, 1)?
                    }
                };
                // The shortcut comes after the main branch, as in torchvision's state_dict order.
                let shortcut = if needs_proj {
                    let bn = if pre_act { None } else { Some(n("downsample.1")) };
                    w.conv_bn(&n("downsample.0"), bn.as_deref(), shortcut_src, c, out_c, 1, stride)?
                } else {
                    shortcut_src
                };
                x = w.add(y, shortcut)?;
                if !pre_act {
                    x = w.relu(x)?;
                }
                c = out_c;
            }
        }
        if pre_act {
            x = w.batch_norm("final_bn", x, c)?;
            x = w.relu(x)?;
        }

        // Head.
        let output = w.fresh();
        x = w.emit(Node::GlobalAvgPool { input: x, output })?;
        let output = w.fresh();
        w.emit(Node::Linear { name: "fc", input: x, output, in_features: c, out_features: self.num_classes })?;
        Ok(())
    }

    /// Calls `f` for every parameter and buffer of `form`, in `state_dict` order.
    pub fn for_each_param(&self, form: Form, mut f: impl FnMut(ParamSpec)) {
        let _ = self.walk::<core::convert::Infallible>(form, |node| {
            node.for_each_param(&mut f);
            Ok(())
        });
    }

    /// The weight parameter of conv or linear layer `layer` (`[out, in, k, k]` or `[out, in]`,
    /// the same in both forms); `None` if the graph has no such layer.
    pub fn layer_weight(&self, layer: &str) -> Option<ParamSpec> {
        let mut found = None;
        self.for_each_param(Form::Folded, |p| {
            let weight = matches!(p.kind, ParamKind::ConvWeight | ParamKind::LinearWeight);
            if found.is_none() && weight && p.name.strip_suffix(".weight") == Some(layer) {
                found = Some(p);
            }
        });
        found
    }

    /// Trainable parameter count, as `sum(p.numel() for p in model.parameters())` in PyTorch.
    pub fn num_params(&self) -> u64 {
        let mut n = 0;
        self.for_each_param(Form::Training, |p| {
            if p.kind.is_trainable() {
                n += p.numel();
            }
        });
        n
    }

    /// Number of values the walk creates (size of a consumer's value table).
    pub fn num_values(&self, form: Form) -> usize {
        let mut n = 0;
        let _ = self.walk::<core::convert::Infallible>(form, |node| {
            n = node.output().index() + 1;
            Ok(())
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_inputs() {
        let (a, b, c) = (ValueId(3), ValueId(5), ValueId(7));
        assert!(Node::Input { output: ValueId(0), channels: 3 }.inputs().is_empty());
        assert_eq!(Node::Relu { input: a, output: b }.inputs(), [a]);
        assert_eq!(Node::Add { lhs: b, rhs: a, output: c }.inputs(), [b, a]);

        // Only `Input` reads no value, only `Add` reads two (tests/graph_torchvision.rs checks
        // that every value is written before it is read).
        for config in [ResNetConfig::resnet8(), ResNetConfig::resnet50().with_variant(Variant::V2)] {
            for form in [Form::Training, Form::Folded] {
                let _ = config.walk::<core::convert::Infallible>(form, |node| {
                    let want = match node {
                        Node::Input { .. } => 0,
                        Node::Add { .. } => 2,
                        _ => 1,
                    };
                    assert_eq!(node.inputs().len(), want, "{node:?}");
                    Ok(())
                });
            }
        }
    }
}
