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
use crate::format::frame::{frame_len_max, CHUNK_BYTES_MAX};
use crate::format::index::{entry_offset, index_file_name, IndexHeader, INDEX_HEADER_BYTES};
use crate::format::manifest::{
    rfc3339_utc, ImageKind, IndexInfo, Manifest, Settings, SourceInfo, Stats, MANIFEST_FORMAT,
};
use crate::format::segment::SEGMENT_HEADER_BYTES;
use crate::format::{ImageId, FORMAT_VERSION};
use crate::io::{self, device::Source, IoChoice};
use crate::set::{commit_manifest, ImageSet};

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
        }
    }
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

fn staging_bytes(chunk_bytes: u32) -> usize {
    let one = SEGMENT_HEADER_BYTES as u64 + frame_len_max(chunk_bytes);
    (8u64 << 20).max(2 * one) as usize
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
        u64::from(lanes) * (u64::from(o.queue_depth) * u64::from(cs) + 2 * staging_bytes(cs) as u64),
    )?;
    let min_segment = (SEGMENT_HEADER_BYTES + staging_bytes(cs)) as u64;
    if o.segment_size_bytes < min_segment {
        return bad(format!(
            "--segment-size {}: must be at least {min_segment} bytes for this chunk size",
            o.segment_size_bytes
        ));
    }
    Ok(lanes)
}

/// Removes the files of an unfinished image unless disarmed by the commit.
struct Unfinished<'a> {
    dir: &'a Path,
    id: ImageId,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let prefix = self.id.to_string();
        if let Ok(rd) = std::fs::read_dir(self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // Never a manifest: an image that has one is committed.
                if name.starts_with(&prefix) && !name.ends_with(".manifest.json") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Image `opts.source` into the set `opts.set`.
pub fn create(opts: &CreateOptions, obs: &dyn Observer) -> Result<CreateReport> {
    let lanes = validate(opts)?;
    let (backend, why) = io::select(opts.io).map_err(Error::InvalidSetting)?;
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
    if u64::from(opts.chunk_size_bytes) % u64::from(source.dio_align_bytes) != 0 {
        return Err(Error::InvalidSetting(format!(
            "--chunk-size {} is not a multiple of the source's direct I/O alignment {}",
            opts.chunk_size_bytes, source.dio_align_bytes
        )));
    }
    let set = ImageSet::create_or_open(&opts.set)?;
    let (committed, partial) = set.scan()?;
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
    let mut unfinished = Unfinished { dir: &set.dir, id, armed: true };
    let chunk_count = source.size_bytes.div_ceil(u64::from(opts.chunk_size_bytes));
    let index_path = set.dir.join(index_file_name(id));
    let index = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&index_path)
        .map_err(|e| Error::io("create index", &index_path, e))?;
    index.set_len(entry_offset(chunk_count)).map_err(|e| Error::io("size index", &index_path, e))?;

    // Batches of up to 64 MiB keep each lane's reads sequential; a small
    // source gets smaller batches so every lane has a share.
    let batch_chunks =
        (chunk_count / (u64::from(lanes) * 8)).clamp(1, (BATCH_BYTES / u64::from(opts.chunk_size_bytes)).max(1));
    let stop = AtomicBool::new(false);
    let sh = CaptureShared {
        image_id: id,
        dir: &set.dir,
        source: &source,
        chunk_bytes: opts.chunk_size_bytes,
        queue_depth: opts.queue_depth,
        segment_size_bytes: opts.segment_size_bytes,
        staging_bytes: staging_bytes(opts.chunk_size_bytes),
        level: opts.level,
        backend,
        plan: Plan::new(chunk_count, batch_chunks),
        index: &index,
        index_path: &index_path,
        stop: &stop,
        bytes_done: AtomicU64::new(0),
        next_segment: AtomicU32::new(0),
    };
    let started = Instant::now();
    let reports = run_lanes(&sh, lanes, obs).map_err(|e| match e {
        Error::Interrupted(_) if super::interrupted() => Error::Interrupted(format!(
            "no image was committed; the unfinished image {id}'s files were removed from {}",
            set.dir.display()
        )),
        e => e,
    })?;
    let wall = started.elapsed();

    let mut segments: Vec<_> = reports.iter().flat_map(|r| r.segments.iter().cloned()).collect();
    segments.sort_by_key(|s| s.seq);
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.seq as usize, i, "segment numbers are dense");
    }
    let stats = sum_stats(reports.iter().map(|r| &r.stats));
    let mut latency = super::lane::latency_histogram();
    for r in &reports {
        let _ = latency.add(&r.read_latency_us);
    }
    assert_eq!(stats.chunks, chunk_count, "every chunk was processed exactly once");
    if !reports.iter().all(|r| r.segments_direct) {
        obs.note("the destination filesystem refuses O_DIRECT; segments were written through the page cache");
    }

    let mut head = [0u8; INDEX_HEADER_BYTES];
    IndexHeader {
        chunk_bytes: opts.chunk_size_bytes,
        image_id: id,
        chunk_count,
        source_bytes: source.size_bytes,
        parent: None,
    }
    .encode(&mut head);
    index
        .write_all_at(&head, 0)
        .and_then(|()| index.sync_all())
        .map_err(|e| Error::io("write index", &index_path, e))?;
    let index_hash = hash_file(&index_path)?;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        format_version: u32::from(FORMAT_VERSION),
        image_id: id.to_string(),
        kind: ImageKind::Full,
        parent: None,
        created_unix_seconds: now,
        created: rfc3339_utc(now),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: SourceInfo {
            path: std::fs::canonicalize(&source.path).unwrap_or_else(|_| source.path.clone()).display().to_string(),
            kind: source.kind.name().into(),
            size_bytes: source.size_bytes,
            logical_sector_bytes: source.logical_sector_bytes,
            physical_sector_bytes: source.physical_sector_bytes,
            identity: source.identity.clone(),
        },
        chunk_size_bytes: opts.chunk_size_bytes,
        chunk_count,
        codec: "zstd".into(),
        level: opts.level,
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
        stats: manifest_stats(&stats, wall, &latency),
        segments,
        index: IndexInfo {
            file: index_file_name(id),
            size_bytes: entry_offset(chunk_count),
            xxh3_128: format!("{index_hash:032x}"),
        },
    };
    crate::set::sync_dir(&set.dir)?;
    let manifest_path = match commit_manifest(&set.dir, &manifest) {
        Ok(p) => p,
        Err(e) => {
            // Renamed but not made durable (the directory fsync failed): the
            // image is there and its data must stay with it.
            if set.dir.join(crate::format::manifest::manifest_file_name(id)).exists() {
                unfinished.armed = false;
            }
            return Err(e);
        }
    };
    unfinished.armed = false;
    Ok(CreateReport { manifest, manifest_path })
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
    }
}

/// xxh3-128 of a whole file.
pub(crate) fn hash_file(path: &Path) -> Result<u128> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.digest128())
}
