//! `host train --nproc-per-node N`: this process starts N copies of itself, one per local rank,
//! with torchrun's environment, and watches them. When one fails (error exit or signal), the
//! others get [`GRACE`] to stop on their own (they normally do at once: their next collective
//! fails) and are then killed; the error names every rank that failed and how.

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long the other ranks may take to stop by themselves after one has failed (a rank saving a
/// checkpoint finishes it) before they are killed.
pub const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The launcher's flags (taken out of the command line the ranks get).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
}

/// Flags of the launcher, followed by a value, that the ranks must not see.
const LAUNCHER_FLAGS: [&str; 3] = ["--nproc-per-node", "--nnodes", "--node-rank"];

/// `argv` without the launcher flags (`--flag V` and `--flag=V` forms).
pub fn strip_launcher_flags(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut skip_value = false;
    for a in argv {
        if skip_value {
            skip_value = false;
            continue;
        }
        if LAUNCHER_FLAGS.contains(&a.as_str()) {
            skip_value = true;
        } else if !LAUNCHER_FLAGS.iter().any(|f| a.starts_with(&format!("{f}="))) {
            out.push(a.clone());
        }
    }
    out
}

/// A port that was free a moment ago on `addr`.
fn free_port(addr: &str) -> Result<u16> {
    let l = TcpListener::bind((addr, 0)).with_context(|| format!("cannot bind a TCP port on {addr} for the rendezvous"))?;
    Ok(l.local_addr()?.port())
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed by signal 9 (SIGKILL)".into(),
        (None, Some(15)) => "was killed by signal 15 (SIGTERM)".into(),
        (None, Some(6)) => "was killed by signal 6 (SIGABRT)".into(),
        (None, Some(11)) => "was killed by signal 11 (SIGSEGV)".into(),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => format!("ended ({status})"),
    }
}

struct RankProcess {
    rank: usize,
    child: Child,
}

/// Starts the local ranks (this binary, `argv` less the launcher flags) and waits for all of them.
pub fn run(l: &Launch) -> Result<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        bail!("--nproc-per-node: WORLD_SIZE is already set (torchrun or a script started this process as a rank); drop one of the two");
    }
    if l.nproc_per_node == 0 || l.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if l.node_rank >= l.nnodes {
        bail!("--node-rank {} is not below --nnodes {}", l.node_rank, l.nnodes);
    }
    let world = l.nproc_per_node * l.nnodes;
    let (addr, port) = if l.nnodes > 1 {
        let addr = std::env::var("MASTER_ADDR")
            .context("--nnodes > 1: set MASTER_ADDR to the address of the node with --node-rank 0")?;
        let port = std::env::var("MASTER_PORT").context("--nnodes > 1: set MASTER_PORT (the same on every node)")?;
        (addr, port)
    } else {
        let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
        let port = match std::env::var("MASTER_PORT") {
            Ok(p) => p,
            Err(_) => free_port(&addr)?.to_string(),
        };
        (addr, port)
    };
    let exe = std::env::current_exe().context("cannot find this program's path to start the ranks")?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let child_args = strip_launcher_flags(&argv);
    let mut procs = Vec::with_capacity(l.nproc_per_node);
    for local in 0..l.nproc_per_node {
        let rank = l.node_rank * l.nproc_per_node + local;
        let spawned = Command::new(&exe)
            .args(&child_args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", l.nproc_per_node.to_string())
            .env("GROUP_RANK", l.node_rank.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port)
            .spawn();
        match spawned {
            Ok(child) => {
                eprintln!("launched rank {rank} of {world} as pid {} (rendezvous {addr}:{port})", child.id());
                procs.push(RankProcess { rank, child });
            }
            Err(e) => {
                stop(&mut procs);
                bail!("cannot start rank {rank} ({}): {e}", exe.display());
            }
        }
    }
    watch(procs)
}

/// Kills and reaps the ranks still running.
fn stop(procs: &mut Vec<RankProcess>) {
    for p in procs.iter_mut() {
        let _ = p.child.kill();
    }
    for p in procs.iter_mut() {
        let _ = p.child.wait();
    }
    procs.clear();
}

fn watch(mut procs: Vec<RankProcess>) -> Result<()> {
    // (rank, pid, what happened), in the order seen; within one poll, ranks killed by a signal first.
    let mut failures: Vec<(usize, u32, String, bool)> = Vec::new();
    let mut deadline: Option<Instant> = None;
    while !procs.is_empty() {
        let mut seen = Vec::new();
        let mut i = 0;
        while i < procs.len() {
            match procs[i].child.try_wait() {
                Ok(Some(status)) => {
                    let p = procs.swap_remove(i);
                    if !status.success() {
                        seen.push((p.rank, p.child.id(), describe(status), status.signal().is_some()));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let p = procs.swap_remove(i);
                    seen.push((p.rank, p.child.id(), format!("could not be waited for ({e})"), false));
                }
            }
        }
        seen.sort_by_key(|&(rank, _, _, signal)| (!signal, rank));
        if !seen.is_empty() && deadline.is_none() {
            deadline = Some(Instant::now() + GRACE);
        }
        failures.extend(seen);
        if deadline.is_some_and(|d| Instant::now() >= d) && !procs.is_empty() {
            let left: Vec<String> = procs.iter().map(|p| p.rank.to_string()).collect();
            eprintln!("stopping rank(s) {} after rank {} failed", left.join(", "), failures[0].0);
            for p in &procs {
                let what = format!("had not stopped {} s later and was killed (hung?)", GRACE.as_secs());
                failures.push((p.rank, p.child.id(), what, false));
            }
            stop(&mut procs);
        }
        std::thread::sleep(POLL);
    }
    if failures.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = failures.iter().map(|(r, pid, what, _)| format!("rank {r} (pid {pid}) {what}")).collect();
    bail!("distributed training failed: {}", list.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_flags_are_stripped() {
        let argv: Vec<String> =
            ["train", "--nproc-per-node", "2", "--out", "x", "--nnodes=1", "--node-rank", "0", "-b", "8"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(strip_launcher_flags(&argv), ["train", "--out", "x", "-b", "8"]);
    }
}
