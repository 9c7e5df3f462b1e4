//! `host export`: a trained run -> what a board runs.
//!
//! ```text
//! host export --checkpoint RUN_DIR --out model.int8.evw [--int8 | --fp16] [--onnx model.int8.onnx]
//!             [--calib-batches N] [--calib-method minmax|percentile|mse] [--keep-float first,last]
//! ```
//!
//! | step | module |
//! |---|---|
//! | read the run (`args.json`, `labels.txt`, `checkpoint.safetensors`), check it against the architecture, reject non-finite weights | [`mod@self`] |
//! | fold every BatchNorm into its conv (lone pre-activation BNs become `Affine`) | [`fold`] |
//! | int8: observe every conv/linear input on N training batches, pick per-tensor scales | [`calibrate`] |
//! | store f32 / f16 / int8 tensors in the compact format (`docs/weights-format.md`) | [`quantize`] |
//! | parse the bytes back and build the network *from the file* (int8: the file's arithmetic as exact fake quantization) | [`net`] |
//! | ONNX (opset 13; int8 as integer ops, `ConvInteger`/`MatMulInteger`, or `--onnx-int8 qdq` QuantizeLinear/DequantizeLinear) from the same parsed file | [`onnx`] |
//! | evaluate checkpoint vs file on the test set; parity file; ONNX Runtime cross-check | [`parity`] |
//!
//! Every output goes to `<path>.tmp` first and is renamed into place only when everything,
//! checks included, succeeded ([`outputs`]).

pub mod calibrate;
pub mod fold;
pub mod net;
pub mod onnx;
pub mod outputs;
pub mod parity;
pub mod quantize;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use shared::preprocess::Preprocess;
use shared::weights::WeightsWriter;
use shared::{Form, ParamKind, Precision, ResNetConfig, ValueId, WeightsFile};
use tch::{nn, Device, Kind, Tensor};

use crate::args::{float_within, int_in, Bounds, EvalDataArgs, MAX_BATCH, MAX_THREADS};
use crate::checkpoint::{check_against_graph, RunDir, CHECKPOINT_FILE, MANIFEST_FILE};
use crate::data::{DataOptions, DatasetSpec, LoaderSpec, Source, Split, SplitSet};
use crate::device::{self, DeviceArg};
use crate::model::{ModelOptions, ResNet};
use crate::presets::Transform;
use crate::rng::epoch_order;
use calibrate::{CalibMethod, Calibrated};
use net::Net;
use outputs::Outputs;
use parity::{Agreement, Ort, ParityData};

/// Default ONNX Runtime tolerance for fp32/fp16 ONNX vs the host: `max |ort - host| / max |host|`.
pub const ORT_FP32_REL_TOL: f64 = 1e-4;
/// int8 ONNX on ONNX Runtime (`basic` optimizations: the graph as written) vs the host's
/// simulation of the file: the largest logit difference allowed, in int8 steps of the logits
/// (`(max - min) / 255`), and the least top-1 agreement. The default integer-op form
/// (`ConvInteger`/`MatMulInteger`) is the file's arithmetic; the host simulates it with float
/// convolutions, and the QDQ form (`--onnx-int8 qdq`) has ORT sum float products too. They
/// differ where a float convolution summed in another order (MLAS vs oneDNN) puts a value
/// on the other side of a rounding boundary at the next QuantizeLinear, which then moves by one
/// activation step. Measured on the 5-epoch ResNet-8 Fashion-MNIST demo: a handful of such flips
/// per 64 images, at most 0.76 logit steps over 2000 test images, top-1 always equal. The bound
/// leaves a margin of 2.6x; a real mismatch (wrong scale, zero point or layout) is tens of steps.
pub const ORT_INT8_MAX_STEPS: f64 = 2.0;
pub const ORT_INT8_MIN_AGREEMENT: f64 = 0.98;
/// ONNX Runtime's graph optimization level for int8 graphs. Higher levels fuse QDQ into
/// QLinearConv/QGemm, whose u8 x s8 kernels saturate on x86 CPUs without VNNI (see
/// `tools/ort_parity.py`); `basic` computes the file's semantics on every CPU.
pub const ORT_INT8_OPT_LEVEL: &str = "basic";
/// fp32/fp16 graphs run with all of ONNX Runtime's optimizations (its default).
pub const ORT_FLOAT_OPT_LEVEL: &str = "all";

#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    /// Run directory written by `host train --out` (args.json, labels.txt, checkpoint.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The compact weights file to write (`.evw`, docs/weights-format.md). The parity file goes
    /// next to it (`<name up to the first dot>.parity.safetensors`), and the JSON report as
    /// `<out without its extension>.export.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Quantize: int8 per-channel weights, int32 biases, calibrated per-tensor activations.
    #[arg(long, conflicts_with = "fp16")]
    pub int8: bool,
    /// Store conv/linear weights and biases as fp16.
    #[arg(long)]
    pub fp16: bool,
    /// Also write a standard ONNX file (opset 13).
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// int8 ONNX form: `integer` (ConvInteger/MatMulInteger: ONNX Runtime computes exactly what
    /// the device does) or `qdq` (QuantizeLinear/DequantizeLinear around float convs, for
    /// TensorRT).
    #[arg(long, value_enum, default_value_t = onnx::Int8Ops::Integer)]
    pub onnx_int8: onnx::Int8Ops,
    /// Also print the JSON report (the `.export.json` file) as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// int8: calibration batches drawn from the training split (eval preprocessing).
    #[arg(long, default_value_t = 16, value_parser = int_in::<usize>(1, 100_000))]
    pub calib_batches: usize,
    /// int8: images per calibration batch.
    #[arg(long, default_value_t = 64, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub calib_batch_size: usize,
    /// int8: how activation ranges are chosen from the calibration data.
    #[arg(long, value_enum, default_value_t = CalibMethod::Percentile)]
    pub calib_method: CalibMethod,
    /// int8 with --calib-method percentile: the percentile kept (the rest is clipped).
    #[arg(long, default_value_t = 99.99, value_parser = float_within(Bounds { lo: 0.0f64, hi: 100.0, open_lo: true, open_hi: false }))]
    pub percentile: f64,
    /// int8: layers kept in float, comma-separated: `first` (the stem conv), `last` (the
    /// classifier) or layer names (`layer1.0.conv1`).
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Vec<String>,
    #[command(flatten)]
    pub data: EvalDataArgs,
    /// Test images stored in the parity file.
    #[arg(long, default_value_t = 64, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub parity_samples: usize,
    /// Seed of the calibration image draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device for calibration and evaluation: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// libtorch threads (default: all cores).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_THREADS))]
    pub threads: Option<usize>,
    /// Python with onnx + onnxruntime for the ONNX Runtime check (default: $VIRTUAL_ENV, the
    /// workspace .venv, python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the ONNX Runtime check (the parity file then has no `logits_int8`).
    #[arg(long)]
    pub no_ort: bool,
}

/// ONNX Runtime on the exported ONNX, compared with the host on the parity inputs.
#[derive(Clone, Debug, Serialize)]
pub struct OrtReport {
    /// What ORT is compared with: `host fp32` (fp32 ONNX), `host fp16` or `host int8` (the
    /// file's numbers).
    pub against: String,
    /// ONNX Runtime graph optimization level.
    pub opt_level: String,
    #[serde(flatten)]
    pub agreement: Agreement,
}

/// What `host export` did (printed as one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub out: String,
    /// `host <version> export <flags>`, as stored in the files.
    pub producer: String,
    pub onnx: Option<String>,
    pub parity: String,
    pub precision: &'static str,
    pub bytes: usize,
    pub calib_method: Option<CalibMethod>,
    pub calib_images: usize,
    /// int8: conv/linear layers kept in float.
    pub float_layers: Vec<String>,
    pub int8_layers: usize,
    pub test_images: usize,
    /// The checkpoint (unfolded, PyTorch eval mode); `null` without a dataset.
    pub fp32_top1: Option<f64>,
    /// What the written file computes (folded fp32, fp16 weights, or int8); `null` without a dataset.
    pub exported_top1: Option<f64>,
    /// Fraction of test images (or seeded inputs, without a dataset) where both predict the same class.
    pub top1_agreement: f64,
    /// Exported vs checkpoint logits: worst per-sample `max |d| / max |fp32|`.
    pub max_rel_diff: f64,
    pub parity_samples: usize,
    pub ort: Option<OrtReport>,
    /// Why the ONNX Runtime check did not run (no --onnx, --no-ort, no onnxruntime).
    pub ort_skipped: Option<String>,
    /// Per activation (int8): layers, observed range, clipping range, scale, zero point.
    pub activations: Vec<Calibrated>,
    pub seconds: f64,
}

/// A run directory, read and checked.
struct Run {
    checkpoint: PathBuf,
    config: ResNetConfig,
    preprocess: Preprocess,
    arch: String,
    labels: Vec<String>,
    /// `None`: a `host import` run given no `--dataset`.
    dataset: Option<DatasetSpec>,
    image_size: Option<u32>,
    model: ResNet,
}

fn precision_of(args: &ExportArgs) -> Precision {
    if args.int8 {
        Precision::Int8
    } else if args.fp16 {
        Precision::F16
    } else {
        Precision::F32
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "fp32",
        Precision::F16 => "fp16",
        Precision::Int8 => "int8",
    }
}

/// Flag checks that need no file.
fn check_args(args: &ExportArgs) -> Result<()> {
    if args.data.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.parity_samples == 0 {
        bail!("--parity-samples must be at least 1");
    }
    if args.int8 {
        if args.calib_batches == 0 || args.calib_batch_size == 0 {
            bail!("--calib-batches and --calib-batch-size must be at least 1 for --int8");
        }
        if !(args.percentile > 50.0 && args.percentile <= 100.0) {
            bail!("--percentile {} must be in (50, 100]", args.percentile);
        }
    } else if !args.keep_float.is_empty() {
        bail!("--keep-float applies to --int8 exports only");
    }
    if args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        bail!("--out {}: the compact weights file should end in .evw; write ONNX with --onnx", args.out.display());
    }
    if args.onnx.as_deref() == Some(args.out.as_path()) {
        bail!("--onnx and --out are the same file");
    }
    Ok(())
}

/// Reads the run and loads the checkpoint into the network its `args.json` describes.
fn load_run(path: &Path, dataset: Option<&DatasetSpec>, device: Device) -> Result<Run> {
    let dir = if path.is_file() && path.file_name().is_some_and(|n| n == CHECKPOINT_FILE) {
        path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    } else if path.is_dir() {
        path.to_path_buf()
    } else {
        bail!("--checkpoint {}: not a run directory (from `host train --out`)", path.display());
    };
    let run = RunDir::new(&dir);
    if !run.has_checkpoint() {
        bail!(
            "--checkpoint {}: no {MANIFEST_FILE} in {}: not a `host train` run directory with a saved epoch",
            path.display(),
            dir.display()
        );
    }
    let state = run.load_state()?;
    let config = state.config;
    config.validate().map_err(|e| anyhow!("{}: {e}", run.args().display()))?;
    let arch = state.arch().to_string();
    let image_size = state.image_size();
    let dataset = match dataset {
        Some(d) => Some(d.clone()),
        None => state.dataset(&run.args())?,
    };
    let labels = run.read_labels()?;
    if labels.len() != config.num_classes as usize {
        bail!("{}: {} labels for a network with {} classes", run.labels().display(), labels.len(), config.num_classes);
    }
    if labels.iter().any(|l| l.contains('\n')) {
        bail!("{}: a label contains a newline", run.labels().display());
    }

    let ck = run.checkpoint();
    let (tensors, _) = run.read_checkpoint()?;
    check_against_graph(&ck, &tensors, &config, &arch)?;
    let vs = nn::VarStore::new(device);
    let model = ResNet::new(&vs, &config, ModelOptions { zero_init_residual: false, ..Default::default() })?;
    model
        .load_state_dict(&tensors, &ck, &[])
        .with_context(|| format!("the checkpoint does not match `{arch}` as {} describes it", run.args().display()))?;
    Ok(Run { checkpoint: ck, config, preprocess: state.preprocess, arch, labels, dataset, image_size, model })
}

/// `first`, `last` and layer names -> the conv/linear layer names.
fn keep_float_layers(config: &ResNetConfig, keep: &[String]) -> Result<BTreeSet<String>> {
    let mut layers = Vec::new();
    config.for_each_param(Form::Folded, |p| {
        if matches!(p.kind, ParamKind::ConvWeight | ParamKind::LinearWeight) {
            layers.push(p.name.trim_end_matches(".weight").to_string());
        }
    });
    let mut out = BTreeSet::new();
    for k in keep.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        let name = match k {
            "first" => layers.first(),
            "last" => layers.last(),
            _ => layers.iter().find(|l| *l == k),
        };
        let name = name.ok_or_else(|| {
            anyhow!(
                "--keep-float `{k}`: not `first`, `last` or a conv/linear layer (e.g. {})",
                layers.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        out.insert(name.clone());
    }
    Ok(out)
}

/// A loader over `order` of `source` with the eval preprocessing.
fn eval_loader<'a>(
    source: &'a dyn Source,
    transform: &'a Transform,
    order: Vec<usize>,
    batch_size: usize,
) -> LoaderSpec<'a> {
    LoaderSpec { source, transform, order, batch_size, drop_last: false, seed: 0, epoch: 0 }
}

fn batch_tensor(images: &[f32], n: usize, shape: [i64; 3], device: Device) -> Tensor {
    Tensor::from_slice(images).view([n as i64, shape[0], shape[1], shape[2]]).to_device(device)
}

/// Checkpoint vs exported network on the test split (or on seeded inputs where the run has no
/// data), keeping the first `keep` samples for the parity file.
struct Comparison {
    images: usize,
    /// Top-1 accuracies: `None` without labelled data.
    ref_top1: Option<f64>,
    exp_top1: Option<f64>,
    agreement: f64,
    max_rel_diff: f64,
    parity: ParityData,
    /// The exported network's logits on the parity inputs.
    parity_exported: Tensor,
}

/// Runs both networks on every batch `batches` hands over (inputs on `device`, labels where
/// known) and compares them.
fn compare(
    reference: &ResNet,
    exported: &Net,
    keep: usize,
    batches: impl FnOnce(&mut dyn FnMut(Tensor, Option<Tensor>) -> Result<()>) -> Result<()>,
) -> Result<Comparison> {
    let _guard = tch::no_grad_guard();
    let (mut n, mut ref_hits, mut exp_hits, mut same, mut worst) = (0usize, 0i64, 0i64, 0i64, 0f64);
    let (mut p_in, mut p_ref, mut p_exp, mut p_lab) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut labelled = true;
    batches(&mut |x, y| {
        let len = x.size()[0] as usize;
        let r = reference.forward_t(&x, false);
        let e = exported.forward(&x);
        for (what, t) in [("checkpoint", &r), ("exported", &e)] {
            if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
                bail!("the {what} network gives non-finite logits (NaN or infinity) on test images {}..{}", n, n + len);
            }
        }
        let (rp, ep) = (r.argmax(1, false), e.argmax(1, false));
        match &y {
            Some(y) => {
                ref_hits += rp.eq_tensor(y).sum(Kind::Int64).int64_value(&[]);
                exp_hits += ep.eq_tensor(y).sum(Kind::Int64).int64_value(&[]);
            }
            None => labelled = false,
        }
        same += rp.eq_tensor(&ep).sum(Kind::Int64).int64_value(&[]);
        worst = worst.max(parity::agreement(&e, &r).max_rel_err);
        if n < keep {
            let k = (keep - n).min(len) as i64;
            p_in.push(x.narrow(0, 0, k).to_device(Device::Cpu));
            p_ref.push(r.narrow(0, 0, k).to_device(Device::Cpu));
            p_exp.push(e.narrow(0, 0, k).to_device(Device::Cpu));
            if let Some(y) = &y {
                p_lab.push(y.narrow(0, 0, k).to_device(Device::Cpu));
            }
        }
        n += len;
        Ok(())
    })?;
    if n == 0 {
        bail!("no readable test image");
    }
    let pct = |h: i64| labelled.then(|| 100.0 * h as f64 / n as f64);
    Ok(Comparison {
        images: n,
        ref_top1: pct(ref_hits),
        exp_top1: pct(exp_hits),
        agreement: same as f64 / n as f64,
        max_rel_diff: worst,
        parity: ParityData {
            inputs: Tensor::cat(&p_in, 0).contiguous(),
            logits: Tensor::cat(&p_ref, 0).contiguous(),
            logits_int8: None,
            labels: labelled.then(|| Tensor::cat(&p_lab, 0).to_kind(Kind::Int64).contiguous()),
        },
        parity_exported: Tensor::cat(&p_exp, 0),
    })
}

fn compare_on_test(
    reference: &ResNet,
    exported: &Net,
    test: &dyn Source,
    preprocess: &Preprocess,
    batch_size: usize,
    keep: usize,
    device: Device,
) -> Result<Comparison> {
    let transform = Transform::Eval(*preprocess);
    let shape = transform.sample_shape();
    let loader = eval_loader(test, &transform, (0..test.len()).collect(), batch_size);
    compare(reference, exported, keep, |f| {
        loader.for_each(|batch| {
            if batch.is_empty() {
                return Ok(());
            }
            let x = batch_tensor(&batch.images, batch.len(), shape, device);
            f(x, Some(Tensor::from_slice(&batch.labels).to_device(device)))
        })
    })
}

/// Without a dataset (a `host import` run): `n` seeded standard-normal inputs, the shape the
/// eval preprocessing makes (what a normalized image looks like to the network).
fn compare_on_noise(
    reference: &ResNet,
    exported: &Net,
    preprocess: &Preprocess,
    n: usize,
    batch_size: usize,
    seed: u64,
    device: Device,
) -> Result<Comparison> {
    let [c, h, w] = Transform::Eval(*preprocess).sample_shape();
    tch::manual_seed(seed as i64);
    let inputs = Tensor::randn([n as i64, c, h, w], tch::kind::FLOAT_CPU);
    compare(reference, exported, n, |f| {
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start) as i64;
            f(inputs.narrow(0, start as i64, len).to_device(device), None)?;
        }
        Ok(())
    })
}

/// The producer string stored in the files.
fn producer() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("host {} {}", env!("CARGO_PKG_VERSION"), args.join(" "))
}

/// `host export`.
pub fn main(args: ExportArgs) -> Result<()> {
    let report = run(&args)?;
    let mb = report.bytes as f64 / 1e6;
    match (report.fp32_top1, report.exported_top1) {
        (Some(fp32), Some(exported)) => println!(
            "fp32 top-1 {fp32:.2}%  {} top-1 {exported:.2}%  top-1 agreement {:.2}%  ({} test images; max logit diff {:.2e} of the largest)",
            report.precision,
            100.0 * report.top1_agreement,
            report.test_images,
            report.max_rel_diff
        ),
        _ => println!(
            "{} vs the checkpoint: top-1 agreement {:.2}%  ({} seeded random inputs, no dataset; max logit diff {:.2e} of the largest)",
            report.precision,
            100.0 * report.top1_agreement,
            report.test_images,
            report.max_rel_diff
        ),
    }
    match (&report.ort, &report.ort_skipped) {
        (Some(o), _) => println!(
            "ONNX Runtime vs {} on {} parity inputs: max |diff| {:.3e} ({:.2e} of the largest logit, {:.2} int8 steps), top-1 agreement {:.2}%",
            o.against,
            o.agreement.samples,
            o.agreement.max_abs_diff,
            o.agreement.max_rel_err,
            o.agreement.max_abs_diff / o.agreement.step.max(f64::MIN_POSITIVE),
            100.0 * o.agreement.top1_agreement
        ),
        (None, Some(why)) => println!("ONNX Runtime check skipped: {why}"),
        _ => {}
    }
    let mut wrote = vec![format!("{} ({mb:.2} MB)", report.out)];
    wrote.extend(report.onnx.clone());
    wrote.push(report.parity.clone());
    println!("wrote {}", wrote.join(", "));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Where `host export` writes: the weights file, the ONNX (optional), the parity file and the
/// JSON report, all staged before any work so that a bad path fails first.
struct Paths {
    parity: PathBuf,
    report: PathBuf,
}

fn stage_outputs(args: &ExportArgs, outputs: &mut Outputs) -> Result<Paths> {
    outputs.stage(&args.out)?;
    if let Some(o) = &args.onnx {
        outputs.stage(o)?;
    }
    let parity = parity::parity_path(&args.out);
    if args.onnx.as_deref() == Some(parity.as_path()) {
        bail!("--onnx {} is the parity file's path", parity.display());
    }
    outputs.stage(&parity)?;
    let report = args.out.with_extension("export.json");
    outputs.stage(&report)?;
    Ok(Paths { parity, report })
}

/// The run's test split, checked against the network (classes, and channels after the eval
/// preprocessing).
fn open_test(run: &Run, dataset: &DatasetSpec, data_opts: &DataOptions) -> Result<SplitSet> {
    let test = SplitSet::open(dataset, Split::Test, data_opts)?;
    if test.classes.len() != run.config.num_classes as usize {
        bail!("{dataset}: {} classes, the network has {}", test.classes.len(), run.config.num_classes);
    }
    let transform = Transform::Eval(run.preprocess);
    let channels = transform.sample_shape()[0];
    if channels != i64::from(run.config.in_channels) {
        bail!("the run's preprocessing makes {channels} channels, the network takes {}", run.config.in_channels);
    }
    Ok(test)
}

/// int8: every quantized layer's input range, observed on `--calib-batches` training batches
/// (eval preprocessing); returns the activations and the number of images used.
fn calibrate_int8(
    args: &ExportArgs,
    run: &Run,
    folded: &fold::Folded,
    keep_float: &BTreeSet<String>,
    data_opts: &DataOptions,
    device: Device,
) -> Result<(BTreeMap<ValueId, Calibrated>, usize)> {
    let dataset = run.dataset.as_ref().context("calibration needs a dataset")?;
    let train = SplitSet::open(dataset, Split::Train, data_opts)?;
    let need = args.calib_batches * args.calib_batch_size;
    if train.source.len() < need {
        bail!(
            "too few calibration images: --calib-batches {} x --calib-batch-size {} needs {need} training images, {} has {}",
            args.calib_batches,
            args.calib_batch_size,
            dataset,
            train.source.len()
        );
    }
    let mut order = epoch_order(train.source.len(), args.seed, 0);
    order.truncate(need);
    let float_net = Net::from_folded(folded, device)?;
    let quantized: Vec<String> =
        float_net.layer_inputs().into_iter().map(|l| l.layer).filter(|l| !keep_float.contains(l)).collect();
    let (source, transform) = (train.source.as_ref(), Transform::Eval(run.preprocess));
    let shape = transform.sample_shape();
    let for_each_batch = |f: &mut dyn FnMut(Tensor) -> Result<()>| -> Result<()> {
        let loader = eval_loader(source, &transform, order.clone(), args.calib_batch_size);
        loader.for_each(|batch| {
            if batch.is_empty() {
                return Ok(());
            }
            f(batch_tensor(&batch.images, batch.len(), shape, device))
        })
    };
    let activations = calibrate::calibrate(&float_net, &quantized, &for_each_batch, args.calib_method, args.percentile)?;
    Ok((activations, need))
}

/// ONNX Runtime on the written ONNX vs the host on the parity inputs; for int8 its logits go
/// into the parity file (rewritten). Returns the report, or why the check did not run.
#[allow(clippy::too_many_arguments)]
fn ort_check(
    args: &ExportArgs,
    precision: Precision,
    outputs: &mut Outputs,
    paths: &Paths,
    cmp: &mut Comparison,
    arch: &str,
    producer: &str,
) -> Result<(Option<OrtReport>, Option<String>)> {
    let o = match (&args.onnx, args.no_ort) {
        (None, _) => return Ok((None, Some("no --onnx".to_string()))),
        (Some(_), true) => return Ok((None, Some("--no-ort".to_string()))),
        (Some(o), false) => o,
    };
    let python = parity::find_python(args.python.as_deref());
    let onnx_tmp = outputs.tmp_of(o).ok_or_else(|| anyhow!("{} was not staged", o.display()))?.to_path_buf();
    let parity_tmp = outputs.tmp_of(&paths.parity).ok_or_else(|| anyhow!("parity file not staged"))?.to_path_buf();
    let scratch = outputs.scratch(outputs::tmp_path(&paths.parity)?.with_extension("ort.tmp"));
    let level = if precision == Precision::Int8 { ORT_INT8_OPT_LEVEL } else { ORT_FLOAT_OPT_LEVEL };
    let ort = match parity::ort_logits(&python, &onnx_tmp, &parity_tmp, &scratch, level)? {
        Ort::Unavailable(why) => {
            eprintln!("warning: ONNX Runtime check skipped: {why}");
            return Ok((None, Some(why)));
        }
        Ort::Logits(ort) => ort,
    };
    let (against, a) = match precision {
        Precision::F32 => ("host fp32", parity::agreement(&ort, &cmp.parity.logits)),
        Precision::F16 => ("host fp16", parity::agreement(&ort, &cmp.parity_exported)),
        Precision::Int8 => ("host int8", parity::agreement(&ort, &cmp.parity_exported)),
    };
    check_ort(precision, &a, o)?;
    if precision == Precision::Int8 {
        cmp.parity.logits_int8 = Some(ort);
        outputs.write(&paths.parity, &cmp.parity.to_bytes(arch, producer)?)?;
    }
    Ok((Some(OrtReport { against: against.to_string(), opt_level: level.to_string(), agreement: a }), None))
}

/// Runs the export: read the run -> fold -> (int8) calibrate -> the compact file -> the network
/// from its parsed bytes -> ONNX -> checkpoint vs file on the test set, parity file -> ONNX
/// Runtime check -> report. Nothing is left at the output paths on error.
pub fn run(args: &ExportArgs) -> Result<ExportReport> {
    let start = Instant::now();
    check_args(args)?;
    let precision = precision_of(args);
    let device = args.device.resolve()?;
    device::configure(device);
    device::set_threads(args.threads);
    let mut outputs = Outputs::default();
    let paths = stage_outputs(args, &mut outputs)?;

    let run = load_run(&args.checkpoint, args.data.dataset.as_ref(), device)?;
    let folded = fold::fold(&run.model).with_context(|| format!("checkpoint {}", run.checkpoint.display()))?;
    let data_opts = DataOptions { limit_train: None, limit_test: args.data.limit_test, image_size: run.image_size };
    let test = match &run.dataset {
        Some(d) => Some(open_test(&run, d, &data_opts)?),
        None if args.int8 => bail!(
            "--checkpoint {}: imported with `host import`, the run has no dataset, and --int8 calibrates on images: \
             pass --dataset imagefolder:DIR (DIR/train for calibration, DIR/val for the comparison)",
            args.checkpoint.display()
        ),
        None => {
            eprintln!(
                "note: the run has no dataset (host import): comparing on {} seeded random inputs, accuracy not measured",
                args.parity_samples
            );
            None
        }
    };
    let keep_float = if args.int8 { keep_float_layers(&run.config, &args.keep_float)? } else { BTreeSet::new() };
    let (activations, calib_images) = if args.int8 {
        calibrate_int8(args, &run, &folded, &keep_float, &data_opts, device)?
    } else {
        Default::default()
    };

    // The compact file, then everything else from its parsed bytes.
    let producer = producer();
    let store = quantize::StoreOptions { precision, activations: activations.clone(), keep_float: keep_float.clone() };
    let bytes = compact_file(&folded, run.preprocess, &run.labels, &producer, &store)
        .with_context(|| format!("building {}", args.out.display()))?;
    let file = WeightsFile::parse(&bytes).map_err(|e| anyhow!("the written file does not parse back: {e}"))?;
    file.check_against_graph().map_err(|e| anyhow!("the written file does not match the graph: {e}"))?;
    let exported = Net::from_weights(&file, device)?;
    let int8_layers = exported.quantized_layers().len();
    outputs.write(&args.out, &bytes)?;
    if let Some(o) = &args.onnx {
        let model = onnx::build(&file, env!("CARGO_PKG_VERSION"), args.onnx_int8)?;
        outputs.write(o, &onnx::encode(&model))?;
    }

    let mut cmp = match &test {
        Some(test) => {
            compare_on_test(&run.model, &exported, test.source.as_ref(), &run.preprocess, args.data.batch_size, args.parity_samples, device)?
        }
        None => compare_on_noise(&run.model, &exported, &run.preprocess, args.parity_samples, args.data.batch_size, args.seed, device)?,
    };
    outputs.write(&paths.parity, &cmp.parity.to_bytes(&run.arch, &producer)?)?;
    let (ort, ort_skipped) = ort_check(args, precision, &mut outputs, &paths, &mut cmp, &run.arch, &producer)?;

    let report = ExportReport {
        out: args.out.display().to_string(),
        producer: producer.clone(),
        onnx: args.onnx.as_ref().map(|o| o.display().to_string()),
        parity: paths.parity.display().to_string(),
        precision: precision_name(precision),
        bytes: bytes.len(),
        calib_method: args.int8.then_some(args.calib_method),
        calib_images,
        float_layers: keep_float.into_iter().collect(),
        int8_layers,
        test_images: cmp.images,
        fp32_top1: cmp.ref_top1,
        exported_top1: cmp.exp_top1,
        top1_agreement: cmp.agreement,
        max_rel_diff: cmp.max_rel_diff,
        parity_samples: cmp.parity.inputs.size()[0] as usize,
        ort,
        ort_skipped,
        activations: activations.into_values().collect(),
        seconds: start.elapsed().as_secs_f64(),
    };
    outputs.write(&paths.report, format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes())?;
    outputs.commit()?;
    Ok(report)
}

/// The compact weights file of `folded` (Folded form) in `store`'s precision.
pub fn compact_file(
    folded: &fold::Folded,
    preprocess: Preprocess,
    labels: &[String],
    producer: &str,
    store: &quantize::StoreOptions,
) -> Result<Vec<u8>> {
    let mut writer =
        WeightsWriter::new(folded.config, Form::Folded, store.precision, preprocess).labels(labels).producer(producer);
    quantize::add_tensors(&mut writer, folded, store)?;
    writer.finish().map_err(|e| anyhow!("{e}"))
}

/// ONNX Runtime must compute what the host computes: fp32/fp16 to [`ORT_FP32_REL_TOL`] with the
/// same top-1; int8 within [`ORT_INT8_MAX_STEPS`] logit steps and [`ORT_INT8_MIN_AGREEMENT`].
fn check_ort(precision: Precision, a: &Agreement, onnx: &Path) -> Result<()> {
    let ok = match precision {
        Precision::F32 | Precision::F16 => a.max_rel_err <= ORT_FP32_REL_TOL && a.top1_agreement == 1.0,
        Precision::Int8 => a.max_abs_diff <= ORT_INT8_MAX_STEPS * a.step && a.top1_agreement >= ORT_INT8_MIN_AGREEMENT,
    };
    if !ok {
        bail!(
            "ONNX Runtime disagrees with the host on {}: max |diff| {:.3e} ({:.2e} relative, {:.2} steps), top-1 agreement {:.3}",
            onnx.display(),
            a.max_abs_diff,
            a.max_rel_err,
            a.max_abs_diff / a.step.max(f64::MIN_POSITIVE),
            a.top1_agreement
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! BN folding, the compact file and the ONNX graph on architectures the CLI tests do not
    //! train: pre-activation (Affine nodes), bottlenecks and the ImageNet stem (max pool), with
    //! random weights and realistic BatchNorm statistics.
    use super::*;
    use shared::{Block, Stem, Variant};

    fn random_model(config: &ResNetConfig) -> ResNet {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ResNet::new(&vs, config, ModelOptions { zero_init_residual: false, ..Default::default() }).unwrap();
        let _guard = tch::no_grad_guard();
        for t in model.named_tensors() {
            let n = t.tensor.numel() as i64;
            let new = match t.kind {
                ParamKind::BnWeight => Tensor::rand([n], tch::kind::FLOAT_CPU) + 0.5,
                ParamKind::BnBias | ParamKind::BnRunningMean => Tensor::randn([n], tch::kind::FLOAT_CPU) * 0.2,
                ParamKind::BnRunningVar => Tensor::rand([n], tch::kind::FLOAT_CPU) * 1.5 + 0.5,
                _ => continue,
            };
            let _ = t.tensor.shallow_clone().copy_(&new);
        }
        model
    }

    fn configs() -> Vec<(&'static str, ResNetConfig, i64)> {
        let tiny_bottleneck = ResNetConfig {
            block: Block::Bottleneck,
            stages: [1, 1, 0, 0],
            base_width: 8,
            stem_width: 8,
            ..ResNetConfig::resnet50().with_classes(10)
        };
        vec![
            ("resnet8 v1.5", ResNetConfig::resnet8().with_in_channels(1), 28),
            ("resnet8 v2", ResNetConfig::resnet8().with_variant(Variant::V2), 16),
            ("bottleneck v1, imagenet stem", tiny_bottleneck.with_variant(Variant::V1), 32),
            ("bottleneck v2, small stem", tiny_bottleneck.with_variant(Variant::V2).with_stem(Stem::Small), 16),
        ]
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        parity::agreement(a, b).max_rel_err
    }

    /// tract-onnx's logits for an ONNX model and one input batch.
    fn tract_run(proto: &[u8], shape: [usize; 4], input: Vec<f32>) -> Vec<f32> {
        use tract_onnx::prelude::*;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &proto[..])
            .unwrap()
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let input = tract_ndarray::Array4::from_shape_vec(shape, input).unwrap();
        let out = plan.run(tvec!(input.into_tensor().into())).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    fn preprocess(side: i64) -> Preprocess {
        Preprocess { resize: side as u32, crop: side as u32, ..Preprocess::IMAGENET_EVAL }
    }

    fn labels(config: &ResNetConfig) -> Vec<String> {
        (0..config.num_classes).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn folded_network_and_its_onnx_equal_the_training_network() {
        for (what, config, side) in configs() {
            let model = random_model(&config);
            let x = Tensor::randn([4, i64::from(config.in_channels), side, side], tch::kind::FLOAT_CPU);
            let reference = tch::no_grad(|| model.forward_t(&x, false));
            let folded = fold::fold(&model).unwrap();
            let net = Net::from_folded(&folded, Device::Cpu).unwrap();
            let y = net.forward(&x);
            assert!(max_rel(&y, &reference) <= 1e-5, "{what}: folded vs training form {}", max_rel(&y, &reference));

            // The compact file round trip, and its ONNX on tract.
            for precision in [Precision::F32, Precision::F16] {
                let store = quantize::StoreOptions {
                    precision,
                    activations: Default::default(),
                    keep_float: Default::default(),
                };
                let bytes = compact_file(&folded, preprocess(side), &labels(&config), "test", &store).unwrap();
                let file = WeightsFile::parse(&bytes).unwrap();
                file.check_against_graph().unwrap();
                let from_file = Net::from_weights(&file, Device::Cpu).unwrap().forward(&x);
                let tol = if precision == Precision::F32 { 1e-6 } else { 1e-2 };
                let err = max_rel(&from_file, &y);
                assert!(err <= tol, "{what} {precision:?}: file vs folded {err}");

                let proto = onnx::encode(&onnx::build(&file, "test", onnx::Int8Ops::Integer).unwrap());
                let shape = [4usize, usize::from(config.in_channels), side as usize, side as usize];
                let input: Vec<f32> = Vec::try_from(&x.contiguous().view(-1)).unwrap();
                let got = tract_run(&proto, shape, input);
                let got = Tensor::from_slice(&got).view([4, i64::from(config.num_classes)]);
                let err = max_rel(&got, &from_file);
                assert!(err <= 1e-5, "{what} {precision:?}: tract vs host {err}");
            }
        }
    }

    #[test]
    fn int8_file_simulation_follows_the_float_network() {
        for (what, config, side) in configs() {
            let model = random_model(&config);
            let folded = fold::fold(&model).unwrap();
            let net = Net::from_folded(&folded, Device::Cpu).unwrap();
            let batches: Vec<Tensor> = (0..4)
                .map(|_| Tensor::randn([8, i64::from(config.in_channels), side, side], tch::kind::FLOAT_CPU))
                .collect();
            let layers: Vec<String> = net.layer_inputs().into_iter().map(|l| l.layer).collect();
            let each = |f: &mut dyn FnMut(Tensor) -> Result<()>| -> Result<()> {
                batches.iter().try_for_each(|b| f(b.shallow_clone()))
            };
            let activations = calibrate::calibrate(&net, &layers, &each, CalibMethod::Minmax, 99.99).unwrap();
            let store =
                quantize::StoreOptions { precision: Precision::Int8, activations, keep_float: Default::default() };
            let bytes = compact_file(&folded, preprocess(side), &labels(&config), "test", &store).unwrap();
            let file = WeightsFile::parse(&bytes).unwrap();
            file.check_against_graph().unwrap();
            let q = Net::from_weights(&file, Device::Cpu).unwrap();
            assert_eq!(q.quantized_layers().len(), layers.len(), "{what}");
            // Both ONNX forms of the int8 file, on tract-onnx: the simulation's logits.
            let shape = [8usize, usize::from(config.in_channels), side as usize, side as usize];
            let input: Vec<f32> = Vec::try_from(&batches[0].contiguous().view(-1)).unwrap();
            let simulated = q.forward(&batches[0]);
            for form in [onnx::Int8Ops::Integer, onnx::Int8Ops::Qdq] {
                let proto = onnx::encode(&onnx::build(&file, "test", form).unwrap());
                let got = tract_run(&proto, shape, input.clone());
                let got = Tensor::from_slice(&got).view([8, i64::from(config.num_classes)]);
                let err = max_rel(&got, &simulated);
                eprintln!("{what} {form:?}: tract on the int8 ONNX vs the host simulation {err:.2e}");
                assert!(err <= 1e-2, "{what} {form:?}: tract on the int8 ONNX vs the host simulation {err}");
            }
            // Random weights and inputs; int8 stays within a few percent of the logits.
            let x = &batches[0];
            let err = max_rel(&q.forward(x), &net.forward(x));
            assert!(err < 0.1, "{what}: int8 vs float {err}");
        }
    }
}
