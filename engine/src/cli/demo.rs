//! `tintype demo`: generate a sample source with mixed content, image it,
//! verify it, read every chunk back, and say what happened and how fast.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use tintype::codec::Decoder;
use tintype::format::index::ChunkState;
use tintype::io::IoChoice;
use tintype::set::ImageSet;
use tintype::{CreateOptions, VerifyOptions};

use super::output::{human, print_create, print_verify, Console};

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

    println!("demo: reading every chunk back from the image and comparing with the sample");
    let t = Instant::now();
    let img = ImageSet::open(&set)?.resolve(None)?;
    let index = img.read_index()?;
    let original = std::fs::read(&sample)?;
    let mut dec = Decoder::new()?;
    let mut buf = vec![0u8; img.manifest.chunk_size_bytes as usize];
    for (chunk, e) in index.entries.iter().enumerate() {
        let e = e.as_ref().map_err(|s| anyhow::anyhow!("chunk {chunk}: {s}"))?;
        let n = img.read_chunk(e, chunk as u64, &mut buf, &mut dec)?;
        let (start, _) = img.chunk_extent(chunk as u64);
        if buf[..n] != original[start as usize..start as usize + n] {
            bail!("chunk {chunk} read back differs from the sample");
        }
        debug_assert!(e.state != ChunkState::Unset);
    }
    println!("demo: all {} bytes identical after the round trip ({:.2} s)", original.len(), t.elapsed().as_secs_f64());
    if keep {
        println!("demo: kept {} and {}", sample.display(), set.display());
        // Keep the temporary directory too.
        std::mem::forget(tmp.take());
    } else {
        std::fs::remove_file(&sample).ok();
        std::fs::remove_dir_all(&set).ok();
    }
    Ok(super::exit::OK)
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
