//! A Folded-form compact weights file -> standard ONNX (opset 13), written with the prost
//! types `tract_onnx::pb` exposes.
//!
//! The graph is `shared`'s Folded walk: `Conv` (BatchNorm folded in), `Mul` + `Add` for a lone
//! BatchNorm (`Affine`), `Relu`, `MaxPool`, `Add`, `GlobalAveragePool` + `Flatten`, `Gemm`
//! (`transB = 1`). Input `input` `[N, C, H, W]` (N symbolic), output `logits` `[N, classes]`.
//! Initializers keep the torchvision names (`layer1.0.conv1.weight`).
//!
//! - f32 file: float initializers.
//! - f16 file: FLOAT16 initializers (`L.weight_fp16`) cast to float by `Cast` nodes, so the graph
//!   computes in f32 with the file's f16-rounded parameters (ONNX Runtime's CPU provider has no
//!   fp16 Conv on x86).
//! - int8 file, [`Int8Ops::Integer`] (the default): the format's integer arithmetic, op for op,
//!   so that ONNX Runtime computes what the device computes, bit for bit. Each quantized layer
//!   input `x` is quantized as the format defines it, `Mul(x, 1 / x_scale)` ->
//!   `QuantizeLinear(_, 1, x_zero_point)` (int8; round half to even, saturate: not
//!   `QuantizeLinear(x, x_scale)`, which divides and rounds differently at some ties), shared
//!   by the layers reading the same value; then `ConvInteger` (or `MatMulInteger` with the
//!   transposed weights for the classifier) on the int8 weights `L.weight_quantized` -> `Add`
//!   the int32 bias -> `Cast` to float -> `Mul` by `input_scale * weight_scale [out]`.
//! - int8 file, [`Int8Ops::Qdq`]: the QDQ layout TensorRT and ONNX Runtime's quantization tools
//!   read, the same numbers. Each quantized layer input `x` goes through
//!   `QuantizeLinear(x, x_scale, x_zero_point)` -> `DequantizeLinear` (int8, per tensor; shared
//!   by the layers reading the same value); the weight is `DequantizeLinear(L.weight_quantized
//!   int8, L.weight_scale [out], L.weight_zero_point int8 [out], axis 0)` and the bias
//!   `DequantizeLinear(L.bias_quantized int32, L.bias_scale = input_scale * weight_scale [out],
//!   L.bias_zero_point int32 [out], axis 0)`, feeding a float `Conv`/`Gemm`: ONNX Runtime sums
//!   those in float, a few logit steps from the integer result on a ResNet-18.
//!
//! Either way outputs are not quantized (the residual adds read the float values), and layers
//! the file keeps in float have float initializers.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use prost::Message;
use shared::weights::Int8Layer;
use shared::{DType, Form, Node, Preprocess, ValueId, WeightsFile};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};


/// The opset the exported graphs use (per-axis DequantizeLinear needs 13).
pub const OPSET: i64 = 13;
/// ONNX IR version matching opset 13 (ONNX 1.8).
pub const IR_VERSION: i64 = 7;

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn tensor(name: &str, dtype: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), data_type: dtype as i32, dims: dims.to_vec(), raw_data: raw, ..Default::default() }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    tensor(name, DataType::Float, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How an int8 file's quantized layers are written (`host export --onnx-int8`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Int8Ops {
    /// `ConvInteger`/`MatMulInteger` on the int8 tensors: ONNX Runtime computes exactly what
    /// the format (and the device) computes.
    #[default]
    Integer,
    /// QuantizeLinear/DequantizeLinear around float `Conv`/`Gemm`: what TensorRT reads.
    Qdq,
}

struct Builder<'f, 'a> {
    file: &'f WeightsFile<'a>,
    int8: Int8Ops,
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
    /// The base name of an already quantized value's tensors (`{base}_quantized`,
    /// `{base}_zero_point`, ...), by (value, scale bits, zero point).
    quantized_inputs: HashMap<(u32, u32, i8), String>,
}

/// A conv's attributes: kernel, stride, padding.
#[derive(Clone, Copy)]
struct ConvAttrs {
    kernel: i64,
    stride: i64,
    padding: i64,
}

impl ConvAttrs {
    fn attributes(self) -> Vec<AttributeProto> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ]
    }
}

impl<'a> Builder<'_, 'a> {
    fn view(&self, name: &str) -> Result<shared::weights::TensorView<'a>> {
        self.file.tensor(name).map_err(|e| anyhow!("{e}"))
    }

    fn dims(t: &shared::weights::TensorView<'_>) -> Vec<i64> {
        t.shape().iter().map(|&d| i64::from(d)).collect()
    }

    /// A float parameter as an initializer named `name` (through a Cast for F16 tensors);
    /// returns the name the graph reads. `reshape` overrides the stored dims (Affine `[C, 1, 1]`).
    fn float_param(&mut self, name: &str, reshape: Option<Vec<i64>>) -> Result<String> {
        let t = self.view(name)?;
        let dims = reshape.unwrap_or_else(|| Self::dims(&t));
        match t.dtype {
            DType::F32 => {
                self.init.push(tensor(name, DataType::Float, &dims, t.data.to_vec()));
                Ok(name.to_string())
            }
            DType::F16 => {
                let stored = format!("{name}_fp16");
                self.init.push(tensor(&stored, DataType::Float16, &dims, t.data.to_vec()));
                self.nodes.push(node(
                    "Cast",
                    &format!("{name}_cast"),
                    &[&stored],
                    &[name],
                    vec![attr_int("to", DataType::Float as i64)],
                ));
                Ok(name.to_string())
            }
            other => bail!("`{name}` is {other:?}, expected a float tensor"),
        }
    }

    /// The conv (`conv`: its attributes) or linear layer `name` reading value `x` (`input`)
    /// and writing `output`.
    fn layer(&mut self, name: &str, x: &str, input: ValueId, output: &str, conv: Option<ConvAttrs>) -> Result<()> {
        let quantized = self.quantized(name)?;
        let inputs = match quantized {
            Some(q) if self.int8 == Int8Ops::Integer => return self.integer_layer(name, x, input, output, conv, q),
            Some(q) => self.qdq_inputs(name, x, input, q)?,
            None => {
                let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
                let mut names = vec![x.to_string(), self.float_param(&wn, None)?];
                if self.file.contains(&bn) {
                    names.push(self.float_param(&bn, None)?);
                }
                names
            }
        };
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.nodes.push(match conv {
            Some(c) => node("Conv", name, &inputs, &[output], c.attributes()),
            None => node("Gemm", name, &inputs, &[output], vec![attr_int("transB", 1)]),
        });
        Ok(())
    }

    /// The base name of value `x` (`input`) quantized with (`scale`, `zero_point`) for layer
    /// `layer`, and whether it is new (its nodes still to write): one per value and
    /// quantization, `x` itself for the first, `{x}_{layer}` for others.
    fn quantized_input(&mut self, layer: &str, x: &str, input: ValueId, scale: f32, zero_point: i8) -> (String, bool) {
        let key = (input.0, scale.to_bits(), zero_point);
        if let Some(base) = self.quantized_inputs.get(&key) {
            return (base.clone(), false);
        }
        let base = if self.quantized_inputs.keys().any(|k| k.0 == input.0) {
            format!("{x}_{layer}")
        } else {
            x.to_string()
        };
        self.quantized_inputs.insert(key, base.clone());
        (base, true)
    }

    /// Layer `name`'s int8 record and weight dims (`[out, in, k, k]` or `[out, in]`) if the
    /// file quantized it.
    fn quantized(&self, name: &str) -> Result<Option<(Int8Layer<'a>, Vec<i64>)>> {
        let Some(q) = Int8Layer::read(self.file, name).map_err(|e| anyhow!("{e}"))? else {
            return Ok(None);
        };
        Ok(Some((q, Self::dims(&self.view(&format!("{name}.weight"))?))))
    }

    /// Layer `name` in integer ops (see the module doc).
    fn integer_layer(
        &mut self,
        name: &str,
        x: &str,
        input: ValueId,
        output: &str,
        conv: Option<ConvAttrs>,
        (q, dims): (Int8Layer<'_>, Vec<i64>),
    ) -> Result<()> {
        let out = dims[0];
        // The per-channel operands broadcast along the channel axis of the output.
        let channel_dims: Vec<i64> = if conv.is_some() { vec![1, out, 1, 1] } else { vec![out] };
        // Input: quantized once per (value, quantization).
        let (base, new) = self.quantized_input(name, x, input, q.input_scale, q.input_zero_point);
        let (zp, xq) = (format!("{base}_zero_point"), format!("{base}_quantized"));
        if new {
            let (inv, one, scaled) =
                (format!("{base}_inverse_scale"), format!("{base}_unit_scale"), format!("{base}_scaled"));
            // The format's reciprocal, as the device computes it (f32 `recip`).
            self.init.push(f32_tensor(&inv, &[], &[q.input_scale.recip()]));
            self.init.push(f32_tensor(&one, &[], &[1.0]));
            self.init.push(tensor(&zp, DataType::Int8, &[], vec![q.input_zero_point as u8]));
            self.nodes.push(node("Mul", &format!("{base}_Scale"), &[x, &inv], &[&scaled], vec![]));
            self.nodes.push(node("QuantizeLinear", &format!("{base}_QuantizeLinear"), &[&scaled, &one, &zp], &[&xq], vec![]));
        }
        let wq = format!("{name}.weight_quantized");
        let op = match conv {
            Some(_) => {
                self.init.push(tensor(&wq, DataType::Int8, &dims, q.weight.iter().map(|&v| v as u8).collect()));
                "ConvInteger"
            }
            None => {
                // MatMulInteger multiplies `x [N, in]` by `[in, out]`: the weights transposed.
                let (rows, cols) = (out as usize, dims[1] as usize);
                let t: Vec<u8> = (0..cols * rows).map(|i| q.weight[(i % rows) * cols + i / rows] as u8).collect();
                self.init.push(tensor(&wq, DataType::Int8, &[dims[1], out], t));
                "MatMulInteger"
            }
        };
        let acc = format!("{name}_acc");
        // Symmetric weights: no weight zero point operand (ONNX's default is 0).
        let inputs = [xq.as_str(), wq.as_str(), zp.as_str()];
        let attrs = conv.map(ConvAttrs::attributes).unwrap_or_default();
        self.nodes.push(node(op, &format!("{name}_{op}"), &inputs, &[&acc], attrs));
        // + bias (int32), to float, * input_scale * weight_scale (in f32, as the device).
        let (bq, biased, float, scale) =
            (format!("{name}.bias_quantized"), format!("{name}_biased"), format!("{name}_float"), format!("{name}.scale"));
        self.init.push(tensor(&bq, DataType::Int32, &channel_dims, q.bias.iter().flat_map(|b| b.to_le_bytes()).collect()));
        let s: Vec<f32> = q.output_scales().collect();
        self.init.push(f32_tensor(&scale, &channel_dims, &s));
        self.nodes.push(node("Add", &format!("{name}_AddBias"), &[&acc, &bq], &[&biased], vec![]));
        self.nodes.push(node("Cast", &format!("{name}_Cast"), &[&biased], &[&float], vec![attr_int("to", DataType::Float as i64)]));
        self.nodes.push(node("Mul", &format!("{name}_Dequantize"), &[&float, &scale], &[output], vec![]));
        Ok(())
    }

    /// `DequantizeLinear(quantized, scale, zero point)` along axis 0 of the quantized tensor
    /// `{base}_quantized` (`dtype`, `dims`, little-endian `values`), zero points 0; returns the
    /// name of `{base}_dequantized`.
    fn dequantize_per_channel(&mut self, base: &str, dtype: DataType, dims: &[i64], values: Vec<u8>, scale: &[f32]) -> String {
        let out = dims[0];
        let (q, s, z, d) =
            (format!("{base}_quantized"), format!("{base}_scale"), format!("{base}_zero_point"), format!("{base}_dequantized"));
        let zero_bytes = if dtype == DataType::Int32 { 4 } else { 1 };
        self.init.push(tensor(&q, dtype, dims, values));
        self.init.push(f32_tensor(&s, &[out], scale));
        self.init.push(tensor(&z, dtype, &[out], vec![0; out as usize * zero_bytes]));
        self.nodes.push(node("DequantizeLinear", &format!("{base}_DequantizeLinear"), &[&q, &s, &z], &[&d], vec![attr_int("axis", 0)]));
        d
    }

    /// `[x, weight, bias]` names for the QDQ form of quantized layer `name` reading value `x`.
    fn qdq_inputs(&mut self, name: &str, x: &str, input: ValueId, (q, wdims): (Int8Layer<'_>, Vec<i64>)) -> Result<Vec<String>> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let (in_scale, in_zp) = (q.input_scale, q.input_zero_point);
        let out = wdims[0];

        // Input: one Q/DQ pair per (value, quantization).
        let (base, new) = self.quantized_input(name, x, input, in_scale, in_zp);
        let xdq = format!("{base}_dequantized");
        if new {
            let (s, zp, xq) = (format!("{base}_scale"), format!("{base}_zero_point"), format!("{base}_quantized"));
            self.init.push(f32_tensor(&s, &[], &[in_scale]));
            self.init.push(tensor(&zp, DataType::Int8, &[], vec![in_zp as u8]));
            self.nodes.push(node("QuantizeLinear", &format!("{base}_QuantizeLinear"), &[x, &s, &zp], &[&xq], vec![]));
            self.nodes.push(node("DequantizeLinear", &format!("{base}_DequantizeLinear"), &[&xq, &s, &zp], &[&xdq], vec![]));
        }

        // Weight, per output channel; bias: int32 with scale input_scale * weight_scale.
        let wd = self.dequantize_per_channel(&wn, DataType::Int8, &wdims, q.weight.iter().map(|&v| v as u8).collect(), q.weight_scale);
        let b_scale: Vec<f32> = q.output_scales().collect();
        let bias = q.bias.iter().flat_map(|b| b.to_le_bytes()).collect();
        let bd = self.dequantize_per_channel(&bn, DataType::Int32, &[out], bias, &b_scale);
        Ok(vec![xdq, wd, bd])
    }
}

/// Builds the ONNX model of a Folded-form weights file.
pub fn build(file: &WeightsFile<'_>, producer_version: &str, int8: Int8Ops) -> Result<ModelProto> {
    let header = file.header();
    if header.form != Form::Folded {
        bail!("ONNX export needs a Folded-form weights file");
    }
    let config = *file.config();
    let pre: Preprocess = header.preprocess;
    let mut b = Builder { file, int8, nodes: Vec::new(), init: Vec::new(), quantized_inputs: HashMap::new() };
    let logits_id = config.num_values(Form::Folded) - 1;
    let vname = |v: ValueId| match v.index() {
        0 => "input".to_string(),
        i if i == logits_id => "logits".to_string(),
        i => format!("v{i}"),
    };
    config.walk::<anyhow::Error>(Form::Folded, |n| {
        match *n {
            Node::Input { .. } => {}
            Node::Conv { name, input, output, kernel, stride, padding, .. } => {
                let conv =
                    ConvAttrs { kernel: i64::from(kernel), stride: i64::from(stride), padding: i64::from(padding) };
                b.layer(name, &vname(input), input, &vname(output), Some(conv))?;
            }
            Node::Affine { name, input, output, channels } => {
                let c = i64::from(channels);
                let scale = b.float_param(&format!("{name}.weight"), Some(vec![c, 1, 1]))?;
                let shift = b.float_param(&format!("{name}.bias"), Some(vec![c, 1, 1]))?;
                let mid = format!("{}_scaled", vname(output));
                b.nodes.push(node("Mul", &format!("{name}_mul"), &[&vname(input), &scale], &[&mid], vec![]));
                b.nodes.push(node("Add", &format!("{name}_add"), &[&mid, &shift], &[&vname(output)], vec![]));
            }
            Node::BatchNorm { name, .. } => bail!("`{name}`: the folded graph has no BatchNorm"),
            Node::Relu { input, output } => {
                b.nodes.push(node("Relu", &format!("relu_{}", output.0), &[&vname(input)], &[&vname(output)], vec![]));
            }
            Node::MaxPool { input, output, kernel, stride, padding } => {
                let (k, s, p) = (i64::from(kernel), i64::from(stride), i64::from(padding));
                b.nodes.push(node(
                    "MaxPool",
                    &format!("maxpool_{}", output.0),
                    &[&vname(input)],
                    &[&vname(output)],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[p, p, p, p]),
                    ],
                ));
            }
            Node::Add { lhs, rhs, output } => {
                b.nodes.push(node(
                    "Add",
                    &format!("add_{}", output.0),
                    &[&vname(lhs), &vname(rhs)],
                    &[&vname(output)],
                    vec![],
                ));
            }
            Node::GlobalAvgPool { input, output } => {
                let pooled = format!("{}_pooled", vname(output));
                b.nodes.push(node(
                    "GlobalAveragePool",
                    &format!("avgpool_{}", output.0),
                    &[&vname(input)],
                    &[&pooled],
                    vec![],
                ));
                b.nodes.push(node(
                    "Flatten",
                    &format!("flatten_{}", output.0),
                    &[&pooled],
                    &[&vname(output)],
                    vec![attr_int("axis", 1)],
                ));
            }
            Node::Linear { name, input, output, .. } => b.layer(name, &vname(input), input, &vname(output), None)?,
        }
        Ok(())
    })?;

    let side = i64::from(pre.crop);
    let graph = GraphProto {
        name: "resnet".into(),
        node: b.nodes,
        initializer: b.init,
        input: vec![value_info("input", &[None, Some(i64::from(config.in_channels)), Some(side), Some(side)])],
        output: vec![value_info("logits", &[None, Some(i64::from(config.num_classes))])],
        ..Default::default()
    };
    let meta = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "host".into(),
        producer_version: producer_version.into(),
        graph: Some(graph),
        doc_string: header.producer.into(),
        metadata_props: vec![
            meta("labels", header.labels.to_string()),
            meta("preprocess", serde_json::to_string(&pre)?),
            meta("precision", format!("{:?}", header.precision)),
        ],
        ..Default::default()
    })
}

/// The ONNX file's bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
