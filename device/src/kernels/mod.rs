//! Kernels written for one instruction set, one module per architecture, and the one plug point
//! that decides which of them run: [`Kernels::get`] starts from nothing (tract's kernels behind
//! the portable passes of `crate::plan::PORTABLE`), then the module of the architecture this
//! build is for offers its passes, each plugged only where [`crate::cpu::Cpu`] has what it needs
//! (as tract-linalg's `generic()` then `x86_64_fma::plug(&mut ops)`).
//!
//! [`frame`]: what the architectures share (the fp32 conv placement, the Winograd op).
//! [`x86_64`]: AVX-512 F convs for fp32 plans (Winograd, direct), the AVX-512 VNNI int8 conv and
//! the AVX2 one for CPUs without VNNI.
//! [`aarch64`]: NEON fp32 Winograd and the dotprod (`sdot`) int8 conv; where fp16/i8mm kernels
//! register.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod frame;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use std::sync::OnceLock;

use serde::Serialize;

use crate::cpu::Cpu;
use crate::plan::Pass;

/// A pass an architecture's module offered, and whether this CPU took it.
#[derive(Clone, Debug)]
pub struct Plug {
    pub pass: Pass,
    /// The CPU features it needs, in words.
    pub needs: &'static str,
    pub plugged: bool,
}

/// What `device inspect` prints for one [`Plug`].
#[derive(Clone, Debug, Serialize)]
pub struct PlugReport {
    pub pass: &'static str,
    pub what: &'static str,
    pub needs: &'static str,
    pub plugged: bool,
}

/// The kernel passes offered for this build's architecture, plugged or not on this CPU.
#[derive(Clone, Debug, Default)]
pub struct Kernels {
    pub plugs: Vec<Plug>,
}

impl Kernels {
    /// The kernels for the running CPU, decided once.
    pub fn get() -> &'static Kernels {
        static KERNELS: OnceLock<Kernels> = OnceLock::new();
        KERNELS.get_or_init(|| Kernels::for_cpu(Cpu::get()))
    }

    /// The kernels for `cpu`: none, then this architecture's module plugs its own.
    pub fn for_cpu(cpu: &Cpu) -> Kernels {
        let mut kernels = Kernels::default();
        #[cfg(target_arch = "x86_64")]
        x86_64::plug(cpu, &mut kernels);
        #[cfg(target_arch = "aarch64")]
        aarch64::plug(cpu, &mut kernels);
        let _ = cpu;
        kernels
    }

    /// Offers `pass`, plugged where `available` (the CPU has what `needs` says).
    pub fn offer(&mut self, pass: Pass, needs: &'static str, available: bool) {
        self.plugs.push(Plug { pass, needs, plugged: available });
    }

    /// The plugged passes, in the order they were offered.
    pub fn passes(&self) -> impl Iterator<Item = Pass> + '_ {
        self.plugs.iter().filter(|p| p.plugged).map(|p| p.pass)
    }

    /// The whole plan pass list: `crate::plan::PORTABLE`, then the plugged kernel passes (which
    /// may take over what the portable ones placed, so they run after them in each stage).
    pub fn plan_passes(&self) -> Vec<Pass> {
        crate::plan::PORTABLE.iter().copied().chain(self.passes()).collect()
    }

    pub fn report(&self) -> Vec<PlugReport> {
        self.plugs
            .iter()
            .map(|p| PlugReport { pass: p.pass.name, what: p.pass.what, needs: p.needs, plugged: p.plugged })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_plug_only_where_the_cpu_has_their_features() {
        // A CPU with nothing: every offered pass is listed, none plugged, the plan is PORTABLE.
        let none = Kernels::for_cpu(&Cpu::default());
        assert!(none.plugs.iter().all(|p| !p.plugged));
        assert_eq!(none.plan_passes().len(), crate::plan::PORTABLE.len());
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = Kernels::for_cpu(&Cpu { avx2: true, avx512f: true, avx512_vnni: true, ..Cpu::default() });
            let names: Vec<_> = avx512.passes().map(|p| p.name).collect();
            assert_eq!(names, ["x86_64-fp32-convs", "x86_64-vnni-int8-convs"]);
            let f_only = Kernels::for_cpu(&Cpu { avx512f: true, ..Cpu::default() });
            let names: Vec<_> = f_only.passes().map(|p| p.name).collect();
            assert_eq!(names, ["x86_64-fp32-convs"]);
            // AVX2 without VNNI (Zen 1-3, Intel before Ice Lake): the vpmaddwd int8 convs.
            let avx2 = Kernels::for_cpu(&Cpu { avx2: true, ..Cpu::default() });
            let names: Vec<_> = avx2.passes().map(|p| p.name).collect();
            assert_eq!(names, ["x86_64-avx2-int8-convs"]);
            let skylake_x = Kernels::for_cpu(&Cpu { avx2: true, avx512f: true, ..Cpu::default() });
            let names: Vec<_> = skylake_x.passes().map(|p| p.name).collect();
            assert_eq!(names, ["x86_64-fp32-convs", "x86_64-avx2-int8-convs"]);
            // The VNNI pass takes over the portable int8 passes' chains: it runs after them.
            let list = avx512.plan_passes();
            let at = |n: &str| list.iter().position(|p| p.name == n).unwrap();
            assert!(at("x86_64-vnni-int8-convs") > at("epilogue"));
        }
        #[cfg(target_arch = "aarch64")]
        {
            let a76 = Kernels::for_cpu(&Cpu { asimd: true, fp16: true, dotprod: true, ..Cpu::default() });
            let names: Vec<_> = a76.passes().map(|p| p.name).collect();
            assert_eq!(names, ["aarch64-fp32-convs", "aarch64-fp16-convs", "aarch64-dotprod-int8-convs"]);
            let a72 = Kernels::for_cpu(&Cpu { asimd: true, ..Cpu::default() });
            let names: Vec<_> = a72.passes().map(|p| p.name).collect();
            assert_eq!(names, ["aarch64-fp32-convs", "aarch64-widening-int8-convs"]);
            // The sdot pass takes over the portable int8 passes' chains: it runs after them.
            let list = a76.plan_passes();
            let at = |n: &str| list.iter().position(|p| p.name == n).unwrap();
            assert!(at("aarch64-dotprod-int8-convs") > at("epilogue"));
            // With SVE (qemu's max, Neoverse V1/V2) tract's SVE int8 kernels keep the int8 convs.
            let sve = Kernels::for_cpu(&Cpu { asimd: true, fp16: true, dotprod: true, sve: true, ..Cpu::default() });
            let names: Vec<_> = sve.passes().map(|p| p.name).collect();
            assert_eq!(names, ["aarch64-fp32-convs", "aarch64-fp16-convs"]);
        }
    }
}
