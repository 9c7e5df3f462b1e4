//! fp32 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3):
//! the op, generic over the instruction set's loops.
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
//! 2e-6 of the sum of magnitudes (the unit tests bound both against a float64 reference; whole
//! networks stay within the parity tests' 1e-4).
//!
//! Layout: the input (one image, NCHW) is first split per row into its column phases (`x %
//! m`, zero padding included), so that each column of the input blocks of neighbouring tiles
//! is one plain vector load. Lanes run over tiles everywhere. The work goes by blocks of tile
//! rows sized so that a block's transformed inputs and products stay in the L2 cache, and the
//! blocks are split over `--threads` (or, with fewer blocks than threads, each step of a
//! block).
//!
//! What an instruction set writes is [`WinogradKernel`]: the split, the transforms and the
//! products, on the layouts this module fixes (`crate::kernels::x86_64::winograd`: AVX-512 F;
//! `crate::kernels::aarch64::winograd`: NEON). The output transform adds the bias, then (taken
//! over from the ops that followed the conv, `crate::kernels::frame::float_conv`) the residual
//! and the ReLU, in registers.

// The loops over the transforms index several arrays at once, like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::kernels::frame::float_conv::{is_winograd, shape, Epilogue, FloatConv, Take};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per panel of the transformed weights (`u`: `[xi][k / R][c][R]`).
pub(crate) const R: usize = 8;

/// The loops of one instruction set, implemented on its vector type ([`Lanes`]). Each is
/// unsafe: it runs that set's instructions (the pass that wires the op in checked the CPU) and
/// writes through the raw pointers of [`Buffers`] and [`Block`], only the parts its range names.
pub trait WinogradKernel<E: Elem = f32>: Lanes + Send + Sync + 'static {
    /// The kernel, as `device inspect` and the tests name it.
    const KERNEL: &'static str;
    /// Floats past the end of the split input and of a block's tiles that full-vector loads
    /// and stores may touch (0 where the loads and stores are masked).
    const SLACK: usize;
    /// F(4x4) from this many 4x4 tiles on, F(2x2) below.
    const MIN_TILES4: usize;
    /// Tiles of a block, at least (else as many as fit the L2 budget).
    const MIN_BLOCK_TILES: usize;
    /// Panels of `R` output channels that [`multiply`] hands its `tile` at once, at most.
    const GROUP: usize;
    /// The element of the transformed weights `u` and inputs `v`, the products' operands: f32,
    /// or f16 where the products run in f16 lanes (the sums over the input channels then go
    /// to f32 by chunks: see `crate::kernels::aarch64::winograd`).
    type V: Copy + PartialEq + Send + Sync + 'static;
    /// Tiles per vector of the products (a multiple of `LANES`): block strides are multiples
    /// of it.
    const V_LANES: usize;

    /// A transformed weight (computed in float64) as the products read it.
    fn weight(u: f64) -> Self::V;

    /// Stores the lanes `..n` of a transformed input `x` at `p` (all lanes where the set has no
    /// masked stores), as [`Self::V`].
    ///
    /// # Safety
    /// See the trait.
    unsafe fn store_v(x: Self, p: *mut Self::V, n: usize);

    /// Splits the rows of channels `channels` of the padded input into `buf.split`, by column
    /// phase (`x % m`): row `yp` (input row `yp - 1`) of channel `ch` at
    /// `(ch * padded_rows + yp) * row_len`, phase `r` at `r * half` in it, its column `i` the
    /// padded column `m * i + r` (input column `m * i + r - 1`, 0 outside the input).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn split(conv: &WinogradConv<Self, E>, buf: Buffers<E>, channels: Range<usize>);

    /// `B^T d B` on input channels `channels` of the tiles of block `b`, into `b.v`
    /// (`[xi][c][stride]`; tile `t = (ty - rows.start) * tw + tx`).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn transform_input(
        conv: &WinogradConv<Self, E>,
        buf: Buffers<E>,
        b: &Block<Self::V>,
        channels: Range<usize>,
    );

    /// The products `m[xi] = u[xi] . v[xi]` (`[k][stride]`) of block `b`, for the pairs
    /// `xi * k / R + kb` (transformed value, panel of `R` output channels) in `pairs`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn multiply(conv: &WinogradConv<Self, E>, b: &Block<Self::V>, pairs: Range<usize>);

    /// `A^T m A` plus the bias (plus the residual) (max 0) on output channels `outs` of the
    /// tiles of block `b`, into the output.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn transform_output(
        conv: &WinogradConv<Self, E>,
        buf: Buffers<E>,
        b: &Block<Self::V>,
        outs: Range<usize>,
    );
}

/// The element type of the op's tensors (input, residual, output): `f32`, or `f16` where the
/// kernel converts at the split and the output transform (the transforms stay in its vectors'
/// f32 lanes; the products in its [`WinogradKernel::V`]).
pub trait Elem: Datum + Copy {}
impl<T: Datum + Copy> Elem for T {}

/// One instruction set's vector of f32 lanes, as the transforms' loops ([`transform_input`],
/// [`transform_output`], [`bt4`], [`bt6`], [`at4`], [`at6`]) use it. The methods are `#[inline(always)]` wrappers of that set's
/// intrinsics: inlined into the loops (which enable the set's features), they compile to the
/// bare instructions.
///
/// Every method is unsafe: the CPU must have the instruction set, and `load`/`store` read and
/// write through raw pointers.
pub trait Lanes: Copy {
    /// f32 lanes per vector: tiles per vector, block strides are multiples of it.
    const LANES: usize;
    /// The lanes `..n` from `p` (the rest 0, or whatever follows `p` where the set has no
    /// masked loads: its `SLACK` keeps them in the buffers).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn load(p: *const f32, n: usize) -> Self;
    /// Stores the lanes `..n` at `p` (all lanes where the set has no masked stores).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn store(self, p: *mut f32, n: usize);
    /// `x` in every lane.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn splat(x: f32) -> Self;
    /// `self + b`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn add(self, b: Self) -> Self;
    /// `self - b`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn sub(self, b: Self) -> Self;
    /// `k * self + b`, rounded once.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn mul_add(self, k: f32, b: Self) -> Self;
}

/// Implements [`Lanes`] for one instruction set's vector type `$v` from its intrinsics: `add`,
/// `sub` and `splat` by name, `mul_add`, `load` and `store` as expressions of their arguments.
macro_rules! impl_lanes {
    ($v:ty, $lanes:expr, $add:ident, $sub:ident, $splat:ident,
     mul_add($x:ident, $k:ident, $b:ident) $mul_add:expr,
     load($p:ident, $n:ident) $load:expr,
     store($s:ident, $q:ident, $m:ident) $store:expr) => {
        impl $crate::kernels::frame::winograd::Lanes for $v {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn load($p: *const f32, $n: usize) -> Self {
                $load
            }
            #[inline(always)]
            unsafe fn store(self, $q: *mut f32, $m: usize) {
                let $s = self;
                $store
            }
            #[inline(always)]
            unsafe fn add(self, b: Self) -> Self {
                $add(self, b)
            }
            #[inline(always)]
            unsafe fn sub(self, b: Self) -> Self {
                $sub(self, b)
            }
            #[inline(always)]
            unsafe fn mul_add(self, $k: f32, $b: Self) -> Self {
                let $x = self;
                $mul_add
            }
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                $splat(x)
            }
        }
    };
}
pub(crate) use impl_lanes;

/// F(2x2, 3x3): `B^T` (4 x 4) on 4 vectors.
#[inline(always)]
pub(crate) unsafe fn bt4<V: Lanes>(d: [V; 4]) -> [V; 4] {
    [
        d[0].sub(d[2]),
        d[1].add(d[2]),
        d[2].sub(d[1]),
        d[1].sub(d[3]),
    ]
}

/// F(4x4, 3x3): `B^T` (6 x 6) on 6 vectors.
#[inline(always)]
pub(crate) unsafe fn bt6<V: Lanes>(d: [V; 6]) -> [V; 6] {
    let s = |a: V, b| a.sub(b);
    let a = |a: V, b| a.add(b);
    let f = |k: f32, x: V, y| x.mul_add(k, y);
    [
        f(4.0, d[0], f(-5.0, d[2], d[4])),
        f(-4.0, a(d[1], d[2]), a(d[3], d[4])),
        f(4.0, s(d[1], d[2]), s(d[4], d[3])),
        f(2.0, s(d[3], d[1]), s(d[4], d[2])),
        f(2.0, s(d[1], d[3]), s(d[4], d[2])),
        f(4.0, d[1], f(-5.0, d[3], d[5])),
    ]
}

/// F(2x2, 3x3): `A^T` (2 x 4) on 4 vectors.
#[inline(always)]
pub(crate) unsafe fn at4<V: Lanes>(m: [V; 4]) -> [V; 2] {
    [m[0].add(m[1].add(m[2])), m[1].sub(m[2]).sub(m[3])]
}

/// F(4x4, 3x3): `A^T` (4 x 6) on 6 vectors.
#[inline(always)]
pub(crate) unsafe fn at6<V: Lanes>(m: [V; 6]) -> [V; 4] {
    let (p12, m12) = (m[1].add(m[2]), m[1].sub(m[2]));
    let (p34, m34) = (m[3].add(m[4]), m[3].sub(m[4]));
    [
        m[0].add(p12).add(p34),
        m34.mul_add(2.0, m12),
        p34.mul_add(4.0, p12),
        m34.mul_add(8.0, m12).add(m[5]),
    ]
}

/// [`WinogradKernel::transform_input`] in `K`'s vectors, for `A x A` input blocks (`A = m + 2`:
/// `bt` is [`bt4`] or [`bt6`]): tile `tx` reads padded columns `m tx .. m tx + A`, column `a` of
/// them at phase `a % m`, index `tx + a / m`.
#[inline(always)]
pub(crate) unsafe fn transform_input<K: WinogradKernel<E>, const A: usize, E: Elem>(
    conv: &WinogradConv<K, E>,
    buf: Buffers<E>,
    b: &Block<K::V>,
    channels: Range<usize>,
    bt: impl Fn([K; A]) -> [K; A],
) {
    let m = conv.m;
    let (half, prows, tw, row_len) = (conv.half(), conv.padded_rows(), conv.tw(), conv.row_len());
    let (rows, v, stride) = (b.rows.clone(), b.v, b.stride);
    for ch in channels {
        let plane = buf.split.add(ch * prows * row_len);
        for ty in rows.clone() {
            for tx0 in (0..tw).step_by(K::LANES) {
                let n = tw - tx0;
                // h[r]: row r of the block times B.
                let h: [[K; A]; A] = std::array::from_fn(|r| {
                    let row = plane.add((m * ty + r) * row_len + tx0);
                    bt(std::array::from_fn(|a| {
                        K::load(row.add((a % m) * half + a / m), n)
                    }))
                });
                let t = (ty - rows.start) * tw + tx0;
                for j in 0..A {
                    let cols = bt(std::array::from_fn(|r| h[r][j]));
                    for (i, value) in cols.into_iter().enumerate() {
                        let xi = A * i + j;
                        K::store_v(value, v.add((xi * conv.c + ch) * stride + t), n);
                    }
                }
            }
        }
    }
}

/// [`WinogradKernel::multiply`]'s loops: the pairs by groups of `g` (up to `K::GROUP`)
/// consecutive panels of `R` output channels of one transformed value, and their products in
/// runs of `nv` (3, the rest 2 or 1) vectors of `K::V_LANES` tiles, by
/// `tile(nv, g, u, v, out)`: `g * R` output channels (`u`: per input channel, `R` weights; the
/// next panel's `c * R` further) by those tiles (`v`: per input channel, a row of `b.stride`
/// values) over the `c` input channels, into `out` (`g * R` rows of `b.stride`).
#[inline(always)]
pub(crate) unsafe fn multiply<K: WinogradKernel<E>, E: Elem>(
    conv: &WinogradConv<K, E>,
    b: &Block<K::V>,
    pairs: Range<usize>,
    tile: impl Fn(usize, usize, *const K::V, *const K::V, *mut f32),
) {
    multiply_in_groups(conv, b, pairs, K::GROUP, tile)
}

/// [`multiply`] with groups of up to `group` panels.
#[inline(always)]
pub(crate) unsafe fn multiply_in_groups<K: WinogradKernel<E>, E: Elem>(
    conv: &WinogradConv<K, E>,
    b: &Block<K::V>,
    pairs: Range<usize>,
    group: usize,
    tile: impl Fn(usize, usize, *const K::V, *const K::V, *mut f32),
) {
    let blocks = conv.k / R;
    let panels = (b.rows.len() * conv.tw()).div_ceil(K::V_LANES);
    let mut pair = pairs.start;
    while pair < pairs.end {
        let (xi, kb) = (pair / blocks, pair % blocks);
        let g = group.min(blocks - kb).min(pairs.end - pair);
        let v = b.v.add(xi * conv.c * b.stride);
        let u = conv.u.as_ptr().add(pair * conv.c * R);
        let out = b.m.add((xi * conv.k + kb * R) * b.stride);
        let mut p = 0;
        while p < panels {
            let nv = (panels - p).min(3);
            tile(nv, g, u, v.add(p * K::V_LANES), out.add(p * K::V_LANES));
            p += nv;
        }
        pair += g;
    }
}

/// [`WinogradKernel::transform_output`]'s loops in `K`'s vectors, for `A x A` products (`at`:
/// [`at4`] or [`at6`], `M = A - 2` outputs a side): per output channel, tile row and vector of
/// tiles, `A^T m A` plus the bias; each output row goes to `emit(y, plane, skip, at, n)`:
/// `y[p]`, lane `l`, is output column `M (tx0 + l) + p` of the output at `plane + at` (the
/// residual's at `skip + at`), of which `n` are in the image. `emit` interleaves the columns
/// and stores them after the epilogue.
#[inline(always)]
pub(crate) unsafe fn transform_output<
    K: WinogradKernel<E>,
    const A: usize,
    const M: usize,
    E: Elem,
>(
    conv: &WinogradConv<K, E>,
    buf: Buffers<E>,
    b: &Block<K::V>,
    outs: Range<usize>,
    at: impl Fn([K; A]) -> [K; M],
    emit: impl Fn([K; M], *mut E, Option<*const E>, usize, usize),
) {
    let (tw, rows, m, stride) = (conv.tw(), b.rows.clone(), b.m as *const f32, b.stride);
    for o in outs {
        let bias = K::splat(conv.bias[o]);
        let plane = buf.out.add(o * conv.h * conv.w);
        let skip = buf.residual.map(|r| r.add(o * conv.h * conv.w));
        for ty in rows.clone() {
            for tx0 in (0..tw).step_by(K::LANES) {
                let n = tw - tx0;
                let t = (ty - rows.start) * tw + tx0;
                // s[j] = column j of A^T m.
                let s: [[K; M]; A] = std::array::from_fn(|j| {
                    at(std::array::from_fn(|i| {
                        K::load(m.add(((A * i + j) * conv.k + o) * stride + t), n)
                    }))
                });
                for a in 0..M {
                    let oy = M * ty + a;
                    if oy >= conv.h {
                        break;
                    }
                    let y = at(std::array::from_fn(|j| s[j][a])).map(|y| y.add(bias));
                    let ox = M * tx0;
                    emit(y, plane, skip, oy * conv.w + ox, conv.w - ox);
                }
            }
        }
    }
}

/// A float 3x3 stride-1 padding-1 conv on one `[1, C, H, W]` (or `[C, H, W]`) image (see the
/// module doc), its loops `K`'s.
#[derive(Clone)]
pub struct WinogradConv<K: WinogradKernel<E>, E: Elem = f32> {
    /// Input channels.
    pub(crate) c: usize,
    /// Output channels (a multiple of `R`).
    pub(crate) k: usize,
    /// Height and width of the input and the output.
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Outputs per tile side: F(2x2, 3x3) or F(4x4, 3x3).
    pub(crate) m: usize,
    /// `G g G^T` per output channel panel: `[xi][k / R][c][R]` (`xi`: the `(m + 2)^2`
    /// transformed values).
    pub(crate) u: Arc<Vec<K::V>>,
    pub(crate) bias: Vec<f32>,
    /// Residual (the op's second input, of the output's shape) and ReLU after the bias.
    pub(crate) epilogue: Epilogue,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`: tract drops the batch axis after the
    /// 1x1 convs it turns into matrix products, as in ResNet-50's bottlenecks).
    pub(crate) batched: bool,
    kernel: PhantomData<fn() -> (K, E)>,
}

// By hand: the vector type `K` has no `PartialEq`.
impl<E: Elem, K: WinogradKernel<E>> PartialEq for WinogradConv<K, E> {
    fn eq(&self, o: &Self) -> bool {
        let key = |s: &Self| {
            (
                s.c,
                s.k,
                s.h,
                s.w,
                s.m,
                s.u.clone(),
                s.bias.clone(),
                s.epilogue,
                s.batched,
            )
        };
        key(self) == key(o)
    }
}

impl<E: Elem, K: WinogradKernel<E>> Eq for WinogradConv<K, E> {}

impl<E: Elem, K: WinogradKernel<E>> std::fmt::Debug for WinogradConv<K, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WinogradConv {{ c: {}, k: {}, h: {}, w: {}, {:?} }}",
            self.c, self.k, self.h, self.w, self.epilogue
        )
    }
}

impl<E: Elem, K: WinogradKernel<E>> Op for WinogradConv<K, E> {
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
                K::KERNEL
            ),
            format!("{:?}", self.epilogue),
        ])
    }

    op_as_typed_op!();
}

/// Where one eval reads and writes: raw pointers shared by the threads, each of which writes
/// its own rows of `out` (or its own channels of `split`).
#[derive(Clone, Copy)]
pub struct Buffers<E: Elem = f32> {
    pub(crate) x: *const E,
    pub(crate) split: *mut f32,
    pub(crate) out: *mut E,
    pub(crate) residual: Option<*const E>,
}

/// One block of tile rows and its scratch: the transformed inputs `v` (`[xi][c][stride]`, in
/// the kernel's `V`) and the products `m` (`[xi][k][stride]`, f32), `stride` >= the block's
/// tiles plus `SLACK`, a multiple of `V_LANES`.
pub struct Block<V = f32> {
    pub(crate) rows: Range<usize>,
    pub(crate) v: *mut V,
    pub(crate) m: *mut f32,
    pub(crate) stride: usize,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint parts.
unsafe impl<E: Elem> Send for Buffers<E> {}
unsafe impl<E: Elem> Sync for Buffers<E> {}
unsafe impl<V> Sync for Block<V> {}

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

impl<E: Elem, K: WinogradKernel<E>> WinogradConv<K, E> {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = K::KERNEL;

    /// How an fp32 pass takes `conv` if it is a 3x3 stride-1 padding-1 conv (see
    /// `crate::kernels::frame::float_conv::place`): as this op, with the residual and the ReLU
    /// that follow; F(4x4, 3x3) from `K::MIN_TILES4` tiles on, F(2x2, 3x3) below.
    pub(crate) fn take<'a>(conv: &FloatConv) -> Option<Take<'a>> {
        (conv.dt == E::datum_type() && is_winograd(&conv.g)).then(|| Take {
            suffix: "winograd",
            residuals: true,
            op: Box::new(|conv: &FloatConv, epilogue| {
                let (c, h, w) = (conv.g.channels, conv.g.height, conv.g.width);
                let tiles4 = h.div_ceil(4) * w.div_ceil(4);
                let m = if tiles4 >= K::MIN_TILES4 { 4 } else { 2 };
                let mut op =
                    Self::with_tile(&conv.kernel, &conv.bias, c, conv.k, h, w, epilogue, m);
                op.batched = conv.batched;
                Box::new(op)
            }),
        })
    }

    /// The conv with weights `kernel` (`[k][c][3][3]`, OIHW) and `bias` (`k` values) on
    /// `h x w` inputs (one `[1, C, H, W]` image), then `epilogue`, in `m x m` output tiles
    /// (2 or 4).
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
        let mut u = vec![K::weight(0.0); alpha * alpha * blocks * c * R];
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
                        u[((xi * blocks + o / R) * c + i) * R + o % R] = K::weight(v);
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
            kernel: PhantomData,
        }
    }

    /// Transformed values per tile: `(m + 2)^2`.
    pub(crate) fn xi(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }

    /// Tile rows and columns (`m x m` outputs each).
    pub(crate) fn th(&self) -> usize {
        self.h.div_ceil(self.m)
    }

    pub(crate) fn tw(&self) -> usize {
        self.w.div_ceil(self.m)
    }

    /// Length of a split row phase (the padded row's columns `m * i + phase`).
    pub(crate) fn half(&self) -> usize {
        self.tw() + 1
    }

    /// Rows of the padded input: one above, the rows, at least one below.
    pub(crate) fn padded_rows(&self) -> usize {
        self.m * self.th() + 2
    }

    /// A split row: its `m` phases.
    pub(crate) fn row_len(&self) -> usize {
        self.m * self.half()
    }

    fn split_len(&self) -> usize {
        self.c * self.padded_rows() * self.row_len() + K::SLACK
    }

    /// Tile rows per block: about `131072 / xi / (c + k)` tiles, so that the block's
    /// `xi x (c + k)` values per tile take 512 KiB.
    fn rows_per_block(&self) -> usize {
        let tiles = (131072 / self.xi() / (self.c + self.k)).max(K::MIN_BLOCK_TILES);
        (tiles / self.tw()).max(1)
    }

    /// The block of tile rows number `block`, its products in `scratch`.
    fn block(&self, block: usize, scratch: &mut (Vec<f32>, Vec<f32>)) -> Block<K::V> {
        let per = self.rows_per_block();
        let stride = (per * self.tw() + K::SLACK).div_ceil(K::V_LANES) * K::V_LANES;
        let (v, m) = scratch;
        // `v` holds `V`s (no larger than an f32, no more aligned) in the f32 scratch.
        const { assert!(std::mem::size_of::<K::V>() <= 4 && std::mem::align_of::<K::V>() <= 4) };
        let v_bytes = self.xi() * self.c * stride * std::mem::size_of::<K::V>();
        grow(v, v_bytes.div_ceil(4));
        grow(m, self.xi() * self.k * stride);
        Block {
            rows: block * per..((block + 1) * per).min(self.th()),
            v: v.as_mut_ptr() as *mut K::V,
            m: m.as_mut_ptr(),
            stride,
        }
    }

    /// Runs the blocks of tile rows `blocks` on this thread.
    unsafe fn run(&self, buf: Buffers<E>, blocks: Range<usize>) {
        SCRATCH.with(|s| {
            let scratch = &mut *s.borrow_mut();
            for block in blocks {
                let b = self.block(block, scratch);
                K::transform_input(self, buf, &b, 0..self.c);
                K::multiply(self, &b, 0..self.xi() * self.k / R);
                K::transform_output(self, buf, &b, 0..self.k);
            }
        });
    }

    /// Runs the block of tile rows `block` with each step split over the threads (for layers
    /// with fewer blocks than threads).
    fn run_split(&self, buf: Buffers<E>, block: usize) {
        SCRATCH.with(|s| {
            let b = self.block(block, &mut s.borrow_mut());
            // SAFETY: as in `eval`; each range writes its own channels of `b.v`, its own
            // products of `b.m`, its own output channels.
            crate::ops::parallel::for_ranges(self.c, |r| unsafe {
                K::transform_input(self, buf, &b, r)
            });
            let pairs = self.xi() * self.k / R;
            crate::ops::parallel::for_ranges(pairs, |r| unsafe { K::multiply(self, &b, r) });
            crate::ops::parallel::for_ranges(self.k, |r| unsafe {
                K::transform_output(self, buf, &b, r)
            });
        });
    }
}

impl<E: Elem, K: WinogradKernel<E>> EvalOp for WinogradConv<K, E> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == E::datum_type()
                && x.shape() == &shape(self.batched, [self.c, self.h, self.w])[..],
            "WinogradConv: input {:?} {:?}, planned for [1, {}, {}, {}] {:?}",
            x.datum_type(),
            x.shape(),
            self.c,
            self.h,
            self.w,
            E::datum_type()
        );
        let shape = shape(self.batched, [self.k, self.h, self.w]);
        let residual = if self.epilogue.residual {
            let r = inputs.get(1).context("WinogradConv: no residual input")?;
            ensure!(
                r.datum_type() == E::datum_type() && r.shape() == &shape[..],
                "WinogradConv: residual {:?} {:?}, planned for {shape:?} {:?}",
                r.datum_type(),
                r.shape(),
                E::datum_type()
            );
            Some(unsafe { r.as_ptr_unchecked::<E>() })
        } else {
            None
        };
        let mut out = unsafe { Tensor::uninitialized::<E>(&shape)? };
        SPLIT.with(|split| {
            let split = &mut *split.borrow_mut();
            grow(split, self.split_len());
            let buf = Buffers {
                x: unsafe { x.as_ptr_unchecked::<E>() },
                split: split.as_mut_ptr(),
                out: unsafe { out.as_ptr_mut_unchecked::<E>() },
                residual,
            };
            // SAFETY: the pass checked the CPU, eval the sizes; threads write disjoint channels
            // of the split input, then disjoint tile rows of the output.
            crate::ops::parallel::for_ranges(self.c, |channels| unsafe {
                K::split(self, buf, channels)
            });
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

impl<E: Elem, K: WinogradKernel<E>> TypedOp for WinogradConv<K, E> {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(E::fact(shape(
            self.batched,
            [self.k, self.h, self.w]
        ))))
    }
}

/// The unit test of a [`WinogradKernel`]: the op against a direct float64 convolution on sizes
/// with odd heights and widths, channel counts not multiples of the lanes, more tiles than a
/// vector and fewer, several blocks, with and without the fused residual and ReLU, F(2x2) and
/// F(4x4), and on two threads (same bits). Error bound: `bound` of the sum of magnitudes (1e-5
/// for f32 tensors; for f16 ones the output's own rounding alone is 2^-11 of its magnitude). The
/// reference takes the inputs as `E` holds them.
#[cfg(test)]
pub(crate) fn check_against_direct_convolution<K: WinogradKernel<E>, E: Elem>(bound: f64) {
    use crate::ops::test_util::{eval_on_one_and_two_threads, f32s, random_f32};
    // Inputs rounded to E, as f32.
    let round = |v: Vec<f32>| f32s(&tensor1(&v).cast_to::<E>().unwrap());
    let tensor = |shape: &[usize], v: &[f32]| -> TValue {
        Tensor::from_shape(shape, v)
            .unwrap()
            .cast_to::<E>()
            .unwrap()
            .into_owned()
            .into_tvalue()
    };
    let random = random_f32;
    // (c, k, h, w)
    let sizes = [
        (3, 8, 5, 7),
        (16, 16, 28, 28),
        (64, 64, 56, 56),
        (7, 24, 33, 70),
        (130, 16, 7, 7),
        (512, 8, 1, 2),
        (32, 32, 14, 9),
        (5, 16, 3, 1),
        (9, 8, 11, 13),
        (12, 40, 5, 6),
    ];
    for (case, &(c, k, h, w)) in sizes.iter().enumerate() {
        let mut next = random(case as u64 + 3);
        let kernel: Vec<f32> = (0..k * c * 9).map(|_| next()).collect();
        let bias: Vec<f32> = (0..k).map(|_| next()).collect();
        let x = round((0..c * h * w).map(|_| next()).collect());
        let epilogue = Epilogue {
            residual: case % 2 == 1,
            relu: case % 3 != 0,
        };
        let skip = round((0..k * h * w).map(|_| next()).collect());
        for tile in [2, 4] {
            let conv = WinogradConv::<K, E>::with_tile(&kernel, &bias, c, k, h, w, epilogue, tile);
            let mut input = tvec![tensor(&[1, c, h, w], &x)];
            if epilogue.residual {
                input.push(tensor(&[1, k, h, w], &skip));
            }
            let out =
                eval_on_one_and_two_threads(&conv, input, &format!("case {case} F({tile}x{tile})"));
            let got = f32s(&out[0]);
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
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let p = f64::from(x[(i * h + iy as usize) * w + ix as usize])
                                        * f64::from(
                                            kernel
                                                [((o * c + i) * 3 + ky as usize) * 3 + kx as usize],
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
                            err < bound,
                            "case {case} F({tile}x{tile}) ({c}, {k}, {h}, {w}) at o {o} y {y} x {xx}: {g} vs {sum}"
                        );
                    }
                }
            }
            eprintln!("case {case} F({tile}x{tile}) [{}]: worst error {worst:.2e} of the sum of magnitudes", K::KERNEL);
        }
    }
}
