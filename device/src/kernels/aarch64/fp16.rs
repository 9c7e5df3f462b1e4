//! The f16 plans' own convolutions on aarch64 (`--precision f16`, on CPUs with FEAT_FP16: a
//! Pi 5's Cortex-A76, Orin's A78AE): [`prepare`] swaps `crate::kernels::aarch64::winograd` on
//! f16 tensors (Winograd F(4x4, 3x3): its transforms in f32 lanes, the input, residual and
//! output converted at the edges; its products in f16 lanes, 8 tiles a `fmla`, summed in f32
//! by 32 input channels) in for the 3x3 stride-1 padding-1 f16 `Conv`s
//! that tract's `FloatPrecisionTranslator` leaves in the decluttered model, with the residual
//! addition and the ReLU that follow, and `crate::kernels::aarch64::direct` on f16 tensors
//! (8 x 24 tiles of f16 `fmla`) for convs with kernels of 5 and more (ResNet's 7x7/2 stem) and
//! 3x3 stride-2 ones (but to 7x7 outputs), with the ReLU, and
//! `crate::kernels::aarch64::pointwise` on f16 tensors (8 x 24 tiles of f16 `fmla` on the
//! input as it is) for the 1x1 stride-1 convs (`EinSum`s by then), with the residual and
//! ReLU. Everything else (the 3x3 stride-2 convs to 7x7 outputs, the classifier) stays
//! tract's fp16 kernels.
//!
//! Which convs qualify and how they are swapped in is `crate::kernels::frame::float_conv`'s.

use crate::kernels::aarch64::direct::DirectConv;
use crate::kernels::aarch64::pointwise::PointwiseConv;
use crate::kernels::aarch64::winograd::WinogradConv;
use crate::kernels::frame::float_conv::{place, place_pointwise};
use tract_core::internal::*;

/// Replaces every f16 3x3 stride-1 `Conv` of a decluttered model by a [`WinogradConv`] on f16
/// tensors, every f16 large-kernel or 3x3 stride-2 one by a [`DirectConv`], and every f16
/// 1x1 stride-1 one by a [`PointwiseConv`]; returns how many. Plugged
/// (`crate::kernels::aarch64::plug`) on CPUs with fp16 arithmetic (the plans it applies to
/// exist only there); runs before tract's optimizer.
pub fn prepare(model: &mut TypedModel) -> TractResult<usize> {
    // The ops run NEON and FEAT_FP16 instructions: never wired in on a CPU without them,
    // whoever calls.
    let cpu = crate::cpu::Cpu::get();
    if !(cpu.asimd && cpu.fp16) {
        return Ok(0);
    }
    let pointwise = place_pointwise(model, f16::datum_type(), |conv, epilogue| {
        Box::new(PointwiseConv::<f16>::new(conv, epilogue))
    })?;
    let convs = place(model, |conv| WinogradConv::<f16>::take(conv).or_else(|| DirectConv::<f16>::take(conv)))?;
    Ok(pointwise + convs)
}
