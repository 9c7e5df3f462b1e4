//! The AVX-512 F loops of `crate::kernels::frame::winograd::WinogradConv` (Winograd F(2x2, 3x3)
//! and F(4x4, 3x3) for fp32 3x3 stride-1 convs; the op, its weights, geometry, blocks and
//! threads are the frame's, shared with aarch64): [`WinogradConv`] is that op on `__m512`.
//!
//! Lanes run over tiles everywhere: the transforms do one vector operation for 16 tiles, the
//! matrix product's tile is 8 output channels (broadcast weights) by 16, 32 or 48 tiles (one to
//! three registers). Loads and stores at the edges are masked (`SLACK` 0).
//!
//! `crate::kernels::x86_64::fp32::prepare` swaps it in for tract's 3x3 stride-1 padding-1 float
//! `Conv`s, before tract's optimizer. The output transform adds the bias, then (taken over from
//! the ops that followed the conv) the residual and the ReLU, in registers.

// The loops over the transforms index several arrays at once, like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::kernels::frame::winograd::{
    at4, at6, bt4, bt6, impl_lanes, multiply, transform_input, transform_output, Block, Buffers,
    WinogradKernel, R,
};
use crate::kernels::x86_64::avx512::{lane_mask, LANES};
use std::arch::x86_64::*;
use std::ops::Range;

/// The Winograd conv op on AVX-512 F: the frame's, with the loops of this module on 16-lane
/// registers.
pub type WinogradConv = crate::kernels::frame::winograd::WinogradConv<__m512>;

impl WinogradKernel for __m512 {
    const KERNEL: &'static str = "winograd_3x3_avx512 (device::kernels::x86_64::winograd)";
    const SLACK: usize = 0;
    // F(4x4) needs 36 products per 16 outputs, F(2x2) 64, but its tiles are 4 times fewer:
    // on ResNet-18 (Zen 5) 56x56 layers took 0.52-0.56 ms in F(4x4) against 0.65-0.70,
    // while 28x28 (49 tiles: too few for the 3-register products) took 0.63 against 0.54
    // and 14x14 the same either way. Hence F(4x4) from 128 tiles on.
    const MIN_TILES4: usize = 128;
    const MIN_BLOCK_TILES: usize = LANES;
    const GROUP: usize = 1;
    type V = f32;
    const V_LANES: usize = LANES;

    fn weight(u: f64) -> f32 {
        u as f32
    }

    #[inline(always)]
    unsafe fn store_v(x: __m512, p: *mut f32, n: usize) {
        crate::kernels::frame::winograd::Lanes::store(x, p, n)
    }

    unsafe fn split(conv: &WinogradConv, buf: Buffers, channels: Range<usize>) {
        conv.split(buf, channels)
    }

    unsafe fn transform_input(
        conv: &WinogradConv,
        buf: Buffers,
        b: &Block,
        channels: Range<usize>,
    ) {
        conv.transform_input(buf, b, channels)
    }

    unsafe fn multiply(conv: &WinogradConv, b: &Block, pairs: Range<usize>) {
        conv.multiply(b, pairs)
    }

    unsafe fn transform_output(conv: &WinogradConv, buf: Buffers, b: &Block, outs: Range<usize>) {
        conv.transform_output(buf, b, outs)
    }
}

impl WinogradConv {
    /// Splits the rows of channels `channels` of the padded input by column phase (`x % m`):
    /// even and odd columns for F(2x2), four phases for F(4x4).
    #[target_feature(enable = "avx512f")]
    unsafe fn split(&self, buf: Buffers, channels: Range<usize>) {
        if self.m == 4 {
            return self.split4(buf, channels);
        }
        let (half, rows) = (self.half(), self.padded_rows());
        let (h, w) = (self.h as isize, self.w as isize);
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for ch in channels {
            for yp in 0..rows {
                let dst = buf.split.add((ch * rows + yp) * self.row_len());
                let y = yp as isize - 1;
                if y < 0 || y >= h {
                    std::ptr::write_bytes(dst, 0, self.row_len());
                    continue;
                }
                let src = buf.x.add((ch * self.h + y as usize) * self.w);
                for i0 in (0..half).step_by(LANES) {
                    // Padded column 2i is input column 2i - 1.
                    let start = 2 * i0 as isize - 1;
                    let a = _mm512_maskz_loadu_ps(range_mask(start, w), src.wrapping_offset(start));
                    let b = _mm512_maskz_loadu_ps(
                        range_mask(start + 16, w),
                        src.wrapping_offset(start + 16),
                    );
                    let m = lane_mask(half - i0);
                    _mm512_mask_storeu_ps(dst.add(i0), m, _mm512_permutex2var_ps(a, even, b));
                    _mm512_mask_storeu_ps(dst.add(half + i0), m, _mm512_permutex2var_ps(a, odd, b));
                }
            }
        }
    }

    /// `B^T d B` on input channels `channels` of the tiles of block `b`, into `b.v`
    /// (`[xi][c][stride]`): the frame's loops in 16-lane vectors, masked at the row ends.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transform_input(&self, buf: Buffers, b: &Block, channels: Range<usize>) {
        if self.m == 4 {
            transform_input::<__m512, 6, f32>(self, buf, b, channels, |d| bt6(d))
        } else {
            transform_input::<__m512, 4, f32>(self, buf, b, channels, |d| bt4(d))
        }
    }

    /// The products `m[xi] = u[xi] . v[xi]` (`[k][stride]`) of block `b`, for the pairs
    /// `xi * k / R + kb` (transformed value, block of `R` output channels) in `pairs`: the
    /// frame's loops, tiles of 16, 32 or 48 tiles.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn multiply(&self, b: &Block, pairs: Range<usize>) {
        let (stride, c) = (b.stride, self.c);
        multiply(self, b, pairs, |nv, _, u, v, out| match nv {
            3 => tile::<3>(u, v, stride, c, out),
            2 => tile::<2>(u, v, stride, c, out),
            _ => tile::<1>(u, v, stride, c, out),
        })
    }

    /// Stores `v` (biased outputs of one channel plane) at `plane + at`, the lanes of `mask`,
    /// after the epilogue: plus the residual (`skip`: its plane), then max 0.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store(
        &self,
        v: __m512,
        plane: *mut f32,
        skip: Option<*const f32>,
        at: usize,
        mask: __mmask16,
    ) {
        let mut v = v;
        if let Some(r) = skip {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.add(at)));
        }
        if self.epilogue.relu {
            // max(v, 0) is 0 for a NaN v, like f32::max (tract's `Max`).
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(plane.add(at), mask, v);
    }

    /// `A^T m A` plus the bias (plus the residual) (max 0) on output channels `outs` of the
    /// tiles of block `b`, into the output: the frame's loops, each output row of 16 tiles
    /// interleaved into 32 (F(2x2)) or 64 (F(4x4)) consecutive outputs.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transform_output(&self, buf: Buffers, b: &Block, outs: Range<usize>) {
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        if self.m == 2 {
            let emit = |y: [__m512; 2], plane, skip, at, valid: usize| {
                self.store(
                    _mm512_permutex2var_ps(y[0], lo, y[1]),
                    plane,
                    skip,
                    at,
                    lane_mask(valid),
                );
                if valid > LANES {
                    let mask = lane_mask(valid - LANES);
                    self.store(
                        _mm512_permutex2var_ps(y[0], hi, y[1]),
                        plane,
                        skip,
                        at + LANES,
                        mask,
                    );
                }
            };
            return transform_output::<__m512, 4, 2, f32>(self, buf, b, outs, |m| at4(m), emit);
        }
        // Pairs of columns (64-bit units) of two interleaved registers.
        let lo2 = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
        let hi2 = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
        let emit = |y: [__m512; 4], plane, skip, at, valid: usize| {
            let (e01, f01) = (
                _mm512_permutex2var_ps(y[0], lo, y[1]),
                _mm512_permutex2var_ps(y[0], hi, y[1]),
            );
            let (e23, f23) = (
                _mm512_permutex2var_ps(y[2], lo, y[3]),
                _mm512_permutex2var_ps(y[2], hi, y[3]),
            );
            let pd = |x: __m512| _mm512_castps_pd(x);
            let ps = |x: __m512d| _mm512_castpd_ps(x);
            let chunks = [
                ps(_mm512_permutex2var_pd(pd(e01), lo2, pd(e23))),
                ps(_mm512_permutex2var_pd(pd(e01), hi2, pd(e23))),
                ps(_mm512_permutex2var_pd(pd(f01), lo2, pd(f23))),
                ps(_mm512_permutex2var_pd(pd(f01), hi2, pd(f23))),
            ];
            for (q, chunk) in chunks.into_iter().enumerate() {
                let start = q * LANES;
                if start >= valid {
                    break;
                }
                self.store(chunk, plane, skip, at + start, lane_mask(valid - start));
            }
        };
        transform_output::<__m512, 6, 4, f32>(self, buf, b, outs, |m| at6(m), emit)
    }
}

impl_lanes!(__m512, LANES, _mm512_add_ps, _mm512_sub_ps, _mm512_set1_ps,
    mul_add(x, k, b) _mm512_fmadd_ps(_mm512_set1_ps(k), x, b),
    load(p, n) _mm512_maskz_loadu_ps(lane_mask(n), p),
    store(v, p, n) _mm512_mask_storeu_ps(p, lane_mask(n), v));

impl WinogradConv {
    /// [`WinogradConv::split`] for F(4x4): phase `r` of padded row `yp` holds its columns
    /// `4i + r`, from 64 columns (four registers) at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn split4(&self, buf: Buffers, channels: Range<usize>) {
        let (half, rows, row_len) = (self.half(), self.padded_rows(), self.row_len());
        let (h, w) = (self.h as isize, self.w as isize);
        // Lanes 0..8: elements 4l + r of two registers.
        let idx: [__m512i; 4] = std::array::from_fn(|r| {
            let r = r as i32;
            _mm512_setr_epi32(
                r,
                4 + r,
                8 + r,
                12 + r,
                16 + r,
                20 + r,
                24 + r,
                28 + r,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            )
        });
        for ch in channels {
            for yp in 0..rows {
                let dst = buf.split.add((ch * rows + yp) * row_len);
                let y = yp as isize - 1;
                if y < 0 || y >= h {
                    std::ptr::write_bytes(dst, 0, row_len);
                    continue;
                }
                let src = buf.x.add((ch * self.h + y as usize) * self.w);
                for i0 in (0..half).step_by(LANES) {
                    // Padded column 4i is input column 4i - 1.
                    let start = 4 * i0 as isize - 1;
                    let load = |k: isize| {
                        let at = start + 16 * k;
                        _mm512_maskz_loadu_ps(range_mask(at, w), src.wrapping_offset(at))
                    };
                    let (a, b, c, d) = (load(0), load(1), load(2), load(3));
                    let m = lane_mask(half - i0);
                    for (r, idx) in idx.iter().enumerate() {
                        let lo = _mm512_permutex2var_ps(a, *idx, b);
                        let hi = _mm512_permutex2var_ps(c, *idx, d);
                        let v = _mm512_shuffle_f32x4::<0x44>(lo, hi);
                        _mm512_mask_storeu_ps(dst.add(r * half + i0), m, v);
                    }
                }
            }
        }
    }
}

/// The mask of the lanes `l` with `start + l` in `0..len`.
#[inline]
fn range_mask(start: isize, len: isize) -> __mmask16 {
    let lo = (-start).clamp(0, 16) as u32;
    let hi = (len - start).clamp(0, 16) as u32;
    let upto = |n: u32| if n >= 16 { !0u16 } else { (1u16 << n) - 1 };
    upto(hi) & !upto(lo)
}

/// One tile of a product: `R` output channels (`u`: per input channel, `R` weights) by
/// `16 * NV` tiles (`v`: per input channel, a row of `stride` values), over `c` input channels,
/// into `out` (`R` rows of `stride`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const NV: usize>(
    u: *const f32,
    v: *const f32,
    stride: usize,
    c: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    // The weights of the next products but one: `u` is one stream through all the products
    // of a layer, too large for the caches on the deep layers (16 MiB for 512 channels), and
    // the hardware prefetcher does not run that far ahead. ResNet-18, x86 (Zen 5), one thread:
    // 16.5 ms without, 14.1-14.2 one product ahead, 13.9 two ahead (and four).
    let ahead = 2 * c * R;
    for i in 0..c {
        let mut x = [_mm512_setzero_ps(); NV];
        for (p, x) in x.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(v.add(i * stride + p * LANES));
        }
        let w = u.add(i * R);
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(ahead) as *const i8);
        for (j, acc) in acc.iter_mut().enumerate() {
            let wj = _mm512_set1_ps(*w.add(j));
            for (a, x) in acc.iter_mut().zip(&x) {
                *a = _mm512_fmadd_ps(*x, wj, *a);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        for (p, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(j * stride + p * LANES), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame's test (`check_against_direct_convolution`) on these loops.
    #[test]
    fn equals_direct_convolution() {
        if !crate::cpu::Cpu::get().avx512f {
            eprintln!("skipped: this CPU has no AVX-512 (the plan keeps tract's convs)");
            return;
        }
        crate::kernels::frame::winograd::check_against_direct_convolution::<__m512, f32>(1e-5);
    }
}
