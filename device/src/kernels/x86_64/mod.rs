//! x86_64 kernels: [`fp32`] swaps fp32 plans' convs for [`winograd`] (3x3 stride 1) and
//! [`direct`] (the 7x7/2 stem), AVX-512 F; [`vnni`] runs int8 plans' convs with AVX-512 VNNI,
//! [`avx2`] on CPUs with AVX2 and no VNNI; [`avx512`] holds the register helpers the AVX-512
//! kernels share. [`plug`] registers them.

pub mod avx2;
pub mod avx512;
pub mod direct;
pub mod fp32;
pub mod vnni;
pub mod winograd;

use crate::cpu::Cpu;
use crate::kernels::Kernels;
use crate::plan::{Applies, Pass, Stage};

/// Offers this architecture's passes, each plugged where `cpu` has its features.
pub fn plug(cpu: &Cpu, kernels: &mut Kernels) {
    kernels.offer(
        Pass {
            name: "x86_64-fp32-convs",
            what: "Winograd F(4x4, 3x3) for 3x3 stride-1 convs, direct 7x7 stem (fp32; residual, ReLU fused)",
            stage: Stage::Decluttered,
            applies: Applies::F32Convs,
            run: |model| fp32::prepare(model).map(|r| r.winograd + r.direct),
        },
        "AVX-512 F",
        cpu.avx512f,
    );
    kernels.offer(
        Pass {
            name: "x86_64-vnni-int8-convs",
            what: "int8 convs reading the input directly (vpdpbusd), requantize epilogue in registers",
            stage: Stage::Optimized,
            applies: Applies::Int8,
            run: vnni::speed_up,
        },
        "AVX-512 F, BW, VL and VNNI",
        cpu.avx512_vnni,
    );
    kernels.offer(
        Pass {
            name: "x86_64-avx2-int8-convs",
            what: "int8 convs reading the input directly (vpmaddwd on 16-bit lanes), requantize epilogue in registers",
            stage: Stage::Optimized,
            applies: Applies::Int8,
            run: avx2::speed_up,
        },
        "AVX2, where there is no AVX-512 VNNI",
        cpu.avx2 && !cpu.avx512_vnni,
    );
}
