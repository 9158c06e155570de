//! A segment: an append-only file of frames written sequentially by one lane.
//! It starts with a 4096-byte header (so the first frame is aligned), then
//! frames back to back, each padded to [`FRAME_ALIGN_BYTES`].
//!
//! ```text
//! offset size field
//!      0    8 magic "TTsegmnt"
//!      8    2 format version (1)
//!     10    2 reserved (0)
//!     12    4 frame alignment in bytes (4096)
//!     16    8 image id
//!     24    4 number of the lane that wrote it
//!     28    4 segment number (its position in the manifest's segment list)
//!     32    4 chunk size in bytes
//!     36   20 reserved (0)
//!     56    8 xxh3-64 of bytes 0..56
//!     64 4032 zero
//! ```

use xxhash_rust::xxh3::xxh3_64;

use super::le::*;
use super::{ImageId, FRAME_ALIGN_BYTES, LAYOUT_VERSION};

/// The eight bytes every segment starts with.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TTsegmnt";
/// The default limit at which segments roll over: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;

/// Size of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_BYTES: usize = 4096;

const _: () = assert!(SEGMENT_HEADER_BYTES as u64 == FRAME_ALIGN_BYTES);

/// The decoded header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub image_id: ImageId,
    pub lane: u32,
    pub seq: u32,
    pub chunk_bytes: u32,
}

/// Why a segment header does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    #[error("segment header truncated ({0} of 4096 bytes)")]
    Truncated(usize),
    #[error("not a tintype segment (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    HeaderHash,
    #[error("segment format version {0} is not supported (this build reads 1)")]
    Version(u16),
    #[error("reserved segment header bytes are not zero")]
    Reserved,
    #[error("unsupported frame alignment {0}")]
    Alignment(u32),
    #[error("segment header byte {0} is not zero (bytes 64..4096 must be)")]
    Padding(usize),
}

impl SegmentHeader {
    /// Encode into the first [`SEGMENT_HEADER_BYTES`] of `out` (padding zeroed).
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..SEGMENT_HEADER_BYTES];
        b.fill(0);
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(b, 8, LAYOUT_VERSION);
        put_u32(b, 12, FRAME_ALIGN_BYTES as u32);
        put_u64(b, 16, self.image_id.0);
        put_u32(b, 24, self.lane);
        put_u32(b, 28, self.seq);
        put_u32(b, 32, self.chunk_bytes);
        let h = xxh3_64(&b[..56]);
        put_u64(b, 56, h);
    }

    /// Decode and check a segment header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(SegmentHeaderError::Truncated(b.len()));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        if xxh3_64(&b[..56]) != u64_at(b, 56) {
            return Err(SegmentHeaderError::HeaderHash);
        }
        let version = u16_at(b, 8);
        if version != LAYOUT_VERSION {
            return Err(SegmentHeaderError::Version(version));
        }
        if b[10..12] != [0, 0] || b[36..56].iter().any(|&x| x != 0) {
            return Err(SegmentHeaderError::Reserved);
        }
        if u32_at(b, 12) as u64 != FRAME_ALIGN_BYTES {
            return Err(SegmentHeaderError::Alignment(u32_at(b, 12)));
        }
        if let Some(at) = b[64..SEGMENT_HEADER_BYTES].iter().position(|&x| x != 0) {
            return Err(SegmentHeaderError::Padding(64 + at));
        }
        Ok(SegmentHeader {
            image_id: ImageId(u64_at(b, 16)),
            lane: u32_at(b, 24),
            seq: u32_at(b, 28),
            chunk_bytes: u32_at(b, 32),
        })
    }

    /// Decode `b` and check it is the header of segment `seq` (its position
    /// in the manifest's list) of image `image`, chunk size `chunk_bytes`:
    /// the one check verify and restore both apply to a segment.
    pub fn check(b: &[u8], image: ImageId, seq: u32, chunk_bytes: u32) -> Result<SegmentHeader, String> {
        let h = SegmentHeader::decode(b).map_err(|why| why.to_string())?;
        if h.chunk_bytes != chunk_bytes {
            return Err(format!("segment header says chunk size {}, the manifest {chunk_bytes}", h.chunk_bytes));
        }
        if h.image_id != image || h.seq != seq {
            return Err(format!(
                "segment header names image {} segment {}, expected image {image} segment {seq}",
                h.image_id, h.seq
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::names::segment_file_name;

    #[test]
    fn segment_header_round_trips_and_checks_itself() {
        let h = SegmentHeader { image_id: ImageId(77), lane: 3, seq: 12, chunk_bytes: 1 << 20 };
        let mut b = vec![0xffu8; SEGMENT_HEADER_BYTES];
        h.encode(&mut b);
        assert!(b[64..].iter().all(|&x| x == 0));
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[30] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(SegmentHeaderError::HeaderHash));
        assert_eq!(SegmentHeader::decode(&b[..100]), Err(SegmentHeaderError::Truncated(100)));
        b[30] ^= 1;
        assert_eq!(SegmentHeader::check(&b, ImageId(77), 12, 1 << 20), Ok(h));
        assert!(SegmentHeader::check(&b, ImageId(77), 11, 1 << 20).unwrap_err().contains("segment 12"));
        assert!(SegmentHeader::check(&b, ImageId(77), 12, 1 << 16).unwrap_err().contains("chunk size"));
        b[4095] = 1;
        assert_eq!(SegmentHeader::decode(&b), Err(SegmentHeaderError::Padding(4095)));
        assert_eq!(segment_file_name(ImageId(0xab), 2), "00000000000000ab.000002.seg");
    }
}
