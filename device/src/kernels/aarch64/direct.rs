//! Float large-kernel strided convolutions (ResNet's 7x7/2 stem) computed on the input
//! directly, on NEON: f32 on every aarch64 board, f16 (the plans of `--precision f16`) where
//! the CPU has FEAT_FP16 (a Pi 5's A76, Orin's A78AE).
//!
//! tract runs the stem as a lazy im2col + matrix product (147 rows of patches per output
//! pixel, built panel by panel: 21 M of ResNet-50 fp32's instructions per inference on
//! cortex-a72 besides the products, 9.5 M of ResNet-18 fp16's on cortex-a76). [`DirectConv`]
//! splits the padded input once by row and column phase (`crate::kernels::frame::direct`, as
//! x86's `DirectConv`), so that one kernel tap of consecutive output pixels of a row is a run
//! of consecutive values, and runs a tile of 8 output channels by three registers of pixels
//! (12 in f32 lanes, 24 in f16 lanes) in 24 accumulators, started at the bias: per (channel,
//! tap) step three loads of positions, one or two of weights and 24 `fmla` by element. The
//! ReLU that follows (fused by `crate::kernels::aarch64::fp32` and `fp16`) is applied in
//! registers. The same products as tract's, summed in another order: f32 results differ by
//! rounding only (unit test against float64; parity tests). f16 sums stay in f16 lanes over
//! all 147 taps, as tract's f16 matrix product keeps them (unit test: within the f16 rounding
//! of such a sum).

use crate::kernels::frame::direct::{blocked_weights, Split};
use crate::kernels::frame::float_conv::{Epilogue, FloatConv, Take};
use crate::ops::im2col::ConvShape;
use std::arch::aarch64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const R: usize = 8;

/// A tile's accumulators: per output channel, three registers of pixels.
type Tile = [[float32x4_t; 3]; R];

/// The tensor types [`DirectConv`] runs on, with what its tile's assembly differs in.
pub trait DirectElem: Datum + Copy {
    /// The kernel, as `device inspect` and the tests name it.
    const KERNEL: &'static str;
    /// Output pixels per tile: three registers' lanes.
    const PIXELS: usize;
    fn from_f32(v: f32) -> Self;
    /// A register with `v` in every lane.
    ///
    /// # Safety
    /// NEON (every aarch64 CPU).
    unsafe fn splat(v: Self) -> float32x4_t;
    /// Adds to `acc` the products of the steps `steps` (their offsets in bytes from `x`; with
    /// `plane`, the stem's rows: see [`DirectConv::rows`]) by the weights at `u`, then applies
    /// the ReLU if `relu`.
    ///
    /// # Safety
    /// The split input from `x` and the weights from `u` hold every step's reads; for f16 the
    /// CPU has FEAT_FP16.
    unsafe fn tile(acc: &mut Tile, x: *const Self, u: *const Self, steps: &[usize], plane: Option<usize>, relu: bool);
}

/// A float conv of one `[1, C, H, W]` (or `[C, H, W]`) image with a large kernel (see the
/// module doc), on `T` tensors.
#[derive(Clone, PartialEq)]
pub struct DirectConv<T: DirectElem = f32> {
    split: Split,
    /// Output channels, a multiple of `R`.
    k: usize,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`).
    batched: bool,
    /// Per block of `R` output channels, per step (channel, ky, kx): `R` weights.
    u: Arc<Vec<T>>,
    bias: Vec<T>,
    epilogue: Epilogue,
    /// Per step (channel, ky, kx): its offset in the split input from a tile's first position,
    /// in bytes; with `rows`, per (channel, ky): the offset of its row of column phase 0.
    steps: Vec<usize>,
    /// The stem's 7-wide kernel at stride 2 along x: its values per plane, the taps of a row
    /// read from the row's two column phases in turn.
    rows: Option<usize>,
    /// Per tile: its first position in the planes, its first output pixel, its pixels (1 to
    /// `T::PIXELS`).
    tiles: Vec<(usize, usize, usize)>,
}

impl<T: DirectElem> Eq for DirectConv<T> {}

impl<T: DirectElem> std::fmt::Debug for DirectConv<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.split.describe(f, self.k, &self.epilogue)
    }
}

impl<T: DirectElem> Op for DirectConv<T> {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.split.info(self.k, T::KERNEL, &self.epilogue))
    }

    op_as_typed_op!();
}

struct Buffers<T> {
    split: *const T,
    out: *mut T,
}

impl<T> Clone for Buffers<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Buffers<T> {}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint outputs.
unsafe impl<T> Send for Buffers<T> {}
unsafe impl<T> Sync for Buffers<T> {}

/// One f32 step: 12 positions from `$p` (then a position on: `{next}`), the 8 weights from
/// `{w}`, 24 `fmla` on 4 lanes.
macro_rules! tap_f32 {
    ($p:literal) => {
        concat!(
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [", $p, "], {next}\n",
            "ldp q3, q4, [{w}], #32\n",
            step_8x12!("fmla", ".4s", ".s"),
        )
    };
}

/// One f16 step: 24 positions from `$p` (then a position on), the 8 weights from `{w}` in
/// the lanes of v3, 24 `fmla` on 8 lanes.
macro_rules! tap_f16 {
    ($p:literal) => {
        concat!(
            "ld1 {{v0.8h, v1.8h, v2.8h}}, [", $p, "], {next}\n",
            "ldr q3, [{w}], #16\n",
            tap_f16!(@channel "0"),
            tap_f16!(@channel "1"),
            tap_f16!(@channel "2"),
            tap_f16!(@channel "3"),
            tap_f16!(@channel "4"),
            tap_f16!(@channel "5"),
            tap_f16!(@channel "6"),
            tap_f16!(@channel "7"),
        )
    };
    (@channel $c:literal) => {
        concat!(
            "fmla {a", $c, "0:v}.8h, v0.8h, v3.h[", $c, "]\n",
            "fmla {a", $c, "1:v}.8h, v1.8h, v3.h[", $c, "]\n",
            "fmla {a", $c, "2:v}.8h, v2.8h, v3.h[", $c, "]\n",
        )
    };
}

/// `max(a, 0)` on the 24 accumulators in lanes `$x` (`fmaxnm`: 0 for a NaN, like f32::max
/// and tract's `Max`) if `{relu}` is not 0.
macro_rules! relu {
    ($x:literal) => {
        concat!(
            "cbz {relu}, 3f\n",
            "movi v0.16b, #0\n",
            relu!(@channel $x, "0"),
            relu!(@channel $x, "1"),
            relu!(@channel $x, "2"),
            relu!(@channel $x, "3"),
            relu!(@channel $x, "4"),
            relu!(@channel $x, "5"),
            relu!(@channel $x, "6"),
            relu!(@channel $x, "7"),
            "3:\n",
        )
    };
    (@channel $x:literal, $c:literal) => {
        concat!(
            "fmaxnm {a", $c, "0:v}", $x, ", {a", $c, "0:v}", $x, ", v0", $x, "\n",
            "fmaxnm {a", $c, "1:v}", $x, ", {a", $c, "1:v}", $x, ", v0", $x, "\n",
            "fmaxnm {a", $c, "2:v}", $x, ", {a", $c, "2:v}", $x, ", v0", $x, "\n",
        )
    };
}

/// [`DirectElem::tile`] for element type `$t`: steps by `$tap`, the ReLU on lanes `$x`.
macro_rules! tile_loop {
    ($acc:ident, $t:ty, $tap:ident, $x:literal, $input:expr, $u:expr, $steps:expr, $plane:expr, $relu:expr) => {{
        let size = std::mem::size_of::<$t>();
        match $plane {
            // The stem: per (channel, kernel row) 7 taps from the row's two column phases in
            // turn (even, odd, ..., even), a position further every two.
            Some(plane) => tile_8x12!($acc;
                "2:",
                "ldr {o}, [{s}], #8",
                "add {e}, {x}, {o}",
                "add {q}, {e}, {pl}",
                $tap!("{e}"),
                $tap!("{q}"),
                $tap!("{e}"),
                $tap!("{q}"),
                $tap!("{e}"),
                $tap!("{q}"),
                $tap!("{e}"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                relu!($x),
                x = in(reg) $input,
                s = inout(reg) $steps.as_ptr() => _,
                n = inout(reg) $steps.len() => _,
                pl = in(reg) size * plane,
                next = in(reg) size,
                relu = in(reg) u64::from($relu),
                w = inout(reg) $u => _,
                o = out(reg) _,
                e = out(reg) _,
                q = out(reg) _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
            ),
            None => tile_8x12!($acc;
                "2:",
                "ldr {o}, [{s}], #8",
                "add {e}, {x}, {o}",
                $tap!("{e}"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                relu!($x),
                x = in(reg) $input,
                s = inout(reg) $steps.as_ptr() => _,
                n = inout(reg) $steps.len() => _,
                next = in(reg) size,
                relu = in(reg) u64::from($relu),
                w = inout(reg) $u => _,
                o = out(reg) _,
                e = out(reg) _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
            ),
        }
    }};
}

impl DirectElem for f32 {
    const KERNEL: &'static str = "direct_f32_8x12_neon (device::kernels::aarch64::direct)";
    const PIXELS: usize = 12;
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> float32x4_t {
        vdupq_n_f32(v)
    }
    #[inline(always)]
    unsafe fn tile(acc: &mut Tile, x: *const f32, u: *const f32, steps: &[usize], plane: Option<usize>, relu: bool) {
        tile_loop!(acc, f32, tap_f32, ".4s", x, u, steps, plane, relu)
    }
}

impl DirectElem for f16 {
    const KERNEL: &'static str = "direct_f16_8x24_neon (device::kernels::aarch64::direct; f16 sums, FEAT_FP16)";
    const PIXELS: usize = 24;
    fn from_f32(v: f32) -> f16 {
        f16::from_f32(v)
    }
    #[inline(always)]
    unsafe fn splat(v: f16) -> float32x4_t {
        vreinterpretq_f32_u16(vdupq_n_u16(v.to_bits()))
    }
    unsafe fn tile(acc: &mut Tile, x: *const f16, u: *const f16, steps: &[usize], plane: Option<usize>, relu: bool) {
        tile_f16(acc, x, u, steps, plane, relu)
    }
}

/// [`DirectElem::tile`] on f16 lanes (`fmla` and `fmaxnm` on halves: FEAT_FP16).
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16(acc: &mut Tile, x: *const f16, u: *const f16, steps: &[usize], plane: Option<usize>, relu: bool) {
    tile_loop!(acc, f16, tap_f16, ".8h", x, u, steps, plane, relu)
}

impl<T: DirectElem> DirectConv<T> {
    /// How `crate::kernels::aarch64::fp32` (f32) and `fp16` (f16) take a `T` conv whose
    /// kernel is 5 or more each way (ResNet's 7x7 stem), with the ReLU after it.
    pub(crate) fn take<'a>(conv: &FloatConv) -> Option<Take<'a>> {
        (conv.dt == T::datum_type() && conv.g.kernel.0 >= 5 && conv.g.kernel.1 >= 5).then(|| Take {
            suffix: "direct",
            residuals: false,
            op: Box::new(|conv, epilogue| {
                Box::new(Self::new(conv.g.clone(), conv.k, conv.batched, &conv.kernel, &conv.bias, epilogue))
            }),
        })
    }

    /// The conv of geometry `g` with `k` output channels, weights `kernel` (`[k][c][kh][kw]`)
    /// and `bias` (`k` values), both rounded to `T`, on `[1, C, H, W]` tensors if `batched`
    /// (else `[C, H, W]`).
    pub(crate) fn new(g: ConvShape, k: usize, batched: bool, kernel: &[f32], bias: &[f32], epilogue: Epilogue) -> Self {
        let taps = g.kernel.0 * g.kernel.1;
        assert!(k.is_multiple_of(R) && kernel.len() == k * g.channels * taps && bias.len() == k);
        let (oh, ow, wq) = (g.out_height, g.out_width, g.plane_width());
        // Output pixel (y, x) reads tap (0, 0) at position (y, x) of phase (0, 0).
        let tiles = (0..oh)
            .flat_map(|y| (0..ow).step_by(T::PIXELS).map(move |x| (y * wq + x, y * ow + x, T::PIXELS.min(ow - x))))
            .collect();
        let rows = (g.stride.1 == 2 && g.kernel.1 == 7).then(|| g.plane());
        let split = Split { g };
        // In bytes, as the kernel adds them.
        let size = std::mem::size_of::<T>();
        let steps = match rows {
            // Step (c, ky, 0) of each row.
            Some(_) => split.steps().into_iter().step_by(7).map(|s| size * s).collect(),
            None => split.steps().into_iter().map(|s| size * s).collect(),
        };
        DirectConv {
            steps,
            rows,
            split,
            k,
            batched,
            u: Arc::new(blocked_weights(kernel, k, R, T::from_f32)),
            bias: bias.iter().map(|&b| T::from_f32(b)).collect(),
            epilogue,
            tiles,
        }
    }

    /// The split input's slack: room for what a last tile reads past its row (up to a tile
    /// and a plane row on).
    fn slack(&self) -> usize {
        let g = &self.split.g;
        T::PIXELS + g.kernel.1 + g.plane_width()
    }

    /// Runs tiles `tiles` for every block of output channels.
    #[target_feature(enable = "neon")]
    unsafe fn run(&self, buf: Buffers<T>, tiles: Range<usize>) {
        let steps = self.split.g.channels * self.split.g.kernel.0 * self.split.g.kernel.1;
        let n = self.split.g.out_height * self.split.g.out_width;
        // Pixels per register.
        let lanes = T::PIXELS / 3;
        for &(at, p0, pixels) in &self.tiles[tiles] {
            let x = buf.split.add(at);
            for kb in 0..self.k / R {
                let u = self.u.as_ptr().add(kb * steps * R);
                let mut acc: Tile = std::array::from_fn(|j| [T::splat(self.bias[kb * R + j]); 3]);
                T::tile(&mut acc, x, u, &self.steps, self.rows, self.epilogue.relu);
                for (j, acc) in acc.iter().enumerate() {
                    let out = buf.out.add((kb * R + j) * n + p0);
                    if pixels == T::PIXELS {
                        for (p, v) in acc.iter().enumerate() {
                            vst1q_f32(out.add(lanes * p) as *mut f32, *v);
                        }
                    } else {
                        // The three registers' bytes, then the tile's pixels of them.
                        let mut bytes = [0f32; 12];
                        for (p, v) in acc.iter().enumerate() {
                            vst1q_f32(bytes.as_mut_ptr().add(4 * p), *v);
                        }
                        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const T, out, pixels);
                    }
                }
            }
        }
    }
}

impl<T: DirectElem> EvalOp for DirectConv<T> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let split = self.split.read::<T>(&inputs[0], self.batched, self.slack())?;
        let mut out = unsafe { Tensor::uninitialized::<T>(&self.split.output_shape(self.batched, self.k))? };
        let buf = Buffers { split: split.as_ptr(), out: unsafe { out.as_ptr_mut_unchecked::<T>() } };
        // SAFETY: NEON is part of aarch64 (FEAT_FP16 for f16: the ops exist only in plans
        // made where the CPU has it, `crate::kernels::aarch64::fp16`); eval checked the sizes;
        // each range of tiles writes its own output pixels.
        crate::ops::parallel::for_ranges(self.tiles.len(), |tiles| unsafe { self.run(buf, tiles) });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl<T: DirectElem> TypedOp for DirectConv<T> {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(T::fact(self.split.output_shape(self.batched, self.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 op against a direct float64 convolution (`frame::direct::tests`), under qemu.
    #[test]
    fn equals_float64_convolution() {
        crate::kernels::frame::direct::tests::equals_float64_convolution::<f32, _>(DirectConv::<f32>::new, 1e-6);
    }

    /// The f16 op against a direct float64 convolution of the same f16 values, where the CPU
    /// has FEAT_FP16 (qemu cortex-a76 and max). Its sums stay in f16: each output within
    /// 8 f16 rounding units (2^-11) of the sum of its terms' magnitudes.
    #[test]
    fn f16_equals_float64_convolution_within_f16_sums() {
        if !crate::cpu::Cpu::get().fp16 {
            eprintln!("skipped: this CPU has no fp16 arithmetic");
            return;
        }
        crate::kernels::frame::direct::tests::equals_float64_convolution::<f16, _>(DirectConv::<f16>::new, 8.0 / 2048.0);
    }
}
