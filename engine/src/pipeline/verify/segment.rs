//! The segment half of verify: lanes claim whole segments and read each
//! front to back through their ring, checking every frame against its
//! header, its payload hash, decompression, its raw hash and its index
//! entry, and the segment's own hash.
use std::sync::atomic::AtomicBool;

use super::index::{Findings, FrameRef};
use super::report::VerifyOptions;
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::frame::check_frame;
use crate::format::frame::frame_len;
use crate::format::frame::frame_len_max;
use crate::format::segment::SegmentHeader;
use crate::format::segment::SEGMENT_HEADER_BYTES;
use crate::io;
use crate::io::device::open_read_only;
use crate::io::Backend;
use crate::observe::Observer;
use crate::pipeline::lanes::{available_cores, run_lanes, Pinning};

use crate::io::device::OpenMode;
use crate::io::Io;
use crate::pipeline::verify::report::BadChunk;
use crate::pipeline::verify::report::Problem;
use crate::set::image::Image;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3Default;

/// Check every segment of `img`: lanes claim whole segments, largest first
/// so the long ones start early, and add what they find to `findings`.
/// Returns the findings and the segment bytes read.
pub(crate) fn check_segments(
    img: &Image,
    per_segment: &[Vec<FrameRef>],
    findings: Findings,
    opts: &VerifyOptions,
    backend: Backend,
    obs: &dyn Observer,
) -> Result<(Findings, u64)> {
    let m = &img.manifest;
    let lanes = opts.lanes.unwrap_or_else(available_cores).clamp(1, 256);
    let mut order: Vec<usize> = (0..m.segments.len()).collect();
    order.sort_by_key(|&s| std::cmp::Reverse(m.segments[s].size_bytes));
    let shared = VerifyShared {
        img,
        per_segment,
        order: &order,
        next: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(0),
        queue_depth: opts.queue_depth,
        backend,
        findings: Mutex::new(findings),
    };
    let total: u64 = m.segments.iter().map(|s| s.size_bytes).sum();
    // A failing lane stops the others from claiming more segments.
    let stop = AtomicBool::new(false);
    run_lanes(
        lanes.min(order.len().max(1) as u32),
        "tintype-verify",
        Pinning::Unpinned,
        &stop,
        || obs.progress(shared.bytes_done.load(Ordering::Relaxed), total),
        |_| shared.run_lane(&stop),
    )?;
    let read = shared.bytes_done.load(Ordering::Relaxed);
    let mut f = shared.findings.into_inner().expect("findings lock");
    f.bad.sort_by_key(|b| b.chunk);
    Ok((f, read))
}

struct VerifyShared<'a> {
    pub img: &'a Image,
    pub per_segment: &'a [Vec<FrameRef>],
    pub order: &'a [usize],
    pub next: AtomicUsize,
    pub bytes_done: AtomicU64,
    pub queue_depth: u32,
    pub backend: Backend,
    pub findings: Mutex<Findings>,
}

impl VerifyShared<'_> {
    pub(super) fn run_lane(&self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        let qd = self.queue_depth as usize;
        let frame_max = frame_len_max(self.img.manifest.chunk_size_bytes) as usize;
        let mut io = io::open(&self.backend, &vec![frame_max; qd], 1, self.queue_depth)
            .map_err(|e| Error::io("set up the I/O ring for", self.img.dir.clone(), e))?;
        let mut dec = Decoder::new().map_err(|e| Error::io("create decoder for", self.img.dir.clone(), e))?;
        let mut raw = vec![0u8; self.img.manifest.chunk_size_bytes as usize];
        loop {
            if crate::observe::interrupted() {
                return Err(Error::Interrupted(
                    "verify stopped by a signal before it finished: no verdict; it only reads, so the set is as it was"
                        .into(),
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted("another verify lane failed".into()));
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&seg) = self.order.get(i) else {
                return Ok(());
            };
            let mut f = Findings { bad: Vec::new(), problems: Vec::new(), ok: 0 };
            self.verify_segment(io.as_mut(), seg, &mut dec, &mut raw, &mut f)?;
            let mut all = self.findings.lock().expect("findings lock");
            all.bad.append(&mut f.bad);
            all.problems.append(&mut f.problems);
            all.ok += f.ok;
        }
    }

    pub(super) fn verify_segment(
        &self,
        io: &mut dyn Io,
        seg: usize,
        dec: &mut Decoder,
        raw: &mut [u8],
        f: &mut Findings,
    ) -> Result<()> {
        let info = &self.img.manifest.segments[seg];
        let path = self.img.segment_path(seg);
        let frames = &self.per_segment[seg];
        let bad_all = |f: &mut Findings, why: &str| {
            for r in frames {
                f.bad.push(self.bad(r, info.file.clone(), why.to_string()));
            }
        };
        let (file, _direct) = match open_read_only(&path, OpenMode::Direct) {
            Ok(x) => x,
            Err(e) => {
                f.problems.push(Problem { file: info.file.clone(), offset: None, what: format!("cannot open: {e}") });
                bad_all(f, "its segment file cannot be opened");
                return Ok(());
            }
        };
        let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len != info.size_bytes {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: Some(len.min(info.size_bytes)),
                what: format!(
                    "segment is {len} bytes, the manifest says {} ({})",
                    info.size_bytes,
                    if len < info.size_bytes { "truncated" } else { "extended" }
                ),
            });
        }
        io.set_file(0, Some(file)).map_err(|e| Error::io("register", &path, e))?;
        let mut hasher = Xxh3Default::new();
        // The segment header first, with one read.
        io.enqueue_read(0, 0, 0, SEGMENT_HEADER_BYTES, 0, u64::MAX);
        io.flush(1).map_err(|e| Error::io("read", &path, e))?;
        let c = io.pop_completion().expect("header read completion");
        let head_ok = match c.result {
            Ok(n) => {
                let b = &io.buffer(0)[..n];
                hasher.update(b);
                match SegmentHeader::decode(b) {
                    Ok(h) if h.chunk_bytes != self.img.manifest.chunk_size_bytes => Err(format!(
                        "segment header says chunk size {}, the manifest {}",
                        h.chunk_bytes, self.img.manifest.chunk_size_bytes
                    )),
                    Ok(h) if h.image_id != self.img.id() || h.seq as usize != seg => Err(format!(
                        "segment header names image {} segment {}, expected image {} segment {seg}",
                        h.image_id,
                        h.seq,
                        self.img.id()
                    )),
                    Ok(_) => Ok(()),
                    Err(why) => Err(why),
                }
            }
            Err(e) => Err(format!("cannot read the segment header: {e}")),
        };
        if let Err(what) = head_ok {
            f.problems.push(Problem { file: info.file.clone(), offset: Some(0), what });
        }
        self.bytes_done.fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);

        let mut free: Vec<usize> = (0..self.queue_depth as usize).rev().collect();
        let mut window: VecDeque<(usize, usize, Option<std::io::Result<usize>>)> = VecDeque::new();
        let mut next = 0usize;
        let mut expected_offset = SEGMENT_HEADER_BYTES as u64;
        let mut contiguous = true;
        while next < frames.len() || !window.is_empty() {
            while next < frames.len() {
                let Some(buf) = free.pop() else { break };
                let e = frames[next].entry;
                io.enqueue_read(0, buf, 0, frame_len(e.stored_len) as usize, e.offset, buf as u64);
                window.push_back((next, buf, None));
                next += 1;
            }
            io.flush(1).map_err(|e| Error::io("read", &path, e))?;
            while let Some(c) = io.pop_completion() {
                let slot = window
                    .iter_mut()
                    .find(|w| w.1 == c.user_data as usize && w.2.is_none())
                    .expect("completion for a read in the window");
                match c.result {
                    Err(e) if io::is_transient(&e) => {
                        let entry = frames[slot.0].entry;
                        io.enqueue_read(
                            0,
                            slot.1,
                            0,
                            frame_len(entry.stored_len) as usize,
                            entry.offset,
                            slot.1 as u64,
                        );
                    }
                    r => slot.2 = Some(r),
                }
            }
            // Check frames in segment order, so the segment hash runs in order.
            while window.front().is_some_and(|w| w.2.is_some()) {
                let (k, buf, result) = window.pop_front().expect("front");
                let r = frames[k];
                let want = frame_len(r.entry.stored_len) as usize;
                if r.entry.offset != expected_offset {
                    contiguous = false;
                }
                expected_offset = r.entry.offset + want as u64;
                match result.expect("completed") {
                    Err(e) => f.bad.push(self.bad(&r, info.file.clone(), format!("read failed: {e}"))),
                    Ok(n) => {
                        let bytes = &io.buffer(buf)[..n];
                        if contiguous {
                            hasher.update(bytes);
                        }
                        self.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
                        if n < want {
                            f.bad.push(self.bad(
                                &r,
                                info.file.clone(),
                                format!(
                                    "frame truncated: the segment ends at offset {}, the frame needs {want} bytes",
                                    r.entry.offset + n as u64
                                ),
                            ));
                        } else {
                            match self.check(&r, bytes, dec, raw) {
                                Ok(()) => f.ok += 1,
                                Err(why) => f.bad.push(self.bad(&r, info.file.clone(), why)),
                            }
                        }
                    }
                }
                free.push(buf);
            }
        }
        io.set_file(0, None).map_err(|e| Error::io("release", &path, e))?;
        if !contiguous {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: "the index's frames overlap or leave gaps in this segment".into(),
            });
        } else if expected_offset != info.size_bytes {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: Some(expected_offset),
                what: format!(
                    "the indexed frames end at offset {expected_offset}, the manifest says the segment is {} bytes",
                    info.size_bytes
                ),
            });
        } else if len == info.size_bytes && format!("{:016x}", hasher.digest()) != info.xxh3_64 {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: "segment checksum (xxh3-64) does not match the manifest".into(),
            });
        }
        if frames.len() as u64 != info.frames {
            f.problems.push(Problem {
                file: info.file.clone(),
                offset: None,
                what: format!("the index points at {} frames here, the manifest counts {}", frames.len(), info.frames),
            });
        }
        Ok(())
    }

    pub(super) fn check(
        &self,
        r: &FrameRef,
        bytes: &[u8],
        dec: &mut Decoder,
        raw: &mut [u8],
    ) -> std::result::Result<(), String> {
        let h = check_frame(bytes, raw, &mut |s, o| dec.decode(s, o)).map_err(|e| e.to_string())?;
        h.check_matches(r.chunk, self.img.id(), &r.entry)?;
        Ok(())
    }

    pub(super) fn bad(&self, r: &FrameRef, file: String, reason: String) -> BadChunk {
        BadChunk {
            image: self.img.manifest.image_id.clone(),
            chunk: r.chunk,
            source_offset: self.img.chunk_extent(r.chunk).0,
            segment: Some(file),
            segment_offset: Some(r.entry.offset),
            reason,
        }
    }
}
