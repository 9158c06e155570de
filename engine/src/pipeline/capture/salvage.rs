//! `--resume`: what an interrupted run left that this one keeps — every
//! complete, hash-valid frame of its segments, the index entries that need
//! no frame, and the unreadable ranges of the chunks it keeps.

use super::preset::Preset;
use super::start::ParentHashes;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use super::options::OnReadError;
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::format::frame::{frame_len, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::index::{
    entry_offset, ChunkState, IndexEntry, IndexHeader, Run, ZeroHashes, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES,
    RUN_RECORD_BYTES,
};
use crate::format::manifest::SegmentInfo;
use crate::format::names::parse_file_name;
use crate::format::names::FileKind;
use crate::format::names::{index_file_name, segment_file_name};
use crate::format::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::ImageId;
use crate::format::Xxh64;
use crate::observe::Observer;
use crate::set::index_reader::WINDOW_CHUNKS;
use crate::set::unreadable::read_journal;
use crate::set::unreadable::rewrite_journal;

/// What an interrupted run left that a resumed one keeps.
pub(crate) struct Salvage {
    pub segments: Vec<SegmentInfo>,
    /// Per chunk: the entry it already has (a kept frame, or a zero or
    /// inherited entry from the old index).
    pub preset: Preset,
    pub kept: u64,
}

/// Scan the segments of the unfinished image `id`: keep every complete,
/// hash-valid frame (a torn or damaged one ends its segment, which is
/// truncated there), and the old index's zero and inherited entries that
/// are exactly what this run would write.
pub(crate) fn salvage(
    dir: &Path,
    id: ImageId,
    chunk_bytes: u32,
    size: u64,
    parent: Option<&ParentHashes>,
) -> Result<Salvage> {
    let geometry = Geometry { id, chunk_bytes, size };
    let mut preset = Preset::new(chunk_bytes, size);
    let mut segments = Vec::new();
    let mut kept = 0;
    // Segment numbers are handed out densely; keep the dense prefix.
    let mut seq = 0u32;
    loop {
        let path = dir.join(segment_file_name(id, seq));
        let f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io("open segment", &path, e)),
        };
        let info = scan_segment(&f, &path, seq, &geometry, &mut preset)?;
        kept += info.frames;
        segments.push(info);
        seq += 1;
    }
    drop_segments_after_gap(dir, id, seq)?;
    keep_old_entries(&dir.join(index_file_name(id)), &geometry, parent, &mut preset);
    Ok(Salvage { segments, preset, kept })
}

/// What a resumed run's chunks are.
struct Geometry {
    id: ImageId,
    chunk_bytes: u32,
    size: u64,
}

impl Geometry {
    fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_bytes))
    }

    /// The raw length of `chunk` (the last one may be short).
    fn extent(&self, chunk: u64) -> u32 {
        u64::from(self.chunk_bytes).min(self.size - chunk * u64::from(self.chunk_bytes)) as u32
    }
}

/// Keep the whole, hash-valid frames of one segment (recording them in
/// `preset`), cut it after the last, make it durable, and describe it. A
/// damaged header empties the segment (a fresh header, no frames).
fn scan_segment(f: &std::fs::File, path: &Path, seq: u32, g: &Geometry, preset: &mut Preset) -> Result<SegmentInfo> {
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
    let header = f
        .read_exact_at(&mut head, 0)
        .ok()
        .and_then(|()| SegmentHeader::decode(&head).ok())
        .filter(|h| h.image_id == g.id && h.seq == seq && h.chunk_bytes == g.chunk_bytes);
    let lane = header.map_or(0, |h| h.lane);
    if header.is_none() {
        SegmentHeader { image_id: g.id, lane: 0, seq, chunk_bytes: g.chunk_bytes }.encode(&mut head);
        f.set_len(0)
            .and_then(|()| f.write_all_at(&head, 0))
            .map_err(|e| Error::io("rewrite segment header", path, e))?;
    }
    let mut hasher = Xxh3Default::new();
    hasher.update(&head);
    let mut at = SEGMENT_HEADER_BYTES as u64;
    let mut frames = 0;
    let mut buf = Vec::new();
    while header.is_some() {
        let Some((chunk, e)) = next_frame(f, at, len, seq, g, preset, &mut buf) else { break };
        hasher.update(&buf);
        preset.insert(chunk, e);
        frames += 1;
        at += buf.len() as u64;
    }
    if at < len || header.is_none() {
        f.set_len(at).map_err(|e| Error::io("truncate segment", path, e))?;
    }
    f.sync_all().map_err(|e| Error::io("fsync segment", path, e))?;
    Ok(SegmentInfo {
        file: segment_file_name(g.id, seq),
        lane,
        seq,
        size_bytes: at,
        frames,
        xxh3_64: Xxh64(hasher.digest()),
    })
}

/// The frame at `at`, read into `buf`, when it is whole, belongs here and
/// its payload hash and padding check out; its chunk and entry.
fn next_frame(
    f: &std::fs::File,
    at: u64,
    len: u64,
    seq: u32,
    g: &Geometry,
    preset: &Preset,
    buf: &mut Vec<u8>,
) -> Option<(u64, IndexEntry)> {
    let mut fh = [0u8; FRAME_HEADER_BYTES];
    if at + FRAME_HEADER_BYTES as u64 > len || f.read_exact_at(&mut fh, at).is_err() {
        return None;
    }
    let h = FrameHeader::decode(&fh).ok()?;
    let flen = frame_len(h.stored_len);
    if h.image_id != g.id
        || h.chunk >= g.chunk_count()
        || h.raw_len != g.extent(h.chunk)
        || preset.is_known(h.chunk)
        || at + flen > len
    {
        return None;
    }
    buf.resize(flen as usize, 0);
    f.read_exact_at(buf, at).ok()?;
    let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.stored_len as usize];
    let padding = &buf[FRAME_HEADER_BYTES + h.stored_len as usize..];
    if xxhash_rust::xxh3::xxh3_64(payload) != h.stored_hash || padding.iter().any(|&b| b != 0) {
        return None;
    }
    let entry = IndexEntry {
        state: ChunkState::Stored,
        segment: seq,
        offset: at,
        stored_len: h.stored_len,
        raw_len: h.raw_len,
        raw_hash: h.raw_hash,
        image_id: g.id,
    };
    Some((h.chunk, entry))
}

/// Segments past a gap in the numbers cannot be listed densely: removed.
fn drop_segments_after_gap(dir: &Path, id: ImageId, first_missing: u32) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        let f = parse_file_name(&e.file_name().to_string_lossy());
        let late = f.is_some_and(|f| f.id == id && matches!(f.kind, FileKind::Segment(n) if n >= first_missing));
        if late {
            std::fs::remove_file(e.path()).map_err(|err| Error::io("remove", e.path(), err))?;
        }
    }
    Ok(())
}

/// Zero and inherited entries have no frame to find; the old index's are
/// kept when they are exactly what this run would have written. The old
/// index is the lanes' working table (an all-zero header), or — for a run
/// stopped between writing its index and committing its manifest — the
/// finished version-2 index, whose runs are kept as runs.
fn keep_old_entries(index_path: &Path, g: &Geometry, parent: Option<&ParentHashes>, preset: &mut Preset) {
    let Ok(f) = std::fs::File::open(index_path) else { return };
    let mut head = [0u8; INDEX_HEADER_BYTES];
    if f.read_exact_at(&mut head, 0).is_err() {
        return;
    }
    match IndexHeader::decode(&head) {
        // A finished index is as large as its records: read whole. Only an
        // index of this run's image and geometry is used.
        Ok(h)
            if h.version >= 2
                && (h.image_id, h.chunk_bytes, h.source_bytes, h.chunk_count)
                    == (g.id, g.chunk_bytes, g.size, g.chunk_count()) =>
        {
            if let Ok(old) = std::fs::read(index_path) {
                keep_committed_runs(&old, &h, g, parent, preset);
            }
        }
        Ok(_) => {}
        Err(_) => keep_table_entries(&f, g, parent, preset),
    }
}

/// The working table's zero entries, and its inherited ones whose hash is
/// still the parent's: read a window at a time, and only where the sparse
/// table holds data (an entry never written is unset).
fn keep_table_entries(f: &std::fs::File, g: &Geometry, parent: Option<&ParentHashes>, preset: &mut Preset) {
    use rustix::fs::{seek, SeekFrom};
    let mut zero_hashes = ZeroHashes::default();
    let mut buf = vec![0u8; INDEX_ENTRY_BYTES * WINDOW_CHUNKS];
    let mut chunk = 0;
    while chunk < g.chunk_count() {
        chunk = match seek(f, SeekFrom::Data(entry_offset(chunk))) {
            Ok(at) => chunk.max(at.saturating_sub(INDEX_HEADER_BYTES as u64) / INDEX_ENTRY_BYTES as u64),
            Err(rustix::io::Errno::NXIO) => return,
            Err(_) => chunk,
        };
        let n = (g.chunk_count().saturating_sub(chunk)).min(WINDOW_CHUNKS as u64) as usize;
        let b = &mut buf[..n * INDEX_ENTRY_BYTES];
        if n == 0 || f.read_exact_at(b, entry_offset(chunk)).is_err() {
            return;
        }
        for (i, raw) in b.chunks_exact(INDEX_ENTRY_BYTES).enumerate() {
            let c = chunk + i as u64;
            let Ok(e) = IndexEntry::decode(raw) else { continue };
            let ok = match e.state {
                ChunkState::Zero => true,
                ChunkState::Inherited => {
                    parent.is_some_and(|p| e.image_id == p.id && e.raw_hash != 0 && p.get(c) == Some(e.raw_hash))
                }
                _ => false,
            };
            if ok && !preset.is_known(c) && e.check_fields(c, g.extent(c), &mut zero_hashes).is_ok() {
                preset.insert(c, e);
            }
        }
        chunk += n as u64;
    }
}

/// A finished version-2 index's zero runs, and its inherited runs where the
/// parent holds the chunks (a version-2 inherited run records no hash: it
/// was the parent's when the run was written).
fn keep_committed_runs(old: &[u8], h: &IndexHeader, g: &Geometry, parent: Option<&ParentHashes>, preset: &mut Preset) {
    let records = old.get(INDEX_HEADER_BYTES..).unwrap_or_default().chunks_exact(RUN_RECORD_BYTES);
    let mut zero_hashes = ZeroHashes::default();
    let mut next = 0;
    for run in records.take(h.records as usize).map_while(|b| Run::decode(b, h.image_id, h.parent).ok()) {
        if run.first != next || run.count > h.chunk_count - run.first {
            return; // not a well-formed index: keep what came before
        }
        next = run.end();
        let fits = [run.first, run.end() - 1].iter().all(|&c| g.extent(c) == run.entry.raw_len);
        if !fits || run.entry.check_fields(run.first, g.extent(run.first), &mut zero_hashes).is_err() {
            continue;
        }
        match (run.entry.state, parent) {
            (ChunkState::Zero, _) => preset.insert_run(run),
            (ChunkState::Inherited, Some(p)) if run.entry.image_id == p.id => {
                for piece in p.inheritable(run.first..run.end()) {
                    preset.insert_run(Run { first: piece.start, count: piece.end - piece.start, entry: run.entry });
                }
            }
            _ => {}
        }
    }
}

/// Resuming: the unreadable ranges an interrupted run found in the chunks
/// whose entries it keeps (their frames hold zeros there). The journal is
/// synced before any such chunk's frame or entry is written, so a chunk
/// missing from it read whole. The journal is rewritten with only the
/// ranges of kept chunks. Without `--on-read-error skip` those chunks are
/// then read again instead (so the run fails as asked). A journal that
/// cannot be read is refused: the kept frames cannot be told apart.
pub(super) fn keep_unreadable(
    journal: &Path,
    preset: &mut Preset,
    chunk_bytes: u32,
    size: u64,
    on_read_error: OnReadError,
    obs: &dyn Observer,
) -> Result<Vec<(u64, u64)>> {
    let all = read_journal(journal).map_err(|why| Error::Unusable {
        reason: Refusal::JournalUnreadable,
        path: journal.to_path_buf(),
        why: format!(
            "{why}: the unfinished run's kept frames may hold unreadable sectors as zeros, and which cannot be \
             told; remove the run's files (tintype prune SET --keep-last N --discard-unfinished) and image again"
        ),
    })?;
    if all.is_empty() && !journal.exists() {
        return Ok(Vec::new());
    }
    let cb = u64::from(chunk_bytes);
    let mut kept = pieces_in_kept_chunks(&all, preset, cb, size);
    rewrite_journal(journal, &kept)?;
    // The journal keeps them either way: those frames stay in the segments,
    // and a later resume may keep them again.
    if on_read_error == OnReadError::Fail && !kept.is_empty() {
        obs.note(&format!(
            "the unfinished run skipped unreadable sectors in {} kept chunk(s); without --on-read-error skip they are \
             read again",
            kept.iter().map(|r| r.0 / cb).collect::<std::collections::BTreeSet<_>>().len()
        ));
        for &(o, _) in &kept {
            preset.forget(o / cb);
        }
        kept.clear();
    }
    Ok(kept)
}

/// The journalled ranges cut at chunk boundaries, keeping the pieces in
/// chunks that keep their entries; sorted, without duplicates.
pub(crate) fn pieces_in_kept_chunks(all: &[(u64, u64)], preset: &Preset, cb: u64, size: u64) -> Vec<(u64, u64)> {
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for &(o, l) in all {
        let end = o.saturating_add(l).min(size);
        let mut at = o;
        while at < end {
            let piece_end = end.min((at / cb + 1) * cb);
            if preset.is_known(at / cb) {
                kept.push((at, piece_end - at));
            }
            at = piece_end;
        }
    }
    kept.sort_unstable();
    kept.dedup();
    kept
}
