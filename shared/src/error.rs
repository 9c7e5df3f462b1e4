//! The crate's one error type.

use core::fmt;

use crate::name::{LayerName, ParamName};

/// Everything that can go wrong in `shared`. Messages say what is wrong; callers add the file name.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The file does not start with the weights-format magic bytes.
    BadMagic,
    /// The file's format version is not one this build reads.
    UnsupportedVersion { found: u32, supported: u32 },
    /// The file ends before a structure it declares.
    Truncated { needed: u64, available: u64 },
    /// The CRC-32 stored in the trailer does not match the file's contents.
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The postcard-encoded header or tensor table could not be decoded.
    MalformedHeader,
    /// A tensor entry is inconsistent (bad bounds, size, alignment or dtype).
    BadTensor { name: ParamName, why: &'static str },
    /// A tensor the graph needs is not in the file.
    MissingTensor { name: ParamName },
    /// A tensor has another shape than the graph says.
    ShapeMismatch { name: ParamName },
    /// A tensor's bytes are not aligned for a zero-copy view; copy it instead.
    Misaligned { name: ParamName },
    /// The graph configuration cannot describe a network.
    InvalidConfig(&'static str),
    /// A frame's byte length does not match its declared width, height and pixel format.
    FrameSize { expected: u64, got: u64 },
    /// An output or scratch buffer is smaller than required.
    BufferTooSmall { needed: u64, got: u64 },
    /// Preprocessing parameters are inconsistent (zero size, crop larger than resize, ...).
    InvalidPreprocess(&'static str),
    /// BatchNorm folding got slices of inconsistent lengths.
    BadFold(&'static str),
    /// A layer named as a quantized conv or linear layer is no conv or linear layer of the graph.
    UnknownLayer { name: LayerName },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic => write!(f, "not a weights file (bad magic bytes)"),
            Error::UnsupportedVersion { found, supported } => {
                write!(f, "weights format version {found} is not supported (this build reads version {supported})")
            }
            Error::Truncated { needed, available } => {
                write!(f, "file is truncated: needs {needed} bytes, has {available}")
            }
            Error::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): file is corrupt")
            }
            Error::MalformedHeader => write!(f, "malformed header or tensor table"),
            Error::BadTensor { name, why } => write!(f, "tensor `{name}`: {why}"),
            Error::MissingTensor { name } => write!(f, "tensor `{name}` is missing"),
            Error::ShapeMismatch { name } => write!(f, "tensor `{name}` has the wrong shape for this architecture"),
            Error::Misaligned { name } => write!(f, "tensor `{name}` is not aligned for a zero-copy view"),
            Error::InvalidConfig(why) => write!(f, "invalid network configuration: {why}"),
            Error::FrameSize { expected, got } => {
                write!(f, "frame has {got} bytes, expected {expected} for its width, height and pixel format")
            }
            Error::BufferTooSmall { needed, got } => write!(f, "buffer too small: needs {needed} elements, got {got}"),
            Error::InvalidPreprocess(why) => write!(f, "invalid preprocessing parameters: {why}"),
            Error::BadFold(why) => write!(f, "cannot fold BatchNorm: {why}"),
            Error::UnknownLayer { name } => write!(f, "`{name}` is not a conv or linear layer of this network"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}
