//! The CPU the device runs on, detected once at start ([`Cpu::get`]): the instruction-set
//! features the kernels of [`crate::kernels`] need. Every decision that depends on the CPU (which
//! kernels plug in, whether `--precision f16` computes in f16, the AVX2 copies of
//! [`crate::ops::simd`]) reads this one value.
//!
//! x86_64 asks CPUID (`is_x86_feature_detected!`). aarch64 asks the kernel's HWCAP words
//! (`getauxval(AT_HWCAP)`, `AT_HWCAP2`), not /proc/cpuinfo: that is what boards report their
//! features in, and what qemu-user sets per `-cpu` (its /proc/cpuinfo is the host's).

use std::sync::OnceLock;

use serde::Serialize;

/// Instruction-set features of the running CPU. All false on the other architecture's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// x86_64 AVX2 (the wide copies of the element-wise loops).
    pub avx2: bool,
    /// x86_64 AVX-512 F (the fp32 Winograd and direct convs).
    pub avx512f: bool,
    /// x86_64 AVX-512 BW, VL and VNNI, with F: the int8 conv (`vpdpbusd`).
    pub avx512_vnni: bool,
    /// aarch64 Advanced SIMD (NEON): every aarch64 Linux CPU.
    pub asimd: bool,
    /// aarch64 FEAT_FP16: f16 arithmetic, scalar and vector (HWCAP FPHP and ASIMDHP; Cortex-A55,
    /// A76, A78AE: Pi 5, Jetson Orin; not the Pi 4's A72).
    pub fp16: bool,
    /// aarch64 FEAT_DotProd (`sdot`/`udot`, HWCAP ASIMDDP; A76, A78AE; not A72).
    pub dotprod: bool,
    /// aarch64 FEAT_I8MM (`smmla`, HWCAP2 I8MM; Neoverse V1/N2, A710 and later).
    pub i8mm: bool,
    /// aarch64 SVE (HWCAP SVE).
    pub sve: bool,
}

impl Cpu {
    /// The running CPU, detected on the first call.
    pub fn get() -> &'static Cpu {
        static CPU: OnceLock<Cpu> = OnceLock::new();
        CPU.get_or_init(Cpu::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Cpu {
        use std::arch::is_x86_feature_detected as has;
        let avx512f = has!("avx512f");
        Cpu {
            avx2: has!("avx2"),
            avx512f,
            avx512_vnni: avx512f && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni"),
            ..Cpu::default()
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn detect() -> Cpu {
        // SAFETY: getauxval only reads the process's auxiliary vector.
        let (hwcap, hwcap2) = unsafe { (libc::getauxval(libc::AT_HWCAP), libc::getauxval(libc::AT_HWCAP2)) };
        Cpu::from_hwcap(hwcap, hwcap2)
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn detect() -> Cpu {
        Cpu::default()
    }

    /// The features in aarch64 Linux's HWCAP words (arch/arm64/include/uapi/asm/hwcap.h).
    pub fn from_hwcap(hwcap: u64, hwcap2: u64) -> Cpu {
        const ASIMD: u64 = 1 << 1;
        const FPHP: u64 = 1 << 9;
        const ASIMDHP: u64 = 1 << 10;
        const ASIMDDP: u64 = 1 << 20;
        const SVE: u64 = 1 << 22;
        const HWCAP2_I8MM: u64 = 1 << 13;
        let has = |bits: u64| hwcap & bits == bits;
        Cpu {
            asimd: has(ASIMD),
            fp16: has(FPHP | ASIMDHP),
            dotprod: has(ASIMDDP),
            sve: has(SVE),
            i8mm: hwcap2 & HWCAP2_I8MM != 0,
            ..Cpu::default()
        }
    }

    /// The names of the features present, as `device inspect` prints them.
    pub fn feature_names(&self) -> Vec<&'static str> {
        let all = [
            ("avx2", self.avx2),
            ("avx512f", self.avx512f),
            ("avx512vnni", self.avx512_vnni),
            ("asimd", self.asimd),
            ("fp16", self.fp16),
            ("dotprod", self.dotprod),
            ("i8mm", self.i8mm),
            ("sve", self.sve),
        ];
        all.into_iter().filter(|(_, on)| *on).map(|(n, _)| n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwcap_bits_of_the_board_cpus() {
        // HWCAP words as Linux reports them (qemu 7.2 -cpu cortex-a72 / cortex-a76; an fp16 CPU
        // has both FPHP and ASIMDHP).
        let a72 = Cpu::from_hwcap(0b1111_1111 | 1 << 11, 0);
        assert!(a72.asimd && !a72.fp16 && !a72.dotprod && !a72.i8mm && !a72.sve);
        let a76 = Cpu::from_hwcap(0xff | 1 << 9 | 1 << 10 | 1 << 20, 0);
        assert!(a76.asimd && a76.fp16 && a76.dotprod && !a76.i8mm);
        assert_eq!(a76.feature_names(), ["asimd", "fp16", "dotprod"]);
        // FPHP without ASIMDHP is not fp16 arithmetic for the vector kernels.
        assert!(!Cpu::from_hwcap(1 << 9, 0).fp16);
        let v1 = Cpu::from_hwcap(0xff | 1 << 9 | 1 << 10 | 1 << 20 | 1 << 22, 1 << 13);
        assert!(v1.sve && v1.i8mm);
    }

    #[test]
    fn detected_once_and_consistent_with_the_architecture() {
        let cpu = Cpu::get();
        assert!(std::ptr::eq(cpu, Cpu::get()));
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(cpu.avx512f, std::arch::is_x86_feature_detected!("avx512f"));
            assert!(!cpu.asimd && !cpu.fp16);
            // VNNI implies F.
            assert!(!cpu.avx512_vnni || cpu.avx512f);
        }
        #[cfg(target_arch = "aarch64")]
        assert!(cpu.asimd && !cpu.avx2, "{cpu:?}");
    }
}
