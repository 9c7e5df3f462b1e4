//! The device's rewrites of tract's optimized plan, in the order they must run.
//!
//! Each swaps in an op of this crate where tract's own is slow on the plans `crate::engine::import`
//! builds, computing the same values (each module says how that is tested):
//! [`crate::ops::const_fold`] (all plans), [`crate::ops::maxpool`] and [`crate::ops::downsample`] (all
//! plans), then for int8 plans
//! [`crate::ops::im2col`], [`crate::ops::quantize`] and [`crate::ops::epilogue`] (which looks for the
//! quantizers `quantize` put in), then on x86 `crate::kernels::x86_64::vnni` (which takes over the chains
//! `im2col -> tract's matrix product -> epilogue` where the CPU has AVX-512 VNNI).

use tract_core::internal::*;

/// Rewrites an optimized plan; `int8`: the plan holds the integer convs of an int8 import.
pub fn speed_up(model: &mut TypedModel, int8: bool) -> TractResult<()> {
    crate::ops::const_fold::fold(model)?;
    crate::ops::maxpool::speed_up(model)?;
    crate::ops::downsample::speed_up(model)?;
    if int8 {
        crate::ops::im2col::speed_up(model)?;
        crate::ops::quantize::speed_up(model)?;
        crate::ops::epilogue::speed_up(model)?;
        #[cfg(target_arch = "x86_64")]
        crate::kernels::x86_64::vnni::speed_up(model)?;
    }
    Ok(())
}

/// Replaces, in place, the op of every node whose op is an `O` and for which `replace` gives a
/// new one (same inputs and outputs); returns how many.
pub(crate) fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    replace: impl Fn(&TypedModel, &TypedNode, &O) -> TractResult<Option<Box<dyn TypedOp>>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(op) = node.op_as::<O>() else {
            continue;
        };
        if let Some(new) = replace(model, node, op)? {
            model.node_mut(id).op = new;
            replaced += 1;
        }
    }
    Ok(replaced)
}
