//! The int8 convolutions on aarch64 CPUs without FEAT_DotProd (Raspberry Pi 4's Cortex-A72):
//! widening multiplies, integer matrix product and epilogue in one op.
//!
//! Without `sdot`, NEON multiplies bytes into 16-bit lanes: `smull` (8 products), `smlal` (8
//! more added), then `sadalp` adds neighbouring 16-bit lanes into 32-bit accumulators. A
//! 16-bit lane holds two products: at most `2 * 127 * 128 = 32512`, so the weights must lie in
//! -127..=127 (symmetric quantization, as `host export` writes: -128 never appears; a conv with
//! a -128 weight keeps tract's kernel).
//!
//! [`SmullConv`] reads the padded input directly ([`NeonQuads`]: 4 channels per 32-bit
//! position). A tile's step is a pair of kernel taps (or of steps of 4 along k): `ld4r` loads
//! 4 consecutive positions of a tap, each position's 4 channel bytes repeated in a register of
//! its own, and the weights are 4 output channels' 4 bytes of the tap in a register, as they
//! are (as `sdot` takes them). Then per position and pair of output channels: `smull` of tap A
//! with its weights, `smlal` of tap B's, the same `2` forms for the next pair of channels, and
//! two `sadalp` - 6 instructions per 32 multiply-adds (`sdot` does 16 in one). A run is 8
//! output channels by 4 positions (16 accumulators, each a position's (channel, input-channel
//! pair) sums): per pair of taps two `ld4r` and one `ld1` of the weights, 51 instructions for
//! 48 multiplies. At the end the sums are added pairwise (`addp`) into a position's channels
//! and transposed 4 x 4 into a channel's positions. Two runs make the 8x8 tile of
//! `crate::kernels::aarch64::int8`, whose epilogue (scale, residual, ReLU, requantize) finishes
//! it in registers, bit-identical to `Int8Epilogue` (the integer sums are tract's: same
//! products, other order).
//!
//! Per pair of channel quads and run of a 3x3 conv, 461 instructions for 2304 multiply-adds
//! (their 18 taps in 9 pairs, each tap's load moving the pointer on to the next tap's
//! positions, [`tap_steps`], so stride-2 convs read their phases the same way; an odd last
//! quad: tap 8 alone). (The first version repeated each channel's weights 4 times to line up
//! with 4 positions in a register: 6 loads per pair of taps, not 3, and 497 instructions.)
//!
//! [`speed_up`] swaps it in for the int8 plan's convs on NEON CPUs without dotprod
//! (`crate::kernels::aarch64::plug`): 3x3 convs of stride 1 and 2 on the padded input, 1x1
//! stride-1 convs on their input in channel quads, the rest (the stem, the strided 1x1
//! shortcuts) on patches.

use crate::kernels::aarch64::int8::{
    finish, row_tiles, run_tiles, tap_steps, transpose4, Buffers, NeonQuads, RowTile, Tile, Tiles, CHANNELS, PIXELS,
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
/// Weight bytes per block of 8 output channels and channel quad: 9 taps x 8 channels x 4.
const QUAD_BYTES: usize = TAPS * CHANNELS * 4;

/// An int8 convolution's matrix product and epilogue on [`NeonQuads`] or patches (see the
/// module doc).
#[derive(Clone, PartialEq)]
pub struct SmullConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Per block of 8 channels, per step (a tap of a channel quad, or 4 along k), the 8
    /// channels' 4 bytes (zero past `m`), in the order the kernel reads the steps: by pairs, an
    /// odd last step alone ([`pack`]).
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
    /// A 3x3 conv of stride 1 or 2: the padded input in channel quads ([`NeonQuads`]), by
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

    /// The 3x3 conv (stride 1 or 2) with weights `w` (`[m][k]`, tract's order: channel, kernel y,
    /// kernel x; all in -127..=127) computing `w . x + offsets` on `quads`' layout, then
    /// `epilogue`.
    pub(crate) fn implicit(w: &[Vec<i8>], offsets: &[i32], quads: Quads, epilogue: Int8Epilogue) -> Self {
        let g = &quads.g;
        assert!(
            g.kernel == (3, 3) && (g.stride == (1, 1) || g.stride == (2, 2)),
            "SmullConv: 3x3 convs of stride 1 or 2 only"
        );
        assert!(w.iter().flatten().all(|v| *v > i8::MIN), "SmullConv: a weight is -128");
        let m = w.len();
        let rows = quads.reorder(w);
        let (blocks, q4) = (m.div_ceil(CHANNELS), quads.quads());
        // Channel o's 4 bytes of tap t of quad q (zero past m).
        let bytes = |o: usize, (q, t): (usize, usize)| -> [i8; 4] {
            match rows.get(o) {
                Some(row) => std::array::from_fn(|i| row[(q * TAPS + t) * 4 + i]),
                None => [0; 4],
            }
        };
        // Two quads at a time: their 18 taps in 9 pairs (tap 8 of the first with tap 0 of the
        // second), as `multiply_3x3` steps through them; an odd last quad: 4 pairs, then tap 8
        // alone.
        let mut steps = Vec::with_capacity(q4 * TAPS);
        for qq in 0..q4 / 2 {
            steps.extend((0..2 * TAPS).map(|t| (2 * qq + t / TAPS, t % TAPS)));
        }
        if q4 % 2 == 1 {
            steps.extend((0..TAPS).map(|t| (q4 - 1, t)));
        }
        let weights = pack(blocks, &steps, bytes);
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
        // Channel o's 4 bytes of step s (0 past k and m).
        let bytes = |o: usize, s: usize| -> [i8; 4] {
            std::array::from_fn(|i| w.get(o).and_then(|row| row.get(4 * s + i)).copied().unwrap_or(0))
        };
        let weights = pack(blocks, &(0..steps).collect::<Vec<_>>(), bytes);
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

/// The weights of `blocks` blocks of 8 output channels over `steps` (in the kernel's order):
/// per block, per step, each channel's 4 bytes (`bytes(channel, step)`). A pair of steps is
/// then one 64-byte `ld1` of 4 registers: (step A, channels 0-3), (A, 4-7), (B, 0-3), (B, 4-7).
fn pack<S: Copy>(blocks: usize, steps: &[S], bytes: impl Fn(usize, S) -> [i8; 4]) -> Vec<i8> {
    let mut weights = Vec::with_capacity(blocks * steps.len() * CHANNELS * 4);
    for block in 0..blocks {
        for &step in steps {
            for o in block * CHANNELS..(block + 1) * CHANNELS {
                weights.extend(bytes(o, step));
            }
        }
    }
    weights
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
            let init = starts(&self.offsets[c0..c0 + CHANNELS]);
            // Two runs of 4 pixels make a tile of 8 (the second only if it has pixels).
            let tile = |lo: [int32x4_t; CHANNELS], hi: [int32x4_t; CHANNELS]| -> Tile {
                std::array::from_fn(|j| [lo[j], hi[j]])
            };
            let zero = [vdupq_n_s32(0); CHANNELS];
            match &self.input {
                Input::Implicit { quads: q, tiles } => {
                    let steps = tap_steps(q);
                    let w = self.weights.as_ptr().add(block * q.quads() * QUAD_BYTES);
                    // In order: a tile's stores past its output row are overwritten by the next.
                    for t in tiles {
                        let x = buf.patches.add(t.at * 4);
                        let lo = multiply_3x3(w, x, q.quads(), &steps, init);
                        let hi = match t.pixels > PIXELS / 2 {
                            true => multiply_3x3(w, x.add(16), q.quads(), &steps, init),
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
                    let w = self.weights.as_ptr().add(block * steps * CHANNELS * 4);
                    for p0 in (0..self.n).step_by(PIXELS) {
                        let (x, lanes) = (buf.patches.add(p0 / PIXELS * panel_bytes), PIXELS.min(self.n - p0));
                        let lo = multiply_steps(w, x, steps, step_bytes, init);
                        let hi = match lanes > PIXELS / 2 {
                            true => multiply_steps(w, x.add(16), steps, step_bytes, init),
                            false => zero,
                        };
                        finish::<RES, RELU, F32, I8>(&self.epilogue, (self.m, self.n), &tile(lo, hi), c0, p0, lanes, buf);
                    }
                }
            }
        }
    }
}

// Position `$a` of tap (or step) A and `$b` of tap B, each its 4 channel bytes 4 times
// (`ld4r`), by the weights of A (v8: channels 0-3, v9: 4-7) and B (v10, v11): channels 0-1 into
// accumulator `$j0`, 2-3 into `$j1`, 4-5 into `$j2`, 6-7 into `$j3`.
macro_rules! position {
    ($a:literal, $b:literal, $j0:literal, $j1:literal, $j2:literal, $j3:literal) => {
        concat!(
            "smull v12.8h, ", $a, ".8b, v8.8b\n",
            "smlal v12.8h, ", $b, ".8b, v10.8b\n",
            "smull2 v13.8h, ", $a, ".16b, v8.16b\n",
            "smlal2 v13.8h, ", $b, ".16b, v10.16b\n",
            "smull v14.8h, ", $a, ".8b, v9.8b\n",
            "smlal v14.8h, ", $b, ".8b, v11.8b\n",
            "smull2 v15.8h, ", $a, ".16b, v9.16b\n",
            "smlal2 v15.8h, ", $b, ".16b, v11.16b\n",
            "sadalp {", $j0, ":v}.4s, v12.8h\n",
            "sadalp {", $j1, ":v}.4s, v13.8h\n",
            "sadalp {", $j2, ":v}.4s, v14.8h\n",
            "sadalp {", $j3, ":v}.4s, v15.8h\n",
        )
    };
}

// A pair of taps (or steps): A's 4 positions in v0-v3, B's in v4-v7; their weights in one load.
macro_rules! pair {
    () => {
        concat!(
            "ld1 {{v8.16b, v9.16b, v10.16b, v11.16b}}, [{w}], #64\n",
            position!("v0", "v4", "a00", "a01", "a02", "a03"),
            position!("v1", "v5", "a10", "a11", "a12", "a13"),
            position!("v2", "v6", "a20", "a21", "a22", "a23"),
            position!("v3", "v7", "a30", "a31", "a32", "a33"),
        )
    };
}

// Position `$a` of a tap (or step) alone, by its weights (v8, v9).
macro_rules! one {
    ($a:literal, $j0:literal, $j1:literal, $j2:literal, $j3:literal) => {
        concat!(
            "smull v12.8h, ", $a, ".8b, v8.8b\n",
            "smull2 v13.8h, ", $a, ".16b, v8.16b\n",
            "smull v14.8h, ", $a, ".8b, v9.8b\n",
            "smull2 v15.8h, ", $a, ".16b, v9.16b\n",
            "sadalp {", $j0, ":v}.4s, v12.8h\n",
            "sadalp {", $j1, ":v}.4s, v13.8h\n",
            "sadalp {", $j2, ":v}.4s, v14.8h\n",
            "sadalp {", $j3, ":v}.4s, v15.8h\n",
        )
    };
}

// A tap (or step) alone: its 4 positions in v0-v3, its weights in one load.
macro_rules! single {
    () => {
        concat!(
            "ldp q8, q9, [{w}], #32\n",
            one!("v0", "a00", "a01", "a02", "a03"),
            one!("v1", "a10", "a11", "a12", "a13"),
            one!("v2", "a20", "a21", "a22", "a23"),
            one!("v3", "a30", "a31", "a32", "a33"),
        )
    };
}

/// `asm!` over a run's 16 accumulators `$a` (`a<position><j>`: channels 2j and 2j + 1) with the
/// template and operands `$body`; v0-v15 are the registers [`position`] and [`one`] name (the
/// accumulators take the other 16).
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
            out("v10") _,
            out("v11") _,
            out("v12") _,
            out("v13") _,
            out("v14") _,
            out("v15") _,
            a00 = inout(vreg) $a[0][0],
            a01 = inout(vreg) $a[0][1],
            a02 = inout(vreg) $a[0][2],
            a03 = inout(vreg) $a[0][3],
            a10 = inout(vreg) $a[1][0],
            a11 = inout(vreg) $a[1][1],
            a12 = inout(vreg) $a[1][2],
            a13 = inout(vreg) $a[1][3],
            a20 = inout(vreg) $a[2][0],
            a21 = inout(vreg) $a[2][1],
            a22 = inout(vreg) $a[2][2],
            a23 = inout(vreg) $a[2][3],
            a30 = inout(vreg) $a[3][0],
            a31 = inout(vreg) $a[3][1],
            a32 = inout(vreg) $a[3][2],
            a33 = inout(vreg) $a[3][3],
            options(nostack, readonly),
        )
    };
}

/// Tap (or step) A's 4 positions from `{p}` (then `$post`), into v0-v3.
macro_rules! tap_a {
    ($($post:literal)?) => {
        concat!("ld4r {{v0.4s, v1.4s, v2.4s, v3.4s}}, [{p}]", $(", ", $post,)? "\n")
    };
}

/// Tap (or step) B's, into v4-v7.
macro_rules! tap_b {
    ($($post:literal)?) => {
        concat!("ld4r {{v4.4s, v5.4s, v6.4s, v7.4s}}, [{p}]", $(", ", $post,)? "\n")
    };
}

/// A pair of steps of 4 along k (`{step}` bytes apart, from `{p}`), multiplied.
macro_rules! steps_pair {
    () => {
        concat!(tap_a!("{step}"), tap_b!("{step}"), pair!())
    };
}

/// Taps `$a` (into v0-v3) and `$b` (v4-v7) of a pair, the pointer moved on by the step after
/// each (`"{d<tap>}"`, [`tap_steps`]), then multiplied.
macro_rules! taps_pair {
    ($a:literal, $b:literal) => {
        concat!(tap_a!($a), tap_b!($b), pair!())
    };
}

/// A position's 4 accumulators at the start: channels 2j and 2j + 1's offsets in lanes 0 and 2
/// of accumulator j (lanes 1 and 3 hold the same channels' other sums), so that [`channels`]
/// adds each once.
#[inline(always)]
unsafe fn starts(offsets: &[i32]) -> [int32x4_t; 4] {
    std::array::from_fn(|j| {
        let lanes = [offsets[2 * j], 0, offsets[2 * j + 1], 0];
        vld1q_s32(lanes.as_ptr())
    })
}

/// A run's accumulators (per position, channel pairs' input-channel pair sums) as per channel,
/// its 4 positions' sums: pairs added (`addp`: a position's 8 channels), then transposed.
#[inline(always)]
unsafe fn channels(a: [[int32x4_t; 4]; 4]) -> [int32x4_t; CHANNELS] {
    let sums = a.map(|[j0, j1, j2, j3]| [vpaddq_s32(j0, j1), vpaddq_s32(j2, j3)]);
    let lo = transpose4([sums[0][0], sums[1][0], sums[2][0], sums[3][0]]);
    let hi = transpose4([sums[0][1], sums[1][1], sums[2][1], sums[3][1]]);
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

/// The integer sums of 8 output channels (`w`: a block's weights, see [`SmullConv`]) by the 4
/// positions from `x` (the first quad's, tap (0, 0)) over `quads` channel quads, tap after tap
/// `steps` apart ([`tap_steps`]: stride 1 or 2): per channel, the 4 positions' sums. Each
/// position's accumulators start at `init` ([`starts`]: the channels' offsets, each once).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn multiply_3x3(w: *const i8, x: *const i8, quads: usize, steps: &[usize; 9], init: [int32x4_t; 4]) -> [int32x4_t; CHANNELS] {
    let mut a = [init; 4];
    smull_tile!(a;
        // Two quads a turn: their 18 taps in 9 pairs, the first quad's tap 8 with the second's
        // tap 0.
        "cbz {n}, 5f",
        "2:",
        taps_pair!("{d0}", "{d1}"),
        taps_pair!("{d2}", "{d3}"),
        taps_pair!("{d4}", "{d5}"),
        taps_pair!("{d6}", "{d7}"),
        taps_pair!("{d8}", "{d0}"),
        taps_pair!("{d1}", "{d2}"),
        taps_pair!("{d3}", "{d4}"),
        taps_pair!("{d5}", "{d6}"),
        taps_pair!("{d7}", "{d8}"),
        "subs {n}, {n}, #1",
        "b.ne 2b",
        "5:",
        // An odd last quad: taps 0 and 1, 2 and 3, 4 and 5, 6 and 7, then 8 alone.
        "cbz {odd}, 6f",
        taps_pair!("{d0}", "{d1}"),
        taps_pair!("{d2}", "{d3}"),
        taps_pair!("{d4}", "{d5}"),
        taps_pair!("{d6}", "{d7}"),
        tap_a!(),
        single!(),
        "6:",
        p = inout(reg) x => _,
        d0 = in(reg) steps[0],
        d1 = in(reg) steps[1],
        d2 = in(reg) steps[2],
        d3 = in(reg) steps[3],
        d4 = in(reg) steps[4],
        d5 = in(reg) steps[5],
        d6 = in(reg) steps[6],
        d7 = in(reg) steps[7],
        d8 = in(reg) steps[8],
        w = inout(reg) w => _,
        n = inout(reg) quads / 2 => _,
        odd = in(reg) quads % 2,
    );
    channels(a)
}

/// [`multiply_3x3`] on patches in tract's K4 layout 8 pixels wide: the 4 pixels from `x`
/// (a panel's first or second half) over `steps` steps of 4 along k (`step_bytes` apart: 32
/// in packed patches, a channel quad's positions in pointwise quads): by pairs (four a loop
/// turn), then the last alone if they are odd; the weights `w` in [`SmullConv::new`]'s order;
/// the accumulators start at `init` (as [`multiply_3x3`]).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn multiply_steps(w: *const i8, x: *const i8, steps: usize, step_bytes: usize, init: [int32x4_t; 4]) -> [int32x4_t; CHANNELS] {
    let mut a = [init; 4];
    // n % 4 pairs first (one, then two), then four a loop turn.
    smull_tile!(a;
        "tbz {n}, #0, 3f",
        steps_pair!(),
        "3:",
        "tbz {n}, #1, 4f",
        steps_pair!(),
        steps_pair!(),
        "4:",
        "lsr {n}, {n}, #2",
        "cbz {n}, 5f",
        "2:",
        steps_pair!(),
        steps_pair!(),
        steps_pair!(),
        steps_pair!(),
        "subs {n}, {n}, #1",
        "b.ne 2b",
        "5:",
        "cbz {odd}, 6f",
        tap_a!(),
        single!(),
        "6:",
        p = inout(reg) x => _,
        step = in(reg) step_bytes,
        w = inout(reg) w => _,
        n = inout(reg) steps / 2 => _,
        odd = in(reg) steps % 2,
    );
    channels(a)
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
/// -127..=127: on the padded input ([`NeonQuads`]) for 3x3 convs of stride 1 and 2 over whole
/// channel quads, else on its patches. A conv with a -128 weight keeps tract's kernel.
fn kernel(chain: Int8Chain) -> Option<Swap> {
    if chain.w.iter().flatten().any(|v| *v == i8::MIN) {
        return None;
    }
    let direct = |g: &ConvShape| {
        g.channels.is_multiple_of(4) && g.kernel == (3, 3) && (g.stride == (1, 1) || g.stride == (2, 2))
    };
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
    use crate::kernels::aarch64::int8::{Signed, IMPLICIT_3X3_CASES, IMPLICIT_3X3_STRIDE_2_CASES};
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
    /// `IMPLICIT_3X3_CASES` (odd quad counts too: tap 8 alone) and
    /// `IMPLICIT_3X3_STRIDE_2_CASES`, one and two threads.
    #[test]
    fn implicit_kernel_equals_scalar_convolution() {
        for cases in [&IMPLICIT_3X3_CASES[..], &IMPLICIT_3X3_STRIDE_2_CASES[..]] {
            crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
                (crate::cpu::Cpu::get().asimd, "NEON"),
                cases,
                -127,
                SmullConv::implicit,
            );
        }
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
