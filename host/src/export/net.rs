//! The Folded-form network on libtorch, with optional int8 fake quantization: what `host export`
//! calibrates and evaluates.
//!
//! A quantized conv or linear layer computes the int8 semantics of `docs/weights-format.md`:
//!
//! ```text
//! x_q  = clamp(round_half_even(x * (1 / s_in)) + zp, -128, 127) quantize (f32 reciprocal)
//! x'   = (x_q - zp) * s_in                                      DequantizeLinear
//! W'   = q * s_w[o],  b' = float(bias_q) * (s_in * s_w[o])      DequantizeLinear (per channel)
//! y    = conv(x', W') + b'                                      in f32
//! ```
//!
//! so "int8 top-1" is the number of the file's int8 tensors, not of a float approximation.
//! [`Net::from_weights`] builds the network from a parsed compact weights file; every tensor is
//! decoded from the file's bytes.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use shared::weights::{Int8Layer, TensorView};
use shared::{DType, Form, Node, ResNetConfig, ValueId, WeightsFile};
use tch::{Device, Kind, Tensor};

use super::fold::Folded;
use crate::model::Wiring;

/// Per-tensor int8 quantization of an activation:
/// `x_q = clamp(round(x * (1 / scale)) + zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i8,
}

impl ActQuant {
    /// Quantize then dequantize. The product is by the f32 reciprocal of the scale, as the
    /// device computes it (not a division: that rounds differently near half-way points), held
    /// in a full tensor so that libtorch multiplies in f32.
    pub fn fake_quant(&self, x: &Tensor) -> Tensor {
        let s = x.full_like(f64::from(self.scale));
        let inv = x.full_like(f64::from(self.scale.recip()));
        let zp = f64::from(self.zero_point);
        let q = (x * &inv).round().g_add_scalar(zp).clamp(-128.0, 127.0);
        q.g_sub_scalar(zp) * s
    }
}

/// A conv or linear layer's parameters as the network uses them (dequantized when int8).
#[derive(Debug)]
pub struct Layer {
    pub name: String,
    pub weight: Tensor,
    /// `None` for a conv without bias (the end of a pre-activation block).
    pub bias: Option<Tensor>,
    /// Input quantization (int8 layers); `None`: the layer runs in float.
    pub input_quant: Option<ActQuant>,
}

/// One node of the folded walk; its operands are in its [`Wiring`].
#[derive(Debug)]
enum Op {
    Conv { layer: Layer, stride: i64, padding: i64 },
    Affine { scale: Tensor, shift: Tensor },
    Relu,
    MaxPool { kernel: i64, stride: i64, padding: i64 },
    Add,
    GlobalAvgPool,
    Linear { layer: Layer },
}

impl Op {
    fn layer(&self) -> Option<&Layer> {
        match self {
            Op::Conv { layer, .. } | Op::Linear { layer } => Some(layer),
            _ => None,
        }
    }
}

/// The input value of a conv or linear layer, for calibration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInput {
    pub layer: String,
    pub value: ValueId,
}

/// Parameters of one conv/linear node when building a [`Net`].
pub type LayerSource<'s> = dyn FnMut(&str) -> Result<Layer> + 's;

/// The Folded-form network.
#[derive(Debug)]
pub struct Net {
    pub config: ResNetConfig,
    ops: Vec<(Wiring, Op)>,
    num_values: usize,
    last_use: Vec<usize>,
    logits: usize,
}

impl Net {
    /// Walks `config` in [`Form::Folded`], asking `layer` for every conv/linear and `affine` for
    /// every Affine node (`(scale, shift)` of `[C]`).
    pub fn build(
        config: &ResNetConfig,
        layer: &mut LayerSource<'_>,
        affine: &mut dyn FnMut(&str) -> Result<(Tensor, Tensor)>,
    ) -> Result<Self> {
        let mut ops = Vec::new();
        config.walk::<anyhow::Error>(Form::Folded, |node| {
            let op = match *node {
                Node::Input { .. } => return Ok(()),
                Node::Conv { name, stride, padding, .. } => {
                    Op::Conv { layer: layer(name)?, stride: i64::from(stride), padding: i64::from(padding) }
                }
                Node::Affine { name, .. } => {
                    let (scale, shift) = affine(name)?;
                    Op::Affine { scale: scale.view([1, -1, 1, 1]), shift: shift.view([1, -1, 1, 1]) }
                }
                Node::BatchNorm { name, .. } => bail!("`{name}`: the folded graph has no BatchNorm"),
                Node::Relu { .. } => Op::Relu,
                Node::MaxPool { kernel, stride, padding, .. } => {
                    Op::MaxPool { kernel: i64::from(kernel), stride: i64::from(stride), padding: i64::from(padding) }
                }
                Node::Add { .. } => Op::Add,
                Node::GlobalAvgPool { .. } => Op::GlobalAvgPool,
                Node::Linear { name, .. } => Op::Linear { layer: layer(name)? },
            };
            ops.push((Wiring::of(node), op));
            Ok(())
        })?;
        let num_values = config.num_values(Form::Folded);
        let last_use = Wiring::last_uses(ops.iter().map(|(w, _)| w), num_values);
        let logits = ops.last().map(|(w, _)| w.output).ok_or_else(|| anyhow!("empty graph"))?;
        Ok(Self { config: *config, ops, num_values, last_use, logits })
    }

    /// The float network of folded parameters (no quantization), on `device`.
    pub fn from_folded(folded: &Folded, device: Device) -> Result<Self> {
        let get = |n: &str| folded.get(n).map(|t| t.to_device(device));
        Self::build(
            &folded.config,
            &mut |name| {
                Ok(Layer {
                    name: name.to_string(),
                    weight: get(&format!("{name}.weight"))?,
                    bias: folded.tensors.get(&format!("{name}.bias")).map(|t| t.to_device(device)),
                    input_quant: None,
                })
            },
            &mut |name| Ok((get(&format!("{name}.weight"))?, get(&format!("{name}.bias"))?)),
        )
    }

    /// The network a Folded-form compact weights file describes (f32, f16 or int8 tensors),
    /// decoded from the file's bytes.
    pub fn from_weights(file: &WeightsFile<'_>, device: Device) -> Result<Self> {
        if file.header().form != Form::Folded {
            bail!("expected a Folded-form weights file, got {:?}", file.header().form);
        }
        let tensor = |n: &str| file.tensor(n).map_err(|e| anyhow!("{e}"));
        Self::build(
            file.config(),
            &mut |name| {
                let bias_name = format!("{name}.bias");
                if let Some(q) = Int8Layer::read(file, name).map_err(|e| anyhow!("{e}"))? {
                    return dequantize_layer(name, tensor(&format!("{name}.weight"))?.shape(), &q, device);
                }
                Ok(Layer {
                    name: name.to_string(),
                    weight: to_tensor(&tensor(&format!("{name}.weight"))?, device)?,
                    bias: if file.contains(&bias_name) { Some(to_tensor(&tensor(&bias_name)?, device)?) } else { None },
                    input_quant: None,
                })
            },
            &mut |name| {
                Ok((
                    to_tensor(&tensor(&format!("{name}.weight"))?, device)?,
                    to_tensor(&tensor(&format!("{name}.bias"))?, device)?,
                ))
            },
        )
    }

    /// Every conv/linear layer's input value, in execution order.
    pub fn layer_inputs(&self) -> Vec<LayerInput> {
        self.ops
            .iter()
            .filter_map(|(wiring, op)| {
                let layer = op.layer()?;
                Some(LayerInput { layer: layer.name.clone(), value: ValueId(wiring.inputs[0] as u32) })
            })
            .collect()
    }

    /// Names of the layers that run in int8.
    pub fn quantized_layers(&self) -> Vec<String> {
        self.ops.iter().filter_map(|(_, op)| op.layer()).filter(|l| l.input_quant.is_some()).map(|l| l.name.clone()).collect()
    }

    /// Logits `[N, classes]` for a batch `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_observed(x, &mut |_, _, _| Ok(())).expect("the observer never fails")
    }

    /// Forward pass calling `observe(layer, value, tensor)` with the (float) input of every
    /// conv/linear layer before it is quantized.
    pub fn forward_observed(
        &self,
        x: &Tensor,
        observe: &mut dyn FnMut(&str, ValueId, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut values: Vec<Option<Tensor>> = (0..self.num_values).map(|_| None).collect();
        values[0] = Some(x.shallow_clone());
        for (i, (wiring, op)) in self.ops.iter().enumerate() {
            let arg = |k: usize| {
                let v = wiring.inputs[k];
                values[v].as_ref().ok_or_else(|| anyhow!("value {v} used before it is defined"))
            };
            let mut run_layer = |layer: &Layer| {
                let x = arg(0)?;
                observe(&layer.name, ValueId(wiring.inputs[0] as u32), x)?;
                Ok::<_, anyhow::Error>(match layer.input_quant {
                    Some(q) => q.fake_quant(x),
                    None => x.shallow_clone(),
                })
            };
            let y = match op {
                Op::Conv { layer, stride, padding } => run_layer(layer)?.conv2d(
                    &layer.weight,
                    layer.bias.as_ref(),
                    [*stride; 2],
                    [*padding; 2],
                    [1, 1],
                    1,
                ),
                Op::Affine { scale, shift } => arg(0)? * scale + shift,
                Op::Relu => arg(0)?.relu(),
                Op::MaxPool { kernel, stride, padding } => {
                    arg(0)?.max_pool2d([*kernel; 2], [*stride; 2], [*padding; 2], [1, 1], false)
                }
                Op::Add => arg(0)? + arg(1)?,
                Op::GlobalAvgPool => arg(0)?.mean_dim([2i64, 3].as_slice(), false, None),
                Op::Linear { layer } => run_layer(layer)?.linear(&layer.weight, layer.bias.as_ref()),
            };
            wiring.store(i, &self.last_use, &mut values, y);
        }
        values[self.logits].take().context("the walk ends with the classifier")
    }
}

/// The float layer an int8 layer stands for: `W' = q * s_w[o]`, `b' = float(bias_q) * (s_in *
/// s_w[o])`, input quantization `(s_in, zp)`. `shape` is the weight's (`[out, in, k, k]` or
/// `[out, in]`); [`Int8Layer::read`] checked the record against it.
pub fn dequantize_layer(name: &str, shape: &[u32], q: &Int8Layer<'_>, device: Device) -> Result<Layer> {
    let per = q.weight.len() / q.out_channels().max(1);
    let weight: Vec<f32> = q.weight.iter().enumerate().map(|(i, &v)| f32::from(v) * q.weight_scale[i / per]).collect();
    let bias: Vec<f32> = q.bias.iter().zip(q.output_scales()).map(|(&b, s)| b as f32 * s).collect();
    let shape: Vec<i64> = shape.iter().map(|&d| i64::from(d)).collect();
    Ok(Layer {
        name: name.to_string(),
        weight: Tensor::from_slice(&weight).view(shape.as_slice()).to_device(device),
        bias: Some(Tensor::from_slice(&bias).to_device(device)),
        input_quant: Some(ActQuant { scale: q.input_scale, zero_point: q.input_zero_point }),
    })
}

pub fn decode_f32(t: &TensorView<'_>) -> Result<Vec<f32>> {
    match t.dtype {
        DType::F32 | DType::F16 => Ok(t.to_f32_vec()),
        other => bail!("`{}` is {other:?}, expected a float tensor", t.name),
    }
}

/// A float file tensor (F32 or F16, widened exactly to f32) as a tch tensor of its shape.
pub fn to_tensor(t: &TensorView<'_>, device: Device) -> Result<Tensor> {
    let v = decode_f32(t)?;
    let shape: Vec<i64> = t.shape().iter().map(|&d| i64::from(d)).collect();
    Ok(Tensor::from_slice(&v).view(shape.as_slice()).to_kind(Kind::Float).to_device(device))
}

/// Named folded tensors as plain `Vec<f32>` (for quantization and file writing).
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view(-1);
    Vec::<f32>::try_from(&t).map_err(|e| anyhow!("{e}"))
}

/// `tensor -> name` lookups for error messages.
pub fn layer_names(net: &Net) -> HashMap<ValueId, Vec<String>> {
    let mut m: HashMap<ValueId, Vec<String>> = HashMap::new();
    for li in net.layer_inputs() {
        m.entry(li.value).or_default().push(li.layer);
    }
    m
}
