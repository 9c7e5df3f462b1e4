//! Post-processing: softmax and top-k with class labels.

use heapless::Vec;

/// One ranked class.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Prediction {
    pub class: u32,
    /// Softmax probability in [0, 1] (or the raw score if the caller skipped softmax).
    pub score: f32,
}

impl Prediction {
    /// The class label from a newline-separated label list (as stored in weights files),
    /// or `None` if the list is shorter.
    pub fn label<'l>(&self, labels: &'l str) -> Option<&'l str> {
        labels.lines().nth(self.class as usize)
    }
}

/// Numerically stable softmax (subtracts the maximum). NaN logits propagate as NaN.
pub fn softmax_in_place(logits: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in logits.iter_mut() {
        *x = libm_exp(*x - max);
        sum += *x;
    }
    if sum > 0.0 {
        for x in logits.iter_mut() {
            *x /= sum;
        }
    }
}

/// The `K` highest scores, best first; ties keep the lower class index first. NaN ranks last.
pub fn top_k<const K: usize>(scores: &[f32]) -> Vec<Prediction, K> {
    let mut best: Vec<Prediction, K> = Vec::new();
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    for (class, &score) in scores.iter().enumerate() {
        let p = Prediction { class: class as u32, score };
        // Position of the first kept prediction that this one beats.
        let pos = best.iter().position(|q| key(score) > key(q.score)).unwrap_or(best.len());
        if pos < K {
            if best.is_full() {
                best.pop();
            }
            // Cannot fail: we just made room.
            let _ = best.insert(pos, p);
        }
    }
    best
}

/// `exp` without std: range reduction to 2^k * e^r, with a degree-7 Taylor polynomial for
/// |r| <= ln2/2 (relative error < 2e-7, below f32 resolution).
fn libm_exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < -87.0 {
        return 0.0;
    }
    if x > 88.0 {
        return f32::INFINITY;
    }
    const LN2: f32 = core::f32::consts::LN_2;
    let k = (x / LN2 + if x < 0.0 { -0.5 } else { 0.5 }) as i32;
    // Cody-Waite: ln2 split in a high part exact in f32 and a low correction.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - k as f32 * LN2_HI) - k as f32 * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits(((k + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        for i in -8000..8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (libm_exp(x), x.exp());
            assert!((a - b).abs() <= b * 1e-6, "exp({x}) = {a}, std {b}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_shift_invariant() {
        let mut a = [1.0f32, 2.0, 3.0, -1000.0];
        let mut b = [1001.0f32, 1002.0, 1003.0, 0.0];
        softmax_in_place(&mut a);
        softmax_in_place(&mut b);
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // Reference from numpy: softmax([1, 2, 3]) = [0.09003057, 0.24472847, 0.66524096]
        for (x, want) in a.iter().zip([0.09003057f32, 0.24472847, 0.66524096, 0.0]) {
            assert!((x - want).abs() < 1e-6, "{a:?}");
        }
        assert_eq!(b[3], 0.0);
        assert!((a[2] - b[2]).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let s = [0.1f32, 0.5, f32::NAN, 0.5, 0.9, -1.0];
        let t = top_k::<3>(&s);
        let classes: std::vec::Vec<u32> = t.iter().map(|p| p.class).collect();
        assert_eq!(classes, [4, 1, 3]);
        assert_eq!(top_k::<8>(&s).len(), 6);
        assert_eq!(top_k::<8>(&s)[5].class, 2, "NaN ranks last");
        assert!(top_k::<2>(&[]).is_empty());
    }

    #[test]
    fn labels_by_line() {
        let p = Prediction { class: 1, score: 1.0 };
        assert_eq!(p.label("cat\ndog\n"), Some("dog"));
        assert_eq!(Prediction { class: 5, score: 0.0 }.label("cat"), None);
    }
}
