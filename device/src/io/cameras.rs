//! What a V4L2 camera offers, and the capture mode `device live` picks from it: the pixel
//! formats (`VIDIOC_ENUM_FMT`) and frame sizes (`VIDIOC_ENUM_FRAMESIZES`) the driver lists, so
//! that `--source /dev/videoN` works without `--width/--height/--format` (they stay overrides),
//! and `device cameras` can list every camera.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shared::preprocess::PixelFormat;

use crate::io::source::StreamFormat;

use crate::io::v4l2::{ioc, xioctl, PIX_FMT_GREY, PIX_FMT_MJPEG, PIX_FMT_RGB24, PIX_FMT_YUYV, READ, WRITE};

/// `struct v4l2_fmtdesc`.
#[repr(C)]
#[derive(Clone, Copy)]
struct FmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

/// `struct v4l2_frmsizeenum`: the union holds a discrete size or a stepwise range.
#[repr(C)]
#[derive(Clone, Copy)]
struct FrmSizeEnum {
    index: u32,
    pixel_format: u32,
    type_: u32,
    /// discrete: width, height; stepwise/continuous: min_w, max_w, step_w, min_h, max_h, step_h.
    size: [u32; 6],
    reserved: [u32; 2],
}

pub const VIDIOC_ENUM_FMT: u32 = ioc(READ | WRITE, 2, std::mem::size_of::<FmtDesc>());
pub const VIDIOC_ENUM_FRAMESIZES: u32 = ioc(READ | WRITE, 74, std::mem::size_of::<FrmSizeEnum>());

const FRMSIZE_TYPE_DISCRETE: u32 = 1;

/// The sizes a camera offers for one pixel format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    Discrete(Vec<(u32, u32)>),
    /// Any size in these ranges (width min..=max by step, height likewise).
    Range { width: (u32, u32, u32), height: (u32, u32, u32) },
}

/// One pixel format a camera offers, with its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatSizes {
    pub fourcc: u32,
    pub description: String,
    pub sizes: Sizes,
}

/// The formats and sizes of the camera at `path`.
pub fn query(path: &Path) -> Result<Vec<FormatSizes>> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("device path contains a NUL byte")?;
    // SAFETY: plain open(2) on a NUL-terminated path.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot open camera {}", path.display()));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let f = fd.as_raw_fd();
    let mut formats = vec![];
    for index in 0.. {
        // SAFETY: all-zero bytes are valid for this plain-data struct.
        let mut d: FmtDesc = unsafe { std::mem::zeroed() };
        (d.index, d.type_) = (index, 1);
        if xioctl(f, VIDIOC_ENUM_FMT, &mut d).is_err() {
            if index == 0 {
                bail!("{} lists no capture formats (not a V4L2 camera?)", path.display());
            }
            break;
        }
        let end = d.description.iter().position(|&b| b == 0).unwrap_or(32);
        let description = String::from_utf8_lossy(&d.description[..end]).into_owned();
        let mut discrete = vec![];
        let mut range = None;
        for i in 0.. {
            // SAFETY: as above.
            let mut s: FrmSizeEnum = unsafe { std::mem::zeroed() };
            (s.index, s.pixel_format) = (i, d.pixelformat);
            if xioctl(f, VIDIOC_ENUM_FRAMESIZES, &mut s).is_err() {
                break;
            }
            if s.type_ == FRMSIZE_TYPE_DISCRETE {
                discrete.push((s.size[0], s.size[1]));
            } else {
                let z = s.size;
                range = Some(Sizes::Range { width: (z[0], z[1], z[2].max(1)), height: (z[3], z[4], z[5].max(1)) });
                break;
            }
        }
        let sizes = range.unwrap_or(Sizes::Discrete(discrete));
        formats.push(FormatSizes { fourcc: d.pixelformat, description, sizes });
    }
    Ok(formats)
}

/// The formats this crate reads, most preferred first: YUYV costs no decoding, MJPEG a JPEG
/// decode per frame (but reaches larger sizes over USB 2), RGB24 and GREY are rare.
const PREFERENCE: [u32; 4] = [PIX_FMT_YUYV, PIX_FMT_MJPEG, PIX_FMT_RGB24, PIX_FMT_GREY];

/// The frame size `device live` aims for: enough for a 224x224 crop with margin, and what
/// every UVC camera offers.
pub const TARGET: (u32, u32) = (640, 480);

/// The capture mode (fourcc, width, height) for a camera offering `formats`: the requested
/// format and size where given; else the supported format whose size is closest to [`TARGET`]
/// with both sides at least 224, the more preferred format on a tie.
pub fn choose(formats: &[FormatSizes], want_format: Option<u32>, want_size: Option<(u32, u32)>) -> Result<(u32, u32, u32)> {
    let mut best: Option<(u64, usize, (u32, u32, u32))> = None;
    for f in formats {
        let Some(rank) = PREFERENCE.iter().position(|&p| p == f.fourcc) else { continue };
        if want_format.is_some_and(|w| w != f.fourcc) {
            continue;
        }
        let candidates: Vec<(u32, u32)> = match (&f.sizes, want_size) {
            (Sizes::Discrete(s), Some(w)) => s.iter().copied().filter(|&s| s == w).collect(),
            (Sizes::Discrete(s), None) => s.clone(),
            (Sizes::Range { width, height }, want) => {
                let (w, h) = want.unwrap_or(TARGET);
                let fit = |v: u32, (lo, hi, step): (u32, u32, u32)| lo + (v.clamp(lo, hi) - lo) / step * step;
                // The grid point nearest the wanted size (the driver would adjust to it too).
                vec![(fit(w, *width), fit(h, *height))]
            }
        };
        for (w, h) in candidates {
            // Area away from the target; a side below 224 (the model's crop) ranks last.
            let small = u64::from(w < 224 || h < 224) << 40;
            let distance = small + (u64::from(w) * u64::from(h)).abs_diff(u64::from(TARGET.0) * u64::from(TARGET.1));
            if best.is_none_or(|(d, r, _)| (distance, rank) < (d, r)) {
                best = Some((distance, rank, (f.fourcc, w, h)));
            }
        }
    }
    match best {
        Some((_, _, mode)) => Ok(mode),
        None => bail!(
            "the camera offers no {} (it offers: {})",
            match (want_format, want_size) {
                (Some(f), Some((w, h))) => format!("{} at {w}x{h}", fourcc_text(f)),
                (Some(f), None) => fourcc_text(f),
                (None, Some((w, h))) => format!("YUYV, MJPEG, RGB24 or GREY mode at {w}x{h}"),
                (None, None) => "YUYV, MJPEG, RGB24 or GREY mode".into(),
            },
            describe(formats)
        ),
    }
}

/// The stream format of a V4L2 pixel format this crate reads.
pub fn stream_format(code: u32) -> Option<StreamFormat> {
    Some(match code {
        PIX_FMT_YUYV => StreamFormat::Raw(PixelFormat::Yuyv),
        PIX_FMT_MJPEG => StreamFormat::Mjpeg,
        PIX_FMT_RGB24 => StreamFormat::Raw(PixelFormat::Rgb8),
        PIX_FMT_GREY => StreamFormat::Raw(PixelFormat::Gray8),
        _ => return None,
    })
}

/// The V4L2 pixel format of a stream format.
pub fn pixel_format(format: StreamFormat) -> u32 {
    match format {
        StreamFormat::Raw(PixelFormat::Yuyv) => PIX_FMT_YUYV,
        StreamFormat::Mjpeg => PIX_FMT_MJPEG,
        StreamFormat::Raw(PixelFormat::Rgb8) => PIX_FMT_RGB24,
        StreamFormat::Raw(PixelFormat::Gray8) => PIX_FMT_GREY,
    }
}

/// The mode to open the camera at `path` in: [`choose`] over what it offers, `format` and
/// `size` (from the command line) as overrides.
pub fn negotiate(path: &Path, format: Option<StreamFormat>, size: Option<(u32, u32)>) -> Result<(StreamFormat, u32, u32)> {
    let offered = query(path)?;
    let (code, w, h) = choose(&offered, format.map(pixel_format), size).with_context(|| format!("{}", path.display()))?;
    let format = stream_format(code).context("chosen format")?;
    Ok((format, w, h))
}

/// `YUYV`, `MJPG`...
pub fn fourcc_text(code: u32) -> String {
    String::from_utf8_lossy(&code.to_le_bytes()).trim_end().to_string()
}

/// `YUYV 640x480 320x240, MJPG 1280x720`: one line for errors and `device cameras`.
pub fn describe(formats: &[FormatSizes]) -> String {
    formats
        .iter()
        .map(|f| {
            let sizes = match &f.sizes {
                Sizes::Discrete(s) => s.iter().map(|(w, h)| format!("{w}x{h}")).collect::<Vec<_>>().join(" "),
                Sizes::Range { width, height } => {
                    format!("{}x{}..{}x{}", width.0, height.0, width.1, height.1)
                }
            };
            format!("{} {sizes}", fourcc_text(f.fourcc))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `/dev/video*` nodes, in name order.
pub fn list() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::v4l2::fourcc;

    fn uvc() -> Vec<FormatSizes> {
        vec![
            FormatSizes {
                fourcc: PIX_FMT_YUYV,
                description: "YUYV 4:2:2".into(),
                sizes: Sizes::Discrete(vec![(1280, 720), (640, 480), (320, 240), (160, 120)]),
            },
            FormatSizes {
                fourcc: PIX_FMT_MJPEG,
                description: "Motion-JPEG".into(),
                sizes: Sizes::Discrete(vec![(1920, 1080), (1280, 720), (640, 480)]),
            },
            FormatSizes { fourcc: fourcc(b"H264"), description: "H.264".into(), sizes: Sizes::Discrete(vec![(640, 480)]) },
        ]
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<FmtDesc>(), 64);
        assert_eq!(std::mem::size_of::<FrmSizeEnum>(), 44);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_ENUM_FRAMESIZES, 0xc02c_564a);
    }

    #[test]
    fn the_mode_closest_to_640x480_in_the_preferred_format() {
        assert_eq!(choose(&uvc(), None, None).unwrap(), (PIX_FMT_YUYV, 640, 480));
        // Overrides: a format, a size, both.
        assert_eq!(choose(&uvc(), Some(PIX_FMT_MJPEG), None).unwrap(), (PIX_FMT_MJPEG, 640, 480));
        assert_eq!(choose(&uvc(), None, Some((1920, 1080))).unwrap(), (PIX_FMT_MJPEG, 1920, 1080));
        assert_eq!(choose(&uvc(), Some(PIX_FMT_YUYV), Some((320, 240))).unwrap(), (PIX_FMT_YUYV, 320, 240));
        // Only small sizes: still the closest. Nothing we read: an error that lists the offer.
        let tiny = [FormatSizes { fourcc: PIX_FMT_GREY, description: String::new(), sizes: Sizes::Discrete(vec![(160, 120), (320, 240)]) }];
        assert_eq!(choose(&tiny, None, None).unwrap(), (PIX_FMT_GREY, 320, 240));
        let e = choose(&uvc()[2..], None, None).unwrap_err().to_string();
        assert!(e.contains("offers no YUYV, MJPEG") && e.contains("H264 640x480"), "{e}");
        let e = choose(&uvc(), Some(PIX_FMT_RGB24), None).unwrap_err().to_string();
        assert!(e.contains("offers no RGB3") && e.contains("YUYV 1280x720 640x480"), "{e}");
        // Stepwise sizes (CSI bridges, virtual cameras): the target clamped to the range and step.
        let step = [FormatSizes {
            fourcc: PIX_FMT_YUYV,
            description: String::new(),
            sizes: Sizes::Range { width: (32, 1920, 16), height: (32, 1080, 8) },
        }];
        assert_eq!(choose(&step, None, None).unwrap(), (PIX_FMT_YUYV, 640, 480));
        assert_eq!(choose(&step, None, Some((1000, 500))).unwrap(), (PIX_FMT_YUYV, 992, 496));
    }
}
