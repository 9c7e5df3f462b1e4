//! The raw frame reader (`RawStream`, what `device live --format yuyv|rgb24|gray` reads): the
//! first three bytes give a small width, height and pixel format, the rest is the stream. Each
//! frame is then preprocessed the way the live pipeline does (a small Resize + CenterCrop), which
//! runs the YUYV and RGB conversions on fuzzed pixels.
#![no_main]

use std::io::Cursor;

use device::io::source::{FrameSource, Next, RawStream};
use libfuzzer_sys::fuzz_target;
use shared::{PixelFormat, Preprocess};

fuzz_target!(|data: &[u8]| {
    let [w, h, f, stream @ ..] = data else { return };
    let width = u32::from(w % 17);
    let height = u32::from(h % 17);
    let format = match f % 3 {
        0 => PixelFormat::Yuyv,
        1 => PixelFormat::Rgb8,
        _ => PixelFormat::Gray8,
    };
    let resize = u32::from(f >> 2 & 7) + 1;
    let pre = Preprocess {
        resize,
        crop: u32::from(f >> 5).min(resize - 1) + 1,
        mean: [0.5; 3],
        std: [0.25; 3],
        channels: if f & 0x80 == 0 { 3 } else { 1 },
    };
    // Zero sizes and odd YUYV widths are refused here with a clear error.
    let Ok(mut source) = RawStream::new(Cursor::new(stream), width, height, format, false) else {
        assert!(width == 0 || height == 0 || (format == PixelFormat::Yuyv && width % 2 == 1));
        return;
    };
    let frame_len = format.frame_len(width, height) as usize;
    let mut frames = 0;
    loop {
        match source.next() {
            Ok(Next::Frame(f)) => {
                assert_eq!(f.index, frames);
                frames += 1;
                let frame = f.frame().expect("a raw frame is a valid frame");
                let out = pre.run_to_vec(&frame).expect("valid preprocessing of a valid frame");
                assert!(out.iter().all(|v| v.is_finite()));
            }
            Ok(Next::Skipped(why)) => panic!("raw frames are never skipped: {why}"),
            Ok(Next::End) => {
                assert_eq!(stream.len(), frames as usize * frame_len);
                return;
            }
            Err(_) => {
                // Only a partial last frame is an error.
                assert_eq!(stream.len() / frame_len, frames as usize);
                assert_ne!(stream.len() % frame_len, 0);
                return;
            }
        }
    }
});
