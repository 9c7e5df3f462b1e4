//! One int8 conv or linear layer as a record: the six tensors `L.weight`, `L.weight_scale`,
//! `L.weight_zero_point`, `L.input_scale`, `L.input_zero_point` and `L.bias` of
//! `docs/weights-format.md` ("int8") are written ([`WeightsWriter::add_int8_layer`]) and read
//! ([`Int8Layer::read`]) here only, both checked against the graph: the layer must be a conv or
//! linear layer of the file's network, every tensor must have the shape the format gives it.

use core::fmt::Write as _;

use super::{bad, DType, TensorView, WeightsFile};
#[cfg(feature = "alloc")]
use super::WeightsWriter;
use crate::config::ResNetConfig;
use crate::error::Error;
use crate::graph::ParamSpec;
use crate::name::{truncated, ParamName};

/// An int8 layer: `y[o] = (sum (x_q - input_zero_point) * weight + bias[o]) as f32 *
/// (input_scale * weight_scale[o])`, `x_q = clamp(round_half_even(x * (1 / input_scale)) +
/// input_zero_point, -128, 127)`. Weights are symmetric: the stored `L.weight_zero_point` is all 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Int8Layer<'a> {
    /// `q`, in the graph's weight shape (`[out, in, k, k]` or `[out, in]`), row-major.
    pub weight: &'a [i8],
    /// Per output channel, positive.
    pub weight_scale: &'a [f32],
    /// Per-tensor scale of the layer's input activation, positive.
    pub input_scale: f32,
    pub input_zero_point: i8,
    /// Per output channel, in units of `input_scale * weight_scale[o]`.
    pub bias: &'a [i32],
}

/// `{layer}.{leaf}`; `layer` is a graph layer name (checked first), so this cannot truncate.
fn tensor_name(layer: &str, leaf: &str) -> ParamName {
    let mut n = ParamName::new();
    let _ = write!(n, "{layer}.{leaf}");
    n
}

/// The graph's weight parameter of `layer`, or [`Error::UnknownLayer`].
fn weight_spec(config: &ResNetConfig, layer: &str) -> Result<ParamSpec, Error> {
    config.layer_weight(layer).ok_or_else(|| Error::UnknownLayer { name: truncated(layer) })
}

impl<'a> Int8Layer<'a> {
    /// Layer `layer` of `file`: `Some` if it is stored in int8 (an I8 weight), `None` if it is
    /// kept in float. Errors name the tensor and what is wrong: a layer the graph does not have,
    /// a missing tensor, a shape or dtype other than the format's, a weight zero point other
    /// than 0, a scale that is not a positive finite number. The views are zero-copy, so the
    /// file's bytes must be 4-byte aligned (any `Vec<u8>` is; [`Error::Misaligned`] otherwise).
    pub fn read(file: &WeightsFile<'a>, layer: &str) -> Result<Option<Self>, Error> {
        let spec = weight_spec(file.config(), layer)?;
        let weight = file.tensor(&spec.name)?;
        if weight.dtype != DType::I8 {
            return Ok(None);
        }
        if weight.shape() != spec.shape() {
            return Err(Error::ShapeMismatch { name: spec.name });
        }
        let out = spec.shape()[0];
        let get = |leaf: &str, shape: &[u32]| -> Result<TensorView<'a>, Error> {
            let name = tensor_name(layer, leaf);
            let t = file.tensor(&name)?;
            if t.shape() != shape {
                return Err(Error::ShapeMismatch { name });
            }
            Ok(t)
        };
        let scalar = |leaf: &str| -> Result<TensorView<'a>, Error> { get(leaf, &[]) };
        let zero_points = get("weight_zero_point", &[out])?;
        if zero_points.as_i8()?.iter().any(|&z| z != 0) {
            return Err(bad(zero_points.name, "weight zero points must be 0 (symmetric weights)"));
        }
        let one = |t: TensorView<'a>| bad(t.name, "a scalar without a value");
        let input_scale = scalar("input_scale")?;
        let input_zero_point = scalar("input_zero_point")?;
        let q = Int8Layer {
            weight: weight.as_i8()?,
            weight_scale: get("weight_scale", &[out])?.as_f32()?,
            input_scale: *input_scale.as_f32()?.first().ok_or_else(|| one(input_scale.clone()))?,
            input_zero_point: *input_zero_point.as_i8()?.first().ok_or_else(|| one(input_zero_point.clone()))?,
            bias: get("bias", &[out])?.as_i32()?,
        };
        q.check_scales(layer)?;
        Ok(Some(q))
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight_scale.len()
    }

    /// `input_scale * weight_scale[o]` for each output channel: what the integer sum is
    /// multiplied by (in f32).
    pub fn output_scales(&self) -> impl Iterator<Item = f32> + '_ {
        self.weight_scale.iter().map(move |&w| self.input_scale * w)
    }

    fn check_scales(&self, layer: &str) -> Result<(), Error> {
        let positive = |s: f32| s.is_finite() && s > 0.0;
        if !positive(self.input_scale) {
            return Err(bad(&tensor_name(layer, "input_scale"), "must be a positive finite number"));
        }
        if !self.weight_scale.iter().all(|&s| positive(s)) {
            return Err(bad(&tensor_name(layer, "weight_scale"), "every value must be a positive finite number"));
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl WeightsWriter {
    /// Adds int8 layer `layer`'s six tensors (with an all-zero `L.weight_zero_point`), after
    /// checking that the graph has the layer and that `q`'s lengths and scales fit it.
    pub fn add_int8_layer(&mut self, layer: &str, q: &Int8Layer<'_>) -> Result<(), Error> {
        let spec = weight_spec(&self.config, layer)?;
        let out = spec.shape()[0];
        let mismatch = |leaf| Err(Error::ShapeMismatch { name: tensor_name(layer, leaf) });
        if q.weight.len() as u64 != spec.numel() {
            return mismatch("weight");
        }
        if q.weight_scale.len() != out as usize {
            return mismatch("weight_scale");
        }
        if q.bias.len() != out as usize {
            return mismatch("bias");
        }
        q.check_scales(layer)?;
        self.add_i8(&spec.name, spec.shape(), q.weight)?;
        self.add_f32(&tensor_name(layer, "weight_scale"), &[out], q.weight_scale)?;
        self.add_i8(&tensor_name(layer, "weight_zero_point"), &[out], &alloc::vec![0; out as usize])?;
        self.add_f32(&tensor_name(layer, "input_scale"), &[], &[q.input_scale])?;
        self.add_i8(&tensor_name(layer, "input_zero_point"), &[], &[q.input_zero_point])?;
        self.add_i32(&tensor_name(layer, "bias"), &[out], q.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Form;
    use crate::preprocess::Preprocess;
    use crate::weights::Precision;

    const LAYER: &str = "layer1.0.conv1"; // ResNet-8: [16, 16, 3, 3]

    fn writer() -> WeightsWriter {
        WeightsWriter::new(ResNetConfig::resnet8(), Form::Folded, Precision::Int8, Preprocess::IMAGENET_EVAL)
    }

    fn record<'a>(weight: &'a [i8], scale: &'a [f32], bias: &'a [i32]) -> Int8Layer<'a> {
        Int8Layer { weight, weight_scale: scale, input_scale: 0.25, input_zero_point: -128, bias }
    }

    #[test]
    fn written_layer_reads_back_and_float_layers_read_as_none() {
        let weight: std::vec::Vec<i8> = (0..16 * 16 * 9).map(|i| (i % 255 - 127) as i8).collect();
        let scale: std::vec::Vec<f32> = (1..=16).map(|o| o as f32 / 64.0).collect();
        let bias: std::vec::Vec<i32> = (0..16).map(|o| o * 1000 - 7).collect();
        let mut w = writer();
        w.add_int8_layer(LAYER, &record(&weight, &scale, &bias)).unwrap();
        w.add_f32("fc.weight", &[10, 64], &[0.5; 640]).unwrap();
        let bytes = w.finish().unwrap();
        let f = WeightsFile::parse(&bytes).unwrap();
        let q = Int8Layer::read(&f, LAYER).unwrap().unwrap();
        assert_eq!(q, record(&weight, &scale, &bias));
        assert_eq!(q.out_channels(), 16);
        assert_eq!(q.output_scales().nth(3), Some(0.25 * 4.0 / 64.0));
        // The format's six tensors, under their names.
        assert_eq!(f.tensor("layer1.0.conv1.weight").unwrap().shape(), &[16, 16, 3, 3]);
        assert_eq!(f.tensor("layer1.0.conv1.weight_zero_point").unwrap().as_i8().unwrap(), &[0; 16]);
        assert_eq!(f.tensor("layer1.0.conv1.input_scale").unwrap().shape(), &[] as &[u32]);
        assert_eq!(f.tensor("layer1.0.conv1.input_zero_point").unwrap().as_i8().unwrap(), &[-128]);
        assert_eq!(Int8Layer::read(&f, "fc").unwrap(), None);
    }

    #[test]
    fn errors_name_the_layer_and_what_is_wrong() {
        let (weight, scale, bias) = ([1i8; 16 * 16 * 9], [0.5f32; 16], [0i32; 16]);
        let msg = |e: Error| std::format!("{e}");
        let mut w = writer();
        let err = w.add_int8_layer("layer9.0.conv1", &record(&weight, &scale, &bias)).unwrap_err();
        assert_eq!(msg(err), "`layer9.0.conv1` is not a conv or linear layer of this network");
        let err = w.add_int8_layer(LAYER, &record(&weight[1..], &scale, &bias)).unwrap_err();
        assert_eq!(msg(err), "tensor `layer1.0.conv1.weight` has the wrong shape for this architecture");
        let err = w.add_int8_layer(LAYER, &record(&weight, &scale[1..], &bias)).unwrap_err();
        assert_eq!(msg(err), "tensor `layer1.0.conv1.weight_scale` has the wrong shape for this architecture");
        let err = w.add_int8_layer(LAYER, &record(&weight, &[0.0; 16], &bias)).unwrap_err();
        assert_eq!(msg(err), "tensor `layer1.0.conv1.weight_scale`: every value must be a positive finite number");
        let nan = Int8Layer { input_scale: f32::NAN, ..record(&weight, &scale, &bias) };
        let err = w.add_int8_layer(LAYER, &nan).unwrap_err();
        assert_eq!(msg(err), "tensor `layer1.0.conv1.input_scale`: must be a positive finite number");

        // A file written tensor by tensor: asymmetric weights, a vector input scale, a missing bias.
        let raw = |zp: i8, scale_shape: &[u32], with_bias: bool| {
            let mut w = writer();
            w.add_i8("layer1.0.conv1.weight", &[16, 16, 3, 3], &weight).unwrap();
            w.add_f32("layer1.0.conv1.weight_scale", &[16], &scale).unwrap();
            w.add_i8("layer1.0.conv1.weight_zero_point", &[16], &[zp; 16]).unwrap();
            let n = scale_shape.iter().product::<u32>() as usize;
            w.add_f32("layer1.0.conv1.input_scale", scale_shape, &std::vec![0.5; n]).unwrap();
            w.add_i8("layer1.0.conv1.input_zero_point", &[], &[0]).unwrap();
            if with_bias {
                w.add_i32("layer1.0.conv1.bias", &[16], &bias).unwrap();
            }
            w.finish().unwrap()
        };
        let read = |bytes: &[u8]| msg(Int8Layer::read(&WeightsFile::parse(bytes).unwrap(), LAYER).unwrap_err());
        assert_eq!(read(&raw(3, &[], true)), "tensor `layer1.0.conv1.weight_zero_point`: weight zero points must be 0 (symmetric weights)");
        assert_eq!(read(&raw(0, &[1], true)), "tensor `layer1.0.conv1.input_scale` has the wrong shape for this architecture");
        assert_eq!(read(&raw(0, &[], false)), "tensor `layer1.0.conv1.bias` is missing");
        assert!(Int8Layer::read(&WeightsFile::parse(&raw(0, &[], true)).unwrap(), LAYER).unwrap().is_some());
    }
}
