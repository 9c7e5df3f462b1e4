//! A small seedable random number generator (SplitMix64) for everything the host decides at
//! random outside libtorch: data order, augmentation, mixup.
//!
//! Every stream is a pure function of `(seed, purpose, epoch, index)`, never of how many numbers
//! were drawn before or of which thread draws them: that is what makes a resumed run and a
//! multi-threaded loader reproduce a straight run bit for bit.

/// SplitMix64 (Steele, Lea, Flood 2014): 64-bit state, passes BigCrush, trivially seekable.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a stream is used for, so that two purposes never share numbers.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Purpose {
    Shuffle = 1,
    Augment = 2,
    Mixup = 3,
    Synthetic = 4,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed ^ GOLDEN) }
    }

    /// The stream for `(seed, purpose, a, b)`, e.g. `(seed, Augment, epoch, sample index)`.
    pub fn stream(seed: u64, purpose: Purpose, a: u64, b: u64) -> Self {
        let mut s = mix(seed.wrapping_add(GOLDEN));
        for x in [purpose as u64, a, b] {
            s = mix(s ^ x.wrapping_mul(GOLDEN).wrapping_add(0x632B_E59B_D9B4_E019));
        }
        Self { state: s }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n > 0`), unbiased (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang (2000); shape < 1 via the boost `G(a+1) U^(1/a)`.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) from two gamma draws.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

/// The training order of epoch `epoch`: a permutation of `0..n` that depends only on
/// `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::stream(seed, Purpose::Shuffle, epoch, 0).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, Purpose::Augment, 1, 2).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::stream(7, Purpose::Augment, 1, 2).next_u64(), Rng::stream(7, Purpose::Augment, 1, 3).next_u64());
        assert_ne!(Rng::stream(7, Purpose::Augment, 1, 2).next_u64(), Rng::stream(7, Purpose::Mixup, 1, 2).next_u64());
    }

    #[test]
    fn order_is_a_permutation() {
        let mut o = epoch_order(1000, 3, 5);
        assert_eq!(o, epoch_order(1000, 3, 5));
        assert_ne!(o, epoch_order(1000, 3, 6));
        o.sort_unstable();
        assert!(o.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn beta_mean() {
        let mut r = Rng::new(1);
        let n = 20000;
        let m: f64 = (0..n).map(|_| r.beta(0.2, 0.2)).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.02, "{m}");
        let m: f64 = (0..n).map(|_| r.beta(2.0, 6.0)).sum::<f64>() / n as f64;
        assert!((m - 0.25).abs() < 0.01, "{m}");
    }
}
