//! The weights reader on hostile input: random bytes, every truncation, bit flips, and headers
//! that pass the checksum but lie about their tensors. Every case must be an `Err`, never a panic.

use proptest::prelude::*;
use shared::graph::{Form, ParamKind};
use shared::weights::{checksum, Precision, WeightsFile, WeightsWriter, MAGIC, VERSION};
use shared::{Error, Preprocess, ResNetConfig};

fn valid_file() -> Vec<u8> {
    // A narrow ResNet-8 keeps the file small (a few kB), so thousands of cases run fast.
    let config = ResNetConfig { base_width: 4, stem_width: 4, ..ResNetConfig::resnet8().with_in_channels(1) };
    let mut w = WeightsWriter::new(config, Form::Training, Precision::F32, Preprocess::FASHION_MNIST)
        .labels(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    config.for_each_param(Form::Training, |p| {
        if p.kind != ParamKind::BnNumBatchesTracked {
            w.add_f32(&p.name, p.shape(), &vec![0.5; p.numel() as usize]).unwrap();
        }
    });
    w.finish().unwrap()
}

/// Re-seals a modified file with a correct checksum, so the structural checks behind it are reached.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 4;
    let crc = checksum(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn every_truncation_is_an_error() {
    let good = valid_file();
    WeightsFile::parse(&good).unwrap().check_against_graph().unwrap();
    for len in 0..good.len() {
        assert!(WeightsFile::parse(&good[..len]).is_err(), "truncated to {len} bytes parsed");
    }
}

#[test]
fn lying_headers_are_errors() {
    let good = valid_file();
    let header_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    // Claim a header longer than the file.
    let mut long = good.clone();
    long[12..16].copy_from_slice(&(u32::MAX).to_le_bytes());
    assert!(matches!(WeightsFile::parse(&long), Err(Error::Truncated { .. })));
    // Flip every header byte in turn, re-sealed: the structure checks must catch what the CRC no longer does.
    for i in 16..16 + header_len {
        for bit in [0x01, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            let b = reseal(b);
            if let Ok(f) = WeightsFile::parse(&b) {
                // Some flips keep a valid file (a label letter, a preprocessing float): then every
                // accessor must still work without panicking.
                for t in f.tensors() {
                    let _ = t.as_f32();
                }
                let _ = f.check_against_graph();
            }
        }
    }
}

#[test]
fn magic_and_version_messages() {
    let good = valid_file();
    assert_eq!(&good[..8], &MAGIC);
    let mut v = good.clone();
    v[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let msg = WeightsFile::parse(&v).unwrap_err().to_string();
    assert_eq!(msg, "weights format version 2 is not supported (this build reads version 1)");
    let msg = WeightsFile::parse(b"\x08\x01\x12\x0bpytorch onnx").unwrap_err().to_string();
    assert_eq!(msg, "not a weights file (bad magic bytes)");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = WeightsFile::parse(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_preamble_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[0; 4]);
        let bytes = reseal(bytes);
        // Random headers almost never decode; when one does, its accessors must not panic either.
        if let Ok(f) = WeightsFile::parse(&bytes) {
            for t in f.tensors() {
                prop_assert_eq!(t.to_f32_vec().len(), t.numel());
            }
        }
    }

    #[test]
    fn corrupted_valid_files_are_caught(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = valid_file();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        prop_assert!(WeightsFile::parse(&bytes).is_err());
    }
}
