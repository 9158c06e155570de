//! `restore`: write an image back to a block device or file. The capture
//! pipeline in reverse: lanes claim ranges of the index, read frames with
//! O_DIRECT through their ring, check the stored hash, decompress into an
//! aligned buffer, check the raw hash, and write with O_DIRECT at the chunk's
//! offset. Zero and unused chunks are never written byte by byte: zero-out
//! or discard on a block device, holes in a file.
//!
//! Every refusal (target too small, sector size mismatch, mounted, holding
//! data) happens before the first byte is written.

mod lane;
pub mod options;
mod preflight;
mod read_back;

use self::lane::{RestoreLane, RestoreShared, Totals};
pub use self::options::{ReadBack, RestoreOptions, RestoreReport};
use self::preflight::{preflight, refuse_own_file, segments_present};
use self::read_back::read_back;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::frame::frame_len_max;
use crate::io;
use crate::io::target::Target;
use crate::io::target::TargetKind;
use crate::io::Backend;
use crate::observe::interrupted;
use crate::observe::Observer;
use crate::pipeline::lanes::{available_cores, run_lanes, Pinning};
use crate::pipeline::memory::check_buffer_memory;
use crate::pipeline::plan::Plan;
use crate::pipeline::verify::{verify, VerifyOptions};
use crate::set::chain::Resolved;
use crate::set::image::Image;
use crate::set::lock::lock_set;
use crate::set::lock::Access;
use crate::set::ImageSet;
use std::fs::OpenOptions;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

/// Restore an image: load it and its chain, run every check that can
/// refuse before anything is written, open the target, write every chunk
/// through the lanes, and optionally read the target back.
pub fn restore(opts: &RestoreOptions, obs: &dyn Observer) -> Result<RestoreReport> {
    let started = Instant::now();
    if !(1..=1024).contains(&opts.queue_depth) {
        return Err(Error::InvalidSetting(format!("--queue-depth {}: must be 1 to 1024", opts.queue_depth)));
    }
    let backend = io::select(&opts.io, obs)?;
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Read, "restore")?;
    refuse_own_file(&set, &opts.target)?;
    let img = set.resolve(opts.image.as_deref())?;
    // An incremental or differential image is read through its chain: every
    // chunk is resolved to the image whose segment holds it.
    let resolved = Resolved::load(&set.chain(&img)?)?;
    let missing_segments = segments_present(opts, &resolved.segments, img.manifest.chunk_size_bytes)?;
    let write_limit = preflight(opts, &img, &resolved)?;
    // Before the target is created or opened: settings refused here leave
    // nothing behind.
    let lanes = opts.lanes.unwrap_or_else(available_cores).clamp(1, 256);
    let m = &img.manifest;
    let per_lane = u64::from(opts.queue_depth) * (frame_len_max(m.chunk_size_bytes) + u64::from(m.chunk_size_bytes));
    check_buffer_memory(u64::from(lanes) * per_lane)?;
    if opts.verify_first {
        verify_first(opts, &img, obs)?;
    }
    let target = open_target(&opts.target, m.source.size_bytes, obs)?;
    let run = Run { img: &img, resolved: &resolved, target: &target, write_limit, missing: &missing_segments };
    let totals = write_all(opts, &run, lanes, backend.clone(), obs)?;
    let read_back = match opts.verify_after {
        true => {
            obs.note("--verify-after: reading the target back and comparing with the index");
            let qd = opts.queue_depth;
            Some(read_back(&target, &img, &resolved, write_limit, lanes, qd, backend.clone(), obs)?)
        }
        false => None,
    };
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }
    Ok(report(&img, &target, totals, read_back, &backend, started))
}

/// `--verify-first`: the whole image is verified before the target is touched.
fn verify_first(opts: &RestoreOptions, img: &Image, obs: &dyn Observer) -> Result<()> {
    obs.note("--verify-first: checking the whole image before touching the target");
    let mut v = VerifyOptions::new(&opts.set);
    v.image = Some(img.manifest.image_id.clone());
    v.lanes = opts.lanes;
    v.io = opts.io.clone();
    let r = verify(&v, obs)?;
    if r.is_clean() {
        return Ok(());
    }
    let list: Vec<String> = r
        .bad_chunks
        .iter()
        .take(10)
        .map(|b| format!("chunk {} (source offset {}): {}", b.chunk, b.source_offset, b.reason))
        .chain(r.problems.iter().take(5).map(|p| format!("{}: {}", p.file, p.what)))
        .collect();
    Err(Error::corrupt(
        &img.manifest_path,
        0,
        format!(
            "--verify-first found {} bad chunk(s) and {} damaged file(s); the target was not touched: {}",
            r.bad_chunks.len(),
            r.problems.len(),
            list.join("; ")
        ),
    ))
}

/// Open (or create) the target, saying how it will be written.
fn open_target(path: &std::path::Path, source_bytes: u64, obs: &dyn Observer) -> Result<Target> {
    let target = Target::open(path, source_bytes)?;
    if !target.direct {
        obs.note(&format!(
            "{}: the filesystem refuses O_DIRECT; writing through the page cache",
            target.path.display()
        ));
    }
    if target.kind == TargetKind::ExistingFile && target.size_bytes > source_bytes {
        obs.note(&format!(
            "{} is larger than the image's source; the {} bytes past {source_bytes} are left as they are",
            target.path.display(),
            target.size_bytes - source_bytes
        ));
    }
    Ok(target)
}

/// What the restore lanes work from.
struct Run<'a> {
    img: &'a Image,
    resolved: &'a Resolved,
    target: &'a Target,
    /// How many bytes of the source go to the target.
    write_limit: u64,
    /// Segments that cannot be opened (only with --skip-bad).
    missing: &'a [Option<String>],
}

/// Most source bytes one claim of zero or unused chunks zeroes: a long run
/// is still shared among the lanes, and progress moves.
const ZERO_BATCH_BYTES: u64 = 64 << 30;

/// The restore's batches, made from the resolved runs: stored chunks in
/// batches sized for the lanes (at most 64 MiB), each run of zero or unused
/// chunks whole (up to [`ZERO_BATCH_BYTES`]). So time follows the runs and
/// the stored chunks, not the chunk count.
fn restore_plan(resolved: &Resolved, lanes: u32, chunk_bytes: u32) -> Plan {
    let stored = resolved.count(crate::format::index::ChunkState::Stored);
    let batch = Plan::batch_for(stored, lanes, (64u64 << 20) / u64::from(chunk_bytes));
    let zero_batch = (ZERO_BATCH_BYTES / u64::from(chunk_bytes)).max(1);
    let mut batches: Vec<std::ops::Range<u64>> = Vec::new();
    let mut open = false;
    for run in resolved.runs() {
        let is_stored = run.entry.state == crate::format::index::ChunkState::Stored;
        match batches.last_mut() {
            Some(b) if open && is_stored && b.end == run.first && b.end - b.start < batch => b.end = run.end(),
            _ if is_stored => batches.push(run.first..run.end()),
            _ => {
                let mut at = run.first;
                while at < run.end() {
                    let end = (at + zero_batch).min(run.end());
                    batches.push(at..end);
                    at = end;
                }
            }
        }
        open = is_stored;
    }
    Plan::batches(batches, batch)
}

/// Write every chunk through the lanes, then make the target durable. A
/// failure says what state the target is in.
fn write_all(opts: &RestoreOptions, run: &Run<'_>, lanes: u32, backend: Backend, obs: &dyn Observer) -> Result<Totals> {
    let (m, target) = (&run.img.manifest, run.target);
    let tail_file =
        OpenOptions::new().write(true).open(&target.path).map_err(|e| Error::io("open target", &target.path, e))?;
    let stop = AtomicBool::new(false);
    let sh = RestoreShared {
        img: run.img,
        resolved: run.resolved,
        segments: &run.resolved.segments,
        target,
        tail_file: &tail_file,
        write_limit: run.write_limit,
        queue_depth: opts.queue_depth,
        backend,
        skip_bad: opts.skip_bad,
        discard: opts.discard,
        missing_segments: run.missing,
        plan: restore_plan(run.resolved, lanes, m.chunk_size_bytes),
        stop: &stop,
        bytes_done: AtomicU64::new(0),
        totals: Mutex::new(Totals::default()),
    };
    let total = m.source.size_bytes.min(run.write_limit);
    run_lanes(
        lanes,
        "tintype-restore",
        Pinning::Unpinned,
        &stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), total),
        |_| RestoreLane::new(&sh)?.run(),
    )
    .map_err(|e| failed(e, target, sh.bytes_done.load(Ordering::Relaxed)))?;
    target.file.sync_all().map_err(|e| Error::io("fsync target", &target.path, e))?;
    Ok(sh.totals.into_inner().expect("totals lock"))
}

/// A restore that failed after the target was opened: what state it left.
fn failed(e: Error, target: &Target, bytes_done: u64) -> Error {
    match e {
        Error::Interrupted { .. } if interrupted() => Error::interrupted(
            Left::TargetIncomplete,
            format!(
            "restore stopped by a signal; {} is incomplete: restore again (with --force, since it now holds data) to \
             finish it",
            target.path.display()
        ),
        ),
        // A file this run created, failed before any chunk was restored (a
        // lane's ring could not be set up, the first chunk damaged):
        // removed, so a new attempt needs no --force.
        e if target.kind == TargetKind::NewFile && bytes_done == 0 && std::fs::remove_file(&target.path).is_ok() => {
            with_remark(e, &format!("nothing was restored; the new file {} was removed", target.path.display()))
        }
        e => incomplete(e, &target.path),
    }
}

fn report(
    img: &Image,
    target: &Target,
    totals: Totals,
    read_back: Option<ReadBack>,
    backend: &Backend,
    started: Instant,
) -> RestoreReport {
    let m = &img.manifest;
    let mut bad = totals.bad;
    bad.sort_by_key(|b| b.chunk);
    RestoreReport {
        image_id: m.image_id.clone(),
        target: target.path.display().to_string(),
        target_kind: match target.kind {
            TargetKind::BlockDevice => "block-device",
            TargetKind::ExistingFile => "existing-file",
            TargetKind::NewFile => "new-file",
        }
        .into(),
        source_bytes: m.source.size_bytes,
        target_bytes: target.size_bytes,
        bytes_written: totals.bytes_written,
        bytes_zeroed: totals.bytes_zeroed,
        chunks_written: totals.chunks_written,
        chunks_zeroed: totals.chunks_zeroed,
        zero_method: totals.zero_method.unwrap_or("none").into(),
        wall_seconds: started.elapsed().as_secs_f64(),
        io_backend: backend.name().into(),
        target_direct_io: target.direct,
        bad_chunks: bad,
        read_back,
        source_unreadable: m.unreadable.clone(),
    }
}

pub(crate) fn incomplete(e: Error, target: &std::path::Path) -> Error {
    match e {
        Error::Corrupt { .. } => with_remark(
            e,
            &format!(
                "{} is incomplete (--skip-bad restores everything else; --verify-first checks an image before \
                 writing; a new attempt needs --force, since the target now holds data)",
                target.display()
            ),
        ),
        e => with_remark(
            e,
            &format!(
                "{} is incomplete: once the cause is fixed, restore again (with --force, since the target now \
                 holds data)",
                target.display()
            ),
        ),
    }
}

/// `e` with `remark` appended to what it says went wrong (its cause or
/// description), keeping its kind, file and offset.
pub(crate) fn with_remark(e: Error, remark: &str) -> Error {
    match e {
        Error::Corrupt { path, offset, what } => Error::Corrupt { path, offset, what: format!("{what}; {remark}") },
        Error::Io { op, path, offset, cause } => {
            Error::Io { op, path, offset, cause: std::io::Error::new(cause.kind(), format!("{cause}; {remark}")) }
        }
        other => other,
    }
}
