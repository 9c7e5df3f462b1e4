//! A separable max pool for f32 NCHW plans.
//!
//! tract's `OptMaxPool` visits every tap of every output pixel (device/README.md, "Why each op
//! exists"). [`FastMaxPool`] takes the
//! maximum across the rows of each window first, then along the row, both as element-wise
//! passes over contiguous runs (SIMD). Same result bit for bit: maxima of the same values,
//! starting from `f32::MIN` and skipping NaN as tract's does (tests below); only the sign of a
//! zero maximum may differ where a window holds both 0.0 and -0.0 (the order differs).
//! [`speed_up`] swaps it in for every 2-D f32 NCHW `OptMaxPool` of an optimized plan.

use tract_core::internal::*;
use tract_core::ops::cnn::OptMaxPool;
use tract_core::ops::nn::DataFormat;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FastMaxPool {
    channels: usize,
    /// Input height and width.
    input: (usize, usize),
    output: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Padding before (top, left).
    pad: (usize, usize),
}

/// tract's max (`v` replaces `m` only when strictly greater, so NaN never does), for an `m`
/// that is never NaN (it starts at `f32::MIN`). `f32::max` computes the same (the non-NaN
/// operand) and compiles to `maxps`; a compare-and-select compiled to masked stores instead.
#[inline(always)]
fn max(m: f32, v: f32) -> f32 {
    m.max(v)
}

impl FastMaxPool {
    /// Pools one channel: the maximum across the rows of each window first (element-wise over
    /// whole input rows), then along each such row through `phases`: the row with its padding,
    /// split by column phase (`x % stride`) so that tap `kx` of every output column is one
    /// contiguous run (`phases[kx % stride][xo + kx / stride]`).
    #[inline(always)]
    fn pool_channel(&self, x: &[f32], y: &mut [f32], col_max: &mut [f32], phases: &mut [f32]) {
        let (h, w) = self.input;
        let ow = self.output.1;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (top, left) = self.pad;
        let phase_len = phases.len() / sw;
        let cols = w.min((phase_len * sw).saturating_sub(left));
        for (yo, out) in y.chunks_exact_mut(ow).enumerate() {
            col_max.fill(f32::MIN);
            for ky in 0..kh {
                let Some(iy) = (yo * sh + ky).checked_sub(top).filter(|iy| *iy < h) else {
                    continue;
                };
                for (m, v) in col_max.iter_mut().zip(&x[iy * w..(iy + 1) * w]) {
                    *m = max(*m, *v);
                }
            }
            // Padding (f32::MIN, never wins) stays where the columns don't reach.
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
            out.fill(f32::MIN);
            for kx in 0..kw {
                let run = &phases[(kx % sw) * phase_len + kx / sw..][..ow];
                for (o, v) in out.iter_mut().zip(run) {
                    *o = max(*o, *v);
                }
            }
        }
    }
}

/// Stride 2's column split: padded column `x + left` of `cols` to position `(x + left) / 2` of
/// phase `(x + left) % 2` (`even`, `odd`), by pairs of columns (which the compiler turns into
/// de-interleaving loads, `ld2` on NEON) after a lone first column of the odd phase.
#[inline(always)]
fn split_pairs(cols: &[f32], left: usize, (even, odd): (&mut [f32], &mut [f32])) {
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

crate::ops::simd::wide_fn! {
    fn pool_all(
        pool: &FastMaxPool,
        xs: &[f32],
        ys: &mut [f32],
        col_max: &mut [f32],
        phases: &mut [f32],
    ) {
        let (h, w) = pool.input;
        let (oh, ow) = pool.output;
        for (x, y) in xs.chunks_exact(h * w).zip(ys.chunks_exact_mut(oh * ow)) {
            pool.pool_channel(x, y, col_max, phases);
        }
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
        let (oh, ow) = self.output;
        ensure!(
            x.datum_type() == f32::datum_type() && x.shape() == [1, self.channels, h, w],
            "FastMaxPool: input {:?} {:?}, planned for [1, {}, {h}, {w}] f32",
            x.datum_type(),
            x.shape(),
            self.channels
        );
        let xs = unsafe { x.as_slice_unchecked::<f32>() };
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[1, self.channels, oh, ow])? };
        let ys = unsafe { y.as_slice_mut_unchecked::<f32>() };
        let mut col_max = vec![0f32; w];
        // Padding is f32::MIN: tract's starting value, so padded taps never win.
        let (kw, sw) = (self.kernel.1, self.stride.1);
        let phase_len = ((ow - 1) * sw + kw).div_ceil(sw);
        let mut phases = vec![f32::MIN; sw * phase_len];
        pool_all(self, xs, ys, &mut col_max, &mut phases);
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FastMaxPool {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact([
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
    if input.datum_type != f32::datum_type()
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

/// Replaces every 2-D f32 NCHW `OptMaxPool` of an optimized model; returns how many.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    crate::ops::matching::replace_ops::<OptMaxPool>(model, |model, node, op| {
        Ok(plan(model, node, op)?.map(|p| Box::new(p) as _))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::import::max_pool;

    #[test]
    fn same_as_tract() {
        // (channels, h, w, kernel, stride, padding)
        let cases = [
            (3, 112, 112, 3, 2, 1),
            (2, 13, 17, 3, 2, 1),
            (2, 12, 12, 2, 2, 0),
            (1, 9, 11, 3, 1, 1),
            (2, 15, 10, 5, 3, 2),
            (1, 7, 7, 7, 1, 0),
        ];
        let mut lcg = crate::ops::test_util::Lcg::new(11);
        for (c, h, w, k, s, p) in cases {
            let mut x: Vec<f32> = (0..c * h * w)
                .map(|_| (lcg.unit() - 0.5) * 10.0)
                .collect();
            // Edge values: NaN, infinities, all-equal windows.
            x[0] = f32::NAN;
            x[1] = f32::NEG_INFINITY;
            x[w + 1] = f32::INFINITY;
            let mut m = TypedModel::default();
            let input = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
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
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            };
            let (want, got) = (run(tract), run(fast));
            assert_eq!(want.len(), got.len());
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "case {c}x{h}x{w} k{k} s{s} p{p} at {i}"
                );
            }
        }
    }
}
