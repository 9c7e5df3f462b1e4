//! What the architectures' kernels share (as tract-linalg's `frame/`): no instruction of any
//! instruction set is written here.
//!
//! - [`direct`]: the phase-split input, steps and blocked weights of the direct large-kernel
//!   float convs (the 7x7 stem) of both architectures.
//! - [`float_conv`]: which of tract's float `Conv`s this crate's fp32 ops may take, the
//!   element-wise ops after them that an op takes over ([`float_conv::Epilogue`]), and the
//!   placement loop that swaps them in; `crate::kernels::x86_64::fp32` and
//!   `crate::kernels::aarch64::fp32` run it with their own ops.
//! - [`winograd`]: the Winograd F(2x2, 3x3) / F(4x4, 3x3) conv op ([`winograd::WinogradConv`]):
//!   weights transformed in float64, geometry, blocking, threads and eval, generic over the
//!   four loops an instruction set writes ([`winograd::WinogradKernel`]: split, input
//!   transform, products, output transform with the epilogue).
//! - [`int8_chains`]: the conv chains of an int8 plan (`FastIm2col -> OptMatMul ->
//!   Int8Epilogue`) read back (weights, offsets, epilogue, patches) and swapped for an
//!   instruction set's int8 conv op (`crate::kernels::x86_64::vnni`,
//!   `crate::kernels::aarch64::dotprod`), with their shared eval plumbing.
//! - [`quads`]: the padded input in channel quads those int8 kernels read directly instead of
//!   patches, and the op writing it (each instruction set writes the rows).

pub(crate) mod direct;
pub mod float_conv;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod int8_chains;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod quads;
pub mod winograd;
