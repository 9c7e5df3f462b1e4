//! BatchNorm folding arithmetic: the one copy `host export`, `device convert` and the device
//! importer use.
//!
//! For a BatchNorm with affine `gamma`, `beta` and statistics `mean`, `var` (eps [`BN_EPS`]):
//!
//! ```text
//! s[o]       = gamma[o] / sqrt(var[o] + eps)         scale
//! t[o]       = beta[o] - mean[o] * s[o]              shift
//! W'[o, ...] = W[o, ...] * s[o]                      folded into the conv before it
//! b'[o]      = t[o]                  (conv without bias)
//! b'[o]      = beta[o] + (b[o] - mean[o]) * s[o]   (conv with bias b)
//! ```
//!
//! Every operation rounds in `T` (`f32` or `f64`) in the order written; a caller that wants
//! "f64, rounded once to f32" passes `f64` slices. Outputs go to caller-provided slices (no
//! allocation).

use core::ops::{Add, Div, Mul, Sub};

use crate::error::Error;
use crate::graph::BN_EPS;

/// The float types folding works in.
pub trait Real: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {
    /// [`BN_EPS`] in this type.
    const BN_EPS: Self;
    /// Correctly rounded square root (IEEE 754), without std.
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    const BN_EPS: f32 = BN_EPS;
    fn sqrt(self) -> f32 {
        libm::sqrtf(self)
    }
}

impl Real for f64 {
    const BN_EPS: f64 = BN_EPS as f64;
    fn sqrt(self) -> f64 {
        libm::sqrt(self)
    }
}

/// One BatchNorm's parameters, `[C]` each (torchvision's `weight`, `bias`, `running_mean`,
/// `running_var`).
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a, T> {
    weight: &'a [T],
    bias: &'a [T],
    running_mean: &'a [T],
    running_var: &'a [T],
}

impl<'a, T: Real> BatchNorm<'a, T> {
    /// Errors when the four slices differ in length.
    pub fn new(weight: &'a [T], bias: &'a [T], running_mean: &'a [T], running_var: &'a [T]) -> Result<Self, Error> {
        let c = weight.len();
        if bias.len() != c || running_mean.len() != c || running_var.len() != c {
            return Err(Error::BadFold("BatchNorm weight, bias, running_mean and running_var differ in length"));
        }
        Ok(Self { weight, bias, running_mean, running_var })
    }

    pub fn channels(&self) -> usize {
        self.weight.len()
    }

    /// `(scale, shift)` of channel `c`: `gamma / sqrt(var + eps)`, `beta - mean * scale`.
    pub fn scale_shift(&self, c: usize) -> (T, T) {
        let scale = self.weight[c] / (self.running_var[c] + T::BN_EPS).sqrt();
        (scale, self.bias[c] - self.running_mean[c] * scale)
    }

    /// The BatchNorm as a per-channel affine `y = x * scale[c] + shift[c]` (`[C]` each).
    pub fn to_affine(&self, scale: &mut [T], shift: &mut [T]) -> Result<(), Error> {
        self.check_len(scale.len())?;
        self.check_len(shift.len())?;
        for (c, (s, t)) in scale.iter_mut().zip(shift.iter_mut()).enumerate() {
            (*s, *t) = self.scale_shift(c);
        }
        Ok(())
    }

    /// Folds the BatchNorm into the conv (or linear layer) before it: `weight` `[C, ...]` and its
    /// optional `bias` `[C]` become `out_weight` (same length as `weight`) and `out_bias` `[C]`.
    pub fn fold_into(
        &self,
        weight: &[T],
        bias: Option<&[T]>,
        out_weight: &mut [T],
        out_bias: &mut [T],
    ) -> Result<(), Error> {
        let c = self.channels();
        if c == 0 || weight.len() % c != 0 {
            return Err(Error::BadFold("the conv weight's length is not a multiple of the BatchNorm's channels"));
        }
        if out_weight.len() != weight.len() {
            return Err(Error::BadFold("the folded weight's length differs from the conv weight's"));
        }
        self.check_len(out_bias.len())?;
        if let Some(b) = bias {
            self.check_len(b.len())?;
        }
        let per = weight.len() / c;
        for (o, (w_out, w)) in out_weight.chunks_exact_mut(per).zip(weight.chunks_exact(per)).enumerate() {
            let (scale, shift) = self.scale_shift(o);
            for (y, &x) in w_out.iter_mut().zip(w) {
                *y = x * scale;
            }
            out_bias[o] = match bias {
                None => shift,
                Some(b) => self.bias[o] + (b[o] - self.running_mean[o]) * scale,
            };
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<(), Error> {
        if len == self.channels() {
            Ok(())
        } else {
            Err(Error::BadFold("a per-channel slice's length differs from the BatchNorm's channels"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAMMA: [f32; 3] = [1.0, 0.5, -2.0];
    const BETA: [f32; 3] = [0.0, 1.0, 0.25];
    const MEAN: [f32; 3] = [0.5, -1.0, 3.0];
    const VAR: [f32; 3] = [1.0, 4.0, 0.0];

    fn bn() -> BatchNorm<'static, f32> {
        BatchNorm::new(&GAMMA, &BETA, &MEAN, &VAR).unwrap()
    }

    #[test]
    fn sqrt_is_std_sqrt() {
        let mut x = 1u64;
        for _ in 0..100_000 {
            // xorshift over bit patterns: normals, subnormals, huge and tiny values.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = f64::from_bits(x >> 1);
            let f = f32::from_bits((x >> 33) as u32);
            assert_eq!(Real::sqrt(d).to_bits(), d.sqrt().to_bits(), "{d:e}");
            assert_eq!(Real::sqrt(f).to_bits(), f.sqrt().to_bits(), "{f:e}");
        }
    }

    #[test]
    fn affine_is_batch_norm_in_eval_mode() {
        let (mut scale, mut shift) = ([0f32; 3], [0f32; 3]);
        bn().to_affine(&mut scale, &mut shift).unwrap();
        for c in 0..3 {
            let s = GAMMA[c] / (VAR[c] + BN_EPS).sqrt();
            assert_eq!(scale[c].to_bits(), s.to_bits());
            assert_eq!(shift[c].to_bits(), (BETA[c] - MEAN[c] * s).to_bits());
            // y = (x - mean) / sqrt(var + eps) * gamma + beta
            let x = 1.75f32;
            let y = (x - MEAN[c]) / (VAR[c] + BN_EPS).sqrt() * GAMMA[c] + BETA[c];
            assert!((x * scale[c] + shift[c] - y).abs() <= 1e-5 * y.abs().max(1.0), "{c}");
        }
        assert_eq!(scale[0], 1.0 / (1.0f32 + BN_EPS).sqrt());
    }

    #[test]
    fn folding_scales_each_output_channel() {
        // [3, 2] weight: each row is one output channel.
        let w = [1.0f32, -2.0, 3.0, 4.0, 0.5, -0.5];
        let (mut wf, mut bf) = ([0f32; 6], [0f32; 3]);
        bn().fold_into(&w, None, &mut wf, &mut bf).unwrap();
        for o in 0..3 {
            let (s, t) = bn().scale_shift(o);
            assert_eq!(wf[2 * o..2 * o + 2], [w[2 * o] * s, w[2 * o + 1] * s]);
            assert_eq!(bf[o].to_bits(), t.to_bits());
        }

        // A conv bias b goes through the BatchNorm too: beta + (b - mean) * s.
        let b = [1.0f32, 2.0, -1.0];
        bn().fold_into(&w, Some(&b), &mut wf, &mut bf).unwrap();
        for o in 0..3 {
            let (s, _) = bn().scale_shift(o);
            assert_eq!(bf[o], BETA[o] + (b[o] - MEAN[o]) * s);
        }
        // A zero bias is the same as none, bit for bit.
        let mut bz = [0f32; 3];
        bn().fold_into(&w, Some(&[0.0; 3]), &mut wf, &mut bz).unwrap();
        bn().fold_into(&w, None, &mut wf, &mut bf).unwrap();
        assert_eq!(bz.map(f32::to_bits), bf.map(f32::to_bits));
    }

    #[test]
    fn f64_folding_rounds_once() {
        let (g, b, m, v) = ([0.3f64], [0.1f64], [0.7f64], [0.9f64]);
        let bn = BatchNorm::new(&g, &b, &m, &v).unwrap();
        let (mut wf, mut bf) = ([0f64; 2], [0f64; 1]);
        bn.fold_into(&[1.1, -2.2], None, &mut wf, &mut bf).unwrap();
        let s = 0.3 / (0.9 + f64::from(BN_EPS)).sqrt();
        assert_eq!(wf, [1.1 * s, -2.2 * s]);
        assert_eq!(bf, [0.1 - 0.7 * s]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(BatchNorm::new(&GAMMA, &BETA, &MEAN, &VAR[..2]).is_err());
        let (mut wf, mut bf) = ([0f32; 6], [0f32; 3]);
        assert!(bn().fold_into(&[0.0; 5], None, &mut wf[..5], &mut bf).is_err());
        assert!(bn().fold_into(&[0.0; 6], None, &mut wf[..3], &mut bf).is_err());
        assert!(bn().fold_into(&[0.0; 6], None, &mut wf, &mut bf[..2]).is_err());
        assert!(bn().fold_into(&[0.0; 6], Some(&[0.0; 2]), &mut wf, &mut bf).is_err());
        assert!(bn().to_affine(&mut [0.0; 2], &mut [0.0; 3]).is_err());
        let empty: [f32; 0] = [];
        let e = BatchNorm::new(&empty, &empty, &empty, &empty).unwrap();
        assert!(e.fold_into(&[], None, &mut [], &mut []).is_err());
    }
}
