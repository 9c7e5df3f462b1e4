//! Constant folding that tract's optimizer leaves undone in int8 plans.
//!
//! A quantized conv with a non-zero input zero point needs the per-channel sums of its kernel
//! (`x0 * sum(k)` is subtracted from the accumulator). tract wires them as `Cast` i8 -> i32 and
//! `Reduce<Sum>` of the kernel constant, and its own constant propagation declines to fold them
//! when the kernel is over its memory budget and has a second user (the weight packing) or when a
//! step grows the data (the cast to i32). So the large layers recompute their kernel sums on every
//! inference (device/README.md, "Why each op exists"). [`fold`] evaluates every node whose
//! inputs are all constants once, at load time, and drops what nothing uses any more.

use tract_core::internal::*;
use tract_core::ops::konst::Const;

/// Replaces every node whose inputs are all constants by its (constant) outputs; returns how
/// many nodes were folded.
pub fn fold(model: &mut TypedModel) -> TractResult<usize> {
    // One pass in evaluation order: a fold rewires the node's consumers to a constant, so a
    // chain (kernel -> cast -> sum) folds link by link as the pass reaches it. Patches only add
    // nodes, so the ids of the order stay valid.
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.inputs.is_empty() || node.op_is::<Const>() {
            continue;
        }
        let inputs = model
            .node_input_facts(id)?
            .iter()
            .map(|f| f.konst.clone().map(|k| k.into_tvalue()))
            .collect::<Option<TVec<TValue>>>();
        let Some(inputs) = inputs else {
            continue;
        };
        let Some(outputs) = node.op.eval_out_of_plan(inputs)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        for (slot, value) in outputs.into_iter().enumerate() {
            let exotic = model
                .outlet_fact(OutletId::new(id, slot))?
                .exotic_fact
                .clone();
            let wire = patch.wire_node(
                format!("{}.folded.{slot}", node.name),
                Const::new_with_opt_exotic_fact(value.into_arc_tensor(), exotic)?,
                &[],
            )?[0];
            patch.shunt_outside(model, OutletId::new(id, slot), wire)?;
        }
        patch.apply(model)?;
        folded += 1;
    }
    model.compact()?;
    Ok(folded)
}
