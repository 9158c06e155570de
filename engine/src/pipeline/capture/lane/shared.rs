//! What the lanes of one capture share (read-only but for atomics), and
//! what each lane reports when it ends.

use crate::pipeline::capture::start::ParentHashes;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

use crate::format::manifest::SegmentInfo;
use crate::format::ImageId;
use crate::io::{device::Source, Backend};
use crate::pipeline::capture::options::OnReadError;
use crate::pipeline::plan::Plan;
use crate::set::index_writer::IndexFile;

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
    pub index: &'a IndexFile,
    /// Set when a lane fails (or the run is interrupted): the others stop
    /// claiming work, finish what is in flight and return.
    pub stop: &'a AtomicBool,
    pub bytes_done: AtomicU64,
    pub next_segment: AtomicU32,
    /// For a differential or incremental: the parent's raw hash of every
    /// chunk, and its ID. A chunk that hashes the same is inherited.
    pub parent: Option<&'a ParentHashes>,
    /// On a read error: stop, or find the bad sectors and image the rest.
    pub on_read_error: OnReadError,
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
    pub(crate) fn raw_len(&self, chunk: u64) -> u32 {
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
