//! Opening and inspecting a restore target: a block device (opened
//! exclusively) or a regular file (created sparse if absent). What is on it,
//! whether it is mounted, and zeroing ranges without writing zeros byte by
//! byte (BLKZEROOUT, discard, holes).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Refusal;
use crate::error::{Error, Result};

/// What a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A regular file that existed before the restore.
    ExistingFile,
    /// A regular file this restore created: it reads as zeros where nothing
    /// is written.
    NewFile,
}

/// An opened restore target.
#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    pub size_bytes: u64,
    pub logical_sector_bytes: u32,
    /// Offsets and lengths of O_DIRECT writes must be multiples of this.
    pub dio_align_bytes: u32,
    pub direct: bool,
    /// The device number (block devices).
    pub rdev: Option<(u32, u32)>,
    pub file: File,
}

/// What an existing target is, seen without opening it for writing.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub kind: TargetKind,
    pub size_bytes: u64,
    pub logical_sector_bytes: u32,
    /// The device number (block devices).
    pub rdev: Option<(u32, u32)>,
}

impl Target {
    /// Inspect `path` without opening it for writing: kind, size, sector
    /// size. None when it does not exist.
    pub fn probe(path: &Path) -> Result<Option<Probe>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat target", path, e)),
        };
        if meta.file_type().is_block_device() {
            let f = File::open(path).map_err(|e| Error::io("open target", path, e))?;
            let mut f2 = &f;
            let size = f2.seek(SeekFrom::End(0)).map_err(|e| Error::io("size of", path, e))?;
            let sector = rustix::fs::ioctl_blksszget(&f).map_err(|e| Error::io("BLKSSZGET on", path, e.into()))?;
            let rdev = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            Ok(Some(Probe {
                kind: TargetKind::BlockDevice,
                size_bytes: size,
                logical_sector_bytes: sector,
                rdev: Some(rdev),
            }))
        } else if meta.file_type().is_file() {
            Ok(Some(Probe {
                kind: TargetKind::ExistingFile,
                size_bytes: meta.len(),
                logical_sector_bytes: 512,
                rdev: None,
            }))
        } else {
            Err(Error::Unusable {
                reason: Refusal::NotBlockDeviceOrFile,
                path: path.into(),
                why: "a restore target must be a block device or a regular file".into(),
            })
        }
    }

    /// Open for writing. A block device is opened with O_EXCL, which fails
    /// while it is mounted or held by another user (RAID, LVM, another
    /// exclusive opener). A missing file is created (never replacing one)
    /// and sized to `source_bytes`, so unwritten ranges are holes.
    pub fn open(path: &Path, source_bytes: u64) -> Result<Target> {
        let probed = Target::probe(path)?;
        let p =
            probed.unwrap_or(Probe { kind: TargetKind::NewFile, size_bytes: 0, logical_sector_bytes: 512, rdev: None });
        let (kind, mut size, sector, rdev) = (p.kind, p.size_bytes, p.logical_sector_bytes, p.rdev);
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            let mut flags = libc::O_CLOEXEC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            match kind {
                TargetKind::BlockDevice => flags |= libc::O_EXCL,
                TargetKind::NewFile => {
                    o.create_new(true);
                }
                TargetKind::ExistingFile => {}
            }
            o.custom_flags(flags).open(path)
        };
        // udev re-probes a device after a writer closes it and briefly holds
        // it; an exclusive open in that window fails with EBUSY. Wait that
        // out (at most ~2 s), unless a real holder (RAID, LVM, dm) is listed.
        let open = |direct: bool| {
            let mut tries = 0;
            loop {
                match open(direct) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 && holders(rdev).is_empty() => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    other => return other,
                }
            }
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if kind == TargetKind::NewFile && std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(path);
                }
                (open(false).map_err(|e| open_error(path, e, &holders(rdev)))?, false)
            }
            Err(e) => return Err(open_error(path, e, &holders(rdev))),
        };
        // A file has no O_EXCL for writers: two restores to one file would
        // interleave their chunks. The first holds an exclusive lock on it
        // for its whole run; another is refused.
        if kind != TargetKind::BlockDevice {
            use rustix::fs::{flock, FlockOperation};
            let locked = flock(&file, FlockOperation::NonBlockingLockExclusive);
            // A filesystem without locks (NFSv3 without lockd, some FUSE
            // filesystems) cannot take it: restore unlocked.
            let no_locks = |e: &rustix::io::Errno| {
                matches!(*e, rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS)
            };
            if let Err(e) = locked.or_else(|e| if no_locks(&e) { Ok(()) } else { Err(e) }) {
                return Err(Error::Unusable {
                    reason: Refusal::Locked,
                    path: path.into(),
                    why: match e {
                        rustix::io::Errno::WOULDBLOCK => "another program (another tintype restore?) holds a lock \
                                                          on this file and may be writing it; wait for it to finish"
                            .into(),
                        e => format!("cannot lock it for the restore: {e}"),
                    },
                });
            }
        }
        if kind != TargetKind::BlockDevice && size < source_bytes {
            file.set_len(source_bytes).map_err(|e| Error::io("size", path, e))?;
            size = source_bytes;
        }
        let dio_align_bytes = super::device::dio_alignment(&file).unwrap_or(sector).max(sector).max(512);
        Ok(Target {
            path: path.into(),
            kind,
            size_bytes: size,
            logical_sector_bytes: sector,
            dio_align_bytes,
            direct,
            rdev,
            file,
        })
    }

    /// Another descriptor on the same open target (for another lane).
    pub fn reopen(&self) -> Result<File> {
        self.file.try_clone().map_err(|e| Error::io("duplicate descriptor of", &self.path, e))
    }
}

/// What the kernel lists as holding a block device (dm, md, bcache, ...).
fn holders(rdev: Option<(u32, u32)>) -> Vec<String> {
    let Some((maj, min)) = rdev else { return Vec::new() };
    std::fs::read_dir(format!("/sys/dev/block/{maj}:{min}/holders"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn open_error(path: &Path, e: std::io::Error, holders: &[String]) -> Error {
    if e.raw_os_error() == Some(libc::EBUSY) {
        let why = if holders.is_empty() {
            "the device is busy: it is mounted, or held open exclusively by another program; unmount or \
             release it first"
                .to_string()
        } else {
            format!(
                "the device is busy: it is part of {} (a RAID, LVM or device-mapper volume); release it first",
                holders.join(", ")
            )
        };
        return Error::Unusable { path: path.into(), reason: Refusal::DeviceBusy, why };
    }
    Error::io("open target", path, e)
}

/// Zero `len` bytes at `offset` of `file` without writing zeros byte by
/// byte. Block devices: with `discard`, a discard that guarantees zeroed
/// reads (fallocate PUNCH_HOLE, which the kernel refuses where the device
/// cannot promise zeros), else BLKZEROOUT (write-zeroes offload where the
/// device has it). Files: punch a hole. Returns how it was done.
pub fn zero_range(
    file: &File,
    kind: TargetKind,
    offset: u64,
    len: u64,
    discard: bool,
) -> std::io::Result<&'static str> {
    use rustix::fs::{fallocate, FallocateFlags};
    if len == 0 {
        return Ok("nothing");
    }
    match kind {
        TargetKind::NewFile => Ok("hole"),
        TargetKind::ExistingFile => {
            fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)?;
            Ok("hole")
        }
        TargetKind::BlockDevice => {
            if discard && fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len).is_ok() {
                return Ok("discard");
            }
            blk_zeroout(file, offset, len)?;
            Ok("zero-out")
        }
    }
}

fn blk_zeroout(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::ioctl::{ioctl, opcode, Setter};
    const BLKZEROOUT: rustix::ioctl::Opcode = opcode::none(0x12, 127);
    // SAFETY: BLKZEROOUT takes a pointer to two u64s (start, length), which
    // is exactly what Setter passes; the kernel only reads them.
    unsafe { ioctl(file, Setter::<BLKZEROOUT, [u64; 2]>::new([offset, len])) }.map_err(std::io::Error::from)
}

/// What a device or file of `size` bytes says it holds: a filesystem or
/// partition table signature in its first MiB, or non-zero data in its first
/// or last MiB (where partition tables, boot code, superblocks and backup
/// GPTs live), and for a regular file non-zero data anywhere (its data
/// regions are read, holes skipped). None when it all looks empty.
pub fn describe_contents(path: &Path, size: u64) -> Result<Option<String>> {
    let mut f = File::open(path).map_err(|e| Error::io("read target", path, e))?;
    let mut read_at = |offset: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 1 << 20];
        let n = read_full_at(&mut f, &mut buf, offset).map_err(|e| Error::io_at("read target", path, offset, e))?;
        buf.truncate(n);
        Ok(buf)
    };
    if let Some(what) = signature(&read_at(0)?) {
        return Ok(Some(what));
    }
    if size > 1 << 20 && read_at(size - (1 << 20))?.iter().any(|&b| b != 0) {
        return Ok(Some("non-zero data in its last MiB".into()));
    }
    if f.metadata().is_ok_and(|m| m.is_file()) {
        if let Some(at) = first_nonzero(&mut f, path, size)? {
            return Ok(Some(format!("non-zero data (at byte {at})")));
        }
    } else if size > 2 << 20 {
        // A device cannot say where its data is, and reading it all would
        // take as long as the restore: 64 samples of 64 KiB spread over
        // the rest of it catch a device in use (a filesystem's metadata
        // and data are spread over it too).
        let mut buf = vec![0u8; 64 << 10];
        let span = size - (2 << 20) - buf.len() as u64;
        for i in 0..64u64 {
            let at = ((1 << 20) + span / 63 * i) / 4096 * 4096;
            let n = read_full_at(&mut f, &mut buf, at).map_err(|e| Error::io_at("read target", path, at, e))?;
            if let Some(j) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(format!("non-zero data (at byte {})", at + j as u64)));
            }
        }
    }
    Ok(None)
}

/// Read from `offset` until `buf` is full or the end; how much was read.
fn read_full_at(f: &mut File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    f.seek(SeekFrom::Start(offset))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The offset of the first non-zero byte of a regular file, reading only
/// its data regions (SEEK_DATA/SEEK_HOLE; the whole file where the
/// filesystem cannot tell).
fn first_nonzero(f: &mut File, path: &Path, size: u64) -> Result<Option<u64>> {
    use rustix::fs::{seek, SeekFrom as Whence};
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(&*f, Whence::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            Err(_) => pos,
        };
        let end = match seek(&*f, Whence::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => size,
        };
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = read_full_at(f, &mut buf[..want], at).map_err(|e| Error::io_at("read target", path, at, e))?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
        pos = end.max(start + 1);
    }
    Ok(None)
}

/// Recognise common on-disk signatures in the first bytes of a device.
pub fn signature(b: &[u8]) -> Option<String> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    let found = if at(1080, &[0x53, 0xef]) {
        "an ext2/3/4 filesystem (superblock magic at offset 1080)"
    } else if at(0, b"XFSB") {
        "an XFS filesystem (magic at offset 0)"
    } else if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        "a GPT partition table"
    } else if at(65600, b"_BHRfS_M") {
        "a btrfs filesystem"
    } else if at(0, b"LUKS\xba\xbe") {
        "a LUKS encrypted volume"
    } else if at(4086, b"SWAPSPACE2") || at(65526, b"SWAPSPACE2") {
        "a swap area"
    } else if at(3, b"NTFS    ") {
        "an NTFS filesystem"
    } else if at(54, b"FAT") || at(82, b"FAT32") {
        "a FAT filesystem"
    } else if at(32769, b"CD001") {
        "an ISO 9660 filesystem"
    } else if at(510, &[0x55, 0xaa]) {
        "an MBR partition table or boot sector"
    } else if b.iter().any(|&x| x != 0) {
        "non-zero data in its first MiB"
    } else {
        return None;
    };
    Some(found.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_recognised() {
        let mut b = vec![0u8; 1 << 20];
        assert_eq!(signature(&b), None);
        b[1080] = 0x53;
        b[1081] = 0xef;
        assert!(signature(&b).unwrap().contains("ext2/3/4"));
        let mut b = vec![0u8; 1 << 20];
        b[512..520].copy_from_slice(b"EFI PART");
        assert!(signature(&b).unwrap().contains("GPT"));
        let mut b = vec![0u8; 1 << 20];
        b[700_000] = 1;
        assert!(signature(&b).unwrap().contains("non-zero"));
        assert_eq!(signature(&[]), None);
    }
}
