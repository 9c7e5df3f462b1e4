//! `device`: runs what `host export` wrote with tract, on aarch64 Linux boards (Raspberry Pi 4/5,
//! Jetson) and x86_64; x86_64 CPUs with AVX-512 and aarch64 (fp32 3x3 convs) get this crate's
//! own kernels.
//!
//! The crate is organised by concern; dependencies go one way,
//! `commands -> engine -> plan -> ops / kernels`:
//! - [`engine`]: model file -> tract plan (import from the `shared` graph) -> optimized, rewritten
//!   plan + state, built once, run per frame; [`engine::pipeline`] adds preprocessing and top-k.
//! - [`plan`]: the rewrites of tract's plans, one named list run in order.
//! - [`cpu`]: the CPU's features, detected once; [`kernels::Kernels`] plugs kernels by them.
//! - [`ops`]: portable ops the rewrites swap in (im2col, quantize, epilogue, max pool, downsample,
//!   constant folding) and their helpers (thread splitting, wider vectors).
//! - [`kernels`]: per-architecture kernels and their plug point ([`kernels::x86_64`]: AVX-512
//!   F/VNNI convs; [`kernels::aarch64`]: NEON fp32 Winograd; [`kernels::frame`]: what they
//!   share).
//! - [`io`]: frame sources (stdin, files, folders, V4L2 cameras) and GPIO.
//! - [`commands`]: what the CLI subcommands do (live, bench, report, inspect, convert, parity).

// tract-onnx without its default `transformers` feature (see the workspace Cargo.toml).
#[cfg(feature = "engine")]
extern crate tract_onnx_cnn as tract_onnx;

// Without the `engine` feature only `cpu` and `io` are built (the fuzz targets' view).
#[cfg(feature = "engine")]
pub mod commands;
pub mod cpu;
#[cfg(feature = "engine")]
pub mod engine;
pub mod io;
#[cfg(feature = "engine")]
pub mod kernels;
#[cfg(feature = "engine")]
pub mod ops;
#[cfg(feature = "engine")]
pub mod plan;

#[cfg(feature = "engine")]
pub use engine::pipeline::Pipeline;
#[cfg(feature = "engine")]
pub use engine::{ComputePrecision, ConvAlgorithm, Engine, EngineOptions};
