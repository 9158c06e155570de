//! Reading an image's index in chunk order, a window of entries at a time:
//! memory bounded by the window, not by the device, and the file's xxh3-128
//! computed on the way. The header is checked against the manifest before
//! any entry is handed out (FORMAT §7 checks 8–10).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Error, Result};
use crate::format::index::{
    entry_offset, EntryError, IndexEntry, IndexHeader, IndexHeaderError, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES,
};
use crate::format::manifest::Manifest;
use crate::format::{ImageId, Xxh128, FORMAT_VERSION};

/// Entries per window: 192 KiB of index read at a time.
pub const WINDOW_CHUNKS: usize = 4096;

/// One decoded entry, or why it does not decode.
pub type EntryResult = std::result::Result<IndexEntry, EntryError>;

/// An open index, read front to back.
pub struct IndexStream {
    file: File,
    path: PathBuf,
    hasher: Xxh3Default,
    expected: Xxh128,
    next_chunk: u64,
    chunk_count: u64,
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
    /// its size and header against the manifest.
    pub fn open(path: &Path, id: ImageId, m: &Manifest) -> Result<IndexStream> {
        let mut file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::corrupt(path, 0, "the image's index file is missing"),
            _ => Error::io("open index", path, e),
        })?;
        let expected = entry_offset(m.chunk_count);
        let len = file.metadata().map_err(|e| Error::io("stat index", path, e))?.len();
        if len != expected || len != m.index.size_bytes {
            return Err(Error::corrupt(
                path,
                len.min(expected),
                format!("index is {len} bytes; {} chunks need {expected}", m.chunk_count),
            ));
        }
        let mut hasher = Xxh3Default::new();
        let mut head = [0u8; INDEX_HEADER_BYTES];
        file.read_exact(&mut head).map_err(|e| Error::io_at("read index", path, 0, e))?;
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
        {
            return Err(Error::corrupt(
                path,
                0,
                "index header does not match the manifest (image, chunk size or count)",
            ));
        }
        Ok(IndexStream {
            file,
            path: path.to_path_buf(),
            hasher,
            expected: m.index.xxh3_128,
            next_chunk: 0,
            chunk_count: m.chunk_count,
            buf: vec![0u8; INDEX_ENTRY_BYTES * WINDOW_CHUNKS],
            header,
        })
    }

    /// Replace `out` with the next window of entries (up to
    /// [`WINDOW_CHUNKS`]) and return the first one's chunk number; None
    /// once every entry has been read.
    pub fn next_window(&mut self, out: &mut Vec<EntryResult>) -> Result<Option<u64>> {
        out.clear();
        let first = self.next_chunk;
        let n = (self.chunk_count - first).min(WINDOW_CHUNKS as u64) as usize;
        if n == 0 {
            return Ok(None);
        }
        let at = entry_offset(first);
        let b = &mut self.buf[..n * INDEX_ENTRY_BYTES];
        self.file.read_exact(b).map_err(|e| Error::io_at("read index", &self.path, at, e))?;
        self.hasher.update(b);
        out.extend(b.chunks_exact(INDEX_ENTRY_BYTES).map(IndexEntry::decode));
        self.next_chunk += n as u64;
        Ok(Some(first))
    }

    /// Whether the whole file's xxh3-128 equals the manifest's; None until
    /// every entry has been read.
    pub fn hash_matches(&self) -> Option<bool> {
        (self.next_chunk == self.chunk_count).then(|| Xxh128(self.hasher.digest128()) == self.expected)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
