//! The on-disk format, version 2 (version 1 still read): pure encoding and
//! decoding, no I/O.
//!
//! Every integer is little-endian with a fixed width and every struct has a
//! compile-time size assertion. `docs/FORMAT.md` is the specification; the
//! golden fixtures under `engine/tests/fixtures/` pin it.

pub mod frame;
pub mod index;
pub mod manifest;
pub mod names;
pub mod segment;

/// The format version this build writes (manifest and index) and the newest
/// it reads. Version 2 stores the index as runs of chunks (FORMAT §5).
pub const FORMAT_VERSION: u16 = 2;

/// The oldest format version this build reads: version 1 indexes hold one
/// entry per chunk.
pub const FORMAT_VERSION_OLDEST: u16 = 1;

/// The layout version of segment headers and frames: the same in formats 1
/// and 2, so every reader of either checks for this one.
pub const LAYOUT_VERSION: u16 = 1;

/// Frames and segment headers are aligned to this many bytes, which covers
/// every logical sector size in use (512 and 4096) for O_DIRECT.
pub const FRAME_ALIGN_BYTES: u64 = 4096;

/// Round `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: u64, align: u64) -> u64 {
    (n + align - 1) & !(align - 1)
}

/// A 64-bit image identifier, written as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u64);

impl ImageId {
    /// A new identifier: the creation time in nanoseconds mixed with the
    /// process id and a counter, hashed, so two runs never pick the same one.
    pub fn generate() -> ImageId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut seed = [0u8; 24];
        seed[..8].copy_from_slice(&nanos.to_le_bytes());
        seed[8..16].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        seed[16..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let id = xxhash_rust::xxh3::xxh3_64(&seed);
        // Zero means "no image" in the index's parent and entry image fields.
        ImageId(if id == 0 { 1 } else { id })
    }

    /// Parse exactly 16 hex digits.
    pub fn parse(s: &str) -> Option<ImageId> {
        // Lowercase only: file names are compared as written.
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().filter(|&v| v != 0).map(ImageId)
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Little-endian field access on a fixed byte layout; offsets are checked by
/// the callers' compile-time size assertions and by slice bounds.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn u128_at(b: &[u8], at: usize) -> u128 {
        u128::from_le_bytes(b[at..at + 16].try_into().expect("16 bytes"))
    }
    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u128(b: &mut [u8], at: usize, v: u128) {
        b[at..at + 16].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_id_round_trips_and_rejects_junk() {
        let id = ImageId::generate();
        assert_eq!(ImageId::parse(&id.to_string()), Some(id));
        assert_eq!(ImageId::parse("00000000000000000"), None);
        assert_eq!(ImageId::parse("0000000000000000"), None, "zero is reserved");
        assert_eq!(ImageId::parse("g000000000000001"), None);
        assert_eq!(ImageId::parse("abc"), None);
        assert_eq!(ImageId::parse("00000000000000AB"), None, "uppercase is not a file name we write");
        assert_ne!(ImageId::generate(), ImageId::generate());
    }

    #[test]
    fn align_up_rounds_to_the_next_multiple() {
        assert_eq!(align_up(0, 4096), 0);
        assert_eq!(align_up(1, 4096), 4096);
        assert_eq!(align_up(4096, 4096), 4096);
        assert_eq!(align_up(4097, 4096), 8192);
    }
}

/// An xxh3-64 checksum (of a segment file), written as 16 lowercase hex
/// digits in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Xxh64(pub u64);

/// An xxh3-128 checksum (of an index file), written as 32 lowercase hex
/// digits in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Xxh128(pub u128);

impl std::fmt::Display for Xxh64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::fmt::Display for Xxh128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Exactly `digits` hex digits, as a number.
fn parse_hex<E: serde::de::Error>(s: &str, digits: usize) -> Result<u128, E> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(E::custom(format!("{s:?} is not {digits} hex digits")));
    }
    u128::from_str_radix(s, 16).map_err(E::custom)
}

impl serde::Serialize for Xxh64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for Xxh128 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Xxh64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Xxh64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Xxh64(parse_hex::<D::Error>(&s, 16)? as u64))
    }
}

impl<'de> serde::Deserialize<'de> for Xxh128 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Xxh128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Xxh128(parse_hex::<D::Error>(&s, 32)?))
    }
}
