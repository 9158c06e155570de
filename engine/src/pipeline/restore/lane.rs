//! One restore lane: the capture lane in reverse. Frames are read through
//! the lane's ring, checked, decompressed into an aligned buffer and written
//! with O_DIRECT at the chunk's offset; zero and unused runs are zeroed
//! without writing zeros byte by byte.
use std::os::unix::fs::FileExt;

use crate::codec::Decoder;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::align_up;
use crate::format::frame::check_frame;
use crate::format::frame::frame_len;
use crate::format::frame::frame_len_max;
use crate::format::index::ChunkState;
use crate::format::index::IndexEntry;
use crate::io;
use crate::io::device::open_read_only;
use crate::io::device::OpenMode;
use crate::io::target::zero_range;
use crate::io::target::Target;
use crate::io::target::TargetKind;
use crate::io::Backend;
use crate::io::Completion;
use crate::io::Io;
use crate::io::Request;
use crate::pipeline::lanes::WRITE_TAG;
use crate::pipeline::plan::Plan;
use crate::pipeline::verify::options::BadChunk;
use crate::set::chain::{Resolved, SegmentRef};
use crate::set::image::Image;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub chunks_written: u64,
    pub chunks_zeroed: u64,
    pub zero_method: Option<&'static str>,
    pub bad: Vec<BadChunk>,
}

pub(crate) struct RestoreShared<'a> {
    pub img: &'a Image,
    /// Resolved through the chain: stored runs name a segment of `segments`.
    pub resolved: &'a Resolved,
    pub segments: &'a [SegmentRef],
    pub target: &'a Target,
    /// A buffered descriptor for the unaligned tail of the last chunk.
    pub tail_file: &'a File,
    pub write_limit: u64,
    pub queue_depth: u32,
    pub backend: Backend,
    pub skip_bad: bool,
    pub discard: bool,
    /// Why a segment is skipped whole (only with --skip-bad: it cannot be
    /// opened or its header is damaged): its chunks are bad.
    pub missing_segments: &'a [Option<String>],
    pub plan: Plan,
    pub stop: &'a AtomicBool,
    pub bytes_done: AtomicU64,
    pub totals: Mutex<Totals>,
}

pub(crate) const SLOT_TARGET: usize = 0;

pub(crate) const SEGMENT_SLOTS: usize = 4;

#[derive(Debug, Clone, Copy)]
pub(crate) struct SegSlot {
    pub segment: Option<u32>,
    pub ops: u32,
    pub last_used: u64,
}

/// One restore lane. Buffers come in pairs: frame buffer `i` (a whole frame)
/// and raw buffer `qd + i` (one decoded chunk, aligned for O_DIRECT). A pair
/// is busy from the frame read until the chunk's write completes.
pub(crate) struct RestoreLane<'a> {
    pub sh: &'a RestoreShared<'a>,
    pub io: Box<dyn Io>,
    pub dec: Decoder,
    pub qd: usize,
    pub free_pairs: Vec<usize>,
    /// The chunk each busy pair is working on.
    pub pair_chunk: Vec<u64>,
    /// Bytes of each busy pair's chunk already written (a short write is
    /// carried on from there).
    pub pair_written: Vec<usize>,
    /// Where the ring's write of a pair's chunk ends in its buffer (it
    /// starts where `pair_written` started).
    pub pair_end: Vec<usize>,
    pub pending: std::collections::VecDeque<u64>,
    pub slots: [SegSlot; SEGMENT_SLOTS],
    pub clock: u64,
    pub totals: Totals,
}

impl<'a> RestoreLane<'a> {
    pub(super) fn new(sh: &'a RestoreShared<'a>) -> Result<RestoreLane<'a>> {
        let qd = sh.queue_depth as usize;
        let cs = sh.img.manifest.chunk_size_bytes;
        let mut sizes = vec![frame_len_max(cs) as usize; qd];
        sizes.extend(std::iter::repeat_n(cs as usize, qd));
        let mut io = io::open(&sh.backend, &sizes, 1 + SEGMENT_SLOTS, sh.queue_depth * 2)
            .map_err(|e| Error::io("set up the I/O ring for", sh.target.path.clone(), e))?;
        io.set_file(SLOT_TARGET, Some(sh.target.reopen()?))
            .map_err(|e| Error::io("register", sh.target.path.clone(), e))?;
        Ok(RestoreLane {
            sh,
            io,
            dec: Decoder::new().map_err(|e| Error::io("create decoder for", sh.img.dir.clone(), e))?,
            qd,
            free_pairs: (0..qd).rev().collect(),
            pair_chunk: vec![0; qd],
            pair_written: vec![0; qd],
            pair_end: vec![0; qd],
            pending: Default::default(),
            slots: [SegSlot { segment: None, ops: 0, last_used: 0 }; SEGMENT_SLOTS],
            clock: 0,
            totals: Totals::default(),
        })
    }

    pub(super) fn run(mut self) -> Result<()> {
        loop {
            self.submit_reads()?;
            if self.io.in_flight() == 0 {
                // submit_reads only leaves nothing in flight when the plan is
                // exhausted (or stopped).
                break;
            }
            self.io.flush(1).map_err(|e| Error::io("submit I/O for", self.sh.target.path.clone(), e))?;
            while let Some(c) = self.io.pop_completion() {
                self.dispatch(c)?;
            }
        }
        let mut t = self.sh.totals.lock().expect("totals lock");
        t.bytes_written += self.totals.bytes_written;
        t.bytes_zeroed += self.totals.bytes_zeroed;
        t.chunks_written += self.totals.chunks_written;
        t.chunks_zeroed += self.totals.chunks_zeroed;
        t.zero_method = t.zero_method.or(self.totals.zero_method);
        t.bad.append(&mut self.totals.bad);
        drop(t);
        if self.sh.stop.load(Ordering::Relaxed) {
            return Err(Error::interrupted(Left::Stopped, "another lane stopped the restore".into()));
        }
        Ok(())
    }

    /// Claim the next batch: zero its zero/unused runs now, queue its stored
    /// chunks for reading. False when there is nothing left (or a stop).
    pub(super) fn claim(&mut self) -> Result<bool> {
        if crate::observe::interrupted() {
            self.sh.stop.store(true, Ordering::Relaxed);
        }
        if self.sh.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(r) = self.sh.plan.claim() else {
            return Ok(false);
        };
        // Runs, not chunks: a run of zero or unused chunks is one range to
        // zero, however long.
        let mut zeros: Option<(u64, u64)> = None;
        for run in self.sh.resolved.runs_in(r) {
            let (start, _) = self.sh.img.chunk_extent(run.first);
            if start >= self.sh.write_limit {
                break; // past the end of a smaller target (checked zero in preflight)
            }
            if run.entry.state == ChunkState::Stored {
                if let Some((s, l)) = zeros.take() {
                    self.zero(s, l)?;
                }
                self.pending.push_back(run.first);
                continue;
            }
            let (last, last_len) = self.sh.img.chunk_extent(run.end() - 1);
            let len = (last + u64::from(last_len)).min(self.sh.write_limit) - start;
            // Only the chunks that reach the target count (a smaller one ends first).
            self.totals.chunks_zeroed += len.div_ceil(u64::from(self.sh.img.manifest.chunk_size_bytes)).min(run.count);
            zeros = match zeros {
                Some((s, l)) if s + l == start => Some((s, l + len)),
                Some((s, l)) => {
                    self.zero(s, l)?;
                    Some((start, len))
                }
                None => Some((start, len)),
            };
        }
        if let Some((s, l)) = zeros {
            self.zero(s, l)?;
        }
        Ok(true)
    }

    pub(super) fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        // The kernel zeroes (or punches) whole logical sectors only; an
        // unaligned end (a source whose size is not a multiple of this
        // device's sector) is written as explicit zeros.
        let align = u64::from(self.sh.target.logical_sector_bytes);
        let aligned = if self.sh.target.kind == TargetKind::BlockDevice { len / align * align } else { len };
        let how = match zero_range(&self.sh.target.file, self.sh.target.kind, offset, aligned, self.sh.discard) {
            Ok(how) => how,
            // A filesystem that cannot punch holes: write the zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zeros(offset, aligned)?;
                "written zeros"
            }
            Err(e) => return Err(Error::io_at("zero", self.sh.target.path.clone(), offset, e)),
        };
        self.write_zeros(offset + aligned, len - aligned)?;
        if aligned > 0 {
            self.totals.zero_method.get_or_insert(how);
        }
        self.totals.bytes_zeroed += len;
        self.sh.bytes_done.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn write_zeros(&self, mut offset: u64, mut len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            self.sh
                .tail_file
                .write_all_at(&zeros[..n], offset)
                .map_err(|e| write_error(&self.sh.target.path, offset, e))?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// A slot holding segment `seg`, opening it (in the least recently used
    /// idle slot) if needed. None when every slot has reads in flight.
    pub(super) fn segment_slot(&mut self, seg: u32) -> Result<Option<usize>> {
        self.clock += 1;
        if let Some(i) = self.slots.iter().position(|s| s.segment == Some(seg)) {
            self.slots[i].last_used = self.clock;
            return Ok(Some(i));
        }
        let Some(i) = (0..SEGMENT_SLOTS).filter(|&i| self.slots[i].ops == 0).min_by_key(|&i| self.slots[i].last_used)
        else {
            return Ok(None);
        };
        let path = self.sh.segments[seg as usize].path.clone();
        let (file, _direct) = open_read_only(&path, OpenMode::Direct)?;
        self.io.set_file(1 + i, Some(file)).map_err(|e| Error::io("register", path.clone(), e))?;
        self.slots[i] = SegSlot { segment: Some(seg), ops: 0, last_used: self.clock };
        Ok(Some(i))
    }

    pub(super) fn submit_reads(&mut self) -> Result<()> {
        loop {
            if self.pending.is_empty() {
                // Claim ahead (zeroing the batch's zero runs now), so reads of
                // the next batch overlap the writes of this one.
                if !self.claim()? {
                    return Ok(());
                }
                continue;
            }
            let (Some(&pair), Some(&chunk)) = (self.free_pairs.last(), self.pending.front()) else {
                return Ok(());
            };
            let e = self.sh.resolved.entry(chunk);
            if let Some(why) = &self.sh.missing_segments[e.segment as usize] {
                self.pending.pop_front();
                self.bad_chunk(chunk, &e, why.clone())?;
                continue;
            }
            let Some(slot) = self.segment_slot(e.segment)? else {
                return Ok(());
            };
            self.free_pairs.pop();
            self.pending.pop_front();
            self.pair_chunk[pair] = chunk;
            self.slots[slot].ops += 1;
            let len = frame_len(e.stored_len) as usize;
            self.io.enqueue_read(Request {
                slot: 1 + slot,
                buf: pair,
                buf_offset: 0,
                len,
                file_offset: e.offset,
                tag: pair as u64,
            });
        }
    }

    pub(super) fn dispatch(&mut self, c: Completion) -> Result<()> {
        let pair = (c.user_data & !WRITE_TAG) as usize;
        let chunk = self.pair_chunk[pair];
        let (start, raw_len) = self.sh.img.chunk_extent(chunk);
        if c.user_data & WRITE_TAG != 0 {
            // What went through the ring: the O_DIRECT part (the unaligned
            // tail was written separately).
            let (len, done) = (self.pair_end[pair], self.pair_written[pair]);
            match c.result {
                Err(e) if io::is_transient(&e) => {
                    self.io.enqueue_write(Request {
                        slot: SLOT_TARGET,
                        buf: self.qd + pair,
                        buf_offset: done,
                        len: len - done,
                        file_offset: start + done as u64,
                        tag: c.user_data,
                    });
                    return Ok(());
                }
                Err(e) => return Err(write_error(&self.sh.target.path, start + done as u64, e)),
                // A short write (a filling filesystem): carry on from an
                // aligned boundary, which completes or fails with the cause.
                Ok(n) if done + n < len => {
                    let align = if self.sh.target.direct { self.sh.target.dio_align_bytes as usize } else { 1 };
                    let next = (done + n) / align * align;
                    if next <= done {
                        return Err(write_error(
                            &self.sh.target.path,
                            start + done as u64,
                            std::io::Error::other(format!(
                                "the write stopped after {} of {len} bytes (no space left on the target?)",
                                done + n
                            )),
                        ));
                    }
                    self.pair_written[pair] = next;
                    self.io.enqueue_write(Request {
                        slot: SLOT_TARGET,
                        buf: self.qd + pair,
                        buf_offset: next,
                        len: len - next,
                        file_offset: start + next as u64,
                        tag: c.user_data,
                    });
                    return Ok(());
                }
                Ok(_) => {}
            }
            self.free_pairs.push(pair);
            return Ok(());
        }
        let e = self.sh.resolved.entry(chunk);
        let slot = self.slots.iter().position(|s| s.segment == Some(e.segment)).expect("segment slot of a read");
        self.slots[slot].ops -= 1;
        let checked = match c.result {
            Err(e) if io::is_transient(&e) => {
                let en = self.sh.resolved.entry(chunk);
                self.slots[slot].ops += 1;
                self.io.enqueue_read(Request {
                    slot: 1 + slot,
                    buf: pair,
                    buf_offset: 0,
                    len: frame_len(en.stored_len) as usize,
                    file_offset: en.offset,
                    tag: pair as u64,
                });
                return Ok(());
            }
            Err(err) => Err(format!("cannot read the frame: {err}")),
            Ok(n) if (n as u64) < frame_len(e.stored_len) => {
                Err(format!("frame truncated: the segment ends at offset {}", e.offset + n as u64))
            }
            Ok(_) => self.decode(pair, chunk, &e),
        };
        if let Err(reason) = checked {
            self.free_pairs.push(pair);
            return self.bad_chunk(chunk, &e, reason);
        }
        self.write_chunk(pair, start, raw_len)
    }

    /// A chunk that cannot be restored: stop (the default), or with
    /// --skip-bad write zeros there and list it.
    pub(super) fn bad_chunk(&mut self, chunk: u64, e: &IndexEntry, reason: String) -> Result<()> {
        let (start, raw_len) = self.sh.img.chunk_extent(chunk);
        let seg = &self.sh.segments[e.segment as usize];
        let seg_path = &seg.path;
        if !self.sh.skip_bad {
            let whose = if seg.image == self.sh.img.id() {
                String::new()
            } else {
                format!(" (held by image {}, an ancestor)", seg.image)
            };
            return Err(Error::corrupt(
                seg_path,
                e.offset,
                format!("chunk {chunk} (source offset {start}) is damaged{whose}: {reason}; it was not written"),
            ));
        }
        let len = u64::from(raw_len).min(self.sh.write_limit - start);
        self.zero(start, len)?;
        self.totals.bad.push(BadChunk {
            chunk,
            source_offset: start,
            image: seg.image.to_string(),
            segment: Some(seg.file.clone()),
            segment_offset: Some(e.offset),
            reason,
        });
        Ok(())
    }

    /// Check the frame in pair's frame buffer and decode it into its raw buffer.
    pub(super) fn decode(&mut self, pair: usize, chunk: u64, e: &IndexEntry) -> std::result::Result<(), String> {
        let raw_buf = self.qd + pair;
        let dec = &mut self.dec;
        let (frame, raw) = self.io.buffer_pair(pair, raw_buf);
        let h = check_frame(frame, raw, &mut |s, o| dec.decode(s, o)).map_err(|e| e.to_string())?;
        h.check_matches(chunk, e.image_id, e).map_err(|m| m.to_string())?;
        Ok(())
    }

    /// The O_DIRECT part of a chunk's write: (bytes to write in total, bytes
    /// written through the ring). The rest, an unaligned tail, goes through
    /// a buffered descriptor.
    pub(super) fn write_span(&self, start: u64, raw_len: u32) -> (usize, usize) {
        let len = u64::from(raw_len).min(self.sh.write_limit - start) as usize;
        if !self.sh.target.direct {
            return (len, len);
        }
        let align = self.sh.target.dio_align_bytes as usize;
        (len, len / align * align)
    }

    /// Which bytes of a decoded chunk must be written: the ring's part
    /// `from..to` and whether the unaligned tail (past `direct_len`) must
    /// be. A new file is holes already, so all-zero 4 KiB blocks at either
    /// end of a chunk are left out (a chunk holding one used block of
    /// metadata writes that block); any other target gets every byte.
    fn needed(&self, pair: usize, len: usize, direct_len: usize) -> (usize, usize, bool) {
        if self.sh.target.kind != TargetKind::NewFile {
            return (0, direct_len, true);
        }
        let align = if self.sh.target.direct { self.sh.target.dio_align_bytes as usize } else { 1 };
        let block = 4096.max(align);
        let buf = &self.io.buffer(self.qd + pair)[..len];
        let mut blocks = buf.chunks(block).enumerate().filter(|(_, b)| !crate::codec::is_zero(b)).map(|(i, _)| i);
        let Some(first) = blocks.next() else { return (0, 0, false) };
        let last = blocks.next_back().unwrap_or(first);
        let to = ((last + 1) * block).min(direct_len);
        ((first * block).min(to), to, (last + 1) * block > direct_len)
    }

    pub(super) fn write_chunk(&mut self, pair: usize, start: u64, raw_len: u32) -> Result<()> {
        let (len, direct_len) = self.write_span(start, raw_len);
        let (from, to, tail) = self.needed(pair, len, direct_len);
        let mut written = to - from;
        if tail && direct_len < len {
            let tail = &self.io.buffer(self.qd + pair)[direct_len..len];
            self.sh
                .tail_file
                .write_all_at(tail, start + direct_len as u64)
                .map_err(|e| write_error(&self.sh.target.path, start + direct_len as u64, e))?;
            written += len - direct_len;
        }
        self.totals.chunks_written += 1;
        self.totals.bytes_written += written as u64;
        // Zero blocks left as the new file's holes count as zeroed.
        if len > written {
            self.totals.bytes_zeroed += (len - written) as u64;
            self.totals.zero_method.get_or_insert("hole");
        }
        self.sh.bytes_done.fetch_add(len as u64, Ordering::Relaxed);
        if to == from {
            self.free_pairs.push(pair);
            return Ok(());
        }
        debug_assert_eq!(align_up(from as u64, 512), from as u64);
        debug_assert_eq!(align_up(to as u64, 512), to as u64);
        (self.pair_written[pair], self.pair_end[pair]) = (from, to);
        self.io.enqueue_write(Request {
            slot: SLOT_TARGET,
            buf: self.qd + pair,
            buf_offset: from,
            len: to - from,
            file_offset: start + from as u64,
            tag: WRITE_TAG | pair as u64,
        });
        Ok(())
    }
}

pub(crate) fn write_error(path: &std::path::Path, offset: u64, e: std::io::Error) -> Error {
    let e = io::name_enospc(e, "target");
    Error::io_at("write target", path, offset, e)
}
