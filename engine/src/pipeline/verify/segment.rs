//! The segment half of verify: lanes claim whole segments and read each
//! front to back through their ring, checking every frame against its
//! header, its payload hash, decompression, its raw hash and its index
//! entry, and the segment's own hash.
use std::sync::atomic::AtomicBool;

use super::index::{Findings, FrameRef};
use super::options::VerifyOptions;
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

use crate::error::Left;
use crate::format::Xxh64;
use crate::io::device::OpenMode;
use crate::io::Io;
use crate::io::Request;
use crate::pipeline::verify::options::BadChunk;
use crate::pipeline::verify::options::Problem;
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
                return Err(Error::interrupted(
                    Left::NothingChanged,
                    "verify stopped by a signal before it finished: no verdict; it only reads, so the set is as it was"
                        .into(),
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::interrupted(Left::Stopped, "another verify lane failed".into()));
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

    /// Check segment `seg`: its file, header, every indexed frame, how the
    /// frames tile it, and its hash.
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
        let problem = |f: &mut Findings, offset: Option<u64>, what: String| {
            f.problems.push(Problem { file: info.file.clone(), offset, what })
        };
        let file = match open_read_only(&path, OpenMode::Direct) {
            Ok((file, _direct)) => file,
            Err(e) => {
                problem(f, None, format!("cannot open: {e}"));
                for r in frames {
                    f.bad.push(self.bad(r, info.file.clone(), "its segment file cannot be opened".into()));
                }
                return Ok(());
            }
        };
        let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len != info.size_bytes {
            let how = if len < info.size_bytes { "truncated" } else { "extended" };
            let what = format!("segment is {len} bytes, the manifest says {} ({how})", info.size_bytes);
            problem(f, Some(len.min(info.size_bytes)), what);
        }
        io.set_file(0, Some(file)).map_err(|e| Error::io("register", &path, e))?;
        let mut hasher = Xxh3Default::new();
        if let Err(what) = self.check_header(io, seg, &path, &mut hasher)? {
            problem(f, Some(0), what);
        }
        let mut tiling = Tiling { next_offset: SEGMENT_HEADER_BYTES as u64, contiguous: true, hasher };
        self.check_frames(io, seg, &path, &mut tiling, dec, raw, f)?;
        io.set_file(0, None).map_err(|e| Error::io("release", &path, e))?;
        if !tiling.contiguous {
            problem(f, None, "the index's frames overlap or leave gaps in this segment".into());
        } else if tiling.next_offset != info.size_bytes {
            let what = format!(
                "the indexed frames end at offset {}, the manifest says the segment is {} bytes",
                tiling.next_offset, info.size_bytes
            );
            problem(f, Some(tiling.next_offset), what);
        } else if len == info.size_bytes && Xxh64(tiling.hasher.digest()) != info.xxh3_64 {
            problem(f, None, "segment checksum (xxh3-64) does not match the manifest".into());
        }
        if frames.len() as u64 != info.frames {
            let what = format!("the index points at {} frames here, the manifest counts {}", frames.len(), info.frames);
            problem(f, None, what);
        }
        Ok(())
    }

    /// Read and check the segment header (hashed into `hasher`); the inner
    /// result says what is wrong with it.
    fn check_header(
        &self,
        io: &mut dyn Io,
        seg: usize,
        path: &std::path::Path,
        hasher: &mut Xxh3Default,
    ) -> Result<std::result::Result<(), String>> {
        let whole =
            Request { slot: 0, buf: 0, buf_offset: 0, len: SEGMENT_HEADER_BYTES, file_offset: 0, tag: u64::MAX };
        io.enqueue_read(whole);
        io.flush(1).map_err(|e| Error::io("read", path, e))?;
        let c = io.pop_completion().expect("header read completion");
        self.bytes_done.fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);
        let n = match c.result {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("cannot read the segment header: {e}"))),
        };
        let b = &io.buffer(0)[..n];
        hasher.update(b);
        let id = self.img.id();
        Ok(SegmentHeader::check(b, id, seg as u32, self.img.manifest.chunk_size_bytes).map(|_| ()))
    }

    /// Read the segment's indexed frames in offset order, `queue_depth` in
    /// flight, and check them in order as they complete.
    #[allow(clippy::too_many_arguments)]
    fn check_frames(
        &self,
        io: &mut dyn Io,
        seg: usize,
        path: &std::path::Path,
        tiling: &mut Tiling,
        dec: &mut Decoder,
        raw: &mut [u8],
        f: &mut Findings,
    ) -> Result<()> {
        let frames = &self.per_segment[seg];
        let read = |k: usize, buf: usize| {
            let e = frames[k].entry;
            let len = frame_len(e.stored_len) as usize;
            Request { slot: 0, buf, buf_offset: 0, len, file_offset: e.offset, tag: buf as u64 }
        };
        let mut free: Vec<usize> = (0..self.queue_depth as usize).rev().collect();
        let mut window: VecDeque<InFlight> = VecDeque::new();
        let mut next = 0usize;
        while next < frames.len() || !window.is_empty() {
            while next < frames.len() {
                let Some(buf) = free.pop() else { break };
                io.enqueue_read(read(next, buf));
                window.push_back(InFlight { frame: next, buf, result: None });
                next += 1;
            }
            io.flush(1).map_err(|e| Error::io("read", path, e))?;
            while let Some(c) = io.pop_completion() {
                let w = window
                    .iter_mut()
                    .find(|w| w.buf == c.user_data as usize && w.result.is_none())
                    .expect("completion for a read in the window");
                match c.result {
                    Err(e) if io::is_transient(&e) => io.enqueue_read(read(w.frame, w.buf)),
                    r => w.result = Some(r),
                }
            }
            // Check frames in segment order, so the segment hash runs in order.
            while window.front().is_some_and(|w| w.result.is_some()) {
                let w = window.pop_front().expect("front");
                let result = w.result.expect("completed").map(|n| &io.buffer(w.buf)[..n]);
                self.check_read(seg, &frames[w.frame], result, tiling, dec, raw, f);
                free.push(w.buf);
            }
        }
        Ok(())
    }

    /// One frame's read came back: hash it into the segment's hash while
    /// the frames tile the segment, and check it.
    #[allow(clippy::too_many_arguments)]
    fn check_read(
        &self,
        seg: usize,
        r: &FrameRef,
        result: std::io::Result<&[u8]>,
        tiling: &mut Tiling,
        dec: &mut Decoder,
        raw: &mut [u8],
        f: &mut Findings,
    ) {
        let file = &self.img.manifest.segments[seg].file;
        let want = frame_len(r.entry.stored_len) as usize;
        if r.entry.offset != tiling.next_offset {
            tiling.contiguous = false;
        }
        tiling.next_offset = r.entry.offset + want as u64;
        let bytes = match result {
            Err(e) => return f.bad.push(self.bad(r, file.clone(), format!("read failed: {e}"))),
            Ok(b) => b,
        };
        if tiling.contiguous {
            tiling.hasher.update(bytes);
        }
        self.bytes_done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() < want {
            let end = r.entry.offset + bytes.len() as u64;
            let why = format!("frame truncated: the segment ends at offset {end}, the frame needs {want} bytes");
            return f.bad.push(self.bad(r, file.clone(), why));
        }
        match self.check(r, bytes, dec, raw) {
            Ok(()) => f.ok += 1,
            Err(why) => f.bad.push(self.bad(r, file.clone(), why)),
        }
    }

    pub(super) fn check(
        &self,
        r: &FrameRef,
        bytes: &[u8],
        dec: &mut Decoder,
        raw: &mut [u8],
    ) -> std::result::Result<(), String> {
        let h = check_frame(bytes, raw, &mut |s, o| dec.decode(s, o)).map_err(|e| e.to_string())?;
        h.check_matches(r.chunk, self.img.id(), &r.entry).map_err(|m| m.to_string())?;
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

/// How the frames read so far tile a segment: where the next one should
/// start, whether every one did, and the hash of the bytes in file order.
struct Tiling {
    next_offset: u64,
    contiguous: bool,
    hasher: Xxh3Default,
}

/// A frame read in flight (or completed and waiting its turn).
struct InFlight {
    frame: usize,
    buf: usize,
    result: Option<std::io::Result<usize>>,
}
