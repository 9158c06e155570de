//! Reading an image's index in chunk order, a window of runs at a time:
//! memory bounded by the window, not by the device, and the file's xxh3-128
//! computed on the way. The header is checked against the manifest before
//! any run is handed out (FORMAT §7 checks 8–10). Both versions read as
//! runs: a version-2 record is one, a version-1 entry a run of one chunk.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Error, Result};
use crate::format::index::{EntryError, IndexEntry, IndexHeader, IndexHeaderError, Run, INDEX_HEADER_BYTES};
use crate::format::manifest::Manifest;
use crate::format::{ImageId, Xxh128, FORMAT_VERSION};

/// Entries or records per window: at most 256 KiB of index read at a time.
pub const WINDOW_CHUNKS: usize = 4096;

/// A version-1 entry that does not decode: its chunk, and why. (A damaged
/// version-2 record is an error of the whole index: the runs after it
/// cannot be placed.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEntry {
    pub chunk: u64,
    pub why: EntryError,
}

/// One run, or the version-1 entry that does not decode.
pub type RunResult = std::result::Result<Run, BadEntry>;

/// An open index, read front to back.
pub struct IndexStream {
    file: File,
    path: PathBuf,
    hasher: Xxh3Default,
    expected: Xxh128,
    /// The first chunk the next run must start at.
    next_chunk: u64,
    /// Entries (version 1) or records (version 2) read so far.
    read: u64,
    /// File offset of the last window's first entry or record.
    window_at: u64,
    buf: Vec<u8>,
    pub header: IndexHeader,
}

impl std::fmt::Debug for IndexStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexStream").field("path", &self.path).field("next_chunk", &self.next_chunk).finish()
    }
}

impl IndexStream {
    /// Open the index at `path` of image `id` described by `m`, and check
    /// its header and size against the manifest.
    pub fn open(path: &Path, id: ImageId, m: &Manifest) -> Result<IndexStream> {
        let mut file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::corrupt(path, 0, "the image's index file is missing"),
            _ => Error::io("open index", path, e),
        })?;
        let len = file.metadata().map_err(|e| Error::io("stat index", path, e))?.len();
        let mut hasher = Xxh3Default::new();
        let mut head = [0u8; INDEX_HEADER_BYTES];
        file.read_exact(&mut head).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::corrupt(
                path,
                0,
                format!("index is {len} bytes, shorter than its {INDEX_HEADER_BYTES}-byte header"),
            ),
            _ => Error::io_at("read index", path, 0, e),
        })?;
        hasher.update(&head);
        let header = IndexHeader::decode(&head).map_err(|e| match e {
            IndexHeaderError::Version(v) => Error::UnsupportedVersion {
                path: path.to_path_buf(),
                what: "index",
                found: u32::from(v),
                supported: u32::from(FORMAT_VERSION),
            },
            other => Error::corrupt(path, 0, other.to_string()),
        })?;
        if header.image_id != id
            || header.chunk_count != m.chunk_count
            || header.chunk_bytes != m.chunk_size_bytes
            || header.source_bytes != m.source.size_bytes
            || header.parent.map(|p| p.to_string()) != m.parent
            || u32::from(header.version) != m.format_version
        {
            return Err(Error::corrupt(
                path,
                0,
                "index header does not match the manifest (image, version, chunk size or count)",
            ));
        }
        let expected = header.file_bytes();
        if len != expected || len != m.index.size_bytes {
            return Err(Error::corrupt(
                path,
                len.min(expected),
                format!("index is {len} bytes; its header says {expected} and its manifest {}", m.index.size_bytes),
            ));
        }
        Ok(IndexStream {
            file,
            path: path.to_path_buf(),
            hasher,
            expected: m.index.xxh3_128,
            next_chunk: 0,
            read: 0,
            window_at: INDEX_HEADER_BYTES as u64,
            buf: vec![0u8; header.entry_bytes() * WINDOW_CHUNKS],
            header,
        })
    }

    /// Entries (version 1) or records (version 2) in the file.
    fn total(&self) -> u64 {
        match self.header.version {
            1 => self.header.chunk_count,
            _ => self.header.records,
        }
    }

    /// Replace `out` with the next window of runs, in chunk order, each
    /// starting where the one before ended; false once every run has been
    /// read. A version-2 record that does not decode or does not follow
    /// on from the one before is an error naming its offset.
    pub fn next_runs(&mut self, out: &mut Vec<RunResult>) -> Result<bool> {
        out.clear();
        let n = (self.total() - self.read).min(WINDOW_CHUNKS as u64) as usize;
        if n == 0 {
            return self.check_covered().map(|()| false);
        }
        let size = self.header.entry_bytes();
        let at = INDEX_HEADER_BYTES as u64 + self.read * size as u64;
        self.window_at = at;
        let b = &mut self.buf[..n * size];
        self.file.read_exact(b).map_err(|e| Error::io_at("read index", &self.path, at, e))?;
        self.hasher.update(b);
        // Counted as read before they are checked: a bad record below
        // leaves the file where `drain` carries on from.
        self.read += n as u64;
        let (image, parent, chunk_count) = (self.header.image_id, self.header.parent, self.header.chunk_count);
        for (i, rec) in b.chunks_exact(size).enumerate() {
            let offset = at + (i * size) as u64;
            let run = match self.header.version {
                1 => IndexEntry::decode(rec)
                    .map(|entry| Run { first: self.next_chunk, count: 1, entry })
                    .map_err(|why| BadEntry { chunk: self.next_chunk, why }),
                _ => {
                    let run = Run::decode(rec, image, parent)
                        .map_err(|why| Error::corrupt(&self.path, offset, format!("index record: {why}")))?;
                    if run.first != self.next_chunk || run.count > chunk_count - run.first {
                        return Err(Error::corrupt(
                            &self.path,
                            offset,
                            format!(
                                "index record for chunks {}..{} does not follow on from chunk {} (of {chunk_count})",
                                run.first,
                                run.first.saturating_add(run.count),
                                self.next_chunk
                            ),
                        ));
                    }
                    Ok(run)
                }
            };
            self.next_chunk += run.as_ref().map_or(1, |r| r.count);
            out.push(run);
        }
        Ok(true)
    }

    /// Once every record is read: they covered every chunk.
    fn check_covered(&self) -> Result<()> {
        if self.next_chunk == self.header.chunk_count {
            return Ok(());
        }
        Err(Error::corrupt(
            &self.path,
            self.header.file_bytes(),
            format!(
                "the index's runs end at chunk {}, but the image has {} chunks",
                self.next_chunk, self.header.chunk_count
            ),
        ))
    }

    /// Whether the whole file's xxh3-128 equals the manifest's; None until
    /// every run has been read.
    pub fn hash_matches(&self) -> Option<bool> {
        (self.read == self.total()).then(|| Xxh128(self.hasher.digest128()) == self.expected)
    }

    /// Read the rest of the file for its hash only (a reader that stopped
    /// at a bad run still says whether the file is the manifest's); errors
    /// of the runs themselves are not repeated.
    pub fn drain(&mut self) -> Result<()> {
        let size = self.header.entry_bytes();
        while self.read < self.total() {
            let n = (self.total() - self.read).min(WINDOW_CHUNKS as u64) as usize;
            let at = INDEX_HEADER_BYTES as u64 + self.read * size as u64;
            let b = &mut self.buf[..n * size];
            self.file.read_exact(b).map_err(|e| Error::io_at("read index", &self.path, at, e))?;
            self.hasher.update(b);
            self.read += n as u64;
        }
        Ok(())
    }

    /// Where the `i`-th run of the last window lies in the file (its
    /// version-2 record or version-1 entry), for messages.
    pub fn at(&self, i: usize) -> u64 {
        self.window_at + (i * self.header.entry_bytes()) as u64
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
