//! Reporting: turns measurements and model facts into human text or JSON. Nothing here measures.

use serde_json::{json, Value};

use crate::commands::bench::{Metrics, Stats};
use crate::cpu::Cpu;
use crate::engine::{Engine, ModelFormat};
use crate::kernels::Kernels;

fn stats_json(s: &Stats) -> Value {
    json!({"mean": s.mean, "p50": s.p50, "p90": s.p90, "p99": s.p99, "min": s.min, "max": s.max})
}

pub fn model_json(engine: &Engine) -> Value {
    let i = engine.info();
    let format = match &i.format {
        ModelFormat::Compact {
            precision,
            form,
            producer,
        } => {
            json!({"kind": "compact", "precision": format!("{precision:?}"), "form": format!("{form:?}"), "producer": producer})
        }
        ModelFormat::Onnx => json!({"kind": "onnx"}),
    };
    json!({
        "path": i.path.display().to_string(),
        "format": format,
        "compute": i.compute.name(),
        "input": [1, i.channels, i.height, i.width],
        "classes": i.num_classes,
        "int8_layers": i.int8_layers.len(),
        "float_layers": i.float_layers.len(),
        "winograd_layers": i.plan.winograd_layers,
        "direct_layers": i.plan.direct_layers,
        "threads": i.threads,
        "kernels": Kernels::get().report(),
        "passes": i.plan.passes,
    })
}

/// The CPU: its features (`crate::cpu::Cpu`, what this crate's decisions read) and, apart, what
/// tract detected for its own kernel choice (tract reads /proc/cpuinfo on aarch64, which is the
/// host's under qemu-user).
pub fn cpu_json() -> Value {
    let cpu = Cpu::get();
    let isa = tract_linalg::isa::native();
    let tract_features: Vec<&str> = isa.iter().map(|i| i.name()).collect();
    json!({
        "arch": std::env::consts::ARCH,
        "features": cpu.feature_names(),
        "fp16_arithmetic": cpu.fp16,
        "tract": {"isa_level": isa.nickname(), "features": tract_features},
    })
}

/// One line per kernel pass offered for this build's architecture: plugged or not, and why.
pub fn kernels_text() -> Vec<String> {
    let cpu = Cpu::get().feature_names();
    let mut lines = vec![format!("cpu features: {}", if cpu.is_empty() { "none detected".into() } else { cpu.join(" ") })];
    let kernels = Kernels::get();
    if kernels.plugs.is_empty() {
        lines.push(format!("kernels: none for {} yet: tract's own run behind the portable passes", std::env::consts::ARCH));
    }
    for p in &kernels.plugs {
        let state = if p.plugged { "plugged:    " } else { "not plugged:" };
        let why = if p.plugged { "the CPU has" } else { "the CPU lacks" };
        lines.push(format!("{state} {} ({why} {}): {}", p.pass.name, p.needs, p.pass.what));
    }
    lines
}

/// The `device bench --json` document.
pub fn bench_json(
    engine: &Engine,
    m: &Metrics,
    peak_rss_kib: Option<u64>,
    frame: (u32, u32),
) -> Value {
    json!({
        "model": model_json(engine),
        "load_ms": engine.info().load_time.as_secs_f64() * 1e3,
        "warmup": m.warmup,
        "iters": m.iters,
        "frame": [frame.0, frame.1],
        "latency_ms": stats_json(&m.total),
        "throughput_fps": m.throughput,
        "stages_ms": {
            "preprocess": stats_json(&m.preprocess),
            "inference": stats_json(&m.inference),
            "postprocess": stats_json(&m.postprocess),
        },
        "peak_rss_kib": peak_rss_kib,
        "cpu": cpu_json(),
        "notes": engine.info().notes,
    })
}

pub fn bench_text(
    engine: &Engine,
    m: &Metrics,
    peak_rss_kib: Option<u64>,
    frame: (u32, u32),
) -> String {
    let i = engine.info();
    let cpu = cpu_json();
    let line = |name: &str, s: &Stats| {
        format!(
            "{name:<12} mean {:8.3}  p50 {:8.3}  p90 {:8.3}  p99 {:8.3} ms\n",
            s.mean, s.p50, s.p90, s.p99
        )
    };
    let mut out = format!(
        "model        {} ({}, {} threads, input 1x{}x{}x{})\nload         {:.1} ms\ncpu          {} [{}], tract's kernel set {}\n",
        i.path.display(),
        i.compute.name(),
        i.threads,
        i.channels,
        i.height,
        i.width,
        i.load_time.as_secs_f64() * 1e3,
        cpu["arch"].as_str().unwrap_or(""),
        Cpu::get().feature_names().join(","),
        cpu["tract"]["isa_level"].as_str().unwrap_or(""),
    );
    out += &format!(
        "frame        {}x{} RGB8, {} warm-up + {} timed runs\n",
        frame.0, frame.1, m.warmup, m.iters
    );
    out += &line("total", &m.total);
    out += &line("preprocess", &m.preprocess);
    out += &line("inference", &m.inference);
    out += &line("postprocess", &m.postprocess);
    out += &format!("throughput   {:.2} frames/s\n", m.throughput);
    if let Some(k) = peak_rss_kib {
        out += &format!("peak RSS     {:.1} MiB\n", k as f64 / 1024.0);
    }
    out
}
