//! A decoded image, what data sources produce and transforms read: owned 8-bit pixels.

use anyhow::{anyhow, Result};
use shared::preprocess::{Frame, PixelFormat};

/// A decoded image: 8-bit pixels, rows top to bottom, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// [`PixelFormat::Gray8`] or [`PixelFormat::Rgb8`].
    pub format: PixelFormat,
}

impl Image {
    /// A `shared` frame view of the pixels.
    pub fn frame(&self) -> Result<Frame<'_>> {
        Frame::new(&self.data, self.width, self.height, self.format).map_err(|e| anyhow!("{e}"))
    }
}
