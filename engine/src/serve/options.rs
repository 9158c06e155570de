//! What `serve` is asked to do: the image, where to listen, the limits.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

impl Listen {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    pub fn parse(s: &str) -> Result<Listen> {
        if let Some(p) = s.strip_prefix("unix:") {
            // An empty path would bind an abstract socket no client can name.
            if p.is_empty() {
                return Err(Error::InvalidSetting(format!("--listen {s:?}: unix: needs a socket path")));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            return Ok(Listen::Tcp(a.to_string()));
        }
        Err(Error::InvalidSetting(format!("--listen {s:?}: use unix:PATH or tcp:HOST:PORT")))
    }
}

/// How to run `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub set: PathBuf,
    pub image: Option<String>,
    pub listen: Listen,
    /// Allow a TCP address that is not a loopback address.
    pub public: bool,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_bytes: u64,
    /// Stop after this many client connections have ended (tests).
    pub max_connections: Option<u64>,
    /// Accept writes into this new copy-on-write file; the image is never written.
    pub overlay: Option<PathBuf>,
}
