//! Helpers the plan rewrites share to find and replace ops in a tract model (the passes of
//! [`crate::plan`] live beside the op they swap in; this module is below all of them, so that
//! dependencies go one way: plan -> ops / kernels -> ops::matching).

use tract_core::internal::*;

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
