//! The int8 convolutions on x86 CPUs with AVX2 but without AVX-512 VNNI (Zen 1-3, Intel before
//! Ice Lake, most CI machines): integer matrix product and epilogue in one op, in 256-bit
//! registers.
//!
//! On these CPUs tract's int8 kernel (`avx2_mmm_i32_8x8`) widens everything to 32 bits and
//! multiplies lane by lane: ResNet-18 int8 took 4.07 s an inference on an AVX2 EPYC, 130 times
//! ONNX Runtime's int8 (device/README.md, "x86 without AVX-512"). [`MaddConv`] multiplies
//! 16-bit lanes with `vpmaddwd` (16 products a register, added in pairs into 32-bit lanes):
//! a register holds 4 positions x 4 channels of one kernel tap (16 bytes of [`Avx2Quads`]
//! sign-extended by `vpmovsxbw`), the weights of one output channel for that tap and channel
//! quad are 4 16-bit values broadcast to every position (`vpbroadcastq`). A tile is 6 output
//! channels by 8 positions (two registers): 12 accumulators, per step (channel quad, tap) 2
//! loads, 6 broadcasts, 12 `vpmaddwd` and 12 `vpaddd` for 192 multiply-adds. Each accumulator
//! lane holds a (position, channel pair) sum; `vphaddd` adds the pairs at the end.
//!
//! 16-bit products of bytes never saturate (`vpmaddubsw`, which multiplies bytes into 16-bit
//! lanes, does for `255 * 127 * 2`): the integer sums are exactly tract's, every weight allowed
//! (-128 included), and the tile is finished where it is, in registers - the per-channel offsets
//! (tract's bias and zero-point terms), scale, residual, ReLU and the next layer's quantization,
//! [`Int8Epilogue`]'s f32 operations in the same order - so the plan stays bit-identical to
//! tract's (`tests/int8_kernels.rs`; the kernel alone against a scalar convolution below).
//!
//! Every conv reads the input directly ([`Avx2Quads`], the [`Quads`] layout: the input once with
//! its zero-point padding, split by row and column phase, 4 channels per position): a tile is 8
//! consecutive positions of a plane row (those in the padding columns are computed and dropped,
//! the rest moved to the front by `vpermd`), a kernel tap of them 32 contiguous bytes at any
//! stride. The RGB stem's 3 channels take a quad with a padding channel (zero weights).
//!
//! [`speed_up`] swaps it in for every int8 conv chain of an optimized plan
//! (`crate::kernels::frame::int8_chains`), plugged by `crate::kernels::x86_64::plug` on CPUs with
//! AVX2 and without AVX-512 VNNI (which `crate::kernels::x86_64::vnni` serves). `--threads N`
//! splits the output channels over tract's pool.

use crate::kernels::frame::int8_chains::{self, Int8Chain, Swap};
use crate::kernels::frame::quads::{Quads, QuadsFill, QuadsOp};
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::{interleave16, KernelPatches};
use std::arch::x86_64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const CHANNELS: usize = 6;
/// Positions per tile: two registers of 4.
const PIXELS: usize = 8;

/// An int8 convolution's matrix product and epilogue on [`Avx2Quads`] (see the module doc).
#[derive(Clone, PartialEq)]
pub struct MaddConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Per block of 6 channels, per step (channel quad, then kernel tap): 6 channels x 4
    /// weights, as i16 (zero past `m` and past the last channel).
    weights: Arc<Vec<i16>>,
    /// Per channel, added to the sums: tract's bias and zero-point terms.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
    quads: Quads,
    /// Per kernel tap: its offset from a position, in positions (`ConvShape::tap_offsets`).
    taps: Vec<usize>,
    /// Per tile of 8 positions: the mask of its lanes that are outputs and the first one's
    /// output index (`ConvShape::output_lanes`).
    tiles: Vec<(u16, usize)>,
}

impl Eq for MaddConv {}

impl std::fmt::Debug for MaddConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaddConv {{ m: {}, n: {}, {:?}, epilogue: {:?} }}", self.m, self.n, self.quads.g, self.epilogue)
    }
}

impl Op for MaddConv {
    fn name(&self) -> StaticName {
        "MaddConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.quads.g;
        let k = g.channels * g.kernel.0 * g.kernel.1;
        let mut info = int8_chains::conv_info(Self::KERNEL, (self.m, k, self.n), &self.epilogue);
        info.push("patches: implicit (padded input in channel quads)".to_string());
        Ok(info)
    }

    op_as_typed_op!();
}

/// The padded input is i8.
type Buffers = int8_chains::Buffers<i8>;

impl MaddConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "avx2_madd_i32_6x8 (device::kernels::x86_64::avx2)";

    /// The conv with weights `w` (`[m][k]`, tract's order: channel, kernel y, kernel x)
    /// computing `w . x + offsets` on `quads`' layout, then `epilogue`.
    pub(crate) fn implicit(w: &[Vec<i8>], offsets: &[i32], quads: Quads, epilogue: Int8Epilogue) -> Self {
        let g = &quads.g;
        let rows = quads.reorder(w);
        let m = w.len();
        let steps = quads.quads() * g.kernel.0 * g.kernel.1;
        let blocks = m.div_ceil(CHANNELS);
        let mut weights = vec![0i16; blocks * steps * CHANNELS * 4];
        for (c, row) in rows.iter().enumerate() {
            let (block, j) = (c / CHANNELS, c % CHANNELS);
            for s in 0..steps {
                for i in 0..4 {
                    weights[((block * steps + s) * CHANNELS + j) * 4 + i] = i16::from(row[s * 4 + i]);
                }
            }
        }
        let tiles = g.output_lanes(PIXELS);
        let taps = g.tap_offsets();
        MaddConv {
            m,
            n: g.out_height * g.out_width,
            weights: Arc::new(weights),
            offsets: offsets.to_vec(),
            epilogue,
            taps,
            tiles,
            quads,
        }
    }

    fn steps(&self) -> usize {
        self.quads.quads() * self.taps.len()
    }

    /// Runs the tiles of channel blocks `blocks`.
    ///
    /// # Safety
    /// The CPU has AVX2; the buffers hold [`Quads::len`] input bytes and `m * n` values each.
    #[target_feature(enable = "avx2")]
    unsafe fn run(&self, buf: Buffers, blocks: Range<usize>) {
        let block_len = self.steps() * CHANNELS * 4;
        let (quads, quad_len) = (self.quads.quads(), self.quads.quad_len());
        // Each block of weights is read once, the input once per block.
        for block in blocks {
            let w = self.weights.as_ptr().add(block * block_len);
            for (t, &(mask, first)) in self.tiles.iter().enumerate() {
                if mask == 0 {
                    continue;
                }
                let x = buf.patches.add(t * PIXELS * 4);
                let acc = dot(w, x, &self.taps, quads, quad_len);
                self.finish(&acc, block * CHANNELS, first, mask as u8, buf);
            }
        }
    }

    /// The epilogue of one tile: channels `c0..c0 + 6` (those below `m`), the lanes of `mask`
    /// to the outputs from `first` on.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn finish(&self, acc: &[[__m256i; 2]; CHANNELS], c0: usize, first: usize, mask: u8, buf: Buffers) {
        let e = &self.epilogue;
        let lanes = mask.count_ones() as usize;
        let keep = _mm256_loadu_si256(FIRST_LANES[PIXELS - lanes..].as_ptr() as *const __m256i);
        let compress = _mm256_loadu_si256(COMPRESS[mask as usize].as_ptr() as *const __m256i);
        let zero = _mm256_setzero_ps();
        for (j, acc) in acc.iter().enumerate().take(self.m.saturating_sub(c0)) {
            let c = c0 + j;
            let at = c * self.n + first;
            // Lanes (position, channel pair) -> positions [0 1 4 5 | 2 3 6 7] -> in order.
            let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[0], acc[1]));
            let sums = _mm256_add_epi32(sums, _mm256_set1_epi32(self.offsets[c]));
            let sums = _mm256_permutevar8x32_epi32(sums, compress);
            // As Int8Epilogue: acc as f32 * scale (+ residual) (max 0).
            let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(e.scale[c]));
            if let Some(r) = buf.residual {
                v = _mm256_add_ps(v, _mm256_maskload_ps(r.add(at), keep));
            }
            if e.relu {
                // max(v, 0) is 0 for a NaN v (the second operand), like f32::max.
                v = _mm256_max_ps(v, zero);
            }
            if let Some(out) = buf.f32_out {
                _mm256_maskstore_ps(out.add(at), keep, v);
            }
            if let (Some(out), Some((scale, zero_point))) = (buf.i8_out, buf.quantize) {
                let q = quantize(v, scale, zero_point);
                if lanes == PIXELS {
                    _mm_storel_epi64(out.add(at) as *mut __m128i, q);
                } else {
                    let mut bytes = [0i8; 16];
                    _mm_storeu_si128(bytes.as_mut_ptr() as *mut __m128i, q);
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.add(at), lanes);
                }
            }
        }
    }
}

/// `FIRST_LANES[8 - n..][..8]`: the lane mask of the first `n` of 8 lanes.
static FIRST_LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// Per mask of 8 lanes, the `vpermd` indices moving its lanes to the front, in order.
static COMPRESS: [[i32; 8]; 256] = compress_table();

const fn compress_table() -> [[i32; 8]; 256] {
    let mut table = [[0i32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut lane, mut to) = (0, 0);
        while lane < 8 {
            if mask & (1 << lane) != 0 {
                table[mask][to] = lane as i32;
                to += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
}

/// `crate::ops::quantize::quantize` on 8 lanes (the low 8 bytes of the result):
/// `clamp(round_ties_even(clamp(v * scale, +-1024)) + zero_point, -128, 127)`, NaN ->
/// `zero_point`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize(v: __m256, scale: f32, zero_point: i32) -> __m128i {
    let v = _mm256_mul_ps(v, _mm256_set1_ps(scale));
    let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
    let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-1024.0)), _mm256_set1_ps(1024.0));
    // The default rounding mode: to nearest, ties to even.
    let r = _mm256_add_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(zero_point));
    let words = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
    _mm_packs_epi16(words, words)
}

/// One tile's integer sums: 6 channels (`w`: per step, 6 x 4 i16) by 8 positions (`x`: the
/// first's 4 bytes in the first channel quad), per channel quad (`quad_len` positions apart),
/// per kernel tap (`taps`: position offsets). Per channel, two registers: positions 0-3 and
/// 4-7, each lane a (position, channel pair) sum.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot(w: *const i16, x: *const i8, taps: &[usize], quads: usize, quad_len: usize) -> [[__m256i; 2]; CHANNELS] {
    let mut acc = [[_mm256_setzero_si256(); 2]; CHANNELS];
    let mut ws = w;
    for quad in 0..quads {
        let base = x.add(quad * quad_len * 4);
        for &tap in taps {
            let p = base.add(tap * 4);
            let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
            let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i));
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = _mm256_set1_epi64x((ws.add(4 * j) as *const i64).read_unaligned());
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x0, wj));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x1, wj));
            }
            ws = ws.add(4 * CHANNELS);
        }
    }
    acc
}

impl EvalOp for MaddConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(crate::cpu::Cpu::get().avx2, "MaddConv: this CPU has no AVX2");
        let (e, len, blocks) = (&self.epilogue, self.quads.len(PIXELS), self.m.div_ceil(CHANNELS));
        // SAFETY: AVX2 checked above; eval_conv checks the sizes. Each range of channel blocks
        // writes its own rows of the outputs.
        unsafe { int8_chains::eval_conv("MaddConv", e, &inputs, len, blocks, |buf, blocks| self.run(buf, blocks)) }
    }
}

impl TypedOp for MaddConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// [`Quads`] as [`MaddConv`] reads them: the input's signed bytes as they are, in 4-byte
/// positions, 8 a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Avx2;

/// The input of a [`MaddConv`] ([`Quads`]' layout).
pub type Avx2Quads = QuadsOp<Avx2>;

impl QuadsFill for Avx2 {
    const NAME: &'static str = "Avx2Quads";
    const LANES: usize = PIXELS;
    type Byte = i8;
    const TAIL: i8 = 0;

    fn byte(v: i8) -> i8 {
        v
    }

    /// Stride 1: 16 columns of the quad's 4 channel rows at a time, interleaved into 16
    /// positions (the K4 interleave of `crate::ops::im2col`); the last columns, and other
    /// strides, byte by byte.
    #[target_feature(enable = "avx2")]
    unsafe fn fill_row(q: &Quads, x: *const i8, y: usize, channels: &Range<usize>, pad: i8, dst: *mut i8) -> bool {
        let g = &q.g;
        if g.stride != (1, 1) {
            return false;
        }
        let wq = g.plane_width();
        let left = g.pad.1;
        let cols = g.width.min(g.extent().1.saturating_sub(left));
        let (yy, _) = q.plane_row(y);
        let row = dst.add((yy * wq + left) * 4);
        let padding = [pad; 16];
        let src = |j: usize, x0: usize| -> *const [i8; 16] {
            let c = channels.start + j;
            if c < channels.end {
                x.add((c * g.height + y) * g.width + x0) as *const [i8; 16]
            } else {
                &padding
            }
        };
        let whole = cols / 16 * 16;
        for x0 in (0..whole).step_by(16) {
            let out = &mut *(row.add(x0 * 4) as *mut [i8; 64]);
            interleave16(&*src(0, x0), &*src(1, x0), &*src(2, x0), &*src(3, x0), out);
        }
        for (j, c) in channels.clone().enumerate() {
            let from = x.add((c * g.height + y) * g.width);
            for xi in whole..cols {
                *row.add(xi * 4 + j) = *from.add(xi);
            }
        }
        true
    }
}

/// The [`MaddConv`] and its [`Avx2Quads`] input for an int8 conv `chain` (every one: the
/// geometry of a 1x1 stride-1 conv tract lowered to a plain matrix product is its patches').
fn kernel(chain: Int8Chain) -> Option<Swap> {
    let g = chain.shape.clone().or_else(|| chain.pointwise_shape())?;
    Some(Swap::on_quads(chain, g, MaddConv::implicit, Avx2Quads::new))
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model (and
/// the 1x1 convs' `OptMatMulPack -> OptMatMul -> Int8Epilogue`) by [`MaddConv`]; returns how
/// many. Plugged by `crate::kernels::x86_64::plug` where the CPU has AVX2 and no AVX-512 VNNI (a
/// no-op on one without AVX2). Run after `crate::ops::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    // The op runs AVX2 instructions: never wired in on a CPU without them, whoever calls.
    // (The patch layout is asked of the chains but not read: every conv reads the quads.)
    int8_chains::swap_in(model, crate::cpu::Cpu::get().avx2, "madd", KernelPatches::Sdot, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel (`Avx2Quads` -> `MaddConv::implicit`) against a scalar integer convolution
    /// (zero-point padding) and `Int8Epilogue`'s f32 steps, bit for bit, weights -128 to 127:
    /// ResNet's 3x3 stride-1 sizes and odd ones (`IMPLICIT_3X3_CASES`' geometries), strides 2
    /// (odd and even sizes) and 3, kernels 1 and 7 (the stem: 3 channels in a quad), paddings
    /// 0 to 3, output channels not a multiple of 6, on one and two threads.
    #[test]
    fn implicit_kernel_equals_scalar_convolution() {
        // (channels, h, w, kernel, stride, pad, out channels)
        let cases = [
            (4, 9, 11, 3, 1, 1, 20),
            (8, 56, 56, 3, 1, 1, 16),
            (16, 28, 28, 3, 1, 1, 8),
            (12, 14, 14, 3, 1, 1, 17),
            (32, 7, 7, 3, 1, 1, 24),
            (4, 5, 3, 3, 1, 2, 5),
            (8, 13, 21, 3, 1, 0, 9),
            (4, 1, 1, 3, 1, 1, 8),
            (12, 15, 37, 3, 2, 1, 17),
            (8, 14, 14, 3, 2, 1, 32),
            (3, 33, 70, 7, 2, 3, 8),
            (16, 7, 7, 1, 1, 0, 13),
            (4, 8, 10, 1, 2, 0, 16),
            (8, 13, 9, 3, 3, 0, 16),
            (5, 20, 35, 3, 1, 1, 7),
        ];
        crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Avx2, _>(
            (crate::cpu::Cpu::get().avx2, "AVX2"),
            &cases,
            -128,
            MaddConv::implicit,
        );
    }
}
