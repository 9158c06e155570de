//! Locks on an image set, so two runs never write the same set at once and
//! nothing deletes images while another process reads them.
//!
//! Two lock files in the set directory, held with `flock(2)` (the kernel
//! drops a lock when its holder exits, however it exits, so a lock can never
//! be left behind by a crash):
//!
//! - `tintype.lock`: held exclusively by every run that writes the set
//!   (`create`, `merge`, `prune`). The holder writes its pid, command and
//!   start time into it, so a refused run can say who holds the set; the
//!   holder empties it when it finishes. A non-empty file found free belongs
//!   to a run that died (kill -9, power loss): a stale lock, taken over.
//! - `tintype.readers.lock`: held shared by runs that read images
//!   (`restore`, `verify`, `serve`) and exclusively by runs that delete them (`merge`,
//!   `prune`). A `create` may run while images are read; a `prune` may not.
//!
//! Neither name starts with 16 hex digits, so the format ignores both files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Error, Result};

/// The writers' lock file name.
pub const WRITE_LOCK: &str = "tintype.lock";
/// The readers' lock file name.
pub const READ_LOCK: &str = "tintype.readers.lock";

/// What a run is about to do to a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read images (restore, verify, serve): shared with other readers and with `create`.
    Read,
    /// Add an image (create): exclusive among writers.
    Add,
    /// Replace or delete images (merge, prune): exclusive with everything.
    Delete,
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct SetLock {
    pub write: Option<(File, PathBuf)>,
    pub _read: Option<File>,
    /// A stale lock was taken over: who held it.
    pub stale: Option<String>,
}

impl Drop for SetLock {
    fn drop(&mut self) {
        // An empty file means "released cleanly"; the flock itself goes with
        // the descriptor.
        if let Some((f, _)) = &self.write {
            let _ = f.set_len(0);
        }
    }
}

pub(crate) fn open_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

/// Would a lock file we cannot create only mean a read-only set?
pub(crate) fn read_only(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM))
}

/// Who writes the set in `dir` right now: the holder record of a writers'
/// lock that the kernel says is held (`/proc/locks`), without touching the
/// lock itself. None when nobody holds it, or it cannot be told.
pub fn writer(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(WRITE_LOCK);
    let m = std::fs::metadata(&path).ok()?;
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF": device numbers in hex.
    let held = locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(dev) = f.iter().find(|t| t.matches(':').count() == 2) else { return false };
        let p: Vec<&str> = dev.split(':').collect();
        f.get(1) == Some(&"FLOCK")
            && u32::from_str_radix(p[0], 16).ok() == Some(major)
            && u32::from_str_radix(p[1], 16).ok() == Some(minor)
            && p[2].parse::<u64>().ok() == Some(m.ino())
    });
    if !held {
        return None;
    }
    let record = std::fs::read_to_string(&path).unwrap_or_default();
    Some(if record.trim().is_empty() { "another tintype run".into() } else { record.trim().replace('\n', ", ") })
}

/// Take the locks `access` needs on the set in `dir`, without waiting: a
/// set in use is refused with who uses it. `what` describes this run for
/// the holder record ("create /dev/nvme0n1").
pub fn lock_set(dir: &Path, access: Access, what: &str) -> Result<SetLock> {
    let mut lock = SetLock { write: None, _read: None, stale: None };
    if access != Access::Read {
        let path = dir.join(WRITE_LOCK);
        let mut f = open_lock(&path).map_err(|e| Error::io("open lock file", &path, e))?;
        if let Err(e) = rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim().replace('\n', ", ");
                return Err(Error::Busy {
                    path: dir.into(),
                    why: if holder.is_empty() {
                        format!("another tintype run is writing this set (it holds {WRITE_LOCK})")
                    } else {
                        format!("another tintype run is writing this set: {holder}")
                    },
                });
            }
            return Err(Error::io("lock", &path, e.into()));
        }
        let mut old = String::new();
        let _ = f.read_to_string(&mut old);
        if !old.trim().is_empty() {
            lock.stale = Some(old.trim().replace('\n', ", "));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let record = format!(
            "pid {}\ncommand tintype {what}\nsince {}\n",
            std::process::id(),
            crate::format::manifest::rfc3339_utc(now)
        );
        f.set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(record.as_bytes()))
            .map_err(|e| Error::io("write lock file", &path, e))?;
        lock.write = Some((f, path));
    }
    let path = dir.join(READ_LOCK);
    let f = match open_lock(&path) {
        Ok(f) => f,
        // A reader that may not write the set (another user's set, a
        // read-only mount): a shared lock needs only a read-only descriptor
        // on the lock file, which keeps merge and prune of the set's owner
        // out while it reads.
        Err(e) if access == Access::Read && read_only(&e) => match File::open(&path) {
            Ok(f) => f,
            // No lock file and none can be made: a read-only set (a mounted
            // archive), which nobody can delete from either.
            Err(_) => return Ok(lock),
        },
        Err(e) => return Err(Error::io("open lock file", &path, e)),
    };
    let op = if access == Access::Delete {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match rustix::fs::flock(&f, op) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(Error::Busy {
                path: dir.into(),
                why: if access == Access::Delete {
                    "another process is reading images of this set (restore, verify or serve); merge and prune \
                     cannot run until it has finished"
                        .into()
                } else {
                    "another tintype run is deleting or replacing images of this set (merge or prune)".into()
                },
            })
        }
        Err(e) => return Err(Error::io("lock", &path, e.into())),
    }
    // Add only needs the readers' lock checked against deleters, not held.
    if access != Access::Add {
        lock._read = Some(f);
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_each_other_and_deleters_exclude_readers() {
        let d = tempfile::tempdir().unwrap();
        let a = lock_set(d.path(), Access::Add, "create a").unwrap();
        assert!(a.stale.is_none());
        let e = lock_set(d.path(), Access::Add, "create b").unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("create a"), "{e}");
        // Reading while a create runs is fine; deleting is not.
        let r = lock_set(d.path(), Access::Read, "verify").unwrap();
        assert!(lock_set(d.path(), Access::Delete, "prune").is_err());
        drop(a);
        let e = lock_set(d.path(), Access::Delete, "prune").unwrap_err().to_string();
        assert!(e.contains("reading images"), "{e}");
        drop(r);
        let p = lock_set(d.path(), Access::Delete, "prune").unwrap();
        assert!(lock_set(d.path(), Access::Read, "verify").is_err());
        drop(p);
        // Released cleanly: the record is gone, so nothing looks stale.
        assert_eq!(std::fs::metadata(d.path().join(WRITE_LOCK)).unwrap().len(), 0);
    }

    #[test]
    fn a_dead_holders_record_is_a_stale_lock_taken_over() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(WRITE_LOCK), "pid 999999\ncommand tintype create x\n").unwrap();
        let l = lock_set(d.path(), Access::Add, "create y").unwrap();
        assert!(l.stale.as_deref().is_some_and(|s| s.contains("pid 999999")), "{:?}", l.stale);
    }
}
