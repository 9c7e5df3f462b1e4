//! The plan's own ops on tract's thread pool (`--threads N`).

use std::ops::Range;
use tract_linalg::multithread::{current_tract_executor, Executor};

/// Runs `f` over `0..count`, split into one contiguous range per thread of tract's current
/// executor (the engine's `--threads` pool), or in one call on this thread without a pool.
pub(crate) fn for_ranges(count: usize, f: impl Fn(Range<usize>) + Sync) {
    match current_tract_executor() {
        Executor::MultiThread(pool) if count > 1 && pool.current_num_threads() > 1 => {
            use rayon::prelude::*;
            let threads = pool.current_num_threads().min(count);
            pool.install(|| {
                (0..threads)
                    .into_par_iter()
                    .for_each(|t| f(count * t / threads..count * (t + 1) / threads))
            });
        }
        _ => f(0..count),
    }
}

/// The threads `for_ranges` splits over.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn threads() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    }
}
