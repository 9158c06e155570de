//! Helpers for root-only tests on real loop devices: RAII guards that detach
//! loop devices and unmount filesystems on every path (panics included), a
//! check of what a test needs (`needs`), and the path of the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod dumpe2fs;
pub mod needs;
pub use needs::{require, which, Need};

/// Run at the top of a loop-device test: true when it can run here (see
/// [`needs::require`]: skipped with the reason outside CI, a failure under CI).
pub fn require_loop_devices(test: &str) -> bool {
    require(test, &[Need::LoopDevices])
}

/// The `tintype` binary built alongside these tests (cargo builds every
/// target of the workspace before it runs any test).
pub fn tintype_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target profile directory");
    let bin = dir.join("tintype");
    assert!(bin.is_file(), "{} not found: build the workspace first (cargo test --workspace builds it)", bin.display());
    bin
}

/// Run the CLI.
pub fn tintype(args: &[&str]) -> Output {
    Command::new(tintype_bin()).args(args).output().expect("run tintype")
}

/// Run a command, panicking with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => panic!("{cmd} is not installed: .ci/install-deps installs it (as root)"),
        _ => panic!("{cmd}: {e}"),
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device we created over a backing file; detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    /// Attach `file` with the given logical sector size (512 or 4096).
    pub fn attach(file: &Path, sector_bytes: u32) -> LoopDev {
        let out = sh(
            "losetup",
            &["--find", "--show", "--sector-size", &sector_bytes.to_string(), file.to_str().expect("utf-8 path")],
        );
        LoopDev { path: PathBuf::from(out.trim()) }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A filesystem we mounted; unmounted on drop.
#[derive(Debug)]
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &LoopDev, dir: &Path) -> Mount {
        Mount::with_options(dev, dir, "defaults")
    }

    /// Mount with `-o options` (e.g. `ro,nouuid` for a second copy of an XFS).
    pub fn with_options(dev: &LoopDev, dir: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(dir).expect("mount point");
        sh("mount", &["-o", options, dev.as_str(), dir.to_str().expect("utf-8 path")]);
        Mount { dir: dir.into() }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        umount(&self.dir);
    }
}

/// Unmount `dir`. A process that used io_uring on files there has exited,
/// but the kernel tears its ring down (and lets go of those files) a moment
/// later, so "target is busy" is retried for a few seconds; then the mount
/// is detached lazily rather than left behind.
pub fn umount(dir: &Path) {
    for _ in 0..50 {
        match Command::new("umount").arg(dir).stderr(std::process::Stdio::null()).status() {
            Ok(s) if s.success() => return,
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    eprintln!("{} stayed busy for 5 s: unmounting it lazily", dir.display());
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// A child process (a server) killed and reaped on drop.
#[derive(Debug)]
pub struct Process(pub std::process::Child);

impl Process {
    /// Start `cmd args`, its stderr discarded.
    pub fn spawn(cmd: &Path, args: &[&str]) -> Process {
        let child = Command::new(cmd)
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.display()));
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait up to 20 s for `path` to appear.
pub fn wait_for(path: &Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{what}: {} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The NBD export on unix socket `sock` as a file (`dir/nbd`) through
/// nbdfuse; unmounted, then nbdfuse ended, on drop.
#[derive(Debug)]
pub struct FuseExport {
    pub file: PathBuf,
    dir: PathBuf,
    _nbdfuse: Process,
}

impl FuseExport {
    pub fn new(dir: &Path, sock: &Path) -> FuseExport {
        std::fs::create_dir_all(dir).expect("fuse mount point");
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        let nbdfuse = Process::spawn(Path::new("nbdfuse"), &[dir.to_str().expect("utf-8 path"), &uri]);
        let file = dir.join("nbd");
        wait_for(&file, "nbdfuse");
        FuseExport { file, dir: dir.into(), _nbdfuse: nbdfuse }
    }
}

impl Drop for FuseExport {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
