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

/// Run `lanes` threads of `body` (given the lane number), each pinned to a
/// core of this process's affinity set when `pin`, reporting progress until
/// they finish. A lane that fails sets `stop`, so the others stop claiming
/// work; the first real error wins over the "stopped" of the others.
pub(crate) fn run_lanes<T: Send>(
    lanes: u32,
    name: &str,
    pin: bool,
    stop: &AtomicBool,
    progress: impl FnMut(),
    body: impl Fn(u32) -> crate::Result<T> + Sync,
) -> crate::Result<Vec<T>> {
    let cores = if pin { allowed_cores() } else { Vec::new() };
    // Each lane holds a clone of the sender and drops it when it ends (a
    // panic included); the channel then disconnects and `watch` returns at
    // once, instead of polling.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Lanes start work only once every lane exists (they may wait for each
    // other): if one cannot be started (RLIMIT_NPROC, memory), the others
    // return at once instead of waiting for it forever.
    let gate = (std::sync::Mutex::new(None::<bool>), std::sync::Condvar::new());
    std::thread::scope(|scope| {
        let body = &body;
        let gate = &gate;
        let mut handles = Vec::new();
        let mut failed = None;
        for lane in 0..lanes {
            let core = cores.get(lane as usize % cores.len().max(1)).copied();
            let done = tx.clone();
            let spawned = std::thread::Builder::new().name(format!("{name}-{lane}")).spawn_scoped(scope, move || {
                let _done = done;
                let mut open = gate.0.lock().unwrap_or_else(|p| p.into_inner());
                while open.is_none() {
                    open = gate.1.wait(open).unwrap_or_else(|p| p.into_inner());
                }
                if *open == Some(false) {
                    return Err(crate::Error::Interrupted("another lane could not be started".into()));
                }
                drop(open);
                if let Some(core) = core {
                    pin_to_core(core);
                }
                let r = body(lane);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        *gate.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(failed.is_none());
        gate.1.notify_all();
        drop(tx);
        if let Some(e) = failed {
            for h in handles {
                let _ = h.join();
            }
            return Err(crate::Error::io(
                "start a lane thread (RLIMIT_NPROC, `ulimit -u`, or memory may be too low; fewer --lanes need fewer)",
                name,
                e,
            ));
        }
        watch(rx, progress);
        let mut out = Vec::new();
        let mut first: Option<crate::Error> = None;
        for h in handles {
            match h.join().expect("lane thread panicked") {
                Ok(v) => out.push(v),
                Err(crate::Error::Interrupted(_)) if first.is_some() => {}
                Err(e) => {
                    if first.as_ref().is_none_or(|f| matches!(f, crate::Error::Interrupted(_))) {
                        first = Some(e);
                    }
                }
            }
        }
        first.map_or(Ok(out), Err)
    })
}

/// Report progress every 100 ms until `rx` disconnects.
fn watch(rx: std::sync::mpsc::Receiver<()>, mut progress: impl FnMut()) {
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

fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to_core(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    // Best effort: a lane that cannot be pinned still works.
    let _ = rustix::thread::sched_setaffinity(None, &set);
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
