//! Command-line argument groups several subcommands share, flattened into each with
//! `#[command(flatten)]`: a flag is written, documented and parsed once; and the ranges numeric
//! flags are checked against (with `shared::flags`'s parsers, one error line naming the flag and
//! its range before anything runs).

use serde::{Deserialize, Serialize};
use shared::Stem;

use crate::device::DeviceArg;

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
