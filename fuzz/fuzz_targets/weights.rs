//! The compact weights reader: `WeightsFile::parse`, what device and host run on an `.evw` file's
//! bytes, then every accessor a loader calls on a file that parsed.
//!
//! The CRC-32 trailer rejects nearly every mutation, so each input is parsed twice: as given, and
//! with the trailer replaced by the CRC of the rest, which lets mutations reach the header, the
//! tensor table and the tensor bounds checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::weights::{checksum, WeightsFile};

fn exercise(bytes: &[u8]) {
    let Ok(file) = WeightsFile::parse(bytes) else { return };
    let _ = file.labels().count();
    let _ = file.header().producer.len();
    for t in file.tensors() {
        assert_eq!(t.numel() * t.dtype.size(), t.data.len());
        let _ = t.shape().iter().product::<u32>();
        let _ = (t.as_f32(), t.as_f16(), t.as_i8(), t.as_i32(), t.as_i64());
        assert_eq!(t.to_f32_vec().len(), t.numel());
        assert!(file.contains(t.name));
    }
    let _ = file.check_against_graph();
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let body = fixed.len() - 4;
        let crc = checksum(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_le_bytes());
        exercise(&fixed);
    }
});
