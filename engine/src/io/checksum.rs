//! Whole-file checksums: a file read front to back and hashed on the way.
//! What the commit step, the set's file checks and merge use to hash an
//! index or a segment.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Error, Result};

/// Read the file at `path` from start to end in 1 MiB pieces, handing each
/// to `each` and hashing it (xxh3) on the way.
pub fn stream_file(path: &Path, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<Xxh3Default> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        h.update(&buf[..n]);
        each(&buf[..n])?;
    }
    Ok(h)
}

/// xxh3-128 of a whole file.
pub fn hash_file(path: &Path) -> Result<u128> {
    Ok(stream_file(path, |_| Ok(()))?.digest128())
}
