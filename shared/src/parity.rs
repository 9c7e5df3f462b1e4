//! The parity file (`docs/parity-file.md`): preprocessed inputs and the host's logits for them,
//! the reference the device checks its numbers against. `host export` writes it with
//! [`Parity::to_bytes`]; `device parity` and the device tests read it with [`Parity::parse`].
//! Both sides use this module only, so the tensor names, dtypes, shapes and metadata keys are
//! written down once. A safetensors file, so it needs feature `std`.

use std::collections::HashMap;
use std::fmt;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

/// `format` metadata value; readers reject another one.
pub const FORMAT: &str = "device-parity";
/// `version` metadata value this build writes.
pub const VERSION: &str = "1";
/// `[N, C, H, W]` F32: preprocessed images (normalized CHW).
pub const INPUTS: &str = "inputs";
/// `[N, classes]` F32: host fp32 logits.
pub const LOGITS: &str = "logits";
/// `[N, classes]` F32, optional: ONNX Runtime's logits of the exported int8 ONNX.
pub const LOGITS_INT8: &str = "logits_int8";
/// `[N]` I64, optional: ground-truth classes.
pub const LABELS: &str = "labels";

/// What is wrong with a parity file (or with one about to be written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParityError(pub String);

impl fmt::Display for ParityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParityError {}

fn err(msg: impl Into<String>) -> ParityError {
    ParityError(msg.into())
}

/// A parity file's contents.
#[derive(Clone, Debug, PartialEq)]
pub struct Parity {
    /// `[n, c, h, w]`.
    pub input_shape: [usize; 4],
    /// `n * c * h * w` preprocessed values (what `shared::preprocess` produces).
    pub inputs: Vec<f32>,
    pub num_classes: usize,
    /// Host fp32 logits, `[n, num_classes]`.
    pub logits: Vec<f32>,
    /// ONNX Runtime's logits on the int8 ONNX export (integer ops by default), `[n, num_classes]`.
    pub logits_int8: Option<Vec<f32>>,
    /// Ground-truth classes, `[n]`.
    pub labels: Option<Vec<i64>>,
    /// The safetensors `__metadata__`: `format`, `version`, `arch`, `producer`, ...
    pub metadata: HashMap<String, String>,
}

/// A tensor's shape and values.
type Shaped = (Vec<usize>, Vec<f32>);

fn f32s(st: &SafeTensors<'_>, name: &str) -> Result<Option<Shaped>, ParityError> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(err(format!("tensor `{name}`: {e}"))),
    };
    if t.dtype() != Dtype::F32 {
        return Err(err(format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
    }
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Some((t.shape().to_vec(), v)))
}

fn le_bytes<const N: usize, T: Copy>(v: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| to(x)).collect()
}

impl Parity {
    /// [`Parity::parse`] of the file at `path`; errors name the file.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Parity, ParityError> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| err(format!("cannot read parity file {}: {e}", path.display())))?;
        Self::parse(&bytes).map_err(|e| err(format!("parity file {}: {e}", path.display())))
    }

    /// Reads and checks a parity file: a safetensors file whose `format` metadata (if any) is
    /// [`FORMAT`], with [`INPUTS`] `[N, C, H, W]` and [`LOGITS`] `[N, classes]` F32, and, if
    /// present, [`LOGITS_INT8`] of the logits' shape and [`LABELS`] I64 `[N]`.
    pub fn parse(bytes: &[u8]) -> Result<Parity, ParityError> {
        let not_safetensors = |e: SafeTensorError| err(format!("not a safetensors file: {e}"));
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        if let Some(f) = metadata.get("format").filter(|f| *f != FORMAT) {
            return Err(err(format!("metadata format is `{f}`, expected `{FORMAT}`")));
        }
        let st = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
        let (ishape, inputs) = f32s(&st, INPUTS)?.ok_or_else(|| err(format!("tensor `{INPUTS}` is missing")))?;
        let &[n, c, h, w] = ishape.as_slice() else {
            return Err(err(format!("`{INPUTS}` must be [N, C, H, W], got {ishape:?}")));
        };
        let (lshape, logits) = f32s(&st, LOGITS)?.ok_or_else(|| err(format!("tensor `{LOGITS}` is missing")))?;
        if lshape.len() != 2 || lshape[0] != n {
            return Err(err(format!("`{LOGITS}` must be [N, classes] with N = {n}, got {lshape:?}")));
        }
        let logits_int8 = match f32s(&st, LOGITS_INT8)? {
            Some((s, _)) if s != lshape => {
                return Err(err(format!("`{LOGITS_INT8}` has shape {s:?}, `{LOGITS}` {lshape:?}")))
            }
            other => other.map(|(_, v)| v),
        };
        let labels = match st.tensor(LABELS) {
            Ok(t) if t.dtype() == Dtype::I64 && t.shape() == [n] => Some(
                t.data().chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect(),
            ),
            Ok(_) => return Err(err(format!("`{LABELS}` must be I64 [N]"))),
            Err(_) => None,
        };
        Ok(Parity { input_shape: [n, c, h, w], inputs, num_classes: lshape[1], logits, logits_int8, labels, metadata })
    }

    /// The file's bytes; the metadata gets `format` [`FORMAT`] and `version` [`VERSION`].
    /// Errors if the lengths do not match the shapes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ParityError> {
        let [n, ..] = self.input_shape;
        let logits_shape = vec![n, self.num_classes];
        let check = |name: &str, len: usize, shape: &[usize]| {
            if len == shape.iter().product::<usize>() {
                Ok(())
            } else {
                Err(err(format!("`{name}` has {len} values for shape {shape:?}")))
            }
        };
        check(INPUTS, self.inputs.len(), &self.input_shape)?;
        check(LOGITS, self.logits.len(), &logits_shape)?;
        let f32_bytes = |v: &[f32]| le_bytes(v, f32::to_le_bytes);
        let mut blobs = vec![
            (INPUTS, Dtype::F32, self.input_shape.to_vec(), f32_bytes(&self.inputs)),
            (LOGITS, Dtype::F32, logits_shape.clone(), f32_bytes(&self.logits)),
        ];
        if let Some(l) = &self.logits_int8 {
            check(LOGITS_INT8, l.len(), &logits_shape)?;
            blobs.push((LOGITS_INT8, Dtype::F32, logits_shape.clone(), f32_bytes(l)));
        }
        if let Some(l) = &self.labels {
            check(LABELS, l.len(), &[n])?;
            blobs.push((LABELS, Dtype::I64, vec![n], le_bytes(l, i64::to_le_bytes)));
        }
        let views = blobs
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data).map(|v| (*name, v)).map_err(|e| err(format!("`{name}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = self.metadata.clone();
        metadata.insert("format".into(), FORMAT.into());
        metadata.insert("version".into(), VERSION.into());
        safetensors::serialize(views, Some(metadata)).map_err(|e| err(format!("cannot write the parity file: {e}")))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.input_shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input `i`, CHW.
    pub fn input(&self, i: usize) -> &[f32] {
        let n = self.input_shape[1] * self.input_shape[2] * self.input_shape[3];
        &self.inputs[i * n..(i + 1) * n]
    }

    /// Host fp32 logits of input `i`.
    pub fn logits(&self, i: usize) -> &[f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// ONNX Runtime's int8 logits of input `i`, if the file has them.
    pub fn logits_int8(&self, i: usize) -> Option<&[f32]> {
        self.logits_int8.as_ref().map(|l| &l[i * self.num_classes..(i + 1) * self.num_classes])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Parity {
        Parity {
            input_shape: [2, 1, 2, 2],
            inputs: (0..8).map(|i| i as f32 - 3.5).collect(),
            num_classes: 3,
            logits: vec![1.0, -2.0, 0.5, 0.0, 3.0, -1.0],
            logits_int8: Some(vec![1.0, -2.0, 0.5, 0.1, 2.9, -1.0]),
            labels: Some(vec![0, 1]),
            metadata: HashMap::from([("arch".to_string(), "resnet8".to_string())]),
        }
    }

    #[test]
    fn round_trip_with_format_metadata() {
        let p = sample();
        let back = Parity::parse(&p.to_bytes().unwrap()).unwrap();
        assert_eq!(back.metadata["format"], FORMAT);
        assert_eq!(back.metadata["version"], VERSION);
        assert_eq!(back.metadata["arch"], "resnet8");
        assert_eq!(Parity { metadata: p.metadata.clone(), ..back.clone() }, p);
        assert_eq!(back.input(1), &[0.5, 1.5, 2.5, 3.5]);
        assert_eq!(back.logits_int8(1), Some(&[0.1, 2.9, -1.0][..]));
        let bare = Parity { logits_int8: None, labels: None, ..sample() };
        let back = Parity::parse(&bare.to_bytes().unwrap()).unwrap();
        assert_eq!((back.logits_int8, back.labels), (None, None));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |p: Parity| p.to_bytes().unwrap_err().to_string();
        assert_eq!(e(Parity { logits: vec![0.0; 5], ..sample() }), "`logits` has 5 values for shape [2, 3]");
        assert_eq!(e(Parity { labels: Some(vec![1]), ..sample() }), "`labels` has 1 values for shape [2]");
        assert!(Parity::parse(b"not safetensors").unwrap_err().to_string().starts_with("not a safetensors file"));
        let missing = Parity::read("/nonexistent/m.parity.safetensors").unwrap_err().to_string();
        assert!(missing.starts_with("cannot read parity file /nonexistent/m.parity.safetensors: "), "{missing}");
        let data = [0u8; 4];
        let other = safetensors::serialize(
            [("inputs", TensorView::new(Dtype::F32, vec![1], &data).unwrap())],
            Some(HashMap::from([("format".to_string(), "other".to_string())])),
        )
        .unwrap();
        assert_eq!(Parity::parse(&other).unwrap_err().to_string(), "metadata format is `other`, expected `device-parity`");
        let no_logits = safetensors::serialize([("inputs", TensorView::new(Dtype::F32, vec![1, 1, 1, 1], &data).unwrap())], None).unwrap();
        assert_eq!(Parity::parse(&no_logits).unwrap_err().to_string(), "tensor `logits` is missing");
    }
}
