//! `merge` and `prune`: consolidate images without reading the source, and
//! keep a retention window.
//!
//! Committed files are never modified, so consolidating writes a **new**
//! image: the same point in time as the image it consolidates, its frames
//! copied (headers rewritten to the new Image ID, payloads byte for byte,
//! each payload's hash checked on the way) from the images it folds, its
//! manifest listing the image it `replaces`. Children of the replaced image
//! resolve their parent to the new one (`set::find_parent`). Only once the
//! new image is committed are images that nothing needs any more removed,
//! manifest first. A crash at any moment leaves the old chain, or the new
//! one, or both (with the obsolete images removed by the next merge or
//! prune), and every committed image restorable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::error::{Error, Result};
use crate::format::frame::{frame_len, frame_len_max, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::index::{entry_offset, index_file_name, ChunkState, IndexEntry, IndexHeader, INDEX_HEADER_BYTES};
use crate::format::manifest::{ImageKind, IndexInfo, Manifest, SegmentInfo, Stats};
use crate::format::segment::{segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::ImageId;
use crate::io::buffers::AlignedBuf;
use crate::io::device::open_read_only;
use crate::io::{Io, IoChoice};
use crate::lock::{lock_set, Access};
use crate::pipeline::capture::{hash_file, unix_now, DEFAULT_SEGMENT_BYTES};
use crate::pipeline::Observer;
use crate::set::{
    find_parent, remove_image, remove_leftovers, replaced_by, run_file_name, Image, ImageSet, Leftovers, Resolved,
    RunRecord,
};

/// How to run `merge`.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub set: PathBuf,
    /// A unique prefix of the Image ID of the image to consolidate.
    pub image: String,
    /// Fold the whole chain into a synthetic full image, not only the parent.
    pub full: bool,
    /// Only [`IoChoice::Sim`] changes anything: merge reads and writes
    /// with plain positioned I/O (O_DIRECT where it can).
    pub io: IoChoice,
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

/// Consolidate an image into its parent (or, with `full`, its whole chain
/// into a synthetic full image).
pub fn merge(opts: &MergeOptions, obs: &dyn Observer) -> Result<MergeReport> {
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Delete, &format!("merge {}", opts.image))?;
    refuse_unreadable(&set)?;
    {
        // An image a merge already replaced is on its way out: say which
        // image stands for it, before finishing its removal.
        let (images, _) = set.images_lenient()?;
        let img = set.resolve(Some(&opts.image))?;
        if let Some(r) = replaced_by(&img, &images) {
            return Err(Error::InvalidSetting(format!(
                "image {} was replaced by image {} (an earlier merge; same point in time): merge {} instead",
                img.id(),
                r.id(),
                r.id()
            )));
        }
    }
    finish_pending(&set, obs)?;
    let img = set.resolve(Some(&opts.image))?;
    let chain = set.chain(&img)?;
    if chain.len() == 1 {
        return Err(Error::InvalidSetting(format!(
            "image {} is a full image: it has no parent to merge into",
            img.id()
        )));
    }
    let span = if opts.full { chain.len() } else { 2 };
    let merged = consolidate(&set, &chain[..span], &opts.io, obs).inspect_err(|e| {
        if !matches!(e, Error::Interrupted(_)) {
            obs.note("the merge stopped before its commit: the set is as it was (its partial files are removed)");
        }
    })?;
    let folded: Vec<ImageId> = chain[..span].iter().map(|i| i.id()).collect();
    let fresh = [ImageId::parse(&merged.image_id).expect("an ID this run made")];
    crate::pipeline::test_pause("merge-removals");
    if crate::pipeline::interrupted() {
        return Err(Error::Interrupted(format!(
            "merge stopped by a signal after committing image {} (it stands in for {}); the images it replaces were \
             not removed: the next merge or prune removes them",
            merged.image_id, merged.replaces
        )));
    }
    let removed = remove_unneeded(&set, &folded, &fresh, obs).map_err(|e| match e {
        Error::Interrupted(m) => Error::Interrupted(format!(
            "merge committed image {} (it stands in for {}), then {m}; the next merge or prune removes the rest",
            merged.image_id, merged.replaces
        )),
        e => e,
    })?;
    let kept = folded.iter().filter(|id| !removed.contains(id)).map(|id| id.to_string()).collect();
    Ok(MergeReport { merged, removed: removed.iter().map(|i| i.to_string()).collect(), kept })
}

/// Deciding what nothing needs is only possible when every image can be
/// read: refuse while a manifest does not load.
fn refuse_unreadable(set: &ImageSet) -> Result<()> {
    let (_, bad) = set.images_lenient()?;
    match bad.first() {
        None => Ok(()),
        Some((id, e)) => Err(Error::BrokenChain {
            path: set.dir.clone(),
            image: id.to_string(),
            why: format!(
                "its manifest cannot be read ({e}); merge and prune remove nothing while an image they cannot \
                 see might depend on what they would remove"
            ),
        }),
    }
}

/// Finish what an interrupted merge or prune left: images already replaced
/// that nothing needs, and the files of merge runs that never committed.
fn finish_pending(set: &ImageSet, obs: &dyn Observer) -> Result<()> {
    let removed = remove_unneeded(set, &[], &[], obs).map_err(|e| match e {
        Error::Interrupted(m) => Error::Interrupted(format!(
            "finishing an earlier merge's removals {m}; nothing else was changed: run the command again"
        )),
        e => e,
    })?;
    if !removed.is_empty() {
        obs.note(&format!("removed {} image(s) an earlier merge had replaced", removed.len()));
    }
    let (images, _) = set.images_lenient()?;
    let (_, partial) = set.scan()?;
    let names: Vec<String> = match partial.is_empty() {
        true => Vec::new(),
        false => std::fs::read_dir(&set.dir)
            .map_err(|e| Error::io("list", &set.dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    };
    for id in partial {
        let record = RunRecord::load(&set.dir, id);
        let from_merge = record.as_ref().is_some_and(|r| r.operation == "merge");
        // A merge replaces committed images only: an unfinished create that
        // a manifest names is a false claim, and stays resumable.
        let from_create = record.as_ref().is_some_and(|r| r.operation == "create");
        let replaced = !from_create && images.iter().any(|i| i.manifest.replaces_id(id));
        let removing = set.dir.join(crate::set::removed_file_name(id)).exists();
        // A run killed while writing its run record (before any data file):
        // the record does not parse and is all there is; nothing to resume.
        // (No create runs now: this holds the set's writers' lock.)
        let stillborn = record.is_none() && {
            let mut mine = names.iter().filter(|n| crate::set::image_file_id(n) == Some(id)).peekable();
            mine.peek().is_some() && mine.all(|n| n.contains(".run.json"))
        };
        if from_merge || replaced || removing || stillborn {
            obs.note(&format!(
                "removing the leftovers of {id} (an interrupted merge, or a removal that did not finish)"
            ));
            remove_leftovers(&set.dir, id)?;
        }
    }
    Ok(())
}

/// Remove the images among `candidates`, and the images a merge replaced,
/// that no other image depends on. Returns what was removed.
///
/// A replacement written by this very run (`fresh`) was checked frame by
/// frame as it was written; any other has its segments hashed before the
/// image it replaced goes.
fn remove_unneeded(
    set: &ImageSet,
    candidates: &[ImageId],
    fresh: &[ImageId],
    obs: &dyn Observer,
) -> Result<Vec<ImageId>> {
    let (images, _) = set.images_lenient()?;
    // An image a merge replaced goes only when its replacement's files are
    // all there as committed: never on the word of a damaged manifest.
    let mut replaced: HashSet<ImageId> = HashSet::new();
    let kept = |i: &Image, r: &Image, why: &str| {
        obs.note(&format!(
            "image {} is kept although image {} names it as replaced: {why}; verify {}, and remove it by hand if it \
             is bad",
            i.id(),
            r.id(),
            r.id()
        ))
    };
    for i in &images {
        match replaced_by(i, &images) {
            Some(r) => {
                let deep = !fresh.contains(&r.id());
                match r.check_files(true).and_then(|()| if deep { r.check_segment_hashes() } else { Ok(()) }) {
                    Ok(()) => {
                        replaced.insert(i.id());
                    }
                    Err(why) => kept(i, r, &format!("{} is damaged ({why})", r.id())),
                }
            }
            // Claims that do not count: say why where the claimant is damaged.
            None => {
                for r in images.iter().filter(|r| r.id() != i.id() && r.manifest.replaces_id(i.id())) {
                    match r.check_files(false) {
                        Err(why) => kept(i, r, &format!("{} is damaged ({why})", r.id())),
                        Ok(()) => kept(i, r, "it cannot stand for it (another point in time or source, or its child), so the claim is ignored"),
                    }
                }
            }
        }
    }
    let obsolete = |i: &Image| replaced.contains(&i.id());
    // Everything reachable, through parents, from the images that stay, and
    // from the parent of an unfinished create that `--resume` can carry on.
    let (_, partial) = set.scan()?;
    let resumable = partial
        .iter()
        .filter_map(|id| RunRecord::load(&set.dir, *id))
        .filter(|r| r.operation == "create")
        .filter_map(|r| r.parent.as_deref().and_then(ImageId::parse))
        .filter_map(|pid| crate::set::standing_for(pid, &images));
    let starts: Vec<&Image> =
        images.iter().filter(|i| !candidates.contains(&i.id()) && !obsolete(i)).chain(resumable).collect();
    let mut needed: HashSet<ImageId> = HashSet::new();
    for start in starts {
        let mut cur = Some(start);
        // `insert` is false on an image already walked: also ends a loop.
        while let Some(i) = cur.filter(|i| needed.insert(i.id())) {
            cur = find_parent(i, &images);
        }
    }
    let mut removed = Vec::new();
    // Children before parents, so a crash never leaves a child whose
    // parent is gone while the child itself is still listed.
    for i in images.iter().rev() {
        if (candidates.contains(&i.id()) || obsolete(i)) && !needed.contains(&i.id()) {
            if !removed.is_empty() {
                crate::pipeline::test_pause("between-removals");
            }
            if crate::pipeline::interrupted() {
                return Err(Error::Interrupted(format!(
                    "was stopped by a signal while removing the images no longer needed, after removing {} [{}]; \
                     every image that stays is intact",
                    removed.len(),
                    removed.iter().map(|i: &ImageId| i.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            obs.note(&format!("removing image {} ({}, {})", i.id(), i.manifest.kind.name(), i.manifest.created));
            remove_image(&set.dir, i.id())?;
            removed.push(i.id());
        }
    }
    Ok(removed)
}

/// Writes the segments of a new image, frame by frame, sequentially, in
/// large aligned writes (O_DIRECT where the filesystem allows it).
struct SegmentWriter<'a> {
    dir: &'a Path,
    id: ImageId,
    chunk_bytes: u32,
    limit: u64,
    /// Slot 0 holds the open segment's file.
    io: Box<dyn Io>,
    /// The open segment: path, number, bytes written, frames, hash.
    cur: Option<(PathBuf, u32, u64, u64, Xxh3Default)>,
    buf: AlignedBuf,
    fill: usize,
    done: Vec<SegmentInfo>,
}

impl SegmentWriter<'_> {
    fn new<'a>(dir: &'a Path, id: ImageId, chunk_bytes: u32, limit: u64, io: &IoChoice) -> SegmentWriter<'a> {
        let cap = (8usize << 20).max(2 * frame_len_max(chunk_bytes) as usize + SEGMENT_HEADER_BYTES);
        SegmentWriter {
            dir,
            id,
            chunk_bytes,
            limit,
            io: crate::io::open_sync(io, 1),
            cur: None,
            buf: AlignedBuf::new(cap),
            fill: 0,
            done: Vec::new(),
        }
    }

    /// Append one frame (a multiple of 4096 bytes); returns (segment, offset).
    fn append(&mut self, frame: &[u8]) -> Result<(u32, u64)> {
        let roll = match &self.cur {
            None => true,
            Some((.., size, frames, _)) => *frames > 0 && size + (self.fill + frame.len()) as u64 > self.limit,
        };
        if roll {
            self.close()?;
            let seq = self.done.len() as u32;
            let path = self.dir.join(segment_file_name(self.id, seq));
            let (file, _direct) = crate::pipeline::lane::create_segment_file(&path)?;
            self.io.set_file(0, Some(file)).map_err(|e| Error::io("register", &path, e))?;
            let head = &mut self.buf.as_mut_slice()[..SEGMENT_HEADER_BYTES];
            head.fill(0);
            SegmentHeader { image_id: self.id, lane: 0, seq, chunk_bytes: self.chunk_bytes }.encode(head);
            let mut h = Xxh3Default::new();
            h.update(head);
            self.fill = SEGMENT_HEADER_BYTES;
            self.cur = Some((path, seq, 0, 0, h));
        }
        if self.fill + frame.len() > self.buf.len() {
            self.flush()?;
        }
        let (.., seq, size, frames, h) = self.cur.as_mut().expect("open segment");
        let at = *size + self.fill as u64;
        h.update(frame);
        *frames += 1;
        let seq = *seq;
        self.buf.as_mut_slice()[self.fill..self.fill + frame.len()].copy_from_slice(frame);
        self.fill += frame.len();
        Ok((seq, at))
    }

    /// Write what is buffered at the end of the open segment.
    fn flush(&mut self) -> Result<()> {
        let Some((path, _, size, ..)) = self.cur.as_mut() else { return Ok(()) };
        debug_assert_eq!(self.fill % SEGMENT_HEADER_BYTES, 0, "frames are 4096-aligned");
        // A short write is carried on from a 4096-byte boundary (O_DIRECT).
        let mut done = 0;
        while done < self.fill {
            let at = *size + done as u64;
            let n = match self.io.write_from(0, &self.buf.as_slice()[done..self.fill], at) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io_at(
                        "write segment",
                        path.clone(),
                        at,
                        crate::io::name_enospc(e, "destination"),
                    ))
                }
            };
            let next = if done + n == self.fill { self.fill } else { (done + n) & !(SEGMENT_HEADER_BYTES - 1) };
            if next <= done {
                return Err(Error::io_at(
                    "write segment",
                    path.clone(),
                    at,
                    std::io::Error::other("the write stopped short (no space left on the destination?)"),
                ));
            }
            done = next;
        }
        *size += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        let Some((path, seq, size, frames, h)) = self.cur.take() else { return Ok(()) };
        self.io.sync(0).map_err(|e| Error::io("fsync segment", path.clone(), e))?;
        self.io.set_file(0, None).map_err(|e| Error::io("release", &path, e))?;
        self.done.push(SegmentInfo {
            file: segment_file_name(self.id, seq),
            lane: 0,
            seq,
            size_bytes: size,
            frames,
            xxh3_64: format!("{:016x}", h.digest()),
        });
        Ok(())
    }
}

/// Frames read together: one positioned read of adjacent frames, each
/// checked and given the new image's ID in place.
struct Run {
    buf: AlignedBuf,
    /// (chunk, start in `buf`, length)
    frames: Vec<(u64, usize, usize)>,
}

/// Largest read of adjacent frames.
const RUN_BYTES: u64 = 8 << 20;

/// Write and commit a new image with the content of `span[0]`, folding in
/// the frames of `span[1..]`; its parent is the last one's parent. Reads
/// only the set, never the source.
fn consolidate(set: &ImageSet, span: &[Image], io: &IoChoice, obs: &dyn Observer) -> Result<Consolidated> {
    let started = Instant::now();
    let target = &span[0];
    let last = span.last().expect("non-empty span");
    let tm = &target.manifest;
    // A missing or cut file is found before anything is written.
    for img in span {
        img.check_files(false).map_err(|why| Error::BrokenChain {
            path: set.dir.clone(),
            image: img.id().to_string(),
            why: format!("{why}; the merge stopped and changed nothing"),
        })?;
    }
    let resolved = Resolved::load(span)?;
    let (committed, partial) = set.scan()?;
    let id = loop {
        let id = ImageId::generate();
        if !committed.contains(&id) && !partial.contains(&id) {
            break id;
        }
    };
    let parent = last.manifest.parent.clone();
    let (images, _) = set.images_lenient()?;
    let kind = match find_parent(last, &images) {
        None if parent.is_some() => {
            return Err(Error::BrokenChain {
                path: set.dir.clone(),
                image: last.id().to_string(),
                why: format!("its parent {} is not in the set", parent.unwrap_or_default()),
            })
        }
        None => ImageKind::Full,
        Some(p) if p.manifest.kind == ImageKind::Full => ImageKind::Differential,
        Some(_) => ImageKind::Incremental,
    };
    obs.note(&format!(
        "writing image {id}: {} as of {}, folding {}",
        kind.name(),
        tm.created,
        span.iter().map(|i| i.id().to_string()).collect::<Vec<_>>().join(" + ")
    ));
    let mut guard = Leftovers { dir: &set.dir, id, armed: true };
    RunRecord {
        format: "tintype-run".into(),
        format_version: 1,
        image_id: id.to_string(),
        operation: "merge".into(),
        kind,
        parent: parent.clone(),
        source: tm.source.clone(),
        chunk_size_bytes: tm.chunk_size_bytes,
        level: tm.level,
        started_unix_seconds: unix_now(),
        source_written: None,
    }
    .write_new(&set.dir)?;

    // Copy frames in the order they lie on disk, so reads are sequential.
    let mut order: Vec<u64> =
        (0..tm.chunk_count).filter(|&c| resolved.entries[c as usize].state == ChunkState::Stored).collect();
    order.sort_by_key(|&c| {
        let e = &resolved.entries[c as usize];
        (e.segment, e.offset)
    });
    let limit = if tm.settings.segment_size_bytes > 0 { tm.settings.segment_size_bytes } else { DEFAULT_SEGMENT_BYTES };
    let mut w = SegmentWriter::new(&set.dir, id, tm.chunk_size_bytes, limit, io);
    let mut entries = resolved.entries.clone();
    let mut stats = Stats::default();
    let total = order.len() as u64;
    // This thread reads and checks runs of adjacent frames; a writer thread
    // appends them to the new segments, so reading and writing overlap.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Run>(2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<AlignedBuf>();
    type Placed = (Vec<(u64, u32, u64)>, Vec<SegmentInfo>);
    let (placed, segments) = std::thread::scope(|scope| -> Result<Placed> {
        let writer = scope.spawn(move || -> Result<Placed> {
            let mut placed = Vec::new();
            for run in rx {
                for &(chunk, start, len) in &run.frames {
                    let (segment, offset) = w.append(&run.buf.as_slice()[start..start + len])?;
                    placed.push((chunk, segment, offset));
                }
                let _ = back_tx.send(run.buf);
            }
            w.close()?;
            Ok((placed, w.done))
        });
        let read = read_runs(&resolved, &order, id, io, &tx, &back_rx, &mut stats, obs, total);
        drop(tx);
        let written = writer.join().expect("merge writer thread panicked");
        // A damaged frame (or a signal) is the reader's to report; when the
        // reader stopped because the writer did, the writer's error explains it.
        match read {
            Err(e) => Err(e),
            Ok(_) => written,
        }
    })?;
    for (chunk, segment, offset) in placed {
        let e = &mut entries[chunk as usize];
        *e = IndexEntry { segment, offset, image_id: id, ..*e };
    }
    obs.progress(total, total);
    stats.chunks_zero = entries.iter().filter(|e| e.state == ChunkState::Zero).count() as u64;
    stats.chunks_inherited = entries.iter().filter(|e| e.state == ChunkState::Inherited).count() as u64;
    stats.chunks_unreadable = entries.iter().filter(|e| e.state == ChunkState::Unreadable).count() as u64;
    stats.chunks_copied = stats.chunks_stored;
    stats.bytes_segments = segments.iter().map(|s| s.size_bytes).sum();

    let index_path = set.dir.join(index_file_name(id));
    let mut bytes = vec![0u8; entry_offset(tm.chunk_count) as usize];
    IndexHeader {
        chunk_bytes: tm.chunk_size_bytes,
        image_id: id,
        chunk_count: tm.chunk_count,
        source_bytes: tm.source.size_bytes,
        parent: parent.as_deref().and_then(ImageId::parse),
    }
    .encode(&mut bytes[..INDEX_HEADER_BYTES]);
    for (c, e) in entries.iter().enumerate() {
        e.encode(&mut bytes[entry_offset(c as u64) as usize..]);
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&index_path)
        .map_err(|e| Error::io("create index", &index_path, e))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| Error::io("write index", &index_path, e))?;
    drop(f);
    let index_hash = hash_file(&index_path)?;
    stats.wall_seconds = started.elapsed().as_secs_f64();
    stats.stage_seconds = BTreeMap::new();
    let mut replaces = vec![tm.image_id.clone()];
    replaces.extend(tm.replaces.iter().cloned());
    let manifest = Manifest {
        image_id: id.to_string(),
        kind,
        parent: parent.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        stats,
        segments,
        index: IndexInfo {
            file: index_file_name(id),
            size_bytes: entry_offset(tm.chunk_count),
            xxh3_128: format!("{index_hash:032x}"),
        },
        replaces,
        ..tm.clone()
    };
    // The point in time keeps its unreadable ranges, so it keeps its map.
    if !manifest.unreadable.is_empty() {
        let bad: Vec<(u64, u64)> = manifest.unreadable.iter().map(|r| (r.offset, r.length)).collect();
        crate::pipeline::capture::write_badmap(
            &set.dir.join(format!("{id}.badmap")),
            &bad,
            manifest.source.size_bytes,
        )?;
    }
    crate::set::sync_dir(&set.dir)?;
    // The last moment a signal can still leave the set as it was: the
    // guard removes the new image's files.
    crate::pipeline::test_pause("merge-commit");
    if crate::pipeline::interrupted() {
        return Err(Error::Interrupted(
            "stopped by a signal before the new image was committed; nothing was changed (its files are removed)"
                .into(),
        ));
    }
    guard.commit(&manifest)?;
    let _ = std::fs::remove_file(set.dir.join(run_file_name(id)));
    Ok(Consolidated {
        image_id: id.to_string(),
        replaces: tm.image_id.clone(),
        folded: span.iter().map(|i| i.manifest.image_id.clone()).collect(),
        kind: kind.name().into(),
        parent,
        chunks_copied: manifest.stats.chunks_copied,
        bytes_copied: manifest.stats.bytes_segments,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Read `order`'s frames in runs of adjacent frames, check each (header,
/// agreement with the index, payload hash), give it the new image's ID, and
/// send the runs to the writer.
#[allow(clippy::too_many_arguments)]
fn read_runs(
    resolved: &Resolved,
    order: &[u64],
    id: ImageId,
    io: &IoChoice,
    tx: &std::sync::mpsc::SyncSender<Run>,
    spare: &std::sync::mpsc::Receiver<AlignedBuf>,
    stats: &mut Stats,
    obs: &dyn Observer,
    total: u64,
) -> Result<()> {
    // Segments opened so far; the one being read sits in the I/O's slot 0.
    let mut files: HashMap<u32, File> = HashMap::new();
    let mut io = crate::io::open_sync(io, 1);
    let mut current: Option<u32> = None;
    let mut i = 0;
    while i < order.len() {
        let first = resolved.entries[order[i] as usize];
        let (segment, start) = (first.segment, first.offset);
        let mut end = start + frame_len(first.stored_len);
        let mut j = i + 1;
        while let Some(&c) = order.get(j) {
            let e = &resolved.entries[c as usize];
            let len = frame_len(e.stored_len);
            if e.segment != segment || e.offset != end || end + len - start > RUN_BYTES {
                break;
            }
            end += len;
            j += 1;
        }
        let seg = &resolved.segments[segment as usize];
        if current != Some(segment) {
            let f = match files.remove(&segment) {
                Some(f) => f,
                // O_DIRECT: segments written by the lanes are not in the page
                // cache, and buffered reads of them run at a fraction of the disk.
                None => open_read_only(&seg.path, true)?.0,
            };
            let old = io.set_file(0, Some(f)).map_err(|e| Error::io("register", &seg.path, e))?;
            if let (Some(c), Some(old)) = (current, old) {
                files.insert(c, old);
            }
            current = Some(segment);
        }
        let run_len = (end - start) as usize;
        let mut buf = spare
            .try_recv()
            .ok()
            .filter(|b| b.len() >= run_len)
            .unwrap_or_else(|| AlignedBuf::new(run_len.max(RUN_BYTES as usize)));
        io.read_exact_into(0, &mut buf.as_mut_slice()[..run_len], start)
            .map_err(|err| Error::io_at("read frames", &seg.path, start, err))?;
        let mut frames = Vec::with_capacity(j - i);
        for &chunk in &order[i..j] {
            let e = resolved.entries[chunk as usize];
            let at = (e.offset - start) as usize;
            let len = frame_len(e.stored_len) as usize;
            let frame = &mut buf.as_mut_slice()[at..at + len];
            let damaged = |why: String| {
                Error::corrupt(
                    &seg.path,
                    e.offset,
                    format!(
                        "chunk {chunk} (held by image {}) is damaged: {why}; the merge stopped and changed nothing",
                        seg.image
                    ),
                )
            };
            let mut h = FrameHeader::decode(frame).map_err(|err| damaged(err.to_string()))?;
            h.check_matches(chunk, seg.image, &e).map_err(damaged)?;
            if xxh3_64(&frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.stored_len as usize]) != h.stored_hash {
                return Err(damaged("the payload's hash does not match its header".into()));
            }
            h.image_id = id;
            h.encode(frame);
            frames.push((chunk, at, len));
            stats.chunks_stored += 1;
            stats.bytes_stored_payload += u64::from(e.stored_len);
            if e.stored_len == e.raw_len {
                stats.chunks_stored_raw += 1;
                stats.bytes_stored_raw += u64::from(e.stored_len);
            }
        }
        if tx.send(Run { buf, frames }).is_err() {
            return Ok(()); // the writer failed; its error is the one to report
        }
        if crate::pipeline::interrupted() {
            return Err(Error::Interrupted(format!(
                "merge stopped by a signal; nothing was changed (the new image {id}'s files were removed)"
            )));
        }
        obs.progress(j as u64, total);
        i = j;
    }
    Ok(())
}

/// How to run `prune`.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    pub set: PathBuf,
    /// Keep the N newest images.
    pub keep_last: Option<u32>,
    /// Keep the newest image of each of the N most recent days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest image of each of the N most recent weeks (Monday to Sunday, UTC) that have one.
    pub keep_weekly: Option<u32>,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
    /// Also remove the files of unfinished runs (which `create --resume` could carry on).
    pub discard_unfinished: bool,
    /// As [`MergeOptions::io`].
    pub io: IoChoice,
}

/// One image and why the policy keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub image_id: String,
    pub kind: String,
    pub created: String,
    pub reasons: Vec<String>,
    /// It depends on images the policy removes: it is rewritten onto its
    /// nearest kept ancestor (or as a full image) first.
    pub rewritten_as: Option<String>,
    pub folds: Vec<String>,
}

/// What `prune` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub kept: Vec<Kept>,
    pub removed: Vec<String>,
    pub consolidated: Vec<Consolidated>,
    pub unfinished_removed: Vec<String>,
}

fn day_of(unix: u64) -> u64 {
    unix / 86_400
}

/// Weeks start on Monday: 1970-01-01 was a Thursday.
fn week_of(unix: u64) -> u64 {
    (day_of(unix) + 3) / 7
}

/// Which of `points` (Image ID, creation time; oldest first) the policy
/// keeps, and why.
fn policy(points: &[(ImageId, u64)], opts: &PruneOptions) -> BTreeMap<ImageId, Vec<String>> {
    let mut reasons: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
    if let Some(n) = opts.keep_last {
        for (id, _) in points.iter().rev().take(n as usize) {
            reasons.entry(*id).or_default().push(format!("one of the last {n}"));
        }
    }
    for (n, period, name) in
        [(opts.keep_daily, day_of as fn(u64) -> u64, "daily"), (opts.keep_weekly, week_of as fn(u64) -> u64, "weekly")]
    {
        let Some(n) = n else { continue };
        let mut seen = Vec::new();
        for &(id, created) in points.iter().rev() {
            let p = period(created);
            if seen.contains(&p) {
                continue;
            }
            if seen.len() == n as usize {
                break;
            }
            seen.push(p);
            let label = if name == "daily" {
                crate::format::manifest::rfc3339_utc(created).get(..10).unwrap_or_default().to_string()
            } else {
                let monday = crate::format::manifest::rfc3339_utc((p * 7).saturating_sub(3) * 86_400);
                format!("the week of {}", monday.get(..10).unwrap_or_default())
            };
            reasons.entry(id).or_default().push(format!("{name}: newest of {label}"));
        }
    }
    reasons
}

/// Apply a retention policy.
pub fn prune(opts: &PruneOptions, obs: &dyn Observer) -> Result<PruneReport> {
    let policies =
        [("--keep-last", opts.keep_last), ("--keep-daily", opts.keep_daily), ("--keep-weekly", opts.keep_weekly)];
    let no_policy = policies.iter().all(|(_, n)| n.is_none());
    if no_policy && !opts.discard_unfinished {
        return Err(Error::InvalidSetting(
            "prune needs a policy: --keep-last N, --keep-daily N and/or --keep-weekly N (or --discard-unfinished \
             alone, which keeps every image and removes only unfinished runs)"
                .into(),
        ));
    }
    if let Some((flag, _)) = policies.iter().find(|(_, n)| *n == Some(0)) {
        return Err(Error::InvalidSetting(format!("{flag} 0 would keep nothing; keep at least one image")));
    }
    let set = ImageSet::open(&opts.set)?;
    let _lock = if opts.dry_run { None } else { Some(lock_set(&set.dir, Access::Delete, "prune")?) };
    refuse_unreadable(&set)?;
    if !opts.dry_run {
        finish_pending(&set, obs)?;
    }
    let (images, _) = set.images_lenient()?;
    let live: Vec<&Image> = images.iter().filter(|i| replaced_by(i, &images).is_none()).collect();
    let points: Vec<(ImageId, u64)> = live.iter().map(|i| (i.id(), i.manifest.created_unix_seconds)).collect();
    let mut reasons = policy(&points, opts);
    if no_policy {
        // --discard-unfinished alone: every image stays.
        for (id, _) in &points {
            reasons.entry(*id).or_default().push("no policy given (--discard-unfinished alone)".into());
        }
    }
    // Every kept image whose parent goes is rewritten onto its nearest
    // kept ancestor, oldest first.
    let mut kept = Vec::new();
    let mut plans = Vec::new();
    for i in &live {
        let Some(why) = reasons.get(&i.id()) else { continue };
        let chain = set.chain(i)?;
        let j = chain.iter().skip(1).position(|a| reasons.contains_key(&a.id())).map_or(chain.len(), |p| p + 1);
        let folds: Vec<String> = chain[1..j].iter().map(|a| a.id().to_string()).collect();
        if !folds.is_empty() {
            plans.push(chain[..j].to_vec());
        }
        kept.push(Kept {
            image_id: i.id().to_string(),
            kind: i.manifest.kind.name().into(),
            created: i.manifest.created.clone(),
            reasons: why.clone(),
            rewritten_as: None,
            folds,
        });
    }
    let doomed: Vec<ImageId> = live.iter().map(|i| i.id()).filter(|id| !reasons.contains_key(id)).collect();
    let (_, partial) = set.scan()?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        kept,
        removed: doomed.iter().map(|i| i.to_string()).collect(),
        consolidated: Vec::new(),
        unfinished_removed: if opts.discard_unfinished {
            partial.iter().map(|p| p.to_string()).collect()
        } else {
            vec![]
        },
    };
    if opts.dry_run {
        return Ok(report);
    }
    for span in &plans {
        let c = consolidate(&set, span, &opts.io, obs).map_err(|e| match e {
            // Earlier rewrites are committed: say so, and how to finish.
            Error::Interrupted(_) => Error::Interrupted(format!(
                "prune stopped by a signal after rewriting {} of {} image(s) (each rewritten one stands in for the \
                 image it replaces; the unfinished one's files were removed); nothing was removed: run the same \
                 prune again to finish",
                report.consolidated.len(),
                plans.len()
            )),
            e => e,
        })?;
        if let Some(k) = report.kept.iter_mut().find(|k| k.image_id == c.replaces) {
            k.rewritten_as = Some(c.image_id.clone());
        }
        report.consolidated.push(c);
    }
    if crate::pipeline::interrupted() {
        return Err(Error::Interrupted(format!(
            "prune stopped by a signal after rewriting {} of {} image(s) (each rewritten one stands in for the image \
             it replaces); nothing was removed: run the same prune again to finish",
            report.consolidated.len(),
            plans.len()
        )));
    }
    let mut candidates = doomed.clone();
    candidates.extend(plans.iter().map(|s| s[0].id()));
    let fresh: Vec<ImageId> = report.consolidated.iter().filter_map(|c| ImageId::parse(&c.image_id)).collect();
    let removed = remove_unneeded(&set, &candidates, &fresh, obs).map_err(|e| match e {
        Error::Interrupted(m) => Error::Interrupted(format!(
            "prune rewrote {} image(s), then {m}: run the same prune again to finish",
            report.consolidated.len()
        )),
        e => e,
    })?;
    report.removed = removed.iter().filter(|id| doomed.contains(id)).map(|i| i.to_string()).collect();
    if let Some(left) = doomed.iter().find(|d| !removed.contains(d)) {
        obs.note(&format!(
            "image {left} is outside the policy but still needed by a kept image or a resumable run; it stays"
        ));
    }
    if opts.discard_unfinished {
        for p in partial {
            remove_leftovers(&set.dir, p)?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_keep_the_newest_per_day_and_week_and_add_up() {
        let day = 86_400;
        // 2026-11-16 was a Monday. Two images a day for ten days.
        let monday = 1_794_787_200;
        assert_eq!(crate::format::manifest::rfc3339_utc(monday), "2026-11-16T00:00:00Z");
        let points: Vec<(ImageId, u64)> =
            (0..20).map(|i| (ImageId(100 + i), monday + (i / 2) * day + (i % 2) * 3600)).collect();
        let kept = |o: PruneOptions| policy(&points, &o).keys().map(|k| k.0 - 100).collect::<Vec<_>>();
        assert_eq!(kept(PruneOptions { keep_last: Some(3), ..Default::default() }), vec![17, 18, 19]);
        // The newest of each of the last 3 days: days 9, 8, 7.
        assert_eq!(kept(PruneOptions { keep_daily: Some(3), ..Default::default() }), vec![15, 17, 19]);
        // Weeks from Monday: days 7..9 are the second week, 0..6 the first.
        assert_eq!(kept(PruneOptions { keep_weekly: Some(2), ..Default::default() }), vec![13, 19]);
        assert_eq!(
            kept(PruneOptions { keep_last: Some(1), keep_daily: Some(2), keep_weekly: Some(2), ..Default::default() }),
            vec![13, 17, 19]
        );
        let why = policy(&points, &PruneOptions { keep_weekly: Some(1), keep_last: Some(1), ..Default::default() });
        assert_eq!(
            why[&ImageId(119)],
            vec!["one of the last 1".to_string(), "weekly: newest of the week of 2026-11-23".into()]
        );
    }
}
