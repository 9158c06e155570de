//! What `merge` is asked to do and what it (and each consolidation) reports.

use std::path::PathBuf;

use serde::Serialize;

use crate::io::IoChoice;

/// How to run `merge`.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub set: PathBuf,
    /// A unique prefix of the Image ID of the image to consolidate.
    pub image: String,
    /// How much of the chain to fold.
    pub span: MergeSpan,
    /// Only [`IoChoice::Sim`] changes anything: merge reads and writes
    /// with plain positioned I/O (O_DIRECT where it can).
    pub io: IoChoice,
}

/// What a merge folds into the new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeSpan {
    /// The image and its parent: the new image stands on the parent's parent.
    #[default]
    Parent,
    /// The whole chain: the new image is a synthetic full image.
    WholeChain,
}

/// One image written by consolidation.
#[derive(Debug, Clone, Serialize)]
pub struct Consolidated {
    /// The new image.
    pub image_id: String,
    /// The image it stands in for (same point in time).
    pub replaces: String,
    /// The images whose frames it took.
    pub folded: Vec<String>,
    pub kind: String,
    pub parent: Option<String>,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    pub wall_seconds: f64,
}

/// What `merge` did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub merged: Consolidated,
    /// Images removed (no remaining image needs them).
    pub removed: Vec<String>,
    /// Images folded but kept, because other images still depend on them.
    pub kept: Vec<String>,
}
