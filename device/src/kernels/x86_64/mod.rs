//! x86_64 kernels (AVX-512 F and VNNI): [`fp32`] swaps fp32 plans' convs for [`winograd`]
//! (3x3 stride 1) and [`direct`] (the 7x7/2 stem); [`vnni`] runs int8 plans' convs.

pub mod direct;
pub mod fp32;
pub mod vnni;
pub mod winograd;
