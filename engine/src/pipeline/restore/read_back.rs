//! `--verify-after`: the target read back with O_DIRECT in lanes, every
//! chunk's xxh3-128 compared with the index.
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::index::ChunkState;
use crate::format::index::ZeroHashes;
use crate::io;
use crate::io::device::open_read_only;
use crate::io::device::OpenMode;
use crate::io::target::Target;
use crate::io::Backend;
use crate::io::Request;
use crate::observe::Observer;
use crate::pipeline::plan::Plan;
use crate::pipeline::restore::options::ReadBack;
use crate::set::chain::Resolved;
use crate::set::image::Image;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use xxhash_rust::xxh3::xxh3_128;

pub(crate) struct ReadBackShared<'a> {
    pub img: &'a Image,
    pub resolved: &'a Resolved,
    pub path: &'a std::path::Path,
    pub limit: u64,
    pub plan: Plan,
    pub qd: u32,
    pub backend: Backend,
    pub stop: AtomicBool,
    pub bytes_done: AtomicU64,
    pub mismatched: Mutex<Vec<u64>>,
    pub checked: AtomicU64,
}

/// `--verify-after`: read the target back with O_DIRECT and compare every
/// chunk's hash with the index (zero and unused chunks with the hash of zeros).
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_back(
    target: &Target,
    img: &Image,
    resolved: &Resolved,
    limit: u64,
    lanes: u32,
    qd: u32,
    backend: Backend,
    obs: &dyn Observer,
) -> Result<ReadBack> {
    let chunk_count = img.manifest.chunk_count;
    let sh = ReadBackShared {
        img,
        resolved,
        path: &target.path,
        limit,
        plan: Plan::for_lanes(chunk_count, lanes, 64),
        qd,
        backend,
        stop: AtomicBool::new(false),
        bytes_done: AtomicU64::new(0),
        mismatched: Mutex::new(Vec::new()),
        checked: AtomicU64::new(0),
    };
    crate::pipeline::lanes::run_lanes(
        lanes,
        "tintype-read-back",
        crate::pipeline::lanes::Pinning::Unpinned,
        &sh.stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), limit),
        |_| read_back_lane(&sh),
    )?;
    let mut mismatched = sh.mismatched.into_inner().expect("lock");
    mismatched.sort_unstable();
    Ok(ReadBack { chunks_checked: sh.checked.load(Ordering::Relaxed), mismatched_chunks: mismatched })
}

pub(crate) fn read_back_lane(sh: &ReadBackShared<'_>) -> Result<()> {
    let cs = sh.img.manifest.chunk_size_bytes as usize;
    let qd = sh.qd as usize;
    let mut io =
        io::open(&sh.backend, &vec![cs; qd], 1, sh.qd).map_err(|e| Error::io("set up the I/O ring for", sh.path, e))?;
    let (file, direct) = open_read_only(sh.path, OpenMode::Direct)?;
    let align = if direct { 4096 } else { 1 };
    io.set_file(0, Some(file)).map_err(|e| Error::io("register", sh.path, e))?;
    let mut free: Vec<usize> = (0..qd).collect();
    let mut owner = vec![0u64; qd];
    let mut todo: std::collections::VecDeque<u64> = Default::default();
    let mut zero_hashes = ZeroHashes::default();
    loop {
        if todo.is_empty() && !crate::observe::interrupted() {
            if let Some(r) = sh.plan.claim() {
                todo.extend(r);
            }
        }
        while let (Some(&b), Some(&chunk)) = (free.last(), todo.front()) {
            let (start, len) = sh.img.chunk_extent(chunk);
            todo.pop_front();
            if start >= sh.limit {
                continue;
            }
            free.pop();
            owner[b] = chunk;
            let len = (u64::from(len).min(sh.limit - start) as usize).next_multiple_of(align).min(cs);
            io.enqueue_read(Request { slot: 0, buf: b, buf_offset: 0, len, file_offset: start, tag: b as u64 });
        }
        if io.in_flight() == 0 {
            if todo.is_empty() {
                break;
            }
            continue;
        }
        io.flush(1).map_err(|e| Error::io("read back", sh.path, e))?;
        while let Some(c) = io.pop_completion() {
            let b = c.user_data as usize;
            let chunk = owner[b];
            let (start, raw_len) = sh.img.chunk_extent(chunk);
            let want = u64::from(raw_len).min(sh.limit - start) as usize;
            // A read error is a difference like any other, not the end of the check.
            let n = c.result.unwrap_or(0);
            let e = sh.resolved.entry(chunk);
            let ok = if n < want {
                false
            } else {
                let buf = io.buffer_mut(b);
                // Past a smaller target's end the source held zeros (checked before).
                buf[want..raw_len as usize].fill(0);
                let h = xxh3_128(&buf[..raw_len as usize]);
                match e.state {
                    ChunkState::Stored | ChunkState::Zero => h == e.raw_hash,
                    _ => {
                        let zh = zero_hashes.get(raw_len);
                        h == zh
                    }
                }
            };
            if !ok {
                sh.mismatched.lock().expect("lock").push(chunk);
            }
            sh.checked.fetch_add(1, Ordering::Relaxed);
            sh.bytes_done.fetch_add(want as u64, Ordering::Relaxed);
            free.push(b);
        }
    }
    if crate::observe::interrupted() {
        return Err(Error::interrupted(Left::Unverified, "--verify-after stopped by a signal".into()));
    }
    Ok(())
}
