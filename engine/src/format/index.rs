//! The index: a 64-byte header, then one 48-byte entry per chunk of the
//! source, in chunk order. Entry `n` sits at byte `64 + 48 * n`, so any
//! chunk's location is one read away.
//!
//! Header:
//! ```text
//! offset size field
//!      0    8 magic "TTindex\0"
//!      8    2 format version (1)
//!     10    2 entry size in bytes (48)
//!     12    4 chunk size in bytes
//!     16    8 image id
//!     24    8 chunk count
//!     32    8 source size in bytes
//!     40    8 parent image id (0 = none)
//!     48    8 reserved (0)
//!     56    8 xxh3-64 of bytes 0..56
//! ```
//! Entry:
//! ```text
//! offset size field
//!      0    1 state (see ChunkState)
//!      1    3 reserved (0)
//!      4    4 segment number (position in the manifest's segment list)
//!      8    8 frame offset within the segment
//!     16    4 stored length of the frame payload
//!     20    4 raw length of the chunk
//!     24   16 xxh3-128 of the raw chunk (zero-filled chunks: hash of the zeros)
//!     40    8 image id holding the frame (this image; an ancestor when inherited)
//! ```

use xxhash_rust::xxh3::xxh3_64;

use super::le::*;
use super::{ImageId, FORMAT_VERSION};

/// The eight bytes every index starts with.
pub const INDEX_MAGIC: [u8; 8] = *b"TTindex\0";
/// Size of the index header.
pub const INDEX_HEADER_BYTES: usize = 64;
/// Size of one index entry.
pub const INDEX_ENTRY_BYTES: usize = 48;

const _: () = assert!(INDEX_ENTRY_BYTES == 1 + 3 + 4 + 8 + 4 + 4 + 16 + 8);
const _: () = assert!(INDEX_HEADER_BYTES == 8 + 2 + 2 + 4 + 8 + 8 + 8 + 8 + 8 + 8);

/// What the image holds for one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ChunkState {
    /// Not written yet: only seen in an unfinished index; invalid in a committed one.
    Unset = 0,
    /// A frame in one of this image's segments holds the chunk.
    Stored = 1,
    /// Every byte of the chunk is zero; nothing is stored.
    Zero = 2,
    /// The filesystem does not use the chunk; nothing is stored.
    Unused = 3,
    /// The source could not be read there.
    Unreadable = 4,
    /// The chunk did not change since an ancestor image, which holds the frame.
    Inherited = 5,
}

impl ChunkState {
    /// The state's name in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ChunkState::Unset => "unset",
            ChunkState::Stored => "stored",
            ChunkState::Zero => "zero",
            ChunkState::Unused => "unused",
            ChunkState::Unreadable => "unreadable",
            ChunkState::Inherited => "inherited",
        }
    }

    fn from_u8(v: u8) -> Option<ChunkState> {
        Some(match v {
            0 => ChunkState::Unset,
            1 => ChunkState::Stored,
            2 => ChunkState::Zero,
            3 => ChunkState::Unused,
            4 => ChunkState::Unreadable,
            5 => ChunkState::Inherited,
            _ => return None,
        })
    }
}

/// One chunk's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub state: ChunkState,
    pub segment: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub raw_hash: u128,
    pub image_id: ImageId,
}

/// Why an index entry does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("unknown chunk state {0}")]
    State(u8),
    #[error("reserved entry bytes are not zero")]
    Reserved,
}

impl IndexEntry {
    /// FORMAT §5 "Field values per state": the rules an entry's own fields
    /// meet whatever image holds it — the chunk's length (`extent`), a
    /// location only in a stored entry, and the hash and image a zero,
    /// unused or unreadable entry carries. Which image a stored or inherited
    /// entry names, and whether its frame lies in the image's segments, need
    /// the image (`set::image::Image::check_entry`).
    pub fn check_fields(&self, chunk: u64, extent: u32, zero: &mut ZeroHashes) -> Result<(), String> {
        let located = self.segment != 0 || self.offset != 0 || self.stored_len != 0;
        match self.state {
            ChunkState::Unset => {}
            _ if self.raw_len != extent => {
                return Err(format!("chunk {chunk}: index says {} bytes, the chunk is {extent}", self.raw_len))
            }
            ChunkState::Stored => {}
            state if located => {
                return Err(format!(
                    "chunk {chunk}: a {} entry names a frame (segment {}, offset {}, {} bytes stored); only stored \
                     entries do",
                    state.name(),
                    self.segment,
                    self.offset,
                    self.stored_len
                ))
            }
            ChunkState::Zero if self.image_id != ImageId(0) || self.raw_hash != zero.get(extent) => {
                return Err(format!(
                    "chunk {chunk}: a zero entry must carry the hash of {extent} zero bytes and no image"
                ))
            }
            ChunkState::Unused | ChunkState::Unreadable if self.image_id != ImageId(0) || self.raw_hash != 0 => {
                return Err(format!("chunk {chunk}: an {} entry carries a hash or an image", self.state.name()))
            }
            _ => {}
        }
        Ok(())
    }

    /// Encode into the first [`INDEX_ENTRY_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..INDEX_ENTRY_BYTES];
        b[0] = self.state as u8;
        b[1..4].fill(0);
        put_u32(b, 4, self.segment);
        put_u64(b, 8, self.offset);
        put_u32(b, 16, self.stored_len);
        put_u32(b, 20, self.raw_len);
        put_u128(b, 24, self.raw_hash);
        put_u64(b, 40, self.image_id.0);
    }

    /// Decode one entry; an unknown state is an error.
    pub fn decode(b: &[u8]) -> Result<IndexEntry, EntryError> {
        let state = ChunkState::from_u8(b[0]).ok_or(EntryError::State(b[0]))?;
        if b[1..4] != [0, 0, 0] {
            return Err(EntryError::Reserved);
        }
        Ok(IndexEntry {
            state,
            segment: u32_at(b, 4),
            offset: u64_at(b, 8),
            stored_len: u32_at(b, 16),
            raw_len: u32_at(b, 20),
            raw_hash: u128_at(b, 24),
            image_id: ImageId(u64_at(b, 40)),
        })
    }
}

/// The decoded index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub chunk_bytes: u32,
    pub image_id: ImageId,
    pub chunk_count: u64,
    pub source_bytes: u64,
    pub parent: Option<ImageId>,
}

/// Why an index header did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexHeaderError {
    Truncated(usize),
    Magic,
    Checksum,
    Version(u16),
    EntrySize(u16),
    Reserved,
}

impl std::fmt::Display for IndexHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated(n) => write!(f, "index header truncated ({n} of {INDEX_HEADER_BYTES} bytes)"),
            Self::Magic => write!(f, "not a tintype index (bad magic)"),
            Self::Checksum => write!(f, "index header checksum mismatch"),
            Self::Version(v) => write!(f, "index format version {v} is not supported"),
            Self::EntrySize(n) => write!(f, "index entry size {n}, expected {INDEX_ENTRY_BYTES}"),
            Self::Reserved => write!(f, "reserved index header bytes are not zero"),
        }
    }
}

impl IndexHeader {
    /// Encode into the first [`INDEX_HEADER_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..INDEX_HEADER_BYTES];
        b.fill(0);
        b[0..8].copy_from_slice(&INDEX_MAGIC);
        put_u16(b, 8, FORMAT_VERSION);
        put_u16(b, 10, INDEX_ENTRY_BYTES as u16);
        put_u32(b, 12, self.chunk_bytes);
        put_u64(b, 16, self.image_id.0);
        put_u64(b, 24, self.chunk_count);
        put_u64(b, 32, self.source_bytes);
        put_u64(b, 40, self.parent.map_or(0, |p| p.0));
        let h = xxh3_64(&b[..56]);
        put_u64(b, 56, h);
    }

    /// Decode and check an index header.
    pub fn decode(b: &[u8]) -> Result<IndexHeader, IndexHeaderError> {
        if b.len() < INDEX_HEADER_BYTES {
            return Err(IndexHeaderError::Truncated(b.len()));
        }
        if b[0..8] != INDEX_MAGIC {
            return Err(IndexHeaderError::Magic);
        }
        if xxh3_64(&b[..56]) != u64_at(b, 56) {
            return Err(IndexHeaderError::Checksum);
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(IndexHeaderError::Version(version));
        }
        let entry = u16_at(b, 10);
        if entry as usize != INDEX_ENTRY_BYTES {
            return Err(IndexHeaderError::EntrySize(entry));
        }
        if u64_at(b, 48) != 0 {
            return Err(IndexHeaderError::Reserved);
        }
        let parent = u64_at(b, 40);
        Ok(IndexHeader {
            chunk_bytes: u32_at(b, 12),
            image_id: ImageId(u64_at(b, 16)),
            chunk_count: u64_at(b, 24),
            source_bytes: u64_at(b, 32),
            parent: (parent != 0).then_some(ImageId(parent)),
        })
    }
}

/// The xxh3-128 of `len` zero bytes, which zero-filled chunks record as
/// their raw hash; computed once per length (a chunk size and a short tail).
#[derive(Debug, Default)]
pub struct ZeroHashes(Vec<(u32, u128)>);

impl ZeroHashes {
    pub fn get(&mut self, len: u32) -> u128 {
        if let Some(&(_, h)) = self.0.iter().find(|(l, _)| *l == len) {
            return h;
        }
        let h = xxhash_rust::xxh3::xxh3_128(&vec![0u8; len as usize]);
        self.0.push((len, h));
        h
    }
}

/// Byte offset of entry `chunk` in the index file.
pub const fn entry_offset(chunk: u64) -> u64 {
    INDEX_HEADER_BYTES as u64 + chunk * INDEX_ENTRY_BYTES as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let e = IndexEntry {
            state: ChunkState::Stored,
            segment: 7,
            offset: 8192,
            stored_len: 1234,
            raw_len: 1 << 20,
            raw_hash: u128::MAX - 5,
            image_id: ImageId(9),
        };
        let mut b = [0u8; INDEX_ENTRY_BYTES];
        e.encode(&mut b);
        assert_eq!(b[0], 1);
        assert_eq!(u64_at(&b, 8), 8192);
        assert_eq!(IndexEntry::decode(&b), Ok(e));
        b[0] = 9;
        assert!(IndexEntry::decode(&b).is_err());
        assert_eq!(entry_offset(2), 64 + 96);
    }

    #[test]
    fn zero_hashes_are_the_hash_of_zeros_per_length() {
        let mut z = ZeroHashes::default();
        assert_eq!(z.get(4096), xxhash_rust::xxh3::xxh3_128(&[0u8; 4096]));
        assert_eq!(z.get(100), xxhash_rust::xxh3::xxh3_128(&[0u8; 100]));
        assert_ne!(z.get(4096), z.get(100));
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let h = IndexHeader {
            chunk_bytes: 1 << 20,
            image_id: ImageId(3),
            chunk_count: 10,
            source_bytes: 10 << 20,
            parent: None,
        };
        let mut b = [0u8; INDEX_HEADER_BYTES];
        h.encode(&mut b);
        assert_eq!(IndexHeader::decode(&b), Ok(h));
        let mut c = b;
        c[25] ^= 4;
        assert_eq!(IndexHeader::decode(&c), Err(IndexHeaderError::Checksum));
        let mut c = b;
        c[0] = b'X';
        assert_eq!(IndexHeader::decode(&c), Err(IndexHeaderError::Magic));
        assert_eq!(IndexHeader::decode(&b[..3]), Err(IndexHeaderError::Truncated(3)));
    }
}
