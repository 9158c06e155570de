//! One capture lane: a thread with its own ring, read buffers, compressor and
//! open segment. The walk of one chunk stays on its core: read
//! (`read.rs`), zero check, hash, compare and compress into a staging
//! buffer (`stage.rs`), append to the segment (`write.rs`), index entry
//! (`record_entry`, here).
//!
//! Buffers: ids `0..queue_depth` are read buffers of one chunk each; the two
//! after them are staging buffers that alternate: one fills with frames while
//! the other is written with one large sequential O_DIRECT append.
//! File slots: 0 is the source; 1 and 2 alternate between the segment being
//! written and the previous one while its last write finishes.

mod read;
pub mod shared;
mod stage;
mod write;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use self::shared::{latency_histogram, CaptureShared, LaneReport, LaneStats};
use crate::codec::Encoder;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::index::{IndexEntry, ZeroHashes};
use crate::io::Completion;
use crate::io::{self, Io};
use crate::pipeline::lanes::WRITE_TAG;
use crate::set::segment_writer::OpenSegment;

pub(crate) const SLOT_SOURCE: usize = 0;

#[derive(Debug)]
pub(crate) struct Batch {
    pub first: u64,
    pub end: u64,
    pub next: u64,
    pub done: u64,
    pub entries: Vec<Option<IndexEntry>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Staging {
    pub buf: usize,
    pub fill: usize,
    /// Which segment (by slot) and where in it this staging buffer goes;
    /// None while it holds nothing.
    pub target: Option<(usize, u64)>,
    pub in_flight: bool,
    /// Bytes of `fill` already written (a short write is carried on).
    pub written: usize,
    /// After ENOSPC, the most bytes one write may carry (0: no limit), so
    /// the space left still takes every complete frame that fits.
    pub limit: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOp {
    pub chunk: u64,
    pub raw_len: u32,
    pub read_len: u32,
    pub got: u32,
    pub submitted: Instant,
    /// The raw hash, once computed (a chunk may wait for a staging buffer).
    pub hash: Option<u128>,
    /// No sector of the chunk could be read (recorded "unreadable").
    pub unreadable: bool,
}

pub(crate) struct CaptureLane<'a> {
    pub sh: &'a CaptureShared<'a>,
    pub lane: u32,
    pub io: Box<dyn Io>,
    pub enc: Encoder,
    pub free_reads: Vec<usize>,
    pub reads: Vec<Option<ReadOp>>,
    pub ready: VecDeque<usize>,
    pub batches: VecDeque<Batch>,
    pub staging: [Staging; 2],
    pub cur: usize,
    pub seg: Option<LaneSegment>,
    pub closing: Option<LaneSegment>,
    pub zero_hashes: ZeroHashes,
    pub report: LaneReport,
    /// When the current staging buffer got its first frame: a buffer that
    /// fills slowly (compressible data) is written after at most
    /// [`STAGING_MAX_AGE`] anyway, so a killed run loses little.
    pub staged_since: Option<Instant>,
}

/// How long frames may wait in a staging buffer before they are written.
pub(crate) const STAGING_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

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
            return Err(Error::interrupted(
                Left::Stopped,
                if crate::observe::interrupted() {
                    "stopped by a signal".into()
                } else {
                    "another lane stopped the run".into()
                },
            ));
        }
        self.finish()?;
        self.report.stats.nanos_cpu = thread_cpu_nanos();
        Ok(self.report)
    }

    /// Write what is staged, wait for every write, close the segment.
    pub(super) fn finish(&mut self) -> Result<()> {
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

    /// Route a completion: a staging buffer's write, or a chunk's read.
    fn dispatch(&mut self, c: Completion) -> Result<()> {
        if c.user_data & WRITE_TAG != 0 {
            self.on_write(c)
        } else {
            self.on_read(c)
        }
    }

    /// Store a chunk's entry; write a batch's entries once all are known.
    pub(super) fn record_entry(&mut self, chunk: u64, entry: IndexEntry) -> Result<()> {
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
        let entries: Vec<IndexEntry> =
            b.entries.iter().map(|e| e.expect("every chunk of a finished batch has an entry")).collect();
        self.sh.index.write_entries(b.first, &entries)
    }
}

/// CPU time this thread has used, in nanoseconds.
pub(crate) fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The lane's open segment, in file slot `slot`, with its writes in flight.
#[derive(Debug)]
pub(crate) struct LaneSegment {
    pub slot: usize,
    pub writes_in_flight: u32,
    pub seg: OpenSegment,
}
