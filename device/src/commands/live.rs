//! `device live`: a capture thread feeds a one-slot mailbox; the inference loop takes the newest
//! frame. With a live source the latest frame wins (stale ones are dropped and counted); with a
//! replay (file, folder) the capture thread waits so every frame is classified.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::engine::pipeline::{Classification, Pipeline};
use crate::io::source::{FrameSource, Next, OwnedFrame};

#[derive(Default)]
struct Slot {
    frame: Option<OwnedFrame>,
    ended: bool,
    error: Option<anyhow::Error>,
    dropped: u64,
    skipped: u64,
    stop: bool,
}

/// A single-slot mailbox: `put` replaces an unread frame (latest wins) or, when `wait` is set,
/// blocks until the reader took it.
#[derive(Clone, Default)]
pub struct Mailbox(Arc<(Mutex<Slot>, Condvar)>);

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns false when the reader has stopped.
    pub fn put(&self, frame: OwnedFrame, wait: bool) -> bool {
        let mut s = self.lock();
        if wait {
            while s.frame.is_some() && !s.stop {
                s = self.0 .1.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        if s.stop {
            return false;
        }
        if s.frame.replace(frame).is_some() {
            s.dropped += 1;
        }
        self.0 .1.notify_all();
        true
    }

    fn finish(&self, error: Option<anyhow::Error>) {
        let mut s = self.lock();
        s.ended = true;
        s.error = error;
        self.0 .1.notify_all();
    }

    fn skipped(&self) {
        self.lock().skipped += 1;
    }

    /// The newest frame; None once the source ended and everything was read.
    pub fn take(&self) -> Result<Option<OwnedFrame>> {
        let mut s = self.lock();
        loop {
            if let Some(f) = s.frame.take() {
                self.0 .1.notify_all();
                return Ok(Some(f));
            }
            if s.ended {
                return match s.error.take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            }
            s = self.0 .1.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        self.0 .1.notify_all();
    }

    /// (dropped, skipped) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.dropped, s.skipped)
    }
}

/// Runs the capture loop of `source` on its own thread.
pub fn spawn_capture(
    mut source: Box<dyn FrameSource>,
    mailbox: Mailbox,
) -> std::thread::JoinHandle<()> {
    let wait = !source.is_live();
    std::thread::spawn(move || loop {
        match source.next() {
            Ok(Next::Frame(f)) => {
                if !mailbox.put(f, wait) {
                    return mailbox.finish(None);
                }
            }
            Ok(Next::Skipped(why)) => {
                eprintln!("warning: skipped a corrupt frame: {why}");
                mailbox.skipped();
            }
            Ok(Next::End) => return mailbox.finish(None),
            Err(e) => return mailbox.finish(Some(e)),
        }
    })
}

#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub json: bool,
    /// Stop after this many classified frames.
    pub max_frames: Option<u64>,
}

/// Frames per second over the last `window` frames.
pub struct RollingFps {
    times: VecDeque<Instant>,
    window: usize,
}

impl RollingFps {
    pub fn new(window: usize) -> Self {
        RollingFps {
            times: VecDeque::with_capacity(window + 1),
            window: window.max(2),
        }
    }
    pub fn tick(&mut self, now: Instant) -> f64 {
        self.times.push_back(now);
        if self.times.len() > self.window {
            self.times.pop_front();
        }
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) if self.times.len() >= 2 && b > a => {
                (self.times.len() - 1) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveSummary {
    pub frames: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub mean_fps: f64,
    /// Stopped at `max_frames` rather than at the end of the stream.
    pub reached_max_frames: bool,
}

impl LiveSummary {
    /// The closing line: the counts and how the run ended. `failed`: an error stopped it (the
    /// error says what: a stream that broke off mid-frame, a camera gone, ...).
    pub fn line(&self, failed: bool) -> String {
        let how = if failed {
            "stopped by an error"
        } else if self.reached_max_frames {
            "stopped at --max-frames"
        } else {
            "end of stream"
        };
        format!(
            "{} frames, {} dropped (inference slower than the source), {} corrupt skipped, {:.1} fps; {how}",
            self.frames, self.dropped, self.skipped, self.mean_fps
        )
    }
}

/// One output line for a classified frame.
pub fn format_line(
    p: &Pipeline,
    index: u64,
    c: &Classification,
    fps: f64,
    json: bool,
    dropped: u64,
) -> String {
    let ms = c.times.total().as_secs_f64() * 1e3;
    if json {
        let top: Vec<serde_json::Value> = c
            .top
            .iter()
            .map(|&(class, score)| serde_json::json!({"class": class, "label": p.label(class), "score": score}))
            .collect();
        serde_json::json!({
            "frame": index,
            "top": top,
            "latency_ms": ms,
            "preprocess_ms": c.times.preprocess.as_secs_f64() * 1e3,
            "inference_ms": c.times.inference.as_secs_f64() * 1e3,
            "fps": fps,
            "dropped": dropped,
        })
        .to_string()
    } else {
        let (class, score) = c.top[0];
        let mut line = format!(
            "{:5.2}% {}  {ms:.1} ms  {fps:.1} fps",
            score * 100.0,
            p.class_text(class)
        );
        for &(class, score) in &c.top[1..] {
            line.push_str(&format!("  | {:.2}% {}", score * 100.0, p.class_text(class)));
        }
        line
    }
}

/// One classified frame, handed to `run`'s `on_result` hook (the LED, the `--view` page, the
/// recording). Its texts are made only when a hook asks for them.
pub struct FrameResult<'a> {
    pub frame: OwnedFrame,
    pub classification: &'a Classification,
    pipeline: &'a Pipeline,
    fps: f64,
    dropped: u64,
}

impl FrameResult<'_> {
    /// The frame's `--json` line.
    pub fn json(&self) -> String {
        format_line(self.pipeline, self.frame.index, self.classification, self.fps, true, self.dropped)
    }

    /// The top-1 class as a line prints it: `97.95% class #281 (tabby cat)`.
    pub fn top1(&self) -> String {
        let c = self.classification;
        c.top.first().map(|&(k, s)| format!("{:.2}% {}", s * 100.0, self.pipeline.class_text(k))).unwrap_or_default()
    }
}

/// Classifies frames from `source` until it ends (or `max_frames`), writing one line per frame
/// to `out`. `gate` decides per frame whether to classify it (a button); `on_result` sees every
/// classification (an LED). A source whose every frame was corrupt is an error too. An error
/// carries the summary line (what was classified before, say, a stream broke off) as its
/// outermost context.
pub fn run(
    pipeline: &mut Pipeline,
    source: Box<dyn FrameSource>,
    opts: &LiveOptions,
    out: &mut dyn Write,
    gate: &mut dyn FnMut() -> Result<bool>,
    on_result: &mut dyn FnMut(FrameResult<'_>) -> Result<()>,
) -> Result<LiveSummary> {
    let mailbox = Mailbox::default();
    let capture = spawn_capture(source, mailbox.clone());
    let mut fps = RollingFps::new(30);
    let start = Instant::now();
    let mut frames = 0u64;
    let mut reached_max_frames = false;
    let result = (|| -> Result<()> {
        while let Some(f) = mailbox.take()? {
            if !gate()? {
                continue;
            }
            let frame = f.frame().with_context(|| format!("frame {}", f.index))?;
            let c = pipeline
                .classify(&frame)
                .with_context(|| format!("frame {}", f.index))?;
            frames += 1;
            let rate = fps.tick(Instant::now());
            let (dropped, _) = mailbox.counts();
            writeln!(out, "{}", format_line(pipeline, f.index, &c, rate, opts.json, dropped))?;
            out.flush()?;
            on_result(FrameResult { frame: f, classification: &c, pipeline, fps: rate, dropped })?;
            if opts.max_frames.is_some_and(|m| frames >= m) {
                reached_max_frames = true;
                break;
            }
        }
        Ok(())
    })();
    mailbox.stop();
    // A live capture thread blocked in a read (stdin, camera) cannot be interrupted; it exits with
    // the process. A replay thread waits on the mailbox and sees `stop`.
    drop(capture);
    let (dropped, skipped) = mailbox.counts();
    let elapsed = start.elapsed().max(Duration::from_micros(1));
    let summary = LiveSummary {
        frames,
        dropped,
        skipped,
        mean_fps: frames as f64 / elapsed.as_secs_f64(),
        reached_max_frames,
    };
    result
        .and_then(|_| {
            anyhow::ensure!(
                frames > 0 || skipped == 0,
                "none of the {skipped} frames of the source could be decoded (all corrupt or over \
                 the size limit): check --format and the source"
            );
            Ok(())
        })
        .map_err(|e| e.context(summary.line(true)))
        .map(|_| summary)
}
