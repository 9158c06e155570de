//! The pipelines — capture (`create`) and `verify` — built on lanes: one
//! thread per core, each with its own ring, buffers and codec context.

pub mod capture;
pub mod lane;
pub mod plan;
pub mod restore;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set (by the CLI's SIGINT/SIGTERM handler, or by an embedding program) to
/// ask every running pipeline to stop: lanes stop claiming work, finish the
/// I/O in flight, and the run returns [`crate::Error::Interrupted`].
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Has a stop been requested?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Report progress until every lane has finished, waking the moment the last
/// one does: each lane holds a clone of the channel's sender and drops it
/// when it ends (a panic included), which disconnects `rx`. (Polling with a
/// sleep instead added up to one sleep to every run's wall time.)
pub(crate) fn watch(rx: std::sync::mpsc::Receiver<()>, mut progress: impl FnMut()) {
    loop {
        progress();
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
            rx.recv_timeout(std::time::Duration::from_millis(100))
        {
            break;
        }
    }
    progress();
}

/// Refuse settings whose buffers (pinned when registered with the ring)
/// would take more than half of this machine's memory.
pub(crate) fn check_buffer_memory(bytes: u64) -> crate::Result<()> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map_or(u64::MAX, |kib| kib * 1024);
    if bytes > total / 2 {
        return Err(crate::Error::InvalidSetting(format!(
            "these settings need {} MiB of I/O buffers (lanes x queue depth x chunk size), more than half of this \
             machine's {} MiB; lower --queue-depth, --lanes or --chunk-size",
            bytes >> 20,
            total >> 20
        )));
    }
    Ok(())
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
