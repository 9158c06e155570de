//! The index: a 64-byte header, then the chunk table.
//!
//! Version 2 (written): one 64-byte *run record* per run of chunks that
//! share an entry, in chunk order, covering every chunk exactly once. A
//! stored chunk is a run of one; zero, unused, unreadable and inherited
//! chunks cost one record per run, so the index grows with what is stored,
//! not with the device. A chunk's record is found by binary search on
//! `first`. Version 1 (read): one 48-byte entry per chunk; entry `n` at
//! `64 + 48 * n`. Lanes write their working table in the version-1 layout
//! while a run is going on (see `set::index_writer`).
//!
//! Header:
//! ```text
//! offset size field
//!      0    8 magic "TTindex\0"
//!      8    2 format version (1 or 2)
//!     10    2 entry size in bytes (v1: 48; v2: 64)
//!     12    4 chunk size in bytes
//!     16    8 image id
//!     24    8 chunk count
//!     32    8 source size in bytes
//!     40    8 parent image id (0 = none)
//!     48    8 v1: reserved (0); v2: number of run records
//!     56    8 xxh3-64 of bytes 0..56
//! ```
//! Version-1 entry (48 bytes):
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
//! Version-2 run record (64 bytes): the version-1 entry's fields, which
//! every chunk of the run has, after the run's place:
//! ```text
//! offset size field
//!      0    1 state
//!      1    7 reserved (0)
//!      8    8 first chunk of the run
//!     16    8 chunks in the run (1 for a stored chunk)
//!     24    4 segment number
//!     28    4 stored length
//!     32    8 frame offset
//!     40    4 raw length of each chunk of the run
//!     44    4 reserved (0)
//!     48   16 raw hash (stored, zero); 0 for unused, unreadable, inherited
//! ```
//! The image a stored or inherited run names is implied (this image, the
//! parent), so it is not repeated per record.

use xxhash_rust::xxh3::xxh3_64;

use super::le::*;
use super::{ImageId, FORMAT_VERSION, FORMAT_VERSION_OLDEST};

/// The eight bytes every index starts with.
pub const INDEX_MAGIC: [u8; 8] = *b"TTindex\0";
/// Size of the index header.
pub const INDEX_HEADER_BYTES: usize = 64;
/// Size of one version-1 index entry (and of the lanes' working table).
pub const INDEX_ENTRY_BYTES: usize = 48;
/// Size of one version-2 run record.
pub const RUN_RECORD_BYTES: usize = 64;

const _: () = assert!(INDEX_ENTRY_BYTES == 1 + 3 + 4 + 8 + 4 + 4 + 16 + 8);
const _: () = assert!(RUN_RECORD_BYTES == 1 + 7 + 8 + 8 + 4 + 4 + 8 + 4 + 4 + 16);
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

/// A run of chunks that all have the same entry: what a version-2 record
/// holds, and what every reader works with (a version-1 entry is a run of
/// one). Stored chunks are runs of one; the source's last chunk, when it is
/// short, has a raw length of its own and so a run of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u64,
    pub entry: IndexEntry,
}

/// Why a run record does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown chunk state {0}")]
    State(u8),
    #[error("reserved record bytes are not zero")]
    Reserved,
    #[error("a run of {0} chunks: a run holds at least one, a stored run exactly one")]
    Count(u64),
}

impl Run {
    /// One past the run's last chunk.
    pub fn end(&self) -> u64 {
        self.first + self.count
    }

    /// Whether `next` (the run after this one) may be folded into it: the
    /// same entry, adjacent, and not a stored frame (one record a frame).
    pub fn absorbs(&self, next: &Run) -> bool {
        self.end() == next.first && self.entry == next.entry && self.entry.state != ChunkState::Stored
    }

    /// Encode as a version-2 record into the first [`RUN_RECORD_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..RUN_RECORD_BYTES];
        b.fill(0);
        let e = &self.entry;
        b[0] = e.state as u8;
        put_u64(b, 8, self.first);
        put_u64(b, 16, self.count);
        put_u32(b, 24, e.segment);
        put_u32(b, 28, e.stored_len);
        put_u64(b, 32, e.offset);
        put_u32(b, 40, e.raw_len);
        let hash = match e.state {
            ChunkState::Stored | ChunkState::Zero => e.raw_hash,
            _ => 0,
        };
        put_u128(b, 48, hash);
    }

    /// Decode a version-2 record of image `image` whose parent is `parent`
    /// (the images a stored and an inherited run name).
    pub fn decode(b: &[u8], image: ImageId, parent: Option<ImageId>) -> Result<Run, RecordError> {
        let state = ChunkState::from_u8(b[0]).ok_or(RecordError::State(b[0]))?;
        if b[1..8].iter().any(|&x| x != 0) || u32_at(b, 44) != 0 {
            return Err(RecordError::Reserved);
        }
        let count = u64_at(b, 16);
        if count == 0 || (state == ChunkState::Stored && count != 1) {
            return Err(RecordError::Count(count));
        }
        let image_id = match state {
            ChunkState::Stored => image,
            ChunkState::Inherited => parent.unwrap_or(ImageId(0)),
            _ => ImageId(0),
        };
        let entry = IndexEntry {
            state,
            segment: u32_at(b, 24),
            offset: u64_at(b, 32),
            stored_len: u32_at(b, 28),
            raw_len: u32_at(b, 40),
            raw_hash: u128_at(b, 48),
            image_id,
        };
        Ok(Run { first: u64_at(b, 8), count, entry })
    }
}

/// The decoded index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// 1: an entry per chunk; 2: run records.
    pub version: u16,
    pub chunk_bytes: u32,
    pub image_id: ImageId,
    pub chunk_count: u64,
    pub source_bytes: u64,
    pub parent: Option<ImageId>,
    /// Version 2: the number of run records (0 in version 1).
    pub records: u64,
}

/// Why an index header did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexHeaderError {
    Truncated(usize),
    Magic,
    Checksum,
    Version(u16),
    /// The entry size found, and the one the version has.
    EntrySize(u16, u16),
    Reserved,
    /// Version 2: a record count that cannot cover the chunks (records, chunks).
    Records(u64, u64),
}

impl std::fmt::Display for IndexHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated(n) => write!(f, "index header truncated ({n} of {INDEX_HEADER_BYTES} bytes)"),
            Self::Magic => write!(f, "not a tintype index (bad magic)"),
            Self::Checksum => write!(f, "index header checksum mismatch"),
            Self::Version(v) => write!(f, "index format version {v} is not supported"),
            Self::EntrySize(n, want) => write!(f, "index entry size {n}, expected {want}"),
            Self::Reserved => write!(f, "reserved index header bytes are not zero"),
            Self::Records(r, c) => write!(f, "{r} run records cannot cover {c} chunks"),
        }
    }
}

impl IndexHeader {
    /// The size of one entry (version 1) or record (version 2).
    pub fn entry_bytes(&self) -> usize {
        match self.version {
            1 => INDEX_ENTRY_BYTES,
            _ => RUN_RECORD_BYTES,
        }
    }

    /// The length of the whole index file (saturating: a header claiming
    /// more than a file can hold never matches a file's length).
    pub fn file_bytes(&self) -> u64 {
        let n = if self.version == 1 { self.chunk_count } else { self.records };
        n.saturating_mul(self.entry_bytes() as u64).saturating_add(INDEX_HEADER_BYTES as u64)
    }

    /// Encode into the first [`INDEX_HEADER_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..INDEX_HEADER_BYTES];
        b.fill(0);
        b[0..8].copy_from_slice(&INDEX_MAGIC);
        put_u16(b, 8, self.version);
        put_u16(b, 10, self.entry_bytes() as u16);
        put_u32(b, 12, self.chunk_bytes);
        put_u64(b, 16, self.image_id.0);
        put_u64(b, 24, self.chunk_count);
        put_u64(b, 32, self.source_bytes);
        put_u64(b, 40, self.parent.map_or(0, |p| p.0));
        put_u64(b, 48, if self.version == 1 { 0 } else { self.records });
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
        if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
            return Err(IndexHeaderError::Version(version));
        }
        let want = if version == 1 { INDEX_ENTRY_BYTES } else { RUN_RECORD_BYTES };
        let entry = u16_at(b, 10);
        if entry as usize != want {
            return Err(IndexHeaderError::EntrySize(entry, want as u16));
        }
        if version == 1 && u64_at(b, 48) != 0 {
            return Err(IndexHeaderError::Reserved);
        }
        // Each record covers at least one chunk, and there is one at least.
        let (records, chunks) = (u64_at(b, 48), u64_at(b, 24));
        if version >= 2 && (records > chunks || (records == 0) != (chunks == 0)) {
            return Err(IndexHeaderError::Records(records, chunks));
        }
        let parent = u64_at(b, 40);
        Ok(IndexHeader {
            version,
            records: if version == 1 { 0 } else { u64_at(b, 48) },
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
            version: FORMAT_VERSION,
            chunk_bytes: 1 << 20,
            image_id: ImageId(3),
            chunk_count: 10,
            source_bytes: 10 << 20,
            parent: None,
            records: 4,
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
        assert_eq!(h.file_bytes(), 64 + 4 * 64);
        let v1 = IndexHeader { version: 1, records: 0, ..h };
        v1.encode(&mut b);
        assert_eq!(IndexHeader::decode(&b), Ok(v1));
        assert_eq!(v1.file_bytes(), 64 + 10 * 48);
        let mut c = b;
        c[8] = 3;
        let h = xxh3_64(&c[..56]);
        put_u64(&mut c, 56, h);
        assert_eq!(IndexHeader::decode(&c), Err(IndexHeaderError::Version(3)));
        // More records than chunks, or none for some chunks: refused.
        let v2 = IndexHeader { version: FORMAT_VERSION, records: 4, ..v1 };
        for records in [11, 0, u64::MAX] {
            IndexHeader { records, ..v2 }.encode(&mut c);
            assert_eq!(IndexHeader::decode(&c), Err(IndexHeaderError::Records(records, 10)), "{records}");
        }
        assert_eq!(IndexHeader { records: u64::MAX, ..v2 }.file_bytes(), u64::MAX, "saturates");
    }

    #[test]
    fn run_records_round_trip_and_refuse_damage() {
        let stored = IndexEntry {
            state: ChunkState::Stored,
            segment: 2,
            offset: 8192,
            stored_len: 99,
            raw_len: 4096,
            raw_hash: 77,
            image_id: ImageId(5),
        };
        let run = Run { first: 9, count: 1, entry: stored };
        let mut b = [0u8; RUN_RECORD_BYTES];
        run.encode(&mut b);
        assert_eq!(Run::decode(&b, ImageId(5), None), Ok(run));
        let inherited = IndexEntry {
            state: ChunkState::Inherited,
            segment: 0,
            offset: 0,
            stored_len: 0,
            raw_len: 4096,
            raw_hash: 0,
            image_id: ImageId(4),
        };
        let run = Run { first: 10, count: 1 << 40, entry: inherited };
        run.encode(&mut b);
        assert_eq!(Run::decode(&b, ImageId(5), Some(ImageId(4))), Ok(run));
        let mut c = b;
        c[0] = 9;
        assert_eq!(Run::decode(&c, ImageId(5), None), Err(RecordError::State(9)));
        let mut c = b;
        c[45] = 1;
        assert_eq!(Run::decode(&c, ImageId(5), None), Err(RecordError::Reserved));
        put_u64(&mut c, 16, 0);
        c[45] = 0;
        assert_eq!(Run::decode(&c, ImageId(5), None), Err(RecordError::Count(0)));
        let mut s = [0u8; RUN_RECORD_BYTES];
        Run { first: 0, count: 1, entry: stored }.encode(&mut s);
        put_u64(&mut s, 16, 2);
        assert_eq!(Run::decode(&s, ImageId(5), None), Err(RecordError::Count(2)));
        let a = Run { first: 10, count: 3, entry: inherited };
        assert!(a.absorbs(&Run { first: 13, count: 1, entry: inherited }));
        assert!(!a.absorbs(&Run { first: 14, count: 1, entry: inherited }));
        assert!(!Run { first: 8, count: 1, entry: stored }.absorbs(&Run { first: 9, count: 1, entry: stored }));
    }
}
