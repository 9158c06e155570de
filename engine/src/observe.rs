//! How a long-running command talks to whoever runs it: the [`Observer`]
//! that receives notes and progress, and the process-wide stop request that
//! a signal handler (or an embedding program) sets and every run checks.
//! The lowest layer: the pipelines, the set operations and the server all
//! report and stop through here, and nothing here imports them.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set (by the CLI's SIGINT/SIGTERM handler, or by an embedding program) to
/// ask every running pipeline to stop: lanes stop claiming work, finish the
/// I/O in flight, and the run returns [`crate::Error::Interrupted`].
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Has a stop been requested?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A test seam, in debug builds only: when `TINTYPE_TEST_PAUSE` names this
/// point, create the file `TINTYPE_TEST_PAUSE_MARK` names and wait
/// (`TINTYPE_TEST_PAUSE_MS`, default 10 s; less if a signal comes), so a
/// test can act exactly here. Release builds compile this to nothing.
pub fn test_pause(point: &str) {
    if !cfg!(debug_assertions) || std::env::var("TINTYPE_TEST_PAUSE").ok().as_deref() != Some(point) {
        return;
    }
    if let Some(mark) = std::env::var_os("TINTYPE_TEST_PAUSE_MARK") {
        let _ = std::fs::write(mark, point);
    }
    let ms = std::env::var("TINTYPE_TEST_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while !interrupted() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Where a pipeline reports what the user should see while it runs.
pub trait Observer: Sync {
    /// A one-line remark (a fallback taken, a limitation met).
    fn note(&self, msg: &str);
    /// `done` of `total` bytes processed.
    fn progress(&self, done: u64, total: u64);
}

/// An observer that drops everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn note(&self, _msg: &str) {}
    fn progress(&self, _done: u64, _total: u64) {}
}
