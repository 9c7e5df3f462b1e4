//! Sources that are child processes: video files and network streams decoded by an `ffmpeg`
//! child into raw RGB frames (size and frame rate from `ffprobe`), and board cameras (`csi://N`)
//! through the board's own camera program. No FFmpeg or GStreamer library is linked, so the
//! aarch64 cross-build stays as simple as it is; the programs must be on PATH.
//!
//! A child that dies, or a stream that stalls (ffmpeg's I/O timeout ends it), is restarted by
//! `crate::io::source::Reconnecting` with growing delays, then is a clear error with the end of
//! the child's stderr.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use shared::preprocess::PixelFormat;

use crate::io::decode::DecodeLimits;
use crate::io::source::{FrameSource, MjpegStream, Next, RawStream};

/// How a video source is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VideoOptions {
    /// Start a file again at its end (`--loop`).
    pub looped: bool,
    /// Pace a file at its frame rate, as a camera would deliver it (`--realtime`); without it a
    /// file is read as fast as the classifier takes frames.
    pub realtime: bool,
    /// Scale frames to this size (`--width/--height`); default: the video's own.
    pub size: Option<(u32, u32)>,
}

/// URL schemes ffmpeg reads as network streams.
const STREAM_SCHEMES: [&str; 7] = ["rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://"];

/// File extensions read as video through ffmpeg (`.avi` and `.mjpeg` are split as MJPEG
/// directly: `crate::io::source`).
const VIDEO_EXTENSIONS: [&str; 12] = ["mp4", "mkv", "webm", "mov", "m4v", "ts", "flv", "mpg", "mpeg", "h264", "hevc", "wmv"];

/// Whether `source` is a network stream URL.
pub fn is_stream_url(source: &str) -> bool {
    STREAM_SCHEMES.iter().any(|s| source.starts_with(s))
}

/// Whether `source` names a video file ffmpeg should decode.
pub fn is_video_file(source: &str) -> bool {
    std::path::Path::new(source)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What `ffprobe` says about a source's first video stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Frames per second, when the container says.
    pub fps: Option<f64>,
}

/// Reads the size and frame rate of `source`'s first video stream with `ffprobe`.
pub fn probe(source: &str) -> Result<VideoInfo> {
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,avg_frame_rate"]);
    c.args(["-of", "default=noprint_wrappers=1"]);
    c.args(timeout_args(source)).arg(source);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run ffprobe for {source} (install ffmpeg)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let (Some(w), Some(h)) = (field("width"), field("height")) else {
        bail!(
            "{source}: no video stream found by ffprobe{}",
            last_lines(&String::from_utf8_lossy(&out.stderr)).map(|e| format!(": {e}")).unwrap_or_default()
        );
    };
    let fps = field("avg_frame_rate").and_then(|r| {
        let (n, d) = r.split_once('/')?;
        let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
        (n > 0.0 && d > 0.0).then(|| n / d)
    });
    let (width, height) = (w.trim().parse().context("ffprobe width")?, h.trim().parse().context("ffprobe height")?);
    ensure!(width > 0 && height > 0, "{source}: ffprobe reports a {width}x{height} video");
    Ok(VideoInfo { width, height, fps })
}

/// ffmpeg's options that end a stalled network read (5 s) instead of blocking forever.
fn timeout_args(source: &str) -> Vec<&'static str> {
    if source.starts_with("rtsp://") {
        vec!["-timeout", "5000000"]
    } else if is_stream_url(source) {
        vec!["-rw_timeout", "5000000"]
    } else {
        vec![]
    }
}

/// The last non-empty lines of a child's stderr, for an error message.
fn last_lines(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(3)..].join(" / "))
}

/// A child process whose stdout carries frames, killed when dropped. Its stderr is kept (the
/// last 64 lines) for the error when it fails.
struct FrameChild {
    what: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl FrameChild {
    fn spawn(what: String, mut cmd: Command) -> Result<(FrameChild, ChildStdout)> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{what}: cannot start {program} (is it installed and on PATH?)"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let keep = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                    if k.len() == 64 {
                        k.remove(0);
                    }
                    k.push(line);
                }
            });
        }
        Ok((FrameChild { what, child, stderr }, stdout))
    }

    /// At the end of the frames: an error when the child failed, naming it and its last words.
    fn finish(&mut self) -> Result<()> {
        let status = self.child.wait().with_context(|| format!("{}: waiting for the child", self.what))?;
        if status.success() {
            return Ok(());
        }
        // The stderr thread may still be draining: give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let said = self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
        bail!(
            "{}: the decoder exited with {status}{}",
            self.what,
            last_lines(&said).map(|e| format!(": {e}")).unwrap_or_default()
        )
    }
}

impl Drop for FrameChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames read from a child process's stdout (raw or MJPEG), ending with the child.
pub struct ChildSource {
    child: FrameChild,
    frames: Box<dyn FrameSource>,
    live: bool,
    /// A stream or a camera does not end: the end of its frames is an error, so that
    /// `Reconnecting` starts it again. A file ends.
    endless: bool,
}

impl ChildSource {
    /// `ffmpeg` decoding `source` (a file or a stream URL) to raw RGB frames.
    pub fn ffmpeg(source: &str, opts: VideoOptions, limits: &DecodeLimits) -> Result<ChildSource> {
        let info = probe(source)?;
        let (width, height) = opts.size.unwrap_or((info.width, info.height));
        limits.check_size(width, height).with_context(|| format!("{source}: frames of {width}x{height}"))?;
        let stream = is_stream_url(source);
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error"]);
        if opts.realtime && !stream {
            cmd.arg("-re");
        }
        if opts.looped && !stream {
            cmd.args(["-stream_loop", "-1"]);
        }
        cmd.args(timeout_args(source)).arg("-i").arg(source);
        cmd.args(["-map", "0:v:0", "-an", "-f", "rawvideo", "-pix_fmt", "rgb24"]);
        if opts.size.is_some() {
            cmd.args(["-vf", &format!("scale={width}:{height}")]);
        }
        cmd.arg("-");
        let (child, stdout) = FrameChild::spawn(format!("ffmpeg reading {source}"), cmd)?;
        // A stream, or a file paced at its frame rate, is live: stale frames are dropped.
        let live = stream || opts.realtime;
        let frames = Box::new(RawStream::new(stdout, width, height, PixelFormat::Rgb8, live)?);
        Ok(ChildSource { child, frames, live, endless: stream })
    }

    /// A board camera, `csi://N`: the Raspberry Pi's `rpicam-vid` (or `libcamera-vid`) as MJPEG,
    /// else Jetson's `gst-launch-1.0 nvarguscamerasrc` pipeline as raw RGB.
    pub fn csi(sensor: u32, width: u32, height: u32) -> Result<ChildSource> {
        ensure!(width > 0 && height > 0, "csi://{sensor} needs --width and --height");
        let (w, h) = (width.to_string(), height.to_string());
        let what = format!("camera csi://{sensor}");
        if let Some(program) = ["rpicam-vid", "libcamera-vid"].into_iter().find(|p| on_path(p)) {
            let mut cmd = Command::new(program);
            cmd.args(["-n", "-t", "0", "--camera", &sensor.to_string(), "--width", &w, "--height", &h]);
            cmd.args(["--codec", "mjpeg", "-o", "-"]);
            let (child, stdout) = FrameChild::spawn(format!("{what} ({program})"), cmd)?;
            let frames = Box::new(MjpegStream::new(stdout, Some((width, height)), true));
            return Ok(ChildSource { child, frames, live: true, endless: true });
        }
        ensure!(
            on_path("gst-launch-1.0"),
            "{what}: no camera program found: rpicam-vid or libcamera-vid (Raspberry Pi OS) or gst-launch-1.0 \
             (Jetson, with nvarguscamerasrc) must be on PATH"
        );
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q");
        cmd.args(format!(
            "nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height} ! \
             nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=RGB ! fdsink fd=1"
        )
        .split(' '));
        let (child, stdout) = FrameChild::spawn(format!("{what} (gst-launch-1.0)"), cmd)?;
        let frames = Box::new(RawStream::new(stdout, width, height, PixelFormat::Rgb8, true)?);
        Ok(ChildSource { child, frames, live: true, endless: true })
    }
}

/// Whether `program` is an executable file in a PATH directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

impl FrameSource for ChildSource {
    fn next(&mut self) -> Result<Next> {
        match self.frames.next() {
            Ok(Next::End) => {
                self.child.finish()?;
                ensure!(!self.endless, "{}: the stream ended", self.child.what);
                Ok(Next::End)
            }
            // A frame cut short because the child died: say why it died.
            Err(e) => match self.child.finish() {
                Err(died) => Err(died.context(format!("{e:#}"))),
                Ok(()) => Err(e),
            },
            other => other,
        }
    }
    fn is_live(&self) -> bool {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_recognised_by_scheme_and_extension() {
        assert!(is_stream_url("rtsp://cam.local/stream1") && is_stream_url("http://127.0.0.1:8080/x.mjpg"));
        assert!(!is_stream_url("/dev/video0") && !is_stream_url("clip.mp4"));
        assert!(is_video_file("clip.MP4") && is_video_file("/data/a.mkv") && is_video_file("b.webm"));
        assert!(!is_video_file("frames.avi") && !is_video_file("photos") && !is_video_file("x.jpg"));
        assert_eq!(timeout_args("rtsp://x"), ["-timeout", "5000000"]);
        assert_eq!(timeout_args("https://x"), ["-rw_timeout", "5000000"]);
        assert!(timeout_args("a.mp4").is_empty());
        assert_eq!(last_lines("\na\n\nb\nc\nd\n").as_deref(), Some("b / c / d"));
    }
}
