//! Decoding image files and JPEG frames safely: within a pixel budget and an allocation cap (a
//! 20000x20000 grayscale PNG is 1.8 MB on disk and 1.2 GB as RGB; a board with 1-4 GB would meet
//! the OOM killer), and only when the JPEG is complete (the JPEG decoder fills a truncated image
//! with grey and reports nothing, so a truncated file would be classified as if it were fine).
//! A decoder that panics on crafted input gives an error as well.
//!
//! Used by `device classify` and `bench --image` (files), the folder source and the MJPEG
//! stream and camera frames of `device live`.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// How large an image may be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width x height) of one image.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// The default of `--max-megapixels`: a 64-megapixel image decodes in at most 256 MiB,
    /// plus 192 MiB for its RGB copy.
    pub const DEFAULT_MEGAPIXELS: u32 = 64;
    /// The most `--max-megapixels` accepts.
    pub const MAX_MEGAPIXELS: u32 = 1024;
    /// Decoded bytes allowed per pixel of the budget: 8-bit gray, RGB and RGBA at the full
    /// budget (16-bit images at half).
    pub const BYTES_PER_PIXEL: u64 = 4;

    pub fn megapixels(mp: u32) -> DecodeLimits {
        DecodeLimits {
            max_pixels: u64::from(mp) * 1_000_000,
        }
    }

    /// The allocation cap handed to the decoders and checked against the file size.
    pub fn max_bytes(&self) -> u64 {
        self.max_pixels * Self::BYTES_PER_PIXEL
    }

    /// An error naming the size when `width x height` is over the budget.
    pub fn check_size(&self, width: u32, height: u32) -> Result<()> {
        let pixels = u64::from(width) * u64::from(height);
        ensure!(
            pixels <= self.max_pixels,
            "{width}x{height} is {:.1} megapixels, above the limit of {} (--max-megapixels raises it)",
            pixels as f64 / 1e6,
            megapixels_text(self.max_pixels)
        );
        Ok(())
    }

    fn image_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_alloc = Some(self.max_bytes());
        l
    }
}

fn megapixels_text(pixels: u64) -> String {
    format!("{} megapixels", pixels as f64 / 1e6)
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::megapixels(Self::DEFAULT_MEGAPIXELS)
    }
}

/// Decodes an image file (PNG, JPEG, ...) to RGB8 within `limits`. A JPEG must run to its
/// end-of-image marker.
pub fn open_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .len();
    ensure!(
        len <= limits.max_bytes(),
        "image {} is {len} bytes, more than the decode limit of {} bytes ({}; --max-megapixels raises it)",
        path.display(),
        limits.max_bytes(),
        megapixels_text(limits.max_pixels)
    );
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode(&bytes, None, limits).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decodes one JPEG (an MJPEG frame) to RGB8 within `limits`.
pub fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    decode(bytes, Some(ImageFormat::Jpeg), limits)
}

/// The width and height a JPEG's header claims, read without decoding a pixel (an MJPEG frame
/// of the wrong size is refused before its decode costs anything).
pub fn jpeg_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    dimensions(bytes, ImageFormat::Jpeg)
}

fn dimensions(bytes: &[u8], format: ImageFormat) -> Result<(u32, u32)> {
    let mut probe = ImageReader::with_format(Cursor::new(bytes), format);
    probe.no_limits();
    Ok(probe.into_dimensions()?)
}

fn decode(bytes: &[u8], format: Option<ImageFormat>, limits: &DecodeLimits) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes));
    match format {
        Some(f) => reader.set_format(f),
        None => reader = reader.with_guessed_format().context("reading the header")?,
    }
    let Some(format) = reader.format() else {
        bail!("not an image format this build decodes (PNG, JPEG, BMP, PPM/PGM)");
    };
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    // The size from the header first (no pixel is allocated), so that an image over the budget
    // gets this error rather than a decoder's.
    let (w, h) = dimensions(bytes, format)?;
    limits.check_size(w, h)?;
    reader.limits(limits.image_limits());
    let decoder = reader.into_decoder()?;
    ensure!(
        decoder.total_bytes() <= limits.max_bytes(),
        "{w}x{h} {:?} decodes to {} bytes, above the limit of {} bytes (--max-megapixels raises it)",
        decoder.color_type(),
        decoder.total_bytes(),
        limits.max_bytes()
    );
    // A decoder panic is a corrupt image too (zune-jpeg 0.5.15 overflows i32 on some crafted
    // JPEGs, a panic where overflow checks are on: fuzz/seeds/mjpeg, docs/fuzzing.md).
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        DynamicImage::from_decoder(decoder)
    }))
    .map_err(|_| anyhow::anyhow!("the {format:?} decoder failed (panicked)"))?;
    Ok(decoded?.into_rgb8())
}

/// Checks that `jpeg` is a whole JPEG: a start marker, marker segments that fit, and an
/// end-of-image marker (`FF D9`) after the last scan. Walks the segments and the entropy-coded
/// data (where `FF` is followed by `00` or a restart marker), so an `FF D9` inside an embedded
/// thumbnail or in the middle of truncated data does not count.
pub fn check_jpeg_complete(jpeg: &[u8]) -> Result<()> {
    match walk_jpeg(jpeg)? {
        JpegWalk::Complete(_) => Ok(()),
        JpegWalk::InSegment(_) | JpegWalk::Truncated => bail!(
            "corrupt JPEG: truncated, the data ends at byte {} before the end-of-image marker (FF D9)",
            jpeg.len()
        ),
    }
}

/// Where the JPEG at the start of some bytes ends, as far as they go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegWalk {
    /// A whole JPEG of this many bytes, through its end-of-image marker.
    Complete(usize),
    /// The bytes end inside the marker segment with this code (`0xE1`: APP1, where EXIF keeps
    /// a thumbnail, itself a JPEG with its own `FF D9`).
    InSegment(u8),
    /// The bytes end elsewhere before the JPEG does.
    Truncated,
}

/// Walks the JPEG at the start of `jpeg`: its marker segments, then its entropy-coded data
/// (where `FF` is followed by `00` or a restart marker); an error when the structure is broken.
pub fn walk_jpeg(jpeg: &[u8]) -> Result<JpegWalk> {
    let n = jpeg.len();
    ensure!(
        jpeg.starts_with(&[0xFF, 0xD8]),
        "not a JPEG: no start-of-image marker (FF D8)"
    );
    let mut i = 2;
    loop {
        if i >= n {
            return Ok(JpegWalk::Truncated);
        }
        ensure!(
            jpeg[i] == 0xFF,
            "corrupt JPEG: expected a marker at byte {i}, found {:#04x}",
            jpeg[i]
        );
        // Fill bytes: any number of FF before the marker code.
        while i < n && jpeg[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Ok(JpegWalk::Truncated);
        }
        let code = jpeg[i];
        i += 1;
        match code {
            0xD9 => return Ok(JpegWalk::Complete(i)),
            // Restart markers and TEM stand alone.
            0xD0..=0xD7 | 0x01 => continue,
            0xD8 | 0x00 => bail!("corrupt JPEG: unexpected marker FF {code:02X} at byte {}", i - 2),
            _ => {}
        }
        if i + 2 > n {
            return Ok(JpegWalk::InSegment(code));
        }
        let len = usize::from(u16::from_be_bytes([jpeg[i], jpeg[i + 1]]));
        ensure!(
            len >= 2,
            "corrupt JPEG: segment FF {code:02X} at byte {} has length {len}",
            i - 2
        );
        i += len;
        // Ending exactly where the segment does counts as inside it: the last bytes (an `FF D9`
        // the MJPEG splitter stopped at, say) are the segment's payload, not a marker.
        if i >= n {
            return Ok(JpegWalk::InSegment(code));
        }
        if code == 0xDA {
            // Entropy-coded data up to the next marker that is neither stuffing nor a restart.
            loop {
                let Some(k) = jpeg[i..].iter().position(|&b| b == 0xFF) else {
                    return Ok(JpegWalk::Truncated);
                };
                let j = i + k;
                match jpeg.get(j + 1) {
                    None => return Ok(JpegWalk::Truncated),
                    Some(0x00 | 0xD0..=0xD7) => i = j + 2,
                    Some(_) => {
                        i = j;
                        break;
                    }
                }
            }
        }
    }
}
