//! The parity file (`docs/parity-file.md`, format in `shared::parity`) and the ONNX Runtime
//! cross-check.
//!
//! ONNX Runtime runs in the project's Python venv through `tools/ort_parity.py` and the
//! `tools/ort_common.py` it imports, both embedded in the binary (so an installed `host` needs
//! only a Python with `onnx`, `onnxruntime` and `numpy`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tch::Tensor;

use shared::parity::Parity;

use super::net::to_vec_f32;
use crate::checkpoint::read_safetensors;

/// `tools/ort_parity.py`, run with `python -c` after `ORT_PRELUDE`.
pub const ORT_SCRIPT: &str = include_str!("../../../tools/ort_parity.py");
/// `tools/ort_common.py`, which [`ORT_SCRIPT`] imports.
pub const ORT_COMMON: &str = include_str!("../../../tools/ort_common.py");
/// `python -c` has no `tools/` on its module path: this installs [`ORT_COMMON`], passed in the
/// environment variable `ORT_COMMON_SOURCE`, as the module `ort_common`.
const ORT_PRELUDE: &str = "import os, sys, types\n\
    ort_common = sys.modules['ort_common'] = types.ModuleType('ort_common')\n\
    exec(compile(os.environ.pop('ORT_COMMON_SOURCE'), 'ort_common.py', 'exec'), ort_common.__dict__)\n";
/// `<dir>/<file name up to its first dot>.parity.safetensors`: `model.int8.evw` ->
/// `model.parity.safetensors` (where `device parity` looks by default).
pub fn parity_path(model: &Path) -> PathBuf {
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.split('.').next().filter(|s| !s.is_empty()).unwrap_or("model");
    model.with_file_name(format!("{stem}.parity.safetensors"))
}

/// What a parity file holds, as tch tensors; written through `shared::parity`, the one
/// definition of the format.
pub struct ParityData {
    /// `[N, C, H, W]` preprocessed inputs.
    pub inputs: Tensor,
    /// `[N, classes]` host fp32 logits (PyTorch, eval mode).
    pub logits: Tensor,
    /// `[N, classes]` ONNX Runtime's logits on the int8 ONNX export (integer ops by default).
    pub logits_int8: Option<Tensor>,
    /// `[N]` ground truth, where the inputs are labelled images.
    pub labels: Option<Tensor>,
}

impl ParityData {
    pub fn to_bytes(&self, arch: &str, producer: &str) -> Result<Vec<u8>> {
        let size = self.inputs.size();
        let &[n, c, h, w] = size.as_slice() else {
            bail!("parity inputs must be [N, C, H, W], got {size:?}");
        };
        let logits = to_vec_f32(&self.logits)?;
        let parity = Parity {
            input_shape: [n, c, h, w].map(|d| d as usize),
            inputs: to_vec_f32(&self.inputs)?,
            num_classes: self.logits.size().last().copied().unwrap_or(0) as usize,
            logits,
            logits_int8: self.logits_int8.as_ref().map(to_vec_f32).transpose()?,
            labels: self
                .labels
                .as_ref()
                .map(|l| Vec::<i64>::try_from(&l.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64).contiguous().view(-1)))
                .transpose()?,
            metadata: HashMap::from([
                ("arch".to_string(), arch.to_string()),
                ("producer".to_string(), producer.to_string()),
            ]),
        };
        Ok(parity.to_bytes()?)
    }
}

/// The Python to run ONNX Runtime with: `--python`, else `$VIRTUAL_ENV/bin/python`, else the
/// workspace's `.venv/bin/python` (when this binary runs from its build tree), else `python3`.
pub fn find_python(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        let p = PathBuf::from(v).join("bin/python");
        if p.exists() {
            return p;
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if ws.exists() {
        return ws;
    }
    PathBuf::from("python3")
}

/// ONNX Runtime's logits for the parity inputs, or why they could not be had.
pub enum Ort {
    Logits(Tensor),
    /// No Python, or no onnxruntime in it: the check is skipped with this reason.
    Unavailable(String),
}

/// Runs `model` (ONNX) on the `inputs` of the parity file `parity` with ONNX Runtime; `scratch`
/// receives its logits; `opt_level` is ONNX Runtime's graph optimization level (`basic`, `all`,
/// see `tools/ort_parity.py`). An invalid model (checker failure, ORT error) is an error.
pub fn ort_logits(python: &Path, model: &Path, parity: &Path, scratch: &Path, opt_level: &str) -> Result<Ort> {
    let out = match Command::new(python)
        .arg("-c")
        .arg(format!("{ORT_PRELUDE}{ORT_SCRIPT}"))
        .env("ORT_COMMON_SOURCE", ORT_COMMON)
        .arg("--onnx")
        .arg(model)
        .arg("--parity")
        .arg(parity)
        .args(["--opt-level", opt_level, "--reference", "none", "--save-logits"])
        .arg(scratch)
        .output()
    {
        Ok(o) => o,
        Err(e) => return Ok(Ort::Unavailable(format!("cannot run {}: {e}", python.display()))),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => return Ok(Ort::Unavailable(format!("{}: {}", python.display(), stdout.trim()))),
        _ => bail!(
            "ONNX Runtime rejects {} ({}): {} {}",
            model.display(),
            out.status,
            stdout.trim(),
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
        ),
    }
    let (mut tensors, _) = read_safetensors(scratch).context("reading ONNX Runtime's logits")?;
    let logits = tensors.remove("logits").ok_or_else(|| anyhow!("{}: no `logits` tensor", scratch.display()))?;
    Ok(Ort::Logits(logits))
}

/// How two sets of logits `[N, classes]` agree.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Agreement {
    pub samples: usize,
    /// `max_i |a_i - ref_i| / max_i |ref_i|`, worst sample.
    pub max_rel_err: f64,
    /// `max |a - ref|`.
    pub max_abs_diff: f64,
    /// Fraction of samples with the same arg-max.
    pub top1_agreement: f64,
    /// One int8 step of the reference logits: `(max - min) / 255`.
    pub step: f64,
}

pub fn agreement(a: &Tensor, reference: &Tensor) -> Agreement {
    let a = a.to_kind(tch::Kind::Double);
    let r = reference.to_kind(tch::Kind::Double);
    let diff = (&a - &r).abs();
    let scale = r.abs().amax([1i64].as_slice(), false).clamp_min(f64::from(f32::MIN_POSITIVE));
    let rel = diff.amax([1i64].as_slice(), false) / scale;
    let same = a.argmax(1, false).eq_tensor(&r.argmax(1, false)).to_kind(tch::Kind::Double);
    Agreement {
        samples: a.size()[0] as usize,
        max_rel_err: rel.max().double_value(&[]),
        max_abs_diff: diff.max().double_value(&[]),
        top1_agreement: same.mean(tch::Kind::Double).double_value(&[]),
        step: (r.max().double_value(&[]) - r.min().double_value(&[])) / 255.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_file_sits_next_to_the_model_under_its_first_stem() {
        assert_eq!(parity_path(Path::new("out/model.int8.evw")), Path::new("out/model.parity.safetensors"));
        assert_eq!(parity_path(Path::new("m.evw")), Path::new("m.parity.safetensors"));
    }
}
