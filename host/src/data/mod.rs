//! Data: labelled image sources and the prefetching, multi-threaded batch loader.
//!
//! A [`Source`] only decodes (`Image`: owned 8-bit pixels); what is done to the pixels is a
//! [`presets::Transform`](crate::presets::Transform). The loader runs the decode + transform of a
//! batch on the rayon pool, one sample per task, in a producer thread that keeps
//! [`PREFETCH_BATCHES`] batches ready while the network trains on the current one.
//!
//! Which samples form a batch and every random choice made for a sample depend only on
//! `(seed, epoch, sample index)`, never on thread timing: a resumed run sees exactly the data a
//! straight run would.

pub mod bench;
pub mod fashion_mnist;
pub mod image_folder;
pub mod jpeg;
pub mod synthetic;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc;

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::image::Image;
use crate::presets::{Presets, Transform};
use crate::rng::{Purpose, Rng};

/// Batches the loader prepares ahead of the one being trained on.
pub const PREFETCH_BATCHES: usize = 2;

/// A labelled collection of images.
pub trait Source: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class index of sample `index`.
    fn label(&self, index: usize) -> i64;
    /// Decodes sample `index`. An error means the sample is unreadable: the loader skips and
    /// counts it.
    fn image(&self, index: usize) -> Result<Image>;
    /// Where sample `index` comes from, for messages (a file path, `train[12]`).
    fn describe(&self, index: usize) -> String;
    /// Decodes the part of sample `index` a crop needs. `pick` gets the full-size width and
    /// height and returns the crop; a source may then decode less than the whole image (JPEG:
    /// at a reduced DCT scale and only the crop's rows and columns) as long as the result still
    /// covers the crop with at least `crop.out` pixels on both sides. Default: [`Source::image`]
    /// at full size.
    fn crop(&self, index: usize, pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
        let image = self.image(index)?;
        let crop = pick(image.width, image.height);
        Ok(Cropped { image, crop: crop.region, scale: 8 })
    }
}

/// A crop of a full-size image: `region` (`[x0, y0, w, h]`, pixels) to be resized to at least
/// `out` x `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub region: [u32; 4],
    pub out: u32,
}

/// What [`Source::crop`] decoded: `image` (possibly smaller than the file's image) and where the
/// crop lies in it.
#[derive(Clone, Debug)]
pub struct Cropped {
    pub image: Image,
    /// The crop in `image`'s pixels.
    pub crop: [u32; 4],
    /// The decode scale in eighths (8: full size).
    pub scale: u32,
}

/// The first `len` samples of another source (`--limit-train`, `--limit-test`).
pub struct Limited {
    inner: Box<dyn Source>,
    len: usize,
}

impl Limited {
    pub fn new(inner: Box<dyn Source>, limit: Option<usize>) -> Box<dyn Source> {
        match limit {
            Some(n) if n < inner.len() => Box::new(Self { inner, len: n }),
            _ => inner,
        }
    }
}

impl Source for Limited {
    fn len(&self) -> usize {
        self.len
    }
    fn label(&self, index: usize) -> i64 {
        self.inner.label(index)
    }
    fn image(&self, index: usize) -> Result<Image> {
        self.inner.image(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
    fn crop(&self, index: usize, pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
        self.inner.crop(index, pick)
    }
}

/// `--dataset`: `fashion-mnist[:DIR]`, `imagefolder:PATH` or `synthetic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetSpec {
    /// Fashion-MNIST idx files (raw or gzipped) in this directory.
    FashionMnist(PathBuf),
    /// ImageNet layout: `PATH/train/<class>/*.jpg`, `PATH/val/<class>/*.jpg`.
    ImageFolder(PathBuf),
    /// Generated images of 10 learnable classes (tests, benchmarks, smoke runs).
    Synthetic,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self::FashionMnist(PathBuf::from(fashion_mnist::DEFAULT_DIR))
    }
}

impl FromStr for DatasetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        match (name, path) {
            ("fashion-mnist", None) => Ok(Self::default()),
            ("fashion-mnist", Some(p)) if !p.is_empty() => Ok(Self::FashionMnist(p.into())),
            ("imagefolder", Some(p)) if !p.is_empty() => Ok(Self::ImageFolder(p.into())),
            ("imagefolder", _) => Err("imagefolder needs a path: imagefolder:PATH".into()),
            ("synthetic", None) => Ok(Self::Synthetic),
            _ => Err(format!("unknown dataset `{s}` (expected fashion-mnist[:DIR], imagefolder:PATH or synthetic)")),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FashionMnist(p) => write!(f, "fashion-mnist:{}", p.display()),
            Self::ImageFolder(p) => write!(f, "imagefolder:{}", p.display()),
            Self::Synthetic => write!(f, "synthetic"),
        }
    }
}

impl Serialize for DatasetSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Options that shape a dataset.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// Use only the first N training samples.
    pub limit_train: Option<usize>,
    /// Use only the first N test samples.
    pub limit_test: Option<usize>,
    /// Side of the square network input; `None`: the dataset's natural size (28 for
    /// Fashion-MNIST, 224 for ImageFolder, 32 for synthetic).
    pub image_size: Option<u32>,
}

/// Which split of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    /// Fashion-MNIST `t10k`, ImageFolder `val/`.
    Test,
}

/// One split of a dataset with its class names and transforms.
pub struct SplitSet {
    pub source: Box<dyn Source>,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// Channels the network sees.
    pub in_channels: u8,
    pub presets: Presets,
}

impl SplitSet {
    /// Opens one split of `spec` (limited by `--limit-train` / `--limit-test`); every problem
    /// (missing files, bad magic, empty class folder) is an error naming the file.
    pub fn open(spec: &DatasetSpec, split: Split, opts: &DataOptions) -> Result<Self> {
        let (source, classes, presets): (Box<dyn Source>, Vec<String>, Presets) = match spec {
            DatasetSpec::FashionMnist(dir) => {
                if let Some(size) = opts.image_size.filter(|&s| s != fashion_mnist::SIDE) {
                    bail!("--image-size {size}: Fashion-MNIST images are {0}x{0}", fashion_mnist::SIDE);
                }
                let which = match split {
                    Split::Train => fashion_mnist::Split::Train,
                    Split::Test => fashion_mnist::Split::Test,
                };
                let source = fashion_mnist::FashionMnist::load(dir, which)?;
                let classes = fashion_mnist::CLASSES.iter().map(|s| s.to_string()).collect();
                (Box::new(source), classes, Presets::fashion_mnist())
            }
            DatasetSpec::ImageFolder(root) => {
                if !root.is_dir() {
                    bail!("ImageFolder dataset {} does not exist or is not a directory", root.display());
                }
                let dir = root.join(match split {
                    Split::Train => "train",
                    Split::Test => "val",
                });
                let source = image_folder::ImageFolder::open(&dir)?;
                let classes = source.classes().to_vec();
                let size = opts.image_size.unwrap_or(crate::presets::IMAGENET_TRAIN_SIZE);
                (Box::new(source), classes, Presets::imagenet(size))
            }
            DatasetSpec::Synthetic => {
                let size = opts.image_size.unwrap_or(synthetic::DEFAULT_SIDE);
                let (len, which) = match split {
                    Split::Train => (synthetic::TRAIN_LEN, synthetic::Split::Train),
                    Split::Test => (synthetic::TEST_LEN, synthetic::Split::Test),
                };
                let classes = (0..synthetic::NUM_CLASSES).map(|c| format!("class{c}")).collect();
                (Box::new(synthetic::Synthetic::new(len, size, which)), classes, Presets::synthetic(size))
            }
        };
        let limit = match split {
            Split::Train => opts.limit_train,
            Split::Test => opts.limit_test,
        };
        let source = Limited::new(source, limit);
        if source.is_empty() {
            bail!("{spec}: the {split:?} split is empty");
        }
        Ok(Self { source, classes, in_channels: presets.eval.channels, presets })
    }
}

/// A dataset ready to train on: both splits, class names and transforms.
pub struct Dataset {
    pub train: Box<dyn Source>,
    pub test: Box<dyn Source>,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// Channels the network sees.
    pub in_channels: u8,
    pub presets: Presets,
}

impl Dataset {
    /// Opens both splits of `spec`, which must have the same classes.
    pub fn open(spec: &DatasetSpec, opts: &DataOptions) -> Result<Self> {
        let train = SplitSet::open(spec, Split::Train, opts)?;
        let test = SplitSet::open(spec, Split::Test, opts)?;
        if train.classes != test.classes {
            bail!("{spec}: the training split has classes {:?} but the test split has {:?}", train.classes, test.classes);
        }
        Ok(Self {
            train: train.source,
            test: test.source,
            classes: train.classes,
            in_channels: train.in_channels,
            presets: train.presets,
        })
    }

    /// Opens only the test split (for `host eval`), as a `Dataset` whose `train` is empty.
    pub fn open_test(spec: &DatasetSpec, opts: &DataOptions) -> Result<Self> {
        let test = SplitSet::open(spec, Split::Test, opts)?;
        Ok(Self {
            train: Box::new(Empty),
            test: test.source,
            classes: test.classes,
            in_channels: test.in_channels,
            presets: test.presets,
        })
    }
}

/// A source with no sample.
struct Empty;

impl Source for Empty {
    fn len(&self) -> usize {
        0
    }
    fn label(&self, _: usize) -> i64 {
        0
    }
    fn image(&self, _: usize) -> Result<Image> {
        bail!("empty source")
    }
    fn describe(&self, index: usize) -> String {
        format!("empty[{index}]")
    }
}

/// One batch: `labels.len()` samples of `sample_len` floats each, CHW.
#[derive(Debug, Default)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Samples of this batch that could not be read and were left out.
    pub skipped: usize,
    /// The first skipped sample and why, for the report.
    pub first_skip: Option<String>,
    /// Where `images` goes back when the batch is dropped: the loader reuses it for a later
    /// batch instead of faulting in fresh pages (a 256 x 224 x 224 batch is 154 MB).
    recycle: Option<mpsc::Sender<Vec<f32>>>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(tx) = self.recycle.take() {
            let _ = tx.send(std::mem::take(&mut self.images));
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What the loader iterates over.
pub struct LoaderSpec<'a> {
    pub source: &'a dyn Source,
    pub transform: &'a Transform,
    /// Sample indices in visiting order.
    pub order: Vec<usize>,
    pub batch_size: usize,
    /// Leave out a last incomplete batch (training).
    pub drop_last: bool,
    /// Augmentation randomness: sample `i` of epoch `e` draws from `Rng::stream(seed, Augment, e, i)`.
    pub seed: u64,
    pub epoch: u64,
}

impl LoaderSpec<'_> {
    /// Number of batches the loader yields.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn load(&self, indices: &[usize], mut images: Vec<f32>) -> Batch {
        let len = self.transform.sample_len();
        // Every kept sample is overwritten; the values of a reused buffer do not matter.
        images.resize(indices.len() * len, 0.0);
        let results: Vec<Result<(), String>> = images
            .par_chunks_mut(len)
            .zip(indices.par_iter())
            .map(|(out, &i)| {
                let mut rng = Rng::stream(self.seed, Purpose::Augment, self.epoch, i as u64);
                self.transform
                    .load(self.source, i, &mut rng, out)
                    .map_err(|e| format!("{}: {e:#}", self.source.describe(i)))
            })
            .collect();
        let mut batch = Batch::default();
        let mut kept = 0;
        for (k, (r, &i)) in results.into_iter().zip(indices).enumerate() {
            match r {
                Ok(()) => {
                    if kept != k {
                        images.copy_within(k * len..(k + 1) * len, kept * len);
                    }
                    batch.labels.push(self.source.label(i));
                    kept += 1;
                }
                Err(why) => {
                    batch.skipped += 1;
                    batch.first_skip.get_or_insert(why);
                }
            }
        }
        images.truncate(kept * len);
        batch.images = images;
        batch
    }

    /// Calls `f` on every batch in order, decoding ahead on a producer thread. Stops at the first
    /// error `f` returns.
    pub fn for_each(&self, f: impl FnMut(Batch) -> Result<()>) -> Result<()> {
        self.for_each_in(None, f)
    }

    /// [`LoaderSpec::for_each`] decoding on `pool` (default: the global pool, [`init_workers`]).
    pub fn for_each_in(&self, pool: Option<&rayon::ThreadPool>, mut f: impl FnMut(Batch) -> Result<()>) -> Result<()> {
        let n = self.num_batches();
        let (tx, rx) = mpsc::sync_channel::<Batch>(PREFETCH_BATCHES);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<f32>>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for b in 0..n {
                    let end = ((b + 1) * self.batch_size).min(self.order.len());
                    let indices = &self.order[b * self.batch_size..end];
                    let buffer = recycle_rx.try_recv().unwrap_or_default();
                    let mut batch = match pool {
                        Some(p) => p.install(|| self.load(indices, buffer)),
                        None => self.load(indices, buffer),
                    };
                    batch.recycle = Some(recycle_tx.clone());
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped early
                    }
                }
            });
            let mut consume = || {
                for batch in rx.iter() {
                    f(batch)?;
                }
                Ok(())
            };
            let result = consume();
            // On an error, hang up first: the producer blocked in `send` then ends and the scope
            // can join it (otherwise it waits for a receiver that will never read again).
            drop(rx);
            result
        })
    }
}

/// `data` as a tensor of `shape` on `device`. On CUDA the batch is copied once into page-locked
/// (pinned) host memory and from there to the GPU with a non-blocking copy, so the transfer runs
/// on the DMA engine while the GPU is still busy with earlier work (libtorch's caching host
/// allocator keeps the pinned block until the copy has finished); elsewhere it is a plain CPU
/// tensor.
pub fn to_device<T: tch::kind::Element + Copy>(data: &[T], shape: &[i64], device: tch::Device) -> tch::Tensor {
    let elements = shape.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
    if !device.is_cuda() || elements != Some(data.len()) {
        return tch::Tensor::from_slice(data).view(shape).to_device(device);
    }
    let host = tch::Tensor::empty(shape, (T::KIND, tch::Device::Cpu)).pin_memory(device);
    // SAFETY: `host` is a fresh contiguous CPU tensor of `data.len()` elements of type T (the
    // product of `shape`, checked above).
    unsafe { std::slice::from_raw_parts_mut(host.data_ptr() as *mut T, data.len()) }.copy_from_slice(data);
    host.to_device_(device, T::KIND, true, false)
}

/// Sizes the global rayon pool used for decoding (`--workers`); later calls keep the first size.
pub fn init_workers(workers: Option<usize>) {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = workers {
        b = b.num_threads(n.max(1));
    }
    let _ = b.build_global();
}
