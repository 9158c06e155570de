//! Writing indexes. [`IndexFile`]: the capture lanes' working table, in the
//! version-1 layout — the file sized for its chunks (zeros: state "unset"),
//! entries written at their places as they become known (lanes write
//! disjoint ranges, so no lock is needed). [`RunIndex`]: the committed
//! version-2 index, written front to back as runs, header last, then
//! fsync; capture (from its working table) and merge both write one.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index_reader::WINDOW_CHUNKS;
use crate::error::{Error, Result};
use crate::format::index::{
    entry_offset, ChunkState, IndexEntry, IndexHeader, Run, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES, RUN_RECORD_BYTES,
};

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

/// Open an index file to write afresh: created, or (a run's own) emptied.
fn open_new(path: &Path, existing: Existing) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    match existing {
        Existing::Refuse => o.create_new(true),
        Existing::Reuse => o.create(true).truncate(true),
    };
    o.open(path).map_err(|e| Error::io("create index", path, e))
}

impl IndexFile {
    /// The index of `chunk_count` chunks at `path`, every entry "unset".
    pub fn create(path: &Path, chunk_count: u64, existing: Existing) -> Result<IndexFile> {
        let file = open_new(path, existing)?;
        file.set_len(0)
            .and_then(|()| file.set_len(entry_offset(chunk_count)))
            .map_err(|e| Error::io("size index", path, e))?;
        Ok(IndexFile { file, path: path.into() })
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

    /// Write `entries` (chunk and entry, ascending) in runs of consecutive
    /// chunks, at most a window long, one write a run.
    pub fn write_singles(&self, entries: impl Iterator<Item = (u64, IndexEntry)>) -> Result<()> {
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

    /// The finished working table as the committed index, written as runs
    /// to `dest` (the run's own temporary file), which then replaces the
    /// working table at its path. `parts` cover every chunk in order: runs
    /// known without the table, and ranges whose entries the lanes wrote
    /// into it (read back a window at a time). Time and I/O follow the
    /// parts, not the chunk count. An entry never written is an error.
    pub fn commit_as_runs(self, header: IndexHeader, dest: &Path, parts: &[Part]) -> Result<(Written, Tally)> {
        let mut out = RunIndex::create(dest, Existing::Reuse)?;
        let mut buf = vec![0u8; INDEX_ENTRY_BYTES * WINDOW_CHUNKS];
        for part in parts {
            match part {
                Part::Known(run) => out.push(*run)?,
                Part::Read(range) => self.copy_entries(range.clone(), &mut buf, &mut out)?,
            }
        }
        let tally = out.tally;
        let written = out.finish(header)?;
        std::fs::rename(dest, &self.path).map_err(|e| Error::io("rename index into place", dest, e))?;
        Ok((written, tally))
    }

    /// The entries of `chunks`, read from the table, pushed as runs of one.
    fn copy_entries(&self, chunks: Range<u64>, buf: &mut [u8], out: &mut RunIndex) -> Result<()> {
        let mut first = chunks.start;
        while first < chunks.end {
            let n = (chunks.end - first).min(WINDOW_CHUNKS as u64) as usize;
            let at = entry_offset(first);
            let b = &mut buf[..n * INDEX_ENTRY_BYTES];
            self.file.read_exact_at(b, at).map_err(|e| Error::io_at("read index", &self.path, at, e))?;
            for (i, raw) in b.chunks_exact(INDEX_ENTRY_BYTES).enumerate() {
                let chunk = first + i as u64;
                let never =
                    || Error::corrupt(&self.path, entry_offset(chunk), format!("chunk {chunk} was never recorded"));
                let entry = IndexEntry::decode(raw).ok().filter(|e| e.state != ChunkState::Unset).ok_or_else(never)?;
                out.push(Run { first: chunk, count: 1, entry })?;
            }
            first += n as u64;
        }
        Ok(())
    }
}

/// A stretch of an index being committed from a working table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Chunks whose entry was known before reading (kept by a resumed run,
    /// or unused by any filesystem): never in the table.
    Known(Run),
    /// Chunks the lanes read: their entries are in the table.
    Read(Range<u64>),
}

/// What an index holds, tallied as its runs are written: the manifest's
/// per-state statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub chunks_stored: u64,
    pub chunks_zero: u64,
    pub chunks_unused: u64,
    pub chunks_unreadable: u64,
    pub chunks_inherited: u64,
    /// Stored chunks whose payload is the raw chunk (codec 0), and their bytes.
    pub chunks_stored_raw: u64,
    pub bytes_stored_raw: u64,
    /// Payload bytes of every stored chunk.
    pub bytes_stored_payload: u64,
}

impl Tally {
    /// Put the per-state counts into the manifest's statistics.
    pub fn set_counts(&self, stats: &mut crate::format::manifest::Stats) {
        stats.chunks_zero = self.chunks_zero;
        stats.chunks_unused = self.chunks_unused;
        stats.chunks_inherited = self.chunks_inherited;
        stats.chunks_unreadable = self.chunks_unreadable;
        stats.chunks_stored_raw = self.chunks_stored_raw;
        stats.bytes_stored_raw = self.bytes_stored_raw;
        stats.bytes_stored_payload = self.bytes_stored_payload;
    }

    fn add(&mut self, run: &Run) {
        let e = &run.entry;
        match e.state {
            ChunkState::Stored => {
                self.chunks_stored += 1;
                self.bytes_stored_payload += u64::from(e.stored_len);
                if e.stored_len == e.raw_len {
                    self.chunks_stored_raw += 1;
                    self.bytes_stored_raw += u64::from(e.stored_len);
                }
            }
            ChunkState::Zero => self.chunks_zero += run.count,
            ChunkState::Unused => self.chunks_unused += run.count,
            ChunkState::Unreadable => self.chunks_unreadable += run.count,
            ChunkState::Inherited => self.chunks_inherited += run.count,
            ChunkState::Unset => {}
        }
    }
}

/// A version-2 index being written front to back: runs pushed in chunk
/// order, adjacent ones with the same entry folded into one record, the
/// header (with the record count) last, then fsync. Memory: one buffer of
/// records.
#[derive(Debug)]
pub struct RunIndex {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// The run still growing: written once the next one cannot join it.
    open: Option<Run>,
    records: u64,
    next_chunk: u64,
    pub tally: Tally,
}

/// The committed index's size and hash, for the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub size_bytes: u64,
    pub xxh3_128: u128,
}

impl RunIndex {
    /// A new index at `path` (which must not exist unless `existing` is
    /// [`Existing::Reuse`]: a run's own temporary file).
    pub fn create(path: &Path, existing: Existing) -> Result<RunIndex> {
        let file = open_new(path, existing)?;
        let buf = Vec::with_capacity(RUN_RECORD_BYTES * WINDOW_CHUNKS);
        Ok(RunIndex { file, path: path.into(), buf, open: None, records: 0, next_chunk: 0, tally: Tally::default() })
    }

    /// Add the next run (it starts where the one before ended). An
    /// inherited run records no hash: the ancestor holds it.
    pub fn push(&mut self, mut run: Run) -> Result<()> {
        assert_eq!(run.first, self.next_chunk, "runs are pushed in chunk order, without gaps");
        assert!(run.count > 0 && run.entry.state != ChunkState::Unset, "a committed index has only set runs");
        self.next_chunk = run.end();
        self.tally.add(&run);
        if run.entry.state == ChunkState::Inherited {
            run.entry.raw_hash = 0;
        }
        match &mut self.open {
            Some(open) if open.absorbs(&run) => open.count += run.count,
            _ => {
                if let Some(done) = self.open.replace(run) {
                    self.write_record(&done)?;
                }
            }
        }
        Ok(())
    }

    fn write_record(&mut self, run: &Run) -> Result<()> {
        let at = self.buf.len();
        self.buf.resize(at + RUN_RECORD_BYTES, 0);
        run.encode(&mut self.buf[at..]);
        self.records += 1;
        if self.buf.len() == self.buf.capacity() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let at = INDEX_HEADER_BYTES as u64 + (self.records * RUN_RECORD_BYTES as u64) - self.buf.len() as u64;
        self.file.write_all_at(&self.buf, at).map_err(|e| Error::io_at("write index", &self.path, at, e))?;
        self.buf.clear();
        Ok(())
    }

    /// Write the last records and the header (`header`'s version and
    /// record count are set here), make the file durable, and return its
    /// size and hash (read back: what is on disk is what the manifest names).
    pub fn finish(mut self, mut header: IndexHeader) -> Result<Written> {
        assert_eq!(self.next_chunk, header.chunk_count, "every chunk has a run");
        if let Some(done) = self.open.take() {
            self.write_record(&done)?;
        }
        self.flush()?;
        header.version = crate::format::FORMAT_VERSION;
        header.records = self.records;
        let mut head = [0u8; INDEX_HEADER_BYTES];
        header.encode(&mut head);
        self.file
            .write_all_at(&head, 0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("write index", &self.path, e))?;
        let xxh3_128 = crate::io::checksum::hash_file(&self.path)?;
        Ok(Written { size_bytes: header.file_bytes(), xxh3_128 })
    }
}
