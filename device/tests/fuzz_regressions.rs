//! Inputs with which the fuzz targets (fuzz/, docs/fuzzing.md) crashed a reader, replayed
//! through the same reader without the fuzzer. Each input is also a seed of its fuzz target.

use std::io::Cursor;
use std::path::Path;

use device::io::source::{FrameSource, MjpegStream, Next};

/// A fuzz input: `fuzz/seeds/TARGET/NAME`.
fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One JPEG on which zune-jpeg 0.5.15 (the `image` crate's decoder) overflows i32 in
/// `block[0] = *dc_prediction * qt_table[0]` (bitstream.rs:400). Where overflow checks are on
/// (debug builds, the fuzz build) the panic came out of `MjpegStream::next`; the frame must be
/// one corrupt frame instead (in release builds the product wraps: a frame or a corrupt frame).
#[test]
fn jpeg_decoder_overflow_is_one_corrupt_frame_not_a_panic() {
    let input = seed("mjpeg", "zune-jpeg-dc-overflow.bin");
    // The fuzz target's first byte selects an expected size (even: none); the stream follows.
    assert_eq!(input[0] & 1, 0);
    let mut source = MjpegStream::new(Cursor::new(&input[1..]), None, false);
    match source.next().unwrap() {
        Next::Skipped(why) => assert!(why.starts_with("frame 0: "), "{why}"),
        Next::Frame(f) => assert_eq!(f.index, 0),
        Next::End => panic!("the stream holds a JPEG"),
    }
    assert!(matches!(source.next().unwrap(), Next::End));
}
