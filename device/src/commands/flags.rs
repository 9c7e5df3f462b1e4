//! Parsers for device's structured command-line flags (`--input-size`, `--in-channels`); the
//! numeric range parsers are `shared::flags`, shared with `host`.

pub use shared::flags::{float_in, int_in};

/// Sides of `--input-size`: at least one 32x downsampling ResNet stage's worth of pixels, at most
/// what a board's memory takes.
pub const INPUT_SIDE: (u64, u64) = (16, 4096);

/// `--input-size HxW`, each side in [`INPUT_SIDE`].
pub fn input_size(s: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = INPUT_SIDE;
    let (h, w) = s
        .split_once('x')
        .ok_or_else(|| format!("`{s}` is not HxW (e.g. 224x224), each side in {lo}..={hi}"))?;
    let side = int_in::<u32>(lo, hi);
    Ok((
        side(h).map_err(|e| format!("height {e}"))?,
        side(w).map_err(|e| format!("width {e}"))?,
    ))
}

/// Input channels of `convert --in-channels`: 1 (grayscale) or 3 (RGB), what preprocessing feeds.
pub fn channels(s: &str) -> Result<u8, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("`{s}` is not 1 or 3")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_size_and_channels() {
        assert_eq!(input_size("224x160"), Ok((224, 160)));
        assert!(input_size("0x224").unwrap_err().contains("height 0 is not in 16..=4096"));
        assert!(input_size("224").is_err());
        assert_eq!(channels("3"), Ok(3));
        assert!(channels("2").is_err());
    }
}
