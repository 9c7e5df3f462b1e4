//! `device inspect`: what runs for a model on this CPU. The model facts (JSON, with the CPU's
//! features, the kernels offered and plugged, the plan passes that ran and what each replaced),
//! the matrix-product nodes and their kernels, and optionally every node of the plan and a
//! per-node profile.

use anyhow::Result;

use crate::commands::report;
use crate::engine::Engine;

/// What to print besides the model facts and the kernels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Show {
    /// Every node of the optimized plan (op, inputs, output type and shape).
    pub plan: bool,
    /// One run timed node by node, by op and slowest first.
    pub profile: bool,
}

pub fn run(engine: &mut Engine, show: Show) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&report::model_json(engine))?);
    for k in report::kernels_text() {
        println!("{k}");
    }
    for k in engine.matmul_kernels() {
        println!("{k}");
    }
    if show.plan {
        print_plan(engine);
    }
    if show.profile {
        print_profile(engine)?;
    }
    Ok(())
}

fn print_plan(engine: &Engine) {
    for n in engine.optimized_model().nodes() {
        let inputs: Vec<String> = n.inputs.iter().map(|i| format!("{}", i.node)).collect();
        println!(
            "#{} {} [{}] <- [{}] -> {:?}",
            n.id,
            n.name,
            n.op.name(),
            inputs.join(","),
            n.outputs[0].fact
        );
    }
}

fn print_profile(engine: &mut Engine) -> Result<()> {
    let input = vec![0.5f32; engine.info().input_len()];
    engine.run(&input)?;
    let times = engine.profile(&input)?;
    let total: f64 = times.iter().map(|t| t.2.as_secs_f64()).sum();
    println!("profile: {:.2} ms in {} nodes", total * 1e3, times.len());
    let mut by_op: Vec<(String, f64, usize)> = vec![];
    for (_, op, t) in &times {
        match by_op.iter_mut().find(|e| e.0 == *op) {
            Some(e) => (e.1, e.2) = (e.1 + t.as_secs_f64(), e.2 + 1),
            None => by_op.push((op.clone(), t.as_secs_f64(), 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (op, t, n) in &by_op {
        println!("{:9.3} ms {:5.1}%  {op} ({n} nodes)", t * 1e3, 100.0 * t / total);
    }
    println!("slowest nodes:");
    for (name, op, t) in times.iter().take(25) {
        println!("{:9.3} ms  {op:<20} {name}", t.as_secs_f64() * 1e3);
    }
    Ok(())
}
