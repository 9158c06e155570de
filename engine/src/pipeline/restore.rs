//! `restore`: write an image back to a block device or file. The capture
//! pipeline in reverse: lanes claim ranges of the index, read frames with
//! O_DIRECT through their ring, check the stored hash, decompress into an
//! aligned buffer, check the raw hash, and write with O_DIRECT at the chunk's
//! offset. Zero and unused chunks are never written byte by byte: zero-out
//! or discard on a block device, holes in a file.
//!
//! Every refusal (target too small, sector size mismatch, mounted, holding
//! data) happens before the first byte is written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use super::plan::Plan;
use super::verify::BadChunk;
use super::Observer;
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::align_up;
use crate::format::frame::{check_frame, frame_len, frame_len_max};
use crate::format::index::{ChunkState, IndexEntry, ZeroHashes};
use crate::io::device::open_read_only;
use crate::io::target::{describe_contents, mounted_at, zero_range, Target, TargetKind};
use crate::io::{self, Backend, Completion, Io, IoChoice};
use crate::lock::{lock_set, Access};
use crate::set::{Image, ImageSet, Resolved, SegmentRef};

/// How to run `restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub set: PathBuf,
    /// A unique prefix of the Image ID; None for the newest image.
    pub image: Option<String>,
    pub target: PathBuf,
    /// Proceed although the target holds data or has another sector size.
    pub force: bool,
    /// Restore to a smaller target when everything past its end is zero or unused.
    pub allow_shrink: bool,
    /// On block devices, discard zero ranges where the device guarantees zeroed reads.
    pub discard: bool,
    /// Verify the whole image before writing anything.
    pub verify_first: bool,
    /// Write zeros for damaged chunks, go on, and report them.
    pub skip_bad: bool,
    /// Read the target back afterwards and compare with the index's hashes.
    pub verify_after: bool,
    pub lanes: Option<u32>,
    pub queue_depth: u32,
    pub io: IoChoice,
}

impl RestoreOptions {
    pub fn new(set: impl Into<PathBuf>, target: impl Into<PathBuf>) -> RestoreOptions {
        RestoreOptions {
            set: set.into(),
            image: None,
            target: target.into(),
            force: false,
            allow_shrink: false,
            discard: false,
            verify_first: false,
            skip_bad: false,
            verify_after: false,
            lanes: None,
            queue_depth: 8,
            io: IoChoice::Auto,
        }
    }
}

/// The read-back check of `--verify-after`.
#[derive(Debug, Clone, Serialize)]
pub struct ReadBack {
    pub chunks_checked: u64,
    /// Chunks whose bytes on the target do not hash to the index's hash.
    pub mismatched_chunks: Vec<u64>,
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub image_id: String,
    pub target: String,
    pub target_kind: String,
    pub source_bytes: u64,
    pub target_bytes: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub chunks_written: u64,
    pub chunks_zeroed: u64,
    /// How zero ranges were produced: "hole", "zero-out", "discard".
    pub zero_method: String,
    pub wall_seconds: f64,
    pub io_backend: String,
    pub target_direct_io: bool,
    /// Damaged chunks written as zeros (`--skip-bad`).
    pub bad_chunks: Vec<BadChunk>,
    pub read_back: Option<ReadBack>,
    /// Source ranges the image could not read when it was made: restored as zeros.
    pub source_unreadable: Vec<crate::format::manifest::ByteRange>,
}

impl RestoreReport {
    /// Everything restored and, if asked, read back intact.
    pub fn is_clean(&self) -> bool {
        self.bad_chunks.is_empty() && self.read_back.as_ref().is_none_or(|r| r.mismatched_chunks.is_empty())
    }
}

/// Restore an image.
pub fn restore(opts: &RestoreOptions, obs: &dyn Observer) -> Result<RestoreReport> {
    let started = Instant::now();
    if !(1..=1024).contains(&opts.queue_depth) {
        return Err(Error::InvalidSetting(format!("--queue-depth {}: must be 1 to 1024", opts.queue_depth)));
    }
    let (backend, why) = io::select(&opts.io)?;
    if let Some(why) = why {
        obs.note(&why);
    }
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Read, "restore")?;
    refuse_own_file(&set, &opts.target)?;
    let img = set.resolve(opts.image.as_deref())?;
    // An incremental or differential image is read through its chain: every
    // chunk is resolved to the image whose segment holds it.
    let chain = set.chain(&img)?;
    let resolved = Resolved::load(&chain)?;
    let entries = &resolved.entries;
    let segments = &resolved.segments;
    let m = &img.manifest;
    let source_bytes = m.source.size_bytes;

    let missing_segments = check_segments(opts, segments)?;
    let write_limit = preflight(opts, &img, &resolved)?;
    // Before the target is created or opened: settings refused here leave
    // nothing behind.
    let lanes = opts.lanes.unwrap_or_else(super::capture::available_cores).clamp(1, 256);
    super::check_buffer_memory(
        u64::from(lanes)
            * u64::from(opts.queue_depth)
            * (frame_len_max(m.chunk_size_bytes) + u64::from(m.chunk_size_bytes)),
    )?;
    if opts.verify_first {
        obs.note("--verify-first: checking the whole image before touching the target");
        let mut v = super::verify::VerifyOptions::new(&opts.set);
        v.image = Some(m.image_id.clone());
        v.lanes = opts.lanes;
        v.io = opts.io.clone();
        let r = super::verify::verify(&v, obs)?;
        if !r.is_clean() {
            let list: Vec<String> = r
                .bad_chunks
                .iter()
                .take(10)
                .map(|b| format!("chunk {} (source offset {}): {}", b.chunk, b.source_offset, b.reason))
                .chain(r.problems.iter().take(5).map(|p| format!("{}: {}", p.file, p.what)))
                .collect();
            return Err(Error::corrupt(
                &img.manifest_path,
                0,
                format!(
                    "--verify-first found {} bad chunk(s) and {} damaged file(s); the target was not touched: {}",
                    r.bad_chunks.len(),
                    r.problems.len(),
                    list.join("; ")
                ),
            ));
        }
    }

    let target = Target::open(&opts.target, source_bytes)?;
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
    let tail_file =
        OpenOptions::new().write(true).open(&target.path).map_err(|e| Error::io("open target", &target.path, e))?;

    let chunk_count = m.chunk_count;
    let batch_chunks =
        (chunk_count / (u64::from(lanes) * 8)).clamp(1, ((64u64 << 20) / u64::from(m.chunk_size_bytes)).max(1));
    let stop = AtomicBool::new(false);
    let sh = RestoreShared {
        img: &img,
        entries,
        segments,
        target: &target,
        tail_file: &tail_file,
        write_limit,
        queue_depth: opts.queue_depth,
        backend: backend.clone(),
        skip_bad: opts.skip_bad,
        discard: opts.discard,
        missing_segments: &missing_segments,
        plan: Plan::new(chunk_count, batch_chunks),
        stop: &stop,
        bytes_done: AtomicU64::new(0),
        totals: Mutex::new(Totals::default()),
    };
    let total = source_bytes.min(write_limit);
    super::run_lanes(
        lanes,
        "tintype-restore",
        false,
        &stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), total),
        |_| RestoreLane::new(&sh)?.run(),
    )
    .map_err(
        |e| match e {
            Error::Interrupted(_) if super::interrupted() => Error::Interrupted(format!(
                "restore stopped by a signal; {} is incomplete: restore again (with --force, since it now holds data) to finish it",
                target.path.display()
            )),
            // A file this run created, failed before any chunk was
            // restored (a lane's ring could not be set up, the first chunk
            // damaged): removed, so a new attempt needs no --force.
            e if target.kind == TargetKind::NewFile
                && sh.bytes_done.load(Ordering::Relaxed) == 0
                && std::fs::remove_file(&target.path).is_ok() =>
            {
                with_remark(e, &format!("nothing was restored; the new file {} was removed", target.path.display()))
            }
            e => incomplete(e, &target.path),
        },
    )?;
    target.file.sync_all().map_err(|e| Error::io("fsync target", &target.path, e))?;
    let totals = sh.totals.into_inner().expect("totals lock");

    let read_back = if opts.verify_after {
        obs.note("--verify-after: reading the target back and comparing with the index");
        Some(read_back(&target, &img, entries, write_limit, lanes, opts.queue_depth, backend.clone(), obs)?)
    } else {
        None
    };
    let mut bad = totals.bad;
    bad.sort_by_key(|b| b.chunk);
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }
    Ok(RestoreReport {
        image_id: m.image_id.clone(),
        target: target.path.display().to_string(),
        target_kind: match target.kind {
            TargetKind::BlockDevice => "block-device",
            TargetKind::ExistingFile => "existing-file",
            TargetKind::NewFile => "new-file",
        }
        .into(),
        source_bytes,
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
    })
}

fn incomplete(e: Error, target: &std::path::Path) -> Error {
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
fn with_remark(e: Error, remark: &str) -> Error {
    match e {
        Error::Corrupt { path, offset, what } => Error::Corrupt { path, offset, what: format!("{what}; {remark}") },
        Error::Io { op, path, offset, cause } => {
            Error::Io { op, path, offset, cause: std::io::Error::new(cause.kind(), format!("{cause}; {remark}")) }
        }
        other => other,
    }
}

/// Every check that can refuse the restore, before anything is written.
/// Returns how many bytes of the source go to the target.
fn preflight(opts: &RestoreOptions, img: &Image, resolved: &Resolved) -> Result<u64> {
    let entries = &resolved.entries;
    let m = &img.manifest;
    let source_bytes = m.source.size_bytes;
    let path = &opts.target;
    let refuse = |why: String| Err(Error::Unusable { path: path.clone(), why });
    let Some(p) = Target::probe(path)? else {
        // A new file: will the data fit on its filesystem?
        let stored: u64 = entries.iter().filter(|e| e.state == ChunkState::Stored).map(|e| u64::from(e.raw_len)).sum();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if stored > free {
                return refuse(format!(
                    "its filesystem has {} free, and the image's data needs {} (zero chunks become holes and need nothing)",
                    crate::sample::human_bytes(free),
                    crate::sample::human_bytes(stored)
                ));
            }
        }
        return Ok(source_bytes);
    };
    let (kind, size, sector, rdev) = (p.kind, p.size_bytes, p.logical_sector_bytes, p.rdev);
    if let Some(rdev) = rdev {
        if let Some(at) = mounted_at(rdev) {
            return refuse(format!("the device (or a partition of it) is mounted at {at}; unmount it first"));
        }
    }
    if kind == TargetKind::BlockDevice && sector != m.source.logical_sector_bytes && !opts.force {
        return refuse(format!(
            "its logical sector size is {sector} bytes, the image's source had {}; partition tables and \
             filesystems laid out for one do not work on the other (use --force if you know they do)",
            m.source.logical_sector_bytes
        ));
    }
    let mut limit = source_bytes;
    if kind == TargetKind::BlockDevice && size < source_bytes {
        if !opts.allow_shrink {
            return refuse(format!(
                "the device is {size} bytes ({}), smaller than the image's source, {source_bytes} bytes ({}); \
                 use a device at least that large, or --allow-shrink if everything past {size} is unused",
                crate::sample::human_bytes(size),
                crate::sample::human_bytes(source_bytes)
            ));
        }
        shrink_check(img, resolved, size)?;
        limit = size;
    }
    if !opts.force {
        if let Some(what) = describe_contents(path, size)? {
            return refuse(format!(
                "it is {size} bytes ({}) and holds {what}; restoring would overwrite it. Pass --force to \
                 overwrite it anyway",
                crate::sample::human_bytes(size)
            ));
        }
    }
    Ok(limit)
}

/// Every segment must be there with the size the manifest records. Under
/// --skip-bad a missing one only makes its chunks bad; returns those.
fn check_segments(opts: &RestoreOptions, segments: &[SegmentRef]) -> Result<Vec<bool>> {
    let mut missing = vec![false; segments.len()];
    for (i, s) in segments.iter().enumerate() {
        let path = &s.path;
        let problem = match std::fs::metadata(path) {
            Err(e) => Some(format!("cannot be opened: {e}")),
            Ok(md) if md.len() < s.size_bytes => {
                Some(format!("is {} bytes, the manifest says {} (truncated)", md.len(), s.size_bytes))
            }
            Ok(_) => None,
        };
        let Some(problem) = problem else { continue };
        if !opts.skip_bad {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "segment {problem} (it belongs to image {}); nothing was written (--skip-bad restores every \
                     chunk it can)",
                    s.image
                ),
            ));
        }
        // A truncated segment's surviving frames are still restored; only
        // a segment that cannot be opened at all is skipped whole.
        missing[i] = std::fs::File::open(path).is_err();
    }
    Ok(missing)
}

/// With --allow-shrink: every chunk past the target's end must hold only zeros.
fn shrink_check(img: &Image, resolved: &Resolved, limit: u64) -> Result<()> {
    // A filesystem whose free tail was recorded unused fits the data check
    // below, but past the target's end it would describe blocks that are
    // not there (unmountable): refused.
    for p in img.manifest.layout.iter().flat_map(|l| &l.partitions).filter(|p| p.used_bytes.is_some()) {
        let end = p.start_bytes.saturating_add(p.fs_bytes.unwrap_or(p.size_bytes));
        if end > limit {
            let what = if p.number == 0 { "the source's".to_string() } else { format!("partition {}'s", p.number) };
            return Err(Error::Unusable {
                path: img.dir.clone(),
                why: format!(
                    "--allow-shrink: {what} {} filesystem ends at byte {end}, past the target's end at {limit}; \
                     restored, it would describe blocks the target does not have. Shrink the filesystem first \
                     (resize2fs; XFS cannot shrink) and image it again, or restore to a target of at least {end} \
                     bytes",
                    p.filesystem
                ),
            });
        }
    }
    let entries = &resolved.entries;
    let mut dec = Decoder::new().map_err(|e| Error::io("create decoder for", &img.dir, e))?;
    let mut buf = vec![0u8; img.manifest.chunk_size_bytes as usize];
    for (chunk, e) in entries.iter().enumerate() {
        let (start, len) = img.chunk_extent(chunk as u64);
        let end = start + u64::from(len);
        if end <= limit || matches!(e.state, ChunkState::Zero | ChunkState::Unused) {
            continue;
        }
        // Stored data (or unreadable) past the end: only all-zero bytes may be dropped.
        let n = resolved.read_chunk(img, chunk as u64, &mut buf, &mut dec)?;
        let from = limit.saturating_sub(start) as usize;
        if e.state == ChunkState::Unreadable || buf[from..n].iter().any(|&b| b != 0) {
            return Err(Error::Unusable {
                path: img.dir.clone(),
                why: format!(
                    "--allow-shrink: chunk {chunk} (source offset {start}) holds data past the target's end at {limit}; \
                     the target is too small for this image"
                ),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Totals {
    bytes_written: u64,
    bytes_zeroed: u64,
    chunks_written: u64,
    chunks_zeroed: u64,
    zero_method: Option<&'static str>,
    bad: Vec<BadChunk>,
}

struct RestoreShared<'a> {
    img: &'a Image,
    /// Resolved through the chain: stored entries name a segment of `segments`.
    entries: &'a [IndexEntry],
    segments: &'a [SegmentRef],
    target: &'a Target,
    /// A buffered descriptor for the unaligned tail of the last chunk.
    tail_file: &'a File,
    write_limit: u64,
    queue_depth: u32,
    backend: Backend,
    skip_bad: bool,
    discard: bool,
    /// Segments that cannot be opened (only with --skip-bad): their chunks are bad.
    missing_segments: &'a [bool],
    plan: Plan,
    stop: &'a AtomicBool,
    bytes_done: AtomicU64,
    totals: Mutex<Totals>,
}

const SLOT_TARGET: usize = 0;
const SEGMENT_SLOTS: usize = 4;
const WRITE_FLAG: u64 = 1 << 63;

#[derive(Debug, Clone, Copy)]
struct SegSlot {
    segment: Option<u32>,
    ops: u32,
    last_used: u64,
}

/// One restore lane. Buffers come in pairs: frame buffer `i` (a whole frame)
/// and raw buffer `qd + i` (one decoded chunk, aligned for O_DIRECT). A pair
/// is busy from the frame read until the chunk's write completes.
struct RestoreLane<'a> {
    sh: &'a RestoreShared<'a>,
    io: Box<dyn Io>,
    dec: Decoder,
    qd: usize,
    free_pairs: Vec<usize>,
    /// The chunk each busy pair is working on.
    pair_chunk: Vec<u64>,
    /// Bytes of each busy pair's chunk already written (a short write is
    /// carried on from there).
    pair_written: Vec<usize>,
    pending: std::collections::VecDeque<u64>,
    slots: [SegSlot; SEGMENT_SLOTS],
    clock: u64,
    totals: Totals,
}

impl<'a> RestoreLane<'a> {
    fn new(sh: &'a RestoreShared<'a>) -> Result<RestoreLane<'a>> {
        let qd = sh.queue_depth as usize;
        let cs = sh.img.manifest.chunk_size_bytes;
        let mut sizes = vec![frame_len_max(cs) as usize; qd];
        sizes.extend(std::iter::repeat_n(cs as usize, qd));
        let mut io = io::open(&sh.backend, &sizes, 1 + SEGMENT_SLOTS, sh.queue_depth * 2)
            .map_err(|e| Error::io("set up the I/O ring for", sh.target.path.clone(), e))?;
        io.set_file(SLOT_TARGET, Some(sh.target.reopen()?))
            .map_err(|e| Error::io("register", sh.target.path.clone(), e))?;
        Ok(RestoreLane {
            sh,
            io,
            dec: Decoder::new().map_err(|e| Error::io("create decoder for", sh.img.dir.clone(), e))?,
            qd,
            free_pairs: (0..qd).rev().collect(),
            pair_chunk: vec![0; qd],
            pair_written: vec![0; qd],
            pending: Default::default(),
            slots: [SegSlot { segment: None, ops: 0, last_used: 0 }; SEGMENT_SLOTS],
            clock: 0,
            totals: Totals::default(),
        })
    }

    fn run(mut self) -> Result<()> {
        loop {
            self.submit_reads()?;
            if self.io.in_flight() == 0 {
                // submit_reads only leaves nothing in flight when the plan is
                // exhausted (or stopped).
                break;
            }
            self.io.flush(1).map_err(|e| Error::io("submit I/O for", self.sh.target.path.clone(), e))?;
            while let Some(c) = self.io.pop_completion() {
                self.dispatch(c)?;
            }
        }
        let mut t = self.sh.totals.lock().expect("totals lock");
        t.bytes_written += self.totals.bytes_written;
        t.bytes_zeroed += self.totals.bytes_zeroed;
        t.chunks_written += self.totals.chunks_written;
        t.chunks_zeroed += self.totals.chunks_zeroed;
        t.zero_method = t.zero_method.or(self.totals.zero_method);
        t.bad.append(&mut self.totals.bad);
        drop(t);
        if self.sh.stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted("another lane stopped the restore".into()));
        }
        Ok(())
    }

    /// Claim the next batch: zero its zero/unused runs now, queue its stored
    /// chunks for reading. False when there is nothing left (or a stop).
    fn claim(&mut self) -> Result<bool> {
        if super::interrupted() {
            self.sh.stop.store(true, Ordering::Relaxed);
        }
        if self.sh.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(r) = self.sh.plan.claim() else {
            return Ok(false);
        };
        let mut run: Option<(u64, u64)> = None;
        for chunk in r {
            let e = &self.sh.entries[chunk as usize];
            let (start, len) = self.sh.img.chunk_extent(chunk);
            if start >= self.sh.write_limit {
                continue; // past the end of a smaller target (checked zero in preflight)
            }
            if e.state == ChunkState::Stored {
                if let Some((s, l)) = run.take() {
                    self.zero(s, l)?;
                }
                self.pending.push_back(chunk);
            } else {
                let len = u64::from(len).min(self.sh.write_limit - start);
                self.totals.chunks_zeroed += 1;
                run = match run {
                    Some((s, l)) if s + l == start => Some((s, l + len)),
                    Some((s, l)) => {
                        self.zero(s, l)?;
                        Some((start, len))
                    }
                    None => Some((start, len)),
                };
            }
        }
        if let Some((s, l)) = run {
            self.zero(s, l)?;
        }
        Ok(true)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        // The kernel zeroes (or punches) whole logical sectors only; an
        // unaligned end (a source whose size is not a multiple of this
        // device's sector) is written as explicit zeros.
        let align = u64::from(self.sh.target.logical_sector_bytes);
        let aligned = if self.sh.target.kind == TargetKind::BlockDevice { len / align * align } else { len };
        let how = match zero_range(&self.sh.target.file, self.sh.target.kind, offset, aligned, self.sh.discard) {
            Ok(how) => how,
            // A filesystem that cannot punch holes: write the zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zeros(offset, aligned)?;
                "written zeros"
            }
            Err(e) => return Err(Error::io_at("zero", self.sh.target.path.clone(), offset, e)),
        };
        self.write_zeros(offset + aligned, len - aligned)?;
        if aligned > 0 {
            self.totals.zero_method.get_or_insert(how);
        }
        self.totals.bytes_zeroed += len;
        self.sh.bytes_done.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn write_zeros(&self, mut offset: u64, mut len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            self.sh
                .tail_file
                .write_all_at(&zeros[..n], offset)
                .map_err(|e| write_error(&self.sh.target.path, offset, e))?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// A slot holding segment `seg`, opening it (in the least recently used
    /// idle slot) if needed. None when every slot has reads in flight.
    fn segment_slot(&mut self, seg: u32) -> Result<Option<usize>> {
        self.clock += 1;
        if let Some(i) = self.slots.iter().position(|s| s.segment == Some(seg)) {
            self.slots[i].last_used = self.clock;
            return Ok(Some(i));
        }
        let Some(i) = (0..SEGMENT_SLOTS).filter(|&i| self.slots[i].ops == 0).min_by_key(|&i| self.slots[i].last_used)
        else {
            return Ok(None);
        };
        let path = self.sh.segments[seg as usize].path.clone();
        let (file, _direct) = open_read_only(&path, true)?;
        self.io.set_file(1 + i, Some(file)).map_err(|e| Error::io("register", path.clone(), e))?;
        self.slots[i] = SegSlot { segment: Some(seg), ops: 0, last_used: self.clock };
        Ok(Some(i))
    }

    fn submit_reads(&mut self) -> Result<()> {
        loop {
            if self.pending.is_empty() {
                // Claim ahead (zeroing the batch's zero runs now), so reads of
                // the next batch overlap the writes of this one.
                if !self.claim()? {
                    return Ok(());
                }
                continue;
            }
            let (Some(&pair), Some(&chunk)) = (self.free_pairs.last(), self.pending.front()) else {
                return Ok(());
            };
            let e = self.sh.entries[chunk as usize];
            if self.sh.missing_segments[e.segment as usize] {
                self.pending.pop_front();
                self.bad_chunk(chunk, &e, "its segment file cannot be opened".into())?;
                continue;
            }
            let Some(slot) = self.segment_slot(e.segment)? else {
                return Ok(());
            };
            self.free_pairs.pop();
            self.pending.pop_front();
            self.pair_chunk[pair] = chunk;
            self.slots[slot].ops += 1;
            let len = frame_len(e.stored_len) as usize;
            self.io.enqueue_read(1 + slot, pair, 0, len, e.offset, pair as u64);
        }
    }

    fn dispatch(&mut self, c: Completion) -> Result<()> {
        let pair = (c.user_data & !WRITE_FLAG) as usize;
        let chunk = self.pair_chunk[pair];
        let (start, raw_len) = self.sh.img.chunk_extent(chunk);
        if c.user_data & WRITE_FLAG != 0 {
            // What went through the ring: the O_DIRECT part (the unaligned
            // tail was written separately).
            let (_, len) = self.write_span(start, raw_len);
            let done = self.pair_written[pair];
            match c.result {
                Err(e) if io::is_transient(&e) => {
                    self.io.enqueue_write(
                        SLOT_TARGET,
                        self.qd + pair,
                        done,
                        len - done,
                        start + done as u64,
                        c.user_data,
                    );
                    return Ok(());
                }
                Err(e) => return Err(write_error(&self.sh.target.path, start + done as u64, e)),
                // A short write (a filling filesystem): carry on from an
                // aligned boundary, which completes or fails with the cause.
                Ok(n) if done + n < len => {
                    let align = if self.sh.target.direct { self.sh.target.dio_align_bytes as usize } else { 1 };
                    let next = (done + n) / align * align;
                    if next <= done {
                        return Err(write_error(
                            &self.sh.target.path,
                            start + done as u64,
                            std::io::Error::other(format!(
                                "the write stopped after {} of {len} bytes (no space left on the target?)",
                                done + n
                            )),
                        ));
                    }
                    self.pair_written[pair] = next;
                    self.io.enqueue_write(
                        SLOT_TARGET,
                        self.qd + pair,
                        next,
                        len - next,
                        start + next as u64,
                        c.user_data,
                    );
                    return Ok(());
                }
                Ok(_) => {}
            }
            self.free_pairs.push(pair);
            return Ok(());
        }
        let e = self.sh.entries[chunk as usize];
        let slot = self.slots.iter().position(|s| s.segment == Some(e.segment)).expect("segment slot of a read");
        self.slots[slot].ops -= 1;
        let checked = match c.result {
            Err(e) if io::is_transient(&e) => {
                let en = self.sh.entries[chunk as usize];
                self.slots[slot].ops += 1;
                self.io.enqueue_read(1 + slot, pair, 0, frame_len(en.stored_len) as usize, en.offset, pair as u64);
                return Ok(());
            }
            Err(err) => Err(format!("cannot read the frame: {err}")),
            Ok(n) if (n as u64) < frame_len(e.stored_len) => {
                Err(format!("frame truncated: the segment ends at offset {}", e.offset + n as u64))
            }
            Ok(_) => self.decode(pair, chunk, &e),
        };
        if let Err(reason) = checked {
            self.free_pairs.push(pair);
            return self.bad_chunk(chunk, &e, reason);
        }
        self.write_chunk(pair, start, raw_len)
    }

    /// A chunk that cannot be restored: stop (the default), or with
    /// --skip-bad write zeros there and list it.
    fn bad_chunk(&mut self, chunk: u64, e: &IndexEntry, reason: String) -> Result<()> {
        let (start, raw_len) = self.sh.img.chunk_extent(chunk);
        let seg = &self.sh.segments[e.segment as usize];
        let seg_path = &seg.path;
        if !self.sh.skip_bad {
            let whose = if seg.image == self.sh.img.id() {
                String::new()
            } else {
                format!(" (held by image {}, an ancestor)", seg.image)
            };
            return Err(Error::corrupt(
                seg_path,
                e.offset,
                format!("chunk {chunk} (source offset {start}) is damaged{whose}: {reason}; it was not written"),
            ));
        }
        let len = u64::from(raw_len).min(self.sh.write_limit - start);
        self.zero(start, len)?;
        self.totals.bad.push(BadChunk {
            chunk,
            source_offset: start,
            image: seg.image.to_string(),
            segment: Some(seg.file.clone()),
            segment_offset: Some(e.offset),
            reason,
        });
        Ok(())
    }

    /// Check the frame in pair's frame buffer and decode it into its raw buffer.
    fn decode(&mut self, pair: usize, chunk: u64, e: &IndexEntry) -> std::result::Result<(), String> {
        let raw_buf = self.qd + pair;
        let dec = &mut self.dec;
        let (frame, raw) = self.io.buffer_pair(pair, raw_buf);
        let h = check_frame(frame, raw, &mut |s, o| dec.decode(s, o)).map_err(|e| e.to_string())?;
        h.check_matches(chunk, e.image_id, e)?;
        Ok(())
    }

    /// The O_DIRECT part of a chunk's write: (bytes to write in total, bytes
    /// written through the ring). The rest, an unaligned tail, goes through
    /// a buffered descriptor.
    fn write_span(&self, start: u64, raw_len: u32) -> (usize, usize) {
        let len = u64::from(raw_len).min(self.sh.write_limit - start) as usize;
        if !self.sh.target.direct {
            return (len, len);
        }
        let align = self.sh.target.dio_align_bytes as usize;
        (len, len / align * align)
    }

    fn write_chunk(&mut self, pair: usize, start: u64, raw_len: u32) -> Result<()> {
        let (len, direct_len) = self.write_span(start, raw_len);
        if direct_len < len {
            let tail = &self.io.buffer(self.qd + pair)[direct_len..len];
            self.sh
                .tail_file
                .write_all_at(tail, start + direct_len as u64)
                .map_err(|e| write_error(&self.sh.target.path, start + direct_len as u64, e))?;
        }
        self.totals.chunks_written += 1;
        self.totals.bytes_written += len as u64;
        self.sh.bytes_done.fetch_add(len as u64, Ordering::Relaxed);
        if direct_len == 0 {
            self.free_pairs.push(pair);
            return Ok(());
        }
        debug_assert_eq!(align_up(direct_len as u64, 512), direct_len as u64);
        self.pair_written[pair] = 0;
        self.io.enqueue_write(SLOT_TARGET, self.qd + pair, 0, direct_len, start, WRITE_FLAG | pair as u64);
        Ok(())
    }
}

fn write_error(path: &std::path::Path, offset: u64, e: std::io::Error) -> Error {
    let e = io::name_enospc(e, "target");
    Error::io_at("write target", path, offset, e)
}

struct ReadBackShared<'a> {
    img: &'a Image,
    entries: &'a [IndexEntry],
    path: &'a std::path::Path,
    limit: u64,
    plan: Plan,
    qd: u32,
    backend: Backend,
    stop: AtomicBool,
    bytes_done: AtomicU64,
    mismatched: Mutex<Vec<u64>>,
    checked: AtomicU64,
}

/// `--verify-after`: read the target back with O_DIRECT and compare every
/// chunk's hash with the index (zero and unused chunks with the hash of zeros).
#[allow(clippy::too_many_arguments)]
fn read_back(
    target: &Target,
    img: &Image,
    entries: &[IndexEntry],
    limit: u64,
    lanes: u32,
    qd: u32,
    backend: Backend,
    obs: &dyn Observer,
) -> Result<ReadBack> {
    let chunk_count = img.manifest.chunk_count;
    let sh = ReadBackShared {
        img,
        entries,
        path: &target.path,
        limit,
        plan: Plan::new(chunk_count, (chunk_count / (u64::from(lanes) * 8)).clamp(1, 64)),
        qd,
        backend,
        stop: AtomicBool::new(false),
        bytes_done: AtomicU64::new(0),
        mismatched: Mutex::new(Vec::new()),
        checked: AtomicU64::new(0),
    };
    super::run_lanes(
        lanes,
        "tintype-read-back",
        false,
        &sh.stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), limit),
        |_| read_back_lane(&sh),
    )?;
    let mut mismatched = sh.mismatched.into_inner().expect("lock");
    mismatched.sort_unstable();
    Ok(ReadBack { chunks_checked: sh.checked.load(Ordering::Relaxed), mismatched_chunks: mismatched })
}

fn read_back_lane(sh: &ReadBackShared<'_>) -> Result<()> {
    let cs = sh.img.manifest.chunk_size_bytes as usize;
    let qd = sh.qd as usize;
    let mut io =
        io::open(&sh.backend, &vec![cs; qd], 1, sh.qd).map_err(|e| Error::io("set up the I/O ring for", sh.path, e))?;
    let (file, direct) = open_read_only(sh.path, true)?;
    let align = if direct { 4096 } else { 1 };
    io.set_file(0, Some(file)).map_err(|e| Error::io("register", sh.path, e))?;
    let mut free: Vec<usize> = (0..qd).collect();
    let mut owner = vec![0u64; qd];
    let mut todo: std::collections::VecDeque<u64> = Default::default();
    let mut zero_hashes = ZeroHashes::default();
    loop {
        if todo.is_empty() && !super::interrupted() {
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
            io.enqueue_read(0, b, 0, len, start, b as u64);
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
            let e = &sh.entries[chunk as usize];
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
    if super::interrupted() {
        return Err(Error::Interrupted("--verify-after stopped by a signal".into()));
    }
    Ok(())
}

/// A target that is one of the set's own files (a segment, an index, under
/// any name) would be overwritten with the image read from it: refused,
/// `--force` or not.
fn refuse_own_file(set: &ImageSet, target: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(mut t) = std::fs::metadata(target) else { return Ok(()) };
    let mut through = String::new();
    if t.file_type().is_block_device() {
        // A loop device (or a partition of one) over a file of the set is
        // that file too.
        let rdev = t.rdev();
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev)));
        let backing = [sys.join("loop/backing_file"), sys.join("../loop/backing_file")]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| PathBuf::from(s.trim()));
        match backing.and_then(|b| std::fs::metadata(&b).ok().map(|m| (b, m))) {
            Some((b, m)) => {
                through = format!(" (through the loop device over {})", b.display());
                t = m;
            }
            None => return Ok(()),
        }
    } else if t.is_file() {
        // A file a mounted filesystem lives in, through a loop device:
        // refused like the mounted device itself, --force or not.
        for d in super::capture::loops_backed_by(target) {
            if let Some((at, _)) = crate::io::target::mounts_of(d).into_iter().next() {
                return Err(Error::Unusable {
                    path: target.into(),
                    why: format!(
                        "it backs loop device {}:{}, whose filesystem is mounted at {at}; unmount it first",
                        d.0, d.1
                    ),
                });
            }
        }
    }
    if !t.is_file() {
        return Ok(());
    }
    let rd = std::fs::read_dir(&set.dir).map_err(|e| Error::io("list", &set.dir, e))?;
    for e in rd.flatten() {
        if let Ok(m) = e.metadata() {
            if m.dev() == t.dev() && m.ino() == t.ino() {
                return Err(Error::Unusable {
                    path: target.into(),
                    why: format!(
                        "this is {}{through}, a file of the image set being restored; restore to another file or \
                         device",
                        e.path().display()
                    ),
                });
            }
        }
    }
    Ok(())
}
