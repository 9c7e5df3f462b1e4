//! `run.json`, the manifest that moves a run directory from one complete state to the next as a
//! unit, and the file operations that get it there.
//!
//! A save ([`commit`]) stages every file as `NAME.tmp` (written, fsynced), writes `run.json.tmp`
//! naming each file with its size and CRC-32, and renames it over `run.json`: that rename is the
//! commit. Only then is each `NAME.tmp` renamed over `NAME`. So at any instant every file the
//! manifest names holds its recorded bytes under `NAME` or, until its rename, under `NAME.tmp`:
//! - readers ([`Manifest::read`]) take whichever copy matches the checksum and change nothing
//!   (an eval may run while the trainer saves); a file matching neither is reported corrupt;
//! - the trainer, on start-up ([`recover`]), finishes a committed switch (renames the matching
//!   `.tmp` files) or rolls back an uncommitted one (removes its `.tmp` files), with a note.
//!
//! No `run.json` means no checkpoint yet: a run killed during its first save starts over.
//!
//! `HOST_FAIL_AFTER_FS_OPS=N` (a test hook) aborts the process right after the Nth file operation
//! of this module: a file write counts twice (after the first half of its bytes, after the rest
//! and the fsync), a rename or removal once. The kill test steps N through whole saves.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "run.json";
/// `format` of `run.json`.
pub const MANIFEST_FORMAT: &str = "host-run-manifest/1";
/// The test hook's environment variable.
pub const FAIL_AFTER_ENV: &str = "HOST_FAIL_AFTER_FS_OPS";

/// Size and CRC-32 (IEEE, as 8 hex digits) of a file's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: String,
}

impl FileSum {
    pub fn of(bytes: &[u8]) -> Self {
        Self { bytes: bytes.len() as u64, crc32: format!("{:08x}", crc32fast::hash(bytes)) }
    }
}

/// `run.json`: the one record of which state a run directory is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Every file of the state, by name in the run directory.
    pub files: BTreeMap<String, FileSum>,
}

/// `NAME.tmp` next to `path`.
pub fn staged(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.tmp"))
}

impl Manifest {
    /// `dir/run.json`, or `None` where there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a host run manifest (the file is corrupt)", path.display()))?;
        if m.format != MANIFEST_FORMAT {
            bail!("{}: format `{}` is not `{MANIFEST_FORMAT}`", path.display(), m.format);
        }
        Ok(Some(m))
    }

    /// The bytes of `name` as recorded: from `dir/name`, or from `dir/name.tmp` where a committed
    /// save has not renamed it yet. An error names the file and says it is corrupt or missing.
    pub fn read(&self, dir: &Path, name: &str) -> Result<Vec<u8>> {
        let want = self
            .files
            .get(name)
            .ok_or_else(|| anyhow!("{}: does not name `{name}` (the file is corrupt)", dir.join(MANIFEST_FILE).display()))?;
        let path = dir.join(name);
        let found = fs::read(&path);
        if let Ok(b) = &found {
            if FileSum::of(b) == *want {
                return found.map_err(Into::into);
            }
        }
        if let Ok(b) = fs::read(staged(&path)) {
            if FileSum::of(&b) == *want {
                return Ok(b);
            }
        }
        Err(match found {
            Ok(b) => {
                let got = FileSum::of(&b);
                anyhow!(
                    "{} is corrupt: {} bytes with CRC-32 {}, but {MANIFEST_FILE} records {} bytes with CRC-32 {}",
                    path.display(),
                    got.bytes,
                    got.crc32,
                    want.bytes,
                    want.crc32
                )
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                anyhow!("{} is missing, but {MANIFEST_FILE} (epoch {}) names it", path.display(), self.epoch)
            }
            Err(e) => anyhow!("cannot read {}: {e}", path.display()),
        })
    }
}

/// Counts a file operation for the `HOST_FAIL_AFTER_FS_OPS` hook; aborts after the Nth.
fn op_done() {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(limit) = *LIMIT.get_or_init(|| std::env::var(FAIL_AFTER_ENV).ok().and_then(|v| v.parse().ok())) else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == limit {
        eprintln!("{FAIL_AFTER_ENV}: aborting after file operation {limit}");
        std::process::abort();
    }
}

/// Creates `path` with `bytes`, fsynced (two counted operations: half the bytes, then the rest).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(path)?;
        let (a, b) = bytes.split_at(bytes.len() / 2);
        f.write_all(a)?;
        op_done();
        f.write_all(b)?;
        f.sync_all()?;
        op_done();
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Renames `from` to `to` (one counted operation).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    op_done();
    Ok(())
}

/// Removes the file `path` (one counted operation).
pub fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    op_done();
    Ok(())
}

/// Persists renames in `dir`; not all filesystems allow opening a directory, so best effort.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Switches `dir` to the state made of `files` (name, bytes) at `epoch`/`step`: stages them,
/// commits `run.json`, then renames them into place. A failure before the commit removes what
/// it staged (the previous state stays); after it, [`recover`] finishes the switch.
pub fn commit(dir: &Path, epoch: u32, step: u64, files: &[(&str, Vec<u8>)]) -> Result<Manifest> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        epoch,
        step,
        files: files.iter().map(|(name, bytes)| (name.to_string(), FileSum::of(bytes))).collect(),
    };
    let mut written = Vec::new();
    let mut stage = || -> Result<()> {
        for (name, bytes) in files {
            let tmp = staged(&dir.join(name));
            written.push(tmp.clone());
            write_synced(&tmp, bytes)?;
        }
        sync_dir(dir);
        let path = dir.join(MANIFEST_FILE);
        let tmp = staged(&path);
        written.push(tmp.clone());
        write_synced(&tmp, (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes())?;
        rename(&tmp, &path)
    };
    if let Err(e) = stage() {
        for p in written.iter().filter(|p| p.is_file()) {
            let _ = fs::remove_file(p);
        }
        return Err(e);
    }
    sync_dir(dir);
    for (name, _) in files {
        let path = dir.join(name);
        rename(&staged(&path), &path)?;
    }
    sync_dir(dir);
    Ok(manifest)
}

/// Start-up of a writer: finishes a committed but unfinished switch, rolls back an uncommitted
/// one (removing `run.json.tmp` and the `.tmp` of `known` names), notes on stderr what it did,
/// and returns the committed manifest (`None`: no checkpoint yet). A file matching neither
/// copy is an error naming it.
pub fn recover(dir: &Path, known: &[&str]) -> Result<Option<Manifest>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut removed = Vec::new();
    let mut finished = Vec::new();
    let remove_staged = |path: &Path, removed: &mut Vec<String>| -> Result<()> {
        let tmp = staged(path);
        if tmp.is_file() {
            remove(&tmp)?;
            removed.push(tmp.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
        Ok(())
    };
    remove_staged(&dir.join(MANIFEST_FILE), &mut removed)?;
    let manifest = Manifest::load(dir)?;
    if let Some(m) = &manifest {
        for (name, want) in &m.files {
            let path = dir.join(name);
            if fs::read(&path).is_ok_and(|b| FileSum::of(&b) == *want) {
                remove_staged(&path, &mut removed)?;
            } else {
                // Either the committed copy is still staged, or the file is corrupt.
                m.read(dir, name)?;
                rename(&staged(&path), &path)?;
                finished.push(name.as_str());
            }
        }
    }
    for name in known.iter().filter(|n| manifest.as_ref().is_none_or(|m| !m.files.contains_key(**n))) {
        remove_staged(&dir.join(name), &mut removed)?;
    }
    sync_dir(dir);
    if !finished.is_empty() {
        let epoch = manifest.as_ref().map_or(0, |m| m.epoch);
        eprintln!(
            "note: {}: finished the interrupted save of epoch {epoch} (renamed {} into place)",
            dir.display(),
            finished.join(", ")
        );
    }
    if !removed.is_empty() {
        eprintln!(
            "note: {}: removed {} left by an interrupted save",
            dir.display(),
            removed.join(", ")
        );
    }
    Ok(manifest)
}
