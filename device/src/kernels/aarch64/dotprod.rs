//! The int8 convolutions on aarch64 CPUs with FEAT_DotProd (Raspberry Pi 5's Cortex-A76,
//! Jetson Orin's A78AE): integer matrix product and epilogue in one op, in NEON registers.
//!
//! tract's own kernel there (`arm64simd_mmm_i32_8x8_dot`) runs `sdot` too, but leaves its i32
//! accumulators in memory for `Int8Epilogue` to read back, and its patches, matrix product and
//! epilogue are three ops with their own loops (device/README.md, "aarch64 instruction
//! counts"). [`SdotConv`] computes a tile of 8 output channels by 8 output pixels in 16
//! accumulators: per step of 4 along k, one load pair of patch bytes (8 pixels x 4 bytes) and
//! one of weights (8 channels x 4 bytes), then 16 `sdot`s, each a pixel quad by one channel's 4
//! weights (a lane of the weight register). It then finishes the tile where it is, in
//! registers: the per-channel scale, the residual, ReLU and the next layer's quantization -
//! [`Int8Epilogue`]'s work, same f32 operations in the same order - and writes the tile's f32
//! and/or i8 outputs. The i32 accumulators never reach memory.
//!
//! `sdot` multiplies signed by signed bytes: the patches are tract's own values (no offset), the
//! accumulators start at tract's bias and zero-point terms, so the integer sums are exactly
//! tract's and the whole plan stays bit-identical to tract's (`tests/int8_kernels.rs`; the
//! kernel alone against a scalar reference below).
//!
//! Input: the 3x3 stride-1 convs (13 of ResNet-18's 20 convs, 85% of its products) read
//! the input directly - no im2col. [`NeonQuads`] writes the input once with its zero-point
//! padding around it, 4 channels per 32-bit position ([`Quads`], the layout x86's VNNI kernel
//! reads too); a tile is 8 consecutive output pixels of one row, and each of its 9 kernel taps
//! per channel quad is then 32 contiguous bytes at a fixed offset (`ldur`). Patches were 9
//! times the input: ResNet-18 int8 on cortex-a76 went from 215.1 M to 197.3 M instructions
//! per inference (`cargo xtask armbench`). The other convs (the RGB stem, the stride-2 ones)
//! read [`FastIm2Col`](crate::ops::im2col::FastIm2Col)'s patches in tract's K4 layout 8 lanes
//! wide (`KernelPatches::Sdot`), as a plain i8 tensor; for the 1x1 stride-1 convs tract lowers
//! to `OptMatMulPack -> OptMatMul`, the input itself repacked.
//!
//! [`speed_up`] swaps it in for every such chain of an optimized int8 plan
//! (`crate::kernels::frame::int8_chains`) on CPUs with dotprod (`crate::kernels::aarch64::plug`).
//! `--threads N` splits the output channels over tract's pool.

use crate::kernels::aarch64::int8::{
    finish, finish_whole, row_tiles, run_tiles, tap_steps, transpose4, Buffers, NeonQuads, RowTile, Tile, Tiles, CHANNELS, PIXELS,
};
use crate::kernels::frame::int8_chains::{self, Int8Chain, Swap};
use crate::kernels::frame::quads::Quads;
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::{ConvShape, KernelPatches};
use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;
use tract_core::internal::*;

/// Bytes of patches (or weights) per tile and step of 4 along k.
const STEP: usize = 4 * PIXELS;

/// An int8 convolution's matrix product and epilogue (see the module doc).
#[derive(Clone, PartialEq)]
pub struct SdotConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Steps of 4 along k (input channels x kernel taps, rounded up to 4).
    k4: usize,
    /// Per block of 8 channels, per step: 8 channels x 4 weights (zero past `m` and `k`).
    weights: Arc<Vec<i8>>,
    /// Per channel (zero past `m`, to a whole block), the accumulators' start: tract's bias
    /// and zero-point terms.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
    input: Input,
}

/// Where a [`SdotConv`] reads its input.
#[derive(Clone, PartialEq)]
enum Input {
    /// Any conv: `FastIm2Col`'s patches, packed in panels of 8 pixels.
    Patches,
    /// 3x3 convs of stride 1 or 2 (`SdotConv::implicit`): [`NeonQuads`]' padded input.
    Implicit(Implicit),
    /// 1x1 stride-1 convs (`SdotConv::pointwise`): their input in [`NeonQuads`]' channel
    /// quads (no padding: a quad's positions are the output pixels in order), a panel's step
    /// 8 positions of one quad, the next step a quad further.
    Pointwise(Quads),
}

impl Input {
    /// `device inspect`'s name for it.
    fn describe(&self) -> &'static str {
        match self {
            Input::Patches => "packed",
            Input::Implicit(_) => "implicit (padded input in channel quads)",
            Input::Pointwise(_) => "pointwise (input in channel quads)",
        }
    }
}

/// How a [`SdotConv`] reads the padded input of [`NeonQuads`] directly (3x3 convs of stride 1
/// or 2): a tile is 8 consecutive output pixels of one output row, which are 8 consecutive
/// positions of a plane row (of the tap's phase) for every kernel tap; a step is a channel
/// quad and a tap.
#[derive(Clone, PartialEq)]
struct Implicit {
    quads: Quads,
    /// Per tile: its first position in the planes, its first output pixel, and how many of
    /// its 8 lanes to store: all 8 (those past the output row land on the next row's first
    /// pixels, which the next tile writes after) but for the last tile of the plane.
    tiles: Vec<RowTile>,
    /// Tiles of 12 output channels (in the lanes) by 7 pixels ([`dot_3x3_lanes`]) instead of 8
    /// by 8 (pixels in the lanes): for rows of 7 and 14 pixels, where 8-pixel tiles compute an
    /// eighth of their lanes for nothing.
    channels_in_lanes: bool,
}

/// Output channels per tile of [`dot_3x3_lanes`] (three registers of 4, lanes of the
/// accumulators), and its pixels (the 4-byte lanes of two position registers, one unused).
const LANE_CHANNELS: usize = 12;
const LANE_PIXELS: usize = 7;

/// Pixels per tile of a pointwise conv's [`dot_wide`] (three registers of 4, by 8 channels).
const WIDE_PIXELS: usize = 12;

impl Eq for SdotConv {}

impl std::fmt::Debug for SdotConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SdotConv {{ m: {}, n: {}, k: {}, input: {}, epilogue: {:?} }}",
            self.m,
            self.n,
            4 * self.k4,
            self.input.describe(),
            self.epilogue
        )
    }
}

impl Op for SdotConv {
    fn name(&self) -> StaticName {
        "SdotConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mkn = (self.m, 4 * self.k4, self.n);
        let mut info = int8_chains::conv_info(Self::KERNEL, mkn, &self.epilogue);
        info.push(format!("patches: {}", self.input.describe()));
        Ok(info)
    }

    op_as_typed_op!();
}



impl SdotConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "aarch64_sdot_i32_8x8 (device::kernels::aarch64::dotprod)";

    /// The conv with weights `w` (`[m][k]`) computing `w . x + offsets` on `n` pixels, then
    /// `epilogue`.
    pub(crate) fn new(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue) -> Self {
        Self::blocked(w, offsets, n, epilogue, CHANNELS)
    }

    /// [`SdotConv::new`] with the weights in blocks of `channels` output channels.
    fn blocked(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue, channels: usize) -> Self {
        let (m, k) = (w.len(), w.first().map_or(0, |row| row.len()));
        let k4 = k.div_ceil(4);
        let blocks = m.div_ceil(channels);
        let step = 4 * channels;
        let mut weights = vec![0i8; blocks * k4 * step];
        for (c, row) in w.iter().enumerate() {
            let (block, j) = (c / channels, c % channels);
            for (kk, v) in row.iter().enumerate() {
                weights[(block * k4 + kk / 4) * step + 4 * j + kk % 4] = *v;
            }
        }
        let mut padded = offsets.to_vec();
        padded.resize(blocks * channels, 0);
        SdotConv {
            m,
            n,
            k4,
            weights: Arc::new(weights),
            offsets: padded,
            epilogue,
            input: Input::Patches,
        }
    }

    /// The 3x3 stride-1 conv with weights `w` (`[m][k]`, tract's order: channel, kernel y,
    /// kernel x) reading `quads`' layout: the same sums, the rows reordered to (channel quad,
    /// tap, channel % 4).
    pub(crate) fn implicit(
        w: &[Vec<i8>],
        offsets: &[i32],
        quads: Quads,
        epilogue: Int8Epilogue,
    ) -> Self {
        let g = &quads.g;
        assert!(
            g.kernel == (3, 3) && (g.stride == (1, 1) || g.stride == (2, 2)),
            "SdotConv::implicit: 3x3 convs of stride 1 or 2 only"
        );
        // Instructions per useful multiply-add, about: 8 x 8 tiles 164 per 144 `sdot`, their
        // last tile of a row half or whole; 12 x 7 tiles 213 per 189, whole blocks of 12
        // channels.
        let ow = g.out_width as f64;
        let rows = |tile: usize| (g.out_width.div_ceil(tile) * tile) as f64 / ow;
        let half = g.out_width % PIXELS != 0 && g.out_width % PIXELS <= PIXELS / 2;
        let pixels = 164.0 / 144.0 * if half { 1.0 } else { rows(PIXELS) };
        let m = w.len();
        let lanes = 213.0 / 189.0 * rows(LANE_PIXELS) * (m.div_ceil(LANE_CHANNELS) * LANE_CHANNELS) as f64 / m as f64;
        Self::implicit_in(w, offsets, quads, epilogue, lanes < pixels)
    }

    /// [`SdotConv::implicit`] with 12 x 7 tiles (channels in the lanes) or 8 x 8 ones.
    pub(crate) fn implicit_in(
        w: &[Vec<i8>],
        offsets: &[i32],
        quads: Quads,
        epilogue: Int8Epilogue,
        channels_in_lanes: bool,
    ) -> Self {
        let g = &quads.g;
        let (oh, ow) = (g.out_height, g.out_width);
        let (tiles, channels) = match channels_in_lanes {
            true => (row_tiles(g, LANE_PIXELS), LANE_CHANNELS),
            false => (row_tiles(g, PIXELS), CHANNELS),
        };
        let reordered = quads.reorder(w);
        SdotConv {
            input: Input::Implicit(Implicit { quads, tiles, channels_in_lanes }),
            ..Self::blocked(&reordered, offsets, oh * ow, epilogue, channels)
        }
    }

    /// The 1x1 stride-1 conv (`quads`: its geometry, unpadded) with weights `w` (`[m][c]`)
    /// reading its input in channel quads: the patch kernel's sums, each step's 8 positions
    /// from the quads instead of a packed panel (tract repacked the input into panels: 45 M
    /// of ResNet-50 int8's aarch64 instructions, with the strided convs' patches).
    pub(crate) fn pointwise(w: &[Vec<i8>], offsets: &[i32], quads: Quads, epilogue: Int8Epilogue) -> Self {
        let g = &quads.g;
        assert!(
            g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == (0, 0),
            "SdotConv::pointwise: 1x1 stride-1 convs without padding only"
        );
        let n = g.out_height * g.out_width;
        SdotConv { input: Input::Pointwise(quads), ..Self::new(w, offsets, n, epilogue) }
    }

    /// Output channels per block of weights (and per tile).
    fn block_channels(&self) -> usize {
        match &self.input {
            Input::Implicit(i) if i.channels_in_lanes => LANE_CHANNELS,
            _ => CHANNELS,
        }
    }

    /// The bytes of the patch input.
    fn patch_bytes(&self) -> usize {
        match &self.input {
            Input::Patches => self.panels() * self.panel_len(),
            Input::Implicit(i) => i.quads.len(PIXELS),
            Input::Pointwise(q) => q.len(PIXELS),
        }
    }

    fn panel_len(&self) -> usize {
        self.k4 * STEP
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PIXELS)
    }
}

impl Tiles for SdotConv {
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn run_with<const RES: bool, const RELU: bool, const F32: bool, const I8: bool>(
        &self,
        buf: Buffers,
        blocks: Range<usize>,
    ) {
        let panel_len = self.panel_len();
        let implicit = match &self.input {
            Input::Implicit(i) => Some(i),
            _ => None,
        };
        if let Some(i) = implicit.filter(|i| i.channels_in_lanes) {
            let (q, steps) = (&i.quads, tap_steps(&i.quads));
            let block_len = self.k4 * 4 * LANE_CHANNELS;
            for block in blocks {
                let w = self.weights.as_ptr().add(block * block_len);
                let c0 = block * LANE_CHANNELS;
                // In order: a tile's stores past its pixels are overwritten by the next.
                for t in &i.tiles {
                    let x = buf.patches.add(t.at * 4);
                    let acc = dot_3x3_lanes(w, x, q.quads(), &steps, &self.offsets[c0..]);
                    let (mn, e) = ((self.m, self.n), &self.epilogue);
                    finish::<RES, RELU, F32, I8>(e, mn, &acc[..CHANNELS], c0, t.p0, t.store, buf);
                    finish::<RES, RELU, F32, I8>(e, mn, &acc[CHANNELS..], c0 + CHANNELS, t.p0, t.store, buf);
                }
            }
            return;
        }
        if let Some(i) = implicit {
            let (q, steps) = (&i.quads, tap_steps(&i.quads));
            for block in blocks {
                let w = self.weights.as_ptr().add(block * panel_len);
                let c0 = block * CHANNELS;
                // In order: a tile's stores past its output row are overwritten by the next.
                for t in &i.tiles {
                    let x = buf.patches.add(t.at * 4);
                    let offsets = &self.offsets[c0..];
                    // Rows of 4 pixels or fewer left (28 = 3 x 8 + 4): half a tile.
                    let acc = match t.pixels > PIXELS / 2 {
                        true => dot_3x3(w, x, q.quads(), &steps, offsets),
                        false => dot_3x3_half(w, x, q.quads(), &steps, offsets),
                    };
                    finish::<RES, RELU, F32, I8>(&self.epilogue, (self.m, self.n), &acc, c0, t.p0, t.store, buf);
                }
            }
            return;
        }
        // Where a panel's steps are: packed patches, or 8 positions of each channel quad.
        let (panel_bytes, step_bytes) = match &self.input {
            Input::Pointwise(q) => (STEP, q.quad_len() * 4),
            _ => (panel_len, STEP),
        };
        // Each block of weights is read once, the patches once per block.
        for block in blocks {
            let w = self.weights.as_ptr().add(block * panel_len);
            let c0 = block * CHANNELS;
            let offsets = &self.offsets[c0..];
            // Pointwise: tiles 12 pixels wide while whole ones fit (24 accumulators), the rest
            // 8 wide.
            let mut p0 = 0;
            if matches!(self.input, Input::Pointwise(_)) {
                while self.n - p0 >= WIDE_PIXELS {
                    let acc = dot_wide(w, buf.patches.add(4 * p0), self.k4, step_bytes, offsets);
                    finish_whole::<RES, RELU, F32, I8, 3>(&self.epilogue, (self.m, self.n), &acc, c0, p0, buf);
                    p0 += WIDE_PIXELS;
                }
            }
            while p0 < self.n {
                // Packed patches: p0 is a panel's first pixel.
                let x = buf.patches.add(p0 / PIXELS * panel_bytes + 4 * (p0 % PIXELS));
                let acc = dot(w, x, self.k4, step_bytes, offsets);
                finish::<RES, RELU, F32, I8>(&self.epilogue, (self.m, self.n), &acc, c0, p0, PIXELS.min(self.n - p0), buf);
                p0 += PIXELS;
            }
        }
    }
}

/// `asm!` over a tile's 16 accumulators `$a` (`a<channel><half>`: pixels 0-3, 4-7 of a
/// channel) with the template and operands `$body`.
macro_rules! sdot_tile {
    ($a:ident; $($body:tt)*) => {
        asm!(
            $($body)*
            a00 = inout(vreg) $a[0][0],
            a01 = inout(vreg) $a[0][1],
            a10 = inout(vreg) $a[1][0],
            a11 = inout(vreg) $a[1][1],
            a20 = inout(vreg) $a[2][0],
            a21 = inout(vreg) $a[2][1],
            a30 = inout(vreg) $a[3][0],
            a31 = inout(vreg) $a[3][1],
            a40 = inout(vreg) $a[4][0],
            a41 = inout(vreg) $a[4][1],
            a50 = inout(vreg) $a[5][0],
            a51 = inout(vreg) $a[5][1],
            a60 = inout(vreg) $a[6][0],
            a61 = inout(vreg) $a[6][1],
            a70 = inout(vreg) $a[7][0],
            a71 = inout(vreg) $a[7][1],
            options(nostack, readonly),
        )
    };
}

/// [`sdot_tile`] on the first halves only (`a<channel>0`: pixels 0-3).
macro_rules! sdot_half_tile {
    ($a:ident; $($body:tt)*) => {
        asm!(
            $($body)*
            a00 = inout(vreg) $a[0][0],
            a10 = inout(vreg) $a[1][0],
            a20 = inout(vreg) $a[2][0],
            a30 = inout(vreg) $a[3][0],
            a40 = inout(vreg) $a[4][0],
            a50 = inout(vreg) $a[5][0],
            a60 = inout(vreg) $a[6][0],
            a70 = inout(vreg) $a[7][0],
            options(nostack, readonly),
        )
    };
}

/// The 16 sdot of one step or tap: positions v0 (pixels 0-3) and v1 (4-7) by the weights `$lo`
/// (channels 0-3) and `$hi` (4-7).
macro_rules! sdots {
    ($lo:literal, $hi:literal) => {
        concat!(
            "sdot {a00:v}.4s, v0.16b, ", $lo, ".4b[0]\n",
            "sdot {a01:v}.4s, v1.16b, ", $lo, ".4b[0]\n",
            "sdot {a10:v}.4s, v0.16b, ", $lo, ".4b[1]\n",
            "sdot {a11:v}.4s, v1.16b, ", $lo, ".4b[1]\n",
            "sdot {a20:v}.4s, v0.16b, ", $lo, ".4b[2]\n",
            "sdot {a21:v}.4s, v1.16b, ", $lo, ".4b[2]\n",
            "sdot {a30:v}.4s, v0.16b, ", $lo, ".4b[3]\n",
            "sdot {a31:v}.4s, v1.16b, ", $lo, ".4b[3]\n",
            "sdot {a40:v}.4s, v0.16b, ", $hi, ".4b[0]\n",
            "sdot {a41:v}.4s, v1.16b, ", $hi, ".4b[0]\n",
            "sdot {a50:v}.4s, v0.16b, ", $hi, ".4b[1]\n",
            "sdot {a51:v}.4s, v1.16b, ", $hi, ".4b[1]\n",
            "sdot {a60:v}.4s, v0.16b, ", $hi, ".4b[2]\n",
            "sdot {a61:v}.4s, v1.16b, ", $hi, ".4b[2]\n",
            "sdot {a70:v}.4s, v0.16b, ", $hi, ".4b[3]\n",
            "sdot {a71:v}.4s, v1.16b, ", $hi, ".4b[3]\n",
        )
    };
}

/// [`sdots`] for pixels 0-3 only (v0).
macro_rules! sdots_half {
    ($lo:literal, $hi:literal) => {
        concat!(
            "sdot {a00:v}.4s, v0.16b, ", $lo, ".4b[0]\n",
            "sdot {a10:v}.4s, v0.16b, ", $lo, ".4b[1]\n",
            "sdot {a20:v}.4s, v0.16b, ", $lo, ".4b[2]\n",
            "sdot {a30:v}.4s, v0.16b, ", $lo, ".4b[3]\n",
            "sdot {a40:v}.4s, v0.16b, ", $hi, ".4b[0]\n",
            "sdot {a50:v}.4s, v0.16b, ", $hi, ".4b[1]\n",
            "sdot {a60:v}.4s, v0.16b, ", $hi, ".4b[2]\n",
            "sdot {a70:v}.4s, v0.16b, ", $hi, ".4b[3]\n",
        )
    };
}

/// `k4` steps (at least 1) of `$step` (patches from `{x}`, `{s}` apart; weights from `{w}`;
/// scratch v0-v4) on the accumulators `$a` of `$tile`: `k4 % 4` first (one, then two), then
/// four a loop turn (the loop's counter and branch: 2 instructions per 4 steps).
macro_rules! steps_loop {
    ($tile:ident, $a:ident, $step:expr, ($x:ident, $step_bytes:ident, $w:ident, $k4:ident)) => {
        $tile!($a;
            "tbz {k}, #0, 3f",
            $step,
            "3:",
            "tbz {k}, #1, 5f",
            $step,
            $step,
            "5:",
            "lsr {k}, {k}, #2",
            "cbz {k}, 4f",
            "2:",
            $step,
            $step,
            $step,
            $step,
            "subs {k}, {k}, #1",
            "b.ne 2b",
            "4:",
            x = inout(reg) $x => _,
            s = in(reg) $step_bytes,
            w = inout(reg) $w => _,
            k = inout(reg) $k4 => _,
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
        )
    };
}

/// One tile's integer sums: 8 channels (`w`: per step, 8 x 4 signed bytes) by 8 pixels (`x`:
/// per step, 8 x 4 signed bytes, steps `step_bytes` apart: 32 in packed patches, a channel
/// quad's positions in pointwise quads), over `k4` steps (at least 1), plus `offsets[j]` for
/// channel `j`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot(w: *const i8, x: *const i8, k4: usize, step_bytes: usize, offsets: &[i32]) -> Tile {
    let mut a: Tile = std::array::from_fn(|j| [vdupq_n_s32(offsets[j]); 2]);
    // One step: 8 pixels (v0, v1) and 8 channels (v2, v3), 16 sdot.
    macro_rules! step {
        () => {
            concat!("ld1 {{v0.16b, v1.16b}}, [{x}], {s}\n", "ldp q2, q3, [{w}], #32\n", sdots!("v2", "v3"))
        };
    }
    steps_loop!(sdot_tile, a, step!(), (x, step_bytes, w, k4));
    a
}

/// One step of a wide tile: 12 pixels (v0-v2, one load), 8 channels' weights (v3, v4), 24 sdot.
macro_rules! wide_step {
    () => {
        concat!(
            "ld1 {{v0.16b, v1.16b, v2.16b}}, [{x}], {s}\n",
            "ldp q3, q4, [{w}], #32\n",
            step_8x12!("sdot", ".16b", ".4b"),
        )
    };
}

/// [`dot`] 12 pixels wide (`x`: per step 12 x 4 signed bytes, steps `step_bytes` apart: a
/// pointwise conv's channel quads): 26 instructions per 24 `sdot` (8 x 8 tiles: 18 per 16),
/// then the loop's 2 per 4 steps.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot_wide(w: *const i8, x: *const i8, k4: usize, step_bytes: usize, offsets: &[i32]) -> [[int32x4_t; 3]; CHANNELS] {
    let mut a: [[int32x4_t; 3]; CHANNELS] = std::array::from_fn(|j| [vdupq_n_s32(offsets[j]); 3]);
    steps_loop!(tile_8x12, a, wide_step!(), (x, step_bytes, w, k4));
    a
}

/// The 9 taps of one channel quad of a 3x3 conv on [`NeonQuads`], as one template: the
/// positions loaded into `$x` (two registers for 8 pixels, one for 4) from `{p}`, which then
/// moves on by `{d<tap>}` ([`tap_steps`]: to the next tap, the last to the next quad's first),
/// `$sdots` per tap; the weights two taps a `ld1` of v2-v5, the ninth by `ldp`.
macro_rules! taps_3x3 {
    ($x:literal, $sdots:ident) => {
        concat!(
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            "ld1 ", $x, ", [{p}], {d0}\n",
            $sdots!("v2", "v3"),
            "ld1 ", $x, ", [{p}], {d1}\n",
            $sdots!("v4", "v5"),
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            "ld1 ", $x, ", [{p}], {d2}\n",
            $sdots!("v2", "v3"),
            "ld1 ", $x, ", [{p}], {d3}\n",
            $sdots!("v4", "v5"),
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            "ld1 ", $x, ", [{p}], {d4}\n",
            $sdots!("v2", "v3"),
            "ld1 ", $x, ", [{p}], {d5}\n",
            $sdots!("v4", "v5"),
            "ld1 {{v2.16b, v3.16b, v4.16b, v5.16b}}, [{w}], #64\n",
            "ld1 ", $x, ", [{p}], {d6}\n",
            $sdots!("v2", "v3"),
            "ld1 ", $x, ", [{p}], {d7}\n",
            $sdots!("v4", "v5"),
            "ldp q2, q3, [{w}], #32\n",
            "ld1 ", $x, ", [{p}], {d8}\n",
            $sdots!("v2", "v3"),
        )
    };
}

/// The loop over a tile's channel quads, `$tile!` (the accumulators `$a`) around `$taps` (one
/// quad's 9 taps from `{p}`, by the steps `{d0}`-`{d8}`, weights from `{w}`, scratch v0-v5).
macro_rules! quad_loop {
    ($tile:ident, $a:ident, $taps:expr, ($x:ident, $w:ident, $quads:ident, $steps:ident)) => {
        $tile!($a;
            "2:",
            $taps,
            "subs {n}, {n}, #1",
            "b.ne 2b",
            p = inout(reg) $x => _,
            d0 = in(reg) $steps[0],
            d1 = in(reg) $steps[1],
            d2 = in(reg) $steps[2],
            d3 = in(reg) $steps[3],
            d4 = in(reg) $steps[4],
            d5 = in(reg) $steps[5],
            d6 = in(reg) $steps[6],
            d7 = in(reg) $steps[7],
            d8 = in(reg) $steps[8],
            w = inout(reg) $w => _,
            n = inout(reg) $quads => _,
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
            out("v5") _,
        )
    };
}

/// A tile's sums on [`NeonQuads`] for a 3x3 conv, `$name(w, x, quads, steps, offsets)`: per
/// channel quad ([`taps_3x3`] with `$x` and `$sdots`, accumulators by `$tile`), the taps
/// `steps` apart ([`tap_steps`]).
macro_rules! dot_3x3_fn {
    ($(#[$doc:meta])* $name:ident, $x:literal, $sdots:ident, $tile:ident) => {
        $(#[$doc])*
        #[target_feature(enable = "neon,dotprod")]
        #[inline]
        unsafe fn $name(w: *const i8, x: *const i8, quads: usize, steps: &[usize; 9], offsets: &[i32]) -> Tile {
            let mut a: Tile = std::array::from_fn(|j| [vdupq_n_s32(offsets[j]); 2]);
            quad_loop!($tile, a, taps_3x3!($x, $sdots), (x, w, quads, steps));
            a
        }
    };
}

dot_3x3_fn!(
    /// [`dot`] on the padded input of [`NeonQuads`] for a 3x3 conv (stride 1 or 2): 8 channels
    /// (`w`: per step 8 x 4 bytes; steps by channel quad, then tap) by the 8 positions from `x`
    /// (the first quad's, tap (0, 0)), over `quads` channel quads, the taps `steps` apart
    /// ([`tap_steps`]), plus `offsets[j]` for channel `j`.
    ///
    /// Per quad, 160 instructions for 144 `sdot`: one `ld1` of two registers per tap (its 8
    /// positions, the pointer then moved on to the next tap's), one `ld1` of four registers per
    /// two taps' weights. (`ld1` lists take consecutive registers: the
    /// operands are v0-v5, the accumulators wherever the compiler puts them.)
    dot_3x3,
    "{{v0.16b, v1.16b}}",
    sdots,
    sdot_tile
);

dot_3x3_fn!(
    /// [`dot_3x3`] on the first 4 positions only (the tile's pixels 4-7 stay at their offsets):
    /// the last tile of rows of 4 pixels or fewer past a multiple of 8 (28 = 3 x 8 + 4). Per
    /// quad, 88 instructions for 72 `sdot`.
    dot_3x3_half,
    "{{v0.16b}}",
    sdots_half,
    sdot_half_tile
);

/// The 21 `sdot` of one tap of [`dot_3x3_lanes`]: pixel `p` (lane `p % 4` of v0, v1) by the
/// weights of channels 0-3, 4-7, 8-11 (v2, v3, v4) into `c<p><block>`.
macro_rules! sdots_lanes {
    () => {
        concat!(
            "sdot {c00:v}.4s, v2.16b, v0.4b[0]\n",
            "sdot {c01:v}.4s, v3.16b, v0.4b[0]\n",
            "sdot {c02:v}.4s, v4.16b, v0.4b[0]\n",
            "sdot {c10:v}.4s, v2.16b, v0.4b[1]\n",
            "sdot {c11:v}.4s, v3.16b, v0.4b[1]\n",
            "sdot {c12:v}.4s, v4.16b, v0.4b[1]\n",
            "sdot {c20:v}.4s, v2.16b, v0.4b[2]\n",
            "sdot {c21:v}.4s, v3.16b, v0.4b[2]\n",
            "sdot {c22:v}.4s, v4.16b, v0.4b[2]\n",
            "sdot {c30:v}.4s, v2.16b, v0.4b[3]\n",
            "sdot {c31:v}.4s, v3.16b, v0.4b[3]\n",
            "sdot {c32:v}.4s, v4.16b, v0.4b[3]\n",
            "sdot {c40:v}.4s, v2.16b, v1.4b[0]\n",
            "sdot {c41:v}.4s, v3.16b, v1.4b[0]\n",
            "sdot {c42:v}.4s, v4.16b, v1.4b[0]\n",
            "sdot {c50:v}.4s, v2.16b, v1.4b[1]\n",
            "sdot {c51:v}.4s, v3.16b, v1.4b[1]\n",
            "sdot {c52:v}.4s, v4.16b, v1.4b[1]\n",
            "sdot {c60:v}.4s, v2.16b, v1.4b[2]\n",
            "sdot {c61:v}.4s, v3.16b, v1.4b[2]\n",
            "sdot {c62:v}.4s, v4.16b, v1.4b[2]\n",
        )
    };
}

/// `asm!` over the 21 accumulators `$a` of [`dot_3x3_lanes`] (`c<pixel><channel block>`) with
/// the template and operands `$body`.
macro_rules! sdot_lanes_tile {
    ($a:ident; $($body:tt)*) => {
        asm!(
            $($body)*
            c00 = inout(vreg) $a[0][0],
            c01 = inout(vreg) $a[0][1],
            c02 = inout(vreg) $a[0][2],
            c10 = inout(vreg) $a[1][0],
            c11 = inout(vreg) $a[1][1],
            c12 = inout(vreg) $a[1][2],
            c20 = inout(vreg) $a[2][0],
            c21 = inout(vreg) $a[2][1],
            c22 = inout(vreg) $a[2][2],
            c30 = inout(vreg) $a[3][0],
            c31 = inout(vreg) $a[3][1],
            c32 = inout(vreg) $a[3][2],
            c40 = inout(vreg) $a[4][0],
            c41 = inout(vreg) $a[4][1],
            c42 = inout(vreg) $a[4][2],
            c50 = inout(vreg) $a[5][0],
            c51 = inout(vreg) $a[5][1],
            c52 = inout(vreg) $a[5][2],
            c60 = inout(vreg) $a[6][0],
            c61 = inout(vreg) $a[6][1],
            c62 = inout(vreg) $a[6][2],
            options(nostack, readonly),
        )
    };
}

/// One tap of [`dot_3x3_lanes`]: 8 positions (7 used) from `{p}`, then `{p}` moved on by
/// `$next` (the step to the next tap), 12 channels' 4 weights from `{w}`.
macro_rules! tap_lanes {
    ($next:literal) => {
        concat!(
            "ld1 {{v0.16b, v1.16b}}, [{p}], ", $next, "\n",
            "ld1 {{v2.16b, v3.16b, v4.16b}}, [{w}], #48\n",
            sdots_lanes!(),
        )
    };
}

/// One channel quad's 9 taps of [`dot_3x3_lanes`], `{d<tap>}` apart ([`tap_steps`]).
macro_rules! taps_3x3_lanes {
    () => {
        concat!(
            tap_lanes!("{d0}"),
            tap_lanes!("{d1}"),
            tap_lanes!("{d2}"),
            tap_lanes!("{d3}"),
            tap_lanes!("{d4}"),
            tap_lanes!("{d5}"),
            tap_lanes!("{d6}"),
            tap_lanes!("{d7}"),
            tap_lanes!("{d8}"),
        )
    };
}

/// A tile's sums on [`NeonQuads`] for a 3x3 conv with the output channels in the lanes: 12
/// channels (`w`: per step 12 x 4 bytes; steps by channel quad, then tap) by the 7 pixels from
/// `x` (the first quad's, tap (0, 0)), over `quads` channel quads, the taps `steps` apart
/// ([`tap_steps`]), plus `offsets[j]` for channel `j`; per channel, its pixels 0-3 and 4-7
/// (the eighth lane is zero), as [`finish`] takes them.
///
/// `sdot` by element adds the dot product of each 4-byte lane of one register with one 4-byte
/// lane of another: here the weights of 4 channels with one pixel's 4 input channels, so a tile
/// can be 7 pixels wide - no lane computed for nothing on ResNet's rows of 7 and 14 pixels,
/// where 8 x 8 tiles waste an eighth. Per quad, 209 instructions for 189 `sdot`; the 21
/// accumulators are then transposed 4 x 4 (`trn1`/`trn2`) into channels of pixels.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot_3x3_lanes(
    w: *const i8,
    x: *const i8,
    quads: usize,
    steps: &[usize; 9],
    offsets: &[i32],
) -> [[int32x4_t; 2]; LANE_CHANNELS] {
    let starts: [int32x4_t; 3] = std::array::from_fn(|b| vld1q_s32(offsets[4 * b..4 * b + 4].as_ptr()));
    let mut a: [[int32x4_t; 3]; LANE_PIXELS] = [starts; LANE_PIXELS];
    quad_loop!(sdot_lanes_tile, a, taps_3x3_lanes!(), (x, w, quads, steps));
    let zero = vdupq_n_s32(0);
    let mut out = [[zero; 2]; LANE_CHANNELS];
    for b in 0..3 {
        // Rows (pixels) of 4 channels -> per channel, its pixels.
        let first = transpose4([a[0][b], a[1][b], a[2][b], a[3][b]]);
        let second = transpose4([a[4][b], a[5][b], a[6][b], zero]);
        for k in 0..4 {
            out[4 * b + k] = [first[k], second[k]];
        }
    }
    out
}

impl EvalOp for SdotConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            crate::cpu::Cpu::get().dotprod,
            "SdotConv: this CPU has no dotprod"
        );
        let (e, blocks) = (&self.epilogue, self.m.div_ceil(self.block_channels()));
        let len = self.patch_bytes();
        // SAFETY: the CPU has dotprod; eval_conv checks the sizes. Each range of channel
        // blocks writes its own rows of the outputs.
        unsafe {
            int8_chains::eval_conv("SdotConv", e, &inputs, len, blocks, |buf, blocks| {
                run_tiles(self, self.epilogue.relu, buf, blocks)
            })
        }
    }
}

impl TypedOp for SdotConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// The [`SdotConv`] for an int8 conv `chain`, on its patches.
fn kernel(chain: Int8Chain) -> Option<Swap> {
    // 3x3 convs of stride 1 and 2 read the padded input directly (the input once, not once
    // per kernel tap; stride 2 by column and row phases). Not the stem (3 channels: a quad's
    // padding channel would cost a third more products), which keeps its patches.
    let direct = |g: &ConvShape| {
        g.channels.is_multiple_of(4) && g.kernel == (3, 3) && (g.stride == (1, 1) || g.stride == (2, 2))
    };
    if let Some(g) = chain.shape.clone().filter(direct) {
        return Some(Swap::on_quads(chain, g, SdotConv::implicit, NeonQuads::new));
    }
    // 1x1 stride-1 convs (tract lowered them to plain matrix products: no geometry in the
    // chain) read their input in channel quads, not repacked into panels.
    if let Some(g) = chain.pointwise_shape() {
        return Some(Swap::on_quads(chain, g, SdotConv::pointwise, NeonQuads::new));
    }
    let conv = SdotConv::new(&chain.w, &chain.offsets, chain.n, chain.epilogue.clone());
    Some(Swap::on_patches(conv, chain))
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model (and
/// the 1x1 convs' `OptMatMulPack -> OptMatMul -> Int8Epilogue`) by [`SdotConv`] on patches
/// in its layout; returns how many. Plugged by `crate::kernels::aarch64::plug` where the CPU
/// has dotprod (and a no-op on one without). Run after `crate::ops::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    // The op runs `sdot`: never wired in on a CPU without it, whoever calls.
    int8_chains::swap_in(
        model,
        takes_over(crate::cpu::Cpu::get()),
        "sdot",
        KernelPatches::Sdot,
        kernel,
    )
}

/// Whether [`SdotConv`] takes the int8 convs on `cpu`: it has dotprod, and no SVE. With SVE
/// tract runs its own `sve_mmm_i32` kernels, which pack their operands K-outer, not in the K4
/// layout the chains are read back from; their plan stays tract's (no board of ours has SVE:
/// Pi 5's A76 and Orin's A78AE do not).
pub fn takes_over(cpu: &crate::cpu::Cpu) -> bool {
    cpu.dotprod && !cpu.sve
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::aarch64::int8::{Signed, IMPLICIT_3X3_CASES, IMPLICIT_3X3_STRIDE_2_CASES};
    use crate::kernels::frame::int8_chains::tests::kernel_equals_scalar_reference;

    /// The kernel against a scalar evaluation of the same function, bit for bit, on sizes that
    /// leave partial tiles (channels and pixels), step counts of every residue mod 4, every
    /// epilogue variant, NaN and infinite residuals, and on two threads.
    #[test]
    fn dotprod_kernel_equals_scalar_reference() {
        // (m, n, k)
        let sizes = [
            (20, 37, 13),
            (8, 8, 4),
            (64, 49, 576),
            (8, 203, 27),
            (33, 1, 9),
            (3, 5, 147),
            (16, 16, 8),
            (13, 11, 1),
        ];
        let dotprod = (crate::cpu::Cpu::get().dotprod, "dotprod");
        kernel_equals_scalar_reference(dotprod, &sizes, true, -128, KernelPatches::Sdot, SdotConv::new);
    }

    /// The implicit kernel (`NeonQuads` -> `SdotConv::implicit`, 3x3 convs) against a scalar
    /// integer convolution, bit for bit, on `IMPLICIT_3X3_CASES` (stride 1) and
    /// `IMPLICIT_3X3_STRIDE_2_CASES` (the fill's column phases too), one and two threads.
    #[test]
    fn implicit_kernel_equals_scalar_convolution() {
        for cases in [&IMPLICIT_3X3_CASES[..], &IMPLICIT_3X3_STRIDE_2_CASES[..]] {
            crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
                (crate::cpu::Cpu::get().dotprod, "dotprod"),
                cases,
                -128,
                SdotConv::implicit,
            );
        }
    }

    /// The 1x1 stride-1 convs on their input in channel quads (`SdotConv::pointwise`) against
    /// a scalar integer convolution, bit for bit, on `POINTWISE_CASES`, one and two threads.
    #[test]
    fn pointwise_kernel_equals_scalar_convolution() {
        crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
            (crate::cpu::Cpu::get().dotprod, "dotprod"),
            &crate::kernels::aarch64::int8::POINTWISE_CASES,
            -128,
            SdotConv::pointwise,
        );
    }

    /// The same with every case in 12 x 7 tiles, output channels in the lanes (which
    /// `SdotConv::implicit` picks for rows of 7 and 14 pixels).
    #[test]
    fn implicit_kernel_with_channels_in_lanes_equals_scalar_convolution() {
        for cases in [&IMPLICIT_3X3_CASES[..], &IMPLICIT_3X3_STRIDE_2_CASES[..]] {
            crate::kernels::frame::quads::tests::implicit_equals_scalar_convolution::<Signed, _>(
                (crate::cpu::Cpu::get().dotprod, "dotprod"),
                cases,
                -128,
                |w, o, q, e| SdotConv::implicit_in(w, o, q, e, true),
            );
        }
    }
}
