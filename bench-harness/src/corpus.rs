//! Benchmark corpora and the devices they sit on: generated content (zero,
//! random, text, mixed) or a realistic ext4 disk, on a loop device with a
//! chosen logical sector size when we are root, else on a plain file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tintype::sample::{self, Content};

/// What a corpus holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusKind {
    /// All zeros: the read path alone.
    Zero,
    /// Incompressible bytes.
    Random,
    /// Text-like, compresses well.
    Text,
    /// Runs of zeros, text, random and binary.
    Mixed,
    /// A realistic ext4 disk: system files, incompressible files, stale data
    /// in free space, ~30% free (needs root).
    Ext4,
}

/// A device (or file) holding a corpus; its loop device is detached and its
/// backing file removed on drop, on every path.
#[derive(Debug)]
pub struct Device {
    /// What the tools read or write: the loop device, or the file itself.
    pub path: PathBuf,
    pub backing: PathBuf,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub is_loop: bool,
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.is_loop {
            let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is `path` on tmpfs (memory)? Loop devices over anything else use direct
/// I/O to their backing file, so the page cache does not flatter the disk.
fn on_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    rustix::fs::statfs(path.parent().unwrap_or(path)).is_ok_and(|s| s.f_type == TMPFS_MAGIC)
}

fn attach(backing: PathBuf, size_bytes: u64, sector: u32, used_bytes: u64) -> Result<Device> {
    if !is_root() {
        return Ok(Device { path: backing.clone(), backing, size_bytes, used_bytes, is_loop: false });
    }
    let direct = if on_tmpfs(&backing) { "--direct-io=off" } else { "--direct-io=on" };
    let attached =
        run("losetup", &["--find", "--show", direct, "--sector-size", &sector.to_string(), backing.to_str().unwrap()]);
    let dev = attached.inspect_err(|_| {
        let _ = std::fs::remove_file(&backing);
    })?;
    Ok(Device { path: PathBuf::from(dev.trim()), backing, size_bytes, used_bytes, is_loop: true })
}

/// A corpus of `kind` and `size_bytes` in `dir`.
pub fn make(kind: CorpusKind, dir: &Path, size_bytes: u64, sector: u32, seed: u64) -> Result<Device> {
    let backing = dir.join(format!("tintype-bench-{kind:?}-{}.img", std::process::id()).to_lowercase());
    let content = match kind {
        CorpusKind::Ext4 => return ext4_disk(backing, size_bytes, sector, seed),
        CorpusKind::Zero => Content::Zero,
        CorpusKind::Random => Content::Random,
        CorpusKind::Text => Content::Text,
        CorpusKind::Mixed => Content::Mixed,
    };
    if let Err(e) = sample::write(&backing, content, size_bytes, seed) {
        let _ = std::fs::remove_file(&backing);
        return Err(e).with_context(|| format!("write {}", backing.display()));
    }
    attach(backing, size_bytes, sector, size_bytes)
}

/// An all-zero device of `size_bytes` to restore onto.
pub fn blank(dir: &Path, size_bytes: u64, sector: u32) -> Result<Device> {
    let backing = dir.join(format!("tintype-bench-target-{}.img", std::process::id()));
    if let Err(e) = std::fs::File::create(&backing).and_then(|f| f.set_len(size_bytes)) {
        let _ = std::fs::remove_file(&backing);
        return Err(e).with_context(|| format!("create {}", backing.display()));
    }
    attach(backing, size_bytes, sector, 0)
}

/// Overwrite the first `size` bytes of `path` with a non-zero pattern.
pub fn fill_pattern(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("open {}", path.display()))?;
    let block: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(path: PathBuf) -> Result<TempDir> {
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Does the restored `target` hold what image `set` (its newest image) says
/// the `source` held: every chunk the image stored or recorded zero equal to
/// the source's bytes, every chunk recorded unused (no filesystem uses it,
/// so it was not imaged) zeros?
pub fn matches_image(source: &Path, target: &Path, set: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    use tintype::format::index::ChunkState;
    let img = tintype::set::ImageSet::open(set)?.resolve(None)?;
    let idx = img.read_index()?;
    let (src, dst) = (std::fs::File::open(source)?, std::fs::File::open(target)?);
    let cs = img.manifest.chunk_size_bytes as usize;
    let (mut a, mut b) = (vec![0u8; cs], vec![0u8; cs]);
    for (chunk, e) in idx.entries.iter().enumerate() {
        let Ok(e) = e else { return Ok(false) };
        let (start, len) = img.chunk_extent(chunk as u64);
        let len = len as usize;
        dst.read_exact_at(&mut b[..len], start)?;
        let same = if e.state == ChunkState::Unused {
            b[..len].iter().all(|&x| x == 0)
        } else {
            src.read_exact_at(&mut a[..len], start)?;
            a[..len] == b[..len]
        };
        if !same {
            eprintln!("bench: chunk {chunk} ({:?}) of the restored device differs", e.state);
            return Ok(false);
        }
    }
    Ok(true)
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Copy regular files from `srcs` (sorted walk) into `dest` until `budget` bytes.
fn copy_files(srcs: &[&str], dest: &Path, budget: u64) -> u64 {
    let mut used = 0u64;
    let mut stack: Vec<PathBuf> = srcs.iter().rev().map(PathBuf::from).collect();
    let mut n = 0u64;
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            let mut kids: Vec<PathBuf> = match std::fs::read_dir(&p) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(_) => continue,
            };
            kids.sort();
            stack.extend(kids.into_iter().rev());
        } else if meta.is_file() && used + meta.len() <= budget {
            n += 1;
            let to = dest.join(format!("{n:07}-{}", p.file_name().unwrap_or_default().to_string_lossy()));
            if std::fs::copy(&p, &to).is_ok() {
                used += meta.len();
            }
            if used >= budget * 99 / 100 {
                break;
            }
        }
    }
    used
}

/// The realistic ext4 disk.
fn ext4_disk(backing: PathBuf, size_bytes: u64, sector: u32, seed: u64) -> Result<Device> {
    if !is_root() {
        bail!("the ext4 corpus needs root (loop device, mkfs.ext4, mount); use --corpus mixed without root");
    }
    std::fs::File::create(&backing)?.set_len(size_bytes)?;
    let mut dev = attach(backing, size_bytes, sector, 0)?;
    let path = dev.path.to_str().unwrap().to_string();
    run("mkfs.ext4", &["-q", "-F", &path])?;
    let mnt = std::env::temp_dir().join(format!("tintype-bench-mnt-{}", std::process::id()));
    std::fs::create_dir_all(&mnt)?;
    run("mount", &[&path, mnt.to_str().unwrap()])?;
    let m = Mounted(mnt.clone());
    // Stale data: files written, synced, then deleted, so free space is not zero.
    let stale = mnt.join("stale");
    std::fs::create_dir_all(&stale)?;
    copy_files(&["/usr/lib"], &stale, size_bytes * 40 / 100);
    sample::write(&stale.join("random.bin"), Content::Random, size_bytes * 35 / 100, seed)?;
    run("sync", &[])?;
    std::fs::remove_dir_all(&stale)?;
    run("sync", &[])?;
    // Live data: system files and an incompressible file.
    let sys = mnt.join("sys");
    std::fs::create_dir_all(&sys)?;
    copy_files(&["/usr/share", "/usr/bin", "/usr/lib/python3", "/usr/lib"], &sys, size_bytes * 46 / 100);
    sample::write(&mnt.join("media.bin"), Content::Random, size_bytes * 15 / 100, seed ^ 0xabc)?;
    run("sync", &[])?;
    let df = run("df", &["--output=used", "-B1", mnt.to_str().unwrap()])?;
    dev.used_bytes = df.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    drop(m);
    Ok(dev)
}
