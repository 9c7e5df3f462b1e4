//! BatchNorm folding: the Training-form `state_dict` -> the Folded-form parameters.
//!
//! `shared`'s walk decides what folds where: in [`Form::Training`] every conv that has a
//! BatchNorm is directly followed by it (the BN reads the conv's output); in [`Form::Folded`] that
//! conv has `bias: true` under the same name, and a BatchNorm that follows no conv (pre-activation
//! v2) becomes an [`Node::Affine`] under the BN's name. For BN statistics `mean`, `var` and
//! affine `gamma`, `beta` (eps [`BN_EPS`]):
//!
//! ```text
//! s[o]       = gamma[o] / sqrt(var[o] + eps)
//! W'[o, ...] = W[o, ...] * s[o]          b'[o] = beta[o] - mean[o] * s[o]
//! ```
//!
//! computed in f64 and rounded once to f32.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};
use shared::graph::BN_EPS;
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

/// `gamma / sqrt(var + eps)` and `beta - mean * scale` of BatchNorm `bn`, in f64.
fn bn_affine(model: &ResNet, bn: &str) -> Result<(Tensor, Tensor)> {
    let var = f64_cpu(model, &format!("{bn}.running_var"))?;
    if var.lt(0.0).any().int64_value(&[]) != 0 {
        bail!("BatchNorm `{bn}`: running_var has negative values");
    }
    let gamma = f64_cpu(model, &format!("{bn}.weight"))?;
    let beta = f64_cpu(model, &format!("{bn}.bias"))?;
    let mean = f64_cpu(model, &format!("{bn}.running_mean"))?;
    let scale = gamma / (var + f64::from(BN_EPS)).sqrt();
    let shift = beta - &mean * &scale;
    Ok((scale, shift))
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
                        let (scale, shift) = bn_affine(model, bn)?;
                        let w = w * scale.view([-1, 1, 1, 1]);
                        vec![(format!("{name}.weight"), w), (format!("{name}.bias"), shift)]
                    }
                }
                Node::Affine { name, .. } => {
                    let (scale, shift) = bn_affine(model, name)?;
                    vec![(format!("{name}.weight"), scale), (format!("{name}.bias"), shift)]
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
