//! The I/O layer: one small trait, [`Io`], with an io_uring backend (the
//! default) and a portable pread/pwrite backend for kernels and containers
//! where io_uring is off.
//!
//! A backend owns a lane's buffers and files. An operation in flight owns its
//! buffer and its file slot until its completion has been reaped: the trait
//! hands out a buffer only while no operation uses it, and refuses to replace
//! a file while an operation on it is in flight. That is what makes handing
//! raw pointers to the kernel sound.

pub mod buffers;
pub mod checksum;
pub mod device;
pub mod portable;
pub mod quiesce;
pub mod sim;
pub mod target;
pub mod uring;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub use buffers::AlignedBuf;

/// Which backend to use.
#[derive(Clone, Debug, Default)]
pub enum IoChoice {
    /// io_uring when the probe says it works, else portable.
    #[default]
    Auto,
    Uring,
    Portable,
    /// The portable backend with a seeded fault map (tests).
    Sim(Arc<sim::Sim>),
}

/// The backend a run ended up with.
#[derive(Clone, Debug)]
pub enum Backend {
    /// io_uring; what each lane's ring set-up did is counted in the shared
    /// state (one per run, shared by its lanes' clones).
    Uring(Arc<UringLanes>),
    Portable,
    Sim(Arc<sim::Sim>),
}

/// What a lane does when its io_uring ring cannot be set up for want of a
/// per-user resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRingFailure {
    /// Go on with the portable backend (`--io auto`).
    UsePortable,
    /// Fail the run, naming the limit (`--io uring`).
    Fail,
}

/// How a run's lanes fared setting up their io_uring rings. Under `--io
/// auto` a lane whose ring cannot be set up for want of a per-user resource
/// (RLIMIT_MEMLOCK on kernels that count rings against it, RLIMIT_NPROC)
/// uses the portable backend instead; under `--io uring` it fails.
#[derive(Debug, Default)]
pub struct UringLanes {
    /// Whether a lane may fall back to the portable backend.
    pub fallback: bool,
    uring: std::sync::atomic::AtomicU32,
    portable: std::sync::atomic::AtomicU32,
    why: std::sync::Mutex<Option<String>>,
}

impl Backend {
    /// io_uring: asked for (`--io uring`: a lane whose ring cannot be set up
    /// fails the run), or taken by default (such a lane goes portable).
    pub fn uring(on_failure: OnRingFailure) -> Backend {
        let fallback = on_failure == OnRingFailure::UsePortable;
        Backend::Uring(Arc::new(UringLanes { fallback, ..UringLanes::default() }))
    }

    /// What the run used: "io_uring", "portable" (every lane fell back), or
    /// "io_uring+portable" (some did).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Uring(l) => {
                let (u, p) = l.counts();
                match (u, p) {
                    (_, 0) => "io_uring",
                    (0, _) => "portable",
                    _ => "io_uring+portable",
                }
            }
            Backend::Portable => "portable",
            Backend::Sim(_) => "sim",
        }
    }

    /// A note for the user when lanes fell back to the portable backend.
    pub fn fallback_note(&self) -> Option<String> {
        let Backend::Uring(l) = self else { return None };
        let (u, p) = l.counts();
        if p == 0 {
            return None;
        }
        let why = l.why.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        Some(format!(
            "{p} of {} io_uring ring(s) could not be set up ({why}); those lanes used the portable pread/pwrite \
             backend (raise the limit, or use fewer --lanes or a lower --queue-depth, for io_uring throughout)",
            u + p
        ))
    }
}

impl UringLanes {
    fn counts(&self) -> (u32, u32) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.uring.load(Relaxed), self.portable.load(Relaxed))
    }
}

/// One read or write: the file slot, the buffer and where in it, how many
/// bytes, where in the file, and the caller's tag, which its completion
/// carries back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub slot: usize,
    pub buf: usize,
    pub buf_offset: usize,
    pub len: usize,
    pub file_offset: u64,
    pub tag: u64,
}

/// The outcome of one operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag, as given when the operation was enqueued.
    pub user_data: u64,
    /// Bytes transferred, or the error.
    pub result: io::Result<usize>,
}

/// One lane's I/O: a fixed set of aligned buffers and file slots, operations
/// enqueued, submitted in batches, and completions reaped.
pub trait Io: Send {
    fn backend(&self) -> Backend;

    /// Put `file` in `slot` (or empty it), returning what was there.
    /// Fails if an operation on the slot is in flight.
    fn set_file(&mut self, slot: usize, file: Option<File>) -> io::Result<Option<File>>;

    /// The file in `slot`, for calls outside the ring (fstat, fsync).
    fn file(&self, slot: usize) -> Option<&File>;

    /// Buffer `id`, which must not be in use by an operation.
    fn buffer(&self, id: usize) -> &[u8];

    /// Buffer `id` for writing, which must not be in use by an operation.
    fn buffer_mut(&mut self, id: usize) -> &mut [u8];

    /// Buffer `src` to read and buffer `dst` to write, at once (src != dst);
    /// neither may be in use by an operation.
    fn buffer_pair(&mut self, src: usize, dst: usize) -> (&[u8], &mut [u8]);

    /// Queue a read of `r.len` bytes at `r.file_offset` into buffer `r.buf`
    /// at `r.buf_offset`. Not submitted until [`Io::flush`].
    fn enqueue_read(&mut self, r: Request);

    /// Queue a write of `r.len` bytes from buffer `r.buf` at `r.buf_offset`
    /// to `r.file_offset`.
    fn enqueue_write(&mut self, r: Request);

    /// Submit everything queued and wait until at least `wait_for`
    /// completions are ready to pop (fewer if fewer are in flight).
    fn flush(&mut self, wait_for: usize) -> io::Result<()>;

    /// The next reaped completion.
    fn pop_completion(&mut self) -> Option<Completion>;

    /// Operations queued or submitted and not yet popped.
    fn in_flight(&self) -> usize;

    /// Read `len` bytes at `offset` into buffer `buf` at `buf_offset` now,
    /// synchronously (reading past the end of a file fails with
    /// `UnexpectedEof`). For the slow path: finding bad sectors.
    fn read_exact_now(&mut self, r: Request) -> io::Result<()>;

    /// Read into a caller's buffer now, synchronously (`read_exact_at`).
    fn read_exact_into(&mut self, slot: usize, dst: &mut [u8], offset: u64) -> io::Result<()> {
        self.file(slot).expect("read from an empty file slot").read_exact_at(dst, offset)
    }

    /// Write from a caller's buffer now, synchronously; may be short.
    fn write_from(&mut self, slot: usize, src: &[u8], offset: u64) -> io::Result<usize> {
        self.file(slot).expect("write to an empty file slot").write_at(src, offset)
    }

    /// Make the file in `slot` durable (fsync). No operation on it may be in flight.
    fn sync(&mut self, slot: usize) -> io::Result<()> {
        self.file(slot).expect("fsync of an empty file slot").sync_all()
    }
}

/// Book-keeping shared by the backends: which buffers and slots are busy.
#[derive(Debug)]
pub(crate) struct Ownership {
    buf_busy: Vec<bool>,
    slot_ops: Vec<u32>,
}

impl Ownership {
    pub(crate) fn new(buffers: usize, slots: usize) -> Self {
        Ownership { buf_busy: vec![false; buffers], slot_ops: vec![0; slots] }
    }

    pub(crate) fn take(&mut self, slot: usize, buf: usize) {
        assert!(!self.buf_busy[buf], "buffer {buf} is already owned by an operation in flight");
        self.buf_busy[buf] = true;
        self.slot_ops[slot] += 1;
    }

    pub(crate) fn release(&mut self, slot: usize, buf: usize) {
        debug_assert!(self.buf_busy[buf]);
        self.buf_busy[buf] = false;
        self.slot_ops[slot] -= 1;
    }

    pub(crate) fn assert_idle(&self, buf: usize) {
        assert!(!self.buf_busy[buf], "buffer {buf} is owned by an operation in flight");
    }

    pub(crate) fn slot_busy(&self, slot: usize) -> bool {
        self.slot_ops[slot] > 0
    }
}

/// What a backend owns: its buffers, its file slots, and which of them
/// operations in flight are using. Both backends hand these out the same way.
#[derive(Debug)]
pub(crate) struct Resources {
    pub(crate) bufs: Vec<AlignedBuf>,
    pub(crate) files: Vec<Option<File>>,
    pub(crate) own: Ownership,
}

impl Resources {
    /// Buffers of the given sizes (failing, not aborting, when they cannot
    /// be mapped) and `slots` empty file slots.
    pub(crate) fn new(buffer_sizes: &[usize], slots: usize) -> io::Result<Resources> {
        Ok(Resources {
            bufs: buffer_sizes.iter().map(|&n| AlignedBuf::try_new(n)).collect::<io::Result<_>>()?,
            files: (0..slots).map(|_| None).collect(),
            own: Ownership::new(buffer_sizes.len(), slots),
        })
    }

    /// File slots only, for synchronous calls: allocates no buffer.
    pub(crate) fn unbuffered(slots: usize) -> Resources {
        Resources { bufs: Vec::new(), files: (0..slots).map(|_| None).collect(), own: Ownership::new(0, slots) }
    }

    /// Fails while an operation on the slot is in flight.
    pub(crate) fn check_slot_idle(&self, slot: usize) -> io::Result<()> {
        if self.own.slot_busy(slot) {
            return Err(io::Error::other(format!("file slot {slot} has operations in flight")));
        }
        Ok(())
    }

    pub(crate) fn replace_file(&mut self, slot: usize, file: Option<File>) -> io::Result<Option<File>> {
        self.check_slot_idle(slot)?;
        Ok(std::mem::replace(&mut self.files[slot], file))
    }

    pub(crate) fn buffer(&self, id: usize) -> &[u8] {
        self.own.assert_idle(id);
        self.bufs[id].as_slice()
    }

    pub(crate) fn buffer_mut(&mut self, id: usize) -> &mut [u8] {
        self.own.assert_idle(id);
        self.bufs[id].as_mut_slice()
    }

    pub(crate) fn buffer_pair(&mut self, src: usize, dst: usize) -> (&[u8], &mut [u8]) {
        pair(&mut self.bufs, &self.own, src, dst)
    }

    /// A synchronous `read_exact_at` of the slot's file into an idle buffer.
    pub(crate) fn read_exact_now(&mut self, r: Request) -> io::Result<()> {
        let Request { slot, buf, buf_offset, len, file_offset: offset, .. } = r;
        self.own.assert_idle(buf);
        check_range(&self.bufs[buf], buf_offset, len);
        let file = self.files[slot].as_ref().expect("read from an empty file slot");
        file.read_exact_at(&mut self.bufs[buf].as_mut_slice()[buf_offset..buf_offset + len], offset)
    }
}

/// Split-borrow two distinct buffers of a pool.
pub(crate) fn pair<'a>(
    bufs: &'a mut [AlignedBuf],
    own: &Ownership,
    src: usize,
    dst: usize,
) -> (&'a [u8], &'a mut [u8]) {
    assert_ne!(src, dst, "buffer_pair needs two distinct buffers");
    own.assert_idle(src);
    own.assert_idle(dst);
    if src < dst {
        let (a, b) = bufs.split_at_mut(dst);
        (a[src].as_slice(), b[0].as_mut_slice())
    } else {
        let (a, b) = bufs.split_at_mut(src);
        (b[0].as_slice(), a[dst].as_mut_slice())
    }
}

/// Check an operation's range against its buffer before it reaches the kernel.
pub(crate) fn check_range(buf: &AlignedBuf, buf_offset: usize, len: usize) {
    assert!(
        buf_offset.checked_add(len).is_some_and(|end| end <= buf.len()),
        "operation of {len} bytes at {buf_offset} overruns a {}-byte buffer",
        buf.len()
    );
}

/// Open a backend for one lane with buffers of the given sizes and `slots`
/// file slots, honouring `choice`.
pub fn open(choice: &Backend, buffer_sizes: &[usize], slots: usize, queue_depth: u32) -> io::Result<Box<dyn Io>> {
    use std::sync::atomic::Ordering::Relaxed;
    Ok(match choice {
        Backend::Uring(lanes) => Box::new(match uring::UringIo::new(buffer_sizes, slots, queue_depth) {
            Ok(ring) => {
                lanes.uring.fetch_add(1, Relaxed);
                ring
            }
            // A per-user resource ran out (the start-up probe's small ring
            // fitted; this lane's ring, or the n-th, does not): under --io
            // auto this lane goes on with pread/pwrite.
            Err(e) if lanes.fallback && matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EAGAIN)) => {
                lanes.portable.fetch_add(1, Relaxed);
                let why = match e.raw_os_error() {
                    Some(libc::ENOMEM) => "out of locked memory: RLIMIT_MEMLOCK, `ulimit -l`, per user",
                    _ => "out of threads: RLIMIT_NPROC, `ulimit -u`",
                };
                *lanes.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
                return Ok(Box::new(portable::PortableIo::new(buffer_sizes, slots)?));
            }
            Err(e) => {
                return Err(match e.raw_os_error() {
                    // Rings are locked memory, counted per user: name the limit.
                    Some(libc::ENOMEM) => io::Error::new(
                        e.kind(),
                        format!(
                            "{e}: io_uring rings count against RLIMIT_MEMLOCK (`ulimit -l`, per user); raise it, use \
                         fewer --lanes, or --io portable"
                        ),
                    ),
                    // The kernel's io_uring workers are threads of this user.
                    Some(libc::EAGAIN) => io::Error::new(
                        e.kind(),
                        format!(
                        "{e}: io_uring needs threads; RLIMIT_NPROC (`ulimit -u`) may be too low, or use --io portable"
                    ),
                    ),
                    _ => e,
                });
            }
        }),
        Backend::Portable => Box::new(portable::PortableIo::new(buffer_sizes, slots)?),
        Backend::Sim(sim) => Box::new(sim::SimIo::new(sim.clone(), buffer_sizes, slots)?),
    })
}

/// File slots without buffers, for synchronous calls only
/// ([`Io::read_exact_into`], [`Io::write_from`], [`Io::sync`]): plain
/// positioned I/O, or the simulation's faults under [`IoChoice::Sim`].
pub fn open_sync(choice: &IoChoice, slots: usize) -> Box<dyn Io> {
    match choice {
        IoChoice::Sim(sim) => Box::new(sim::SimIo::unbuffered(sim.clone(), slots)),
        _ => Box::new(portable::PortableIo::unbuffered(slots)),
    }
}

/// Decide the backend for a run, saying to `obs` when it is not the one
/// asked for or io_uring is off (see [`select_with_reason`]).
pub fn select(choice: &IoChoice, obs: &dyn crate::observe::Observer) -> crate::Result<Backend> {
    let (backend, why) = select_with_reason(choice)?;
    if let Some(why) = why {
        obs.note(&why);
    }
    Ok(backend)
}

/// Decide the backend for a run: returns it and, when the choice was not the
/// one asked for or io_uring is off, the reason to tell the user.
/// `--io uring` where io_uring cannot be used is the environment's doing
/// (exit 1), not a bad command line.
pub fn select_with_reason(choice: &IoChoice) -> crate::Result<(Backend, Option<String>)> {
    match choice {
        IoChoice::Portable => Ok((Backend::Portable, None)),
        IoChoice::Sim(sim) => Ok((Backend::Sim(sim.clone()), None)),
        IoChoice::Uring => {
            uring::probe().map(|()| (Backend::uring(OnRingFailure::Fail), None)).map_err(|why| crate::Error::Unusable {
                reason: crate::error::Refusal::IoUringUnavailable,
                path: "io_uring".into(),
                why: format!("--io uring was asked for, but io_uring cannot be used: {why}"),
            })
        }
        IoChoice::Auto => match uring::probe() {
            Ok(()) => Ok((Backend::uring(OnRingFailure::UsePortable), None)),
            Err(why) => Ok((
                Backend::Portable,
                Some(format!("io_uring unavailable ({why}); using the portable pread/pwrite backend")),
            )),
        },
    }
}

/// Is this errno worth retrying as is?
pub fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// An error of a write to `what` ("destination", "target"), with ENOSPC
/// said in words a user looking at a full disk recognises.
pub fn name_enospc(e: std::io::Error, what: &str) -> std::io::Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => std::io::Error::new(e.kind(), format!("no space left on the {what} (ENOSPC)")),
        // io_uring cancels a request its kernel worker thread could not be
        // started for (RLIMIT_NPROC counts those threads too).
        Some(libc::ECANCELED) => std::io::Error::new(
            e.kind(),
            format!(
                "{e}: the kernel cancelled the I/O, likely unable to start an io_uring worker thread (RLIMIT_NPROC, \
                 `ulimit -u`); raise it or use --io portable"
            ),
        ),
        _ => e,
    }
}
