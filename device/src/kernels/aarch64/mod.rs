//! aarch64 kernels: the dispatch entry. None are written yet, so tract's own NEON kernels run
//! behind the portable passes of `crate::plan::PORTABLE`.
//!
//! A kernel for this architecture goes in a module here (e.g. `dotprod.rs` for `sdot` int8
//! convs, `winograd_f16.rs`), as an op plus the pass that swaps it in, and [`plug`] offers that
//! pass with the features it needs from [`Cpu`] (`fp16`, `dotprod`, `i8mm`, `sve`: read from
//! HWCAP), exactly as `crate::kernels::x86_64::plug` does.

use crate::cpu::Cpu;
use crate::kernels::Kernels;

/// Offers this architecture's passes (none yet).
pub fn plug(cpu: &Cpu, kernels: &mut Kernels) {
    let _ = (cpu, kernels);
}
