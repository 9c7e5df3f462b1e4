//! All-or-nothing output files: each output is written to `<path>.tmp` (and fsynced) while the
//! export runs, and only renamed into place once everything succeeded. Dropping an uncommitted
//! [`Outputs`] removes every temporary file, so an error never leaves a partial output behind
//! (and never touches a previous file at the destination).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Debug)]
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

/// The export's outputs, staged.
#[derive(Debug, Default)]
pub struct Outputs {
    staged: Vec<Staged>,
    scratch: Vec<PathBuf>,
}

/// `<path>.tmp`.
pub fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    Ok(path.with_file_name(format!("{}.tmp", name.to_string_lossy())))
}

impl Outputs {
    /// Reserves `dest`: its directory must exist and be writable (checked now, by creating the
    /// empty temporary file, so a bad path fails before any work is done).
    pub fn stage(&mut self, dest: &Path) -> Result<PathBuf> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!("cannot write {}: directory {} does not exist", dest.display(), dir.display());
        }
        if dest.is_dir() {
            bail!("cannot write {}: it is a directory", dest.display());
        }
        if self.staged.iter().any(|s| s.dest == dest) {
            bail!("{} is given as two different outputs", dest.display());
        }
        let tmp = tmp_path(dest)?;
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", dest.display()))?;
        self.staged.push(Staged { tmp: tmp.clone(), dest: dest.to_path_buf() });
        Ok(tmp)
    }

    /// A temporary file removed at the end whatever happens (e.g. ONNX Runtime's logits).
    pub fn scratch(&mut self, path: PathBuf) -> PathBuf {
        self.scratch.push(path.clone());
        path
    }

    /// Writes the staged temporary file of `dest` (fsynced).
    pub fn write(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let s =
            self.staged.iter().find(|s| s.dest == dest).ok_or_else(|| anyhow!("{} was not staged", dest.display()))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&s.tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().with_context(|| format!("cannot write {}", s.tmp.display()))
    }

    /// The temporary path of a staged output (to let another program read it before commit).
    pub fn tmp_of(&self, dest: &Path) -> Option<&Path> {
        self.staged.iter().find(|s| s.dest == dest).map(|s| s.tmp.as_path())
    }

    /// Renames every staged file into place. If a rename fails, the outputs already renamed by
    /// this call are removed again.
    pub fn commit(mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        let mut done: Vec<PathBuf> = Vec::new();
        for (i, s) in staged.iter().enumerate() {
            if let Err(e) = fs::rename(&s.tmp, &s.dest) {
                for d in &done {
                    let _ = fs::remove_file(d);
                }
                for rest in &staged[i..] {
                    let _ = fs::remove_file(&rest.tmp);
                }
                return Err(e).with_context(|| format!("cannot rename {} to {}", s.tmp.display(), s.dest.display()));
            }
            done.push(s.dest.clone());
        }
        for d in done.iter().filter_map(|d| d.parent()).filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(f) = fs::File::open(d) {
                let _ = f.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for s in &self.staged {
            let _ = fs::remove_file(&s.tmp);
        }
        for p in &self.scratch {
            let _ = fs::remove_file(p);
        }
    }
}
