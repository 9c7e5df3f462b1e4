//! Register helpers the AVX-512 kernels share ([`crate::kernels::x86_64::winograd`],
//! [`crate::kernels::x86_64::direct`], [`crate::kernels::x86_64::vnni`]): lane counts and masks
//! (the fused epilogue flags and the NCHW/CHW shapes of their tensors are
//! `crate::kernels::frame::float_conv`'s, shared with aarch64).

use std::arch::x86_64::__mmask16;

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
