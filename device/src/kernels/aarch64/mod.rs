//! aarch64 kernels: [`fp32`] swaps fp32 plans' 3x3 stride-1 convs for [`winograd`], the 7x7
//! stem and the 3x3 stride-2 convs for [`direct`] and the 1x1 stride-1 convs for [`pointwise`]
//! (NEON, every board); [`fp16`] the f16 plans' convs (3x3, stem, 1x1) for the same ops on
//! f16 tensors (FEAT_FP16); [`dotprod`] runs int8 plans' convs with `sdot` (FEAT_DotProd: Cortex-A76, A78AE),
//! [`widening`] their 3x3 stride-1 convs with `smull`/`smlal` where there is no dotprod
//! (Cortex-A72); [`int8`] holds what those two share.
//! Everything else runs tract's own NEON kernels behind the portable passes of
//! `crate::plan::PORTABLE`.
//!
//! A kernel for this architecture goes in a module here (e.g. `winograd_f16.rs`), as an op
//! plus the pass that swaps it in, and [`plug`] offers that pass with the features it needs
//! from [`Cpu`] (`asimd`, `fp16`, `dotprod`, `i8mm`, `sve`: read from HWCAP), exactly as
//! `crate::kernels::x86_64::plug` does.

/// `asm!` over an 8 x 12 tile's 24 accumulators `$a` (`a<channel><third>`: pixels 0-3, 4-7,
/// 8-11 of a channel) with the template and operands `$body` (`dotprod`'s pointwise tiles,
/// `direct`'s stem).
macro_rules! tile_8x12 {
    ($a:ident; $($body:tt)*) => {
        std::arch::asm!(
            $($body)*
            a00 = inout(vreg) $a[0][0], a01 = inout(vreg) $a[0][1], a02 = inout(vreg) $a[0][2],
            a10 = inout(vreg) $a[1][0], a11 = inout(vreg) $a[1][1], a12 = inout(vreg) $a[1][2],
            a20 = inout(vreg) $a[2][0], a21 = inout(vreg) $a[2][1], a22 = inout(vreg) $a[2][2],
            a30 = inout(vreg) $a[3][0], a31 = inout(vreg) $a[3][1], a32 = inout(vreg) $a[3][2],
            a40 = inout(vreg) $a[4][0], a41 = inout(vreg) $a[4][1], a42 = inout(vreg) $a[4][2],
            a50 = inout(vreg) $a[5][0], a51 = inout(vreg) $a[5][1], a52 = inout(vreg) $a[5][2],
            a60 = inout(vreg) $a[6][0], a61 = inout(vreg) $a[6][1], a62 = inout(vreg) $a[6][2],
            a70 = inout(vreg) $a[7][0], a71 = inout(vreg) $a[7][1], a72 = inout(vreg) $a[7][2],
            options(nostack, readonly),
        )
    };
}

/// One step of an 8 x 12 tile ([`tile_8x12`]): the 24 multiply-adds `$op` by element of the
/// 12 pixels in v0-v2 (arrangement `$x`) by the 8 channels' weights in v3, v4 (or `$lo`,
/// `$hi`; lanes `$lane`, `.s` for `fmla`, `.4b` for `sdot`).
macro_rules! step_8x12 {
    ($op:literal, $x:literal, $lane:literal) => {
        step_8x12!($op, $x, $lane, "v3", "v4")
    };
    ($op:literal, $x:literal, $lane:literal, $lo:literal, $hi:literal) => {
        concat!(
            step_8x12!(@channel $op, $x, $lane, "0", $lo, "0"),
            step_8x12!(@channel $op, $x, $lane, "1", $lo, "1"),
            step_8x12!(@channel $op, $x, $lane, "2", $lo, "2"),
            step_8x12!(@channel $op, $x, $lane, "3", $lo, "3"),
            step_8x12!(@channel $op, $x, $lane, "4", $hi, "0"),
            step_8x12!(@channel $op, $x, $lane, "5", $hi, "1"),
            step_8x12!(@channel $op, $x, $lane, "6", $hi, "2"),
            step_8x12!(@channel $op, $x, $lane, "7", $hi, "3"),
        )
    };
    (@channel $op:literal, $x:literal, $lane:literal, $c:literal, $w:literal, $l:literal) => {
        concat!(
            $op, " {a", $c, "0:v}.4s, v0", $x, ", ", $w, $lane, "[", $l, "]\n",
            $op, " {a", $c, "1:v}.4s, v1", $x, ", ", $w, $lane, "[", $l, "]\n",
            $op, " {a", $c, "2:v}.4s, v2", $x, ", ", $w, $lane, "[", $l, "]\n",
        )
    };
}

/// One f32 step of a float 8 x 12 tile ([`direct`], [`pointwise`]): 12 positions from `$p`
/// (then `$p` moved on by `$inc`), the 8 weights from `{w}`, 24 `fmla` on 4 lanes.
macro_rules! tap_f32 {
    ($p:literal, $inc:literal) => {
        concat!(
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [", $p, "], ", $inc, "\n",
            "ldp q3, q4, [{w}], #32\n",
            step_8x12!("fmla", ".4s", ".s"),
        )
    };
}

/// Two f32 steps of a float 8 x 12 tile ([`pointwise`]'s [`channel_loop`], [`direct`]):
/// [`tap_f32`] twice, both channels' 16 weights in one `ld1` of 4 registers (v3-v6; 25
/// instructions a channel where [`tap_f32`] takes 26).
macro_rules! pair_f32 {
    ($p:literal, $inc:literal) => {
        pair_f32!($p, $inc, $p, $inc)
    };
    // The second step's positions from `$q`, moved on by `$inc2` ([`direct`]'s taps).
    ($p:literal, $inc:literal, $q:literal, $inc2:literal) => {
        concat!(
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [", $p, "], ", $inc, "\n",
            "ld1 {{v3.4s, v4.4s, v5.4s, v6.4s}}, [{w}], #64\n",
            step_8x12!("fmla", ".4s", ".s", "v3", "v4"),
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [", $q, "], ", $inc2, "\n",
            step_8x12!("fmla", ".4s", ".s", "v5", "v6"),
        )
    };
}

/// One f16 step of a float 8 x 24 tile ([`direct`], [`pointwise`]): 24 positions from `$p`
/// (then `$p` moved on by `$inc`), the 8 weights from `{w}` in the lanes of v3, 24 `fmla` on 8
/// lanes (FEAT_FP16).
macro_rules! tap_f16 {
    ($p:literal, $inc:literal) => {
        concat!(
            "ld1 {{v0.8h, v1.8h, v2.8h}}, [", $p, "], ", $inc, "\n",
            "ldr q3, [{w}], #16\n",
            tap_f16!(@all "v3"),
        )
    };
    (@channel $w:literal, $c:literal) => {
        concat!(
            "fmla {a", $c, "0:v}.8h, v0.8h, ", $w, ".h[", $c, "]\n",
            "fmla {a", $c, "1:v}.8h, v1.8h, ", $w, ".h[", $c, "]\n",
            "fmla {a", $c, "2:v}.8h, v2.8h, ", $w, ".h[", $c, "]\n",
        )
    };
    (@all $w:literal) => {
        concat!(
            tap_f16!(@channel $w, "0"),
            tap_f16!(@channel $w, "1"),
            tap_f16!(@channel $w, "2"),
            tap_f16!(@channel $w, "3"),
            tap_f16!(@channel $w, "4"),
            tap_f16!(@channel $w, "5"),
            tap_f16!(@channel $w, "6"),
            tap_f16!(@channel $w, "7"),
        )
    };
}

/// Two f16 steps of a float 8 x 24 tile ([`pointwise`]'s [`channel_loop`], [`direct`]):
/// [`tap_f16`] twice, both channels' 16 weights in one `ldp` (v3, v4).
macro_rules! pair_f16 {
    ($p:literal, $inc:literal) => {
        pair_f16!($p, $inc, $p, $inc)
    };
    // The second step's positions from `$q`, moved on by `$inc2` ([`direct`]'s taps).
    ($p:literal, $inc:literal, $q:literal, $inc2:literal) => {
        concat!(
            "ld1 {{v0.8h, v1.8h, v2.8h}}, [", $p, "], ", $inc, "\n",
            "ldp q3, q4, [{w}], #32\n",
            tap_f16!(@all "v3"),
            "ld1 {{v0.8h, v1.8h, v2.8h}}, [", $q, "], ", $inc2, "\n",
            tap_f16!(@all "v4"),
        )
    };
}

/// The loop over the input channels (`{n}` of them), the pixels from `{x}`, the next channel's
/// `{s}` bytes on: four channels a turn, after a lone first channel and a first pair if `{n}`
/// leaves them. A channel is the step `$one` (`tap_f32`, `tap_f16`, [`pointwise`]'s short
/// steps, [`winograd`]'s `step_24x4`); a pair is `$pair` where given (`pair_f32`, `pair_f16`:
/// both channels' weights in one load), else `$one` twice.
macro_rules! channel_loop {
    ($one:ident) => {
        channel_loop!(@turns $one, [$one!("{x}", "{s}"), $one!("{x}", "{s}")])
    };
    ($one:ident, $pair:ident) => {
        channel_loop!(@turns $one, [$pair!("{x}", "{s}")])
    };
    (@turns $one:ident, [$($pair:tt)*]) => {
        concat!(
            "tbz {n}, #0, 3f\n",
            $one!("{x}", "{s}"),
            "3:\n",
            "tbz {n}, #1, 5f\n",
            $($pair)*,
            "5:\n",
            "lsr {n}, {n}, #2\n",
            "cbz {n}, 4f\n",
            "2:\n",
            $($pair)*,
            $($pair)*,
            "subs {n}, {n}, #1\n",
            "b.ne 2b\n",
            "4:\n",
        )
    };
}

/// 8 f32 `fmla` by element: the accumulators `{<$a>0}`-`{<$a>7}` plus v0 times the lanes of
/// `$lo` (0-3) and `$hi` (4-7) ([`pointwise`]'s short tiles, [`winograd`]'s 24 x 4 tile).
macro_rules! by_lanes_f32 {
    ($a:literal, $lo:literal, $hi:literal) => {
        concat!(
            "fmla {", $a, "0:v}.4s, v0.4s, ", $lo, ".s[0]\n",
            "fmla {", $a, "1:v}.4s, v0.4s, ", $lo, ".s[1]\n",
            "fmla {", $a, "2:v}.4s, v0.4s, ", $lo, ".s[2]\n",
            "fmla {", $a, "3:v}.4s, v0.4s, ", $lo, ".s[3]\n",
            "fmla {", $a, "4:v}.4s, v0.4s, ", $hi, ".s[0]\n",
            "fmla {", $a, "5:v}.4s, v0.4s, ", $hi, ".s[1]\n",
            "fmla {", $a, "6:v}.4s, v0.4s, ", $hi, ".s[2]\n",
            "fmla {", $a, "7:v}.4s, v0.4s, ", $hi, ".s[3]\n",
        )
    };
}

pub mod direct;
pub mod dotprod;
pub mod fp16;
pub mod fp32;
pub mod int8;
pub mod pointwise;
pub mod widening;
pub mod winograd;

use crate::cpu::Cpu;
use crate::kernels::Kernels;
use crate::plan::{Applies, Pass, Stage};

/// Offers this architecture's passes, each plugged where `cpu` has its features.
pub fn plug(cpu: &Cpu, kernels: &mut Kernels) {
    kernels.offer(
        Pass {
            name: "aarch64-fp32-convs",
            what: "Winograd F(4x4, 3x3) for 3x3 stride-1 convs, direct 7x7 stem and 3x3 stride-2 convs, 1x1 stride-1 convs on the input as it is (fp32 NEON; residual, ReLU fused)",
            stage: Stage::Decluttered,
            applies: Applies::F32Convs,
            run: fp32::prepare,
        },
        "NEON",
        cpu.asimd,
    );
    kernels.offer(
        Pass {
            name: "aarch64-fp16-convs",
            what: "Winograd F(4x4, 3x3) for 3x3 stride-1 convs, direct 7x7 stem and 3x3 stride-2 convs, 1x1 stride-1 convs on the input as it is, of f16 plans (f16 tensors; residual, ReLU fused)",
            stage: Stage::Decluttered,
            applies: Applies::F16Convs,
            run: fp16::prepare,
        },
        "fp16",
        cpu.fp16,
    );
    kernels.offer(
        Pass {
            name: "aarch64-dotprod-int8-convs",
            what: "int8 convs with sdot (8x8 tiles on FastIm2col patches), requantize epilogue in registers",
            stage: Stage::Optimized,
            applies: Applies::Int8,
            run: dotprod::speed_up,
        },
        "dotprod, no SVE (with SVE tract runs its own SVE int8 kernels)",
        dotprod::takes_over(cpu),
    );
    kernels.offer(
        Pass {
            name: "aarch64-widening-int8-convs",
            what: "int8 3x3 stride-1 convs with smull/smlal/sadalp reading the padded input directly, requantize epilogue in registers",
            stage: Stage::Optimized,
            applies: Applies::Int8,
            run: widening::speed_up,
        },
        "NEON without dotprod (Cortex-A72), no SVE",
        widening::takes_over(cpu),
    );
}
