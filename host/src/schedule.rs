//! Learning rate per optimizer step: linear warm-up, then cosine decay to zero (NVIDIA's
//! `--lr-schedule cosine --warmup N`, evaluated per step rather than per epoch).

/// `lr(step)`, 0-based steps over the whole run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl WarmupCosine {
    pub fn new(base_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        Self { base_lr, warmup_steps: warmup_steps.min(total_steps), total_steps }
    }

    /// Warm-up: `base * (step + 1) / warmup_steps`; then
    /// `base * (1 + cos(pi * t)) / 2` with `t` going from 0 to 1 over the remaining steps.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        0.5 * (1.0 + (std::f64::consts::PI * t).cos()) * self.base_lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = WarmupCosine::new(0.4, 4, 104);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(3) - 0.4).abs() < 1e-12);
        assert!((s.lr(4) - 0.4).abs() < 1e-12);
        assert!((s.lr(54) - 0.2).abs() < 1e-12);
        assert!(s.lr(103) < 1e-3 && s.lr(103) > 0.0);
        assert!((1..104).all(|i| i <= 4 || s.lr(i) <= s.lr(i - 1)));
    }
}
