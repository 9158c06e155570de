//! Opening and probing a source: block device or regular file, its size,
//! sector sizes, O_DIRECT alignment and identity.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Refusal;
use crate::error::{Error, Result};

/// What kind of thing a source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    BlockDevice,
    File,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::BlockDevice => "block-device",
            SourceKind::File => "file",
        }
    }
}

/// How to open a file for reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// O_DIRECT where the filesystem allows it, else through the page cache.
    Direct,
    /// Through the page cache.
    Buffered,
}

/// A source opened read-only, with what the kernel told us about it.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub size_bytes: u64,
    pub logical_sector_bytes: u32,
    pub physical_sector_bytes: u32,
    /// Offsets and lengths of O_DIRECT reads must be multiples of this.
    pub dio_align_bytes: u32,
    /// Opened with O_DIRECT; false when the filesystem refused it.
    pub direct: bool,
    pub identity: BTreeMap<String, String>,
    pub file: File,
}

impl Source {
    /// Open `path` read-only (O_DIRECT when `mode` asks and the kernel allows it).
    pub fn open(path: &Path, mode: OpenMode) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("open source", path, e))?;
        let kind = if meta.file_type().is_block_device() {
            SourceKind::BlockDevice
        } else if meta.file_type().is_file() {
            SourceKind::File
        } else {
            return Err(Error::Unusable {
                path: path.into(),
                reason: Refusal::NotBlockDeviceOrFile,
                why: "not a block device or regular file".into(),
            });
        };
        let (mut file, direct) = open_read_only(path, mode)?;
        let (size_bytes, logical, physical) = match kind {
            SourceKind::BlockDevice => {
                let size = file.seek(SeekFrom::End(0)).map_err(|e| Error::io("size of", path, e))?;
                let logical =
                    rustix::fs::ioctl_blksszget(&file).map_err(|e| Error::io("BLKSSZGET on", path, e.into()))?;
                let physical = rustix::fs::ioctl_blkpbszget(&file).unwrap_or(logical);
                (size, logical, physical)
            }
            SourceKind::File => (meta.len(), 512, meta.blksize().clamp(512, 65536) as u32),
        };
        let dio_align_bytes = dio_alignment(&file).unwrap_or(logical).max(logical).max(512);
        let identity = identity(path, &meta, kind);
        Ok(Source {
            path: path.into(),
            kind,
            size_bytes,
            logical_sector_bytes: logical,
            physical_sector_bytes: physical,
            dio_align_bytes,
            direct,
            identity,
            file,
        })
    }

    /// Another descriptor on the same open source, for another lane.
    pub fn reopen(&self) -> Result<File> {
        self.file.try_clone().map_err(|e| Error::io("duplicate descriptor of", &self.path, e))
    }
}

/// Open read-only; with O_DIRECT when asked, falling back to buffered reads
/// when the filesystem refuses O_DIRECT (EINVAL). Returns whether it is direct.
pub fn open_read_only(path: &Path, mode: OpenMode) -> Result<(File, bool)> {
    if mode == OpenMode::Direct {
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(Error::io("open", path, e)),
        }
    }
    let f = OpenOptions::new().read(true).open(path).map_err(|e| Error::io("open", path, e))?;
    Ok((f, false))
}

/// The O_DIRECT offset alignment from statx (Linux 6.1+), if reported.
pub(crate) fn dio_alignment(file: &File) -> Option<u32> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let st = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if st.stx_mask & StatxFlags::DIOALIGN.bits() == 0 || st.stx_dio_offset_align == 0 {
        return None;
    }
    Some(st.stx_dio_offset_align.max(st.stx_dio_mem_align))
}

/// What tells whether a source was written since an earlier moment, as far
/// as the kernel can say: for a file its modification and change times; for
/// a block device the sectors written to it since boot (sysfs `stat`), and
/// to every device a write could reach it through — the whole disk of a
/// partition, the devices under a device-mapper or md device — with the
/// boot's ID, and for a loop device its backing file's times too. Equal
/// stamps: nothing was written in between (through this kernel). None when
/// nothing could be read.
pub fn write_stamp(path: &Path) -> Option<WriteStamp> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.file_type().is_file() {
        // A filesystem that keeps whole seconds cannot tell a write in the
        // second the stamp is taken from none ("racy" in git's words).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let coarse = meta.mtime_nsec() == 0 && meta.ctime_nsec() == 0;
        let racy = coarse && now.saturating_sub(meta.mtime().max(meta.ctime()).max(0) as u64) < 2;
        return Some(WriteStamp { boot: None, stamp: file_times(&meta), racy });
    }
    if !meta.file_type().is_block_device() {
        return None;
    }
    let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let mut parts = Vec::new();
    let mut seen = Vec::new();
    block_writes(&sys, &mut parts, &mut seen, 0);
    if parts.is_empty() {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|b| b.trim().to_string());
    Some(WriteStamp { boot, stamp: parts.join(", "), racy: false })
}

fn file_times(m: &std::fs::Metadata) -> String {
    format!("mtime {}.{:09} ctime {}.{:09}", m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// The sectors-written counter of the block device at sysfs directory
/// `sys`, then of what lies under it: a partition's disk, a stacked
/// device's slaves (each walked the same way), a loop device's backing file.
fn block_writes(sys: &Path, out: &mut Vec<String>, seen: &mut Vec<PathBuf>, depth: u32) {
    if depth > 16 || seen.iter().any(|s| s == sys) {
        return;
    }
    seen.push(sys.to_path_buf());
    let name = sys.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // Writes still in the device's page cache reach the counter only when
    // written back: write them back first (fsync on a read-only descriptor),
    // so a write made just before is counted now, not during the run.
    if let Ok(dev) = std::fs::read_to_string(sys.join("dev")) {
        let dev = dev.trim();
        for node in [format!("/dev/block/{dev}"), format!("/dev/{name}")] {
            let is_it = std::fs::metadata(&node).is_ok_and(|m| {
                m.file_type().is_block_device() && format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev())) == dev
            });
            if let (true, Ok(f)) = (is_it, std::fs::File::open(&node)) {
                let _ = f.sync_all();
                break;
            }
        }
    }
    // Field 7 of the stat file: sectors written (Documentation/block/stat.rst).
    if let Some(w) =
        std::fs::read_to_string(sys.join("stat")).ok().and_then(|s| s.split_whitespace().nth(6).map(str::to_string))
    {
        out.push(format!("{name} sectors written {w}"));
    }
    if let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) {
        if let Ok(m) = std::fs::metadata(backing.trim()) {
            out.push(format!("{name} backing file {}", file_times(&m)));
        }
    }
    if sys.join("partition").exists() {
        if let Some(disk) = sys.parent() {
            block_writes(disk, out, seen, depth + 1);
        }
    }
    if let Ok(rd) = std::fs::read_dir(sys.join("slaves")) {
        let mut lower: Vec<PathBuf> = rd.flatten().filter_map(|e| std::fs::canonicalize(e.path()).ok()).collect();
        lower.sort();
        for l in lower {
            block_writes(&l, out, seen, depth + 1);
        }
    }
}

/// See [`write_stamp`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteStamp {
    /// The kernel boot the counters belong to (block devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    pub stamp: String,
    /// Taken within the second of the file's last change on a filesystem
    /// that keeps whole seconds: a later write may leave it unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub racy: bool,
}

/// Identity facts the kernel exposes in sysfs for a block device (serial,
/// WWN, model, loop backing file) or, for a file, its device and inode.
fn identity(path: &Path, meta: &std::fs::Metadata, kind: SourceKind) -> BTreeMap<String, String> {
    let mut id = BTreeMap::new();
    match kind {
        SourceKind::File => {
            id.insert("device".into(), format!("{}:{}", libc::major(meta.dev()), libc::minor(meta.dev())));
            id.insert("inode".into(), meta.ino().to_string());
        }
        SourceKind::BlockDevice => {
            let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            id.insert("device_number".into(), format!("{maj}:{min}"));
            let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
            for (key, rel) in [
                ("serial", "device/serial"),
                ("serial", "serial"),
                ("wwid", "wwid"),
                ("wwid", "device/wwid"),
                ("model", "device/model"),
                ("loop_backing_file", "loop/backing_file"),
            ] {
                if id.contains_key(key) {
                    continue;
                }
                if let Ok(v) = std::fs::read_to_string(sys.join(rel)) {
                    let v = v.trim();
                    if !v.is_empty() {
                        id.insert(key.into(), v.to_string());
                    }
                }
            }
            if let Some(name) =
                path.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            {
                id.insert("kernel_name".into(), name);
            }
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition's stamp includes its disk's counter; a device-mapper
    /// device's includes its slaves' (and theirs); loops stop.
    #[test]
    fn block_writes_walk_to_every_device_a_write_could_come_through() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dev = |rel: &str, written: u64| {
            let d = root.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stat"), format!("1 2 3 4 5 6 {written} 8 9 10 11\n")).unwrap();
            d
        };
        let disk = dev("sda", 100);
        let part = dev("sda/sda2", 7);
        std::fs::write(part.join("partition"), "2\n").unwrap();
        let dm = dev("dm-0", 3);
        std::fs::create_dir(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(&part, dm.join("slaves/sda2")).unwrap();
        let other = dev("sdb", 50);
        std::os::unix::fs::symlink(&other, dm.join("slaves/sdb")).unwrap();
        // A cycle (impossible in sysfs, but never followed forever).
        std::fs::create_dir(other.join("slaves")).unwrap();
        std::os::unix::fs::symlink(&dm, other.join("slaves/dm-0")).unwrap();

        let walk = |p: &Path| {
            let (mut out, mut seen) = (Vec::new(), Vec::new());
            block_writes(&std::fs::canonicalize(p).unwrap(), &mut out, &mut seen, 0);
            out
        };
        assert_eq!(walk(&part), vec!["sda2 sectors written 7", "sda sectors written 100"]);
        assert_eq!(
            walk(&dm),
            vec![
                "dm-0 sectors written 3",
                "sda2 sectors written 7",
                "sda sectors written 100",
                "sdb sectors written 50"
            ]
        );
        assert_eq!(walk(&disk), vec!["sda sectors written 100"]);
    }
}
