//! A vectorizable `QuantizeLinear` (f32 -> i8) for the int8 plans.
//!
//! Every int8 layer starts by quantizing its f32 input (`crate::engine::import`). tract's
//! `QuantizeLinearI8` computes each value through a scalar, branchy `round_ties_to_even`: 9-13%
//! of ResNet-18 int8 inference (x86, one thread). [`FastQuantize`] computes the same function
//! with the add-and-subtract-2^23 rounding, which the compiler turns into SIMD, and [`speed_up`]
//! swaps it in for every `QuantizeLinearI8` of an optimized plan. Bit-identical on NaN and on
//! every input up to |x * scale| = 2^31 (tested below over a sweep including the rounding ties);
//! beyond, tract's `as i32 + zero_point` wraps around, and this op saturates.

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::QuantizeLinearI8;

/// `y = clamp(round_ties_even(x * scale) + zero_point, -128, 127)`, NaN -> `zero_point`
/// (tract's `quantize_linear_f32_i8`; `scale` is the reciprocal of the ONNX scale).
#[derive(Debug, Clone, PartialEq)]
pub struct FastQuantize {
    pub scale: f32,
    pub zero_point: i8,
}

impl Eq for FastQuantize {}

/// 1.5 x 2^23: adding then subtracting it rounds any |v| < 2^22 to an integer, ties to even
/// (the FPU's default rounding mode).
const ROUND: f32 = 12_582_912.0;

#[inline(always)]
pub(crate) fn quantize(x: f32, scale: f32, zero_point: i32) -> i8 {
    let v = x * scale;
    // Anything beyond +-1024 saturates either way; clamping first keeps the trick exact.
    let v = if v.is_nan() {
        0.0
    } else {
        v.clamp(-1024.0, 1024.0)
    };
    let r = (v + ROUND) - ROUND;
    // SAFETY: r is an integer in -1024..=1024, so the unchecked conversion (one SIMD
    // instruction, where `as` adds saturation checks that stop vectorization) is exact.
    let r: i32 = unsafe { r.to_int_unchecked() };
    (r + zero_point).clamp(-128, 127) as i8
}

impl Op for FastQuantize {
    fn name(&self) -> StaticName {
        "FastQuantizeLinearI8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "1/scale: {} zero_point: {}",
            self.scale, self.zero_point
        )])
    }

    op_as_typed_op!();
}

crate::ops::simd::wide_fn! {
    /// `ys[i] = quantize(xs[i], scale, zp)`.
    pub(crate) fn quantize_all(xs: &[f32], ys: &mut [i8], scale: f32, zp: i32) {
        // aarch64: 8 lanes at a time by [`quantize8_neon`] (the compiler's loop took 7.9
        // instructions a value, 1.6 M of ResNet-18 int8's), the rest below.
        #[cfg(target_arch = "aarch64")]
        let (xs, ys) = {
            use std::arch::aarch64::*;
            let whole = xs.len().min(ys.len()) / 8 * 8;
            // SAFETY: NEON is part of aarch64; the loads and stores stay below `whole`.
            unsafe {
                let (s, z) = (vdupq_n_f32(scale), vdupq_n_s16(zp.clamp(-128, 127) as i16));
                for i in (0..whole).step_by(8) {
                    let v = [vld1q_f32(xs.as_ptr().add(i)), vld1q_f32(xs.as_ptr().add(i + 4))];
                    vst1_s8(ys.as_mut_ptr().add(i), quantize8_neon(v, s, z));
                }
            }
            (&xs[whole..], &mut ys[whole..])
        };
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            *y = quantize(*x, scale, zp);
        }
    }
}

/// [`quantize`] on 8 lanes (`scale`, `zero_point` in every lane):
/// `clamp(round_ties_even(clamp(v * scale, +-1024)) + zero_point, -128, 127)`, NaN ->
/// `zero_point`. On NEON without the inner clamp and the NaN mask, the same bytes: `fcvtns`
/// rounds to nearest even, turns a NaN into 0 and saturates at the i32 range, the narrowing to
/// 16 bits saturates, the zero point (an i8's) is added saturating to 8 lanes at once, and the
/// narrowing to 8 bits saturates, so beyond +-1024 the result is 127 or -128 either way. (Also the aarch64 int8 kernels' epilogue, `crate::kernels::aarch64::int8`.)
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn quantize8_neon(
    v: [std::arch::aarch64::float32x4_t; 2],
    scale: std::arch::aarch64::float32x4_t,
    zero_point: std::arch::aarch64::int16x8_t,
) -> std::arch::aarch64::int8x8_t {
    use std::arch::aarch64::*;
    let q = |v| vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(v, scale)));
    vqmovn_s16(vqaddq_s16(vcombine_s16(q(v[0]), q(v[1])), zero_point))
}

impl EvalOp for FastQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == f32::datum_type(),
            "FastQuantizeLinearI8: input is {:?}",
            x.datum_type()
        );
        let xs = unsafe { x.as_slice_unchecked::<f32>() };
        let mut y = unsafe { Tensor::uninitialized::<i8>(x.shape())? };
        let ys = unsafe { y.as_slice_mut_unchecked::<i8>() };
        let (scale, zp) = (self.scale, i32::from(self.zero_point));
        quantize_all(xs, ys, scale, zp);
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FastQuantize {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }
}

/// Replaces every f32 -> i8 `QuantizeLinearI8` of an optimized model; returns how many.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    crate::ops::matching::replace_ops::<ElementWiseOp>(model, |model, node, op| {
        let Some(q) = op.0.downcast_ref::<QuantizeLinearI8>() else {
            return Ok(None);
        };
        let input = model.outlet_fact(node.inputs[0])?;
        let output = model.outlet_fact(OutletId::new(node.id, 0))?;
        if input.datum_type != f32::datum_type() || output.datum_type != i8::datum_type() {
            return Ok(None);
        }
        Ok(Some(Box::new(FastQuantize {
            scale: q.scale,
            zero_point: q.zero_point,
        })))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::quant::quantize_linear_f32_i8;

    #[test]
    fn bit_identical_to_tract() {
        let mut xs: Vec<f32> = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            1e-30,
        ];
        // Every half step between -300 and 300 (the ties), and their neighbours.
        for i in -600..=600 {
            let t = i as f32 * 0.5;
            xs.extend([
                t,
                f32::from_bits(t.to_bits() + 1),
                f32::from_bits(t.to_bits().wrapping_sub(1)),
            ]);
        }
        let mut lcg = crate::ops::test_util::Lcg::new(7);
        for _ in 0..100_000 {
            xs.push((lcg.unit() - 0.5) * 700.0);
        }
        for (scale, zp) in [(1.0f32, 0i8), (37.3, -128), (0.013, 5), (250.0, 127)] {
            for &x in &xs {
                if (x * scale).abs() >= 2e9 {
                    // tract's `as i32 + zero_point` wraps around there (-inf with a negative
                    // zero point gives 127); this op saturates.
                    let want = if x > 0.0 { 127 } else { -128 };
                    assert_eq!(quantize(x, scale, zp as i32), want, "x {x:e}");
                    continue;
                }
                assert_eq!(
                    quantize(x, scale, zp as i32),
                    quantize_linear_f32_i8(x, scale, zp as i32),
                    "x {x:e} scale {scale} zp {zp}"
                );
            }
            // The whole-slice loop (NEON on aarch64, AVX2 or SSE2 on x86) gives `quantize`'s
            // bytes, on a length that leaves a tail.
            let xs = &xs[..xs.len() / 8 * 8 - 3];
            let mut ys = vec![0i8; xs.len()];
            quantize_all(xs, &mut ys, scale, i32::from(zp));
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(*y, quantize(*x, scale, i32::from(zp)), "x {x:e} scale {scale} zp {zp}");
            }
        }
    }
}
