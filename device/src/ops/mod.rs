//! Portable ops the plan rewrites swap into tract's plan, and their helpers.
//!
//! [`const_fold`] (what tract's optimizer leaves to run time), [`maxpool`] (separable),
//! [`downsample`] (strided copies), and around the integer convs of int8 plans [`im2col`] (patch
//! packing), [`quantize`] (f32 -> i8) and [`epilogue`] (i32 accumulators -> the next layer's input
//! in one pass). `matching` finds and replaces ops for the passes; `parallel` splits their loops over tract's thread pool; `simd` compiles them
//! for wider vectors where the CPU has them.

pub mod const_fold;
pub mod downsample;
pub mod epilogue;
pub mod im2col;
pub(crate) mod matching;
pub mod maxpool;
pub(crate) mod parallel;
pub mod quantize;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod test_util;
