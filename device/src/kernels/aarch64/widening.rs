//! The int8 3x3 stride-1 convolutions on aarch64 CPUs without FEAT_DotProd (Raspberry Pi 4's
//! Cortex-A72): widening multiplies, integer matrix product and epilogue in one op.
//!
//! Without `sdot`, NEON multiplies bytes into 16-bit lanes: `smull` (8 products), `smlal` (8
//! more added), then `sadalp` adds neighbouring 16-bit lanes into 32-bit accumulators. A
//! 16-bit lane holds two products: at most `2 * 127 * 128 = 32512`, so the weights must lie in
//! -127..=127 (symmetric quantization, as `host export` writes: -128 never appears; a conv with
//! a -128 weight keeps tract's kernel).
//!
//! [`SmullConv`] reads the padded input directly ([`NeonQuads`]: 4 channels per 32-bit
//! position): a 16-byte register is 4 positions x 4 channels of one kernel tap. Per output
//! channel and pair of taps, the weights are that channel's 4 bytes of each tap repeated 4
//! times, so that lanes line up: `smull` of tap A's positions 0-1 with its weights, `smlal`
//! of tap B's, the same `2` forms for positions 2-3, and two `sadalp` - 6 instructions per 32
//! multiply-adds (`sdot` does 16 in one). The accumulators of a channel hold (position,
//! channel pair) sums, added pairwise (`addp`) at the end. A tile is 8 output channels by 4
//! positions (16 accumulators); two make the 8x8 tile of `crate::kernels::aarch64::int8`,
//! whose epilogue (scale, residual, ReLU, requantize) finishes it in registers, bit-identical
//! to `Int8Epilogue` (the integer sums are tract's: same products, other order).
//!
//! Per pair of channel quads and tile, 497 instructions for 2304 multiply-adds (their 18 taps
//! in 9 pairs; an odd last quad: 257 for 1152, tap 8 alone). The weights, repeated, take 4
//! times their size (1152 bytes per channel quad and block of 8 output channels).
//!
//! [`speed_up`] swaps it in for the int8 plan's 3x3 stride-1 convs on NEON CPUs without
//! dotprod (`crate::kernels::aarch64::plug`); the other convs (the stem, stride 2, 1x1) keep
//! tract's kernels.

use crate::kernels::aarch64::int8::{
    finish, row_tiles, run_tiles, Buffers, NeonQuads, RowTile, Tile, Tiles, CHANNELS, PIXELS,
};
use crate::kernels::frame::int8_chains::{self, Int8Chain, Swap};
use crate::kernels::frame::quads::Quads;
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::{ConvShape, KernelPatches};
use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;
use tract_core::internal::*;

/// Kernel taps of a 3x3 conv.
const TAPS: usize = 9;
/// Weight bytes per block of 8 output channels and channel quad: 9 taps x 8 channels x 16.
const QUAD_BYTES: usize = TAPS * CHANNELS * 16;

/// A 3x3 stride-1 int8 convolution's matrix product and epilogue on [`NeonQuads`] (see the
/// module doc).
#[derive(Clone, PartialEq)]
pub struct SmullConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Per block of 8 channels, per pair of channel quads: per pair of their 18 taps, per
    /// channel, (tap A, tap B); an odd last quad: per pair of taps 0-7 the same, then tap 8 per
    /// channel. Each the channel's 4 weight bytes of the tap, 4 times (zero past `m`). (The
    /// patch kernel: pairs of steps, an odd last step alone, the same way.)
    weights: Arc<Vec<i8>>,
    /// Per channel (zero past `m`, to a whole block), added to the integer sums: tract's bias
    /// and zero-point terms.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
    input: Input,
}

/// What a [`SmullConv`] reads.
#[derive(Clone, PartialEq)]
enum Input {
    /// A 3x3 stride-1 conv: the padded input in channel quads ([`NeonQuads`]), by
    /// [`row_tiles`].
    Implicit { quads: Quads, tiles: Vec<RowTile> },
    /// Any other conv: `FastIm2Col`'s patches in tract's K4 layout 8 pixels wide
    /// (`KernelPatches::Sdot`), `steps` steps of 4 along k.
    Patches { steps: usize },
    /// A 1x1 stride-1 conv: its input in channel quads ([`NeonQuads`], no padding), a step
    /// per quad, the positions in output order (`SmullConv::pointwise`).
    Pointwise { quads: Quads },
}

impl Eq for SmullConv {}

impl std::fmt::Debug for SmullConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let implicit = matches!(self.input, Input::Implicit { .. });
        write!(f, "SmullConv {{ m: {}, n: {}, implicit: {implicit}, epilogue: {:?} }}", self.m, self.n, self.epilogue)
    }
}

impl Op for SmullConv {
    fn name(&self) -> StaticName {
        "SmullConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (k, patches) = match &self.input {
            Input::Implicit { quads, .. } => (TAPS * quads.g.channels, "implicit (padded input in channel quads)"),
            Input::Patches { steps } => (4 * steps, "packed"),
            Input::Pointwise { quads } => (quads.g.channels, "pointwise (input in channel quads)"),
        };
        let mut info = int8_chains::conv_info(Self::KERNEL, (self.m, k, self.n), &self.epilogue);
        info.push(format!("patches: {patches}"));
        Ok(info)
    }

    op_as_typed_op!();
}

impl SmullConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "aarch64_smull_i32_8x8 (device::kernels::aarch64::widening)";

    /// The 3x3 stride-1 conv with weights `w` (`[m][k]`, tract's order: channel, kernel y,
    /// kernel x; all in -127..=127) computing `w . x + offsets` on `quads`' layout, then
    /// `epilogue`.
    pub(crate) fn implicit(w: &[Vec<i8>], offsets: &[i32], quads: Quads, epilogue: Int8Epilogue) -> Self {
        let g = &quads.g;
        assert!(g.kernel == (3, 3) && g.stride == (1, 1), "SmullConv: 3x3 stride-1 convs only");
        assert!(w.iter().flatten().all(|v| *v > i8::MIN), "SmullConv: a weight is -128");
        let m = w.len();
        let rows = quads.reorder(w);
        let (blocks, q4) = (m.div_ceil(CHANNELS), quads.quads());
        // Channel o's 4 bytes of tap t in quad q, 4 times.
        let rep = |o: usize, q: usize, t: usize| -> [i8; 16] {
            match rows.get(o) {
                Some(row) => std::array::from_fn(|i| row[(q * TAPS + t) * 4 + i % 4]),
                None => [0; 16],
            }
        };
        let mut weights = Vec::with_capacity(blocks * q4 * QUAD_BYTES);
        for block in 0..blocks {
            let c0 = block * CHANNELS;
            // Two quads at a time: their 18 taps in 9 pairs (tap 8 of the first with tap 0 of
            // the second), as `multiply_3x3` steps through them.
            for qq in 0..q4 / 2 {
                for pair in 0..TAPS {
                    let (a, b) = (2 * pair, 2 * pair + 1);
                    for o in c0..c0 + CHANNELS {
                        weights.extend(rep(o, 2 * qq + a / TAPS, a % TAPS));
                        weights.extend(rep(o, 2 * qq + b / TAPS, b % TAPS));
                    }
                }
            }
            // An odd last quad: 4 pairs, then tap 8 alone.
            if q4 % 2 == 1 {
                let q = q4 - 1;
                for pair in 0..4 {
                    for o in c0..c0 + CHANNELS {
                        weights.extend(rep(o, q, 2 * pair));
                        weights.extend(rep(o, q, 2 * pair + 1));
                    }
                }
                for o in c0..c0 + CHANNELS {
                    weights.extend(rep(o, q, 8));
                }
            }
        }
        let mut padded = offsets.to_vec();
        padded.resize(blocks * CHANNELS, 0);
        let tiles = row_tiles(g, PIXELS);
        SmullConv {
            m,
            n: g.out_height * g.out_width,
            weights: Arc::new(weights),
            offsets: padded,
            epilogue,
            input: Input::Implicit { quads, tiles },
        }
    }

    /// The conv with weights `w` (`[m][k]`, all in -127..=127) computing `w . x + offsets` on
    /// `n` pixels of patches in tract's K4 layout 8 pixels wide, then `epilogue`. Weights: per
    /// block of 8 channels, per pair of steps of 4 along k, as the 3x3 convs' pairs of taps,
    /// then an odd last step as their tap 8.
    pub(crate) fn new(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue) -> Self {
        assert!(w.iter().flatten().all(|v| *v > i8::MIN), "SmullConv: a weight is -128");
        let (m, k) = (w.len(), w.first().map_or(0, |row| row.len()));
        let steps = k.div_ceil(4);
        let blocks = m.div_ceil(CHANNELS);
        // Channel o's 4 bytes of step s, 4 times (0 past k and m).
        let rep = |o: usize, s: usize| -> [i8; 16] {
            std::array::from_fn(|i| w.get(o).and_then(|row| row.get(4 * s + i % 4)).copied().unwrap_or(0))
        };
        let mut weights = Vec::with_capacity(blocks * steps * CHANNELS * 16);
        for block in 0..blocks {
            let channels = block * CHANNELS..(block + 1) * CHANNELS;
            for pair in 0..steps / 2 {
                for o in channels.clone() {
                    weights.extend(rep(o, 2 * pair));
                    weights.extend(rep(o, 2 * pair + 1));
                }
            }
            if steps % 2 == 1 {
                for o in channels {
                    weights.extend(rep(o, steps - 1));
                }
            }
        }
        let mut padded = offsets.to_vec();
        padded.resize(blocks * CHANNELS, 0);
        SmullConv { m, n, weights: Arc::new(weights), offsets: padded, epilogue, input: Input::Patches { steps } }
    }

    /// The 1x1 stride-1 conv (`quads`: its geometry, unpadded) with weights `w` (`[m][c]`, all
    /// in -127..=127) reading its input in channel quads: [`SmullConv::new`]'s sums, each
    /// step's positions from the quads instead of a packed panel.
    pub(crate) fn pointwise(w: &[Vec<i8>], offsets: &[i32], quads: Quads, epilogue: Int8Epilogue) -> Self {
        let g = &quads.g;
        assert!(
            g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == (0, 0),
            "SmullConv::pointwise: 1x1 stride-1 convs without padding only"
        );
        let n = g.out_height * g.out_width;
        SmullConv { input: Input::Pointwise { quads }, ..Self::new(w, offsets, n, epilogue) }
    }

    /// The bytes of the patch input.
    fn patch_bytes(&self) -> usize {
        match &self.input {
            Input::Implicit { quads, .. } | Input::Pointwise { quads } => quads.len(PIXELS),
            Input::Patches { steps } => self.n.div_ceil(PIXELS) * steps * 4 * PIXELS,
        }
    }
}

impl Tiles for SmullConv {
    #[target_feature(enable = "neon")]
    unsafe fn run_with<const RES: bool, const RELU: bool, const F32: bool, const I8: bool>(
        &self,
        buf: Buffers,
        blocks: Range<usize>,
    ) {
        for block in blocks {
            let c0 = block * CHANNELS;
            let offsets: [int32x4_t; CHANNELS] = std::array::from_fn(|j| vdupq_n_s32(self.offsets[c0 + j]));
            // Two runs of 4 pixels make a tile of 8 (the second only if it has pixels).
            let tile = |lo: [int32x4_t; CHANNELS], hi: [int32x4_t; CHANNELS]| -> Tile {
                std::array::from_fn(|j| [vaddq_s32(lo[j], offsets[j]), vaddq_s32(hi[j], offsets[j])])
            };
            let zero = [vdupq_n_s32(0); CHANNELS];
            match &self.input {
                Input::Implicit { quads: q, tiles } => {
                    let (quad_bytes, row_bytes) = (q.quad_len() * 4, q.g.plane_width() * 4);
                    let w = self.weights.as_ptr().add(block * q.quads() * QUAD_BYTES);
                    // In order: a tile's stores past its output row are overwritten by the next.
                    for t in tiles {
                        let x = buf.patches.add(t.at * 4);
                        let lo = multiply_3x3(w, x, q.quads(), quad_bytes, row_bytes);
                        let hi = match t.pixels > PIXELS / 2 {
                            true => multiply_3x3(w, x.add(16), q.quads(), quad_bytes, row_bytes),
                            false => zero,
                        };
                        finish::<RES, RELU, F32, I8>(&self.epilogue, (self.m, self.n), &tile(lo, hi), c0, t.p0, t.store, buf);
                    }
                }
                Input::Patches { .. } | Input::Pointwise { .. } => {
                    // A panel's steps: packed, 32 bytes apart; or 8 positions of each quad.
                    let (steps, panel_bytes, step_bytes) = match &self.input {
                        Input::Pointwise { quads } => (quads.quads(), 4 * PIXELS, quads.quad_len() * 4),
                        Input::Patches { steps } => (*steps, steps * 4 * PIXELS, 4 * PIXELS),
                        Input::Implicit { .. } => unreachable!(),
                    };
                    let w = self.weights.as_ptr().add(block * steps * CHANNELS * 16);
                    for p0 in (0..self.n).step_by(PIXELS) {
                        let (x, lanes) = (buf.patches.add(p0 / PIXELS * panel_bytes), PIXELS.min(self.n - p0));
                        let lo = multiply_steps(w, x, steps, step_bytes);
                        let hi = match lanes > PIXELS / 2 {
                            true => multiply_steps(w, x.add(16), steps, step_bytes),
                            false => zero,
                        };
                        finish::<RES, RELU, F32, I8>(&self.epilogue, (self.m, self.n), &tile(lo, hi), c0, p0, lanes, buf);
                    }
                }
            }
        }
    }
}

// Taps (or steps) A (v0) and B (v1) for channels j (weights v2, v3) and k (v4, v5): per channel,
// positions 0-1 into its first accumulator, 2-3 into its second.
macro_rules! pair {
    ($jl:literal, $jh:literal, $kl:literal, $kh:literal) => {
        concat!(
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            "smull v6.8h, v0.8b, v2.8b\n",
            "smlal v6.8h, v1.8b, v3.8b\n",
            "smull2 v7.8h, v0.16b, v2.16b\n",
            "smlal2 v7.8h, v1.16b, v3.16b\n",
            "sadalp {", $jl, ":v}.4s, v6.8h\n",
            "sadalp {", $jh, ":v}.4s, v7.8h\n",
            "smull v8.8h, v0.8b, v4.8b\n",
            "smlal v8.8h, v1.8b, v5.8b\n",
            "smull2 v9.8h, v0.16b, v4.16b\n",
            "smlal2 v9.8h, v1.16b, v5.16b\n",
            "sadalp {", $kl, ":v}.4s, v8.8h\n",
            "sadalp {", $kh, ":v}.4s, v9.8h\n",
        )
    };
}
macro_rules! pairs {
    () => {
        concat!(
            pair!("a0l", "a0h", "a1l", "a1h"),
            pair!("a2l", "a2h", "a3l", "a3h"),
            pair!("a4l", "a4h", "a5l", "a5h"),
            pair!("a6l", "a6h", "a7l", "a7h"),
        )
    };
}

// One tap (or step) alone (v0) for one channel (weights `$r`).
macro_rules! one {
    ($r:literal, $l:literal, $h:literal) => {
        concat!(
            "smull v6.8h, v0.8b, ", $r, ".8b\n",
            "smull2 v7.8h, v0.16b, ", $r, ".16b\n",
            "sadalp {", $l, ":v}.4s, v6.8h\n",
            "sadalp {", $h, ":v}.4s, v7.8h\n",
        )
    };
}

// One tap (or step) alone (v0) for the 8 channels: their weights in two loads.
macro_rules! singles {
    () => {
        concat!(
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            one!("v2", "a0l", "a0h"),
            one!("v3", "a1l", "a1h"),
            one!("v4", "a2l", "a2h"),
            one!("v5", "a3l", "a3h"),
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            one!("v2", "a4l", "a4h"),
            one!("v3", "a5l", "a5h"),
            one!("v4", "a6l", "a6h"),
            one!("v5", "a7l", "a7h"),
        )
    };
}

/// `asm!` over a tile's 16 accumulators `$a` (`a<channel>l`: positions 0-1, `h`: 2-3) with the
/// template and operands `$body`; v0-v9 are the operands [`pair`] and [`one`] name.
macro_rules! smull_tile {
    ($a:ident; $($body:tt)*) => {
        asm!(
            $($body)*
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
            out("v5") _,
            out("v6") _,
            out("v7") _,
            out("v8") _,
            out("v9") _,
            a0l = inout(vreg) $a[0][0],
            a0h = inout(vreg) $a[0][1],
            a1l = inout(vreg) $a[1][0],
            a1h = inout(vreg) $a[1][1],
            a2l = inout(vreg) $a[2][0],
            a2h = inout(vreg) $a[2][1],
            a3l = inout(vreg) $a[3][0],
            a3h = inout(vreg) $a[3][1],
            a4l = inout(vreg) $a[4][0],
            a4h = inout(vreg) $a[4][1],
            a5l = inout(vreg) $a[5][0],
            a5h = inout(vreg) $a[5][1],
            a6l = inout(vreg) $a[6][0],
            a6h = inout(vreg) $a[6][1],
            a7l = inout(vreg) $a[7][0],
            a7h = inout(vreg) $a[7][1],
            options(nostack, readonly),
        )
    };
}

/// A channel quad's taps 0-7 in 4 pairs (kernel rows from `{b}`, `{rb}` apart), then its tap 8
/// loaded into v0 for what follows: the pair with the next quad's tap 0, or alone.
macro_rules! taps_0_to_8 {
    () => {
        concat!(
            "mov {p}, {b}\n",
            "ld1 {{v0.16b}}, [{p}], {four}\n",
            "ld1 {{v1.16b}}, [{p}], {four}\n",
            pairs!(),
            "ld1 {{v0.16b}}, [{p}]\n",
            "add {p}, {b}, {rb}\n",
            "ld1 {{v1.16b}}, [{p}], {four}\n",
            pairs!(),
            "ld1 {{v0.16b}}, [{p}], {four}\n",
            "ld1 {{v1.16b}}, [{p}]\n",
            pairs!(),
            "add {p}, {b}, {rb2}\n",
            "ld1 {{v0.16b}}, [{p}], {four}\n",
            "ld1 {{v1.16b}}, [{p}], {four}\n",
            pairs!(),
            "ld1 {{v0.16b}}, [{p}]\n",
        )
    };
}

/// The integer sums of 8 output channels (`w`: a block's weights, see [`SmullConv`]) by the 4
/// positions from `x` (the first quad's, tap (0, 0)) over `quads` channel quads
/// (`quad_bytes` apart), the taps of kernel row `ky` `ky * row_bytes` further and of column
/// `kx` `4 * kx` bytes: per channel, the 4 positions' sums.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn multiply_3x3(w: *const i8, x: *const i8, quads: usize, quad_bytes: usize, row_bytes: usize) -> [int32x4_t; CHANNELS] {
    let mut a = [[vdupq_n_s32(0); 2]; CHANNELS];
    smull_tile!(a;
        // Two quads a turn: 9 pairs of taps, the first quad's tap 8 with the second's tap 0.
        "cbz {n}, 5f",
        "2:",
        taps_0_to_8!(),
        "add {b}, {b}, {qb}",
        "mov {p}, {b}",
        "ld1 {{v1.16b}}, [{p}], {four}",
        pairs!(),
        "ld1 {{v0.16b}}, [{p}], {four}",
        "ld1 {{v1.16b}}, [{p}]",
        pairs!(),
        "add {p}, {b}, {rb}",
        "ld1 {{v0.16b}}, [{p}], {four}",
        "ld1 {{v1.16b}}, [{p}], {four}",
        pairs!(),
        "ld1 {{v0.16b}}, [{p}]",
        "add {p}, {b}, {rb2}",
        "ld1 {{v1.16b}}, [{p}], {four}",
        pairs!(),
        "ld1 {{v0.16b}}, [{p}], {four}",
        "ld1 {{v1.16b}}, [{p}]",
        pairs!(),
        "add {b}, {b}, {qb}",
        "subs {n}, {n}, #1",
        "b.ne 2b",
        "5:",
        // An odd last quad: taps 0 and 1, 2 and 3, 4 and 5, 6 and 7, then 8 alone.
        "cbz {odd}, 6f",
        taps_0_to_8!(),
        singles!(),
        "6:",
        b = inout(reg) x => _,
        p = out(reg) _,
        rb = in(reg) row_bytes,
        rb2 = in(reg) 2 * row_bytes,
        qb = in(reg) quad_bytes,
        four = in(reg) 4usize,
        w = inout(reg) w => _,
        n = inout(reg) quads / 2 => _,
        odd = in(reg) quads % 2,
    );
    // (position, channel pair) sums -> position sums.
    a.map(|[lo, hi]| vpaddq_s32(lo, hi))
}

/// [`multiply_3x3`] on patches in tract's K4 layout 8 pixels wide: the 4 pixels from `x`
/// (a panel's first or second half) over `steps` steps of 4 along k (`step_bytes` apart: 32
/// in packed patches, a channel quad's positions in pointwise quads): by pairs, then the last
/// alone if they are odd; the weights `w` in [`SmullConv::new`]'s order.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn multiply_steps(w: *const i8, x: *const i8, steps: usize, step_bytes: usize) -> [int32x4_t; CHANNELS] {
    let mut a = [[vdupq_n_s32(0); 2]; CHANNELS];
    smull_tile!(a;
        "cbz {n}, 3f",
        "2:",
        "ld1 {{v0.16b}}, [{x}], {step}",
        "ld1 {{v1.16b}}, [{x}], {step}",
        pairs!(),
        "subs {n}, {n}, #1",
        "b.ne 2b",
        "3:",
        "cbz {odd}, 4f",
        "ld1 {{v0.16b}}, [{x}]",
        singles!(),
        "4:",
        x = inout(reg) x => _,
        step = in(reg) step_bytes,
        w = inout(reg) w => _,
        n = inout(reg) steps / 2 => _,
        odd = in(reg) steps % 2,
    );
    a.map(|[lo, hi]| vpaddq_s32(lo, hi))
}

impl EvalOp for SmullConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (e, blocks) = (&self.epilogue, self.m.div_ceil(CHANNELS));
        let len = self.patch_bytes();
        // SAFETY: NEON is part of aarch64; eval_conv checks the sizes. Each range of channel
        // blocks writes its own rows of the outputs.
        unsafe { int8_chains::eval_conv("SmullConv", e, &inputs, len, blocks, |buf, blocks| run_tiles(self, e.relu, buf, blocks)) }
    }
}

impl TypedOp for SmullConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// The [`SmullConv`] (and the op making its input) for an int8 conv `chain` with weights in
/// -127..=127: on the padded input ([`NeonQuads`]) for 3x3 stride-1 convs over whole channel
/// quads, else on its patches. A conv with a -128 weight keeps tract's kernel.
fn kernel(chain: Int8Chain) -> Option<Swap> {
    if chain.w.iter().flatten().any(|v| *v == i8::MIN) {
        return None;
    }
    let direct = |g: &ConvShape| g.channels.is_multiple_of(4) && g.kernel == (3, 3) && g.stride == (1, 1);
    if let Some(g) = chain.shape.clone().filter(direct) {
        return Some(Swap::on_quads(chain, g, SmullConv::implicit, NeonQuads::new));
    }
    // 1x1 stride-1 convs (plain matrix products in tract's plan: no geometry in the chain)
    // read their input in channel quads, not repacked into panels.
    if let Some(g) = chain.pointwise_shape() {
        return Some(Swap::on_quads(chain, g, SmullConv::pointwise, NeonQuads::new));
    }
    let conv = SmullConv::new(&chain.w, &chain.offsets, chain.n, chain.epilogue.clone());
    Some(Swap::on_patches(conv, chain))
}

/// Replaces the convs of an optimized int8 plan by [`SmullConv`]; returns how many. Plugged by `crate::kernels::aarch64::plug` on NEON CPUs without dotprod (where
/// [`takes_over`]). Run after `crate::ops::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    int8_chains::swap_in(model, takes_over(crate::cpu::Cpu::get()), "smull", KernelPatches::Sdot, kernel)
}

/// Whether [`SmullConv`] takes the int8 3x3 convs on `cpu`: NEON without dotprod (with it,
/// `crate::kernels::aarch64::dotprod`), and no SVE (tract's SVE kernels there).
pub fn takes_over(cpu: &crate::cpu::Cpu) -> bool {
    cpu.asimd && !cpu.dotprod && !cpu.sve
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::aarch64::int8::Signed;
    use crate::kernels::frame::int8_chains::tests::kernel_equals_scalar_reference;

    /// The patch kernel against a scalar evaluation of the same function, bit for bit, weights
    /// -127..=127: sizes that leave partial tiles (channels; pixels, 1 to 4 in the last half
    /// tile), odd step counts (a pair's second step zero), every epilogue variant, NaN and
    /// infinite residuals, patches all -128, on two threads.
    #[test]
    fn patch_kernel_equals_scalar_reference() {
        // (m, n, k)
        let sizes = [(20, 37, 13), (8, 8, 4), (64, 49, 576), (8, 203, 27), (33, 1, 9), (3, 5, 147), (16, 12, 8), (13, 11, 1)];
        let neon = (crate::cpu::Cpu::get().asimd, "NEON");
        kernel_equals_scalar_reference(neon, &sizes, true, -127, KernelPatches::Sdot, SmullConv::new);
    }

    /// The kernel (`NeonQuads` -> `SmullConv::implicit`) against a scalar integer convolution,
    /// bit for bit, weights -127..=127 (-128 drawn as -127: the 16-bit pair sums' extreme), on
    /// `IMPLICIT_3X3_CASES` (odd quad counts too: tap 8 alone), one and two threads.
    #[test]
    fn implicit_kernel_equals_scalar_convolution() {
        crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
            (crate::cpu::Cpu::get().asimd, "NEON"),
            &crate::kernels::aarch64::int8::IMPLICIT_3X3_CASES,
            -127,
            SmullConv::implicit,
        );
    }

    /// The 1x1 stride-1 convs on their input in channel quads (`SmullConv::pointwise`) against
    /// a scalar integer convolution, bit for bit, on `POINTWISE_CASES`.
    #[test]
    fn pointwise_kernel_equals_scalar_convolution() {
        crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
            (crate::cpu::Cpu::get().asimd, "NEON"),
            &crate::kernels::aarch64::int8::POINTWISE_CASES,
            -127,
            SmullConv::pointwise,
        );
    }
}
