//! Test fixtures for `cargo xtask deploy`: a real OpenSSH server on 127.0.0.1 with throw-away
//! keys, the real cross-built `device` binary, a real (random-weights) model file, and helpers to
//! look at the "board" root.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shared::graph::{Form, ParamKind};
use shared::weights::{Precision, WeightsWriter};
use shared::{Preprocess, ResNetConfig};

pub const QEMU_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("could not start {c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

/// `ssh-keygen -t ed25519 -N '' -f path`.
pub fn keygen(path: &Path) {
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy-test", "-f"]).arg(path));
}

/// A real `sshd -D -e` on 127.0.0.1, killed on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    child: Child,
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempfile::Builder::new().prefix("deploy-sshd-").tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("client_ed25519"));
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys")).unwrap();
        // sshd running as root insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = run_ok(Command::new("id").arg("-un")).trim().to_string();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nUseDNS no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("could not start /usr/sbin/sshd (apt-get install openssh-server)");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { port, user, key: d.join("client_ed25519"), child, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start:\n{last_log}");
    }

    /// `--host --port --identity --ssh-opt` for this server.
    pub fn ssh_args(&self) -> Vec<String> {
        self.ssh_args_with_key(&self.key)
    }

    pub fn ssh_args_with_key(&self, key: &Path) -> Vec<String> {
        vec![
            "--host".into(),
            format!("{}@127.0.0.1", self.user),
            "--port".into(),
            self.port.to_string(),
            "--identity".into(),
            key.display().to_string(),
            "--ssh-opt".into(),
            format!("UserKnownHostsFile={}", self.dir.path().join("known_hosts").display()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `device` binary, cross-built for aarch64 in the release profile (once per test run;
/// `cargo xtask test` builds the same artifacts for the qemu tests).
pub fn device_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace())
            .args([
                "build",
                "-p",
                "device",
                "--release",
                "--target",
                "aarch64-unknown-linux-gnu",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("could not run cargo");
        assert!(out.status.success(), "cross-building device failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "device")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo built no device executable")
    })
}

pub const LABELS: [&str; 10] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A real compact weights file (`model.evw`, the format `host export` writes): a Fashion-MNIST
/// ResNet-8 (1 channel, 10 classes, BatchNorm folded, f32) with seeded random He-scaled weights.
/// Different seeds give different files.
pub fn write_model(path: &Path, seed: u64) {
    let config = ResNetConfig::resnet8().with_in_channels(1).with_classes(10);
    let mut w = WeightsWriter::new(config, Form::Folded, Precision::F32, Preprocess::FASHION_MNIST)
        .labels(&LABELS)
        .producer(&format!("tools/tests/deploy_ssh.rs seed {seed}"));
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    config.for_each_param(Form::Folded, |p| {
        let n = p.numel() as usize;
        let fan_in = p.shape().iter().skip(1).product::<u32>().max(1) as f32;
        let data: Vec<f32> = match p.kind {
            ParamKind::ConvWeight | ParamKind::LinearWeight => {
                let a = (6.0 / fan_in).sqrt();
                (0..n).map(|_| uniform() * a).collect()
            }
            ParamKind::BnWeight | ParamKind::BnRunningVar | ParamKind::AffineScale => vec![1.0; n],
            _ => (0..n).map(|_| uniform() * 0.05).collect(),
        };
        if p.kind == ParamKind::BnNumBatchesTracked {
            w.add_i64(&p.name, p.shape(), &vec![0; n]).unwrap();
        } else {
            w.add_f32(&p.name, p.shape(), &data).unwrap();
        }
    });
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

/// `model.evw` (+ `labels.txt` beside it when `labels`) in a fresh directory under `dir`.
pub fn model_dir(dir: &Path, name: &str, seed: u64, labels: bool) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    write_model(&d.join("model.evw"), seed);
    if labels {
        std::fs::write(d.join("labels.txt"), LABELS.join("\n") + "\n").unwrap();
    }
    d.join("model.evw")
}

/// Runs `cargo xtask ARGS` (the `xtask` binary of this package).
pub fn xtask<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).stdin(Stdio::null()).output().unwrap();
    eprintln!(
        "$ xtask {}\n--- exit: {}\n--- stdout:\n{}--- stderr:\n{}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The one `error: ...` line the xtask ends with.
pub fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure, got success:\n{}", stdout(o));
    let e = stderr(o);
    let line = e.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no `error:` line in:\n{e}"));
    line.to_string()
}

pub fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

/// Everything under `root`: relative path -> `dir`, `link -> target` or `file <sha256>`.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("link -> {}", std::fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let mut bytes = Vec::new();
                std::fs::File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
                out.insert(rel, format!("file {} bytes, sha256 {}", bytes.len(), sha256(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `readlink ROOT/NAME`.
pub fn link(root: &Path, name: &str) -> Option<String> {
    std::fs::read_link(root.join(name)).ok().map(|p| p.display().to_string())
}

/// Release directory names under `ROOT/releases` (dot-directories included).
pub fn releases(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("releases"))
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A tmpfs mounted on a fresh directory (we are root in CI), unmounted on drop. `None` where the
/// sandbox forbids mounting.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new().prefix("deploy-tmpfs-").tempdir().unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir.path()).output().ok()?;
        if !out.status.success() {
            eprintln!("note: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mount -o remount,OPTIONS`: a tmpfs can shrink down to what it holds.
    pub fn remount(&self, options: &str) {
        run_ok(Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(self.dir.path()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn df_column(dir: &Path, column: usize) -> u64 {
    let out = run_ok(Command::new("df").arg("-Pk").arg(dir));
    out.lines().nth(1).unwrap().split_whitespace().nth(column).unwrap().parse().unwrap()
}

/// Free KiB under `dir` (`df -Pk`).
pub fn free_kib(dir: &Path) -> u64 {
    df_column(dir, 3)
}

/// Used KiB under `dir` (`df -Pk`).
pub fn used_kib(dir: &Path) -> u64 {
    df_column(dir, 2)
}
