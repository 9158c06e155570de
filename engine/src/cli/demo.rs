//! `tintype demo`: generate a sample source with mixed content, image it,
//! verify it, restore it, compare, and say what happened and how fast.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use tintype::io::IoChoice;
use tintype::{CreateOptions, RestoreOptions, VerifyOptions};

use super::output::{human, print_create, print_restore, print_verify, Console};

/// Write `size` bytes of mixed content to `path`: runs of zeros, text,
/// random (incompressible) bytes and repetitive binary, in 1–4 MiB pieces,
/// deterministically from `seed`. The size need not be a chunk multiple.
pub fn write_sample(path: &std::path::Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    const WORDS: [&str; 16] = [
        "disk ",
        "image ",
        "sector ",
        "the ",
        "block ",
        "of ",
        "chunk ",
        "kernel ",
        "ring ",
        "lane ",
        "segment ",
        "and ",
        "frame ",
        "index ",
        "to ",
        "restore\n",
    ];
    let mut left = size;
    let mut piece = vec![0u8; 4 << 20];
    while left > 0 {
        let len = (((next() % 4) + 1) << 20).min(left) as usize;
        let p = &mut piece[..len];
        match next() % 4 {
            0 => p.fill(0),
            1 => {
                let mut i = 0;
                while i < len {
                    let w = WORDS[(next() % 16) as usize].as_bytes();
                    let n = w.len().min(len - i);
                    p[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            2 => {
                for c in p.chunks_mut(8) {
                    let v = next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
            }
            _ => {
                let rec = next().to_le_bytes();
                for (i, b) in p.iter_mut().enumerate() {
                    *b = if i % 64 < 8 { rec[i % 8] } else { (i / 4096) as u8 };
                }
            }
        }
        f.write_all(p)?;
        left -= len as u64;
    }
    f.flush()
}

pub fn run(size: u64, dir: Option<PathBuf>, keep: bool, level: i32, io: IoChoice) -> anyhow::Result<u8> {
    if size == 0 {
        bail!(tintype::Error::InvalidSetting("--size must be more than 0".into()));
    }
    let mut tmp = None;
    let base = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            d
        }
        None => tmp.insert(tempdir()?).0.clone(),
    };
    // An odd size, so the last chunk is short, as on real devices of odd sizes.
    let size = size + 12_345;
    let sample = base.join("sample.img");
    let set = base.join("sample-set");
    println!(
        "demo: writing a {} sample with zeros, text, random and repetitive binary data to {}",
        human(size),
        sample.display()
    );
    write_sample(&sample, size, 0x7147_7970_6500_0001).with_context(|| format!("write {}", sample.display()))?;

    println!("demo: tintype create {} {} --level {level}", sample.display(), set.display());
    let mut o = CreateOptions::new(&sample, &set);
    o.level = level;
    o.io = io;
    let obs = Console::new("imaging", false);
    let report = tintype::create(&o, &obs)?;
    obs.finish();
    print_create(&report, false);

    println!("demo: tintype verify {}", set.display());
    let mut v = VerifyOptions::new(&set);
    v.io = io;
    let obs = Console::new("verifying", false);
    let vr = tintype::verify(&v, &obs)?;
    obs.finish();
    print_verify(&vr, false);
    if !vr.is_clean() {
        bail!("the demo image failed verification");
    }

    let restored = base.join("sample-restored.img");
    println!("demo: tintype restore {} {} --verify-after", set.display(), restored.display());
    let mut r = RestoreOptions::new(&set, &restored);
    r.verify_after = true;
    r.io = io;
    let obs = Console::new("restoring", false);
    let rr = tintype::restore(&r, &obs)?;
    obs.finish();
    print_restore(&rr, false);
    if !rr.is_clean() {
        bail!("the demo restore did not read back intact");
    }
    let t = Instant::now();
    let same = files_equal(&sample, &restored)?;
    if !same {
        bail!("{} differs from {}", restored.display(), sample.display());
    }
    println!(
        "demo: compared byte for byte: {} identical to the sample ({} bytes, {:.2} s)",
        restored.display(),
        size,
        t.elapsed().as_secs_f64()
    );
    if keep {
        println!("demo: kept {}, {} and {}", sample.display(), set.display(), restored.display());
        // Keep the temporary directory too.
        std::mem::forget(tmp.take());
    } else {
        std::fs::remove_file(&sample).ok();
        std::fs::remove_file(&restored).ok();
        std::fs::remove_dir_all(&set).ok();
    }
    Ok(super::exit::OK)
}

/// Compare two files byte for byte, a few MiB at a time.
fn files_equal(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let base = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let d = base.join(format!("tintype-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    Ok(TempDir(d))
}
