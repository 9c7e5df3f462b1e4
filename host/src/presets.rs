//! Train and eval transforms with their defaults, in one place (torchvision `presets.py`).
//!
//! Evaluation always goes through `shared`'s [`Preprocess`], the exact code the device runs, so
//! there is no train/serve skew. Training augmentations end in the same normalization:
//!
//! - Fashion-MNIST (28 px) and synthetic data: [`TrainTransform::PadCropFlip`], torchvision's
//!   `RandomCrop(28, padding=2)` (zero padding) + `RandomHorizontalFlip()`, the standard
//!   augmentation for small images, applied to the 8-bit image; the result then goes through the
//!   eval `Preprocess` (28 -> 28 is the identity resample), so normalization is shared code.
//! - ImageFolder: [`TrainTransform::RandomResizedCrop`], torchvision's
//!   `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` + `RandomHorizontalFlip()`,
//!   resampled and normalized by `shared::preprocess::resized_crop` (the primitive under
//!   `Preprocess::run`).

use anyhow::{anyhow, bail, Result};
use shared::preprocess::{resized_crop, resized_crop_scratch_len, Frame, PixelFormat, Preprocess};

use crate::data::{Crop, Source};
use crate::image::Image;
use crate::rng::Rng;

thread_local! {
    /// Resampling scratch of the loader threads, kept from one sample to the next.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// ImageNet training crop side (the eval preprocess is `Resize(256) + CenterCrop(224)`).
pub const IMAGENET_TRAIN_SIZE: u32 = 224;
/// Eval resize over crop for ImageNet-style data: 256 / 224.
pub const IMAGENET_RESIZE_RATIO: f64 = 256.0 / 224.0;
/// RandomResizedCrop area range (fraction of the image).
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// RandomResizedCrop aspect-ratio range.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// RandomResizedCrop attempts before the center-crop fallback (torchvision).
const RRC_ATTEMPTS: usize = 10;
/// Zero padding of the random crop for 28 px Fashion-MNIST images.
pub const FASHION_MNIST_PAD: u32 = 2;
/// Zero padding of the random crop for synthetic images (CIFAR-style 32 px: 4).
pub const SYNTHETIC_PAD: u32 = 4;

/// A training augmentation.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainTransform {
    /// Zero-pad by `pad`, random crop back to the image size, random horizontal flip, then
    /// `eval` (whose resize and crop equal the image size).
    PadCropFlip { pad: u32, eval: Preprocess },
    /// Random area/aspect crop resized to `size` x `size`, random horizontal flip, normalize.
    RandomResizedCrop {
        size: u32,
        scale: (f64, f64),
        ratio: (f64, f64),
        mean: [f32; 3],
        std: [f32; 3],
        channels: u8,
    },
}

/// The transforms of one dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Presets {
    pub train: TrainTransform,
    pub eval: Preprocess,
}

impl Presets {
    pub fn fashion_mnist() -> Self {
        let eval = Preprocess::FASHION_MNIST;
        Self { train: TrainTransform::PadCropFlip { pad: FASHION_MNIST_PAD, eval }, eval }
    }

    /// ImageNet recipe at crop `size` (224: exactly `Preprocess::IMAGENET_EVAL`).
    pub fn imagenet(size: u32) -> Self {
        let base = Preprocess::IMAGENET_EVAL;
        let eval = if size == base.crop {
            base
        } else {
            Preprocess { resize: (f64::from(size) * IMAGENET_RESIZE_RATIO).round() as u32, crop: size, ..base }
        };
        Self {
            train: TrainTransform::RandomResizedCrop {
                size,
                scale: RRC_SCALE,
                ratio: RRC_RATIO,
                mean: eval.mean,
                std: eval.std,
                channels: eval.channels,
            },
            eval,
        }
    }

    /// Synthetic `size` px RGB images, ImageNet normalization, CIFAR-style augmentation.
    pub fn synthetic(size: u32) -> Self {
        let eval = Preprocess { resize: size, crop: size, ..Preprocess::IMAGENET_EVAL };
        Self { train: TrainTransform::PadCropFlip { pad: SYNTHETIC_PAD, eval }, eval }
    }

    /// The network input side.
    pub fn image_size(&self) -> u32 {
        self.eval.crop
    }
}

/// What the loader does to each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    Train(TrainTransform),
    Eval(Preprocess),
}

impl Transform {
    /// Floats per output sample.
    pub fn sample_len(&self) -> usize {
        match self {
            Transform::Train(TrainTransform::PadCropFlip { eval, .. }) | Transform::Eval(eval) => eval.output_len(),
            Transform::Train(TrainTransform::RandomResizedCrop { size, channels, .. }) => {
                usize::from(*channels) * (*size as usize) * (*size as usize)
            }
        }
    }

    /// `[channels, size, size]` of an output sample.
    pub fn sample_shape(&self) -> [i64; 3] {
        let (c, s) = match self {
            Transform::Train(TrainTransform::PadCropFlip { eval, .. }) | Transform::Eval(eval) => (eval.channels, eval.crop),
            Transform::Train(TrainTransform::RandomResizedCrop { size, channels, .. }) => (*channels, *size),
        };
        [i64::from(c), i64::from(s), i64::from(s)]
    }

    /// Decodes sample `index` of `source` and transforms it into `out`, drawing randomness from
    /// `rng` exactly as [`Transform::apply`] on the full-size image would. RandomResizedCrop
    /// picks its box on the full-size dimensions and lets the source decode only that box, at
    /// the smallest JPEG scale that keeps it at least `size` pixels a side ([`Source::crop`]).
    pub fn load(&self, source: &dyn Source, index: usize, rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        let Transform::Train(TrainTransform::RandomResizedCrop { size, scale, ratio, mean, std, channels }) = self else {
            return self.apply(&source.image(index)?, rng, out);
        };
        let mut flip = false;
        let got = source.crop(index, &mut |w, h| {
            let region = random_resized_crop_box(w, h, *scale, *ratio, rng);
            flip = rng.coin();
            Crop { region, out: *size }
        })?;
        let frame = got.image.frame()?;
        let done = SCRATCH.with_borrow_mut(|scratch| {
            let need = resized_crop_scratch_len(got.crop, *size, *channels);
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            resized_crop(&frame, got.crop, *size, *size, flip, *mean, *std, *channels, scratch, out)
                .map_err(|e| anyhow!("{e}"))
        });
        crate::image::recycle_pixels(got.image.data);
        done
    }

    /// Transforms `img` into `out` (`sample_len` floats, CHW), drawing randomness from `rng`.
    pub fn apply(&self, img: &Image, rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        match self {
            Transform::Eval(p) => eval_into(p, &img.frame()?, out),
            Transform::Train(TrainTransform::PadCropFlip { pad, eval }) => {
                let shifted = pad_crop_flip(img, *pad, rng)?;
                eval_into(eval, &shifted.frame()?, out)
            }
            Transform::Train(TrainTransform::RandomResizedCrop { size, scale, ratio, mean, std, channels }) => {
                let frame = img.frame()?;
                let bx = random_resized_crop_box(img.width, img.height, *scale, *ratio, rng);
                let flip = rng.coin();
                let mut scratch = vec![0f32; resized_crop_scratch_len(bx, *size, *channels)];
                resized_crop(&frame, bx, *size, *size, flip, *mean, *std, *channels, &mut scratch, out)
                    .map_err(|e| anyhow!("{e}"))
            }
        }
    }
}

/// `shared` eval preprocessing of one frame into `out`.
pub fn eval_into(p: &Preprocess, frame: &Frame<'_>, out: &mut [f32]) -> Result<()> {
    let mut scratch = vec![0f32; p.scratch_len(frame.width(), frame.height())];
    p.run(frame, &mut scratch, out).map_err(|e| anyhow!("{e}"))
}

/// torchvision `RandomCrop(size=image size, padding=pad)` (zero fill) then
/// `RandomHorizontalFlip()`, on 8-bit pixels.
pub fn pad_crop_flip(img: &Image, pad: u32, rng: &mut Rng) -> Result<Image> {
    let bpp = match img.format {
        PixelFormat::Gray8 => 1,
        PixelFormat::Rgb8 => 3,
        other => bail!("pad-crop-flip needs gray or RGB pixels, not {other:?}"),
    };
    let (w, h) = (img.width as i64, img.height as i64);
    let span = u64::from(2 * pad) + 1;
    let ox = rng.below(span) as i64 - i64::from(pad);
    let oy = rng.below(span) as i64 - i64::from(pad);
    let flip = rng.coin();
    let mut data = vec![0u8; img.data.len()];
    for y in 0..h {
        let sy = y + oy;
        if !(0..h).contains(&sy) {
            continue;
        }
        for x in 0..w {
            let cx = if flip { w - 1 - x } else { x };
            let sx = cx + ox;
            if !(0..w).contains(&sx) {
                continue;
            }
            let (d, s) = (((y * w + x) * bpp) as usize, ((sy * w + sx) * bpp) as usize);
            data[d..d + bpp as usize].copy_from_slice(&img.data[s..s + bpp as usize]);
        }
    }
    Ok(Image { data, ..*img })
}

/// torchvision `RandomResizedCrop.get_params`: the source box `[x0, y0, w, h]`.
pub fn random_resized_crop_box(width: u32, height: u32, scale: (f64, f64), ratio: (f64, f64), rng: &mut Rng) -> [u32; 4] {
    let (fw, fh) = (f64::from(width), f64::from(height));
    let area = fw * fh;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..RRC_ATTEMPTS {
        let target_area = area * rng.uniform_range(scale.0, scale.1);
        let aspect = rng.uniform_range(log_ratio.0, log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= fw && h > 0.0 && h <= fh {
            let (w, h) = (w as u32, h as u32);
            let y0 = rng.below(u64::from(height - h) + 1) as u32;
            let x0 = rng.below(u64::from(width - w) + 1) as u32;
            return [x0, y0, w, h];
        }
    }
    // Fallback: the largest center crop within the ratio range.
    let in_ratio = fw / fh;
    let (w, h) = if in_ratio < ratio.0 {
        (fw, (fw / ratio.0).round_ties_even())
    } else if in_ratio > ratio.1 {
        ((fh * ratio.1).round_ties_even(), fh)
    } else {
        (fw, fh)
    };
    let (w, h) = ((w as u32).clamp(1, width), (h as u32).clamp(1, height));
    [(width - w) / 2, (height - h) / 2, w, h]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_crop_flip_keeps_pixels_and_zero_fills() {
        let img = Image { data: (1..=16).collect(), width: 4, height: 4, format: PixelFormat::Gray8 };
        let mut seen_shift = false;
        for s in 0..50 {
            let out = pad_crop_flip(&img, 1, &mut Rng::new(s)).unwrap();
            assert_eq!(out.data.len(), 16);
            let nonzero = out.data.iter().filter(|&&v| v != 0).count();
            assert!(nonzero == 16 || nonzero == 12 || nonzero == 9, "{:?}", out.data);
            seen_shift |= nonzero < 16;
            let mut sorted: Vec<u8> = out.data.iter().copied().filter(|&v| v != 0).collect();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), nonzero, "no pixel duplicated");
        }
        assert!(seen_shift);
    }

    #[test]
    fn rrc_box_inside_and_in_range() {
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let [x, y, w, h] = random_resized_crop_box(320, 200, RRC_SCALE, RRC_RATIO, &mut rng);
            assert!(w > 0 && h > 0 && x + w <= 320 && y + h <= 200);
        }
        // A very thin image falls back to a center crop.
        let b = random_resized_crop_box(1000, 2, (0.9, 1.0), RRC_RATIO, &mut rng);
        assert_eq!(b, [498, 0, 3, 2]);
    }
}
