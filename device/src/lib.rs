//! `device`: runs what `host export` wrote on aarch64 Linux boards (Raspberry Pi 4/5, Jetson),
//! with tract.
//!
//! - [`engine`]: model file -> optimized tract plan + state, built once, run per frame.
//! - [`import`]: the compact weights format -> tract-core ops, by walking the `shared` graph
//!   (int8 layers become integer convs).
//! - [`rewrite`]: this crate's ops swapped into tract's optimized plan where tract's are slow:
//!   [`const_fold`] (what tract's optimizer leaves to run time), [`maxpool`] (separable),
//!   [`downsample`] (strided copies), and
//!   around the integer convs of int8 plans [`im2col`] (patch packing), [`quantize`]
//!   (f32 -> i8) and [`epilogue`] (i32 accumulators -> the next layer's input in one pass),
//!   and on x86 with AVX-512 VNNI `vnni` (matrix product and epilogue in one op).
//! - `fp32` (x86 with AVX-512): fp32 plans' convs swapped in before tract's optimizer
//!   (`--conv direct` keeps tract's): `winograd` (3x3 stride 1, Winograd F(4x4, 3x3) or F(2x2, 3x3)) and
//!   `direct` (the 7x7/2 stem), each with the ReLU (and residual) after it.
//! - [`pipeline`]: frame -> preprocess -> inference -> softmax/top-k, timed per stage.
//! - [`source`], [`v4l2`], [`live`]: frame sources (stdin, files, folders, V4L2 cameras) and the
//!   latest-frame-wins loop.
//! - [`bench`] measures, [`report`] reports.
//! - [`parity`]: the parity file format (docs/parity-file.md); [`convert`]: torchvision
//!   state_dict -> compact weights.
//! - [`gpio`]: LED and button through embedded-hal.

// tract-onnx without its default `transformers` feature (see the workspace Cargo.toml).
extern crate tract_onnx_cnn as tract_onnx;

pub mod bench;
pub mod const_fold;
pub mod convert;
#[cfg(target_arch = "x86_64")]
pub mod direct;
pub mod downsample;
pub mod engine;
pub mod epilogue;
#[cfg(target_arch = "x86_64")]
pub mod fp32;
pub mod gpio;
pub mod im2col;
pub mod import;
pub mod live;
pub mod maxpool;
mod parallel;
pub mod parity;
pub mod pipeline;
pub mod quantize;
pub mod report;
pub mod rewrite;
mod simd;
pub mod source;
pub mod v4l2;
#[cfg(target_arch = "x86_64")]
pub mod vnni;
#[cfg(target_arch = "x86_64")]
pub mod winograd;

pub use engine::{ComputePrecision, ConvAlgorithm, Engine, EngineOptions};
pub use pipeline::Pipeline;
