//! Step 1 of a deployment, on this machine: the release's files (the aarch64 `device` binary,
//! checked and stripped, the model, the labels) with their SHA-256 sums, the release's name and
//! its `release.env`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::{say, Args};
use crate::cmd;

/// The files of a new release, hashed. Owns the stripped copy of the binary, which
/// must outlive the upload.
pub(super) struct LocalRelease {
    pub(super) files: Vec<Upload>,
    /// The model's file name on the board.
    pub(super) model_name: String,
    pub(super) total: u64,
    _stripped: Option<Stripped>,
}

impl LocalRelease {
    /// Locally: the aarch64 binary (cross-built unless `--binary`), stripped unless
    /// `--no-strip`, the model and the labels, hashed.
    pub(super) fn build(args: &Args, labels: Option<&Path>) -> Result<LocalRelease> {
        let binary = match &args.binary {
            Some(b) => b.clone(),
            None => cmd::cross_build_device(&args.profile, if args.wants_gpio() { &["gpio"] } else { &[] })?,
        };
        let arch = elf_arch(&binary)?;
        ensure!(
            arch == "aarch64",
            "{} is an {arch} executable, not aarch64: deploy the cross-built device (`cargo xtask cross`)",
            binary.display()
        );
        let stripped = if args.no_strip { None } else { strip_debug(&binary)? };
        let upload_binary = stripped.as_ref().map_or(binary.as_path(), |s| s.path.as_path());
        let model_name = remote_file_name(&args.model);
        let mut files = vec![upload_entry(upload_binary, "device".into(), "0755")?, upload_entry(&args.model, model_name.clone(), "0644")?];
        if let Some(l) = labels {
            files.push(upload_entry(l, "labels.txt".into(), "0644")?);
        }
        let total = files.iter().map(|f| f.size).sum();
        Ok(LocalRelease { files, model_name, total, _stripped: stripped })
    }
}

/// One file of a release.
pub(super) struct Upload {
    pub(super) local: PathBuf,
    pub(super) name: String,
    pub(super) mode: &'static str,
    pub(super) size: u64,
    pub(super) sha256: String,
}

fn upload_entry(local: &Path, name: String, mode: &'static str) -> Result<Upload> {
    let size = std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?.len();
    Ok(Upload { local: local.to_path_buf(), name, mode, size, sha256: sha256_file(local)? })
}

/// `STAMP-HASH` (the first 8 hex digits of the SHA-256 of the files' sums), with `-N` added
/// while a release of that name is already on the board.
pub(super) fn release_name(files: &[Upload], existing: &[String]) -> String {
    let hash = {
        let mut h = Sha256::new();
        for f in files {
            h.update(f.sha256.as_bytes());
        }
        format!("{:x}", h.finalize())[..8].to_string()
    };
    let mut name = format!("{}-{hash}", utc_stamp());
    let mut n = 2;
    while existing.contains(&name) {
        name = format!("{}-{hash}-{n}", utc_stamp());
        n += 1;
    }
    name
}

/// `release.env`: what the unit (and people) need to know about a release.
pub(super) fn release_env(root: &str, name: &str, board: &str, model: &str, labels: bool, live_args: &[String], files: &[Upload]) -> String {
    let git = cmd::output(std::process::Command::new("git").current_dir(cmd::root()).args(["describe", "--always", "--dirty"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut env = format!(
        "# edge-vision release {name}, written by `cargo xtask deploy`\n\
         EV_RELEASE={name}\nEV_BOARD={board}\nEV_MODEL={root}/current/{model}\n"
    );
    if !git.is_empty() {
        env += &format!("EV_GIT={git}\n");
    }
    if labels {
        env += &format!("EV_LABELS={root}/current/labels.txt\n");
    }
    // systemd's EnvironmentFile drops the quotes; the unit's unbraced `$EV_LIVE_ARGS` splits the
    // value into words (`--live-arg` values are checked to hold no whitespace or quotes).
    env += &format!("EV_LIVE_ARGS=\"{}\"\n", live_args.join(" "));
    for f in files {
        env += &format!("# sha256 {} {}\n", f.sha256, f.name);
    }
    env
}

/// A file name safe in scripts and the unit: the model's own name when it is plain, else
/// `model.<ext>`.
fn remote_file_name(local: &Path) -> String {
    let name = local.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        && !["device", "labels.txt", "release.env"].contains(&name);
    if plain {
        return name.to_string();
    }
    match local.extension().and_then(|e| e.to_str()).filter(|e| e.bytes().all(|b| b.is_ascii_alphanumeric())) {
        Some(ext) => format!("model.{ext}"),
        None => "model".into(),
    }
}

/// The machine of an ELF file, as `uname -m` names it.
fn elf_arch(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("cannot read the device binary {}", path.display()))?;
    ensure!(&head[..4] == b"\x7fELF", "{} is not an ELF executable", path.display());
    let machine = if head[5] == 2 { u16::from_be_bytes([head[18], head[19]]) } else { u16::from_le_bytes([head[18], head[19]]) };
    Ok(match (machine, head[4]) {
        (183, _) => "aarch64".into(),
        (62, _) => "x86_64".into(),
        (3, _) => "i686".into(),
        (40, _) => "armv7l".into(),
        (243, 2) => "riscv64".into(),
        (m, _) => format!("ELF machine {m}"),
    })
}

/// A copy of the device binary without debug info, in a private temp directory removed on drop.
struct Stripped {
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for Stripped {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `strip --strip-debug` into a temp file; `None` (with a note) when no aarch64 strip is installed.
fn strip_debug(binary: &Path) -> Result<Option<Stripped>> {
    let Some(tool) = ["aarch64-linux-gnu-strip", "llvm-strip"].into_iter().find(|t| cmd::have(t)) else {
        say("note: no aarch64-linux-gnu-strip or llvm-strip: uploading the binary with its debug info");
        return Ok(None);
    };
    let pid = std::process::id();
    let dir = (0..100)
        .map(|n| std::env::temp_dir().join(format!("xtask-deploy-{pid}-{n}")))
        .find(|d| std::fs::create_dir(d).is_ok())
        .context("cannot create a temp directory")?;
    let stripped = Stripped { path: dir.join("device"), dir };
    cmd::output(std::process::Command::new(tool).arg("--strip-debug").arg("-o").arg(&stripped.path).arg(binary))
        .with_context(|| format!("stripping {}", binary.display()))?;
    Ok(Some(stripped))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `20250102T030405Z` (UTC).
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(utc_stamp().len(), 16);
    }

    #[test]
    fn model_names() {
        assert_eq!(remote_file_name(Path::new("/x/model.evw")), "model.evw");
        assert_eq!(remote_file_name(Path::new("/x/my model.onnx")), "model.onnx");
        assert_eq!(remote_file_name(Path::new("/x/device")), "model");
    }
}
