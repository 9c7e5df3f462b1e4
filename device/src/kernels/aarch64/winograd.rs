//! The NEON loops of `crate::kernels::frame::winograd::WinogradConv` (Winograd F(2x2, 3x3) and
//! F(4x4, 3x3) for fp32 3x3 stride-1 convs; the op, its weights, geometry, blocks, threads and
//! the transforms' loops are the frame's, shared with x86_64): [`WinogradConv`] is that op on
//! `float32x4_t`, on every aarch64 CPU (Advanced SIMD is part of the architecture).
//!
//! 128-bit registers, 4 f32 lanes, 32 of them: lanes run over 4 tiles. The matrix product's
//! tile is 8 output channels by 12 tiles: 24 accumulators, 3 vectors of transformed inputs
//! and the 8 weights in 2 registers, each weight taken from its lane by `fmla (by element)` -
//! 29 registers, 5 loads per 24 multiply-adds; blocks have 12 tiles at least. Where a block
//! has 4 or 8 tiles left (7x7 layers have 4 in all), 8 output channels by 8 tiles, or 24 (16)
//! output channels by 4 tiles: 7 (5) loads per 24 (16) multiply-adds. NEON has no masked loads or
//! stores: the transforms read and write whole vectors, the frame's `SLACK` keeps the lanes
//! past a row's last tile inside the buffers (they are computed and never stored to the
//! output), and the split input and the output are written lane-exact at the row ends.
//! `vld2q`/`vld4q` split a padded input row into its 2 or 4 column phases, `zip1`/`zip2`
//! interleave the output columns back.
//!
//! F(4x4) everywhere (`MIN_TILES4` 0): fewer instructions than F(2x2) on every ResNet layer,
//! down to 7x7 (4 tiles of 4x4: 144 products per channel pair against 256 in F(2x2)).
//!
//! `crate::kernels::aarch64::fp32::prepare` swaps it in for tract's 3x3 stride-1 padding-1
//! float `Conv`s, before tract's optimizer, with the residual and ReLU that follow them.

use crate::kernels::frame::winograd::{
    at4, at6, bt4, bt6, impl_lanes, multiply, transform_input, transform_output, Block, Buffers,
    Elem, WinogradKernel, R,
};
use std::arch::aarch64::*;
use std::ops::Range;
use tract_core::internal::f16;

/// f32 lanes of a NEON register.
const LANES: usize = 4;

/// The Winograd conv op on NEON: the frame's, with the loops of this module on 4-lane
/// registers, on `E` tensors ([`NeonElem`]: f32, or f16 for the plans of `--precision f16`).
pub type WinogradConv<E = f32> = crate::kernels::frame::winograd::WinogradConv<float32x4_t, E>;

/// The tensor types of the NEON op, and how its loops read and write them: f32 as they are,
/// f16 widened to f32 when the input is split and the residual read, narrowed when the output
/// is stored (`fcvtl`/`fcvtn`: Advanced SIMD, every aarch64 CPU). The transforms and the
/// products run on f32 lanes either way.
pub trait NeonElem: Elem {
    /// The kernel, as `device inspect` and the tests name it.
    const KERNEL: &'static str;
    /// Writes the `n` values at `p` as f32 at `dst`.
    ///
    /// # Safety
    /// `p` and `dst` valid for `n` values.
    unsafe fn widen(p: *const Self, dst: *mut f32, n: usize);
    /// The first `n` values at `p` (all four from 4 on; the rest 0), as f32.
    ///
    /// # Safety
    /// `p` valid for `n.min(4)` values.
    unsafe fn load_first(p: *const Self, n: usize) -> float32x4_t;
    /// Stores the first `n` lanes of `v` at `p` (all four from 4 on).
    ///
    /// # Safety
    /// `p` valid for `n.min(4)` values.
    unsafe fn store_first(v: float32x4_t, p: *mut Self, n: usize);
}

impl NeonElem for f32 {
    const KERNEL: &'static str = "winograd_3x3_neon (device::kernels::aarch64::winograd)";
    #[inline(always)]
    unsafe fn widen(p: *const f32, dst: *mut f32, n: usize) {
        std::ptr::copy_nonoverlapping(p, dst, n)
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> float32x4_t {
        load_first(p, n)
    }
    #[inline(always)]
    unsafe fn store_first(v: float32x4_t, p: *mut f32, n: usize) {
        store_first(v, p, n)
    }
}

impl NeonElem for f16 {
    const KERNEL: &'static str =
        "winograd_3x3_neon_f16io (device::kernels::aarch64::winograd; f16 tensors, f32 lanes)";
    #[inline(always)]
    unsafe fn widen(p: *const f16, dst: *mut f32, n: usize) {
        let p = p as *const u16;
        for i in (0..n / LANES * LANES).step_by(LANES) {
            vst1q_f32(dst.add(i), widen4(vld1_u16(p.add(i))));
        }
        for i in n / LANES * LANES..n {
            *dst.add(i) = f16::from_bits(*p.add(i)).to_f32();
        }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f16, n: usize) -> float32x4_t {
        let p = p as *const u16;
        if n >= LANES {
            widen4(vld1_u16(p))
        } else {
            let mut lanes = [0u16; LANES];
            std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), n);
            widen4(vld1_u16(lanes.as_ptr()))
        }
    }
    #[inline(always)]
    unsafe fn store_first(v: float32x4_t, p: *mut f16, n: usize) {
        let (p, h) = (p as *mut u16, narrow4(v));
        if n >= LANES {
            vst1_u16(p, h);
        } else {
            let mut lanes = [0u16; LANES];
            vst1_u16(lanes.as_mut_ptr(), h);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
}

/// One conversion instruction `$insn` (output `o`, input `i`) on the register `$x`.
macro_rules! fcvt {
    ($insn:literal, $x:expr) => {{
        let out;
        std::arch::asm!($insn, o = lateout(vreg) out, i = in(vreg) $x,
            options(pure, nomem, nostack, preserves_flags));
        out
    }};
}

/// f16 (as bits) to f32, exact, 4 lanes: `fcvtl`.
#[inline(always)]
unsafe fn widen4(h: uint16x4_t) -> float32x4_t {
    fcvt!("fcvtl {o:v}.4s, {i:v}.4h", h)
}

/// f32 to f16 (as bits), rounded to nearest even like tract's casts, 4 lanes: `fcvtn`.
#[inline(always)]
unsafe fn narrow4(v: float32x4_t) -> uint16x4_t {
    fcvt!("fcvtn {o:v}.4h, {i:v}.4s", v)
}

impl<E: NeonElem> WinogradKernel<E> for float32x4_t {
    const KERNEL: &'static str = E::KERNEL;
    // Whole-vector loads read up to 16 floats past the split input and 3 tiles past a block.
    const SLACK: usize = 4 * LANES;
    const MIN_TILES4: usize = 0;
    // 3 vectors of tiles for the products' tile: 14x14 layers go by 3 tile rows (12 tiles).
    const MIN_BLOCK_TILES: usize = 3 * LANES;
    // Where a block has a vector of tiles or two left (7x7 layers: 4 tiles in all), the tile
    // takes 16 or 24 output channels instead of 8.
    const GROUP: usize = 3;

    /// [`WinogradKernel::split`]: each input row is copied once between zeros (a padded row
    /// with room for whole-vector loads past its end), then `vld2q`/`vld4q` split 8 or 16 of
    /// its columns at a time into their phases.
    unsafe fn split(conv: &WinogradConv<E>, buf: Buffers<E>, channels: Range<usize>) {
        let (half, rows, row_len, m) = (conv.half(), conv.padded_rows(), conv.row_len(), conv.m);
        // Padded column X is input column X - 1; columns past the input stay 0.
        let mut padded = vec![0f32; row_len + 4 * LANES];
        for ch in channels {
            for yp in 0..rows {
                let dst = buf.split.add((ch * rows + yp) * row_len);
                let y = yp.wrapping_sub(1);
                if y >= conv.h {
                    std::ptr::write_bytes(dst, 0, row_len);
                    continue;
                }
                let src = buf.x.add((ch * conv.h + y) * conv.w);
                E::widen(src, padded.as_mut_ptr().add(1), conv.w);
                for i0 in (0..half).step_by(LANES) {
                    let at = padded.as_ptr().add(m * i0);
                    let phases = if m == 4 {
                        let p = vld4q_f32(at);
                        [p.0, p.1, p.2, p.3]
                    } else {
                        let p = vld2q_f32(at);
                        [p.0, p.1, p.0, p.1]
                    };
                    for (r, phase) in phases[..m].iter().enumerate() {
                        store_first(*phase, dst.add(r * half + i0), half - i0);
                    }
                }
            }
        }
    }

    unsafe fn transform_input(
        conv: &WinogradConv<E>,
        buf: Buffers<E>,
        b: &Block,
        channels: Range<usize>,
    ) {
        if conv.m == 4 {
            transform_input::<float32x4_t, 6, E>(conv, buf, b, channels, |d| bt6(d))
        } else {
            transform_input::<float32x4_t, 4, E>(conv, buf, b, channels, |d| bt4(d))
        }
    }

    unsafe fn multiply(conv: &WinogradConv<E>, b: &Block, pairs: Range<usize>) {
        let (stride, c) = (b.stride, conv.c);
        // Panel j of a group: weights `j * c * R` on, products `j * R` rows on.
        let each = |g: usize, tile: &dyn Fn(*const f32, *mut f32), u: *const f32, out: *mut f32| {
            for j in 0..g {
                tile(u.add(j * c * R), out.add(j * R * stride));
            }
        };
        multiply(conv, b, pairs, |nv, g, u, v, out| match (nv, g) {
            (3, _) => each(g, &|u, out| tile::<3, 1>(u, v, stride, c, out), u, out),
            (2, _) => each(g, &|u, out| tile::<2, 1>(u, v, stride, c, out), u, out),
            (_, 3) => tile::<1, 3>(u, v, stride, c, out),
            (_, 2) => tile::<1, 2>(u, v, stride, c, out),
            _ => tile::<1, 1>(u, v, stride, c, out),
        })
    }

    unsafe fn transform_output(
        conv: &WinogradConv<E>,
        buf: Buffers<E>,
        b: &Block,
        outs: Range<usize>,
    ) {
        if conv.m == 4 {
            let emit = |y: [float32x4_t; 4], plane, skip, at, n| {
                // 4x4 transpose: chunk l = outputs 4l..4l + 4 = column l of the 4 phases.
                let (a, b) = (vzip1q_f32(y[0], y[2]), vzip2q_f32(y[0], y[2]));
                let (c, d) = (vzip1q_f32(y[1], y[3]), vzip2q_f32(y[1], y[3]));
                let chunks = [
                    vzip1q_f32(a, c),
                    vzip2q_f32(a, c),
                    vzip1q_f32(b, d),
                    vzip2q_f32(b, d),
                ];
                conv.store(chunks, plane, skip, at, n)
            };
            transform_output::<float32x4_t, 6, 4, E>(conv, buf, b, outs, |m| at6(m), emit)
        } else {
            let emit = |y: [float32x4_t; 2], plane, skip, at, n| {
                conv.store(
                    [vzip1q_f32(y[0], y[1]), vzip2q_f32(y[0], y[1])],
                    plane,
                    skip,
                    at,
                    n,
                )
            };
            transform_output::<float32x4_t, 4, 2, E>(conv, buf, b, outs, |m| at4(m), emit)
        }
    }
}

// Whole-vector loads and stores: NEON has no masked ones (see `SLACK`).
impl_lanes!(float32x4_t, LANES, vaddq_f32, vsubq_f32, vdupq_n_f32,
    mul_add(x, k, b) vfmaq_n_f32(b, x, k),
    load(p, _n) vld1q_f32(p),
    store(v, p, _n) vst1q_f32(p, v));

/// Stores the first `n` lanes of `v` at `p` (all four from 4 on).
#[inline(always)]
unsafe fn store_first(v: float32x4_t, p: *mut f32, n: usize) {
    if n >= LANES {
        vst1q_f32(p, v);
    } else {
        let mut lanes = [0f32; LANES];
        vst1q_f32(lanes.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
    }
}

/// The first `n` floats at `p` (all four from 4 on; the rest 0).
#[inline(always)]
unsafe fn load_first(p: *const f32, n: usize) -> float32x4_t {
    if n >= LANES {
        vld1q_f32(p)
    } else {
        let mut lanes = [0f32; LANES];
        std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), n);
        vld1q_f32(lanes.as_ptr())
    }
}

impl<E: NeonElem> WinogradConv<E> {
    /// Stores `chunks` (consecutive outputs of one channel plane, biased) at `plane + at`, the
    /// first `n` of them, after the epilogue: plus the residual (`skip`: its plane), then max 0.
    #[inline(always)]
    unsafe fn store<const P: usize>(
        &self,
        chunks: [float32x4_t; P],
        plane: *mut E,
        skip: Option<*const E>,
        at: usize,
        n: usize,
    ) {
        for (q, chunk) in chunks.into_iter().enumerate() {
            let start = q * LANES;
            if start >= n {
                break;
            }
            let (at, n) = (at + start, n - start);
            let mut v = chunk;
            if let Some(r) = skip {
                v = vaddq_f32(v, E::load_first(r.add(at), n));
            }
            if self.epilogue.relu {
                // maxNum: 0 for a NaN v, like f32::max (tract's `Max`).
                v = vmaxnmq_f32(v, vdupq_n_f32(0.0));
            }
            E::store_first(v, plane.add(at), n);
        }
    }
}

/// One tile of a product: `G * R` output channels (`u`: per input channel, `R` weights, two
/// registers, each weight used from its lane; panel `g` of them `g * c * R` further) by
/// `4 * NV` tiles (`v`: per input channel, a row of `stride` values), over `c` input channels,
/// into `out` (`G * R` rows of `stride`). `NV * G * 8` accumulators: at most 24 (with the
/// operands, 29 to 31 of the 32 registers).
#[inline(always)]
unsafe fn tile<const NV: usize, const G: usize>(
    u: *const f32,
    v: *const f32,
    stride: usize,
    c: usize,
    out: *mut f32,
) {
    let mut acc = [[[vdupq_n_f32(0.0); NV]; R]; G];
    // One input channel: its NV vectors of tiles times its G * 8 weights.
    let step = |acc: &mut [[[float32x4_t; NV]; R]; G], w: *const f32, x: *const f32| {
        let xs: [float32x4_t; NV] = std::array::from_fn(|p| vld1q_f32(x.add(p * LANES)));
        for (g, acc) in acc.iter_mut().enumerate() {
            let (lo, hi) = (
                vld1q_f32(w.add(g * c * R)),
                vld1q_f32(w.add(g * c * R + LANES)),
            );
            for (p, &x) in xs.iter().enumerate() {
                acc[0][p] = vfmaq_laneq_f32::<0>(acc[0][p], x, lo);
                acc[1][p] = vfmaq_laneq_f32::<1>(acc[1][p], x, lo);
                acc[2][p] = vfmaq_laneq_f32::<2>(acc[2][p], x, lo);
                acc[3][p] = vfmaq_laneq_f32::<3>(acc[3][p], x, lo);
                acc[4][p] = vfmaq_laneq_f32::<0>(acc[4][p], x, hi);
                acc[5][p] = vfmaq_laneq_f32::<1>(acc[5][p], x, hi);
                acc[6][p] = vfmaq_laneq_f32::<2>(acc[6][p], x, hi);
                acc[7][p] = vfmaq_laneq_f32::<3>(acc[7][p], x, hi);
            }
        }
    };
    // Two channels a trip: the loop's own instructions (pointers, count, branch) are 4 per
    // trip, against 8 * NV * G multiply-adds.
    let (mut w, mut x) = (u, v);
    for _ in 0..c / 2 {
        step(&mut acc, w, x);
        step(&mut acc, w.add(R), x.add(stride));
        w = w.add(2 * R);
        x = x.add(2 * stride);
    }
    if c % 2 == 1 {
        step(&mut acc, w, x);
    }
    for (g, acc) in acc.iter().enumerate() {
        for (j, row) in acc.iter().enumerate() {
            for (p, a) in row.iter().enumerate() {
                vst1q_f32(out.add((g * R + j) * stride + p * LANES), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame's test (`check_against_direct_convolution`: odd sizes, channel counts not
    /// multiples of 4, residual and ReLU, F(2x2) and F(4x4), two threads) on these loops.
    #[test]
    fn equals_direct_convolution() {
        crate::kernels::frame::winograd::check_against_direct_convolution::<float32x4_t, f32>(1e-5);
    }

    /// The same on f16 tensors (converted at the split, the residual and the output; f32
    /// lanes inside): the output's rounding to f16 is 2^-11 = 4.9e-4 of its magnitude, at most
    /// that of the sum of magnitudes.
    #[test]
    fn f16_tensors_equal_direct_convolution() {
        crate::kernels::frame::winograd::check_against_direct_convolution::<float32x4_t, f16>(6e-4);
    }
}
