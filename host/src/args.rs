//! Command-line argument groups several subcommands share, flattened into each with
//! `#[command(flatten)]`: a flag is written, documented and parsed once; and the ranges numeric
//! flags are checked against (with `shared::flags`'s parsers, one error line naming the flag and
//! its range before anything runs).

use serde::{Deserialize, Serialize};
use shared::Stem;

use crate::data::DatasetSpec;
use crate::device::{Amp, DeviceArg};
use crate::model::ModelOptions;

pub use shared::flags::{float_in, float_within, int_in, Bounds};

/// Most images per batch (`--batch-size`, `--eval-batch-size`, `--calib-batch-size`).
pub const MAX_BATCH: u64 = 65_536;
/// Most epochs of a run (`--epochs`, `--run-epochs`, `--warmup-epochs`).
pub const MAX_EPOCHS: u64 = 100_000;
/// Most threads (`--threads`, `--workers`).
pub const MAX_THREADS: u64 = 1024;
/// Network input sides (`--image-size`): 8 px is the smallest the small stem's three stride-2
/// stages take.
pub const MIN_IMAGE_SIDE: u64 = 8;
pub const MAX_IMAGE_SIDE: u64 = 4096;
/// Most classes of a classifier (`--num-classes`).
pub const MAX_CLASSES: u64 = 1_000_000;

/// Where libtorch runs (`host train`, `eval`, `bench-train`; `host export` defaults to the CPU).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeArgs {
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// libtorch threads (default: all cores).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_THREADS))]
    pub threads: Option<usize>,
}

/// How the network computes (`host train`, `host bench-train`).
#[derive(clap::Args, Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ComputeArgs {
    /// Mixed precision: off, fp16 (with dynamic loss scaling) or bf16.
    #[arg(long, value_enum, default_value_t = Amp::Off)]
    pub amp: Amp,
    /// Use NHWC (channels-last) memory format for activations and conv weights.
    #[arg(long)]
    pub channels_last: bool,
}

impl ComputeArgs {
    pub fn model_options(&self, zero_init_residual: bool) -> ModelOptions {
        ModelOptions { zero_init_residual, channels_last: self.channels_last, amp: self.amp, sync_bn: false }
    }
}

/// The test data a finished run is measured on (`host eval`, `host export`).
#[derive(clap::Args, Clone, Debug)]
pub struct EvalDataArgs {
    /// Dataset, as for `host train` (default: the run's; `host export` also calibrates on its
    /// training split).
    #[arg(long)]
    pub dataset: Option<DatasetSpec>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = int_in::<usize>(1, u64::MAX))]
    pub limit_test: Option<usize>,
    /// Images per evaluation batch.
    #[arg(short = 'b', long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub batch_size: usize,
}

/// `--stem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StemArg {
    /// 3x3 stride-1 conv, no max pool (28-32 px images).
    Small,
    /// 7x7 stride-2 conv + 3x3 stride-2 max pool (224 px images).
    Imagenet,
}

impl From<StemArg> for Stem {
    fn from(s: StemArg) -> Stem {
        match s {
            StemArg::Small => Stem::Small,
            StemArg::Imagenet => Stem::ImageNet,
        }
    }
}
