//! The NBD protocol (docs: NetworkBlockDevice/nbd doc/proto.md), server
//! side, read-only: fixed newstyle handshake; options EXPORT_NAME, ABORT,
//! LIST, INFO, GO (with NBD_INFO_BLOCK_SIZE), STRUCTURED_REPLY,
//! LIST_/SET_META_CONTEXT (base:allocation); commands READ (simple or
//! structured replies, holes for zero and unused chunks), DISC, FLUSH,
//! BLOCK_STATUS. Every malformed input ends in the protocol's error or a
//! closed connection, never a panic; a client can only hurt its own thread.

mod commands;
mod connection;
mod handshake;
mod listen;
mod protocol;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use self::connection::session;
use self::listen::listen;
pub use self::listen::MAX_CLIENTS;
use super::{Export, ServeOptions};
use crate::error::Result;
use crate::observe::Observer;

/// Serve `opts` until interrupted (or `max_connections` have ended).
pub fn serve(opts: &ServeOptions, obs: &dyn Observer) -> Result<()> {
    let export = Arc::new(Export::open(opts)?);
    let done = Arc::new(AtomicU64::new(0));
    let r = listen(opts, &export, &done, obs);
    // Client threads may outlive this (holding the export); the overlay's
    // map dies with the process, so its file goes now.
    if let Some(o) = &export.overlay {
        let _ = std::fs::remove_file(&o.lock().unwrap_or_else(|p| p.into_inner()).path);
    }
    r
}
