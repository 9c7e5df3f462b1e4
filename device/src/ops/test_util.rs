//! Test data for the unit tests of the ops and kernels: one deterministic pseudo-random stream
//! (Knuth's MMIX linear congruential generator), so tests need no `rand` and repeat exactly; and
//! the checks every op's test makes ([`eval_on_one_and_two_threads`]).

use tract_core::internal::*;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// A seeded stream of pseudo-random numbers.
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// In [0, 1), 24 random bits.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Any i8.
    pub(crate) fn i8(&mut self) -> i8 {
        (self.next_u64() >> 33) as i8
    }
}

/// Floats in [-1, 1) from `seed`.
pub(crate) fn random_f32(seed: u64) -> impl FnMut() -> f32 {
    let mut lcg = Lcg::new(seed);
    move || lcg.unit() * 2.0 - 1.0
}

/// Bytes from `seed`.
pub(crate) fn random_i8(seed: u64) -> impl FnMut() -> i8 {
    let mut lcg = Lcg::new(seed);
    move || lcg.i8()
}

/// `op` on `inputs`, on one thread and on two: the same bits, or the test fails (`what` names
/// the case). Returns the outputs.
pub(crate) fn eval_on_one_and_two_threads(
    op: &impl EvalOp,
    inputs: TVec<TValue>,
    what: &str,
) -> TVec<TValue> {
    let eval = || {
        op.eval(&EvalContext::out_of_plan(), inputs.clone())
            .unwrap()
    };
    let one = eval();
    let two = multithread_tract_scope(Executor::multithread(2), eval);
    assert_eq!(one, two, "{what}: threads differ");
    one
}

/// The values of a float tensor (f32, or f16 widened exactly), as f32.
pub(crate) fn f32s(t: &Tensor) -> Vec<f32> {
    t.cast_to::<f32>()
        .unwrap()
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}
