//! The fp32 plans' own convolutions on aarch64 (NEON, every aarch64 CPU; what a Pi 4's
//! Cortex-A72 runs): [`prepare`] swaps them in for tract's float `Conv`s of the decluttered
//! model, before tract's optimizer.
//!
//! - 3x3 stride-1 padding-1 convs: `crate::kernels::aarch64::winograd` (Winograd F(4x4, 3x3):
//!   4x fewer multiply-adds), with the residual addition and the ReLU that follow.
//! - Convs with kernels of 5 and more (ResNet's 7x7/2 stem) and 3x3 stride-2 ones (ResNet's
//!   downsampling 3x3 convs, but to 7x7 outputs): `crate::kernels::aarch64::direct`, with the
//!   ReLU.
//! - 1x1 stride-1 convs (`EinSum`s by then, with their bias `Add`):
//!   `crate::kernels::aarch64::pointwise`, the input read as it is (no repack), with the
//!   residual addition and the ReLU that follow.
//! - Everything else (the 3x3 stride-2 convs to 7x7 outputs, the classifier) stays tract's.
//!   (1x1 stride-2 convs are 1x1 stride-1 ones after `FastDownsample` by then.)
//!
//! Which convs qualify and how they are swapped in is `crate::kernels::frame::float_conv`'s
//! (shared with x86_64). `--conv tract` (`ConvAlgorithm::Tract`) keeps tract's everywhere.

use crate::kernels::aarch64::direct::DirectConv;
use crate::kernels::aarch64::winograd::WinogradConv;
use crate::kernels::aarch64::pointwise::PointwiseConv;
use crate::kernels::frame::float_conv::{place, place_pointwise};
use tract_core::internal::*;

/// Replaces every float `Conv` of a decluttered model that an op of this crate computes (see
/// the module doc); returns how many. Plugged (`crate::kernels::aarch64::plug`) on CPUs with
/// NEON; runs before tract's optimizer, on f32 plans only.
pub fn prepare(model: &mut TypedModel) -> TractResult<usize> {
    // The ops run NEON instructions: never wired in on a CPU without them, whoever calls.
    if !crate::cpu::Cpu::get().asimd {
        return Ok(0);
    }
    let pointwise = place_pointwise(model, f32::datum_type(), |conv, epilogue| {
        Box::new(PointwiseConv::<f32>::new(conv, epilogue))
    })?;
    let convs = place(model, |conv| {
        WinogradConv::<f32>::take(conv).or_else(|| DirectConv::<f32>::take(conv))
    })?;
    Ok(pointwise + convs)
}
