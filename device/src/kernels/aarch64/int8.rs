//! What the aarch64 int8 conv kernels share (`crate::kernels::aarch64::dotprod`: `sdot`;
//! `crate::kernels::aarch64::widening`: `smull`/`smlal`, CPUs without dotprod): the padded
//! input in channel quads they read directly ([`NeonQuads`]), their 8x8 tile of integer sums
//! ([`Tile`]) and its epilogue in NEON registers ([`finish`]), with the epilogue's steps fixed
//! per op ([`run_tiles`]).

use crate::kernels::frame::int8_chains;
use crate::kernels::frame::quads::{Quads, QuadsFill, QuadsOp};
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::ConvShape;
use std::arch::aarch64::*;
use std::ops::Range;

/// Output channels per tile.
pub(crate) const CHANNELS: usize = 8;
/// Output pixels per tile.
pub(crate) const PIXELS: usize = 8;

/// One tile's accumulators: per channel, pixels 0-3 and 4-7.
pub(crate) type Tile = [[int32x4_t; 2]; CHANNELS];

/// The patches (or padded input) are i8.
pub(crate) type Buffers = int8_chains::Buffers<i8>;

/// An op's loops over its tiles with the epilogue's steps fixed (the residual, ReLU, the f32
/// output, the i8 output): one monomorphized loop each, no flag tests per channel.
pub(crate) trait Tiles {
    /// # Safety
    /// As the op's `run`.
    unsafe fn run_with<const RES: bool, const RELU: bool, const F32: bool, const I8: bool>(
        &self,
        buf: Buffers,
        blocks: Range<usize>,
    );
}

/// One tile of an implicit conv ([`row_tiles`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowTile {
    /// Its first position in the planes.
    pub at: usize,
    /// Its first output pixel.
    pub p0: usize,
    /// Its pixels in the output row (1 to the tile's width, 8 or 7): from 4 down, an 8-wide
    /// kernel may compute half a tile.
    pub pixels: usize,
    /// The lanes to store: all 8 (those past the output row land on the next row's first
    /// pixels, which the next tile writes after) but for the last tile of the plane.
    pub store: usize,
}

/// The tiles of an implicit conv of shape `g` over [`NeonQuads`]: per output row, `width` (8,
/// or 7 for `dotprod`'s channels-in-lanes tiles) consecutive output pixels, which are as many
/// consecutive positions of a plane row for every kernel tap of a stride-1 conv (of a stride-2
/// conv: of its tap's phase plane); 8 lanes stored but for the last tile.
pub(crate) fn row_tiles(g: &ConvShape, width: usize) -> Vec<RowTile> {
    let (oh, ow, wq) = (g.out_height, g.out_width, g.plane_width());
    let mut tiles: Vec<RowTile> = (0..oh)
        .flat_map(|y| {
            (0..ow).step_by(width).map(move |x| {
                let pixels = width.min(ow - x);
                RowTile { at: y * wq + x, p0: y * ow + x, pixels, store: PIXELS }
            })
        })
        .collect();
    if let Some(last) = tiles.last_mut() {
        last.store = last.pixels;
    }
    tiles
}

/// The bytes a 3x3 implicit kernel's input pointer moves on after each tap on `q`'s layout
/// (from tap `t` to `t + 1` in tract's order, ky then kx; from tap 8 to the next quad's tap 0),
/// wrapping: the phases of a stride-2 conv lie in other planes, behind as well as ahead. One
/// post-incremented load per tap, whatever the stride.
pub(crate) fn tap_steps(q: &Quads) -> [usize; 9] {
    let offsets = q.g.tap_offsets();
    debug_assert_eq!(offsets.len(), 9, "tap_steps: a 3x3 conv");
    std::array::from_fn(|t| {
        let next = offsets.get(t + 1).copied().unwrap_or(q.quad_len());
        next.wrapping_sub(offsets[t]).wrapping_mul(4)
    })
}

/// `t.run_with` for the steps `buf` and `relu` ask.
///
/// # Safety
/// As the op's `run`.
pub(crate) unsafe fn run_tiles<T: Tiles>(t: &T, relu: bool, buf: Buffers, blocks: Range<usize>) {
    let (f, i) = (buf.f32_out.is_some(), buf.i8_out.is_some() && buf.quantize.is_some());
    match (buf.residual.is_some(), relu) {
        (false, false) => outputs::<T, false, false>(t, f, i, buf, blocks),
        (false, true) => outputs::<T, false, true>(t, f, i, buf, blocks),
        (true, false) => outputs::<T, true, false>(t, f, i, buf, blocks),
        (true, true) => outputs::<T, true, true>(t, f, i, buf, blocks),
    }
}

unsafe fn outputs<T: Tiles, const RES: bool, const RELU: bool>(
    t: &T,
    f32_out: bool,
    i8_out: bool,
    buf: Buffers,
    blocks: Range<usize>,
) {
    match (f32_out, i8_out) {
        (false, false) => t.run_with::<RES, RELU, false, false>(buf, blocks),
        (false, true) => t.run_with::<RES, RELU, false, true>(buf, blocks),
        (true, false) => t.run_with::<RES, RELU, true, false>(buf, blocks),
        (true, true) => t.run_with::<RES, RELU, true, true>(buf, blocks),
    }
}

/// The epilogue of one tile of an `m x n` output (`e`): channels `c0..c0 + acc.len()` (those
/// below `m`), output pixels `p0..p0 + lanes`; the steps (`RES`idual, `RELU`, `F32` and `I8`
/// outputs) are the op's ([`run_tiles`]). As `Int8Epilogue`: same f32 operations, same
/// order, the same bits. (Inlined into the tile loops, so the accumulators stay in registers:
/// NEON is part of aarch64, no target feature to enable.) A whole tile (8 channels below `m`,
/// 8 lanes) takes its own copy, unrolled with no tests per channel.
#[inline(always)]
pub(crate) unsafe fn finish<const RES: bool, const RELU: bool, const F32: bool, const I8: bool>(
    e: &Int8Epilogue,
    (m, n): (usize, usize),
    acc: &[[int32x4_t; 2]],
    c0: usize,
    p0: usize,
    lanes: usize,
    buf: Buffers,
) {
    match <&[[int32x4_t; 2]; CHANNELS]>::try_from(acc) {
        Ok(tile) if lanes == PIXELS && m >= c0 + CHANNELS => {
            finish_channels::<RES, RELU, F32, I8, 2, true>(e, n, tile, c0, p0, PIXELS, buf)
        }
        _ => finish_channels::<RES, RELU, F32, I8, 2, false>(e, n, &acc[..m.saturating_sub(c0).min(acc.len())], c0, p0, lanes, buf),
    }
}

/// [`finish`] for a tile of 8 channels by `4 * R` pixels, all stored (`SdotConv`'s pointwise
/// tiles are 12 wide).
#[inline(always)]
pub(crate) unsafe fn finish_whole<const RES: bool, const RELU: bool, const F32: bool, const I8: bool, const R: usize>(
    e: &Int8Epilogue,
    (m, n): (usize, usize),
    acc: &[[int32x4_t; R]; CHANNELS],
    c0: usize,
    p0: usize,
    buf: Buffers,
) {
    match m >= c0 + CHANNELS {
        true => finish_channels::<RES, RELU, F32, I8, R, true>(e, n, acc, c0, p0, 4 * R, buf),
        false => finish_channels::<RES, RELU, F32, I8, R, true>(e, n, &acc[..m.saturating_sub(c0)], c0, p0, 4 * R, buf),
    }
}

/// [`finish`] on the channels of `acc`, `4 * R` pixels each (`R` is 2 or 3); `WHOLE`: all
/// stored, else the first `lanes` (`R` 2 only).
#[inline(always)]
unsafe fn finish_channels<
    const RES: bool,
    const RELU: bool,
    const F32: bool,
    const I8: bool,
    const R: usize,
    const WHOLE: bool,
>(
    e: &Int8Epilogue,
    n: usize,
    acc: &[[int32x4_t; R]],
    c0: usize,
    p0: usize,
    lanes: usize,
    buf: Buffers,
) {
    let zero = vdupq_n_f32(0.0);
    let (qscale, qzero) = buf.quantize.unwrap_or((1.0, 0));
    let (qscale, qzero) = (vdupq_n_f32(qscale), vdupq_n_s16(qzero.clamp(-128, 127) as i16));
    // Channel c0's scale and row of each output; the next channel's a row (n) on.
    let at = c0 * n + p0;
    let mut scale = e.scale.as_ptr().add(c0);
    let mut residual = buf.residual.map_or(std::ptr::null(), |r| r.add(at));
    let mut f32_out = buf.f32_out.map_or(std::ptr::null_mut(), |o| o.add(at));
    let mut i8_out = buf.i8_out.map_or(std::ptr::null_mut(), |o| o.add(at));
    for acc in acc {
        let s = vld1q_dup_f32(scale);
        // As Int8Epilogue: acc as f32 * scale (+ residual) (max 0).
        let mut v: [float32x4_t; R] = std::array::from_fn(|i| vmulq_f32(vcvtq_f32_s32(acc[i]), s));
        if RES {
            let r: [float32x4_t; R] = match WHOLE {
                true => std::array::from_fn(|i| vld1q_f32(residual.add(4 * i))),
                false => {
                    let r = load(residual, lanes);
                    std::array::from_fn(|i| r[i])
                }
            };
            v = std::array::from_fn(|i| vaddq_f32(v[i], r[i]));
        }
        if RELU {
            // f32::max: the number where one side is a NaN (fmaxnm).
            v = v.map(|v| vmaxnmq_f32(v, zero));
        }
        if F32 {
            match WHOLE {
                true => (0..R).for_each(|i| vst1q_f32(f32_out.add(4 * i), v[i])),
                false => store(f32_out, lanes, [v[0], v[1]]),
            }
        }
        if I8 {
            use crate::ops::quantize::quantize8_neon;
            if WHOLE {
                // By pairs of registers; an odd last one (R = 3: pixels 8-11) as both halves,
                // its 4 bytes stored.
                for i in (0..R).step_by(2) {
                    let q = quantize8_neon([v[i], v[(i + 1).min(R - 1)]], qscale, qzero);
                    match i + 1 < R {
                        true => vst1_s8(i8_out.add(4 * i), q),
                        false => std::ptr::write_unaligned(
                            i8_out.add(4 * i) as *mut i32,
                            vget_lane_s32::<0>(vreinterpret_s32_s8(q)),
                        ),
                    }
                }
            } else {
                let q = quantize8_neon([v[0], v[1]], qscale, qzero);
                let mut bytes = [0i8; PIXELS];
                vst1_s8(bytes.as_mut_ptr(), q);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), i8_out, lanes);
            }
        }
        scale = scale.add(1);
        residual = residual.wrapping_add(n);
        f32_out = f32_out.wrapping_add(n);
        i8_out = i8_out.wrapping_add(n);
    }
}

/// Four rows of 4 lanes transposed: lane `j` of row `i` to lane `i` of row `j` (`trn1`/`trn2`
/// on 32-bit, then 64-bit lanes). The kernels whose accumulators hold a pixel's channels turn
/// them into a channel's pixels, as [`finish`] takes them.
#[inline(always)]
pub(crate) unsafe fn transpose4(r: [int32x4_t; 4]) -> [int32x4_t; 4] {
    let (t0, t1) = (vtrn1q_s32(r[0], r[1]), vtrn2q_s32(r[0], r[1]));
    let (t2, t3) = (vtrn1q_s32(r[2], r[3]), vtrn2q_s32(r[2], r[3]));
    let lo = |x: int32x4_t, y: int32x4_t| vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(x), vreinterpretq_s64_s32(y)));
    let hi = |x: int32x4_t, y: int32x4_t| vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(x), vreinterpretq_s64_s32(y)));
    [lo(t0, t2), lo(t1, t3), hi(t0, t2), hi(t1, t3)]
}

/// `lanes` (1 to 8) f32 at `p`, in two registers (zeros past `lanes`).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn load(p: *const f32, lanes: usize) -> [float32x4_t; 2] {
    if lanes == PIXELS {
        return [vld1q_f32(p), vld1q_f32(p.add(4))];
    }
    let mut v = [0f32; PIXELS];
    std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), lanes);
    [vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4))]
}

/// The first `lanes` (1 to 8) f32 of `v` to `p`.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn store(p: *mut f32, lanes: usize, v: [float32x4_t; 2]) {
    if lanes == PIXELS {
        vst1q_f32(p, v[0]);
        vst1q_f32(p.add(4), v[1]);
        return;
    }
    let mut out = [0f32; PIXELS];
    vst1q_f32(out.as_mut_ptr(), v[0]);
    vst1q_f32(out.as_mut_ptr().add(4), v[1]);
    std::ptr::copy_nonoverlapping(out.as_ptr(), p, lanes);
}

/// [`Quads`] as the aarch64 int8 kernels read them: the input's signed bytes as they are, in
/// 4-byte positions, 8 a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signed;

/// The input of the aarch64 implicit int8 convs ([`Quads`]' layout).
pub type NeonQuads = QuadsOp<Signed>;

impl QuadsFill for Signed {
    const NAME: &'static str = "NeonQuads";
    const LANES: usize = PIXELS;
    type Byte = i8;
    const TAIL: i8 = 0;

    fn byte(v: i8) -> i8 {
        v
    }

    /// Stride 1 (the convs the kernels read directly): 16 columns of the quad's 4 channel
    /// rows at a time, interleaved by two zip steps into 16 positions (whole quads' rows of 16
    /// columns and more end on their last 16; the rest through copies; without padding, the
    /// plane at once as one row); stride 2 by [`fill_row_2`]; other strides byte by byte.
    #[target_feature(enable = "neon")]
    unsafe fn fill_row(q: &Quads, x: *const i8, y: usize, channels: &Range<usize>, pad: i8, dst: *mut i8) -> bool {
        let g = &q.g;
        if g.stride == (2, 2) && channels.len() == 4 {
            return fill_row_2(q, x, y, channels.start, pad, dst);
        }
        if g.stride != (1, 1) {
            return false;
        }
        let wq = g.plane_width();
        let left = g.pad.1;
        let cols = g.width.min(g.extent().1.saturating_sub(left));
        let (yy, _) = q.plane_row(y);
        let row = dst.add((yy * wq + left) * 4);
        // A whole quad's `len` (16 or more) consecutive columns from `src` (per channel) into
        // positions from `out`, without per-chunk checks: the last, partial 16 columns are the
        // run's last 16 (the overlap rewrites the same bytes).
        let run = |src: [*const i8; 4], len: usize, out: *mut i8| {
            for x0 in (0..len).step_by(16) {
                let x0 = x0.min(len - 16);
                let v = interleave(src.map(|p| vld1q_s8(p.add(x0))));
                for (i, v) in v.iter().enumerate() {
                    vst1q_s8(out.add(x0 * 4 + 16 * i), *v);
                }
            }
        };
        let plane = g.height * g.width;
        if g.pad == (0, 0) && wq == g.width && channels.len() == 4 && plane >= 16 {
            // No padding (the 1x1 convs): the quad's plane is its input rows back to back.
            // Filled whole as one run with the first row; the other rows have nothing left to
            // do.
            if y == 0 {
                run(std::array::from_fn(|j| x.add((channels.start + j) * plane)), plane, dst);
            }
            return true;
        }
        if channels.len() == 4 && cols >= 16 {
            // The common case: a whole quad, rows of 16 columns or more.
            run(std::array::from_fn(|j| x.add(((channels.start + j) * g.height + y) * g.width)), cols, row);
            return true;
        }
        for x0 in (0..cols).step_by(16) {
            let n = 16.min(cols - x0);
            // The 4 channels' 16 columns (the padding for channels past the last).
            let mut bytes = [[pad; 16]; 4];
            let src: [int8x16_t; 4] = std::array::from_fn(|j| {
                let c = channels.start + j;
                if c >= g.channels {
                    vdupq_n_s8(pad)
                } else if n == 16 {
                    vld1q_s8(x.add((c * g.height + y) * g.width + x0))
                } else {
                    std::ptr::copy_nonoverlapping(
                        x.add((c * g.height + y) * g.width + x0),
                        bytes[j].as_mut_ptr(),
                        n,
                    );
                    vld1q_s8(bytes[j].as_ptr())
                }
            });
            let v = interleave(src);
            if n == 16 {
                for (i, v) in v.iter().enumerate() {
                    vst1q_s8(row.add(x0 * 4 + 16 * i), *v);
                }
            } else {
                let mut positions = [0i8; 64];
                for (i, v) in v.iter().enumerate() {
                    vst1q_s8(positions.as_mut_ptr().add(16 * i), *v);
                }
                std::ptr::copy_nonoverlapping(positions.as_ptr(), row.add(x0 * 4), 4 * n);
            }
        }
        true
    }
}

/// 4 channels' 16 bytes (columns) into 16 positions of 4 bytes: two zip steps.
#[inline(always)]
unsafe fn interleave(src: [int8x16_t; 4]) -> [int8x16_t; 4] {
    let ab = vzipq_s8(src[0], src[1]);
    let cd = vzipq_s8(src[2], src[3]);
    let lo = vzipq_s16(vreinterpretq_s16_s8(ab.0), vreinterpretq_s16_s8(cd.0));
    let hi = vzipq_s16(vreinterpretq_s16_s8(ab.1), vreinterpretq_s16_s8(cd.1));
    [lo.0, lo.1, hi.0, hi.1].map(|v| vreinterpretq_s8_s16(v))
}

/// [`Signed`]'s row `y` of a stride-2 conv's whole quad from channel `c0`: 32 columns of the 4
/// channel rows at a time, split by `ld2` into even and odd columns, which are 16 consecutive
/// positions of one column phase each (padded column `X` at position `X / 2` of phase
/// `X % 2`), then interleaved as the stride-1 rows. A row's last, partial 32 columns go
/// through copies (the positions past the row keep the padding).
#[target_feature(enable = "neon")]
unsafe fn fill_row_2(q: &Quads, x: *const i8, y: usize, c0: usize, pad: i8, dst: *mut i8) -> bool {
    let g = &q.g;
    let (wq, plane, left) = (g.plane_width(), g.plane(), g.pad.1);
    let cols = g.width.min(g.extent().1.saturating_sub(left));
    let (yy, py) = q.plane_row(y);
    // Input column xi's byte offset in the quad's planes.
    let at = |xi: usize| {
        let xx = xi + left;
        ((py * 2 + xx % 2) * plane + yy * wq + xx / 2) * 4
    };
    for x0 in (0..cols).step_by(32) {
        let n = 32.min(cols - x0);
        let mut rows = [[pad; 32]; 4];
        let columns: [int8x16x2_t; 4] = std::array::from_fn(|j| {
            let src = x.add(((c0 + j) * g.height + y) * g.width + x0);
            if n == 32 {
                vld2q_s8(src)
            } else {
                std::ptr::copy_nonoverlapping(src, rows[j].as_mut_ptr(), n);
                vld2q_s8(rows[j].as_ptr())
            }
        });
        // Even columns from x0, odd ones from x0 + 1: 16 positions each, fewer at a row's end.
        for (first, count) in [(0, n.div_ceil(2)), (1, n / 2)] {
            if count == 0 {
                continue;
            }
            let v = interleave(columns.map(|c| if first == 0 { c.0 } else { c.1 }));
            let out = dst.add(at(x0 + first));
            if count == 16 {
                for (i, v) in v.iter().enumerate() {
                    vst1q_s8(out.add(16 * i), *v);
                }
            } else {
                let mut positions = [0i8; 64];
                for (i, v) in v.iter().enumerate() {
                    vst1q_s8(positions.as_mut_ptr().add(16 * i), *v);
                }
                std::ptr::copy_nonoverlapping(positions.as_ptr(), out, 4 * count);
            }
        }
    }
    true
}

/// The 3x3 stride-2 convs both implicit kernels are tested on, as [`IMPLICIT_3X3_CASES`]: ResNet's
/// sizes (56, 28, 14 in), odd sizes and rows under, at and past 32 columns (the fill's chunks,
/// a last partial one of 1 to 31), no padding, channel counts of one quad and many.
#[cfg(test)]
pub(crate) const IMPLICIT_3X3_STRIDE_2_CASES: [(usize, usize, usize, usize, usize, usize, usize); 8] = [
    (8, 56, 56, 3, 2, 1, 16),
    (16, 28, 28, 3, 2, 1, 8),
    (12, 14, 14, 3, 2, 1, 17),
    (4, 9, 11, 3, 2, 1, 20),
    (8, 13, 21, 3, 2, 0, 9),
    (4, 6, 70, 3, 2, 1, 8),
    (8, 7, 33, 3, 2, 1, 12),
    (32, 7, 7, 3, 2, 1, 24),
];

/// The 3x3 stride-1 convs both implicit kernels are tested on against a scalar convolution
/// (`implicit_kernel_equals_scalar_convolution`): (channels, h, w, kernel, stride, padding,
/// output channels). ResNet's sizes (56, 28, 14, 7: rows of whole tiles, of a half tile for the
/// last 1-4 pixels), odd sizes, rows shorter than a tile, paddings 0 to 2, channel counts of one
/// quad, of odd and even numbers of quads and many.
#[cfg(test)]
pub(crate) const IMPLICIT_3X3_CASES: [(usize, usize, usize, usize, usize, usize, usize); 10] = [
    (4, 9, 11, 3, 1, 1, 20),
    (8, 56, 56, 3, 1, 1, 16),
    (16, 28, 28, 3, 1, 1, 8),
    (12, 14, 14, 3, 1, 1, 17),
    (32, 7, 7, 3, 1, 1, 24),
    (4, 5, 3, 3, 1, 2, 5),
    (8, 13, 21, 3, 1, 0, 9),
    (4, 1, 1, 3, 1, 1, 8),
    (8, 6, 4, 3, 1, 1, 8),
    (8, 3, 12, 3, 1, 1, 16),
];

/// The 1x1 stride-1 convs both kernels' pointwise paths are tested on (the same columns):
/// channel counts of whole quads and not (the last quad's padding channels), planes of 16
/// positions and more (filled at once) and fewer, pixel counts that leave a partial last panel
/// (1 to 4 pixels in it: half a tile).
#[cfg(test)]
pub(crate) const POINTWISE_CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
    (16, 7, 7, 1, 1, 0, 13),
    (4, 8, 10, 1, 1, 0, 16),
    (6, 9, 11, 1, 1, 0, 8),
    (64, 14, 14, 1, 1, 0, 24),
    (8, 3, 4, 1, 1, 0, 9),
    (12, 1, 1, 1, 1, 0, 20),
];
