//! `device live` sources and loop: real ffmpeg pipes (raw YUYV and MJPEG), corrupt frames,
//! frames of the wrong size, a camera that disappears, latest-frame-wins.
#![cfg(feature = "engine")] // the binary and the engine

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use device::commands::live::{self, LiveOptions, Mailbox};
use device::engine::pipeline::Pipeline;
use device::engine::{Engine, EngineOptions};
use device::io::child::VideoOptions;
use device::io::decode::DecodeLimits;
use device::io::source::{
    open_source, open_source_with_video, FrameSource, MjpegStream, Next, OwnedFrame, RawStream, Reconnecting,
    StreamFormat,
};
use shared::graph::Form;
use shared::preprocess::PixelFormat;
use shared::weights::Precision;

/// A photo: skimage's chelsea.png from the venv, else a generated gradient.
fn photo() -> PathBuf {
    let venv = common::workspace().join(".venv/lib");
    if let Ok(rd) = std::fs::read_dir(&venv) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/skimage/data/chelsea.png");
            if p.exists() {
                return p;
            }
        }
    }
    let p = std::env::temp_dir().join("device-test-gradient.png");
    let img = image::RgbImage::from_fn(451, 300, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    // Tests run in parallel: write a file of this thread's own, then rename it into place
    // (atomic), so that no test reads a half-written image.
    let tmp = std::env::temp_dir().join(format!(
        "device-test-gradient.{}.{:?}.png",
        std::process::id(),
        std::thread::current().id()
    ));
    img.save(&tmp).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// ffmpeg looping over the photo: `frames` frames scaled to `size` (`W:H`), written to stdout
/// with the output options `out` (`-f rawvideo -pix_fmt rgb24`, `-f mjpeg`).
fn ffmpeg(frames: usize, size: &str, out: &[&str]) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-loglevel", "error", "-loop", "1", "-i"])
        .arg(photo())
        .args([
            "-frames:v",
            &frames.to_string(),
            "-vf",
            &format!("scale={size}"),
        ])
        .args(out)
        .arg("-")
        .stdin(Stdio::null());
    c
}

/// What `ffmpeg(frames, size, out)` writes. The tests need ffmpeg (`cargo xtask setup`
/// installs it): without it they fail, they are not skipped.
fn ffmpeg_output(frames: usize, size: &str, out: &[&str]) -> Vec<u8> {
    let mut c = ffmpeg(frames, size, out);
    let o = c.output().unwrap_or_else(|e| {
        panic!("cannot run ffmpeg ({e}): apt-get install ffmpeg (or `cargo xtask setup`)")
    });
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn pipeline() -> Pipeline {
    let dir = common::fixtures("resnet8");
    let model = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    Pipeline::new(Engine::load(model, &EngineOptions::default()).unwrap(), 3)
}

fn run(
    p: &mut Pipeline,
    source: Box<dyn FrameSource>,
    json: bool,
) -> (Result<live::LiveSummary>, String) {
    let mut out = Vec::new();
    let r = live::run(
        p,
        source,
        &LiveOptions {
            json,
            max_frames: None,
        },
        &mut out,
        &mut || Ok(true),
        &mut |_| Ok(()),
    );
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn ffmpeg_raw_yuyv_pipe_one_line_per_frame() {
    let mut p = pipeline();
    let mut child = ffmpeg(6, "320:240", &["-f", "rawvideo", "-pix_fmt", "yuyv422"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}): apt-get install ffmpeg"));
    let stdout = child.stdout.take().unwrap();
    // As a replay (every frame processed), so the count is deterministic.
    let source = Box::new(RawStream::new(stdout, 320, 240, PixelFormat::Yuyv, false).unwrap());
    let (r, out) = run(&mut p, source, false);
    let s = r.unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(s.frames, 6, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        // `97.9% Coat  1.2 ms  80.1 fps  | ...`
        assert!(
            l.contains("% ") && l.contains(" ms") && l.contains(" fps"),
            "{l}"
        );
    }
    // Same frame six times: same top-1 every time.
    let first: Vec<&str> = lines
        .iter()
        .map(|l| l.split("  ").next().unwrap())
        .collect();
    assert!(first.windows(2).all(|w| w[0] == w[1]), "{first:?}");
}

#[test]
fn json_lines_and_latest_frame_wins_on_a_live_pipe() {
    let mut p = pipeline();
    let raw = ffmpeg_output(40, "64:48", &["-f", "rawvideo", "-pix_fmt", "rgb24"]);
    // A live source that produces faster than inference: frames may be dropped, none lost twice.
    let source = Box::new(
        RawStream::new(std::io::Cursor::new(raw), 64, 48, PixelFormat::Rgb8, true).unwrap(),
    );
    let (r, out) = run(&mut p, source, true);
    let s = r.unwrap();
    assert_eq!(s.frames + s.dropped, 40, "{s:?}");
    assert_eq!(out.lines().count() as u64, s.frames);
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["top"][0]["label"].is_string() && v["latency_ms"].as_f64().unwrap() > 0.0,
            "{l}"
        );
        assert_eq!(v["top"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn mailbox_keeps_only_the_latest_frame() {
    let m = Mailbox::default();
    let frame = |i| OwnedFrame {
        data: vec![0; 3],
        width: 1,
        height: 1,
        format: PixelFormat::Rgb8,
        index: i,
    };
    for i in 0..3 {
        assert!(m.put(frame(i), false));
    }
    assert_eq!(m.take().unwrap().unwrap().index, 2);
    assert_eq!(m.counts(), (2, 0));
}

fn mjpeg_frames(n: usize) -> Vec<Vec<u8>> {
    let bytes = ffmpeg_output(n, "160:120", &["-f", "mjpeg"]);
    let mut s = MjpegStream::new(std::io::Cursor::new(bytes.clone()), None, false);
    let mut out = vec![];
    // Split again to get each JPEG's bytes: the stream API decodes, so re-split by markers here.
    let mut start = None;
    for i in 1..bytes.len() {
        if bytes[i - 1] == 0xFF && bytes[i] == 0xD8 && start.is_none() {
            start = Some(i - 1);
        }
        if bytes[i - 1] == 0xFF && bytes[i] == 0xD9 {
            if let Some(s0) = start.take() {
                out.push(bytes[s0..=i].to_vec());
            }
        }
    }
    assert!(matches!(s.next().unwrap(), Next::Frame(_)));
    out
}

#[test]
fn corrupt_mjpeg_frames_are_skipped_and_counted() {
    let mut p = pipeline();
    let frames = mjpeg_frames(5);
    assert_eq!(frames.len(), 5);
    let mut stream = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i == 2 {
            // Header kept, entropy-coded data replaced by garbage.
            let mut bad = f[..f.len() / 3].to_vec();
            bad.truncate(40);
            bad.extend_from_slice(&[0x12; 200]);
            bad.extend_from_slice(&[0xFF, 0xD9]);
            stream.extend(bad);
        } else {
            stream.extend_from_slice(f);
        }
        stream.extend_from_slice(b"junk between frames");
    }
    let source = Box::new(MjpegStream::new(
        std::io::Cursor::new(stream),
        Some((160, 120)),
        false,
    ));
    let (r, out) = run(&mut p, source, false);
    let s = r.unwrap();
    assert_eq!((s.frames, s.skipped), (4, 1), "{out}");
}

#[test]
fn mjpeg_frames_of_the_wrong_size_are_an_error() {
    let frames = mjpeg_frames(1);
    let mut s = MjpegStream::new(
        std::io::Cursor::new(frames[0].clone()),
        Some((640, 480)),
        false,
    );
    let e = s.next().unwrap_err();
    assert!(
        format!("{e}").contains("is 160x120, but --width/--height say 640x480"),
        "{e}"
    );
}

/// `jpeg` with an APP1 (EXIF) segment after its start marker that holds `thumbnail`, a whole
/// JPEG with its own end-of-image marker, as cameras and phones write them.
fn with_exif_thumbnail(jpeg: &[u8], thumbnail: &[u8]) -> Vec<u8> {
    let payload: Vec<u8> = b"Exif\0\0".iter().chain(thumbnail).copied().collect();
    let len = u16::try_from(payload.len() + 2).unwrap();
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn an_mjpeg_frame_with_an_exif_thumbnail_is_one_frame() {
    let frames = mjpeg_frames(2);
    let thumb = ffmpeg_output(1, "16:12", &["-f", "mjpeg"]);
    assert!(thumb.ends_with(&[0xFF, 0xD9]));
    let mut stream = with_exif_thumbnail(&frames[0], &thumb);
    stream.extend_from_slice(&frames[1]);
    // The first frame's bytes still decode as a JPEG (the thumbnail is an APP1 payload).
    assert_eq!(image::load_from_memory(&stream[..stream.len() - frames[1].len()]).unwrap().width(), 160);
    let mut s = MjpegStream::new(std::io::Cursor::new(stream), Some((160, 120)), false);
    for i in 0..2 {
        match s.next().unwrap() {
            Next::Frame(f) => assert_eq!((f.width, f.height), (160, 120), "frame {i}"),
            Next::Skipped(why) => panic!("frame {i} skipped: {why}"),
            Next::End => panic!("the stream ended after {i} frames"),
        }
    }
    assert!(matches!(s.next().unwrap(), Next::End));
}

#[test]
fn raw_frames_of_the_wrong_size_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("frames.yuyv");
    std::fs::write(&f, vec![0u8; 320 * 240 * 2 * 3 / 2]).unwrap();
    let e = open_source(
        f.to_str().unwrap(),
        320,
        240,
        StreamFormat::Raw(PixelFormat::Yuyv),
    )
    .err()
    .unwrap();
    assert!(
        format!("{e}").contains("not a whole number of 320x240"),
        "{e}"
    );
    // A pipe cannot be measured up front: the short last frame is the error.
    let mut s = RawStream::new(
        std::io::Cursor::new(vec![0u8; 100 * 2 * 10 + 7]),
        100,
        10,
        PixelFormat::Yuyv,
        true,
    )
    .unwrap();
    assert!(matches!(s.next().unwrap(), Next::Frame(_)));
    let e = s.next().unwrap_err();
    assert!(
        format!("{e}").contains("ended in the middle of frame 1: got 7 of 2000 bytes"),
        "{e}"
    );
    // Missing size.
    assert!(open_source("-", 0, 0, StreamFormat::Raw(PixelFormat::Yuyv)).is_err());
}

/// A fake camera: `frames` frames, then an I/O error, as an unplugged USB camera.
struct Flaky(u32);
impl FrameSource for Flaky {
    fn next(&mut self) -> Result<Next> {
        if self.0 == 0 {
            anyhow::bail!("No such device (os error 19)");
        }
        self.0 -= 1;
        Ok(Next::Frame(OwnedFrame {
            data: vec![128; 8 * 8 * 3],
            width: 8,
            height: 8,
            format: PixelFormat::Rgb8,
            index: 0,
        }))
    }
    fn is_live(&self) -> bool {
        true
    }
}

#[test]
fn a_camera_that_comes_back_is_reconnected() {
    let opens = Arc::new(AtomicU32::new(0));
    let o = opens.clone();
    // Opens 1 and 3 work (2 frames each); open 2 fails.
    let open = move || -> Result<Box<dyn FrameSource>> {
        match o.fetch_add(1, Ordering::SeqCst) {
            1 => anyhow::bail!("cannot open camera /dev/video0: No such file or directory"),
            _ => Ok(Box::new(Flaky(2))),
        }
    };
    let mut s = Reconnecting::new("/dev/video0", open, 3, Duration::from_millis(1)).unwrap();
    let mut frames = 0;
    let err = loop {
        match s.next() {
            Ok(Next::Frame(_)) => frames += 1,
            Ok(_) => unreachable!(),
            Err(e) => break e,
        }
        if frames == 4 {
            break anyhow::anyhow!("enough");
        }
    };
    assert_eq!(frames, 4, "{err:#}");
    assert_eq!(s.reconnects, 1);
}

#[test]
fn a_camera_that_disappears_is_a_clear_error_after_retries() {
    let mut p = pipeline();
    let open = || -> Result<Box<dyn FrameSource>> { Ok(Box::new(Flaky(3))) };
    let mut opened = false;
    let open_once = move || -> Result<Box<dyn FrameSource>> {
        if opened {
            anyhow::bail!("cannot open camera /dev/video0: No such file or directory")
        }
        opened = true;
        open()
    };
    let s = Reconnecting::new("/dev/video0", open_once, 3, Duration::from_millis(1)).unwrap();
    let (r, out) = run(&mut p, Box::new(s), false);
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("/dev/video0 is gone: gave up after 3 reconnection attempts"),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(
        out.lines().count() >= 1,
        "frames before the loss were classified"
    );
}

#[test]
fn folder_replay_classifies_every_image_and_skips_broken_ones() {
    let mut p = pipeline();
    let dir = tempfile::tempdir().unwrap();
    let img = image::open(photo()).unwrap().to_rgb8();
    for i in 0..3 {
        img.save(dir.path().join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("9.jpg"), b"not a jpeg").unwrap();
    let source = open_source(
        dir.path().to_str().unwrap(),
        0,
        0,
        StreamFormat::Raw(PixelFormat::Rgb8),
    )
    .unwrap();
    let (r, _) = run(&mut p, source, false);
    let s = r.unwrap();
    assert_eq!((s.frames, s.skipped, s.dropped), (3, 1, 0));
}

#[test]
fn folder_replay_reads_bmp_and_pnm_images() {
    let mut p = pipeline();
    let dir = tempfile::tempdir().unwrap();
    let img = image::open(photo()).unwrap();
    img.to_rgb8().save(dir.path().join("a.bmp")).unwrap();
    img.to_rgb8().save(dir.path().join("b.ppm")).unwrap();
    img.to_luma8().save(dir.path().join("c.pgm")).unwrap();
    std::fs::copy(dir.path().join("b.ppm"), dir.path().join("d.pnm")).unwrap();
    let source = open_source(dir.path().to_str().unwrap(), 0, 0, StreamFormat::Raw(PixelFormat::Rgb8)).unwrap();
    let (r, out) = run(&mut p, source, false);
    let s = r.unwrap();
    assert_eq!((s.frames, s.skipped), (4, 0), "{out}");
}

#[test]
fn raw_file_replay_reads_frames() {
    let mut p = pipeline();
    let raw = ffmpeg_output(3, "32:32", &["-f", "rawvideo", "-pix_fmt", "gray"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("clip.gray");
    std::fs::write(&f, &raw).unwrap();
    let source = open_source(f.to_str().unwrap(), 32, 32, "gray".parse().unwrap()).unwrap();
    let (r, _) = run(&mut p, source, false);
    assert_eq!(r.unwrap().frames, 3);
    let mut buf = Vec::new();
    std::fs::File::open(&f)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf.len(), 3 * 32 * 32);
}

// ---- sources that are child processes (device::io::child): real ffmpeg, a real HTTP server ----

/// A 2 s, 10 fps, 96x64 H.264 mp4 made by ffmpeg.
fn mp4_clip(dir: &std::path::Path) -> String {
    let path = dir.join("clip.mp4");
    let o = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", "2"])
        .args(["-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .expect("cannot run ffmpeg (apt-get install ffmpeg)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path.to_str().unwrap().to_string()
}

fn open_video(source: &str, size: (u32, u32), video: VideoOptions) -> Box<dyn FrameSource> {
    open_source_with_video(source, size.0, size.1, StreamFormat::Raw(PixelFormat::Rgb8), DecodeLimits::default(), video)
        .unwrap_or_else(|e| panic!("{source}: {e:#}"))
}

/// Reads up to `n` frames; their sizes, and whether the source ended.
fn read_frames(s: &mut dyn FrameSource, n: usize) -> (Vec<(u32, u32)>, bool) {
    let mut sizes = vec![];
    while sizes.len() < n {
        match s.next().unwrap_or_else(|e| panic!("after {} frames: {e:#}", sizes.len())) {
            Next::Frame(f) => sizes.push((f.width, f.height)),
            Next::Skipped(why) => panic!("skipped: {why}"),
            Next::End => return (sizes, true),
        }
    }
    (sizes, false)
}

#[test]
fn an_mp4_file_is_decoded_by_ffmpeg_with_its_size_found_by_ffprobe() {
    let dir = tempfile::tempdir().unwrap();
    let clip = mp4_clip(dir.path());
    let mut s = open_video(&clip, (0, 0), VideoOptions::default());
    assert!(!s.is_live(), "a file is a replay: every frame is classified");
    let (sizes, ended) = read_frames(s.as_mut(), 100);
    assert_eq!((sizes.len(), ended), (20, true));
    assert!(sizes.iter().all(|&s| s == (96, 64)), "{sizes:?}");
    // --width/--height scale it.
    let (sizes, _) = read_frames(open_video(&clip, (48, 32), VideoOptions::default()).as_mut(), 3);
    assert_eq!(sizes, [(48, 32); 3]);
    // --loop starts it again: more frames than the file holds.
    let looped = VideoOptions { looped: true, ..Default::default() };
    let (sizes, ended) = read_frames(open_video(&clip, (0, 0), looped).as_mut(), 45);
    assert_eq!((sizes.len(), ended), (45, false));
    // --realtime paces it at its 10 fps (a live source then).
    let realtime = VideoOptions { realtime: true, ..Default::default() };
    let mut s = open_video(&clip, (0, 0), realtime);
    assert!(s.is_live());
    let start = std::time::Instant::now();
    read_frames(s.as_mut(), 10);
    assert!(start.elapsed() >= Duration::from_millis(600), "10 frames at 10 fps in {:?}", start.elapsed());
    // A file that is not a video: ffprobe's words in the error.
    let bad = dir.path().join("bad.mp4");
    std::fs::write(&bad, b"not a video").unwrap();
    let e = open_source_with_video(bad.to_str().unwrap(), 0, 0, StreamFormat::Mjpeg, DecodeLimits::default(), VideoOptions::default())
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert!(e.contains("bad.mp4") && e.contains("no video stream"), "{e}");
}

/// An MJPEG-over-HTTP server on 127.0.0.1 (as IP cameras and `device live --view` serve it):
/// each connection gets `frames` JPEGs 40 ms apart, then is closed.
fn mjpeg_http_server(frames: Vec<Vec<u8>>) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/stream.mjpg", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let frames = frames.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = c.read(&mut req);
                let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n";
                if c.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for f in &frames {
                    let part = format!("--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", f.len());
                    let sent = c.write_all(part.as_bytes()).and_then(|_| c.write_all(f)).and_then(|_| c.write_all(b"\r\n"));
                    if sent.is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
        }
    });
    url
}

#[test]
fn an_http_mjpeg_stream_is_read_by_ffmpeg_and_reconnected_when_it_ends() {
    let url = mjpeg_http_server(mjpeg_frames(5));
    let mut s = open_video(&url, (0, 0), VideoOptions::default());
    assert!(s.is_live());
    // 12 frames from a server that closes every connection after 5: the source reconnected.
    let (sizes, ended) = read_frames(s.as_mut(), 12);
    assert_eq!((sizes.len(), ended), (12, false));
    assert!(sizes.iter().all(|&s| s == (160, 120)), "{sizes:?}");
}

#[test]
fn csi_camera_runs_the_boards_camera_program() {
    // A stand-in for Jetson's gst-launch-1.0 on PATH: it prints five 64x48 RGB frames.
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("gst-launch-1.0");
    std::fs::write(
        &script,
        "#!/bin/sh\nexec ffmpeg -loglevel error -f lavfi -i testsrc=size=64x48:rate=30 -frames:v 5 -f rawvideo -pix_fmt rgb24 -\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let model = common::compact(&common::fixtures("resnet8"), "resnet8", Form::Folded, Precision::Int8);
    let o = common::device_command(env!("CARGO_BIN_EXE_device"))
        .args(["live", "--model", model.to_str().unwrap(), "--source", "csi://0", "--width", "64", "--height", "48"])
        .args(["--max-frames", "5", "--json"])
        .env("PATH", path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().filter(|l| l.starts_with('{')).count(), 5, "{out}");
    // Without a camera program: an error that names the programs looked for.
    let o = common::device_command(env!("CARGO_BIN_EXE_device"))
        .args(["live", "--model", model.to_str().unwrap(), "--source", "csi://0", "--width", "64", "--height", "48"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("rpicam-vid") && err.contains("gst-launch-1.0"), "{err}");
}

/// Frame `n` of a video file as RGB bytes (ffmpeg).
fn rgb_frame(video: &str, n: usize) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i", video, "-vf", &format!("select=eq(n\\,{n})"), "-frames:v", "1"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn output_records_the_video_with_the_top1_label_drawn_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let clip = mp4_clip(dir.path());
    let out = dir.path().join("labelled.mp4");
    let model = common::compact(&common::fixtures("resnet8"), "resnet8", Form::Folded, Precision::Int8);
    let o = common::device_command(env!("CARGO_BIN_EXE_device"))
        .args(["live", "--model", model.to_str().unwrap(), "--source", &clip, "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Every frame of the replay, at the clip's size.
    let probe = device::io::child::probe(out.to_str().unwrap()).unwrap();
    assert_eq!((probe.width, probe.height), (96, 64));
    let count = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "20");
    // The label's box darkens the top-left corner; the bottom rows are the clip's.
    let (a, b) = (rgb_frame(&clip, 5), rgb_frame(out.to_str().unwrap(), 5));
    let row = 96 * 3;
    let mean_diff = |rows: std::ops::Range<usize>| {
        let r = rows.start * row..rows.end * row;
        a[r.clone()].iter().zip(&b[r]).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / ((rows.end - rows.start) * row) as f64
    };
    let (top, bottom) = (mean_diff(8..14), mean_diff(52..64));
    assert!(top > 3.0 * bottom.max(1.0), "label rows differ by {top:.1}, others by {bottom:.1}");
}
