//! What `restore` is asked to do and what it reports.
use crate::io::IoChoice;
use crate::pipeline::verify::options::BadChunk;
use serde::Serialize;
use std::path::PathBuf;

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
