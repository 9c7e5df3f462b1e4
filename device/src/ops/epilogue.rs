//! One pass for what follows each integer matrix product of an int8 plan.
//!
//! `crate::engine::import` writes an int8 layer as: integer conv (i32 accumulators) -> `Cast` to f32 ->
//! `Mul` by the per-channel dequantization scale, then the graph goes on in f32: the residual
//! `Add`, `Relu`, and the next layer's `QuantizeLinear` back to i8. tract's optimizer fuses the
//! element-wise ops into one pass but keeps the `Cast` and the quantization apart: three passes
//! over every activation (device/README.md, "Why each op exists").
//!
//! [`Int8Epilogue`] does it all in one pass: `y = max(acc as f32 * scale[c] + residual, 0)`,
//! straight to the next layer's i8 input when its quantizer is the only consumer, or both f32
//! and i8 when the value also goes on in f32 (a residual block's output). The f32 steps
//! are the same operations in the same order as the ops it replaces, so the result is
//! bit-identical (tested on whole networks in `tests/int8_kernels.rs`). [`speed_up`] finds the
//! pattern in an optimized plan (`OptMatMul` -> `Cast` i32 -> f32 -> [`IntoShape`] ->
//! `OptBinChain` of `Mul` [, `Add`] [, `Max` 0], or a lone `OptMulByScalar` / `OptMulUnicast`, [->
//! `FastQuantizeLinearI8`]) and swaps it in.

use crate::ops::quantize::{quantize, quantize_all, FastQuantize};
use tract_core::internal::*;
use tract_core::ops::binary::{OptBinByScalar, OptBinChain, OptBinUnicast};
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::IntoShape;

/// The epilogue of one integer conv: dequantize, add the residual, ReLU, quantize.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Epilogue {
    /// Per output channel: `input_scale * weight_scale[c]`.
    pub scale: Vec<f32>,
    /// Input 1 (f32, the output's shape) is added after scaling.
    pub residual: bool,
    pub relu: bool,
    /// The next layer's input quantizer (reciprocal scale, zero point): an i8 output.
    pub quantize: Option<FastQuantize>,
    /// With `quantize`, also output the f32 values (first): a block output that is both the
    /// next conv's input and a residual.
    pub keep_f32: bool,
    /// Output shape (`[1, C, H, W]` or `[C, H, W]`); the accumulators have the same layout,
    /// channel-major.
    pub shape: TVec<usize>,
}

impl Eq for Int8Epilogue {}

impl Int8Epilogue {
    fn channel_len(&self) -> usize {
        self.shape.iter().product::<usize>() / self.scale.len()
    }

    /// The residual input of an eval (`inputs[1]`) if this epilogue adds one, checked.
    pub(crate) fn residual_input<'a>(
        &self,
        op: &str,
        inputs: &'a [TValue],
    ) -> TractResult<Option<&'a TValue>> {
        let volume: usize = self.shape.iter().product();
        match (self.residual, inputs.get(1)) {
            (false, _) => Ok(None),
            (true, Some(r)) if r.datum_type() == f32::datum_type() && r.len() == volume => {
                Ok(Some(r))
            }
            (true, r) => bail!("{op}: residual {:?}", r.map(|r| r.shape())),
        }
    }

    /// The next layer's quantizer as (reciprocal scale, zero point).
    pub(crate) fn quantizer(&self) -> Option<(f32, i32)> {
        self.quantize
            .as_ref()
            .map(|q| (q.scale, i32::from(q.zero_point)))
    }

    /// The outputs to fill, uninitialized: f32 (if any) then i8 (if any).
    pub(crate) fn uninitialized_outputs(&self) -> TractResult<(Option<Tensor>, Option<Tensor>)> {
        let f = (self.quantize.is_none() || self.keep_f32)
            .then(|| unsafe { Tensor::uninitialized::<f32>(&self.shape) })
            .transpose()?;
        let i = self
            .quantize
            .is_some()
            .then(|| unsafe { Tensor::uninitialized::<i8>(&self.shape) })
            .transpose()?;
        Ok((f, i))
    }

    /// The facts of those outputs.
    pub(crate) fn output_facts(&self) -> TVec<TypedFact> {
        let mut facts = tvec![];
        if self.quantize.is_none() || self.keep_f32 {
            facts.push(f32::fact(&*self.shape));
        }
        if self.quantize.is_some() {
            facts.push(i8::fact(&*self.shape));
        }
        facts
    }
}

impl Op for Int8Epilogue {
    fn name(&self) -> StaticName {
        "Int8Epilogue".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channels, residual: {}, relu: {}, quantize: {:?}, keep f32: {}",
            self.scale.len(),
            self.residual,
            self.relu,
            self.quantize,
            self.keep_f32
        )])
    }

    op_as_typed_op!();
}

/// One channel: `acc as f32 * scale (+ residual) (max 0)`, then `store`.
#[inline(always)]
fn channel<T>(
    acc: &[i32],
    residual: Option<&[f32]>,
    scale: f32,
    relu: bool,
    out: &mut [T],
    store: impl Fn(f32) -> T,
) {
    match (residual, relu) {
        (None, false) => {
            for (o, a) in out.iter_mut().zip(acc) {
                *o = store(*a as f32 * scale);
            }
        }
        (None, true) => {
            for (o, a) in out.iter_mut().zip(acc) {
                *o = store((*a as f32 * scale).max(0.0));
            }
        }
        (Some(r), false) => {
            for ((o, a), r) in out.iter_mut().zip(acc).zip(r) {
                *o = store(*a as f32 * scale + r);
            }
        }
        (Some(r), true) => {
            for ((o, a), r) in out.iter_mut().zip(acc).zip(r) {
                *o = store((*a as f32 * scale + r).max(0.0));
            }
        }
    }
}

crate::ops::simd::wide_fn! {
    /// The epilogue over all channels (`n` values each), into the f32 and/or i8 outputs.
    fn compute(
        scale: &[f32],
        relu: bool,
        n: usize,
        acc: &[i32],
        residual: Option<&[f32]>,
        fs: Option<&mut [f32]>,
        is: Option<&mut [i8]>,
        q: Option<(f32, i32)>,
    ) {
        let (mut fs, mut is) = (fs, is);
        for (c, s) in scale.iter().enumerate() {
            let (a, r) = (&acc[c * n..][..n], residual.map(|r| &r[c * n..][..n]));
            let fo = fs.as_mut().map(|f| &mut f[c * n..][..n]);
            let io = is.as_mut().map(|i| &mut i[c * n..][..n]);
            match (fo, io, q) {
                (Some(fo), None, _) => channel(a, r, *s, relu, fo, |v| v),
                (None, Some(io), Some((inv, zp))) => {
                    channel(a, r, *s, relu, io, |v| quantize(v, inv, zp))
                }
                (Some(fo), Some(io), Some((inv, zp))) => {
                    channel(a, r, *s, relu, fo, |v| v);
                    // The row just written, still in cache: the same values as f32.
                    quantize_all(fo, io, inv, zp);
                }
                _ => unreachable!("an epilogue has an output"),
            }
        }
    }
}

impl EvalOp for Int8Epilogue {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let volume: usize = self.shape.iter().product();
        let acc = &inputs[0];
        ensure!(
            acc.datum_type() == i32::datum_type() && acc.len() == volume,
            "Int8Epilogue: accumulators {:?} {:?}, planned for {:?}",
            acc.datum_type(),
            acc.shape(),
            self.shape
        );
        let acc = unsafe { acc.as_slice_unchecked::<i32>() };
        let residual = self
            .residual_input("Int8Epilogue", &inputs)?
            .map(|r| unsafe { r.as_slice_unchecked::<f32>() });
        let n = self.channel_len();
        let q = self.quantizer();
        let (mut f, mut i) = self.uninitialized_outputs()?;
        let fs = f
            .as_mut()
            .map(|t| unsafe { t.as_slice_mut_unchecked::<f32>() });
        let is = i
            .as_mut()
            .map(|t| unsafe { t.as_slice_mut_unchecked::<i8>() });
        compute(&self.scale, self.relu, n, acc, residual, fs, is, q);
        let outputs: TVec<Tensor> = f.into_iter().chain(i).collect();
        Ok(outputs.into_iter().map(|t| t.into_tvalue()).collect())
    }
}

impl TypedOp for Int8Epilogue {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(Int8Epilogue::output_facts(self))
    }
}

/// The only consumer of `outlet`, if it has exactly one and is not a model output.
fn single_consumer(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    let succ = &model.node(outlet.node).outputs[outlet.slot].successors;
    (succ.len() == 1 && !model.output_outlets().ok()?.contains(&outlet)).then(|| succ[0].node)
}

/// A constant f32 input of `node`, as a vector.
fn konst_f32(model: &TypedModel, node: &TypedNode, input: usize) -> Option<Vec<f32>> {
    let fact = model.outlet_fact(*node.inputs.get(input)?).ok()?;
    let k = fact.konst.as_ref()?;
    Some(k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
}

/// Recognizes `Cast` -> [`IntoShape`] -> `OptBinChain` -> [quantizer] from the cast node `cast`:
/// the op, its residual input, and the outlets its outputs replace (in order).
fn recognize(
    model: &TypedModel,
    cast: usize,
) -> Option<(Int8Epilogue, Option<OutletId>, TVec<OutletId>)> {
    let node = model.node(cast);
    let cast_op = node.op_as::<Cast>()?;
    let acc = node.inputs[0];
    if cast_op.to != f32::datum_type()
        || model.outlet_fact(acc).ok()?.datum_type != i32::datum_type()
        || !model.node(acc.node).op.name().starts_with("OptMatMul")
    {
        return None;
    }
    // The accumulators, reshaped (convs lowered through im2col) or not (1x1 convs).
    let mut values = OutletId::new(cast, 0);
    let next = single_consumer(model, values)?;
    if model.node(next).op_is::<IntoShape>() {
        values = OutletId::new(next, 0);
    }
    let chain_id = single_consumer(model, values)?;
    let chain = model.node(chain_id);
    // The element-wise steps: a fused chain, or a lone per-channel multiply, which tract keeps
    // as `OptMulByScalar` (the strided 1x1 convs of the residual shortcuts, where nothing else
    // follows before the next conv's residual add) or `OptMulUnicast` (the classifier's logits).
    let names: Vec<String> = if let Some(op) = chain.op_as::<OptBinChain>() {
        op.steps.iter().map(|s| s.binop.name().to_string()).collect()
    } else if chain.op_as::<OptBinByScalar>().is_some_and(|op| op.binop.name() == "Mul")
        || chain.op_as::<OptBinUnicast>().is_some_and(|op| op.binop.name() == "Mul")
    {
        vec!["Mul".to_string()]
    } else {
        return None;
    };
    let shape: TVec<usize> = chain.outputs[0].fact.shape.as_concrete()?.into();
    // One image, channel-major: [1, C, H, W] or (batch axis dropped by tract) [C, H, W], or
    // the classifier's [1, C].
    let c_axis = match shape.len() {
        4 | 2 if shape[0] == 1 => 1,
        3 => 0,
        _ => return None,
    };
    if chain.inputs[0] != values {
        return None;
    }
    let channels = shape[c_axis];
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (residual, relu) = match names[..] {
        ["Mul"] => (false, false),
        ["Mul", "Max"] => (false, true),
        ["Mul", "Add"] => (true, false),
        ["Mul", "Add", "Max"] => (true, true),
        _ => return None,
    };
    // Step i's operand is input i + 1. The scale: one value, or one per channel along C.
    let scale_fact = model.outlet_fact(chain.inputs[1]).ok()?;
    let scale_shape = scale_fact.shape.as_concrete()?;
    let per_channel = scale_shape.len() == shape.len()
        && scale_shape
            .iter()
            .enumerate()
            .all(|(axis, d)| *d == 1 || (axis == c_axis && *d == channels));
    if !per_channel && scale_shape.iter().product::<usize>() != 1 {
        return None;
    }
    let scale = konst_f32(model, chain, 1)?;
    let scale = match scale.len() {
        1 => vec![scale[0]; channels],
        c if c == channels => scale,
        _ => return None,
    };
    let residual_outlet = if residual {
        let r = chain.inputs[2];
        let fact = model.outlet_fact(r).ok()?;
        if fact.konst.is_some()
            || fact.datum_type != f32::datum_type()
            || fact.shape.as_concrete()? != &*shape
        {
            return None;
        }
        Some(r)
    } else {
        None
    };
    if relu && konst_f32(model, chain, names.len())? != [0.0] {
        return None;
    }
    let mut epilogue = Int8Epilogue {
        scale,
        residual,
        relu,
        quantize: None,
        keep_f32: false,
        shape,
    };
    let output = OutletId::new(chain_id, 0);
    let quantizer = chain.outputs[0]
        .successors
        .iter()
        .find(|s| model.node(s.node).op_is::<FastQuantize>())
        .map(|s| s.node);
    let Some(quantizer) = quantizer else {
        return Some((epilogue, residual_outlet, tvec![output]));
    };
    epilogue.quantize = model.node(quantizer).op_as::<FastQuantize>().cloned();
    let quantized = OutletId::new(quantizer, 0);
    if single_consumer(model, output) == Some(quantizer) {
        Some((epilogue, residual_outlet, tvec![quantized]))
    } else {
        epilogue.keep_f32 = true;
        Some((epilogue, residual_outlet, tvec![output, quantized]))
    }
}

/// Replaces the f32 glue after every integer matrix product of an optimized model that
/// [`Int8Epilogue`] handles; returns how many. Run after `crate::ops::quantize::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    let casts: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<Cast>())
        .map(|n| n.id)
        .collect();
    let mut replaced = 0;
    for cast in casts {
        let Some((op, residual, outputs)) = recognize(model, cast) else {
            continue;
        };
        let name = format!("{}.epilogue", model.node(cast).name);
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec![patch.tap_model(model, model.node(cast).inputs[0])?];
        if let Some(r) = residual {
            inputs.push(patch.tap_model(model, r)?);
        }
        let ys = patch.wire_node(name, op, &inputs)?;
        for (old, new) in outputs.iter().zip(ys) {
            patch.shunt_outside(model, *old, new)?;
        }
        patch.apply(model)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}
