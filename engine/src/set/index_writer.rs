//! Writing an image's index: the file sized for its chunks (zeros: state
//! "unset"), entries written in runs at their places as they become known
//! (lanes write disjoint ranges, so no lock is needed), the header last,
//! then fsync. Capture and merge both write through [`IndexFile`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index_reader::WINDOW_CHUNKS;
use crate::error::{Error, Result};
use crate::format::index::{entry_offset, IndexEntry, IndexHeader, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES};

/// An index being written.
#[derive(Debug)]
pub struct IndexFile {
    file: File,
    path: PathBuf,
}

/// Whether an index file may already be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A new image's index: never replaces a file.
    Refuse,
    /// A resumed run's own index: emptied and written afresh.
    Reuse,
}

impl IndexFile {
    /// The index of `chunk_count` chunks at `path`, every entry "unset".
    pub fn create(path: &Path, chunk_count: u64, existing: Existing) -> Result<IndexFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        match existing {
            Existing::Refuse => o.create_new(true),
            Existing::Reuse => o.create(true).truncate(false),
        };
        let file = o.open(path).map_err(|e| Error::io("create index", path, e))?;
        file.set_len(0)
            .and_then(|()| file.set_len(entry_offset(chunk_count)))
            .map_err(|e| Error::io("size index", path, e))?;
        Ok(IndexFile { file, path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the entries of chunks `first..first + entries.len()` with one
    /// positioned write.
    pub fn write_entries(&self, first: u64, entries: &[IndexEntry]) -> Result<()> {
        let mut bytes = vec![0u8; entries.len() * INDEX_ENTRY_BYTES];
        for (e, out) in entries.iter().zip(bytes.chunks_exact_mut(INDEX_ENTRY_BYTES)) {
            e.encode(out);
        }
        let at = entry_offset(first);
        self.file.write_all_at(&bytes, at).map_err(|e| Error::io_at("write index", &self.path, at, e))
    }

    /// Write `entries` (chunk and entry, in ascending chunk order) in runs
    /// of consecutive chunks, at most a window long, one write a run.
    pub fn write_runs(&self, entries: impl Iterator<Item = (u64, IndexEntry)>) -> Result<()> {
        let mut run: Vec<IndexEntry> = Vec::new();
        let mut first = 0;
        for (chunk, e) in entries {
            if !run.is_empty() && (chunk != first + run.len() as u64 || run.len() == WINDOW_CHUNKS) {
                self.write_entries(first, &run)?;
                run.clear();
            }
            if run.is_empty() {
                first = chunk;
            }
            run.push(e);
        }
        if !run.is_empty() {
            self.write_entries(first, &run)?;
        }
        Ok(())
    }

    /// Write the header (once every entry is written) and make the index durable.
    pub fn finish(&self, header: &IndexHeader) -> Result<()> {
        let mut head = [0u8; INDEX_HEADER_BYTES];
        header.encode(&mut head);
        self.file
            .write_all_at(&head, 0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("write index", &self.path, e))
    }
}
