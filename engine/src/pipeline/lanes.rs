//! Running a pipeline's lanes: one thread per lane, pinned to a core when
//! asked, started together, reporting progress from the calling thread, and
//! stopping together when one fails.

use std::sync::atomic::{AtomicBool, Ordering};

/// The bit a lane sets in a write's tag (reads carry their buffer number):
/// one ring carries both, and a completion says which it was.
pub const WRITE_TAG: u64 = 1 << 63;

/// Whether lane threads are pinned to cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Lane `i` on the `i`-th core this process may run on (capture: a
    /// chunk's bytes never leave the core that read them).
    PinToCores,
    /// Left to the scheduler (verify, restore).
    Unpinned,
}

/// Run `lanes` threads of `body` (given the lane number), each pinned to a
/// core of this process's affinity set as `pinning` says, reporting progress until
/// they finish. A lane that fails sets `stop`, so the others stop claiming
/// work; the first real error wins over the "stopped" of the others.
pub fn run_lanes<T: Send>(
    lanes: u32,
    name: &str,
    pinning: Pinning,
    stop: &AtomicBool,
    progress: impl FnMut(),
    body: impl Fn(u32) -> crate::Result<T> + Sync,
) -> crate::Result<Vec<T>> {
    let cores = if pinning == Pinning::PinToCores { allowed_cores() } else { Vec::new() };
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
                    return Err(crate::Error::interrupted(
                        crate::error::Left::Stopped,
                        "another lane could not be started".into(),
                    ));
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
                Err(crate::Error::Interrupted { .. }) if first.is_some() => {}
                Err(e) => {
                    if first.as_ref().is_none_or(|f| matches!(f, crate::Error::Interrupted { .. })) {
                        first = Some(e);
                    }
                }
            }
        }
        first.map_or(Ok(out), Err)
    })
}

/// Report progress every 100 ms until `rx` disconnects.
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

pub(crate) fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

pub(crate) fn pin_to_core(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    // Best effort: a lane that cannot be pinned still works.
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// The number of cores this process may run on.
pub fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}
