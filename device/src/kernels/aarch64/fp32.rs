//! The fp32 plans' own convolutions on aarch64 (NEON, every aarch64 CPU; what a Pi 4's
//! Cortex-A72 runs): [`prepare`] swaps `crate::kernels::aarch64::winograd` (Winograd F(4x4,
//! 3x3): 4x fewer multiply-adds) in for tract's 3x3 stride-1 padding-1 float `Conv`s of the
//! decluttered model, before tract's optimizer, with the residual addition and the ReLU that
//! follow. Everything else (the 7x7/2 stem, stride-2 3x3, 1x1) stays tract's.
//!
//! Which convs qualify and how they are swapped in is `crate::kernels::frame::float_conv`'s
//! (shared with x86_64). `--conv tract` (`ConvAlgorithm::Tract`) keeps tract's everywhere.

use crate::kernels::aarch64::winograd::WinogradConv;
use crate::kernels::frame::float_conv::place;
use tract_core::internal::*;

/// Replaces every float 3x3 stride-1 `Conv` of a decluttered model by a [`WinogradConv`];
/// returns how many. Plugged (`crate::kernels::aarch64::plug`) on CPUs with NEON; runs before
/// tract's optimizer, on f32 plans only.
pub fn prepare(model: &mut TypedModel) -> TractResult<usize> {
    // The op runs NEON instructions: never wired in on a CPU without them, whoever calls.
    if !crate::cpu::Cpu::get().asimd {
        return Ok(0);
    }
    place(model, WinogradConv::<f32>::take)
}
