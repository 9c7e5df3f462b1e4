//! `host bench-data`: images per second of the training data pipeline (decode, RandomResizedCrop,
//! flip, normalize into f32 batches), the number the GPU sees, without a network.
//!
//! [`measure`] runs the loader exactly as `host train` does (same order, same transforms, same
//! prefetching producer) on a rayon pool of `threads` threads: one untimed warm-up epoch (page
//! cache, allocator), then `epochs` timed ones, or only the first `batches` batches of each.
//! With `--scaling` it measures every thread count 1..=threads as well. [`main`] prints one JSON
//! object; `tools/bench_data_torchvision.py` prints the same keys for torchvision's ImageFolder +
//! DataLoader, and `tools/bench_data_compare.py` runs both side by side.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Crop, Cropped, DataOptions, DatasetSpec, Image, LoaderSpec, Split, SplitSet, Source};
use crate::args::{int_in, MAX_BATCH, MAX_IMAGE_SIDE, MAX_THREADS, MIN_IMAGE_SIDE};
use crate::presets::Transform;
use crate::rng::epoch_order;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchDataArgs {
    /// Dataset whose training split is read: imagefolder:PATH (PATH/train/<class>/*.jpg),
    /// fashion-mnist[:DIR] or synthetic.
    #[arg(long)]
    pub dataset: DatasetSpec,
    /// Decode / augmentation threads (default: all cores).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_THREADS))]
    pub threads: Option<usize>,
    /// Images per batch.
    #[arg(short = 'b', long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub batch_size: usize,
    /// Timed epochs, after one untimed warm-up epoch.
    #[arg(long, default_value_t = 3, value_parser = int_in::<usize>(1, 1_000_000))]
    pub epochs: usize,
    /// Only the first N batches of every epoch (warm-up included).
    #[arg(long, value_parser = int_in::<usize>(1, u64::MAX))]
    pub batches: Option<usize>,
    /// Network input side (default: the dataset's, 224 for imagefolder).
    #[arg(long, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: Option<u32>,
    /// JPEG decoding: `scaled` (DCT-domain downscaling and partial decode of the crop, what
    /// `host train` does) or `full` (every image decoded whole at full size, for comparison).
    #[arg(long, value_enum, default_value_t = Decode::Scaled)]
    pub decode: Decode,
    /// Also measure every thread count from 1 to --threads (the `scaling` table).
    #[arg(long)]
    pub scaling: bool,
    /// Seed of the epoch order and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How training crops are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Scaled,
    Full,
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub threads: usize,
    pub img_per_s: f64,
    pub img_per_s_per_core: f64,
    pub img_per_s_per_epoch: Vec<f64>,
    /// Unreadable samples skipped per epoch.
    pub skipped: usize,
}

/// The printed JSON object (`engine`, `images`, `batch_size`, `epochs`, `img_per_s`,
/// `img_per_s_per_epoch` as tools/bench_data_torchvision.py).
#[derive(Clone, Debug, Serialize)]
pub struct BenchDataResult {
    pub engine: String,
    pub dataset: String,
    pub images: usize,
    pub batch_size: usize,
    pub image_size: u32,
    pub epochs: usize,
    pub batches_per_epoch: usize,
    pub decode: Decode,
    pub cores: usize,
    pub threads: usize,
    pub img_per_s: f64,
    pub img_per_s_per_core: f64,
    pub img_per_s_per_epoch: Vec<f64>,
    pub skipped: usize,
    /// The first skipped sample and why.
    pub first_skip: Option<String>,
    /// `--scaling`: threads 1..=threads.
    pub scaling: Vec<Run>,
}

/// A source that decodes every image whole (`--decode full`).
struct FullDecode<'a>(&'a dyn Source);

impl Source for FullDecode<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn label(&self, index: usize) -> i64 {
        self.0.label(index)
    }
    fn image(&self, index: usize) -> Result<Image> {
        self.0.image(index)
    }
    fn describe(&self, index: usize) -> String {
        self.0.describe(index)
    }
    fn crop(&self, index: usize, pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
        let image = self.0.image(index)?;
        let crop = pick(image.width, image.height);
        Ok(Cropped { image, crop: crop.region, scale: 8 })
    }
}

/// Cores of this machine (what the default thread count uses).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Bench<'a> {
    source: &'a dyn Source,
    transform: Transform,
    args: &'a BenchDataArgs,
}

impl Bench<'_> {
    fn loader(&self, epoch: u64) -> LoaderSpec<'_> {
        let mut order = epoch_order(self.source.len(), self.args.seed, epoch);
        if let Some(b) = self.args.batches {
            order.truncate(b.saturating_mul(self.args.batch_size));
        }
        LoaderSpec {
            source: self.source,
            transform: &self.transform,
            order,
            batch_size: self.args.batch_size,
            drop_last: false,
            seed: self.args.seed,
            epoch,
        }
    }

    /// Warm-up epoch 0, then timed epochs 1..=epochs, on a pool of `threads`.
    fn run(&self, threads: usize) -> Result<(Run, Option<String>)> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bench-data-{i}"))
            .build()
            .context("cannot start the decode threads")?;
        let (mut per_epoch, mut skipped, mut first_skip) = (Vec::new(), 0, None);
        for epoch in 0..=self.args.epochs as u64 {
            let loader = self.loader(epoch);
            let (mut n, mut skip) = (0usize, 0usize);
            let start = Instant::now();
            loader.for_each_in(Some(&pool), |b| {
                n += b.len();
                skip += b.skipped;
                if first_skip.is_none() {
                    first_skip = b.first_skip.clone();
                }
                std::hint::black_box(&b.images);
                Ok(())
            })?;
            let secs = start.elapsed().as_secs_f64();
            if n == 0 {
                bail!("{}: no sample could be read ({})", self.args.dataset, first_skip.unwrap_or_default());
            }
            if epoch > 0 {
                per_epoch.push(n as f64 / secs);
                skipped = skip;
            }
        }
        let ips = per_epoch.iter().sum::<f64>() / per_epoch.len() as f64;
        let run =
            Run { threads, img_per_s: ips, img_per_s_per_core: ips / threads as f64, img_per_s_per_epoch: per_epoch, skipped };
        Ok((run, first_skip))
    }
}

pub fn measure(args: &BenchDataArgs) -> Result<BenchDataResult> {
    let opts = DataOptions { image_size: args.image_size, ..Default::default() };
    let split = SplitSet::open(&args.dataset, Split::Train, &opts)?;
    let full;
    let source: &dyn Source = match args.decode {
        Decode::Scaled => split.source.as_ref(),
        Decode::Full => {
            full = FullDecode(split.source.as_ref());
            &full
        }
    };
    let bench = Bench { source, transform: Transform::Train(split.presets.train.clone()), args };
    let threads = args.threads.unwrap_or_else(cores);
    let mut scaling = Vec::new();
    if args.scaling {
        for t in 1..threads {
            scaling.push(bench.run(t)?.0);
        }
    }
    let (main, first_skip) = bench.run(threads)?;
    if args.scaling {
        scaling.push(main.clone());
    }
    Ok(BenchDataResult {
        engine: "host".into(),
        dataset: args.dataset.to_string(),
        images: source.len(),
        batch_size: args.batch_size,
        image_size: split.presets.image_size(),
        epochs: args.epochs,
        batches_per_epoch: bench.loader(0).num_batches(),
        decode: args.decode,
        cores: cores(),
        threads,
        img_per_s: main.img_per_s,
        img_per_s_per_core: main.img_per_s_per_core,
        img_per_s_per_epoch: main.img_per_s_per_epoch,
        skipped: main.skipped,
        first_skip,
        scaling,
    })
}

pub fn main(args: BenchDataArgs) -> Result<()> {
    let r = measure(&args)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
