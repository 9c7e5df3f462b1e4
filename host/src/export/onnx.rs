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
//! - int8 file: the QDQ layout ONNX Runtime and TensorRT read, exactly the file's numbers. Each
//!   quantized layer input `x` goes through `QuantizeLinear(x, x_scale, x_zero_point)` ->
//!   `DequantizeLinear` (int8, per tensor; shared by the layers reading the same value); the
//!   weight is `DequantizeLinear(L.weight_quantized int8, L.weight_scale [out],
//!   L.weight_zero_point int8 [out], axis 0)` and the bias `DequantizeLinear(L.bias_quantized
//!   int32, L.bias_scale = input_scale * weight_scale [out], L.bias_zero_point int32 [out],
//!   axis 0)`. Outputs are not quantized. Layers the file keeps in float have float
//!   initializers.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use prost::Message;
use shared::{DType, Form, Node, Preprocess, ValueId, WeightsFile};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use super::net::{decode_f32, decode_i32, decode_i8};

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

struct Builder<'f, 'a> {
    file: &'f WeightsFile<'a>,
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
    /// Dequantized name of an already quantized value, by (value, scale bits, zero point).
    qdq: HashMap<(u32, u32, i8), String>,
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

    /// `[x, weight, bias]` names for a conv/linear layer `name` reading value `x` (no bias for a
    /// float conv without one).
    fn layer_inputs(&mut self, name: &str, x: &str, input: ValueId) -> Result<Vec<String>> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let w = self.view(&wn)?;
        if w.dtype != DType::I8 {
            let mut names = vec![x.to_string(), self.float_param(&wn, None)?];
            if self.file.contains(&bn) {
                names.push(self.float_param(&bn, None)?);
            }
            return Ok(names);
        }
        let wdims = Self::dims(&w);
        let out = wdims[0];
        let q_w = w.data.to_vec();
        let w_scale = decode_f32(&self.view(&format!("{name}.weight_scale"))?)?;
        let w_zp = decode_i8(&self.view(&format!("{name}.weight_zero_point"))?)?;
        let in_scale = *decode_f32(&self.view(&format!("{name}.input_scale"))?)?
            .first()
            .ok_or_else(|| anyhow!("`{name}.input_scale` is empty"))?;
        let in_zp = *decode_i8(&self.view(&format!("{name}.input_zero_point"))?)?
            .first()
            .ok_or_else(|| anyhow!("`{name}.input_zero_point` is empty"))?;
        let bias_q = decode_i32(&self.view(&bn)?)?;

        // Input: one Q/DQ pair per (value, quantization).
        let key = (input.0, in_scale.to_bits(), in_zp);
        let xdq = match self.qdq.get(&key) {
            Some(n) => n.clone(),
            None => {
                let base = if self.qdq.keys().any(|k| k.0 == input.0) { format!("{x}_{name}") } else { x.to_string() };
                let (s, zp, q, dq) = (
                    format!("{base}_scale"),
                    format!("{base}_zero_point"),
                    format!("{base}_quantized"),
                    format!("{base}_dequantized"),
                );
                self.init.push(f32_tensor(&s, &[], &[in_scale]));
                self.init.push(tensor(&zp, DataType::Int8, &[], vec![in_zp as u8]));
                self.nodes.push(node(
                    "QuantizeLinear",
                    &format!("{base}_QuantizeLinear"),
                    &[x, &s, &zp],
                    &[&q],
                    vec![],
                ));
                self.nodes.push(node(
                    "DequantizeLinear",
                    &format!("{base}_DequantizeLinear"),
                    &[&q, &s, &zp],
                    &[&dq],
                    vec![],
                ));
                self.qdq.insert(key, dq.clone());
                dq
            }
        };

        // Weight, per output channel.
        let (wq, ws, wz, wd) =
            (format!("{wn}_quantized"), format!("{wn}_scale"), format!("{wn}_zero_point"), format!("{wn}_dequantized"));
        self.init.push(tensor(&wq, DataType::Int8, &wdims, q_w));
        self.init.push(f32_tensor(&ws, &[out], &w_scale));
        self.init.push(tensor(&wz, DataType::Int8, &[out], w_zp.iter().map(|&z| z as u8).collect()));
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{wn}_DequantizeLinear"),
            &[&wq, &ws, &wz],
            &[&wd],
            vec![attr_int("axis", 0)],
        ));

        // Bias: int32 with scale input_scale * weight_scale.
        let b_scale: Vec<f32> = w_scale.iter().map(|&s| in_scale * s).collect();
        let (bq, bs, bz, bd) =
            (format!("{bn}_quantized"), format!("{bn}_scale"), format!("{bn}_zero_point"), format!("{bn}_dequantized"));
        self.init.push(tensor(&bq, DataType::Int32, &[out], bias_q.iter().flat_map(|b| b.to_le_bytes()).collect()));
        self.init.push(f32_tensor(&bs, &[out], &b_scale));
        self.init.push(tensor(&bz, DataType::Int32, &[out], vec![0; out as usize * 4]));
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{bn}_DequantizeLinear"),
            &[&bq, &bs, &bz],
            &[&bd],
            vec![attr_int("axis", 0)],
        ));
        Ok(vec![xdq, wd, bd])
    }
}

/// Builds the ONNX model of a Folded-form weights file.
pub fn build(file: &WeightsFile<'_>, producer_version: &str) -> Result<ModelProto> {
    let header = file.header();
    if header.form != Form::Folded {
        bail!("ONNX export needs a Folded-form weights file");
    }
    let config = *file.config();
    let pre: Preprocess = header.preprocess;
    let mut b = Builder { file, nodes: Vec::new(), init: Vec::new(), qdq: HashMap::new() };
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
                let inputs = b.layer_inputs(name, &vname(input), input)?;
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let k = i64::from(kernel);
                let (s, p) = (i64::from(stride), i64::from(padding));
                b.nodes.push(node(
                    "Conv",
                    name,
                    &inputs,
                    &[&vname(output)],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_ints("dilations", &[1, 1]),
                        attr_int("group", 1),
                    ],
                ));
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
            Node::Linear { name, input, output, .. } => {
                let inputs = b.layer_inputs(name, &vname(input), input)?;
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                b.nodes.push(node("Gemm", name, &inputs, &[&vname(output)], vec![attr_int("transB", 1)]));
            }
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
