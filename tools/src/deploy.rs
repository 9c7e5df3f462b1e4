//! `cargo xtask deploy` and `cargo xtask rollback`: put the `device` binary and a model on a board
//! over SSH, atomically, keeping the previous version to return to.
//!
//! ```sh
//! cargo xtask deploy --board pi4 --host pi@192.168.1.20 --model runs/fmnist/model.evw --service
//! cargo xtask deploy --board pi5 --host pi@pi5.local -i ~/.ssh/board --port 2222 --model m.evw --json
//! cargo xtask rollback --host pi@192.168.1.20
//! ```
//!
//! What a deployment does, in order (nothing on the board changes before step 3, and `current`
//! not before step 5, so any failure up to there leaves the running version as it was):
//!
//! 1. Locally: cross-build `device` for aarch64 (or take `--binary`), check that it is an aarch64
//!    ELF executable, strip its debug info (`--no-strip` keeps it), hash the files (SHA-256).
//! 2. One SSH round trip reads the board: `uname -m` (must be `aarch64`), the `Features` line of
//!    `/proc/cpuinfo` (checked against the `--board` profile: `asimdhp` fp16 arithmetic and
//!    `asimddp` dot product on pi5 / jetson-orin; a board lacking them is refused unless
//!    `--force`), free space under `--root` (`df -Pk`: the files plus `--min-free-mb` must fit,
//!    else a "full disk" error), the `current` / `previous` links and whether systemd runs.
//! 3. Upload into a fresh `ROOT/releases/.incoming-NAME`, streaming each file through
//!    `ssh 'cat > FILE'`; verify the SHA-256 sums on the board (`sha256sum`), write
//!    `release.env`, rename the directory to `ROOT/releases/NAME`.
//! 4. Run `device bench --json` from the new release (through `--runner` if given), as a smoke
//!    test and for the latency report. If it fails the release is removed.
//! 5. Switch: `ln -sfn releases/NAME ROOT/.current.tmp && mv -T ROOT/.current.tmp ROOT/current`
//!    (one `rename(2)`: atomic), then point `ROOT/previous` at the release that was current.
//!    Prune releases beyond `--keep` (never `current` or `previous`).
//! 6. With `--service`: write `UNIT_DIR/edge-vision.service` (runs `device live` on
//!    `--source`, default `/dev/video0`, reading `ROOT/current/release.env`), then
//!    `systemctl daemon-reload`, `enable`, `restart`. Without `--service` an installed unit is
//!    `try-restart`ed so it runs the new release. systemctl is only called when systemd runs on
//!    the board (`/run/systemd/system`) and the unit directory is one systemd reads.
//! 7. Print the latency report (every key `device bench --json` returned; `--json` adds the raw
//!    JSON as the last stdout line).
//!
//! Board layout:
//!
//! ```text
//! ROOT/releases/20250102T030405Z-1a2b3c4d/{device, <model file>, labels.txt, release.env}
//! ROOT/current  -> releases/20250102T030405Z-1a2b3c4d
//! ROOT/previous -> releases/20241224T180000Z-9f8e7d6c
//! ```
//!
//! `rollback` swaps `current` and `previous` (so a second rollback undoes the first) and
//! restarts the service when it is installed.
//!
//! Emulated boards (the tests): `--runner CMD` prefixes every run of the device binary on the
//! board; `--runner qemu` means `qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu <board's CPU>`.
//! `--expect-arch` (default `aarch64`) is the `uname -m` the board must report: the tests deploy
//! to an x86_64 machine that runs the aarch64 binary under qemu with `--expect-arch x86_64
//! --runner qemu`, and prove the wrong-architecture error without it. When the board is not
//! aarch64 its `/proc/cpuinfo` says nothing about aarch64 features, so that check is skipped.

mod board;
mod release;
mod report;
mod ssh;

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;
pub use board::BoardKind;
use board::Board;
use release::{release_env, release_name, LocalRelease};
use ssh::{sh_quote, Ssh, SshArgs};

const UNIT_NAME: &str = "edge-vision.service";
const DEFAULT_ROOT: &str = "/opt/edge-vision";
const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// Unit directories systemd reads units from (a unit elsewhere is written, not started).
const SYSTEMD_UNIT_DIRS: &[&str] = &["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/// Where things go on the board.
#[derive(clap::Args, Clone, Debug)]
pub struct Layout {
    /// Install prefix on the board: releases/, current and previous live here.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub root: String,
    /// Directory for the systemd unit edge-vision.service.
    #[arg(long, default_value = DEFAULT_UNIT_DIR)]
    pub unit_dir: String,
}

#[derive(clap::Args)]
pub struct Args {
    /// Board profile: the CPU features to expect (pi4: NEON; pi5, jetson-orin: + fp16, dot product).
    #[arg(long, value_enum)]
    pub board: BoardKind,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Model file to deploy (compact weights `.evw` from `host export`, or `.onnx`).
    #[arg(long)]
    pub model: PathBuf,
    /// Labels file, deployed as labels.txt (default: labels.txt next to the model, if any).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Install and (re)start the systemd unit edge-vision.service running `device live`.
    #[arg(long)]
    pub service: bool,
    /// Camera (or any `device live --source`) for the service.
    #[arg(long, default_value = "/dev/video0")]
    pub source: String,
    /// Extra argument for `device live` in the service, repeatable: `--live-arg=--threads=4`.
    #[arg(long = "live-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub live_args: Vec<String>,
    #[command(flatten)]
    pub layout: Layout,
    /// Deploy this aarch64 device binary instead of cross-building one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Cross-build with the GPIO LED/button support (`--features gpio`); implied when a
    /// `--live-arg` passes `--gpio-chip`, `--led-line` or `--button-line`.
    #[arg(long)]
    pub gpio: bool,
    /// Upload the binary as built. By default its debug info is stripped first
    /// (`aarch64-linux-gnu-strip --strip-debug`: symbols stay, so backtraces keep function names;
    /// the release profile's line tables make the binary several times larger).
    #[arg(long)]
    pub no_strip: bool,
    /// Cargo profile of the cross-build.
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Command prefix that runs the device binary on the board (`qemu`: qemu-aarch64 with the
    /// board's CPU model, for emulated boards).
    #[arg(long, default_value = "")]
    pub runner: String,
    /// Releases to keep on the board (current and previous are always kept).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=1000))]
    pub keep: u64,
    /// Timed `device bench` runs.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub iters: u32,
    /// Untimed `device bench` warm-up runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub warmup: u32,
    /// Extra argument for `device bench`, repeatable: `--bench-arg=--threads=4`.
    #[arg(long = "bench-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub bench_args: Vec<String>,
    /// Skip `device bench` (no smoke test of the new release before the switch).
    #[arg(long)]
    pub no_bench: bool,
    /// Also print the raw `device bench` JSON (last line of stdout).
    #[arg(long)]
    pub json: bool,
    /// Deploy even when the board's CPU lacks features the board profile expects.
    #[arg(long)]
    pub force: bool,
    /// Space to leave free on the board's disk after the upload, in MiB.
    #[arg(long, default_value_t = 16)]
    pub min_free_mb: u64,
    /// The `uname -m` the board must report. Only for emulated boards: the tests deploy to an
    /// x86_64 machine with `--expect-arch x86_64 --runner qemu`.
    #[arg(long, default_value = "aarch64")]
    pub expect_arch: String,
}

impl Args {
    /// Whether the cross-build needs `--features gpio`.
    pub fn wants_gpio(&self) -> bool {
        const GPIO_FLAGS: [&str; 3] = ["--gpio-chip", "--led-line", "--button-line"];
        self.gpio || self.live_args.iter().any(|a| GPIO_FLAGS.iter().any(|f| a.split('=').next() == Some(*f)))
    }
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub layout: Layout,
}

fn say(msg: impl AsRef<str>) {
    eprintln!("\x1b[1m==>\x1b[0m {}", msg.as_ref());
}

/// Remote paths go into shell scripts and a systemd unit: absolute and plain.
fn check_remote_path(what: &str, p: &str) -> Result<String> {
    ensure!(p.starts_with('/'), "{what} must be an absolute path on the board, got `{p}`");
    ensure!(
        p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@:,".contains(&b)),
        "{what} `{p}` has characters that do not belong in a path on the board (use letters, digits, / . _ - + @ : ,)"
    );
    let p = p.trim_end_matches('/');
    Ok(if p.is_empty() { "/".into() } else { p.to_string() })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What one SSH round trip learns about the board.
#[derive(Debug, Default)]
struct Probe {
    arch: String,
    cpuinfo_features: Option<Vec<String>>,
    free_kib: Option<u64>,
    /// `current` exists but is not a symlink.
    current_not_link: bool,
    current: Option<String>,
    previous: Option<String>,
    /// Release names, newest first (`ls -t`).
    releases: Vec<String>,
    systemd: bool,
    unit_installed: bool,
    sha256sum: bool,
}

fn probe(ssh: &Ssh, root: &str, unit_dir: &str) -> Result<Probe> {
    let script = format!(
        r#"root={root}
echo "arch=$(uname -m)"
echo "cpuinfo=$(grep -i -m1 '^features' /proc/cpuinfo 2>/dev/null)"
d="$root"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "free_kib=$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')"
if [ -e "$root/current" ] && [ ! -L "$root/current" ]; then echo current_not_link=yes; fi
echo "current=$(readlink "$root/current" 2>/dev/null)"
echo "previous=$(readlink "$root/previous" 2>/dev/null)"
echo "releases=$(ls -1t "$root/releases" 2>/dev/null | tr '\n' ' ')"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; fi
if [ -e {unit} ]; then echo unit=yes; fi
if command -v sha256sum >/dev/null 2>&1; then echo sha256sum=yes; fi
"#,
        root = sh_quote(root),
        unit = sh_quote(&format!("{unit_dir}/{UNIT_NAME}")),
    );
    let out = ssh.run("reading the board (uname, /proc/cpuinfo, df)", &script)?;
    let mut p = Probe::default();
    let nonempty = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "arch" => p.arch = v.trim().to_string(),
            "cpuinfo" => p.cpuinfo_features = board::cpuinfo_features(v),
            "free_kib" => p.free_kib = v.trim().parse().ok(),
            "current_not_link" => p.current_not_link = true,
            "current" => p.current = nonempty(v),
            "previous" => p.previous = nonempty(v),
            "releases" => p.releases = v.split_whitespace().map(str::to_string).collect(),
            "systemd" => p.systemd = true,
            "unit" => p.unit_installed = true,
            "sha256sum" => p.sha256sum = true,
            _ => {}
        }
    }
    ensure!(!p.arch.is_empty(), "could not read `uname -m` on {}", ssh.describe());
    Ok(p)
}

/// `releases/NAME` -> `NAME`.
fn release_of(link: &Option<String>) -> Option<&str> {
    link.as_deref().map(|l| l.trim_end_matches('/').rsplit('/').next().unwrap_or(l))
}

/// The systemd unit. It names no release and no model: `release.env` of the current release does.
fn unit_file(root: &str, runner: &str, source: &str) -> String {
    let runner = if runner.is_empty() { String::new() } else { format!("{runner} ") };
    format!(
        "# Written by `cargo xtask deploy`. {root}/current is the active release; `cargo xtask rollback`\n\
         # switches it back to {root}/previous and restarts this unit.\n\
         [Unit]\n\
         Description=edge-vision: classify camera frames (device live)\n\
         After=local-fs.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         EnvironmentFile={root}/current/release.env\n\
         WorkingDirectory={root}/current\n\
         ExecStart={runner}{root}/current/device live --model ${{EV_MODEL}} --source {source} $EV_LIVE_ARGS\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// systemctl steps after a switch (deploy or rollback).
fn restart_service(ssh: &Ssh, p: &Probe, unit_dir: &str, install: bool, on_failure: &'static str) -> Result<()> {
    if !install && !p.unit_installed {
        return Ok(());
    }
    if !SYSTEMD_UNIT_DIRS.contains(&unit_dir) {
        say(format!("{unit_dir} is not a systemd unit directory: {UNIT_NAME} is in place but was not (re)started"));
        return Ok(());
    }
    if !p.systemd {
        say(format!("systemd is not running on {}: {unit_dir}/{UNIT_NAME} is in place but was not (re)started", ssh.host()));
        return Ok(());
    }
    let script = if install {
        format!("systemctl daemon-reload && systemctl enable {UNIT_NAME} && systemctl restart {UNIT_NAME}")
    } else {
        format!("systemctl try-restart {UNIT_NAME}")
    };
    say(format!("{script} (on {})", ssh.host()));
    ssh.run("restarting the service", &script).context(on_failure)?;
    Ok(())
}

/// `cargo xtask deploy`: the steps of the module doc, in order.
pub fn run(args: &Args) -> Result<()> {
    let d = Deployment::new(args)?;
    let local = LocalRelease::build(args, d.labels.as_deref())?;
    let board = d.check_board(local.total)?;
    let name = release_name(&local.files, &board.releases);
    let bench = d.stage(&local, &name, &board)?;
    let previous = d.switch(&name, &board)?;
    d.prune(&name, &board, &previous);
    d.service(&board)?;
    d.report(&name, &previous, bench);
    Ok(())
}

/// One deployment: its checked arguments and the connection, shared by the steps.
struct Deployment<'a> {
    args: &'a Args,
    board: Board,
    root: String,
    unit_dir: String,
    labels: Option<PathBuf>,
    /// Command prefix for the device binary on the board (`--runner`, `qemu` expanded).
    runner: String,
    ssh: Ssh,
    /// `user@address port P`, for messages.
    host: String,
}

impl Probe {
    /// What a failure before the switch leaves running, for messages.
    fn keeps(&self) -> String {
        match &self.current {
            Some(c) => format!("{c} stays current"),
            None => "nothing was deployed there".into(),
        }
    }
}

impl<'a> Deployment<'a> {
    /// Checks the arguments (nothing is built or contacted yet).
    fn new(args: &'a Args) -> Result<Self> {
        let board = args.board.profile();
        let root = check_remote_path("--root", &args.layout.root)?;
        let unit_dir = check_remote_path("--unit-dir", &args.layout.unit_dir)?;
        ensure!(root != "/", "--root must not be /");
        ensure!(args.keep >= 2, "--keep must be at least 2 (current and previous)");
        ensure!(args.model.is_file(), "model {} does not exist", args.model.display());
        let labels = match &args.labels {
            Some(l) => {
                ensure!(l.is_file(), "labels {} do not exist", l.display());
                Some(l.clone())
            }
            None => args.model.parent().map(|d| d.join("labels.txt")).filter(|l| l.is_file()),
        };
        for (what, v) in std::iter::once(("--source", &args.source)).chain(args.live_args.iter().map(|a| ("--live-arg", a))) {
            ensure!(
                !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || "\"'\\$%;".contains(c)),
                "{what} `{v}` cannot go into the systemd unit: no spaces, quotes, \\, $, % or ;"
            );
        }
        let runner = if args.runner == "qemu" { cmd::qemu_runner(board.qemu_cpu) } else { args.runner.clone() };
        let ssh = Ssh::new(&args.ssh)?;
        let host = ssh.describe();
        Ok(Deployment { args, board, root, unit_dir, labels, runner, ssh, host })
    }

    /// Step 2: one round trip reads the board; its architecture, CPU features, `current` link,
    /// `sha256sum` and free space must do for a release of `total` bytes.
    fn check_board(&self, total: u64) -> Result<Probe> {
        let board = &self.board;
        say(format!("checking {} ({} profile: {}, {})", self.host, board.name, board.cpu, board.features.join(" ")));
        let p = probe(&self.ssh, &self.root, &self.unit_dir)?;
        self.check_arch(&p)?;
        ensure!(!p.current_not_link, "{}/current on {} is not a symlink: move it away first", self.root, self.host);
        ensure!(p.sha256sum, "{} has no sha256sum (coreutils) to verify the upload with", self.host);
        self.check_space(&p, total)?;
        Ok(p)
    }

    /// `uname -m` is `--expect-arch`; on aarch64 the `Features` the board profile expects are
    /// there (else refused unless `--force`).
    fn check_arch(&self, p: &Probe) -> Result<()> {
        let (host, board, args) = (&self.host, &self.board, self.args);
        if p.arch != args.expect_arch {
            let hint = if p.arch.starts_with("armv") { " (a 32-bit OS: install the 64-bit one)" } else { "" };
            let want = if args.expect_arch == "aarch64" {
                "the device binary is built for aarch64".to_string()
            } else {
                format!("expected {} (--expect-arch)", args.expect_arch)
            };
            bail!("wrong architecture: {host} is {}{hint}, {want}; nothing was changed ({})", p.arch, p.keeps());
        }
        if p.arch != "aarch64" {
            say(format!("note: {host} is {} (--expect-arch): aarch64 CPU features not checked", p.arch));
            return Ok(());
        }
        let Some(have) = &p.cpuinfo_features else {
            say(format!("note: no Features line in /proc/cpuinfo on {host}: CPU features not checked"));
            return Ok(());
        };
        let missing: Vec<_> = board.features.iter().filter(|f| !have.iter().any(|h| h == *f)).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|f| format!("{f} ({})", board::feature_meaning(f))).collect::<Vec<_>>().join(", ");
            let msg = format!("{host} lacks CPU features the {} profile expects: {list}", board.name);
            if !args.force {
                bail!("{msg}; is --board right? (--force deploys anyway; nothing was changed, {})", p.keeps());
            }
            say(format!("warning: {msg} (--force: deploying anyway)"));
        }
        let extra: Vec<_> = ["asimdhp", "asimddp"].into_iter().filter(|f| have.iter().any(|h| h == f) && !board.features.contains(f)).collect();
        if !extra.is_empty() {
            say(format!("note: {host} also has {}: a pi5 / jetson-orin class CPU", extra.join(" ")));
        }
        Ok(())
    }

    /// The release plus `--min-free-mb` fit in the free space under `--root`.
    fn check_space(&self, p: &Probe, total: u64) -> Result<()> {
        let (host, root) = (&self.host, &self.root);
        let reserve = self.args.min_free_mb * 1024 * 1024;
        match p.free_kib {
            Some(free) if free * 1024 < total + reserve => bail!(
                "full disk: {host} has {} free under {root}, the release needs {} plus {} kept free (--min-free-mb); \
                 nothing was changed ({})",
                mib(free * 1024),
                mib(total),
                mib(reserve),
                p.keeps()
            ),
            Some(_) => {}
            None => say(format!("note: could not read the free space under {root} on {host}")),
        }
        Ok(())
    }

    /// Steps 3 and 4: upload and verify into `releases/NAME`, then bench it (unless
    /// `--no-bench`). On any failure the release is removed again and the error says what stays
    /// current.
    fn stage(&self, local: &LocalRelease, name: &str, p: &Probe) -> Result<Option<serde_json::Value>> {
        let root = &self.root;
        let release = format!("{root}/releases/{name}");
        let incoming = format!("{root}/releases/.incoming-{name}");
        say(format!("uploading {} to {}:{release} ({} files)", mib(local.total), self.host, local.files.len()));
        let staged = self.upload(local, name, &incoming, &release).and_then(|()| {
            if self.args.no_bench {
                Ok(None)
            } else {
                self.bench(&release, &local.model_name).map(Some)
            }
        });
        staged.map_err(|e| {
            let cleanup = self.ssh.run("removing the failed release", &format!("rm -rf {} {}", sh_quote(&incoming), sh_quote(&release)));
            let left = match cleanup {
                Ok(_) => String::new(),
                Err(_) => format!(" (the incomplete upload in {root}/releases may be left over; the next deploy removes it)"),
            };
            e.context(format!("deploying to {} failed before the switch: {}{left}", self.host, p.keeps()))
        })
    }

    /// Step 3: the files and `release.env` into a fresh `incoming` directory, their SHA-256 sums
    /// checked on the board, the directory renamed to `release`.
    fn upload(&self, local: &LocalRelease, name: &str, incoming: &str, release: &str) -> Result<()> {
        let (ssh, root, files) = (&self.ssh, &self.root, &local.files);
        ssh.run(
            "creating the release directory",
            &format!("rm -rf {0}/releases/.incoming-* && mkdir -p {1}", sh_quote(root), sh_quote(incoming)),
        )?;
        for f in files {
            ssh.upload(&f.local, &format!("{incoming}/{}", f.name), f.mode)?;
        }
        let env = release_env(root, name, self.board.name, &local.model_name, self.labels.is_some(), &self.args.live_args, files);
        ssh.write(&env, &format!("{incoming}/release.env"), "0644")?;
        let sums = ssh.run(
            "verifying the upload",
            &format!("cd {} && sha256sum {}", sh_quote(incoming), files.iter().map(|f| sh_quote(&f.name)).collect::<Vec<_>>().join(" ")),
        )?;
        for f in files {
            let remote = sums.lines().find_map(|l| {
                let (sum, file) = l.split_once(char::is_whitespace)?;
                (file.trim_start_matches([' ', '*']) == f.name).then_some(sum)
            });
            ensure!(
                remote == Some(f.sha256.as_str()),
                "{} arrived damaged on {}: sha256 {} there, {} here",
                f.name,
                self.host,
                remote.unwrap_or("missing"),
                f.sha256
            );
        }
        ssh.run("naming the release", &format!("mv -T {} {}", sh_quote(incoming), sh_quote(release)))?;
        Ok(())
    }

    /// Step 4: `device bench --json` from the new release, before anything points at it: the
    /// smoke test, and the latency report.
    fn bench(&self, release: &str, model_name: &str) -> Result<serde_json::Value> {
        let (args, host) = (self.args, &self.host);
        let mut bench = format!(
            "{} {release}/device bench --model {release}/{model_name} --json --iters {} --warmup {}",
            self.runner,
            args.iters,
            args.warmup,
            release = sh_quote(release),
            model_name = sh_quote(model_name),
        );
        for a in &args.bench_args {
            bench += &format!(" {}", sh_quote(a));
        }
        let bench = format!("cd {} && {}", sh_quote(release), bench.trim_start());
        say(format!("running device bench on {host} ({} warm-up + {} timed runs)", args.warmup, args.iters));
        let out = self.ssh.output("device bench", &bench)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let why = if stderr.trim().is_empty() { "no error output" } else { stderr.trim() };
            bail!("device bench failed on {host} ({}): {why}", out.status);
        }
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("  board: {line}");
        }
        match report::find_json(&stdout) {
            Some(v) => Ok(v),
            None => bail!("device bench printed no JSON report on {host}:\n{}", stdout.trim()),
        }
    }

    /// Step 5: `current` -> the new release in one rename, `previous` -> the release that was
    /// current. Returns the link `previous` now holds.
    fn switch(&self, name: &str, p: &Probe) -> Result<Option<String>> {
        let switch = format!(
            r#"set -e
cd {root}
old=$(readlink current 2>/dev/null || true)
ln -sfn releases/{name} .current.tmp
mv -T .current.tmp current
if [ -n "$old" ] && [ "$old" != releases/{name} ]; then ln -sfn "$old" .previous.tmp && mv -T .previous.tmp previous; fi
"#,
            root = sh_quote(&self.root),
            name = name
        );
        self.ssh.run("switching to the new release", &switch)?;
        Ok(if p.current.is_some() && release_of(&p.current) != Some(name) { p.current.clone() } else { p.previous.clone() })
    }

    /// Step 5, last: removes releases beyond `--keep`, never `current` or `previous`. A failure
    /// here is a warning: the deployment is done.
    fn prune(&self, name: &str, p: &Probe, previous: &Option<String>) {
        // Newest first: the new release, then the others as `ls -t` listed them.
        let newest_first = [name].into_iter().chain(p.releases.iter().map(String::as_str).filter(|r| *r != name));
        let protected = [Some(name), release_of(previous)];
        let prune: Vec<&str> = newest_first.skip(self.args.keep as usize).filter(|r| !protected.contains(&Some(*r))).collect();
        if prune.is_empty() {
            return;
        }
        let dirs = prune.iter().map(|r| sh_quote(&format!("{}/releases/{r}", self.root))).collect::<Vec<_>>().join(" ");
        if let Err(e) = self.ssh.run("pruning old releases", &format!("rm -rf {dirs}")) {
            say(format!("warning: {e:#}"));
        } else {
            say(format!("pruned {}", prune.join(", ")));
        }
    }

    /// Step 6: with `--service` the unit is written and (re)started, else an installed one is
    /// restarted.
    fn service(&self, p: &Probe) -> Result<()> {
        let (ssh, unit_dir) = (&self.ssh, &self.unit_dir);
        if self.args.service {
            let unit = unit_file(&self.root, &self.runner, &self.args.source);
            let path = format!("{unit_dir}/{UNIT_NAME}");
            ssh.run("creating the unit directory", &format!("mkdir -p {}", sh_quote(unit_dir)))?;
            ssh.write(&unit, &format!("{path}.tmp"), "0644")?;
            ssh.run("installing the unit", &format!("mv -f {0}.tmp {0}", sh_quote(&path)))?;
            say(format!("installed {path}"));
        }
        restart_service(
            ssh,
            p,
            unit_dir,
            self.args.service,
            "the new release is current but its service did not start; `cargo xtask rollback` returns to the previous one",
        )
    }

    /// Step 7: what was deployed and the bench's latency report.
    fn report(&self, name: &str, previous: &Option<String>, bench: Option<serde_json::Value>) {
        let (host, board) = (&self.host, &self.board);
        let was = match previous {
            Some(prev) => format!("previous: {prev}; `cargo xtask rollback --host {}` returns to it", self.ssh.host()),
            None => "first release there".into(),
        };
        say(format!("deployed {name} to {host}:{}/current ({was})", self.root));
        if let Some(v) = bench {
            println!("latency report: device bench on {host} ({}: {}, {}), release {name}", board.name, board.cpu, board.precisions);
            print!("{}", report::pretty(&v));
            if self.args.json {
                println!("{v}");
            }
        }
    }
}

pub fn rollback(args: &RollbackArgs) -> Result<()> {
    let root = check_remote_path("--root", &args.layout.root)?;
    let unit_dir = check_remote_path("--unit-dir", &args.layout.unit_dir)?;
    let ssh = Ssh::new(&args.ssh)?;
    let host = ssh.describe();
    let p = probe(&ssh, &root, &unit_dir)?;
    let (Some(cur), Some(prev)) = (&p.current, &p.previous) else {
        bail!("nothing to roll back to on {host}: {root}/{} does not exist", if p.current.is_none() { "current" } else { "previous" });
    };
    let script = format!(
        r#"set -e
cd {root}
[ -x {prev}/device ] || {{ echo "{root}/{prev_plain} is gone or incomplete" >&2; exit 3; }}
ln -sfn {prev} .current.tmp
mv -T .current.tmp current
ln -sfn {cur} .previous.tmp
mv -T .previous.tmp previous
"#,
        root = sh_quote(&root),
        prev = sh_quote(prev),
        prev_plain = prev,
        cur = sh_quote(cur),
    );
    ssh.run("rolling back", &script)?;
    restart_service(&ssh, &p, &unit_dir, false, "rolled back, but the service did not restart")?;
    say(format!("rolled back {host}:{root}: current -> {prev} (was {cur}; rollback again to return to it)"));
    println!("{prev}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse_args(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = ["deploy", "--board", "pi5", "--host", "pi@b", "--model", "m.evw"];
        <Cli as clap::Parser>::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    #[test]
    fn numeric_flags_are_range_checked_by_the_parser() {
        for (flag, value, range) in [("--keep", "1", "2..=1000"), ("--iters", "0", "1..="), ("--warmup", "-1", ""), ("--port", "0", "1..=65535")] {
            let e = parse_args(&[&format!("{flag}={value}")]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(flag) && e.contains(range), "{flag}={value}: {e}");
        }
        assert_eq!(parse_args(&[]).unwrap().keep, 3);
    }

    #[test]
    fn gpio_build_when_asked_or_when_the_service_uses_gpio() {
        let parse = |extra: &[&str]| parse_args(extra).unwrap().wants_gpio();
        assert!(!parse(&[]));
        assert!(parse(&["--gpio"]));
        assert!(parse(&["--live-arg=--led-line=17", "--live-arg=--led-class=cat"]));
        assert!(parse(&["--live-arg", "--button-line"]));
        assert!(!parse(&["--live-arg=--threads=4"]));
    }

    #[test]
    fn paths() {
        assert!(check_remote_path("--root", "opt/x").is_err());
        assert!(check_remote_path("--root", "/opt/a b").is_err());
        assert_eq!(check_remote_path("--root", "/opt/edge-vision/").unwrap(), "/opt/edge-vision");
        assert_eq!(release_of(&Some("releases/abc".into())), Some("abc"));
    }

    #[test]
    fn unit_reads_the_current_release() {
        let u = unit_file("/opt/edge-vision", "", "/dev/video0");
        assert!(u.contains("EnvironmentFile=/opt/edge-vision/current/release.env\n"));
        assert!(u.contains("ExecStart=/opt/edge-vision/current/device live --model ${EV_MODEL} --source /dev/video0 $EV_LIVE_ARGS\n"));
    }
}
