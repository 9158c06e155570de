//! `serve`: export an image as an NBD device (fixed newstyle handshake,
//! structured replies, base:allocation block status), reading chunks
//! through the index on demand, each checked against its hash, with a
//! bounded cache of decompressed chunks. Read-only, unless
//! `--writable-overlay` takes writes into a copy-on-write file of its own
//! (the image is never written). One thread per client: a client's requests
//! are answered in order, clients are independent. The protocol is in
//! [`nbd`].

pub mod export;
pub mod nbd;
pub mod options;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use self::export::{ChunkData, Export};
pub use self::options::{Listen, ServeOptions};
use crate::error::Result;
use crate::observe::Observer;

/// Serve `opts` until interrupted (or `max_connections` have ended).
pub fn serve(opts: &ServeOptions, obs: &dyn Observer) -> Result<()> {
    let export = Arc::new(Export::open(opts)?);
    let done = Arc::new(AtomicU64::new(0));
    let r = nbd::listen(opts, &export, &done, obs);
    // Client threads may outlive this (holding the export); the overlay's
    // map dies with the process, so its file goes now.
    if let Some(o) = &export.overlay {
        let _ = std::fs::remove_file(&o.lock().unwrap_or_else(|p| p.into_inner()).path);
    }
    r
}
