//! JPEG decoding with DCT-domain downscaling and partial decode, on the system libjpeg-turbo.
//!
//! libjpeg's scaled IDCT (`scale_num / 8`, as PIL's draft mode and DALI use) produces the image
//! at N/8 of its size for about the cost of the smaller image; libjpeg-turbo's
//! `jpeg_crop_scanline` / `jpeg_skip_scanlines` then leave out the columns and rows around a
//! crop (colour conversion and upsampling only run on the crop; rows below it are not decoded at
//! all). A training crop is chosen on the header's full-size dimensions, then decoded at the
//! smallest scale whose crop still has at least the output size on both sides
//! ([`scale_for`]), so the resampler only ever downscales.
//!
//! The C side (`jpeg_shim.c`, compiled by build.rs) turns libjpeg's fatal errors (which would
//! call `exit()`) and truncated data into error returns with libjpeg's message. CMYK and YCCK
//! files come out as RGB; grayscale files as RGB too (libjpeg-turbo's gray -> RGB).

use std::ffi::{c_char, c_int, c_uchar, c_uint, CStr};

use anyhow::{bail, Result};
use shared::preprocess::PixelFormat;

use super::{Crop, Cropped};
use crate::image::Image;

#[repr(C)]
struct EjDec {
    _private: [u8; 0],
}

extern "C" {
    fn ej_new() -> *mut EjDec;
    fn ej_free(dec: *mut EjDec);
    fn ej_message(dec: *const EjDec) -> *const c_char;
    fn ej_header(
        dec: *mut EjDec,
        data: *const c_uchar,
        len: usize,
        width: *mut c_uint,
        height: *mut c_uint,
        components: *mut c_int,
    ) -> c_int;
    fn ej_start(
        dec: *mut EjDec,
        scale_num: c_int,
        x0: c_uint,
        w: c_uint,
        out_width: *mut c_uint,
        out_height: *mut c_uint,
        crop_x0: *mut c_uint,
        crop_w: *mut c_uint,
    ) -> c_int;
    fn ej_read(dec: *mut EjDec, y0: c_uint, h: c_uint, out: *mut c_uchar, cap: usize) -> c_int;
}

/// Largest image accepted, in pixels: Pillow's decompression-bomb error threshold (twice its
/// `MAX_IMAGE_PIXELS` warning). A bigger header is an error, not a multi-GB allocation.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Whether `bytes` start like a JPEG file (SOI marker then another marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// The smallest `n` in 1..=8 such that a `w` x `h` box decoded at `n/8` still has at least `out`
/// pixels on both sides (8: full size, when even that is smaller).
pub fn scale_for(w: u32, h: u32, out: u32) -> u32 {
    let side = u64::from(w.min(h)).max(1);
    let n = (8 * u64::from(out)).div_ceil(side);
    n.clamp(1, 8) as u32
}

/// Output size of a `full`-pixel side decoded at `n/8` (libjpeg's `jdiv_round_up`).
pub fn scaled_len(full: u32, n: u32) -> u32 {
    (u64::from(full) * u64::from(n)).div_ceil(8) as u32
}

/// A JPEG whose header has been read.
pub struct Jpeg<'a> {
    dec: *mut EjDec,
    /// libjpeg reads the file's bytes until the decoder is dropped.
    _bytes: std::marker::PhantomData<&'a [u8]>,
    width: u32,
    height: u32,
    components: u32,
}

/// Part of a JPEG decoded at `scale / 8`: `image` is the region whose top-left corner lies at
/// `origin` in the scaled image.
pub struct Decoded {
    pub image: Image,
    pub scale: u32,
    pub origin: (u32, u32),
}

impl<'a> Jpeg<'a> {
    /// Reads the header of an in-memory JPEG file.
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        // SAFETY: ej_new returns an owned decoder or null.
        let dec = unsafe { ej_new() };
        if dec.is_null() {
            bail!("cannot create a JPEG decoder (out of memory)");
        }
        let mut j = Jpeg { dec, _bytes: std::marker::PhantomData, width: 0, height: 0, components: 0 };
        let (mut w, mut h, mut c) = (0, 0, 0);
        // SAFETY: `bytes` outlives the decoder's use of it (the decoder lives in `j`, which
        // borrows `bytes`); the out-pointers are valid.
        let rc = unsafe { ej_header(j.dec, bytes.as_ptr(), bytes.len(), &mut w, &mut h, &mut c) };
        j.check(rc, "cannot read the JPEG header")?;
        if u64::from(w) * u64::from(h) > MAX_PIXELS {
            bail!("{w}x{h} JPEG is over the {MAX_PIXELS}-pixel limit (a decompression bomb?)");
        }
        (j.width, j.height, j.components) = (w, h, c as u32);
        Ok(j)
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Colour components in the file: 1 (gray), 3 (YCbCr/RGB) or 4 (CMYK/YCCK).
    pub fn components(&self) -> u32 {
        self.components
    }

    fn check(&self, rc: c_int, what: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: ej_message returns the decoder's NUL-terminated message buffer.
        let msg = unsafe { CStr::from_ptr(ej_message(self.dec)) }.to_string_lossy().into_owned();
        bail!("{what}: {msg}")
    }

    /// Decodes at `scale / 8` (1..=8) the part of the image that covers `region` (`[x0, y0, w, h]`
    /// in full-size pixels; `None`: everything), as RGB8. The decoded columns may extend past the
    /// region to whole iMCUs (`origin` says where they start).
    pub fn decode(self, scale: u32, region: Option<[u32; 4]>) -> Result<Decoded> {
        if !(1..=8).contains(&scale) {
            bail!("JPEG scale {scale}/8 is not in 1/8..8/8");
        }
        let [x0, y0, w, h] = region.unwrap_or([0, 0, self.width, self.height]);
        if w == 0 || h == 0 || x0.saturating_add(w) > self.width || y0.saturating_add(h) > self.height {
            bail!("region {x0},{y0} {w}x{h} is not inside the {}x{} image", self.width, self.height);
        }
        // The region's rows and columns in the scaled image: floor of the start, ceiling of the end.
        let lo = |v: u32| (u64::from(v) * u64::from(scale) / 8) as u32;
        let hi = |v: u32| scaled_len(v, scale);
        let (sx0, sx1) = (lo(x0), hi(x0 + w).max(lo(x0) + 1));
        let (sy0, sy1) = (lo(y0), hi(y0 + h).max(lo(y0) + 1));
        let (mut ow, mut oh, mut cx0, mut cw) = (0, 0, 0, 0);
        // SAFETY: the decoder holds a read header; out-pointers are valid.
        let rc = unsafe { ej_start(self.dec, scale as c_int, sx0, sx1 - sx0, &mut ow, &mut oh, &mut cx0, &mut cw) };
        self.check(rc, "cannot start decoding the JPEG")?;
        let sy1 = sy1.min(oh);
        if sy0 >= sy1 || cw == 0 {
            bail!("region {x0},{y0} {w}x{h} is empty at scale {scale}/8 ({ow}x{oh})");
        }
        let rows = sy1 - sy0;
        let mut data = crate::image::pixel_buffer(cw as usize * 3 * rows as usize);
        // SAFETY: `data` holds `rows` rows of `cw` RGB pixels, as ej_read writes.
        let rc = unsafe { ej_read(self.dec, sy0, rows, data.as_mut_ptr(), data.len()) };
        self.check(rc, "cannot decode the JPEG")?;
        Ok(Decoded {
            image: Image { data, width: cw, height: rows, format: PixelFormat::Rgb8 },
            scale,
            origin: (cx0, sy0),
        })
    }
}

impl Drop for Jpeg<'_> {
    fn drop(&mut self) {
        // SAFETY: `dec` came from ej_new and is freed once.
        unsafe { ej_free(self.dec) }
    }
}

/// Decodes a whole JPEG file at full size to RGB8.
pub fn decode_rgb(bytes: &[u8]) -> Result<Image> {
    Ok(Jpeg::open(bytes)?.decode(8, None)?.image)
}

/// Reads the header, asks `pick` for the crop on the full-size image, and decodes only what the
/// crop needs at the smallest scale that keeps it at least `crop.out` pixels on both sides
/// ([`Source::crop`](super::Source::crop) for JPEG files). The crop's edges are mapped to the
/// scaled image to the nearest pixel (off by at most half a scaled pixel).
pub fn decode_crop(bytes: &[u8], pick: &mut dyn FnMut(u32, u32) -> Crop) -> Result<Cropped> {
    let jpeg = Jpeg::open(bytes)?;
    let crop = pick(jpeg.width(), jpeg.height());
    let [x0, y0, w, h] = crop.region;
    let scale = scale_for(w, h, crop.out);
    let d = jpeg.decode(scale, Some(crop.region))?;
    let round = |v: u32| ((u64::from(v) * u64::from(scale) + 4) / 8) as u32;
    let axis = |start: u32, len: u32, origin: u32, size: u32| {
        let a = round(start).saturating_sub(origin).min(size - 1);
        let b = round(start + len).saturating_sub(origin).clamp(a + 1, size);
        (a, b - a)
    };
    let (cx, cw) = axis(x0, w, d.origin.0, d.image.width);
    let (cy, ch) = axis(y0, h, d.origin.1, d.image.height);
    Ok(Cropped { image: d.image, crop: [cx, cy, cw, ch], scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_choice() {
        assert_eq!(scale_for(500, 375, 224), 5); // 375 * 5/8 = 234 >= 224, 4/8 gives 187
        assert_eq!(scale_for(1600, 1200, 224), 2);
        assert_eq!(scale_for(100, 100, 224), 8);
        assert_eq!(scale_for(224, 300, 224), 8);
        assert_eq!(scale_for(10_000, 10_000, 224), 1);
        assert_eq!(scaled_len(375, 5), 235);
    }

    #[test]
    fn huge_header_is_refused_before_allocating() {
        let mut bytes = Vec::new();
        let img = image::RgbImage::from_pixel(16, 16, image::Rgb([10, 200, 30]));
        image::codecs::jpeg::JpegEncoder::new(&mut bytes).encode_image(&img).unwrap();
        assert_eq!(decode_rgb(&bytes).unwrap().data[..3].len(), 3);
        // SOF0: FF C0, length (2), precision (1), height (2), width (2).
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]); // 65000 x 65000
        let e = Jpeg::open(&bytes).err().unwrap().to_string();
        assert!(e.contains("65000x65000") && e.contains("limit"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_an_exit() {
        let e = Jpeg::open(b"\xff\xd8\xff\xe0 not a jpeg").err().unwrap().to_string();
        assert!(e.contains("JPEG"), "{e}");
        assert!(Jpeg::open(b"").is_err());
    }
}
