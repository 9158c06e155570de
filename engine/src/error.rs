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
    NotCommitted { path: PathBuf, why: String },
    /// An argument or setting is out of range.
    #[error("{0}")]
    InvalidSetting(String),
    /// The source or target cannot be used as asked.
    #[error("{path}: {why}")]
    Unusable { path: PathBuf, why: String },
    /// Another run holds the image set.
    #[error("{path}: the image set is in use: {why}")]
    Busy { path: PathBuf, why: String },
    /// An image cannot be read because an image it depends on is missing
    /// or does not fit: the chain from it to its full image is broken.
    #[error("{path}: image {image} cannot be used: {why}")]
    BrokenChain { path: PathBuf, image: String, why: String },
    /// The run was stopped before it finished.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

fn at_offset(offset: Option<u64>) -> String {
    match offset {
        Some(o) => format!(" at offset {o}"),
        None => String::new(),
    }
}

impl Error {
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
