//! Wider vectors for the element-wise loops of the plan's own ops.
//!
//! The crate is compiled for the baseline of each target: SSE2 on x86_64 (4 f32 lanes), NEON on
//! aarch64. The loops of [`crate::ops::epilogue`], [`crate::ops::quantize`] and [`crate::ops::maxpool`] are
//! written so that the compiler vectorizes them; [`wide_fn!`] compiles such a function a second
//! time for AVX2 (8 lanes) and calls that copy on CPUs that have it. Same operations, same
//! results: Rust never contracts `a * b + c` into an FMA, with or without the feature.

/// `fn name(args) { body }`, with the body also compiled for AVX2 and that copy called where
/// the CPU has it (x86_64; elsewhere the one baseline copy).
macro_rules! wide_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::cpu::Cpu::get().avx2 {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_fn;
