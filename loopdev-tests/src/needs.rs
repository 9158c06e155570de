//! What a test needs from the machine — root, loop devices, `/dev/fuse`,
//! io_uring, a tool — and what happens when it is not there.
//!
//! Outside CI a test that cannot run prints `SKIPPED <test>: <why>` (straight
//! to stderr, past the test harness's capture, so a passing run shows it
//! too) and appends that line to the file `TINTYPE_SKIP_LOG` names, from
//! which `.ci/test` prints how many were skipped and why. Under CI (`CI` set,
//! as `.ci/run` sets it) a missing need fails the test instead: CI runs as
//! root with every tool installed, so a test that would skip there means a
//! broken set-up, never a pass.
//!
//! One file, used by the loop-device tests (`loopdev_tests::needs`) and by
//! the engine's integration tests (included by path).

use std::io::Write;
use std::path::{Path, PathBuf};

/// One thing a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Running as root (loop devices, mounts, running a command as another user).
    Root,
    /// Root, `/dev/loop-control` and `losetup`.
    LoopDevices,
    /// `/dev/fuse` (nbdfuse).
    Fuse,
    /// A working io_uring (the kernel allows it, no seccomp filter blocks it).
    IoUring,
    /// A program on PATH (or in /usr/sbin, /sbin).
    Tool(&'a str),
}

impl Need<'_> {
    /// Why this need is not met here, or None when it is.
    pub fn missing(self) -> Option<String> {
        match self {
            Need::Root if !is_root() => Some("not running as root".into()),
            Need::Root => None,
            Need::LoopDevices => Need::Root
                .missing()
                .map(|why| format!("{why} (loop devices need CAP_SYS_ADMIN)"))
                .or_else(|| {
                    (!Path::new("/dev/loop-control").exists())
                        .then(|| "no /dev/loop-control: this kernel or container has no loop devices".to_string())
                })
                .or_else(|| Need::Tool("losetup").missing()),
            Need::Fuse if !Path::new("/dev/fuse").exists() => Some("/dev/fuse does not exist on this machine".into()),
            Need::Fuse => None,
            Need::IoUring => tintype::io::uring::probe().err().map(|why| format!("io_uring unavailable ({why})")),
            Need::Tool(tool) if which(tool).is_none() => {
                Some(format!("{tool} is not installed (.ci/install-deps installs it, as root)"))
            }
            Need::Tool(_) => None,
        }
    }
}

/// Whether this is a CI run, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// At the top of a test: true when every need is met. Otherwise, under CI
/// the test fails naming what is missing; elsewhere it says it is skipped
/// and why, records that, and returns false (the test then returns).
pub fn require(test: &str, needs: &[Need<'_>]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    assert!(!under_ci(), "{test} cannot run on this CI machine, where every test must run: {why}");
    record(&format!("SKIPPED {test}: {why}"));
    false
}

/// A part of a test that this kernel gives nothing to exercise (not a
/// missing tool or permission, so not a failure under CI): said and
/// recorded like a skip.
pub fn part_not_exercised(test: &str, why: &str) {
    record(&format!("SKIPPED {test} (part): {why}"));
}

/// Print `line` past the harness's capture and add it to the skip log.
fn record(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(log) = std::env::var_os("TINTYPE_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The absolute path of `tool` on PATH (or in /usr/sbin, /sbin, where
/// Debian keeps mkfs and losetup for root).
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
