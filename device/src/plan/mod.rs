//! The device's rewrites of tract's plans, as one named list run in order (as tract's own
//! `declutter()` / `codegen()` pass lists): [`PORTABLE`], the passes every CPU runs, then the
//! passes the CPU's kernels plugged in (`crate::kernels::Kernels`), each at its [`Stage`].
//!
//! Each pass swaps in an op of this crate where tract's own is slow on the plans
//! `crate::engine::import` builds, computing the same values (each op's module says how that is
//! tested), and returns how many nodes it replaced. A pass lives beside the op it places:
//! [`crate::ops::const_fold`], [`crate::ops::maxpool`] and [`crate::ops::downsample`] (all plans),
//! then for int8 plans [`crate::ops::im2col`], [`crate::ops::quantize`] and
//! [`crate::ops::epilogue`] (which looks for the quantizers `quantize` put in); a kernel pass
//! that takes over their chains (x86_64 VNNI) runs after them.

use serde::Serialize;
use tract_core::internal::*;

/// When a pass runs: on the decluttered model (before tract's optimizer picks its kernels) or on
/// the optimized one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Decluttered,
    Optimized,
}

/// Which plans a pass applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applies {
    All,
    /// Plans with the integer convs of an int8 import.
    Int8,
    /// f32 plans, unless `--conv tract` keeps tract's convs.
    F32Convs,
    /// f16 plans (`--precision f16`), unless `--conv tract` keeps tract's convs.
    F16Convs,
}

/// One named rewrite.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub name: &'static str,
    /// What it swaps in, for `device inspect`.
    pub what: &'static str,
    pub stage: Stage,
    pub applies: Applies,
    /// Rewrites the model; returns how many nodes it replaced.
    pub run: fn(&mut TypedModel) -> TractResult<usize>,
}

/// The passes every CPU runs, in order.
pub const PORTABLE: [Pass; 7] = [
    Pass {
        name: "const-fold",
        what: "evaluates constant subgraphs tract leaves to run time (int8 kernel sums)",
        stage: Stage::Optimized,
        applies: Applies::All,
        run: crate::ops::const_fold::fold,
    },
    Pass {
        name: "maxpool",
        what: "separable max pool",
        stage: Stage::Optimized,
        applies: Applies::All,
        run: crate::ops::maxpool::speed_up,
    },
    Pass {
        name: "downsample",
        what: "strided copies for tract's Downsample",
        stage: Stage::Optimized,
        applies: Applies::All,
        run: crate::ops::downsample::speed_up,
    },
    Pass {
        name: "im2col",
        what: "int8 patch packing",
        stage: Stage::Optimized,
        applies: Applies::Int8,
        run: crate::ops::im2col::speed_up,
    },
    Pass {
        name: "quantize",
        what: "f32 -> i8 quantizer",
        stage: Stage::Optimized,
        applies: Applies::Int8,
        run: crate::ops::quantize::speed_up,
    },
    Pass {
        name: "epilogue",
        what: "i32 accumulators -> requantized next-layer input (bias, residual, ReLU) in one pass",
        stage: Stage::Optimized,
        applies: Applies::Int8,
        run: crate::ops::epilogue::speed_up,
    },
    Pass {
        name: "int8-pool",
        what: "the stem's max pool on its quantized output (i8), where only the next conv reads it",
        stage: Stage::Optimized,
        applies: Applies::Int8,
        run: crate::ops::maxpool::pool_quantized,
    },
];

/// Which passes a plan takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanKind {
    pub int8: bool,
    /// An f32 plan whose convs this crate may replace (not f16, not `--conv tract`).
    pub f32_convs: bool,
    /// An f16 plan whose convs this crate may replace (not `--conv tract`).
    pub f16_convs: bool,
}

impl PlanKind {
    fn takes(&self, pass: &Pass) -> bool {
        match pass.applies {
            Applies::All => true,
            Applies::Int8 => self.int8,
            Applies::F32Convs => self.f32_convs,
            Applies::F16Convs => self.f16_convs,
        }
    }
}

/// A pass that ran, and how many nodes it replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub pass: &'static str,
    pub stage: Stage,
    pub replaced: usize,
}

/// Runs, in list order, the passes of `stage` that a `kind` plan takes.
pub fn run(passes: &[Pass], stage: Stage, kind: PlanKind, model: &mut TypedModel) -> TractResult<Vec<Applied>> {
    let mut applied = vec![];
    for pass in passes.iter().filter(|p| p.stage == stage && kind.takes(p)) {
        let replaced = (pass.run)(model).with_context(|| format!("plan pass {}", pass.name))?;
        applied.push(Applied { pass: pass.name, stage, replaced });
    }
    Ok(applied)
}
