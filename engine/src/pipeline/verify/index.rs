//! The index half of verify: every entry checked against the image, its
//! state's rules and, for inherited chunks, the parent's index; stored
//! entries grouped by segment for the lanes.
use crate::error::Result;
use crate::format::index::entry_offset;
use crate::format::index::ChunkState;
use crate::format::index::ZeroHashes;

use crate::format::index::IndexEntry;
use crate::format::ImageId;
use crate::pipeline::verify::options::BadChunk;
use crate::pipeline::verify::options::Problem;
use crate::set::image::Image;

/// The parent's raw hash per chunk (None where its entry does not decode),
/// to check what a child says it inherited.
pub(crate) fn parent_hashes(parent: &Image) -> Result<Vec<Option<u128>>, String> {
    let idx = parent.read_index().map_err(|e| e.to_string())?;
    Ok(idx
        .entries
        .iter()
        .map(|e| e.as_ref().ok().filter(|e| e.state != ChunkState::Unset).map(|e| e.raw_hash))
        .collect())
}

/// One frame to check: where the index says it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRef {
    pub chunk: u64,
    pub entry: IndexEntry,
}

/// What verify found so far in one image.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub bad: Vec<BadChunk>,
    pub problems: Vec<Problem>,
    /// Stored frames checked and intact.
    pub ok: u64,
}

/// Chunks of each state without a frame that checked out.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StateCounts {
    pub zero: u64,
    pub unused: u64,
    pub unreadable: u64,
    pub inherited: u64,
}

/// The index half of a verify: findings, counts, and the stored frames
/// grouped by segment (each sorted by offset) for the segment lanes.
#[derive(Debug)]
pub(crate) struct IndexCheck {
    pub findings: Findings,
    pub counts: StateCounts,
    pub per_segment: Vec<Vec<FrameRef>>,
}

/// Check every entry of `img`'s index; inherited chunks against `parent`'s.
pub(crate) fn check_index(img: &Image, parent: Option<&Image>) -> Result<IndexCheck> {
    let m = &img.manifest;
    let index = img.read_index()?;
    let mut check = IndexCheck {
        findings: Findings::default(),
        counts: StateCounts::default(),
        per_segment: vec![Vec::new(); m.segments.len()],
    };
    if !index.hash_matches {
        check.findings.problems.push(Problem {
            file: m.index.file.clone(),
            offset: None,
            what: "index checksum (xxh3-128) does not match the manifest: the index was modified or damaged".into(),
        });
    }
    let parent = parent.map(|p| (p.id(), parent_hashes(p)));
    let mut zero_hashes = ZeroHashes::default();
    for (chunk, e) in index.entries.iter().enumerate() {
        let chunk = chunk as u64;
        let bad = |reason: String| BadChunk {
            image: m.image_id.clone(),
            chunk,
            source_offset: img.chunk_extent(chunk).0,
            segment: None,
            segment_offset: None,
            reason,
        };
        match e {
            Ok(e) => check_entry(img, chunk, e, &parent, &mut zero_hashes, &mut check).unwrap_or_else(|why| {
                let mut b = bad(why.reason);
                if let Some(s) = m.segments.get(e.segment as usize).filter(|_| why.at_frame) {
                    b.segment = Some(s.file.clone());
                    b.segment_offset = Some(e.offset);
                }
                check.findings.bad.push(b);
            }),
            Err(why) => {
                check.findings.bad.push(bad(format!("index entry at offset {} is invalid: {why}", entry_offset(chunk))))
            }
        }
    }
    for frames in &mut check.per_segment {
        frames.sort_by_key(|r| r.entry.offset);
    }
    Ok(check)
}

/// Why one entry is bad; `at_frame` when the index names a frame (its
/// segment and offset are then reported with it).
struct Bad {
    reason: String,
    at_frame: bool,
}

/// The parent's ID and raw hash per chunk (or why its index cannot be read).
type ParentHashes = Option<(ImageId, std::result::Result<Vec<Option<u128>>, String>)>;

/// Check one decoded entry: counted, queued for its segment's lane, or bad.
fn check_entry(
    img: &Image,
    chunk: u64,
    e: &IndexEntry,
    parent: &ParentHashes,
    zero_hashes: &mut ZeroHashes,
    check: &mut IndexCheck,
) -> std::result::Result<(), Bad> {
    // The per-entry rules every reader applies (FORMAT §5); what verify adds
    // is reading the frames and comparing inherited chunks with the parent.
    img.check_entry(chunk, e, zero_hashes).map_err(|reason| Bad { reason, at_frame: e.state == ChunkState::Stored })?;
    let counts = &mut check.counts;
    match e.state {
        ChunkState::Stored => check.per_segment[e.segment as usize].push(FrameRef { chunk, entry: *e }),
        ChunkState::Zero => counts.zero += 1,
        ChunkState::Unused => counts.unused += 1,
        ChunkState::Unreadable => counts.unreadable += 1,
        ChunkState::Unset => {
            return Err(Bad { reason: "index entry was never written".into(), at_frame: false });
        }
        ChunkState::Inherited => {
            check_inherited(img.manifest.parent_id(), chunk, e, parent)?;
            counts.inherited += 1;
        }
    }
    Ok(())
}

/// An inherited chunk must name the image's parent, whose index must hold
/// the same chunk there.
fn check_inherited(
    named: Option<ImageId>,
    chunk: u64,
    e: &IndexEntry,
    parent: &ParentHashes,
) -> std::result::Result<(), Bad> {
    let reason = match (parent, named) {
        (Some((pid, Ok(hashes))), Some(named)) if named == e.image_id => {
            match hashes.get(chunk as usize).copied().flatten() {
                Some(h) if h == e.raw_hash => return Ok(()),
                Some(_) => format!("chunk is inherited from image {pid}, whose index holds a different chunk there"),
                None => format!("chunk is inherited from image {pid}, whose index entry for it is damaged"),
            }
        }
        (Some((pid, Err(why))), _) => format!("chunk is inherited from image {pid}, whose index cannot be read: {why}"),
        (_, named) => format!(
            "chunk is marked inherited from image {}, but the image's parent is {}",
            e.image_id,
            named.map_or("none".to_string(), |p| p.to_string())
        ),
    };
    Err(Bad { reason, at_frame: false })
}
