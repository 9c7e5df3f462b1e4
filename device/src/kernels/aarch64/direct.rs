//! Float convolutions computed on the input directly, on NEON: ResNet's 7x7/2 stem and its
//! 3x3 stride-2 convs (kernels of 5 and more, 3x3 of stride 2 where the tiles fit: see
//! [`DirectConv::take`]), f32 on every aarch64 board, f16 (the plans of `--precision f16`)
//! where the CPU has FEAT_FP16 (a Pi 5's A76, Orin's A78AE).
//!
//! tract runs them as a lazy im2col + matrix product (for the stem 147 rows of patches per
//! output pixel, built panel by panel: 21 M of ResNet-50 fp32's instructions per inference on
//! cortex-a72 besides the products, 9.5 M of ResNet-18 fp16's on cortex-a76). [`DirectConv`]
//! splits the padded input once by row and column phase (`crate::kernels::frame::direct`, as
//! x86's `DirectConv`), so that one kernel tap of consecutive output pixels is a run of
//! consecutive values, and runs a tile of 8 output channels by three registers of positions
//! (12 in f32 lanes, 24 in f16 lanes; consecutive positions of the planes, row after row, the
//! lanes past an output row's end not stored) in 24 accumulators, started at the bias: per
//! (channel, tap) step one `ld1` of the positions and 24 `fmla` by element, two steps'
//! weights in one load. The steps go by [`Path`]: the stem's rows (7 taps from two column phases in turn),
//! a 3x3 kernel's 9 taps (each load moving the pointer on to the next tap), or a table of
//! offsets. The ReLU that follows (fused by `crate::kernels::aarch64::fp32` and `fp16`) is
//! applied in registers. The same products as tract's, summed in another order: f32 results
//! differ by rounding only (unit test against float64; parity tests). f16 sums stay in f16
//! lanes over all the taps, as tract's f16 matrix product keeps them (unit test: within the
//! f16 rounding of such a sum).

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
    /// Adds to `acc` the products of the steps of `path` from `x` by the weights at `u`, then
    /// applies the ReLU if `relu`.
    ///
    /// # Safety
    /// The split input from `x` and the weights from `u` hold every step's reads; for f16 the
    /// CPU has FEAT_FP16.
    unsafe fn tile(acc: &mut Tile, x: *const Self, u: *const Self, path: &Path, relu: bool);
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
    path: Path,
    /// Per tile: its first position in the planes, and the output pixels of its lanes
    /// ([`OutputTile`]).
    tiles: Vec<(usize, OutputTile)>,
}

/// How a tile walks its steps (channel, ky, kx) through the split input.
#[derive(Clone, Debug, PartialEq)]
pub enum Path {
    /// The stem's 7-wide kernel at stride 2 along x: per (channel, ky) the offset in bytes of
    /// its row of column phase 0 from a tile's first position, the 7 taps read from the row's
    /// two column phases (`plane` values apart) in turn.
    Rows { plane: usize, rows: Vec<usize> },
    /// 3x3 kernels: per channel 9 taps, `next[t]` the bytes from tap `t`'s positions to the
    /// next tap's (from the last to the next channel's first).
    Taps { channels: usize, next: [usize; 9] },
    /// Any kernel: per step its offset in bytes from a tile's first position.
    Steps { steps: Vec<usize> },
}

/// Which output pixels a tile's lanes are (`ConvShape::output_lanes_32`): tiles run over
/// consecutive positions of the planes, row after row, so the lanes past an output row's last
/// pixel (up to the plane width) compute nothing that is stored.
#[derive(Clone, Debug, PartialEq)]
struct OutputTile {
    /// The output pixel of its first stored lane. The stored lanes' pixels are consecutive.
    first: usize,
    /// Its lanes that are output pixels (bit per lane).
    mask: u32,
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

#[derive(Clone, Copy)]
struct Buffers<T> {
    split: *const T,
    out: *mut T,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint outputs.
unsafe impl<T> Send for Buffers<T> {}
unsafe impl<T> Sync for Buffers<T> {}

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

/// [`DirectElem::tile`] for element type `$t`: steps by `$tap`, two at a time by `$pair` (both
/// taps' weights in one load), the ReLU on lanes `$x`.
macro_rules! tile_loop {
    ($acc:ident, $t:ty, $tap:ident, $pair:ident, $x:literal, $input:expr, $u:expr, $path:expr, $relu:expr) => {{
        let size = std::mem::size_of::<$t>();
        match $path {
            // The stem: per (channel, kernel row) 7 taps from the row's two column phases in
            // turn (even, odd, ..., even), a position further every two.
            Path::Rows { plane, rows } => tile_8x12!($acc;
                "2:",
                "ldr {o}, [{s}], #8",
                "add {e}, {x}, {o}",
                "add {q}, {e}, {pl}",
                $pair!("{e}", "{next}", "{q}", "{next}"),
                $pair!("{e}", "{next}", "{q}", "{next}"),
                $pair!("{e}", "{next}", "{q}", "{next}"),
                $tap!("{e}", "{next}"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                relu!($x),
                x = in(reg) $input,
                s = inout(reg) rows.as_ptr() => _,
                n = inout(reg) rows.len() => _,
                pl = in(reg) size * plane,
                next = in(reg) size,
                relu = in(reg) u64::from($relu),
                w = inout(reg) $u => _,
                o = out(reg) _,
                e = out(reg) _,
                q = out(reg) _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _,
            ),
            // 3x3: per channel its 9 taps, each load moving the pointer on to the next tap's
            // positions (the last to the next channel's first).
            Path::Taps { channels, next } => tile_8x12!($acc;
                "2:",
                $pair!("{e}", "{d0}", "{e}", "{d1}"),
                $pair!("{e}", "{d2}", "{e}", "{d3}"),
                $pair!("{e}", "{d4}", "{e}", "{d5}"),
                $pair!("{e}", "{d6}", "{e}", "{d7}"),
                $tap!("{e}", "{d8}"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                relu!($x),
                e = inout(reg) $input => _,
                n = inout(reg) *channels => _,
                d0 = in(reg) next[0],
                d1 = in(reg) next[1],
                d2 = in(reg) next[2],
                d3 = in(reg) next[3],
                d4 = in(reg) next[4],
                d5 = in(reg) next[5],
                d6 = in(reg) next[6],
                d7 = in(reg) next[7],
                d8 = in(reg) next[8],
                relu = in(reg) u64::from($relu),
                w = inout(reg) $u => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _,
            ),
            Path::Steps { steps } => tile_8x12!($acc;
                "2:",
                "ldr {o}, [{s}], #8",
                "add {e}, {x}, {o}",
                $tap!("{e}", "{next}"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                relu!($x),
                x = in(reg) $input,
                s = inout(reg) steps.as_ptr() => _,
                n = inout(reg) steps.len() => _,
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
    unsafe fn tile(acc: &mut Tile, x: *const f32, u: *const f32, path: &Path, relu: bool) {
        tile_loop!(acc, f32, tap_f32, pair_f32, ".4s", x, u, path, relu)
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
    unsafe fn tile(acc: &mut Tile, x: *const f16, u: *const f16, path: &Path, relu: bool) {
        tile_f16(acc, x, u, path, relu)
    }
}

/// [`DirectElem::tile`] on f16 lanes (`fmla` and `fmaxnm` on halves: FEAT_FP16).
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16(acc: &mut Tile, x: *const f16, u: *const f16, path: &Path, relu: bool) {
    tile_loop!(acc, f16, tap_f16, pair_f16, ".8h", x, u, path, relu)
}

impl<T: DirectElem> DirectConv<T> {
    /// How `crate::kernels::aarch64::fp32` (f32) and `fp16` (f16) take a `T` conv whose
    /// kernel is 5 or more each way (ResNet's 7x7 stem) or 3x3 of stride 2 (ResNet's
    /// downsampling 3x3 convs; Winograd takes those of stride 1) where 90% of its tiles' lanes
    /// are output pixels (not ResNet's 7x7 outputs: 49 of 60 lanes in f32, 49 of 72 in f16;
    /// tract's matrix products count fewer there), with the ReLU after it.
    pub(crate) fn take<'a>(conv: &FloatConv) -> Option<Take<'a>> {
        let g = &conv.g;
        let large = g.kernel.0 >= 5 && g.kernel.1 >= 5;
        let lanes = (g.out_height * g.plane_width()).div_ceil(T::PIXELS) * T::PIXELS;
        let strided_3x3 = g.kernel == (3, 3) && g.stride == (2, 2) && 10 * g.out_height * g.out_width >= 9 * lanes;
        (conv.dt == T::datum_type() && (large || strided_3x3)).then(|| Take {
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
        // Output pixel (y, x) reads tap (0, 0) at position (y, x) of phase (0, 0): position
        // y * wq + x of the planes, for x < ow.
        let tiles = g
            .output_lanes_32(T::PIXELS)
            .into_iter()
            .enumerate()
            .filter(|(_, (mask, _))| *mask != 0)
            .map(|(v, (mask, first))| (v * T::PIXELS, OutputTile { first, mask }))
            .collect();
        let split = Split { g };
        let g = &split.g;
        // In bytes, as the kernel adds them.
        let size = std::mem::size_of::<T>();
        let steps: Vec<usize> = split.steps().into_iter().map(|s| size * s).collect();
        let path = if g.stride.1 == 2 && g.kernel.1 == 7 {
            // Step (c, ky, 0) of each row.
            Path::Rows { plane: g.plane(), rows: steps.into_iter().step_by(7).collect() }
        } else if g.kernel == (3, 3) {
            // The taps of channel 0, then channel 1's first.
            let next = std::array::from_fn(|t| steps.get(t + 1).copied().unwrap_or(size * split.channel_len()).wrapping_sub(steps[t]));
            Path::Taps { channels: g.channels, next }
        } else {
            Path::Steps { steps }
        };
        DirectConv {
            path,
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
        // Pixels per register; all lanes stored.
        let lanes = T::PIXELS / 3;
        let whole = u32::MAX >> (32 - T::PIXELS);
        for (at, tile) in &self.tiles[tiles] {
            let x = buf.split.add(*at);
            for kb in 0..self.k / R {
                let u = self.u.as_ptr().add(kb * steps * R);
                let mut acc: Tile = std::array::from_fn(|j| [T::splat(self.bias[kb * R + j]); 3]);
                T::tile(&mut acc, x, u, &self.path, self.epilogue.relu);
                for (j, acc) in acc.iter().enumerate() {
                    let out = buf.out.add((kb * R + j) * n + tile.first);
                    if tile.mask == whole {
                        for (p, v) in acc.iter().enumerate() {
                            vst1q_f32(out.add(lanes * p) as *mut f32, *v);
                        }
                    } else {
                        // The three registers' bytes, then each run of stored lanes of them,
                        // one after the other.
                        let mut bytes = [0f32; 12];
                        for (p, v) in acc.iter().enumerate() {
                            vst1q_f32(bytes.as_mut_ptr().add(4 * p), *v);
                        }
                        let (values, mut mask, mut out) = (bytes.as_ptr() as *const T, tile.mask, out);
                        while mask != 0 {
                            let lane = mask.trailing_zeros();
                            let run = (!(mask >> lane)).trailing_zeros();
                            std::ptr::copy_nonoverlapping(values.add(lane as usize), out, run as usize);
                            out = out.add(run as usize);
                            mask &= !((u32::MAX >> (32 - run)) << lane);
                        }
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
