//! `shared`: the one definition of everything host and device must agree on.
//!
//! - [`config`]: the ResNet family as plain data (ResNet-18..152, v1/v1.5/v2, ResNet-8, ResNet-20).
//! - [`fold`]: the BatchNorm folding arithmetic (`host export`, `device convert`, the importer).
//! - [`graph`]: the canonical walk of a network, yielding every node with its torchvision
//!   state_dict name and shape. Host (tch) and device (tract) both build from it.
//! - [`preprocess`]: RGB8 / gray8 / YUYV frames -> resize shorter side (antialiased bilinear)
//!   -> center crop -> normalize -> f32 CHW.
//! - [`postprocess`]: softmax and top-k with labels.
//! - [`weights`]: the compact weights format (spec: `docs/weights-format.md`), with an int8
//!   layer's tensors as one record, [`weights::Int8Layer`].
//! - `parity` (feature `std`): the parity file, reference inputs and logits for the device
//!   (spec: `docs/parity-file.md`), its writer and its reader.
//! - [`name`]: fixed-capacity layer and parameter names.
//!
//! The crate is `no_std` and allocation-free by default: features `alloc` (the weights writer,
//! `Vec`-returning helpers) and `std` add conveniences, `defmt` derives `defmt::Format` for
//! logging on microcontrollers. serde's derives are always on: the weights header is postcard.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod config;
pub mod error;
#[cfg(feature = "alloc")]
pub mod flags;
pub mod fold;
pub mod graph;
pub mod name;
#[cfg(feature = "std")]
pub mod parity;
pub mod postprocess;
pub mod preprocess;
pub mod weights;

pub use config::{Block, ResNetConfig, Stem, Variant};
pub use error::Error;
pub use graph::{Form, Node, ParamKind, ParamSpec, ValueId};
pub use postprocess::{softmax_in_place, top_k, Prediction};
pub use preprocess::{Frame, PixelFormat, Preprocess};
pub use weights::{DType, Precision, WeightsFile};
