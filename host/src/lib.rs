//! `host`: train, evaluate and benchmark the `shared` ResNet graph on libtorch (`tch`).
//!
//! The binary (`src/main.rs`) is only the command line; everything it runs lives here so the
//! integration tests can call it directly.
//!
//! | module | holds |
//! |---|---|
//! | [`args`] | command-line argument groups shared by the subcommands (`--device`/`--threads`, `--stem`) |
//! | [`model`] | the network, built by walking `shared::ResNetConfig::walk`, torchvision names |
//! | [`image`] | a decoded image (owned 8-bit pixels): what sources produce and transforms read |
//! | [`data`] | Fashion-MNIST idx, ImageFolder, synthetic sources and the prefetching batch loader |
//! | [`presets`] | train and eval transforms, in one place (eval is always `shared` `Preprocess`) |
//! | [`optim`] | SGD with momentum on tch tensors, weight-decay groups from `ParamKind` |
//! | [`schedule`] | linear warm-up then cosine learning rate, per step |
//! | [`loss_scale`] | dynamic loss scaling for fp16 |
//! | [`checkpoint`] | the run directory: checkpoint, optimizer state, `args.json`, saved as a unit under `run.json` with checksums |
//! | [`dist`] | data-parallel training on libtorch's c10d (C++ shim `csrc/dist.cpp`): process group, DDP reducer, SyncBatchNorm all-reduce, `--nproc-per-node` launcher |
//! | [`train`] | `load_data`, `train_one_epoch`, `evaluate`, `main` |
//! | [`eval`] | `host eval` |
//! | [`export`] | `host export`: BN folding, int8 calibration, compact weights, ONNX, parity file |
//! | [`bench`] | `host bench-train` |
//! | [`info`] | `host info` |

pub mod args;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod export;
pub mod image;
pub mod import;
pub mod info;
pub mod loss_scale;
pub mod model;
pub mod optim;
pub mod pth;
pub mod presets;
pub mod rng;
pub mod schedule;
pub mod train;
