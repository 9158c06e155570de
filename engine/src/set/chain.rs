//! Chains: an image with every image it depends on, down to a full image,
//! and its index resolved through them so every chunk names the image and
//! segment that hold it.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::image::{read_frame, read_unstored, Image};
use super::index_reader::{IndexStream, RunResult};
use super::lineage::Lineage;
use super::{ImageSet, Loaded};
use crate::codec::Decoder;
use crate::error::ChainBreak;
use crate::error::{Error, Result};
use crate::format::index::{ChunkState, IndexEntry, Run, ZeroHashes};
use crate::format::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::ImageId;

/// A segment of some image of a chain.
#[derive(Debug, Clone)]
pub struct SegmentRef {
    /// The image that wrote it (and whose ID its frames carry).
    pub image: ImageId,
    /// Its position in that image's manifest (the number its header holds).
    pub seq: u32,
    pub path: PathBuf,
    pub file: String,
    pub size_bytes: u64,
}

/// Why a segment cannot be read as the one its manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentProblem {
    /// The file cannot be opened or its header read.
    Unreadable(String),
    /// Its header fails FORMAT §7 check 14.
    Damaged(String),
}

impl SegmentRef {
    /// FORMAT §7 check 14: read the segment's header and check it is this
    /// segment's (the check verify applies too, through the same
    /// [`SegmentHeader::check`]).
    pub fn check_header(&self, chunk_bytes: u32) -> std::result::Result<(), SegmentProblem> {
        let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
        std::fs::File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut head, 0))
            .map_err(|e| SegmentProblem::Unreadable(e.to_string()))?;
        SegmentHeader::check(&head, self.image, self.seq, chunk_bytes).map(|_| ()).map_err(SegmentProblem::Damaged)
    }
}

/// An image's index with every inherited chunk followed down its chain to
/// the image that holds it, as runs in chunk order: memory grows with the
/// stored chunks and the runs, not with the device. Stored runs name a
/// segment of [`Self::segments`] (all segments of the chain, numbered
/// together) and carry the holder's ID; no run is inherited.
#[derive(Debug)]
pub struct Resolved {
    pub segments: Vec<SegmentRef>,
    runs: Vec<Run>,
    /// Chunks of the image itself that were inherited.
    pub inherited: u64,
}

/// Chunks of the image being resolved that an ancestor must hold.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: u64,
    count: u64,
    /// The inherited entry as the image furthest down the chain so far
    /// records it. Its raw hash (from a version-1 index; version 2 records
    /// none, 0) must be the holder's.
    entry: IndexEntry,
    /// Where the child's entry or record is, for messages.
    at: u64,
}

impl Resolved {
    /// Every segment that can be opened passes FORMAT §7 check 14; the
    /// first that does not is an error naming it. (Segments that cannot be
    /// opened are left to the caller: restore may skip them, serve answers
    /// their chunks with an error.)
    pub fn check_segment_headers(&self, chunk_bytes: u32) -> Result<()> {
        for s in &self.segments {
            if let Err(SegmentProblem::Damaged(why)) = s.check_header(chunk_bytes) {
                return Err(Error::corrupt(&s.path, 0, format!("segment of image {} is damaged: {why}", s.image)));
            }
        }
        Ok(())
    }

    /// Every chunk's run, in chunk order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The position in [`Self::runs`] of the run holding `chunk`: a binary search.
    pub fn run_index(&self, chunk: u64) -> usize {
        let i = self.runs.partition_point(|r| r.end() <= chunk);
        debug_assert!(self.runs.get(i).is_some_and(|r| r.first <= chunk), "chunk {chunk} is in a run");
        i
    }

    /// The entry of `chunk` (every chunk of a run has its run's entry).
    pub fn entry(&self, chunk: u64) -> IndexEntry {
        self.runs[self.run_index(chunk)].entry
    }

    /// The runs covering `chunks`, cut to it.
    pub fn runs_in(&self, chunks: Range<u64>) -> impl Iterator<Item = Run> + '_ {
        let from = if chunks.is_empty() { self.runs.len() } else { self.run_index(chunks.start) };
        self.runs[from..].iter().take_while(move |r| r.first < chunks.end).map(move |r| {
            let first = r.first.max(chunks.start);
            Run { first, count: r.end().min(chunks.end) - first, entry: r.entry }
        })
    }

    /// How many chunks are in `state`.
    pub fn count(&self, state: ChunkState) -> u64 {
        self.runs.iter().filter(|r| r.entry.state == state).map(|r| r.count).sum()
    }

    /// Read and check the indexes of `chain` (an image, then its ancestors,
    /// as [`ImageSet::chain`] returns, or the first part of that) and
    /// resolve every chunk. Each index is read a window at a time. Any
    /// index that is damaged, or an ancestor that does not hold what a
    /// child says it inherited, is an error naming the file and entry.
    pub fn load(chain: &[Image]) -> Result<Resolved> {
        let mut r = Resolved { segments: Vec::new(), runs: Vec::new(), inherited: 0 };
        let mut pending: Vec<Pending> = Vec::new();
        for (depth, img) in chain.iter().enumerate() {
            let base = r.segments.len() as u32;
            r.segments.extend(img.manifest.segments.iter().enumerate().map(|(i, s)| SegmentRef {
                image: img.id(),
                seq: i as u32,
                path: img.segment_path(i),
                file: s.file.clone(),
                size_bytes: s.size_bytes,
            }));
            let mut stream = img.index_stream()?;
            let walked = match depth {
                0 => r.take_all(img, &mut stream, base, &mut pending),
                _ => r.take_pending(img, &chain[depth - 1], &mut stream, base, &mut pending),
            };
            // A damaged index is named as such, whatever run gave it away.
            if walked.is_err() {
                stream.drain()?;
            }
            if stream.hash_matches() != Some(true) {
                return Err(Error::corrupt(
                    img.index_path(),
                    0,
                    "index checksum does not match the manifest; nothing was read from this image (run `tintype verify`)",
                ));
            }
            walked?;
            if depth == 0 {
                r.inherited = pending.iter().map(|p| p.count).sum();
            }
            if pending.is_empty() {
                break;
            }
        }
        // A chain that ends at an image with a parent (a merge folds part of
        // a chain) leaves those chunks inherited from that parent.
        let last = chain.last().expect("non-empty chain");
        if let Some(p) = pending.first().filter(|_| last.manifest.parent.is_none()) {
            return Err(Error::corrupt(
                last.index_path(),
                p.at,
                format!("chunk {} is inherited, but image {} has no parent", p.first, last.id()),
            ));
        }
        r.runs.extend(pending.iter().map(|p| Run { first: p.first, count: p.count, entry: p.entry }));
        r.runs.sort_unstable_by_key(|run| run.first);
        Ok(r)
    }

    /// Keep `run` (resolved), folding it into the run before when it can.
    fn keep(&mut self, run: Run) {
        match self.runs.last_mut() {
            Some(last) if last.absorbs(&run) => last.count += run.count,
            _ => self.runs.push(run),
        }
    }

    /// The chain's first image: every run, checked; its inherited chunks
    /// left in `pending` (ascending).
    fn take_all(&mut self, img: &Image, stream: &mut IndexStream, base: u32, pending: &mut Vec<Pending>) -> Result<()> {
        let mut zero = ZeroHashes::default();
        let mut window = Vec::new();
        while stream.next_runs(&mut window)? {
            for (i, run) in window.iter().enumerate() {
                let run = checked(img, stream, i, run, base, &mut zero)?;
                if run.entry.state == ChunkState::Inherited {
                    let p = Pending { first: run.first, count: run.count, entry: run.entry, at: stream.at(i) };
                    match pending.last_mut() {
                        Some(l) if l.first + l.count == p.first && l.entry == p.entry && p.entry.raw_hash == 0 => {
                            l.count += p.count
                        }
                        _ => pending.push(p),
                    }
                } else {
                    self.keep(run);
                }
            }
        }
        Ok(())
    }

    /// An ancestor: the runs covering the chunks still `pending`, which
    /// must hold what `child` inherited; those it inherited itself stay
    /// pending.
    fn take_pending(
        &mut self,
        img: &Image,
        child: &Image,
        stream: &mut IndexStream,
        base: u32,
        pending: &mut Vec<Pending>,
    ) -> Result<()> {
        let mut zero = ZeroHashes::default();
        let (mut window, mut still, mut next) = (Vec::new(), Vec::new(), 0);
        while stream.next_runs(&mut window)? {
            for (i, run) in window.iter().enumerate() {
                let end = run.as_ref().map_or_else(|bad| bad.chunk + 1, |r| r.end());
                if pending.get(next).is_none_or(|p| p.first >= end) {
                    continue; // nothing pending here: not needed, so not checked
                }
                let run = checked(img, stream, i, run, base, &mut zero)?;
                while let Some(p) = pending.get_mut(next).filter(|p| p.first < run.end()) {
                    let piece = Pending { count: (p.first + p.count).min(run.end()) - p.first, ..*p };
                    self.hand_over(img, child, &run, piece, &mut still, &mut zero)?;
                    if p.first + p.count <= run.end() {
                        next += 1;
                    } else {
                        p.count -= piece.count;
                        p.first += piece.count;
                    }
                }
            }
        }
        if let Some(p) = pending.get(next) {
            return Err(Error::corrupt(
                img.index_path(),
                0,
                format!(
                    "chunk {} is inherited from image {}, which has only {} chunks",
                    p.first,
                    img.id(),
                    img.manifest.chunk_count
                ),
            ));
        }
        *pending = still;
        Ok(())
    }

    /// The pending chunks `piece` lie in the ancestor's `run`: resolved by
    /// it, or still pending when the ancestor inherited them too. A child's
    /// recorded hash (version 1) must be the ancestor's.
    fn hand_over(
        &mut self,
        img: &Image,
        child: &Image,
        run: &Run,
        piece: Pending,
        still: &mut Vec<Pending>,
        zero: &mut ZeroHashes,
    ) -> Result<()> {
        let held = match run.entry.state {
            ChunkState::Stored | ChunkState::Inherited => run.entry.raw_hash,
            ChunkState::Zero => zero.get(run.entry.raw_len),
            // Unused in both: the chunk is what the ancestor says, free space.
            ChunkState::Unused => 0,
            state => {
                return Err(Error::corrupt(
                    child.index_path(),
                    piece.at,
                    format!(
                        "chunk {} is inherited from image {}, which holds no data there ({}): the chain is \
                         inconsistent",
                        piece.first,
                        img.id(),
                        state.name()
                    ),
                ))
            }
        };
        let hash = piece.entry.raw_hash;
        if hash != 0 && held != 0 && hash != held {
            return Err(Error::corrupt(
                child.index_path(),
                piece.at,
                format!(
                    "chunk {} is inherited from image {}, which holds a different chunk there (the raw hashes \
                     differ): the chain is inconsistent",
                    piece.first,
                    img.id()
                ),
            ));
        }
        if run.entry.state == ChunkState::Inherited {
            let raw_hash = if hash != 0 { hash } else { held };
            still.push(Pending { entry: IndexEntry { raw_hash, ..run.entry }, ..piece });
        } else {
            self.keep(Run { first: piece.first, count: piece.count, entry: run.entry });
        }
        Ok(())
    }

    /// Read chunk `chunk` of `img` (the first image of the chain this was
    /// resolved from) into `out`, checked against its hashes.
    pub fn read_chunk(&self, img: &Image, chunk: u64, out: &mut [u8], dec: &mut Decoder) -> Result<usize> {
        let e = self.entry(chunk);
        if e.state == ChunkState::Stored {
            let s = &self.segments[e.segment as usize];
            return read_frame(&s.path, s.image, &e, chunk, img.chunk_extent(chunk), out, dec);
        }
        read_unstored((&img.index_path(), img.entry_at(chunk)), &e, chunk, img.chunk_extent(chunk).1, out)
    }
}

impl ImageSet {
    /// The chain `img` depends on: itself, its parent, the parent's parent,
    /// …, down to a full image. Every image must be there, load, and
    /// describe the same source geometry; otherwise the chain is broken and
    /// the error names the ancestor.
    pub fn chain(&self, img: &Image) -> Result<Vec<Image>> {
        let Loaded { images: all, unloadable: bad } = self.load_all()?;
        let lineage = Lineage::new(&all);
        let mut chain = vec![img.clone()];
        loop {
            let cur = chain.last().expect("chain starts with the image");
            let Some(pid) = cur.manifest.parent_id() else { break };
            let broken = |reason: ChainBreak, why: String| Error::BrokenChain {
                path: self.dir.clone(),
                image: img.id().to_string(),
                reason,
                why,
            };
            let Some(p) = lineage.parent(cur) else {
                return Err(match bad.iter().find(|u| u.id == pid).map(|u| &u.error) {
                    Some(e) => broken(
                        ChainBreak::ParentDamaged,
                        format!("it depends on image {pid} (the parent of {}), which is damaged: {e}", cur.id()),
                    ),
                    None => broken(
                        ChainBreak::ParentMissing,
                        format!(
                            "it depends on image {pid} (the parent of {}), which is not in the set (deleted, or never \
                             committed)",
                            cur.id()
                        ),
                    ),
                });
            };
            let (a, b) = (&cur.manifest, &p.manifest);
            if a.chunk_size_bytes != b.chunk_size_bytes || a.source.size_bytes != b.source.size_bytes {
                return Err(broken(
                    ChainBreak::DifferentSources,
                    format!(
                        "image {} and its parent {} describe different sources (size {} vs {}, chunk size {} vs {})",
                        cur.id(),
                        p.id(),
                        a.source.size_bytes,
                        b.source.size_bytes,
                        a.chunk_size_bytes,
                        b.chunk_size_bytes
                    ),
                ));
            }
            if chain.iter().any(|c| c.id() == p.id()) || chain.len() > all.len() {
                return Err(broken(ChainBreak::Loops, format!("its chain of parents loops back to image {}", p.id())));
            }
            chain.push(p.clone());
        }
        Ok(chain)
    }
}

/// The `i`-th run of `stream`'s window decoded and passed through
/// [`Image::check_run`], its segment renumbered into the chain's list.
fn checked(
    img: &Image,
    stream: &IndexStream,
    i: usize,
    run: &RunResult,
    base: u32,
    zero: &mut ZeroHashes,
) -> Result<Run> {
    let at = stream.at(i);
    let mut run =
        run.map_err(|bad| Error::corrupt(img.index_path(), at, format!("chunk {}: {}", bad.chunk, bad.why)))?;
    img.check_run(&run, zero).map_err(|why| Error::corrupt(img.index_path(), at, why))?;
    if run.entry.state == ChunkState::Stored {
        run.entry.segment += base;
    }
    Ok(run)
}
