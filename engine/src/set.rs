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

/// A committed image whose manifest does not load, and why.
pub type Unloadable = (ImageId, Error);

/// A directory of images.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub dir: PathBuf,
}

impl ImageSet {
    /// An existing set directory.
    pub fn open(dir: &Path) -> Result<ImageSet> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            // `SET@SEL` with a selector that is not hex was taken as a path.
            let spec = dir.to_string_lossy();
            match spec.rsplit_once('@') {
                Some((set, sel)) if e.kind() == std::io::ErrorKind::NotFound && Path::new(set).is_dir() => {
                    Error::InvalidSetting(format!(
                        "{spec}: {sel:?} is not an Image ID: after `@` give a prefix of an image's 16 hex digits \
                         (`tintype list {set}` shows them)"
                    ))
                }
                _ => Error::io("open image set", dir, e),
            }
        })?;
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
        if let Err(e) = std::fs::create_dir_all(dir) {
            // A file where the set should be: said as `open` says it.
            if dir.exists() && !dir.is_dir() {
                return ImageSet::open(dir);
            }
            return Err(Error::io("create image set directory", dir, e));
        }
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
            // Only names tintype writes: a user's `cafebabecafebabe.jpg`
            // beside the images is neither an unfinished run nor garbage.
            let Some(id) = image_file_id(&name) else {
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
    /// Fails on the first image whose manifest does not load.
    pub fn images(&self) -> Result<Vec<Image>> {
        let (images, bad) = self.images_lenient()?;
        match bad.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(images),
        }
    }

    /// The committed images that load, oldest first, and those whose
    /// manifest does not (with why). An image removed while the directory
    /// is being read (by a merge or prune) is simply not listed.
    pub fn images_lenient(&self) -> Result<(Vec<Image>, Vec<Unloadable>)> {
        let (ids, _) = self.scan()?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for id in ids {
            match Image::load(&self.dir, id) {
                Ok(i) => good.push(i),
                Err(Error::NotCommitted { .. }) => {}
                Err(e) => bad.push((id, e)),
            }
        }
        // Oldest first, but never before an image's own parent: a child
        // dated earlier than its parent (the clock was wrong for one of
        // them) is still newer than it, so "the newest image", the parent
        // of the next incremental and --keep-last follow the chain, not a
        // wrong clock.
        let mut when: std::collections::HashMap<ImageId, u128> = std::collections::HashMap::new();
        for i in &good {
            effective_time(i, &good, &mut when, 0);
        }
        good.sort_by_key(|i: &Image| (when.get(&i.id()).copied().unwrap_or(0), i.committed_nanos));
        Ok((good, bad))
    }

    /// The chain `img` depends on: itself, its parent, the parent's parent,
    /// …, down to a full image. Every image must be there, load, and
    /// describe the same source geometry; otherwise the chain is broken and
    /// the error names the ancestor.
    pub fn chain(&self, img: &Image) -> Result<Vec<Image>> {
        let (all, bad) = self.images_lenient()?;
        let mut chain = vec![img.clone()];
        loop {
            let cur = chain.last().expect("chain starts with the image");
            let Some(pid) = cur.manifest.parent_id() else { break };
            let broken = |why: String| Error::BrokenChain { path: self.dir.clone(), image: img.id().to_string(), why };
            let Some(p) = find_parent(cur, &all) else {
                let why = match bad.iter().find(|(id, _)| *id == pid) {
                    Some((_, e)) => format!("it depends on image {pid} (the parent of {}), which is damaged: {e}", cur.id()),
                    None => format!(
                        "it depends on image {pid} (the parent of {}), which is not in the set (deleted, or never committed)",
                        cur.id()
                    ),
                };
                return Err(broken(why));
            };
            let (a, b) = (&cur.manifest, &p.manifest);
            if a.chunk_size_bytes != b.chunk_size_bytes || a.source.size_bytes != b.source.size_bytes {
                return Err(broken(format!(
                    "image {} and its parent {} describe different sources (size {} vs {}, chunk size {} vs {})",
                    cur.id(),
                    p.id(),
                    a.source.size_bytes,
                    b.source.size_bytes,
                    a.chunk_size_bytes,
                    b.chunk_size_bytes
                )));
            }
            if chain.iter().any(|c| c.id() == p.id()) || chain.len() > all.len() {
                return Err(broken(format!("its chain of parents loops back to image {}", p.id())));
            }
            chain.push(p.clone());
        }
        Ok(chain)
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
                let (good, bad) = self.images_lenient()?;
                match bad.into_iter().next() {
                    // Which image is the newest cannot be told while one does
                    // not load: say so, and how to pick one that does.
                    Some((id, e)) if !good.is_empty() => Err(Error::BrokenChain {
                        path: self.dir.clone(),
                        image: id.to_string(),
                        why: format!(
                            "its manifest does not load ({e}), so which image is the newest cannot be told; pick one \
                             with SET@ID ({} other image(s) load: `tintype list {}`)",
                            good.len(),
                            self.dir.display()
                        ),
                    }),
                    Some((_, e)) => Err(e),
                    None => Ok(good.into_iter().next_back().expect("at least one image")),
                }
            }
            Some(prefix) => {
                let hits: Vec<ImageId> = ids.iter().copied().filter(|i| i.to_string().starts_with(prefix)).collect();
                match hits.as_slice() {
                    [id] => Image::load(&self.dir, *id),
                    [] => {
                        let why = if partial.iter().any(|i| i.to_string().starts_with(prefix)) {
                            format!("image {prefix} has data files but no manifest: its run did not finish")
                        } else {
                            // An image a merge replaced and removed: name what stands for it.
                            let (images, _) = self.images_lenient()?;
                            let by = images.iter().find(|i| i.manifest.replaces.iter().any(|r| r.starts_with(prefix)));
                            match by {
                                Some(r) => format!(
                                    "image {prefix} was consolidated by a merge into image {} (the same point in \
                                     time): use @{}",
                                    r.id(),
                                    r.id()
                                ),
                                None => format!("no image whose ID starts with {prefix}"),
                            }
                        };
                        Err(Error::NotCommitted { path: self.dir.clone(), why })
                    }
                    _ => Err(Error::InvalidSetting(format!(
                        "{}: image ID prefix {prefix} is ambiguous ({} images match: {}{}); give more digits",
                        self.dir.display(),
                        hits.len(),
                        hits.iter().take(10).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                        if hits.len() > 10 { ", …" } else { "" }
                    ))),
                }
            }
        }
    }
}

/// An image's point in time, raised to just after its parent's when the
/// clock put it earlier (memoised in `when`; a loop of parents stops).
fn effective_time(
    img: &Image,
    all: &[Image],
    when: &mut std::collections::HashMap<ImageId, u128>,
    depth: usize,
) -> u128 {
    if let Some(&t) = when.get(&img.id()) {
        return t;
    }
    let own = img.manifest.point_in_time();
    let t = match find_parent(img, all).filter(|p| p.id() != img.id() && depth < all.len()) {
        Some(p) => own.max(effective_time(p, all, when, depth + 1) + 1),
        None => own,
    };
    when.insert(img.id(), t);
    t
}

/// The image `img` depends on among `all`: an image that replaces its
/// parent (written by `merge`, same point in time) if there is one, else the
/// parent itself. None when it has no parent or the parent is not in `all`.
pub fn find_parent<'a>(img: &Image, all: &'a [Image]) -> Option<&'a Image> {
    standing_for(img.manifest.parent_id()?, all)
}

/// The image that holds image `id`'s point in time among `all`: the newest
/// image a merge wrote in its place, if any, else `id` itself.
pub fn standing_for(id: ImageId, all: &[Image]) -> Option<&Image> {
    all.iter()
        .filter(|r| stands_in_for(r, id, all))
        .max_by_key(|i| i.committed_nanos)
        .or_else(|| all.iter().find(|i| i.id() == id))
}

/// Is `img` obsolete: has a merge written an image that stands in for it?
pub fn replaced_by<'a>(img: &Image, all: &'a [Image]) -> Option<&'a Image> {
    all.iter().filter(|r| stands_in_for(r, img.id(), all)).max_by_key(|i| i.committed_nanos)
}

/// May `r` stand in for image `id`? It must name `id` among the images it
/// replaces, not be `id` nor its child, and — while `id` is still in the
/// set — hold the same point in time of the same source, as every image a
/// merge writes does. A claim that fails this (a manifest edited by hand, or
/// damaged) replaces nothing, so nothing is removed on its word.
pub fn stands_in_for(r: &Image, id: ImageId, all: &[Image]) -> bool {
    if r.id() == id || !r.manifest.replaces_id(id) || r.manifest.parent_id() == Some(id) {
        return false;
    }
    // While `id` is there, a replacement whose files are missing or cut does
    // not stand in for it either: `id` still holds that point in time.
    all.iter().find(|i| i.id() == id).is_none_or(|x| {
        let (a, b) = (&r.manifest, &x.manifest);
        a.point_in_time() == b.point_in_time()
            && a.source.size_bytes == b.source.size_bytes
            && a.chunk_size_bytes == b.chunk_size_bytes
            && r.check_files(false).is_ok()
    })
}

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

    /// Are the image's files there as its manifest lists them: the index and
    /// every segment, each a regular file of the recorded size, and with
    /// `hash_index` the index's xxh3-128 the recorded one? A cheap check
    /// (metadata, and the index), not a verify: it is what must hold before
    /// an image this one replaced is removed, and what `list` shows.
    pub fn check_files(&self, hash_index: bool) -> std::result::Result<(), String> {
        let size_of = |path: &Path, want: u64| -> std::result::Result<(), String> {
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() && m.len() == want => Ok(()),
                Ok(m) if m.is_file() => {
                    Err(format!("{} is {} bytes, its manifest says {want}", path.display(), m.len()))
                }
                Ok(_) => Err(format!("{} is not a regular file", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{} is missing", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        };
        size_of(&self.index_path(), self.manifest.index.size_bytes)?;
        for (n, s) in self.manifest.segments.iter().enumerate() {
            size_of(&self.segment_path(n), s.size_bytes)?;
        }
        if hash_index {
            let got = crate::pipeline::capture::hash_file(&self.index_path()).map_err(|e| e.to_string())?;
            if format!("{got:032x}") != self.manifest.index.xxh3_128 {
                return Err(format!(
                    "{}: its xxh3-128 is {got:032x}, its manifest says {}",
                    self.index_path().display(),
                    self.manifest.index.xxh3_128
                ));
            }
        }
        Ok(())
    }

    /// Does every segment's xxh3-64 equal the one its manifest records?
    /// Reads every segment whole: what must hold before the only other copy
    /// of this image's point in time is removed on its behalf.
    pub fn check_segment_hashes(&self) -> std::result::Result<(), String> {
        for (n, s) in self.manifest.segments.iter().enumerate() {
            let path = self.segment_path(n);
            let got = crate::pipeline::capture::stream_file(&path, |_| Ok(())).map_err(|e| e.to_string())?.digest();
            if format!("{got:016x}") != s.xxh3_64 {
                return Err(format!("{}: its xxh3-64 is {got:016x}, its manifest says {}", path.display(), s.xxh3_64));
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

    /// Is entry `chunk` of this image's index consistent with the image:
    /// a state a committed image may hold, the chunk's length, a stored frame
    /// inside the image's segments, an inherited chunk naming the parent?
    pub fn check_entry(&self, chunk: u64, e: &IndexEntry) -> Result<(), String> {
        let (_, extent) = self.chunk_extent(chunk);
        match e.state {
            ChunkState::Unset => return Err(format!("chunk {chunk}: the entry was never written")),
            _ if e.raw_len != extent => {
                return Err(format!("chunk {chunk}: index says {} bytes, the chunk is {extent}", e.raw_len))
            }
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

    /// Read the index: its size and header must agree with the manifest
    /// (otherwise nothing in it can be trusted and this fails); entries that
    /// do not decode and a hash mismatch are reported, not fatal.
    pub fn read_index(&self) -> Result<IndexData> {
        let path = self.index_path();
        let m = &self.manifest;
        let mut f = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::corrupt(&path, 0, "the image's index file is missing"),
            _ => Error::io("open index", &path, e),
        })?;
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
    /// single-chunk access; the pipelines use lanes. An inherited chunk needs
    /// the chain: use [`Resolved::read_chunk`].
    pub fn read_chunk(&self, entry: &IndexEntry, chunk: u64, out: &mut [u8], dec: &mut Decoder) -> Result<usize> {
        if entry.state == ChunkState::Stored {
            let seg = entry.segment as usize;
            if seg >= self.manifest.segments.len() {
                return Err(Error::corrupt(
                    self.index_path(),
                    entry_offset(chunk),
                    format!("chunk {chunk} names segment {seg}, which does not exist"),
                ));
            }
            return read_frame(&self.segment_path(seg), self.id(), entry, chunk, self.chunk_extent(chunk), out, dec);
        }
        read_unstored(&self.index_path(), entry, chunk, self.chunk_extent(chunk).1, out)
    }
}

/// A chunk that has no frame: zeros, or an error for states without data.
fn read_unstored(index: &Path, entry: &IndexEntry, chunk: u64, raw_len: u32, out: &mut [u8]) -> Result<usize> {
    let raw_len = raw_len as usize;
    match entry.state {
        ChunkState::Zero | ChunkState::Unused | ChunkState::Unreadable => {
            out[..raw_len].fill(0);
            Ok(raw_len)
        }
        _ => Err(Error::corrupt(
            index,
            entry_offset(chunk),
            format!("chunk {chunk} is {:?}, which cannot be read here", entry.state),
        )),
    }
}

/// Read and check the frame `entry` points at in `path`, written by `image`.
fn read_frame(
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

/// A segment of some image of a chain.
#[derive(Debug, Clone)]
pub struct SegmentRef {
    /// The image that wrote it (and whose ID its frames carry).
    pub image: ImageId,
    pub path: PathBuf,
    pub file: String,
    pub size_bytes: u64,
}

/// An image's index with every inherited chunk followed down its chain to
/// the image that holds it. Stored entries name a segment of [`Self::segments`]
/// (all segments of the chain, numbered together) and carry the holder's ID.
#[derive(Debug)]
pub struct Resolved {
    pub segments: Vec<SegmentRef>,
    pub entries: Vec<IndexEntry>,
    /// Chunks of the image itself that were inherited.
    pub inherited: u64,
}

impl Resolved {
    /// Read and check the indexes of `chain` (an image, then its ancestors,
    /// as [`ImageSet::chain`] returns, or the first part of that) and
    /// resolve every chunk. Any index
    /// that is damaged, or an ancestor that does not hold what a child says
    /// it inherited, is an error naming the file and entry.
    pub fn load(chain: &[Image]) -> Result<Resolved> {
        let mut segments = Vec::new();
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut pending: Vec<u64> = Vec::new();
        let mut inherited = 0;
        for (depth, img) in chain.iter().enumerate() {
            let base = segments.len() as u32;
            segments.extend(img.manifest.segments.iter().enumerate().map(|(i, s)| SegmentRef {
                image: img.id(),
                path: img.segment_path(i),
                file: s.file.clone(),
                size_bytes: s.size_bytes,
            }));
            let idx = img.read_index()?;
            if !idx.hash_matches {
                return Err(Error::corrupt(
                    img.index_path(),
                    0,
                    "index checksum does not match the manifest; nothing was read from this image (run `tintype verify`)",
                ));
            }
            let take = |chunk: u64| -> Result<IndexEntry> {
                let at = entry_offset(chunk);
                let e = idx.entries[chunk as usize].clone().map_err(|why| Error::corrupt(img.index_path(), at, why))?;
                img.check_entry(chunk, &e).map_err(|why| Error::corrupt(img.index_path(), at, why))?;
                let mut e = e;
                if e.state == ChunkState::Stored {
                    e.segment += base;
                }
                Ok(e)
            };
            if depth == 0 {
                entries.reserve(img.manifest.chunk_count as usize);
                for chunk in 0..img.manifest.chunk_count {
                    let e = take(chunk)?;
                    if e.state == ChunkState::Inherited {
                        pending.push(chunk);
                    }
                    entries.push(e);
                }
                inherited = pending.len() as u64;
                if pending.is_empty() {
                    break;
                }
                continue;
            }
            let child = &chain[depth - 1];
            let mut still = Vec::new();
            for &chunk in &pending {
                let e = take(chunk)?;
                if e.raw_hash != entries[chunk as usize].raw_hash {
                    return Err(Error::corrupt(
                        child.index_path(),
                        entry_offset(chunk),
                        format!(
                            "chunk {chunk} is inherited from image {}, which holds a different chunk there                              (the raw hashes differ): the chain is inconsistent",
                            img.id()
                        ),
                    ));
                }
                if e.state == ChunkState::Inherited {
                    still.push(chunk);
                }
                entries[chunk as usize] = e;
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
        }
        // A chain that ends at an image with a parent (a merge folds part of
        // a chain) leaves those chunks inherited from that parent.
        let last = chain.last().expect("non-empty chain");
        if let Some(&chunk) = pending.first().filter(|_| last.manifest.parent.is_none()) {
            return Err(Error::corrupt(
                last.index_path(),
                entry_offset(chunk),
                format!("chunk {chunk} is inherited, but image {} has no parent", last.id()),
            ));
        }
        Ok(Resolved { segments, entries, inherited })
    }

    /// Read chunk `chunk` of `img` (the first image of the chain this was
    /// resolved from) into `out`, checked against its hashes.
    pub fn read_chunk(&self, img: &Image, chunk: u64, out: &mut [u8], dec: &mut Decoder) -> Result<usize> {
        let e = &self.entries[chunk as usize];
        if e.state == ChunkState::Stored {
            let s = &self.segments[e.segment as usize];
            return read_frame(&s.path, s.image, e, chunk, img.chunk_extent(chunk), out, dec);
        }
        read_unstored(&img.index_path(), e, chunk, img.chunk_extent(chunk).1, out)
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
    // A temporary manifest left by a crash of this image's own earlier
    // attempt (resume) is never part of an image: replace it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale", &tmp, e)),
    }
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

/// Remove a committed image. Its manifest is first renamed to
/// `IMAGEID.removed.json` (from that moment it is not an image, and the
/// name says its data files are garbage), made durable, then the data files
/// go, the marker last. A crash in between leaves files without a manifest,
/// which are never used as an image and which the next merge or prune
/// removes.
pub fn remove_image(dir: &Path, id: ImageId) -> Result<()> {
    let manifest = dir.join(manifest_file_name(id));
    let marker = dir.join(removed_file_name(id));
    match std::fs::rename(&manifest, &marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove (rename) manifest", &manifest, e)),
    }
    sync_dir(dir)?;
    remove_leftovers(dir, id)
}

/// The image a file belongs to, when its name is one tintype writes for an
/// image (the table in FORMAT §1): `ID.manifest.json`, `ID.index`,
/// `ID.NNNNNN.seg`, `ID.run.json`, `ID.removed.json`, `ID.badmap`,
/// `ID.unreadable`, and each of those with `.tmp` while being written.
/// Nothing else is ever listed as part of a run or removed with an image.
pub fn image_file_id(name: &str) -> Option<ImageId> {
    let id = name.get(..16).and_then(ImageId::parse)?;
    let rest = name.get(16..)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".tmp").unwrap_or(rest);
    let known = matches!(rest, "manifest.json" | "index" | "run.json" | "removed.json" | "badmap" | "unreadable")
        || rest.strip_suffix(".seg").is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
    known.then_some(id)
}

/// The marker a removal leaves while it deletes an image's data files.
pub fn removed_file_name(id: ImageId) -> String {
    format!("{id}.removed.json")
}

/// Remove every file of `id` that is not a manifest (an unfinished run's
/// leftovers, or a removed image's data), the removal marker last.
pub fn remove_leftovers(dir: &Path, id: ImageId) -> Result<()> {
    let marker = removed_file_name(id);
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if image_file_id(&name) == Some(id) && !name.ends_with(".manifest.json") && name != marker.as_str() {
            std::fs::remove_file(e.path()).map_err(|err| Error::io("remove", e.path(), err))?;
        }
    }
    sync_dir(dir)?;
    match std::fs::remove_file(dir.join(&marker)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir.join(&marker), e)),
    }
}

/// `IMAGEID.run.json`: what an unfinished run (a `create`, or a `merge`
/// writing a new image) is doing, written before its first data file, so
/// `create --resume` can carry it on and `list` can describe it. Removed
/// once the image is committed. Not part of any image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// Always "tintype-run".
    pub format: String,
    pub format_version: u32,
    pub image_id: String,
    /// "create" or "merge".
    pub operation: String,
    pub kind: crate::format::manifest::ImageKind,
    pub parent: Option<String>,
    pub source: crate::format::manifest::SourceInfo,
    pub chunk_size_bytes: u32,
    pub level: i32,
    pub started_unix_seconds: u64,
    /// The source's write stamp when the run started: a resume keeps the
    /// run's frames only while it is unchanged. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_written: Option<crate::io::device::WriteStamp>,
}

/// The file name of image `id`'s run record.
pub fn run_file_name(id: ImageId) -> String {
    format!("{id}.run.json")
}

impl RunRecord {
    /// Write the record (never replacing one) and make it durable.
    pub fn write_new(&self, dir: &Path) -> Result<()> {
        let path = dir.join(format!("{}.run.json", self.image_id));
        let mut f =
            OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut v = serde_json::to_vec_pretty(self).expect("run record serializes");
        v.push(b'\n');
        f.write_all(&v).and_then(|()| f.sync_all()).map_err(|e| Error::io("write", &path, e))?;
        sync_dir(dir)
    }

    /// The record of run `id`, if it has one that parses.
    pub fn load(dir: &Path, id: ImageId) -> Option<RunRecord> {
        let bytes = std::fs::read(dir.join(run_file_name(id))).ok()?;
        let r: RunRecord = serde_json::from_slice(&bytes).ok()?;
        (r.format == "tintype-run" && r.format_version == 1 && ImageId::parse(&r.image_id) == Some(id)).then_some(r)
    }
}

/// The files of an image being written: removed on drop while `armed`
/// (a failure, a panic), kept once the image is committed.
#[derive(Debug)]
pub struct Leftovers<'a> {
    pub dir: &'a Path,
    pub id: ImageId,
    pub armed: bool,
}

impl Leftovers<'_> {
    /// Commit `manifest` and disarm. If the commit fails after the manifest
    /// got its name (only the directory fsync failed), the image exists and
    /// its data stays: disarmed too.
    pub fn commit(&mut self, manifest: &Manifest) -> Result<PathBuf> {
        let r = commit_manifest(self.dir, manifest);
        if r.is_ok() || self.dir.join(manifest_file_name(self.id)).exists() {
            self.armed = false;
        }
        r
    }
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_leftovers(self.dir, self.id);
        }
    }
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
