//! The inference engine: a model file -> an optimized tract plan and its state, built once and
//! reused for every frame.
//!
//! Two inputs are accepted: the compact weights file `host export` writes (detected by its magic
//! bytes; imported by walking the `shared` graph, see [`crate::engine::import`]: no protobuf, no ONNX
//! parsing), and standard ONNX files through tract-onnx.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shared::graph::Form;
use shared::preprocess::Preprocess;
use shared::weights::{Precision, WeightsFile, MAGIC};
use tract_core::floats::FloatPrecisionTranslator;
use tract_core::internal::*;
use tract_core::transform::ModelTransform;
use tract_linalg::multithread::Executor;

use crate::cpu::Cpu;
use crate::kernels::Kernels;
use crate::plan::{self, PlanKind, Stage};

pub mod import;
pub mod pipeline;

use import::{import, ImportOptions};

/// Which float precision to compute in (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ComputePrecision {
    /// f16 for fp16 weights files on CPUs with fp16 arithmetic, f32 otherwise (with a note).
    #[default]
    Auto,
    #[value(alias = "fp32")]
    F32,
    /// tract's f32 -> f16 transform; an error on CPUs without fp16 arithmetic.
    #[value(alias = "fp16")]
    F16,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Worker threads for tract's matrix products; 1 runs on the calling thread.
    pub threads: usize,
    pub precision: ComputePrecision,
    /// Input height and width; `None`: the weights file's crop, or the ONNX model's own shape
    /// (224x224 when it is symbolic).
    pub input_size: Option<(u32, u32)>,
    pub conv: ConvAlgorithm,
    /// A labels file (one class name per line, as many lines as the model has classes) that
    /// replaces the model's own labels.
    pub labels: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 1,
            precision: ComputePrecision::Auto,
            input_size: None,
            conv: ConvAlgorithm::Auto,
            labels: None,
        }
    }
}

/// How float plans compute their convolutions (`--conv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgorithm {
    /// This crate's convs where the CPU has AVX-512 (x86: `crate::kernels::x86_64::fp32`:
    /// Winograd F(4x4, 3x3) or F(2x2, 3x3) for 3x3 stride 1, a direct conv for the 7x7 stem) or
    /// NEON (aarch64: `crate::kernels::aarch64::fp32`, and `fp16` for f16 plans: Winograd
    /// F(4x4, 3x3) for 3x3 stride 1, direct convs for the stem and 3x3 stride 2, 1x1 stride-1
    /// convs on the input as it is), tract's im2col + matrix product elsewhere.
    #[default]
    Auto,
    /// Always tract's im2col + matrix product (`--conv tract`; `direct`, the old name, is still
    /// accepted so that existing scripts keep working).
    #[value(alias = "direct")]
    Tract,
}

/// What kind of file the model came from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelFormat {
    Compact {
        precision: Precision,
        form: Form,
        producer: String,
    },
    Onnx,
}

/// The arithmetic the plan runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    F32,
    F16,
    /// Integer convs (i8 x i8 -> i32) with f32 between them.
    Int8,
}

impl Compute {
    pub fn name(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::F16 => "f16",
            Compute::Int8 => "int8",
        }
    }
}

/// Everything a caller needs to feed the model and read its output.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub compute: Compute,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub num_classes: usize,
    /// One label per class (numbered when the file has none).
    pub labels: Vec<String>,
    /// What to do to a camera frame before inference.
    pub preprocess: Preprocess,
    pub int8_layers: Vec<String>,
    pub float_layers: Vec<String>,
    /// What the plan passes did (filled when the plan is built).
    pub plan: PlanFacts,
    /// Things the user should know (fallbacks), printed by the CLI on stderr.
    pub notes: Vec<String>,
    /// Reading, importing and optimizing the model.
    pub load_time: Duration,
    pub threads: usize,
}

/// What the plan passes did to a model's plan.
#[derive(Clone, Debug, Default)]
pub struct PlanFacts {
    /// The passes that ran (`crate::plan`), in order, and how many nodes each replaced.
    pub passes: Vec<crate::plan::Applied>,
    /// How many float convs run as Winograd (`crate::kernels::x86_64::winograd`,
    /// `crate::kernels::aarch64::winograd`).
    pub winograd_layers: usize,
    /// How many float convs run as `crate::kernels::x86_64::direct`'s (large kernels: the stem).
    pub direct_layers: usize,
}

impl ModelInfo {
    pub fn input_len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }
}

/// A loaded model: the optimized plan and its state, reused for every run.
pub struct Engine {
    info: ModelInfo,
    plan: Arc<TypedSimplePlan>,
    state: TypedSimpleState,
    executor: Executor,
    input_dt: DatumType,
    output: Vec<f32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A labels file: one class name per line (a trailing empty line is allowed), exactly
/// `num_classes` of them.
pub fn read_labels(path: &Path, num_classes: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read labels {}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    ensure!(
        labels.len() == num_classes,
        "labels {} has {} lines, the model has {num_classes} classes (one label per line)",
        path.display(),
        labels.len()
    );
    if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
        bail!("labels {}: line {} is empty", path.display(), i + 1);
    }
    Ok(labels)
}

fn is_onnx(path: &Path, bytes: &[u8]) -> bool {
    // An ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        || bytes.first() == Some(&0x08)
}

impl Engine {
    /// Loads a compact weights file or an ONNX file and builds the optimized plan.
    pub fn load(path: impl AsRef<Path>, opts: &EngineOptions) -> Result<Engine> {
        let path = path.as_ref();
        let start = Instant::now();
        ensure!(opts.threads >= 1, "--threads must be at least 1");
        // Read once into memory, not mapped: the CRC is checked on the very bytes that are
        // parsed, and a file truncated or rewritten meanwhile (a deploy copying over it) is at
        // worst a checksum error, never a SIGBUS or a half-old, half-new model.
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let (model, mut info) = if bytes.starts_with(&MAGIC[..4]) {
            Self::import_compact(path, &bytes, opts)
                .with_context(|| format!("model file {}", path.display()))?
        } else if is_onnx(path, &bytes) {
            Self::import_onnx(path, &bytes, opts)
                .with_context(|| format!("model file {} (ONNX)", path.display()))?
        } else {
            bail!(
                "model file {}: neither a compact weights file (no EVWTS magic) nor an ONNX model",
                path.display()
            );
        };
        drop(bytes);
        let model = Self::optimize(model, &mut info, opts)
            .with_context(|| format!("optimizing {}", path.display()))?;
        let input_dt = model.input_fact(0)?.datum_type;
        let plan = SimplePlan::new(model)?;
        let state = SimpleState::new(&plan)?;
        let executor = if opts.threads > 1 {
            Executor::multithread(opts.threads)
        } else {
            Executor::SingleThread
        };
        if let Some(labels) = &opts.labels {
            info.labels = read_labels(labels, info.num_classes)?;
        }
        info.threads = opts.threads;
        info.load_time = start.elapsed();
        Ok(Engine {
            output: vec![0.0; info.num_classes],
            info,
            plan,
            state,
            executor,
            input_dt,
        })
    }

    fn import_compact(
        path: &Path,
        bytes: &[u8],
        opts: &EngineOptions,
    ) -> Result<(TypedModel, ModelInfo)> {
        let file = WeightsFile::parse(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let header = file.header();
        let imported = import(
            &file,
            &ImportOptions {
                input_size: opts.input_size,
            },
        )?;
        let config = header.config;
        let mut labels: Vec<String> = file.labels().map(str::to_string).collect();
        if labels.len() != config.num_classes as usize {
            labels = (0..config.num_classes)
                .map(|i| format!("class {i}"))
                .collect();
        }
        let (h, w) = opts
            .input_size
            .unwrap_or((header.preprocess.crop, header.preprocess.crop));
        let compute = if imported.int8_layers.is_empty() {
            Compute::F32
        } else {
            Compute::Int8
        };
        let info = ModelInfo {
            path: path.to_path_buf(),
            format: ModelFormat::Compact {
                precision: header.precision,
                form: header.form,
                producer: header.producer.to_string(),
            },
            compute,
            channels: u32::from(config.in_channels),
            height: h,
            width: w,
            num_classes: config.num_classes as usize,
            labels,
            preprocess: header.preprocess,
            int8_layers: imported.int8_layers,
            float_layers: imported.float_layers,
            plan: PlanFacts::default(),
            notes: vec![],
            load_time: Duration::ZERO,
            threads: 1,
        };
        Ok((imported.model, info))
    }

    fn import_onnx(
        path: &Path,
        bytes: &[u8],
        opts: &EngineOptions,
    ) -> Result<(TypedModel, ModelInfo)> {
        use prost::Message;
        use tract_onnx::prelude::InferenceModelExt;
        use tract_onnx::tract_hir::infer::Factoid;
        let proto = tract_onnx::pb::ModelProto::decode(bytes).context("not an ONNX protobuf")?;
        let mut onnx = tract_onnx::onnx();
        // Tensors in side files (external data) are read too, not mapped.
        onnx.provider = Arc::new(tract_onnx::data_resolver::FopenDataResolver);
        let parsed = onnx.parse(&proto, path.parent().and_then(|d| d.to_str()))?;
        drop(proto);
        ensure!(
            parsed.unresolved_inputs.is_empty(),
            "inputs {:?} are used but never defined",
            parsed.unresolved_inputs
        );
        let mut model = parsed.model;
        ensure!(
            model.input_outlets()?.len() == 1,
            "expected one input, found {}",
            model.input_outlets()?.len()
        );
        let declared = model.input_fact(0)?.clone();
        let mut dims: Vec<Option<usize>> = declared
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_usize().ok()))
            .collect();
        if dims.is_empty() {
            dims = vec![None; 4];
        }
        ensure!(
            dims.len() == 4,
            "expected an NCHW image input, the model's input has rank {}",
            dims.len()
        );
        let channels = dims[1].unwrap_or(3);
        ensure!(
            channels == 1 || channels == 3,
            "expected 1 or 3 input channels, the model has {channels}"
        );
        let (h, w) = match opts.input_size {
            Some((h, w)) => (h as usize, w as usize),
            None => (dims[2].unwrap_or(224), dims[3].unwrap_or(224)),
        };
        // Shapes the exporter recorded for a symbolic batch (value_info) would clash with
        // batch 1: forget them, tract infers them again from the input.
        let inputs: Vec<usize> = model.input_outlets()?.iter().map(|o| o.node).collect();
        for id in 0..model.nodes().len() {
            if inputs.contains(&id) {
                continue;
            }
            for slot in 0..model.nodes()[id].outputs.len() {
                let outlet = OutletId::new(id, slot);
                if model.outlet_fact(outlet)?.value.concretize().is_none() {
                    model.set_outlet_fact(outlet, Default::default())?;
                }
            }
        }
        model.set_input_fact(0, f32::fact([1, channels, h, w]).into())?;
        let typed = model.into_typed()?;
        let out = typed.output_fact(0)?;
        let num_classes = out
            .shape
            .as_concrete()
            .context("symbolic output shape")?
            .iter()
            .product::<usize>();
        // Labels: a `<model>.labels.txt` next to the model, one per line.
        let labels_path = path.with_extension("labels.txt");
        let mut labels: Vec<String> = std::fs::read_to_string(&labels_path)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default();
        if labels.len() != num_classes {
            labels = (0..num_classes).map(|i| format!("class {i}")).collect();
        }
        let preprocess = if channels == 1 {
            Preprocess {
                resize: h.min(w) as u32,
                crop: h.min(w) as u32,
                ..Preprocess::FASHION_MNIST
            }
        } else {
            let crop = h.min(w) as u32;
            Preprocess {
                resize: crop * 256 / 224,
                crop,
                ..Preprocess::IMAGENET_EVAL
            }
        };
        let info = ModelInfo {
            path: path.to_path_buf(),
            format: ModelFormat::Onnx,
            compute: Compute::F32,
            channels: channels as u32,
            height: h as u32,
            width: w as u32,
            num_classes,
            labels,
            preprocess,
            int8_layers: vec![],
            float_layers: vec![],
            plan: PlanFacts::default(),
            notes: vec![],
            load_time: Duration::ZERO,
            threads: 1,
        };
        Ok((typed, info))
    }

    fn optimize(
        model: TypedModel,
        info: &mut ModelInfo,
        opts: &EngineOptions,
    ) -> Result<TypedModel> {
        let f16_file = matches!(
            info.format,
            ModelFormat::Compact {
                precision: Precision::F16,
                ..
            }
        );
        let want_f16 = match opts.precision {
            ComputePrecision::F32 => false,
            ComputePrecision::F16 => {
                ensure!(
                    info.compute != Compute::Int8,
                    "--precision f16 does not apply to an int8 model"
                );
                ensure!(
                    Cpu::get().fp16,
                    "--precision f16: this CPU has no fp16 arithmetic (aarch64 FEAT_FP16, e.g. Cortex-A55/A76: \
                     Raspberry Pi 5, Jetson Orin; not the Pi 4's Cortex-A72); tract would only emulate it. \
                     Use --precision f32"
                );
                true
            }
            ComputePrecision::Auto if f16_file && !Cpu::get().fp16 => {
                info.notes.push(
                    "fp16 weights: this CPU has no fp16 arithmetic, computing in f32 (weights upcast exactly)".into(),
                );
                false
            }
            ComputePrecision::Auto => f16_file,
        };
        let mut model = model.into_decluttered()?;
        if want_f16 {
            FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type())
                .transform(&mut model)?;
            info.compute = Compute::F16;
        }
        let passes = Kernels::get().plan_passes();
        let kind = PlanKind {
            int8: info.compute == Compute::Int8,
            f32_convs: info.compute == Compute::F32 && opts.conv == ConvAlgorithm::Auto,
            f16_convs: info.compute == Compute::F16 && opts.conv == ConvAlgorithm::Auto,
        };
        info.plan.passes = plan::run(&passes, Stage::Decluttered, kind, &mut model)?;
        let mut model = model.into_optimized()?;
        info.plan.passes.extend(plan::run(&passes, Stage::Optimized, kind, &mut model)?);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::x86_64::{direct::DirectConv, winograd::WinogradConv};
            let count = |f: fn(&TypedNode) -> bool| model.nodes().iter().filter(|n| f(n)).count();
            info.plan.winograd_layers = count(|n| n.op_is::<WinogradConv>());
            info.plan.direct_layers = count(|n| n.op_is::<DirectConv>());
        }
        #[cfg(target_arch = "aarch64")]
        {
            use crate::kernels::aarch64::{direct::DirectConv, winograd::WinogradConv};
            info.plan.winograd_layers = model
                .nodes()
                .iter()
                .filter(|n| n.op_is::<WinogradConv>() || n.op_is::<WinogradConv<f16>>())
                .count();
            info.plan.direct_layers = model
                .nodes()
                .iter()
                .filter(|n| n.op_is::<DirectConv>() || n.op_is::<DirectConv<f16>>())
                .count();
        }
        Ok(model)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The optimized model the plan runs.
    pub fn optimized_model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// Runs one preprocessed CHW image (`info().input_len()` floats); returns the logits.
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32]> {
        let info = &self.info;
        ensure!(
            input.len() == info.input_len(),
            "input has {} values, the model needs {} ({}x{}x{})",
            input.len(),
            info.input_len(),
            info.channels,
            info.height,
            info.width
        );
        let shape = [
            1,
            info.channels as usize,
            info.height as usize,
            info.width as usize,
        ];
        let mut t = Tensor::from_shape(&shape, input)?;
        if self.input_dt != f32::datum_type() {
            t = t.cast_to_dt(self.input_dt)?.into_owned();
        }
        let state = &mut self.state;
        let outputs =
            tract_linalg::multithread::multithread_tract_scope(self.executor.clone(), || {
                state.run(tvec!(t.into()))
            })?;
        let out = outputs[0].cast_to::<f32>()?;
        let logits = out.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            logits.len() == self.output.len(),
            "model produced {} values, expected {}",
            logits.len(),
            self.output.len()
        );
        self.output.copy_from_slice(logits);
        Ok(&self.output)
    }

    /// Runs `input` once, timing every node of the plan: (node name, op name, time), slowest first.
    pub fn profile(&mut self, input: &[f32]) -> Result<Vec<(String, String, Duration)>> {
        let info = &self.info;
        let shape = [
            1,
            info.channels as usize,
            info.height as usize,
            info.width as usize,
        ];
        let t = Tensor::from_shape(&shape, input)?
            .cast_to_dt(self.input_dt)?
            .into_owned();
        let mut times = vec![];
        let state = &mut self.state;
        tract_linalg::multithread::multithread_tract_scope(self.executor.clone(), || {
            state.run_plan_with_eval(tvec!(t.into()), |ctx, st, node, inputs| {
                let start = Instant::now();
                let r = tract_core::plan::eval(ctx, st, node, inputs);
                times.push((
                    node.name.clone(),
                    node.op().name().to_string(),
                    start.elapsed(),
                ));
                r
            })
        })?;
        times.sort_by(|a, b| b.2.cmp(&a.2));
        Ok(times)
    }

    /// One line per matrix-product node of the optimized plan: `name: kernel (types)`.
    pub fn matmul_kernels(&self) -> Vec<String> {
        matmul_kernels(self.plan.model())
    }
}

/// Describes the matrix-product nodes of an optimized model: node name, op and kernel info.
pub fn matmul_kernels(model: &TypedModel) -> Vec<String> {
    model
        .nodes()
        .iter()
        .filter(|n| {
            n.op.name().contains("MatMul")
                || n.op.name().contains("Conv")
                || n.op.name().contains("EinSum")
        })
        .map(|n| {
            let info = n.op.info().unwrap_or_default().join("; ");
            let inputs: Vec<String> = n
                .inputs
                .iter()
                .map(|i| format!("{:?}", model.outlet_fact(*i).map(|f| f.datum_type).ok()))
                .collect();
            format!(
                "{} [{}] inputs {} -> {:?}: {info}",
                n.name,
                n.op.name(),
                inputs.join(","),
                n.outputs[0].fact.datum_type
            )
        })
        .collect()
}

