//! A frame: one stored chunk inside a segment. A fixed 64-byte header, then
//! `stored_len` payload bytes, then zero padding up to [`FRAME_ALIGN_BYTES`].
//!
//! ```text
//! offset size field
//!      0    4 magic "TTfr"
//!      4    2 format version (1)
//!      6    1 codec (0 = none, 1 = zstd)
//!      7    1 flags (0; reserved)
//!      8    8 image id
//!     16    8 chunk number
//!     24    4 raw length (bytes of the source this chunk covers)
//!     28    4 stored length (payload bytes that follow the header)
//!     32   16 xxh3-128 of the raw chunk
//!     48    8 xxh3-64 of the stored payload
//!     56    8 xxh3-64 of header bytes 0..56
//! ```
//! A frame checks itself without the index, which is what makes scanning a
//! segment (resume, salvage) possible.

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::index::IndexEntry;
pub use crate::codec::Codec;

use super::le::*;
use super::{align_up, ImageId, FRAME_ALIGN_BYTES, LAYOUT_VERSION};

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"TTfr";
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 64;
/// The largest chunk the format allows (64 MiB).
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;

/// The decoded header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub image_id: ImageId,
    pub chunk: u64,
    pub raw_len: u32,
    pub stored_len: u32,
    pub codec: Codec,
    pub raw_hash: u128,
    pub stored_hash: u64,
}

const _: () = assert!(FRAME_HEADER_BYTES == 4 + 2 + 1 + 1 + 8 + 8 + 4 + 4 + 16 + 8 + 8);

/// Why a frame header did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no frame here (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("frame format version {0} is not supported (this build reads 1)")]
    Version(u16),
    #[error("frame header checksum mismatch")]
    HeaderHash,
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("reserved flags {0:#04x} set")]
    Flags(u8),
    #[error("padding byte {at} of the frame is {value:#04x}; padding must be zero")]
    Padding { at: usize, value: u8 },
    #[error("frame lengths out of range (raw {raw}, stored {stored})")]
    Lengths { raw: u32, stored: u32 },
    #[error("stored bytes do not match their checksum (xxh3-64 {found:016x}, header says {expected:016x})")]
    StoredHash { expected: u64, found: u64 },
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decoded {found} bytes, header says {expected}")]
    RawLength { expected: u32, found: usize },
    #[error("raw chunk does not match its checksum (xxh3-128 {found:032x}, expected {expected:032x})")]
    RawHash { expected: u128, found: u128 },
}

/// How a (valid) frame header disagrees with the index entry pointing at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameMismatch {
    #[error("frame holds chunk {holds} of image {of}, the index expects chunk {chunk} of image {image} here")]
    Elsewhere { holds: u64, of: ImageId, chunk: u64, image: ImageId },
    #[error("frame header disagrees with the index (lengths or raw hash)")]
    Disagrees,
}

impl FrameHeader {
    /// Encode into the first [`FRAME_HEADER_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..FRAME_HEADER_BYTES];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        put_u16(b, 4, LAYOUT_VERSION);
        b[6] = self.codec as u8;
        b[7] = 0;
        put_u64(b, 8, self.image_id.0);
        put_u64(b, 16, self.chunk);
        put_u32(b, 24, self.raw_len);
        put_u32(b, 28, self.stored_len);
        put_u128(b, 32, self.raw_hash);
        put_u64(b, 48, self.stored_hash);
        let h = xxh3_64(&b[..56]);
        put_u64(b, 56, h);
    }

    /// Decode and check the header at the start of `b`.
    pub fn decode(b: &[u8]) -> Result<FrameHeader, FrameError> {
        if b.len() < FRAME_HEADER_BYTES {
            let mut m = [0u8; 4];
            let n = b.len().min(4);
            m[..n].copy_from_slice(&b[..n]);
            return Err(FrameError::BadMagic(m));
        }
        let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if xxh3_64(&b[..56]) != u64_at(b, 56) {
            return Err(FrameError::HeaderHash);
        }
        let version = u16_at(b, 4);
        if version != LAYOUT_VERSION {
            return Err(FrameError::Version(version));
        }
        let codec = Codec::from_u8(b[6]).ok_or(FrameError::Codec(b[6]))?;
        if b[7] != 0 {
            return Err(FrameError::Flags(b[7]));
        }
        let raw_len = u32_at(b, 24);
        let stored_len = u32_at(b, 28);
        if raw_len == 0 || raw_len > CHUNK_BYTES_MAX || stored_len > stored_len_max(raw_len) {
            return Err(FrameError::Lengths { raw: raw_len, stored: stored_len });
        }
        if codec == Codec::None && stored_len != raw_len {
            return Err(FrameError::Lengths { raw: raw_len, stored: stored_len });
        }
        Ok(FrameHeader {
            image_id: ImageId(u64_at(b, 8)),
            chunk: u64_at(b, 16),
            raw_len,
            stored_len,
            codec,
            raw_hash: u128_at(b, 32),
            stored_hash: u64_at(b, 48),
        })
    }

    /// Is this the frame `entry` (chunk `chunk` of `image`) points at? The
    /// header checks itself; this checks it against the index.
    pub fn check_matches(&self, chunk: u64, image: ImageId, entry: &IndexEntry) -> Result<(), FrameMismatch> {
        if self.chunk != chunk || self.image_id != image {
            return Err(FrameMismatch::Elsewhere { holds: self.chunk, of: self.image_id, chunk, image });
        }
        if self.raw_len != entry.raw_len || self.stored_len != entry.stored_len || self.raw_hash != entry.raw_hash {
            return Err(FrameMismatch::Disagrees);
        }
        Ok(())
    }

    /// Bytes the whole frame occupies in its segment, padding included.
    pub fn frame_len(&self) -> u64 {
        frame_len(self.stored_len)
    }
}

/// Bytes a frame with `stored_len` payload bytes occupies, padding included.
pub const fn frame_len(stored_len: u32) -> u64 {
    align_up(FRAME_HEADER_BYTES as u64 + stored_len as u64, FRAME_ALIGN_BYTES)
}

/// The most payload a frame for a `raw_len`-byte chunk can hold: compression
/// is only kept when it is smaller than the raw chunk, so the raw length.
pub const fn stored_len_max(raw_len: u32) -> u32 {
    raw_len
}

/// The largest frame a chunk of `chunk_bytes` can produce.
pub const fn frame_len_max(chunk_bytes: u32) -> u64 {
    frame_len(stored_len_max(chunk_bytes))
}

/// A payload decoder: stored bytes in, raw bytes out, decoded length back.
pub type DecodeFn<'a> = dyn FnMut(&[u8], &mut [u8]) -> Result<usize, String> + 'a;

/// Check a whole frame (`bytes` starts at its header and holds the whole
/// frame, padding included; anything after it is ignored) and decode its
/// payload into `raw_out`, returning the header. `decompress` is the codec;
/// it returns the decoded length.
pub fn check_frame(bytes: &[u8], raw_out: &mut [u8], decompress: &mut DecodeFn<'_>) -> Result<FrameHeader, FrameError> {
    let h = FrameHeader::decode(bytes)?;
    let end = FRAME_HEADER_BYTES + h.stored_len as usize;
    let whole = h.frame_len() as usize;
    if bytes.len() < whole {
        return Err(FrameError::Lengths { raw: h.raw_len, stored: h.stored_len });
    }
    if let Some(at) = bytes[end..whole].iter().position(|&b| b != 0) {
        return Err(FrameError::Padding { at: end + at, value: bytes[end + at] });
    }
    let stored = &bytes[FRAME_HEADER_BYTES..end];
    let found = xxh3_64(stored);
    if found != h.stored_hash {
        return Err(FrameError::StoredHash { expected: h.stored_hash, found });
    }
    let raw_len = h.raw_len as usize;
    if raw_out.len() < raw_len {
        return Err(FrameError::Lengths { raw: h.raw_len, stored: h.stored_len });
    }
    let n = match h.codec {
        Codec::None => {
            raw_out[..raw_len].copy_from_slice(stored);
            raw_len
        }
        Codec::Zstd => decompress(stored, &mut raw_out[..raw_len]).map_err(FrameError::Decompress)?,
    };
    if n != raw_len {
        return Err(FrameError::RawLength { expected: h.raw_len, found: n });
    }
    let found = xxh3_128(&raw_out[..raw_len]);
    if found != h.raw_hash {
        return Err(FrameError::RawHash { expected: h.raw_hash, found });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            image_id: ImageId(0x0123_4567_89ab_cdef),
            chunk: 42,
            raw_len: 1 << 20,
            stored_len: 1000,
            codec: Codec::Zstd,
            raw_hash: 0x1111_2222_3333_4444_5555_6666_7777_8888,
            stored_hash: 0x9999_aaaa_bbbb_cccc,
        }
    }

    #[test]
    fn header_round_trips_with_fixed_layout() {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        header().encode(&mut b);
        assert_eq!(&b[0..4], b"TTfr");
        assert_eq!(u16_at(&b, 4), 1);
        assert_eq!(b[6], 1);
        assert_eq!(u64_at(&b, 16), 42);
        assert_eq!(FrameHeader::decode(&b), Ok(header()));
        assert_eq!(header().frame_len(), 4096);
    }

    #[test]
    fn every_single_byte_flip_in_a_header_is_caught() {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        header().encode(&mut b);
        for i in 0..FRAME_HEADER_BYTES {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(FrameHeader::decode(&c).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn newer_version_and_bad_lengths_are_refused() {
        let mut h = header();
        let mut b = [0u8; FRAME_HEADER_BYTES];
        h.encode(&mut b);
        put_u16(&mut b, 4, 2);
        let hh = xxh3_64(&b[..56]);
        put_u64(&mut b, 56, hh);
        assert_eq!(FrameHeader::decode(&b), Err(FrameError::Version(2)));
        h.stored_len = h.raw_len + 1;
        h.encode(&mut b);
        assert!(matches!(FrameHeader::decode(&b), Err(FrameError::Lengths { .. })));
        assert!(matches!(FrameHeader::decode(&b[..10]), Err(FrameError::BadMagic(_))));
    }

    #[test]
    fn check_frame_catches_payload_damage() {
        let raw = vec![7u8; 5000];
        let mut frame = vec![0u8; frame_len(5000) as usize];
        frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 5000].copy_from_slice(&raw);
        let h = FrameHeader {
            image_id: ImageId(5),
            chunk: 3,
            raw_len: 5000,
            stored_len: 5000,
            codec: Codec::None,
            raw_hash: xxh3_128(&raw),
            stored_hash: xxh3_64(&raw),
        };
        h.encode(&mut frame);
        let mut out = vec![0u8; 8192];
        let mut no_codec = |_: &[u8], _: &mut [u8]| -> Result<usize, String> { unreachable!() };
        assert_eq!(check_frame(&frame, &mut out, &mut no_codec), Ok(h));
        assert_eq!(&out[..5000], &raw[..]);
        let at = FRAME_HEADER_BYTES + 5000 + 3;
        frame[at] = 0x40;
        assert_eq!(check_frame(&frame, &mut out, &mut no_codec), Err(FrameError::Padding { at, value: 0x40 }));
        frame[at] = 0;
        assert!(matches!(
            check_frame(&frame[..FRAME_HEADER_BYTES + 5000], &mut out, &mut no_codec),
            Err(FrameError::Lengths { .. })
        ));
        frame[FRAME_HEADER_BYTES + 17] ^= 1;
        assert!(matches!(check_frame(&frame, &mut out, &mut no_codec), Err(FrameError::StoredHash { .. })));
    }
}
