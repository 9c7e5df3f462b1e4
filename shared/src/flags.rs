//! Range-checked parsers for numeric command-line flags, used by `host` and `device` alike: a bad
//! value is one error line naming the range (clap adds the flag's name), before any file is read.
//! Negative, non-numeric, NaN and infinite input all get the same kind of message.

use alloc::format;
use alloc::string::String;
use core::fmt::Display;
use core::str::FromStr;

/// A parser for whole numbers in `lo..=hi`.
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

/// Where a number may lie: `lo..=hi`, or with `open_lo`/`open_hi` the bound itself excluded.
#[derive(Clone, Copy, Debug)]
pub struct Bounds<T> {
    pub lo: T,
    pub hi: T,
    pub open_lo: bool,
    pub open_hi: bool,
}

impl<T: PartialOrd + Display + Copy> Bounds<T> {
    fn contains(&self, v: T) -> bool {
        let above = if self.open_lo { v > self.lo } else { v >= self.lo };
        let below = if self.open_hi { v < self.hi } else { v <= self.hi };
        above && below
    }
}

impl<T: Display> Display for Bounds<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (l, r) = (if self.open_lo { "(" } else { "[" }, if self.open_hi { ")" } else { "]" });
        write!(f, "{l}{}, {}{r}", self.lo, self.hi)
    }
}

/// A parser for numbers in `lo..=hi` (f32 or f64).
pub fn float_in<T>(lo: T, hi: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    float_within(Bounds { lo, hi, open_lo: false, open_hi: false })
}

/// A parser for numbers within `bounds` (NaN is in no range, so it is refused).
pub fn float_within<T>(
    bounds: Bounds<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |s: &str| {
        let v: T = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number in {bounds}"))?;
        if !bounds.contains(v) {
            return Err(format!("{s} is not in {bounds}"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_themselves_in_errors() {
        let p = int_in::<usize>(1, 20);
        assert_eq!(p("1"), Ok(1));
        assert_eq!(p("20"), Ok(20));
        assert_eq!(p("0"), Err("0 is not in 1..=20".into()));
        assert_eq!(p("-5"), Err("-5 is not in 1..=20".into()));
        assert_eq!(p("x"), Err("`x` is not a whole number in 1..=20".into()));
        let f = float_in(0.0f32, 1.0);
        assert_eq!(f("0.5"), Ok(0.5));
        assert_eq!(f("1.01"), Err("1.01 is not in [0, 1]".into()));
        assert!(f("NaN").is_err() && f("-0.1").is_err() && f("inf").is_err());
        let open = float_within(Bounds { lo: 0.0f64, hi: 1.0, open_lo: false, open_hi: true });
        assert_eq!(open("0"), Ok(0.0));
        assert_eq!(open("1"), Err("1 is not in [0, 1)".into()));
        assert_eq!(open("abc"), Err("`abc` is not a number in [0, 1)".into()));
    }
}
