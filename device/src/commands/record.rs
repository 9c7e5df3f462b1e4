//! `device live --output out.mp4`: the classified video written with its top-1 label drawn on
//! it, by an `ffmpeg` child (H.264, `drawtext` re-reading a one-line label file every frame).
//! Frames go to a writer thread through a queue of two: with a live source, when the encoder
//! falls behind, frames are left out of the recording, never waited for, so inference does not
//! slow down; a replay (a file, a folder) records every frame.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use shared::preprocess::PixelFormat;

use crate::io::source::OwnedFrame;

/// The recording: an ffmpeg child fed by a writer thread.
pub struct Recorder {
    out: PathBuf,
    label_file: PathBuf,
    queue: Option<SyncSender<OwnedFrame>>,
    writer: Option<JoinHandle<Result<()>>>,
    child: Option<Child>,
    /// Frames left out because the encoder was behind.
    pub dropped: u64,
    size: Option<(u32, u32, PixelFormat)>,
    fps: f64,
    /// Wait for the encoder rather than leave frames out (replays).
    every_frame: bool,
    /// The label in the label file now.
    label: String,
}

impl Recorder {
    /// A recording to `out` at `fps`, started with the first frame (its size and format).
    pub fn new(out: &Path, fps: f64, every_frame: bool) -> Result<Recorder> {
        let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("--output {}: {} is not a directory", out.display(), dir.display());
        }
        let label_file = dir.join(format!(".{}.label.txt", out.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
        std::fs::write(&label_file, " ").with_context(|| format!("--output: cannot write {}", label_file.display()))?;
        Ok(Recorder {
            out: out.to_path_buf(),
            label_file,
            queue: None,
            writer: None,
            child: None,
            dropped: 0,
            size: None,
            fps,
            every_frame,
            label: " ".into(),
        })
    }

    fn start(&mut self, w: u32, h: u32, format: PixelFormat) -> Result<()> {
        let pix = match format {
            PixelFormat::Rgb8 => "rgb24",
            PixelFormat::Gray8 => "gray",
            PixelFormat::Yuyv => "yuyv422",
        };
        // drawtext re-reads the label file each frame; the path goes into a filter argument,
        // where ':' and '\' are special.
        let label = self.label_file.display().to_string().replace('\\', "\\\\").replace(':', "\\:");
        let filter = format!(
            "drawtext=textfile={label}:reload=1:expansion=none:fontcolor=white:fontsize=h/14:box=1:boxcolor=black@0.6:boxborderw=6:x=8:y=8"
        );
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", pix])
            .args(["-s", &format!("{w}x{h}"), "-r", &format!("{:.3}", self.fps), "-i", "-"])
            .args(["-vf", &filter, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
            .arg(&self.out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("--output: cannot start ffmpeg (apt-get install ffmpeg)")?;
        let mut stdin = child.stdin.take().context("ffmpeg stdin")?;
        let (tx, rx) = sync_channel::<OwnedFrame>(2);
        let out = self.out.clone();
        self.writer = Some(std::thread::spawn(move || {
            for f in rx {
                stdin.write_all(&f.data).with_context(|| format!("--output {}: ffmpeg stopped taking frames", out.display()))?;
            }
            Ok(())
        }));
        self.queue = Some(tx);
        self.child = Some(child);
        self.size = Some((w, h, format));
        Ok(())
    }

    /// Adds a frame with its top-1 `label` (the text drawn on it). Never waits for the encoder.
    pub fn add(&mut self, frame: OwnedFrame, label: &str) -> Result<()> {
        if self.size.is_none() {
            self.start(frame.width, frame.height, frame.format)?;
        }
        if self.size != Some((frame.width, frame.height, frame.format)) {
            // The recording keeps its first size; a source that changes it mid-way is skipped.
            self.dropped += 1;
            return Ok(());
        }
        // The label file is replaced whole (write, then rename), so drawtext never reads half;
        // only when the label changes (not a file write per frame on the classifier's thread).
        if self.label != label {
            let tmp = self.label_file.with_extension("tmp");
            std::fs::write(&tmp, label).and_then(|_| std::fs::rename(&tmp, &self.label_file)).context("--output: the label file")?;
            label.clone_into(&mut self.label);
        }
        let sent = match self.queue.as_ref() {
            Some(q) if self.every_frame => Some(q.send(frame).map_err(|e| TrySendError::Disconnected(e.0))),
            Some(q) => Some(q.try_send(frame)),
            None => None,
        };
        match sent {
            Some(Ok(())) => Ok(()),
            Some(Err(TrySendError::Full(_))) => {
                self.dropped += 1;
                Ok(())
            }
            Some(Err(TrySendError::Disconnected(_))) | None => self.finish_child().and_then(|_| {
                bail!("--output {}: the encoder stopped", self.out.display())
            }),
        }
    }

    fn finish_child(&mut self) -> Result<()> {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            w.join().map_err(|_| anyhow::anyhow!("--output: the writer thread panicked"))??;
        }
        if let Some(mut c) = self.child.take() {
            let status = c.wait().context("--output: waiting for ffmpeg")?;
            if !status.success() {
                bail!("--output {}: ffmpeg exited with {status}", self.out.display());
            }
        }
        Ok(())
    }

    /// Ends the recording: the queued frames are written and the file is closed.
    pub fn finish(mut self) -> Result<()> {
        let r = self.finish_child();
        let _ = std::fs::remove_file(&self.label_file);
        r
    }
}
