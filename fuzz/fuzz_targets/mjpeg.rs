//! The MJPEG splitter (`MjpegStream`, what `device live --format mjpeg` reads): the input is the
//! stream; frames are taken until the end or an error, and each decoded frame is checked.
#![no_main]

use std::io::Cursor;
use std::sync::Once;

use device::io::decode::DecodeLimits;
use device::io::source::{FrameSource, MjpegStream, Next};
use libfuzzer_sys::fuzz_target;

static DEFAULT_PANIC_HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, even one the reader catches (a JPEG
    // decoder panic is a corrupt frame). With std's hook back, only a panic that escapes
    // `next()` reaches fuzz_target!'s own abort, and counts as a crash.
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    // The first byte picks whether frames must have a given size (--width/--height).
    let (expect, stream) = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (Some((u32::from(b >> 4) + 1, u32::from(b >> 1 & 7) + 1)), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    // A 64k-pixel budget (256x256): headers claiming more take the over-budget path without a
    // decode. At the product's 64 megapixels the fuzzer learns to claim large images, every such
    // input fills a whole image (tens of ms), and the rate fell from 2,100 to 130 exec/s; the
    // decoder runs the same code at any size.
    let limits = DecodeLimits { max_pixels: 1 << 16 };
    let mut source = MjpegStream::new(Cursor::new(stream), expect, false).with_limits(limits);
    // Every frame holds at least the 4 marker bytes, so a stream has at most len / 4 + 1 of them.
    for _ in 0..=stream.len() / 4 + 1 {
        match source.next() {
            Ok(Next::Frame(f)) => {
                f.frame().expect("a decoded frame is a valid frame");
            }
            Ok(Next::Skipped(_)) => {}
            Ok(Next::End) | Err(_) => return,
        }
    }
    panic!("more frames than the stream can hold");
});
