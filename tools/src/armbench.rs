//! `cargo xtask armbench`: aarch64 instructions per inference of the device's plans, with ONNX
//! Runtime's official aarch64 wheel beside them, on the board CPUs, without a board.
//!
//! Both run under qemu-user with the armcount plugin (`../shared/armcount`: exact, repeatable
//! counts by instruction class); ONNX Runtime through `../shared/ort-aarch64` (its own Python
//! sysroot). Each engine runs the model alone on one fixed input (`device bench --model-only`,
//! ORT's `session.run`), N=1 and N=3 times: per inference = (count(3) - count(1)) / 2, so start-up,
//! loading and the first run's allocations cancel out. A count is not a time: caches, latencies
//! and issue width are not modelled.
//!
//! Models are the device test fixtures (tools/make_test_models.py): the device runs the compact
//! Folded f32 file (fp32; `--precision f16` for fp16) and the compact int8 file; ORT runs
//! `NAME.onnx` (fp32) and `NAME.int8-ort.onnx` (ORT's default QDQ, its fastest int8 path).
//! With `--x86`, tools/bench_ort.py times both natively too.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shared::{Form, Node, ResNetConfig};

use crate::cmd::{self, cargo, qemu_cpu_has_fp16, root, target_dir, venv_python, QEMU_SYSROOT, TRACT_FP16_ENV};

#[derive(clap::Args)]
pub struct Args {
    /// Networks (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Net::Resnet18, Net::Resnet50])]
    pub models: Vec<Net>,
    /// qemu CPU models (comma-separated): cortex-a72 (Pi 4), cortex-a76 (Pi 5), neoverse-n1
    /// (a stand-in for Jetson Orin's A78AE).
    #[arg(long, value_enum, value_delimiter = ',',
        default_values_t = [BoardCpu::CortexA72, BoardCpu::CortexA76, BoardCpu::NeoverseN1])]
    pub cpus: Vec<BoardCpu>,
    /// Precisions (comma-separated); fp16 only runs on CPUs with FEAT_FP16 (not cortex-a72).
    #[arg(long, value_enum, value_delimiter = ',',
        default_values_t = [Precision::Fp32, Precision::Fp16, Precision::Int8])]
    pub precisions: Vec<Precision>,
    /// An aarch64 `device` binary to count instead of cross-building the working tree's (e.g. one
    /// kept from an earlier commit, to compare two builds).
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Threads of both engines (`device bench --threads`, ORT's intra-op threads). Above 1,
    /// armcount runs in its callback mode (exact for several guest threads), and the total is
    /// what all threads executed together: against one thread, the work the split adds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Count the device only, not ONNX Runtime.
    #[arg(long)]
    pub no_ort: bool,
    /// The armcount folder (count-insns.sh). Default: ../shared/armcount beside the repository.
    #[arg(long)]
    pub armcount: Option<PathBuf>,
    /// The ort-aarch64 folder (run-ort.sh, setup.sh). Default: ../shared/ort-aarch64.
    #[arg(long)]
    pub ort: Option<PathBuf>,
    /// Test fixtures (made by tools/make_test_models.py when missing).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// JSON output (default: target/armbench.json); each run's reports go to target/armbench/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read a count from target/armbench/ when both its reports are there instead of running it
    /// again (to add configurations to an earlier run; stale once the binary or models change).
    #[arg(long)]
    pub reuse: bool,
    /// Also time the models natively on this x86 machine with tools/bench_ort.py (device against
    /// ONNX Runtime, milliseconds).
    #[arg(long)]
    pub x86: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Resnet18,
    Resnet50,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::Resnet18 => "resnet18",
            Net::Resnet50 => "resnet50",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    /// Multiply-adds per 128-bit NEON instruction: `sdot` (16 int8), `fmla` (8 f16, 4 f32).
    fn macs_per_insn(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            Precision::Fp16 => 8,
            Precision::Int8 => 16,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardCpu {
    CortexA72,
    CortexA76,
    NeoverseN1,
}

impl BoardCpu {
    /// The qemu `-cpu` name.
    fn qemu(self) -> &'static str {
        match self {
            BoardCpu::CortexA72 => "cortex-a72",
            BoardCpu::CortexA76 => "cortex-a76",
            BoardCpu::NeoverseN1 => "neoverse-n1",
        }
    }

    /// The board it stands for.
    fn board(self) -> &'static str {
        match self {
            BoardCpu::CortexA72 => "Pi 4",
            BoardCpu::CortexA76 => "Pi 5",
            BoardCpu::NeoverseN1 => "Orin (A78AE stand-in)",
        }
    }
}

/// The two run lengths whose difference is counted.
const N_LO: u32 = 1;
const N_HI: u32 = 3;
/// The input side of the fixtures.
const SIDE: u32 = 224;
/// count-insns.sh's default guest environment (the fp16 CPUs add [`TRACT_FP16_ENV`] to it).
const GUEST_ENV: &str = "PATH=/usr/bin:/bin LC_ALL=C";

pub fn run(args: &Args) -> Result<()> {
    let shared = root().join("..").join("shared");
    let armcount = args.armcount.clone().unwrap_or_else(|| shared.join("armcount"));
    let counter = armcount.join("count-insns.sh");
    ensure!(counter.is_file(), "no armcount at {}: pass --armcount DIR (its README explains it)", counter.display());
    ensure!(cmd::have("qemu-aarch64"), "qemu-aarch64 is not on PATH (apt-get install qemu-user)");
    let ort = if args.no_ort { None } else { Some(Ort::find(args.ort.clone().unwrap_or_else(|| shared.join("ort-aarch64")))?) };
    let fixtures = args.fixtures.clone().unwrap_or_else(|| target_dir().join("device-fixtures"));
    let out = args.out.clone().unwrap_or_else(|| target_dir().join("armbench.json"));
    let reports = target_dir().join("armbench");
    std::fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;

    let device = match &args.device {
        Some(path) => {
            ensure!(path.is_file(), "no device binary at {}", path.display());
            path.clone()
        }
        None => cmd::cross_build_device("release", &[])?,
    };
    let started = unix_time();
    let mut rows = Vec::new();
    for &net in &args.models {
        ensure_fixtures(&fixtures, net)?;
        let macs = macs(net);
        for &precision in &args.precisions {
            let model = compact_model(&device, &fixtures, net, precision)?;
            for &cpu in &args.cpus {
                if precision == Precision::Fp16 && !qemu_cpu_has_fp16(cpu.qemu()) {
                    eprintln!("armbench: no fp16 on {}: it lacks FEAT_FP16", cpu.qemu());
                    continue;
                }
                let threads = if args.threads > 1 { format!(".t{}", args.threads) } else { String::new() };
                let base = |engine: &str| reports.join(format!("{}.{}.{}{threads}.{engine}", net.name(), precision.name(), cpu.qemu()));
                let run = Run { cpu, threads: args.threads };
                let device = measure(&base("device"), args.reuse, |n| device_command(&counter, &device, &model, precision, run, n))?;
                let ort = match (&ort, ort_model(&fixtures, net, precision)) {
                    (Some(ort), Some(onnx)) => Some(measure(&base("ort"), args.reuse, |n| ort.command(&onnx, run, n))?),
                    _ => None,
                };
                let row = Row { net, precision, cpu, threads: args.threads, macs, device, ort };
                eprintln!("armbench: {}", row.line());
                rows.push(row);
                write_json(&out, started, &rows, None)?;
            }
        }
    }
    let x86 = if args.x86 { Some(x86_timings(&args.models, &fixtures)?) } else { None };
    write_json(&out, started, &rows, x86.as_ref())?;
    print!("{}", table(&rows));
    println!("written: {}", out.display());
    Ok(())
}

/// Where a count runs: the qemu CPU model and the threads.
#[derive(Clone, Copy)]
struct Run {
    cpu: BoardCpu,
    threads: u32,
}

impl Run {
    /// armcount's settings for this run: the CPU, and the callback mode for several threads.
    fn apply(&self, c: &mut Command) {
        c.env("ARMCOUNT_CPU", self.cpu.qemu());
        if self.threads > 1 {
            c.env("ARMCOUNT_MODE", "cb");
        }
    }
}

/// `device bench --model-only` on `model`, `n` runs, under armcount.
fn device_command(counter: &Path, device: &Path, model: &Path, precision: Precision, run: Run, n: u32) -> Command {
    let cpu = run.cpu;
    let float = match precision {
        Precision::Fp32 => "f32",
        Precision::Fp16 => "f16",
        // The int8 file's own choice for its float layers, as a user runs it.
        Precision::Int8 => "auto",
    };
    let mut c = Command::new(counter);
    c.arg(device).args(["bench", "--model"]).arg(model);
    c.args(["--precision", float, "--model-only", "--json", "--warmup", "0", "--iters", &n.to_string()]);
    c.args(["--threads", &run.threads.to_string()]);
    run.apply(&mut c);
    c.env("ARMCOUNT_SYSROOT", QEMU_SYSROOT);
    if qemu_cpu_has_fp16(cpu.qemu()) {
        c.env("ARMCOUNT_GUEST_ENV", format!("{GUEST_ENV} {TRACT_FP16_ENV}"));
    }
    c
}

/// ONNX Runtime's aarch64 set-up: the scripts, and the sysroot setup.sh makes (in
/// `ORT_AARCH64_DIR`, default /tmp/ort-aarch64).
struct Ort {
    dir: PathBuf,
}

impl Ort {
    fn find(dir: PathBuf) -> Result<Ort> {
        let script = dir.join("run-ort.sh");
        ensure!(script.is_file(), "no ort-aarch64 at {}: pass --ort DIR, or --no-ort", script.display());
        let data = std::env::var_os("ORT_AARCH64_DIR").map_or_else(|| PathBuf::from("/tmp/ort-aarch64"), PathBuf::from);
        let python = data.join("sysroot/usr/bin/python3.11");
        ensure!(
            python.exists(),
            "ONNX Runtime's aarch64 sysroot is missing ({} not found): run {} once",
            python.display(),
            dir.join("setup.sh").display()
        );
        Ok(Ort { dir })
    }

    /// `run-ort.sh MODEL N THREADS`: `n` runs of `session.run` under armcount.
    fn command(&self, model: &Path, run: Run, n: u32) -> Command {
        let mut c = Command::new(self.dir.join("run-ort.sh"));
        c.arg(model).args([n.to_string(), run.threads.to_string()]);
        run.apply(&mut c);
        c
    }
}

/// The ONNX file ORT runs for `precision`: the fp32 export, or ORT's default QDQ quantization
/// (u8 activations, Q/DQ on every output: its fastest int8 path). No fp16 model.
fn ort_model(fixtures: &Path, net: Net, precision: Precision) -> Option<PathBuf> {
    let file = match precision {
        Precision::Fp32 => format!("{}.onnx", net.name()),
        Precision::Int8 => format!("{}.int8-ort.onnx", net.name()),
        Precision::Fp16 => return None,
    };
    Some(fixtures.join(file))
}

/// Makes the fixtures of `net` with tools/make_test_models.py unless they are all there (its
/// last file, the exact parity file, says they are complete).
fn ensure_fixtures(dir: &Path, net: Net) -> Result<()> {
    let name = net.name();
    let files = ["state_dict.safetensors", "int8.safetensors", "onnx", "int8-ort.onnx", "exact.parity.safetensors"];
    if files.iter().all(|f| dir.join(format!("{name}.{f}")).is_file()) {
        return Ok(());
    }
    cmd::run(
        Command::new(venv_python())
            .arg(root().join("tools/make_test_models.py"))
            .arg("--out")
            .arg(dir)
            .args(["--models", name]),
    )
}

/// The compact file the device runs for `precision` (fp16 runs the f32 file), converted from the
/// fixtures' state dict when missing or older; the names tools/bench_ort.py uses.
fn compact_model(device: &Path, fixtures: &Path, net: Net, precision: Precision) -> Result<PathBuf> {
    let name = net.name();
    let state_dict = fixtures.join(format!("{name}.state_dict.safetensors"));
    let tag = if precision == Precision::Int8 { "int8" } else { "f32" };
    let out = fixtures.join(format!("{name}.{tag}.evw"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&out).is_some_and(|o| modified(&state_dict).is_some_and(|s| o >= s)) {
        return Ok(out);
    }
    let mut c = Command::new("qemu-aarch64");
    c.args(["-L", QEMU_SYSROOT]).arg(device).args(["convert", "--state-dict"]).arg(&state_dict);
    c.args(["--arch", name, "--form", "folded", "--precision", tag]);
    if precision == Precision::Int8 {
        c.arg("--int8-params").arg(fixtures.join(format!("{name}.int8.safetensors")));
    }
    cmd::run(c.arg("-o").arg(&out))?;
    Ok(out)
}

/// One counted run: armcount's classes (`armcount.CLASS COUNT`, `armcount.threads`) and warnings.
#[derive(Clone, Debug, Default, PartialEq)]
struct Report {
    counts: BTreeMap<String, u64>,
    warnings: Vec<String>,
}

impl Report {
    fn parse(text: &str, path: &Path) -> Result<Report> {
        let mut r = Report::default();
        for (i, line) in text.lines().enumerate() {
            let Some(rest) = line.strip_prefix("armcount.") else { continue };
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if name == "warning" {
                r.warnings.push(value.to_string());
                continue;
            }
            let count = value.split_whitespace().next().and_then(|v| v.parse().ok()).with_context(|| {
                format!("{}:{}: `{line}` is not `armcount.CLASS COUNT`", path.display(), i + 1)
            })?;
            r.counts.insert(name.to_string(), count);
        }
        ensure!(r.counts.contains_key("total"), "{}: no armcount.total line (did the run end?)", path.display());
        Ok(r)
    }

    fn total(&self) -> u64 {
        self.counts["total"]
    }
}

/// Per inference, class by class: (hi - lo) / (n_hi - n_lo). `threads` is not a count.
fn per_inference(lo: &Report, hi: &Report, n_lo: u32, n_hi: u32) -> Result<BTreeMap<String, f64>> {
    ensure!(n_hi > n_lo, "the longer run ({n_hi}) must be longer than the shorter ({n_lo})");
    let mut per = BTreeMap::new();
    for (name, &h) in hi.counts.iter().filter(|(n, _)| *n != "threads") {
        let l = *lo.counts.get(name).with_context(|| format!("class {name} is in one report only"))?;
        per.insert(name.clone(), (h as f64 - l as f64) / f64::from(n_hi - n_lo));
    }
    Ok(per)
}

/// A pair of counted runs (N_LO and N_HI inferences) of one engine on one configuration.
struct Count {
    per_inference: BTreeMap<String, f64>,
    /// Whole-process totals of the two runs.
    totals: [u64; 2],
    /// Guest threads seen (the default `tb` mode is exact for one).
    threads: u64,
    warnings: Vec<String>,
    /// What the shorter run printed (the device's `bench --json` document).
    stdout: String,
    /// Wall time of the runs made now (0 when reused).
    seconds: f64,
}

impl Count {
    fn total(&self) -> f64 {
        self.per_inference["total"]
    }

    fn share(&self, class: &str) -> f64 {
        self.per_inference.get(class).copied().unwrap_or(0.0) / self.total()
    }

    fn json(&self) -> Value {
        json!({
            "total": self.total(),
            "simd_compute_share": self.share("simd_compute"),
            "per_inference": self.per_inference,
            "whole_runs": {format!("n{N_LO}"): self.totals[0], format!("n{N_HI}"): self.totals[1]},
            "threads": self.threads,
            "warnings": self.warnings,
            "seconds": self.seconds,
        })
    }
}

/// Runs `command(n)` for n = N_LO and N_HI with its report in `base.nN.txt` (stdout in `.out`,
/// stderr in `.err`), or reads the reports there with `reuse`.
fn measure(base: &Path, reuse: bool, command: impl Fn(u32) -> Command) -> Result<Count> {
    let file = |n: u32, ext: &str| PathBuf::from(format!("{}.n{n}.{ext}", base.display()));
    let mut reports = Vec::new();
    let mut seconds = 0.0;
    for n in [N_LO, N_HI] {
        let (report, out, err) = (file(n, "txt"), file(n, "out"), file(n, "err"));
        if !(reuse && report.is_file()) {
            let mut c = command(n);
            let shown = format!("{c:?}").replace('"', "");
            eprintln!("\x1b[1m$ {shown}\x1b[0m");
            c.env("ARMCOUNT_REPORT", &report).stdin(Stdio::null());
            c.stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?);
            c.stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
            let t = Instant::now();
            let status = c.status().with_context(|| format!("could not start {shown}"))?;
            seconds += t.elapsed().as_secs_f64();
            if !status.success() {
                let log = std::fs::read_to_string(&err).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("{shown} failed with {status}; {}:\n{}", err.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        let text = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
        reports.push(Report::parse(&text, &report)?);
    }
    let (lo, hi) = (&reports[0], &reports[1]);
    let threads = lo.counts.get("threads").copied().max(hi.counts.get("threads").copied()).unwrap_or(0);
    let mut warnings = lo.warnings.clone();
    warnings.extend(hi.warnings.iter().cloned());
    for w in &warnings {
        eprintln!("warning: {}: {w}", base.display());
    }
    Ok(Count {
        per_inference: per_inference(lo, hi, N_LO, N_HI)?,
        totals: [lo.total(), hi.total()],
        threads,
        warnings,
        stdout: std::fs::read_to_string(file(N_LO, "out")).unwrap_or_default(),
        seconds,
    })
}

/// Multiply-adds of one SIDE x SIDE inference (convolutions and the classifier), as `host info`
/// counts them.
fn macs(net: Net) -> u64 {
    let config = match net {
        Net::Resnet18 => ResNetConfig::resnet18(),
        Net::Resnet50 => ResNetConfig::resnet50(),
    };
    let out_side = |side: u32, kernel: u32, stride: u32, padding: u32| (side + 2 * padding).saturating_sub(kernel) / stride + 1;
    let mut side = vec![0u32; config.num_values(Form::Folded)];
    let mut total = 0u64;
    let Ok(()) = config.walk::<std::convert::Infallible>(Form::Folded, |node| {
        let (s, macs) = match *node {
            Node::Input { .. } => (SIDE, 0),
            Node::Conv { input, in_channels, out_channels, kernel, stride, padding, .. } => {
                let s = out_side(side[input.index()], kernel, stride, padding);
                (s, u64::from(s * s) * u64::from(out_channels) * u64::from(in_channels * kernel * kernel))
            }
            Node::MaxPool { input, kernel, stride, padding, .. } => (out_side(side[input.index()], kernel, stride, padding), 0),
            Node::GlobalAvgPool { .. } => (1, 0),
            Node::Linear { in_features, out_features, .. } => (1, u64::from(in_features) * u64::from(out_features)),
            ref other => (other.inputs().first().map_or(0, |v| side[v.index()]), 0),
        };
        side[node.output().index()] = s;
        total += macs;
        Ok(())
    });
    total
}

/// One configuration: the device's count and ORT's beside it.
struct Row {
    net: Net,
    precision: Precision,
    cpu: BoardCpu,
    threads: u32,
    macs: u64,
    device: Count,
    ort: Option<Count>,
}

impl Row {
    /// The multiply-adds alone, at the widest 128-bit NEON multiply-add for the precision.
    fn floor(&self) -> f64 {
        self.macs as f64 / self.precision.macs_per_insn() as f64
    }

    fn ratio(&self) -> Option<f64> {
        self.ort.as_ref().map(|o| self.device.total() / o.total())
    }

    /// The device's `bench --json` document of the shorter run.
    fn device_doc(&self) -> Value {
        serde_json::from_str(&self.device.stdout).unwrap_or(Value::Null)
    }

    fn json(&self) -> Value {
        let doc = self.device_doc();
        json!({
            "model": self.net.name(),
            "precision": self.precision.name(),
            "cpu": self.cpu.qemu(),
            "board": self.cpu.board(),
            "threads": self.threads,
            "macs": self.macs,
            "floor": self.floor(),
            "device": self.device.json(),
            "device_compute": doc["model"]["compute"],
            "device_cpu_features": doc["cpu"]["features"],
            "tract_cpu_features": doc["cpu"]["tract"]["features"],
            "ort": self.ort.as_ref().map(Count::json),
            "device_over_ort": self.ratio(),
            "device_over_floor": self.device.total() / self.floor(),
        })
    }

    fn line(&self) -> String {
        let m = |c: &Count| format!("{:9.1} M", c.total() / 1e6);
        let pct = |c: &Count| format!("{:5.1}%", 100.0 * c.share("simd_compute"));
        format!(
            "{:<9} {:<5} {:<11} {:>2} {:<22} {} {} {:>7} {} {} {:9.1} M {:6.2}x",
            self.net.name(),
            self.precision.name(),
            self.cpu.qemu(),
            self.threads,
            self.cpu.board(),
            m(&self.device),
            self.ort.as_ref().map_or(format!("{:>11}", "-"), m),
            self.ratio().map_or("-".into(), |r| format!("{r:.2}x")),
            pct(&self.device),
            self.ort.as_ref().map_or(format!("{:>6}", "-"), pct),
            self.floor() / 1e6,
            self.device.total() / self.floor(),
        )
    }
}

/// The rows as a table, with what the device detected on each CPU.
fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<9} {:<5} {:<11} {:>2} {:<22} {:>11} {:>11} {:>7} {:>6} {:>6} {:>11} {:>7}\n",
        "network", "prec", "qemu -cpu", "th", "board", "device", "ORT", "dev/ORT", "SIMD d", "SIMD o", "MAC floor", "d/floor"
    );
    for r in rows {
        out += &r.line();
        out.push('\n');
    }
    out += &format!(
        "instructions per inference = (count(N={N_HI}) - count(N={N_LO})) / {}, all threads (th) together, model alone on a fixed input;\n\
         SIMD = armcount's simd_compute share; floor = MACs / (16 int8 sdot, 8 fp16 or 4 fp32 fmla); counts, not time\n",
        N_HI - N_LO
    );
    let mut seen = Vec::new();
    for r in rows.iter().filter(|r| !seen.contains(&r.cpu) && { seen.push(r.cpu); true }) {
        let doc = r.device_doc();
        let names = |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")).unwrap_or_default();
        out += &format!(
            "{}: device sees (HWCAP) [{}], tract sees [{}]\n",
            r.cpu.qemu(),
            names(&doc["cpu"]["features"]),
            names(&doc["cpu"]["tract"]["features"])
        );
    }
    out
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn write_json(path: &Path, started: u64, rows: &[Row], x86: Option<&Value>) -> Result<()> {
    let qemu = cmd::output(Command::new("qemu-aarch64").arg("--version")).unwrap_or_default();
    let doc = json!({
        "what": "aarch64 instructions per inference (count(N=3) - count(N=1)) / 2 under qemu-user with armcount, all threads together; counts, not time",
        "started_unix": started,
        "qemu": qemu.lines().next().unwrap_or(""),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "x86_timings_ms": x86,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// tools/bench_ort.py on this machine for each network: the device's inference stage against
/// ONNX Runtime's `session.run`, milliseconds (needs the native release build of device).
fn x86_timings(nets: &[Net], fixtures: &Path) -> Result<Value> {
    cmd::run(cargo().args(["build", "--release", "-p", "device"]))?;
    let mut all = serde_json::Map::new();
    for net in nets {
        let text = cmd::output(
            Command::new(venv_python())
                .arg(root().join("tools/bench_ort.py"))
                .arg("--fixtures")
                .arg(fixtures)
                .args(["--model", net.name(), "--json"]),
        )?;
        let rows: Value = serde_json::from_str(&text).with_context(|| format!("tools/bench_ort.py printed no JSON: {text}"))?;
        println!("x86 {} (ms, p50 / mean)", net.name());
        for r in rows.as_array().into_iter().flatten() {
            let ms = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:8.2}"));
            println!("  {:<48} {} {} {}", r["row"].as_str().unwrap_or(""), ms("p50_ms"), ms("mean_ms"), r["note"].as_str().unwrap_or(""));
        }
        all.insert(net.name().into(), rows);
    }
    Ok(Value::Object(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT_N1: &str = "armcount.total 1000\narmcount.simd_vector 300 (30.00%)\narmcount.simd_compute 320 (32.00%)\narmcount.threads 1\n";
    const REPORT_N3: &str = "armcount.total 5000\narmcount.simd_vector 2300 (46.00%)\narmcount.simd_compute 2400 (48.00%)\narmcount.threads 1\n\
        armcount.warning multi-threaded guest: counts race\n";

    #[test]
    fn per_inference_is_the_difference_over_the_extra_runs() {
        let lo = Report::parse(REPORT_N1, Path::new("n1.txt")).unwrap();
        let hi = Report::parse(REPORT_N3, Path::new("n3.txt")).unwrap();
        assert_eq!(hi.warnings, ["multi-threaded guest: counts race"]);
        let per = per_inference(&lo, &hi, 1, 3).unwrap();
        assert_eq!(per["total"], 2000.0);
        assert_eq!(per["simd_vector"], 1000.0);
        assert_eq!(per["simd_compute"], 1040.0);
        assert!(!per.contains_key("threads"));
        assert!(per_inference(&lo, &hi, 3, 3).is_err());
    }

    #[test]
    fn a_bad_report_names_its_file_and_line() {
        let e = Report::parse("armcount.total lots\n", Path::new("r.txt")).unwrap_err().to_string();
        assert!(e.contains("r.txt:1"), "{e}");
        let e = Report::parse("guest output only\n", Path::new("r.txt")).unwrap_err().to_string();
        assert!(e.contains("no armcount.total"), "{e}");
    }

    #[test]
    fn macs_and_floors_match_host_info() {
        // `host info --arch resnet18|resnet50`: 1.814 and 4.089 GMACs per 224x224 image.
        assert_eq!(macs(Net::Resnet18) / 1_000_000, 1814);
        assert_eq!(macs(Net::Resnet50) / 1_000_000, 4089);
    }
}
