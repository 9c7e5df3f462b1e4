//! Measuring, apart from reporting: warm-up runs, then timed runs of the whole pipeline on one
//! frame, each stage timed on its own ([`measure`]), or of the model alone on one input
//! preprocessed once ([`measure_model`]: what ONNX Runtime's benchmarks time, `session.run` on a
//! fixed tensor, and what an instruction count per inference compares). The plan and state are
//! the engine's, built once.

use std::time::{Duration, Instant};

use anyhow::Result;
use shared::preprocess::Frame;

use crate::engine::pipeline::{Pipeline, StageTimes};

#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    pub warmup: usize,
    pub iters: usize,
}

/// Latency statistics of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles over `samples`.
    pub fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pct =
            |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Stats {
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            min: ms[0],
            max: ms[ms.len() - 1],
        }
    }
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub iters: usize,
    pub warmup: usize,
    /// Whole pipeline (preprocess + inference + post-process).
    pub total: Stats,
    pub preprocess: Stats,
    pub inference: Stats,
    pub postprocess: Stats,
    /// Frames per second over the timed loop.
    pub throughput: f64,
}

/// Runs the pipeline `warmup + iters` times on `frame`.
pub fn measure(pipeline: &mut Pipeline, frame: &Frame<'_>, opts: &BenchOptions) -> Result<Metrics> {
    for _ in 0..opts.warmup {
        pipeline.classify(frame)?;
    }
    let mut times: Vec<StageTimes> = Vec::with_capacity(opts.iters);
    let start = Instant::now();
    for _ in 0..opts.iters {
        times.push(pipeline.classify(frame)?.times);
    }
    let wall = start.elapsed();
    let stage =
        |f: fn(&StageTimes) -> Duration| Stats::of(&times.iter().map(f).collect::<Vec<_>>());
    Ok(Metrics {
        iters: opts.iters,
        warmup: opts.warmup,
        total: stage(|t| t.total()),
        preprocess: stage(|t| t.preprocess),
        inference: stage(|t| t.inference),
        postprocess: stage(|t| t.postprocess),
        throughput: throughput(opts.iters, wall),
    })
}

/// Runs the model alone `warmup + iters` times on `frame`, preprocessed once before the loop:
/// no preprocessing or ranking in the loop, so their stages stay zero and `total` is the
/// inference stage.
pub fn measure_model(pipeline: &mut Pipeline, frame: &Frame<'_>, opts: &BenchOptions) -> Result<Metrics> {
    let pre = *pipeline.preprocess();
    let mut scratch = vec![0.0; pre.scratch_len(frame.width(), frame.height())];
    let mut input = vec![0.0; pre.output_len()];
    pre.run(frame, &mut scratch, &mut input)
        .map_err(|e| anyhow::anyhow!("preprocessing: {e}"))?;
    let engine = pipeline.engine_mut();
    for _ in 0..opts.warmup {
        engine.run(&input)?;
    }
    let mut times = Vec::with_capacity(opts.iters);
    let start = Instant::now();
    for _ in 0..opts.iters {
        let t = Instant::now();
        engine.run(&input)?;
        times.push(t.elapsed());
    }
    let wall = start.elapsed();
    let inference = Stats::of(&times);
    Ok(Metrics {
        iters: opts.iters,
        warmup: opts.warmup,
        total: inference,
        preprocess: Stats::default(),
        inference,
        postprocess: Stats::default(),
        throughput: throughput(opts.iters, wall),
    })
}

/// Runs per second over a loop of `iters` runs that took `wall`.
fn throughput(iters: usize, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        iters as f64 / wall.as_secs_f64()
    }
}

/// Peak resident set size of this process in KiB (`VmHWM`), when /proc tells it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&d);
        assert_eq!(
            (s.p50, s.p90, s.p99, s.min, s.max),
            (50.0, 90.0, 99.0, 1.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Stats::of(&[Duration::from_millis(7)]).p99, 7.0);
        assert_eq!(Stats::of(&[]), Stats::default());
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        assert!(peak_rss_kib().is_some_and(|k| k > 0));
    }
}
