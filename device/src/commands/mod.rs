//! What the CLI subcommands do, apart from argument parsing (main.rs).
//!
//! - [`live`]: the latest-frame-wins camera loop, [`view`] its live page in the browser,
//!   [`record`] its labelled video (`--output`);
//!   [`bench`] measures, [`report`] reports.
//! - [`parity`]: the parity file format (docs/parity-file.md) and the comparison against it.
//! - [`inspect`]: what runs for a model on this CPU (kernels plugged, passes, plan, profile).
//! - [`convert`]: torchvision state_dict -> compact weights.
//! - [`flags`]: the parsers of structured flags (`--input-size`, `--in-channels`).

pub mod bench;
pub mod convert;
pub mod flags;
pub mod inspect;
pub mod live;
pub mod parity;
pub mod record;
pub mod report;
pub mod view;
