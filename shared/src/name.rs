//! Fixed-capacity layer and parameter names: what the graph yields and errors carry, without
//! allocation.

use heapless::String;

/// Longest layer name (`layer3.35.downsample.0` is 22 bytes).
pub const NAME_CAP: usize = 32;
/// Longest parameter name (layer name + `.num_batches_tracked`).
pub const PARAM_NAME_CAP: usize = 56;

pub type LayerName = String<NAME_CAP>;
pub type ParamName = String<PARAM_NAME_CAP>;

/// `name` as a fixed-capacity string, cut at the capacity (for error messages about untrusted
/// names).
pub fn truncated<const N: usize>(name: &str) -> String<N> {
    let mut n = String::new();
    for ch in name.chars() {
        if n.push(ch).is_err() {
            break;
        }
    }
    n
}
