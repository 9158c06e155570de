//! `serve`: export an image as a read-only NBD device (fixed newstyle
//! handshake, structured replies, base:allocation block status), reading
//! chunks through the index on demand, each checked against its hash, with a
//! bounded cache of decompressed chunks. One thread per client: a client's
//! requests are answered in order, clients are independent. See nbd.rs.

pub mod nbd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::index::ChunkState;
use crate::set::{Image, ImageSet, Resolved};

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
}

/// The image being exported: its chunks, resolved through the chain.
pub struct Export {
    pub img: Image,
    pub resolved: Resolved,
    pub name: String,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").field("name", &self.name).finish()
    }
}

/// Recently decompressed chunks, least recently used out first.
#[derive(Default)]
struct Cache {
    map: HashMap<u64, (Arc<Vec<u8>>, u64)>,
    clock: u64,
    limit: usize,
}

/// What a chunk reads as.
#[derive(Debug)]
pub enum ChunkData {
    /// Zero or unused: nothing to read.
    Zeros,
    Data(Arc<Vec<u8>>),
}

impl Export {
    pub fn open(opts: &ServeOptions) -> Result<Export> {
        let set = ImageSet::open(&opts.set)?;
        let img = set.resolve(opts.image.as_deref())?;
        let chain = set.chain(&img)?;
        let resolved = Resolved::load(&chain)?;
        let limit = (opts.cache_bytes / u64::from(img.manifest.chunk_size_bytes)).max(2) as usize;
        Ok(Export {
            name: img.manifest.image_id.clone(),
            img,
            resolved,
            cache: Mutex::new(Cache { limit, ..Default::default() }),
        })
    }

    pub fn size(&self) -> u64 {
        self.img.manifest.source.size_bytes
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.img.manifest.chunk_size_bytes)
    }

    /// Does the chunk hold data (false: zero or unused)?
    pub fn is_data(&self, chunk: u64) -> bool {
        !matches!(self.resolved.entries[chunk as usize].state, ChunkState::Zero | ChunkState::Unused)
    }

    /// A chunk's bytes, checked against its hashes; errors name the damage.
    pub fn chunk(&self, chunk: u64, dec: &mut Decoder) -> Result<ChunkData> {
        if !self.is_data(chunk) {
            return Ok(ChunkData::Zeros);
        }
        {
            let mut c = self.cache.lock().expect("cache lock");
            c.clock += 1;
            let now = c.clock;
            if let Some((data, used)) = c.map.get_mut(&chunk) {
                *used = now;
                return Ok(ChunkData::Data(data.clone()));
            }
        }
        let mut buf = vec![0u8; self.chunk_bytes() as usize];
        let n = self.resolved.read_chunk(&self.img, chunk, &mut buf, dec)?;
        buf.truncate(n);
        let data = Arc::new(buf);
        let mut c = self.cache.lock().expect("cache lock");
        if c.map.len() >= c.limit {
            if let Some(&old) = c.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k) {
                c.map.remove(&old);
            }
        }
        let now = c.clock;
        c.map.insert(chunk, (data.clone(), now));
        Ok(ChunkData::Data(data))
    }
}
