//! Importer: the compact weights file -> a tract `TypedModel`, by walking the `shared` graph.
//!
//! This module only translates (tract-style: the ops live in tract-core). Every node of the
//! walk becomes tract-core ops:
//!
//! | graph node | tract-core ops |
//! |---|---|
//! | `Conv` (float) | `cnn::Conv` (f32 kernel and bias consts) |
//! | `Conv` (int8 weights) | `QuantizeLinearI8` -> `cnn::Conv { q_params: Some(I32) }` (i8 x i8 -> i32, i32 bias) -> `Cast` f32 -> `Mul` per-channel `input_scale * weight_scale[o]` |
//! | `BatchNorm` | `Mul` + `Add` per channel (tract's optimizer folds them into the conv) |
//! | `Affine` | `Mul` + `Add` per channel |
//! | `Relu` | `Max(x, 0)` |
//! | `MaxPool` | `cnn::MaxPool` |
//! | `Add` | `Add` |
//! | `GlobalAvgPool` | `Reduce<Sum>` over H, W -> `Mul` by 1/(H W) -> drop H, W |
//! | `Linear` | a 1x1 conv on `[N, C, 1, 1]` (float or int8, as `Conv`) |
//!
//! An int8 layer computes exactly what `docs/weights-format.md` specifies:
//! `y[o] = input_scale * weight_scale[o] * (sum (x_q - zp) * q + bias_q)`, with
//! `x_q = clamp(round(x / input_scale) + zp, -128, 127)`; tract's optimizer lowers the quantized
//! conv to its integer matrix-multiplication kernels (`i8 x i8 -> i32`).

use anyhow::{bail, ensure, Context, Result};
use shared::fold::BatchNorm;
use shared::graph::{Form, Node};
use shared::weights::{DType, Int8Layer, TensorView, WeightsFile};
use tract_core::internal::*;
use tract_core::ops::cast::cast;
use tract_core::ops::cnn::conv::KernelFormat;
use tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec, PoolSpec};
use tract_core::ops::math;
use tract_core::ops::nn::{DataFormat, Reduce, Reducer};

/// Options of the import itself.
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    /// Input height and width; `None`: the header's preprocessing crop.
    pub input_size: Option<(u32, u32)>,
}

/// What the import learned about the network.
#[derive(Clone, Debug)]
pub struct Imported {
    pub model: TypedModel,
    /// Names of the layers built as integer convs.
    pub int8_layers: Vec<String>,
    /// Names of the conv/linear layers kept in float.
    pub float_layers: Vec<String>,
}

fn f32_vec(t: &TensorView<'_>) -> Result<Vec<f32>> {
    Ok(match t.dtype {
        DType::F32 | DType::F16 => t.to_f32_vec(),
        other => bail!("tensor `{}` is {other:?}, expected F32 or F16", t.name),
    })
}

fn tensor_f32(t: &TensorView<'_>, shape: &[usize]) -> Result<Tensor> {
    let v = f32_vec(t)?;
    Tensor::from_shape(shape, &v).with_context(|| format!("tensor `{}`", t.name))
}

/// A per-channel `[1, C, 1, 1]` constant.
fn per_channel(model: &mut TypedModel, name: String, v: &[f32]) -> Result<OutletId> {
    let t = Tensor::from_shape(&[1, v.len(), 1, 1], v)?;
    Ok(model.add_const(name, t)?)
}

fn scalar_f32(model: &mut TypedModel, name: String, x: f32) -> Result<OutletId> {
    Ok(model.add_const(name, tensor0(x))?)
}

fn scalar_i32(model: &mut TypedModel, name: String, x: i32) -> Result<OutletId> {
    Ok(model.add_const(name, tensor0(x))?)
}

struct Builder<'a, 'f> {
    file: &'a WeightsFile<'f>,
    model: TypedModel,
    values: Vec<Option<OutletId>>,
    int8_layers: Vec<String>,
    float_layers: Vec<String>,
}

/// A square NCHW window, convolution or pooling, as the graph gives it (before the input's size
/// is known; `crate::ops::im2col::ConvShape` is a window resolved for a concrete input).
pub(crate) struct Window {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// tract's description of the window (symmetric explicit padding, no dilation).
    pub(crate) fn pool_spec(&self) -> PoolSpec {
        PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(self.kernel, self.kernel),
            padding: PaddingSpec::Explicit(
                tvec!(self.padding, self.padding),
                tvec!(self.padding, self.padding),
            ),
            dilations: None,
            strides: Some(tvec!(self.stride, self.stride)),
            input_channels: self.in_channels,
            output_channels: self.out_channels,
        }
    }
}

impl<'f> Builder<'_, 'f> {
    fn value(&self, id: shared::ValueId) -> Result<OutletId> {
        self.values
            .get(id.index())
            .copied()
            .flatten()
            .with_context(|| format!("graph value {} used before it is defined", id.0))
    }

    fn set(&mut self, id: shared::ValueId, outlet: OutletId) {
        if self.values.len() <= id.index() {
            self.values.resize(id.index() + 1, None);
        }
        self.values[id.index()] = Some(outlet);
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'f>> {
        self.file.tensor(name).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A convolution named `name` (weights `name.weight`, optional `name.bias`), float or int8
    /// depending on the stored weight dtype.
    fn conv(
        &mut self,
        name: &str,
        input: OutletId,
        g: Window,
        has_bias: bool,
    ) -> Result<OutletId> {
        let w = self.tensor(&format!("{name}.weight"))?;
        let kshape = [g.out_channels, g.in_channels, g.kernel, g.kernel];
        ensure!(
            w.numel() == kshape.iter().product::<usize>(),
            "tensor `{name}.weight` has {} elements, the graph needs {kshape:?}",
            w.numel()
        );
        if let Some(q) = Int8Layer::read(self.file, name).map_err(|e| anyhow::anyhow!("{e}"))? {
            return self.conv_int8(name, input, g, &q);
        }
        self.float_layers.push(name.to_string());
        let kernel = tensor_f32(&w, &kshape)?;
        let bias = if has_bias {
            let b = self.tensor(&format!("{name}.bias"))?;
            ensure!(
                b.numel() == g.out_channels,
                "tensor `{name}.bias` has {} elements, expected {}",
                b.numel(),
                g.out_channels
            );
            tensor_f32(&b, &[g.out_channels])?
        } else {
            tensor0(0f32)
        };
        let k = self.model.add_const(format!("{name}.weight"), kernel)?;
        let b = self.model.add_const(format!("{name}.bias"), bias)?;
        let op = Conv::new(g.pool_spec(), KernelFormat::OIHW, 1, None);
        Ok(self.model.wire_node(name, op, &[input, k, b])?[0])
    }

    /// An int8 layer (its record read and checked by [`Int8Layer::read`]): quantize the input,
    /// integer conv with i32 accumulators and bias, then `* input_scale * weight_scale[o]` in f32.
    fn conv_int8(
        &mut self,
        name: &str,
        input: OutletId,
        g: Window,
        q: &Int8Layer<'_>,
    ) -> Result<OutletId> {
        self.int8_layers.push(name.to_string());
        let m = &mut self.model;
        let xq = m.wire_node(
            format!("{name}.quantize"),
            tract_core::ops::quant::quantize_linear_i8(q.input_scale.recip(), q.input_zero_point),
            &[input],
        )?[0];
        let kshape = [g.out_channels, g.in_channels, g.kernel, g.kernel];
        let k = m.add_const(
            format!("{name}.weight"),
            Tensor::from_shape(&kshape, q.weight)?,
        )?;
        let b = m.add_const(
            format!("{name}.bias"),
            Tensor::from_shape(&[g.out_channels], q.bias)?,
        )?;
        let x0 = scalar_i32(
            m,
            format!("{name}.x_zero_point"),
            i32::from(q.input_zero_point),
        )?;
        let one = scalar_f32(m, format!("{name}.unit_scale"), 1.0)?;
        let zero = scalar_i32(m, format!("{name}.zero_point"), 0)?;
        // Integer accumulation only: scales of 1 make tract's requantization an identity, the
        // real scales are applied in f32 below (the format's arithmetic).
        let op = Conv::new(
            g.pool_spec(),
            KernelFormat::OIHW,
            1,
            Some(i32::datum_type()),
        );
        let acc = m.wire_node(
            format!("{name}.conv_i8"),
            op,
            &[xq, k, b, x0, one, zero, one, zero, one],
        )?[0];
        let accf = m.wire_node(format!("{name}.to_f32"), cast(f32::datum_type()), &[acc])?[0];
        let scales: Vec<f32> = q.output_scales().collect();
        let s = per_channel(m, format!("{name}.dequant_scale"), &scales)?;
        Ok(m.wire_node(format!("{name}.dequantize"), math::mul(), &[accf, s])?[0])
    }

    fn affine(
        &mut self,
        name: &str,
        input: OutletId,
        scale: &[f32],
        shift: &[f32],
    ) -> Result<OutletId> {
        let s = per_channel(&mut self.model, format!("{name}.scale"), scale)?;
        let b = per_channel(&mut self.model, format!("{name}.shift"), shift)?;
        let x = self
            .model
            .wire_node(format!("{name}.mul"), math::mul(), &[input, s])?[0];
        Ok(self
            .model
            .wire_node(format!("{name}.add"), math::add(), &[x, b])?[0])
    }

    fn channel_vec(&self, name: &str, channels: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        ensure!(
            t.numel() == channels,
            "tensor `{name}` has {} elements, expected {channels}",
            t.numel()
        );
        f32_vec(&t)
    }

    /// Wires one graph node: a dispatch to the step for its kind.
    fn node(
        &mut self,
        node: &Node<'_>,
        input_hw: (usize, usize),
        channels_in: usize,
    ) -> Result<()> {
        let (output, y) = match *node {
            Node::Input { output, channels } => {
                ensure!(channels as usize == channels_in, "input channels mismatch");
                let fact = f32::fact([1, channels as usize, input_hw.0, input_hw.1]);
                (output, self.model.add_source("input", fact)?)
            }
            Node::Conv {
                name,
                input,
                output,
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                bias,
            } => {
                let g = Window {
                    in_channels: in_channels as usize,
                    out_channels: out_channels as usize,
                    kernel: kernel as usize,
                    stride: stride as usize,
                    padding: padding as usize,
                };
                let x = self.value(input)?;
                let y = self
                    .conv(name, x, g, bias)
                    .with_context(|| format!("layer `{name}`"))?;
                (output, y)
            }
            Node::BatchNorm {
                name,
                input,
                output,
                channels,
            } => (output, self.batch_norm(name, input, channels as usize)?),
            Node::Affine {
                name,
                input,
                output,
                channels,
            } => {
                let c = channels as usize;
                let scale = self.channel_vec(&format!("{name}.weight"), c)?;
                let shift = self.channel_vec(&format!("{name}.bias"), c)?;
                let x = self.value(input)?;
                (output, self.affine(name, x, &scale, &shift)?)
            }
            Node::Relu { input, output } => (output, self.relu(input)?),
            Node::MaxPool {
                input,
                output,
                kernel,
                stride,
                padding,
            } => (output, self.max_pool(input, kernel, stride, padding)?),
            Node::Add { lhs, rhs, output } => {
                let (a, b) = (self.value(lhs)?, self.value(rhs)?);
                let n = self.model.nodes().len();
                (
                    output,
                    self.model
                        .wire_node(format!("add{n}"), math::add(), &[a, b])?[0],
                )
            }
            Node::GlobalAvgPool { input, output } => (output, self.global_avg_pool(input)?),
            Node::Linear {
                name,
                input,
                output,
                in_features,
                out_features,
            } => (
                output,
                self.linear(name, input, in_features as usize, out_features as usize)?,
            ),
        };
        self.set(output, y);
        Ok(())
    }

    /// A BatchNorm (Training form) as the per-channel affine it computes in eval mode.
    fn batch_norm(&mut self, name: &str, input: shared::ValueId, c: usize) -> Result<OutletId> {
        let w = self.channel_vec(&format!("{name}.weight"), c)?;
        let b = self.channel_vec(&format!("{name}.bias"), c)?;
        let mean = self.channel_vec(&format!("{name}.running_mean"), c)?;
        let var = self.channel_vec(&format!("{name}.running_var"), c)?;
        let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
        BatchNorm::new(&w, &b, &mean, &var)
            .and_then(|bn| bn.to_affine(&mut scale, &mut shift))
            .map_err(|e| anyhow::anyhow!("`{name}`: {e}"))?;
        let x = self.value(input)?;
        self.affine(name, x, &scale, &shift)
    }

    /// `max(x, 0)`.
    fn relu(&mut self, input: shared::ValueId) -> Result<OutletId> {
        let x = self.value(input)?;
        let rank = self.model.outlet_fact(x)?.rank();
        let zero = tensor0(0f32).broadcast_into_rank(rank)?;
        let n = self.model.nodes().len();
        let z = self.model.add_const(format!("relu{n}.zero"), zero)?;
        Ok(self
            .model
            .wire_node(format!("relu{n}"), math::max(), &[x, z])?[0])
    }

    fn max_pool(
        &mut self,
        input: shared::ValueId,
        kernel: u32,
        stride: u32,
        padding: u32,
    ) -> Result<OutletId> {
        let x = self.value(input)?;
        let c = self.model.outlet_fact(x)?.shape[1].to_usize()?;
        let op = max_pool(c, kernel as usize, stride as usize, padding as usize);
        let n = self.model.nodes().len();
        Ok(self.model.wire_node(format!("maxpool{n}"), op, &[x])?[0])
    }

    /// Sum over H and W, times 1 / (H W), H and W dropped: `[N, C]`.
    fn global_avg_pool(&mut self, input: shared::ValueId) -> Result<OutletId> {
        let x = self.value(input)?;
        let shape = self
            .model
            .outlet_fact(x)?
            .shape
            .as_concrete()
            .context("symbolic pool input")?
            .to_vec();
        let hw = (shape[2] * shape[3]) as f32;
        let m = &mut self.model;
        let s = m.wire_node("avgpool.sum", Reduce::new(tvec!(2, 3), Reducer::Sum), &[x])?[0];
        let k = m.add_const("avgpool.inv_hw", tensor0(1.0 / hw).broadcast_into_rank(4)?)?;
        let y = m.wire_node("avgpool.mean", math::mul(), &[s, k])?[0];
        let y = m.wire_node("avgpool.rm_w", AxisOp::Rm(3), &[y])?[0];
        Ok(m.wire_node("avgpool.flatten", AxisOp::Rm(2), &[y])?[0])
    }

    /// The classifier as a 1x1 conv on `[N, C, 1, 1]` (float or int8, as a conv), flattened back.
    fn linear(
        &mut self,
        name: &str,
        input: shared::ValueId,
        in_features: usize,
        out_features: usize,
    ) -> Result<OutletId> {
        let x = self.value(input)?;
        let m = &mut self.model;
        let x = m.wire_node(format!("{name}.as_nchw.h"), AxisOp::Add(2), &[x])?[0];
        let x = m.wire_node(format!("{name}.as_nchw.w"), AxisOp::Add(3), &[x])?[0];
        let g = Window {
            in_channels: in_features,
            out_channels: out_features,
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        let y = self
            .conv(name, x, g, true)
            .with_context(|| format!("layer `{name}`"))?;
        let m = &mut self.model;
        let y = m.wire_node(format!("{name}.rm_w"), AxisOp::Rm(3), &[y])?[0];
        Ok(m.wire_node(format!("{name}.flatten"), AxisOp::Rm(2), &[y])?[0])
    }
}

/// The graph's `MaxPool` over `channels` channels: square kernel, stride and padding.
pub(crate) fn max_pool(channels: usize, kernel: usize, stride: usize, padding: usize) -> MaxPool {
    let pool_spec = Window {
        in_channels: channels,
        out_channels: channels,
        kernel,
        stride,
        padding,
    }
    .pool_spec();
    MaxPool {
        pool_spec,
        with_index_outputs: None,
    }
}

/// Builds the (unoptimized) tract model of a validated weights file.
pub fn import(file: &WeightsFile<'_>, opts: &ImportOptions) -> Result<Imported> {
    file.check_against_graph()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let header = file.header();
    let config = header.config;
    let crop = header.preprocess.crop;
    let (h, w) = opts.input_size.unwrap_or((crop, crop));
    ensure!(
        h >= 1 && w >= 1 && h <= 8192 && w <= 8192,
        "input size {h}x{w} is out of range"
    );
    if header.form == Form::Training && header.precision == shared::weights::Precision::Int8 {
        bail!("int8 weights need the Folded form (BatchNorm folded into the convs)");
    }
    let mut b = Builder {
        file,
        model: TypedModel::default(),
        values: vec![None; config.num_values(header.form)],
        int8_layers: vec![],
        float_layers: vec![],
    };
    let mut last = None;
    config.walk(header.form, |node| {
        last = Some(node.output());
        b.node(node, (h as usize, w as usize), config.in_channels as usize)
    })?;
    let out = b.value(last.context("empty graph")?)?;
    b.model.select_output_outlets(&[out])?;
    Ok(Imported {
        model: b.model,
        int8_layers: b.int8_layers,
        float_layers: b.float_layers,
    })
}
