//! Keeping a source still while it is read: which filesystems on it are
//! mounted (through the device, its partitions, or loop devices over the
//! same file), freezing them (FIFREEZE) for a run and thawing them after,
//! and dropping a block device's buffer cache (BLKFLSBUF) so metadata is
//! read from the device.

use std::path::Path;

use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::io::device::Source;
use crate::observe::Observer;
use std::path::PathBuf;

/// Filesystems of the source frozen for the run; thawed on drop (errors,
/// panics and signals included), each thaw said to the observer.
pub struct Frozen<'a> {
    pub mounts: Vec<(std::fs::File, String)>,
    pub obs: &'a dyn Observer,
}

impl std::fmt::Debug for Frozen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.mounts.iter().map(|(_, at)| at)).finish()
    }
}

/// FIFREEZE and FITHAW: `_IOWR('X', 119 / 120, int)`.
pub(crate) const FIFREEZE: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<libc::c_int>(b'X', 119);
pub(crate) const FITHAW: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<libc::c_int>(b'X', 120);

/// FIFREEZE or FITHAW on the mount point `dir`.
pub(crate) fn freeze_ioctl<const OPCODE: rustix::ioctl::Opcode>(dir: &std::fs::File) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: both take a pointer to an int, which Updater passes and which
    // outlives the call; `dir` is an open directory descriptor.
    unsafe { rustix::ioctl::ioctl(dir, rustix::ioctl::Updater::<OPCODE, libc::c_int>::new(&mut arg)) }
        .map_err(std::io::Error::from)
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for (dir, at) in &self.mounts {
            match freeze_ioctl::<FITHAW>(dir) {
                Ok(()) => self.obs.note(&format!("thawed {at}")),
                Err(e) => self.obs.note(&format!("could not thaw {at}: {e}; run `fsfreeze -u {at}`")),
            }
        }
    }
}

/// The loop devices whose backing file is `path` (same device and inode).
pub fn loops_backed_by(path: &Path) -> Vec<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata(path) else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let sys = e.path();
        let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) else { continue };
        let same = std::fs::metadata(backing.trim()).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino());
        let dev = std::fs::read_to_string(sys.join("dev")).ok().and_then(|d| {
            let (a, b) = d.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        });
        if let (true, Some(d)) = (same, dev) {
            out.push(d);
        }
    }
    out
}

/// What to do with a filesystem of the source that is mounted read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMounted {
    /// Refuse the source: the image would mix moments.
    Refuse,
    /// Freeze it (FIFREEZE) for the run; writers block until it ends.
    Freeze,
}

/// A filesystem of the source mounted read-write changes while it is read:
/// refuse, or freeze it for the run. Read-only mounts are fine.
pub fn check_mounts<'a>(source: &Source, when: WhenMounted, obs: &'a dyn Observer) -> Result<Frozen<'a>> {
    let mut frozen = Frozen { mounts: Vec::new(), obs };
    // Where such a filesystem may be mounted from: the device (and, for a
    // loop device, every other loop device over its backing file), or for
    // a file every loop device over it.
    let devices: Vec<(u32, u32)> = match source
        .identity
        .get("device_number")
        .and_then(|d| d.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
    {
        Some(d) => {
            let mut v = vec![d];
            if let Some(backing) = source.identity.get("loop_backing_file") {
                v.extend(loops_backed_by(Path::new(backing)).into_iter().filter(|l| *l != d));
            }
            v
        }
        None => loops_backed_by(&source.path),
    };
    let mut rw: Vec<String> = Vec::new();
    for d in devices {
        for (at, writable) in mounts_of(d) {
            if writable && !rw.contains(&at) {
                rw.push(at);
            }
        }
    }
    if rw.is_empty() {
        return Ok(frozen);
    }
    if when == WhenMounted::Refuse {
        return Err(Error::Unusable {
            reason: Refusal::Mounted,
            path: source.path.clone(),
            why: format!(
                "it (or a partition of it) is mounted read-write at {}. A filesystem in use changes while it is read, \
                 so the image would mix moments: files half-written, metadata that disagrees with the data. Unmount \
                 it, or image a snapshot (LVM: lvcreate --snapshot; device-mapper), or pass --freeze to freeze it \
                 (FIFREEZE) for the duration of the run: writers to it block until the run ends. Mounted read-only \
                 is fine.",
                rw.join(", ")
            ),
        });
    }
    for at in rw {
        let dir = std::fs::File::open(&at).map_err(|e| Error::io("open mount point", &at, e))?;
        freeze_ioctl::<FIFREEZE>(&dir).map_err(|e| Error::io("freeze (FIFREEZE)", &at, e))?;
        obs.note(&format!("froze {at} for the run; it is thawed when the run ends"));
        frozen.mounts.push((dir, at));
    }
    Ok(frozen)
}

/// Is the block device `rdev` (a partition of it, or a device stacked on
/// either) mounted? Returns a mount point.
pub fn mounted_at(rdev: (u32, u32)) -> Option<String> {
    mounts_of(rdev).into_iter().next().map(|(at, _)| at)
}

/// Every mount of the block device `rdev` or one of its partitions: the
/// mount point and whether it is mounted read-write.
pub fn mounts_of(rdev: (u32, u32)) -> Vec<(String, bool)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    // The device, its partitions, and everything stacked on any of them
    // (LVM, dm-crypt, md: /sys/dev/block/M:m/holders), transitively.
    let mut devs = vec![format!("{}:{}", rdev.0, rdev.1)];
    let mut i = 0;
    while i < devs.len() && devs.len() < 4096 {
        let sys = PathBuf::from(format!("/sys/dev/block/{}", devs[i]));
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&sys) {
            for e in rd.flatten() {
                if e.path().join("partition").exists() {
                    if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                        found.push(d.trim().to_string());
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(sys.join("holders")) {
            for e in rd.flatten() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    found.push(d.trim().to_string());
                }
            }
        }
        for d in found {
            if !devs.contains(&d) {
                devs.push(d);
            }
        }
        i += 1;
    }
    // One entry per mounted filesystem: bind mounts of it show the same
    // device again (freezing it twice would fail with EBUSY); any read-write
    // one makes it read-write.
    let mut seen: Vec<(String, String, bool)> = Vec::new();
    for l in info.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 5 && devs.iter().any(|d| d == f[2]) {
            let rw = f[5].split(',').any(|o| o == "rw");
            match seen.iter_mut().find(|(d, _, _)| d == f[2]) {
                Some(s) => s.2 |= rw,
                None => seen.push((f[2].to_string(), unescape_mount(f[4]), rw)),
            }
        }
    }
    seen.into_iter().map(|(_, at, rw)| (at, rw)).collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
pub(crate) fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drop what the kernel caches of block device `dev` (BLKFLSBUF): a mounted
/// filesystem (frozen for this run) writes its metadata past the device's
/// page cache, so its maps must be read from the device. An unprivileged
/// user (BLKFLSBUF needs CAP_SYS_ADMIN) cannot mount or freeze the device
/// either, so what is cached is what is on it: a note, not an error.
pub fn flush_buffer_cache(dev: &std::fs::File, path: &Path, obs: &dyn Observer) -> Result<()> {
    use rustix::ioctl::{ioctl, opcode, NoArg};
    const BLKFLSBUF: rustix::ioctl::Opcode = opcode::none(0x12, 97);
    // SAFETY: BLKFLSBUF takes no argument, which is what NoArg passes; `dev`
    // is an open descriptor.
    match unsafe { ioctl(dev, NoArg::<BLKFLSBUF>::new()) } {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            obs.note("the device's buffer cache was not flushed (BLKFLSBUF needs CAP_SYS_ADMIN); imaging on");
            Ok(())
        }
        Err(e) => Err(Error::io("flush the buffer cache (BLKFLSBUF) of", path, e.into())),
    }
}
