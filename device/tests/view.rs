//! `device live --view`: the live page, its MJPEG stream and JSON result served while a video
//! plays, seen by a real headless Chromium (a screenshot is checked), and viewers that never
//! read do not stop the classifier. Needs ffmpeg and chromium (`cargo xtask setup`).
#![cfg(feature = "engine")] // the binary and the engine

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::graph::Form;
use shared::weights::Precision;

/// A 640x480 10 fps clip (frames of tens of kB, so that a client that never reads fills its
/// socket buffers within a second).
fn clip(dir: &Path) -> String {
    let path = dir.join("clip.mp4");
    let o = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=640x480:rate=10", "-t", "3", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .expect("cannot run ffmpeg (apt-get install ffmpeg)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path.to_str().unwrap().to_string()
}

/// `device live --view 127.0.0.1:0` on the clip, looped in real time; the address it serves.
struct Live {
    child: Child,
    addr: String,
}

impl Live {
    fn start(clip: &str) -> Live {
        let model = common::compact(&common::fixtures("resnet8"), "resnet8", Form::Folded, Precision::Int8);
        let mut child = common::device_command(env!("CARGO_BIN_EXE_device"))
            .args(["live", "--model", model.to_str().unwrap(), "--source", clip, "--loop", "--realtime"])
            .args(["--top-k", "3", "--view", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("device live ended before serving").unwrap();
            if let Some(rest) = line.strip_prefix("view: http://") {
                break rest.split('/').next().unwrap().to_string();
            }
        };
        // Keep draining stderr so that the child never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Live { child, addr }
    }

    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    fn frame_index(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value = serde_json::from_str(&self.get("/result.json")).unwrap();
            if let Some(i) = v["frame"].as_u64() {
                return i;
            }
            assert!(Instant::now() < deadline, "no result after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a chunked HTTP/1.1 response, as it arrives.
struct Chunked<R> {
    inner: R,
    left: usize,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut line = String::new();
            while line.trim().is_empty() {
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            self.left = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let want = out.len().min(self.left);
        let n = self.inner.read(&mut out[..want])?;
        self.left -= n;
        Ok(n)
    }
}

/// Reads the first `n` parts of an MJPEG-over-HTTP response: their JPEG bytes.
fn mjpeg_parts(addr: &str, n: usize) -> Vec<Vec<u8>> {
    let s = TcpStream::connect(addr).unwrap();
    (&s).write_all(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = BufReader::new(s);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        head.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the response ended in its headers");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-type: ") {
            assert!(v.starts_with("multipart/x-mixed-replace"), "{v}");
        }
    }
    let mut r = BufReader::new(Chunked { inner: head, left: 0 });
    let mut parts = vec![];
    let mut len = None;
    let mut line = String::new();
    while parts.len() < n {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.trim().strip_prefix("Content-Length: ") {
            len = v.parse::<usize>().ok();
        }
        if line == "\r\n" {
            if let Some(l) = len.take() {
                let mut jpeg = vec![0; l];
                r.read_exact(&mut jpeg).unwrap();
                parts.push(jpeg);
            }
        }
    }
    parts
}

#[test]
fn the_live_page_in_headless_chromium_shows_the_video_and_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let live = Live::start(&clip(dir.path()));
    live.frame_index();
    assert!(live.get("/").contains("<img id=\"video\" src=\"/stream.mjpg\""));
    let result: serde_json::Value = serde_json::from_str(&live.get("/result.json")).unwrap();
    assert_eq!(result["top"].as_array().unwrap().len(), 3, "{result}");
    for jpeg in mjpeg_parts(&live.addr, 2) {
        let img = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (640, 480));
    }

    // The page as a browser renders it, after its script has fetched the results.
    let shot = dir.path().join("page.png");
    let url = format!("http://{}/", live.addr);
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,600"])
            .args(["--virtual-time-budget=3000"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run chromium ({e}): apt-get install chromium (or cargo xtask setup)"))
    };
    let o = chromium(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    let png = image::open(&shot).unwrap().to_rgb8();
    // The video: testsrc's colour bars in the image's place (left, 16 px margin).
    let mut colours = std::collections::HashSet::new();
    for y in (20..400).step_by(20) {
        for x in (20..620).step_by(10) {
            let p = png.get_pixel(x, y).0;
            colours.insert(p.map(|c| c / 64));
        }
    }
    assert!(colours.len() >= 6, "the video area shows {} colours: no video?", colours.len());
    // The top-1 label: the page's green label box (#00aa55), drawn once a result arrived.
    let green = png.pixels().filter(|p| p.0[0] < 20 && (150..190).contains(&p.0[1]) && (65..105).contains(&p.0[2])).count();
    assert!(green > 2000, "no label box on the page ({green} green pixels)");
    // ... and its text, in the page the browser built.
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    assert!(dom.contains("% class #") && dom.contains(" fps"), "{dom}");
    std::fs::copy(&shot, std::env::temp_dir().join("device-view-page.png")).ok();
}

#[test]
fn viewers_that_never_read_do_not_stop_the_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let live = Live::start(&clip(dir.path()));
    let first = live.frame_index();
    // Three clients ask for the stream and never read it: their socket buffers fill up.
    let dead: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&live.addr).unwrap();
            s.write_all(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let after = live.frame_index();
    // 10 fps for 3 s: about 30 frames; a blocked classifier would give none.
    assert!(after >= first + 20, "frames {first} -> {after} in 3 s with stalled viewers");
    // A live viewer still gets frames meanwhile.
    assert_eq!(mjpeg_parts(&live.addr, 2).len(), 2);
    drop(dead);
}
