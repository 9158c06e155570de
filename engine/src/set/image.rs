//! A committed image: its manifest loaded and checked against its file
//! name, where its files are, the checks of its files and index entries,
//! and reading its index or one chunk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index_reader::IndexStream;
use crate::codec::Decoder;
use crate::error::Uncommitted;
use crate::error::{Error, Result};
use crate::format::frame::{check_frame, frame_len, FRAME_HEADER_BYTES};
use crate::format::index::{entry_offset, ChunkState, EntryError, IndexEntry, IndexHeader, Run, ZeroHashes};
use crate::format::manifest::{Manifest, ManifestError};
use crate::format::names::manifest_file_name;
use crate::format::Xxh128;
use crate::format::Xxh64;
use crate::format::{ImageId, FORMAT_VERSION};

/// A committed image: its manifest and where its files are.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub committed_nanos: i128,
}

/// An image's index as read from disk.
#[derive(Debug)]
pub struct IndexData {
    pub header: IndexHeader,
    /// One per chunk; an entry that does not decode carries why.
    pub entries: Vec<Result<IndexEntry, EntryError>>,
    /// Whether the file's xxh3-128 equals the manifest's.
    pub hash_matches: bool,
}

impl Image {
    /// Load and validate the manifest of image `id` in `dir`.
    pub fn load(dir: &Path, id: ImageId) -> Result<Image> {
        let manifest_path = dir.join(manifest_file_name(id));
        let bytes = match std::fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (reason, why) = (Uncommitted::ManifestMissing, "the manifest is missing".into());
                return Err(Error::NotCommitted { path: manifest_path, reason, why });
            }
            Err(e) => return Err(Error::io("read manifest", manifest_path, e)),
        };
        let manifest = Manifest::from_json(&bytes).map_err(|e| match e {
            ManifestError::Foreign(why) => Error::corrupt(&manifest_path, 0, why),
            ManifestError::Version(v) => Error::UnsupportedVersion {
                path: manifest_path.clone(),
                what: "manifest",
                found: v,
                supported: u32::from(FORMAT_VERSION),
            },
            ManifestError::Invalid(why) => Error::corrupt(&manifest_path, 0, format!("invalid manifest: {why}")),
        })?;
        if manifest.id() != id {
            return Err(Error::corrupt(
                &manifest_path,
                0,
                format!("manifest names image {} but its file name says {id}", manifest.image_id),
            ));
        }
        let committed_nanos = std::fs::metadata(&manifest_path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Image { dir: dir.into(), manifest, manifest_path, committed_nanos })
    }

    pub fn id(&self) -> ImageId {
        self.manifest.id()
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.index.file)
    }

    pub fn segment_path(&self, n: usize) -> PathBuf {
        self.dir.join(&self.manifest.segments[n].file)
    }

    /// Are the image's files there as its manifest lists them: the index and
    /// every segment, each a regular file of the recorded size, and with
    /// `hashes` the index's xxh3-128 the recorded one? A cheap check
    /// (metadata, and the index), not a verify: it is what must hold before
    /// an image this one replaced is removed, and what `list` shows.
    pub fn check_files(&self, hashes: IndexHash) -> std::result::Result<(), FileProblem> {
        let size_of = |path: &Path, want: u64| -> std::result::Result<(), FileProblem> {
            let path = path.to_path_buf();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() == want => Ok(()),
                Ok(m) if m.is_file() => Err(FileProblem::WrongSize { path, len: m.len(), want }),
                Ok(_) => Err(FileProblem::NotAFile { path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FileProblem::Missing { path }),
                Err(e) => Err(FileProblem::Unreadable { path, cause: e.to_string() }),
            }
        };
        size_of(&self.index_path(), self.manifest.index.size_bytes)?;
        for (n, s) in self.manifest.segments.iter().enumerate() {
            size_of(&self.segment_path(n), s.size_bytes)?;
        }
        if hashes == IndexHash::Check {
            let path = self.index_path();
            let got = crate::io::checksum::hash_file(&path)
                .map_err(|e| FileProblem::Unreadable { path: path.clone(), cause: e.to_string() })?;
            let want = self.manifest.index.xxh3_128;
            if Xxh128(got) != want {
                let (algorithm, got, want) = ("xxh3-128", Xxh128(got).to_string(), want.to_string());
                return Err(FileProblem::HashDiffers { path, algorithm, got, want });
            }
        }
        Ok(())
    }

    /// Does every segment's xxh3-64 equal the one its manifest records?
    /// Reads every segment whole: what must hold before the only other copy
    /// of this image's point in time is removed on its behalf.
    pub fn check_segment_hashes(&self) -> std::result::Result<(), FileProblem> {
        for (n, s) in self.manifest.segments.iter().enumerate() {
            let path = self.segment_path(n);
            let got = crate::io::checksum::stream_file(&path, |_| Ok(()))
                .map_err(|e| FileProblem::Unreadable { path: path.clone(), cause: e.to_string() })?
                .digest();
            if Xxh64(got) != s.xxh3_64 {
                let (algorithm, got, want) = ("xxh3-64", Xxh64(got).to_string(), s.xxh3_64.to_string());
                return Err(FileProblem::HashDiffers { path, algorithm, got, want });
            }
        }
        Ok(())
    }

    /// Byte offset of `chunk` in the source, and its raw length.
    pub fn chunk_extent(&self, chunk: u64) -> (u64, u32) {
        let cs = u64::from(self.manifest.chunk_size_bytes);
        let start = chunk * cs;
        let len = cs.min(self.manifest.source.size_bytes - start);
        (start, len as u32)
    }

    /// Does a stored entry point at a whole frame inside one of the image's
    /// segments (past the segment header, aligned, within its size)?
    pub fn check_stored_location(&self, e: &IndexEntry) -> Result<(), String> {
        let Some(seg) = self.manifest.segments.get(e.segment as usize) else {
            return Err(format!(
                "index names segment {}, but the image has {}",
                e.segment,
                self.manifest.segments.len()
            ));
        };
        if e.stored_len > e.raw_len {
            return Err(format!("index stored length {} exceeds the raw length {}", e.stored_len, e.raw_len));
        }
        if e.offset < crate::format::segment::SEGMENT_HEADER_BYTES as u64
            || e.offset % crate::format::FRAME_ALIGN_BYTES != 0
            || e.offset.checked_add(frame_len(e.stored_len)).is_none_or(|end| end > seg.size_bytes)
        {
            return Err(format!(
                "index points at offset {} (+{} bytes), outside the frames of {} ({} bytes)",
                e.offset,
                frame_len(e.stored_len),
                seg.file,
                seg.size_bytes
            ));
        }
        Ok(())
    }

    /// Is entry `chunk` of this image's index one a reader may use: a state
    /// a committed image may hold, the chunk's length, and every field as
    /// FORMAT §5 "Field values per state" says — a stored frame inside the
    /// image's segments and naming this image; zero, unused and unreadable
    /// entries with no location, no image, and the hash their state fixes;
    /// an inherited chunk naming the parent. The one check verify, restore,
    /// serve and merge all apply (through [`super::chain::Resolved::load`]).
    pub fn check_entry(&self, chunk: u64, e: &IndexEntry, zero: &mut ZeroHashes) -> Result<(), String> {
        if e.state == ChunkState::Unset {
            return Err(format!("chunk {chunk}: the entry was never written"));
        }
        e.check_fields(chunk, self.chunk_extent(chunk).1, zero)?;
        match e.state {
            ChunkState::Stored => {
                self.check_stored_location(e)
                    .map_err(|why| format!("chunk {chunk}: the index points outside the image's segments: {why}"))?;
                if e.image_id != self.id() {
                    return Err(format!("chunk {chunk}: a stored entry names image {}, not this one", e.image_id));
                }
            }
            ChunkState::Inherited => match self.manifest.parent_id() {
                None => return Err(format!("chunk {chunk} is inherited, but image {} has no parent", self.id())),
                Some(p) if p != e.image_id => {
                    return Err(format!(
                        "chunk {chunk} is inherited from image {}, but the image's parent is {p}",
                        e.image_id
                    ))
                }
                Some(_) => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// [`Self::check_entry`] for a run: its entry checked for its first
    /// chunk, and every chunk of it the same length (only the source's last
    /// chunk may be short, so it is never in a longer run).
    pub fn check_run(&self, run: &Run, zero: &mut ZeroHashes) -> Result<(), String> {
        let n = self.manifest.chunk_count;
        if run.count == 0 || run.first >= n || run.count > n - run.first {
            return Err(format!(
                "chunks {}..{}: not a run of this image's {n} chunks",
                run.first,
                run.first.saturating_add(run.count)
            ));
        }
        let last = run.end() - 1;
        if run.count > 1 && self.chunk_extent(last).1 != run.entry.raw_len {
            return Err(format!(
                "chunks {}..{}: a {} run of {}-byte chunks ends at the source's last chunk, which is {} bytes",
                run.first,
                run.end(),
                run.entry.state.name(),
                run.entry.raw_len,
                self.chunk_extent(last).1
            ));
        }
        self.check_entry(run.first, &run.entry, zero)
    }

    /// Read the whole index as one entry per chunk (for tests and tools: it
    /// grows with the chunk count; the pipelines read runs a window at a
    /// time). Its size and header must agree with the manifest (otherwise
    /// nothing in it can be trusted and this fails); version-1 entries that
    /// do not decode and a hash mismatch are reported, not fatal.
    pub fn read_index(&self) -> Result<IndexData> {
        let mut stream = self.index_stream()?;
        let mut entries = Vec::with_capacity(self.manifest.chunk_count as usize);
        let mut window = Vec::new();
        while stream.next_runs(&mut window)? {
            for r in &window {
                match r {
                    Ok(run) => entries.extend((0..run.count).map(|_| Ok(run.entry))),
                    Err(bad) => entries.push(Err(bad.why)),
                }
            }
        }
        let hash_matches = stream.hash_matches() == Some(true);
        Ok(IndexData { header: stream.header, entries, hash_matches })
    }

    /// The index, to read front to back a window at a time (its size and
    /// header already checked against the manifest).
    pub fn index_stream(&self) -> Result<IndexStream> {
        IndexStream::open(&self.index_path(), self.id(), &self.manifest)
    }

    /// Read one chunk's raw bytes into `out` (at least a chunk long), checked
    /// against its hashes. A simple positioned read, for tests, tools and
    /// single-chunk access; the pipelines use lanes. An inherited chunk needs
    /// the chain: use [`super::chain::Resolved::read_chunk`].
    pub fn read_chunk(&self, entry: &IndexEntry, chunk: u64, out: &mut [u8], dec: &mut Decoder) -> Result<usize> {
        if entry.state == ChunkState::Stored {
            let seg = entry.segment as usize;
            if seg >= self.manifest.segments.len() {
                return Err(Error::corrupt(
                    self.index_path(),
                    self.entry_at(chunk),
                    format!("chunk {chunk} names segment {seg}, which does not exist"),
                ));
            }
            return read_frame(&self.segment_path(seg), self.id(), entry, chunk, self.chunk_extent(chunk), out, dec);
        }
        read_unstored((&self.index_path(), self.entry_at(chunk)), entry, chunk, self.chunk_extent(chunk).1, out)
    }

    /// Where chunk `chunk`'s entry is in the index, for messages: its
    /// offset in a version-1 index; 0 in version 2, where a record covers a
    /// run and the message names the chunk.
    pub fn entry_at(&self, chunk: u64) -> u64 {
        match self.manifest.format_version {
            1 => entry_offset(chunk),
            _ => 0,
        }
    }
}

/// A chunk that has no frame: zeros, or an error for states without data.
pub(super) fn read_unstored(
    (index, at): (&Path, u64),
    entry: &IndexEntry,
    chunk: u64,
    raw_len: u32,
    out: &mut [u8],
) -> Result<usize> {
    let raw_len = raw_len as usize;
    match entry.state {
        ChunkState::Zero | ChunkState::Unused | ChunkState::Unreadable => {
            out[..raw_len].fill(0);
            Ok(raw_len)
        }
        _ => Err(Error::corrupt(index, at, format!("chunk {chunk} is {:?}, which cannot be read here", entry.state))),
    }
}

/// Read and check the frame `entry` points at in `path`, written by `image`.
pub(super) fn read_frame(
    path: &Path,
    image: ImageId,
    entry: &IndexEntry,
    chunk: u64,
    (start, raw_len): (u64, u32),
    out: &mut [u8],
    dec: &mut Decoder,
) -> Result<usize> {
    let f = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
    let mut frame = vec![0u8; frame_len(entry.stored_len) as usize];
    f.read_exact_at(&mut frame, entry.offset).map_err(|e| Error::io_at("read frame", path, entry.offset, e))?;
    let h = check_frame(&frame, out, &mut |s, o| dec.decode(s, o))
        .map_err(|e| Error::corrupt(path, entry.offset, format!("chunk {chunk} (source offset {start}): {e}")))?;
    h.check_matches(chunk, image, entry)
        .map_err(|why| Error::corrupt(path, entry.offset, format!("chunk {chunk}: {why}")))?;
    debug_assert!(FRAME_HEADER_BYTES + h.stored_len as usize <= frame.len());
    Ok(raw_len as usize)
}

/// Whether [`Image::check_files`] also hashes the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexHash {
    /// Sizes only: cheap (what `list` shows, what may stand in for an image).
    Skip,
    /// Sizes and the index's hash (before an image it replaced is removed).
    Check,
}

/// What is wrong with one of an image's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    Missing { path: PathBuf },
    NotAFile { path: PathBuf },
    WrongSize { path: PathBuf, len: u64, want: u64 },
    Unreadable { path: PathBuf, cause: String },
    HashDiffers { path: PathBuf, algorithm: &'static str, got: String, want: String },
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileProblem::Missing { path } => write!(f, "{} is missing", path.display()),
            FileProblem::NotAFile { path } => write!(f, "{} is not a regular file", path.display()),
            FileProblem::WrongSize { path, len, want } => {
                write!(f, "{} is {len} bytes, its manifest says {want}", path.display())
            }
            FileProblem::Unreadable { path, cause } => write!(f, "{}: {cause}", path.display()),
            FileProblem::HashDiffers { path, algorithm, got, want } => {
                write!(f, "{}: its {algorithm} is {got}, its manifest says {want}", path.display())
            }
        }
    }
}
