//! Parsers for the numeric command-line flags: each checks its flag's valid range up front, so a
//! bad value is one error line naming the flag and the range (clap adds the flag's name), before
//! any file is read.

/// A parser for whole numbers in `lo..=hi`. Negative and non-numeric input get the same
/// message with the range.
pub fn int_in<T: TryFrom<u64>>(
    lo: u64,
    hi: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: i128 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number in {lo}..={hi}"))?;
        if v < i128::from(lo) || v > i128::from(hi) {
            return Err(format!("{v} is not in {lo}..={hi}"));
        }
        T::try_from(v as u64).map_err(|_| format!("{v} does not fit this platform's integers"))
    }
}

/// A parser for numbers in `lo..=hi` (NaN and infinities refused).
pub fn float_in(
    lo: f32,
    hi: f32,
) -> impl Fn(&str) -> Result<f32, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: f32 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number in {lo}..={hi}"))?;
        if !(lo..=hi).contains(&v) {
            return Err(format!("{s} is not in {lo}..={hi}"));
        }
        Ok(v)
    }
}

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
    fn ranges_are_inclusive_and_errors_name_them() {
        let p = int_in::<usize>(1, 20);
        assert_eq!(p("1"), Ok(1));
        assert_eq!(p("20"), Ok(20));
        assert_eq!(p("0"), Err("0 is not in 1..=20".into()));
        assert_eq!(p("-5"), Err("-5 is not in 1..=20".into()));
        assert_eq!(p("x"), Err("`x` is not a whole number in 1..=20".into()));
        let f = float_in(0.0, 1.0);
        assert_eq!(f("0.5"), Ok(0.5));
        assert!(f("NaN").is_err() && f("1.01").is_err() && f("-0.1").is_err());
        assert_eq!(input_size("224x160"), Ok((224, 160)));
        assert!(input_size("0x224").unwrap_err().contains("height 0 is not in 16..=4096"));
        assert!(input_size("224").is_err());
        assert_eq!(channels("3"), Ok(3));
        assert!(channels("2").is_err());
    }
}
