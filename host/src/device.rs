//! Where and in which precision the network runs: `--device`, `--amp`, `--channels-last`,
//! `--threads`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// `--device`: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceArg {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(format!("unknown device `{s}` (expected auto, cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for DeviceArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceArg {
    /// The libtorch device, or a clear error when CUDA is asked for and absent.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => {
                if !tch::Cuda::is_available() {
                    bail!(
                        "--device {self}: no CUDA GPU is available (libtorch sees none: no driver, no \
                         device, or a CPU-only libtorch); use --device cpu"
                    );
                }
                let n = tch::Cuda::device_count() as usize;
                if i >= n {
                    bail!("--device {self}: only {n} CUDA device(s) present");
                }
                Ok(Device::Cuda(i))
            }
        }
    }
}

/// Short device name for reports: `cpu`, `cuda:0`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `--amp`: mixed precision. `fp16` uses dynamic loss scaling, `bf16` does not need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// Everything in fp32.
    #[default]
    Off,
    /// Convolutions and the classifier in fp16, with dynamic loss scaling.
    Fp16,
    /// Convolutions and the classifier in bf16.
    Bf16,
}

impl Amp {
    /// The dtype convolutions and linear layers compute in, `None` for fp32.
    pub fn compute_kind(self) -> Option<Kind> {
        match self {
            Amp::Off => None,
            Amp::Fp16 => Some(Kind::Half),
            Amp::Bf16 => Some(Kind::BFloat16),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Amp::Off => "off",
            Amp::Fp16 => "fp16",
            Amp::Bf16 => "bf16",
        }
    }
    /// Whether gradients need loss scaling (fp16's narrow exponent range underflows them).
    pub fn needs_loss_scaling(self) -> bool {
        self == Amp::Fp16
    }
}

/// NCHW logical shape with NHWC strides (`torch.channels_last`); tch has no API for it, so it is
/// a permute to NHWC, a contiguous copy, and a permute back. Tensors of rank other than 4 are
/// returned as they are.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Sets libtorch's intra-op thread count (default: every core) and returns it.
pub fn set_threads(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    tch::set_num_threads(n as i32);
    n
}

/// Waits for the device to finish its queued work (for timing).
pub fn synchronize(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Per-device settings that make training fast: cuDNN autotuning on CUDA (as NVIDIA's recipe).
pub fn configure(d: Device) {
    if d.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}
