//! aarch64 kernels: [`fp32`] swaps fp32 plans' 3x3 stride-1 convs for [`winograd`] (NEON, every
//! board); [`dotprod`] runs int8 plans' convs with `sdot` (FEAT_DotProd: Cortex-A76, A78AE),
//! [`widening`] their 3x3 stride-1 convs with `smull`/`smlal` where there is no dotprod
//! (Cortex-A72); [`int8`] holds what those two share.
//! Everything else runs tract's own NEON kernels behind the portable passes of
//! `crate::plan::PORTABLE`.
//!
//! A kernel for this architecture goes in a module here (e.g. `winograd_f16.rs`), as an op
//! plus the pass that swaps it in, and [`plug`] offers that pass with the features it needs
//! from [`Cpu`] (`asimd`, `fp16`, `dotprod`, `i8mm`, `sve`: read from HWCAP), exactly as
//! `crate::kernels::x86_64::plug` does.

pub mod dotprod;
pub mod fp16;
pub mod fp32;
pub mod int8;
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
            what: "Winograd F(4x4, 3x3) for 3x3 stride-1 convs (fp32 NEON; residual, ReLU fused)",
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
            what: "Winograd F(4x4, 3x3) for 3x3 stride-1 convs of f16 plans (f16 tensors, f32 NEON lanes; residual, ReLU fused)",
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
