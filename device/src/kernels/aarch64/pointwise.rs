//! 1x1 stride-1 float convolutions (ResNet-50's bottleneck ends: most of its products) on the
//! input as it is, on NEON: f32 on every aarch64 board, f16 (the plans of `--precision f16`)
//! where the CPU has FEAT_FP16 (a Pi 5's A76, Orin's A78AE).
//!
//! tract's declutter turns a 1x1 stride-1 conv into an `EinSum` (the weights `[K][C]` by the
//! input `[C][H x W]`) and a bias `Add`, then plans a packed matrix product (the input repacked
//! into panels) with the bias, residual and ReLU as separate passes
//! (`crate::kernels::frame::float_conv::place_pointwise` finds them). [`PointwiseConv`] reads
//! the input where it is: a tile of 8 output channels by three registers of consecutive
//! pixels (12 in f32 lanes, 24 in f16 lanes) in 24 accumulators (the tile of
//! `crate::kernels::aarch64::direct`), per input channel one `ld1` of the pixels and 24 `fmla`
//! by element, per two channels one load of their 16 weights, four channels a loop turn
//! (`channel_loop`); the accumulators start at the bias, and the residual and ReLU that follow
//! are applied in registers. A last tile of one pixel (ResNet's 7x7 layers: 49 = 4 x 12 + 1 = 2 x 24 + 1) runs as a column: the pixel's
//! channels in a row, 8 output channels in the lanes, one weight load and one `fmla` (two in
//! f32) per input channel; one of a register of pixels or fewer (the 14x14 ones: 4 left of 12
//! or 24) runs 8 channels by one register; a partial tile reads a copy of its pixels. The
//! Winograd products (`crate::kernels::aarch64::winograd`) run the same tile. The same
//! products as tract's, summed in another order: f32 results differ by rounding only (unit
//! test against float64; parity tests). f16 sums stay in f16 lanes over all the input
//! channels, as tract's f16 matrix product keeps them (unit test: within the f16 rounding of
//! such a sum).

use crate::kernels::aarch64::direct::DirectElem;
use crate::kernels::frame::direct::blocked_weights;
use crate::kernels::frame::float_conv::{shape, Epilogue, Pointwise};
use std::arch::aarch64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const R: usize = 8;

/// A tile's accumulators: per output channel, three registers of pixels.
type Tile = [[float32x4_t; 3]; R];

/// The tensor types [`PointwiseConv`] runs on: [`DirectElem`]'s, with the pointwise tiles'
/// assembly.
pub trait PointwiseElem: DirectElem {
    /// The kernel, as `device inspect` and the tests name it.
    const POINTWISE: &'static str;
    /// Adds to `acc` the products of `c` input channels (the tile's pixels from `x`, a channel
    /// `step` bytes after the one before) by the weights from `w` (8 a channel).
    ///
    /// # Safety
    /// `x` and `w` hold every channel's reads; for f16 the CPU has FEAT_FP16.
    unsafe fn products(acc: &mut Tile, x: *const Self, step: usize, w: *const Self, c: usize);
    /// [`PointwiseElem::products`] on one register of pixels (`acc[j]`: channel `j`).
    ///
    /// # Safety
    /// As there.
    unsafe fn short_products(acc: &mut [float32x4_t; R], x: *const Self, step: usize, w: *const Self, c: usize);
    /// The sums of one pixel's products for 8 output channels (the pixel's `c` input channels
    /// at `x`, one after the other, by the weights from `w`, 8 a channel), from the 8 values
    /// at `bias`: the first 8 `Self` lanes of the result (output channels in the lanes, two
    /// chains of sums: even and odd input channels).
    ///
    /// # Safety
    /// `x`, `w` and `bias` hold those values; for f16 the CPU has FEAT_FP16.
    unsafe fn column(x: *const Self, w: *const Self, c: usize, bias: *const Self) -> [float32x4_t; 3];
    /// Adds the three registers of values at `residual` (if not null) to `v`, then applies
    /// the ReLU if `relu` (`fmaxnm`: 0 for a NaN, like f32::max and tract's `Max`).
    ///
    /// # Safety
    /// `residual` null or valid for three registers; for f16 the CPU has FEAT_FP16.
    unsafe fn finish(v: &mut [float32x4_t; 3], residual: *const Self, relu: bool);
    /// [`PointwiseConv`]'s tiles `tiles` on `buf`, compiled for this type's instructions
    /// (FEAT_FP16 for f16) so that its tile's assembly and epilogue inline into one loop.
    ///
    /// # Safety
    /// `buf` as `PointwiseConv::eval` makes it; for f16 the CPU has FEAT_FP16.
    unsafe fn run(conv: &PointwiseConv<Self>, buf: Buffers<Self>, tiles: Range<usize>);
}

/// A 1x1 stride-1 float conv of one image (see the module doc), on `T` tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct PointwiseConv<T: PointwiseElem = f32> {
    /// Input channels.
    c: usize,
    /// Output channels, a multiple of `R`.
    k: usize,
    /// Height and width.
    hw: (usize, usize),
    /// The input, and the output, are `[1, C, H, W]` (else `[C, H, W]`).
    batched: (bool, bool),
    /// Per block of `R` output channels, per input channel: `R` weights.
    u: Arc<Vec<T>>,
    bias: Vec<T>,
    epilogue: Epilogue,
}

impl<T: PointwiseElem> Eq for PointwiseConv<T> {}

impl<T: PointwiseElem> Op for PointwiseConv<T> {
    fn name(&self) -> StaticName {
        "PointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (h, w) = self.hw;
        Ok(vec![
            format!("{}->{} channels, {h}x{w}, [{}]", self.c, self.k, T::POINTWISE),
            format!("{:?}", self.epilogue),
        ])
    }

    op_as_typed_op!();
}

/// The tensors of one eval: input, residual (or null) and output.
#[derive(Clone, Copy)]
pub struct Buffers<T> {
    x: *const T,
    residual: *const T,
    out: *mut T,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint outputs.
unsafe impl<T> Send for Buffers<T> {}
unsafe impl<T> Sync for Buffers<T> {}

/// A short tile's step in f32 lanes: 4 pixels, 8 `fmla` into `{a0}`-`{a7}`.
macro_rules! short_f32 {
    ($p:literal, $inc:literal) => {
        concat!(
            "ld1 {{v0.4s}}, [", $p, "], ", $inc, "\n",
            "ldp q3, q4, [{w}], #32\n",
            by_lanes_f32!("a", "v3", "v4"),
        )
    };
}

/// A short tile's step in f16 lanes: 8 pixels, 8 `fmla` into `{a0}`-`{a7}`.
macro_rules! short_f16 {
    ($p:literal, $inc:literal) => {
        concat!(
            "ld1 {{v0.8h}}, [", $p, "], ", $inc, "\n",
            "ldr q3, [{w}], #16\n",
            "fmla {a0:v}.8h, v0.8h, v3.h[0]\n",
            "fmla {a1:v}.8h, v0.8h, v3.h[1]\n",
            "fmla {a2:v}.8h, v0.8h, v3.h[2]\n",
            "fmla {a3:v}.8h, v0.8h, v3.h[3]\n",
            "fmla {a4:v}.8h, v0.8h, v3.h[4]\n",
            "fmla {a5:v}.8h, v0.8h, v3.h[5]\n",
            "fmla {a6:v}.8h, v0.8h, v3.h[6]\n",
            "fmla {a7:v}.8h, v0.8h, v3.h[7]\n",
        )
    };
}

/// [`PointwiseElem::products`] by the step `$tap`.
macro_rules! whole_tile {
    ($acc:ident, $tap:ident, $pair:ident, $x:expr, $step:expr, $w:expr, $c:expr) => {
        tile_8x12!($acc;
            channel_loop!($tap, $pair),
            x = inout(reg) $x => _,
            s = in(reg) $step,
            w = inout(reg) $w => _,
            n = inout(reg) $c => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _,
        )
    };
}

/// [`PointwiseElem::short_products`] by the step `$short`.
macro_rules! short_tile {
    ($acc:ident, $short:ident, $x:expr, $step:expr, $w:expr, $c:expr) => {
        std::arch::asm!(
            channel_loop!($short),
            x = inout(reg) $x => _,
            s = in(reg) $step,
            w = inout(reg) $w => _,
            n = inout(reg) $c => _,
            a0 = inout(vreg) $acc[0], a1 = inout(vreg) $acc[1],
            a2 = inout(vreg) $acc[2], a3 = inout(vreg) $acc[3],
            a4 = inout(vreg) $acc[4], a5 = inout(vreg) $acc[5],
            a6 = inout(vreg) $acc[6], a7 = inout(vreg) $acc[7],
            out("v0") _, out("v3") _, out("v4") _,
            options(nostack, readonly),
        )
    };
}

impl PointwiseElem for f32 {
    const POINTWISE: &'static str = "pointwise_f32_8x12_neon (device::kernels::aarch64::pointwise)";
    #[inline(always)]
    unsafe fn products(acc: &mut Tile, x: *const f32, step: usize, w: *const f32, c: usize) {
        whole_tile!(acc, tap_f32, pair_f32, x, step, w, c)
    }
    #[inline(always)]
    unsafe fn short_products(acc: &mut [float32x4_t; R], x: *const f32, step: usize, w: *const f32, c: usize) {
        short_tile!(acc, short_f32, x, step, w, c)
    }
    #[inline(always)]
    unsafe fn column(x: *const f32, w: *const f32, c: usize, bias: *const f32) -> [float32x4_t; 3] {
        let zero = vdupq_n_f32(0.0);
        // Output channels 0-3 and 4-7 of the even input channels, then of the odd ones.
        let mut a = [vld1q_f32(bias), vld1q_f32(bias.add(4)), zero, zero];
        let step = |a: &mut [float32x4_t; 4], odd: usize, w: *const f32, x: float32x4_t| {
            a[2 * odd] = vfmaq_f32(a[2 * odd], vld1q_f32(w), x);
            a[2 * odd + 1] = vfmaq_f32(a[2 * odd + 1], vld1q_f32(w.add(4)), x);
        };
        let mut ch = 0;
        while ch + 4 <= c {
            let xs = vld1q_f32(x.add(ch));
            let w = w.add(ch * R);
            step(&mut a, 0, w, vdupq_laneq_f32::<0>(xs));
            step(&mut a, 1, w.add(R), vdupq_laneq_f32::<1>(xs));
            step(&mut a, 0, w.add(2 * R), vdupq_laneq_f32::<2>(xs));
            step(&mut a, 1, w.add(3 * R), vdupq_laneq_f32::<3>(xs));
            ch += 4;
        }
        for ch in ch..c {
            step(&mut a, ch % 2, w.add(ch * R), vdupq_n_f32(*x.add(ch)));
        }
        [vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]), zero]
    }
    unsafe fn run(conv: &PointwiseConv<f32>, buf: Buffers<f32>, tiles: Range<usize>) {
        run_f32(conv, buf, tiles)
    }
    #[inline(always)]
    unsafe fn finish(v: &mut [float32x4_t; 3], residual: *const f32, relu: bool) {
        if !residual.is_null() {
            *v = std::array::from_fn(|p| vaddq_f32(v[p], vld1q_f32(residual.add(4 * p))));
        }
        if relu {
            let zero = vdupq_n_f32(0.0);
            *v = v.map(|v| vmaxnmq_f32(v, zero));
        }
    }
}

impl PointwiseElem for f16 {
    const POINTWISE: &'static str = "pointwise_f16_8x24_neon (device::kernels::aarch64::pointwise; f16 sums, FEAT_FP16)";
    #[inline(always)]
    unsafe fn products(acc: &mut Tile, x: *const f16, step: usize, w: *const f16, c: usize) {
        tile_f16(acc, x, step, w, c)
    }
    #[inline(always)]
    unsafe fn short_products(acc: &mut [float32x4_t; R], x: *const f16, step: usize, w: *const f16, c: usize) {
        short_f16(acc, x, step, w, c)
    }
    #[inline(always)]
    unsafe fn column(x: *const f16, w: *const f16, c: usize, bias: *const f16) -> [float32x4_t; 3] {
        column_f16(x, w, c, bias)
    }
    #[inline(always)]
    unsafe fn finish(v: &mut [float32x4_t; 3], residual: *const f16, relu: bool) {
        finish_f16(v, residual, relu)
    }
    unsafe fn run(conv: &PointwiseConv<f16>, buf: Buffers<f16>, tiles: Range<usize>) {
        run_f16(conv, buf, tiles)
    }
}

/// [`PointwiseElem::run`] for f32 (NEON).
#[target_feature(enable = "neon")]
unsafe fn run_f32(conv: &PointwiseConv<f32>, buf: Buffers<f32>, tiles: Range<usize>) {
    conv.run(buf, tiles)
}

/// [`PointwiseElem::run`] for f16 (NEON and FEAT_FP16: the f16 tile, column and epilogue
/// inline into it).
#[target_feature(enable = "neon,fp16")]
unsafe fn run_f16(conv: &PointwiseConv<f16>, buf: Buffers<f16>, tiles: Range<usize>) {
    conv.run(buf, tiles)
}

/// [`PointwiseElem::column`] on f16 lanes (FEAT_FP16).
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn column_f16(x: *const f16, w: *const f16, c: usize, bias: *const f16) -> [float32x4_t; 3] {
    let load = |p: *const f16| vreinterpretq_f16_u16(vld1q_u16(p as *const u16));
    let zero = vreinterpretq_f16_u16(vdupq_n_u16(0));
    // The 8 output channels of the even input channels, then of the odd ones.
    let mut a = [load(bias), zero];
    let mut ch = 0;
    while ch + 8 <= c {
        let xs = load(x.add(ch));
        let w = w.add(ch * R);
        a[0] = vfmaq_laneq_f16::<0>(a[0], load(w), xs);
        a[1] = vfmaq_laneq_f16::<1>(a[1], load(w.add(R)), xs);
        a[0] = vfmaq_laneq_f16::<2>(a[0], load(w.add(2 * R)), xs);
        a[1] = vfmaq_laneq_f16::<3>(a[1], load(w.add(3 * R)), xs);
        a[0] = vfmaq_laneq_f16::<4>(a[0], load(w.add(4 * R)), xs);
        a[1] = vfmaq_laneq_f16::<5>(a[1], load(w.add(5 * R)), xs);
        a[0] = vfmaq_laneq_f16::<6>(a[0], load(w.add(6 * R)), xs);
        a[1] = vfmaq_laneq_f16::<7>(a[1], load(w.add(7 * R)), xs);
        ch += 8;
    }
    for ch in ch..c {
        let xs = vreinterpretq_f16_u16(vdupq_n_u16((*x.add(ch)).to_bits()));
        a[ch % 2] = vfmaq_f16(a[ch % 2], load(w.add(ch * R)), xs);
    }
    let v = vreinterpretq_f32_f16(vaddq_f16(a[0], a[1]));
    [v, vdupq_n_f32(0.0), vdupq_n_f32(0.0)]
}

/// [`PointwiseElem::products`] on f16 lanes (FEAT_FP16).
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16(acc: &mut Tile, x: *const f16, step: usize, w: *const f16, c: usize) {
    whole_tile!(acc, tap_f16, pair_f16, x, step, w, c)
}

/// [`PointwiseElem::short_products`] on f16 lanes (FEAT_FP16).
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn short_f16(acc: &mut [float32x4_t; R], x: *const f16, step: usize, w: *const f16, c: usize) {
    short_tile!(acc, short_f16, x, step, w, c)
}

/// [`PointwiseElem::finish`] on f16 lanes (FEAT_FP16).
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn finish_f16(v: &mut [float32x4_t; 3], residual: *const f16, relu: bool) {
    let mut h = v.map(|v| vreinterpretq_f16_f32(v));
    if !residual.is_null() {
        h = std::array::from_fn(|p| vaddq_f16(h[p], vreinterpretq_f16_u16(vld1q_u16(residual.add(8 * p) as *const u16))));
    }
    if relu {
        let zero = vreinterpretq_f16_u16(vdupq_n_u16(0));
        h = h.map(|h| vmaxnmq_f16(h, zero));
    }
    *v = h.map(|h| vreinterpretq_f32_f16(h));
}

impl<T: PointwiseElem> PointwiseConv<T> {
    /// The op for `conv` (its weights and bias rounded to `T`), with `epilogue`.
    pub(crate) fn new(conv: &Pointwise, epilogue: Epilogue) -> Self {
        let (c, k) = (conv.c, conv.k);
        assert!(k.is_multiple_of(R) && conv.kernel.len() == k * c && conv.bias.len() == k);
        PointwiseConv {
            c,
            k,
            hw: conv.hw,
            batched: conv.batched,
            u: Arc::new(blocked_weights(&conv.kernel, k, R, T::from_f32)),
            bias: conv.bias.iter().map(|&b| T::from_f32(b)).collect(),
            epilogue,
        }
    }

    fn n(&self) -> usize {
        self.hw.0 * self.hw.1
    }

    fn output_shape(&self) -> TVec<usize> {
        shape(self.batched.1, [self.k, self.hw.0, self.hw.1])
    }

    /// Runs tiles `tiles` (of `T::PIXELS`; the last may be partial) for every block of output
    /// channels; inlined into [`PointwiseElem::run`], which has the type's target features.
    #[inline(always)]
    unsafe fn run(&self, buf: Buffers<T>, tiles: Range<usize>) {
        let (c, n) = (self.c, self.n());
        let size = std::mem::size_of::<T>();
        // Pixels in a register.
        let lanes = T::PIXELS / 3;
        // A partial tile's pixels, copied per channel (`width` a channel), zeros after.
        let mut tail = vec![];
        for tile in tiles {
            let p0 = tile * T::PIXELS;
            let pixels = T::PIXELS.min(n - p0);
            if pixels == 1 {
                // One pixel (the 7x7 layers' 49th): its channels in a row, each block's 8
                // output channels in the lanes of one product.
                tail.clear();
                tail.extend((0..c).map(|ch| *buf.x.add(ch * n + p0)));
                for kb in 0..self.k / R {
                    let w = self.u.as_ptr().add(kb * c * R);
                    let v = T::column(tail.as_ptr(), w, c, self.bias.as_ptr().add(kb * R));
                    self.finish(buf, v, R, |j| (kb * R + j) * n + p0);
                }
                continue;
            }
            // A last tile of one register of pixels or fewer (the 14x14 layers' last 4) runs a
            // short tile: one register of pixels, 8 accumulators.
            let short = pixels <= lanes;
            let width = if short { lanes } else { T::PIXELS };
            let (x, step) = if pixels == width {
                (buf.x.add(p0), size * n)
            } else {
                tail.resize(c * width, T::from_f32(0.0));
                for ch in 0..c {
                    std::ptr::copy_nonoverlapping(buf.x.add(ch * n + p0), tail.as_mut_ptr().add(ch * width), pixels);
                }
                (tail.as_ptr(), size * width)
            };
            for kb in 0..self.k / R {
                let bias: [float32x4_t; R] = std::array::from_fn(|j| T::splat(self.bias[kb * R + j]));
                let mut acc: Tile = bias.map(|b| [b; 3]);
                let w = self.u.as_ptr().add(kb * c * R);
                if short {
                    let mut a = bias;
                    T::short_products(&mut a, x, step, w, c);
                    (0..R).for_each(|j| acc[j][0] = a[j]);
                } else {
                    T::products(&mut acc, x, step, w, c);
                }
                for (j, acc) in acc.iter().enumerate() {
                    let at = (kb * R + j) * n + p0;
                    if pixels == T::PIXELS {
                        let mut v = *acc;
                        let residual = if self.epilogue.residual { buf.residual.add(at) } else { std::ptr::null() };
                        T::finish(&mut v, residual, self.epilogue.relu);
                        (0..3).for_each(|p| vst1q_f32(buf.out.add(at + lanes * p) as *mut f32, v[p]));
                    } else {
                        self.finish(buf, *acc, pixels, |i| at + i);
                    }
                }
            }
        }
    }

    /// Adds the residual to the first `count` values of `v` (output values `at(0)`,
    /// `at(1)`, ...), applies the ReLU and stores them, each where `at` says.
    #[inline(always)]
    unsafe fn finish(&self, buf: Buffers<T>, mut v: [float32x4_t; 3], count: usize, at: impl Fn(usize) -> usize) {
        let mut bytes = [0f32; 12];
        let values = bytes.as_mut_ptr() as *mut T;
        let mut residual = std::ptr::null();
        if self.epilogue.residual {
            (0..count).for_each(|i| *values.add(i) = *buf.residual.add(at(i)));
            residual = values as *const T;
        }
        T::finish(&mut v, residual, self.epilogue.relu);
        (0..3).for_each(|p| vst1q_f32(bytes.as_mut_ptr().add(4 * p), v[p]));
        (0..count).for_each(|i| *buf.out.add(at(i)) = *values.add(i));
    }
}

impl<T: PointwiseElem> EvalOp for PointwiseConv<T> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (h, w) = self.hw;
        let (input, output) = (shape(self.batched.0, [self.c, h, w]), self.output_shape());
        let dt = T::datum_type();
        let x = &inputs[0];
        ensure!(
            x.datum_type() == dt && x.shape() == &input[..],
            "PointwiseConv: input {:?} {:?}, planned for {input:?} {dt:?}",
            x.datum_type(),
            x.shape(),
        );
        let residual = match (self.epilogue.residual, inputs.get(1)) {
            (false, _) => std::ptr::null(),
            (true, Some(r)) if r.datum_type() == dt && r.shape() == &output[..] => {
                r.try_as_plain_ram()?.as_slice::<T>()?.as_ptr()
            }
            (true, r) => bail!("PointwiseConv: residual {:?}, planned {output:?} {dt:?}", r.map(|r| r.shape())),
        };
        let mut out = unsafe { Tensor::uninitialized::<T>(&output)? };
        let buf = Buffers {
            x: x.try_as_plain_ram()?.as_slice::<T>()?.as_ptr(),
            residual,
            out: unsafe { out.as_ptr_mut_unchecked::<T>() },
        };
        // SAFETY: NEON is part of aarch64 (FEAT_FP16 for f16: the ops exist only in plans
        // made where the CPU has it, `crate::kernels::aarch64::fp16`); eval checked the sizes;
        // each range of tiles writes its own output pixels.
        crate::ops::parallel::for_ranges(self.n().div_ceil(T::PIXELS), |tiles| unsafe { T::run(self, buf, tiles) });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl<T: PointwiseElem> TypedOp for PointwiseConv<T> {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(T::fact(self.output_shape())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::frame::direct::tests::rounded;
    use crate::ops::test_util::random_f32 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The op on `T` tensors against a float64 matrix product of the same (`T`-rounded)
    /// values: pixel counts with a partial last tile (one pixel: the column path; a register
    /// or less: the short tile, read in place or copied; more: a whole tile copied) and
    /// without, odd and even channel counts (the loop's lone first step, the column's last
    /// channels), with and without residual and ReLU, input and output with and without the
    /// batch axis, on one and two threads (same bits). Each output within `tolerance` of the
    /// sum of its terms' magnitudes.
    fn equals_float64_product<T: PointwiseElem>(tolerance: f64) {
        // (c, k, h, w), pixels in tiles of 12 (f32) and 24 (f16): 196 = 16 x 12 + 4 = 8 x 24 +
        // 4; 35 = 2 x 12 + 11 = 24 + 11; 49 = 4 x 12 + 1 = 2 x 24 + 1; 1; 15 = 12 + 3; 48;
        // 32 = 2 x 12 + 8 = 24 + 8; 14 = 12 + 2; 25 = 2 x 12 + 1 = 24 + 1; 12; 24. The input
        // channels take every path of `channel_loop` (a lone channel, a first
        // pair, turns of four): 64, 3, 256, 1, 17, 7, 2, 3, 4, 9, 6, 11.
        let cases = [
            (64, 16, 14, 14),
            (3, 8, 5, 7),
            (256, 8, 7, 7),
            (1, 24, 2, 6),
            (17, 8, 1, 1),
            (7, 16, 3, 5),
            (2, 8, 4, 12),
            (3, 8, 4, 8),
            (4, 8, 2, 7),
            (9, 16, 5, 5),
            (6, 8, 3, 4),
            (11, 8, 2, 12),
        ];
        for (case, &(c, k, h, w)) in cases.iter().enumerate() {
            let mut next = random(case as u64 + 17);
            let n = h * w;
            let mut values = |len: usize| rounded::<T>(&(0..len).map(|_| next()).collect::<Vec<_>>());
            let (kernel, bias, x, r) = (values(k * c), values(k), values(c * n), values(k * n));
            let epilogue = Epilogue { residual: case % 2 == 0, relu: case % 3 != 1 };
            let batched = (case % 2 == 0, case % 3 == 0);
            let conv = Pointwise { dt: T::datum_type(), c, k, hw: (h, w), batched, kernel: kernel.clone(), bias: bias.clone() };
            let conv = PointwiseConv::<T>::new(&conv, epilogue);
            let tensor = |shape: &[usize], v: &[f32]| Tensor::from_shape(shape, v).unwrap().cast_to::<T>().unwrap().into_owned();
            let mut input = tvec![tensor(&shape(batched.0, [c, h, w]), &x).into_tvalue()];
            if epilogue.residual {
                input.push(tensor(&shape(batched.1, [k, h, w]), &r).into_tvalue());
            }
            let ctx = EvalContext::out_of_plan();
            let one = conv.eval(&ctx, input.clone()).unwrap();
            let two = multithread_tract_scope(Executor::multithread(2), || conv.eval(&ctx, input.clone()).unwrap());
            assert_eq!(one, two, "case {case}: threads differ");
            assert_eq!(one[0].shape(), &shape(batched.1, [k, h, w])[..]);
            assert_eq!(one[0].datum_type(), T::datum_type());
            let got = one[0].cast_to::<f64>().unwrap();
            let got = got.try_as_plain_ram().unwrap().as_slice::<f64>().unwrap();
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
                        let r = f64::from(r[o * n + p]);
                        sum += r;
                        scale += r.abs();
                    }
                    if epilogue.relu {
                        sum = sum.max(0.0);
                    }
                    let g = got[o * n + p];
                    assert!(
                        (g - sum).abs() <= tolerance * scale.max(1e-3),
                        "{} case {case} channel {o} pixel {p}: {g} vs {sum}",
                        T::POINTWISE,
                    );
                }
            }
        }
    }

    /// The f32 op, under qemu (every aarch64 CPU).
    #[test]
    fn f32_equals_float64_product() {
        equals_float64_product::<f32>(1e-6);
    }

    /// The f16 op where the CPU has FEAT_FP16 (qemu cortex-a76 and max). Its sums stay in f16
    /// (up to 256 channels here): each output within 8 f16 rounding units (2^-11) of the sum
    /// of its terms' magnitudes.
    #[test]
    fn f16_equals_float64_product_within_f16_sums() {
        if !crate::cpu::Cpu::get().fp16 {
            eprintln!("skipped: this CPU has no fp16 arithmetic");
            return;
        }
        equals_float64_product::<f16>(8.0 / 2048.0);
    }
}
