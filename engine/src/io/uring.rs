//! The io_uring backend: one ring per lane, buffers registered once, files
//! registered as fixed files, submissions batched. All of the crate's unsafe
//! ring I/O lives here (the few ioctls outside the ring are in `quiesce.rs`
//! and `target.rs`, buffer mappings in `buffers.rs`); building an SQE is
//! safe, pushing it is the unsafe point.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::{check_range, Backend, Completion, Io, Resources};
use crate::io::Request;

/// What an operation in flight holds: the caller's tag, and the buffer and
/// file slot it owns until its completion is reaped.
#[derive(Debug)]
struct OpRecord {
    user_data: u64,
    slot: usize,
    buf: usize,
}

/// One lane's ring.
pub struct UringIo {
    ring: IoUring,
    res: Resources,
    bufs_registered: bool,
    files_registered: bool,
    ops: Vec<Option<OpRecord>>,
    ops_free: Vec<u32>,
    /// Pushed to the submission queue, not yet submitted.
    queued: usize,
    /// Submitted to the kernel, completion not yet reaped.
    in_kernel: usize,
    ready: VecDeque<Completion>,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("bufs_registered", &self.bufs_registered)
            .field("files_registered", &self.files_registered)
            .field("in_kernel", &self.in_kernel)
            .finish()
    }
}

impl UringIo {
    /// A ring with room for `queue_depth` operations (plus a few writes),
    /// and the lane's buffers allocated and registered.
    pub fn new(buffer_sizes: &[usize], slots: usize, queue_depth: u32) -> io::Result<UringIo> {
        let entries = (queue_depth + 4).next_power_of_two().max(8);
        let ring = IoUring::builder().setup_single_issuer().build(entries).or_else(|_| IoUring::new(entries))?;
        let mut res = Resources::new(buffer_sizes, slots)?;
        let iovecs: Vec<libc::iovec> =
            res.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: every iovec points at an AlignedBuf owned by `res.bufs`, which
        // lives in the returned UringIo as long as the ring does and is never
        // reallocated; the ring is dropped (unregistering them) first in Drop.
        let bufs_registered =
            iovecs.len() <= u16::MAX as usize && unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
        let files_registered = ring.submitter().register_files_sparse(slots as u32).is_ok();
        Ok(UringIo {
            ring,
            res,
            bufs_registered,
            files_registered,
            ops: Vec::new(),
            ops_free: Vec::new(),
            queued: 0,
            in_kernel: 0,
            ready: VecDeque::new(),
        })
    }

    /// Whether buffers were registered (pinned) with the ring; without, the
    /// kernel maps them per operation, which is slower but works under a low
    /// RLIMIT_MEMLOCK.
    pub fn buffers_registered(&self) -> bool {
        self.bufs_registered
    }

    fn record(&mut self, rec: OpRecord) -> u64 {
        match self.ops_free.pop() {
            Some(i) => {
                self.ops[i as usize] = Some(rec);
                u64::from(i)
            }
            None => {
                self.ops.push(Some(rec));
                (self.ops.len() - 1) as u64
            }
        }
    }

    fn push(&mut self, entry: squeue::Entry, slot: usize, buf: usize, user_data: u64) {
        self.res.own.take(slot, buf);
        let op = self.record(OpRecord { user_data, slot, buf });
        let entry = entry.user_data(op);
        loop {
            // SAFETY: the entry points into self.res.bufs[buf] within its bounds
            // (check_range) and at the file in self.res.files[slot]. Ownership
            // marks both busy until the completion is reaped in reap(): the
            // buffer cannot be handed out, the file cannot be replaced, and
            // Drop waits for every operation in the kernel before freeing
            // either (or leaks them if it cannot).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // The submission queue is full: hand it to the kernel and retry.
            self.submit_queued();
        }
        self.queued += 1;
    }

    fn submit_queued(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(n) => {
                    self.queued -= n.min(self.queued);
                    self.in_kernel += n;
                    if self.queued == 0 || n > 0 {
                        return;
                    }
                }
                Err(e) if super::is_transient(&e) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Completion queue overflow: reap, then retry.
                    self.reap();
                }
                // Anything else is a bug in how we built the ring; the ops
                // stay queued and the next flush reports the error.
                Err(_) => return,
            }
        }
    }

    fn fd(&self, slot: usize) -> types::Fd {
        types::Fd(self.res.files[slot].as_ref().expect("operation on an empty file slot").as_raw_fd())
    }

    fn reap(&mut self) {
        let mut done = Vec::new();
        for cqe in self.ring.completion() {
            done.push((cqe.user_data(), cqe.result()));
        }
        for (op, res) in done {
            let rec = self.ops[op as usize].take().expect("completion for a known operation");
            self.ops_free.push(op as u32);
            self.res.own.release(rec.slot, rec.buf);
            self.in_kernel -= 1;
            let result = if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as usize) };
            self.ready.push_back(Completion { user_data: rec.user_data, result });
        }
    }
}

impl Io for UringIo {
    fn backend(&self) -> Backend {
        Backend::uring(super::OnRingFailure::Fail)
    }

    fn set_file(&mut self, slot: usize, file: Option<File>) -> io::Result<Option<File>> {
        self.res.check_slot_idle(slot)?;
        if self.files_registered {
            let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
            self.ring.submitter().register_files_update(slot as u32, &[fd])?;
        }
        self.res.replace_file(slot, file)
    }

    fn file(&self, slot: usize) -> Option<&File> {
        self.res.files[slot].as_ref()
    }

    fn buffer(&self, id: usize) -> &[u8] {
        self.res.buffer(id)
    }

    fn buffer_mut(&mut self, id: usize) -> &mut [u8] {
        self.res.buffer_mut(id)
    }

    fn buffer_pair(&mut self, src: usize, dst: usize) -> (&[u8], &mut [u8]) {
        self.res.buffer_pair(src, dst)
    }

    fn read_exact_now(&mut self, r: Request) -> io::Result<()> {
        self.res.read_exact_now(r)
    }

    fn enqueue_read(&mut self, r: Request) {
        let Request { slot, buf, buf_offset, len, file_offset: offset, tag: user_data } = r;
        check_range(&self.res.bufs[buf], buf_offset, len);
        // SAFETY: in bounds of the buffer (checked above).
        let ptr = unsafe { self.res.bufs[buf].as_mut_ptr().add(buf_offset) };
        let len32 = len as u32;
        let entry = match (self.bufs_registered, self.files_registered) {
            (true, true) => {
                opcode::ReadFixed::new(types::Fixed(slot as u32), ptr, len32, buf as u16).offset(offset).build()
            }
            (true, false) => opcode::ReadFixed::new(self.fd(slot), ptr, len32, buf as u16).offset(offset).build(),
            (false, true) => opcode::Read::new(types::Fixed(slot as u32), ptr, len32).offset(offset).build(),
            (false, false) => opcode::Read::new(self.fd(slot), ptr, len32).offset(offset).build(),
        };
        self.push(entry, slot, buf, user_data);
    }

    fn enqueue_write(&mut self, r: Request) {
        let Request { slot, buf, buf_offset, len, file_offset: offset, tag: user_data } = r;
        check_range(&self.res.bufs[buf], buf_offset, len);
        // SAFETY: in bounds of the buffer (checked above).
        let ptr = unsafe { self.res.bufs[buf].as_ptr().add(buf_offset) };
        let len32 = len as u32;
        let entry = match (self.bufs_registered, self.files_registered) {
            (true, true) => {
                opcode::WriteFixed::new(types::Fixed(slot as u32), ptr, len32, buf as u16).offset(offset).build()
            }
            (true, false) => opcode::WriteFixed::new(self.fd(slot), ptr, len32, buf as u16).offset(offset).build(),
            (false, true) => opcode::Write::new(types::Fixed(slot as u32), ptr, len32).offset(offset).build(),
            (false, false) => opcode::Write::new(self.fd(slot), ptr, len32).offset(offset).build(),
        };
        self.push(entry, slot, buf, user_data);
    }

    fn flush(&mut self, wait_for: usize) -> io::Result<()> {
        self.reap();
        loop {
            let want = wait_for.saturating_sub(self.ready.len()).min(self.queued + self.in_kernel);
            if want == 0 && self.queued == 0 {
                return Ok(());
            }
            match self.ring.submit_and_wait(want) {
                Ok(n) => {
                    self.queued -= n.min(self.queued);
                    self.in_kernel += n;
                }
                // Interrupted by a signal, or the completion queue is full
                // (reaped below): both mean "go round again".
                Err(e) if super::is_transient(&e) || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.queued + self.in_kernel + self.ready.len()
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Every operation the kernel holds still points into our buffers:
        // wait for all of them before the buffers are freed.
        if self.queued > 0 {
            self.submit_queued();
        }
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.reap(),
                Err(e) if super::is_transient(&e) => {}
                Err(_) => {
                    // We cannot learn when the kernel is done with them:
                    // park the buffers and files forever rather than free
                    // memory the kernel may still write into.
                    std::mem::forget(std::mem::take(&mut self.res.bufs));
                    std::mem::forget(std::mem::take(&mut self.res.files));
                    return;
                }
            }
        }
        // The ring's own references to our files go now, not in the
        // kernel's deferred ring teardown after the process has exited: a
        // restore target opened O_EXCL is free (to mount, to fsck) the moment
        // tintype returns.
        if self.files_registered {
            let _ = self.ring.submitter().unregister_files();
        }
        if self.bufs_registered {
            let _ = self.ring.submitter().unregister_buffers();
        }
    }
}

/// Check that io_uring can be used here, and if not, say why in words a user
/// can act on.
pub fn probe() -> Result<(), String> {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => "the kernel was built without io_uring, or a seccomp filter hides it (ENOSYS)".into(),
                Some(libc::EPERM) if disabled > 0 => {
                    format!("disabled by sysctl kernel.io_uring_disabled={disabled}")
                }
                Some(libc::EPERM) => {
                    "io_uring_setup is not permitted; a seccomp profile (Docker's default blocks io_uring) or an LSM denies it"
                        .into()
                }
                Some(libc::ENOMEM) => "not enough locked memory for a ring; raise RLIMIT_MEMLOCK (ulimit -l)".into(),
                _ => format!("io_uring_setup failed: {e}"),
            })
        }
    };
    let mut p = Probe::new();
    if ring.submitter().register_probe(&mut p).is_ok() {
        for (code, name) in [
            (opcode::Read::CODE, "READ"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::ReadFixed::CODE, "READ_FIXED"),
            (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        ] {
            if !p.is_supported(code) {
                return Err(format!("the kernel's io_uring lacks the {name} operation"));
            }
        }
    } else {
        return Err("the kernel's io_uring is too old to report its operations (needs Linux 5.6 or newer)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_and_writes_through_the_ring() {
        if let Err(why) = probe() {
            eprintln!("skipping: io_uring unavailable here: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[5u8; 8192]).unwrap();
        drop(f);
        let mut io = UringIo::new(&[8192, 4096], 2, 4).unwrap();
        io.set_file(0, Some(std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap())).unwrap();
        io.enqueue_read(Request { slot: 0, buf: 0, buf_offset: 0, len: 8192, file_offset: 0, tag: 11 });
        io.buffer_mut(1).fill(9);
        io.enqueue_write(Request { slot: 0, buf: 1, buf_offset: 0, len: 4096, file_offset: 8192, tag: 12 });
        io.flush(2).unwrap();
        let mut got: Vec<(u64, usize)> =
            std::iter::from_fn(|| io.pop_completion()).map(|c| (c.user_data, c.result.unwrap())).collect();
        got.sort();
        assert_eq!(got, vec![(11, 8192), (12, 4096)]);
        assert!(io.buffer(0).iter().all(|&b| b == 5));
        assert_eq!(std::fs::read(&path).unwrap().len(), 12288);
    }
}
