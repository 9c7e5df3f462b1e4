//! SGD with momentum, written on tch tensors so its state (the momentum buffers) can be saved and
//! restored exactly. Semantics of `torch.optim.SGD(momentum=m, dampening=0, nesterov=False)`:
//!
//! ```text
//! d = grad + weight_decay * p          (weight decay only for conv and linear weights)
//! buf = d                  on the first step, else   buf = m * buf + d
//! p = p - lr * buf
//! ```
//!
//! Parameter groups follow [`ParamKind::takes_weight_decay`]: BatchNorm weights and biases and the
//! classifier bias get no weight decay (NVIDIA's recipe).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use shared::ParamKind;
use tch::Tensor;

use crate::model::ResNet;

/// Prefix of the momentum buffers' names in `train_state.safetensors`.
pub const MOMENTUM_PREFIX: &str = "momentum_buffer.";

/// SGD hyper-parameters other than the learning rate (which the schedule sets per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
    momentum_buffer: Option<Tensor>,
}

pub struct Sgd {
    config: SgdConfig,
    params: Vec<Param>,
}

impl Sgd {
    /// Optimizes every trainable tensor of `model`.
    pub fn new(model: &ResNet, config: SgdConfig) -> Self {
        let params = model
            .trainable()
            .map(|t| Param {
                name: t.name.clone(),
                tensor: t.tensor.shallow_clone(),
                decay: t.kind.takes_weight_decay(),
                momentum_buffer: None,
            })
            .collect();
        Self { config, params }
    }

    /// The optimized tensors (their `.grad()` is what the loss scaler unscales).
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|p| &p.tensor)
    }

    /// Names of the parameters with and without weight decay.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<&Param>, Vec<&Param>) = self.params.iter().partition(|p| p.decay);
        (d.iter().map(|p| p.name.as_str()).collect(), n.iter().map(|p| p.name.as_str()).collect())
    }

    /// Clears the gradients (sets them to zero in place, keeping their memory).
    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        let SgdConfig { momentum, weight_decay } = self.config;
        for p in &mut self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let d = if p.decay && weight_decay != 0.0 { &grad + &p.tensor * weight_decay } else { grad };
            let update = if momentum != 0.0 {
                match &mut p.momentum_buffer {
                    Some(buf) => {
                        let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                        buf.shallow_clone()
                    }
                    None => {
                        let buf = d.copy();
                        p.momentum_buffer = Some(buf.shallow_clone());
                        buf
                    }
                }
            } else {
                d
            };
            let _ = p.tensor.shallow_clone().g_sub_(&(update * lr));
        }
    }

    /// The optimizer state to save: `momentum_buffer.<param name>` for every buffer that exists
    /// (none before the first step), as contiguous CPU tensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| {
                let b = p.momentum_buffer.as_ref()?;
                Some((format!("{MOMENTUM_PREFIX}{}", p.name), b.to_device(tch::Device::Cpu).contiguous()))
            })
            .collect()
    }

    /// Restores [`state`](Self::state). A buffer present for some parameters but not others, or
    /// of the wrong shape, is an error naming it and `source`.
    pub fn load_state(&mut self, map: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let any = self.params.iter().any(|p| map.contains_key(&format!("{MOMENTUM_PREFIX}{}", p.name)));
        for p in &mut self.params {
            let key = format!("{MOMENTUM_PREFIX}{}", p.name);
            match map.get(&key) {
                Some(t) if t.size() == p.tensor.size() => {
                    // Same dtype, device and memory format as the parameter (as zeros_like would be).
                    let mut buf = p.tensor.detach().zeros_like();
                    let _ = buf.copy_(&t.to_kind(buf.kind()));
                    p.momentum_buffer = Some(buf);
                }
                Some(t) => bail!(
                    "{}: `{key}` has shape {:?}, the parameter has {:?}",
                    source.display(),
                    t.size(),
                    p.tensor.size()
                ),
                None if any && self.config.momentum != 0.0 => {
                    bail!("{}: momentum buffer `{key}` is missing", source.display())
                }
                None => p.momentum_buffer = None,
            }
        }
        Ok(())
    }
}

/// Whether a parameter of this kind is decayed (re-exported for reports and tests).
pub fn decays(kind: ParamKind) -> bool {
    kind.takes_weight_decay()
}
