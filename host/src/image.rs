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

thread_local! {
    /// One pixel buffer per thread, handed from a decoder to the transform and back
    /// ([`pixel_buffer`], [`recycle_pixels`]): decoding a JPEG per sample then neither zeroes
    /// nor page-faults a fresh allocation of several hundred KB.
    static PIXELS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A buffer of `len` bytes for decoded pixels (contents unspecified), reusing this thread's
/// recycled one when there is one.
pub fn pixel_buffer(len: usize) -> Vec<u8> {
    let mut v = PIXELS.take();
    v.resize(len, 0);
    v
}

/// Gives a pixel buffer back for the next [`pixel_buffer`] on this thread.
pub fn recycle_pixels(v: Vec<u8>) {
    PIXELS.set(v);
}
