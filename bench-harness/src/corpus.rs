//! Benchmark corpora on loop devices: a realistic ext4 disk with system
//! files, incompressible files, and free space holding stale data.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A loop device over a backing file we created; detached (and the file
/// removed) on drop.
#[derive(Debug)]
pub struct LoopCorpus {
    pub dev: PathBuf,
    pub backing: PathBuf,
    pub size_bytes: u64,
    pub used_bytes: u64,
}

impl Drop for LoopCorpus {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Write `len` deterministic pseudo-random bytes (xorshift64) to `path`,
/// streaming, so the harness's own memory stays small (a child's peak RSS
/// as the kernel reports it starts from the parent's).
pub fn write_random(path: &Path, len: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?);
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Copy regular files from `srcs` (sorted walk) into `dest` until `budget` bytes.
fn copy_files(srcs: &[&str], dest: &Path, budget: u64) -> Result<u64> {
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
    Ok(used)
}

/// An all-zero device of `size_bytes` to restore onto.
pub fn blank(dir: &Path, size_bytes: u64, sector: u32) -> Result<LoopCorpus> {
    let backing = dir.join(format!("tintype-bench-target-{}.img", std::process::id()));
    std::fs::File::create(&backing)?.set_len(size_bytes)?;
    let dev = run("losetup", &["--find", "--show", "--sector-size", &sector.to_string(), backing.to_str().unwrap()])?;
    Ok(LoopCorpus { dev: PathBuf::from(dev.trim()), backing, size_bytes, used_bytes: 0 })
}

/// xxh3-128 of a whole device or file, read with plain buffered reads.
pub fn hash_device(path: &Path) -> Result<u128> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest128());
        }
        h.update(&buf[..n]);
    }
}

/// Make the realistic ext4 disk: `size_bytes` in `dir` (use /dev/shm so CPU
/// cost dominates), with logical sector size `sector`.
pub fn ext4_disk(dir: &Path, size_bytes: u64, sector: u32, seed: u64) -> Result<LoopCorpus> {
    let backing = dir.join(format!("tintype-bench-ext4-{}.img", std::process::id()));
    std::fs::File::create(&backing)?.set_len(size_bytes)?;
    let dev = run("losetup", &["--find", "--show", "--sector-size", &sector.to_string(), backing.to_str().unwrap()])?;
    let mut corpus = LoopCorpus { dev: PathBuf::from(dev.trim()), backing, size_bytes, used_bytes: 0 };
    let dev = corpus.dev.to_str().unwrap().to_string();
    run("mkfs.ext4", &["-q", "-F", &dev])?;
    let mnt = std::env::temp_dir().join(format!("tintype-bench-mnt-{}", std::process::id()));
    std::fs::create_dir_all(&mnt)?;
    run("mount", &[&dev, mnt.to_str().unwrap()])?;
    let m = Mounted(mnt.clone());
    // Stale data: files written, synced, then deleted, so free space is not zero.
    let stale = mnt.join("stale");
    std::fs::create_dir_all(&stale)?;
    copy_files(&["/usr/lib"], &stale, size_bytes * 40 / 100)?;
    write_random(&stale.join("random.bin"), size_bytes * 35 / 100, seed)?;
    run("sync", &[])?;
    std::fs::remove_dir_all(&stale)?;
    run("sync", &[])?;
    // Live data: system files and incompressible files.
    let sys = mnt.join("sys");
    std::fs::create_dir_all(&sys)?;
    copy_files(&["/usr/share", "/usr/bin", "/usr/lib/python3", "/usr/lib"], &sys, size_bytes * 46 / 100)?;
    write_random(&mnt.join("media.bin"), size_bytes * 15 / 100, seed ^ 0xabc)?;
    run("sync", &[])?;
    let df = run("df", &["--output=used", "-B1", mnt.to_str().unwrap()])?;
    corpus.used_bytes = df.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    drop(m);
    Ok(corpus)
}
