//! What happens to a chunk's bytes: the codecs a frame can use, one reused
//! zstd context per lane to compress ([`Encoder`]) and one to decompress
//! ([`Decoder`]), and the zero check ([`is_zero`]).

/// How a frame's payload is encoded (its byte in the frame header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The payload is the raw chunk.
    None = 0,
    /// The payload is one zstd frame.
    Zstd = 1,
}

impl Codec {
    /// The codec a frame header's byte names, if it is one this build knows.
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// Compresses chunks at one level, keeping the result only when it pays.
pub struct Encoder {
    level: i32,
    cctx: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("level", &self.level).finish()
    }
}

/// The zstd levels accepted by `--level` (0 stores uncompressed).
pub fn level_range() -> std::ops::RangeInclusive<i32> {
    let r = zstd::compression_level_range();
    (*r.start()).max(-131_072)..=*r.end()
}

impl Encoder {
    /// An encoder at `level`; 0 means "store uncompressed", negative levels
    /// are zstd's fast levels.
    pub fn new(level: i32) -> std::io::Result<Encoder> {
        let cctx = if level == 0 { None } else { Some(zstd::bulk::Compressor::new(level)?) };
        Ok(Encoder { level, cctx })
    }

    /// Encode `raw` into `out`, which must hold at least `raw.len()` bytes.
    /// Returns the codec used and the stored length; a chunk that does not
    /// shrink is stored raw.
    pub fn encode(&mut self, raw: &[u8], out: &mut [u8]) -> (Codec, usize) {
        assert!(out.len() >= raw.len(), "encode output smaller than the chunk");
        if let Some(cctx) = self.cctx.as_mut() {
            // Only a result smaller than the chunk is worth keeping; zstd
            // stops with "destination too small" otherwise.
            let limit = raw.len().saturating_sub(1);
            if let Ok(n) = cctx.compress_to_buffer(raw, &mut out[..limit]) {
                return (Codec::Zstd, n);
            }
        }
        out[..raw.len()].copy_from_slice(raw);
        (Codec::None, raw.len())
    }
}

/// Decompresses frames; one per lane.
pub struct Decoder {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish()
    }
}

impl Decoder {
    pub fn new() -> std::io::Result<Decoder> {
        Ok(Decoder { dctx: zstd::bulk::Decompressor::new()? })
    }

    /// Decode a zstd payload into `out`, returning the decoded length. The
    /// payload must be exactly one complete zstd frame: zstd itself would
    /// also decode several concatenated frames or skip skippable ones, which
    /// the format does not allow (a writer never makes them).
    pub fn decode(&mut self, stored: &[u8], out: &mut [u8]) -> Result<usize, String> {
        let first = zstd::zstd_safe::find_frame_compressed_size(stored)
            .map_err(|code| format!("not a zstd frame: {}", zstd::zstd_safe::get_error_name(code)))?;
        if first != stored.len() {
            return Err(format!(
                "the payload is not one zstd frame: its first frame ends at byte {first} of {}",
                stored.len()
            ));
        }
        self.dctx.decompress_to_buffer(stored, out).map_err(|e| e.to_string())
    }
}

/// True when every byte is zero. Reads 16 bytes at a time; stops at the
/// first non-zero word, so data chunks cost almost nothing.
pub fn is_zero(b: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only yields
        // correctly aligned, in-bounds middle elements.
        unsafe { b.align_to::<u128>() }
    };
    head.iter().all(|&x| x == 0) && body.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_chunks_shrink_and_random_ones_are_stored_raw() {
        let mut enc = Encoder::new(1).unwrap();
        let mut dec = Decoder::new().unwrap();
        let text: Vec<u8> = b"the quick brown fox ".iter().copied().cycle().take(65536).collect();
        let mut out = vec![0u8; 65536];
        let (codec, n) = enc.encode(&text, &mut out);
        assert_eq!(codec, Codec::Zstd);
        assert!(n < 2000);
        let mut back = vec![0u8; 65536];
        assert_eq!(dec.decode(&out[..n], &mut back), Ok(65536));
        assert_eq!(back, text);

        let random = crate::sample::random_bytes(65536, 0x9e37_79b9_7f4a_7c15);
        assert_eq!(enc.encode(&random, &mut out), (Codec::None, 65536));
        assert_eq!(out, random);
        assert_eq!(Encoder::new(0).unwrap().encode(&text, &mut out), (Codec::None, 65536));
    }

    /// zstd would decode these; the format allows exactly one frame.
    #[test]
    fn a_payload_must_be_exactly_one_zstd_frame() {
        let mut enc = Encoder::new(1).unwrap();
        let mut dec = Decoder::new().unwrap();
        let text: Vec<u8> = b"one frame only ".iter().copied().cycle().take(32768).collect();
        let mut one = vec![0u8; 32768];
        let (_, n) = enc.encode(&text, &mut one);
        one.truncate(n);
        let mut back = vec![0u8; 65536];
        let mut two = one.clone();
        two.extend_from_slice(&one);
        let why = dec.decode(&two, &mut back).unwrap_err();
        assert!(why.contains(&format!("first frame ends at byte {n} of {}", 2 * n)), "{why}");
        // A skippable frame (magic 0x184D2A50, 4-byte length, payload) after it.
        let mut skip = one.clone();
        skip.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9]);
        assert!(dec.decode(&skip, &mut back).unwrap_err().contains("not one zstd frame"));
        assert!(dec.decode(&one[..n - 1], &mut back).unwrap_err().contains("not a zstd frame"));
        assert_eq!(dec.decode(&one, &mut back), Ok(32768));
    }

    #[test]
    fn zero_check_finds_any_non_zero_byte() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v[1..]));
        for i in [0, 1, 15, 16, 17, 4000, 4098] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            assert!(i == 0 || !is_zero(&v[1..]), "byte {i} unaligned");
            v[i] = 0;
        }
    }
}
