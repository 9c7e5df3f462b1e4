//! fp32 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3),
//! on x86 CPUs with AVX-512 F.
//!
//! Most of a ResNet's multiply-adds are 3x3 stride-1 convs (83% of ResNet-18's). tract runs them
//! as im2col + matrix product: 36 multiply-adds per output pixel and input channel.
//! [`WinogradConv`] (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
//! computes each `m x m` block of outputs from an `(m + 2) x (m + 2)` block of inputs: the input
//! block goes through `B^T d B`, is multiplied point by point with the weights transformed once
//! at load (`G g G^T`, in float64), summed over the input channels - `(m + 2)^2` independent
//! matrix products, `[K x C] . [C x tiles]` - and comes back through `A^T m A`. F(2x2): 16
//! products per 4 outputs (2.25x fewer than 36), transforms of additions only; F(4x4): 36 per
//! 16 (4x fewer), transforms with small constants and about 10x the rounding error, still
//! 2e-6 of the sum of magnitudes (the unit test bounds both against a float64 reference; whole
//! networks stay within the parity tests' 1e-4). F(4x4) runs on the large layers (56x56 in
//! ResNet-18), where there are enough tiles to fill the matrix products.
//!
//! Layout: the input (one image, NCHW) is first split per row into its column phases (`x %
//! m`, zero padding included), so that each column of the input blocks of 16 neighbouring tiles
//! is one plain vector load. Lanes run over tiles everywhere: the transforms do one vector
//! operation for 16 tiles, the matrix product's tile is 8 output channels (broadcast weights)
//! by 16, 32 or 48 tiles (one to three registers). The work goes by blocks of tile rows sized
//! so that a block's transformed inputs and products stay in the L2 cache, and the blocks are
//! split over `--threads`.
//!
//! `crate::kernels::x86_64::fp32::prepare` swaps it in for tract's 3x3 stride-1 padding-1 float `Conv`s, before
//! tract's optimizer. The output transform adds the bias, then (taken over from the ops that
//! followed the conv) the residual and the ReLU, in registers.

// The loops over the transforms index several arrays at once, like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::kernels::x86_64::avx512::{lane_mask, shape, Epilogue, LANES};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile of the matrix product.
const R: usize = 8;

/// A float 3x3 stride-1 padding-1 conv on one `[1, C, H, W]` (or `[C, H, W]`) image (see the
/// module doc).
#[derive(Clone, PartialEq)]
pub struct WinogradConv {
    /// Input channels.
    c: usize,
    /// Output channels (a multiple of `R`).
    k: usize,
    /// Height and width of the input and the output.
    h: usize,
    w: usize,
    /// Outputs per tile side: F(2x2, 3x3) or F(4x4, 3x3).
    m: usize,
    /// `G g G^T` per output channel block: `[xi][k / R][c][R]` (`xi`: the `(m + 2)^2`
    /// transformed values).
    u: Arc<Vec<f32>>,
    bias: Vec<f32>,
    /// Residual (the op's second input, of the output's shape) and ReLU after the bias.
    epilogue: Epilogue,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`: tract drops the batch axis after the
    /// 1x1 convs it turns into matrix products, as in ResNet-50's bottlenecks).
    pub(crate) batched: bool,
}

impl Eq for WinogradConv {}

impl std::fmt::Debug for WinogradConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WinogradConv {{ c: {}, k: {}, h: {}, w: {}, {:?} }}",
            self.c, self.k, self.h, self.w, self.epilogue
        )
    }
}

impl Op for WinogradConv {
    fn name(&self) -> StaticName {
        "WinogradConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![
            format!(
                "F({0}x{0},3x3) {1}->{2} channels at {3}x{4}: {5} tiles, kernel [{6}]",
                self.m,
                self.c,
                self.k,
                self.h,
                self.w,
                self.th() * self.tw(),
                Self::KERNEL
            ),
            format!("{:?}", self.epilogue),
        ])
    }

    op_as_typed_op!();
}

/// Where one eval reads and writes: raw pointers shared by the threads, each of which writes
/// its own rows of `out` (or its own channels of `split`).
#[derive(Clone, Copy)]
struct Buffers {
    x: *const f32,
    split: *mut f32,
    out: *mut f32,
    residual: Option<*const f32>,
}

/// One block of tile rows and its scratch: the transformed inputs `v` (`[xi][c][stride]`) and
/// the products `m` (`[xi][k][stride]`), `stride` >= the block's tiles, a multiple of 16.
struct Block {
    rows: Range<usize>,
    v: *mut f32,
    m: *mut f32,
    stride: usize,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint parts.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}
unsafe impl Sync for Block {}

thread_local! {
    /// Per thread: the transformed inputs and the products of one block.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per calling thread: the split input.
    static SPLIT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl WinogradConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "winograd_3x3_avx512 (device::kernels::x86_64::winograd)";

    /// The conv with weights `kernel` (`[k][c][3][3]`, OIHW) and `bias` (`k` values) on
    /// `h x w` inputs, then `epilogue`; F(4x4, 3x3) on large inputs, F(2x2, 3x3) elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kernel: &[f32],
        bias: &[f32],
        c: usize,
        k: usize,
        h: usize,
        w: usize,
        epilogue: Epilogue,
    ) -> Self {
        // F(4x4) needs 36 products per 16 outputs, F(2x2) 64, but its tiles are 4 times fewer:
        // on ResNet-18 (Zen 5) 56x56 layers took 0.52-0.56 ms in F(4x4) against 0.65-0.70,
        // while 28x28 (49 tiles: too few for the 3-register products) took 0.63 against 0.54
        // and 14x14 the same either way. Hence F(4x4) from 128 tiles on.
        let tiles4 = h.div_ceil(4) * w.div_ceil(4);
        let m = if tiles4 >= 128 { 4 } else { 2 };
        Self::with_tile(kernel, bias, c, k, h, w, epilogue, m)
    }

    /// [`WinogradConv::new`] with `m x m` output tiles (2 or 4).
    #[allow(clippy::too_many_arguments)]
    pub fn with_tile(
        kernel: &[f32],
        bias: &[f32],
        c: usize,
        k: usize,
        h: usize,
        w: usize,
        epilogue: Epilogue,
        m: usize,
    ) -> Self {
        assert!(k.is_multiple_of(R) && kernel.len() == k * c * 9 && bias.len() == k);
        assert!(m == 2 || m == 4);
        let blocks = k / R;
        let alpha = m + 2;
        let mut u = vec![0f32; alpha * alpha * blocks * c * R];
        // G, in f64: F(2x2, 3x3) and F(4x4, 3x3) (points 0, 1, -1, 2, -2, infinity).
        let g: &[[f64; 3]] = if m == 2 {
            &[
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ]
        } else {
            &[
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ]
        };
        for o in 0..k {
            for i in 0..c {
                let f = &kernel[(o * c + i) * 9..][..9];
                // t = G f (alpha x 3), then t G^T (alpha x alpha).
                let t: Vec<[f64; 3]> = g
                    .iter()
                    .map(|ga| {
                        std::array::from_fn(|col| {
                            (0..3).map(|r| ga[r] * f64::from(f[r * 3 + col])).sum()
                        })
                    })
                    .collect();
                for a in 0..alpha {
                    for b in 0..alpha {
                        let v: f64 = (0..3).map(|col| t[a][col] * g[b][col]).sum();
                        let xi = alpha * a + b;
                        u[((xi * blocks + o / R) * c + i) * R + o % R] = v as f32;
                    }
                }
            }
        }
        WinogradConv {
            c,
            k,
            h,
            w,
            m,
            u: Arc::new(u),
            bias: bias.to_vec(),
            epilogue,
            batched: true,
        }
    }

    /// Transformed values per tile: `(m + 2)^2`.
    fn xi(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }

    /// Tile rows and columns (`m x m` outputs each).
    fn th(&self) -> usize {
        self.h.div_ceil(self.m)
    }

    fn tw(&self) -> usize {
        self.w.div_ceil(self.m)
    }

    /// Length of a split row phase (the padded row's columns `m * i + phase`).
    fn half(&self) -> usize {
        self.tw() + 1
    }

    /// Rows of the padded input: one above, the rows, at least one below.
    fn padded_rows(&self) -> usize {
        self.m * self.th() + 2
    }

    /// A split row: its `m` phases.
    fn row_len(&self) -> usize {
        self.m * self.half()
    }

    fn split_len(&self) -> usize {
        self.c * self.padded_rows() * self.row_len()
    }

    /// Tile rows per block: about `131072 / xi / (c + k)` tiles, so that the block's
    /// `xi x (c + k)` values per tile take 512 KiB.
    fn rows_per_block(&self) -> usize {
        let tiles = (131072 / self.xi() / (self.c + self.k)).max(LANES);
        (tiles / self.tw()).max(1)
    }

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

    /// The block of tile rows number `block`, its products in `scratch`.
    fn block(&self, block: usize, scratch: &mut (Vec<f32>, Vec<f32>)) -> Block {
        let per = self.rows_per_block();
        let stride = (per * self.tw()).div_ceil(LANES) * LANES;
        let (v, m) = scratch;
        grow(v, self.xi() * self.c * stride);
        grow(m, self.xi() * self.k * stride);
        Block {
            rows: block * per..((block + 1) * per).min(self.th()),
            v: v.as_mut_ptr(),
            m: m.as_mut_ptr(),
            stride,
        }
    }

    /// Runs the blocks of tile rows `blocks` on this thread.
    #[target_feature(enable = "avx512f")]
    unsafe fn run(&self, buf: Buffers, blocks: Range<usize>) {
        SCRATCH.with(|s| {
            let scratch = &mut *s.borrow_mut();
            for block in blocks {
                let b = self.block(block, scratch);
                self.transform_input(buf, &b, 0..self.c);
                self.multiply(&b, 0..self.xi() * self.k / R);
                self.transform_output(buf, &b, 0..self.k);
            }
        });
    }

    /// Runs the block of tile rows `block` with each step split over the threads (for layers
    /// with fewer blocks than threads).
    fn run_split(&self, buf: Buffers, block: usize) {
        SCRATCH.with(|s| {
            let b = self.block(block, &mut s.borrow_mut());
            // SAFETY: as in `eval`; each range writes its own channels of `b.v`, its own
            // products of `b.m`, its own output channels.
            crate::ops::parallel::for_ranges(self.c, |r| unsafe { self.transform_input(buf, &b, r) });
            let pairs = self.xi() * self.k / R;
            crate::ops::parallel::for_ranges(pairs, |r| unsafe { self.multiply(&b, r) });
            crate::ops::parallel::for_ranges(self.k, |r| unsafe { self.transform_output(buf, &b, r) });
        });
    }

    /// `B^T d B` on input channels `channels` of the tiles of block `b`, into `b.v`
    /// (`[xi][c][stride]`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transform_input(&self, buf: Buffers, b: &Block, channels: Range<usize>) {
        if self.m == 4 {
            return self.transform_input4(buf, b, channels);
        }
        let (half, prows, tw) = (self.half(), self.padded_rows(), self.tw());
        let (rows, v, stride) = (b.rows.clone(), b.v, b.stride);
        for ch in channels {
            let plane = buf.split.add(ch * prows * self.row_len());
            for ty in rows.clone() {
                for tx0 in (0..tw).step_by(LANES) {
                    let m = lane_mask(tw - tx0);
                    // h[r][j]: row r of the block times B.
                    let mut h = [[_mm512_setzero_ps(); 4]; 4];
                    for (r, hr) in h.iter_mut().enumerate() {
                        let e = plane.add((2 * ty + r) * 2 * half + tx0);
                        let o = e.add(half);
                        let d0 = _mm512_maskz_loadu_ps(m, e);
                        let d1 = _mm512_maskz_loadu_ps(m, o);
                        let d2 = _mm512_maskz_loadu_ps(m, e.add(1));
                        let d3 = _mm512_maskz_loadu_ps(m, o.add(1));
                        *hr = [
                            _mm512_sub_ps(d0, d2),
                            _mm512_add_ps(d1, d2),
                            _mm512_sub_ps(d2, d1),
                            _mm512_sub_ps(d1, d3),
                        ];
                    }
                    let t = (ty - rows.start) * tw + tx0;
                    for j in 0..4 {
                        let cols = [
                            _mm512_sub_ps(h[0][j], h[2][j]),
                            _mm512_add_ps(h[1][j], h[2][j]),
                            _mm512_sub_ps(h[2][j], h[1][j]),
                            _mm512_sub_ps(h[1][j], h[3][j]),
                        ];
                        for (i, value) in cols.into_iter().enumerate() {
                            let xi = 4 * i + j;
                            _mm512_mask_storeu_ps(v.add((xi * self.c + ch) * stride + t), m, value);
                        }
                    }
                }
            }
        }
    }

    /// The products `m[xi] = u[xi] . v[xi]` (`[k][stride]`) of block `b`, for the pairs
    /// `xi * k / R + kb` (transformed value, block of `R` output channels) in `pairs`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn multiply(&self, b: &Block, pairs: Range<usize>) {
        let blocks = self.k / R;
        let (v, m, stride) = (b.v, b.m, b.stride);
        let panels = (b.rows.len() * self.tw()).div_ceil(LANES);
        for pair in pairs {
            let (xi, kb) = (pair / blocks, pair % blocks);
            let vx = v.add(xi * self.c * stride);
            let u = self.u.as_ptr().add(pair * self.c * R);
            let out = m.add((xi * self.k + kb * R) * stride);
            let mut p = 0;
            while panels - p >= 3 {
                tile::<3>(u, vx.add(p * LANES), stride, self.c, out.add(p * LANES));
                p += 3;
            }
            match panels - p {
                2 => tile::<2>(u, vx.add(p * LANES), stride, self.c, out.add(p * LANES)),
                1 => tile::<1>(u, vx.add(p * LANES), stride, self.c, out.add(p * LANES)),
                _ => {}
            }
        }
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
    /// tiles of block `b`, into the output.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transform_output(&self, buf: Buffers, b: &Block, outs: Range<usize>) {
        if self.m == 4 {
            return self.transform_output4(buf, b, outs);
        }
        let (tw, rows, m, stride) = (self.tw(), b.rows.clone(), b.m as *const f32, b.stride);
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for o in outs {
            let bias = _mm512_set1_ps(self.bias[o]);
            let plane = buf.out.add(o * self.h * self.w);
            let skip = buf.residual.map(|r| r.add(o * self.h * self.w));
            let finish =
                |v: __m512, at: usize, mask: __mmask16| self.store(v, plane, skip, at, mask);
            for ty in rows.clone() {
                for tx0 in (0..tw).step_by(LANES) {
                    let mask = lane_mask(tw - tx0);
                    let t = (ty - rows.start) * tw + tx0;
                    let load = |xi: usize| {
                        _mm512_maskz_loadu_ps(mask, m.add((xi * self.k + o) * stride + t))
                    };
                    // s[a][j] = (A^T m)[a][j].
                    let mut s = [[_mm512_setzero_ps(); 4]; 2];
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (load(j), load(4 + j), load(8 + j), load(12 + j));
                        let m12 = _mm512_add_ps(m1, m2);
                        s[0][j] = _mm512_add_ps(m0, m12);
                        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                    }
                    for (a, sa) in s.iter().enumerate() {
                        let oy = 2 * ty + a;
                        if oy >= self.h {
                            break;
                        }
                        let s12 = _mm512_add_ps(sa[1], sa[2]);
                        let y0 = _mm512_add_ps(_mm512_add_ps(sa[0], s12), bias);
                        let y1 =
                            _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(sa[1], sa[2]), sa[3]), bias);
                        let ox = 2 * tx0;
                        let valid = self.w - ox;
                        let at = oy * self.w + ox;
                        finish(_mm512_permutex2var_ps(y0, lo, y1), at, lane_mask(valid));
                        if valid > LANES {
                            let mask = lane_mask(valid - LANES);
                            finish(_mm512_permutex2var_ps(y0, hi, y1), at + LANES, mask);
                        }
                    }
                }
            }
        }
    }
}

/// F(4x4, 3x3): `B^T` (6 x 6) on 6 vectors.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bt6(d: [__m512; 6]) -> [__m512; 6] {
    let s = |a, b| _mm512_sub_ps(a, b);
    let a = |a, b| _mm512_add_ps(a, b);
    let f = |k: f32, x, y| _mm512_fmadd_ps(_mm512_set1_ps(k), x, y);
    [
        f(4.0, d[0], f(-5.0, d[2], d[4])),
        f(-4.0, a(d[1], d[2]), a(d[3], d[4])),
        f(4.0, s(d[1], d[2]), s(d[4], d[3])),
        f(2.0, s(d[3], d[1]), s(d[4], d[2])),
        f(2.0, s(d[1], d[3]), s(d[4], d[2])),
        f(4.0, d[1], f(-5.0, d[3], d[5])),
    ]
}

/// F(4x4, 3x3): `A^T` (4 x 6) on 6 vectors.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn at6(m: [__m512; 6]) -> [__m512; 4] {
    let f = |k: f32, x, y| _mm512_fmadd_ps(_mm512_set1_ps(k), x, y);
    let (p12, m12) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
    let (p34, m34) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
    [
        _mm512_add_ps(_mm512_add_ps(m[0], p12), p34),
        f(2.0, m34, m12),
        f(4.0, p34, p12),
        _mm512_add_ps(f(8.0, m34, m12), m[5]),
    ]
}

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

    /// [`WinogradConv::transform_input`] for F(4x4): 6 x 6 blocks, tile `tx` at padded
    /// columns `4tx .. 4tx + 6`: phases 0-3 at `tx`, 0-1 at `tx + 1`.
    #[target_feature(enable = "avx512f")]
    unsafe fn transform_input4(&self, buf: Buffers, b: &Block, channels: Range<usize>) {
        let (half, prows, tw, row_len) =
            (self.half(), self.padded_rows(), self.tw(), self.row_len());
        let (rows, v, stride) = (b.rows.clone(), b.v, b.stride);
        for ch in channels {
            let plane = buf.split.add(ch * prows * row_len);
            for ty in rows.clone() {
                for tx0 in (0..tw).step_by(LANES) {
                    let m = lane_mask(tw - tx0);
                    // h[r]: row r of the block times B.
                    let mut h = [[_mm512_setzero_ps(); 6]; 6];
                    for (r, hr) in h.iter_mut().enumerate() {
                        let row = plane.add((4 * ty + r) * row_len + tx0);
                        let d: [__m512; 6] = std::array::from_fn(|a| {
                            _mm512_maskz_loadu_ps(m, row.add((a % 4) * half + a / 4))
                        });
                        *hr = bt6(d);
                    }
                    let t = (ty - rows.start) * tw + tx0;
                    for j in 0..6 {
                        let cols = bt6(std::array::from_fn(|r| h[r][j]));
                        for (i, value) in cols.into_iter().enumerate() {
                            let xi = 6 * i + j;
                            _mm512_mask_storeu_ps(v.add((xi * self.c + ch) * stride + t), m, value);
                        }
                    }
                }
            }
        }
    }

    /// [`WinogradConv::transform_output`] for F(4x4): 4 x 4 outputs per tile, the 4 columns
    /// of 16 tiles interleaved into 64 consecutive outputs.
    #[target_feature(enable = "avx512f")]
    unsafe fn transform_output4(&self, buf: Buffers, b: &Block, outs: Range<usize>) {
        let (tw, rows, m, stride) = (self.tw(), b.rows.clone(), b.m as *const f32, b.stride);
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        // Pairs of columns (64-bit units) of two interleaved registers.
        let lo2 = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
        let hi2 = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
        for o in outs {
            let bias = _mm512_set1_ps(self.bias[o]);
            let plane = buf.out.add(o * self.h * self.w);
            let skip = buf.residual.map(|r| r.add(o * self.h * self.w));
            let finish = |v: __m512, at: usize, mask: __mmask16| {
                self.store(_mm512_add_ps(v, bias), plane, skip, at, mask)
            };
            for ty in rows.clone() {
                for tx0 in (0..tw).step_by(LANES) {
                    let mask = lane_mask(tw - tx0);
                    let t = (ty - rows.start) * tw + tx0;
                    let load = |xi: usize| {
                        _mm512_maskz_loadu_ps(mask, m.add((xi * self.k + o) * stride + t))
                    };
                    // s[a][j] = (A^T m)[a][j].
                    let mut s = [[_mm512_setzero_ps(); 6]; 4];
                    for j in 0..6 {
                        let col = at6(std::array::from_fn(|i| load(6 * i + j)));
                        for a in 0..4 {
                            s[a][j] = col[a];
                        }
                    }
                    for (a, sa) in s.iter().enumerate() {
                        let oy = 4 * ty + a;
                        if oy >= self.h {
                            break;
                        }
                        let y = at6(*sa);
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
                        let ox = 4 * tx0;
                        let at = oy * self.w + ox;
                        for (q, chunk) in chunks.into_iter().enumerate() {
                            let start = ox + q * LANES;
                            if start >= self.w {
                                break;
                            }
                            finish(chunk, at + q * LANES, lane_mask(self.w - start));
                        }
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

impl EvalOp for WinogradConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == f32::datum_type()
                && x.shape() == &shape(self.batched, [self.c, self.h, self.w])[..],
            "WinogradConv: input {:?} {:?}, planned for [1, {}, {}, {}] f32",
            x.datum_type(),
            x.shape(),
            self.c,
            self.h,
            self.w
        );
        let shape = shape(self.batched, [self.k, self.h, self.w]);
        let residual = if self.epilogue.residual {
            let r = inputs.get(1).context("WinogradConv: no residual input")?;
            ensure!(
                r.datum_type() == f32::datum_type() && r.shape() == &shape[..],
                "WinogradConv: residual {:?} {:?}, planned for {shape:?} f32",
                r.datum_type(),
                r.shape()
            );
            Some(unsafe { r.as_ptr_unchecked::<f32>() })
        } else {
            None
        };
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        SPLIT.with(|split| {
            let split = &mut *split.borrow_mut();
            grow(split, self.split_len());
            let buf = Buffers {
                x: unsafe { x.as_ptr_unchecked::<f32>() },
                split: split.as_mut_ptr(),
                out: unsafe { out.as_ptr_mut_unchecked::<f32>() },
                residual,
            };
            // SAFETY: `prepare` checked the CPU, eval the sizes; threads write disjoint channels
            // of the split input, then disjoint tile rows of the output.
            crate::ops::parallel::for_ranges(self.c, |channels| unsafe { self.split(buf, channels) });
            let blocks = self.th().div_ceil(self.rows_per_block());
            if blocks >= crate::ops::parallel::threads() {
                crate::ops::parallel::for_ranges(blocks, |blocks| unsafe { self.run(buf, blocks) });
            } else {
                for block in 0..blocks {
                    self.run_split(buf, block);
                }
            }
        });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for WinogradConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(shape(
            self.batched,
            [self.k, self.h, self.w]
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_f32 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The op against a direct float64 convolution on sizes with odd heights and widths, more
    /// tiles than a vector and fewer, several blocks, with and without the fused residual and
    /// ReLU, and on two threads (same bits).
    #[test]
    fn equals_direct_convolution() {
        if !crate::cpu::Cpu::get().avx512f {
            eprintln!("skipped: this CPU has no AVX-512 (the plan keeps tract's convs)");
            return;
        }
        // (c, k, h, w)
        let sizes = [
            (3, 8, 5, 7),
            (16, 16, 28, 28),
            (64, 64, 56, 56),
            (7, 24, 33, 70),
            (130, 16, 7, 7),
            (512, 8, 1, 2),
            (32, 32, 14, 9),
        ];
        for (case, &(c, k, h, w)) in sizes.iter().enumerate() {
            let mut next = random(case as u64 + 3);
            let kernel: Vec<f32> = (0..k * c * 9).map(|_| next()).collect();
            let bias: Vec<f32> = (0..k).map(|_| next()).collect();
            let x: Vec<f32> = (0..c * h * w).map(|_| next()).collect();
            let epilogue = Epilogue {
                residual: case % 2 == 1,
                relu: case % 3 != 0,
            };
            let skip: Vec<f32> = (0..k * h * w).map(|_| next()).collect();
            for tile in [2, 4] {
                let conv = WinogradConv::with_tile(&kernel, &bias, c, k, h, w, epilogue, tile);
                let mut input = tvec![Tensor::from_shape(&[1, c, h, w], &x).unwrap().into_tvalue()];
                if epilogue.residual {
                    input.push(
                        Tensor::from_shape(&[1, k, h, w], &skip)
                            .unwrap()
                            .into_tvalue(),
                    );
                }
                let one = conv
                    .eval(&EvalContext::out_of_plan(), input.clone())
                    .unwrap();
                let two = multithread_tract_scope(Executor::multithread(2), || {
                    conv.eval(&EvalContext::out_of_plan(), input.clone())
                        .unwrap()
                });
                assert_eq!(one, two, "case {case}: threads differ");
                let got = one[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                let mut worst = 0f64;
                for o in 0..k {
                    for y in 0..h {
                        for xx in 0..w {
                            let mut sum = f64::from(bias[o]);
                            let mut scale = bias[o].abs() as f64;
                            for i in 0..c {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let (iy, ix) = (y as isize + ky - 1, xx as isize + kx - 1);
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let p =
                                            f64::from(x[(i * h + iy as usize) * w + ix as usize])
                                                * f64::from(
                                                    kernel[((o * c + i) * 3 + ky as usize) * 3
                                                        + kx as usize],
                                                );
                                        sum += p;
                                        scale += p.abs();
                                    }
                                }
                            }
                            if epilogue.residual {
                                let r = f64::from(skip[(o * h + y) * w + xx]);
                                sum += r;
                                scale += r.abs();
                            }
                            if epilogue.relu {
                                sum = sum.max(0.0);
                            }
                            let g = f64::from(got[(o * h + y) * w + xx]);
                            let err = (g - sum).abs() / scale;
                            worst = worst.max(err);
                            assert!(
                            err < 1e-5,
                            "case {case} F({tile}x{tile}) ({c}, {k}, {h}, {w}) at o {o} y {y} x {xx}: {g} vs {sum}"
                        );
                        }
                    }
                }
                eprintln!("case {case} F({tile}x{tile}): worst error {worst:.2e} of the sum of magnitudes");
            }
        }
    }
}
