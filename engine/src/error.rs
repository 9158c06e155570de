//! The library's error type. Every variant names the file (or device) and,
//! where one exists, the byte offset, so a message alone tells the user what
//! broke and where.

use std::io;
use std::path::PathBuf;

/// Errors returned by the Tintype library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed on a file or device.
    // The cause is part of the message and deliberately not a `#[source]`,
    // so printing the error chain does not repeat it.
    #[error("{op} {path}{}: {cause}", at_offset(*.offset))]
    Io { op: &'static str, path: PathBuf, offset: Option<u64>, cause: io::Error },
    /// A file exists but its bytes are not what the format says they must be.
    #[error("{path} at offset {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    /// A file was written by a newer (or unknown) version of the format.
    #[error("{path}: {what} format version {found}, but this build of tintype reads only version {supported}; use a newer tintype")]
    UnsupportedVersion { path: PathBuf, what: &'static str, found: u32, supported: u32 },
    /// The image has no committed manifest.
    #[error("{path}: not a committed image ({why})")]
    NotCommitted { path: PathBuf, reason: Uncommitted, why: String },
    /// An argument or setting is out of range.
    #[error("{0}")]
    InvalidSetting(String),
    /// The source or target cannot be used as asked.
    #[error("{path}: {why}")]
    Unusable { path: PathBuf, reason: Refusal, why: String },
    /// Another run holds the image set.
    #[error("{path}: the image set is in use: {why}")]
    Busy { path: PathBuf, why: String },
    /// An image cannot be read because an image it depends on is missing
    /// or does not fit: the chain from it to its full image is broken.
    #[error("{path}: image {image} cannot be used: {why}")]
    BrokenChain { path: PathBuf, image: String, reason: ChainBreak, why: String },
    /// The run was stopped before it finished: what it left, and the
    /// sentence that says so (and how to go on).
    #[error("interrupted: {why}")]
    Interrupted { left: Left, why: String },
}

/// What a run stopped by a signal left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Left {
    /// Nothing changed (verify, tune; a merge before its commit, whose files are removed).
    NothingChanged,
    /// An unfinished image: the same `create` with `--resume` carries it on.
    Resumable,
    /// A restore target holding part of the image: restore again (with `--force`) to finish.
    TargetIncomplete,
    /// A restore that finished writing, stopped while reading the target back.
    Unverified,
    /// Part of the work is committed: the same command (or the next merge or prune) finishes it.
    RunAgain,
    /// A lane that stopped because the run did (another lane failed, or a
    /// signal): the run's own error replaces it.
    Stopped,
}

/// Why a source, target or other file is refused (the kind a caller can
/// match; the error's message says it for a person).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Neither a block device nor a regular file.
    NotBlockDeviceOrFile,
    /// An image set must be a directory.
    NotADirectory,
    /// The source has no bytes.
    EmptySource,
    /// The source ended before the size it had when the run started.
    SourceShrank,
    /// It (or a partition of it, or a filesystem on a loop device over it) is mounted.
    Mounted,
    /// An incremental or differential of something other than the parent's source.
    NotTheParentsSource,
    /// `--used-only on`, and no filesystem could be mapped.
    NoFilesystemMapped,
    /// An unfinished run's journal of unreadable ranges cannot be read.
    JournalUnreadable,
    /// Too small: a target smaller than the image, a device too small to tune.
    TooSmall,
    /// The target's filesystem has no room for the image's data.
    NoSpace,
    /// The target's logical sector size differs from the source's.
    SectorSizeDiffers,
    /// The target holds data (`--force` overwrites it).
    HoldsData,
    /// `--allow-shrink` would cut data or a filesystem.
    ShrinkCutsData,
    /// The target is a file of the image set being restored.
    FileOfTheSet,
    /// A file that must be new exists (an overlay, a socket path).
    Exists,
    /// `--io uring` was asked for and io_uring cannot be used.
    IoUringUnavailable,
    /// The device is held by the kernel or another program.
    DeviceBusy,
    /// Another program holds the target's lock.
    Locked,
}

/// Why there is no committed image to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Uncommitted {
    /// The image's manifest file is missing.
    ManifestMissing,
    /// The set holds no committed image (perhaps unfinished runs).
    EmptySet,
    /// No image's ID starts with the selector.
    NoSuchImage,
    /// The selected image has data files but no manifest: its run did not finish.
    RunUnfinished,
    /// A merge replaced the selected image (the message names the replacement).
    Consolidated,
    /// No image to take changes against (an incremental or differential of an empty set).
    NoParent,
}

/// Why an image's chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainBreak {
    /// An image it depends on is not in the set.
    ParentMissing,
    /// An image it depends on does not load.
    ParentDamaged,
    /// An image and its parent describe different sources.
    DifferentSources,
    /// Its chain of parents loops.
    Loops,
    /// A manifest in the set does not load, so what depends on what cannot be told.
    ManifestUnreadable,
    /// A file of the image is missing or cut.
    FilesDamaged,
}

fn at_offset(offset: Option<u64>) -> String {
    match offset {
        Some(o) => format!(" at offset {o}"),
        None => String::new(),
    }
}

impl Error {
    /// A run stopped by a signal, leaving `left`.
    pub fn interrupted(left: Left, why: String) -> Self {
        Error::Interrupted { left, why }
    }

    /// An I/O error on `path` without a particular offset.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { op, path: path.into(), offset: None, cause: source }
    }

    /// An I/O error on `path` at byte `offset`.
    pub fn io_at(op: &'static str, path: impl Into<PathBuf>, offset: u64, source: io::Error) -> Self {
        Error::Io { op, path: path.into(), offset: Some(offset), cause: source }
    }

    /// The bytes of `path` at `offset` are not valid.
    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), offset, what: what.into() }
    }
}

/// Shorthand used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
