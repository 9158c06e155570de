//! `create`: image a source into a set. Opens the source, starts one lane
//! per core, then writes the index and commits the manifest.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3Default;

use super::lane::{CaptureLane, CaptureShared, LaneReport, LaneStats};
use super::plan::Plan;
use super::Observer;
use crate::error::{Error, Result};
use crate::format::frame::{frame_len, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::frame::{frame_len_max, CHUNK_BYTES_MAX};
use crate::format::index::{
    entry_offset, index_file_name, ChunkState, IndexEntry, IndexHeader, ZeroHashes, INDEX_ENTRY_BYTES,
    INDEX_HEADER_BYTES,
};
use crate::format::manifest::{
    rfc3339_utc, ImageKind, IndexInfo, Manifest, SegmentInfo, Settings, SourceInfo, Stats, MANIFEST_FORMAT,
};
use crate::format::segment::{segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::{ImageId, FORMAT_VERSION};
use crate::io::{self, device::Source, IoChoice};
use crate::lock::{lock_set, Access};
use crate::set::{run_file_name, Image, ImageSet, Leftovers, RunRecord};

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_BYTES: u32 = 1 << 20;
/// Default reads in flight per lane.
pub const DEFAULT_QUEUE_DEPTH: u32 = 8;
/// Default segment size limit: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 1;
/// Bytes of source a lane claims at a time.
const BATCH_BYTES: u64 = 64 << 20;

/// How to run `create`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub source: PathBuf,
    pub set: PathBuf,
    pub level: i32,
    /// None: one lane per core this process may run on.
    pub lanes: Option<u32>,
    pub queue_depth: u32,
    pub chunk_size_bytes: u32,
    pub segment_size_bytes: u64,
    pub io: IoChoice,
    /// Use this Image ID instead of a fresh one (golden fixtures).
    pub image_id: Option<ImageId>,
    /// The profile the settings came from, recorded in the manifest.
    pub profile: Option<String>,
    /// Full, or only the chunks that changed since the newest image
    /// (incremental) or the newest full image (differential) of the set.
    pub kind: ImageKind,
    /// Take a differential or incremental although the source's identity
    /// (serial, WWN, backing file, inode) differs from the parent's. A
    /// different size or sector size is always refused.
    pub force: bool,
    /// Carry on an interrupted run of this source in this set, keeping every
    /// complete frame it wrote.
    pub resume: bool,
    /// Store only chunks a filesystem on the source uses.
    pub used_only: UsedOnly,
    /// On unreadable sectors: image the rest and record them (true), or stop.
    pub skip_unreadable: bool,
    /// Retries of a failing sector before it counts as unreadable.
    pub read_retries: u32,
    /// Freeze filesystems of the source that are mounted read-write
    /// (FIFREEZE) for the duration of the run.
    pub freeze: bool,
    /// Whether `chunk_size_bytes` was asked for (a flag or a profile) rather
    /// than the default: a differential, incremental or resumed run takes
    /// its parent's (or the run's) chunk size unless one was asked for.
    pub chunk_size_given: bool,
    /// Bytes of each staging buffer (the size of a lane's segment writes);
    /// None: 8 MiB. Not a command-line setting: the fault simulation uses
    /// small ones to get many writes out of a small source.
    pub staging_bytes: Option<usize>,
}

impl CreateOptions {
    pub fn new(source: impl Into<PathBuf>, set: impl Into<PathBuf>) -> CreateOptions {
        CreateOptions {
            source: source.into(),
            set: set.into(),
            level: DEFAULT_LEVEL,
            lanes: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            chunk_size_bytes: DEFAULT_CHUNK_BYTES,
            segment_size_bytes: DEFAULT_SEGMENT_BYTES,
            io: IoChoice::Auto,
            image_id: None,
            profile: None,
            kind: ImageKind::Full,
            force: false,
            resume: false,
            chunk_size_given: false,
            used_only: UsedOnly::Auto,
            freeze: false,
            skip_unreadable: false,
            read_retries: 2,
            staging_bytes: None,
        }
    }
}

/// Used-space imaging: whether chunks no filesystem uses are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedOnly {
    /// Where a filesystem's map can be read (the default).
    Auto,
    /// Never: a full sector copy (forensics).
    Off,
    /// Fail unless a map could be made for some filesystem on the source.
    On,
}

/// What `create` did.
#[derive(Debug)]
pub struct CreateReport {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
}

/// The number of cores this process may run on.
pub fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Each lane's two staging buffers: 8 MiB (or what was asked for), and room
/// for two frames of the largest size at least.
fn staging_bytes(chunk_bytes: u32, asked: Option<usize>) -> usize {
    let one = SEGMENT_HEADER_BYTES as u64 + frame_len_max(chunk_bytes);
    let want = asked.map_or(8u64 << 20, |n| crate::format::align_up(n as u64, SEGMENT_HEADER_BYTES as u64));
    want.max(2 * one) as usize
}

fn validate(o: &CreateOptions) -> Result<u32> {
    let bad = |s: String| Err(Error::InvalidSetting(s));
    let cs = o.chunk_size_bytes;
    if !cs.is_power_of_two() || !(64 << 10..=CHUNK_BYTES_MAX).contains(&cs) {
        return bad(format!("--chunk-size {cs}: must be a power of two from 64 KiB to 64 MiB"));
    }
    let levels = crate::codec::level_range();
    if !levels.contains(&o.level) {
        return bad(format!(
            "--level {}: zstd levels run from {} to {} (0 stores uncompressed)",
            o.level,
            levels.start(),
            levels.end()
        ));
    }
    if !(1..=1024).contains(&o.queue_depth) {
        return bad(format!("--queue-depth {}: must be 1 to 1024", o.queue_depth));
    }
    let lanes = o.lanes.unwrap_or_else(available_cores);
    if !(1..=256).contains(&lanes) {
        return bad(format!("--lanes {lanes}: must be 1 to 256"));
    }
    super::check_buffer_memory(
        u64::from(lanes) * (u64::from(o.queue_depth) * u64::from(cs) + 2 * staging_bytes(cs, o.staging_bytes) as u64),
    )?;
    let min_segment = (SEGMENT_HEADER_BYTES + staging_bytes(cs, o.staging_bytes)) as u64;
    if o.segment_size_bytes < min_segment {
        return bad(format!(
            "--segment-size {}: must be at least {min_segment} bytes for this chunk size",
            o.segment_size_bytes
        ));
    }
    Ok(lanes)
}

/// What `create` starts from: the parent (for a differential or
/// incremental), and what an interrupted run left (for `--resume`).
struct Start {
    id: ImageId,
    kind: ImageKind,
    parent: Option<Image>,
    chunk_bytes: u32,
    level: i32,
    resumed: Option<RunRecord>,
}

/// The source as the manifest records it.
fn source_info(source: &Source) -> SourceInfo {
    SourceInfo {
        path: std::fs::canonicalize(&source.path).unwrap_or_else(|_| source.path.clone()).display().to_string(),
        kind: source.kind.name().into(),
        size_bytes: source.size_bytes,
        logical_sector_bytes: source.logical_sector_bytes,
        physical_sector_bytes: source.physical_sector_bytes,
        identity: source.identity.clone(),
    }
}

/// Identity keys that name a device or file whatever it is called today
/// (device numbers and kernel names change between boots; these do not).
const STABLE_IDENTITY: &[&str] = &["serial", "wwid", "model", "loop_backing_file", "device", "inode"];

/// Is `src` the source `img` was taken from? A different size or sector
/// size is always refused; a different identity unless `force`.
fn check_same_source(img: &Image, src: &SourceInfo, force: bool) -> Result<()> {
    let was = &img.manifest.source;
    let refuse = |why: String| Err(Error::Unusable { path: PathBuf::from(&src.path), why });
    if was.size_bytes != src.size_bytes {
        return refuse(format!(
            "the source is {} bytes, but image {} (the parent) was taken from a source of {} bytes; an incremental \
             or differential image needs the same device: take a full image (into a new set) instead",
            src.size_bytes,
            img.id(),
            was.size_bytes
        ));
    }
    if was.logical_sector_bytes != src.logical_sector_bytes {
        return refuse(format!(
            "the source has {}-byte logical sectors, image {} (the parent) was taken from one with {}; take a full \
             image instead",
            src.logical_sector_bytes,
            img.id(),
            was.logical_sector_bytes
        ));
    }
    let mut differ: Vec<String> = STABLE_IDENTITY
        .iter()
        .filter_map(|k| match (was.identity.get(*k), src.identity.get(*k)) {
            (Some(a), Some(b)) if a != b => Some(format!("{k} {a:?} then, {b:?} now")),
            (Some(a), None) => Some(format!("{k} {a:?} then, none now")),
            _ => None,
        })
        .collect();
    if was.kind != src.kind {
        differ.insert(0, format!("a {} then, a {} now", was.kind, src.kind));
    }
    if !differ.is_empty() && !force {
        return refuse(format!(
            "this does not look like the source of image {} (the parent): {}; an incremental of another device \
             would store nonsense. If it is the same device, pass --force",
            img.id(),
            differ.join(", ")
        ));
    }
    Ok(())
}

/// The raw hash of every chunk of `img` (0 where it has none: unused or
/// unreadable), for change detection. The index must be intact.
fn chunk_hashes(img: &Image) -> Result<Vec<u128>> {
    let idx = img.read_index()?;
    if !idx.hash_matches {
        return Err(Error::corrupt(
            img.index_path(),
            0,
            format!(
                "the index of image {} (the parent) does not match its manifest's checksum; changes cannot be found \
                 against a damaged index (run `tintype verify`)",
                img.id()
            ),
        ));
    }
    idx.entries
        .into_iter()
        .enumerate()
        .map(|(chunk, e)| {
            let e = e.map_err(|why| Error::corrupt(img.index_path(), entry_offset(chunk as u64), why))?;
            img.check_entry(chunk as u64, &e)
                .map_err(|why| Error::corrupt(img.index_path(), entry_offset(chunk as u64), why))?;
            Ok(match e.state {
                ChunkState::Stored | ChunkState::Zero | ChunkState::Inherited => e.raw_hash,
                _ => 0,
            })
        })
        .collect()
}

/// Decide what this run is: a new image or the resumption of one, and its parent.
fn start(opts: &CreateOptions, set: &ImageSet, src: &SourceInfo, obs: &dyn Observer) -> Result<Start> {
    let (committed, partial) = set.scan()?;
    let (images, _) = set.images_lenient()?;
    let chunk_given = opts.chunk_size_given.then_some(opts.chunk_size_bytes);
    // A run started afresh because its source changed keeps its kind and
    // chunk size.
    let mut kind = opts.kind;
    let mut chunk_default = opts.chunk_size_bytes;
    if opts.resume {
        let mut runs: Vec<RunRecord> = partial
            .iter()
            .filter_map(|id| RunRecord::load(&set.dir, *id))
            .filter(|r| r.operation == "create" && r.source.size_bytes == src.size_bytes)
            .filter(|r| check_same_identity(&r.source, src) || (opts.force && r.source.path == src.path))
            .collect();
        runs.sort_by_key(|r| r.started_unix_seconds);
        if let Some(run) = runs.pop() {
            let id = ImageId::parse(&run.image_id).expect("checked on load");
            if opts.kind != ImageKind::Full && opts.kind != run.kind {
                return Err(Error::InvalidSetting(format!(
                    "--resume: the unfinished run {id} is {} image, not {} one",
                    run.kind.a(),
                    opts.kind.a()
                )));
            }
            if let Some(cs) = chunk_given.filter(|&cs| cs != run.chunk_size_bytes) {
                return Err(Error::InvalidSetting(format!(
                    "--resume: the unfinished run {id} uses {}-byte chunks, not {cs}",
                    run.chunk_size_bytes
                )));
            }
            let written = match source_since(&run, src) {
                SourceSince::Unchanged => None,
                SourceSince::Restarted => {
                    obs.note(&format!(
                        "--resume: the machine restarted since the unfinished run {id} started, so whether the \
                         source was written meanwhile cannot be told; its frames are kept as the source's bytes. If \
                         it may have been written, discard them (tintype prune {} --discard-unfinished) and image \
                         again",
                        set.dir.display()
                    ));
                    None
                }
                SourceSince::Written(why) => Some(why),
            };
            if let Some(why) = written {
                obs.note(&format!(
                    "--resume: the source was written since the unfinished run {id} started ({why}): its frames may \
                     no longer be the source's bytes, so they are removed and a new {} image is started",
                    run.kind.name()
                ));
                crate::set::remove_leftovers(&set.dir, id)?;
                kind = run.kind;
                chunk_default = run.chunk_size_bytes;
            } else {
                let parent = match run.parent.as_deref().and_then(ImageId::parse) {
                    None => None,
                    Some(pid) => {
                        // The parent, or the image a merge wrote in its place.
                        let found = crate::set::standing_for(pid, &images);
                        Some(found.cloned().ok_or_else(|| Error::BrokenChain {
                            path: set.dir.clone(),
                            image: id.to_string(),
                            why: format!(
                                "the unfinished run's parent {pid} is no longer in the set; it cannot be resumed \
                                 (remove its files with `tintype prune {} --discard-unfinished` and take a new image)",
                                set.dir.display()
                            ),
                        })?)
                    }
                };
                if let Some(p) = &parent {
                    check_same_source(p, src, opts.force)?;
                    set.chain(p)?;
                }
                if !runs.is_empty() {
                    obs.note(&format!("{} older unfinished run(s) of this source are left as they are", runs.len()));
                }
                return Ok(Start {
                    id,
                    kind: run.kind,
                    parent,
                    chunk_bytes: run.chunk_size_bytes,
                    // Every frame says how it is stored: the rest may use another level.
                    level: opts.level,
                    resumed: Some(run),
                });
            }
        } else {
            obs.note("--resume: no unfinished run of this source in the set; starting a new image");
        }
    }
    // Images a merge has already replaced are on their way out: never a parent.
    let live: Vec<&Image> = images.iter().filter(|i| crate::set::replaced_by(i, &images).is_none()).collect();
    let parent = match kind {
        ImageKind::Full => None,
        ImageKind::Incremental => Some(live.last().copied().ok_or_else(|| no_parent(set, "image"))?),
        ImageKind::Differential => Some(
            live.iter()
                .rev()
                .find(|i| i.manifest.kind == ImageKind::Full)
                .copied()
                .ok_or_else(|| no_parent(set, "full image"))?,
        ),
    };
    let mut chunk_bytes = chunk_default;
    if let Some(p) = parent {
        check_same_source(p, src, opts.force)?;
        // The whole chain must be there for the new image to be usable.
        set.chain(p)?;
        if let Some(cs) = chunk_given.filter(|&cs| cs != p.manifest.chunk_size_bytes) {
            return Err(Error::InvalidSetting(format!(
                "--chunk-size {cs}: the parent image {} uses {}-byte chunks, and {} image must use the same",
                p.id(),
                p.manifest.chunk_size_bytes,
                kind.a()
            )));
        }
        chunk_bytes = p.manifest.chunk_size_bytes;
    }
    let id = match opts.image_id {
        Some(id) if committed.contains(&id) || partial.contains(&id) => {
            return Err(Error::InvalidSetting(format!("image {id} already exists in {}", set.dir.display())))
        }
        Some(id) => id,
        None => loop {
            let id = ImageId::generate();
            if !committed.contains(&id) && !partial.contains(&id) {
                break id;
            }
        },
    };
    Ok(Start { id, kind, parent: parent.cloned(), chunk_bytes, level: opts.level, resumed: None })
}

/// What became of the source since an unfinished run started.
enum SourceSince {
    Unchanged,
    /// Written (through this kernel): why we know.
    Written(String),
    /// The machine restarted: its block devices' write counters started over.
    Restarted,
}

fn source_since(run: &RunRecord, src: &SourceInfo) -> SourceSince {
    let (Some(was), Some(now)) = (&run.source_written, crate::io::device::write_stamp(Path::new(&src.path))) else {
        return SourceSince::Unchanged;
    };
    if was.racy {
        SourceSince::Written(format!(
            "the source's filesystem keeps whole seconds and it was changed in the second the run started, so a \
             later write cannot be told from none ({})",
            was.stamp
        ))
    } else if was.stamp == now.stamp && was.boot == now.boot {
        SourceSince::Unchanged
    } else if was.boot != now.boot {
        SourceSince::Restarted
    } else {
        SourceSince::Written(format!("{} then, {} now", was.stamp, now.stamp))
    }
}

fn check_same_identity(a: &SourceInfo, b: &SourceInfo) -> bool {
    a.kind == b.kind && STABLE_IDENTITY.iter().all(|k| a.identity.get(*k) == b.identity.get(*k))
}

fn no_parent(set: &ImageSet, what: &str) -> Error {
    Error::NotCommitted {
        path: set.dir.clone(),
        why: format!("the set holds no {what} to take changes against; take a full image first"),
    }
}

/// What an interrupted run left that a resumed one keeps.
struct Salvage {
    segments: Vec<SegmentInfo>,
    /// Per chunk: the entry it already has (a kept frame, or a zero or
    /// inherited entry from the old index).
    preset: Vec<Option<IndexEntry>>,
    kept: u64,
}

/// Scan the segments of the unfinished image `id`: keep every complete,
/// hash-valid frame (a torn or damaged one ends its segment, which is
/// truncated there), and the old index's zero and inherited entries that
/// are exactly what this run would write.
fn salvage(
    dir: &Path,
    id: ImageId,
    chunk_bytes: u32,
    size: u64,
    parent: Option<(&[u128], ImageId)>,
) -> Result<Salvage> {
    let chunk_count = size.div_ceil(u64::from(chunk_bytes));
    let extent = |c: u64| (u64::from(chunk_bytes)).min(size - c * u64::from(chunk_bytes)) as u32;
    let mut preset: Vec<Option<IndexEntry>> = vec![None; chunk_count as usize];
    let mut segments = Vec::new();
    let mut kept = 0;
    // Segment numbers are handed out densely; keep the dense prefix.
    let mut seq = 0u32;
    loop {
        let path = dir.join(segment_file_name(id, seq));
        let f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io("open segment", &path, e)),
        };
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
        let head_ok = f.read_exact_at(&mut head, 0).is_ok()
            && SegmentHeader::decode(&head)
                .is_ok_and(|h| h.image_id == id && h.seq == seq && h.chunk_bytes == chunk_bytes);
        let lane = if head_ok { SegmentHeader::decode(&head).map_or(0, |h| h.lane) } else { 0 };
        if !head_ok {
            SegmentHeader { image_id: id, lane: 0, seq, chunk_bytes }.encode(&mut head);
            f.set_len(0)
                .and_then(|()| f.write_all_at(&head, 0))
                .map_err(|e| Error::io("rewrite segment header", &path, e))?;
        }
        let mut hasher = Xxh3Default::new();
        hasher.update(&head);
        let mut at = SEGMENT_HEADER_BYTES as u64;
        let mut frames = 0;
        let mut buf = Vec::new();
        let mut fh = [0u8; FRAME_HEADER_BYTES];
        while head_ok && at + FRAME_HEADER_BYTES as u64 <= len {
            if f.read_exact_at(&mut fh, at).is_err() {
                break;
            }
            let Ok(h) = FrameHeader::decode(&fh) else { break };
            let flen = frame_len(h.stored_len);
            if h.image_id != id
                || h.chunk >= chunk_count
                || h.raw_len != extent(h.chunk)
                || preset[h.chunk as usize].is_some()
                || at + flen > len
            {
                break;
            }
            buf.resize(flen as usize, 0);
            if f.read_exact_at(&mut buf, at).is_err() {
                break;
            }
            let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.stored_len as usize];
            if xxhash_rust::xxh3::xxh3_64(payload) != h.stored_hash
                || buf[FRAME_HEADER_BYTES + h.stored_len as usize..].iter().any(|&b| b != 0)
            {
                break;
            }
            hasher.update(&buf);
            preset[h.chunk as usize] = Some(IndexEntry {
                state: ChunkState::Stored,
                segment: seq,
                offset: at,
                stored_len: h.stored_len,
                raw_len: h.raw_len,
                raw_hash: h.raw_hash,
                image_id: id,
            });
            frames += 1;
            at += flen;
        }
        if at < len || !head_ok {
            f.set_len(at).map_err(|e| Error::io("truncate segment", &path, e))?;
        }
        f.sync_all().map_err(|e| Error::io("fsync segment", &path, e))?;
        kept += frames;
        segments.push(SegmentInfo {
            file: segment_file_name(id, seq),
            lane,
            seq,
            size_bytes: at,
            frames,
            xxh3_64: format!("{:016x}", hasher.digest()),
        });
        seq += 1;
    }
    // Segments past a gap in the numbers cannot be listed densely: drop them.
    if let Ok(rd) = std::fs::read_dir(dir) {
        let prefix = format!("{id}.");
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".seg")).and_then(|n| n.parse::<u32>().ok());
            if n.is_some_and(|n| n >= seq) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io("remove", e.path(), err))?;
            }
        }
    }
    // Zero and inherited entries have no frame to find; the old index's are
    // kept when they are exactly what this run would have written.
    let index_path = dir.join(index_file_name(id));
    if let Ok(old) = std::fs::read(&index_path) {
        let mut zero_hashes = ZeroHashes::default();
        for (chunk, slot) in preset.iter_mut().enumerate() {
            let at = entry_offset(chunk as u64) as usize;
            let (Some(b), None) = (old.get(at..at + INDEX_ENTRY_BYTES), &slot) else { continue };
            let Ok(e) = IndexEntry::decode(b) else { continue };
            let raw_len = extent(chunk as u64);
            let plain = e.raw_len == raw_len && e.segment == 0 && e.offset == 0 && e.stored_len == 0;
            let ok = match e.state {
                ChunkState::Zero => plain && e.image_id == ImageId(0) && e.raw_hash == zero_hashes.get(raw_len),
                ChunkState::Inherited => parent.is_some_and(|(hashes, pid)| {
                    plain && e.image_id == pid && e.raw_hash != 0 && hashes[chunk] == e.raw_hash
                }),
                _ => false,
            };
            if ok {
                *slot = Some(e);
            }
        }
    }
    Ok(Salvage { segments, preset, kept })
}

/// Image `opts.source` into the set `opts.set`.
pub fn create(opts: &CreateOptions, obs: &dyn Observer) -> Result<CreateReport> {
    validate(opts)?;
    let (backend, why) = io::select(&opts.io)?;
    if let Some(why) = why {
        obs.note(&why);
    }
    let source = Source::open(&opts.source, true)?;
    if !source.direct {
        obs.note(&format!(
            "{}: the filesystem refuses O_DIRECT; reading through the page cache",
            source.path.display()
        ));
    }
    if source.size_bytes == 0 {
        return Err(Error::Unusable { path: source.path.clone(), why: "the source is empty (0 bytes)".into() });
    }
    let set = ImageSet::create_or_open(&opts.set)?;
    let lock = lock_set(&set.dir, Access::Add, &format!("create {}", opts.source.display()))?;
    if let Some(stale) = &lock.stale {
        obs.note(&format!("took over the set's lock from a run that did not finish ({stale})"));
    }
    let src = source_info(&source);
    let _frozen = check_mounts(&source, opts.freeze, obs)?;
    let st = start(opts, &set, &src, obs)?;
    if let Some(p) = &st.parent {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        if now < p.manifest.point_in_time() {
            obs.note(&format!(
                "the clock ({}) is earlier than the parent image {}'s time ({}): one of them is wrong; the new image \
                 still counts as newer than its parent",
                rfc3339_utc((now / 1_000_000_000) as u64),
                p.id(),
                p.manifest.created
            ));
        }
    }
    let mut o = opts.clone();
    o.chunk_size_bytes = st.chunk_bytes;
    o.level = st.level;
    if o.lanes.is_none() && st.parent.is_some() {
        // An incremental mostly reads and hashes (xxh3, ~10 GB/s a core):
        // half the cores keep up with the device and leave the rest to the
        // kernel's side of the reads (a loop device copies on the CPU).
        o.lanes = Some(available_cores().div_ceil(2));
    }
    let lanes = validate(&o)?;
    if u64::from(st.chunk_bytes) % u64::from(source.dio_align_bytes) != 0 {
        return Err(Error::InvalidSetting(format!(
            "--chunk-size {} is not a multiple of the source's direct I/O alignment {}",
            st.chunk_bytes, source.dio_align_bytes
        )));
    }
    let id = st.id;
    let parent_hashes = match &st.parent {
        Some(p) => Some(chunk_hashes(p)?),
        None => None,
    };
    let parent_id = st.parent.as_ref().map(|p| p.id());
    let chunk_count = source.size_bytes.div_ceil(u64::from(st.chunk_bytes));
    let index_path = set.dir.join(index_file_name(id));
    // From here on the run has files; on failure they are kept for --resume
    // once frames exist, and removed otherwise.
    // A run that wrote frames keeps them for `--resume`; one that wrote
    // nothing worth resuming is removed (armed below).
    let mut unfinished = Leftovers { dir: &set.dir, id, armed: st.resumed.is_none() };
    let badmap = set.dir.join(format!("{id}.badmap"));
    let journal = set.dir.join(format!("{id}.unreadable"));
    let mut unreadable_kept: Vec<(u64, u64)> = Vec::new();
    // Whether the source is written while it is read (it is refused when a
    // filesystem on it is mounted read-write, but a program can write a file
    // or a device directly) is told from the same stamps --resume uses,
    // taken once before the reads (a new run records it) and once after.
    let stamp_at_start = crate::io::device::write_stamp(&source.path);
    let mut salvaged = match &st.resumed {
        Some(_) => {
            let mut s =
                salvage(&set.dir, id, st.chunk_bytes, source.size_bytes, parent_hashes.as_deref().zip(parent_id))?;
            unreadable_kept =
                keep_unreadable(&journal, &mut s.preset, st.chunk_bytes, source.size_bytes, opts.skip_unreadable, obs)?;
            let known = s.preset.iter().filter(|e| e.is_some()).count();
            obs.note(&format!(
                "resuming image {id}: {} frame(s) in {} segment(s) kept, {known} of {chunk_count} chunks already done",
                s.kept,
                s.segments.len()
            ));
            Some(s)
        }
        None => {
            RunRecord {
                format: "tintype-run".into(),
                format_version: 1,
                image_id: id.to_string(),
                operation: "create".into(),
                kind: st.kind,
                parent: parent_id.map(|p| p.to_string()),
                source: src.clone(),
                chunk_size_bytes: st.chunk_bytes,
                level: st.level,
                started_unix_seconds: unix_now(),
                source_written: stamp_at_start.clone(),
            }
            .write_new(&set.dir)?;
            None
        }
    };
    let index = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&index_path)
        .map_err(|e| Error::io("create index", &index_path, e))?;
    // A fresh index: zeros (state "unset"), then what a resumed run keeps.
    index
        .set_len(0)
        .and_then(|()| index.set_len(entry_offset(chunk_count)))
        .map_err(|e| Error::io("size index", &index_path, e))?;
    let mut preset: Vec<Option<IndexEntry>> =
        salvaged.as_mut().map(|s| std::mem::take(&mut s.preset)).unwrap_or_default();
    let layout = used_space(opts.used_only, &source, st.chunk_bytes, &mut preset, obs)?;
    let preset = &preset;
    write_preset(&index, &index_path, preset)?;

    // Batches of up to 64 MiB keep each lane's reads sequential; a small
    // source gets smaller batches so every lane has a share.
    let batch_chunks =
        (chunk_count / (u64::from(lanes) * 8)).clamp(1, (BATCH_BYTES / u64::from(st.chunk_bytes)).max(1));
    let first_segment = salvaged.as_ref().map_or(0, |s| s.segments.len() as u32);
    let stop = AtomicBool::new(false);
    let unreadable = std::sync::Mutex::new((unreadable_kept, None));
    let sh = CaptureShared {
        image_id: id,
        dir: &set.dir,
        source: &source,
        chunk_bytes: st.chunk_bytes,
        queue_depth: opts.queue_depth,
        segment_size_bytes: opts.segment_size_bytes,
        staging_bytes: staging_bytes(st.chunk_bytes, opts.staging_bytes),
        level: st.level,
        backend: backend.clone(),
        plan: Plan::new(chunk_count, batch_chunks),
        index: &index,
        index_path: &index_path,
        stop: &stop,
        bytes_done: AtomicU64::new(0),
        next_segment: AtomicU32::new(first_segment),
        parent: parent_hashes.as_deref().zip(parent_id),
        preset,
        skip_unreadable: opts.skip_unreadable,
        read_retries: opts.read_retries.min(100),
        unreadable: &unreadable,
        journal: &journal,
    };
    let started = Instant::now();
    let reports = match run_lanes(&sh, lanes, obs) {
        Ok(r) => r,
        Err(e) => {
            let wrote = sh.next_segment.load(Ordering::Relaxed) > 0;
            unfinished.armed &= !wrote;
            let kept = format!(
                "the unfinished image {id}'s files are kept in {}: run the same command with --resume to carry on \
                 where it stopped",
                set.dir.display()
            );
            return Err(match e {
                Error::Interrupted(_) if super::interrupted() && wrote => {
                    Error::Interrupted(format!("no image was committed; {kept}"))
                }
                Error::Interrupted(_) if super::interrupted() => Error::Interrupted(format!(
                    "no image was committed; the unfinished image {id} had written nothing and was removed"
                )),
                e => {
                    if wrote {
                        obs.note(&kept);
                    }
                    e
                }
            });
        }
    };
    let wall = started.elapsed();
    super::test_pause("create-read-all");
    if let (Some(was), Some(now)) = (&stamp_at_start, crate::io::device::write_stamp(&source.path)) {
        if was.boot == now.boot && was.stamp != now.stamp {
            obs.note(&format!(
                "the source was written while it was being imaged ({} then, {} now): the image may mix older and \
                 newer contents; for one consistent point in time image it unmounted, frozen (--freeze), or from a \
                 snapshot",
                was.stamp, now.stamp
            ));
        }
    }
    // Every chunk is in the segments now: whatever fails before the commit
    // (a full disk under the index, map or manifest) keeps them for --resume.
    unfinished.armed = false;
    let keep = |e: Error| {
        obs.note(&format!(
            "every chunk was imaged but the image could not be committed; the unfinished image {id}'s files are \
             kept in {}: once the cause is fixed, run the same command with --resume to commit it",
            set.dir.display()
        ));
        e
    };

    let mut segments: Vec<_> = salvaged.map(|s| s.segments).unwrap_or_default();
    segments.extend(reports.iter().flat_map(|r| r.segments.iter().cloned()));
    segments.sort_by_key(|s| s.seq);
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.seq as usize, i, "segment numbers are dense");
    }
    let stats = sum_stats(reports.iter().map(|r| &r.stats));
    let mut unreadable = unreadable.into_inner().unwrap_or_else(|p| p.into_inner()).0;
    unreadable.sort_unstable();
    // Adjacent pieces (one per chunk) become one range.
    unreadable = unreadable.into_iter().fold(Vec::new(), |mut v: Vec<(u64, u64)>, (o, l)| {
        match v.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => v.push((o, l)),
        }
        v
    });
    if !unreadable.is_empty() {
        write_badmap(&badmap, &unreadable, source.size_bytes).map_err(keep)?;
    }
    let mut latency = super::lane::latency_histogram();
    for r in &reports {
        let _ = latency.add(&r.read_latency_us);
    }
    assert_eq!(stats.chunks, chunk_count, "every chunk was processed exactly once");
    if !reports.iter().all(|r| r.segments_direct) {
        obs.note("the destination filesystem refuses O_DIRECT; segments were written through the page cache");
    }
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }

    let mut head = [0u8; INDEX_HEADER_BYTES];
    IndexHeader {
        chunk_bytes: st.chunk_bytes,
        image_id: id,
        chunk_count,
        source_bytes: source.size_bytes,
        parent: parent_id,
    }
    .encode(&mut head);
    index
        .write_all_at(&head, 0)
        .and_then(|()| index.sync_all())
        .map_err(|e| Error::io("write index", &index_path, e))
        .map_err(keep)?;

    let now_nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let now = (now_nanos / 1_000_000_000) as u64;
    let mut mstats = manifest_stats(&stats, wall, &latency);
    mstats.bytes_segments = segments.iter().map(|s| s.size_bytes).sum();
    mstats.chunks_stored = segments.iter().map(|s| s.frames).sum();
    // The counts by state come from the index, so the frames and entries a
    // resumed run kept are counted as well as this run's.
    let index_hash = index_hash_and_counts(&index_path, &mut mstats).map_err(keep)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        format_version: u32::from(FORMAT_VERSION),
        image_id: id.to_string(),
        kind: st.kind,
        parent: parent_id.map(|p| p.to_string()),
        created_unix_seconds: now,
        created_unix_nanos: Some(now_nanos as u64),
        created: rfc3339_utc(now),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: src,
        chunk_size_bytes: st.chunk_bytes,
        chunk_count,
        codec: "zstd".into(),
        level: st.level,
        frame_align_bytes: crate::format::FRAME_ALIGN_BYTES as u32,
        settings: Settings {
            lanes,
            queue_depth: opts.queue_depth,
            segment_size_bytes: opts.segment_size_bytes,
            batch_chunks: batch_chunks as u32,
            io_backend: backend.name().into(),
            source_direct_io: source.direct,
            profile: opts.profile.clone(),
        },
        stats: mstats,
        segments,
        index: IndexInfo {
            file: index_file_name(id),
            size_bytes: entry_offset(chunk_count),
            xxh3_128: format!("{index_hash:032x}"),
        },
        replaces: Vec::new(),
        layout,
        unreadable: unreadable
            .iter()
            .map(|&(offset, length)| crate::format::manifest::ByteRange { offset, length })
            .collect(),
    };
    crate::set::sync_dir(&set.dir).map_err(keep)?;
    // A signal that came while the index and segments were made durable
    // is still honoured: no commit, the frames kept for --resume.
    super::test_pause("create-commit");
    if super::interrupted() {
        return Err(Error::Interrupted(format!(
            "no image was committed (the signal came while it was being made durable); the unfinished image {id}'s \
             files are kept in {}: run the same command with --resume to commit it",
            set.dir.display()
        )));
    }
    // (Only the directory's fsync failing leaves the manifest named: then
    // the image exists, and the error alone says what failed.)
    let manifest_path = unfinished.commit(&manifest).map_err(|e| {
        if set.dir.join(crate::format::manifest::manifest_file_name(id)).exists() {
            e
        } else {
            keep(e)
        }
    })?;
    // The run record has done its job; a leftover one is harmless.
    let _ = std::fs::remove_file(set.dir.join(run_file_name(id)));
    let _ = std::fs::remove_file(&journal);
    drop(lock);
    Ok(CreateReport { manifest, manifest_path })
}

/// Used-space imaging: read the partition table and the filesystems, and
/// mark every chunk no filesystem uses as unused in `preset` (where a
/// resumed run does not already know the chunk). Says per partition what
/// was found and what is imaged whole.
fn used_space(
    mode: UsedOnly,
    source: &Source,
    chunk_bytes: u32,
    preset: &mut Vec<Option<IndexEntry>>,
    obs: &dyn Observer,
) -> Result<Option<crate::format::manifest::LayoutInfo>> {
    if mode == UsedOnly::Off {
        return Ok(None);
    }
    let meta = std::fs::File::open(&source.path).map_err(|e| Error::io("open for metadata", &source.path, e))?;
    if source.kind == crate::io::device::SourceKind::BlockDevice {
        // A mounted filesystem (frozen for this run) writes its metadata
        // past the block device's page cache: drop what is cached, so the
        // maps are read from the device. BLKFLSBUF = _IO(0x12, 97).
        // SAFETY: BLKFLSBUF takes no argument; `meta` is an open descriptor.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&meta), 0x1261 as _, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) {
                return Err(Error::io("flush the buffer cache (BLKFLSBUF) of", &source.path, e));
            }
            // Unprivileged (BLKFLSBUF needs CAP_SYS_ADMIN): such a user
            // cannot mount or freeze the device either, so what is cached
            // is what is on it.
            obs.note("the device's buffer cache was not flushed (BLKFLSBUF needs CAP_SYS_ADMIN); imaging on");
        }
    }
    let layout = crate::fs::analyze(&meta, &meta, source.size_bytes, source.logical_sector_bytes);
    for n in &layout.notes {
        obs.note(n);
    }
    let mapped = layout.partitions.iter().filter(|p| p.used_bytes.is_some()).count();
    for p in &layout.partitions {
        let whole = match source.kind {
            crate::io::device::SourceKind::File => "the source",
            _ => "the device",
        };
        let what = if p.number == 0 { whole.to_string() } else { format!("partition {}", p.number) };
        match (&p.used_bytes, &p.note) {
            (Some(u), _) => obs.note(&format!(
                "{what}: {} uses {} of {}; only chunks holding used blocks are read",
                p.filesystem,
                crate::sample::human_bytes(*u),
                crate::sample::human_bytes(p.size_bytes)
            )),
            (None, Some(why)) => obs.note(&format!("{what} ({}): {why}", crate::sample::human_bytes(p.size_bytes))),
            (None, None) => {}
        }
    }
    if mode == UsedOnly::On && mapped == 0 {
        return Err(Error::Unusable {
            path: source.path.clone(),
            why: "--used-only on: no filesystem on the source could be mapped (see the notes above); use --used-only \
                  auto or off to image it whole"
                .into(),
        });
    }
    let unused = layout.free.unused_chunks(source.size_bytes, u64::from(chunk_bytes));
    let chunk_count = unused.len();
    preset.resize(chunk_count, None);
    let mut bytes_unused = 0;
    for (c, slot) in preset.iter_mut().enumerate() {
        if unused[c] && slot.is_none() {
            let raw_len = u64::from(chunk_bytes).min(source.size_bytes - c as u64 * u64::from(chunk_bytes)) as u32;
            bytes_unused += u64::from(raw_len);
            *slot = Some(IndexEntry {
                state: ChunkState::Unused,
                segment: 0,
                offset: 0,
                stored_len: 0,
                raw_len,
                raw_hash: 0,
                image_id: ImageId(0),
            });
        }
    }
    Ok(Some(crate::format::manifest::LayoutInfo {
        table: layout.table,
        used_only: if mode == UsedOnly::On { "on" } else { "auto" }.into(),
        partitions: layout.partitions,
        bytes_unused,
        notes: layout.notes,
    }))
}

/// Filesystems of the source frozen for the run; thawed on drop (errors,
/// panics and signals included).
struct Frozen(Vec<(std::fs::File, String)>);

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

impl Drop for Frozen {
    fn drop(&mut self) {
        for (dir, at) in &self.0 {
            let mut arg: libc::c_int = 0;
            // SAFETY: FITHAW takes a pointer to an int it ignores; `dir` is
            // an open directory descriptor and `arg` outlives the call.
            let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(dir), FITHAW as _, &mut arg) };
            if r != 0 {
                eprintln!(
                    "tintype: error: could not thaw {at}: {}; run `fsfreeze -u {at}`",
                    std::io::Error::last_os_error()
                );
            } else {
                eprintln!("tintype: thawed {at}");
            }
        }
    }
}

/// The loop devices whose backing file is `path` (same device and inode).
pub(crate) fn loops_backed_by(path: &Path) -> Vec<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata(path) else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let sys = e.path();
        let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) else { continue };
        let same = std::fs::metadata(backing.trim()).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino());
        let dev = std::fs::read_to_string(sys.join("dev")).ok().and_then(|d| {
            let (a, b) = d.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        });
        if let (true, Some(d)) = (same, dev) {
            out.push(d);
        }
    }
    out
}

/// A filesystem of the source mounted read-write changes while it is read:
/// refuse, or with `freeze` freeze it for the run. Read-only mounts are fine.
fn check_mounts(source: &Source, freeze: bool, obs: &dyn Observer) -> Result<Frozen> {
    let mut frozen = Frozen(Vec::new());
    // Where such a filesystem may be mounted from: the device (and, for a
    // loop device, every other loop device over its backing file), or for
    // a file every loop device over it.
    let devices: Vec<(u32, u32)> = match source
        .identity
        .get("device_number")
        .and_then(|d| d.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
    {
        Some(d) => {
            let mut v = vec![d];
            if let Some(backing) = source.identity.get("loop_backing_file") {
                v.extend(loops_backed_by(Path::new(backing)).into_iter().filter(|l| *l != d));
            }
            v
        }
        None => loops_backed_by(&source.path),
    };
    let mut rw: Vec<String> = Vec::new();
    for d in devices {
        for (at, writable) in crate::io::target::mounts_of(d) {
            if writable && !rw.contains(&at) {
                rw.push(at);
            }
        }
    }
    if rw.is_empty() {
        return Ok(frozen);
    }
    if !freeze {
        return Err(Error::Unusable {
            path: source.path.clone(),
            why: format!(
                "it (or a partition of it) is mounted read-write at {}. A filesystem in use changes while it is read, \
                 so the image would mix moments: files half-written, metadata that disagrees with the data. Unmount \
                 it, or image a snapshot (LVM: lvcreate --snapshot; device-mapper), or pass --freeze to freeze it \
                 (FIFREEZE) for the duration of the run: writers to it block until the run ends. Mounted read-only \
                 is fine.",
                rw.join(", ")
            ),
        });
    }
    for at in rw {
        let dir = std::fs::File::open(&at).map_err(|e| Error::io("open mount point", &at, e))?;
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE takes a pointer to an int it ignores; `dir` is an
        // open directory descriptor and `arg` outlives the call.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), FIFREEZE as _, &mut arg) };
        if r != 0 {
            return Err(Error::io("freeze (FIFREEZE)", &at, std::io::Error::last_os_error()));
        }
        obs.note(&format!("froze {at} for the run; it is thawed when the run ends"));
        frozen.0.push((dir, at));
    }
    Ok(frozen)
}

/// A ddrescue-style map of the source: `+` read, `-` unreadable. Replaces
/// the run's earlier map atomically (temporary file, fsync, rename).
pub(crate) fn write_badmap(path: &Path, bad: &[(u64, u64)], size: u64) -> Result<()> {
    use std::io::Write;
    let mut s = String::from("# Mapfile. Created by tintype: the source ranges it could not read\n");
    s += &format!("0x{size:08X}     +\n");
    let mut at = 0;
    for &(o, l) in bad {
        if o > at {
            s += &format!("0x{at:08X}  0x{:08X}  +\n", o - at);
        }
        s += &format!("0x{o:08X}  0x{l:08X}  -\n");
        at = o + l;
    }
    if at < size {
        s += &format!("0x{at:08X}  0x{:08X}  +\n", size - at);
    }
    let tmp = path.with_extension("badmap.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(s.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
    crate::set::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Append `bad` to the run's journal of unreadable ranges (`ID.unreadable`:
/// one "OFFSET LENGTH" line each, decimal) and sync it, opening it on first
/// use. One append and one fdatasync per chunk with bad sectors.
pub(crate) fn journal_unreadable(file: &mut Option<std::fs::File>, path: &Path, bad: &[(u64, u64)]) -> Result<()> {
    use std::io::Write;
    if file.is_none() {
        let f = OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::io("create", path, e))?;
        crate::set::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        *file = Some(f);
    }
    let f = file.as_mut().expect("opened above");
    let lines: String = bad.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| Error::io("write", path, e))
}

/// Resuming: the unreadable ranges an interrupted run found in the chunks
/// whose entries it keeps (their frames hold zeros there). The journal is
/// synced before any such chunk's frame or entry is written, so a chunk
/// missing from it read whole. The journal is rewritten with only the
/// ranges of kept chunks. Without `--on-read-error skip` those chunks are
/// then read again instead (so the run fails as asked). A journal that
/// cannot be read is refused: the kept frames cannot be told apart.
fn keep_unreadable(
    journal: &Path,
    preset: &mut [Option<IndexEntry>],
    chunk_bytes: u32,
    size: u64,
    skip: bool,
    obs: &dyn Observer,
) -> Result<Vec<(u64, u64)>> {
    let refuse = |why: String| Error::Unusable {
        path: journal.to_path_buf(),
        why: format!(
            "{why}: the unfinished run's kept frames may hold unreadable sectors as zeros, and which cannot be \
             told; remove the run's files (tintype prune SET --keep-last N --discard-unfinished) and image again"
        ),
    };
    match journal.try_exists() {
        Ok(false) => return Ok(Vec::new()),
        Ok(true) => {}
        Err(e) => return Err(refuse(format!("cannot be checked ({e})"))),
    }
    let text = std::fs::read_to_string(journal).map_err(|e| refuse(format!("cannot be read ({e})")))?;
    // A torn last line (no newline) was never synced whole: its chunk's
    // frame was not written yet either.
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut all = Vec::new();
    for line in whole.lines() {
        let mut f = line.split(' ');
        match (f.next().and_then(|o| o.parse::<u64>().ok()), f.next().and_then(|l| l.parse::<u64>().ok()), f.next()) {
            (Some(o), Some(l), None) => all.push((o, l)),
            _ => return Err(refuse(format!("has a line that is not \"OFFSET LENGTH\": {line:?}"))),
        }
    }
    let cb = u64::from(chunk_bytes);
    // Per chunk: the pieces in chunks that keep their entries.
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for (o, l) in all {
        let end = o.saturating_add(l).min(size);
        let mut at = o;
        while at < end {
            let piece_end = end.min((at / cb + 1) * cb);
            if preset.get((at / cb) as usize).is_some_and(|e| e.is_some()) {
                kept.push((at, piece_end - at));
            }
            at = piece_end;
        }
    }
    kept.sort_unstable();
    kept.dedup();
    // Rewrite the journal with only what is kept (atomically).
    let tmp = journal.with_extension("unreadable.tmp");
    let lines: String = kept.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(lines.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io("write", &tmp, e))?;
    }
    std::fs::rename(&tmp, journal).map_err(|e| Error::io("rename", &tmp, e))?;
    crate::set::sync_dir(journal.parent().unwrap_or(Path::new(".")))?;
    // The journal keeps them either way: those frames stay in the segments,
    // and a later resume may keep them again.
    if !skip && !kept.is_empty() {
        obs.note(&format!(
            "the unfinished run skipped unreadable sectors in {} kept chunk(s); without --on-read-error skip they are \
             read again",
            kept.iter().map(|r| r.0 / cb).collect::<std::collections::BTreeSet<_>>().len()
        ));
        for &(o, _) in &kept {
            preset[(o / cb) as usize] = None;
        }
        kept.clear();
    }
    Ok(kept)
}

/// Write the entries a resumed run already has, in runs of consecutive chunks.
fn write_preset(index: &std::fs::File, path: &Path, preset: &[Option<IndexEntry>]) -> Result<()> {
    let mut chunk = 0;
    while chunk < preset.len() {
        if preset[chunk].is_none() {
            chunk += 1;
            continue;
        }
        let first = chunk;
        let mut bytes = Vec::new();
        while let Some(Some(e)) = preset.get(chunk) {
            let at = bytes.len();
            bytes.resize(at + INDEX_ENTRY_BYTES, 0);
            e.encode(&mut bytes[at..]);
            chunk += 1;
        }
        let at = entry_offset(first as u64);
        index.write_all_at(&bytes, at).map_err(|e| Error::io_at("write index", path, at, e))?;
    }
    Ok(())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Run `lanes` capture lanes, each pinned to a core, reporting progress
/// from this thread until they finish.
fn run_lanes(sh: &CaptureShared<'_>, lanes: u32, obs: &dyn Observer) -> Result<Vec<LaneReport>> {
    // Lanes set up (rings, buffers) first and start claiming together, so a
    // quick first lane does not take a small source's every batch.
    let start = std::sync::Barrier::new(lanes as usize);
    let total = sh.source.size_bytes;
    super::run_lanes(
        lanes,
        "tintype-lane",
        true,
        sh.stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), total),
        |lane| {
            let lane = CaptureLane::new(sh, lane);
            start.wait();
            lane.and_then(|l| l.run())
        },
    )
}

fn sum_stats<'a>(all: impl Iterator<Item = &'a LaneStats>) -> LaneStats {
    let mut t = LaneStats::default();
    for s in all {
        t.chunks += s.chunks;
        t.bytes_read += s.bytes_read;
        t.chunks_stored += s.chunks_stored;
        t.chunks_zero += s.chunks_zero;
        t.chunks_stored_raw += s.chunks_stored_raw;
        t.bytes_stored_payload += s.bytes_stored_payload;
        t.bytes_stored_raw += s.bytes_stored_raw;
        t.bytes_segments += s.bytes_segments;
        t.nanos_io_wait += s.nanos_io_wait;
        t.nanos_zero_check += s.nanos_zero_check;
        t.nanos_hash += s.nanos_hash;
        t.nanos_compress += s.nanos_compress;
        t.nanos_cpu += s.nanos_cpu;
        t.chunks_inherited += s.chunks_inherited;
        t.chunks_resumed += s.chunks_resumed;
        t.chunks_unused += s.chunks_unused;
    }
    t
}

fn manifest_stats(s: &LaneStats, wall: Duration, latency: &hdrhistogram::Histogram<u64>) -> Stats {
    let mut read_latency_us = BTreeMap::new();
    if !latency.is_empty() {
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            read_latency_us.insert(name.to_string(), latency.value_at_quantile(q));
        }
        read_latency_us.insert("max".to_string(), latency.max());
        read_latency_us.insert("count".to_string(), latency.len());
    }
    let secs = |n: u64| n as f64 / 1e9;
    let mut stage = BTreeMap::new();
    stage.insert("io_wait".to_string(), secs(s.nanos_io_wait));
    stage.insert("zero_check".to_string(), secs(s.nanos_zero_check));
    stage.insert("hash".to_string(), secs(s.nanos_hash));
    stage.insert("compress".to_string(), secs(s.nanos_compress));
    Stats {
        bytes_read: s.bytes_read,
        chunks_stored: s.chunks_stored,
        chunks_zero: s.chunks_zero,
        chunks_stored_raw: s.chunks_stored_raw,
        bytes_stored_raw: s.bytes_stored_raw,
        bytes_stored_payload: s.bytes_stored_payload,
        bytes_segments: s.bytes_segments,
        wall_seconds: wall.as_secs_f64(),
        cpu_seconds: secs(s.nanos_cpu),
        stage_seconds: stage,
        read_latency_us,
        chunks_inherited: s.chunks_inherited,
        chunks_resumed: s.chunks_resumed,
        chunks_copied: 0,
        chunks_unused: s.chunks_unused,
        chunks_unreadable: 0,
    }
}

/// The xxh3-128 of the index at `path`, and the per-state chunk counts of
/// `stats` taken from it, in one streaming pass (an index grows with the
/// source: it is never held whole).
fn index_hash_and_counts(path: &Path, stats: &mut crate::format::manifest::Stats) -> Result<u128> {
    use crate::format::index::INDEX_ENTRY_BYTES;
    let (mut zero, mut unused, mut inherited, mut unreadable) = (0, 0, 0, 0);
    let (mut raw, mut raw_bytes, mut payload) = (0, 0, 0);
    let mut tally = |n: u64, b: &[u8]| -> Result<()> {
        let e = IndexEntry::decode(b).map_err(|why| Error::corrupt(path, entry_offset(n), why))?;
        match e.state {
            ChunkState::Stored => {
                payload += u64::from(e.stored_len);
                if e.stored_len == e.raw_len {
                    raw += 1;
                    raw_bytes += u64::from(e.stored_len);
                }
            }
            ChunkState::Zero => zero += 1,
            ChunkState::Unused => unused += 1,
            ChunkState::Inherited => inherited += 1,
            ChunkState::Unreadable => unreadable += 1,
            ChunkState::Unset => {}
        }
        Ok(())
    };
    // Reads end anywhere: an entry split between two is completed in `carry`.
    let (mut header_left, mut entry, mut carry) = (INDEX_HEADER_BYTES, 0u64, Vec::with_capacity(INDEX_ENTRY_BYTES));
    let hash = stream_file(path, |mut b| {
        let skip = header_left.min(b.len());
        header_left -= skip;
        b = &b[skip..];
        if !carry.is_empty() {
            let take = (INDEX_ENTRY_BYTES - carry.len()).min(b.len());
            carry.extend_from_slice(&b[..take]);
            b = &b[take..];
            if carry.len() == INDEX_ENTRY_BYTES {
                tally(entry, &carry)?;
                entry += 1;
                carry.clear();
            }
        }
        let mut whole = b.chunks_exact(INDEX_ENTRY_BYTES);
        for e in &mut whole {
            tally(entry, e)?;
            entry += 1;
        }
        carry.extend_from_slice(whole.remainder());
        Ok(())
    })?
    .digest128();
    stats.chunks_zero = zero;
    stats.chunks_unused = unused;
    stats.chunks_inherited = inherited;
    stats.chunks_unreadable = unreadable;
    stats.chunks_stored_raw = raw;
    stats.bytes_stored_raw = raw_bytes;
    stats.bytes_stored_payload = payload;
    Ok(hash)
}

/// Read the file at `path` from start to end in 1 MiB pieces, handing each
/// to `each` and hashing it (xxh3) on the way.
pub(crate) fn stream_file(path: &Path, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<Xxh3Default> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        h.update(&buf[..n]);
        each(&buf[..n])?;
    }
    Ok(h)
}

/// xxh3-128 of a whole file.
pub(crate) fn hash_file(path: &Path) -> Result<u128> {
    Ok(stream_file(path, |_| Ok(()))?.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries split across the 1 MiB reads are counted once each, and the
    /// hash is the whole file's.
    #[test]
    fn index_counts_and_hash_in_one_pass_across_read_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let n = 50_000u64; // about 2.3 MiB of entries: reads end inside entries
        let mut bytes = vec![0u8; entry_offset(n) as usize];
        let states = [ChunkState::Stored, ChunkState::Zero, ChunkState::Unused, ChunkState::Inherited];
        let id = ImageId::parse("00000000000000aa").unwrap();
        for c in 0..n {
            let state = if c == n - 1 { ChunkState::Unreadable } else { states[(c % 4) as usize] };
            let stored_len = if c % 8 == 0 { 4096 } else { 1000 };
            let e = IndexEntry { state, segment: 0, offset: 0, stored_len, raw_len: 4096, raw_hash: 0, image_id: id };
            e.encode(&mut bytes[entry_offset(c) as usize..]);
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut stats = crate::format::manifest::Stats::default();
        let hash = index_hash_and_counts(&path, &mut stats).unwrap();
        assert_eq!(hash, xxhash_rust::xxh3::xxh3_128(&bytes));
        let stored = (0..n - 1).filter(|c| c % 4 == 0).count() as u64;
        assert_eq!(stats.chunks_zero, (0..n - 1).filter(|c| c % 4 == 1).count() as u64);
        assert_eq!(stats.chunks_unused, (0..n - 1).filter(|c| c % 4 == 2).count() as u64);
        assert_eq!(stats.chunks_inherited, (0..n - 1).filter(|c| c % 4 == 3).count() as u64);
        assert_eq!(stats.chunks_unreadable, 1);
        let raw = (0..n - 1).filter(|c| c % 8 == 0).count() as u64;
        assert_eq!(stats.chunks_stored_raw, raw);
        assert_eq!(stats.bytes_stored_payload, raw * 4096 + (stored - raw) * 1000);
    }
}
