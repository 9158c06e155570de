//! Writing an image's segments. [`OpenSegment`] is one segment being
//! written — its file created (never replacing one; O_DIRECT where the
//! filesystem allows it), its header, where the next write goes, its frames
//! and its running hash — and what it becomes in the manifest once it is
//! durable. The capture lane drives it through its ring (asynchronous
//! writes from staging buffers); merge through [`SegmentWriter`], which
//! writes synchronously from one buffer. Both hash the bytes in file order
//! as they are submitted, so a segment is never read back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Error, Result};
use crate::format::frame::frame_len_max;
use crate::format::manifest::SegmentInfo;
use crate::format::names::segment_file_name;
use crate::format::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::format::ImageId;
use crate::format::Xxh64;
use crate::io::buffers::AlignedBuf;
use crate::io::{Io, IoChoice};

/// Which image a segment belongs to and how its header reads.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOwner {
    pub image_id: ImageId,
    pub lane: u32,
    pub chunk_bytes: u32,
}

/// One segment being written.
pub struct OpenSegment {
    pub seq: u32,
    pub path: PathBuf,
    /// Where the next write goes: the bytes submitted so far.
    pub next_offset: u64,
    pub frames: u64,
    /// Whether the file was opened with O_DIRECT.
    pub direct: bool,
    pub owner: SegmentOwner,
    pub hasher: Xxh3Default,
}

impl std::fmt::Debug for OpenSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSegment").field("seq", &self.seq).field("next_offset", &self.next_offset).finish()
    }
}

impl OpenSegment {
    /// Create segment `seq` of `owner`'s image in `dir`: the record and its
    /// (empty) file.
    pub fn create(dir: &Path, owner: SegmentOwner, seq: u32) -> Result<(OpenSegment, File)> {
        let path = dir.join(segment_file_name(owner.image_id, seq));
        let (file, direct) = create_segment_file(&path)?;
        let hasher = Xxh3Default::new();
        Ok((OpenSegment { seq, path, next_offset: 0, frames: 0, direct, owner, hasher }, file))
    }

    /// Write the segment header into the first 4096 bytes of `buf` (the
    /// start of the first write); returns its length.
    pub fn header(&self, buf: &mut [u8]) -> usize {
        let o = self.owner;
        let head = &mut buf[..SEGMENT_HEADER_BYTES];
        head.fill(0);
        SegmentHeader { image_id: o.image_id, lane: o.lane, seq: self.seq, chunk_bytes: o.chunk_bytes }.encode(head);
        SEGMENT_HEADER_BYTES
    }

    /// Would `more` bytes take the segment past `limit`? A segment holds at
    /// least one frame whatever the limit.
    pub fn would_exceed(&self, more: u64, limit: u64) -> bool {
        self.frames > 0 && self.next_offset + more > limit
    }

    /// `bytes` are being written at [`Self::next_offset`]: hash them (in
    /// file order) and move the end on. Returns where they go.
    pub fn submit(&mut self, bytes: &[u8]) -> u64 {
        debug_assert_eq!(bytes.len() % SEGMENT_HEADER_BYTES, 0, "segments grow in 4096-byte steps");
        let at = self.next_offset;
        self.hasher.update(bytes);
        self.next_offset += bytes.len() as u64;
        at
    }

    /// Close the segment once its writes are done and `synced` says how its
    /// fsync went. A failed fsync means the kernel may have dropped pages:
    /// nothing in the segment is trusted — not even by `--resume`, which
    /// would read them back from whatever is cached — so it is cut to its
    /// header (its number stays, so the segments after it stay usable).
    pub fn close(self, file: &File, synced: std::io::Result<()>) -> Result<SegmentInfo> {
        if let Err(e) = synced {
            let dropped = file.set_len(SEGMENT_HEADER_BYTES as u64).and_then(|()| file.sync_all()).is_ok();
            let what = if dropped {
                "its frames were dropped; --resume reads its chunks again"
            } else {
                "its frames could not even be dropped; remove the set's unfinished files before resuming"
            };
            return Err(Error::io(
                "fsync segment",
                self.path,
                std::io::Error::new(e.kind(), format!("{e}; nothing in this segment is trusted: {what}")),
            ));
        }
        Ok(SegmentInfo {
            file: segment_file_name(self.owner.image_id, self.seq),
            lane: self.owner.lane,
            seq: self.seq,
            size_bytes: self.next_offset,
            frames: self.frames,
            xxh3_64: Xxh64(self.hasher.digest()),
        })
    }
}

/// Create a new segment file (never replacing one), with O_DIRECT when the
/// filesystem allows it; returns it and whether it got O_DIRECT.
pub(crate) fn create_segment_file(path: &Path) -> Result<(File, bool)> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // The filesystem refuses O_DIRECT; the failed open may still have
            // created the (empty) file, which belongs to this run.
            if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
            open(false).map(|f| (f, false)).map_err(|e| Error::io("create segment", path, e))
        }
        Err(e) => Err(Error::io("create segment", path, e)),
    }
}

/// Writes the segments of a new image frame by frame, sequentially, in
/// large aligned writes from one buffer: merge's writer.
pub struct SegmentWriter<'a> {
    pub dir: &'a Path,
    pub owner: SegmentOwner,
    pub limit_bytes: u64,
    /// Slot 0 holds the open segment's file.
    pub io: Box<dyn Io>,
    pub cur: Option<OpenSegment>,
    pub buf: AlignedBuf,
    pub fill: usize,
    pub done: Vec<SegmentInfo>,
}

impl std::fmt::Debug for SegmentWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter").field("cur", &self.cur).field("done", &self.done.len()).finish()
    }
}

impl<'a> SegmentWriter<'a> {
    /// Segments of image `id` in `dir`, rolled over at `limit_bytes`.
    pub fn new(dir: &'a Path, id: ImageId, chunk_bytes: u32, limit_bytes: u64, io: &IoChoice) -> SegmentWriter<'a> {
        let cap = (8usize << 20).max(2 * frame_len_max(chunk_bytes) as usize + SEGMENT_HEADER_BYTES);
        SegmentWriter {
            dir,
            owner: SegmentOwner { image_id: id, lane: 0, chunk_bytes },
            limit_bytes,
            io: crate::io::open_sync(io, 1),
            cur: None,
            buf: AlignedBuf::new(cap),
            fill: 0,
            done: Vec::new(),
        }
    }

    /// Append one frame (a multiple of 4096 bytes); returns its segment
    /// number and offset.
    pub fn append(&mut self, frame: &[u8]) -> Result<(u32, u64)> {
        let more = (self.fill + frame.len()) as u64;
        if self.cur.as_ref().is_none_or(|s| s.would_exceed(more, self.limit_bytes)) {
            self.close()?;
            let (seg, file) = OpenSegment::create(self.dir, self.owner, self.done.len() as u32)?;
            self.io.set_file(0, Some(file)).map_err(|e| Error::io("register", &seg.path, e))?;
            self.fill = seg.header(self.buf.as_mut_slice());
            self.cur = Some(seg);
        }
        if self.fill + frame.len() > self.buf.len() {
            self.flush()?;
        }
        let seg = self.cur.as_mut().expect("a segment is open");
        let at = seg.next_offset + self.fill as u64;
        seg.frames += 1;
        let seq = seg.seq;
        self.buf.as_mut_slice()[self.fill..self.fill + frame.len()].copy_from_slice(frame);
        self.fill += frame.len();
        Ok((seq, at))
    }

    /// Write what is buffered at the end of the open segment. A short write
    /// is carried on from a 4096-byte boundary (O_DIRECT needs one).
    fn flush(&mut self) -> Result<()> {
        let Some(seg) = self.cur.as_mut() else { return Ok(()) };
        let bytes = &self.buf.as_slice()[..self.fill];
        let base = seg.submit(bytes);
        let mut done = 0;
        while done < bytes.len() {
            let at = base + done as u64;
            let failed = |e| Error::io_at("write segment", seg.path.clone(), at, e);
            let n = match self.io.write_from(0, &bytes[done..], at) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(failed(crate::io::name_enospc(e, "destination"))),
            };
            let next = if done + n == bytes.len() { bytes.len() } else { (done + n) & !(SEGMENT_HEADER_BYTES - 1) };
            if next <= done {
                let e = std::io::Error::other("the write stopped short (no space left on the destination?)");
                return Err(failed(e));
            }
            done = next;
        }
        self.fill = 0;
        Ok(())
    }

    /// Write what is buffered and close the open segment durably.
    pub fn close(&mut self) -> Result<()> {
        self.flush()?;
        let Some(seg) = self.cur.take() else { return Ok(()) };
        let synced = self.io.sync(0);
        let file = self.io.set_file(0, None).map_err(|e| Error::io("release", &seg.path, e))?;
        let file = file.expect("the segment's file in its slot");
        self.done.push(seg.close(&file, synced)?);
        Ok(())
    }

    /// Close the last segment; the records of every segment written.
    pub fn finish(mut self) -> Result<Vec<SegmentInfo>> {
        self.close()?;
        Ok(self.done)
    }
}
