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
use crate::set::index_reader::{EntryResult, IndexStream};

/// The parent's index, read in step with the child's: windows of both
/// start at the same chunks, so memory stays one window each.
struct ParentStream {
    id: ImageId,
    stream: std::result::Result<IndexStream, String>,
    window: Vec<EntryResult>,
    first: u64,
}

impl ParentStream {
    fn open(parent: &Image) -> ParentStream {
        let stream = parent.index_stream().map_err(|e| e.to_string());
        ParentStream { id: parent.id(), stream, window: Vec::new(), first: 0 }
    }

    /// Read the parent's next window (the one starting where the child's does).
    fn advance(&mut self) {
        let Ok(s) = &mut self.stream else { return };
        match s.next_window(&mut self.window) {
            Ok(Some(first)) => self.first = first,
            Ok(None) => self.window.clear(),
            Err(e) => self.stream = Err(e.to_string()),
        }
    }

    /// The parent's raw hash for `chunk` (None where its entry does not
    /// decode, is unset or does not exist), or why its index cannot be read.
    fn hash(&self, chunk: u64) -> std::result::Result<Option<u128>, &str> {
        if let Err(why) = &self.stream {
            return Err(why);
        }
        let at = chunk.checked_sub(self.first).map(|i| i as usize);
        let e = at.and_then(|i| self.window.get(i)).and_then(|e| e.as_ref().ok());
        Ok(e.filter(|e| e.state != ChunkState::Unset).map(|e| e.raw_hash))
    }
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

/// Check every entry of `img`'s index, a window at a time; inherited
/// chunks against `parent`'s index, read in step. Memory grows with the
/// stored frames (queued for the lanes), not with the chunk count.
pub(crate) fn check_index(img: &Image, parent: Option<&Image>) -> Result<IndexCheck> {
    let m = &img.manifest;
    let mut stream = img.index_stream()?;
    let mut check = IndexCheck {
        findings: Findings::default(),
        counts: StateCounts::default(),
        per_segment: vec![Vec::new(); m.segments.len()],
    };
    let mut parent = parent.map(ParentStream::open);
    let mut zero_hashes = ZeroHashes::default();
    let mut window = Vec::new();
    while let Some(first) = stream.next_window(&mut window)? {
        if let Some(p) = &mut parent {
            p.advance();
        }
        for (i, e) in window.iter().enumerate() {
            check_one(img, first + i as u64, e, &parent, &mut zero_hashes, &mut check);
        }
    }
    if stream.hash_matches() != Some(true) {
        check.findings.problems.insert(
            0,
            Problem {
                file: m.index.file.clone(),
                offset: None,
                what: "index checksum (xxh3-128) does not match the manifest: the index was modified or damaged".into(),
            },
        );
    }
    for frames in &mut check.per_segment {
        frames.sort_by_key(|r| r.entry.offset);
    }
    Ok(check)
}

/// Check one entry (or record why it does not decode).
fn check_one(
    img: &Image,
    chunk: u64,
    e: &EntryResult,
    parent: &Option<ParentStream>,
    zero_hashes: &mut ZeroHashes,
    check: &mut IndexCheck,
) {
    let m = &img.manifest;
    let bad = |reason: String| BadChunk {
        image: m.image_id.clone(),
        chunk,
        source_offset: img.chunk_extent(chunk).0,
        segment: None,
        segment_offset: None,
        reason,
    };
    match e {
        Ok(e) => check_entry(img, chunk, e, parent, zero_hashes, check).unwrap_or_else(|why| {
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

/// Why one entry is bad; `at_frame` when the index names a frame (its
/// segment and offset are then reported with it).
struct Bad {
    reason: String,
    at_frame: bool,
}

/// Check one decoded entry: counted, queued for its segment's lane, or bad.
fn check_entry(
    img: &Image,
    chunk: u64,
    e: &IndexEntry,
    parent: &Option<ParentStream>,
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
            check_inherited(chunk, e, parent)?;
            counts.inherited += 1;
        }
    }
    Ok(())
}

/// An inherited chunk must name the image's parent (checked with the
/// entry), whose index must hold the same chunk there.
fn check_inherited(chunk: u64, e: &IndexEntry, parent: &Option<ParentStream>) -> std::result::Result<(), Bad> {
    let reason = match parent {
        Some(p) => match p.hash(chunk) {
            Ok(Some(h)) if h == e.raw_hash => return Ok(()),
            Ok(Some(_)) => format!("chunk is inherited from image {}, whose index holds a different chunk there", p.id),
            Ok(None) => format!("chunk is inherited from image {}, whose index entry for it is damaged", p.id),
            Err(why) => format!("chunk is inherited from image {}, whose index cannot be read: {why}", p.id),
        },
        None => format!("chunk is inherited from image {}, which is not in the chain being verified", e.image_id),
    };
    Err(Bad { reason, at_frame: false })
}
