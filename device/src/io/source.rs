//! Where `device live` gets frames: raw frames on stdin or in a file, an MJPEG stream or AVI,
//! a folder of images, or a V4L2 camera (with reconnection).

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use shared::preprocess::PixelFormat;

use crate::io::child::{self, ChildSource, VideoOptions};
use crate::io::decode::{DecodeLimits, JpegWalk};

/// How the bytes of a stream encode frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    Raw(PixelFormat),
    /// Concatenated JPEGs (an `.mjpeg` stream, ffmpeg `-f mjpeg`, or the frames inside an MJPEG AVI).
    Mjpeg,
}

impl std::str::FromStr for StreamFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "yuyv" | "yuyv422" => StreamFormat::Raw(PixelFormat::Yuyv),
            "rgb24" | "rgb" => StreamFormat::Raw(PixelFormat::Rgb8),
            "gray" | "gray8" => StreamFormat::Raw(PixelFormat::Gray8),
            "mjpeg" | "mjpg" | "jpeg" => StreamFormat::Mjpeg,
            _ => bail!("unknown --format `{s}` (expected yuyv, rgb24, gray or mjpeg)"),
        })
    }
}

/// A frame owned by the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedFrame {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Position in the source (0-based), counting skipped frames.
    pub index: u64,
}

impl OwnedFrame {
    pub fn frame(&self) -> Result<shared::preprocess::Frame<'_>> {
        shared::preprocess::Frame::new(&self.data, self.width, self.height, self.format)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// What a source produced.
#[derive(Debug)]
pub enum Next {
    Frame(OwnedFrame),
    /// A corrupt frame (undecodable JPEG, unreadable image): skipped and counted.
    Skipped(String),
    End,
}

pub trait FrameSource: Send {
    fn next(&mut self) -> Result<Next>;
    /// A live source (camera, pipe) drops stale frames; a replay (file, folder) processes all.
    fn is_live(&self) -> bool;
}

fn decode_jpeg(bytes: &[u8], index: u64, limits: &DecodeLimits) -> Result<OwnedFrame, String> {
    // Decoder panics are errors too (io::decode).
    let rgb = crate::io::decode::decode_jpeg(bytes, limits)
        .map_err(|e| format!("frame {index}: {e:#}"))?;
    let (width, height) = rgb.dimensions();
    Ok(OwnedFrame {
        data: rgb.into_raw(),
        width,
        height,
        format: PixelFormat::Rgb8,
        index,
    })
}

/// Raw frames of `width * height * bytes_per_pixel` bytes, back to back (ffmpeg `-f rawvideo`).
pub struct RawStream<R> {
    reader: R,
    width: u32,
    height: u32,
    format: PixelFormat,
    index: u64,
    live: bool,
}

impl<R: Read + Send> RawStream<R> {
    pub fn new(
        reader: R,
        width: u32,
        height: u32,
        format: PixelFormat,
        live: bool,
    ) -> Result<Self> {
        ensure!(
            width > 0 && height > 0,
            "raw frames need --width and --height"
        );
        ensure!(
            format != PixelFormat::Yuyv || width % 2 == 0,
            "YUYV frames need an even --width, got {width}"
        );
        Ok(RawStream {
            reader,
            width,
            height,
            format,
            index: 0,
            live,
        })
    }
}

impl<R: Read + Send> FrameSource for RawStream<R> {
    fn next(&mut self) -> Result<Next> {
        let len = self.format.frame_len(self.width, self.height) as usize;
        let mut data = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.reader.read(&mut data[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading raw frames"),
            }
        }
        if got == 0 {
            return Ok(Next::End);
        }
        if got < len {
            bail!(
                "the stream ended in the middle of frame {}: got {got} of {len} bytes. Frames must be exactly \
                 {}x{} {:?} ({len} bytes): check --width, --height and --format against the producer",
                self.index,
                self.width,
                self.height,
                self.format
            );
        }
        let index = self.index;
        self.index += 1;
        Ok(Next::Frame(OwnedFrame {
            data,
            width: self.width,
            height: self.height,
            format: self.format,
            index,
        }))
    }
    fn is_live(&self) -> bool {
        self.live
    }
}

/// Concatenated JPEGs split on the SOI (`FF D8`) and EOI (`FF D9`) markers. Bytes between
/// frames (AVI chunk headers, garbage) are ignored; a frame that does not decode is skipped.
pub struct MjpegStream<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    index: u64,
    live: bool,
    /// The size every frame must have (from --width/--height), if given.
    expect: Option<(u32, u32)>,
    limits: DecodeLimits,
    /// Bytes skipped while looking for the first JPEG.
    skipped_bytes: u64,
}

impl<R: Read + Send> MjpegStream<R> {
    pub fn new(reader: R, expect: Option<(u32, u32)>, live: bool) -> Self {
        MjpegStream {
            reader: BufReader::with_capacity(1 << 16, reader),
            buf: Vec::new(),
            index: 0,
            live,
            expect,
            limits: DecodeLimits::default(),
            skipped_bytes: 0,
        }
    }

    /// Frames over `limits` are skipped as corrupt.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The end of the stream outside a frame: an error when no JPEG was ever found (raw frames
    /// given as `--format mjpeg`), the end otherwise.
    fn end(&self) -> Result<Option<Vec<u8>>> {
        ensure!(
            self.index > 0 || self.skipped_bytes == 0,
            "no JPEG found in {} bytes (no FF D8 FF start of image): not an MJPEG stream, check --format",
            self.skipped_bytes
        );
        Ok(None)
    }

    /// Next JPEG's bytes, or None at the end of the stream.
    fn next_jpeg(&mut self) -> Result<Option<Vec<u8>>> {
        // Find SOI.
        let mut prev = 0u8;
        loop {
            let chunk = self.reader.fill_buf().context("reading the MJPEG stream")?;
            if chunk.is_empty() {
                return self.end();
            }
            let mut start = None;
            for (i, &b) in chunk.iter().enumerate() {
                if prev == 0xFF && b == 0xD8 {
                    start = Some(i + 1);
                    break;
                }
                prev = b;
            }
            match start {
                Some(n) => {
                    self.reader.consume(n);
                    self.skipped_bytes += n as u64;
                    break;
                }
                None => {
                    let n = chunk.len();
                    self.reader.consume(n);
                    self.skipped_bytes += n as u64;
                }
            }
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0xFF, 0xD8]);
        // Copy until EOI.
        loop {
            let chunk = self.reader.fill_buf().context("reading the MJPEG stream")?;
            if chunk.is_empty() {
                // FF D8 without a marker after it is not a JPEG, only bytes that look like one.
                if self.buf.get(2) != Some(&0xFF) {
                    self.skipped_bytes += self.buf.len() as u64;
                    return self.end();
                }
                // A producer that stopped (or was killed) in the middle of a frame.
                bail!(
                    "the stream ended in the middle of MJPEG frame {}: {} bytes without the end-of-image \
                     marker (FF D9)",
                    self.index,
                    self.buf.len()
                );
            }
            let mut end = None;
            let mut last = *self.buf.last().unwrap_or(&0);
            for (i, &b) in chunk.iter().enumerate() {
                if last == 0xFF && b == 0xD9 {
                    end = Some(i + 1);
                    break;
                }
                last = b;
            }
            match end {
                Some(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.reader.consume(n);
                    // An FF D9 inside an application segment (the end of an EXIF thumbnail in
                    // APP1) is not this JPEG's end: go on to the next one. Anything else ends
                    // the frame here, a broken one included (it is then skipped as corrupt).
                    let walk = crate::io::decode::walk_jpeg(&self.buf);
                    if !matches!(walk, Ok(JpegWalk::InSegment(0xE0..=0xEF))) {
                        return Ok(Some(std::mem::take(&mut self.buf)));
                    }
                }
                None => {
                    let n = chunk.len();
                    self.buf.extend_from_slice(chunk);
                    self.reader.consume(n);
                    ensure!(
                        self.buf.len() < 64 << 20,
                        "MJPEG frame {} is over 64 MiB without an end marker",
                        self.index
                    );
                }
            }
        }
    }
}

impl<R: Read + Send> FrameSource for MjpegStream<R> {
    fn next(&mut self) -> Result<Next> {
        let Some(jpeg) = self.next_jpeg()? else {
            return Ok(Next::End);
        };
        let index = self.index;
        self.index += 1;
        if let Some((w, h)) = self.expect {
            // The header's size first: a frame of the wrong size is not decoded at all.
            match crate::io::decode::jpeg_dimensions(&jpeg) {
                Ok((fw, fh)) => ensure!(
                    (fw, fh) == (w, h),
                    "MJPEG frame {index} is {fw}x{fh}, but --width/--height say {w}x{h}"
                ),
                Err(e) => return Ok(Next::Skipped(format!("frame {index}: {e:#}"))),
            }
        }
        match decode_jpeg(&jpeg, index, &self.limits) {
            Ok(mut f) => {
                if let Some((w, h)) = self.expect {
                    ensure!(
                        (f.width, f.height) == (w, h),
                        "MJPEG frame {index} decoded to {}x{}, but --width/--height say {w}x{h}",
                        f.width,
                        f.height
                    );
                }
                f.index = index;
                Ok(Next::Frame(f))
            }
            Err(why) => Ok(Next::Skipped(why)),
        }
    }
    fn is_live(&self) -> bool {
        self.live
    }
}

/// The images of a folder (png, jpg, jpeg, bmp, ppm, pgm, pnm), in name order.
pub struct DirSource {
    files: Vec<PathBuf>,
    pos: usize,
    limits: DecodeLimits,
}

impl DirSource {
    pub fn new(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "png" | "jpg" | "jpeg" | "bmp" | "ppm" | "pgm" | "pnm"
                    )
                })
            })
            .collect();
        files.sort();
        ensure!(
            !files.is_empty(),
            "folder {} holds no images (png, jpg, jpeg, bmp, ppm, pgm, pnm)",
            dir.display()
        );
        Ok(DirSource {
            files,
            pos: 0,
            limits: DecodeLimits::default(),
        })
    }

    /// Images over `limits` are skipped as corrupt.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl FrameSource for DirSource {
    fn next(&mut self) -> Result<Next> {
        let Some(path) = self.files.get(self.pos) else {
            return Ok(Next::End);
        };
        let index = self.pos as u64;
        self.pos += 1;
        match crate::io::decode::open_image(path, &self.limits) {
            Ok(img) => Ok(Next::Frame(OwnedFrame {
                width: img.width(),
                height: img.height(),
                data: img.into_raw(),
                format: PixelFormat::Rgb8,
                index,
            })),
            Err(e) => Ok(Next::Skipped(format!("{e:#}"))),
        }
    }
    fn is_live(&self) -> bool {
        false
    }
}

/// A V4L2 camera. Errors while streaming close it; [`Reconnecting`] reopens it.
pub struct CameraSource {
    camera: crate::io::v4l2::Camera,
    format: StreamFormat,
    index: u64,
    buf: Vec<u8>,
}

impl CameraSource {
    pub fn open(path: &Path, width: u32, height: u32, format: StreamFormat) -> Result<Self> {
        let fourcc = crate::io::cameras::pixel_format(format);
        let camera = crate::io::v4l2::Camera::open(path, width, height, fourcc)?;
        if (camera.width, camera.height) != (width, height) {
            eprintln!(
                "note: {} delivers {}x{} instead of {width}x{height}",
                path.display(),
                camera.width,
                camera.height
            );
        }
        Ok(CameraSource {
            camera,
            format,
            index: 0,
            buf: Vec::new(),
        })
    }
}

impl FrameSource for CameraSource {
    fn next(&mut self) -> Result<Next> {
        self.camera.read_frame(&mut self.buf)?;
        let index = self.index;
        self.index += 1;
        match self.format {
            StreamFormat::Mjpeg => Ok(match decode_jpeg(&self.buf, index, &DecodeLimits::default()) {
                Ok(f) => Next::Frame(f),
                Err(why) => Next::Skipped(why),
            }),
            StreamFormat::Raw(format) => {
                let (w, h) = (self.camera.width, self.camera.height);
                let len = format.frame_len(w, h) as usize;
                if self.buf.len() < len {
                    return Ok(Next::Skipped(format!(
                        "frame {index}: {} bytes, expected {len}",
                        self.buf.len()
                    )));
                }
                Ok(Next::Frame(OwnedFrame {
                    data: self.buf[..len].to_vec(),
                    width: w,
                    height: h,
                    format,
                    index,
                }))
            }
        }
    }
    fn is_live(&self) -> bool {
        true
    }
}

/// Reopens a source that fails (a camera unplugged for a moment): up to `retries` attempts with
/// doubling delays, then gives up with an error that says so.
pub struct Reconnecting<F> {
    open: F,
    current: Option<Box<dyn FrameSource>>,
    pub retries: u32,
    pub first_delay: Duration,
    what: String,
    /// Reconnections so far.
    pub reconnects: u32,
}

impl<F: FnMut() -> Result<Box<dyn FrameSource>> + Send> Reconnecting<F> {
    pub fn new(
        what: impl Into<String>,
        mut open: F,
        retries: u32,
        first_delay: Duration,
    ) -> Result<Self> {
        let current = Some(open()?);
        Ok(Reconnecting {
            open,
            current,
            retries,
            first_delay,
            what: what.into(),
            reconnects: 0,
        })
    }
}

impl<F: FnMut() -> Result<Box<dyn FrameSource>> + Send> FrameSource for Reconnecting<F> {
    fn next(&mut self) -> Result<Next> {
        let err = match self.current.as_mut().map(|s| s.next()) {
            Some(Ok(n)) => return Ok(n),
            Some(Err(e)) => e,
            None => anyhow::anyhow!("not open"),
        };
        self.current = None;
        let mut delay = self.first_delay;
        let mut last = err;
        for attempt in 1..=self.retries {
            eprintln!(
                "warning: {}: {last:#}; reconnecting ({attempt}/{}) in {delay:?}",
                self.what, self.retries
            );
            std::thread::sleep(delay);
            delay *= 2;
            match (self.open)() {
                Ok(mut s) => match s.next() {
                    Ok(n) => {
                        self.current = Some(s);
                        self.reconnects += 1;
                        return Ok(n);
                    }
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last).with_context(|| {
            format!(
                "{} is gone: gave up after {} reconnection attempts",
                self.what, self.retries
            )
        })
    }
    fn is_live(&self) -> bool {
        true
    }
}

/// Opens `--source`: `-` (stdin), a folder, a `/dev/video*` camera, or a file (MJPEG/AVI by
/// extension or `--format mjpeg`, raw frames otherwise), with the default [`DecodeLimits`].
pub fn open_source(
    source: &str,
    width: u32,
    height: u32,
    format: StreamFormat,
) -> Result<Box<dyn FrameSource>> {
    open_source_with_limits(source, width, height, format, DecodeLimits::default())
}

/// [`open_source`] with `limits` on decoded images and on the raw frame size.
pub fn open_source_with_limits(
    source: &str,
    width: u32,
    height: u32,
    format: StreamFormat,
    limits: DecodeLimits,
) -> Result<Box<dyn FrameSource>> {
    open_source_with_video(source, width, height, format, limits, VideoOptions::default())
}

/// [`open_source_with_limits`] with how a video file is read (`--loop`, `--realtime`). Video
/// files and stream URLs (`rtsp://`, `http://`, ...) are decoded by an ffmpeg child, `csi://N`
/// is the board's camera program (`crate::io::child`); both find the frame size themselves,
/// `--width/--height` scale (video) or choose (camera) it.
pub fn open_source_with_video(
    source: &str,
    width: u32,
    height: u32,
    format: StreamFormat,
    limits: DecodeLimits,
    mut video: VideoOptions,
) -> Result<Box<dyn FrameSource>> {
    let size = (width > 0 && height > 0).then_some((width, height));
    video.size = size;
    if let Some(sensor) = source.strip_prefix("csi://") {
        let sensor: u32 = sensor
            .parse()
            .with_context(|| format!("{source}: expected csi://N with N the camera's number"))?;
        let open = move || -> Result<Box<dyn FrameSource>> { Ok(Box::new(ChildSource::csi(sensor, width, height)?)) };
        return Ok(Box::new(Reconnecting::new(source, open, 5, Duration::from_millis(500))?));
    }
    if child::is_stream_url(source) {
        let (s, l) = (source.to_string(), limits);
        let open = move || -> Result<Box<dyn FrameSource>> { Ok(Box::new(ChildSource::ffmpeg(&s, video, &l)?)) };
        return Ok(Box::new(Reconnecting::new(source, open, 5, Duration::from_millis(500))?));
    }
    if child::is_video_file(source) {
        ensure!(Path::new(source).is_file(), "cannot open source {source}: no such file");
        return Ok(Box::new(ChildSource::ffmpeg(source, video, &limits)?));
    }
    if let (Some((w, h)), StreamFormat::Raw(_)) = (size, format) {
        limits
            .check_size(w, h)
            .context("raw frames of --width x --height")?;
    }
    if source == "-" {
        let stdin = std::io::stdin();
        return Ok(match format {
            StreamFormat::Mjpeg => Box::new(MjpegStream::new(stdin, size, true).with_limits(limits)),
            StreamFormat::Raw(f) => Box::new(RawStream::new(stdin, width, height, f, true)?),
        });
    }
    let path = Path::new(source);
    if source.starts_with("/dev/video") {
        ensure!(size.is_some(), "a camera needs --width and --height");
        let p = path.to_path_buf();
        let open = move || -> Result<Box<dyn FrameSource>> {
            Ok(Box::new(CameraSource::open(&p, width, height, format)?))
        };
        return Ok(Box::new(Reconnecting::new(
            source,
            open,
            5,
            Duration::from_millis(200),
        )?));
    }
    let meta = std::fs::metadata(path).with_context(|| format!("cannot open source {source}"))?;
    if meta.is_dir() {
        return Ok(Box::new(DirSource::new(path)?.with_limits(limits)));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open source {source}"))?;
    if format == StreamFormat::Mjpeg
        || matches!(ext.as_str(), "mjpeg" | "mjpg" | "avi" | "jpg" | "jpeg")
    {
        return Ok(Box::new(MjpegStream::new(file, size, false).with_limits(limits)));
    }
    let StreamFormat::Raw(pf) = format else {
        unreachable!()
    };
    ensure!(
        size.is_some(),
        "raw frames in {source} need --width and --height"
    );
    let frame = pf.frame_len(width, height);
    ensure!(
        meta.len() % frame == 0,
        "{source} holds {} bytes, not a whole number of {width}x{height} {pf:?} frames ({frame} bytes each): \
         check --width, --height and --format",
        meta.len()
    );
    Ok(Box::new(RawStream::new(file, width, height, pf, false)?))
}
