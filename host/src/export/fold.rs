//! BatchNorm folding: the Training-form `state_dict` -> the Folded-form parameters.
//!
//! `shared`'s walk decides what folds where: in [`Form::Training`] every conv that has a
//! BatchNorm is directly followed by it (the BN reads the conv's output); in [`Form::Folded`] that
//! conv has `bias: true` under the same name, and a BatchNorm that follows no conv (pre-activation
//! v2) becomes an [`Node::Affine`] under the BN's name. For BN statistics `mean`, `var` and
//! affine `gamma`, `beta` (eps [`BN_EPS`](shared::graph::BN_EPS)):
//!
//! ```text
//! s[o]       = gamma[o] / sqrt(var[o] + eps)
//! W'[o, ...] = W[o, ...] * s[o]          b'[o] = beta[o] - mean[o] * s[o]
//! ```
//!
//! computed by [`shared::fold`] in f64 and rounded once to f32.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};
use shared::fold::BatchNorm;
use shared::{Form, Node, ResNetConfig};
use tch::{Device, Kind, Tensor};

use crate::model::ResNet;

/// Folded-form parameters by name (`layer1.0.conv1.weight`, `layer1.0.conv1.bias`, ...), f32 on
/// the CPU, exactly the set `config.for_each_param(Form::Folded, ..)` lists.
#[derive(Debug)]
pub struct Folded {
    pub config: ResNetConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Folded {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| anyhow!("folded parameter `{name}` is missing"))
    }
}

/// Which BatchNorm folds into which conv (`conv name -> bn name`), and the BatchNorms that
/// follow no conv (they become `Affine`), from the Training-form walk.
pub fn fold_plan(config: &ResNetConfig) -> (HashMap<String, String>, Vec<String>) {
    let mut conv_of_value: HashMap<u32, String> = HashMap::new();
    let mut into_conv = HashMap::new();
    let mut lone = Vec::new();
    let _ = config.walk::<std::convert::Infallible>(Form::Training, |node| {
        match *node {
            Node::Conv { name, output, .. } => {
                conv_of_value.insert(output.0, name.to_string());
            }
            Node::BatchNorm { name, input, .. } => match conv_of_value.get(&input.0) {
                Some(conv) => {
                    into_conv.insert(conv.clone(), name.to_string());
                }
                None => lone.push(name.to_string()),
            },
            _ => {}
        }
        Ok(())
    });
    (into_conv, lone)
}

fn f64_cpu(model: &ResNet, name: &str) -> Result<Tensor> {
    let t = model.tensor(name).ok_or_else(|| anyhow!("the model has no tensor `{name}`"))?;
    Ok(t.to_device(Device::Cpu).to_kind(Kind::Double))
}

/// The values of `t` in row-major order.
fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(&t.contiguous().view(-1)).map_err(|e| anyhow!("{e}"))
}

/// BatchNorm `bn`'s `weight`, `bias`, `running_mean` and `running_var`, in f64.
fn bn_params(model: &ResNet, bn: &str) -> Result<[Vec<f64>; 4]> {
    let get = |leaf: &str| to_vec_f64(&f64_cpu(model, &format!("{bn}.{leaf}"))?);
    let var = get("running_var")?;
    if var.iter().any(|&v| v < 0.0) {
        bail!("BatchNorm `{bn}`: running_var has negative values");
    }
    Ok([get("weight")?, get("bias")?, get("running_mean")?, var])
}

fn batch_norm(p: &[Vec<f64>; 4]) -> Result<BatchNorm<'_, f64>> {
    BatchNorm::new(&p[0], &p[1], &p[2], &p[3]).map_err(|e| anyhow!("{e}"))
}

/// Folds every BatchNorm of `model` (eval-mode statistics). Errors name the layer whose folded
/// parameters are not finite.
pub fn fold(model: &ResNet) -> Result<Folded> {
    let _guard = tch::no_grad_guard();
    let config = model.config;
    let (into_conv, _) = fold_plan(&config);
    let mut tensors = BTreeMap::new();
    let mut result = Ok(());
    let _ = config.walk::<()>(Form::Folded, |node| {
        let step = || -> Result<Vec<(String, Tensor)>> {
            Ok(match *node {
                Node::Conv { name, bias, .. } => {
                    let w = f64_cpu(model, &format!("{name}.weight"))?;
                    if !bias {
                        vec![(format!("{name}.weight"), w)]
                    } else {
                        let bn =
                            into_conv.get(name).ok_or_else(|| anyhow!("conv `{name}` has no BatchNorm to fold"))?;
                        let p = bn_params(model, bn)?;
                        let bn = batch_norm(&p)?;
                        let (mut wf, mut bf) = (vec![0.0; w.numel()], vec![0.0; bn.channels()]);
                        bn.fold_into(&to_vec_f64(&w)?, None, &mut wf, &mut bf)
                            .map_err(|e| anyhow!("`{name}`: {e}"))?;
                        let w = Tensor::from_slice(&wf).view(w.size().as_slice());
                        vec![(format!("{name}.weight"), w), (format!("{name}.bias"), Tensor::from_slice(&bf))]
                    }
                }
                Node::Affine { name, .. } => {
                    let p = bn_params(model, name)?;
                    let bn = batch_norm(&p)?;
                    let (mut scale, mut shift) = (vec![0.0; bn.channels()], vec![0.0; bn.channels()]);
                    bn.to_affine(&mut scale, &mut shift).map_err(|e| anyhow!("`{name}`: {e}"))?;
                    vec![
                        (format!("{name}.weight"), Tensor::from_slice(&scale)),
                        (format!("{name}.bias"), Tensor::from_slice(&shift)),
                    ]
                }
                Node::Linear { name, .. } => vec![
                    (format!("{name}.weight"), f64_cpu(model, &format!("{name}.weight"))?),
                    (format!("{name}.bias"), f64_cpu(model, &format!("{name}.bias"))?),
                ],
                _ => Vec::new(),
            })
        };
        match step() {
            Ok(list) => {
                for (n, t) in list {
                    let t = t.to_kind(Kind::Float).contiguous();
                    if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
                        let layer = node.name().unwrap_or_default();
                        result = Err(anyhow!("folding BatchNorm into `{layer}` gives non-finite values in `{n}`"));
                        return Err(());
                    }
                    tensors.insert(n, t);
                }
                Ok(())
            }
            Err(e) => {
                result = Err(e);
                Err(())
            }
        }
    });
    result?;
    Ok(Folded { config, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Variant;

    #[test]
    fn plan_pairs_every_conv_bn_and_finds_lone_bns() {
        let (into, lone) = fold_plan(&ResNetConfig::resnet8());
        assert_eq!(into.get("conv1").map(String::as_str), Some("bn1"));
        assert_eq!(into.get("layer2.0.downsample.0").map(String::as_str), Some("layer2.0.downsample.1"));
        assert_eq!(into.len(), 1 + 3 * 2 + 2);
        assert!(lone.is_empty());

        let v2 = ResNetConfig::resnet8().with_variant(Variant::V2);
        let (into, lone) = fold_plan(&v2);
        assert_eq!(into.get("layer1.0.conv1").map(String::as_str), Some("layer1.0.bn2"));
        assert!(lone.contains(&"layer1.0.bn1".to_string()) && lone.contains(&"final_bn".to_string()));
    }
}
