//! The fp32 plans' own convolutions, on x86 CPUs with AVX-512 F: [`prepare`] swaps them in
//! for tract's `Conv` in the decluttered model, before tract's optimizer.
//!
//! - 3x3 stride-1 padding-1 convs: `crate::kernels::x86_64::winograd` (Winograd F(4x4, 3x3) or F(2x2, 3x3): 4x
//!   or 2.25x fewer multiply-adds), with the residual addition and the ReLU that follow.
//! - Convs with kernels of 5 and more (ResNet's 7x7/2 stem): `crate::kernels::x86_64::direct`, with the ReLU.
//! - Everything else (stride-2 3x3, 1x1) stays tract's: its im2col + matrix product runs
//!   those at about the speed of ONNX Runtime's.
//!
//! Only for float convs with constant weights and bias, one group, no dilation, one `[1, C, H,
//! W]` (or `[C, H, W]`) image and output channels a multiple of 8. `--conv tract` (`ConvAlgorithm::Tract`)
//! keeps tract's everywhere.

use crate::kernels::x86_64::avx512::{shape, Epilogue};
use crate::kernels::x86_64::direct::DirectConv;
use crate::ops::im2col::ConvShape;
use crate::kernels::x86_64::winograd::WinogradConv;
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::conv::KernelFormat;
use tract_core::ops::cnn::Conv;
use tract_core::ops::nn::DataFormat;

/// How many convs [`prepare`] gave to each op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    pub winograd: usize,
    pub direct: usize,
}

/// A float conv node that this crate's ops may take.
struct FloatConv {
    g: ConvShape,
    /// Output channels.
    k: usize,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`).
    batched: bool,
    /// `[k][c][kh][kw]`.
    kernel: Vec<f32>,
    bias: Vec<f32>,
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
    if input.datum_type != f32::datum_type()
        || c != spec.input_channels
        || k == 0
        || !k.is_multiple_of(8)
    {
        return None;
    }
    let g = ConvShape::of_window(spec, c, h, w);
    let konst = |i: usize| -> Option<Vec<f32>> {
        let k = model.outlet_fact(node.inputs[i]).ok()?.konst.clone()?;
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
            g,
            k,
            batched,
            kernel,
            bias,
        })
}

/// Replaces every float `Conv` of a decluttered model that an op of this crate computes (see
/// the module doc). Plugged (`crate::kernels::x86_64::plug`) on CPUs with AVX-512 F; runs before
/// tract's optimizer, on f32 plans only.
pub fn prepare(model: &mut TypedModel) -> TractResult<Replaced> {
    let mut replaced = Replaced::default();
    // The ops run AVX-512 instructions: never wired in on a CPU without them, whoever calls.
    if !crate::cpu::Cpu::get().avx512f {
        return Ok(replaced);
    }
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(FloatConv {
            g,
            k,
            batched,
            kernel,
            bias,
        }) = node
            .op_as::<Conv>()
            .and_then(|conv| float_conv(model, node, conv))
        else {
            continue;
        };
        let winograd = g.kernel == (3, 3)
            && g.stride == (1, 1)
            && g.pad == (1, 1)
            && (g.out_height, g.out_width) == (g.height, g.width);
        let large = g.kernel.0 >= 5 && g.kernel.1 >= 5;
        if !winograd && !large {
            continue;
        }
        let out_shape = shape(batched, [k, g.out_height, g.out_width]);
        let (epilogue, residual, last) = fuse(model, node, winograd, &out_shape);
        let (op, suffix): (Box<dyn TypedOp>, _) = if winograd {
            replaced.winograd += 1;
            let (c, h, w) = (g.channels, g.height, g.width);
            let mut op = WinogradConv::new(&kernel, &bias, c, k, h, w, epilogue);
            op.batched = batched;
            (Box::new(op), "winograd")
        } else {
            replaced.direct += 1;
            let op = DirectConv::new(g, k, batched, &kernel, &bias, epilogue);
            (Box::new(op), "direct")
        };
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

/// The element-wise ops after a conv node that its op can take over: `Max(., 0)` (ReLU), or
/// (with `residuals`) `Add(., r)` with `r` of the output's `shape` then `Max(., 0)`, each the
/// only consumer of the one before. Returns the epilogue, the residual and the node whose
/// output the op replaces.
fn fuse(
    model: &TypedModel,
    conv: &TypedNode,
    residuals: bool,
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
        let k = model.outlet_fact(o).ok().and_then(|f| f.konst.clone());
        k.is_some_and(|k| {
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
        .is_some_and(|f| f.datum_type == f32::datum_type() && f.shape.as_concrete() == Some(shape));
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
