//! The board end of a deployment: the system `ssh` client, key authentication only.
//!
//! Every remote step is one `ssh` run of a small POSIX `sh` script (uploads stream the file
//! through `cat > FILE` on stdin, so the board needs no SFTP server, only a shell and
//! coreutils). `BatchMode` makes a missing or refused key fail at once instead of prompting;
//! failures of the connection itself (ssh exits with 255) become one clear sentence.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// How to reach the board, shared by `deploy` and `rollback`.
#[derive(clap::Args, Clone, Debug)]
pub struct SshArgs {
    /// The board: `user@address` (or a Host alias from ~/.ssh/config).
    #[arg(long)]
    pub host: String,
    /// SSH port on the board (default: ssh's, normally 22).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Private key to log in with (default: ssh's own choice: agent, ~/.ssh/id_*). Only this key
    /// is offered when given.
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
    /// Extra `ssh -o` option, repeatable: `--ssh-opt UserKnownHostsFile=/tmp/kh`.
    #[arg(long = "ssh-opt", value_name = "KEY=VALUE")]
    pub ssh_opts: Vec<String>,
}

/// A board reachable over SSH. All runs share one connection (OpenSSH multiplexing through a
/// control socket in a private temp directory), closed on drop; an interrupted run's master
/// connection exits by itself after 60 idle seconds.
pub struct Ssh {
    args: SshArgs,
    control_dir: Option<PathBuf>,
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Ssh {
    pub fn new(args: &SshArgs) -> Result<Ssh> {
        if let Some(key) = &args.identity {
            if !key.is_file() {
                bail!("identity file {} does not exist", key.display());
            }
        }
        if args.host.trim().is_empty() || args.host.starts_with('-') {
            bail!("--host must be user@address, got `{}`", args.host);
        }
        Ok(Ssh { args: args.clone(), control_dir: control_dir() })
    }

    /// `user@address` (port P), for messages.
    pub fn describe(&self) -> String {
        match self.args.port {
            Some(p) => format!("{} port {p}", self.args.host),
            None => self.args.host.clone(),
        }
    }

    pub fn host(&self) -> &str {
        &self.args.host
    }

    /// `ssh [options] HOST sh -c SCRIPT`.
    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("ssh");
        for o in [
            "BatchMode=yes",
            "StrictHostKeyChecking=accept-new",
            "ConnectTimeout=10",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "LogLevel=ERROR",
        ] {
            c.args(["-o", o]);
        }
        if let Some(port) = self.args.port {
            c.args(["-p", &port.to_string()]);
        }
        if let Some(key) = &self.args.identity {
            c.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
        }
        for o in &self.args.ssh_opts {
            c.args(["-o", o]);
        }
        if let Some(dir) = &self.control_dir {
            c.args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"]);
            c.arg("-o").arg(format!("ControlPath={}/%C", dir.display()));
        }
        // The remote login shell parses the command line: hand it one quoted `sh -c` script so
        // the board's shell (bash, dash, busybox ash) does not matter.
        c.arg("--").arg(&self.args.host).arg(format!("sh -c {}", sh_quote(script)));
        c
    }

    /// The error for a failed ssh run: connection problems (exit 255) get a sentence of their own,
    /// anything else names the step and the remote stderr.
    fn error(&self, what: &str, out: &Output) -> anyhow::Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        // `user@host: Permission denied (publickey).` -> `Permission denied (publickey)`
        let last = last.strip_prefix(&format!("{}: ", self.args.host)).unwrap_or(last).trim_end_matches('.');
        let has = |s: &str| stderr.to_ascii_lowercase().contains(&s.to_ascii_lowercase());
        let host = self.describe();
        if out.status.code() == Some(255) {
            if has("Connection refused") {
                return anyhow!("cannot reach {host}: connection refused (is sshd running on the board, is --port right?)");
            }
            if has("timed out") {
                return anyhow!("cannot reach {host}: connection timed out (is the board on, is the address right?)");
            }
            if has("No route to host") || has("Network is unreachable") {
                return anyhow!("cannot reach {host}: {last}");
            }
            if has("Could not resolve hostname") || has("Name or service not known") {
                return anyhow!("cannot resolve the board's address in `{}`: {last}", self.args.host);
            }
            if has("Permission denied") || has("Too many authentication failures") {
                let (key, public) = match &self.args.identity {
                    Some(k) => (format!("key {}", k.display()), format!("{}.pub", k.display())),
                    None => ("SSH keys (agent and ~/.ssh/id_*)".to_string(), "KEY.pub".to_string()),
                };
                return anyhow!(
                    "{host} rejected the {key}: {last}; install its public key on the board \
                     (ssh-copy-id -i {public}{} {}) or pass the right --identity",
                    self.args.port.map(|p| format!(" -p {p}")).unwrap_or_default(),
                    self.args.host
                );
            }
            if has("Host key verification failed") || has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
                return anyhow!("the host key of {host} does not match known_hosts (ssh-keygen -R to forget the old one): {last}");
            }
            if has("Connection closed") || has("Connection reset") || has("kex_exchange_identification") {
                return anyhow!("cannot reach {host}: {last}");
            }
        }
        if has("No space left on device") {
            return anyhow!("full disk on {host} during {what}: {last}");
        }
        match out.status.code() {
            Some(code) => {
                anyhow!("{what} failed on {host} (exit status {code}): {}", if stderr.is_empty() { "no error output" } else { stderr })
            }
            None => anyhow!("{what} on {host}: ssh was killed ({})", out.status),
        }
    }

    /// Runs `script` on the board and returns the raw output (a failing script is not an error;
    /// a failing connection is).
    pub fn output(&self, what: &str, script: &str) -> Result<Output> {
        let out = self.command(script).stdin(Stdio::null()).output().context("could not run `ssh` (is openssh-client installed?)")?;
        if out.status.code() == Some(255) {
            return Err(self.error(what, &out));
        }
        Ok(out)
    }

    /// Runs `script` on the board; its stdout, or an error naming `what`.
    pub fn run(&self, what: &str, script: &str) -> Result<String> {
        let out = self.output(what, script)?;
        if !out.status.success() {
            return Err(self.error(what, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Streams the local file `from` into the remote file `to` (created or truncated) and sets
    /// its mode.
    pub fn upload(&self, from: &std::path::Path, to: &str, mode: &str) -> Result<()> {
        let file = File::open(from).with_context(|| format!("could not open {}", from.display()))?;
        let script = format!("cat > {0} && chmod {mode} {0}", sh_quote(to));
        let out = self.command(&script).stdin(Stdio::from(file)).output().context("could not run `ssh` (is openssh-client installed?)")?;
        if !out.status.success() {
            return Err(self.error(&format!("uploading {} to {to}", from.display()), &out));
        }
        Ok(())
    }

    /// Writes `contents` into the remote file `to`.
    pub fn write(&self, contents: &str, to: &str, mode: &str) -> Result<()> {
        use std::io::Write;
        let script = format!("cat > {0} && chmod {mode} {0}", sh_quote(to));
        let mut child = self
            .command(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not run `ssh` (is openssh-client installed?)")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A write error here (ssh gone) shows up in the exit status below.
        let _ = stdin.write_all(contents.as_bytes());
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(self.error(&format!("writing {to}"), &out));
        }
        Ok(())
    }
}

/// A fresh private directory for the control socket (its path must stay short: sockets are
/// limited to about 100 bytes); `None` (no multiplexing) if none can be made.
fn control_dir() -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let base = if base.as_os_str().len() > 40 { PathBuf::from("/tmp") } else { base };
    let pid = std::process::id();
    (0..100).find_map(|n| {
        let dir = base.join(format!("xtask-ssh-{pid}-{n}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).ok().map(|_| dir)
    })
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let Some(dir) = self.control_dir.take() else { return };
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            let _ = Command::new("ssh")
                .arg("-o")
                .arg(format!("ControlPath={}/%C", dir.display()))
                .args(self.args.port.map(|p| vec!["-p".to_string(), p.to_string()]).unwrap_or_default())
                .args(["-O", "exit", "--", &self.args.host])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/opt/edge-vision"), "/opt/edge-vision");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(x)"), "'$(x)'");
    }
}
