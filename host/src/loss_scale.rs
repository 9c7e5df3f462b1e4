//! Dynamic loss scaling for fp16 training (`torch.cuda.amp.GradScaler`'s algorithm; tch has
//! autocast but no scaler).
//!
//! The loss is multiplied by `scale` before `backward`, so small fp16 gradients do not flush to
//! zero; the fp32 master gradients are then divided by `scale` and checked. If any is inf or NaN
//! the step is skipped and the scale halves; after `growth_interval` consecutive finite steps it
//! doubles.

use tch::{Device, Kind, Tensor};

/// GradScaler defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleConfig {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub config: LossScaleConfig,
    /// `false`: scale stays 1, nothing is checked (fp32 and bf16).
    pub enabled: bool,
    pub scale: f64,
    /// Consecutive finite steps since the last change of scale.
    pub growth_tracker: u64,
}

impl LossScaler {
    pub fn new(config: LossScaleConfig, enabled: bool) -> Self {
        let scale = if enabled { config.init_scale } else { 1.0 };
        Self { config, enabled, scale, growth_tracker: 0 }
    }

    /// `loss * scale` (the loss itself when disabled).
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Divides every defined gradient of `params` by the scale in place and reports whether all
    /// are finite. Uses libtorch's fused `_amp_foreach_non_finite_check_and_unscale_` (one kernel
    /// per tensor, one host sync per step). Disabled: `true` and nothing is touched.
    pub fn unscale<'a>(&self, params: impl Iterator<Item = &'a Tensor>) -> bool {
        if !self.enabled {
            return true;
        }
        let _guard = tch::no_grad_guard();
        let mut found_inf: Option<Tensor> = None;
        let mut inv_scale: Option<Tensor> = None;
        for p in params {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let device: Device = g.device();
            let f = found_inf.get_or_insert_with(|| Tensor::zeros([1], (Kind::Float, device)));
            let inv = inv_scale.get_or_insert_with(|| Tensor::full([1], 1.0 / self.scale, (Kind::Float, device)));
            g.internal_amp_non_finite_check_and_unscale(f, inv);
        }
        found_inf.is_none_or(|f| f.double_value(&[0]) == 0.0)
    }

    /// After a step: back off (and the caller skipped the step) if gradients were not finite,
    /// else count towards growth.
    pub fn update(&mut self, finite: bool) {
        if !self.enabled {
            return;
        }
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.config.growth_interval {
                self.scale *= self.config.growth_factor;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= self.config.backoff_factor;
            self.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_with_grad(values: &[f32]) -> Tensor {
        let p = Tensor::zeros([values.len() as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(values)).sum(Kind::Float).backward();
        p
    }

    #[test]
    fn unscales_skips_on_overflow_and_adapts() {
        let config = LossScaleConfig { init_scale: 8.0, growth_interval: 2, ..Default::default() };
        let mut s = LossScaler::new(config, true);
        let p = param_with_grad(&[8.0, -16.0]);
        assert!(s.unscale([&p].into_iter()));
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [1.0, -2.0]);
        s.update(true);
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (16.0, 0), "grows after growth_interval finite steps");

        let q = param_with_grad(&[f32::INFINITY, 1.0]);
        assert!(!s.unscale([&p, &q].into_iter()));
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (8.0, 0), "backs off on overflow");

        let off = LossScaler::new(config, false);
        let r = param_with_grad(&[f32::NAN]);
        assert!(off.unscale([&r].into_iter()), "disabled: nothing is checked");
        assert_eq!(off.scale, 1.0);
    }
}
