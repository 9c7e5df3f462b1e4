//! Generated images of [`NUM_CLASSES`] learnable classes: each class has its own color and a
//! bright square at a class-dependent corner, under per-pixel noise. Deterministic (a pure
//! function of split and index), no files: for tests, smoke runs and benchmarks.

use anyhow::Result;
use shared::preprocess::PixelFormat;

use super::{Image, Source};
use crate::rng::{Purpose, Rng};

pub const NUM_CLASSES: usize = 10;
/// Default image side.
pub const DEFAULT_SIDE: u32 = 32;
pub const TRAIN_LEN: usize = 2048;
pub const TEST_LEN: usize = 512;
/// Standard deviation of the pixel noise, in 8-bit steps.
const NOISE: f64 = 40.0;
/// Seed of the generator (the data set is fixed; the training seed does not change it).
const SEED: u64 = 0x5EED_DA7A;

/// Class colors (RGB).
const COLORS: [[u8; 3]; NUM_CLASSES] = [
    [200, 40, 40],
    [40, 200, 40],
    [40, 40, 200],
    [200, 200, 40],
    [200, 40, 200],
    [40, 200, 200],
    [128, 128, 128],
    [230, 120, 30],
    [90, 30, 160],
    [20, 20, 20],
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

pub struct Synthetic {
    len: usize,
    side: u32,
    split: Split,
}

impl Synthetic {
    pub fn new(len: usize, side: u32, split: Split) -> Self {
        Self { len, side, split }
    }
}

impl Source for Synthetic {
    fn len(&self) -> usize {
        self.len
    }
    fn label(&self, index: usize) -> i64 {
        (index % NUM_CLASSES) as i64
    }
    fn image(&self, index: usize) -> Result<Image> {
        let class = index % NUM_CLASSES;
        let mut rng = Rng::stream(SEED, Purpose::Synthetic, self.split as u64, index as u64);
        let s = self.side as usize;
        let half = s / 2;
        // The square's corner: class bits 0 and 1 pick the quadrant.
        let (qx, qy) = ((class & 1) * half, ((class >> 1) & 1) * half);
        let mut data = Vec::with_capacity(s * s * 3);
        for y in 0..s {
            for x in 0..s {
                let in_square = (qx..qx + half).contains(&x) && (qy..qy + half).contains(&y);
                for c in COLORS[class] {
                    let base = if in_square { 255.0 } else { f64::from(c) };
                    data.push((base + NOISE * rng.normal()).clamp(0.0, 255.0) as u8);
                }
            }
        }
        Ok(Image { data, width: self.side, height: self.side, format: PixelFormat::Rgb8 })
    }
    fn describe(&self, index: usize) -> String {
        format!("synthetic {:?}[{index}]", self.split)
    }
}
