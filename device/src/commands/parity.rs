//! The parity file `host export` writes next to a model (`<model>.parity.safetensors`), the
//! reference the device checks itself against: [`Parity`] is `shared::parity`'s, the one
//! definition of the format (`docs/parity-file.md`) that the host writes with; [`compare`] holds
//! the comparisons the tests and `device parity` make.

pub use shared::parity::Parity;

/// Comparison helpers shared by the tests and `device parity`.
pub mod compare {
    /// Index of the largest value (first on ties).
    pub fn argmax(v: &[f32]) -> usize {
        v.iter()
            .enumerate()
            .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
    }

    /// `max |a - b| / max |b|`: the error relative to the reference's scale.
    pub fn rel_err(a: &[f32], reference: &[f32]) -> f32 {
        let scale = reference
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()))
            .max(f32::MIN_POSITIVE);
        a.iter()
            .zip(reference)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }
}
