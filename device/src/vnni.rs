//! The int8 convolutions on x86 CPUs with AVX-512 VNNI: integer matrix product and epilogue in
//! one op, in 512-bit registers.
//!
//! tract's own kernel there (`avx512vnni_mmm_i32_8x8`) runs the dot-product instruction on
//! 256-bit registers with an 8x8 tile: 13.8 of 19.1 ms of ResNet-18 int8 (x86, one thread),
//! about 130 GMAC/s. [`VnniConv`] runs `vpdpbusd` on 512-bit registers: a tile is 16 output
//! pixels (the lanes, one register of patch bytes per step of 4 along k) by 16 output channels
//! (a broadcast of 4 weight bytes each), 16 accumulators. It then finishes the tile where it
//! is, in registers: the integer offsets, the per-channel scale, the residual, ReLU and the
//! next layer's quantization - [`Int8Epilogue`]'s work, same f32 operations in the same order -
//! and writes the tile's f32 and/or i8 outputs. The i32 accumulators never reach memory.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. The patches come from [`FastIm2Col`] as
//! `x ^ 0x80 = x + 128` (unsigned), the weights stay signed, and the per-channel offset takes
//! back `128 * sum(weights)` along with tract's bias and input zero-point terms: the integer
//! sums are exactly tract's, so the whole plan stays bit-identical to tract's
//! (`tests/int8_kernels.rs`; the kernel alone against a scalar reference below).
//!
//! [`speed_up`] swaps it in for every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an
//! optimized int8 plan, and for the 1x1 stride-1 convs tract lowers to `OptMatMulPack ->
//! OptMatMul -> Int8Epilogue` (their patches are the input itself, repacked), on CPUs with
//! AVX-512 F, BW, VL and VNNI (checked at run time). Elsewhere (aarch64 boards, older x86) the
//! plan keeps tract's kernels. `--threads N` splits the output channels over tract's pool.

use crate::epilogue::Int8Epilogue;
use crate::im2col::FastIm2Col;
use std::arch::x86_64::*;
use std::ops::Range;
use tract_core::internal::*;
use tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::PackedI8K4;
use tract_linalg::BinOp;

/// Output channels per tile: one accumulator register each.
const CHANNELS: usize = 16;
/// Output pixels per tile: the 16 i32 lanes of a register.
const PIXELS: usize = 16;

/// An int8 convolution's matrix product and epilogue (see the module doc).
#[derive(Clone, PartialEq)]
pub struct VnniConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Steps of 4 along k (input channels x kernel taps, rounded up to 4).
    k4: usize,
    /// Per block of 16 channels, per step: 16 channels x 4 weights (zero past `m` and `k`).
    weights: Arc<Vec<i8>>,
    /// Per channel, added to the sums: tract's bias and zero-point terms, `- 128 * sum(w)`.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
}

impl Eq for VnniConv {}

impl std::fmt::Debug for VnniConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VnniConv {{ m: {}, n: {}, k: {}, epilogue: {:?} }}",
            self.m,
            self.n,
            4 * self.k4,
            self.epilogue
        )
    }
}

impl Op for VnniConv {
    fn name(&self) -> StaticName {
        "VnniConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let e = &self.epilogue;
        Ok(vec![
            format!(
                "Mult: m:{} k:{} n:{} with [{}]",
                self.m,
                4 * self.k4,
                self.n,
                Self::KERNEL
            ),
            format!(
                "epilogue: residual: {}, relu: {}, quantize: {:?}, keep f32: {}",
                e.residual, e.relu, e.quantize, e.keep_f32
            ),
        ])
    }

    op_as_typed_op!();
}

/// Where one eval's tiles read and write: raw pointers, so that threads can each take a
/// range of channel blocks (disjoint rows of the outputs).
#[derive(Clone, Copy)]
struct Buffers {
    patches: *const u8,
    residual: Option<*const f32>,
    f32_out: Option<*mut f32>,
    i8_out: Option<*mut i8>,
    /// The next layer's quantizer: reciprocal scale, zero point.
    quantize: Option<(f32, i32)>,
}

// SAFETY: the pointers outlive the eval that shares them, and each thread writes only the
// rows of its own channel blocks.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

impl VnniConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "avx512vnni_i32_16x16 (device::vnni)";

    /// The conv with weights `w` (`[m][k]`) computing `w . x + offsets` on `n` pixels, then
    /// `epilogue`.
    pub(crate) fn new(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue) -> Self {
        let (m, k) = (w.len(), w.first().map_or(0, |row| row.len()));
        let k4 = k.div_ceil(4);
        let mut weights = vec![0i8; m.div_ceil(CHANNELS) * k4 * 4 * CHANNELS];
        for (c, row) in w.iter().enumerate() {
            let (block, j) = (c / CHANNELS, c % CHANNELS);
            for (kk, v) in row.iter().enumerate() {
                weights[(block * k4 + kk / 4) * 4 * CHANNELS + 4 * j + kk % 4] = *v;
            }
        }
        // The kernel sums w . (x + 128) = w . x + 128 * sum(w).
        let offsets = w
            .iter()
            .zip(offsets)
            .map(|(row, o)| o - 128 * row.iter().map(|v| i32::from(*v)).sum::<i32>())
            .collect();
        VnniConv {
            m,
            n,
            k4,
            weights: Arc::new(weights),
            offsets,
            epilogue,
        }
    }

    fn panel_len(&self) -> usize {
        self.k4 * 4 * PIXELS
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PIXELS)
    }

    /// Runs the tiles of channel blocks `blocks`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and VNNI; the buffers hold `panels * panel_len` patch bytes
    /// and `m * n` values each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(&self, buf: Buffers, blocks: Range<usize>) {
        let panel_len = self.panel_len();
        let block_len = self.k4 * 4 * CHANNELS;
        let w = self.weights.as_ptr();
        let tile = |block: usize, panel: usize| {
            let acc = dot(
                w.add(block * block_len),
                buf.patches.add(panel * panel_len),
                self.k4,
            );
            self.finish(&acc, block * CHANNELS, panel * PIXELS, buf);
        };
        // Each block of weights is read once, the patches once per block. The other order
        // (weights streamed once per panel of patches) measured the same on ResNet-18
        // (13.7 ms either way, x86, one thread).
        for block in blocks {
            for panel in 0..self.panels() {
                tile(block, panel);
            }
        }
    }

    /// The epilogue of one tile: channels `c0..c0 + 16`, pixels `p0..p0 + 16` (those inside).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn finish(&self, acc: &[__m512i; CHANNELS], c0: usize, p0: usize, buf: Buffers) {
        let e = &self.epilogue;
        let lanes = PIXELS.min(self.n - p0);
        let mask: __mmask16 = if lanes == PIXELS {
            !0
        } else {
            (1 << lanes) - 1
        };
        let zero = _mm512_setzero_ps();
        for (j, acc) in acc.iter().enumerate().take(self.m.saturating_sub(c0)) {
            let c = c0 + j;
            let at = c * self.n + p0;
            let sums = _mm512_add_epi32(*acc, _mm512_set1_epi32(self.offsets[c]));
            // As Int8Epilogue: acc as f32 * scale (+ residual) (max 0).
            let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(e.scale[c]));
            if let Some(r) = buf.residual {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.add(at)));
            }
            if e.relu {
                // max(v, 0) is 0 for a NaN v, like f32::max.
                v = _mm512_max_ps(v, zero);
            }
            if let Some(out) = buf.f32_out {
                _mm512_mask_storeu_ps(out.add(at), mask, v);
            }
            if let (Some(out), Some((scale, zero_point))) = (buf.i8_out, buf.quantize) {
                _mm_mask_storeu_epi8(out.add(at), mask, quantize(v, scale, zero_point));
            }
        }
    }
}

/// `crate::quantize::quantize` on 16 lanes: `clamp(round_ties_even(clamp(v * scale, +-1024)) +
/// zero_point, -128, 127)`, NaN -> `zero_point`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn quantize(v: __m512, scale: f32, zero_point: i32) -> __m128i {
    let v = _mm512_mul_ps(v, _mm512_set1_ps(scale));
    let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
    let v = _mm512_min_ps(
        _mm512_max_ps(v, _mm512_set1_ps(-1024.0)),
        _mm512_set1_ps(1024.0),
    );
    // The default rounding mode: to nearest, ties to even.
    let r = _mm512_cvtps_epi32(v);
    _mm512_cvtsepi32_epi8(_mm512_add_epi32(r, _mm512_set1_epi32(zero_point)))
}

/// One tile's integer sums: 16 channels (`w`: per step, 16 x 4 signed bytes) by 16 pixels
/// (`x`: per step, 16 x 4 unsigned bytes), over `k4` steps.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot(w: *const i8, x: *const u8, k4: usize) -> [__m512i; CHANNELS] {
    let mut acc = [_mm512_setzero_si512(); CHANNELS];
    for step in 0..k4 {
        let xs = _mm512_loadu_si512(x.add(step * 64) as *const _);
        let ws = w.add(step * 4 * CHANNELS) as *const i32;
        for (j, acc) in acc.iter_mut().enumerate() {
            let wj = _mm512_set1_epi32(ws.add(j).read_unaligned());
            *acc = _mm512_dpbusd_epi32(*acc, xs, wj);
        }
    }
    acc
}

impl EvalOp for VnniConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let e = &self.epilogue;
        let patches = &inputs[0];
        ensure!(
            patches.datum_type() == u8::datum_type()
                && patches.len() == self.panels() * self.panel_len(),
            "VnniConv: patches {:?} {:?}, planned for {} bytes",
            patches.datum_type(),
            patches.shape(),
            self.panels() * self.panel_len()
        );
        let residual = e
            .residual_input("VnniConv", &inputs)?
            .map(|r| unsafe { r.as_ptr_unchecked::<f32>() });
        let quantize = e.quantizer();
        let (mut f, mut i) = e.uninitialized_outputs()?;
        let buf = Buffers {
            patches: unsafe { patches.as_ptr_unchecked::<u8>() },
            residual,
            f32_out: f
                .as_mut()
                .map(|t| unsafe { t.as_ptr_mut_unchecked::<f32>() }),
            i8_out: i
                .as_mut()
                .map(|t| unsafe { t.as_ptr_mut_unchecked::<i8>() }),
            quantize,
        };
        // SAFETY: speed_up checked the CPU; eval checked the sizes above. Each range of
        // channel blocks writes its own rows of the outputs.
        crate::parallel::for_ranges(self.m.div_ceil(CHANNELS), |blocks| unsafe {
            self.run(buf, blocks)
        });
        let outputs: TVec<Tensor> = f.into_iter().chain(i).collect();
        Ok(outputs.into_iter().map(|t| t.into_tvalue()).collect())
    }
}

impl TypedOp for VnniConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// Whether this CPU runs [`VnniConv`].
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
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

/// The patches for a 1x1 stride-1 conv that tract lowered to `OptMatMulPack` (k along the
/// channels of a one-image `[1, C, H, W]` or `[C, H, W]` i8 input) -> `OptMatMul`.
fn pointwise(model: &TypedModel, pack: &TypedNode) -> Option<FastIm2Col> {
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
    Some(FastIm2Col::pointwise_vnni(chw[0], chw[1], chw[2]))
}

/// The [`VnniConv`] (and the patch op feeding it) for the epilogue node `epilogue`, if it
/// follows `FastIm2col -> OptMatMul` with constant K4 weights.
fn recognize(model: &TypedModel, epilogue: usize) -> Option<(VnniConv, usize, FastIm2Col)> {
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
    let im2col_node = model.node(patches.node);
    let im2col = if let Some(op) = im2col_node.op_as::<FastIm2Col>() {
        op.for_vnni()?
    } else if im2col_node.op_is::<OptMatMulPack>() {
        pointwise(model, im2col_node)?
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
    Some((
        VnniConv::new(&w, &offsets, n, e.clone()),
        im2col_node.id,
        im2col,
    ))
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model that
/// [`VnniConv`] handles, on CPUs that have it; returns how many. Run after
/// `crate::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    if !supported() {
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
        let Some((conv, im2col_id, im2col)) = recognize(model, id) else {
            continue;
        };
        let node = model.node(id);
        let matmul = &model.node(node.inputs[0].node).name;
        let base = matmul.rsplit_once('.').map_or(matmul.as_str(), |(b, _)| b);
        let name = format!("{base}.vnni");
        let residual = conv.epilogue.residual.then(|| node.inputs[1]);
        let outputs = node.outputs.len();
        let mut patch = TypedModelPatch::default();
        let taps = model
            .node(im2col_id)
            .inputs
            .iter()
            .map(|i| patch.tap_model(model, *i))
            .collect::<TractResult<TVec<_>>>()?;
        let patches = patch.wire_node(format!("{name}.im2col"), im2col, &taps)?[0];
        let mut inputs = tvec![patches];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let ys = patch.wire_node(name, conv, &inputs)?;
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
mod tests {
    use super::*;
    use crate::quantize::{quantize, FastQuantize};
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    fn random(seed: u64) -> impl FnMut() -> i8 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as i8
        }
    }

    /// `x` (`[k][n]`) in the kernel's patch layout: per panel of 16 pixels, per step of 4
    /// rows, 16 x 4 bytes `x ^ 0x80`; zeros past `k` and past `n`.
    fn patches(x: &[Vec<i8>], n: usize) -> Tensor {
        let (k4, panels) = (x.len().div_ceil(4), n.div_ceil(PIXELS));
        let mut bytes = vec![0u8; panels * k4 * 64];
        for (kk, row) in x.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (p, lane) = (j / PIXELS, j % PIXELS);
                bytes[(p * k4 + kk / 4) * 64 + 4 * lane + kk % 4] = (*v as u8) ^ 0x80;
            }
        }
        Tensor::from_shape(&[bytes.len()], &bytes).unwrap()
    }

    /// The kernel against a scalar evaluation of the same function (integer sums, then
    /// `Int8Epilogue`'s f32 steps), bit for bit, on sizes that leave partial tiles and steps,
    /// every epilogue variant, and on two threads.
    #[test]
    fn kernel_equals_scalar_reference() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI (the plan keeps tract's kernels)");
            return;
        }
        // (m, n, k)
        let sizes = [
            (20, 37, 13),
            (16, 16, 4),
            (64, 49, 576),
            (8, 200, 27),
            (33, 1, 9),
        ];
        for (case, &(m, n, k)) in sizes.iter().enumerate() {
            let mut next = random(case as u64 + 7);
            let w: Vec<Vec<i8>> = (0..m).map(|_| (0..k).map(|_| next()).collect()).collect();
            let x: Vec<Vec<i8>> = (0..k).map(|_| (0..n).map(|_| next()).collect()).collect();
            let offsets: Vec<i32> = (0..m).map(|c| c as i32 * 977 - 9000).collect();
            let scale: Vec<f32> = (0..m).map(|c| 1e-3 * (1.0 + c as f32 / 7.0)).collect();
            let residual: Vec<f32> = (0..m * n)
                .map(|i| (next() as f32) / 16.0 + i as f32 * 1e-4)
                .collect();
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
                let conv = VnniConv::new(&w, &offsets, n, epilogue);
                let mut inputs = tvec![patches(&x, n).into_tvalue()];
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
                assert_eq!(one, two, "case {case} variant {variant}: threads differ");
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
                    let got = outputs
                        .next()
                        .unwrap()
                        .try_as_plain_ram()
                        .unwrap()
                        .as_slice::<f32>()
                        .unwrap();
                    for (i, (a, b)) in got.iter().zip(&want_f).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "case {case} variant {variant} f32 {i}: {a} vs {b}"
                        );
                    }
                }
                if quantized {
                    let got = outputs
                        .next()
                        .unwrap()
                        .try_as_plain_ram()
                        .unwrap()
                        .as_slice::<i8>()
                        .unwrap();
                    assert_eq!(got, &want_i[..], "case {case} variant {variant}: i8");
                }
            }
        }
    }
}
