//! The portable backend: the same interface executed with pread/pwrite at
//! flush time. For kernels or containers where io_uring is off.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{check_range, Backend, Completion, Io, Resources};
use crate::io::Request;

#[derive(Debug)]
enum Kind {
    Read,
    Write,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    slot: usize,
    buf: usize,
    buf_offset: usize,
    len: usize,
    offset: u64,
    user_data: u64,
}

/// Synchronous positioned I/O behind the [`Io`] interface.
#[derive(Debug)]
pub struct PortableIo {
    res: Resources,
    pending: VecDeque<Pending>,
    ready: VecDeque<Completion>,
}

impl PortableIo {
    pub fn new(buffer_sizes: &[usize], slots: usize) -> io::Result<PortableIo> {
        Ok(PortableIo { res: Resources::new(buffer_sizes, slots)?, pending: VecDeque::new(), ready: VecDeque::new() })
    }

    /// File slots only, for synchronous calls.
    pub fn unbuffered(slots: usize) -> PortableIo {
        PortableIo { res: Resources::unbuffered(slots), pending: VecDeque::new(), ready: VecDeque::new() }
    }

    fn run(&mut self, p: Pending) {
        let file = self.res.files[p.slot].as_ref().expect("operation on an empty file slot");
        let result = loop {
            let r = match p.kind {
                Kind::Read => {
                    file.read_at(&mut self.res.bufs[p.buf].as_mut_slice()[p.buf_offset..p.buf_offset + p.len], p.offset)
                }
                Kind::Write => {
                    file.write_at(&self.res.bufs[p.buf].as_slice()[p.buf_offset..p.buf_offset + p.len], p.offset)
                }
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.res.own.release(p.slot, p.buf);
        self.ready.push_back(Completion { user_data: p.user_data, result });
    }

    fn enqueue(&mut self, p: Pending) {
        check_range(&self.res.bufs[p.buf], p.buf_offset, p.len);
        self.res.own.take(p.slot, p.buf);
        self.pending.push_back(p);
    }
}

impl Io for PortableIo {
    fn backend(&self) -> Backend {
        Backend::Portable
    }

    fn set_file(&mut self, slot: usize, file: Option<File>) -> io::Result<Option<File>> {
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
        self.enqueue(Pending { kind: Kind::Read, slot, buf, buf_offset, len, offset, user_data });
    }

    fn enqueue_write(&mut self, r: Request) {
        let Request { slot, buf, buf_offset, len, file_offset: offset, tag: user_data } = r;
        self.enqueue(Pending { kind: Kind::Write, slot, buf, buf_offset, len, offset, user_data });
    }

    fn flush(&mut self, _wait_for: usize) -> io::Result<()> {
        while let Some(p) = self.pending.pop_front() {
            self.run(p);
        }
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.ready.len()
    }
}
