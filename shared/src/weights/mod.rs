//! The compact weights format: a postcard header, then raw little-endian tensor blobs, then a
//! CRC-32. The normative description is `docs/weights-format.md`; keep the two in step.
//!
//! Reading borrows the file's bytes: [`WeightsFile::parse`] validates everything once (magic,
//! version, checksum, header, every tensor's bounds, size and alignment, the graph config), after
//! which tensor views are zero-copy `&[f32]` / `&[i8]` / ... slices. An int8 layer's six
//! tensors are read and written as one record, [`Int8Layer`], checked against the graph.

use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

use crate::config::ResNetConfig;
use crate::error::Error;
use crate::graph::{Form, ParamKind};
use crate::name::{truncated, ParamName};
use crate::preprocess::Preprocess;

mod int8;
pub use int8::Int8Layer;

/// First 8 bytes of every weights file. The `\r\n` catches text-mode transfers, like PNG's.
pub const MAGIC: [u8; 8] = *b"EVWTS\x00\r\n";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Tensor data offsets are multiples of this (enough for any SIMD load and for mmap views).
pub const ALIGN: u64 = 64;
const PREAMBLE: usize = 16; // magic + version + header length
const TRAILER: usize = 4; // CRC-32

/// How the network's weights are stored overall (individual tensors carry their own [`DType`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Precision {
    F32,
    F16,
    /// int8 per-output-channel weights, int32 biases, per-tensor int8 activations.
    Int8,
}

/// Element type of one stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DType {
    F32,
    F16,
    I8,
    I32,
    I64,
}

impl DType {
    pub const fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }
}

/// The fixed part of the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header<'a> {
    pub config: ResNetConfig,
    pub form: Form,
    pub precision: Precision,
    pub preprocess: Preprocess,
    /// Class labels, one per line, `num_classes` lines (may be empty: classes are then numbered).
    pub labels: &'a str,
    /// Free text saying what wrote the file (tool, version, command).
    pub producer: &'a str,
    /// Number of [`TensorEntry`] records that follow the header.
    pub tensor_count: u32,
}

/// One tensor record of the table that follows the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: HVec<u32, 4>,
    /// Absolute byte offset in the file, a multiple of [`ALIGN`].
    pub offset: u64,
    pub nbytes: u64,
}

/// A validated weights file borrowing its bytes.
#[derive(Clone, Debug)]
pub struct WeightsFile<'a> {
    header: Header<'a>,
    /// The encoded tensor table (`tensor_count` postcard records).
    table: &'a [u8],
    bytes: &'a [u8],
}

/// A zero-copy view of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    shape: HVec<u32, 4>,
    pub data: &'a [u8],
}

fn bad(name: &str, why: &'static str) -> Error {
    Error::BadTensor { name: truncated_name(name), why }
}

fn truncated_name(name: &str) -> ParamName {
    truncated(name)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// CRC-32 (IEEE) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

impl<'a> WeightsFile<'a> {
    /// Validates the whole file. Never panics on any input.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let len = bytes.len() as u64;
        let truncated = |needed: u64| Error::Truncated { needed, available: len };
        if bytes.len() < MAGIC.len() {
            return if MAGIC.starts_with(bytes) { Err(truncated(MAGIC.len() as u64)) } else { Err(Error::BadMagic) };
        }
        if bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        if bytes.len() < PREAMBLE + TRAILER {
            return Err(truncated((PREAMBLE + TRAILER) as u64));
        }
        let version = read_u32(bytes, 8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { found: version, supported: VERSION });
        }
        let header_len = u64::from(read_u32(bytes, 12));
        let body_end = bytes.len() - TRAILER;
        if PREAMBLE as u64 + header_len > body_end as u64 {
            return Err(truncated(PREAMBLE as u64 + header_len + TRAILER as u64));
        }
        let stored = read_u32(bytes, body_end);
        let computed = checksum(&bytes[..body_end]);
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        let header_bytes = &bytes[PREAMBLE..PREAMBLE + header_len as usize];
        let (header, table) =
            postcard::take_from_bytes::<Header<'a>>(header_bytes).map_err(|_| Error::MalformedHeader)?;
        header.config.validate()?;
        header.preprocess.validate()?;
        let file = WeightsFile { header, table, bytes };
        // Validate every entry now so later accessors cannot fail on structure.
        let mut rest = table;
        for _ in 0..file.header.tensor_count {
            let (entry, r) = postcard::take_from_bytes::<TensorEntry<'a>>(rest).map_err(|_| Error::MalformedHeader)?;
            rest = r;
            file.check_entry(&entry, body_end as u64)?;
        }
        if !rest.is_empty() {
            return Err(Error::MalformedHeader);
        }
        Ok(file)
    }

    fn check_entry(&self, e: &TensorEntry<'_>, data_end: u64) -> Result<(), Error> {
        if e.offset % ALIGN != 0 {
            return Err(bad(e.name, "data offset is not 64-byte aligned"));
        }
        let data_start = (PREAMBLE + self.table_end()) as u64;
        let end = e.offset.checked_add(e.nbytes).ok_or_else(|| bad(e.name, "data range overflows"))?;
        if e.offset < data_start || end > data_end {
            return Err(bad(e.name, "data range lies outside the data region"));
        }
        let numel = e.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
        match numel.and_then(|n| n.checked_mul(e.dtype.size() as u64)) {
            Some(n) if n == e.nbytes => Ok(()),
            _ => Err(bad(e.name, "byte length does not match shape and dtype")),
        }
    }

    fn table_end(&self) -> usize {
        // `table` is a suffix of the header bytes, which start at PREAMBLE.
        read_u32(self.bytes, 12) as usize
    }

    pub fn header(&self) -> &Header<'a> {
        &self.header
    }
    pub fn config(&self) -> &ResNetConfig {
        &self.header.config
    }
    /// The whole file, as parsed.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Class labels (empty when the file has none).
    pub fn labels(&self) -> core::str::Lines<'a> {
        self.header.labels.lines()
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'a>> + '_ {
        let mut rest = self.table;
        let bytes = self.bytes;
        (0..self.header.tensor_count).map_while(move |_| {
            // Validated in `parse`: decoding cannot fail here.
            let (e, r) = postcard::take_from_bytes::<TensorEntry<'a>>(rest).ok()?;
            rest = r;
            let data = &bytes[e.offset as usize..(e.offset + e.nbytes) as usize];
            Some(TensorView { name: e.name, dtype: e.dtype, shape: e.shape, data })
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'a>, Error> {
        self.tensors().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor { name: truncated_name(name) })
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors().any(|t| t.name == name)
    }

    /// Checks that every parameter the graph needs (for the file's form) is present with the
    /// graph's shape. Quantized layers may store weights as I8 and biases as I32; BatchNorm's
    /// `num_batches_tracked` counter is optional.
    pub fn check_against_graph(&self) -> Result<(), Error> {
        let mut result = Ok(());
        self.header.config.for_each_param(self.header.form, |p| {
            if result.is_err() || p.kind == ParamKind::BnNumBatchesTracked {
                return;
            }
            result = match self.tensor(&p.name) {
                Ok(t) if t.shape() != p.shape() => Err(Error::ShapeMismatch { name: p.name.clone() }),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
        });
        result
    }
}

impl<'a> TensorView<'a> {
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    fn cast<T: bytemuck::Pod>(&self, want: DType) -> Result<&'a [T], Error> {
        if self.dtype != want {
            return Err(bad(self.name, "stored with another dtype than requested"));
        }
        if cfg!(target_endian = "big") && self.dtype.size() > 1 {
            return Err(bad(self.name, "zero-copy views need a little-endian CPU; use to_f32_vec"));
        }
        bytemuck::try_cast_slice(self.data).map_err(|_| Error::Misaligned { name: truncated_name(self.name) })
    }

    pub fn as_f32(&self) -> Result<&'a [f32], Error> {
        self.cast(DType::F32)
    }
    pub fn as_f16(&self) -> Result<&'a [half::f16], Error> {
        // half::f16 is a transparent u16.
        self.cast::<u16>(DType::F16).map(|s| bytemuck::cast_slice::<u16, half::f16>(s))
    }
    pub fn as_i8(&self) -> Result<&'a [i8], Error> {
        self.cast(DType::I8)
    }
    pub fn as_i32(&self) -> Result<&'a [i32], Error> {
        self.cast(DType::I32)
    }
    pub fn as_i64(&self) -> Result<&'a [i64], Error> {
        self.cast(DType::I64)
    }

    /// Element-wise conversion to f32 (raw values: int8 stays unscaled). Works on any alignment
    /// and endianness.
    #[cfg(feature = "alloc")]
    pub fn to_f32_vec(&self) -> alloc::vec::Vec<f32> {
        let n = self.dtype.size();
        self.data
            .chunks_exact(n)
            .map(|c| match self.dtype {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                DType::I8 => c[0] as i8 as f32,
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                DType::I64 => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            })
            .collect()
    }
}

/// Builds a weights file in memory (feature `alloc`).
#[cfg(feature = "alloc")]
pub struct WeightsWriter {
    config: ResNetConfig,
    form: Form,
    precision: Precision,
    preprocess: Preprocess,
    labels: alloc::string::String,
    producer: alloc::string::String,
    tensors: alloc::vec::Vec<(alloc::string::String, DType, HVec<u32, 4>, alloc::vec::Vec<u8>)>,
}

#[cfg(feature = "alloc")]
impl WeightsWriter {
    pub fn new(config: ResNetConfig, form: Form, precision: Precision, preprocess: Preprocess) -> Self {
        WeightsWriter {
            config,
            form,
            precision,
            preprocess,
            labels: alloc::string::String::new(),
            producer: alloc::string::String::new(),
            tensors: alloc::vec::Vec::new(),
        }
    }

    /// Class labels, one per class (must not contain newlines).
    pub fn labels<S: AsRef<str>>(mut self, labels: &[S]) -> Self {
        self.labels = labels.iter().map(|s| s.as_ref()).collect::<alloc::vec::Vec<_>>().join("\n");
        self
    }

    pub fn producer(mut self, producer: &str) -> Self {
        self.producer = producer.into();
        self
    }

    /// Adds a tensor from its raw little-endian bytes.
    pub fn add_raw(&mut self, name: &str, dtype: DType, shape: &[u32], data: alloc::vec::Vec<u8>) -> Result<(), Error> {
        let shape: HVec<u32, 4> = HVec::from_slice(shape).map_err(|_| bad(name, "more than 4 dimensions"))?;
        let numel: u64 = shape.iter().map(|&d| u64::from(d)).product();
        if numel * dtype.size() as u64 != data.len() as u64 {
            return Err(bad(name, "byte length does not match shape and dtype"));
        }
        if self.tensors.iter().any(|t| t.0 == name) {
            return Err(bad(name, "added twice"));
        }
        self.tensors.push((name.into(), dtype, shape, data));
        Ok(())
    }

    pub fn add_f32(&mut self, name: &str, shape: &[u32], data: &[f32]) -> Result<(), Error> {
        self.add_raw(name, DType::F32, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn add_f16(&mut self, name: &str, shape: &[u32], data: &[half::f16]) -> Result<(), Error> {
        self.add_raw(name, DType::F16, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn add_i8(&mut self, name: &str, shape: &[u32], data: &[i8]) -> Result<(), Error> {
        self.add_raw(name, DType::I8, shape, data.iter().map(|&x| x as u8).collect())
    }
    pub fn add_i32(&mut self, name: &str, shape: &[u32], data: &[i32]) -> Result<(), Error> {
        self.add_raw(name, DType::I32, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn add_i64(&mut self, name: &str, shape: &[u32], data: &[i64]) -> Result<(), Error> {
        self.add_raw(name, DType::I64, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Serializes the file. The offsets depend on the header length, which depends on the
    /// offsets' varint sizes, so layout is computed until it is stable (two rounds in practice).
    pub fn finish(self) -> Result<alloc::vec::Vec<u8>, Error> {
        use alloc::vec::Vec;
        let header = Header {
            config: self.config,
            form: self.form,
            precision: self.precision,
            preprocess: self.preprocess,
            labels: &self.labels,
            producer: &self.producer,
            tensor_count: self.tensors.len() as u32,
        };
        let align = |x: u64| x.div_ceil(ALIGN) * ALIGN;
        let mut header_len = 0u64;
        let (encoded, offsets) = loop {
            let mut offsets = Vec::with_capacity(self.tensors.len());
            let mut at = align(PREAMBLE as u64 + header_len);
            for t in &self.tensors {
                offsets.push(at);
                at = align(at + t.3.len() as u64);
            }
            let mut encoded = postcard::to_allocvec(&header).map_err(|_| Error::MalformedHeader)?;
            for (t, &offset) in self.tensors.iter().zip(&offsets) {
                let e = TensorEntry { name: &t.0, dtype: t.1, shape: t.2.clone(), offset, nbytes: t.3.len() as u64 };
                encoded.extend(postcard::to_allocvec(&e).map_err(|_| Error::MalformedHeader)?);
            }
            if encoded.len() as u64 == header_len {
                break (encoded, offsets);
            }
            header_len = encoded.len() as u64;
        };
        let header_len32 = u32::try_from(encoded.len()).map_err(|_| Error::MalformedHeader)?;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&header_len32.to_le_bytes());
        out.extend_from_slice(&encoded);
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            out.resize(offset as usize, 0);
            out.extend_from_slice(&t.3);
        }
        let crc = checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_file(precision: Precision) -> std::vec::Vec<u8> {
        let config = ResNetConfig::resnet8().with_in_channels(1);
        let mut w = WeightsWriter::new(config, Form::Training, precision, Preprocess::FASHION_MNIST)
            .labels(&["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
            .producer("shared unit test");
        let mut i = 0.0f32;
        config.for_each_param(Form::Training, |p| {
            let n = p.numel() as usize;
            let data: std::vec::Vec<f32> = (0..n).map(|k| i + k as f32).collect();
            i += 1.0;
            if p.kind == ParamKind::BnNumBatchesTracked {
                w.add_i64(&p.name, p.shape(), &[7]).unwrap();
            } else {
                w.add_f32(&p.name, p.shape(), &data).unwrap();
            }
        });
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_zero_copy() {
        let bytes = small_file(Precision::F32);
        // Copy into a u64-aligned buffer, as a reader that mmaps or reads into aligned memory would.
        let mut aligned = std::vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let buf = &bytemuck::cast_slice::<u64, u8>(&aligned)[..bytes.len()];
        let f = WeightsFile::parse(buf).unwrap();
        f.check_against_graph().unwrap();
        assert_eq!(f.header().producer, "shared unit test");
        assert_eq!(f.labels().nth(9), Some("Ankle boot"));
        let w = f.tensor("layer2.0.downsample.0.weight").unwrap();
        assert_eq!(w.shape(), &[32, 16, 1, 1]);
        let v = w.as_f32().unwrap();
        assert_eq!(v.len(), 32 * 16);
        assert_eq!(v[1] - v[0], 1.0);
        assert_eq!(w.to_f32_vec(), v);
        assert!(w.as_i8().is_err(), "wrong dtype must be an error");
        assert_eq!(f.tensor("layer1.0.bn1.num_batches_tracked").unwrap().as_i64().unwrap(), &[7]);
        for t in f.tensors() {
            assert_eq!(t.data.as_ptr() as usize % ALIGN as usize, buf.as_ptr() as usize % ALIGN as usize);
        }
        assert!(matches!(f.tensor("nope"), Err(Error::MissingTensor { .. })));
    }

    #[test]
    fn errors_are_specific() {
        let good = small_file(Precision::F32);
        assert_eq!(WeightsFile::parse(b"PK\x03\x04 a zip file").unwrap_err(), Error::BadMagic);
        assert!(matches!(WeightsFile::parse(&good[..5]), Err(Error::Truncated { .. })));
        assert!(matches!(WeightsFile::parse(&good[..good.len() - 100]), Err(Error::ChecksumMismatch { .. })));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(WeightsFile::parse(&v2).unwrap_err(), Error::UnsupportedVersion { found: 2, supported: 1 });
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        assert!(matches!(WeightsFile::parse(&flipped), Err(Error::ChecksumMismatch { .. })));
    }

    #[test]
    fn graph_check_names_missing_and_misshapen_tensors() {
        let config = ResNetConfig::resnet8();
        let mut w = WeightsWriter::new(config, Form::Training, Precision::F32, Preprocess::IMAGENET_EVAL);
        w.add_f32("conv1.weight", &[16, 3, 3, 2], &[0.0; 16 * 18]).unwrap();
        let bytes = w.finish().unwrap();
        let f = WeightsFile::parse(&bytes).unwrap();
        let err = f.check_against_graph().unwrap_err();
        assert!(matches!(&err, Error::ShapeMismatch { name } if name == "conv1.weight"), "{err}");

        let mut w = WeightsWriter::new(config, Form::Training, Precision::F32, Preprocess::IMAGENET_EVAL);
        w.add_f32("conv1.weight", &[16, 3, 3, 3], &[0.0; 16 * 27]).unwrap();
        let bytes = w.finish().unwrap();
        let err = WeightsFile::parse(&bytes).unwrap().check_against_graph().unwrap_err();
        assert_eq!(std::format!("{err}"), "tensor `bn1.weight` is missing");
    }

    #[test]
    fn writer_rejects_inconsistent_tensors() {
        let mut w = WeightsWriter::new(ResNetConfig::resnet8(), Form::Training, Precision::F32, Preprocess::IMAGENET_EVAL);
        assert!(w.add_f32("a", &[2, 2], &[0.0; 3]).is_err());
        assert!(w.add_f32("a", &[1, 1, 1, 1, 1], &[0.0]).is_err());
        w.add_f32("a", &[1], &[0.0]).unwrap();
        assert!(w.add_f32("a", &[1], &[0.0]).is_err());
    }
}
