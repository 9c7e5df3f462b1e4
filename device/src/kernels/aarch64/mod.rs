//! aarch64 kernels: [`dotprod`] runs int8 plans' convs with `sdot` (FEAT_DotProd: Cortex-A76,
//! A78AE); elsewhere tract's own NEON kernels run behind the portable passes of
//! `crate::plan::PORTABLE`.
//!
//! A kernel for this architecture goes in a module here (e.g. `winograd_f16.rs`), as an op
//! plus the pass that swaps it in, and [`plug`] offers that pass with the features it needs
//! from [`Cpu`] (`fp16`, `dotprod`, `i8mm`, `sve`: read from HWCAP), exactly as
//! `crate::kernels::x86_64::plug` does.

pub mod dotprod;

use crate::cpu::Cpu;
use crate::kernels::Kernels;
use crate::plan::{Applies, Pass, Stage};

/// Offers this architecture's passes, each plugged where `cpu` has its features.
pub fn plug(cpu: &Cpu, kernels: &mut Kernels) {
    kernels.offer(
        Pass {
            name: "aarch64-dotprod-int8-convs",
            what: "int8 convs with sdot (8x8 tiles on FastIm2col patches), requantize epilogue in registers",
            stage: Stage::Optimized,
            applies: Applies::Int8,
            run: dotprod::speed_up,
        },
        "dotprod",
        cpu.dotprod,
    );
}
