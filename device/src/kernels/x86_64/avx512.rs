//! Register helpers the AVX-512 kernels share ([`crate::kernels::x86_64::winograd`],
//! [`crate::kernels::x86_64::direct`], [`crate::kernels::x86_64::vnni`]): lane counts and masks,
//! the fused epilogue flags, the NCHW/CHW shapes of their tensors.

use std::arch::x86_64::__mmask16;
use tract_core::internal::*;

/// 32-bit lanes (f32 or i32) of a 512-bit register.
pub(crate) const LANES: usize = 16;

/// The mask of the first `n` lanes (all for `n >= 16`).
#[inline]
pub(crate) fn lane_mask(n: usize) -> __mmask16 {
    if n >= LANES {
        !0
    } else {
        (1u16 << n) - 1
    }
}

/// What a conv op applies after its bias, taken over from the element-wise ops that followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// Adds the op's second input, of the output's shape.
    pub residual: bool,
    /// Then `max(0, .)`.
    pub relu: bool,
}

/// `[1, C, H, W]` or `[C, H, W]`.
pub(crate) fn shape(batched: bool, chw: [usize; 3]) -> TVec<usize> {
    if batched {
        tvec![1, chw[0], chw[1], chw[2]]
    } else {
        chw.into_iter().collect()
    }
}
