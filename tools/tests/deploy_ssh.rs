//! `cargo xtask deploy` / `rollback` against a real OpenSSH server (Debian `openssh-server`) on
//! 127.0.0.1 with throw-away keys. The "board" is this machine: its root is a temp directory and
//! the real aarch64 `device` binary runs there under qemu-aarch64 (`--runner qemu`,
//! `--expect-arch x86_64`; without that flag the wrong-architecture refusal is tested).
//!
//! Needs: /usr/sbin/sshd, ssh, qemu-aarch64 with the aarch64 sysroot, the aarch64 cross linker
//! (`cargo xtask setup` installs them), and root (sshd, tmpfs for the full-disk case).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::*;

/// `deploy` with the fixture's ssh options and the emulated-board flags.
fn deploy_args(sshd: &Sshd, root: &Path, model: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["deploy".to_string(), "--board".into(), "pi4".into()];
    a.extend(sshd.ssh_args());
    a.extend(["--root".into(), root.display().to_string(), "--model".into(), model.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `rollback` with the fixture's ssh options.
fn rollback_args(sshd: &Sshd, root: &Path) -> Vec<String> {
    let mut a = vec!["rollback".to_string()];
    a.extend(sshd.ssh_args());
    a.extend(["--root".into(), root.display().to_string()]);
    a
}

/// `--binary` (the prebuilt device) and `--expect-arch x86_64` (this machine is the board, the
/// binary runs under qemu), then `extra`.
fn prebuilt<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--binary", device_binary().to_str().unwrap(), "--expect-arch", "x86_64"];
    a.extend_from_slice(extra);
    a
}

/// A quick deploy of the prebuilt device binary (no bench), as the "old version".
fn deploy_quick(sshd: &Sshd, root: &Path, model: &Path, extra: &[&str]) -> String {
    let out = xtask(&deploy_args(sshd, root, model, &prebuilt(&[&["--no-bench"][..], extra].concat())));
    assert!(out.status.success(), "deploy failed: {}\nsshd log:\n{}", stderr(&out), sshd.log());
    link(root, "current").expect("current after a deploy")
}

/// An sshd, a work directory and two models with labels: `m1` (seed 1), deployed first, and
/// `m2` (seed 2).
struct Fixture {
    sshd: Sshd,
    work: tempfile::TempDir,
    m1: PathBuf,
    m2: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let (m1, m2) = (model_dir(work.path(), "m1", 1, true), model_dir(work.path(), "m2", 2, true));
        Fixture { sshd: Sshd::start(), work, m1, m2 }
    }

    /// `m1` deployed to `board` (`deploy_quick` with `extra`).
    fn deployed(&self, board: PathBuf, extra: &[&str]) -> Deployed<'_> {
        let v1 = deploy_quick(&self.sshd, &board, &self.m1, extra);
        let before = snapshot(&board);
        Deployed { f: self, board, v1, before }
    }
}

/// A board root with one release deployed, for deployments that must fail and leave the board
/// as it was.
struct Deployed<'a> {
    f: &'a Fixture,
    board: PathBuf,
    /// `releases/NAME` of the deployed release.
    v1: String,
    before: BTreeMap<String, String>,
}

impl Deployed<'_> {
    /// The error line of `xtask ARGS`, which must fail and change nothing on the board.
    fn refused<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let e = error_line(&xtask(args));
        assert_eq!(snapshot(&self.board), self.before, "the board changed: {e}");
        e
    }

    /// `refused` for a deploy of `model` with `extra`.
    fn deploy_refused(&self, model: &Path, extra: &[&str]) -> String {
        self.refused(&deploy_args(&self.f.sshd, &self.board, model, extra))
    }
}

#[test]
fn deploys_the_real_device_runs_bench_under_qemu_and_writes_the_unit() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let board = work.path().join("board/opt/edge-vision");
    let units = work.path().join("board/etc/systemd/system");
    let model = model_dir(work.path(), "m1", 1, true);

    // No --binary: the xtask cross-builds device itself (in the target dir cargo reports).
    let out = xtask(&deploy_args(
        &sshd,
        &board,
        &model,
        &[
            "--expect-arch",
            "x86_64",
            "--runner",
            "qemu",
            "--service",
            "--unit-dir",
            &units.display().to_string(),
            "--iters",
            "3",
            "--warmup",
            "1",
            "--json",
        ],
    ));
    assert!(out.status.success(), "deploy failed: {}\nsshd log:\n{}", stderr(&out), sshd.log());

    // The layout: current -> releases/NAME with the files, byte for byte; no previous yet.
    let current = link(&board, "current").expect("current symlink");
    assert!(current.starts_with("releases/"), "{current}");
    assert_eq!(link(&board, "previous"), None);
    let rel = board.join(&current);
    // device went up with its debug info stripped: an aarch64 ELF, smaller, its sum recorded.
    let deployed = std::fs::read(rel.join("device")).unwrap();
    assert_eq!(&deployed[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([deployed[18], deployed[19]]), 183, "EM_AARCH64");
    assert!(deployed.len() as u64 <= std::fs::metadata(device_binary()).unwrap().len());
    assert_eq!(sha256(&model), sha256(&rel.join("model.evw")));
    assert_eq!(sha256(&rel.join("labels.txt")), sha256(&model.with_file_name("labels.txt")));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(rel.join("device")).unwrap().permissions().mode() & 0o777, 0o755);
    let env = std::fs::read_to_string(rel.join("release.env")).unwrap();
    assert!(env.contains(&format!("EV_MODEL={}/current/model.evw\n", board.display())), "{env}");
    assert!(env.contains("EV_BOARD=pi4\n"), "{env}");
    assert!(env.contains(&format!("# sha256 {} device\n", sha256(&rel.join("device")))), "{env}");
    assert_eq!(releases(&board), vec![current.trim_start_matches("releases/").to_string()], "no staging left over");

    // The remote bench ran (under qemu, Cortex-A72) and its report came back: pretty and as JSON.
    let text = stdout(&out);
    assert!(text.starts_with("latency report: device bench on "), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap()).expect("--json: the last stdout line is the bench JSON");
    let obj = json.as_object().expect("a JSON object");
    assert!(!obj.is_empty());
    fn has_number(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| x > 0.0),
            serde_json::Value::Object(m) => m.values().any(has_number),
            _ => false,
        }
    }
    assert!(has_number(&json), "no positive measurement in {json}");
    for key in obj.keys() {
        assert!(text.contains(key.as_str()), "report lacks `{key}`:\n{text}");
    }

    // The unit: runs `device live` from ROOT/current through the runner, reads release.env.
    let unit = std::fs::read_to_string(units.join("edge-vision.service")).expect("unit written");
    let root = board.display();
    assert!(unit.contains(&format!("EnvironmentFile={root}/current/release.env\n")), "{unit}");
    assert!(
        unit.contains(&format!(
            "ExecStart=qemu-aarch64 -L {QEMU_SYSROOT} -cpu cortex-a72 {root}/current/device live --model ${{EV_MODEL}} --source /dev/video0 $EV_LIVE_ARGS\n"
        )),
        "{unit}"
    );
    assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
    assert!(stderr(&out).contains("is not a systemd unit directory"), "a temp unit dir is written, not started");

    // And the deployed file itself is a working aarch64 program.
    let help = std::process::Command::new("qemu-aarch64")
        .args(["-L", QEMU_SYSROOT, "-cpu", "cortex-a72"])
        .arg(board.join("current/device"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("bench"), "{help:?}");
}

#[test]
fn redeploy_keeps_the_previous_release_and_rollback_swaps_back() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let board = work.path().join("board");
    let m1 = model_dir(work.path(), "m1", 1, true);
    let m2 = model_dir(work.path(), "m2", 2, false);

    let v1 = deploy_quick(&sshd, &board, &m1, &["--no-strip"]);
    let v2 = deploy_quick(&sshd, &board, &m2, &[]);
    assert_ne!(v1, v2);
    // --no-strip: the binary exactly as cargo built it.
    assert_eq!(sha256(&board.join(&v1).join("device")), sha256(device_binary()));
    assert_eq!(link(&board, "current").as_deref(), Some(v2.as_str()));
    assert_eq!(link(&board, "previous").as_deref(), Some(v1.as_str()));
    // Both releases complete and distinct.
    assert_eq!(sha256(&board.join(&v1).join("model.evw")), sha256(&m1));
    assert!(board.join(&v1).join("labels.txt").is_file());
    assert_eq!(sha256(&board.join(&v2).join("model.evw")), sha256(&m2));
    assert!(!board.join(&v2).join("labels.txt").exists());
    assert_eq!(sha256(&board.join("current/model.evw")), sha256(&m2));

    let rollback = rollback_args(&sshd, &board);
    let out = xtask(&rollback);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), v1);
    assert_eq!(link(&board, "current").as_deref(), Some(v1.as_str()));
    assert_eq!(link(&board, "previous").as_deref(), Some(v2.as_str()));
    assert_eq!(sha256(&board.join("current/model.evw")), sha256(&m1));
    assert!(board.join("current/labels.txt").is_file());

    // A second rollback undoes the first.
    let out = xtask(&rollback);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(link(&board, "current").as_deref(), Some(v2.as_str()));
    assert_eq!(link(&board, "previous").as_deref(), Some(v1.as_str()));

    // Pruning: with --keep 2 only current and previous survive.
    let v3 = deploy_quick(&sshd, &board, &m1, &["--keep", "2"]);
    let v4 = deploy_quick(&sshd, &board, &m2, &["--keep", "2"]);
    let mut want = vec![v3.trim_start_matches("releases/").to_string(), v4.trim_start_matches("releases/").to_string()];
    want.sort();
    assert_eq!(releases(&board), want);
    assert_eq!(link(&board, "previous").as_deref(), Some(v3.as_str()));

    // Nothing to roll back to on a fresh board.
    let e = error_line(&xtask(&rollback_args(&sshd, &work.path().join("empty-board"))));
    assert!(e.contains("nothing to roll back to"), "{e}");
}

#[test]
fn unreachable_host_is_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let model = model_dir(work.path(), "m", 1, true);
    let board = work.path().join("board");
    let port = closed_port().to_string();
    let out = xtask(&[
        "deploy",
        "--board",
        "pi5",
        "--host",
        "root@127.0.0.1",
        "--port",
        &port,
        "--root",
        &board.display().to_string(),
        "--model",
        &model.display().to_string(),
        "--binary",
        device_binary().to_str().unwrap(),
    ]);
    let e = error_line(&out);
    assert!(e.contains(&format!("cannot reach root@127.0.0.1 port {port}: connection refused")), "{e}");
    assert!(!board.exists());
}

#[test]
fn a_key_the_board_does_not_accept_is_a_clear_error_and_changes_nothing() {
    let f = Fixture::new();
    let d = f.deployed(f.work.path().join("board"), &[]);

    let stranger = f.work.path().join("stranger_ed25519");
    keygen(&stranger);
    let mut args = vec!["deploy".to_string(), "--board".into(), "pi4".into()];
    args.extend(f.sshd.ssh_args_with_key(&stranger));
    args.extend(["--root", &d.board.display().to_string(), "--model", &f.m2.display().to_string()].map(String::from));
    args.extend(prebuilt(&[]).into_iter().map(String::from));
    let e = d.refused(&args);
    assert!(e.contains(&format!("rejected the key {}", stranger.display())), "{e}");
    assert!(e.contains("Permission denied"), "{e}");
}

#[test]
fn wrong_architecture_is_refused_before_anything_changes() {
    let f = Fixture::new();
    let d = f.deployed(f.work.path().join("board"), &[]);

    // The board (this machine) says x86_64; device is built for aarch64 boards.
    let e = d.deploy_refused(&f.m2, &["--binary", device_binary().to_str().unwrap()]);
    assert!(
        e.contains(&format!(
            "wrong architecture: {}@127.0.0.1 port {} is x86_64, the device binary is built for aarch64; nothing was changed",
            f.sshd.user, f.sshd.port
        )),
        "{e}"
    );
    assert!(e.contains(&format!("{} stays current", d.v1)), "{e}");

    // A binary for the wrong architecture is refused locally, before connecting.
    let e = d.deploy_refused(&f.m2, &["--binary", "/bin/true", "--expect-arch", "x86_64"]);
    assert!(e.contains("/bin/true is an x86_64 executable, not aarch64"), "{e}");
}

#[test]
fn a_release_that_fails_its_bench_is_removed_and_current_stays() {
    let f = Fixture::new();
    let d = f.deployed(f.work.path().join("board"), &[]);

    // A model file device cannot load: the bench on the board fails, the switch never happens.
    let bad = f.work.path().join("bad/model.evw");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, b"not a model").unwrap();
    let e = d.deploy_refused(&bad, &prebuilt(&["--runner", "qemu", "--iters", "1", "--warmup", "0"]));
    assert!(e.contains("failed before the switch"), "{e}");
    assert!(e.contains("device bench failed"), "{e}");
    assert!(e.contains(&format!("{} stays current", d.v1)), "{e}");
}

#[test]
fn full_disk_is_refused_and_current_stays() {
    let f = Fixture::new();
    // Deploying m2 with `--min-free-mb MIB`.
    let no_room = |d: &Deployed, mib: &str| d.deploy_refused(&f.m2, &prebuilt(&["--min-free-mb", mib, "--no-bench"]));
    // A real small disk: a tmpfs that first takes one release, then shrinks to half a release more.
    match Tmpfs::mount("size=1g,nr_inodes=64") {
        Some(disk) => {
            let d = f.deployed(disk.path().join("edge-vision"), &["--min-free-mb", "0"]);
            let used = used_kib(disk.path());
            disk.remount(&format!("size={}k", used + used / 2));
            assert!(free_kib(disk.path()) < used, "the shrunk disk has no room for another release");
            let e = no_room(&d, "0");
            assert!(e.contains("full disk: ") && e.contains(&format!("under {}", d.board.display())), "{e}");
            assert!(e.contains(&format!("nothing was changed ({} stays current)", d.v1)), "{e}");

            // The disk fills up during the upload (df said there was room): the partial release is
            // removed, current stays. A tmpfs out of inodes refuses new files with ENOSPC while
            // df still shows free blocks.
            drop(disk);
            let disk = Tmpfs::mount("size=1g,nr_inodes=12").unwrap();
            let d = f.deployed(disk.path().join("edge-vision"), &["--min-free-mb", "0"]);
            let e = no_room(&d, "0");
            assert!(e.contains("full disk on ") && e.contains("No space left on device"), "{e}");
            assert!(e.contains(&format!("{} stays current", d.v1)), "{e}");
        }
        None => {
            // No mount in this sandbox: make the same df check see too little room by asking to keep
            // more free than the disk has.
            let d = f.deployed(f.work.path().join("board"), &[]);
            let e = no_room(&d, &(free_kib(&d.board) / 1024 + 1).to_string());
            assert!(e.contains("full disk: "), "{e}");
            assert!(e.contains(&format!("nothing was changed ({} stays current)", d.v1)), "{e}");
        }
    }
}
