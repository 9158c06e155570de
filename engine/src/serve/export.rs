//! The exported image: its chain resolved, chunks read and checked on
//! demand through a bounded cache, the budget of request bytes in service,
//! and the optional copy-on-write overlay that takes writes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::options::ServeOptions;
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::index::ChunkState;
use crate::set::chain::Resolved;
use crate::set::image::Image;
use crate::set::ImageSet;

/// Overlay block size: writes are kept per 4 KiB block.
pub const OVERLAY_BLOCK: u64 = 4096;

/// Copy-on-write writes: a sparse file the size of the export, and which
/// 4 KiB blocks of it hold written data (in memory: an overlay belongs to one
/// run of `serve`).
#[derive(Debug)]
pub struct Overlay {
    pub path: PathBuf,
    file: std::fs::File,
    size: u64,
    written: Vec<u64>,
}

/// The overlay's block map dies with the run, so its file goes too.
impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Overlay {
    fn create(path: &std::path::Path, size: u64) -> Result<Overlay> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(|e| {
                match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Error::Unusable {
                        reason: crate::error::Refusal::Exists,
                        path: path.into(),
                        why: "exists: an overlay is a new file for one run (a serve killed with -9 leaves its overlay \
                          behind, without the map of what was written: remove it)"
                            .into(),
                    },
                    _ => Error::io("create overlay", path, e),
                }
            })?;
        file.set_len(size).map_err(|e| Error::io("size overlay", path, e))?;
        let blocks = size.div_ceil(OVERLAY_BLOCK);
        Ok(Overlay { path: path.into(), file, size, written: vec![0; blocks.div_ceil(64) as usize] })
    }

    pub fn has(&self, block: u64) -> bool {
        self.written[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Any written block in `[offset, offset+len)`?
    pub fn any(&self, offset: u64, len: u64) -> bool {
        len > 0 && (offset / OVERLAY_BLOCK..(offset + len).div_ceil(OVERLAY_BLOCK)).any(|b| self.has(b))
    }

    /// Put the overlay's written blocks over `buf`, which holds `[offset, offset+buf.len())`.
    pub fn patch(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = offset + buf.len() as u64;
        for b in offset / OVERLAY_BLOCK..end.div_ceil(OVERLAY_BLOCK) {
            if !self.has(b) {
                continue;
            }
            let (s, e) = ((b * OVERLAY_BLOCK).max(offset), ((b + 1) * OVERLAY_BLOCK).min(end));
            self.file.read_exact_at(&mut buf[(s - offset) as usize..(e - offset) as usize], s)?;
        }
        Ok(())
    }

    /// Write `data` at `offset`; `base(block_start, buf)` fills a block's
    /// current content when a write covers only part of a block not yet written.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        base: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = offset + data.len() as u64;
        let mut blk = vec![0u8; OVERLAY_BLOCK as usize];
        for b in offset / OVERLAY_BLOCK..end.div_ceil(OVERLAY_BLOCK) {
            let (bs, be) = (b * OVERLAY_BLOCK, ((b + 1) * OVERLAY_BLOCK).min(self.size));
            let (s, e) = (bs.max(offset), be.min(end));
            let part = &data[(s - offset) as usize..(e - offset) as usize];
            if s == bs && e == be {
                self.file.write_all_at(part, bs)?;
            } else {
                let n = (be - bs) as usize;
                if self.has(b) {
                    self.file.read_exact_at(&mut blk[..n], bs)?;
                } else {
                    base(bs, &mut blk[..n])?;
                }
                blk[(s - bs) as usize..(e - bs) as usize].copy_from_slice(part);
                self.file.write_all_at(&blk[..n], bs)?;
            }
            self.written[(b / 64) as usize] |= 1 << (b % 64);
        }
        Ok(())
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The image being exported: its chunks, resolved through the chain.
pub struct Export {
    pub img: Image,
    pub resolved: Resolved,
    pub name: String,
    cache: Mutex<Cache>,
    /// Writable exports only.
    pub overlay: Option<Mutex<Overlay>>,
    /// The set's readers' lock, shared, for as long as the export lives:
    /// merge and prune cannot remove what is being served.
    _lock: crate::set::lock::SetLock,
    /// Bytes of requests in service at once, over every client.
    pub budget: Budget,
}

/// How many bytes of requests are served at once, over every client: a
/// request waits until its length fits, so memory stays bounded however
/// many clients ask for 32 MiB reads at once (and leave the replies unread).
#[derive(Debug)]
pub struct Budget {
    left: Mutex<u64>,
    freed: std::sync::Condvar,
    total: u64,
}

/// A share of the [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Share<'a>(&'a Budget, u64);

impl Budget {
    pub fn new(total: u64) -> Budget {
        Budget { left: Mutex::new(total), freed: std::sync::Condvar::new(), total }
    }

    /// Wait until `bytes` (at most the whole budget) are free, and take them.
    pub fn take(&self, bytes: u64) -> Share<'_> {
        let n = bytes.min(self.total);
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        while *left < n {
            left = self.freed.wait(left).unwrap_or_else(|p| p.into_inner());
        }
        *left -= n;
        Share(self, n)
    }

    /// Bytes free now.
    pub fn free(&self) -> u64 {
        *self.left.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        *self.0.left.lock().unwrap_or_else(|p| p.into_inner()) += self.1;
        self.0.freed.notify_all();
    }
}

/// Requests in service at once, in bytes (8 reads of the largest size).
pub const REQUEST_BUDGET_BYTES: u64 = 256 << 20;

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
        let lock = crate::set::lock::lock_set(&set.dir, crate::set::lock::Access::Read, "serve")?;
        let img = set.resolve(opts.image.as_deref())?;
        let chain = set.chain(&img)?;
        let resolved = Resolved::load(&chain)?;
        resolved.check_segment_headers(img.manifest.chunk_size_bytes)?;
        let limit = (opts.cache_bytes / u64::from(img.manifest.chunk_size_bytes)).max(2) as usize;
        let overlay = match &opts.overlay {
            Some(p) => Some(Mutex::new(Overlay::create(p, img.manifest.source.size_bytes)?)),
            None => None,
        };
        Ok(Export {
            name: img.manifest.image_id.clone(),
            img,
            resolved,
            cache: Mutex::new(Cache { limit, ..Default::default() }),
            overlay,
            _lock: lock,
            budget: Budget::new(REQUEST_BUDGET_BYTES),
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
        !matches!(self.resolved.entry(chunk).state, ChunkState::Zero | ChunkState::Unused)
    }

    /// The image's bytes (overlay not applied) at `[offset, offset+buf.len())`.
    pub fn read_base(&self, offset: u64, buf: &mut [u8], dec: &mut Decoder) -> Result<()> {
        let cs = self.chunk_bytes();
        let mut at = 0usize;
        while at < buf.len() {
            let pos = offset + at as u64;
            let chunk = pos / cs;
            let within = (pos - chunk * cs) as usize;
            let n = (((chunk + 1) * cs - pos) as usize).min(buf.len() - at);
            match self.chunk(chunk, dec)? {
                ChunkData::Zeros => buf[at..at + n].fill(0),
                ChunkData::Data(d) => buf[at..at + n].copy_from_slice(&d[within..within + n]),
            }
            at += n;
        }
        Ok(())
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

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// Shares add up to at most the budget; a request waits for room and
    /// goes on when a share is given back; an oversized one takes it all.
    #[test]
    fn requests_wait_for_room_in_the_budget() {
        let b = Arc::new(Budget::new(100));
        let a = b.take(60);
        let c = b.take(40);
        assert_eq!(b.free(), 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let s = b.take(500); // larger than the budget: waits for all of it
                tx.send(b.free()).unwrap();
                drop(s);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "no room yet");
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "still not all of it");
        drop(c);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 0);
        waiter.join().unwrap();
        assert_eq!(b.free(), 100);
    }
}
