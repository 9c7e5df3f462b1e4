//! torchvision `ImageFolder`: `root/<class>/<image>`, classes in sorted folder-name order,
//! images in sorted file-name order. JPEG and PNG are decoded (to RGB, as torchvision's default
//! loader does); a file that fails to decode is skipped and counted by the loader.
//!
//! What a file is comes from its first bytes, not its name: JPEG data goes to libjpeg-turbo
//! ([`super::jpeg`]: gray, RGB, CMYK and YCCK files, scaled and partial decoding for training
//! crops), anything else (PNG, a PNG named `.jpg`) to the `image` crate at full size. Corrupt
//! and truncated files are errors naming the reason; the loader prefixes the path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shared::preprocess::PixelFormat;

use super::{jpeg, Crop, Cropped, Image, Source};

/// File extensions listed as images (compared case-insensitively).
pub const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, u32)>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list directory {}", dir.display()))?;
    v.sort();
    Ok(v)
}

impl ImageFolder {
    /// Lists `root`. Errors: `root` missing or unreadable, no class folder, a class folder with
    /// no image.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!("ImageFolder {} does not exist or is not a directory", root.display());
        }
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let label = classes.len() as u32;
            let before = samples.len();
            samples.extend(
                sorted_entries(&dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).map(|p| (p, label)),
            );
            if samples.len() == before {
                bail!(
                    "ImageFolder {}: class folder `{name}` holds no image (.jpg, .jpeg or .png)",
                    root.display()
                );
            }
            classes.push(name);
        }
        if classes.is_empty() {
            bail!("ImageFolder {}: no class folders (expected one sub-folder per class)", root.display());
        }
        Ok(Self { root: root.to_path_buf(), classes, samples })
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, index: usize) -> &Path {
        &self.samples[index].0
    }
}

/// Decodes a JPEG or PNG file to RGB8 at full size. Errors say why, not which file (the caller
/// knows).
pub fn decode_rgb(path: &Path) -> Result<Image> {
    decode_bytes_rgb(&std::fs::read(path).context("cannot read the file")?)
}

/// [`decode_rgb`] of a file's bytes.
pub fn decode_bytes_rgb(bytes: &[u8]) -> Result<Image> {
    if bytes.is_empty() {
        bail!("empty file");
    }
    if jpeg::is_jpeg(bytes) {
        return jpeg::decode_rgb(bytes);
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the file")?
        .decode()
        .context("cannot decode the image")?
        .to_rgb8();
    let (width, height) = img.dimensions();
    Ok(Image { data: img.into_raw(), width, height, format: PixelFormat::Rgb8 })
}

/// The part of a file a crop needs: JPEG through [`jpeg::decode_crop`], other formats decoded
/// whole.
pub fn decode_crop(path: &Path, pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
    let bytes = std::fs::read(path).context("cannot read the file")?;
    if jpeg::is_jpeg(&bytes) {
        return jpeg::decode_crop(&bytes, pick);
    }
    let image = decode_bytes_rgb(&bytes)?;
    let crop = pick(image.width, image.height);
    Ok(Cropped { image, crop: crop.region, scale: 8 })
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn label(&self, index: usize) -> i64 {
        i64::from(self.samples[index].1)
    }
    fn image(&self, index: usize) -> Result<Image> {
        decode_rgb(&self.samples[index].0)
    }
    fn describe(&self, index: usize) -> String {
        self.samples[index].0.display().to_string()
    }
    fn crop(&self, index: usize, pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
        decode_crop(&self.samples[index].0, pick)
    }
}
