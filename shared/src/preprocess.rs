//! Image preprocessing: a camera frame (RGB8, gray8 or YUYV) -> resize the shorter side with
//! antialiased bilinear filtering -> center crop -> `/255` -> `(x - mean) / std` -> f32 CHW.
//!
//! The result is the one torchvision computes on a float tensor:
//!
//! ```text
//! t = torch.tensor(frame, dtype=float32).permute(2, 0, 1)            # values 0..255
//! t = v2.functional.resize(t, resize, InterpolationMode.BILINEAR, antialias=True)
//! t = v2.functional.center_crop(t, crop)
//! t = v2.functional.normalize(t / 255, mean, std)
//! ```
//!
//! to about 1e-6 (the golden vectors in `testdata/preprocess` are checked to 1e-4). The classic
//! PIL pipeline (`Resize`, `CenterCrop`, `ToTensor`, `Normalize` on a PIL image) uses the same
//! filter but rounds to 8 bits after each pass; it differs by up to one 8-bit step, `1/255/std`
//! (measured 0.99 step, 0.0174 for the ImageNet std; see `tests/preprocess_torchvision.rs`).
//!
//! # The filter
//!
//! Each axis is resampled on its own (horizontal pass first, then vertical, like PyTorch's
//! `_upsample_bilinear2d_aa` and PIL's `ImagingResample`). Output sample `i` of an axis that maps
//! `in_len` input samples to `out_len` output samples uses
//!
//! ```text
//! scale   = in_len / out_len
//! support = scale >= 1 ? scale : 1                  (bilinear support 1, stretched when shrinking)
//! center  = scale * (i + 0.5)
//! xmin    = max(trunc(center - support + 0.5), 0)
//! xmax    = min(trunc(center + support + 0.5), in_len)
//! w[x]    = tri((x - center + 0.5) / max(scale, 1)) for x in xmin..xmax, tri(t) = max(0, 1 - |t|)
//! ```
//!
//! normalized to sum 1. An axis whose size does not change is copied (as torchvision does).
//! Taps depend only on the output coordinate in the *full* resized image, so a center crop is
//! computed by resampling only the output pixels inside the crop window; source rows and columns
//! outside the filter support of the window (give or take a zero-weight tap from padding every
//! output to the same tap count) are never read, and pixels outside the source box never are.
//!
//! # Channels
//!
//! - RGB8 / YUYV -> 1 channel: PIL's luma `L = R * 299/1000 + G * 587/1000 + B * 114/1000`, on
//!   float values (no rounding), before resampling.
//! - Gray8 -> 3 channels: the gray plane is resampled once and replicated (each channel keeps
//!   its own mean and std).
//! - YUYV ([`PixelFormat::Yuyv`]) is converted per pixel, see [`yuv_to_rgb`].
//!
//! # Memory
//!
//! Nothing allocates (except the `*_to_vec` conveniences). The caller passes a scratch buffer of
//! [`Preprocess::scratch_len`] (or [`resized_crop_scratch_len`]) floats. It holds the per-column
//! filter taps, one converted source line, and a ring of horizontally filtered rows just deep
//! enough for one output row's vertical taps (color pixels padded to 4 floats for SIMD): 58 KiB
//! for 1080p RGB -> 256 -> 224.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The largest frame, box or resized dimension accepted, 2^24: coordinates are computed in f32,
/// which is exact on integers up to this.
pub const MAX_DIM: u32 = 1 << 24;

/// Layout of the bytes of a [`Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PixelFormat {
    /// Packed `R, G, B` bytes, 3 per pixel, rows top to bottom without padding.
    Rgb8,
    /// One luma byte per pixel.
    Gray8,
    /// YUYV 4:2:2 (V4L2 `YUYV`, ffmpeg `yuyv422`): `Y0 U Y1 V` for each pair of pixels, 2 bytes
    /// per pixel, so the width must be even. BT.601 limited range; see [`yuv_to_rgb`].
    Yuyv,
}

impl PixelFormat {
    /// Bytes per pixel: 3, 1 or 2.
    pub const fn bytes_per_pixel(self) -> u32 {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Gray8 => 1,
            PixelFormat::Yuyv => 2,
        }
    }

    /// Bytes in a `width` x `height` frame (saturates at `u64::MAX` instead of overflowing).
    pub fn frame_len(self, width: u32, height: u32) -> u64 {
        (width as u64).saturating_mul(height as u64).saturating_mul(self.bytes_per_pixel() as u64)
    }
}

/// A borrowed, validated image: `data` holds exactly `format.frame_len(width, height)` bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    format: PixelFormat,
}

impl<'a> Frame<'a> {
    /// Wraps `data` as a `width` x `height` frame.
    ///
    /// Errors: [`Error::InvalidPreprocess`] for a zero width or height or an odd YUYV width,
    /// [`Error::FrameSize`] if `data.len()` is not `format.frame_len(width, height)`.
    pub fn new(data: &'a [u8], width: u32, height: u32, format: PixelFormat) -> Result<Self, Error> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidPreprocess("frame width and height must be nonzero"));
        }
        if format == PixelFormat::Yuyv && width & 1 == 1 {
            return Err(Error::InvalidPreprocess("YUYV frames need an even width"));
        }
        let expected = format.frame_len(width, height);
        let got = data.len() as u64;
        if got != expected {
            return Err(Error::FrameSize { expected, got });
        }
        Ok(Frame { data, width, height, format })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The raw bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Inference-time preprocessing: torchvision `Resize(resize)` (shorter side) ->
/// `CenterCrop(crop)` -> `ToTensor()` -> `Normalize(mean, std)`, with `channels` output planes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Preprocess {
    /// Target length of the frame's shorter side; the longer side becomes
    /// `floor(resize * long / short)` (torchvision's rule).
    pub resize: u32,
    /// Side of the square center crop taken from the resized image; `crop <= resize`.
    pub crop: u32,
    /// Per-channel mean on the 0..1 scale; only the first `channels` entries are used.
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the 0..1 scale; only the first `channels` entries are used.
    pub std: [f32; 3],
    /// Output channels: 1 (grayscale, PIL luma from color frames) or 3 (RGB, gray replicated).
    pub channels: u8,
}

impl Preprocess {
    /// Resize(256) + CenterCrop(224) + ImageNet mean/std, 3 channels.
    pub const IMAGENET_EVAL: Preprocess =
        Preprocess { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], channels: 3 };

    /// Fashion-MNIST: 28 -> 28, mean 0.2860, std 0.3530, 1 channel.
    pub const FASHION_MNIST: Preprocess =
        Preprocess { resize: 28, crop: 28, mean: [0.2860; 3], std: [0.3530; 3], channels: 1 };

    /// Checks the parameters: `0 < crop <= resize <= MAX_DIM`, `channels` 1 or 3, the used
    /// means finite and the used stds finite and positive. Errors with [`Error::InvalidPreprocess`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.resize == 0 || self.crop == 0 {
            return Err(Error::InvalidPreprocess("resize and crop must be nonzero"));
        }
        if self.crop > self.resize {
            return Err(Error::InvalidPreprocess("crop is larger than resize"));
        }
        if self.resize > MAX_DIM {
            return Err(Error::InvalidPreprocess("resize is above MAX_DIM"));
        }
        check_norm(self.mean, self.std, self.channels)
    }

    /// Floats written by [`run`](Self::run): `channels * crop * crop` (saturating).
    pub fn output_len(&self) -> usize {
        (self.channels as usize).saturating_mul(self.crop as usize).saturating_mul(self.crop as usize)
    }

    /// Size `(width, height)` of the resized image for a `frame_width` x `frame_height` frame
    /// (torchvision: the shorter side becomes `resize`, the longer `floor(resize * long / short)`).
    pub fn resized_size(&self, frame_width: u32, frame_height: u32) -> Result<(u32, u32), Error> {
        if frame_width == 0 || frame_height == 0 {
            return Err(Error::InvalidPreprocess("frame width and height must be nonzero"));
        }
        if self.resize == 0 {
            return Err(Error::InvalidPreprocess("resize and crop must be nonzero"));
        }
        let (short, long) =
            if frame_width <= frame_height { (frame_width, frame_height) } else { (frame_height, frame_width) };
        let new_long = self.resize as u64 * long as u64 / short as u64;
        if new_long > MAX_DIM as u64 {
            return Err(Error::InvalidPreprocess("resized image is larger than MAX_DIM"));
        }
        let new_long = new_long as u32;
        Ok(if frame_width <= frame_height { (self.resize, new_long) } else { (new_long, self.resize) })
    }

    /// The crop window `[left, top, crop, crop]` in resized-image coordinates (torchvision:
    /// `int(round((size - crop) / 2))`, Python's round half to even).
    pub fn crop_window(&self, frame_width: u32, frame_height: u32) -> Result<[u32; 4], Error> {
        self.validate()?;
        let (rw, rh) = self.resized_size(frame_width, frame_height)?;
        // crop <= resize <= both resized sides, so no underflow.
        Ok([center_offset(rw, self.crop), center_offset(rh, self.crop), self.crop, self.crop])
    }

    /// Scratch floats [`run`](Self::run) needs for a `frame_width` x `frame_height` frame of any
    /// pixel format, or 0 if the parameters or sizes are invalid (`run` then reports why).
    pub fn scratch_len(&self, frame_width: u32, frame_height: u32) -> usize {
        let Ok(win) = self.crop_window(frame_width, frame_height) else { return 0 };
        let Ok((rw, rh)) = self.resized_size(frame_width, frame_height) else { return 0 };
        let box_ = [0, 0, frame_width, frame_height];
        match Plan::new(box_, rw, rh, win, self.channels as usize) {
            Ok(p) => p.scratch_len().unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Frame -> resize the shorter side to `resize` (torchvision rule: long = int(resize * long / short))
    /// with bilinear, antialiased when shrinking exactly like PIL/torchvision (PIL's
    /// precompute_coeffs with support scaled by the downscale factor; triangle filter) -> center
    /// crop `crop` (offset = round((size - crop) / 2) like torchvision) -> /255 ->
    /// (x - mean) / std -> f32 CHW into `out[..output_len()]`. Only the pixels inside the crop
    /// are computed.
    ///
    /// `scratch` needs [`scratch_len`](Self::scratch_len) floats. Errors:
    /// [`Error::InvalidPreprocess`] for bad parameters, [`Error::BufferTooSmall`] for a short
    /// `scratch` or `out`. Never allocates.
    pub fn run(&self, frame: &Frame<'_>, scratch: &mut [f32], out: &mut [f32]) -> Result<(), Error> {
        let win = self.crop_window(frame.width, frame.height)?;
        let (rw, rh) = self.resized_size(frame.width, frame.height)?;
        let plan = Plan::new([0, 0, frame.width, frame.height], rw, rh, win, internal_channels(frame, self.channels))?;
        plan.run(frame, false, self.mean, self.std, self.channels as usize, scratch, out)
    }

    /// [`run`](Self::run) into a fresh vector of [`output_len`](Self::output_len) floats.
    #[cfg(feature = "alloc")]
    pub fn run_to_vec(&self, frame: &Frame<'_>) -> Result<alloc::vec::Vec<f32>, Error> {
        self.validate()?;
        let mut scratch = alloc::vec![0.0; self.scratch_len(frame.width, frame.height)];
        let mut out = alloc::vec![0.0; self.output_len()];
        self.run(frame, &mut scratch, &mut out)?;
        Ok(out)
    }
}

/// The general primitive both [`Preprocess::run`] and the host's training RandomResizedCrop use:
/// take the source box `(x0, y0, w, h)` in frame pixels (integer box, pixels outside it are never
/// read, like crop-then-resize), resample it antialiased-bilinear to `out_w` x `out_h`, optionally
/// mirror horizontally, normalize (`(x / 255 - mean) / std`), write `channels` x `out_h` x `out_w`
/// CHW into `out`.
///
/// Equals torchvision `resized_crop(t, y0, x0, h, w, [out_h, out_w], BILINEAR, antialias=True)`
/// (then `hflip` if `flip`) on a float tensor. `scratch` needs
/// [`resized_crop_scratch_len`]`(src_box, out_w, channels)` floats (or the exact
/// [`resized_crop_scratch_len_exact`]). Errors: [`Error::InvalidPreprocess`] for an empty box, a
/// box outside the frame, a zero output size, bad channels/mean/std; [`Error::BufferTooSmall`].
#[allow(clippy::too_many_arguments)]
pub fn resized_crop(
    frame: &Frame<'_>,
    src_box: [u32; 4],
    out_w: u32,
    out_h: u32,
    flip: bool,
    mean: [f32; 3],
    std: [f32; 3],
    channels: u8,
    scratch: &mut [f32],
    out: &mut [f32],
) -> Result<(), Error> {
    check_norm(mean, std, channels)?;
    let [x0, y0, w, h] = src_box;
    if w == 0 || h == 0 {
        return Err(Error::InvalidPreprocess("source box is empty"));
    }
    let inside = |o: u32, l: u32, n: u32| o.checked_add(l).is_some_and(|e| e <= n);
    if !inside(x0, w, frame.width) || !inside(y0, h, frame.height) {
        return Err(Error::InvalidPreprocess("source box is outside the frame"));
    }
    let plan = Plan::new(src_box, out_w, out_h, [0, 0, out_w, out_h], internal_channels(frame, channels))?;
    plan.run(frame, flip, mean, std, channels as usize, scratch, out)
}

/// Scratch floats [`resized_crop`] needs for this box, output width and channel count, for any
/// output height and pixel format (the bound for `out_h = 1`, where one output row reads all `h`
/// box rows: about `h * out_w * 4` floats for 3 channels, `h * out_w` for 1). 0 if the
/// arguments are invalid.
/// [`resized_crop_scratch_len_exact`] is tighter when `out_h` is known.
pub fn resized_crop_scratch_len(src_box: [u32; 4], out_w: u32, channels: u8) -> usize {
    // The vertical tap count never exceeds the box height, whatever out_h; with out_h = 1 it is
    // the box height, so that plan bounds all others.
    resized_crop_scratch_len_exact(src_box, out_w, 1, channels)
}

/// Scratch floats [`resized_crop`] needs for exactly this box, output size and channel count
/// (any pixel format). 0 if the arguments are invalid.
pub fn resized_crop_scratch_len_exact(src_box: [u32; 4], out_w: u32, out_h: u32, channels: u8) -> usize {
    match Plan::new(src_box, out_w, out_h, [0, 0, out_w, out_h], channels as usize) {
        Ok(p) => p.scratch_len().unwrap_or(0),
        Err(_) => 0,
    }
}

/// BT.601 limited-range ("TV range") YCbCr -> RGB on 0..255 floats, clamped to [0, 255], as
/// ffmpeg's swscale does by default (without its 8-bit fixed-point rounding):
///
/// ```text
/// R = 255/219 (Y - 16)                                   + 255/112 (1 - Kr)         (V - 128)
/// G = 255/219 (Y - 16) - 255/112 (1 - Kb) Kb / Kg (U - 128) - 255/112 (1 - Kr) Kr / Kg (V - 128)
/// B = 255/219 (Y - 16) + 255/112 (1 - Kb)        (U - 128)
/// Kr = 0.299, Kb = 0.114, Kg = 0.587
/// = 1.1643836 (Y-16) + 1.5960268 (V-128);  -0.3917623 (U-128) - 0.8129676 (V-128);  +2.0172321 (U-128)
/// ```
///
/// In a YUYV frame both pixels of a pair use the pair's U and V (no chroma interpolation, like
/// swscale without `full_chroma_int`).
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    yuv_apply(y, yuv_chroma(u, v))
}

/// The chroma terms `(R, G, B)` of [`yuv_to_rgb`], shared by the two pixels of a YUYV pair.
fn yuv_chroma(u: u8, v: u8) -> [f32; 3] {
    const CRV: f32 = 1.596_026_8;
    const CGU: f32 = 0.391_762_3;
    const CGV: f32 = 0.812_967_6;
    const CBU: f32 = 2.017_232_1;
    let d = u as f32 - 128.0;
    let e = v as f32 - 128.0;
    [CRV * e, -(CGU * d + CGV * e), CBU * d]
}

fn yuv_apply(y: u8, chroma: [f32; 3]) -> [f32; 3] {
    const CY: f32 = 255.0 / 219.0;
    let c = CY * (y as f32 - 16.0);
    [clamp255(c + chroma[0]), clamp255(c + chroma[1]), clamp255(c + chroma[2])]
}

/// PIL's luma weights (`L = R * 299/1000 + G * 587/1000 + B * 114/1000`).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Clamps to [0, 255] (written so that it compiles to a max and a min instruction).
fn clamp255(x: f32) -> f32 {
    let x = if x > 0.0 { x } else { 0.0 };
    if x < 255.0 {
        x
    } else {
        255.0
    }
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    r * LUMA[0] + g * LUMA[1] + b * LUMA[2]
}

/// `int(round(d / 2))` with Python's round half to even, `d = size - crop`.
fn center_offset(size: u32, crop: u32) -> u32 {
    let d = size.saturating_sub(crop);
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

fn check_norm(mean: [f32; 3], std: [f32; 3], channels: u8) -> Result<(), Error> {
    if channels != 1 && channels != 3 {
        return Err(Error::InvalidPreprocess("channels must be 1 or 3"));
    }
    for c in 0..channels as usize {
        if !mean[c].is_finite() {
            return Err(Error::InvalidPreprocess("mean must be finite"));
        }
        if !(std[c].is_finite() && std[c] > 0.0) {
            return Err(Error::InvalidPreprocess("std must be finite and positive"));
        }
    }
    Ok(())
}

/// Channels carried through the resampling: 1 for gray frames or gray output, else 3.
fn internal_channels(frame: &Frame<'_>, channels: u8) -> usize {
    if channels == 1 || frame.format == PixelFormat::Gray8 {
        1
    } else {
        3
    }
}

fn abs(x: f32) -> f32 {
    if x < 0.0 {
        -x
    } else {
        x
    }
}

/// The bilinear (triangle) filter.
fn tri(x: f32) -> f32 {
    let a = abs(x);
    if a < 1.0 {
        1.0 - a
    } else {
        0.0
    }
}

/// Resampling of one axis: `in_len` source samples to `out_len` samples (the full resized size).
#[derive(Clone, Copy, Debug)]
struct Axis {
    in_len: usize,
    scale: f32,
    support: f32,
    invscale: f32,
    /// Taps per output sample (zero-padded to a fixed count, `1 <= taps <= in_len`).
    taps: usize,
    identity: bool,
}

impl Axis {
    /// Resampling `in_len` samples to `out_len`, of which outputs `lo..hi` will be computed;
    /// `in_len`, `out_len` in `1..=MAX_DIM` and `lo < hi <= out_len` (checked by the caller).
    fn new(in_len: u32, out_len: u32, lo: usize, hi: usize) -> Axis {
        let in_len = in_len as usize;
        if in_len == out_len as usize {
            return Axis { in_len, scale: 1.0, support: 1.0, invscale: 1.0, taps: 1, identity: true };
        }
        let scale = in_len as f32 / out_len as f32;
        let (support, invscale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
        let mut axis = Axis { in_len, scale, support, invscale, taps: 1, identity: false };
        // The fixed tap count: the widest nonzero extent among the outputs computed (about
        // 2 * support + 1; an O(hi - lo) loop, cheap next to the resampling).
        axis.taps = (lo..hi).map(|i| axis.extent(i).1).max().unwrap_or(1).clamp(1, in_len);
        axis
    }

    /// The nonzero extent `(xmin, xsize, center)` of output `i`: source samples
    /// `xmin..xmin + xsize`, `xmin + xsize <= in_len`.
    fn extent(&self, i: usize) -> (usize, usize, f32) {
        if self.identity {
            return (i.min(self.in_len - 1), 1, 0.0);
        }
        let center = self.scale * (i as f32 + 0.5);
        // `as` truncates toward zero and saturates, like the C++ static_cast<int64_t>.
        let xmin = ((center - self.support + 0.5) as i64).clamp(0, self.in_len as i64);
        let xmax = ((center + self.support + 0.5) as i64).min(self.in_len as i64);
        (xmin as usize, (xmax - xmin).max(0) as usize, center)
    }

    /// First source sample and the nonzero extent `(start, xmin, xsize, center)` of output `i`;
    /// `start <= xmin`, `xmin - start + xsize <= taps`, `start + taps <= in_len`.
    fn window(&self, i: usize) -> (usize, usize, usize, f32) {
        let (xmin, xsize, center) = self.extent(i);
        let start = xmin.min(self.in_len - self.taps);
        // Only clamps for outputs outside the range the tap count was fitted to.
        let xsize = xsize.min(self.taps - (xmin - start));
        (start, xmin, xsize, center)
    }

    /// Writes the `taps` normalized weights of output `i` into `w[..taps]`; returns the start.
    fn weights(&self, i: usize, w: &mut [f32]) -> usize {
        let (start, xmin, xsize, center) = self.window(i);
        let w = &mut w[..self.taps];
        w.fill(0.0);
        if self.identity {
            w[0] = 1.0;
            return start;
        }
        let nz = &mut w[xmin - start..xmin - start + xsize];
        let mut total = 0.0;
        for (j, wj) in nz.iter_mut().enumerate() {
            *wj = tri(((xmin + j) as f32 - center + 0.5) * self.invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in nz.iter_mut() {
                *wj /= total;
            }
        }
        start
    }
}

/// One resampling job: a source box resampled to a `full_w` x `full_h` image of which only the
/// window `[ox, oy, ow, oh]` is computed.
#[derive(Clone, Copy, Debug)]
struct Plan {
    bx: usize,
    by: usize,
    ax: Axis,
    ay: Axis,
    ox: usize,
    oy: usize,
    ow: usize,
    oh: usize,
    /// Channels carried through resampling (1 or 3).
    cin: usize,
    /// Box-relative source columns `span_lo..span_lo + span_len` read by the window.
    span_lo: usize,
    span_len: usize,
}

impl Plan {
    fn new(src_box: [u32; 4], full_w: u32, full_h: u32, win: [u32; 4], cin: usize) -> Result<Plan, Error> {
        let [bx, by, bw, bh] = src_box;
        let [ox, oy, ow, oh] = win;
        if bw == 0 || bh == 0 {
            return Err(Error::InvalidPreprocess("source box is empty"));
        }
        if full_w == 0 || full_h == 0 || ow == 0 || oh == 0 {
            return Err(Error::InvalidPreprocess("output size must be nonzero"));
        }
        if bw > MAX_DIM || bh > MAX_DIM || full_w > MAX_DIM || full_h > MAX_DIM {
            return Err(Error::InvalidPreprocess("size is above MAX_DIM"));
        }
        if ox.checked_add(ow).is_none_or(|e| e > full_w) || oy.checked_add(oh).is_none_or(|e| e > full_h) {
            return Err(Error::InvalidPreprocess("crop window is outside the resized image"));
        }
        if cin != 1 && cin != 3 {
            return Err(Error::InvalidPreprocess("channels must be 1 or 3"));
        }
        let (ox, oy, ow, oh) = (ox as usize, oy as usize, ow as usize, oh as usize);
        let ax = Axis::new(bw, full_w, ox, ox + ow);
        let ay = Axis::new(bh, full_h, oy, oy + oh);
        let span_lo = ax.window(ox).0;
        let span_hi = ax.window(ox + ow - 1).0 + ax.taps;
        Ok(Plan { bx: bx as usize, by: by as usize, ax, ay, ox, oy, ow, oh, cin, span_lo, span_len: span_hi - span_lo })
    }

    fn out_len(&self, channels: usize) -> Result<usize, Error> {
        channels
            .checked_mul(self.ow)
            .and_then(|n| n.checked_mul(self.oh))
            .ok_or(Error::InvalidPreprocess("output does not fit in memory"))
    }

    /// Floats per pixel in the working buffers: color pixels are padded to 4 (`R, G, B, 0`) so
    /// the per-pixel arithmetic maps onto 4-lane SIMD.
    fn stride(&self) -> usize {
        if self.cin == 3 {
            4
        } else {
            1
        }
    }

    /// Scratch regions: x tap starts (`ow`, as `u32` relative to `span_lo`), x weights
    /// (`ow * taps_x`), y weights (`taps_y`),
    /// one source line (`span_len * stride`), the row ring (`taps_y * ow * stride`), the
    /// accumulator row (`ow * stride`).
    fn regions(&self) -> Option<[usize; 6]> {
        let row = self.ow.checked_mul(self.stride())?;
        Some([
            self.ow,
            self.ow.checked_mul(self.ax.taps)?,
            self.ay.taps,
            self.span_len.checked_mul(self.stride())?,
            self.ay.taps.checked_mul(row)?,
            row,
        ])
    }

    fn scratch_len(&self) -> Result<usize, Error> {
        self.regions()
            .and_then(|r| r.iter().try_fold(0usize, |a, &b| a.checked_add(b)))
            .ok_or(Error::InvalidPreprocess("scratch does not fit in memory"))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        frame: &Frame<'_>,
        flip: bool,
        mean: [f32; 3],
        std: [f32; 3],
        channels: usize,
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), Error> {
        check_norm(mean, std, channels as u8)?;
        // The box must lie in the frame (callers check; this keeps every index below in bounds).
        if self.bx + self.ax.in_len > frame.width as usize || self.by + self.ay.in_len > frame.height as usize {
            return Err(Error::InvalidPreprocess("source box is outside the frame"));
        }
        if self.cin == 3 && (channels != 3 || frame.format == PixelFormat::Gray8) {
            return Err(Error::InvalidPreprocess("channels must be 1 or 3"));
        }
        let out_len = self.out_len(channels)?;
        if out.len() < out_len {
            return Err(Error::BufferTooSmall { needed: out_len as u64, got: out.len() as u64 });
        }
        let need = self.scratch_len()?;
        if scratch.len() < need {
            return Err(Error::BufferTooSmall { needed: need as u64, got: scratch.len() as u64 });
        }
        let [n_xs, n_xw, n_yw, n_line, n_ring, n_acc] =
            self.regions().ok_or(Error::InvalidPreprocess("scratch does not fit in memory"))?;
        let (xs, rest) = scratch.split_at_mut(n_xs);
        // f32 -> u32 has the same size and alignment: this cannot fail.
        let xs: &mut [u32] =
            bytemuck::try_cast_slice_mut(xs).map_err(|_| Error::InvalidPreprocess("scratch cast failed"))?;
        let (xw, rest) = rest.split_at_mut(n_xw);
        let (ytab, rest) = rest.split_at_mut(n_yw);
        let (line, rest) = rest.split_at_mut(n_line);
        let (ring, rest) = rest.split_at_mut(n_ring);
        let acc = &mut rest[..n_acc];

        let (st, ow, kx, ky) = (self.stride(), self.ow, self.ax.taps, self.ay.taps);
        // Horizontal taps: per window column, the first source column (relative to the line
        // buffer; starts are nondecreasing, so >= span_lo) and `kx` weights.
        for (j, (start, w)) in xs.iter_mut().zip(xw.chunks_exact_mut(kx)).enumerate() {
            *start = (self.ax.weights(self.ox + j, w) - self.span_lo) as u32;
        }

        let row_len = ow * st;
        let plane = ow * self.oh;
        let inv255 = 1.0 / 255.0;
        let mut inv_std = [1.0f32; 3];
        for c in 0..channels {
            inv_std[c] = 1.0 / std[c];
        }
        // Rows below `next_row` are either in the ring or needed by no later output row.
        let mut next_row = 0usize;
        for r in 0..self.oh {
            let ys = self.ay.weights(self.oy + r, ytab);
            for y in next_row.max(ys)..ys + ky {
                self.load_line(frame, self.by + y, line);
                let slot = &mut ring[(y % ky) * row_len..][..row_len];
                if st == 4 {
                    filter_row4(xs, xw, kx, line, slot);
                } else {
                    filter_row1(xs, xw, kx, line, slot);
                }
            }
            next_row = ys + ky;

            acc.fill(0.0);
            for (k, &w) in ytab.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let src = &ring[((ys + k) % ky) * row_len..][..row_len];
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a += w * v;
                }
            }

            for c in 0..channels {
                let sc = if st == 4 { c } else { 0 };
                let dst = &mut out[c * plane + r * ow..][..ow];
                let (m, s) = (mean[c], inv_std[c]);
                if flip {
                    for (d, px) in dst.iter_mut().rev().zip(acc.chunks_exact(st)) {
                        *d = (px[sc] * inv255 - m) * s;
                    }
                } else {
                    for (d, px) in dst.iter_mut().zip(acc.chunks_exact(st)) {
                        *d = (px[sc] * inv255 - m) * s;
                    }
                }
            }
        }
        Ok(())
    }

    /// Converts frame row `fy`, box-relative columns `span_lo..span_lo + span_len`, to floats
    /// in 0..255: `R, G, B, 0` per pixel if `cin == 3`, else one value per pixel.
    fn load_line(&self, frame: &Frame<'_>, fy: usize, line: &mut [f32]) {
        let width = frame.width as usize;
        let x0 = self.bx + self.span_lo;
        let n = self.span_len;
        let bpp = frame.format.bytes_per_pixel() as usize;
        let row = &frame.data[fy * width * bpp..][..width * bpp];
        match (frame.format, self.cin) {
            (PixelFormat::Rgb8, 3) => {
                for (d, s) in line.chunks_exact_mut(4).zip(row[x0 * 3..(x0 + n) * 3].chunks_exact(3)) {
                    d.copy_from_slice(&[s[0] as f32, s[1] as f32, s[2] as f32, 0.0]);
                }
            }
            (PixelFormat::Rgb8, _) => {
                for (d, s) in line.iter_mut().zip(row[x0 * 3..(x0 + n) * 3].chunks_exact(3)) {
                    *d = luma(s[0] as f32, s[1] as f32, s[2] as f32);
                }
            }
            (PixelFormat::Gray8, _) => {
                for (d, &s) in line.iter_mut().zip(&row[x0..x0 + n]) {
                    *d = s as f32;
                }
            }
            (PixelFormat::Yuyv, _) => {
                let color = self.cin == 3;
                let put = |line: &mut [f32], i: usize, rgb: [f32; 3]| {
                    if color {
                        line[4 * i..4 * i + 4].copy_from_slice(&[rgb[0], rgb[1], rgb[2], 0.0]);
                    } else {
                        line[i] = luma(rgb[0], rgb[1], rgb[2]);
                    }
                };
                let (mut x, end, mut i) = (x0, x0 + n, 0);
                if x % 2 == 1 {
                    // The span starts on the second pixel of a pair.
                    let q = &row[2 * (x - 1)..][..4];
                    put(line, i, yuv_apply(q[2], yuv_chroma(q[1], q[3])));
                    (x, i) = (x + 1, i + 1);
                }
                let pairs = (end - x) / 2;
                for q in row[2 * x..2 * (x + 2 * pairs)].chunks_exact(4) {
                    let chroma = yuv_chroma(q[1], q[3]);
                    put(line, i, yuv_apply(q[0], chroma));
                    put(line, i + 1, yuv_apply(q[2], chroma));
                    i += 2;
                }
                x += 2 * pairs;
                if x < end {
                    // The span ends on the first pixel of a pair.
                    let q = &row[2 * x..][..4];
                    put(line, i, yuv_apply(q[0], yuv_chroma(q[1], q[3])));
                }
            }
        }
    }
}

/// Horizontal pass of one color line (4 floats per pixel), column `j` reading line pixels
/// `xs[j]..xs[j] + kx`: `dst[4 j + c] = sum_k xw[j kx + k] * line[4 (xs[j] + k) + c]`.
fn filter_row4(xs: &[u32], xw: &[f32], kx: usize, line: &[f32], dst: &mut [f32]) {
    for ((&s, w), d) in xs.iter().zip(xw.chunks_exact(kx)).zip(dst.chunks_exact_mut(4)) {
        let px = &line[4 * s as usize..][..4 * kx];
        let mut a = [0.0f32; 4];
        for (&wk, p) in w.iter().zip(px.chunks_exact(4)) {
            for c in 0..4 {
                a[c] += wk * p[c];
            }
        }
        d.copy_from_slice(&a);
    }
}

/// Horizontal pass of one single-channel line: `dst[j] = sum_k xw[j kx + k] * line[xs[j] + k]`.
fn filter_row1(xs: &[u32], xw: &[f32], kx: usize, line: &[f32], dst: &mut [f32]) {
    for ((&s, w), d) in xs.iter().zip(xw.chunks_exact(kx)).zip(dst.iter_mut()) {
        let px = &line[s as usize..][..kx];
        let mut a = 0.0f32;
        for (&wk, &p) in w.iter().zip(px) {
            a += wk * p;
        }
        *d = a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gray(w: u32, h: u32) -> std::vec::Vec<u8> {
        (0..w * h).map(|i| (i * 37 % 251) as u8).collect()
    }

    /// `resized_crop` with buffers of the advertised sizes.
    #[allow(clippy::too_many_arguments)]
    fn rc(
        f: &Frame<'_>,
        b: [u32; 4],
        ow: u32,
        oh: u32,
        flip: bool,
        m: [f32; 3],
        s: [f32; 3],
        ch: u8,
    ) -> std::vec::Vec<f32> {
        let mut scratch = vec![0.0; resized_crop_scratch_len(b, ow, ch)];
        let mut out = vec![0.0; ch as usize * (ow * oh) as usize];
        resized_crop(f, b, ow, oh, flip, m, s, ch, &mut scratch, &mut out).unwrap();
        out
    }

    /// `Preprocess::run` with buffers of the advertised sizes.
    fn pre(p: &Preprocess, f: &Frame<'_>) -> std::vec::Vec<f32> {
        let mut scratch = vec![0.0; p.scratch_len(f.width(), f.height())];
        let mut out = vec![0.0; p.output_len()];
        p.run(f, &mut scratch, &mut out).unwrap();
        out
    }

    #[test]
    fn frame_checks_sizes() {
        let d = [0u8; 12];
        assert_eq!(Frame::new(&d, 2, 2, PixelFormat::Rgb8).unwrap().width(), 2);
        assert_eq!(Frame::new(&d, 2, 3, PixelFormat::Rgb8), Err(Error::FrameSize { expected: 18, got: 12 }));
        assert_eq!(Frame::new(&d[..11], 2, 2, PixelFormat::Rgb8), Err(Error::FrameSize { expected: 12, got: 11 }));
        assert!(matches!(Frame::new(&d, 0, 2, PixelFormat::Gray8), Err(Error::InvalidPreprocess(_))));
        assert!(matches!(Frame::new(&d, 2, 0, PixelFormat::Gray8), Err(Error::InvalidPreprocess(_))));
        assert!(matches!(Frame::new(&d[..6], 3, 1, PixelFormat::Yuyv), Err(Error::InvalidPreprocess(_))));
        assert!(Frame::new(&d, 2, 3, PixelFormat::Yuyv).is_ok());
        assert_eq!(PixelFormat::Yuyv.frame_len(640, 480), 614_400);
        assert_eq!(PixelFormat::Rgb8.frame_len(u32::MAX, u32::MAX), u64::MAX);
        let f = Frame::new(&d, 4, 3, PixelFormat::Gray8).unwrap();
        assert_eq!((f.height(), f.format(), f.data().len()), (3, PixelFormat::Gray8, 12));
    }

    #[test]
    fn validate_rejects_bad_parameters() {
        assert_eq!(Preprocess::IMAGENET_EVAL.validate(), Ok(()));
        assert_eq!(Preprocess::FASHION_MNIST.validate(), Ok(()));
        let bad = |f: fn(&mut Preprocess)| {
            let mut p = Preprocess::IMAGENET_EVAL;
            f(&mut p);
            matches!(p.validate(), Err(Error::InvalidPreprocess(_)))
        };
        assert!(bad(|p| p.crop = 257));
        assert!(bad(|p| p.crop = 0));
        assert!(bad(|p| p.resize = 0));
        assert!(bad(|p| p.channels = 2));
        assert!(bad(|p| p.std[2] = 0.0));
        assert!(bad(|p| p.std[0] = -1.0));
        assert!(bad(|p| p.mean[1] = f32::NAN));
        assert!(bad(|p| p.std[1] = f32::INFINITY));
        // Unused channels are not checked.
        let mut p = Preprocess::FASHION_MNIST;
        p.std[2] = 0.0;
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(Preprocess::IMAGENET_EVAL.output_len(), 3 * 224 * 224);
        assert_eq!(Preprocess::FASHION_MNIST.output_len(), 28 * 28);
    }

    #[test]
    fn run_reports_errors() {
        let d = gray(64 * 3, 48);
        let f = Frame::new(&d, 64, 48, PixelFormat::Rgb8).unwrap();
        let p = Preprocess { resize: 32, crop: 24, ..Preprocess::IMAGENET_EVAL };
        let n = p.scratch_len(64, 48);
        assert!(n > 0);
        let mut scratch = vec![0.0; n];
        let mut out = vec![0.0; p.output_len()];
        assert_eq!(p.run(&f, &mut scratch, &mut out), Ok(()));
        assert_eq!(
            p.run(&f, &mut scratch[..n - 1], &mut out),
            Err(Error::BufferTooSmall { needed: n as u64, got: n as u64 - 1 })
        );
        let k = out.len();
        assert_eq!(
            p.run(&f, &mut scratch, &mut out[..k - 1]),
            Err(Error::BufferTooSmall { needed: k as u64, got: k as u64 - 1 })
        );
        let q = Preprocess { crop: 33, ..p };
        assert!(matches!(q.run(&f, &mut scratch, &mut out), Err(Error::InvalidPreprocess(_))));
        assert_eq!(q.scratch_len(64, 48), 0);
        assert_eq!(p.scratch_len(0, 48), 0);
        // A 1 x 100000 frame would resize to 32 x 3_200_000 rows: fine, only the crop is computed.
        let tall = vec![7u8; 100_000];
        let f = Frame::new(&tall, 1, 100_000, PixelFormat::Gray8).unwrap();
        assert_eq!(p.run(&f, &mut vec![0.0; p.scratch_len(1, 100_000)], &mut out), Ok(()));
        let want = (7.0 / 255.0 - p.mean[0]) / p.std[0];
        assert!(out.iter().take(24 * 24).all(|&v| (v - want).abs() < 1e-5));
        // Too large once resized.
        let f = Frame::new(&tall, 1, 100_000, PixelFormat::Gray8).unwrap();
        let big = Preprocess { resize: 256, crop: 224, ..p };
        assert!(matches!(big.run(&f, &mut scratch, &mut out), Err(Error::InvalidPreprocess(_))));
    }

    #[test]
    fn resized_crop_reports_errors() {
        let d = gray(16, 8);
        let f = Frame::new(&d, 16, 8, PixelFormat::Gray8).unwrap();
        let (m, s) = ([0.5; 3], [0.5; 3]);
        let mut scratch = vec![0.0; 4096];
        let mut out = vec![0.0; 3 * 64];
        let inv = |r: Result<(), Error>| matches!(r, Err(Error::InvalidPreprocess(_)));
        assert!(inv(resized_crop(&f, [0, 0, 17, 8], 8, 8, false, m, s, 3, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [10, 0, 7, 8], 8, 8, false, m, s, 3, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [u32::MAX, 0, 2, 8], 8, 8, false, m, s, 3, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [0, 0, 0, 8], 8, 8, false, m, s, 3, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [0, 0, 4, 4], 0, 8, false, m, s, 3, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [0, 0, 4, 4], 8, 8, false, m, s, 2, &mut scratch, &mut out)));
        assert!(inv(resized_crop(&f, [0, 0, 4, 4], 8, 8, false, m, [0.5, 0.0, 0.5], 3, &mut scratch, &mut out)));
        assert_eq!(
            resized_crop(&f, [0, 0, 4, 4], 8, 8, false, m, s, 3, &mut scratch, &mut out[..191]),
            Err(Error::BufferTooSmall { needed: 192, got: 191 })
        );
        let n = resized_crop_scratch_len_exact([0, 0, 4, 4], 8, 8, 3);
        assert!(n <= resized_crop_scratch_len([0, 0, 4, 4], 8, 3));
        assert!(matches!(
            resized_crop(&f, [0, 0, 4, 4], 8, 8, false, m, s, 3, &mut scratch[..1], &mut out),
            Err(Error::BufferTooSmall { .. })
        ));
        assert_eq!(resized_crop(&f, [0, 0, 4, 4], 8, 8, false, m, s, 3, &mut scratch[..n], &mut out), Ok(()));
        assert_eq!(resized_crop_scratch_len([0, 0, 4, 0], 8, 3), 0);
        assert_eq!(resized_crop_scratch_len([0, 0, 4, 4], 8, 2), 0);
    }

    #[test]
    fn identity_and_flip() {
        let d = gray(5, 4);
        let f = Frame::new(&d, 5, 4, PixelFormat::Gray8).unwrap();
        let (m, s) = ([0.25, 0.5, 0.75], [0.5, 0.25, 2.0]);
        let out = rc(&f, [0, 0, 5, 4], 5, 4, false, m, s, 3);
        let flipped = rc(&f, [0, 0, 5, 4], 5, 4, true, m, s, 3);
        for c in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    let want = (d[y * 5 + x] as f32 / 255.0 - m[c]) / s[c];
                    assert!((out[c * 20 + y * 5 + x] - want).abs() < 1e-6);
                    assert_eq!(flipped[c * 20 + y * 5 + 4 - x], out[c * 20 + y * 5 + x]);
                }
            }
        }
        // A sub-box at the same size is a plain crop.
        let sub = rc(&f, [1, 2, 3, 2], 3, 2, false, m, s, 1);
        assert!((sub[0] - (d[2 * 5 + 1] as f32 / 255.0 - m[0]) / s[0]).abs() < 1e-6);
    }

    #[test]
    fn constant_images_stay_constant() {
        let rgb: std::vec::Vec<u8> = (0..37 * 23).flat_map(|_| [200u8, 100, 50]).collect();
        let f = Frame::new(&rgb, 37, 23, PixelFormat::Rgb8).unwrap();
        for (resize, crop) in [(8, 7), (23, 23), (64, 50), (3, 1)] {
            let p = Preprocess { resize, crop, ..Preprocess::IMAGENET_EVAL };
            let out = pre(&p, &f);
            for c in 0..3 {
                let want = ([200.0, 100.0, 50.0][c] / 255.0 - p.mean[c]) / p.std[c];
                let plane = &out[c * (crop * crop) as usize..][..(crop * crop) as usize];
                assert!(plane.iter().all(|&v| (v - want).abs() < 1e-5), "{resize} {crop}");
            }
            let g = pre(&Preprocess { channels: 1, ..p }, &f);
            let l = 200.0 * 0.299 + 100.0 * 0.587 + 50.0 * 0.114;
            let want = (l / 255.0 - p.mean[0]) / p.std[0];
            assert!(g.iter().all(|&v| (v - want).abs() < 1e-5));
        }
    }

    #[test]
    fn gray_yuyv_and_rgb_agree() {
        // YUYV with neutral chroma is gray: R = G = B = 255/219 (Y - 16).
        let (w, h) = (10u32, 6u32);
        let ys: std::vec::Vec<u8> = (0..w * h).map(|i| 16 + (i * 7 % 219) as u8).collect();
        let yuyv: std::vec::Vec<u8> = ys.iter().flat_map(|&y| [y, 128]).collect();
        let rgb: std::vec::Vec<u8> = ys
            .iter()
            .flat_map(|&y| {
                let v = yuv_to_rgb(y, 128, 128)[0];
                [v, v, v]
            })
            .map(|v| v as u8)
            .collect();
        assert_eq!(yuv_to_rgb(16, 128, 128), [0.0; 3]);
        assert!(yuv_to_rgb(235, 128, 128).iter().all(|&v| (v - 255.0).abs() < 1e-3));
        let fy = Frame::new(&yuyv, w, h, PixelFormat::Yuyv).unwrap();
        let p = Preprocess { resize: 4, crop: 3, ..Preprocess::IMAGENET_EVAL };
        let a = pre(&p, &fy);
        // Gray frame replicated to 3 channels gives the same as the equivalent RGB frame.
        let g: std::vec::Vec<u8> = rgb.chunks(3).map(|c| c[0]).collect();
        let fg = Frame::new(&g, w, h, PixelFormat::Gray8).unwrap();
        let fr = Frame::new(&rgb, w, h, PixelFormat::Rgb8).unwrap();
        let (b, c) = (pre(&p, &fg), pre(&p, &fr));
        for ((x, y), z) in a.iter().zip(&b).zip(&c) {
            assert!((y - z).abs() < 1e-6);
            // The RGB frame was truncated to u8, the YUYV one is exact.
            assert!((x - y).abs() < 1.0 / 255.0 / 0.2 + 1e-6);
        }
    }

    #[test]
    fn center_offset_rounds_half_to_even() {
        // Python: [int(round(d / 2)) for d in range(8)] == [0, 0, 1, 2, 2, 2, 3, 4]
        let got: std::vec::Vec<u32> = (0..8).map(|d| center_offset(10 + d, 10)).collect();
        assert_eq!(got, [0, 0, 1, 2, 2, 2, 3, 4]);
        let p = Preprocess::IMAGENET_EVAL;
        assert_eq!(p.resized_size(300, 217), Ok((353, 256)));
        assert_eq!(p.crop_window(300, 217), Ok([64, 16, 224, 224]));
        assert_eq!(p.resized_size(1920, 1080), Ok((455, 256)));
    }

    #[test]
    fn taps_are_normalized_and_in_bounds() {
        for (i, o) in [(1u32, 7u32), (7, 1), (10, 3), (3, 10), (1080, 256), (256, 1080), (5, 5), (2, 1)] {
            let a = Axis::new(i, o, 0, o as usize);
            let mut w = vec![0.0; a.taps];
            for j in 0..o as usize {
                let s = a.weights(j, &mut w);
                assert!(s + a.taps <= i as usize);
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{i}->{o} at {j}");
                assert!(w.iter().all(|&v| v >= 0.0));
            }
        }
    }

    fn any_format() -> impl Strategy<Value = PixelFormat> {
        prop_oneof![Just(PixelFormat::Rgb8), Just(PixelFormat::Gray8), Just(PixelFormat::Yuyv)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn never_panics(
            fmt in any_format(),
            w in 1u32..40, h in 1u32..40,
            bx in 0u32..45, by in 0u32..45, bw in 0u32..45, bh in 0u32..45,
            ow in 0u32..50, oh in 0u32..50,
            flip in any::<bool>(),
            channels in 0u8..5,
            resize in 0u32..60, crop in 0u32..60,
            scratch_len in 0usize..20_000, out_len in 0usize..8_000,
            seed in any::<u8>(),
        ) {
            let w = if fmt == PixelFormat::Yuyv { w * 2 } else { w };
            let data: std::vec::Vec<u8> = (0..fmt.frame_len(w, h) as usize).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let frame = Frame::new(&data, w, h, fmt).unwrap();
            let (m, s) = ([0.5, 0.4, 0.3], [0.2, 0.3, 0.4]);
            let mut scratch = vec![0.0; scratch_len];
            let mut out = vec![0.0; out_len];
            let b = [bx, by, bw, bh];
            let _ = resized_crop(&frame, b, ow, oh, flip, m, s, channels, &mut scratch, &mut out);

            // With the advertised buffer sizes, valid arguments succeed and give finite values.
            let sizes_ok = bw > 0 && bh > 0 && ow > 0 && (channels == 1 || channels == 3);
            let n = resized_crop_scratch_len(b, ow, channels);
            prop_assert_eq!(n == 0, !sizes_ok);
            if sizes_ok && oh > 0 && bx + bw <= w && by + bh <= h {
                prop_assert!(resized_crop_scratch_len_exact(b, ow, oh, channels) <= n);
                let mut scratch = vec![f32::NAN; n];
                let mut out = vec![f32::NAN; channels as usize * (ow * oh) as usize];
                prop_assert_eq!(resized_crop(&frame, b, ow, oh, flip, m, s, channels, &mut scratch, &mut out), Ok(()));
                prop_assert!(out.iter().all(|v| v.is_finite() && *v >= (0.0 - 0.5) / 0.2 - 1e-4 && *v <= (1.0 - 0.3) / 0.2 + 1e-4));
            }

            let p = Preprocess { resize, crop, mean: m, std: s, channels };
            let _ = p.run(&frame, &mut scratch, &mut out);
            if p.validate().is_ok() {
                let mut scratch = vec![0.0; p.scratch_len(w, h)];
                let mut out = vec![f32::NAN; p.output_len()];
                prop_assert_eq!(p.run(&frame, &mut scratch, &mut out), Ok(()));
                prop_assert!(out.iter().all(|v| v.is_finite()));
            }
        }
    }
}
