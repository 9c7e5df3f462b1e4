//! The NEON loops of `crate::kernels::frame::winograd::WinogradConv` (Winograd F(2x2, 3x3) and
//! F(4x4, 3x3) for fp32 3x3 stride-1 convs; the op, its weights, geometry, blocks, threads and
//! the transforms' loops are the frame's, shared with x86_64): [`WinogradConv`] is that op on
//! `float32x4_t`, on every aarch64 CPU (Advanced SIMD is part of the architecture).
//!
//! 128-bit registers, 4 f32 lanes, 32 of them: lanes run over 4 tiles. The matrix product's
//! tile is 8 output channels by 12 tiles: 24 accumulators, 3 vectors of transformed inputs
//! and the 8 weights in 2 registers, each weight taken from its lane by `fmla (by element)` -
//! 29 registers; per input channel one `ld1` of the 3 vectors and 24 multiply-adds, per two
//! channels one `ld1` of their weights (the tile of `crate::kernels::aarch64::pointwise`,
//! [`tile_8x12`]; on f16 tensors its 8 x 24 f16 tile, [`tile_f16_8x24`]); blocks have 12
//! tiles at least. Where a block has 4 or 8 tiles left (7x7 layers have 4 in all), 8 output
//! channels by 8 tiles, or 24 (16) output channels by 4 tiles: 4 (5) loads per 24 (16)
//! multiply-adds (the 24 x 4 tile in assembly, [`tile_24x4`]). NEON has no masked loads or
//! stores: the transforms read and write whole vectors, the frame's `SLACK` keeps the lanes
//! past a row's last tile inside the buffers (they are computed and never stored to the
//! output), and the split input and the output are written lane-exact at the row ends.
//! `vld2q`/`vld4q` split a padded input row into its 2 or 4 column phases, `zip1`/`zip2`
//! interleave the output columns back.
//!
//! F(4x4) everywhere (`MIN_TILES4` 0): fewer instructions than F(2x2) on every ResNet layer,
//! down to 7x7 (4 tiles of 4x4: 144 products per channel pair against 256 in F(2x2)).
//!
//! On f16 tensors (`--precision f16`, FEAT_FP16) the products run in f16 lanes ([`tile_f16`]:
//! 8 tiles a register, 24 accumulators, 48 `fmla` per 56 instructions), their sums widened to
//! f32 every [`F16_CHUNK`] input channels: ResNet-18 fp16 on cortex-a76 253.8 -> 219.2 M
//! instructions per inference. The 7x7 layers' 4 tiles fill half a register.
//!
//! `crate::kernels::aarch64::fp32::prepare` swaps it in for tract's 3x3 stride-1 padding-1
//! float `Conv`s, before tract's optimizer, with the residual and ReLU that follow them.

use crate::kernels::frame::winograd::{
    at4, at6, bt4, bt6, impl_lanes, multiply, multiply_in_groups, transform_input, transform_output, Block, Buffers,
    Elem, WinogradKernel, R,
};
use crate::kernels::aarch64::pointwise::PointwiseElem;
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
/// is stored (`fcvtl`/`fcvtn`: Advanced SIMD, every aarch64 CPU). The transforms run on f32
/// lanes either way; the products on f32 lanes for f32 tensors, on f16 lanes for f16 ones
/// ([`multiply_f16`]: FEAT_FP16, which f16 plans need anyway).
pub trait NeonElem: Elem {
    /// The kernel, as `device inspect` and the tests name it.
    const KERNEL: &'static str;
    /// The products' operands ([`WinogradKernel::V`]) and their tiles per vector.
    type V: Copy + PartialEq + Send + Sync + 'static;
    const V_LANES: usize;
    /// A transformed weight as the products read it.
    fn weight(u: f64) -> Self::V;
    /// Stores a vector of transformed inputs at `p` (whole vector).
    ///
    /// # Safety
    /// `p` valid for 4 values.
    unsafe fn store_v(x: float32x4_t, p: *mut Self::V);
    /// [`WinogradKernel::multiply`].
    ///
    /// # Safety
    /// As there.
    unsafe fn multiply(conv: &WinogradConv<Self>, b: &Block<Self::V>, pairs: Range<usize>);
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
    type V = f32;
    const V_LANES: usize = LANES;
    fn weight(u: f64) -> f32 {
        u as f32
    }
    #[inline(always)]
    unsafe fn store_v(x: float32x4_t, p: *mut f32) {
        vst1q_f32(p, x)
    }
    unsafe fn multiply(conv: &WinogradConv<f32>, b: &Block, pairs: Range<usize>) {
        multiply_f32(conv, b, pairs)
    }
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
    const KERNEL: &'static str = "winograd_3x3_neon_f16 (device::kernels::aarch64::winograd; \
        f16 tensors, f32 transforms, f16 products summed in f32 by 32 channels)";
    type V = f16;
    const V_LANES: usize = 2 * LANES;
    fn weight(u: f64) -> f16 {
        f16::from_f64(u)
    }
    #[inline(always)]
    unsafe fn store_v(x: float32x4_t, p: *mut f16) {
        vst1_u16(p as *mut u16, narrow4(x))
    }
    unsafe fn multiply(conv: &WinogradConv<f16>, b: &Block<f16>, pairs: Range<usize>) {
        multiply_f16(conv, b, pairs)
    }
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
    // 3 vectors of tiles for the products' tile: 14x14 layers go by 3 tile rows (12 tiles; f16:
    // all 4, 16 tiles).
    const MIN_BLOCK_TILES: usize = 3 * E::V_LANES;
    // Where a block has a vector of tiles or two left (7x7 layers: 4 tiles in all), the tile
    // takes 16 or 24 output channels instead of 8.
    const GROUP: usize = 3;
    type V = E::V;
    const V_LANES: usize = E::V_LANES;

    fn weight(u: f64) -> E::V {
        E::weight(u)
    }

    #[inline(always)]
    unsafe fn store_v(x: float32x4_t, p: *mut E::V, _n: usize) {
        E::store_v(x, p)
    }

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
                // Whole vectors only: a phase's last, partial vector first, its lanes past the
                // phase landing on the next phase's first (written after, by the first vector)
                // or the next row's (written after too; past the last row, the split's SLACK).
                let last = (half - 1) / LANES * LANES;
                for i0 in std::iter::once(last).chain((0..last).step_by(LANES)) {
                    let at = padded.as_ptr().add(m * i0);
                    let phases = if m == 4 {
                        let p = vld4q_f32(at);
                        [p.0, p.1, p.2, p.3]
                    } else {
                        let p = vld2q_f32(at);
                        [p.0, p.1, p.0, p.1]
                    };
                    for (r, phase) in phases[..m].iter().enumerate() {
                        vst1q_f32(dst.add(r * half + i0), *phase);
                    }
                }
            }
        }
    }

    unsafe fn transform_input(
        conv: &WinogradConv<E>,
        buf: Buffers<E>,
        b: &Block<E::V>,
        channels: Range<usize>,
    ) {
        if conv.m == 4 {
            transform_input::<float32x4_t, 6, E>(conv, buf, b, channels, |d| bt6(d))
        } else {
            transform_input::<float32x4_t, 4, E>(conv, buf, b, channels, |d| bt4(d))
        }
    }

    unsafe fn multiply(conv: &WinogradConv<E>, b: &Block<E::V>, pairs: Range<usize>) {
        E::multiply(conv, b, pairs)
    }

    unsafe fn transform_output(
        conv: &WinogradConv<E>,
        buf: Buffers<E>,
        b: &Block<E::V>,
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

/// A tile of the products: `(u, v, stride, c, out)` (see [`tile`]).
type TileFn<V> = unsafe fn(*const V, *const V, usize, usize, *mut f32);

/// [`WinogradKernel::multiply`] by the tiles `[3 x 1, 2 x 1, 1 x 3, 1 x 2, 1 x 1]` (vectors of
/// tiles x panels of `R` output channels).
///
/// # Safety
/// As there; the CPU runs the tiles' instructions.
unsafe fn multiply_by<E: NeonElem>(
    conv: &WinogradConv<E>,
    b: &Block<E::V>,
    pairs: Range<usize>,
    [t31, t21, t13, t12, t11]: [TileFn<E::V>; 5],
) {
    let (stride, c) = (b.stride, conv.c);
    multiply(conv, b, pairs, |nv, g, u, v, out| match (nv, g) {
        // Panel j of a group: weights `j * c * R` on, products `j * R` rows on.
        (3 | 2, _) => {
            for j in 0..g {
                let t = if nv == 3 { t31 } else { t21 };
                t(u.add(j * c * R), v, stride, c, out.add(j * R * stride));
            }
        }
        (_, 3) => t13(u, v, stride, c, out),
        (_, 2) => t12(u, v, stride, c, out),
        _ => t11(u, v, stride, c, out),
    })
}

/// [`WinogradKernel::multiply`] on f32 lanes ([`tile`]).
///
/// # Safety
/// As there.
unsafe fn multiply_f32(conv: &WinogradConv<f32>, b: &Block, pairs: Range<usize>) {
    multiply_by(conv, b, pairs, [tile_8x12, tile::<2, 1>, tile_24x4, tile::<1, 2>, tile::<1, 1>])
}

/// [`tile`] of 3 vectors of tiles by one panel: the 8 x 12 tile of
/// `crate::kernels::aarch64::pointwise` (per input channel one `ld1` of the 12 tiles and 24
/// `fmla`, per two channels one `ld1` of their 16 weights: 25 instructions a channel, where the
/// compiler's loads of one channel at a time took 28-29), its accumulators from 0.
unsafe fn tile_8x12(u: *const f32, v: *const f32, stride: usize, c: usize, out: *mut f32) {
    let mut acc = [[vdupq_n_f32(0.0); 3]; R];
    <f32 as PointwiseElem>::products(&mut acc, v, 4 * stride, u, c);
    for (j, row) in acc.iter().enumerate() {
        for (p, a) in row.iter().enumerate() {
            vst1q_f32(out.add(j * stride + p * LANES), *a);
        }
    }
}

/// [`WinogradKernel::multiply`] on f16 lanes ([`tile_f16`]: 8 tiles a vector).
///
/// # Safety
/// As there; the CPU has FEAT_FP16 (the f16 plans that wire this op in ask for it).
unsafe fn multiply_f16(conv: &WinogradConv<f16>, b: &Block<f16>, pairs: Range<usize>) {
    if b.rows.len() * conv.tw() <= FEW {
        // A block of 4 tiles or fewer (7x7 layers): output channels in the lanes.
        let (stride, c) = (b.stride, conv.c);
        let few: [TileFn<f16>; FEW_PANELS] = [
            tile_f16_few::<1>,
            tile_f16_few::<2>,
            tile_f16_few::<3>,
            tile_f16_few::<4>,
            tile_f16_few::<5>,
            tile_f16_few::<6>,
        ];
        return multiply_in_groups(conv, b, pairs, FEW_PANELS, |_, g, u, v, out| {
            few[g - 1](u, v, stride, c, out)
        });
    }
    let tiles: [TileFn<f16>; 5] =
        [tile_f16_8x24, tile_f16::<2, 1>, tile_f16::<1, 3>, tile_f16::<1, 2>, tile_f16::<1, 1>];
    multiply_by(conv, b, pairs, tiles)
}

/// The 8 f16 values at `*p` (as bits), `*p` then moved on past them: one post-indexed `ldr`
/// (the compiler keeps one pointer for several panels and adds their distance instead).
#[inline(always)]
unsafe fn load_next(p: &mut *const f16) -> uint16x8_t {
    let v;
    std::arch::asm!("ldr {v:q}, [{p}], #16", v = out(vreg) v, p = inout(reg) *p,
        options(nostack, readonly, preserves_flags));
    v
}

/// Tiles of the blocks that [`tile_f16_few`] takes (a block's tiles in one half register).
const FEW: usize = 4;
/// Panels of `R` output channels a [`tile_f16_few`] takes at most: 24 accumulators.
const FEW_PANELS: usize = 6;

/// [`tile_f16`] for blocks of [`FEW`] tiles or fewer (7x7 layers: 4 tiles of 4x4), where 8
/// tiles a register would leave half the lanes idle: the lanes run over the `R` output
/// channels of a panel instead (the weights' register as it is in `u`), each tile's
/// transformed input taken from its lane of `v`'s 4 values (`fmla` by element), for `G`
/// panels: `4 * G` accumulators. Each [`F16_CHUNK`] channels' sums are widened and added to
/// f32 sums (tile by channel, on the stack), written to `out` transposed at the end.
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16_few<const G: usize>(
    u: *const f16,
    v: *const f16,
    stride: usize,
    c: usize,
    out: *mut f32,
) {
    let zero = vreinterpretq_f16_u16(vdupq_n_u16(0));
    // sums[g][t]: panel g's R channels of tile t.
    let mut sums = [[[0f32; R]; FEW]; G];
    let mut c0 = 0;
    while c0 < c {
        let n = F16_CHUNK.min(c - c0);
        let mut acc = [[zero; FEW]; G];
        // One pointer a panel, each moved on by a channel's R weights (post-indexed loads).
        let mut ws: [*const f16; G] = std::array::from_fn(|g| u.add((g * c + c0) * R));
        let mut xp = v.add(c0 * stride);
        for _ in 0..n {
            let x = vreinterpret_f16_u16(vld1_u16(xp as *const u16));
            xp = xp.add(stride);
            for (acc, w) in acc.iter_mut().zip(ws.iter_mut()) {
                let wv = vreinterpretq_f16_u16(load_next(w));
                acc[0] = vfmaq_lane_f16::<0>(acc[0], wv, x);
                acc[1] = vfmaq_lane_f16::<1>(acc[1], wv, x);
                acc[2] = vfmaq_lane_f16::<2>(acc[2], wv, x);
                acc[3] = vfmaq_lane_f16::<3>(acc[3], wv, x);
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (s, a) in sums.iter_mut().zip(acc) {
                let p = s.as_mut_ptr();
                vst1q_f32(p, vaddq_f32(vld1q_f32(p), vcvt_f32_f16(vget_low_f16(*a))));
                vst1q_f32(p.add(LANES), vaddq_f32(vld1q_f32(p.add(LANES)), vcvt_high_f32_f16(*a)));
            }
        }
        c0 += n;
    }
    for (g, sums) in sums.iter().enumerate() {
        for j in 0..R {
            let tiles: [f32; FEW] = std::array::from_fn(|t| sums[t][j]);
            vst1q_f32(out.add((g * R + j) * stride), vld1q_f32(tiles.as_ptr()));
        }
    }
}

/// Input channels whose products [`tile_f16`] sums in f16 lanes before adding them to the f32
/// sums. The f16 sums' rounding grows with the channels they cover: summed in f16 over all of
/// them, ResNet-18's 512-channel layers lose 1.5% RMS each (a float64 simulation of the
/// device's arithmetic); by 32, about 0.3-0.4%. A chunk costs 6 instructions per accumulator
/// against 32 `fmla`.
const F16_CHUNK: usize = 32;

/// [`tile`] on f16 lanes: `G * R` output channels (`u`: per input channel, the `R` f16
/// weights in one register, each used from its lane) by `8 * NV` tiles (`v`: per input
/// channel, a row of `stride` f16 values), over the `c` input channels, into `out` (f32, `G *
/// R` rows of `stride`): `fmla` on 8 f16 lanes, each [`F16_CHUNK`] channels' sums widened
/// (`fcvtl`, `fcvtl2`) and added to the f32 ones in `out`. `NV * G * 8` accumulators: at most
/// 24 (with the operands, 28 of the 32 registers; the weights in v0-v15, which `fmla` by
/// element on halves asks).
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16<const NV: usize, const G: usize>(
    u: *const f16,
    v: *const f16,
    stride: usize,
    c: usize,
    out: *mut f32,
) {
    const L: usize = 2 * LANES;
    let zero = vreinterpretq_f16_u16(vdupq_n_u16(0));
    let load = |p: *const f16| vreinterpretq_f16_u16(vld1q_u16(p as *const u16));
    // One input channel: its NV vectors of tiles times its G * 8 weights.
    let step = |acc: &mut [[[float16x8_t; NV]; R]; G], w: *const f16, x: *const f16| {
        let xs: [float16x8_t; NV] = std::array::from_fn(|p| load(x.add(p * L)));
        for (g, acc) in acc.iter_mut().enumerate() {
            let wv = load(w.add(g * c * R));
            for (p, &x) in xs.iter().enumerate() {
                acc[0][p] = vfmaq_laneq_f16::<0>(acc[0][p], x, wv);
                acc[1][p] = vfmaq_laneq_f16::<1>(acc[1][p], x, wv);
                acc[2][p] = vfmaq_laneq_f16::<2>(acc[2][p], x, wv);
                acc[3][p] = vfmaq_laneq_f16::<3>(acc[3][p], x, wv);
                acc[4][p] = vfmaq_laneq_f16::<4>(acc[4][p], x, wv);
                acc[5][p] = vfmaq_laneq_f16::<5>(acc[5][p], x, wv);
                acc[6][p] = vfmaq_laneq_f16::<6>(acc[6][p], x, wv);
                acc[7][p] = vfmaq_laneq_f16::<7>(acc[7][p], x, wv);
            }
        }
    };
    let mut c0 = 0;
    while c0 < c {
        let n = F16_CHUNK.min(c - c0);
        let mut acc = [[[zero; NV]; R]; G];
        // Two channels a trip, as in `tile`.
        let (mut w, mut x) = (u.add(c0 * R), v.add(c0 * stride));
        for _ in 0..n / 2 {
            step(&mut acc, w, x);
            step(&mut acc, w.add(R), x.add(stride));
            w = w.add(2 * R);
            x = x.add(2 * stride);
        }
        if n % 2 == 1 {
            step(&mut acc, w, x);
        }
        for (g, acc) in acc.iter().enumerate() {
            for (j, row) in acc.iter().enumerate() {
                for (p, a) in row.iter().enumerate() {
                    store_widened(out.add((g * R + j) * stride + p * L), *a, c0 > 0);
                }
            }
        }
        c0 += n;
    }
}

/// One input channel of [`tile_24x4`]: its 4 tiles from `$p` (then `$p` moved on by `$inc`),
/// the 8 weights of each of the 3 panels from `{w0}`, `{w1}`, `{w2}`, 24 `fmla` by element.
macro_rules! step_24x4 {
    ($p:literal, $inc:literal) => {
        concat!(
            "ld1 {{v0.4s}}, [", $p, "], ", $inc, "\n",
            "ldp q3, q4, [{w0}], #32\n",
            "ldp q5, q6, [{w1}], #32\n",
            "ldp q7, q8, [{w2}], #32\n",
            by_lanes_f32!("a0", "v3", "v4"),
            by_lanes_f32!("a1", "v5", "v6"),
            by_lanes_f32!("a2", "v7", "v8"),
        )
    };
}

/// [`tile`] of one vector of tiles by 3 panels (blocks of 4 tiles: the 7x7 layers', the
/// 14x14 layers' last 4), in assembly: per input channel one `ld1` of the 4 tiles, one `ldp`
/// of each panel's 8 weights, 24 `fmla` (28 instructions; the compiler's loads and pointer
/// steps took 30-31).
unsafe fn tile_24x4(u: *const f32, v: *const f32, stride: usize, c: usize, out: *mut f32) {
    let mut a = [[vdupq_n_f32(0.0); R]; 3];
    std::arch::asm!(
        channel_loop!(step_24x4),
        x = inout(reg) v => _,
        s = in(reg) 4 * stride,
        w0 = inout(reg) u => _,
        w1 = inout(reg) u.add(c * R) => _,
        w2 = inout(reg) u.add(2 * c * R) => _,
        n = inout(reg) c => _,
        a00 = inout(vreg) a[0][0], a01 = inout(vreg) a[0][1], a02 = inout(vreg) a[0][2], a03 = inout(vreg) a[0][3],
        a04 = inout(vreg) a[0][4], a05 = inout(vreg) a[0][5], a06 = inout(vreg) a[0][6], a07 = inout(vreg) a[0][7],
        a10 = inout(vreg) a[1][0], a11 = inout(vreg) a[1][1], a12 = inout(vreg) a[1][2], a13 = inout(vreg) a[1][3],
        a14 = inout(vreg) a[1][4], a15 = inout(vreg) a[1][5], a16 = inout(vreg) a[1][6], a17 = inout(vreg) a[1][7],
        a20 = inout(vreg) a[2][0], a21 = inout(vreg) a[2][1], a22 = inout(vreg) a[2][2], a23 = inout(vreg) a[2][3],
        a24 = inout(vreg) a[2][4], a25 = inout(vreg) a[2][5], a26 = inout(vreg) a[2][6], a27 = inout(vreg) a[2][7],
        out("v0") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _, out("v8") _,
        options(nostack, readonly),
    );
    for (g, panel) in a.iter().enumerate() {
        for (j, a) in panel.iter().enumerate() {
            vst1q_f32(out.add((g * R + j) * stride), *a);
        }
    }
}

/// Stores the 8 f16 sums `a` as f32 at `o`, added to the f32 ones there if `add`.
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn store_widened(o: *mut f32, a: float16x8_t, add: bool) {
    let (mut lo, mut hi) = (vcvt_f32_f16(vget_low_f16(a)), vcvt_high_f32_f16(a));
    if add {
        lo = vaddq_f32(lo, vld1q_f32(o));
        hi = vaddq_f32(hi, vld1q_f32(o.add(LANES)));
    }
    vst1q_f32(o, lo);
    vst1q_f32(o.add(LANES), hi);
}

/// [`tile_f16`] of 3 vectors of tiles by one panel: per [`F16_CHUNK`] input channels the
/// 8 x 24 f16 tile of `crate::kernels::aarch64::pointwise` (per channel one `ld1` of the 24
/// tiles and 24 `fmla`, per two channels one `ldp` of their 16 weights), from 0, its sums then
/// widened and added to the f32 ones in `out`.
#[target_feature(enable = "neon,fp16")]
unsafe fn tile_f16_8x24(u: *const f16, v: *const f16, stride: usize, c: usize, out: *mut f32) {
    const L: usize = 2 * LANES;
    let mut c0 = 0;
    while c0 < c {
        let n = F16_CHUNK.min(c - c0);
        let mut acc = [[vdupq_n_f32(0.0); 3]; R];
        <f16 as PointwiseElem>::products(&mut acc, v.add(c0 * stride), 2 * stride, u.add(c0 * R), n);
        for (j, row) in acc.iter().enumerate() {
            for (p, a) in row.iter().enumerate() {
                store_widened(out.add(j * stride + p * L), vreinterpretq_f16_f32(*a), c0 > 0);
            }
        }
        c0 += n;
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
    /// transforms, f16 products summed in f32 by 32 channels). The transformed inputs and
    /// weights rounded to f16 (2^-11 = 4.9e-4 of their magnitude) and summed in f16 lanes, then
    /// through F(4x4)'s output transform (coefficients up to 8 a side): measured worst 2.6e-2
    /// of the sum of magnitudes for F(4x4) (16 channels, 28x28), 9.3e-4 for F(2x2). Whole
    /// networks: `tests/parity.rs` (ResNet-8 on 512 inputs: top-1 agreement with fp32 99.6%,
    /// worst relative logit error 8.9e-3).
    #[test]
    fn f16_tensors_equal_direct_convolution() {
        // The f16 products run FEAT_FP16 instructions (the A72 has none: its plans are f32).
        if !crate::cpu::Cpu::get().fp16 {
            eprintln!("no fp16 arithmetic here: the f16 Winograd op is never planned");
            return;
        }
        crate::kernels::frame::winograd::check_against_direct_convolution::<float32x4_t, f16>(4e-2);
    }
}
