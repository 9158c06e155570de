//! One capture lane: a thread with its own ring, read buffers, compressor and
//! segment writer. The walk of one chunk — read, zero check, hash, compress,
//! append to the staging buffer, index entry — happens here, on one core.
//!
//! Buffers: ids `0..queue_depth` are read buffers of one chunk each; the two
//! after them are staging buffers that alternate: one fills with frames while
//! the other is written with one large sequential O_DIRECT append.
//! File slots: 0 is the source; 1 and 2 alternate between the segment being
//! written and the previous one while its last write finishes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use xxhash_rust::xxh3::{xxh3_128, Xxh3Default};

use super::plan::Plan;
use crate::codec::Encoder;
use crate::error::{Error, Result};
use crate::format::frame::{frame_len, frame_len_max, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::index::{entry_offset, ChunkState, IndexEntry, ZeroHashes, INDEX_ENTRY_BYTES};
use crate::format::manifest::SegmentInfo;
use crate::format::segment::{segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::{align_up, ImageId};
use crate::io::{self, device::Source, Backend, Completion, Io};

const SLOT_SOURCE: usize = 0;
const WRITE_FLAG: u64 = 1 << 63;

/// The unreadable ranges found so far, and the run's journal of them.
pub(crate) type Unreadable = std::sync::Mutex<(Vec<(u64, u64)>, Option<File>)>;

/// Everything the lanes of one capture share. Read-only but for atomics.
#[derive(Debug)]
pub(crate) struct CaptureShared<'a> {
    pub image_id: ImageId,
    pub dir: &'a Path,
    pub source: &'a Source,
    pub chunk_bytes: u32,
    pub queue_depth: u32,
    pub segment_size_bytes: u64,
    pub staging_bytes: usize,
    pub level: i32,
    pub backend: Backend,
    pub plan: Plan,
    pub index: &'a File,
    pub index_path: &'a Path,
    /// Set when a lane fails (or the run is interrupted): the others stop
    /// claiming work, finish what is in flight and return.
    pub stop: &'a AtomicBool,
    pub bytes_done: AtomicU64,
    pub next_segment: AtomicU32,
    /// For a differential or incremental: the parent's raw hash of every
    /// chunk, and its ID. A chunk that hashes the same is inherited.
    pub parent: Option<(&'a [u128], ImageId)>,
    /// For a resumed run: the entries chunks already have (empty otherwise).
    pub preset: &'a [Option<IndexEntry>],
    /// On a read error: find the bad sectors and image the rest (true), or stop.
    pub skip_unreadable: bool,
    /// Retries of a failing read before its sectors count as unreadable.
    pub read_retries: u32,
    /// Every unreadable source range found so far (and kept from an
    /// interrupted run), and the run's journal of them (`ID.unreadable`,
    /// append-only): a chunk's ranges are appended and synced before its
    /// frame or index entry can be written, so `--resume` never keeps a
    /// chunk holding zeros for unreadable sectors without its ranges.
    pub unreadable: &'a Unreadable,
    pub journal: &'a Path,
}

impl CaptureShared<'_> {
    fn raw_len(&self, chunk: u64) -> u32 {
        let start = chunk * u64::from(self.chunk_bytes);
        u64::from(self.chunk_bytes).min(self.source.size_bytes - start) as u32
    }
}

/// What a lane did: its segments, its counters, and how long its reads took.
#[derive(Debug)]
pub(crate) struct LaneReport {
    pub segments: Vec<SegmentInfo>,
    pub stats: LaneStats,
    pub segments_direct: bool,
    pub read_latency_us: hdrhistogram::Histogram<u64>,
}

/// A histogram of latencies from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Counters of one lane; summed over lanes for the manifest.
#[derive(Debug, Default, Clone)]
pub(crate) struct LaneStats {
    pub chunks: u64,
    pub bytes_read: u64,
    pub chunks_stored: u64,
    pub chunks_zero: u64,
    pub chunks_stored_raw: u64,
    pub bytes_stored_payload: u64,
    pub bytes_stored_raw: u64,
    pub bytes_segments: u64,
    pub nanos_io_wait: u64,
    pub nanos_zero_check: u64,
    pub nanos_hash: u64,
    pub nanos_compress: u64,
    pub nanos_cpu: u64,
    pub chunks_inherited: u64,
    pub chunks_resumed: u64,
    pub chunks_unused: u64,
}

#[derive(Debug)]
struct Batch {
    first: u64,
    end: u64,
    next: u64,
    done: u64,
    entries: Vec<Option<IndexEntry>>,
}

#[derive(Debug, Clone, Copy)]
struct Staging {
    buf: usize,
    fill: usize,
    /// Which segment (by slot) and where in it this staging buffer goes;
    /// None while it holds nothing.
    target: Option<(usize, u64)>,
    in_flight: bool,
    /// Bytes of `fill` already written (a short write is carried on).
    written: usize,
    /// After ENOSPC, the most bytes one write may carry (0: no limit), so
    /// the space left still takes every complete frame that fits.
    limit: usize,
}

struct OpenSegment {
    slot: usize,
    seq: u32,
    path: PathBuf,
    /// Where the next staging buffer will be written.
    next_offset: u64,
    frames: u64,
    writes_in_flight: u32,
    hasher: Xxh3Default,
}

#[derive(Debug, Clone, Copy)]
struct ReadOp {
    chunk: u64,
    raw_len: u32,
    read_len: u32,
    got: u32,
    submitted: Instant,
    /// The raw hash, once computed (a chunk may wait for a staging buffer).
    hash: Option<u128>,
    /// No sector of the chunk could be read (recorded "unreadable").
    unreadable: bool,
}

impl std::fmt::Debug for OpenSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSegment").field("seq", &self.seq).field("next_offset", &self.next_offset).finish()
    }
}

pub(crate) struct CaptureLane<'a> {
    sh: &'a CaptureShared<'a>,
    lane: u32,
    io: Box<dyn Io>,
    enc: Encoder,
    free_reads: Vec<usize>,
    reads: Vec<Option<ReadOp>>,
    ready: VecDeque<usize>,
    batches: VecDeque<Batch>,
    staging: [Staging; 2],
    cur: usize,
    seg: Option<OpenSegment>,
    closing: Option<OpenSegment>,
    zero_hashes: ZeroHashes,
    report: LaneReport,
    /// When the current staging buffer got its first frame: a buffer that
    /// fills slowly (compressible data) is written after at most
    /// [`STAGING_MAX_AGE`] anyway, so a killed run loses little.
    staged_since: Option<Instant>,
}

/// How long frames may wait in a staging buffer before they are written.
const STAGING_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

impl<'a> CaptureLane<'a> {
    pub fn new(sh: &'a CaptureShared<'a>, lane: u32) -> Result<CaptureLane<'a>> {
        let qd = sh.queue_depth as usize;
        let mut sizes = vec![sh.chunk_bytes as usize; qd];
        sizes.extend([sh.staging_bytes; 2]);
        let mut io = io::open(&sh.backend, &sizes, 3, sh.queue_depth + 2)
            .map_err(|e| Error::io("set up the I/O ring for", sh.source.path.clone(), e))?;
        io.set_file(SLOT_SOURCE, Some(sh.source.reopen()?))
            .map_err(|e| Error::io("register", sh.source.path.clone(), e))?;
        let enc = Encoder::new(sh.level).map_err(|e| Error::InvalidSetting(format!("zstd level {}: {e}", sh.level)))?;
        Ok(CaptureLane {
            sh,
            lane,
            io,
            enc,
            free_reads: (0..qd).rev().collect(),
            reads: vec![None; qd],
            ready: VecDeque::new(),
            batches: VecDeque::new(),
            staging: [
                Staging { buf: qd, fill: 0, target: None, in_flight: false, written: 0, limit: 0 },
                Staging { buf: qd + 1, fill: 0, target: None, in_flight: false, written: 0, limit: 0 },
            ],
            cur: 0,
            seg: None,
            closing: None,
            zero_hashes: ZeroHashes::default(),
            staged_since: None,
            report: LaneReport {
                segments: Vec::new(),
                stats: LaneStats::default(),
                segments_direct: true,
                read_latency_us: latency_histogram(),
            },
        })
    }

    /// Run the lane until the plan is exhausted (or another lane failed).
    pub fn run(mut self) -> Result<LaneReport> {
        loop {
            self.process_ready()?;
            self.write_if_old();
            self.submit_reads()?;
            if self.io.in_flight() == 0 && self.ready.is_empty() {
                // Nothing in flight and nothing claimable: done, or stopped
                // by another lane with part of a batch never read.
                if self.batches.is_empty() || self.sh.stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            let t = Instant::now();
            self.io.flush(1).map_err(|e| Error::io("submit I/O for", self.sh.source.path.clone(), e))?;
            self.report.stats.nanos_io_wait += t.elapsed().as_nanos() as u64;
            while let Some(c) = self.io.pop_completion() {
                self.dispatch(c)?;
            }
        }
        if self.sh.stop.load(Ordering::Relaxed) {
            // Write out what is staged, so `--resume` keeps it; after a
            // failure elsewhere this may fail too, which changes nothing.
            let _ = self.finish();
            return Err(Error::Interrupted(if super::interrupted() {
                "stopped by a signal".into()
            } else {
                "another lane stopped the run".into()
            }));
        }
        self.finish()?;
        self.report.stats.nanos_cpu = thread_cpu_nanos();
        Ok(self.report)
    }

    /// Keep `queue_depth` reads in flight, claiming batches as needed.
    fn submit_reads(&mut self) -> Result<()> {
        while let Some(&buf) = self.free_reads.last() {
            let Some(chunk) = self.next_chunk()? else {
                break;
            };
            self.free_reads.pop();
            let raw_len = self.sh.raw_len(chunk);
            // O_DIRECT needs an aligned length; past the end of a file the
            // read simply comes back short.
            let read_len = align_up(u64::from(raw_len), u64::from(self.sh.source.dio_align_bytes)) as u32;
            self.reads[buf] = Some(ReadOp {
                chunk,
                raw_len,
                read_len,
                got: 0,
                submitted: Instant::now(),
                hash: None,
                unreadable: false,
            });
            let offset = chunk * u64::from(self.sh.chunk_bytes);
            self.io.enqueue_read(SLOT_SOURCE, buf, 0, read_len as usize, offset, buf as u64);
        }
        Ok(())
    }

    /// The next chunk to read. Chunks a resumed run already has are
    /// recorded on the way, without reading them.
    fn next_chunk(&mut self) -> Result<Option<u64>> {
        loop {
            let Some(chunk) = self.next_claimed() else { return Ok(None) };
            match self.sh.preset.get(chunk as usize) {
                Some(Some(e)) => {
                    let st = &mut self.report.stats;
                    st.chunks += 1;
                    match e.state {
                        // No filesystem uses it: not read, not stored.
                        ChunkState::Unused => st.chunks_unused += 1,
                        ChunkState::Zero => {
                            st.chunks_resumed += 1;
                            st.chunks_zero += 1
                        }
                        ChunkState::Inherited => {
                            st.chunks_resumed += 1;
                            st.chunks_inherited += 1
                        }
                        _ => st.chunks_resumed += 1,
                    }
                    self.sh.bytes_done.fetch_add(u64::from(e.raw_len), Ordering::Relaxed);
                    self.record(chunk, *e)?;
                }
                _ => return Ok(Some(chunk)),
            }
        }
    }

    fn next_claimed(&mut self) -> Option<u64> {
        if super::interrupted() {
            self.sh.stop.store(true, Ordering::Relaxed);
        }
        if self.sh.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(b) = self.batches.back_mut() {
            if b.next < b.end {
                b.next += 1;
                return Some(b.next - 1);
            }
        }
        // Two batches open at most: the one finishing and the one starting.
        if self.batches.len() >= 2 {
            return None;
        }
        let r = self.sh.plan.claim()?;
        self.batches.push_back(Batch {
            first: r.start,
            end: r.end,
            next: r.start + 1,
            done: 0,
            entries: vec![None; (r.end - r.start) as usize],
        });
        Some(r.start)
    }

    fn dispatch(&mut self, c: Completion) -> Result<()> {
        if c.user_data & WRITE_FLAG != 0 {
            return self.on_write(c);
        }
        let buf = c.user_data as usize;
        let mut op = self.reads[buf].expect("read completion for a buffer with a read");
        let offset = op.chunk * u64::from(self.sh.chunk_bytes) + u64::from(op.got);
        match c.result {
            Err(e) if io::is_transient(&e) => {
                self.io.enqueue_read(
                    SLOT_SOURCE,
                    buf,
                    op.got as usize,
                    (op.read_len - op.got) as usize,
                    offset,
                    buf as u64,
                );
                Ok(())
            }
            Err(e) => self.recover_read(buf, op, e),
            Ok(0) if op.got < op.raw_len => Err(Error::Unusable {
                path: self.sh.source.path.clone(),
                why: format!(
                    "source ended at offset {offset}, but it was {} bytes when the run started (did it shrink?)",
                    self.sh.source.size_bytes
                ),
            }),
            Ok(n) => {
                op.got += n as u32;
                self.reads[buf] = Some(op);
                if op.got < op.raw_len {
                    // A short read before the end: ask for the rest.
                    let rest_offset = op.chunk * u64::from(self.sh.chunk_bytes) + u64::from(op.got);
                    self.io.enqueue_read(
                        SLOT_SOURCE,
                        buf,
                        op.got as usize,
                        (op.read_len - op.got) as usize,
                        rest_offset,
                        buf as u64,
                    );
                } else {
                    let us = op.submitted.elapsed().as_micros() as u64;
                    let _ = self.report.read_latency_us.record(us.max(1));
                    self.ready.push_back(buf);
                }
                Ok(())
            }
        }
    }

    /// A read failed: find exactly which sectors fail (halving the range down
    /// to one logical sector, each read retried), and either stop naming
    /// them, or (`skip_unreadable`) zero them, record them, and go on with the
    /// chunk. Synchronous reads: a failing disk is slow anyway.
    fn recover_read(&mut self, buf: usize, mut op: ReadOp, first: std::io::Error) -> Result<()> {
        let path = self.sh.source.path.clone();
        let start = op.chunk * u64::from(self.sh.chunk_bytes);
        let sector = u64::from(self.sh.source.logical_sector_bytes.max(self.sh.source.dio_align_bytes));
        let len = u64::from(op.raw_len).div_ceil(sector) * sector;
        let mut bad: Vec<(u64, u64)> = Vec::new();
        let mut read = |at: u64, n: u64| {
            // A signal stops the search (a dying disk can take seconds a
            // read); the chunk is then neither stored nor recorded.
            if super::interrupted() {
                return Err(std::io::Error::other("interrupted"));
            }
            self.io.read_exact_now(SLOT_SOURCE, buf, at as usize, n as usize, start + at)
        };
        bisect(&mut read, start, 0, len, sector, self.sh.read_retries, &mut bad);
        if super::interrupted() {
            return Err(Error::Interrupted(format!("while looking for the unreadable sectors of chunk {}", op.chunk)));
        }
        let end = start + u64::from(op.raw_len);
        let bad: Vec<(u64, u64)> =
            bad.into_iter().map(|(s, l)| (s, (s + l).min(end) - s)).filter(|&(_, l)| l > 0).collect();
        if bad.is_empty() {
            // The retries read it after all.
            op.got = op.raw_len;
            self.reads[buf] = Some(op);
            self.ready.push_back(buf);
            return Ok(());
        }
        let total: u64 = bad.iter().map(|r| r.1).sum();
        if !self.sh.skip_unreadable {
            let ranges: Vec<String> = bad.iter().take(8).map(|(s, l)| format!("{s}..{}", s + l)).collect();
            return Err(Error::io_at(
                "read source",
                path,
                bad[0].0,
                std::io::Error::new(
                    first.kind(),
                    format!(
                        "{first}: {total} unreadable bytes in chunk {} (bytes {}); --on-read-error skip images \
                         the rest and records them",
                        op.chunk,
                        ranges.join(", ")
                    ),
                ),
            ));
        }
        for &(s, l) in &bad {
            let from = (s - start) as usize;
            self.io.buffer_mut(buf)[from..from + l as usize].fill(0);
        }
        op.unreadable = total == u64::from(op.raw_len);
        {
            let mut guard = self.sh.unreadable.lock().unwrap_or_else(|p| p.into_inner());
            let (all, journal) = &mut *guard;
            super::capture::journal_unreadable(journal, self.sh.journal, &bad)?;
            all.extend(bad);
        }
        op.got = op.raw_len;
        self.reads[buf] = Some(op);
        self.ready.push_back(buf);
        Ok(())
    }

    /// Zero-check, hash, compress and stage every completed read, as long as
    /// a staging buffer has room.
    fn process_ready(&mut self) -> Result<()> {
        while let Some(&buf) = self.ready.front() {
            let mut op = self.reads[buf].expect("ready buffer has a read");
            let raw_len = op.raw_len as usize;
            let t = Instant::now();
            let zero = op.hash.is_none() && is_zero(&self.io.buffer(buf)[..raw_len]);
            self.report.stats.nanos_zero_check += t.elapsed().as_nanos() as u64;
            let entry = if op.unreadable {
                IndexEntry {
                    state: ChunkState::Unreadable,
                    segment: 0,
                    offset: 0,
                    stored_len: 0,
                    raw_len: op.raw_len,
                    raw_hash: 0,
                    image_id: ImageId(0),
                }
            } else if zero {
                self.report.stats.chunks_zero += 1;
                IndexEntry {
                    state: ChunkState::Zero,
                    segment: 0,
                    offset: 0,
                    stored_len: 0,
                    raw_len: op.raw_len,
                    raw_hash: self.zero_hashes.get(op.raw_len),
                    image_id: ImageId(0),
                }
            } else {
                let raw_hash = match op.hash {
                    Some(h) => h,
                    None => {
                        let t = Instant::now();
                        let h = xxh3_128(&self.io.buffer(buf)[..raw_len]);
                        self.report.stats.nanos_hash += t.elapsed().as_nanos() as u64;
                        op.hash = Some(h);
                        self.reads[buf] = Some(op);
                        h
                    }
                };
                match self.sh.parent {
                    Some((hashes, parent)) if hashes[op.chunk as usize] == raw_hash => {
                        self.report.stats.chunks_inherited += 1;
                        IndexEntry {
                            state: ChunkState::Inherited,
                            segment: 0,
                            offset: 0,
                            stored_len: 0,
                            raw_len: op.raw_len,
                            raw_hash,
                            image_id: parent,
                        }
                    }
                    _ => {
                        if !self.make_room()? {
                            return Ok(()); // wait for a staging write to finish
                        }
                        self.stage(buf, op, raw_hash)?
                    }
                }
            };
            #[cfg(feature = "slowdown")]
            slowdown();
            self.ready.pop_front();
            self.reads[buf] = None;
            self.free_reads.push(buf);
            self.report.stats.chunks += 1;
            self.report.stats.bytes_read += op.raw_len as u64;
            self.sh.bytes_done.fetch_add(u64::from(op.raw_len), Ordering::Relaxed);
            self.record(op.chunk, entry)?;
        }
        Ok(())
    }

    /// Hash and compress the chunk in `buf` into the current staging buffer.
    fn stage(&mut self, buf: usize, op: ReadOp, raw_hash: u128) -> Result<IndexEntry> {
        let raw_len = op.raw_len as usize;
        let st = self.staging[self.cur];
        let (slot, base) = st.target.expect("make_room opened the staging buffer");
        let (raw, out) = self.io.buffer_pair(buf, st.buf);
        let raw = &raw[..raw_len];
        let t2 = Instant::now();
        let frame = &mut out[st.fill..];
        let (codec, stored_len) = self.enc.encode(raw, &mut frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + raw_len]);
        let t3 = Instant::now();
        let stored_hash = xxhash_rust::xxh3::xxh3_64(&frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + stored_len]);
        let header = FrameHeader {
            image_id: self.sh.image_id,
            chunk: op.chunk,
            raw_len: op.raw_len,
            stored_len: stored_len as u32,
            codec,
            raw_hash,
            stored_hash,
        };
        header.encode(frame);
        let len = frame_len(stored_len as u32) as usize;
        // Padding must be zeros, not whatever the buffer held before.
        frame[FRAME_HEADER_BYTES + stored_len..len].fill(0);
        let s = &mut self.report.stats;
        s.nanos_hash += t3.elapsed().as_nanos() as u64;
        s.nanos_compress += (t3 - t2).as_nanos() as u64;
        s.chunks_stored += 1;
        s.bytes_stored_payload += stored_len as u64;
        if codec == crate::format::frame::Codec::None {
            s.chunks_stored_raw += 1;
            s.bytes_stored_raw += stored_len as u64;
        }
        let offset = base + st.fill as u64;
        self.staging[self.cur].fill += len;
        self.staged_since.get_or_insert_with(Instant::now);
        let seg = self.segment_in(slot);
        seg.frames += 1;
        Ok(IndexEntry {
            state: ChunkState::Stored,
            segment: seg.seq,
            offset,
            stored_len: stored_len as u32,
            raw_len: op.raw_len,
            raw_hash,
            image_id: self.sh.image_id,
        })
    }

    fn segment_in(&mut self, slot: usize) -> &mut OpenSegment {
        match (&mut self.seg, &mut self.closing) {
            (Some(s), _) if s.slot == slot => s,
            (_, Some(s)) if s.slot == slot => s,
            _ => unreachable!("no open segment in slot {slot}"),
        }
    }

    /// Make sure the current staging buffer can take one more frame of the
    /// largest size. Returns false when that needs a write to finish first.
    fn make_room(&mut self) -> Result<bool> {
        let max_frame = frame_len_max(self.sh.chunk_bytes) as usize;
        let st = self.staging[self.cur];
        if st.in_flight {
            // Still being written from the last time round: wait for it.
            return Ok(false);
        }
        if st.target.is_some() && st.fill + max_frame <= self.sh.staging_bytes {
            return Ok(true);
        }
        if st.target.is_some() {
            self.submit_staging(self.cur);
            self.cur ^= 1;
        }
        if self.staging[self.cur].in_flight {
            return Ok(false);
        }
        self.open_staging(self.cur)?;
        Ok(true)
    }

    /// Point an idle staging buffer at the end of the current segment,
    /// rolling over to a new segment when this one is full.
    fn open_staging(&mut self, i: usize) -> Result<()> {
        let roll = match &self.seg {
            None => true,
            Some(s) => s.next_offset + self.sh.staging_bytes as u64 > self.sh.segment_size_bytes && s.frames > 0,
        };
        if roll {
            self.roll_segment()?;
        }
        let seg = self.seg.as_ref().expect("a segment is open");
        let (slot, seq, base) = (seg.slot, seg.seq, seg.next_offset);
        let buf = self.staging[i].buf;
        let mut fill = 0;
        if base == 0 {
            SegmentHeader { image_id: self.sh.image_id, lane: self.lane, seq, chunk_bytes: self.sh.chunk_bytes }
                .encode(self.io.buffer_mut(buf));
            fill = SEGMENT_HEADER_BYTES;
        }
        self.staging[i] = Staging { buf, fill, target: Some((slot, base)), in_flight: false, written: 0, limit: 0 };
        Ok(())
    }

    fn submit_staging(&mut self, i: usize) {
        let st = self.staging[i];
        let (slot, offset) = st.target.expect("staging buffer has a target");
        debug_assert_eq!(st.fill % SEGMENT_HEADER_BYTES, 0);
        self.staged_since = None;
        let bytes = &self.io.buffer(st.buf)[..st.fill];
        let seg = match (&mut self.seg, &mut self.closing) {
            (Some(s), _) if s.slot == slot => s,
            (_, Some(s)) if s.slot == slot => s,
            _ => unreachable!("no open segment in slot {slot}"),
        };
        assert_eq!(seg.next_offset, offset, "staging buffers are written in order");
        seg.hasher.update(bytes);
        seg.next_offset += st.fill as u64;
        seg.writes_in_flight += 1;
        self.io.enqueue_write(slot, st.buf, 0, st.fill, offset, WRITE_FLAG | i as u64);
        self.staging[i].in_flight = true;
    }

    fn on_write(&mut self, c: Completion) -> Result<()> {
        let i = (c.user_data & !WRITE_FLAG) as usize;
        let st = self.staging[i];
        let (slot, offset) = st.target.expect("written staging buffer has a target");
        let path = self.segment_in(slot).path.clone();
        let done = st.written;
        match c.result {
            Err(e) if io::is_transient(&e) => {
                self.io.enqueue_write(slot, st.buf, done, st.fill - done, offset + done as u64, c.user_data);
                return Ok(());
            }
            // The disk is full for this write: write less at a time (down to
            // 4 KiB), so the frames that still fit are kept for --resume.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && st.fill - done > SEGMENT_HEADER_BYTES => {
                let was = if st.limit == 0 { st.fill - done } else { st.limit };
                let limit = (was / 2) & !(SEGMENT_HEADER_BYTES - 1);
                if limit >= SEGMENT_HEADER_BYTES {
                    self.staging[i].limit = limit;
                    let len = limit.min(st.fill - done);
                    self.io.enqueue_write(slot, st.buf, done, len, offset + done as u64, c.user_data);
                    return Ok(());
                }
                return Err(Error::io_at(
                    "write segment",
                    path,
                    offset + done as u64,
                    io::name_enospc(e, "destination"),
                ));
            }
            Err(e) => {
                return Err(Error::io_at(
                    "write segment",
                    path,
                    offset + done as u64,
                    io::name_enospc(e, "destination"),
                ))
            }
            // A short write (a filling disk): carry on with the rest from a
            // 4096-byte boundary (O_DIRECT needs one; writing a few bytes
            // again is harmless), which either completes or fails with the
            // real cause. No progress at all: the destination is full.
            Ok(n) if done + n < st.fill => {
                let aligned = (done + n) & !(SEGMENT_HEADER_BYTES - 1);
                if aligned <= done {
                    return Err(Error::io_at(
                        "write segment",
                        path,
                        offset + done as u64,
                        std::io::Error::other(format!(
                            "the write stopped after {} of {} bytes (no space left on the destination?)",
                            done + n,
                            st.fill
                        )),
                    ));
                }
                let done = aligned;
                self.staging[i].written = done;
                let len = if st.limit == 0 { st.fill - done } else { st.limit.min(st.fill - done) };
                self.io.enqueue_write(slot, st.buf, done, len, offset + done as u64, c.user_data);
                return Ok(());
            }
            Ok(_) => {}
        }
        self.staging[i] = Staging { buf: st.buf, fill: 0, target: None, in_flight: false, written: 0, limit: 0 };
        let seg = self.segment_in(slot);
        seg.writes_in_flight -= 1;
        let done = seg.writes_in_flight == 0;
        if done && self.closing.as_ref().is_some_and(|s| s.slot == slot) {
            let s = self.closing.take().expect("closing segment");
            self.close_segment(s)?;
        }
        Ok(())
    }

    fn roll_segment(&mut self) -> Result<()> {
        if let Some(old) = self.seg.take() {
            if old.writes_in_flight == 0 {
                self.close_segment(old)?;
            } else {
                assert!(self.closing.is_none(), "at most one segment is closing");
                self.closing = Some(old);
            }
        }
        let slot = match (&self.seg, &self.closing) {
            (_, Some(c)) if c.slot == 1 => 2,
            _ => 1,
        };
        let seq = self.sh.next_segment.fetch_add(1, Ordering::Relaxed);
        let path = self.sh.dir.join(segment_file_name(self.sh.image_id, seq));
        let (file, direct) = create_segment_file(&path)?;
        self.report.segments_direct &= direct;
        self.io.set_file(slot, Some(file)).map_err(|e| Error::io("register", path.clone(), e))?;
        self.seg = Some(OpenSegment {
            slot,
            seq,
            path,
            next_offset: 0,
            frames: 0,
            writes_in_flight: 0,
            hasher: Xxh3Default::new(),
        });
        Ok(())
    }

    /// All writes of `s` are done: make it durable and record it.
    fn close_segment(&mut self, s: OpenSegment) -> Result<()> {
        assert_eq!(s.writes_in_flight, 0);
        let synced = self.io.sync(s.slot);
        let file = self
            .io
            .set_file(s.slot, None)
            .map_err(|e| Error::io("release", s.path.clone(), e))?
            .expect("segment file in its slot");
        // A failed fsync means the kernel may have dropped our pages: the
        // run fails, and the segment's frames are not trusted — not even by
        // `--resume`, which would read them back from whatever is cached:
        // cut it to its header (its number stays, so the segments after it
        // stay usable), and its chunks are read again.
        if let Err(e) = synced {
            let dropped = file.set_len(SEGMENT_HEADER_BYTES as u64).and_then(|()| file.sync_all()).is_ok();
            let what = if dropped {
                "its frames were dropped; --resume reads its chunks again"
            } else {
                "its frames could not even be dropped; remove the set's unfinished files before resuming"
            };
            return Err(Error::io(
                "fsync segment",
                s.path.clone(),
                std::io::Error::new(e.kind(), format!("{e}; nothing in this segment is trusted: {what}")),
            ));
        }
        self.report.stats.bytes_segments += s.next_offset;
        self.report.segments.push(SegmentInfo {
            file: s.path.file_name().expect("file name").to_string_lossy().into_owned(),
            lane: self.lane,
            seq: s.seq,
            size_bytes: s.next_offset,
            frames: s.frames,
            xxh3_64: format!("{:016x}", s.hasher.digest()),
        });
        Ok(())
    }

    /// Write the current staging buffer once its first frame is older than
    /// [`STAGING_MAX_AGE`] and the other buffer is free to take over.
    fn write_if_old(&mut self) {
        let old = self.staged_since.is_some_and(|t| t.elapsed() >= STAGING_MAX_AGE);
        let (st, other) = (self.staging[self.cur], self.staging[self.cur ^ 1]);
        if old && st.target.is_some() && !st.in_flight && !other.in_flight {
            self.submit_staging(self.cur);
            self.cur ^= 1;
            self.staged_since = None;
        }
    }

    /// Write what is staged, wait for every write, close the segment.
    fn finish(&mut self) -> Result<()> {
        if self.staging[self.cur].target.is_some() {
            self.submit_staging(self.cur);
        }
        while self.io.in_flight() > 0 {
            self.io.flush(1).map_err(|e| Error::io("submit I/O for", self.sh.source.path.clone(), e))?;
            while let Some(c) = self.io.pop_completion() {
                self.dispatch(c)?;
            }
        }
        if let Some(s) = self.seg.take() {
            self.close_segment(s)?;
        }
        assert!(self.closing.is_none());
        assert!(self.batches.is_empty() || self.sh.stop.load(Ordering::Relaxed), "every batch finished");
        Ok(())
    }

    /// Store a chunk's entry; write a batch's entries once all are known.
    fn record(&mut self, chunk: u64, entry: IndexEntry) -> Result<()> {
        let pos = self
            .batches
            .iter()
            .position(|b| (b.first..b.end).contains(&chunk))
            .expect("chunk belongs to an open batch");
        let b = &mut self.batches[pos];
        b.entries[(chunk - b.first) as usize] = Some(entry);
        b.done += 1;
        if b.done < b.end - b.first {
            return Ok(());
        }
        let b = self.batches.remove(pos).expect("batch");
        let mut bytes = vec![0u8; b.entries.len() * INDEX_ENTRY_BYTES];
        for (e, out) in b.entries.iter().zip(bytes.chunks_exact_mut(INDEX_ENTRY_BYTES)) {
            e.expect("every chunk of a finished batch has an entry").encode(out);
        }
        let at = entry_offset(b.first);
        self.sh.index.write_all_at(&bytes, at).map_err(|e| Error::io_at("write index", self.sh.index_path, at, e))
    }
}

/// Create a new segment file (never replacing one), with O_DIRECT when the
/// filesystem allows it.
pub(crate) fn create_segment_file(path: &Path) -> Result<(File, bool)> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // The filesystem refuses O_DIRECT; the failed open may still have
            // created the (empty) file, which belongs to this run.
            if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
            open(false).map(|f| (f, false)).map_err(|e| Error::io("create segment", path, e))
        }
        Err(e) => Err(Error::io("create segment", path, e)),
    }
}

/// Read `[at, at+len)` (source offset `base + at`) with `read`; on failure
/// split in halves down to `sector` bytes, retrying each failing piece
/// `retries` times; collect the source ranges that never read.
fn bisect(
    read: &mut dyn FnMut(u64, u64) -> std::io::Result<()>,
    base: u64,
    at: u64,
    len: u64,
    sector: u64,
    retries: u32,
    bad: &mut Vec<(u64, u64)>,
) {
    for _ in 0..=retries {
        match read(at, len) {
            Ok(()) => return,
            // Stopped by a signal: the caller gives the chunk up.
            Err(_) if super::interrupted() => return,
            // Past the end of a file: the rest reads as zeros.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(_) if len > sector => break,
            Err(_) => {}
        }
    }
    if len <= sector {
        match bad.last_mut() {
            Some(last) if last.0 + last.1 == base + at => last.1 += len,
            _ => bad.push((base + at, len)),
        }
        return;
    }
    let half = (len / 2).div_ceil(sector) * sector;
    bisect(read, base, at, half, sector, retries, bad);
    bisect(read, base, at + half, len - half, sector, retries, bad);
}

/// True when every byte is zero. Reads 16 bytes at a time; stops at the
/// first non-zero word, so data chunks cost almost nothing.
pub fn is_zero(b: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only yields
        // correctly aligned, in-bounds middle elements.
        unsafe { b.align_to::<u128>() }
    };
    head.iter().all(|&x| x == 0) && body.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

/// Test builds only (feature `slowdown`): sleep as long as
/// `TINTYPE_SLOWDOWN_US_PER_CHUNK` says, once per chunk.
#[cfg(feature = "slowdown")]
fn slowdown() {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let us = *US
        .get_or_init(|| std::env::var("TINTYPE_SLOWDOWN_US_PER_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if us > 0 {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }
}

/// CPU time this thread has used, in nanoseconds.
pub(crate) fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check_finds_any_non_zero_byte() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v[1..]));
        for i in [0, 1, 15, 16, 17, 4000, 4098] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            assert!(i == 0 || !is_zero(&v[1..]), "byte {i} unaligned");
            v[i] = 0;
        }
    }
}
