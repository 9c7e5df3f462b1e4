//! The int8 convs of an optimized plan, as the device's own int8 kernels take them over (every
//! architecture's: `crate::kernels::x86_64::vnni`, `crate::kernels::aarch64::dotprod`).
//!
//! tract lowers an int8 conv to patches (`FastIm2col`, or `OptMatMulPack` for the 1x1 stride-1
//! convs, whose patches are the input itself) -> `OptMatMul` with constant K4 weights and
//! per-row integer terms (bias, zero points) -> `Int8Epilogue` (`crate::ops::epilogue`).
//! [`recognize`] reads such a chain back into what a kernel needs: the weights `[m][k]`, the
//! per-channel offsets added to `w . x`, the epilogue, and the patches in the kernel's layout;
//! [`swap_in`] replaces every chain a kernel takes by its patch op and its conv op.

use crate::kernels::frame::quads::{Quads, QuadsFill, QuadsOp};
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::{ConvShape, FastIm2Col, KernelPatches};
use tract_core::internal::*;
use tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::{PackedFormat, PackedI8K4};
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

impl Swap {
    /// `conv` on the chain's own patches (in the kernel's layout).
    pub fn on_patches(conv: impl TypedOp + 'static, chain: Int8Chain) -> Swap {
        Swap { input: Box::new(chain.patches), input_suffix: "im2col", conv: Box::new(conv) }
    }

    /// The conv `conv(w, offsets, quads, epilogue)` makes on the chain's input in channel quads
    /// of geometry `g`, written by the op `input(quads)` makes instead of patches.
    pub fn on_quads<F: QuadsFill, C: TypedOp + 'static>(
        chain: Int8Chain,
        g: ConvShape,
        conv: impl FnOnce(&[Vec<i8>], &[i32], Quads, Int8Epilogue) -> C,
        input: impl FnOnce(Quads) -> QuadsOp<F>,
    ) -> Swap {
        let quads = Quads { g };
        let Int8Chain { w, offsets, epilogue, .. } = chain;
        Swap {
            conv: Box::new(conv(&w, &offsets, quads.clone(), epilogue)),
            input: Box::new(input(quads)),
            input_suffix: "quads",
        }
    }
}

impl Int8Chain {
    /// The geometry of a 1x1 stride-1 conv tract lowered to a plain matrix product (no
    /// `shape`): its patches', which are the input itself.
    pub fn pointwise_shape(&self) -> Option<ConvShape> {
        let g = self.patches.shape();
        (self.shape.is_none() && g.kernel == (1, 1)).then(|| g.clone())
    }
}

/// The lines `device inspect` shows for a kernel's conv op (`Op::info`): its matrix product
/// (`m x k` weights by `k x n` patches, with `kernel`) and its epilogue `e`.
pub(crate) fn conv_info(kernel: &str, (m, k, n): (usize, usize, usize), e: &Int8Epilogue) -> Vec<String> {
    vec![
        format!("Mult: m:{m} k:{k} n:{n} with [{kernel}]"),
        format!(
            "epilogue: residual: {}, relu: {}, quantize: {:?}, keep f32: {}",
            e.residual, e.relu, e.quantize, e.keep_f32
        ),
    ]
}

/// Where one eval of a kernel's conv reads and writes: raw pointers, so that threads can each
/// take a range of channel blocks (disjoint rows of the outputs). `P`: the patch bytes.
pub(crate) struct Buffers<P> {
    pub patches: *const P,
    pub residual: Option<*const f32>,
    pub f32_out: Option<*mut f32>,
    pub i8_out: Option<*mut i8>,
    /// The next layer's quantizer: reciprocal scale, zero point.
    pub quantize: Option<(f32, i32)>,
}

// (Copy for any `P`: the fields are pointers; a derive would ask `P: Copy`.)
impl<P> Clone for Buffers<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Buffers<P> {}

// SAFETY: the pointers outlive the eval that shares them, and each thread writes only the
// rows of its own channel blocks.
unsafe impl<P> Send for Buffers<P> {}
unsafe impl<P> Sync for Buffers<P> {}

/// The eval of a kernel's conv op `op` with epilogue `e`: checks `inputs` (`patch_len` patch
/// values of type `P`, then the residual if `e` adds one), makes the outputs and runs
/// `run(buffers, range)` over `blocks` channel blocks, split over tract's threads.
///
/// # Safety
/// `run` may run on any range of `0..blocks` and writes only the rows of its channel blocks.
pub(crate) unsafe fn eval_conv<P: Datum>(
    op: &str,
    e: &Int8Epilogue,
    inputs: &[TValue],
    patch_len: usize,
    blocks: usize,
    run: impl Fn(Buffers<P>, std::ops::Range<usize>) + Sync,
) -> TractResult<TVec<TValue>> {
    let patches = &inputs[0];
    ensure!(
        patches.datum_type() == P::datum_type() && patches.len() == patch_len,
        "{op}: patches {:?} {:?}, planned for {patch_len} {:?}",
        patches.datum_type(),
        patches.shape(),
        P::datum_type()
    );
    let residual = e.residual_input(op, inputs)?.map(|r| r.as_ptr_unchecked::<f32>());
    let (mut f, mut i) = e.uninitialized_outputs()?;
    let buf = Buffers {
        patches: patches.as_ptr_unchecked::<P>(),
        residual,
        f32_out: f.as_mut().map(|t| t.as_ptr_mut_unchecked::<f32>()),
        i8_out: i.as_mut().map(|t| t.as_ptr_mut_unchecked::<i8>()),
        quantize: e.quantizer(),
    };
    crate::ops::parallel::for_ranges(blocks, |range| run(buf, range));
    let outputs: TVec<Tensor> = f.into_iter().chain(i).collect();
    Ok(outputs.into_iter().map(|t| t.into_tvalue()).collect())
}

/// The weights of an `OptMatMul` operand as `[m][k]` i8, if they are a constant in tract's
/// K4 packing (lane `i` of row `kk` of panel `p` at `p * panel_len + (kk / 4) * 4r + 4i +
/// kk % 4`) or its K-outer one (`p * panel_len + kk * r + i`).
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
    let bytes = packed.packed.as_bytes();
    let (m, k) = (packed.mn(), packed.k());
    // Lane `i` of row `kk` of panel `p`: at `p * panel_len + at(kk, i)`.
    let (r, panel_len, at): (usize, usize, fn(usize, usize, usize) -> usize) =
        if let Some(f) = packed.format().downcast_ref::<PackedI8K4>() {
            (f.r, f.single_panel_len(k), |kk, i, r| (kk / 4) * 4 * r + 4 * i + kk % 4)
        } else {
            // tract's K-outer packing (CPUs without a dot product), of i8 values.
            let f = packed.format().downcast_ref::<PackedFormat>()?;
            if f.dt != i8::datum_type() {
                return None;
            }
            (f.r, f.single_panel_len(k), |kk, i, r| kk * r + i)
        };
    if bytes.len() < m.div_ceil(r) * panel_len {
        return None;
    }
    Some(
        (0..m)
            .map(|c| {
                let panel = &bytes[c / r * panel_len..];
                (0..k).map(|kk| panel[at(kk, c % r, r)] as i8).collect()
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
        // Channel-major accumulators (either order for one pixel: the classifier's [1, m]).
        || (n > 1 && mm.c_m_axis? >= mm.c_n_axis?)
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
/// Nothing where the CPU lacks the kernel's instructions (`cpu_has` false), whoever calls.
pub(crate) fn swap_in(
    model: &mut TypedModel,
    cpu_has: bool,
    name: &str,
    layout: KernelPatches,
    kernel: impl Fn(Int8Chain) -> Option<Swap>,
) -> TractResult<usize> {
    if !cpu_has {
        return Ok(0);
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::quantize::{quantize, FastQuantize};
    use crate::ops::test_util::random_i8 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// A kernel's conv op (`conv(w, offsets, n, epilogue)` on `x` in `layout`) against a scalar
    /// evaluation of the same function (integer sums `w . x + offsets`, then `Int8Epilogue`'s
    /// f32 steps), bit for bit: per `(m, n, k)` of `sizes`, every epilogue variant, on one and
    /// two threads. With `specials`, also NaN and infinite residuals and one case of patches
    /// all -128. Weights from `min_weight` up. Skipped where the CPU lacks the kernel's
    /// instructions (`cpu_has`: whether it has them, their name).
    pub(crate) fn kernel_equals_scalar_reference<O: EvalOp>(
        cpu_has: (bool, &str),
        sizes: &[(usize, usize, usize)],
        specials: bool,
        min_weight: i8,
        layout: KernelPatches,
        conv: impl Fn(&[Vec<i8>], &[i32], usize, Int8Epilogue) -> O,
    ) {
        if !cpu_has.0 {
            eprintln!("skipped: this CPU has no {} (the plan keeps tract's kernels)", cpu_has.1);
            return;
        }
        for (case, &(m, n, k)) in sizes.iter().enumerate() {
            let mut next = random(case as u64 + 7);
            let w: Vec<Vec<i8>> =
                (0..m).map(|_| (0..k).map(|_| next().max(min_weight)).collect()).collect();
            let mut x: Vec<Vec<i8>> = (0..k).map(|_| (0..n).map(|_| next()).collect()).collect();
            let offsets: Vec<i32> = (0..m).map(|c| c as i32 * 977 - 9000).collect();
            let scale: Vec<f32> = (0..m).map(|c| 1e-3 * (1.0 + c as f32 / 7.0)).collect();
            let mut residual: Vec<f32> = (0..m * n)
                .map(|i| (next() as f32) / 16.0 + i as f32 * 1e-4)
                .collect();
            if specials {
                // The extremes: -128 x -128 sums.
                if case == 1 {
                    x.iter_mut().for_each(|r| r.fill(-128));
                }
                // ReLU and quantization keep f32::max's and quantize's answers.
                for (r, v) in residual.iter_mut().zip([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]) {
                    *r = v;
                }
            }
            for variant in 0..16 {
                let (with_residual, relu) = (variant & 1 != 0, variant & 2 != 0);
                let (quantized, keep_f32) = (variant & 4 != 0, variant & 8 != 0);
                if keep_f32 && !quantized {
                    continue;
                }
                let q = FastQuantize {
                    scale: 11.5,
                    zero_point: if relu { -128 } else { 3 },
                };
                let epilogue = Int8Epilogue {
                    scale: scale.clone(),
                    residual: with_residual,
                    relu,
                    quantize: quantized.then(|| q.clone()),
                    keep_f32,
                    shape: tvec![1, m, n],
                };
                let conv = conv(&w, &offsets, n, epilogue);
                let mut inputs = tvec![layout.pack(&x, n).into_tvalue()];
                if with_residual {
                    inputs.push(
                        Tensor::from_shape(&[1, m, n], &residual)
                            .unwrap()
                            .into_tvalue(),
                    );
                }
                let one = conv
                    .eval(&EvalContext::out_of_plan(), inputs.clone())
                    .unwrap();
                let two = multithread_tract_scope(Executor::multithread(2), || {
                    conv.eval(&EvalContext::out_of_plan(), inputs.clone())
                        .unwrap()
                });
                // (NaN != NaN: compare the bytes.)
                let bytes = |t: &TVec<TValue>| -> Vec<Vec<u8>> {
                    t.iter()
                        .map(|t| t.try_as_plain_ram().unwrap().as_bytes().to_vec())
                        .collect()
                };
                assert_eq!(bytes(&one), bytes(&two), "case {case} variant {variant}: threads differ");
                // The reference.
                let mut want_f = vec![0f32; m * n];
                let mut want_i = vec![0i8; m * n];
                for c in 0..m {
                    for j in 0..n {
                        let sum: i32 = (0..k)
                            .map(|kk| i32::from(w[c][kk]) * i32::from(x[kk][j]))
                            .sum();
                        let mut v = (sum + offsets[c]) as f32 * scale[c];
                        if with_residual {
                            v += residual[c * n + j];
                        }
                        if relu {
                            v = v.max(0.0);
                        }
                        want_f[c * n + j] = v;
                        want_i[c * n + j] = quantize(v, q.scale, i32::from(q.zero_point));
                    }
                }
                let mut outputs = one.iter();
                if !quantized || keep_f32 {
                    let got = outputs.next().unwrap().try_as_plain_ram().unwrap();
                    let got = got.as_slice::<f32>().unwrap();
                    for (i, (a, b)) in got.iter().zip(&want_f).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "case {case} variant {variant} f32 {i}: {a} vs {b}"
                        );
                    }
                }
                if quantized {
                    let got = outputs.next().unwrap().try_as_plain_ram().unwrap();
                    let got = got.as_slice::<i8>().unwrap();
                    assert_eq!(got, &want_i[..], "case {case} variant {variant}: i8");
                }
            }
        }
    }
}
