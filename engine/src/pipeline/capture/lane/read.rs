//! Reading: keeping `queue_depth` O_DIRECT reads of the source in flight,
//! claiming batches from the plan, and — when a read fails — finding
//! exactly which sectors fail.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Batch, CaptureLane, ReadOp, SLOT_SOURCE};
use crate::error::Left;
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::format::align_up;
use crate::io::Request;
use crate::io::{self, Completion};
use crate::pipeline::capture::options::OnReadError;

impl CaptureLane<'_> {
    /// Keep `queue_depth` reads in flight, claiming batches as needed.
    pub(super) fn submit_reads(&mut self) -> Result<()> {
        while let Some(&buf) = self.free_reads.last() {
            let Some(chunk) = self.next_claimed() else {
                break;
            };
            self.free_reads.pop();
            let raw_len = self.sh.raw_len(chunk);
            // O_DIRECT needs an aligned length; past the end of a file the
            // read simply comes back short.
            let read_len = align_up(u64::from(raw_len), u64::from(self.sh.source.dio_align_bytes)) as u32;
            self.reads[buf] = Some(ReadOp {
                chunk,
                raw_len,
                read_len,
                got: 0,
                submitted: Instant::now(),
                hash: None,
                unreadable: false,
            });
            let offset = chunk * u64::from(self.sh.chunk_bytes);
            self.io.enqueue_read(Request {
                slot: SLOT_SOURCE,
                buf,
                buf_offset: 0,
                len: read_len as usize,
                file_offset: offset,
                tag: buf as u64,
            });
        }
        Ok(())
    }

    /// The next chunk to read. The plan holds only chunks nothing is known
    /// of: what a resumed run kept and what no filesystem uses is recorded
    /// at the commit, never walked here.
    pub(super) fn next_claimed(&mut self) -> Option<u64> {
        if crate::observe::interrupted() {
            self.sh.stop.store(true, Ordering::Relaxed);
        }
        if self.sh.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(b) = self.batches.back_mut() {
            if b.next < b.end {
                b.next += 1;
                return Some(b.next - 1);
            }
        }
        // Two batches open at most: the one finishing and the one starting.
        if self.batches.len() >= 2 {
            return None;
        }
        let r = self.sh.plan.claim()?;
        self.batches.push_back(Batch {
            first: r.start,
            end: r.end,
            next: r.start + 1,
            done: 0,
            entries: vec![None; (r.end - r.start) as usize],
        });
        Some(r.start)
    }

    /// A read completed: retry, carry on after a short read, find the bad
    /// sectors of a failed one, or queue the chunk for staging.
    pub(super) fn on_read(&mut self, c: Completion) -> Result<()> {
        let buf = c.user_data as usize;
        let mut op = self.reads[buf].expect("read completion for a buffer with a read");
        let offset = op.chunk * u64::from(self.sh.chunk_bytes) + u64::from(op.got);
        match c.result {
            Err(e) if io::is_transient(&e) => {
                self.io.enqueue_read(Request {
                    slot: SLOT_SOURCE,
                    buf,
                    buf_offset: op.got as usize,
                    len: (op.read_len - op.got) as usize,
                    file_offset: offset,
                    tag: buf as u64,
                });
                Ok(())
            }
            Err(e) => self.recover_read(buf, op, e),
            Ok(0) if op.got < op.raw_len => Err(Error::Unusable {
                reason: Refusal::SourceShrank,
                path: self.sh.source.path.clone(),
                why: format!(
                    "source ended at offset {offset}, but it was {} bytes when the run started (did it shrink?)",
                    self.sh.source.size_bytes
                ),
            }),
            Ok(n) => {
                op.got += n as u32;
                self.reads[buf] = Some(op);
                if op.got < op.raw_len {
                    // A short read before the end: ask for the rest.
                    let rest_offset = op.chunk * u64::from(self.sh.chunk_bytes) + u64::from(op.got);
                    self.io.enqueue_read(Request {
                        slot: SLOT_SOURCE,
                        buf,
                        buf_offset: op.got as usize,
                        len: (op.read_len - op.got) as usize,
                        file_offset: rest_offset,
                        tag: buf as u64,
                    });
                } else {
                    let us = op.submitted.elapsed().as_micros() as u64;
                    let _ = self.report.read_latency_us.record(us.max(1));
                    self.ready.push_back(buf);
                }
                Ok(())
            }
        }
    }

    /// A read failed: find exactly which sectors fail (halving the range down
    /// to one logical sector, each read retried), and either stop naming
    /// them, or (`--on-read-error skip`) zero them, record them, and go on with the
    /// chunk. Synchronous reads: a failing disk is slow anyway.
    pub(super) fn recover_read(&mut self, buf: usize, mut op: ReadOp, first: std::io::Error) -> Result<()> {
        let path = self.sh.source.path.clone();
        let start = op.chunk * u64::from(self.sh.chunk_bytes);
        let sector = u64::from(self.sh.source.logical_sector_bytes.max(self.sh.source.dio_align_bytes));
        let len = u64::from(op.raw_len).div_ceil(sector) * sector;
        let mut bad: Vec<(u64, u64)> = Vec::new();
        let mut read = |at: u64, n: u64| {
            // A signal stops the search (a dying disk can take seconds a
            // read); the chunk is then neither stored nor recorded.
            if crate::observe::interrupted() {
                return Err(std::io::Error::other("interrupted"));
            }
            self.io.read_exact_now(Request {
                slot: SLOT_SOURCE,
                buf,
                buf_offset: at as usize,
                len: n as usize,
                file_offset: start + at,
                tag: 0,
            })
        };
        bisect(&mut read, start, 0, len, sector, self.sh.read_retries, &mut bad);
        if crate::observe::interrupted() {
            return Err(Error::interrupted(
                Left::Stopped,
                format!("while looking for the unreadable sectors of chunk {}", op.chunk),
            ));
        }
        let end = start + u64::from(op.raw_len);
        let bad: Vec<(u64, u64)> =
            bad.into_iter().map(|(s, l)| (s, (s + l).min(end) - s)).filter(|&(_, l)| l > 0).collect();
        if bad.is_empty() {
            // The retries read it after all.
            op.got = op.raw_len;
            self.reads[buf] = Some(op);
            self.ready.push_back(buf);
            return Ok(());
        }
        let total: u64 = bad.iter().map(|r| r.1).sum();
        if self.sh.on_read_error == OnReadError::Fail {
            let ranges: Vec<String> = bad.iter().take(8).map(|(s, l)| format!("{s}..{}", s + l)).collect();
            return Err(Error::io_at(
                "read source",
                path,
                bad[0].0,
                std::io::Error::new(
                    first.kind(),
                    format!(
                        "{first}: {total} unreadable bytes in chunk {} (bytes {}); --on-read-error skip images \
                         the rest and records them",
                        op.chunk,
                        ranges.join(", ")
                    ),
                ),
            ));
        }
        for &(s, l) in &bad {
            let from = (s - start) as usize;
            self.io.buffer_mut(buf)[from..from + l as usize].fill(0);
        }
        op.unreadable = total == u64::from(op.raw_len);
        {
            let mut guard = self.sh.unreadable.lock().unwrap_or_else(|p| p.into_inner());
            let (all, journal) = &mut *guard;
            crate::set::unreadable::journal_unreadable(journal, self.sh.journal, &bad)?;
            all.extend(bad);
        }
        op.got = op.raw_len;
        self.reads[buf] = Some(op);
        self.ready.push_back(buf);
        Ok(())
    }
}

/// Read `[at, at+len)` (source offset `base + at`) with `read`; on failure
/// split in halves down to `sector` bytes, retrying each failing piece
/// `retries` times; collect the source ranges that never read.
pub(crate) fn bisect(
    read: &mut dyn FnMut(u64, u64) -> std::io::Result<()>,
    base: u64,
    at: u64,
    len: u64,
    sector: u64,
    retries: u32,
    bad: &mut Vec<(u64, u64)>,
) {
    for _ in 0..=retries {
        match read(at, len) {
            Ok(()) => return,
            // Stopped by a signal: the caller gives the chunk up.
            Err(_) if crate::observe::interrupted() => return,
            // Past the end of a file: the rest reads as zeros.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(_) if len > sector => break,
            Err(_) => {}
        }
    }
    if len <= sector {
        match bad.last_mut() {
            Some(last) if last.0 + last.1 == base + at => last.1 += len,
            _ => bad.push((base + at, len)),
        }
        return;
    }
    let half = (len / 2).div_ceil(sector) * sector;
    bisect(read, base, at, half, sector, retries, bad);
    bisect(read, base, at + half, len - half, sector, retries, bad);
}
