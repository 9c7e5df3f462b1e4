//! Kernels written for one instruction set, one module per architecture.
//!
//! [`x86_64`]: AVX-512 F convs for fp32 plans (Winograd, direct) and the AVX-512 VNNI int8 conv.
//! [`aarch64`]: the dispatch entry, ready for NEON/dotprod/i8mm kernels.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
