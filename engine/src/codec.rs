//! Chunk compression: one reused zstd context per lane.

use crate::format::frame::Codec;

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

    /// Decode a zstd payload into `out`, returning the decoded length.
    pub fn decode(&mut self, stored: &[u8], out: &mut [u8]) -> Result<usize, String> {
        self.dctx.decompress_to_buffer(stored, out).map_err(|e| e.to_string())
    }
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
}
