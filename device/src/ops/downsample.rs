//! A strided copy for tract's `Downsample`.
//!
//! tract subsamples the input of a stride-2 1x1 conv (ResNet's downsample shortcuts) with
//! `Downsample` ops, one per axis, which slice through a generic array view and copy element by
//! element (what that cost: device/README.md, "Why each op exists").
//! [`FastDownsample`] copies the kept rows whole (`memcpy`) and, along the last axis, every
//! `stride`-th element in a plain loop: the same values, any element size.

use tract_core::internal::*;
use tract_core::ops::Downsample;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FastDownsample {
    axis: usize,
    /// The axis' extent and the elements after it (the input is `[.., len, inner]`).
    len: usize,
    inner: usize,
    stride: usize,
    modulo: usize,
    shape: TVec<usize>,
    datum_type: DatumType,
}

impl FastDownsample {
    fn kept(&self) -> usize {
        (self.len - self.modulo).div_ceil(self.stride)
    }

    fn out_shape(&self) -> TVec<usize> {
        let mut shape = self.shape.clone();
        shape[self.axis] = self.kept();
        shape
    }
}

impl Op for FastDownsample {
    fn name(&self) -> StaticName {
        "FastDownsample".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} axis {}: keeps {} of {} ({}::{})",
            self.shape,
            self.axis,
            self.kept(),
            self.len,
            self.modulo,
            self.stride
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FastDownsample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == self.datum_type && x.shape() == &self.shape[..],
            "FastDownsample: input {:?} {:?}, planned for {:?} {:?}",
            x.datum_type(),
            x.shape(),
            self.datum_type,
            self.shape
        );
        let kept = self.kept();
        let size = self.datum_type.size_of();
        let mut y = unsafe { Tensor::uninitialized_dt(self.datum_type, &self.out_shape())? };
        let src = unsafe { std::slice::from_raw_parts(x.as_ptr_unchecked::<u8>(), x.len() * size) };
        let dst = unsafe {
            std::slice::from_raw_parts_mut(y.as_ptr_mut_unchecked::<u8>(), y.len() * size)
        };
        let run = self.inner * size;
        if self.inner > 1 || size != 4 {
            for (o, out) in dst.chunks_exact_mut(kept * run).enumerate() {
                let block = &src[o * self.len * run..][..self.len * run];
                for (i, row) in out.chunks_exact_mut(run).enumerate() {
                    let at = (self.modulo + i * self.stride) * run;
                    row.copy_from_slice(&block[at..at + run]);
                }
            }
        } else {
            // The last axis of 4-byte elements (f32): element by element, as u32.
            let src: &[u32] = bytemuck_u32(src);
            let dst: &mut [u32] = bytemuck_u32_mut(dst);
            for (o, out) in dst.chunks_exact_mut(kept).enumerate() {
                let row = &src[o * self.len + self.modulo..(o + 1) * self.len];
                for (d, s) in out.iter_mut().zip(row.iter().step_by(self.stride)) {
                    *d = *s;
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

fn bytemuck_u32(b: &[u8]) -> &[u32] {
    // SAFETY: tensor data is aligned for its element type (4-byte elements here).
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u32, b.len() / 4) }
}

fn bytemuck_u32_mut(b: &mut [u8]) -> &mut [u32] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u32, b.len() / 4) }
}

impl TypedOp for FastDownsample {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.datum_type.fact(self.out_shape())))
    }
}

/// The [`FastDownsample`] for a `Downsample` node, if it can replace it.
fn plan(
    model: &TypedModel,
    node: &TypedNode,
    op: &Downsample,
) -> TractResult<Option<FastDownsample>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    if op.stride <= 0
        || op.axis >= shape.len()
        || op.modulo >= shape[op.axis]
        || !input.datum_type.is_number()
    {
        return Ok(None);
    }
    Ok(Some(FastDownsample {
        axis: op.axis,
        len: shape[op.axis],
        inner: shape[op.axis + 1..].iter().product(),
        stride: op.stride as usize,
        modulo: op.modulo,
        shape: shape.into(),
        datum_type: input.datum_type,
    }))
}

/// Replaces every `Downsample` of an optimized model with a positive stride and a concrete
/// input; returns how many.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    crate::ops::matching::replace_ops::<Downsample>(model, |model, node, op| {
        Ok(plan(model, node, op)?.map(|p| Box::new(p) as _))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against tract's `Downsample` on f32 and i8, every axis, strides 1 to 3, offsets.
    #[test]
    fn same_as_tract() {
        let shape = [2usize, 5, 7, 9];
        for dt in [f32::datum_type(), i8::datum_type()] {
            let x = Tensor::from_shape(
                &shape,
                &(0..2 * 5 * 7 * 9).map(|v| v as f32).collect::<Vec<_>>(),
            )
            .unwrap()
            .cast_to_dt(dt)
            .unwrap()
            .into_owned();
            for axis in 0..4 {
                for stride in 1..4 {
                    for modulo in 0..2.min(shape[axis]) {
                        let op = Downsample::new(axis, stride, modulo);
                        let want = op
                            .eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))
                            .unwrap();
                        let mut m = TypedModel::default();
                        let s = m.add_source("x", dt.fact(shape)).unwrap();
                        let y = m.wire_node("d", op, &[s]).unwrap();
                        m.select_output_outlets(&y).unwrap();
                        assert_eq!(speed_up(&mut m).unwrap(), 1);
                        let got = SimplePlan::new(m)
                            .unwrap()
                            .run(tvec!(x.clone().into_tvalue()))
                            .unwrap();
                        assert_eq!(
                            got, want,
                            "{dt:?} axis {axis} stride {stride} modulo {modulo}"
                        );
                    }
                }
            }
        }
    }
}
