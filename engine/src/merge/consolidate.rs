//! Consolidation: a new image written for the same point in time as an
//! older one, its frames copied from the images it folds (headers
//! rewritten to the new Image ID, payloads byte for byte, each checked on
//! the way), committed with `replaces`. Reads only the set, never the
//! source: this thread reads and checks runs of adjacent frames while a
//! writer thread appends them to the new segments.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::options::Consolidated;
use crate::error::ChainBreak;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::frame::{frame_len, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::index::{ChunkState, IndexEntry, IndexHeader};
use crate::format::manifest::{ImageKind, IndexInfo, Manifest, SegmentInfo, Stats};
use crate::format::names::{badmap_file_name, index_file_name, run_file_name};
use crate::format::segment::DEFAULT_SEGMENT_BYTES;
use crate::format::ImageId;
use crate::format::Xxh128;
use crate::format::FORMAT_VERSION;
use crate::io::buffers::AlignedBuf;
use crate::io::device::open_read_only;
use crate::io::device::OpenMode;
use crate::io::IoChoice;
use crate::observe::{interrupted, test_pause, Observer};
use crate::set::chain::Resolved;
use crate::set::commit::sync_dir;
use crate::set::image::Image;
use crate::set::image::IndexHash;
use crate::set::index_writer::{Existing, RunIndex, Tally, Written};
use crate::set::lineage::Lineage;
use crate::set::remove::Leftovers;
use crate::set::run_record::{unix_now, RunOperation, RunRecord};
use crate::set::segment_writer::SegmentWriter;
use crate::set::unreadable::write_badmap;
use crate::set::ImageSet;

/// Frames read together: one positioned read of adjacent frames, each
/// checked and given the new image's ID in place.
pub(crate) struct Run {
    pub buf: AlignedBuf,
    pub frames: Vec<RunFrame>,
}

/// One frame of a [`Run`]: its chunk and where it lies in the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunFrame {
    pub chunk: u64,
    pub start: usize,
    pub len: usize,
}

/// Where the writer put a chunk's frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub chunk: u64,
    pub segment: u32,
    pub offset: u64,
}

/// Largest read of adjacent frames.
pub(crate) const RUN_BYTES: u64 = 8 << 20;

/// Write and commit a new image with the content of `span[0]`, folding in
/// the frames of `span[1..]`; its parent is the last one's parent.
pub(super) fn consolidate(set: &ImageSet, span: &[Image], io: &IoChoice, obs: &dyn Observer) -> Result<Consolidated> {
    let started = Instant::now();
    let (target, last) = (&span[0], span.last().expect("non-empty span"));
    // A missing or cut file is found before anything is written.
    for img in span {
        img.check_files(IndexHash::Skip).map_err(|why| Error::BrokenChain {
            reason: ChainBreak::FilesDamaged,
            path: set.dir.clone(),
            image: img.id().to_string(),
            why: format!("{why}; the merge stopped and changed nothing"),
        })?;
    }
    let resolved = Resolved::load(span)?;
    resolved.check_segment_headers(target.manifest.chunk_size_bytes)?;
    let id = set.scan()?.fresh_id();
    let kind = kind_after(set, last)?;
    let tm = &target.manifest;
    obs.note(&format!(
        "writing image {id}: {} as of {}, folding {}",
        kind.name(),
        tm.created,
        span.iter().map(|i| i.id().to_string()).collect::<Vec<_>>().join(" + ")
    ));
    let mut guard = Leftovers { dir: &set.dir, id, armed: true };
    record(target, last, id, kind).write_new(&set.dir)?;
    let (placed, segments, mut stats) = copy_frames(set, &resolved, tm, id, io, obs)?;
    let (index, tally) = write_index(set, tm, id, last.manifest.parent.as_deref(), &resolved, placed)?;
    count_states(&tally, &segments, &mut stats);
    stats.wall_seconds = started.elapsed().as_secs_f64();
    let manifest = manifest(target, last, id, kind, stats, segments, index);
    commit(set, &mut guard, &manifest)?;
    Ok(Consolidated {
        image_id: id.to_string(),
        replaces: tm.image_id.clone(),
        folded: span.iter().map(|i| i.manifest.image_id.clone()).collect(),
        kind: kind.name().into(),
        parent: manifest.parent.clone(),
        chunks_copied: manifest.stats.chunks_copied,
        bytes_copied: manifest.stats.bytes_segments,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the new image is, given what the last image of the span stands on.
pub(crate) fn kind_after(set: &ImageSet, last: &Image) -> Result<ImageKind> {
    let images = set.load_all()?.images;
    Ok(match (Lineage::new(&images).parent(last), &last.manifest.parent) {
        (None, Some(parent)) => {
            return Err(Error::BrokenChain {
                reason: ChainBreak::ParentMissing,
                path: set.dir.clone(),
                image: last.id().to_string(),
                why: format!("its parent {parent} is not in the set"),
            })
        }
        (None, None) => ImageKind::Full,
        (Some(p), _) if p.manifest.kind == ImageKind::Full => ImageKind::Differential,
        (Some(_), _) => ImageKind::Incremental,
    })
}

/// The run record of the merge: its files are removed, never resumed, if it
/// does not commit.
pub(crate) fn record(target: &Image, last: &Image, id: ImageId, kind: ImageKind) -> RunRecord {
    let tm = &target.manifest;
    RunRecord {
        format: "tintype-run".into(),
        format_version: 1,
        image_id: id.to_string(),
        operation: RunOperation::Merge,
        kind,
        parent: last.manifest.parent.clone(),
        source: tm.source.clone(),
        chunk_size_bytes: tm.chunk_size_bytes,
        level: tm.level,
        started_unix_seconds: unix_now(),
        source_written: None,
    }
}

/// Copy every stored frame into the new image's segments, in the order the
/// frames lie on disk (so reads are sequential): this thread reads and
/// checks, a writer thread appends. Returns where each frame went, the
/// segments, and the copy's counts.
pub(crate) fn copy_frames(
    set: &ImageSet,
    resolved: &Resolved,
    tm: &Manifest,
    id: ImageId,
    io: &IoChoice,
    obs: &dyn Observer,
) -> Result<(Vec<Placed>, Vec<SegmentInfo>, Stats)> {
    let mut order: Vec<u64> =
        resolved.runs().iter().filter(|r| r.entry.state == ChunkState::Stored).map(|r| r.first).collect();
    order.sort_by_key(|&c| {
        let e = resolved.entry(c);
        (e.segment, e.offset)
    });
    let limit = if tm.settings.segment_size_bytes > 0 { tm.settings.segment_size_bytes } else { DEFAULT_SEGMENT_BYTES };
    let mut w = SegmentWriter::new(&set.dir, id, tm.chunk_size_bytes, limit, io);
    let mut stats = Stats::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Run>(2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<AlignedBuf>();
    let (placed, segments) = std::thread::scope(|scope| -> Result<(Vec<Placed>, Vec<SegmentInfo>)> {
        let writer = scope.spawn(move || -> Result<(Vec<Placed>, Vec<SegmentInfo>)> {
            let mut placed = Vec::new();
            for run in rx {
                for f in &run.frames {
                    let (segment, offset) = w.append(&run.buf.as_slice()[f.start..f.start + f.len])?;
                    placed.push(Placed { chunk: f.chunk, segment, offset });
                }
                let _ = back_tx.send(run.buf);
            }
            Ok((placed, w.finish()?))
        });
        let read = read_runs(Reader { resolved, order: &order, id, io, tx: &tx, spare: &back_rx }, &mut stats, obs);
        drop(tx);
        let written = writer.join().expect("merge writer thread panicked");
        // A damaged frame (or a signal) is the reader's to report; when the
        // reader stopped because the writer did, the writer's error explains it.
        read.and(written)
    })?;
    obs.progress(order.len() as u64, order.len() as u64);
    Ok((placed, segments, stats))
}

/// The new image's counts by state and its segments' totals.
pub(crate) fn count_states(tally: &Tally, segments: &[SegmentInfo], stats: &mut Stats) {
    debug_assert_eq!(tally.chunks_stored, stats.chunks_stored, "every copied frame has its index record");
    tally.set_counts(stats);
    stats.chunks_copied = stats.chunks_stored;
    stats.bytes_segments = segments.iter().map(|s| s.size_bytes).sum();
    stats.stage_seconds = BTreeMap::new();
}

/// Write the new image's index (never replacing a file): the resolved
/// runs, each stored chunk at the place the copy put its frame.
fn write_index(
    set: &ImageSet,
    tm: &Manifest,
    id: ImageId,
    parent: Option<&str>,
    resolved: &Resolved,
    mut placed: Vec<Placed>,
) -> Result<(Written, Tally)> {
    let mut index = RunIndex::create(&set.dir.join(index_file_name(id)), Existing::Refuse)?;
    placed.sort_unstable_by_key(|p| p.chunk);
    let mut placed = placed.into_iter();
    for run in resolved.runs() {
        let mut run = *run;
        if run.entry.state == ChunkState::Stored {
            let p = placed.next().filter(|p| p.chunk == run.first).expect("every stored chunk was copied");
            run.entry = IndexEntry { segment: p.segment, offset: p.offset, image_id: id, ..run.entry };
        }
        index.push(run)?;
    }
    let tally = index.tally;
    let header = IndexHeader {
        version: FORMAT_VERSION,
        chunk_bytes: tm.chunk_size_bytes,
        image_id: id,
        chunk_count: tm.chunk_count,
        source_bytes: tm.source.size_bytes,
        parent: parent.and_then(ImageId::parse),
        records: 0,
    };
    Ok((index.finish(header)?, tally))
}

/// The new image's manifest: the target's, with the new ID, kind, parent,
/// statistics, segments and index, replacing the target (and what it
/// replaced).
pub(crate) fn manifest(
    target: &Image,
    last: &Image,
    id: ImageId,
    kind: ImageKind,
    stats: Stats,
    segments: Vec<SegmentInfo>,
    index: Written,
) -> Manifest {
    let tm = &target.manifest;
    let mut replaces = vec![tm.image_id.clone()];
    replaces.extend(tm.replaces.iter().cloned());
    Manifest {
        format_version: u32::from(FORMAT_VERSION),
        image_id: id.to_string(),
        kind,
        parent: last.manifest.parent.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        stats,
        segments,
        index: IndexInfo { file: index_file_name(id), size_bytes: index.size_bytes, xxh3_128: Xxh128(index.xxh3_128) },
        replaces,
        ..tm.clone()
    }
}

/// Write the badmap (the point in time keeps its unreadable ranges), make
/// everything durable, and commit — unless a signal came first, in which
/// case the guard removes the new image's files and nothing changed.
pub(crate) fn commit(set: &ImageSet, guard: &mut Leftovers<'_>, manifest: &Manifest) -> Result<()> {
    let id = manifest.id();
    if !manifest.unreadable.is_empty() {
        let bad: Vec<(u64, u64)> = manifest.unreadable.iter().map(|r| (r.offset, r.length)).collect();
        write_badmap(&set.dir.join(badmap_file_name(id)), &bad, manifest.source.size_bytes)?;
    }
    sync_dir(&set.dir)?;
    test_pause("merge-commit");
    if interrupted() {
        return Err(Error::interrupted(
            Left::NothingChanged,
            "stopped by a signal before the new image was committed; nothing was changed (its files are removed)"
                .into(),
        ));
    }
    guard.commit(manifest)?;
    let _ = std::fs::remove_file(set.dir.join(run_file_name(id)));
    Ok(())
}

/// What the reading side of a copy works with.
pub(crate) struct Reader<'a> {
    pub resolved: &'a Resolved,
    /// Stored chunks in on-disk order.
    pub order: &'a [u64],
    /// The new image's ID, written into every frame header.
    pub id: ImageId,
    pub io: &'a IoChoice,
    pub tx: &'a SyncSender<Run>,
    /// Buffers the writer is done with.
    pub spare: &'a Receiver<AlignedBuf>,
}

/// Read the frames in runs of adjacent frames (one positioned read each, up
/// to [`RUN_BYTES`]), check each (header, agreement with the index, payload
/// hash), give it the new image's ID, and send the runs to the writer.
pub(crate) fn read_runs(r: Reader<'_>, stats: &mut Stats, obs: &dyn Observer) -> Result<()> {
    // Segments opened so far; the one being read sits in the I/O's slot 0.
    let mut files: HashMap<u32, File> = HashMap::new();
    let mut io = crate::io::open_sync(r.io, 1);
    let mut current: Option<u32> = None;
    let mut i = 0;
    while i < r.order.len() {
        let (j, start, end) = next_run(r.resolved, r.order, i);
        let segment = r.resolved.entry(r.order[i]).segment;
        let seg = &r.resolved.segments[segment as usize];
        if current != Some(segment) {
            let f = match files.remove(&segment) {
                Some(f) => f,
                // O_DIRECT: segments written by the lanes are not in the page
                // cache, and buffered reads of them run at a fraction of the disk.
                None => open_read_only(&seg.path, OpenMode::Direct)?.0,
            };
            let old = io.set_file(0, Some(f)).map_err(|e| Error::io("register", &seg.path, e))?;
            if let (Some(c), Some(old)) = (current, old) {
                files.insert(c, old);
            }
            current = Some(segment);
        }
        let run_len = (end - start) as usize;
        let mut buf = r
            .spare
            .try_recv()
            .ok()
            .filter(|b| b.len() >= run_len)
            .unwrap_or_else(|| AlignedBuf::new(run_len.max(RUN_BYTES as usize)));
        io.read_exact_into(0, &mut buf.as_mut_slice()[..run_len], start)
            .map_err(|err| Error::io_at("read frames", &seg.path, start, err))?;
        let mut frames = Vec::with_capacity(j - i);
        for &chunk in &r.order[i..j] {
            let e = r.resolved.entry(chunk);
            let f = RunFrame { chunk, start: (e.offset - start) as usize, len: frame_len(e.stored_len) as usize };
            retag(r.resolved, &e, f, &mut buf.as_mut_slice()[f.start..f.start + f.len], r.id)?;
            count_copied(&e, stats);
            frames.push(f);
        }
        if r.tx.send(Run { buf, frames }).is_err() {
            return Ok(()); // the writer failed; its error is the one to report
        }
        if interrupted() {
            return Err(Error::interrupted(
                Left::NothingChanged,
                format!("merge stopped by a signal; nothing was changed (the new image {}'s files were removed)", r.id),
            ));
        }
        obs.progress(j as u64, r.order.len() as u64);
        i = j;
    }
    Ok(())
}

/// The run of adjacent frames starting at `order[i]`: the index one past
/// its last frame, and its byte range in their segment.
pub(crate) fn next_run(resolved: &Resolved, order: &[u64], i: usize) -> (usize, u64, u64) {
    let first = resolved.entry(order[i]);
    let (segment, start) = (first.segment, first.offset);
    let mut end = start + frame_len(first.stored_len);
    let mut j = i + 1;
    while let Some(&c) = order.get(j) {
        let e = resolved.entry(c);
        let len = frame_len(e.stored_len);
        if e.segment != segment || e.offset != end || end + len - start > RUN_BYTES {
            break;
        }
        end += len;
        j += 1;
    }
    (j, start, end)
}

/// Check one frame read for a copy (header, agreement with its index entry,
/// payload hash) and rewrite its header to the new image's ID.
pub(crate) fn retag(resolved: &Resolved, e: &IndexEntry, f: RunFrame, frame: &mut [u8], id: ImageId) -> Result<()> {
    let seg = &resolved.segments[e.segment as usize];
    let damaged = |why: String| {
        Error::corrupt(
            &seg.path,
            e.offset,
            format!(
                "chunk {} (held by image {}) is damaged: {why}; the merge stopped and changed nothing",
                f.chunk, seg.image
            ),
        )
    };
    let mut h = FrameHeader::decode(frame).map_err(|err| damaged(err.to_string()))?;
    h.check_matches(f.chunk, seg.image, e).map_err(|m| damaged(m.to_string()))?;
    if xxh3_64(&frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.stored_len as usize]) != h.stored_hash {
        return Err(damaged("the payload's hash does not match its header".into()));
    }
    h.image_id = id;
    h.encode(frame);
    Ok(())
}

/// Count one copied frame.
pub(crate) fn count_copied(e: &IndexEntry, stats: &mut Stats) {
    stats.chunks_stored += 1;
    stats.bytes_stored_payload += u64::from(e.stored_len);
    if e.stored_len == e.raw_len {
        stats.chunks_stored_raw += 1;
        stats.bytes_stored_raw += u64::from(e.stored_len);
    }
}
