//! `host`: the command line. Everything it runs lives in the library (`src/lib.rs`).

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Train, evaluate and benchmark the shared ResNet graph on libtorch.
#[derive(Parser)]
#[command(name = "host", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network; writes checkpoint, optimizer state, args.json, metrics.jsonl, labels.txt and run.json to --out.
    Train(host::train::TrainArgs),
    /// Top-1/top-5 of a checkpoint (run directory or safetensors file) on a dataset's test split.
    Eval(host::eval::EvalArgs),
    /// Export a run for the device: compact weights (fp32, fp16 or calibrated int8), ONNX, parity file.
    Export(host::export::ExportArgs),
    /// Make a run directory from published weights (torchvision's .pth or safetensors) for export and eval.
    Import(host::import::ImportArgs),
    /// Print an architecture's layer table and parameter count.
    Info(host::info::InfoArgs),
    /// Measure training images/second on synthetic data (one JSON object).
    BenchTrain(host::bench::BenchArgs),
    /// Measure the training data pipeline's images/second (decode + augment into f32 batches; one JSON object).
    BenchData(host::data::bench::BenchDataArgs),
}

fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Command::Train(args) => {
            // The flags given on the command line, which `--resume` may apply over the saved ones.
            let sub = matches.subcommand_matches("train");
            let explicit: Vec<String> = sub
                .map(|m| {
                    m.ids()
                        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                        .map(|id| id.as_str().to_string())
                        .collect()
                })
                .unwrap_or_default();
            host::train::main(args, &explicit)
        }
        Command::Eval(args) => host::eval::main(args),
        Command::Import(args) => host::import::main(args),
        Command::Export(args) => host::export::main(args),
        Command::Info(args) => host::info::main(args),
        Command::BenchTrain(args) => host::bench::main(args),
        Command::BenchData(args) => host::data::bench::main(args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
