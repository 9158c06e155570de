//! Image sets: a directory of images, each named by its Image ID. Finding
//! committed images, loading one, reading its index, and the atomic commit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::frame::{check_frame, frame_len, FRAME_HEADER_BYTES};
use crate::format::index::{entry_offset, ChunkState, IndexEntry, IndexHeader, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES};
use crate::format::manifest::{manifest_file_name, Manifest, ManifestError};
use crate::format::{ImageId, FORMAT_VERSION};

/// Split `SET@IMAGE_ID` into the set directory and the optional image
/// selector (a unique prefix of an Image ID). A path that itself contains
/// `@` is taken whole when what follows the last `@` is not hex.
pub fn parse_spec(spec: &str) -> (PathBuf, Option<String>) {
    if let Some((dir, sel)) = spec.rsplit_once('@') {
        if !sel.is_empty() && sel.len() <= 16 && sel.bytes().all(|b| b.is_ascii_hexdigit()) && !dir.is_empty() {
            return (PathBuf::from(dir), Some(sel.to_ascii_lowercase()));
        }
    }
    (PathBuf::from(spec), None)
}

/// A directory of images.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub dir: PathBuf,
}

impl ImageSet {
    /// An existing set directory.
    pub fn open(dir: &Path) -> Result<ImageSet> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io("open image set", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Unusable {
                path: dir.into(),
                why: "an image set is a directory; this is not one".into(),
            });
        }
        Ok(ImageSet { dir: dir.into() })
    }

    /// Open the set directory, creating it (and its parents) if absent.
    pub fn create_or_open(dir: &Path) -> Result<ImageSet> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create image set directory", dir, e))?;
        ImageSet::open(dir)
    }

    /// Every Image ID that has a manifest file, and every one that has only
    /// data files (an unfinished run).
    pub fn scan(&self) -> Result<(Vec<ImageId>, Vec<ImageId>)> {
        let mut committed = Vec::new();
        let mut partial = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let Some(id) = name.get(..16).and_then(ImageId::parse) else {
                continue;
            };
            if name.get(16..) == Some(".manifest.json") {
                committed.push(id);
            } else if !partial.contains(&id) {
                partial.push(id);
            }
        }
        partial.retain(|id| !committed.contains(id));
        committed.sort();
        partial.sort();
        Ok((committed, partial))
    }

    /// The committed images, oldest first.
    pub fn images(&self) -> Result<Vec<Image>> {
        let (ids, _) = self.scan()?;
        let mut images = ids.into_iter().map(|id| Image::load(&self.dir, id)).collect::<Result<Vec<_>>>()?;
        images.sort_by_key(|i| (i.manifest.created_unix_seconds, i.committed_nanos));
        Ok(images)
    }

    /// The image a selector names: a unique prefix of an Image ID, or the
    /// newest committed image when there is none.
    pub fn resolve(&self, selector: Option<&str>) -> Result<Image> {
        let (ids, partial) = self.scan()?;
        match selector {
            None => {
                if ids.is_empty() {
                    let why = if partial.is_empty() {
                        "the set holds no committed image".to_string()
                    } else {
                        format!(
                            "the set holds no committed image, only the files of unfinished run(s) {} (no manifest was written)",
                            partial.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                        )
                    };
                    return Err(Error::NotCommitted { path: self.dir.clone(), why });
                }
                Ok(self.images()?.pop().expect("at least one image"))
            }
            Some(prefix) => {
                let hits: Vec<ImageId> = ids.iter().copied().filter(|i| i.to_string().starts_with(prefix)).collect();
                match hits.as_slice() {
                    [id] => Image::load(&self.dir, *id),
                    [] => {
                        let why = if partial.iter().any(|i| i.to_string().starts_with(prefix)) {
                            format!("image {prefix} has data files but no manifest: its run did not finish")
                        } else {
                            format!("no image whose ID starts with {prefix}")
                        };
                        Err(Error::NotCommitted { path: self.dir.clone(), why })
                    }
                    _ => Err(Error::InvalidSetting(format!(
                        "{}: image ID prefix {prefix} is ambiguous ({} images match)",
                        self.dir.display(),
                        hits.len()
                    ))),
                }
            }
        }
    }
}

/// A committed image: its manifest and where its files are.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    committed_nanos: i128,
}

/// An image's index as read from disk.
#[derive(Debug)]
pub struct IndexData {
    pub header: IndexHeader,
    /// One per chunk; an entry that does not decode carries why.
    pub entries: Vec<Result<IndexEntry, String>>,
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
                return Err(Error::NotCommitted { path: manifest_path, why: "the manifest is missing".into() })
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
            || e.offset + frame_len(e.stored_len) > seg.size_bytes
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

    /// Read the index: its size and header must agree with the manifest
    /// (otherwise nothing in it can be trusted and this fails); entries that
    /// do not decode and a hash mismatch are reported, not fatal.
    pub fn read_index(&self) -> Result<IndexData> {
        let path = self.index_path();
        let m = &self.manifest;
        let mut f = File::open(&path).map_err(|e| Error::io("open index", &path, e))?;
        let expected = entry_offset(m.chunk_count);
        let len = f.metadata().map_err(|e| Error::io("stat index", &path, e))?.len();
        if len != expected || len != m.index.size_bytes {
            return Err(Error::corrupt(
                &path,
                len.min(expected),
                format!("index is {len} bytes; {} chunks need {expected}", m.chunk_count),
            ));
        }
        let mut hasher = Xxh3Default::new();
        let mut head = [0u8; INDEX_HEADER_BYTES];
        f.read_exact(&mut head).map_err(|e| Error::io_at("read index", &path, 0, e))?;
        hasher.update(&head);
        let header = IndexHeader::decode(&head).map_err(|e| match e {
            crate::format::index::IndexHeaderError::Version(v) => Error::UnsupportedVersion {
                path: path.clone(),
                what: "index",
                found: u32::from(v),
                supported: u32::from(FORMAT_VERSION),
            },
            other => Error::corrupt(&path, 0, other.to_string()),
        })?;
        if header.image_id != self.id()
            || header.chunk_count != m.chunk_count
            || header.chunk_bytes != m.chunk_size_bytes
            || header.source_bytes != m.source.size_bytes
            || header.parent.map(|p| p.to_string()) != m.parent
        {
            return Err(Error::corrupt(
                &path,
                0,
                "index header does not match the manifest (image, chunk size or count)",
            ));
        }
        let mut entries = Vec::with_capacity(m.chunk_count as usize);
        let mut buf = vec![0u8; INDEX_ENTRY_BYTES * 4096];
        let mut left = m.chunk_count;
        let mut at = INDEX_HEADER_BYTES as u64;
        while left > 0 {
            let n = left.min(4096) as usize;
            let b = &mut buf[..n * INDEX_ENTRY_BYTES];
            f.read_exact(b).map_err(|e| Error::io_at("read index", &path, at, e))?;
            hasher.update(b);
            entries.extend(b.chunks_exact(INDEX_ENTRY_BYTES).map(IndexEntry::decode));
            left -= n as u64;
            at += b.len() as u64;
        }
        let hash_matches = format!("{:032x}", hasher.digest128()) == m.index.xxh3_128;
        Ok(IndexData { header, entries, hash_matches })
    }

    /// Read one chunk's raw bytes into `out` (at least a chunk long), checked
    /// against its hashes. A simple positioned read, for tests, tools and
    /// single-chunk access; the pipelines use lanes.
    pub fn read_chunk(&self, entry: &IndexEntry, chunk: u64, out: &mut [u8], dec: &mut Decoder) -> Result<usize> {
        let (start, raw_len) = self.chunk_extent(chunk);
        let raw_len = raw_len as usize;
        match entry.state {
            ChunkState::Zero | ChunkState::Unused | ChunkState::Unreadable => {
                out[..raw_len].fill(0);
                Ok(raw_len)
            }
            ChunkState::Stored => {
                let seg = entry.segment as usize;
                if seg >= self.manifest.segments.len() {
                    return Err(Error::corrupt(
                        self.index_path(),
                        entry_offset(chunk),
                        format!("chunk {chunk} names segment {seg}, which does not exist"),
                    ));
                }
                let path = self.segment_path(seg);
                let f = File::open(&path).map_err(|e| Error::io("open segment", &path, e))?;
                let mut frame = vec![0u8; frame_len(entry.stored_len) as usize];
                f.read_exact_at(&mut frame, entry.offset)
                    .map_err(|e| Error::io_at("read frame", &path, entry.offset, e))?;
                let h = check_frame(&frame, out, &mut |s, o| dec.decode(s, o)).map_err(|e| {
                    Error::corrupt(&path, entry.offset, format!("chunk {chunk} (source offset {start}): {e}"))
                })?;
                h.check_matches(chunk, self.id(), entry)
                    .map_err(|why| Error::corrupt(&path, entry.offset, format!("chunk {chunk}: {why}")))?;
                debug_assert!(FRAME_HEADER_BYTES + h.stored_len as usize <= frame.len());
                Ok(raw_len)
            }
            ChunkState::Inherited | ChunkState::Unset => Err(Error::corrupt(
                self.index_path(),
                entry_offset(chunk),
                format!("chunk {chunk} is {:?}, which this build cannot read", entry.state),
            )),
        }
    }
}

/// Commit `manifest` into `dir`: write a temporary file, fsync it, rename it
/// to its final name without replacing anything, fsync the directory.
pub fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<PathBuf> {
    let id = manifest.id();
    let final_name = manifest_file_name(id);
    let tmp_name = format!("{final_name}.tmp");
    let tmp = dir.join(&tmp_name);
    let dest = dir.join(&final_name);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let write = f.write_all(&manifest.to_json()).and_then(|()| f.sync_all());
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp, e));
    }
    drop(f);
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    let renamed =
        rustix::fs::renameat_with(&d, tmp_name.as_str(), &d, final_name.as_str(), rustix::fs::RenameFlags::NOREPLACE);
    let committed = match renamed {
        // Filesystems without RENAME_NOREPLACE (NFS, some FUSE): a hard link
        // is just as atomic and just as unwilling to replace.
        Err(rustix::io::Errno::INVAL) => std::fs::hard_link(&tmp, &dest).map(|()| {
            let _ = std::fs::remove_file(&tmp);
        }),
        other => other.map_err(std::io::Error::from),
    };
    if let Err(e) = committed {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("commit (rename) manifest to", &dest, e));
    }
    d.sync_all().map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(dest)
}

/// Make a directory entry durable: fsync the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_splits_on_a_hex_suffix_only() {
        assert_eq!(parse_spec("/a/set@12ab"), (PathBuf::from("/a/set"), Some("12ab".into())));
        assert_eq!(parse_spec("/a/set"), (PathBuf::from("/a/set"), None));
        assert_eq!(parse_spec("/a/s@t/set"), (PathBuf::from("/a/s@t/set"), None));
        assert_eq!(parse_spec("@12"), (PathBuf::from("@12"), None));
    }
}
