//! The int8 convs of an optimized plan, as the device's own int8 kernels take them over (every
//! architecture's: `crate::kernels::x86_64::vnni`, `crate::kernels::aarch64::dotprod`).
//!
//! tract lowers an int8 conv to patches (`FastIm2col`, or `OptMatMulPack` for the 1x1 stride-1
//! convs, whose patches are the input itself) -> `OptMatMul` with constant K4 weights and
//! per-row integer terms (bias, zero points) -> `Int8Epilogue` (`crate::ops::epilogue`).
//! [`recognize`] reads such a chain back into what a kernel needs: the weights `[m][k]`, the
//! per-channel offsets added to `w . x`, the epilogue, and the patches in the kernel's layout;
//! [`swap_in`] replaces every chain a kernel takes by its patch op and its conv op.

use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::{ConvShape, FastIm2Col, KernelPatches};
use tract_core::internal::*;
use tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::PackedI8K4;
use tract_linalg::BinOp;

/// One int8 conv of the plan: `epilogue(w . x + offsets)` on `n` output pixels.
pub(crate) struct Int8Chain {
    /// `[m][k]`, tract's order along k: input channel, kernel y, kernel x.
    pub w: Vec<Vec<i8>>,
    /// Per output channel, added to the integer sums: tract's bias and zero-point terms.
    pub offsets: Vec<i32>,
    /// Output pixels.
    pub n: usize,
    pub epilogue: Int8Epilogue,
    /// The patches, in the layout asked of [`recognize`].
    pub patches: FastIm2Col,
    /// The conv's geometry, where tract packed patches for it (not the 1x1 stride-1 convs it
    /// lowered to plain matrix products): for kernels that read the input directly instead.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub shape: Option<ConvShape>,
    /// The node that made tract's patches (`FastIm2col` or `OptMatMulPack`).
    patch_node: usize,
}

/// What a kernel puts in place of a chain: the op computing its input from the conv's input
/// (and zero point), and the conv op itself (inputs: that, then the residual if the epilogue
/// adds one; outputs: the epilogue's).
pub(crate) struct Swap {
    pub input: Box<dyn TypedOp>,
    /// The input node's name after the conv's (`im2col`, `quads`).
    pub input_suffix: &'static str,
    pub conv: Box<dyn TypedOp>,
}

/// The weights of an `OptMatMul` operand as `[m][k]` i8, if they are a constant in tract's
/// K4 packing (lane `i` of row `kk` of panel `p` at `p * panel_len + (kk / 4) * 4r + 4i +
/// kk % 4`).
fn weights(model: &TypedModel, node: &TypedNode, operand: &MatMulOperand) -> Option<Vec<Vec<i8>>> {
    let value: &dyn MMMInputValue = match operand {
        MatMulOperand::Const(v) => &**v,
        MatMulOperand::Input(i) => {
            let konst = model
                .outlet_fact(*node.inputs.get(*i)?)
                .ok()?
                .konst
                .as_ref()?;
            let storage = konst.try_storage_as::<PackedMatrixStorage>().ok()?;
            &**storage.values().first()?
        }
    };
    let packed = value.downcast_ref::<EagerPackedInput>()?;
    let format = packed.format().downcast_ref::<PackedI8K4>()?;
    let (m, k, r) = (packed.mn(), packed.k(), format.r);
    let panel_len = format.single_panel_len(k);
    let bytes = packed.packed.as_bytes();
    if bytes.len() < m.div_ceil(r) * panel_len {
        return None;
    }
    Some(
        (0..m)
            .map(|c| {
                let panel = &bytes[c / r * panel_len..];
                (0..k)
                    .map(|kk| panel[(kk / 4) * 4 * r + 4 * (c % r) + kk % 4] as i8)
                    .collect()
            })
            .collect(),
    )
}

/// A constant i32 input of `node` with `len` values.
fn konst_i32(model: &TypedModel, node: &TypedNode, input: usize, len: usize) -> Option<Vec<i32>> {
    let fact = model.outlet_fact(*node.inputs.get(input)?).ok()?;
    let k = fact.konst.as_ref()?.try_as_plain_ram().ok()?;
    let v = k.as_slice::<i32>().ok()?;
    (v.len() == len).then(|| v.to_vec())
}

/// The patches, in `layout`, for a 1x1 stride-1 conv that tract lowered to `OptMatMulPack` (k
/// along the channels of a one-image `[1, C, H, W]` or `[C, H, W]` i8 input) -> `OptMatMul`.
fn pointwise(model: &TypedModel, pack: &TypedNode, layout: KernelPatches) -> Option<FastIm2Col> {
    let input = model.outlet_fact(*pack.inputs.first()?).ok()?;
    let shape = input.shape.as_concrete()?;
    let (c_axis, chw) = match shape {
        [1, chw @ ..] if chw.len() == 3 => (1, chw),
        chw if chw.len() == 3 => (0, chw),
        _ => return None,
    };
    let packed = pack.outputs[0]
        .fact
        .exotic_fact()?
        .downcast_ref::<DynPackedExoticFact>()?;
    let k_axis = format!("k axis: {c_axis},");
    if input.datum_type != i8::datum_type()
        || packed.k != chw[0].to_dim()
        || !pack.op.info().ok()?.iter().any(|i| i.contains(&k_axis))
    {
        return None;
    }
    Some(FastIm2Col::pointwise(layout, chw[0], chw[1], chw[2]))
}

/// The chain ending in the epilogue node `epilogue`, with its patches in `layout`, if it
/// follows `FastIm2col` (or `OptMatMulPack`) -> `OptMatMul` with constant K4 weights.
pub(crate) fn recognize(
    model: &TypedModel,
    epilogue: usize,
    layout: KernelPatches,
) -> Option<Int8Chain> {
    let e_node = model.node(epilogue);
    let e = e_node.op_as::<Int8Epilogue>()?;
    let mm_node = model.node(e_node.inputs[0].node);
    let mm = mm_node.op_as::<OptMatMul>()?;
    if mm_node.outputs[0].successors.len() != 1 {
        return None;
    }
    let [ProtoFusedSpec::AddMatMul { a, b, .. }, rows @ .., ProtoFusedSpec::Store(_)] =
        &mm.micro_ops[..]
    else {
        return None;
    };
    let MatMulOperand::Input(b) = b else {
        return None;
    };
    let patches = *mm_node.inputs.get(*b)?;
    let patch_node = model.node(patches.node);
    let (im2col, shape) = if let Some(op) = patch_node.op_as::<FastIm2Col>() {
        (op.for_kernel(layout)?, op.conv_shape())
    } else if patch_node.op_is::<OptMatMulPack>() {
        (pointwise(model, patch_node, layout)?, None)
    } else {
        return None;
    };
    let (k, n) = im2col.k_n();
    let w = weights(model, mm_node, a)?;
    let m = w.len();
    if m == 0
        || w[0].len() != k
        || e.scale.len() != m
        || e.shape.iter().product::<usize>() != m * n
        || mm.c_fact.shape.iter().product::<TDim>() != (m * n).to_dim()
        || mm.c_m_axis? >= mm.c_n_axis?
    {
        return None;
    }
    // tract's sums: w . x + rows.
    let mut offsets = vec![0i32; m];
    for row in rows {
        let ProtoFusedSpec::BinPerRow(input, op, _) = row else {
            return None;
        };
        let values = konst_i32(model, mm_node, *input, m)?;
        // In tract's fused ops, `SubF` is `acc - row` (the row is the first operand).
        let sign = match op {
            BinOp::Add => 1,
            BinOp::SubF => -1,
            _ => return None,
        };
        for (o, v) in offsets.iter_mut().zip(values) {
            *o += sign * v;
        }
    }
    Some(Int8Chain {
        w,
        offsets,
        n,
        epilogue: e.clone(),
        patches: im2col,
        shape,
        patch_node: patch_node.id,
    })
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model (and
/// `OptMatMulPack -> OptMatMul -> Int8Epilogue`) for which `kernel` gives a [`Swap`]; returns
/// how many. The conv node is named `{layer}.{name}`, its input `{layer}.{name}.{suffix}`.
pub(crate) fn swap_in(
    model: &mut TypedModel,
    name: &str,
    layout: KernelPatches,
    kernel: impl Fn(Int8Chain) -> Option<Swap>,
) -> TractResult<usize> {
    let epilogues: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<Int8Epilogue>())
        .map(|n| n.id)
        .collect();
    let mut replaced = 0;
    for id in epilogues {
        let Some(chain) = recognize(model, id, layout) else {
            continue;
        };
        let (patch_node, residual) = (chain.patch_node, chain.epilogue.residual);
        let Some(swap) = kernel(chain) else {
            continue;
        };
        let node = model.node(id);
        let matmul = &model.node(node.inputs[0].node).name;
        let base = matmul.rsplit_once('.').map_or(matmul.as_str(), |(b, _)| b);
        let name = format!("{base}.{name}");
        let residual = residual.then(|| node.inputs[1]);
        let outputs = node.outputs.len();
        let mut patch = TypedModelPatch::default();
        let taps = model
            .node(patch_node)
            .inputs
            .iter()
            .map(|i| patch.tap_model(model, *i))
            .collect::<TractResult<TVec<_>>>()?;
        let input_name = format!("{name}.{}", swap.input_suffix);
        let input = patch.wire_node(input_name, swap.input, &taps)?[0];
        let mut inputs = tvec![input];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let ys = patch.wire_node(name, swap.conv, &inputs)?;
        for (slot, y) in ys.into_iter().enumerate().take(outputs) {
            patch.shunt_outside(model, OutletId::new(id, slot), y)?;
        }
        patch.apply(model)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}
