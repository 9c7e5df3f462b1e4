//! Which of tract's float convs this crate's fp32 ops may take, and the loop that swaps them in
//! ([`place`]) with the element-wise ops after them that an op takes over ([`Epilogue`]): the
//! part of an architecture's fp32 pass (`crate::kernels::x86_64::fp32`,
//! `crate::kernels::aarch64::fp32`) that is not its kernels.
//!
//! Only f32 or f16 convs (the ops check which they take: [`FloatConv::dt`]; weights and bias
//! come as f32 either way) with constant weights and bias, one group, no dilation, one `[1, C, H, W]`
//! (or `[C, H, W]`) image and output channels a multiple of 8.

use crate::ops::im2col::ConvShape;
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::cnn::conv::KernelFormat;
use tract_core::ops::cnn::Conv;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::DataFormat;

/// What a conv op applies after its bias, taken over from the element-wise ops that followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// Adds the op's second input, of the output's shape.
    pub residual: bool,
    /// Then `max(0, .)`.
    pub relu: bool,
}

/// `[1, C, H, W]` or `[C, H, W]`.
pub(crate) fn shape(batched: bool, chw: [usize; 3]) -> TVec<usize> {
    if batched {
        tvec![1, chw[0], chw[1], chw[2]]
    } else {
        chw.into_iter().collect()
    }
}

/// A 3x3 stride-1 padding-1 conv whose output has its input's size: what Winograd takes.
pub(crate) fn is_winograd(g: &ConvShape) -> bool {
    g.kernel == (3, 3)
        && g.stride == (1, 1)
        && g.pad == (1, 1)
        && (g.out_height, g.out_width) == (g.height, g.width)
}

/// Makes the op that replaces a [`FloatConv`], given the epilogue it takes over.
pub(crate) type MakeOp<'a> = Box<dyn FnOnce(&FloatConv, Epilogue) -> Box<dyn TypedOp> + 'a>;

/// How an architecture's pass takes one [`FloatConv`]: the name suffix of the new node, whether
/// its op can add a residual (else only a ReLU is fused), and the op, given the epilogue.
pub(crate) struct Take<'a> {
    pub suffix: &'static str,
    pub residuals: bool,
    pub op: MakeOp<'a>,
}

/// Replaces every float `Conv` of a decluttered model that `take` takes (see [`Take`]) by the
/// op it makes, fed the conv's input (and the residual it takes over), in place of the conv
/// and the element-wise ops it took over. Returns how many it replaced.
pub(crate) fn place<'a>(
    model: &mut TypedModel,
    mut take: impl FnMut(&FloatConv) -> Option<Take<'a>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(conv) = node
            .op_as::<Conv>()
            .and_then(|conv| float_conv(model, node, conv))
        else {
            continue;
        };
        let Some(Take {
            suffix,
            residuals,
            op,
        }) = take(&conv)
        else {
            continue;
        };
        replaced += 1;
        let out_shape = shape(conv.batched, [conv.k, conv.g.out_height, conv.g.out_width]);
        let (epilogue, residual, last) = fuse(model, node, residuals, conv.dt, &out_shape);
        let op = op(&conv, epilogue);
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec![patch.tap_model(model, node.inputs[0])?];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let y = patch.wire_node(format!("{}.{suffix}", node.name), op, &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), y)?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(replaced)
}

/// A 1x1 stride-1 float conv as tract's declutter leaves it: `EinSum` of the input
/// (`[1, C, H, W]` or `[C, H, W]`) by the weights (`[K][C]`, constant) into `[1, K, H, W]` or
/// `[K, H, W]`, then the `Add` of the bias (constant, one per channel). f32, or f16 in the
/// plans of `--precision f16` (tract's `FloatPrecisionTranslator` runs after the declutter).
// Only aarch64 has a pointwise op so far (x86 keeps tract's matrix products for 1x1 convs).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) struct Pointwise {
    /// The tensor type: f32 or f16.
    pub dt: DatumType,
    pub c: usize,
    pub k: usize,
    pub hw: (usize, usize),
    /// The input, and the output, are `[1, ...]` (else without the batch axis).
    pub batched: (bool, bool),
    /// `[k][c]`.
    pub kernel: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The [`Pointwise`] conv of an `EinSum` node and the bias `Add` after it, if this crate's ops
/// may take it.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
fn pointwise(model: &TypedModel, node: &TypedNode) -> Option<(Pointwise, usize)> {
    let einsum = node.op_as::<EinSum>()?;
    let axes = einsum.axes.to_string();
    let batched = match axes.as_str() {
        "NIHW,OI->NOHW" => (true, true),
        "NIHW,OI->OHW" => (true, false),
        "IHW,OI->NOHW" => (false, true),
        "IHW,OI->OHW" => (false, false),
        _ => return None,
    };
    let dt = einsum.operating_dt;
    if einsum.q_params.is_some() || (dt != f32::datum_type() && dt != f16::datum_type()) || node.inputs.len() != 2 {
        return None;
    }
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let (c, h, w) = match (batched.0, x.shape.as_concrete()?) {
        (true, &[1, c, h, w]) | (false, &[c, h, w]) => (c, h, w),
        _ => return None,
    };
    let kernel = konst_f32(model, node.inputs[1])?;
    let (k, kc) = match kernel.shape() {
        &[k, kc] => (k, kc),
        _ => return None,
    };
    if x.datum_type != dt || kc != c || k == 0 || !k.is_multiple_of(8) {
        return None;
    }
    let out = shape(batched.1, [k, h, w]);
    if model.outlet_fact(OutletId::new(node.id, 0)).ok()?.shape.as_concrete()? != &out[..] {
        return None;
    }
    // The bias: the only consumer, `Add` of a constant with one value per channel.
    let [s] = &node.outputs[0].successors[..] else {
        return None;
    };
    let add = model.node(s.node);
    let bin = add.op_as::<TypedBinOp>()?;
    if bin.0.name() != "Add" || add.inputs.len() != 2 {
        return None;
    }
    let other = add.inputs[1 - s.slot];
    let bias = konst_f32(model, other)?;
    let per_channel = bias.shape().iter().product::<usize>() == k
        && bias.rank() <= out.len()
        && bias.shape().iter().rev().skip(2).next() == Some(&k)
        && model.outlet_fact(OutletId::new(add.id, 0)).ok()?.shape.as_concrete()? == &out[..];
    if !per_channel {
        return None;
    }
    let kernel = kernel.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    let bias = bias.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    Some((Pointwise { dt, c, k, hw: (h, w), batched, kernel, bias }, add.id))
}

/// Replaces every 1x1 stride-1 conv on `dt` tensors of a decluttered model (an `EinSum` and
/// its bias `Add`, [`Pointwise`]) by the op `make` makes, with the residual addition and the
/// ReLU after it (as [`place`]). Returns how many.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn place_pointwise(
    model: &mut TypedModel,
    dt: DatumType,
    make: impl Fn(&Pointwise, Epilogue) -> Box<dyn TypedOp>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let Some((conv, bias)) = pointwise(model, model.node(id)).filter(|(conv, _)| conv.dt == dt) else {
            continue;
        };
        let out_shape = shape(conv.batched.1, [conv.k, conv.hw.0, conv.hw.1]);
        let (epilogue, residual, last) = fuse(model, model.node(bias), true, dt, &out_shape);
        let node = model.node(id);
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec![patch.tap_model(model, node.inputs[0])?];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let name = model.node(bias).name.clone();
        let y = patch.wire_node(format!("{name}.pointwise"), make(&conv, epilogue), &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), y)?;
        patch.apply(model)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

/// A float conv node that this crate's ops may take.
pub(crate) struct FloatConv {
    /// The conv's tensor type: f32, or f16 (in the plans of `--precision f16`).
    pub dt: DatumType,
    pub g: ConvShape,
    /// Output channels.
    pub k: usize,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`).
    pub batched: bool,
    /// `[k][c][kh][kw]`.
    pub kernel: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The [`FloatConv`] of a `Conv` node, if this crate's ops may take it.
fn float_conv(model: &TypedModel, node: &TypedNode, conv: &Conv) -> Option<FloatConv> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|d| *d != 1)
        || node.inputs.len() != 3
    {
        return None;
    }
    let input = model.outlet_fact(node.inputs[0]).ok()?;
    // One image, NCHW, or CHW (tract drops the batch axis after the 1x1 convs it turns into
    // matrix products, as in ResNet-50's bottlenecks).
    let (batched, c, h, w) = match (spec.data_format, input.shape.as_concrete()?) {
        (DataFormat::NCHW, &[1, c, h, w]) => (true, c, h, w),
        (DataFormat::CHW, &[c, h, w]) => (false, c, h, w),
        _ => return None,
    };
    let k = spec.output_channels;
    let dt = input.datum_type;
    if (dt != f32::datum_type() && dt != f16::datum_type())
        || c != spec.input_channels
        || k == 0
        || !k.is_multiple_of(8)
    {
        return None;
    }
    let g = ConvShape::of_window(spec, c, h, w);
    let konst = |i: usize| -> Option<Vec<f32>> {
        let k = konst_f32(model, node.inputs[i])?;
        Some(k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
    };
    let kernel = konst(1)?;
    let bias = konst(2)?;
    let bias = match bias.len() {
        1 => vec![bias[0]; k],
        n if n == k => bias,
        _ => return None,
    };
    (kernel.len() == k * c * g.kernel.0 * g.kernel.1 && g.out_height > 0 && g.out_width > 0)
        .then_some(FloatConv {
            dt,
            g,
            k,
            batched,
            kernel,
            bias,
        })
}

/// The constant value of `outlet`, as f32: a constant's, or that of a `Cast` of a constant
/// (how tract's `FloatPrecisionTranslator` leaves the weights of an f16 plan until the
/// optimizer folds them), rounded to the cast's type first.
fn konst_f32(model: &TypedModel, outlet: OutletId) -> Option<Tensor> {
    let fact = model.outlet_fact(outlet).ok()?;
    let k = match &fact.konst {
        Some(k) => k.clone(),
        None => {
            let node = model.node(outlet.node);
            node.op_as::<Cast>()?;
            model.outlet_fact(node.inputs[0]).ok()?.konst.clone()?
        }
    };
    let k = k.cast_to_dt(fact.datum_type).ok()?;
    Some(k.cast_to::<f32>().ok()?.into_owned())
}

/// The element-wise ops after a conv node that its op can take over: `Max(., 0)` (ReLU), or
/// (with `residuals`) `Add(., r)` with `r` of the output's `shape` then `Max(., 0)`, each the
/// only consumer of the one before. Returns the epilogue, the residual and the node whose
/// output the op replaces.
fn fuse(
    model: &TypedModel,
    conv: &TypedNode,
    residuals: bool,
    dt: DatumType,
    shape: &[usize],
) -> (Epilogue, Option<OutletId>, usize) {
    let none = (Epilogue::default(), None, conv.id);
    let only_successor = |node: &TypedNode| -> Option<&TypedNode> {
        match &node.outputs[0].successors[..] {
            [s] => Some(model.node(s.node)),
            _ => None,
        }
    };
    let binary = |node: &TypedNode, name: &str| -> Option<[OutletId; 2]> {
        let bin = node.op_as::<TypedBinOp>()?;
        (bin.0.name() == name && node.inputs.len() == 2).then(|| [node.inputs[0], node.inputs[1]])
    };
    let is_zero = |o: OutletId| {
        konst_f32(model, o).is_some_and(|k| {
            k.try_as_plain_ram()
                .ok()
                .and_then(|k| {
                    k.as_slice::<f32>()
                        .ok()
                        .map(|v| v.iter().all(|v| *v == 0.0))
                })
                .unwrap_or(false)
        })
    };
    let relu_of = |node: &TypedNode, input: OutletId| {
        binary(node, "Max")
            .is_some_and(|[a, b]| (a == input && is_zero(b)) || (b == input && is_zero(a)))
    };
    let out = OutletId::new(conv.id, 0);
    let Some(next) = only_successor(conv) else {
        return none;
    };
    let relu = Epilogue {
        residual: false,
        relu: true,
    };
    if relu_of(next, out) {
        return (relu, None, next.id);
    }
    let Some([a, b]) = binary(next, "Add").filter(|_| residuals) else {
        return none;
    };
    let residual = if a == out { b } else { a };
    let full = model
        .outlet_fact(residual)
        .ok()
        .is_some_and(|f| f.datum_type == dt && f.shape.as_concrete() == Some(shape));
    match only_successor(next) {
        Some(r) if full && residual != out && relu_of(r, OutletId::new(next.id, 0)) => (
            Epilogue {
                residual: true,
                relu: true,
            },
            Some(residual),
            r.id,
        ),
        _ => none,
    }
}
