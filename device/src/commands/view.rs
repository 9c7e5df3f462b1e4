//! `device live --view HOST:PORT`: a live page in the browser. The classifier only hands each
//! frame and its result over ([`Viewer::publish`]: a pointer swap under a short lock, no copy, no
//! encoding); every HTTP client is served by its own thread, which takes the latest frame when it
//! is ready for one and encodes it there. A slow browser drops frames, a dead one blocks only its
//! own thread: inference never waits for a viewer.
//!
//! - `/`: the page (the video, the top-k labels and scores, latency and fps, updated live);
//! - `/stream.mjpg`: the frames as MJPEG over HTTP (`multipart/x-mixed-replace`);
//! - `/frame.jpg`: the latest frame (what HTTP/1.0 clients get for the stream);
//! - `/result.json`: the latest result (the page polls it); `/events`: the results as
//!   server-sent events, each padded to 8 KiB so that it is sent at once.

use std::io::{Cursor, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use shared::preprocess::{yuv_to_rgb, PixelFormat};

use crate::io::source::OwnedFrame;

/// What the classifier last published.
struct Snapshot {
    seq: u64,
    frame: OwnedFrame,
    /// The result as one JSON object (the `--json` line of that frame).
    result: String,
    /// The frame as a JPEG, encoded once by the first client that wants it.
    jpeg: std::sync::OnceLock<Option<Arc<Vec<u8>>>>,
}

impl Snapshot {
    fn jpeg(&self) -> Option<Arc<Vec<u8>>> {
        self.jpeg.get_or_init(|| encode_jpeg(&self.frame).ok().map(Arc::new)).clone()
    }
}

/// Frames per second sent to each viewer at most: the JPEG encoding runs on the board's cores
/// beside the classifier.
const VIEW_FPS: f64 = 15.0;

#[derive(Default)]
struct Latest {
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    changed: Condvar,
}

impl Latest {
    /// The snapshot after `seen` (waiting up to `timeout` for one); None when there is none yet.
    fn after(&self, seen: u64, timeout: Duration) -> Option<Arc<Snapshot>> {
        let guard = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.as_ref().is_none_or(|s| s.seq <= seen))
            .unwrap_or_else(|e| e.into_inner());
        guard.clone().filter(|s| s.seq > seen)
    }
}

/// The live page's server. Dropping it stops accepting connections.
pub struct Viewer {
    latest: Arc<Latest>,
    seq: u64,
    /// The address it listens on (the port chosen when `:0` was asked).
    pub addr: String,
    server: Arc<tiny_http::Server>,
}

impl Viewer {
    /// Listens on `addr` (`HOST:PORT`; a bare `:PORT` or `PORT` is 127.0.0.1) and serves in the
    /// background.
    pub fn start(addr: &str) -> Result<Viewer> {
        let addr = match addr.rsplit_once(':') {
            Some(("", port)) => format!("127.0.0.1:{port}"),
            Some(_) => addr.to_string(),
            None => format!("127.0.0.1:{addr}"),
        };
        let server = tiny_http::Server::http(&addr).map_err(|e| anyhow!("--view {addr}: cannot listen: {e}"))?;
        let addr = server.server_addr().to_ip().map(|a| a.to_string()).unwrap_or(addr);
        let server = Arc::new(server);
        let latest = Arc::new(Latest::default());
        let (s, l) = (server.clone(), latest.clone());
        std::thread::Builder::new().name("view-accept".into()).spawn(move || {
            for request in s.incoming_requests() {
                let l = l.clone();
                // One thread per client: a client that never reads blocks only its own.
                let _ = std::thread::Builder::new().name("view-client".into()).spawn(move || serve(request, &l));
            }
        })?;
        Ok(Viewer { latest, seq: 0, addr, server })
    }

    /// Hands the latest frame and its result (a JSON object) to the clients. Never waits for one.
    pub fn publish(&mut self, frame: OwnedFrame, result: String) {
        self.seq += 1;
        let snap = Arc::new(Snapshot { seq: self.seq, frame, result, jpeg: Default::default() });
        *self.latest.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
        self.latest.changed.notify_all();
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>edge-vision live</title>
<style>
body { margin: 0; background: #111; color: #eee; font: 20px sans-serif; display: flex; gap: 16px; padding: 16px; }
img { width: 640px; max-width: 70vw; image-rendering: pixelated; background: #000; }
#top div { margin: 6px 0; }
#top .label { font-size: 32px; font-weight: bold; color: #fff; background: #0a5; padding: 4px 8px; }
#stats { margin-top: 12px; color: #aaa; }
</style></head>
<body><img id="video" src="/stream.mjpg" alt="live video">
<div><div id="top">waiting for the first frame...</div><div id="stats"></div></div>
<script>
let last = -1;
async function poll() {
  try {
    const r = await (await fetch('/result.json', {cache: 'no-store'})).json();
    if (r && r.frame !== last) { last = r.frame; show(r); }
  } catch (e) {}
  setTimeout(poll, 100);
}
function show(r) {
  document.getElementById('top').innerHTML = r.top.map((t, i) =>
    `<div class="${i == 0 ? 'label' : ''}">${(t.score * 100).toFixed(2)}% class #${t.class} (${t.label})</div>`).join('');
  document.getElementById('stats').textContent =
    `frame ${r.frame} | ${r.latency_ms.toFixed(1)} ms | ${r.fps.toFixed(1)} fps | ${r.dropped} dropped`;
}
poll();
</script></body></html>
"#;

fn serve(request: tiny_http::Request, latest: &Arc<Latest>) {
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header");
    let url = request.url().split('?').next().unwrap_or("/").to_string();
    // An HTTP/1.0 client cannot take an endless body (no chunked encoding; tiny_http would
    // buffer it whole): it gets the latest frame as one JPEG.
    let http10 = *request.http_version() < tiny_http::HTTPVersion(1, 1);
    let _ = match url.as_str() {
        "/stream.mjpg" | "/frame.jpg" if http10 || url == "/frame.jpg" => {
            match latest.after(0, Duration::from_secs(10)).and_then(|s| s.jpeg()) {
                Some(jpeg) => {
                    request.respond(tiny_http::Response::from_data(jpeg.to_vec()).with_header(header("Content-Type", "image/jpeg")))
                }
                _ => request.respond(tiny_http::Response::from_string("no frame yet").with_status_code(503)),
            }
        }
        "/" | "/index.html" => {
            request.respond(tiny_http::Response::from_string(PAGE).with_header(header("Content-Type", "text/html; charset=utf-8")))
        }
        "/result.json" => {
            let body = latest
                .snapshot
                .lock()
                .map(|s| s.as_ref().map(|s| s.result.clone()))
                .ok()
                .flatten()
                .unwrap_or_else(|| "null".into());
            request.respond(tiny_http::Response::from_string(body).with_header(header("Content-Type", "application/json")))
        }
        "/stream.mjpg" => request.respond(endless(latest, Part::Jpeg, "multipart/x-mixed-replace; boundary=frame")),
        "/events" => request.respond(endless(latest, Part::Event, "text/event-stream")),
        _ => request.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
    };
}

/// tiny_http's chunk size for bodies of unknown length.
const EVENT_SIZE: usize = 8192;

/// An endless response of `kind` parts from the latest snapshots.
fn endless(latest: &Arc<Latest>, kind: Part, content_type: &str) -> tiny_http::Response<Parts> {
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header");
    let body = Parts { latest: latest.clone(), seen: 0, buf: Cursor::new(vec![]), kind, last: None };
    let headers = vec![header("Content-Type", content_type), header("Cache-Control", "no-cache")];
    tiny_http::Response::new(200.into(), headers, body, None, None)
}

#[derive(Clone, Copy)]
enum Part {
    Jpeg,
    Event,
}

/// An endless response body: the next part each time the previous one is read, built from the
/// latest snapshot (frames in between are skipped).
struct Parts {
    latest: Arc<Latest>,
    seen: u64,
    buf: Cursor<Vec<u8>>,
    kind: Part,
    /// When the last frame part was made ([`VIEW_FPS`]).
    last: Option<std::time::Instant>,
}

impl Read for Parts {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.buf.read(out)?;
            if n > 0 {
                return Ok(n);
            }
            if let (Part::Jpeg, Some(t)) = (self.kind, self.last) {
                let gap = Duration::from_secs_f64(1.0 / VIEW_FPS);
                std::thread::sleep(gap.saturating_sub(t.elapsed()));
            }
            // Keep-alive comments for event streams; otherwise wait for the next frame.
            let Some(snap) = self.latest.after(self.seen, Duration::from_secs(10)) else {
                if let Part::Event = self.kind {
                    self.buf = Cursor::new(b": waiting\n\n".to_vec());
                }
                continue;
            };
            self.seen = snap.seq;
            let bytes = match self.kind {
                // tiny_http sends a body of unknown length in chunks of 8 KiB: a comment line
                // pads each event to that, so that it leaves at once.
                Part::Event => {
                    let event = format!("data: {}\n\n", snap.result);
                    let pad = EVENT_SIZE.saturating_sub(event.len() + 3);
                    format!(":{}\n\n{event}", " ".repeat(pad)).into_bytes()
                }
                Part::Jpeg => {
                    self.last = Some(std::time::Instant::now());
                    let jpeg = snap.jpeg().ok_or_else(|| std::io::Error::other("a frame could not be encoded"))?;
                    let mut part =
                        format!("--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len()).into_bytes();
                    part.extend_from_slice(&jpeg);
                    part.extend_from_slice(b"\r\n");
                    part
                }
            };
            self.buf = Cursor::new(bytes);
        }
    }
}

/// The frame as a JPEG (quality 80), whatever its pixel format.
fn encode_jpeg(f: &OwnedFrame) -> Result<Vec<u8>> {
    let (w, h) = (f.width as usize, f.height as usize);
    let rgb: Vec<u8> = match f.format {
        PixelFormat::Rgb8 => f.data.clone(),
        PixelFormat::Gray8 => f.data.iter().flat_map(|&g| [g, g, g]).collect(),
        PixelFormat::Yuyv => f
            .data
            .chunks_exact(4)
            .flat_map(|q| {
                let (a, b) = (yuv_to_rgb(q[0], q[1], q[3]), yuv_to_rgb(q[2], q[1], q[3]));
                [a, b].into_iter().flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
            })
            .collect(),
    };
    anyhow::ensure!(rgb.len() == w * h * 3, "frame {} has {} bytes for {w}x{h}", f.index, f.data.len());
    let mut out = vec![];
    JpegEncoder::new_with_quality(&mut out, 80)
        .encode(&rgb, f.width, f.height, image::ExtendedColorType::Rgb8)
        .context("encoding a frame for --view")?;
    Ok(out)
}
