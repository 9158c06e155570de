//! The NBD protocol (docs: NetworkBlockDevice/nbd doc/proto.md), server
//! side (read-only, or writes into the export's overlay): fixed newstyle
//! handshake; options EXPORT_NAME, ABORT, LIST, INFO, GO (with
//! NBD_INFO_BLOCK_SIZE), STRUCTURED_REPLY, LIST_/SET_META_CONTEXT
//! (base:allocation); commands READ (simple or structured replies, holes
//! for zero and unused chunks), WRITE (into the overlay, when there is
//! one), DISC, FLUSH, BLOCK_STATUS. Every malformed input ends in the
//! protocol's error or a closed connection, never a panic; a client can
//! only hurt its own thread.

mod commands;
mod connection;
mod handshake;
mod listen;
mod protocol;

pub use self::connection::session;
pub(crate) use self::listen::listen;
pub use self::listen::MAX_CLIENTS;
