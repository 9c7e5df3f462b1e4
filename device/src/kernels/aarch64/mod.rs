//! aarch64 kernels: [`fp32`] swaps fp32 plans' 3x3 stride-1 convs for [`winograd`] (NEON).
//! Everything else runs tract's own NEON kernels behind the portable passes of
//! `crate::plan::PORTABLE`.
//!
//! A kernel for this architecture goes in a module here (e.g. `dotprod.rs` for `sdot` int8
//! convs, `winograd_f16.rs`), as an op plus the pass that swaps it in, and [`plug`] offers that
//! pass with the features it needs from [`Cpu`] (`asimd`, `fp16`, `dotprod`, `i8mm`, `sve`:
//! read from HWCAP), exactly as `crate::kernels::x86_64::plug` does.

pub mod fp32;
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
}
