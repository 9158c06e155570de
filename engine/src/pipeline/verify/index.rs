//! The index half of verify: every entry checked against the image, its
//! state's rules and, for inherited chunks, the parent's index; stored
//! entries grouped by segment for the lanes.
use crate::error::Result;
use crate::format::index::ChunkState;
use crate::format::index::Run;
use crate::format::index::ZeroHashes;

use crate::format::index::IndexEntry;
use crate::format::ImageId;
use crate::pipeline::verify::options::BadChunk;
use crate::pipeline::verify::options::Problem;
use crate::set::image::Image;
use crate::set::index_reader::{IndexStream, RunResult};

/// The parent's index, read in step with the child's: the child asks for
/// ascending chunks, so the parent's runs are read once, a window at a time.
struct ParentStream {
    id: ImageId,
    stream: std::result::Result<IndexStream, String>,
    window: Vec<RunResult>,
    /// The window's run that holds the last chunk asked for.
    next: usize,
}

impl ParentStream {
    fn open(parent: &Image) -> ParentStream {
        let stream = parent.index_stream().map_err(|e| e.to_string());
        ParentStream { id: parent.id(), stream, window: Vec::new(), next: 0 }
    }

    /// The parent's runs covering `chunks`, cut to them (None where an
    /// entry does not decode or the index ends first), or why its index
    /// cannot be read. Chunks are asked for in ascending order.
    fn covering(&mut self, chunks: std::ops::Range<u64>) -> std::result::Result<Option<Vec<Run>>, String> {
        let mut out = Vec::new();
        let mut at = chunks.start;
        while at < chunks.end {
            let s = self.stream.as_mut().map_err(|why| why.clone())?;
            let Some(r) = self.window.get(self.next) else {
                self.next = 0;
                match s.next_runs(&mut self.window) {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e) => {
                        self.stream = Err(e.to_string());
                        continue;
                    }
                }
            };
            let Ok(run) = r else {
                if r.as_ref().err().is_some_and(|bad| bad.chunk < at) {
                    self.next += 1;
                    continue;
                }
                return Ok(None);
            };
            if run.end() <= at {
                self.next += 1;
                continue;
            }
            let end = run.end().min(chunks.end);
            out.push(Run { first: at, count: end - at, entry: run.entry });
            at = end;
        }
        Ok(Some(out))
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

/// Check every run of `img`'s index, a window at a time; inherited
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
    while stream.next_runs(&mut window)? {
        for (i, run) in window.iter().enumerate() {
            check_one(img, stream.at(i), run, &mut parent, &mut zero_hashes, &mut check);
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

/// Check one run (or record why its version-1 entry does not decode).
fn check_one(
    img: &Image,
    at: u64,
    run: &RunResult,
    parent: &mut Option<ParentStream>,
    zero_hashes: &mut ZeroHashes,
    check: &mut IndexCheck,
) {
    let m = &img.manifest;
    let bad = |chunk: u64, reason: String| BadChunk {
        image: m.image_id.clone(),
        chunk,
        source_offset: img.chunk_extent(chunk).0,
        segment: None,
        segment_offset: None,
        reason,
    };
    match run {
        Ok(r) => check_run(img, r, parent, zero_hashes, check).unwrap_or_else(|why| {
            let mut b = bad(r.first, why.reason);
            if let Some(s) = m.segments.get(r.entry.segment as usize).filter(|_| why.at_frame) {
                b.segment = Some(s.file.clone());
                b.segment_offset = Some(r.entry.offset);
            }
            check.findings.bad.push(b);
        }),
        Err(e) => check.findings.bad.push(bad(e.chunk, format!("index entry at offset {at} is invalid: {}", e.why))),
    }
}

/// Why one run is bad; `at_frame` when the index names a frame (its
/// segment and offset are then reported with it).
struct Bad {
    reason: String,
    at_frame: bool,
}

/// Check one decoded run: counted, queued for its segment's lane, or bad.
fn check_run(
    img: &Image,
    run: &Run,
    parent: &mut Option<ParentStream>,
    zero_hashes: &mut ZeroHashes,
    check: &mut IndexCheck,
) -> std::result::Result<(), Bad> {
    // The per-run rules every reader applies (FORMAT §5); what verify adds
    // is reading the frames and comparing inherited chunks with the parent.
    let e = &run.entry;
    img.check_run(run, zero_hashes).map_err(|reason| Bad { reason, at_frame: e.state == ChunkState::Stored })?;
    let counts = &mut check.counts;
    match e.state {
        ChunkState::Stored => check.per_segment[e.segment as usize].push(FrameRef { chunk: run.first, entry: *e }),
        ChunkState::Zero => counts.zero += run.count,
        ChunkState::Unused => counts.unused += run.count,
        ChunkState::Unreadable => counts.unreadable += run.count,
        ChunkState::Unset => {
            return Err(Bad { reason: "index entry was never written".into(), at_frame: false });
        }
        ChunkState::Inherited => {
            check_inherited(run, parent, zero_hashes)?;
            counts.inherited += run.count;
        }
    }
    Ok(())
}

/// An inherited run must name the image's parent (checked with the run),
/// whose index must cover it; a version-1 child's recorded hash must be the
/// parent's for the chunk.
fn check_inherited(
    run: &Run,
    parent: &mut Option<ParentStream>,
    zero_hashes: &mut ZeroHashes,
) -> std::result::Result<(), Bad> {
    let Some(p) = parent else {
        let reason =
            format!("chunk is inherited from image {}, which is not in the chain being verified", run.entry.image_id);
        return Err(Bad { reason, at_frame: false });
    };
    let held = match p.covering(run.first..run.end()) {
        Ok(Some(runs)) => runs,
        Ok(None) => {
            let reason = format!("chunk is inherited from image {}, whose index entry for it is damaged", p.id);
            return Err(Bad { reason, at_frame: false });
        }
        Err(why) => {
            let reason = format!("chunk is inherited from image {}, whose index cannot be read: {why}", p.id);
            return Err(Bad { reason, at_frame: false });
        }
    };
    // Every run of the parent the inherited run covers, by the rules
    // restore's resolution applies (`set::chain`).
    for held in held.iter().map(|r| r.entry) {
        let held_hash = match held.state {
            ChunkState::Zero => zero_hashes.get(held.raw_len),
            ChunkState::Stored | ChunkState::Inherited => held.raw_hash,
            ChunkState::Unused => 0,
            state => {
                let reason =
                    format!("chunk is inherited from image {}, which holds no data there ({})", p.id, state.name());
                return Err(Bad { reason, at_frame: false });
            }
        };
        // Version 2 records no hash for an inherited run (0): nothing to compare.
        if run.entry.raw_hash != 0 && held_hash != 0 && held_hash != run.entry.raw_hash {
            let reason = format!("chunk is inherited from image {}, whose index holds a different chunk there", p.id);
            return Err(Bad { reason, at_frame: false });
        }
    }
    Ok(())
}
