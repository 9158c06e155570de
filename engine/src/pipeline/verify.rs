//! `verify`: check an image without restoring it. The manifest, the index
//! hash and every index entry first; then lanes claim segments and read each
//! one front to back through their ring, checking every frame's header,
//! stored hash, decompression and raw hash against its index entry, and the
//! segment's own hash. It reports every problem it finds, never only the first.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3Default;

use super::Observer;
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::frame::{check_frame, frame_len, frame_len_max};
use crate::format::index::{entry_offset, ChunkState, IndexEntry, ZeroHashes};
use crate::format::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::io::{self, device::open_read_only, Backend, Io, IoChoice};
use crate::lock::{lock_set, Access};
use crate::set::{Image, ImageSet};

/// How to run `verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub set: PathBuf,
    /// A unique prefix of the Image ID; None for the newest image.
    pub image: Option<String>,
    pub lanes: Option<u32>,
    pub queue_depth: u32,
    pub io: IoChoice,
}

impl VerifyOptions {
    pub fn new(set: impl Into<PathBuf>) -> VerifyOptions {
        VerifyOptions { set: set.into(), image: None, lanes: None, queue_depth: 4, io: IoChoice::Auto }
    }
}

/// A chunk whose stored data is missing or damaged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BadChunk {
    /// The image whose index or segment is damaged (the verified image or
    /// one of its ancestors).
    pub image: String,
    pub chunk: u64,
    pub source_offset: u64,
    /// The segment file and the frame's offset in it, where the index names one.
    pub segment: Option<String>,
    pub segment_offset: Option<u64>,
    pub reason: String,
}

/// Damage that is not one chunk's: an index or segment file as a whole.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub offset: Option<u64>,
    pub what: String,
}

/// What `verify` found in one image of the chain.
#[derive(Debug, Clone, Serialize)]
pub struct ImageCheck {
    pub image_id: String,
    pub kind: String,
    pub chunks_stored_ok: u64,
    pub chunks_zero: u64,
    pub chunks_unused: u64,
    pub chunks_unreadable: u64,
    /// Chunks inherited from the parent whose hash the parent's index holds.
    pub chunks_inherited: u64,
    pub bytes_segments_read: u64,
    pub bad_chunks: u64,
    pub problems: u64,
}

/// What `verify` found. An image is checked with every image it depends
/// on: the counts are the verified image's own, `chain` has each image's.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub image_id: String,
    pub chunk_count: u64,
    pub chunks_stored_ok: u64,
    pub chunks_zero: u64,
    pub chunks_unused: u64,
    pub chunks_unreadable: u64,
    pub chunks_inherited: u64,
    /// Segment bytes read over the whole chain.
    pub bytes_segments_read: u64,
    pub wall_seconds: f64,
    pub io_backend: String,
    /// The verified image, then its parent, … down to its full image.
    pub chain: Vec<ImageCheck>,
    pub bad_chunks: Vec<BadChunk>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No damage found.
    pub fn is_clean(&self) -> bool {
        self.bad_chunks.is_empty() && self.problems.is_empty()
    }
}

/// One frame to check: where the index says it is.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    chunk: u64,
    entry: IndexEntry,
}

struct Findings {
    bad: Vec<BadChunk>,
    problems: Vec<Problem>,
    ok: u64,
}

/// Verify an image.
pub fn verify(opts: &VerifyOptions, obs: &dyn Observer) -> Result<VerifyReport> {
    let started = Instant::now();
    let (backend, why) = io::select(&opts.io)?;
    if let Some(why) = why {
        obs.note(&why);
    }
    if !(1..=1024).contains(&opts.queue_depth) {
        return Err(Error::InvalidSetting(format!("--queue-depth {}: must be 1 to 1024", opts.queue_depth)));
    }
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Read, "verify")?;
    let img = set.resolve(opts.image.as_deref())?;
    let chain = set.chain(&img)?;
    let mut checks = Vec::new();
    let mut bad_chunks = Vec::new();
    let mut problems = Vec::new();
    for (i, one) in chain.iter().enumerate() {
        if chain.len() > 1 {
            obs.note(&format!(
                "checking image {} ({}{})",
                one.id(),
                one.manifest.kind.name(),
                if i == 0 { "" } else { ", an ancestor" }
            ));
        }
        let (c, mut b, mut p) = verify_image(one, chain.get(i + 1), opts, backend.clone(), obs)?;
        checks.push(c);
        bad_chunks.append(&mut b);
        problems.append(&mut p);
    }
    let me = &checks[0];
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }
    Ok(VerifyReport {
        image_id: img.manifest.image_id.clone(),
        chunk_count: img.manifest.chunk_count,
        chunks_stored_ok: me.chunks_stored_ok,
        chunks_zero: me.chunks_zero,
        chunks_unused: me.chunks_unused,
        chunks_unreadable: me.chunks_unreadable,
        chunks_inherited: me.chunks_inherited,
        bytes_segments_read: checks.iter().map(|c| c.bytes_segments_read).sum(),
        wall_seconds: started.elapsed().as_secs_f64(),
        io_backend: backend.name().into(),
        chain: checks,
        bad_chunks,
        problems,
    })
}

/// The parent's raw hash per chunk (None where its entry does not decode),
/// to check what a child says it inherited.
fn parent_hashes(parent: &Image) -> Result<Vec<Option<u128>>, String> {
    let idx = parent.read_index().map_err(|e| e.to_string())?;
    Ok(idx
        .entries
        .iter()
        .map(|e| e.as_ref().ok().filter(|e| e.state != ChunkState::Unset).map(|e| e.raw_hash))
        .collect())
}

/// Verify one image's index and segments; inherited chunks are checked
/// against `parent`'s index.
fn verify_image(
    img: &Image,
    parent: Option<&Image>,
    opts: &VerifyOptions,
    backend: Backend,
    obs: &dyn Observer,
) -> Result<(ImageCheck, Vec<BadChunk>, Vec<Problem>)> {
    let m = &img.manifest;
    let index = img.read_index()?;
    let inherited_from = parent.map(|p| (p.id(), parent_hashes(p)));
    let mut f = Findings { bad: Vec::new(), problems: Vec::new(), ok: 0 };
    let index_name = m.index.file.clone();
    if !index.hash_matches {
        f.problems.push(Problem {
            file: index_name.clone(),
            offset: None,
            what: "index checksum (xxh3-128) does not match the manifest: the index was modified or damaged".into(),
        });
    }
    let (mut zero, mut unused, mut unreadable, mut inherited) = (0, 0, 0, 0);
    let image_name = m.image_id.clone();
    let mut per_segment: Vec<Vec<FrameRef>> = vec![Vec::new(); m.segments.len()];
    let mut zero_hashes = ZeroHashes::default();
    for (chunk, e) in index.entries.iter().enumerate() {
        let chunk = chunk as u64;
        let (start, raw_len) = img.chunk_extent(chunk);
        let bad = |reason: String| BadChunk {
            image: image_name.clone(),
            chunk,
            source_offset: start,
            segment: None,
            segment_offset: None,
            reason,
        };
        let e = match e {
            Ok(e) => *e,
            Err(why) => {
                f.bad.push(bad(format!("index entry at offset {} is invalid: {why}", entry_offset(chunk))));
                continue;
            }
        };
        if e.raw_len != raw_len && e.state != ChunkState::Unset {
            f.bad.push(bad(format!("index says the chunk is {} bytes, it must be {raw_len}", e.raw_len)));
            continue;
        }
        match e.state {
            ChunkState::Stored => match img.check_stored_location(&e) {
                Ok(()) => per_segment[e.segment as usize].push(FrameRef { chunk, entry: e }),
                Err(why) => {
                    let mut b = bad(why);
                    if let Some(s) = m.segments.get(e.segment as usize) {
                        b.segment = Some(s.file.clone());
                        b.segment_offset = Some(e.offset);
                    }
                    f.bad.push(b);
                }
            },
            ChunkState::Zero => {
                let h = zero_hashes.get(raw_len);
                if e.raw_hash == h {
                    zero += 1;
                } else {
                    f.bad.push(bad("index marks the chunk zero-filled but holds another chunk's hash".into()));
                }
            }
            ChunkState::Unused => unused += 1,
            ChunkState::Unreadable => unreadable += 1,
            ChunkState::Unset => {
                f.bad.push(bad("index entry was never written (the run that made it did not finish)".into()))
            }
            ChunkState::Inherited => match (&inherited_from, m.parent_id()) {
                (Some((pid, Ok(hashes))), Some(named)) if named == e.image_id => {
                    match hashes.get(chunk as usize).copied().flatten() {
                        Some(h) if h == e.raw_hash => inherited += 1,
                        Some(_) => f.bad.push(bad(format!(
                            "chunk is inherited from image {pid}, whose index holds a different chunk there"
                        ))),
                        None => f.bad.push(bad(format!(
                            "chunk is inherited from image {pid}, whose index entry for it is damaged"
                        ))),
                    }
                }
                (Some((pid, Err(why))), _) => {
                    f.bad.push(bad(format!("chunk is inherited from image {pid}, whose index cannot be read: {why}")))
                }
                (_, named) => f.bad.push(bad(format!(
                    "chunk is marked inherited from image {}, but the image's parent is {}",
                    e.image_id,
                    named.map_or("none".to_string(), |p| p.to_string())
                ))),
            },
        }
    }
    for frames in &mut per_segment {
        frames.sort_by_key(|r| r.entry.offset);
    }

    let lanes = opts.lanes.unwrap_or_else(super::capture::available_cores).clamp(1, 256) as usize;
    let mut order: Vec<usize> = (0..m.segments.len()).collect();
    order.sort_by_key(|&s| std::cmp::Reverse(m.segments[s].size_bytes));
    let shared = VerifyShared {
        img,
        per_segment: &per_segment,
        order: &order,
        next: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(0),
        queue_depth: opts.queue_depth,
        backend,
        findings: Mutex::new(f),
    };
    let total: u64 = m.segments.iter().map(|s| s.size_bytes).sum();
    // A failing lane stops the others from claiming more segments.
    let stop = std::sync::atomic::AtomicBool::new(false);
    super::run_lanes(
        (lanes as u32).min(order.len().max(1) as u32),
        "tintype-verify",
        false,
        &stop,
        || obs.progress(shared.bytes_done.load(Ordering::Relaxed), total),
        |_| shared.run_lane(&stop),
    )?;
    let mut f = shared.findings.into_inner().expect("findings lock");
    f.bad.sort_by_key(|b| b.chunk);
    let check = ImageCheck {
        image_id: m.image_id.clone(),
        kind: m.kind.name().into(),
        chunks_stored_ok: f.ok,
        chunks_zero: zero,
        chunks_unused: unused,
        chunks_unreadable: unreadable,
        chunks_inherited: inherited,
        bytes_segments_read: shared.bytes_done.load(Ordering::Relaxed),
        bad_chunks: f.bad.len() as u64,
        problems: f.problems.len() as u64,
    };
    Ok((check, f.bad, f.problems))
}

struct VerifyShared<'a> {
    img: &'a Image,
    per_segment: &'a [Vec<FrameRef>],
    order: &'a [usize],
    next: AtomicUsize,
    bytes_done: AtomicU64,
    queue_depth: u32,
    backend: Backend,
    findings: Mutex<Findings>,
}

impl VerifyShared<'_> {
    fn run_lane(&self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        let qd = self.queue_depth as usize;
        let frame_max = frame_len_max(self.img.manifest.chunk_size_bytes) as usize;
        let mut io = io::open(&self.backend, &vec![frame_max; qd], 1, self.queue_depth)
            .map_err(|e| Error::io("set up the I/O ring for", self.img.dir.clone(), e))?;
        let mut dec = Decoder::new().map_err(|e| Error::io("create decoder for", self.img.dir.clone(), e))?;
        let mut raw = vec![0u8; self.img.manifest.chunk_size_bytes as usize];
        loop {
            if super::interrupted() {
                return Err(Error::Interrupted(
                    "verify stopped by a signal before it finished: no verdict; it only reads, so the set is as it was"
                        .into(),
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted("another verify lane failed".into()));
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&seg) = self.order.get(i) else {
                return Ok(());
            };
            let mut f = Findings { bad: Vec::new(), problems: Vec::new(), ok: 0 };
            self.verify_segment(io.as_mut(), seg, &mut dec, &mut raw, &mut f)?;
            let mut all = self.findings.lock().expect("findings lock");
            all.bad.append(&mut f.bad);
            all.problems.append(&mut f.problems);
            all.ok += f.ok;
        }
    }

    fn verify_segment(
        &self,
        io: &mut dyn Io,
        seg: usize,
        dec: &mut Decoder,
        raw: &mut [u8],
        f: &mut Findings,
    ) -> Result<()> {
        let info = &self.img.manifest.segments[seg];
        let path = self.img.segment_path(seg);
        let frames = &self.per_segment[seg];
        let bad_all = |f: &mut Findings, why: &str| {
            for r in frames {
                f.bad.push(self.bad(r, info.file.clone(), why.to_string()));
            }
        };
        let (file, _direct) = match open_read_only(&path, true) {
            Ok(x) => x,
            Err(e) => {
                f.problems.push(Problem { file: info.file.clone(), offset: None, what: format!("cannot open: {e}") });
                bad_all(f, "its segment file cannot be opened");
                return Ok(());
            }
        };
        let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len != info.size_bytes {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: Some(len.min(info.size_bytes)),
                what: format!(
                    "segment is {len} bytes, the manifest says {} ({})",
                    info.size_bytes,
                    if len < info.size_bytes { "truncated" } else { "extended" }
                ),
            });
        }
        io.set_file(0, Some(file)).map_err(|e| Error::io("register", &path, e))?;
        let mut hasher = Xxh3Default::new();
        // The segment header first, with one read.
        io.enqueue_read(0, 0, 0, SEGMENT_HEADER_BYTES, 0, u64::MAX);
        io.flush(1).map_err(|e| Error::io("read", &path, e))?;
        let c = io.pop_completion().expect("header read completion");
        let head_ok = match c.result {
            Ok(n) => {
                let b = &io.buffer(0)[..n];
                hasher.update(b);
                match SegmentHeader::decode(b) {
                    Ok(h) if h.chunk_bytes != self.img.manifest.chunk_size_bytes => Err(format!(
                        "segment header says chunk size {}, the manifest {}",
                        h.chunk_bytes, self.img.manifest.chunk_size_bytes
                    )),
                    Ok(h) if h.image_id != self.img.id() || h.seq as usize != seg => Err(format!(
                        "segment header names image {} segment {}, expected image {} segment {seg}",
                        h.image_id,
                        h.seq,
                        self.img.id()
                    )),
                    Ok(_) => Ok(()),
                    Err(why) => Err(why),
                }
            }
            Err(e) => Err(format!("cannot read the segment header: {e}")),
        };
        if let Err(what) = head_ok {
            f.problems.push(Problem { file: info.file.clone(), offset: Some(0), what });
        }
        self.bytes_done.fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);

        let mut free: Vec<usize> = (0..self.queue_depth as usize).rev().collect();
        let mut window: VecDeque<(usize, usize, Option<std::io::Result<usize>>)> = VecDeque::new();
        let mut next = 0usize;
        let mut expected_offset = SEGMENT_HEADER_BYTES as u64;
        let mut contiguous = true;
        while next < frames.len() || !window.is_empty() {
            while next < frames.len() {
                let Some(buf) = free.pop() else { break };
                let e = frames[next].entry;
                io.enqueue_read(0, buf, 0, frame_len(e.stored_len) as usize, e.offset, buf as u64);
                window.push_back((next, buf, None));
                next += 1;
            }
            io.flush(1).map_err(|e| Error::io("read", &path, e))?;
            while let Some(c) = io.pop_completion() {
                let slot = window
                    .iter_mut()
                    .find(|w| w.1 == c.user_data as usize && w.2.is_none())
                    .expect("completion for a read in the window");
                match c.result {
                    Err(e) if io::is_transient(&e) => {
                        let entry = frames[slot.0].entry;
                        io.enqueue_read(
                            0,
                            slot.1,
                            0,
                            frame_len(entry.stored_len) as usize,
                            entry.offset,
                            slot.1 as u64,
                        );
                    }
                    r => slot.2 = Some(r),
                }
            }
            // Check frames in segment order, so the segment hash runs in order.
            while window.front().is_some_and(|w| w.2.is_some()) {
                let (k, buf, result) = window.pop_front().expect("front");
                let r = frames[k];
                let want = frame_len(r.entry.stored_len) as usize;
                if r.entry.offset != expected_offset {
                    contiguous = false;
                }
                expected_offset = r.entry.offset + want as u64;
                match result.expect("completed") {
                    Err(e) => f.bad.push(self.bad(&r, info.file.clone(), format!("read failed: {e}"))),
                    Ok(n) => {
                        let bytes = &io.buffer(buf)[..n];
                        if contiguous {
                            hasher.update(bytes);
                        }
                        self.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
                        if n < want {
                            f.bad.push(self.bad(
                                &r,
                                info.file.clone(),
                                format!(
                                    "frame truncated: the segment ends at offset {}, the frame needs {want} bytes",
                                    r.entry.offset + n as u64
                                ),
                            ));
                        } else {
                            match self.check(&r, bytes, dec, raw) {
                                Ok(()) => f.ok += 1,
                                Err(why) => f.bad.push(self.bad(&r, info.file.clone(), why)),
                            }
                        }
                    }
                }
                free.push(buf);
            }
        }
        io.set_file(0, None).map_err(|e| Error::io("release", &path, e))?;
        if !contiguous {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: "the index's frames overlap or leave gaps in this segment".into(),
            });
        } else if expected_offset != info.size_bytes {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: Some(expected_offset),
                what: format!(
                    "the indexed frames end at offset {expected_offset}, the manifest says the segment is {} bytes",
                    info.size_bytes
                ),
            });
        } else if len == info.size_bytes && format!("{:016x}", hasher.digest()) != info.xxh3_64 {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: "segment checksum (xxh3-64) does not match the manifest".into(),
            });
        }
        if frames.len() as u64 != info.frames {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: format!("the index points at {} frames here, the manifest counts {}", frames.len(), info.frames),
            });
        }
        Ok(())
    }

    fn check(&self, r: &FrameRef, bytes: &[u8], dec: &mut Decoder, raw: &mut [u8]) -> std::result::Result<(), String> {
        let h = check_frame(bytes, raw, &mut |s, o| dec.decode(s, o)).map_err(|e| e.to_string())?;
        h.check_matches(r.chunk, self.img.id(), &r.entry)?;
        Ok(())
    }

    fn bad(&self, r: &FrameRef, file: String, reason: String) -> BadChunk {
        BadChunk {
            image: self.img.manifest.image_id.clone(),
            chunk: r.chunk,
            source_offset: self.img.chunk_extent(r.chunk).0,
            segment: Some(file),
            segment_offset: Some(r.entry.offset),
            reason,
        }
    }
}
