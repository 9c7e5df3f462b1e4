//! torchvision `state_dict` (safetensors) -> the compact weights format.
//!
//! `host export` is the normal producer of weights files; this converter lets the device side
//! (tests, and users holding a plain torchvision checkpoint) make them too:
//!
//! - `Form::Training`: the state_dict as is (conv + BatchNorm), f32 or f16 conv/linear weights.
//! - `Form::Folded`: every BatchNorm folded into the conv before it (`shared::fold`, in f32:
//!   `w * g / sqrt(var + eps)`, `beta - mean * g / sqrt(var + eps)`); a BatchNorm after no conv
//!   becomes an `Affine`.
//! - `Precision::Int8` (Folded): the int8 tensors of each quantized layer come from a second
//!   safetensors file (as `tools/make_test_models.py` extracts them from an ONNX Runtime QDQ
//!   model); layers it does not list stay f32.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use shared::fold::BatchNorm;
use shared::graph::{Form, Node, ParamKind};
use shared::preprocess::Preprocess;
use shared::weights::{Int8Layer, Precision, WeightsWriter};
use shared::ResNetConfig;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub config: ResNetConfig,
    pub form: Form,
    pub precision: Precision,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    pub producer: String,
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| anyhow::anyhow!("tensor `{name}` is missing from the state_dict"))?;
    match t.dtype() {
        Dtype::F32 => Ok(t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Dtype::F16 => Ok(t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => bail!("tensor `{name}` is {other:?}, expected F32 or F16"),
    }
}

/// BatchNorm `name`'s `weight`, `bias`, `running_mean` and `running_var`; [`bn_view`] checks them.
fn bn_params(st: &SafeTensors<'_>, name: &str) -> Result<[Vec<f32>; 4]> {
    let get = |leaf: &str| f32s(st, &format!("{name}.{leaf}"));
    Ok([
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    ])
}

fn bn_view<'a>(p: &'a [Vec<f32>; 4], name: &str) -> Result<BatchNorm<'a, f32>> {
    BatchNorm::new(&p[0], &p[1], &p[2], &p[3]).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
}

struct Out {
    w: WeightsWriter,
    f16: bool,
}

impl Out {
    fn float(&mut self, name: &str, shape: &[u32], v: &[f32]) -> Result<()> {
        let r = if self.f16 {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            self.w.add_f16(name, shape, &h)
        } else {
            self.w.add_f32(name, shape, v)
        };
        r.map_err(|e| anyhow::anyhow!("{e}"))
    }
    fn f32(&mut self, name: &str, shape: &[u32], v: &[f32]) -> Result<()> {
        self.w
            .add_f32(name, shape, v)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Little-endian values of tensor `name` of `q`, which must be `want`.
fn le_values<T: bytemuck::Pod>(q: &SafeTensors<'_>, name: &str, want: Dtype) -> Result<Vec<T>> {
    let t = q
        .tensor(name)
        .map_err(|_| anyhow::anyhow!("int8 file: `{name}` is missing"))?;
    ensure!(
        t.dtype() == want,
        "int8 file: `{name}` is {:?}, expected {want:?}",
        t.dtype()
    );
    // Little-endian on every target this crate builds for; the copy makes any alignment fine.
    Ok(bytemuck::pod_collect_to_vec(t.data()))
}

/// Writes layer `layer`'s int8 record from the tensors of `q` (`shared::weights::Int8Layer`
/// checks it against the graph); false when `q` has no int8 weight for it.
fn copy_int8(out: &mut Out, q: &SafeTensors<'_>, layer: &str) -> Result<bool> {
    let wname = format!("{layer}.weight");
    if q.tensor(&wname).is_err() {
        return Ok(false);
    }
    let get_f32 = |leaf: &str| le_values::<f32>(q, &format!("{layer}.{leaf}"), Dtype::F32);
    let get_i8 = |leaf: &str| le_values::<i8>(q, &format!("{layer}.{leaf}"), Dtype::I8);
    fn scalar<T: Copy>(v: Vec<T>, layer: &str, leaf: &str) -> Result<T> {
        match v[..] {
            [x] => Ok(x),
            _ => bail!("int8 file: `{layer}.{leaf}` must be a scalar"),
        }
    }
    let weight = le_values::<i8>(q, &wname, Dtype::I8)?;
    let weight_scale = get_f32("weight_scale")?;
    ensure!(
        get_i8("weight_zero_point")?.iter().all(|&z| z == 0),
        "int8 file: `{layer}.weight_zero_point` must be all 0 (symmetric weights)"
    );
    let input_scale = scalar(get_f32("input_scale")?, layer, "input_scale")?;
    let input_zero_point = scalar(get_i8("input_zero_point")?, layer, "input_zero_point")?;
    let bias = le_values::<i32>(q, &format!("{layer}.bias"), Dtype::I32)?;
    let record = Int8Layer {
        weight: &weight,
        weight_scale: &weight_scale,
        input_scale,
        input_zero_point,
        bias: &bias,
    };
    out.w
        .add_int8_layer(layer, &record)
        .map_err(|e| anyhow::anyhow!("int8 file: {e}"))?;
    Ok(true)
}

/// Converts a torchvision `state_dict` (safetensors bytes) into a compact weights file.
pub fn convert(state_dict: &[u8], int8: Option<&[u8]>, opts: &ConvertOptions) -> Result<Vec<u8>> {
    let st =
        SafeTensors::deserialize(state_dict).context("state_dict is not a safetensors file")?;
    let q = int8
        .map(SafeTensors::deserialize)
        .transpose()
        .context("int8 parameters are not a safetensors file")?;
    ensure!(
        opts.precision != Precision::Int8 || q.is_some(),
        "int8 precision needs the int8 parameters file"
    );
    ensure!(
        opts.precision != Precision::Int8 || opts.form == Form::Folded,
        "int8 weights need the Folded form"
    );
    opts.config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let writer = WeightsWriter::new(opts.config, opts.form, opts.precision, opts.preprocess)
        .labels(&opts.labels)
        .producer(&opts.producer);
    let mut out = Out {
        w: writer,
        f16: opts.precision == Precision::F16,
    };

    // Which BatchNorm follows which conv (from the Training walk).
    let mut bn_of_conv: HashMap<String, String> = HashMap::new();
    let mut conv_of_value: HashMap<u32, String> = HashMap::new();
    opts.config
        .walk::<core::convert::Infallible>(Form::Training, |n| {
            match *n {
                Node::Conv { name, output, .. } => {
                    conv_of_value.insert(output.0, name.to_string());
                }
                Node::BatchNorm { name, input, .. } => {
                    if let Some(c) = conv_of_value.get(&input.0) {
                        bn_of_conv.insert(c.clone(), name.to_string());
                    }
                }
                _ => {}
            }
            Ok(())
        })?;

    opts.config.walk::<anyhow::Error>(opts.form, |node| {
        match *node {
            Node::Conv {
                name,
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let shape = [out_channels, in_channels, kernel, kernel];
                if let Some(q) = &q {
                    if copy_int8(&mut out, q, name)? {
                        return Ok(());
                    }
                }
                let w = f32s(&st, &format!("{name}.weight"))?;
                ensure!(
                    w.len() == shape.iter().product::<u32>() as usize,
                    "`{name}.weight` has the wrong size for {shape:?}"
                );
                if bias {
                    // Folded: the BatchNorm after this conv goes into its weight and bias.
                    let bn = bn_of_conv
                        .get(name)
                        .with_context(|| format!("no BatchNorm follows `{name}`"))?;
                    let p = bn_params(&st, bn)?;
                    let bn = bn_view(&p, bn)?;
                    let mut wf = vec![0.0; w.len()];
                    let mut bf = vec![0.0; bn.channels()];
                    bn.fold_into(&w, None, &mut wf, &mut bf)
                        .map_err(|e| anyhow::anyhow!("folding into `{name}`: {e}"))?;
                    out.float(&format!("{name}.weight"), &shape, &wf)?;
                    out.float(&format!("{name}.bias"), &[out_channels], &bf)?;
                } else {
                    out.float(&format!("{name}.weight"), &shape, &w)?;
                }
            }
            Node::Linear {
                name,
                in_features,
                out_features,
                ..
            } => {
                let shape = [out_features, in_features];
                if let Some(q) = &q {
                    if copy_int8(&mut out, q, name)? {
                        return Ok(());
                    }
                }
                let w = f32s(&st, &format!("{name}.weight"))?;
                let b = f32s(&st, &format!("{name}.bias"))?;
                out.float(&format!("{name}.weight"), &shape, &w)?;
                out.float(&format!("{name}.bias"), &[out_features], &b)?;
            }
            Node::BatchNorm { .. } => {
                let mut r = Ok(());
                node.for_each_param(|p| {
                    if r.is_err() {
                        return;
                    }
                    r = if p.kind == ParamKind::BnNumBatchesTracked {
                        match st.tensor(&p.name) {
                            Ok(t) if t.dtype() == Dtype::I64 && t.data().len() == 8 => {
                                let v = i64::from_le_bytes(t.data().try_into().unwrap_or([0; 8]));
                                out.w
                                    .add_i64(&p.name, &[], &[v])
                                    .map_err(|e| anyhow::anyhow!("{e}"))
                            }
                            _ => Ok(()),
                        }
                    } else {
                        f32s(&st, &p.name).and_then(|v| out.f32(&p.name, p.shape(), &v))
                    };
                });
                r?;
            }
            Node::Affine { name, channels, .. } => {
                let p = bn_params(&st, name)?;
                let mut scale = vec![0.0; channels as usize];
                let mut shift = vec![0.0; channels as usize];
                bn_view(&p, name)?
                    .to_affine(&mut scale, &mut shift)
                    .map_err(|e| anyhow::anyhow!("`{name}`: {e}"))?;
                out.f32(&format!("{name}.weight"), &[channels], &scale)?;
                out.f32(&format!("{name}.bias"), &[channels], &shift)?;
            }
            _ => {}
        }
        Ok(())
    })?;
    out.w.finish().map_err(|e| anyhow::anyhow!("{e}"))
}
