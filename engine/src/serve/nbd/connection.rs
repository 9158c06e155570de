//! One client connection: its stream, what it negotiated, and the reads
//! of the protocol's big-endian integers.

use std::io::{Read, Write};
use std::sync::Arc;

use super::protocol::*;
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::serve::export::Export;

/// Part of a decompressed chunk: (the chunk, first byte, length).
pub(super) type Slice = (Arc<Vec<u8>>, usize, usize);

pub(super) struct Connection<'a, S> {
    pub(super) s: S,
    pub(super) export: &'a Export,
    pub(super) no_zeroes: bool,
    pub(super) structured: bool,
    pub(super) meta: bool,
    pub(super) dec: Decoder,
}

pub(super) type Io<T> = std::io::Result<T>;

pub(super) fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

impl<'a, S: Read + Write> Connection<'a, S> {
    pub(super) fn new(s: S, export: &'a Export) -> Result<Self> {
        let dec = Decoder::new().map_err(|e| Error::io("create decoder for", "serve", e))?;
        Ok(Connection { s, export, no_zeroes: false, structured: false, meta: false, dec })
    }

    pub(super) fn run(mut self) -> Result<()> {
        let go = self.handshake().map_err(|e| Error::io("NBD handshake", "client", e))?;
        if go {
            self.transmission().map_err(|e| Error::io("NBD transmission", "client", e))?;
        }
        Ok(())
    }

    pub(super) fn u16(&mut self) -> Io<u16> {
        let mut b = [0u8; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub(super) fn u32(&mut self) -> Io<u32> {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub(super) fn u64(&mut self) -> Io<u64> {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    pub(super) fn export_flags(&self) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
        if self.export.overlay.is_none() {
            f |= TFLAG_READ_ONLY;
        }
        if self.structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }

    /// Is `name` this export? The default ("") and the Image ID (or a prefix of it) are.
    pub(super) fn known(&self, name: &[u8]) -> bool {
        name.is_empty() || (name.len() <= 16 && self.export.name.as_bytes().starts_with(name))
    }
}

/// Serve one client on `stream` until it disconnects or errs: the
/// handshake, then requests. What the accept loop runs per connection; also
/// the entry point of the NBD fuzz target.
pub fn session<S: Read + Write>(stream: S, export: &Export) -> Result<()> {
    Connection::new(stream, export)?.run()
}
