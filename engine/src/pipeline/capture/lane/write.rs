//! Writing: a full staging buffer goes to the end of the lane's segment as
//! one O_DIRECT write on the lane's ring; segments roll over at their size
//! limit and are closed durably once their last write is done.

use std::sync::atomic::Ordering;

use super::{CaptureLane, Staging, STAGING_MAX_AGE};
use crate::error::{Error, Result};
use crate::format::segment::SEGMENT_HEADER_BYTES;
use crate::io::Request;
use crate::io::{self, Completion};
use crate::pipeline::capture::lane::LaneSegment;
use crate::pipeline::lanes::WRITE_TAG;
use crate::set::segment_writer::{OpenSegment, SegmentOwner};

impl CaptureLane<'_> {
    /// Point an idle staging buffer at the end of the current segment,
    /// rolling over to a new segment when this one is full.
    pub(super) fn open_staging(&mut self, i: usize) -> Result<()> {
        let more = self.sh.staging_bytes as u64;
        if self.seg.as_ref().is_none_or(|s| s.seg.would_exceed(more, self.sh.segment_size_bytes)) {
            self.roll_segment()?;
        }
        let LaneSegment { slot, seg, .. } = self.seg.as_ref().expect("a segment is open");
        let (slot, base) = (*slot, seg.next_offset);
        let buf = self.staging[i].buf;
        let fill = if base == 0 { seg.header(self.io.buffer_mut(buf)) } else { 0 };
        self.staging[i] = Staging { buf, fill, target: Some((slot, base)), in_flight: false, written: 0, limit: 0 };
        Ok(())
    }

    pub(super) fn submit_staging(&mut self, i: usize) {
        let st = self.staging[i];
        let (slot, offset) = st.target.expect("staging buffer has a target");
        debug_assert_eq!(st.fill % SEGMENT_HEADER_BYTES, 0);
        self.staged_since = None;
        let bytes = &self.io.buffer(st.buf)[..st.fill];
        let seg = match (&mut self.seg, &mut self.closing) {
            (Some(s), _) if s.slot == slot => s,
            (_, Some(s)) if s.slot == slot => s,
            _ => unreachable!("no open segment in slot {slot}"),
        };
        let at = seg.seg.submit(bytes);
        assert_eq!(at, offset, "staging buffers are written in order");
        seg.writes_in_flight += 1;
        self.io.enqueue_write(Request {
            slot,
            buf: st.buf,
            buf_offset: 0,
            len: st.fill,
            file_offset: offset,
            tag: WRITE_TAG | i as u64,
        });
        self.staging[i].in_flight = true;
    }

    pub(super) fn on_write(&mut self, c: Completion) -> Result<()> {
        let i = (c.user_data & !WRITE_TAG) as usize;
        let st = self.staging[i];
        let (slot, offset) = st.target.expect("written staging buffer has a target");
        let path = self.segment_in(slot).seg.path.clone();
        let done = st.written;
        match c.result {
            Err(e) if io::is_transient(&e) => {
                self.io.enqueue_write(Request {
                    slot,
                    buf: st.buf,
                    buf_offset: done,
                    len: st.fill - done,
                    file_offset: offset + done as u64,
                    tag: c.user_data,
                });
                return Ok(());
            }
            // The disk is full for this write: write less at a time (down to
            // 4 KiB), so the frames that still fit are kept for --resume.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && st.fill - done > SEGMENT_HEADER_BYTES => {
                let was = if st.limit == 0 { st.fill - done } else { st.limit };
                let limit = (was / 2) & !(SEGMENT_HEADER_BYTES - 1);
                if limit >= SEGMENT_HEADER_BYTES {
                    self.staging[i].limit = limit;
                    let len = limit.min(st.fill - done);
                    self.io.enqueue_write(Request {
                        slot,
                        buf: st.buf,
                        buf_offset: done,
                        len,
                        file_offset: offset + done as u64,
                        tag: c.user_data,
                    });
                    return Ok(());
                }
                return Err(Error::io_at(
                    "write segment",
                    path,
                    offset + done as u64,
                    io::name_enospc(e, "destination"),
                ));
            }
            Err(e) => {
                return Err(Error::io_at(
                    "write segment",
                    path,
                    offset + done as u64,
                    io::name_enospc(e, "destination"),
                ))
            }
            // A short write (a filling disk): carry on with the rest from a
            // 4096-byte boundary (O_DIRECT needs one; writing a few bytes
            // again is harmless), which either completes or fails with the
            // real cause. No progress at all: the destination is full.
            Ok(n) if done + n < st.fill => {
                let aligned = (done + n) & !(SEGMENT_HEADER_BYTES - 1);
                if aligned <= done {
                    return Err(Error::io_at(
                        "write segment",
                        path,
                        offset + done as u64,
                        std::io::Error::other(format!(
                            "the write stopped after {} of {} bytes (no space left on the destination?)",
                            done + n,
                            st.fill
                        )),
                    ));
                }
                let done = aligned;
                self.staging[i].written = done;
                let len = if st.limit == 0 { st.fill - done } else { st.limit.min(st.fill - done) };
                self.io.enqueue_write(Request {
                    slot,
                    buf: st.buf,
                    buf_offset: done,
                    len,
                    file_offset: offset + done as u64,
                    tag: c.user_data,
                });
                return Ok(());
            }
            Ok(_) => {}
        }
        self.staging[i] = Staging { buf: st.buf, fill: 0, target: None, in_flight: false, written: 0, limit: 0 };
        let seg = self.segment_in(slot);
        seg.writes_in_flight -= 1;
        let done = seg.writes_in_flight == 0;
        if done && self.closing.as_ref().is_some_and(|s| s.slot == slot) {
            let s = self.closing.take().expect("closing segment");
            self.close_segment(s)?;
        }
        Ok(())
    }

    pub(super) fn roll_segment(&mut self) -> Result<()> {
        if let Some(old) = self.seg.take() {
            if old.writes_in_flight == 0 {
                self.close_segment(old)?;
            } else {
                assert!(self.closing.is_none(), "at most one segment is closing");
                self.closing = Some(old);
            }
        }
        let slot = match (&self.seg, &self.closing) {
            (_, Some(c)) if c.slot == 1 => 2,
            _ => 1,
        };
        let seq = self.sh.next_segment.fetch_add(1, Ordering::Relaxed);
        let owner = SegmentOwner { image_id: self.sh.image_id, lane: self.lane, chunk_bytes: self.sh.chunk_bytes };
        let (seg, file) = OpenSegment::create(self.sh.dir, owner, seq)?;
        self.report.segments_direct &= seg.direct;
        self.io.set_file(slot, Some(file)).map_err(|e| Error::io("register", seg.path.clone(), e))?;
        self.seg = Some(LaneSegment { slot, writes_in_flight: 0, seg });
        Ok(())
    }

    /// All writes of `s` are done: make it durable and record it.
    pub(super) fn close_segment(&mut self, s: LaneSegment) -> Result<()> {
        assert_eq!(s.writes_in_flight, 0);
        let synced = self.io.sync(s.slot);
        let file = self
            .io
            .set_file(s.slot, None)
            .map_err(|e| Error::io("release", s.seg.path.clone(), e))?
            .expect("segment file in its slot");
        let info = s.seg.close(&file, synced)?;
        self.report.stats.bytes_segments += info.size_bytes;
        self.report.segments.push(info);
        Ok(())
    }

    pub(super) fn segment_in(&mut self, slot: usize) -> &mut LaneSegment {
        match (&mut self.seg, &mut self.closing) {
            (Some(s), _) if s.slot == slot => s,
            (_, Some(s)) if s.slot == slot => s,
            _ => unreachable!("no open segment in slot {slot}"),
        }
    }

    /// Write the current staging buffer once its first frame is older than
    /// [`STAGING_MAX_AGE`] and the other buffer is free to take over.
    pub(super) fn write_if_old(&mut self) {
        let old = self.staged_since.is_some_and(|t| t.elapsed() >= STAGING_MAX_AGE);
        let (st, other) = (self.staging[self.cur], self.staging[self.cur ^ 1]);
        if old && st.target.is_some() && !st.in_flight && !other.in_flight {
            self.submit_staging(self.cur);
            self.cur ^= 1;
            self.staged_since = None;
        }
    }
}
