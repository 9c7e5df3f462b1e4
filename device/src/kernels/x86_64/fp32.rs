//! The fp32 plans' own convolutions, on x86 CPUs with AVX-512 F: [`prepare`] swaps them in
//! for tract's `Conv` in the decluttered model, before tract's optimizer.
//!
//! - 3x3 stride-1 padding-1 convs: `crate::kernels::x86_64::winograd` (Winograd F(4x4, 3x3) or F(2x2, 3x3): 4x
//!   or 2.25x fewer multiply-adds), with the residual addition and the ReLU that follow.
//! - Convs with kernels of 5 and more (ResNet's 7x7/2 stem): `crate::kernels::x86_64::direct`, with the ReLU.
//! - Everything else (stride-2 3x3, 1x1) stays tract's: its im2col + matrix product runs
//!   those at about the speed of ONNX Runtime's.
//!
//! Which convs qualify and how they are swapped in is `crate::kernels::frame::float_conv`'s
//! (shared with aarch64). `--conv tract` (`ConvAlgorithm::Tract`) keeps tract's everywhere.

use crate::kernels::frame::float_conv::{place, Take};
use crate::kernels::x86_64::direct::DirectConv;
use crate::kernels::x86_64::winograd::WinogradConv;
use tract_core::internal::*;

/// How many convs [`prepare`] gave to each op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    pub winograd: usize,
    pub direct: usize,
}

/// Replaces every float `Conv` of a decluttered model that an op of this crate computes (see
/// the module doc). Plugged (`crate::kernels::x86_64::plug`) on CPUs with AVX-512 F; runs before
/// tract's optimizer, on f32 plans only.
pub fn prepare(model: &mut TypedModel) -> TractResult<Replaced> {
    let mut replaced = Replaced::default();
    // The ops run AVX-512 instructions: never wired in on a CPU without them, whoever calls.
    if !crate::cpu::Cpu::get().avx512f {
        return Ok(replaced);
    }
    place(model, |conv| {
        if let Some(take) = WinogradConv::take(conv) {
            replaced.winograd += 1;
            Some(take)
        } else if conv.dt == f32::datum_type() && conv.g.kernel.0 >= 5 && conv.g.kernel.1 >= 5 {
            replaced.direct += 1;
            Some(Take {
                suffix: "direct",
                residuals: false,
                op: Box::new(|conv, epilogue| {
                    Box::new(DirectConv::new(
                        conv.g.clone(),
                        conv.k,
                        conv.batched,
                        &conv.kernel,
                        &conv.bias,
                        epilogue,
                    ))
                }),
            })
        } else {
            None
        }
    })?;
    Ok(replaced)
}
