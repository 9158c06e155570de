//! Chains: an image with every image it depends on, down to a full image,
//! and its index resolved through them so every chunk names the image and
//! segment that hold it.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::image::{read_frame, read_unstored, Image};
use super::index_reader::IndexStream;
use super::lineage::Lineage;
use super::{ImageSet, Loaded};
use crate::codec::Decoder;
use crate::error::ChainBreak;
use crate::error::{Error, Result};
use crate::format::index::{entry_offset, ChunkState, EntryError, IndexEntry, ZeroHashes};
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

    /// Read and check the indexes of `chain` (an image, then its ancestors,
    /// as [`ImageSet::chain`] returns, or the first part of that) and
    /// resolve every chunk. Each index is read a window at a time (only the
    /// resolved entries are kept). Any index that is damaged, or an ancestor
    /// that does not hold what a child says it inherited, is an error naming
    /// the file and entry.
    pub fn load(chain: &[Image]) -> Result<Resolved> {
        let mut r = Resolved { segments: Vec::new(), entries: Vec::new(), inherited: 0 };
        let mut pending: Vec<u64> = Vec::new();
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
            // A damaged index is named as such, whatever entry gave it away.
            while walked.is_err() && stream.next_window(&mut Vec::new())?.is_some() {}
            if stream.hash_matches() != Some(true) {
                return Err(Error::corrupt(
                    img.index_path(),
                    0,
                    "index checksum does not match the manifest; nothing was read from this image (run `tintype verify`)",
                ));
            }
            walked?;
            if depth == 0 {
                r.inherited = pending.len() as u64;
            }
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
        Ok(r)
    }

    /// The chain's first image: every entry, checked; its inherited chunks
    /// left in `pending` (ascending).
    fn take_all(&mut self, img: &Image, stream: &mut IndexStream, base: u32, pending: &mut Vec<u64>) -> Result<()> {
        self.entries.reserve(img.manifest.chunk_count as usize);
        let mut zero = ZeroHashes::default();
        let mut window = Vec::new();
        while let Some(first) = stream.next_window(&mut window)? {
            for (i, e) in window.iter().enumerate() {
                let chunk = first + i as u64;
                let e = checked(img, chunk, e, base, &mut zero)?;
                if e.state == ChunkState::Inherited {
                    pending.push(chunk);
                }
                self.entries.push(e);
            }
        }
        Ok(())
    }

    /// An ancestor: the entries of the chunks still `pending`, which must
    /// hold what `child` inherited; those it inherited itself stay pending.
    fn take_pending(
        &mut self,
        img: &Image,
        child: &Image,
        stream: &mut IndexStream,
        base: u32,
        pending: &mut Vec<u64>,
    ) -> Result<()> {
        let mut zero = ZeroHashes::default();
        let (mut window, mut still, mut next) = (Vec::new(), Vec::new(), 0);
        while let Some(first) = stream.next_window(&mut window)? {
            let end = first + window.len() as u64;
            while let Some(&chunk) = pending.get(next).filter(|&&c| c < end) {
                let e = checked(img, chunk, &window[(chunk - first) as usize], base, &mut zero)?;
                if e.raw_hash != self.entries[chunk as usize].raw_hash {
                    return Err(Error::corrupt(
                        child.index_path(),
                        entry_offset(chunk),
                        format!(
                            "chunk {chunk} is inherited from image {}, which holds a different chunk there (the raw \
                             hashes differ): the chain is inconsistent",
                            img.id()
                        ),
                    ));
                }
                if e.state == ChunkState::Inherited {
                    still.push(chunk);
                }
                self.entries[chunk as usize] = e;
                next += 1;
            }
        }
        if let Some(&chunk) = pending.get(next) {
            return Err(Error::corrupt(
                img.index_path(),
                entry_offset(chunk.min(img.manifest.chunk_count)),
                format!(
                    "chunk {chunk} is inherited from image {}, which has only {} chunks",
                    img.id(),
                    img.manifest.chunk_count
                ),
            ));
        }
        *pending = still;
        Ok(())
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

/// Entry `chunk` of `img` decoded and passed through [`Image::check_entry`],
/// its segment renumbered into the chain's list.
fn checked(
    img: &Image,
    chunk: u64,
    e: &std::result::Result<IndexEntry, EntryError>,
    base: u32,
    zero: &mut ZeroHashes,
) -> Result<IndexEntry> {
    let at = entry_offset(chunk);
    let mut e = e.map_err(|why| Error::corrupt(img.index_path(), at, why.to_string()))?;
    img.check_entry(chunk, &e, zero).map_err(|why| Error::corrupt(img.index_path(), at, why))?;
    if e.state == ChunkState::Stored {
        e.segment += base;
    }
    Ok(e)
}
