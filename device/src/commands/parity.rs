//! The parity file `host export` writes next to a model (`<model>.parity.safetensors`), the
//! reference the device checks itself against. Format: `docs/parity-file.md`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};

/// A parity file: preprocessed inputs and the host's logits for them.
#[derive(Clone, Debug)]
pub struct Parity {
    /// `[n, c, h, w]`.
    pub input_shape: [usize; 4],
    /// `n * c * h * w` preprocessed values (what `shared::preprocess` produces), f32.
    pub inputs: Vec<f32>,
    pub num_classes: usize,
    /// Host fp32 logits, `[n, num_classes]`.
    pub logits: Vec<f32>,
    /// Optional: ONNX Runtime's logits on the int8 QDQ ONNX export, `[n, num_classes]`.
    pub logits_int8: Option<Vec<f32>>,
    /// Optional: ground-truth classes, `[n]`.
    pub labels: Option<Vec<i64>>,
    /// The safetensors `__metadata__` (`format`, `version`, `arch`, `producer`, ...).
    pub metadata: HashMap<String, String>,
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => bail!("tensor `{name}`: {e}"),
    };
    ensure!(
        t.dtype() == Dtype::F32,
        "tensor `{name}` is {:?}, expected F32",
        t.dtype()
    );
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some((t.shape().to_vec(), v)))
}

impl Parity {
    pub fn read(path: impl AsRef<Path>) -> Result<Parity> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read parity file {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("parity file {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Parity> {
        let (_, meta) = SafeTensors::read_metadata(bytes).context("not a safetensors file")?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        if let Some(f) = metadata.get("format") {
            ensure!(
                f == "device-parity",
                "metadata format is `{f}`, expected `device-parity`"
            );
        }
        let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
        let (ishape, inputs) = f32s(&st, "inputs")?.context("tensor `inputs` is missing")?;
        ensure!(
            ishape.len() == 4,
            "`inputs` must be [N, C, H, W], got {ishape:?}"
        );
        let (lshape, logits) = f32s(&st, "logits")?.context("tensor `logits` is missing")?;
        ensure!(
            lshape.len() == 2 && lshape[0] == ishape[0],
            "`logits` must be [N, classes] with N = {}, got {lshape:?}",
            ishape[0]
        );
        let logits_int8 = match f32s(&st, "logits_int8")? {
            Some((s, v)) => {
                ensure!(
                    s == lshape,
                    "`logits_int8` has shape {s:?}, `logits` {lshape:?}"
                );
                Some(v)
            }
            None => None,
        };
        let labels = match st.tensor("labels") {
            Ok(t) => {
                ensure!(
                    t.dtype() == Dtype::I64 && t.shape() == [ishape[0]],
                    "`labels` must be I64 [N]"
                );
                Some(
                    t.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                )
            }
            Err(_) => None,
        };
        Ok(Parity {
            input_shape: [ishape[0], ishape[1], ishape[2], ishape[3]],
            inputs,
            num_classes: lshape[1],
            logits,
            logits_int8,
            labels,
            metadata,
        })
    }

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

    pub fn logits_int8(&self, i: usize) -> Option<&[f32]> {
        self.logits_int8
            .as_ref()
            .map(|l| &l[i * self.num_classes..(i + 1) * self.num_classes])
    }
}

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
