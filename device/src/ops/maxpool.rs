//! A separable max pool for f32 NCHW plans, and f16 ones where the CPU has fp16 arithmetic.
//!
//! tract's `OptMaxPool` visits every tap of every output pixel (device/README.md, "Why each op
//! exists"). [`FastMaxPool`] takes the
//! maximum across the rows of each window first, then along the row, both as element-wise
//! passes over contiguous runs (SIMD). Same result bit for bit: maxima of the same values,
//! starting from `f32::MIN` and skipping NaN as tract's does (tests below); only the sign of a
//! zero maximum may differ where a window holds both 0.0 and -0.0 (the order differs).
//! [`speed_up`] swaps it in for every 2-D f32 NCHW `OptMaxPool` of an optimized plan, and for
//! the f16 ones on aarch64 CPUs with FEAT_FP16 (`fmaxnm` on 8 f16 lanes; tract's own f16 max pool
//! goes tap by tap through software f16 compares: 37.6 M of ResNet-18's 288.5 M instructions
//! per fp16 inference on cortex-a76).
//!
//! In int8 plans the pool sits between the stem's epilogue (f32) and the quantizer of the
//! first block's input. [`pool_quantized`] swaps the two where the pooled f32 values go
//! nowhere else (ResNet-50; not ResNet-18, whose first block adds them as its residual): the
//! epilogue then writes i8 and the pool runs on i8, 16 lanes a register and a quarter of the
//! bytes. Quantizing is monotone, so the maxima are the same bytes (the ReLU before keeps NaN
//! out: tract's pool skips a NaN, the quantized one would not).

use tract_core::internal::*;
use tract_core::ops::cnn::OptMaxPool;
use tract_core::ops::nn::DataFormat;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FastMaxPool {
    /// f32, or f16 (planned only where [`f16_pools`] says the CPU can).
    dt: DatumType,
    channels: usize,
    /// Input height and width.
    input: (usize, usize),
    output: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Padding before (top, left).
    pad: (usize, usize),
}

/// An element type of the pool: its starting value (tract's: the type's lowest finite value,
/// never NaN) and tract's max over runs, `acc[i] = max(acc[i], v[i])` (`v` replaces `acc`
/// only when strictly greater, so NaN never does).
trait PoolElem: Datum + Copy {
    const MIN: Self;
    fn max_into(acc: &mut [Self], v: &[Self]);
}

impl PoolElem for f32 {
    const MIN: f32 = f32::MIN;
    /// `f32::max` computes tract's max for an `acc` that is never NaN (the non-NaN operand)
    /// and compiles to `maxps`/`fmaxnm`; a compare-and-select compiled to masked stores.
    #[inline(always)]
    fn max_into(acc: &mut [f32], v: &[f32]) {
        for (m, v) in acc.iter_mut().zip(v) {
            *m = m.max(*v);
        }
    }
}

impl PoolElem for i8 {
    const MIN: i8 = i8::MIN;
    #[inline(always)]
    fn max_into(acc: &mut [i8], v: &[i8]) {
        for (m, v) in acc.iter_mut().zip(v) {
            *m = (*m).max(*v);
        }
    }
}

impl PoolElem for f16 {
    const MIN: f16 = f16::MIN;
    #[inline(always)]
    fn max_into(acc: &mut [f16], v: &[f16]) {
        let n = acc.len().min(v.len());
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the CPU has fp16; both slices hold `n` values.
        let done = match crate::cpu::Cpu::get().fp16 {
            true => unsafe { max_f16_neon(acc.as_mut_ptr(), v.as_ptr(), n) },
            false => 0,
        };
        #[cfg(not(target_arch = "aarch64"))]
        let done = 0;
        for (m, v) in acc[done..n].iter_mut().zip(&v[done..n]) {
            if v.to_f32() > m.to_f32() {
                *m = *v;
            }
        }
    }
}

/// `acc[i] = fmaxnm(acc[i], v[i])` for the first `n / 8 * 8` values, 8 f16 lanes at a time
/// (`fmaxnm`: the number where one side is a NaN, as tract's max for an `acc` never NaN);
/// returns how many it did.
///
/// # Safety
/// The CPU has FEAT_FP16; `acc` and `v` valid for `n` values.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,fp16")]
unsafe fn max_f16_neon(acc: *mut f16, v: *const f16, n: usize) -> usize {
    let eights = n / 8;
    if eights > 0 {
        std::arch::asm!(
            "2:",
            "ldr {a:q}, [{acc}]",
            "ldr {b:q}, [{v}], #16",
            "fmaxnm {a:v}.8h, {a:v}.8h, {b:v}.8h",
            "str {a:q}, [{acc}], #16",
            "subs {k}, {k}, #1",
            "b.ne 2b",
            acc = inout(reg) acc => _,
            v = inout(reg) v => _,
            k = inout(reg) eights => _,
            a = out(vreg) _,
            b = out(vreg) _,
            options(nostack),
        );
    }
    eights * 8
}

/// Whether [`speed_up`] takes f16 pools: on aarch64 CPUs with fp16 arithmetic (elsewhere an
/// f16 plan is refused before it is built).
fn f16_pools() -> bool {
    cfg!(target_arch = "aarch64") && crate::cpu::Cpu::get().fp16
}

impl FastMaxPool {
    /// Pools one channel: the maximum across the rows of each window first (element-wise over
    /// whole input rows), then along each such row through `phases`: the row with its padding,
    /// split by column phase (`x % stride`) so that tap `kx` of every output column is one
    /// contiguous run (`phases[kx % stride][xo + kx / stride]`).
    #[inline(always)]
    fn pool_channel<E: PoolElem>(&self, x: &[E], y: &mut [E], col_max: &mut [E], phases: &mut [E]) {
        let (h, w) = self.input;
        let ow = self.output.1;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (top, left) = self.pad;
        let phase_len = phases.len() / sw;
        let cols = w.min((phase_len * sw).saturating_sub(left));
        for (yo, out) in y.chunks_exact_mut(ow).enumerate() {
            col_max.fill(E::MIN);
            for ky in 0..kh {
                let Some(iy) = (yo * sh + ky).checked_sub(top).filter(|iy| *iy < h) else {
                    continue;
                };
                E::max_into(col_max, &x[iy * w..(iy + 1) * w]);
            }
            // Padding (E::MIN, never wins) stays where the columns don't reach.
            if sw == 2 {
                split_pairs(&col_max[..cols], left, phases.split_at_mut(phase_len));
            } else {
                for phase in 0..sw {
                    // The first column of this phase, and where it goes.
                    let first = (phase + sw - left % sw) % sw;
                    if first >= cols {
                        continue;
                    }
                    let dst = &mut phases[phase * phase_len..(phase + 1) * phase_len];
                    let dst = &mut dst[(left + first) / sw..];
                    for (d, v) in dst.iter_mut().zip(col_max[first..cols].iter().step_by(sw)) {
                        *d = *v;
                    }
                }
            }
            out.fill(E::MIN);
            for kx in 0..kw {
                E::max_into(out, &phases[(kx % sw) * phase_len + kx / sw..][..ow]);
            }
        }
    }
}

/// Stride 2's column split: padded column `x + left` of `cols` to position `(x + left) / 2` of
/// phase `(x + left) % 2` (`even`, `odd`), by pairs of columns (which the compiler turns into
/// de-interleaving loads, `ld2` on NEON) after a lone first column of the odd phase.
#[inline(always)]
fn split_pairs<E: Copy>(cols: &[E], left: usize, (even, odd): (&mut [E], &mut [E])) {
    let (mut cols, mut at) = (cols, left / 2);
    if left % 2 == 1 {
        let Some((first, rest)) = cols.split_first() else {
            return;
        };
        odd[at] = *first;
        (cols, at) = (rest, at + 1);
    }
    let pairs = cols.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    let n = cols.len() / 2;
    for ((pair, e), o) in pairs.zip(&mut even[at..at + n]).zip(&mut odd[at..at + n]) {
        *e = pair[0];
        *o = pair[1];
    }
    if let Some(v) = last {
        even[at + n] = v;
    }
}

/// Pools every channel of `xs` into `ys`.
#[inline(always)]
fn pool_planes<E: PoolElem>(pool: &FastMaxPool, xs: &[E], ys: &mut [E], col_max: &mut [E], phases: &mut [E]) {
    let (h, w) = pool.input;
    let (oh, ow) = pool.output;
    for (x, y) in xs.chunks_exact(h * w).zip(ys.chunks_exact_mut(oh * ow)) {
        pool.pool_channel(x, y, col_max, phases);
    }
}

crate::ops::simd::wide_fn! {
    fn pool_all(
        pool: &FastMaxPool,
        xs: &[f32],
        ys: &mut [f32],
        col_max: &mut [f32],
        phases: &mut [f32],
    ) {
        pool_planes(pool, xs, ys, col_max, phases)
    }
}

crate::ops::simd::wide_fn! {
    fn pool_all_i8(pool: &FastMaxPool, xs: &[i8], ys: &mut [i8], col_max: &mut [i8], phases: &mut [i8]) {
        pool_planes(pool, xs, ys, col_max, phases)
    }
}

/// How [`FastMaxPool::eval_as`] pools all planes: [`pool_all`] (f32) and [`pool_all_i8`]
/// (AVX2 where the CPU has it: SSE2 has no signed byte max), or [`pool_planes`].
type PoolFn<E> = fn(&FastMaxPool, &[E], &mut [E], &mut [E], &mut [E]);

impl FastMaxPool {
    /// The pool on `x`, in its element type `E`, by `run`.
    fn eval_as<E: PoolElem>(&self, x: &Tensor, run: PoolFn<E>) -> TractResult<Tensor> {
        let (oh, ow) = self.output;
        let xs = unsafe { x.as_slice_unchecked::<E>() };
        let mut y = unsafe { Tensor::uninitialized::<E>(&[1, self.channels, oh, ow])? };
        let ys = unsafe { y.as_slice_mut_unchecked::<E>() };
        let mut col_max = vec![E::MIN; self.input.1];
        // Padding is E::MIN: tract's starting value, so padded taps never win.
        let (kw, sw) = (self.kernel.1, self.stride.1);
        let phase_len = ((ow - 1) * sw + kw).div_ceil(sw);
        let mut phases = vec![E::MIN; sw * phase_len];
        run(self, xs, ys, &mut col_max, &mut phases);
        Ok(y)
    }
}

impl Op for FastMaxPool {
    fn name(&self) -> StaticName {
        "FastMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{}x{} kernel {:?} stride {:?} pad {:?}",
            self.channels, self.input.0, self.input.1, self.kernel, self.stride, self.pad
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FastMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (h, w) = self.input;
        ensure!(
            x.datum_type() == self.dt && x.shape() == [1, self.channels, h, w],
            "FastMaxPool: input {:?} {:?}, planned for [1, {}, {h}, {w}] {:?}",
            x.datum_type(),
            x.shape(),
            self.channels,
            self.dt
        );
        let y = if self.dt == f16::datum_type() {
            self.eval_as::<f16>(x, pool_planes)?
        } else if self.dt == i8::datum_type() {
            self.eval_as::<i8>(x, pool_all_i8)?
        } else {
            self.eval_as::<f32>(x, pool_all)?
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FastMaxPool {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.dt.fact([
            1,
            self.channels,
            self.output.0,
            self.output.1
        ])))
    }
}

/// The [`FastMaxPool`] for an `OptMaxPool` node, if it can replace it.
fn plan(model: &TypedModel, node: &TypedNode, op: &OptMaxPool) -> TractResult<Option<FastMaxPool>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let spec = &op.pool_spec;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    let dt = input.datum_type;
    if !(dt == f32::datum_type() || dt == i8::datum_type() || dt == f16::datum_type() && f16_pools())
        || op.with_index_outputs.is_some()
        || spec.data_format != DataFormat::NCHW
        || shape.len() != 4
        || shape[0] != 1
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|d| *d != 1)
    {
        return Ok(None);
    }
    let (h, w) = (shape[2], shape[3]);
    let padding = spec.computed_padding(&[h, w]);
    let strides = spec.strides();
    let pool = FastMaxPool {
        dt,
        channels: shape[1],
        input: (h, w),
        output: (padding[0].convoluted, padding[1].convoluted),
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
    };
    let out = model.outlet_fact(OutletId::new(node.id, 0))?;
    if out.shape.as_concrete() != Some(&[1, pool.channels, pool.output.0, pool.output.1][..])
        || pool.output.0 == 0
        || pool.output.1 == 0
    {
        return Ok(None);
    }
    Ok(Some(pool))
}

/// Replaces every 2-D f32 NCHW `OptMaxPool` of an optimized model (and the f16 ones where
/// [`f16_pools`]); returns how many.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    crate::ops::matching::replace_ops::<OptMaxPool>(model, |model, node, op| {
        Ok(plan(model, node, op)?.map(|p| Box::new(p) as _))
    })
}

/// Moves the quantizer of every int8 plan's f32 [`FastMaxPool`] ahead of it, into the
/// epilogue before (see the module doc): `Int8Epilogue` (ReLU, f32 out only) -> pool ->
/// `FastQuantize`, each the only consumer of the one before, becomes `Int8Epilogue` (i8 out)
/// -> pool on i8. Returns how many. Run after `crate::ops::epilogue::speed_up`.
pub fn pool_quantized(model: &mut TypedModel) -> TractResult<usize> {
    use crate::ops::epilogue::Int8Epilogue;
    use crate::ops::quantize::FastQuantize;
    let single = |model: &TypedModel, node: usize| -> Option<usize> {
        match &model.node(node).outputs[..] {
            [o] if o.successors.len() == 1 => Some(o.successors[0].node),
            _ => None,
        }
    };
    let mut found = vec![];
    for node in model.nodes() {
        let Some(pool) = node.op_as::<FastMaxPool>().filter(|p| p.dt == f32::datum_type()) else {
            continue;
        };
        let Some(epilogue) = model.node(node.inputs[0].node).op_as::<Int8Epilogue>() else {
            continue;
        };
        let Some(q) = single(model, node.id).filter(|q| model.node(*q).op_is::<FastQuantize>()) else {
            continue;
        };
        if epilogue.relu && epilogue.quantize.is_none() && single(model, node.inputs[0].node) == Some(node.id) {
            found.push((node.inputs[0].node, pool.clone(), q));
        }
    }
    for (e, pool, q) in &found {
        let mut epilogue = model.node(*e).op_as::<Int8Epilogue>().cloned().context("pool_quantized: epilogue")?;
        epilogue.quantize = model.node(*q).op_as::<FastQuantize>().cloned();
        let mut patch = TypedModelPatch::default();
        let inputs = model.node(*e).inputs.iter().map(|i| patch.tap_model(model, *i)).collect::<TractResult<TVec<_>>>()?;
        let quantized = patch.wire_node(format!("{}.i8", model.node(*e).name), epilogue, &inputs)?;
        let pooled = patch.wire_node(
            format!("{}.i8", model.node(*q).name),
            FastMaxPool { dt: i8::datum_type(), ..pool.clone() },
            &quantized,
        )?;
        patch.shunt_outside(model, OutletId::new(*q, 0), pooled[0])?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::import::max_pool;

    /// The f32 pool against tract's, bit for bit.
    #[test]
    fn same_as_tract() {
        same_as_tract_in::<f32>(|v| v, |v| v.to_bits() as u32);
    }

    /// The i8 pool (the int8 plans' stem pool after `pool_quantized`; also any i8 pool)
    /// against tract's i8 pool.
    #[test]
    fn i8_same_as_tract() {
        same_as_tract_in::<i8>(|v| (v * 25.0) as i8, |v| v as u8 as u32);
    }

    /// The f16 pool (planned where the CPU has fp16: the qemu passes on cortex-a76 and max,
    /// 8-lane `fmaxnm` with the scalar tail on odd widths) against tract's f16 pool.
    #[test]
    fn f16_same_as_tract_where_the_cpu_has_fp16() {
        if !f16_pools() {
            eprintln!("no fp16 arithmetic here: f16 pools stay tract's");
            return;
        }
        same_as_tract_in::<f16>(f16::from_f32, |v| v.to_bits() as u32);
    }

    fn same_as_tract_in<E: PoolElem>(from: fn(f32) -> E, bits: fn(E) -> u32) {
        // (channels, h, w, kernel, stride, padding)
        let cases = [
            (3, 112, 112, 3, 2, 1),
            (2, 13, 17, 3, 2, 1),
            (2, 12, 12, 2, 2, 0),
            (1, 9, 11, 3, 1, 1),
            (2, 15, 10, 5, 3, 2),
            (1, 7, 7, 7, 1, 0),
            (2, 9, 35, 3, 1, 1),
        ];
        let mut lcg = crate::ops::test_util::Lcg::new(11);
        for (c, h, w, k, s, p) in cases {
            let mut x: Vec<E> = (0..c * h * w)
                .map(|_| from((lcg.unit() - 0.5) * 10.0))
                .collect();
            // Edge values: NaN, infinities, all-equal windows.
            x[0] = from(f32::NAN);
            x[1] = from(f32::NEG_INFINITY);
            x[w + 1] = from(f32::INFINITY);
            let mut m = TypedModel::default();
            let input = m.add_source("x", E::fact([1, c, h, w])).unwrap();
            let y = m.wire_node("pool", max_pool(c, k, s, p), &[input]).unwrap();
            m.select_output_outlets(&y).unwrap();
            let tract = m.into_optimized().unwrap();
            let mut fast = tract.clone();
            assert_eq!(
                speed_up(&mut fast).unwrap(),
                1,
                "case {c}x{h}x{w} k{k} s{s} p{p}"
            );
            let t = Tensor::from_shape(&[1, c, h, w], &x).unwrap();
            let run = |model: TypedModel| {
                let out = SimplePlan::new(model)
                    .unwrap()
                    .run(tvec!(t.clone().into_tvalue()))
                    .unwrap();
                out[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<E>()
                    .unwrap()
                    .to_vec()
            };
            let (want, got) = (run(tract), run(fast));
            assert_eq!(want.len(), got.len());
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    bits(*a),
                    bits(*b),
                    "{:?} case {c}x{h}x{w} k{k} s{s} p{p} at {i}",
                    E::datum_type()
                );
            }
        }
    }
}
