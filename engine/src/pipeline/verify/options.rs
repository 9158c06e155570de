//! What `verify` is asked to do and what it finds.
use crate::io::IoChoice;
use serde::Serialize;
use std::path::PathBuf;

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
