//! fp32 1x1 stride-1 convolutions (ResNet-50's bottleneck ends: most of its products) on the
//! input as it is, on NEON (every aarch64 board).
//!
//! tract's declutter turns a 1x1 stride-1 conv into an `EinSum` (the weights `[K][C]` by the
//! input `[C][H x W]`) and a bias `Add`, then plans a packed matrix product (the input repacked
//! into panels) with the bias, residual and ReLU as separate passes
//! (`crate::kernels::frame::float_conv::place_pointwise` finds them). [`PointwiseConv`] reads
//! the input where it is: a tile of 8 output channels by 12 consecutive pixels in 24
//! accumulators (the 8 x 12 tile of `crate::kernels::aarch64::direct`), per input channel one
//! `ld1` of the 12 pixels, one `ldp` of 8 weights and 24 `fmla` by element, two channels a loop
//! turn; the accumulators start at the bias, and the residual and ReLU that follow are applied
//! in registers. A last tile of 4 pixels or fewer (ResNet's 7x7 layers: 49 = 4 x 12 + 1; the
//! 14x14 to 56x56 ones: 4 left) runs 8 channels by one register of pixels; a partial tile reads
//! a copy of its pixels. The same products as
//! tract's, summed in another order: the results differ by rounding only (unit test against
//! float64; parity tests).

use crate::kernels::frame::direct::blocked_weights;
use crate::kernels::frame::float_conv::{shape, Epilogue, Pointwise};
use std::arch::aarch64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const R: usize = 8;
/// Pixels per tile: three registers of 4.
const PIXELS: usize = 12;

/// A 1x1 stride-1 float conv of one image (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct PointwiseConv {
    /// Input channels.
    c: usize,
    /// Output channels, a multiple of `R`.
    k: usize,
    /// Height and width.
    hw: (usize, usize),
    /// The input, and the output, are `[1, C, H, W]` (else `[C, H, W]`).
    batched: (bool, bool),
    /// Per block of `R` output channels, per input channel: `R` weights.
    u: Arc<Vec<f32>>,
    bias: Vec<f32>,
    epilogue: Epilogue,
}

impl Eq for PointwiseConv {}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "PointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (h, w) = self.hw;
        Ok(vec![
            format!("{}->{} channels, {h}x{w}, [{}]", self.c, self.k, Self::KERNEL),
            format!("{:?}", self.epilogue),
        ])
    }

    op_as_typed_op!();
}

#[derive(Clone, Copy)]
struct Buffers {
    x: *const f32,
    residual: *const f32,
    out: *mut f32,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint outputs.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// One input channel of a tile: its 12 pixels from `{x}` (then the next channel's, `{s}` on),
/// 8 weights from `{w}`, 24 `fmla`.
macro_rules! channel_step {
    () => {
        concat!(
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [{x}], {s}\n",
            "ldp q3, q4, [{w}], #32\n",
            step_8x12!("fmla", ".4s", ".s"),
        )
    };
}

/// [`channel_step`] for a short tile: 4 pixels, 8 `fmla` into `{a0}`-`{a7}`.
macro_rules! short_step {
    () => {
        concat!(
            "ld1 {{v0.4s}}, [{x}], {s}\n",
            "ldp q3, q4, [{w}], #32\n",
            "fmla {a0:v}.4s, v0.4s, v3.s[0]\n",
            "fmla {a1:v}.4s, v0.4s, v3.s[1]\n",
            "fmla {a2:v}.4s, v0.4s, v3.s[2]\n",
            "fmla {a3:v}.4s, v0.4s, v3.s[3]\n",
            "fmla {a4:v}.4s, v0.4s, v4.s[0]\n",
            "fmla {a5:v}.4s, v0.4s, v4.s[1]\n",
            "fmla {a6:v}.4s, v0.4s, v4.s[2]\n",
            "fmla {a7:v}.4s, v0.4s, v4.s[3]\n",
        )
    };
}

/// The loop over `$c` input channels (two a turn, a lone first one if odd) of `$step`, with
/// `{n}` holding the count.
macro_rules! channel_loop {
    ($step:ident) => {
        concat!(
            "tbz {n}, #0, 3f\n",
            $step!(),
            "3:\n",
            "lsr {n}, {n}, #1\n",
            "cbz {n}, 4f\n",
            "2:\n",
            $step!(),
            $step!(),
            "subs {n}, {n}, #1\n",
            "b.ne 2b\n",
            "4:\n",
        )
    };
}

impl PointwiseConv {
    /// The kernel, as `device inspect` names it.
    pub const KERNEL: &'static str = "pointwise_f32_8x12_neon (device::kernels::aarch64::pointwise)";

    /// The op for `conv`, with `epilogue`.
    pub(crate) fn new(conv: &Pointwise, epilogue: Epilogue) -> Self {
        let (c, k) = (conv.c, conv.k);
        assert!(k.is_multiple_of(R) && conv.kernel.len() == k * c && conv.bias.len() == k);
        PointwiseConv {
            c,
            k,
            hw: conv.hw,
            batched: conv.batched,
            u: Arc::new(blocked_weights(&conv.kernel, k, R, |v| v)),
            bias: conv.bias.clone(),
            epilogue,
        }
    }

    fn n(&self) -> usize {
        self.hw.0 * self.hw.1
    }

    fn output_shape(&self) -> TVec<usize> {
        shape(self.batched.1, [self.k, self.hw.0, self.hw.1])
    }

    /// Runs tiles `tiles` (of 12 pixels; the last may be partial) for every block of output
    /// channels.
    #[target_feature(enable = "neon")]
    unsafe fn run(&self, buf: Buffers, tiles: Range<usize>) {
        let (c, n) = (self.c, self.n());
        let zero = vdupq_n_f32(0.0);
        // A partial tile's pixels, copied per channel (`width` a channel), zeros after.
        let mut tail = vec![];
        for tile in tiles {
            let p0 = tile * PIXELS;
            let pixels = PIXELS.min(n - p0);
            // A last tile of 4 pixels or fewer (the 7x7 layers' 49th, the 14x14 layers' last 4)
            // runs a short tile: one register of pixels, 8 accumulators.
            let short = pixels <= 4;
            let width = if short { 4 } else { PIXELS };
            let (x, step) = if pixels == width {
                (buf.x.add(p0), 4 * n)
            } else {
                tail.resize(c * width, 0.0);
                for ch in 0..c {
                    std::ptr::copy_nonoverlapping(buf.x.add(ch * n + p0), tail.as_mut_ptr().add(ch * width), pixels);
                }
                (tail.as_ptr(), 4 * width)
            };
            for kb in 0..self.k / R {
                let mut acc: [[float32x4_t; 3]; R] = std::array::from_fn(|j| [vdupq_n_f32(self.bias[kb * R + j]); 3]);
                let w = self.u.as_ptr().add(kb * c * R);
                if short {
                    std::arch::asm!(
                        channel_loop!(short_step),
                        x = inout(reg) x => _,
                        s = in(reg) step,
                        w = inout(reg) w => _,
                        n = inout(reg) c => _,
                        a0 = inout(vreg) acc[0][0], a1 = inout(vreg) acc[1][0],
                        a2 = inout(vreg) acc[2][0], a3 = inout(vreg) acc[3][0],
                        a4 = inout(vreg) acc[4][0], a5 = inout(vreg) acc[5][0],
                        a6 = inout(vreg) acc[6][0], a7 = inout(vreg) acc[7][0],
                        out("v0") _, out("v3") _, out("v4") _,
                        options(nostack, readonly),
                    );
                } else {
                    tile_8x12!(acc;
                        channel_loop!(channel_step),
                        x = inout(reg) x => _,
                        s = in(reg) step,
                        w = inout(reg) w => _,
                        n = inout(reg) c => _,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
                    );
                }
                for (j, acc) in acc.iter().enumerate() {
                    let at = (kb * R + j) * n + p0;
                    let mut v = *acc;
                    let mut lanes = [0f32; PIXELS];
                    if self.epilogue.residual {
                        let r = match pixels == PIXELS {
                            true => buf.residual.add(at),
                            false => {
                                std::ptr::copy_nonoverlapping(buf.residual.add(at), lanes.as_mut_ptr(), pixels);
                                lanes.as_ptr()
                            }
                        };
                        v = std::array::from_fn(|p| vaddq_f32(v[p], vld1q_f32(r.add(4 * p))));
                    }
                    if self.epilogue.relu {
                        // max(v, 0) is 0 for a NaN v, like f32::max (tract's `Max`).
                        v = v.map(|v| vmaxnmq_f32(v, zero));
                    }
                    let out = buf.out.add(at);
                    if pixels == PIXELS {
                        (0..3).for_each(|p| vst1q_f32(out.add(4 * p), v[p]));
                    } else {
                        (0..3).for_each(|p| vst1q_f32(lanes.as_mut_ptr().add(4 * p), v[p]));
                        std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, pixels);
                    }
                }
            }
        }
    }
}

impl EvalOp for PointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (h, w) = self.hw;
        let (input, output) = (shape(self.batched.0, [self.c, h, w]), self.output_shape());
        let x = &inputs[0];
        ensure!(
            x.datum_type() == f32::datum_type() && x.shape() == &input[..],
            "PointwiseConv: input {:?} {:?}, planned for {input:?} f32",
            x.datum_type(),
            x.shape(),
        );
        let residual = match (self.epilogue.residual, inputs.get(1)) {
            (false, _) => std::ptr::null(),
            (true, Some(r)) if r.datum_type() == f32::datum_type() && r.shape() == &output[..] => {
                r.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr()
            }
            (true, r) => bail!("PointwiseConv: residual {:?}, planned {output:?} f32", r.map(|r| r.shape())),
        };
        let mut out = unsafe { Tensor::uninitialized::<f32>(&output)? };
        let buf = Buffers {
            x: x.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr(),
            residual,
            out: unsafe { out.as_ptr_mut_unchecked::<f32>() },
        };
        // SAFETY: NEON is part of aarch64; eval checked the sizes; each range of tiles writes
        // its own output pixels.
        crate::ops::parallel::for_ranges(self.n().div_ceil(PIXELS), |tiles| unsafe { self.run(buf, tiles) });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for PointwiseConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(self.output_shape())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_f32 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The op against a float64 matrix product: pixel counts with a partial last tile (1-11
    /// pixels: the short tile read in place (4), or copied (1, 3)) and without, odd and even channel counts (the loop's lone first step), with and
    /// without residual and ReLU, input and output with and without the batch axis, on one and
    /// two threads (same bits).
    #[test]
    fn equals_float64_product() {
        // (c, k, h, w)
        let cases = [(64, 16, 14, 14), (3, 8, 5, 7), (256, 8, 7, 7), (1, 24, 2, 6), (17, 8, 1, 1), (5, 16, 3, 5)];
        for (case, &(c, k, h, w)) in cases.iter().enumerate() {
            let mut next = random(case as u64 + 17);
            let n = h * w;
            let kernel: Vec<f32> = (0..k * c).map(|_| next()).collect();
            let bias: Vec<f32> = (0..k).map(|_| next()).collect();
            let x: Vec<f32> = (0..c * n).map(|_| next()).collect();
            let r: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let epilogue = Epilogue { residual: case % 2 == 0, relu: case % 3 != 1 };
            let batched = (case % 2 == 0, case % 3 == 0);
            let conv = Pointwise { c, k, hw: (h, w), batched, kernel: kernel.clone(), bias: bias.clone() };
            let conv = PointwiseConv::new(&conv, epilogue);
            let mut input = tvec![Tensor::from_shape(&shape(batched.0, [c, h, w]), &x).unwrap().into_tvalue()];
            if epilogue.residual {
                input.push(Tensor::from_shape(&shape(batched.1, [k, h, w]), &r).unwrap().into_tvalue());
            }
            let ctx = EvalContext::out_of_plan();
            let one = conv.eval(&ctx, input.clone()).unwrap();
            let two = multithread_tract_scope(Executor::multithread(2), || conv.eval(&ctx, input.clone()).unwrap());
            assert_eq!(one, two, "case {case}: threads differ");
            assert_eq!(one[0].shape(), &shape(batched.1, [k, h, w])[..]);
            let got = one[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap();
            for o in 0..k {
                for p in 0..n {
                    let mut sum = f64::from(bias[o]);
                    let mut scale = sum.abs();
                    for i in 0..c {
                        let v = f64::from(x[i * n + p]) * f64::from(kernel[o * c + i]);
                        sum += v;
                        scale += v.abs();
                    }
                    if epilogue.residual {
                        sum += f64::from(r[o * n + p]);
                        scale += f64::from(r[o * n + p]).abs();
                    }
                    if epilogue.relu {
                        sum = sum.max(0.0);
                    }
                    let g = f64::from(got[o * n + p]);
                    assert!((g - sum).abs() <= 1e-6 * scale.max(1e-3), "case {case} channel {o} pixel {p}: {g} vs {sum}");
                }
            }
        }
    }
}
