//! Transmission: requests READ (simple or structured replies, holes for
//! zero and unused chunks), WRITE (into the overlay, if any), DISC, FLUSH
//! and BLOCK_STATUS, and the replies.

use std::io::{Read, Write};

use super::connection::{bad, Connection, Io, Slice};
use super::protocol::*;
use crate::serve::export::ChunkData;

impl<S: Read + Write> Connection<'_, S> {
    pub(super) fn simple_reply(&mut self, handle: u64, error: u32, data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&error.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        self.s.write_all(&m)?;
        self.s.write_all(data)
    }

    pub(super) fn chunk_reply(&mut self, handle: u64, flags: u16, kind: u16, head: &[u8], data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(20 + head.len());
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&((head.len() + data.len()) as u32).to_be_bytes());
        m.extend_from_slice(head);
        self.s.write_all(&m)?;
        self.s.write_all(data)
    }

    pub(super) fn error_reply(&mut self, handle: u64, error: u32, msg: &str) -> Io<()> {
        if self.structured {
            let mut head = error.to_be_bytes().to_vec();
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            head.extend_from_slice(msg);
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &head, &[])
        } else {
            self.simple_reply(handle, error, &[])
        }
    }

    pub(super) fn transmission(&mut self) -> Io<()> {
        let size = self.export.size();
        loop {
            if self.u32()? != REQUEST_MAGIC {
                return Err(bad("bad request magic"));
            }
            let flags = self.u16()?;
            let kind = self.u16()?;
            let handle = self.u64()?;
            let offset = self.u64()?;
            let len = self.u32()?;
            let in_range = offset.checked_add(u64::from(len)).is_some_and(|end| end <= size);
            match kind {
                CMD_DISC => return Ok(()),
                CMD_READ if !in_range => self.error_reply(handle, EINVAL, "read past the end of the export")?,
                CMD_READ if len > MAX_READ => self.error_reply(handle, EOVERFLOW, "read longer than 32 MiB")?,
                CMD_READ => {
                    let _share = self.export.budget.take(u64::from(len));
                    self.read(handle, flags, offset, len)?
                }
                CMD_WRITE if self.export.overlay.is_some() && in_range && len <= MAX_READ => {
                    let _share = self.export.budget.take(u64::from(len));
                    let mut data = vec![0u8; len as usize];
                    self.s.read_exact(&mut data)?;
                    let export = self.export;
                    let dec = &mut self.dec;
                    let r = export.overlay.as_ref().expect("overlay").lock().expect("overlay lock").write(
                        offset,
                        &data,
                        &mut |at, buf| export.read_base(at, buf, dec).map_err(|e| std::io::Error::other(e.to_string())),
                    );
                    match r {
                        Ok(()) => self.simple_or_done(handle)?,
                        Err(e) => self.error_reply(handle, EIO, &format!("overlay write failed: {e}"))?,
                    }
                }
                CMD_WRITE => {
                    // Read-only, out of range or too long: take the data off the wire, refuse it.
                    let err = if self.export.overlay.is_none() { EPERM } else { EINVAL };
                    let mut left = u64::from(len);
                    let mut sink = vec![0u8; 1 << 16];
                    while left > 0 {
                        let n = left.min(sink.len() as u64) as usize;
                        self.s.read_exact(&mut sink[..n])?;
                        left -= n as u64;
                    }
                    self.error_reply(handle, err, "the export is read-only, or the write is out of range")?
                }
                CMD_FLUSH => match self.export.overlay.as_ref().map(|o| o.lock().expect("overlay lock").flush()) {
                    Some(Err(e)) => self.error_reply(handle, EIO, &format!("overlay flush failed: {e}"))?,
                    _ => self.simple_or_done(handle)?,
                },
                CMD_BLOCK_STATUS if !self.meta => self.error_reply(handle, EINVAL, "no meta context was negotiated")?,
                CMD_BLOCK_STATUS if !in_range || len == 0 => {
                    self.error_reply(handle, EINVAL, "block status past the end of the export")?
                }
                CMD_BLOCK_STATUS => self.block_status(handle, offset, len)?,
                _ => self.error_reply(handle, EINVAL, "command not supported")?,
            }
        }
    }

    pub(super) fn simple_or_done(&mut self, handle: u64) -> Io<()> {
        if self.structured {
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[])
        } else {
            self.simple_reply(handle, 0, &[])
        }
    }

    /// Read `[offset, offset+len)`: each chunk from the cache or its frame
    /// (hash-checked); zero and unused chunks without I/O. Structured replies
    /// send holes for them unless the client asked not to fragment.
    pub(super) fn read(&mut self, handle: u64, flags: u16, offset: u64, len: u32) -> Io<()> {
        let cs = self.export.chunk_bytes();
        let end = offset + u64::from(len);
        // (start, data or None for zeros)
        let mut pieces: Vec<(u64, Option<Slice>)> = Vec::new();
        let mut at = offset;
        while at < end {
            let chunk = at / cs;
            let within = (at - chunk * cs) as usize;
            let n = ((chunk + 1) * cs).min(end) - at;
            match self.export.chunk(chunk, &mut self.dec) {
                Ok(ChunkData::Zeros) => pieces.push((at, None)),
                Ok(ChunkData::Data(d)) => pieces.push((at, Some((d, within, n as usize)))),
                Err(e) => {
                    return self.error_reply(handle, EIO, &format!("chunk {chunk} is damaged: {e}"));
                }
            }
            at += n;
        }
        let piece_len = |i: usize| {
            let next = pieces.get(i + 1).map_or(end, |p| p.0);
            next - pieces[i].0
        };
        let overlaid =
            self.export.overlay.as_ref().is_some_and(|o| o.lock().expect("overlay lock").any(offset, u64::from(len)));
        if !self.structured || flags & CMD_FLAG_DF != 0 || overlaid {
            let mut buf = Vec::with_capacity(len as usize);
            for (i, (_, piece)) in pieces.iter().enumerate() {
                match piece {
                    Some((d, from, n)) => buf.extend_from_slice(&d[*from..*from + *n]),
                    None => buf.resize(buf.len() + piece_len(i) as usize, 0),
                }
            }
            if overlaid {
                let patched = self
                    .export
                    .overlay
                    .as_ref()
                    .expect("overlay")
                    .lock()
                    .expect("overlay lock")
                    .patch(offset, &mut buf);
                if let Err(e) = patched {
                    return self.error_reply(handle, EIO, &format!("overlay read failed: {e}"));
                }
            }
            return if self.structured {
                let head = offset.to_be_bytes();
                self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, &head, &buf)
            } else {
                self.simple_reply(handle, 0, &buf)
            };
        }
        for i in 0..pieces.len() {
            let last = if i + 1 == pieces.len() { REPLY_FLAG_DONE } else { 0 };
            let start = pieces[i].0;
            match pieces[i].1.clone() {
                Some((d, from, n)) => {
                    self.chunk_reply(handle, last, REPLY_TYPE_OFFSET_DATA, &start.to_be_bytes(), &d[from..from + n])?
                }
                None => {
                    let mut head = start.to_be_bytes().to_vec();
                    head.extend_from_slice(&(piece_len(i) as u32).to_be_bytes());
                    self.chunk_reply(handle, last, REPLY_TYPE_OFFSET_HOLE, &head, &[])?
                }
            }
        }
        if pieces.is_empty() {
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[])?;
        }
        Ok(())
    }

    /// base:allocation for `[offset, offset+len)`: zero and unused chunks are
    /// holes that read as zeros, the rest is data. Extents of equal state merged.
    pub(super) fn block_status(&mut self, handle: u64, offset: u64, len: u32) -> Io<()> {
        let cs = self.export.chunk_bytes();
        let end = offset + u64::from(len);
        let mut descs: Vec<(u32, u32)> = Vec::new();
        let mut at = offset;
        while at < end && descs.len() < 1 << 16 {
            let chunk = at / cs;
            let n = (((chunk + 1) * cs).min(end) - at) as u32;
            let written =
                self.export.overlay.as_ref().is_some_and(|o| o.lock().expect("overlay lock").any(at, u64::from(n)));
            let state = if written || self.export.is_data(chunk) { 0 } else { STATE_HOLE | STATE_ZERO };
            match descs.last_mut() {
                Some(last) if last.1 == state && last.0.checked_add(n).is_some() => last.0 += n,
                _ => descs.push((n, state)),
            }
            at += u64::from(n);
        }
        let mut head = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        for (l, s) in descs {
            head.extend_from_slice(&l.to_be_bytes());
            head.extend_from_slice(&s.to_be_bytes());
        }
        self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &head, &[])
    }
}
