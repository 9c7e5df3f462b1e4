//! Post-training calibration of the per-tensor activation scales.
//!
//! The float (folded) network runs on N batches of training images (eval preprocessing, no
//! augmentation) and every conv/linear input is observed:
//!
//! 1. min and max of each observed tensor (every method);
//! 2. for `percentile` and `mse`, a second pass fills a [`BINS`]-bin histogram over
//!    `[min(min, 0), max(max, 0)]` (and counts exact zeros, which ReLU makes common and which
//!    int8 represents exactly).
//!
//! The clipping range `[lo, hi]` then is
//!
//! | method | range |
//! |---|---|
//! | `minmax` | `[min, max]` |
//! | `percentile` | the `(100 - p)`-th and `p`-th percentiles of the values (p = 99.99 by default) |
//! | `mse` | `t * [min, max]` with `t` in `(0, 1]` minimizing the expected quantization MSE on the histogram: `s^2 / 12` per value inside the range, `(x - clip(x))^2` outside (pytorch-quantization's and TensorRT's `mse` calibrator, with the uniform-rounding error model) |
//!
//! always widened to include 0. The network input keeps its observed `[min, max]` under every
//! method (its range is fixed by the preprocessing; clipping pixels does not help).
//!
//! A range becomes an asymmetric int8 quantization ([`act_quant`]): a non-negative range (every
//! input after a ReLU) gets `zero_point = -128` and `scale = hi / 255`, the whole int8 range for
//! `[0, hi]`; a signed one `scale = (hi - lo) / 255`, `zero_point = round(-128 - lo / scale)`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{bail, Result};
use serde::Serialize;
use shared::ValueId;
use tch::{Kind, Tensor};

use super::net::{ActQuant, Net};

/// Histogram bins of the `percentile` and `mse` methods.
pub const BINS: usize = 2048;
/// Candidate clipping fractions the `mse` search tries.
const MSE_CANDIDATES: usize = 512;

/// `--calib-method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CalibMethod {
    /// The observed minimum and maximum.
    Minmax,
    /// Clip at a percentile of the observed values (--percentile).
    Percentile,
    /// The clipping range minimizing the quantization mean squared error.
    Mse,
}

/// What calibration saw of one activation tensor.
#[derive(Clone, Debug)]
pub struct ValueStats {
    pub min: f64,
    pub max: f64,
    /// Histogram over `[min(min, 0), max(max, 0)]` (empty for `minmax`).
    pub hist: Vec<f64>,
    /// Exact zeros (they are also counted in `hist`).
    pub zeros: f64,
}

impl ValueStats {
    fn lo(&self) -> f64 {
        self.min.min(0.0)
    }
    fn hi(&self) -> f64 {
        self.max.max(0.0)
    }
}

/// One calibrated activation.
#[derive(Clone, Debug, Serialize)]
pub struct Calibrated {
    /// The layers reading this value.
    pub layers: Vec<String>,
    pub observed: (f64, f64),
    pub range: (f64, f64),
    pub scale: f32,
    pub zero_point: i8,
}

/// Runs calibration over the batches `for_each_batch` yields and returns the quantization of
/// every input value of the `layers` to quantize. Errors on a non-finite activation, naming the
/// layer that reads it.
pub fn calibrate(
    net: &Net,
    layers: &[String],
    for_each_batch: &dyn Fn(&mut dyn FnMut(Tensor) -> Result<()>) -> Result<()>,
    method: CalibMethod,
    percentile: f64,
) -> Result<BTreeMap<ValueId, Calibrated>> {
    let inputs: Vec<_> = net.layer_inputs().into_iter().filter(|li| layers.contains(&li.layer)).collect();
    let wanted: BTreeSet<ValueId> = inputs.iter().map(|li| li.value).collect();
    let mut stats: BTreeMap<ValueId, ValueStats> = BTreeMap::new();

    // Pass 1: min and max.
    for_each_batch(&mut |x| {
        let mut seen = HashSet::new();
        let _logits = net.forward_observed(&x, &mut |layer, v, t| {
            if !wanted.contains(&v) || !seen.insert(v) {
                return Ok(());
            }
            let (mn, mx) = (t.min().double_value(&[]), t.max().double_value(&[]));
            if !(mn.is_finite() && mx.is_finite()) {
                bail!("calibration: non-finite activation (NaN or infinity) at the input of `{layer}`");
            }
            let s = stats.entry(v).or_insert(ValueStats { min: mn, max: mx, hist: Vec::new(), zeros: 0.0 });
            s.min = s.min.min(mn);
            s.max = s.max.max(mx);
            Ok(())
        })?;
        Ok(())
    })?;

    // Pass 2: histograms.
    if method != CalibMethod::Minmax {
        for_each_batch(&mut |x| {
            let mut seen = HashSet::new();
            let _logits = net.forward_observed(&x, &mut |_, v, t| {
                if !wanted.contains(&v) || !seen.insert(v) {
                    return Ok(());
                }
                let Some(s) = stats.get_mut(&v) else { return Ok(()) };
                let (lo, hi) = (s.lo(), s.hi());
                if hi > lo {
                    let (h, _) = t.to_kind(Kind::Double).histogram_bin_ct(
                        BINS as i64,
                        [lo, hi].as_slice(),
                        None::<Tensor>,
                        false,
                    );
                    let h = Vec::<f64>::try_from(&h)?;
                    if s.hist.is_empty() {
                        s.hist = vec![0.0; BINS];
                    }
                    for (a, b) in s.hist.iter_mut().zip(h) {
                        *a += b;
                    }
                    s.zeros += t.eq(0.0).sum(Kind::Double).double_value(&[]);
                }
                Ok(())
            })?;
            Ok(())
        })?;
    }

    let mut out = BTreeMap::new();
    for (v, s) in &stats {
        let range = if v.index() == 0 { (s.lo(), s.hi()) } else { clip_range(s, method, percentile) };
        let q = act_quant(range.0, range.1);
        let users = inputs.iter().filter(|li| li.value == *v).map(|li| li.layer.clone()).collect();
        out.insert(
            *v,
            Calibrated { layers: users, observed: (s.min, s.max), range, scale: q.scale, zero_point: q.zero_point },
        );
    }
    Ok(out)
}

/// The clipping range of one observed tensor, always containing 0.
pub fn clip_range(s: &ValueStats, method: CalibMethod, percentile: f64) -> (f64, f64) {
    let (lo, hi) = (s.lo(), s.hi());
    let total: f64 = s.hist.iter().sum();
    if method == CalibMethod::Minmax || s.hist.is_empty() || total <= 0.0 || hi <= lo {
        return (lo, hi);
    }
    let width = (hi - lo) / s.hist.len() as f64;
    let edge = |i: usize| lo + width * i as f64;
    match method {
        CalibMethod::Minmax => (lo, hi),
        CalibMethod::Percentile => {
            let p = (percentile / 100.0).clamp(0.0, 1.0);
            // Upper: the first bin where the cumulative count reaches p of the total.
            let mut acc = 0.0;
            let mut upper = hi;
            for (i, &c) in s.hist.iter().enumerate() {
                acc += c;
                if acc >= p * total {
                    upper = edge(i + 1);
                    break;
                }
            }
            // Lower: the same from the other end.
            let mut acc = 0.0;
            let mut lower = lo;
            for (i, &c) in s.hist.iter().enumerate().rev() {
                acc += c;
                if acc >= p * total {
                    lower = edge(i);
                    break;
                }
            }
            (lower.min(0.0).max(lo), upper.max(0.0).min(hi))
        }
        CalibMethod::Mse => {
            let zero_bin = (((0.0 - lo) / width) as usize).min(s.hist.len() - 1);
            let mut best = (f64::INFINITY, 1.0);
            for k in 1..=MSE_CANDIDATES {
                let t = k as f64 / MSE_CANDIDATES as f64;
                let q = act_quant(lo * t, hi * t);
                let sc = f64::from(q.scale);
                let zp = f64::from(q.zero_point);
                let (rmin, rmax) = ((-128.0 - zp) * sc, (127.0 - zp) * sc);
                let mut err = 0.0;
                for (i, &c) in s.hist.iter().enumerate() {
                    let n = if i == zero_bin { (c - s.zeros).max(0.0) } else { c };
                    if n == 0.0 {
                        continue;
                    }
                    let x = lo + width * (i as f64 + 0.5);
                    err += if x < rmin {
                        n * (x - rmin).powi(2)
                    } else if x > rmax {
                        n * (x - rmax).powi(2)
                    } else {
                        n * sc * sc / 12.0
                    };
                }
                if err < best.0 {
                    best = (err, t);
                }
            }
            (lo * best.1, hi * best.1)
        }
    }
}

/// The int8 quantization of the range `[lo, hi]` (widened to contain 0): non-negative ranges use
/// `zero_point = -128`; an empty range gets scale 1.
pub fn act_quant(lo: f64, hi: f64) -> ActQuant {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if !(hi - lo > f64::from(f32::MIN_POSITIVE) * 255.0) {
        return ActQuant { scale: 1.0, zero_point: if lo < 0.0 { 0 } else { -128 } };
    }
    if lo >= 0.0 {
        return ActQuant { scale: (hi / 255.0) as f32, zero_point: -128 };
    }
    let scale = ((hi - lo) / 255.0) as f32;
    let zp = (-128.0 - lo / f64::from(scale)).round_ties_even().clamp(-128.0, 127.0);
    ActQuant { scale, zero_point: zp as i8 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(values: &[f64]) -> ValueStats {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let mut hist = vec![0.0; BINS];
        for &x in values {
            let i = (((x - lo) / (hi - lo)) * BINS as f64) as usize;
            hist[i.min(BINS - 1)] += 1.0;
        }
        let zeros = values.iter().filter(|&&x| x == 0.0).count() as f64;
        ValueStats { min, max, hist, zeros }
    }

    #[test]
    fn act_quant_uses_the_full_range() {
        let q = act_quant(0.0, 2.55);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 0.01).abs() < 1e-7);
        // Signed: -1 and 1.55 map to -128 and 127.
        let q = act_quant(-1.0, 1.55);
        assert!((q.scale - 0.01).abs() < 1e-7);
        assert_eq!(q.zero_point, -28);
        assert_eq!(act_quant(0.0, 0.0), ActQuant { scale: 1.0, zero_point: -128 });
    }

    #[test]
    fn percentile_clips_outliers_and_minmax_does_not() {
        // 9999 values uniform in [0, 1) and one outlier at 100.
        let mut v: Vec<f64> = (0..9999).map(|i| i as f64 / 9999.0).collect();
        v.push(100.0);
        let s = stats_of(&v);
        assert_eq!(clip_range(&s, CalibMethod::Minmax, 99.99), (0.0, 100.0));
        let (lo, hi) = clip_range(&s, CalibMethod::Percentile, 99.9);
        assert_eq!(lo, 0.0);
        assert!((1.0..1.2).contains(&hi), "{hi}");
        // 100th percentile is the max.
        assert_eq!(clip_range(&s, CalibMethod::Percentile, 100.0).1, 100.0);
    }

    #[test]
    fn mse_clips_a_long_tail_but_keeps_a_compact_distribution() {
        // 400k values in [0, 1) and one at 30: the squared error of keeping the outlier
        // (4e5 * (30/255)^2 / 12 = 461) exceeds that of clipping near 20 (~305).
        let mut v: Vec<f64> = (0..400_000).map(|i| i as f64 / 400_000.0).collect();
        v.push(30.0);
        let s = stats_of(&v);
        let (_, hi) = clip_range(&s, CalibMethod::Mse, 0.0);
        assert!((15.0..25.0).contains(&hi), "hi {hi}, max {}", s.max);
        // Exponential magnitudes: with 8 bits the optimum clips little, if at all.
        let v: Vec<f64> = (1..20000).map(|i| -(1.0 - i as f64 / 20000.0f64).ln()).collect();
        let s = stats_of(&v);
        let (_, hi) = clip_range(&s, CalibMethod::Mse, 0.0);
        assert!(hi > 0.8 * s.max, "hi {hi}, max {}", s.max);
        // Uniform values: clipping only adds error, the search keeps (nearly) the whole range.
        let v: Vec<f64> = (0..20000).map(|i| i as f64 / 20000.0).collect();
        let s = stats_of(&v);
        let (_, hi) = clip_range(&s, CalibMethod::Mse, 0.0);
        assert!(hi > 0.97 * s.max, "{hi}");
    }
}
