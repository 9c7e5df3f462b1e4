//! Fashion-MNIST (Xiao et al. 2017) from its idx files, raw or gzipped (Debian package
//! `dataset-fashion-mnist` installs them gzipped in [`DEFAULT_DIR`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shared::preprocess::PixelFormat;

use super::{Image, Source};

/// Where the Debian package puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Image side in pixels.
pub const SIDE: u32 = 28;
/// Class names, label order.
pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// idx magic: two zero bytes, the element type (0x08 = u8), the number of dimensions.
const IDX_U8: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// An idx file's dimensions and u8 payload.
#[derive(Debug)]
pub struct Idx {
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

/// Reads an idx file of u8 elements with `rank` dimensions, gunzipping it if it starts with the
/// gzip magic. Errors name the file and what is wrong.
pub fn read_idx(path: &Path, rank: u8) -> Result<Idx> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    let want = [0, 0, IDX_U8, rank];
    if bytes.len() < 4 || bytes[..4] != want {
        let got: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        bail!(
            "{}: not an idx file of u8 with {rank} dimension(s) (magic bytes {}, expected {})",
            path.display(),
            got.join(" "),
            want.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
        );
    }
    let header = 4 + 4 * usize::from(rank);
    if bytes.len() < header {
        bail!("{}: truncated idx header", path.display());
    }
    let dims: Vec<u32> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let expected: u64 = dims.iter().map(|&d| u64::from(d)).product();
    let got = (bytes.len() - header) as u64;
    if got != expected {
        bail!("{}: idx dimensions {dims:?} need {expected} bytes of data, the file has {got}", path.display());
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// `dir/name`, or `dir/name.gz` when only that exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else if !dir.is_dir() {
        bail!("Fashion-MNIST directory {} does not exist (install dataset-fashion-mnist or pass --dataset fashion-mnist:DIR)", dir.display())
    } else {
        bail!("Fashion-MNIST: neither {} nor {} exists", raw.display(), gz.display())
    }
}

/// One split of Fashion-MNIST in memory.
pub struct FashionMnist {
    split: Split,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl FashionMnist {
    pub fn load(dir: &Path, split: Split) -> Result<Self> {
        let p = split.prefix();
        let images_path = find(dir, &format!("{p}-images-idx3-ubyte"))?;
        let labels_path = find(dir, &format!("{p}-labels-idx1-ubyte"))?;
        let images = read_idx(&images_path, 3)?;
        let labels = read_idx(&labels_path, 1)?;
        if images.dims[1..] != [SIDE, SIDE] {
            bail!("{}: images are {:?}, expected {SIDE}x{SIDE}", images_path.display(), &images.dims[1..]);
        }
        if images.dims[0] != labels.dims[0] {
            bail!(
                "{} holds {} images but {} holds {} labels",
                images_path.display(),
                images.dims[0],
                labels_path.display(),
                labels.dims[0]
            );
        }
        if let Some(bad) = labels.data.iter().find(|&&l| usize::from(l) >= CLASSES.len()) {
            bail!("{}: label {bad} is out of range 0..{}", labels_path.display(), CLASSES.len());
        }
        Ok(Self { split, images: images.data, labels: labels.data })
    }

    /// The 28x28 pixels of sample `index`.
    pub fn pixels(&self, index: usize) -> &[u8] {
        let n = (SIDE * SIDE) as usize;
        &self.images[index * n..(index + 1) * n]
    }
}

impl Source for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn label(&self, index: usize) -> i64 {
        i64::from(self.labels[index])
    }
    fn image(&self, index: usize) -> Result<Image> {
        Ok(Image { data: self.pixels(index).to_vec(), width: SIDE, height: SIDE, format: PixelFormat::Gray8 })
    }
    fn describe(&self, index: usize) -> String {
        format!("fashion-mnist {}[{index}]", self.split.prefix())
    }
}
