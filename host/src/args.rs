//! Command-line argument groups several subcommands share, flattened into each with
//! `#[command(flatten)]`: a flag is written, documented and parsed once.

use serde::{Deserialize, Serialize};
use shared::Stem;

use crate::device::DeviceArg;

/// Where libtorch runs (`host train`, `eval`, `bench-train`; `host export` defaults to the CPU).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeArgs {
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// libtorch threads (default: all cores).
    #[arg(long)]
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
