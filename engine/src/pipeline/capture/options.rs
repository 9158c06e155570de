//! What `create` is asked to do: its options, their defaults and limits,
//! and what it reports.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::frame::{frame_len_max, CHUNK_BYTES_MAX};
use crate::format::manifest::{ImageKind, Manifest};
pub use crate::format::segment::DEFAULT_SEGMENT_BYTES;
use crate::format::segment::SEGMENT_HEADER_BYTES;
use crate::format::ImageId;
use crate::io::quiesce::WhenMounted;
use crate::io::IoChoice;
use crate::pipeline::lanes::available_cores;

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_BYTES: u32 = 1 << 20;

/// Default reads in flight per lane.
pub const DEFAULT_QUEUE_DEPTH: u32 = 8;

/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 1;

/// Bytes of source a lane claims at a time.
pub(crate) const BATCH_BYTES: u64 = 64 << 20;

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
    /// On unreadable sectors: stop, or image the rest and record them.
    pub on_read_error: OnReadError,
    /// Retries of a failing sector before it counts as unreadable.
    pub read_retries: u32,
    /// What to do with filesystems of the source mounted read-write:
    /// refuse, or freeze them (FIFREEZE) for the duration of the run.
    pub when_mounted: WhenMounted,
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
            when_mounted: WhenMounted::Refuse,
            on_read_error: OnReadError::Fail,
            read_retries: 2,
            staging_bytes: None,
        }
    }
}

/// What a read error of the source does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReadError {
    /// Stop, naming the unreadable byte ranges (the default).
    Fail,
    /// Find the exact bad sectors, store zeros there, record them, go on.
    Skip,
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

/// Each lane's two staging buffers: 8 MiB (or what was asked for), and room
/// for two frames of the largest size at least.
pub(crate) fn staging_bytes(chunk_bytes: u32, asked: Option<usize>) -> usize {
    let one = SEGMENT_HEADER_BYTES as u64 + frame_len_max(chunk_bytes);
    let want = asked.map_or(8u64 << 20, |n| crate::format::align_up(n as u64, SEGMENT_HEADER_BYTES as u64));
    want.max(2 * one) as usize
}

pub(crate) fn validate(o: &CreateOptions) -> Result<u32> {
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
    crate::pipeline::memory::check_buffer_memory(
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
