//! The simulation backend: the portable backend's positioned I/O with a
//! seeded fault map in front of it, for deterministic fault tests.
//!
//! A [`Sim`] is shared by every lane (and every synchronous helper) of the
//! runs it is given to, so its counters — writes, fsyncs, bytes written —
//! are counted over a whole run; with one lane the order of operations, and
//! so which operation a fault hits, is the same every time for a seed.
//! Files are real files (tests keep them on tmpfs); the map decides what
//! each operation on them does:
//!
//! - reads of chosen byte ranges of a chosen file fail with EIO, always or
//!   the first few times (a sector that reads after retries);
//! - reads come back short (a random whole number of 512-byte sectors);
//! - the destination fills up: after a budget of bytes written, a write is
//!   short and the next fails with ENOSPC;
//! - the n-th write fails with EIO, or the n-th fsync does;
//! - the n-th write is torn (a random prefix reaches the file) and then the
//!   machine "crashes": every later operation fails. [`Sim::power_cut`] then
//!   cuts every file written since its last fsync back to a random length
//!   between what was synced and what was written, as a power cut could.
//!
//! What was injected is logged ([`Sim::injected`]) so a failing test can say.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{check_range, Backend, Completion, Io, Resources};
use crate::io::Request;

/// Reads of `[start, start + len)` of `path` fail with EIO `times` times
/// (`u32::MAX`: always).
#[derive(Debug, Clone)]
pub struct BadRange {
    pub path: PathBuf,
    pub start: u64,
    pub len: u64,
    pub times: u32,
}

/// What to inject. The default injects nothing.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub bad_reads: Vec<BadRange>,
    /// Some reads return fewer bytes than asked (never zero).
    pub short_reads: bool,
    /// Bytes that writes may transfer before the destination is full.
    pub space_bytes: Option<u64>,
    /// A write that does not fit fails whole with ENOSPC (as an O_DIRECT
    /// write on ext4 does) instead of coming back short.
    pub space_all_or_nothing: bool,
    /// The n-th write (counting from 0) fails with EIO.
    pub write_eio_at: Option<u64>,
    /// The n-th fsync (counting from 0) fails with EIO.
    pub sync_eio_at: Option<u64>,
    /// The n-th write is torn and the machine crashes after it.
    pub crash_at_write: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    rng: u64,
    writes: u64,
    syncs: u64,
    bytes_written: u64,
    crashed: bool,
    /// Failures so far per entry of `bad_reads`.
    read_failures: HashMap<usize, u32>,
    /// Per file written: its length at its last fsync (None: never synced,
    /// length when first written).
    synced_len: HashMap<PathBuf, u64>,
    injected: Vec<String>,
}

impl State {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// A seeded fault map and its counters, shared by the runs given it.
#[derive(Debug)]
pub struct Sim {
    pub seed: u64,
    pub faults: Faults,
    state: Mutex<State>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Sim {
    pub fn new(seed: u64, faults: Faults) -> Arc<Sim> {
        Arc::new(Sim { seed, faults, state: Mutex::new(State { rng: seed, ..State::default() }) })
    }

    /// A backend choice that runs through this simulation.
    pub fn choice(self: &Arc<Self>) -> super::IoChoice {
        super::IoChoice::Sim(self.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was injected so far, in order.
    pub fn injected(&self) -> Vec<String> {
        self.state().injected.clone()
    }

    /// Whether the simulated machine crashed.
    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// Writes and fsyncs done so far (to pick the n-th for a later run).
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.writes, s.syncs)
    }

    /// Lose what a power cut could lose: every file written since its last
    /// fsync is cut to a random length between its synced length and its
    /// length now. Files that no longer exist are skipped.
    pub fn power_cut(&self) {
        let mut s = self.state();
        let files: Vec<(PathBuf, u64)> = s.synced_len.drain().collect();
        for (path, synced) in files {
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else { continue };
            let Ok(len) = f.metadata().map(|m| m.len()) else { continue };
            if len > synced {
                let keep = synced + s.below(len - synced + 1);
                let _ = f.set_len(keep);
                s.injected.push(format!("power cut: {} cut from {len} to {keep} bytes", path.display()));
            }
        }
    }

    fn read(&self, file: &File, path: &Path, dst: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.state();
        if s.crashed {
            return Err(crashed());
        }
        let end = offset + dst.len() as u64;
        for (i, b) in self.faults.bad_reads.iter().enumerate() {
            if b.path == path && b.start < end && offset < b.start + b.len {
                let n = s.read_failures.entry(i).or_insert(0);
                if *n < b.times {
                    *n += 1;
                    let msg = format!("EIO reading {} at {offset}+{}", path.display(), dst.len());
                    s.injected.push(msg);
                    return Err(eio());
                }
            }
        }
        let mut len = dst.len();
        if self.faults.short_reads && len > 512 && s.below(4) == 0 {
            len = (1 + s.below((len as u64 - 1) / 512)) as usize * 512;
        }
        drop(s);
        file.read_at(&mut dst[..len], offset)
    }

    fn write(&self, file: &File, path: &Path, src: &[u8], offset: u64) -> io::Result<usize> {
        let mut s = self.state();
        if s.crashed {
            return Err(crashed());
        }
        let n = s.writes;
        s.writes += 1;
        if !s.synced_len.contains_key(path) {
            let len = file.metadata().map_or(0, |m| m.len());
            s.synced_len.insert(path.to_path_buf(), len);
        }
        if self.faults.write_eio_at == Some(n) {
            s.injected.push(format!("EIO on write {n} ({} at {offset})", path.display()));
            return Err(eio());
        }
        let mut len = src.len();
        if let Some(space) = self.faults.space_bytes {
            let left = space.saturating_sub(s.bytes_written);
            if left == 0 {
                s.injected.push(format!("ENOSPC on write {n} ({} at {offset})", path.display()));
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            if (left as usize) < len && self.faults.space_all_or_nothing {
                s.injected
                    .push(format!("ENOSPC on write {n} of {len} bytes, {left} left ({} at {offset})", path.display()));
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            if (left as usize) < len {
                len = left as usize;
                s.injected.push(format!(
                    "short write {n}: {len} of {} bytes ({} at {offset})",
                    src.len(),
                    path.display()
                ));
            }
        }
        if self.faults.crash_at_write == Some(n) {
            let torn = s.below(len as u64 + 1) as usize;
            let _ = file.write_all_at(&src[..torn], offset);
            s.crashed = true;
            s.injected
                .push(format!("crash during write {n}: {torn} of {len} bytes reached {} at {offset}", path.display()));
            return Err(crashed());
        }
        s.bytes_written += len as u64;
        drop(s);
        file.write_at(&src[..len], offset)
    }

    fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        if s.crashed {
            return Err(crashed());
        }
        let n = s.syncs;
        s.syncs += 1;
        if self.faults.sync_eio_at == Some(n) {
            s.injected.push(format!("EIO on fsync {n} ({})", path.display()));
            return Err(eio());
        }
        file.sync_all()?;
        s.synced_len.remove(path);
        Ok(())
    }
}

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

/// One lane's I/O through a [`Sim`].
#[derive(Debug)]
pub struct SimIo {
    sim: Arc<Sim>,
    res: Resources,
    paths: Vec<PathBuf>,
    pending: VecDeque<Pending>,
    ready: VecDeque<Completion>,
}

impl SimIo {
    pub fn new(sim: Arc<Sim>, buffer_sizes: &[usize], slots: usize) -> std::io::Result<SimIo> {
        Ok(SimIo::with(sim, Resources::new(buffer_sizes, slots)?, slots))
    }

    /// File slots only, for synchronous calls.
    pub fn unbuffered(sim: Arc<Sim>, slots: usize) -> SimIo {
        SimIo::with(sim, Resources::unbuffered(slots), slots)
    }

    fn with(sim: Arc<Sim>, res: Resources, slots: usize) -> SimIo {
        SimIo { sim, res, paths: vec![PathBuf::new(); slots], pending: VecDeque::new(), ready: VecDeque::new() }
    }

    fn file_and_path(&self, slot: usize) -> (&File, &Path) {
        (self.res.files[slot].as_ref().expect("operation on an empty file slot"), &self.paths[slot])
    }

    fn run(&mut self, p: Pending) {
        let (file, path) =
            (self.res.files[p.slot].as_ref().expect("operation on an empty file slot"), &self.paths[p.slot]);
        let range = p.buf_offset..p.buf_offset + p.len;
        let result = match p.kind {
            Kind::Read => self.sim.read(file, path, &mut self.res.bufs[p.buf].as_mut_slice()[range], p.offset),
            Kind::Write => self.sim.write(file, path, &self.res.bufs[p.buf].as_slice()[range], p.offset),
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

/// The path a descriptor was opened with (for matching the fault map).
fn path_of(file: &File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default()
}

/// `read_exact_at` on top of a read that may be short.
fn read_exact(sim: &Sim, file: &File, path: &Path, mut dst: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !dst.is_empty() {
        match sim.read(file, path, dst, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer")),
            Ok(n) => {
                dst = &mut dst[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Io for SimIo {
    fn backend(&self) -> Backend {
        Backend::Sim(self.sim.clone())
    }

    fn set_file(&mut self, slot: usize, file: Option<File>) -> io::Result<Option<File>> {
        self.paths[slot] = file.as_ref().map(path_of).unwrap_or_default();
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
        let Request { slot, buf, buf_offset, len, file_offset: offset, .. } = r;
        self.res.own.assert_idle(buf);
        check_range(&self.res.bufs[buf], buf_offset, len);
        let (file, path) = (self.res.files[slot].as_ref().expect("read from an empty file slot"), &self.paths[slot]);
        read_exact(&self.sim, file, path, &mut self.res.bufs[buf].as_mut_slice()[buf_offset..buf_offset + len], offset)
    }

    fn read_exact_into(&mut self, slot: usize, dst: &mut [u8], offset: u64) -> io::Result<()> {
        let (file, path) = self.file_and_path(slot);
        read_exact(&self.sim, file, path, dst, offset)
    }

    fn write_from(&mut self, slot: usize, src: &[u8], offset: u64) -> io::Result<usize> {
        let (file, path) = self.file_and_path(slot);
        self.sim.write(file, path, src, offset)
    }

    fn sync(&mut self, slot: usize) -> io::Result<()> {
        let (file, path) = self.file_and_path(slot);
        self.sim.sync(file, path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_where_the_map_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
        let path = path.canonicalize().unwrap();
        let faults = Faults {
            bad_reads: vec![BadRange { path: path.clone(), start: 8192, len: 512, times: 2 }],
            space_bytes: Some(6000),
            sync_eio_at: Some(0),
            ..Faults::default()
        };
        let sim = Sim::new(1, faults);
        let mut io = SimIo::new(sim.clone(), &[4096], 1).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        io.set_file(0, Some(f)).unwrap();
        let mut b = [0u8; 1024];
        // The bad sector fails twice, then reads.
        assert_eq!(io.read_exact_into(0, &mut b, 8000).unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(io.read_exact_into(0, &mut b, 8192 + 511).is_err());
        io.read_exact_into(0, &mut b, 8192).unwrap();
        io.read_exact_into(0, &mut b, 0).unwrap();
        // 6000 bytes of space: a whole write, then a short one, then ENOSPC.
        assert_eq!(io.write_from(0, &[1u8; 4096], 0).unwrap(), 4096);
        assert_eq!(io.write_from(0, &[1u8; 4096], 4096).unwrap(), 6000 - 4096);
        assert_eq!(io.write_from(0, &[1u8; 4096], 8192).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(io.sync(0).unwrap_err().raw_os_error(), Some(libc::EIO));
        io.sync(0).unwrap();
        assert_eq!(sim.injected().len(), 5, "{:?}", sim.injected());
    }

    #[test]
    fn a_crash_tears_one_write_and_stops_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        File::create(&path).unwrap();
        let sim = Sim::new(3, Faults { crash_at_write: Some(2), ..Faults::default() });
        let mut io = SimIo::unbuffered(sim.clone(), 1);
        io.set_file(0, Some(std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap())).unwrap();
        io.write_from(0, &[1u8; 4096], 0).unwrap();
        io.sync(0).unwrap();
        io.write_from(0, &[2u8; 4096], 4096).unwrap();
        assert!(io.write_from(0, &[3u8; 4096], 8192).is_err());
        assert!(sim.crashed());
        assert!(io.sync(0).is_err() && io.read_exact_into(0, &mut [0u8; 16], 0).is_err());
        let before = std::fs::metadata(&path).unwrap().len();
        assert!((8192..=12288).contains(&before), "{before}");
        sim.power_cut();
        let after = std::fs::metadata(&path).unwrap().len();
        // Only what was written since the fsync can go.
        assert!((4096..=before).contains(&after), "{after}");
        assert_eq!(std::fs::read(&path).unwrap()[..4096], [1u8; 4096]);
    }
}
