//! What the CLI subcommands do, apart from argument parsing (main.rs).
//!
//! - [`live`]: the latest-frame-wins camera loop; [`bench`] measures, [`report`] reports.
//! - [`parity`]: the parity file format (docs/parity-file.md) and the comparison against it.
//! - [`convert`]: torchvision state_dict -> compact weights.
//! - [`flags`]: the range checks of the numeric flags.

pub mod bench;
pub mod convert;
pub mod flags;
pub mod live;
pub mod parity;
pub mod report;
