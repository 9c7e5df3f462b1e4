//! Folded float parameters -> the tensors of a compact weights file (`docs/weights-format.md`):
//! f32, f16, or int8 (symmetric per-output-channel weights, int32 biases, per-tensor input
//! scales).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use shared::weights::{Int8Layer, WeightsWriter};
use shared::{Form, Node, Precision, ValueId};

use super::calibrate::Calibrated;
use super::fold::Folded;
use super::net::{to_vec_f32, ActQuant};

/// The largest weight magnitude in int8 (symmetric: -127..=127, -128 unused).
pub const WEIGHT_QMAX: f32 = 127.0;

/// One layer quantized: `w ≈ weight_scale[o] * q`, `b ≈ input_scale * weight_scale[o] * bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantLayer {
    pub q: Vec<i8>,
    pub weight_scale: Vec<f32>,
    pub bias: Vec<i32>,
    pub input: ActQuant,
}

impl QuantLayer {
    /// The layer as the weights file stores it.
    pub fn record(&self) -> Int8Layer<'_> {
        Int8Layer {
            weight: &self.q,
            weight_scale: &self.weight_scale,
            input_scale: self.input.scale,
            input_zero_point: self.input.zero_point,
            bias: &self.bias,
        }
    }
}

/// Quantizes one conv/linear layer, `weight` `[out, ...]` flat and `bias` `[out]`:
/// `weight_scale[o] = max|w[o]| / 127` (1 for an all-zero channel), `q = round(w / s)`,
/// `bias = round(b / (input_scale * weight_scale[o]))`. A channel whose bias would not fit in
/// int32 (a tiny input scale) gets a larger weight scale, so the bias fits.
pub fn quantize_layer(name: &str, weight: &[f32], bias: &[f32], input: ActQuant) -> Result<QuantLayer> {
    let out = bias.len();
    if out == 0 || weight.len() % out != 0 {
        bail!("`{name}`: weight of {} values for {out} output channels", weight.len());
    }
    let per = weight.len() / out;
    let mut q = vec![0i8; weight.len()];
    let mut weight_scale = vec![0f32; out];
    let mut bias_q = vec![0i32; out];
    for o in 0..out {
        let w = &weight[o * per..(o + 1) * per];
        let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let mut s = if amax > 0.0 { amax / WEIGHT_QMAX } else { 1.0 };
        // int32 bias range: |b| / (s_in * s) <= 2^31 - 1 (with margin for rounding).
        let limit = (i32::MAX as f64) * 0.99;
        let need = f64::from(bias[o].abs()) / (f64::from(input.scale) * limit);
        if f64::from(s) < need {
            s = need as f32 * (1.0 + 1e-6);
        }
        if !(s.is_finite() && s > 0.0) {
            bail!("`{name}`: output channel {o} has no finite weight scale");
        }
        for (dst, &x) in q[o * per..(o + 1) * per].iter_mut().zip(w) {
            *dst = (x / s).round_ties_even().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8;
        }
        let bias_scale = input.scale * s;
        let b = (f64::from(bias[o]) / f64::from(bias_scale)).round_ties_even();
        bias_q[o] = b.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
        weight_scale[o] = s;
    }
    Ok(QuantLayer { q, weight_scale, bias: bias_q, input })
}

/// How to store the network.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub precision: Precision,
    /// int8: per-value activation quantization of the quantized layers' inputs.
    pub activations: BTreeMap<ValueId, Calibrated>,
    /// int8: layers kept in float (F32 weight and bias, no scale tensors).
    pub keep_float: BTreeSet<String>,
}

/// Adds every Folded-form parameter of `folded` to `w` in the requested precision.
pub fn add_tensors(w: &mut WeightsWriter, folded: &Folded, opts: &StoreOptions) -> Result<()> {
    let e = |err: shared::Error| anyhow!("{err}");
    let mut result = Ok(());
    let _ = folded.config.walk::<()>(Form::Folded, |node| {
        let mut step = || -> Result<()> {
            let (name, input) = match *node {
                Node::Conv { name, input, .. } | Node::Linear { name, input, .. } => (name, input),
                Node::Affine { name, .. } => {
                    for leaf in ["weight", "bias"] {
                        let n = format!("{name}.{leaf}");
                        let t = folded.get(&n)?;
                        w.add_f32(&n, &shape_of(t), &to_vec_f32(t)?).map_err(e)?;
                    }
                    return Ok(());
                }
                _ => return Ok(()),
            };
            let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
            let wt = folded.get(&wn)?;
            let (wshape, wv) = (shape_of(wt), to_vec_f32(wt)?);
            let out = wshape[0];
            // Convs without a BatchNorm (pre-activation v2 block ends) have no bias in the graph.
            let bias = folded.tensors.get(&bn).map(to_vec_f32).transpose()?;
            match opts.precision {
                Precision::F32 => {
                    w.add_f32(&wn, &wshape, &wv).map_err(e)?;
                    if let Some(bv) = &bias {
                        w.add_f32(&bn, &[out], bv).map_err(e)?;
                    }
                }
                Precision::F16 => {
                    let h = |n: &str, v: &[f32]| {
                        if v.iter().any(|x| x.abs() > f32::from(half::f16::MAX)) {
                            bail!("`{n}` has values beyond the fp16 range (65504); export fp32 or int8");
                        }
                        Ok(v.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>())
                    };
                    w.add_f16(&wn, &wshape, &h(&wn, &wv)?).map_err(e)?;
                    if let Some(bv) = &bias {
                        w.add_f16(&bn, &[out], &h(&bn, bv)?).map_err(e)?;
                    }
                }
                Precision::Int8 if opts.keep_float.contains(name) => {
                    w.add_f32(&wn, &wshape, &wv).map_err(e)?;
                    if let Some(bv) = &bias {
                        w.add_f32(&bn, &[out], bv).map_err(e)?;
                    }
                }
                Precision::Int8 => {
                    let act = opts
                        .activations
                        .get(&input)
                        .ok_or_else(|| anyhow!("`{name}`: its input was not calibrated"))?;
                    let act = ActQuant { scale: act.scale, zero_point: act.zero_point };
                    // Every int8 layer stores an I32 bias (zeros for a conv without one).
                    let bv = bias.unwrap_or_else(|| vec![0.0; out as usize]);
                    let ql = quantize_layer(name, &wv, &bv, act)?;
                    w.add_int8_layer(name, &ql.record()).map_err(e)?;
                }
            }
            Ok(())
        };
        step().map_err(|err| {
            result = Err(err);
        })
    });
    result
}

fn shape_of(t: &tch::Tensor) -> Vec<u32> {
    t.size().iter().map(|&d| d as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_per_channel_weights_and_int32_bias() {
        let w = [0.5, -1.27, 0.0, 0.01, /* channel 1 */ 0.0, 0.0, 0.0, 0.0];
        let b = [0.3, -0.2];
        let input = ActQuant { scale: 0.1, zero_point: -128 };
        let ql = quantize_layer("l", &w, &b, input).unwrap();
        assert!((ql.weight_scale[0] - 0.01).abs() < 1e-9);
        assert_eq!(&ql.q[..4], &[50, -127, 0, 1]);
        assert_eq!(ql.weight_scale[1], 1.0);
        assert_eq!(&ql.q[4..], &[0, 0, 0, 0]);
        // 0.3 / (0.1 * 0.01) = 300; -0.2 / (0.1 * 1) = -2.
        assert_eq!(ql.bias, vec![300, -2]);
    }

    #[test]
    fn a_bias_too_large_for_int32_widens_the_weight_scale() {
        let input = ActQuant { scale: 1e-9, zero_point: -128 };
        let ql = quantize_layer("l", &[1e-3, -1e-3], &[100.0], input).unwrap();
        let back = f64::from(ql.bias[0]) * f64::from(input.scale) * f64::from(ql.weight_scale[0]);
        assert!((back - 100.0).abs() < 1e-3, "{back}");
        assert!(ql.q.iter().all(|&q| q != i8::MIN));
    }
}
