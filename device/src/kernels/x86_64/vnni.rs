//! The int8 convolutions on x86 CPUs with AVX-512 VNNI: integer matrix product and epilogue in
//! one op, in 512-bit registers.
//!
//! tract's own kernel there (`avx512vnni_mmm_i32_8x8`) runs the dot-product instruction on
//! 256-bit registers with an 8x8 tile (device/README.md, "Why each op exists"). [`VnniConv`] runs `vpdpbusd` on 512-bit registers: a tile is 16 output
//! pixels (the lanes, one register of patch bytes per step of 4 along k) by 16 output channels
//! (a broadcast of 4 weight bytes each), 16 accumulators. It then finishes the tile where it
//! is, in registers: the integer offsets, the per-channel scale, the residual, ReLU and the
//! next layer's quantization - [`Int8Epilogue`]'s work, same f32 operations in the same order -
//! and writes the tile's f32 and/or i8 outputs. The i32 accumulators never reach memory.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. The patches come from [`FastIm2Col`](crate::ops::im2col::FastIm2Col) as
//! `x ^ 0x80 = x + 128` (unsigned), the weights stay signed, and the per-channel offset takes
//! back `128 * sum(weights)` along with tract's bias and input zero-point terms: the integer
//! sums are exactly tract's, so the whole plan stays bit-identical to tract's
//! (`tests/int8_kernels.rs`; the kernel alone against a scalar reference below).
//!
//! Patches: a conv whose input channels fill whole quads reads the input directly - no
//! im2col. [`VnniQuads`] writes the input once with its zero-point padding around it, split by
//! row and column phase (`x % stride`, so a kernel tap of 16 neighbouring output pixels is 64
//! contiguous bytes at any stride), 4 channels per 32-bit lane; a tile runs over 16 consecutive
//! positions of a padded row (the lanes that fall in the padding are computed and dropped, the
//! rest compressed to the output's order). The sums are the same integers in another order.
//! Patches were 9 times the input for 3x3 convs; `VnniQuads` writes the input once. Other convs (the RGB stem: 3 channels) read
//! [`FastIm2Col`](crate::ops::im2col::FastIm2Col)'s patches in the kernel's layout.
//!
//! [`speed_up`] swaps it in for every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an
//! optimized int8 plan, and for the 1x1 stride-1 convs tract lowers to `OptMatMulPack ->
//! OptMatMul -> Int8Epilogue` (their patches are the input itself, repacked), on CPUs with
//! AVX-512 F, BW, VL and VNNI (`crate::kernels::x86_64::plug` plugs it by `crate::cpu::Cpu`).
//! Elsewhere (aarch64 boards, older x86) the plan keeps tract's kernels. `--threads N` splits the output channels over tract's pool.

use crate::kernels::frame::int8_chains::{self, Int8Chain, Swap};
use crate::kernels::frame::quads::{Quads, QuadsFill, QuadsOp};
use crate::kernels::x86_64::avx512::lane_mask;
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::KernelPatches;
use std::arch::x86_64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile: one accumulator register each.
const CHANNELS: usize = 16;
/// Output pixels per tile: the 16 i32 lanes of a register.
const PIXELS: usize = crate::kernels::x86_64::avx512::LANES;
/// Implicit tiles: output channels (half a block of weights) and panels of 16 positions.
const HALF: usize = 8;
const IMPLICIT_PANELS: usize = 3;

/// An int8 convolution's matrix product and epilogue (see the module doc).
#[derive(Clone, PartialEq)]
pub struct VnniConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Steps of 4 along k (input channels x kernel taps, rounded up to 4).
    k4: usize,
    /// Per block of 16 channels, per step: 16 channels x 4 weights (zero past `m` and `k`).
    weights: Arc<Vec<i8>>,
    /// Per channel, added to the sums: tract's bias and zero-point terms, `- 128 * sum(w)`.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
    /// Convs that read [`VnniQuads`]' padded input instead of patches.
    implicit: Option<Implicit>,
}

/// How a [`VnniConv`] reads the padded input of [`VnniQuads`] directly: a tile is 16
/// consecutive positions `q = y * wq + x` of a plane row (`x >= out_width` lie in the
/// padding, computed and dropped), a step is a channel quad (offset: its planes) and a kernel
/// tap (offset: its phase's plane, `(ky / sy) * wq + kx / sx`).
#[derive(Clone, PartialEq)]
struct Implicit {
    quads: Quads,
    taps: Vec<usize>,
    /// Per tile: `ConvShape::output_lanes`.
    tiles: Vec<(__mmask16, usize)>,
    /// The tiles by groups of [`IMPLICIT_PANELS`] (first, count). (Balancing a last group of
    /// one with the one before, 2 + 2 for the 4 tiles of ResNet's 7x7 layers, measured the
    /// same as 3 + 1.)
    groups: Vec<(usize, usize)>,
}

impl Eq for VnniConv {}

impl std::fmt::Debug for VnniConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VnniConv {{ m: {}, n: {}, k: {}, implicit: {}, epilogue: {:?} }}",
            self.m,
            self.n,
            4 * self.k4,
            self.implicit.is_some(),
            self.epilogue
        )
    }
}

impl Op for VnniConv {
    fn name(&self) -> StaticName {
        "VnniConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mkn = (self.m, 4 * self.k4, self.n);
        let mut info = int8_chains::conv_info(Self::KERNEL, mkn, &self.epilogue);
        info.push(format!(
            "patches: {}",
            if self.implicit.is_some() {
                "implicit (padded input in channel quads)"
            } else {
                "packed"
            }
        ));
        Ok(info)
    }

    op_as_typed_op!();
}

/// The patches (or padded input) are u8.
type Buffers = int8_chains::Buffers<u8>;

impl VnniConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "avx512vnni_i32_16x16 (device::kernels::x86_64::vnni)";

    /// The conv with weights `w` (`[m][k]`) computing `w . x + offsets` on `n` pixels, then
    /// `epilogue`.
    pub(crate) fn new(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue) -> Self {
        let (m, k) = (w.len(), w.first().map_or(0, |row| row.len()));
        let k4 = k.div_ceil(4);
        let mut weights = vec![0i8; m.div_ceil(CHANNELS) * k4 * 4 * CHANNELS];
        for (c, row) in w.iter().enumerate() {
            let (block, j) = (c / CHANNELS, c % CHANNELS);
            for (kk, v) in row.iter().enumerate() {
                weights[(block * k4 + kk / 4) * 4 * CHANNELS + 4 * j + kk % 4] = *v;
            }
        }
        // The kernel sums w . (x + 128) = w . x + 128 * sum(w).
        let offsets = w
            .iter()
            .zip(offsets)
            .map(|(row, o)| o - 128 * row.iter().map(|v| i32::from(*v)).sum::<i32>())
            .collect();
        VnniConv {
            m,
            n,
            k4,
            weights: Arc::new(weights),
            offsets,
            epilogue,
            implicit: None,
        }
    }

    /// The conv with weights `w` (`[m][k]`, tract's order: channel, kernel y, kernel x)
    /// reading `quads`' layout: the same sums, the rows reordered to (channel quad, tap,
    /// channel % 4) with zero weights for the channels past the last.
    pub(crate) fn implicit(
        w: &[Vec<i8>],
        offsets: &[i32],
        quads: Quads,
        epilogue: Int8Epilogue,
    ) -> Self {
        let g = &quads.g;
        let reordered = quads.reorder(w);
        let (oh, ow) = (g.out_height, g.out_width);
        let tiles = g.output_lanes(crate::kernels::x86_64::avx512::LANES);
        let taps = g.tap_offsets();
        let groups = (0..tiles.len())
            .step_by(IMPLICIT_PANELS)
            .map(|t| (t, IMPLICIT_PANELS.min(tiles.len() - t)))
            .collect();
        VnniConv {
            implicit: Some(Implicit {
                quads,
                taps,
                tiles,
                groups,
            }),
            ..Self::new(&reordered, offsets, oh * ow, epilogue)
        }
    }

    fn panel_len(&self) -> usize {
        self.k4 * 4 * PIXELS
    }

    fn panels(&self) -> usize {
        match &self.implicit {
            Some(i) => i.tiles.len(),
            None => self.n.div_ceil(PIXELS),
        }
    }

    /// The bytes of the patch input.
    fn patch_bytes(&self) -> usize {
        match &self.implicit {
            Some(i) => i.quads.len(PIXELS),
            None => self.panels() * self.panel_len(),
        }
    }

    /// Runs the tiles of channel blocks `blocks`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and VNNI; the buffers hold `panels * panel_len` patch bytes
    /// and `m * n` values each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run(&self, buf: Buffers, blocks: Range<usize>) {
        let panel_len = self.panel_len();
        let block_len = self.k4 * 4 * CHANNELS;
        let w = self.weights.as_ptr();
        let tile = |block: usize, panel: usize| {
            let w = w.add(block * block_len);
            match &self.implicit {
                None => {
                    let acc = dot(w, buf.patches.add(panel * panel_len), self.k4);
                    let p0 = panel * PIXELS;
                    let lanes = PIXELS.min(self.n - p0);
                    self.finish(&acc, block * CHANNELS, p0, lanes, None, buf);
                }
                Some(i) => {
                    // Half blocks (8 channels) by up to 3 panels: 24 accumulators, 3 loads of
                    // positions and 8 broadcasts of weights per step (16 x 16: 1 and 16).
                    let (panel, panels) = i.groups[panel];
                    for half in 0..2 {
                        let w = w.add(half * 4 * HALF);
                        let c0 = block * CHANNELS + half * HALF;
                        match panels {
                            3 => self.implicit_tile::<3>(i, w, panel, c0, buf),
                            2 => self.implicit_tile::<2>(i, w, panel, c0, buf),
                            _ => self.implicit_tile::<1>(i, w, panel, c0, buf),
                        }
                    }
                }
            }
        };
        // Each block of weights is read once, the patches once per block. The other order
        // (weights streamed once per panel of patches) measured the same on ResNet-18
        // (13.7 ms either way, x86, one thread).
        // (Implicit convs: `tile` takes the group of panels number `panel`.)
        let tiles = match &self.implicit {
            Some(i) => i.groups.len(),
            None => self.panels(),
        };
        for block in blocks {
            for panel in 0..tiles {
                tile(block, panel);
            }
        }
    }

    /// One implicit tile: channels `c0..c0 + 8` (weights `w`: the half block's, steps 16
    /// channels apart) by panels `panel..panel + N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn implicit_tile<const N: usize>(
        &self,
        i: &Implicit,
        w: *const i8,
        panel: usize,
        c0: usize,
        buf: Buffers,
    ) {
        let q = &i.quads;
        let x = buf.patches.add(panel * PIXELS * 4);
        let acc = dot_implicit::<N>(w, x, &i.taps, q.quads(), q.quad_len());
        for (p, &(mask, first)) in i.tiles[panel..panel + N].iter().enumerate() {
            if mask == 0 {
                continue;
            }
            let column: [__m512i; HALF] = std::array::from_fn(|j| acc[j][p]);
            let lanes = mask.count_ones() as usize;
            self.finish(&column, c0, first, lanes, Some(mask), buf);
        }
    }

    /// The epilogue of one tile: channels `c0..c0 + acc.len()`, output pixels `p0..p0 + lanes`, from
    /// the first `lanes` lanes, or from the lanes of `select` moved to the front.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn finish(
        &self,
        acc: &[__m512i],
        c0: usize,
        p0: usize,
        lanes: usize,
        select: Option<__mmask16>,
        buf: Buffers,
    ) {
        let e = &self.epilogue;
        let mask = lane_mask(lanes);
        let zero = _mm512_setzero_ps();
        for (j, acc) in acc.iter().enumerate().take(self.m.saturating_sub(c0)) {
            let c = c0 + j;
            let at = c * self.n + p0;
            let mut sums = _mm512_add_epi32(*acc, _mm512_set1_epi32(self.offsets[c]));
            if let Some(select) = select {
                sums = _mm512_maskz_compress_epi32(select, sums);
            }
            // As Int8Epilogue: acc as f32 * scale (+ residual) (max 0).
            let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(e.scale[c]));
            if let Some(r) = buf.residual {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.add(at)));
            }
            if e.relu {
                // max(v, 0) is 0 for a NaN v, like f32::max.
                v = _mm512_max_ps(v, zero);
            }
            if let Some(out) = buf.f32_out {
                _mm512_mask_storeu_ps(out.add(at), mask, v);
            }
            if let (Some(out), Some((scale, zero_point))) = (buf.i8_out, buf.quantize) {
                _mm_mask_storeu_epi8(out.add(at), mask, quantize(v, scale, zero_point));
            }
        }
    }
}

/// `crate::ops::quantize::quantize` on 16 lanes: `clamp(round_ties_even(clamp(v * scale, +-1024)) +
/// zero_point, -128, 127)`, NaN -> `zero_point`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn quantize(v: __m512, scale: f32, zero_point: i32) -> __m128i {
    let v = _mm512_mul_ps(v, _mm512_set1_ps(scale));
    let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
    let v = _mm512_min_ps(
        _mm512_max_ps(v, _mm512_set1_ps(-1024.0)),
        _mm512_set1_ps(1024.0),
    );
    // The default rounding mode: to nearest, ties to even.
    let r = _mm512_cvtps_epi32(v);
    _mm512_cvtsepi32_epi8(_mm512_add_epi32(r, _mm512_set1_epi32(zero_point)))
}

/// One tile's integer sums: 16 channels (`w`: per step, 16 x 4 signed bytes) by 16 pixels
/// (`x`: per step, 16 x 4 unsigned bytes), over `k4` steps.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot(w: *const i8, x: *const u8, k4: usize) -> [__m512i; CHANNELS] {
    let mut acc = [_mm512_setzero_si512(); CHANNELS];
    for step in 0..k4 {
        let xs = _mm512_loadu_si512(x.add(step * 64) as *const _);
        let ws = w.add(step * 4 * CHANNELS) as *const i32;
        for (j, acc) in acc.iter_mut().enumerate() {
            let wj = _mm512_set1_epi32(ws.add(j).read_unaligned());
            *acc = _mm512_dpbusd_epi32(*acc, xs, wj);
        }
    }
    acc
}

/// [`dot`] on the padded input of [`VnniQuads`] for 8 channels (`w`: 8 x 4 bytes per step,
/// steps 16 channels apart) by `N` panels of 16 positions (`x`: the first's first position):
/// per channel quad (`quad_len` positions apart), per kernel tap (`taps`: position offsets).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot_implicit<const N: usize>(
    w: *const i8,
    x: *const u8,
    taps: &[usize],
    quads: usize,
    quad_len: usize,
) -> [[__m512i; N]; HALF] {
    let mut acc = [[_mm512_setzero_si512(); N]; HALF];
    let mut ws = w as *const i32;
    for quad in 0..quads {
        let base = x.add(quad * quad_len * 4);
        for &tap in taps {
            let mut xs = [_mm512_setzero_si512(); N];
            for (p, xs) in xs.iter_mut().enumerate() {
                *xs = _mm512_loadu_si512(base.add((tap + p * PIXELS) * 4) as *const _);
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = _mm512_set1_epi32(ws.add(j).read_unaligned());
                for (a, xs) in acc.iter_mut().zip(&xs) {
                    *a = _mm512_dpbusd_epi32(*a, *xs, wj);
                }
            }
            ws = ws.add(CHANNELS);
        }
    }
    acc
}

impl EvalOp for VnniConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (e, len, blocks) = (
            &self.epilogue,
            self.patch_bytes(),
            self.m.div_ceil(CHANNELS),
        );
        // SAFETY: speed_up checked the CPU; eval_conv checks the sizes. Each range of channel
        // blocks writes its own rows of the outputs.
        unsafe {
            int8_chains::eval_conv("VnniConv", e, &inputs, len, blocks, |buf, blocks| {
                self.run(buf, blocks)
            })
        }
    }
}

impl TypedOp for VnniConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// [`Quads`] for `vpdpbusd`: `x ^ 0x80` (unsigned) in 4-byte positions, 16 a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vnni;

/// The input of an implicit [`VnniConv`] ([`Quads`]' layout).
pub type VnniQuads = QuadsOp<Vnni>;

impl QuadsFill for Vnni {
    const NAME: &'static str = "VnniQuads";
    const LANES: usize = PIXELS;
    type Byte = u8;
    const TAIL: u8 = 0x80;

    fn byte(v: i8) -> u8 {
        (v as u8) ^ 0x80
    }

    /// Column strides 1 (16 columns a vector, the quad's 4 channels shifted into each 32-bit
    /// lane) and 2 ([`fill_row_stride2`]); larger ones byte by byte.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn fill_row(q: &Quads, x: *const i8, y: usize, channels: &Range<usize>, pad: u8, dst: *mut u8) -> bool {
        let g = &q.g;
        let sx = g.stride.1;
        let (wq, plane) = (g.plane_width(), g.plane());
        let left = g.pad.1;
        let cols = g.width.min(g.extent().1.saturating_sub(left));
        let (yy, py) = q.plane_row(y);
        if sx == 2 {
            fill_row_stride2(q, x, y, channels, pad, dst.add(py * sx * plane * 4), yy);
            return true;
        }
        if sx > 2 {
            return false;
        }
        let flip = _mm512_set1_epi32(0x80);
        let row = dst.add((py * plane + yy * wq + left) * 4);
        for x0 in (0..cols).step_by(PIXELS) {
            let lanes = PIXELS.min(cols - x0);
            let m = lane_mask(lanes);
            let mut v = _mm512_set1_epi32(i32::from_ne_bytes([pad; 4]));
            for (j, c) in channels.clone().enumerate() {
                let src = x.add((c * g.height + y) * g.width + x0);
                let bytes = _mm_maskz_loadu_epi8(m, src);
                let b = _mm512_xor_si512(_mm512_cvtepu8_epi32(bytes), flip);
                let shift = _mm512_set1_epi32(8 * j as i32);
                let keep = _mm512_set1_epi32(!(0xff << (8 * j)));
                v = _mm512_or_si512(_mm512_and_si512(v, keep), _mm512_sllv_epi32(b, shift));
            }
            _mm512_mask_storeu_epi32(row.add(x0 * 4) as *mut _, m, v);
        }
        true
    }
}

/// Input row `y` of the channels `channels` (one quad) into plane row `yy` of the two
/// column phases of a stride-2 conv (`planes`: the quad's planes of this row phase): 32
/// input columns at a time, widened to 16-bit pairs whose low and high halves are the two
/// phases.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn fill_row_stride2(
    q: &Quads,
    x: *const i8,
    y: usize,
    channels: &Range<usize>,
    pad: u8,
    planes: *mut u8,
    yy: usize,
) {
    let g = &q.g;
    let (wq, plane) = (g.plane_width(), g.plane());
    let left = g.pad.1;
    let cols = g.width.min(g.extent().1.saturating_sub(left));
    // Input column x0 + 2i + h (h = 0, 1) is padded column X = x0 + 2i + h + left: phase
    // (h + left) % 2, position (x0 + left + h) / 2 + i (x0 even).
    let flip = _mm512_set1_epi32(0x80);
    let low16 = _mm512_set1_epi32(0xffff);
    let fill = _mm512_set1_epi32(i32::from_ne_bytes([pad; 4]));
    for x0 in (0..cols).step_by(2 * PIXELS) {
        let n = (2 * PIXELS).min(cols - x0);
        let load: __mmask32 = if n == 32 { !0 } else { (1 << n) - 1 };
        let mut halves = [fill, fill];
        for (j, c) in channels.clone().enumerate() {
            let src = x.add((c * g.height + y) * g.width + x0);
            let pairs = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(load, src));
            let keep = _mm512_set1_epi32(!(0xff << (8 * j)));
            let shift = _mm512_set1_epi32(8 * j as i32);
            for (h, half) in halves.iter_mut().enumerate() {
                let b = if h == 0 {
                    _mm512_and_si512(pairs, low16)
                } else {
                    _mm512_srli_epi32::<16>(pairs)
                };
                let b = _mm512_xor_si512(b, flip);
                *half = _mm512_or_si512(_mm512_and_si512(*half, keep), _mm512_sllv_epi32(b, shift));
            }
        }
        for (h, half) in halves.iter().enumerate() {
            // Lanes i with input column x0 + 2i + h < cols.
            let lanes = (n + 1 - h) / 2;
            let m = lane_mask(lanes);
            let phase = (h + left) % 2;
            let at = phase * plane + yy * wq + (x0 + left + h) / 2;
            _mm512_mask_storeu_epi32(planes.add(at * 4) as *mut _, m, *half);
        }
    }
}

/// The [`VnniConv`] (and the op making its input) for an int8 conv `chain`: reading the padded
/// input directly ([`VnniQuads`]) where its channels fill whole quads, else its patches.
fn kernel(chain: Int8Chain) -> Option<Swap> {
    // Read the padded input directly (no patches: the input once, not once per kernel tap).
    // (Not for inputs with channels that do not fill whole quads, such as the RGB stem: the
    // padding channels would cost a third more products there.)
    if let Some(g) = chain.shape.clone().filter(|g| g.channels.is_multiple_of(4)) {
        return Some(Swap::on_quads(chain, g, VnniConv::implicit, VnniQuads::new));
    }
    let conv = VnniConv::new(&chain.w, &chain.offsets, chain.n, chain.epilogue.clone());
    Some(Swap::on_patches(conv, chain))
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model that
/// [`VnniConv`] handles; returns how many. Plugged by `crate::kernels::x86_64::plug` where the CPU
/// has AVX-512 VNNI (and a no-op on one without). Run after
/// `crate::ops::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    // The op runs AVX-512 VNNI instructions: never wired in on a CPU without them, whoever calls.
    let vnni = crate::cpu::Cpu::get().avx512_vnni;
    int8_chains::swap_in(model, vnni, "vnni", KernelPatches::Vnni, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The implicit kernel (`VnniQuads` -> `VnniConv::implicit`) against a scalar integer
    /// convolution (zero-point padding) and `Int8Epilogue`'s f32 steps, bit for bit: strides 1
    /// and 2 (odd and even sizes, the stride-2 row split) and 3 (the byte path), kernels 1, 3
    /// and 7, paddings 0 to 3, on one and two threads.
    #[test]
    fn implicit_kernel_equals_scalar_convolution() {
        // (channels, h, w, kernel, stride, pad, out channels)
        let cases = [
            (4, 9, 11, 3, 1, 1, 20),
            (8, 56, 56, 3, 1, 1, 16),
            (12, 15, 37, 3, 2, 1, 17),
            (8, 14, 14, 3, 2, 1, 32),
            (4, 33, 70, 7, 2, 3, 8),
            (16, 7, 7, 1, 1, 0, 16),
            (4, 8, 10, 1, 2, 0, 16),
            (8, 13, 9, 3, 3, 0, 16),
            (4, 5, 3, 3, 1, 2, 5),
        ];
        crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Vnni, _>(
            (crate::cpu::Cpu::get().avx512_vnni, "AVX-512 VNNI"),
            &cases,
            -128,
            VnniConv::implicit,
        );
    }

    /// The kernel against a scalar evaluation of the same function, bit for bit, on sizes that
    /// leave partial tiles and steps, every epilogue variant, and on two threads.
    #[test]
    fn kernel_equals_scalar_reference() {
        // (m, n, k)
        let sizes = [
            (20, 37, 13),
            (16, 16, 4),
            (64, 49, 576),
            (8, 200, 27),
            (33, 1, 9),
        ];
        int8_chains::tests::kernel_equals_scalar_reference(
            (crate::cpu::Cpu::get().avx512_vnni, "AVX-512 VNNI"),
            &sizes,
            false,
            -128,
            KernelPatches::Vnni,
            VnniConv::new,
        );
    }
}
