//! Staging: each completed read is zero-checked, hashed, compared with the
//! parent, compressed straight into the current staging buffer as a frame,
//! and given its index entry.

use std::sync::atomic::Ordering;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_128;

use super::{CaptureLane, ReadOp};
use crate::codec::is_zero;
use crate::error::Result;
use crate::format::frame::{frame_len, frame_len_max, FrameHeader, FRAME_HEADER_BYTES};
use crate::format::index::{ChunkState, IndexEntry};
use crate::format::ImageId;

impl CaptureLane<'_> {
    /// Zero-check, hash, compare and stage every completed read, in
    /// completion order, as long as a staging buffer has room.
    pub(super) fn process_ready(&mut self) -> Result<()> {
        while let Some(&buf) = self.ready.front() {
            let Some(entry) = self.entry_for(buf)? else {
                return Ok(()); // wait for a staging write to finish
            };
            #[cfg(feature = "slowdown")]
            slowdown();
            let op = self.reads[buf].take().expect("ready buffer has a read");
            self.ready.pop_front();
            self.free_reads.push(buf);
            self.report.stats.chunks += 1;
            self.report.stats.bytes_read += op.raw_len as u64;
            self.sh.bytes_done.fetch_add(u64::from(op.raw_len), Ordering::Relaxed);
            self.record_entry(op.chunk, entry)?;
        }
        Ok(())
    }

    /// The chunk read into `buf` as an index entry: unreadable, zero,
    /// inherited (its hash equals the parent's), or stored — compressed into
    /// the staging buffer. None when that must wait for a staging write.
    fn entry_for(&mut self, buf: usize) -> Result<Option<IndexEntry>> {
        let op = self.reads[buf].expect("ready buffer has a read");
        let unstored = |state, raw_hash, image_id| IndexEntry {
            state,
            segment: 0,
            offset: 0,
            stored_len: 0,
            raw_len: op.raw_len,
            raw_hash,
            image_id,
        };
        if op.unreadable {
            return Ok(Some(unstored(ChunkState::Unreadable, 0, ImageId(0))));
        }
        // A chunk already hashed (waiting for room) is known not to be zero.
        let t = Instant::now();
        let zero = op.hash.is_none() && is_zero(&self.io.buffer(buf)[..op.raw_len as usize]);
        self.report.stats.nanos_zero_check += t.elapsed().as_nanos() as u64;
        if zero {
            let hash = self.zero_hashes.get(op.raw_len);
            // Zero in the parent too: inherited, so it joins its neighbours' run.
            if let Some(parent) = self.sh.parent.filter(|p| p.get(op.chunk) == Some(hash)) {
                self.report.stats.chunks_inherited += 1;
                return Ok(Some(unstored(ChunkState::Inherited, hash, parent.id)));
            }
            self.report.stats.chunks_zero += 1;
            return Ok(Some(unstored(ChunkState::Zero, hash, ImageId(0))));
        }
        let raw_hash = self.raw_hash(buf);
        if let Some(parent) = self.sh.parent.filter(|p| p.get(op.chunk) == Some(raw_hash)) {
            self.report.stats.chunks_inherited += 1;
            return Ok(Some(unstored(ChunkState::Inherited, raw_hash, parent.id)));
        }
        if !self.make_room()? {
            return Ok(None);
        }
        let op = self.reads[buf].expect("ready buffer has a read");
        self.stage(buf, op, raw_hash).map(Some)
    }

    /// The xxh3-128 of the chunk in `buf`, computed once (a chunk may wait
    /// for a staging buffer and come back here).
    fn raw_hash(&mut self, buf: usize) -> u128 {
        let mut op = self.reads[buf].expect("ready buffer has a read");
        if let Some(h) = op.hash {
            return h;
        }
        let t = Instant::now();
        let h = xxh3_128(&self.io.buffer(buf)[..op.raw_len as usize]);
        self.report.stats.nanos_hash += t.elapsed().as_nanos() as u64;
        op.hash = Some(h);
        self.reads[buf] = Some(op);
        h
    }

    /// Compress the chunk in `buf` into the current staging buffer as a
    /// frame (header with its raw hash, payload hash, zero padding).
    pub(super) fn stage(&mut self, buf: usize, op: ReadOp, raw_hash: u128) -> Result<IndexEntry> {
        let raw_len = op.raw_len as usize;
        let st = self.staging[self.cur];
        let (slot, base) = st.target.expect("make_room opened the staging buffer");
        let (raw, out) = self.io.buffer_pair(buf, st.buf);
        let raw = &raw[..raw_len];
        let t2 = Instant::now();
        let frame = &mut out[st.fill..];
        let (codec, stored_len) = self.enc.encode(raw, &mut frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + raw_len]);
        let t3 = Instant::now();
        let stored_hash = xxhash_rust::xxh3::xxh3_64(&frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + stored_len]);
        let header = FrameHeader {
            image_id: self.sh.image_id,
            chunk: op.chunk,
            raw_len: op.raw_len,
            stored_len: stored_len as u32,
            codec,
            raw_hash,
            stored_hash,
        };
        header.encode(frame);
        let len = frame_len(stored_len as u32) as usize;
        // Padding must be zeros, not whatever the buffer held before.
        frame[FRAME_HEADER_BYTES + stored_len..len].fill(0);
        let s = &mut self.report.stats;
        s.nanos_hash += t3.elapsed().as_nanos() as u64;
        s.nanos_compress += (t3 - t2).as_nanos() as u64;
        s.chunks_stored += 1;
        s.bytes_stored_payload += stored_len as u64;
        if codec == crate::format::frame::Codec::None {
            s.chunks_stored_raw += 1;
            s.bytes_stored_raw += stored_len as u64;
        }
        let offset = base + st.fill as u64;
        self.staging[self.cur].fill += len;
        self.staged_since.get_or_insert_with(Instant::now);
        let seg = &mut self.segment_in(slot).seg;
        seg.frames += 1;
        Ok(IndexEntry {
            state: ChunkState::Stored,
            segment: seg.seq,
            offset,
            stored_len: stored_len as u32,
            raw_len: op.raw_len,
            raw_hash,
            image_id: self.sh.image_id,
        })
    }

    /// Make sure the current staging buffer can take one more frame of the
    /// largest size. Returns false when that needs a write to finish first.
    pub(super) fn make_room(&mut self) -> Result<bool> {
        let max_frame = frame_len_max(self.sh.chunk_bytes) as usize;
        let st = self.staging[self.cur];
        if st.in_flight {
            // Still being written from the last time round: wait for it.
            return Ok(false);
        }
        if st.target.is_some() && st.fill + max_frame <= self.sh.staging_bytes {
            return Ok(true);
        }
        if st.target.is_some() {
            self.submit_staging(self.cur);
            self.cur ^= 1;
        }
        if self.staging[self.cur].in_flight {
            return Ok(false);
        }
        self.open_staging(self.cur)?;
        Ok(true)
    }
}

/// Test builds only (feature `slowdown`): sleep as long as
/// `TINTYPE_SLOWDOWN_US_PER_CHUNK` says, once per chunk.
#[cfg(feature = "slowdown")]
pub(crate) fn slowdown() {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let us = *US
        .get_or_init(|| std::env::var("TINTYPE_SLOWDOWN_US_PER_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if us > 0 {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }
}
