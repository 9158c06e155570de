//! Deterministic sample data for demos, tests and benchmarks: the kinds of
//! content a disk holds, generated from a seed so every run sees the same bytes.

use std::io::Write;
use std::path::Path;

/// A xorshift64 generator: fast, deterministic, not for secrets.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

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

/// Kinds of content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// All zeros (written as a sparse file).
    Zero,
    /// Incompressible pseudo-random bytes.
    Random,
    /// Text-like: words and newlines, compresses well.
    Text,
    /// Runs of 1–4 MiB of zeros, text, random and repetitive binary records.
    Mixed,
}

fn fill(kind: u64, p: &mut [u8], next: &mut impl FnMut() -> u64) {
    match kind {
        0 => p.fill(0),
        1 => {
            let mut i = 0;
            while i < p.len() {
                let w = WORDS[(next() % 16) as usize].as_bytes();
                let n = w.len().min(p.len() - i);
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
}

/// Write `size` bytes of `content` to a new file at `path`, from `seed`.
pub fn write(path: &Path, content: Content, size: u64, seed: u64) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    if content == Content::Zero {
        return file.set_len(size);
    }
    let mut f = std::io::BufWriter::with_capacity(4 << 20, file);
    let mut next = xorshift(seed);
    let mut left = size;
    let mut piece = vec![0u8; 4 << 20];
    while left > 0 {
        let (len, kind) = match content {
            Content::Mixed => ((((next() % 4) + 1) << 20).min(left) as usize, next() % 4),
            Content::Text => (piece.len().min(left as usize), 1),
            Content::Random => (piece.len().min(left as usize), 2),
            Content::Zero => unreachable!(),
        };
        fill(kind, &mut piece[..len], &mut next);
        f.write_all(&piece[..len])?;
        left -= len as u64;
    }
    f.flush()
}

/// `len` pseudo-random (incompressible) bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut next = xorshift(seed);
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        let x = next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
    v
}

/// Write `size` bytes of mixed content (see [`Content::Mixed`]).
pub fn write_mixed(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    write(path, Content::Mixed, size, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_of_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        for (i, c) in [Content::Zero, Content::Random, Content::Text, Content::Mixed].into_iter().enumerate() {
            let a = dir.path().join(format!("a{i}"));
            let b = dir.path().join(format!("b{i}"));
            write(&a, c, 5_000_123, 9).unwrap();
            write(&b, c, 5_000_123, 9).unwrap();
            let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
            assert_eq!(a.len(), 5_000_123);
            assert_eq!(a, b, "{c:?} is deterministic");
        }
    }
}
