//! The NBD protocol (docs: NetworkBlockDevice/nbd doc/proto.md), server
//! side, read-only: fixed newstyle handshake; options EXPORT_NAME, ABORT,
//! LIST, INFO, GO (with NBD_INFO_BLOCK_SIZE), STRUCTURED_REPLY,
//! LIST_/SET_META_CONTEXT (base:allocation); commands READ (simple or
//! structured replies, holes for zero and unused chunks), DISC, FLUSH,
//! BLOCK_STATUS. Every malformed input ends in the protocol's error or a
//! closed connection, never a panic; a client can only hurt its own thread.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{ChunkData, Export, Listen, ServeOptions};
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::observe::Observer;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 1 | 1 << 31;
const REP_ERR_INVALID: u32 = 3 | 1 << 31;
const REP_ERR_UNKNOWN: u32 = 6 | 1 << 31;
const REP_ERR_TOO_BIG: u32 = 9 | 1 << 31;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_DF: u16 = 1 << 7;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_DF: u16 = 1 << 1;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = 1 << 15 | 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const EOVERFLOW: u32 = 75;

const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;

/// The one meta context served.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;
/// Longest option payload accepted.
const MAX_OPTION: u32 = 64 << 10;
/// Longest read served in one request.
const MAX_READ: u32 = 32 << 20;

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

fn listen(opts: &ServeOptions, export: &Arc<Export>, done: &Arc<AtomicU64>, obs: &dyn Observer) -> Result<()> {
    match &opts.listen {
        Listen::Unix(path) => {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                // A socket nobody listens on (a server killed with -9) is
                // stale: replaced. Anything else is someone's: refused.
                let stale = m.file_type().is_socket()
                    && matches!(
                        std::os::unix::net::UnixStream::connect(path),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                    );
                if !stale {
                    return Err(Error::Unusable {
                        path: path.clone(),
                        why: "exists (a file, or a socket a server listens on); remove it or choose another socket \
                              path"
                            .into(),
                    });
                }
                obs.note(&format!("replacing {}, a stale socket nobody listens on", path.display()));
                std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))?;
            }
            let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| Error::io("listen on", path, e))?;
            obs.note(&format!(
                "serving image {} ({} bytes) read-only on unix:{} (e.g. nbdinfo 'nbd+unix:///?socket={}')",
                export.name,
                export.size(),
                path.display(),
                path.display()
            ));
            l.set_nonblocking(true).map_err(|e| Error::io("listen on", path, e))?;
            let r = accept_loop(opts, export, done, obs, || {
                l.accept().and_then(|(s, _)| {
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    s.set_nonblocking(false).map(|()| s)
                })
            });
            let _ = std::fs::remove_file(path);
            r
        }
        Listen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| Error::io("listen on", addr, e))?;
            let local = l.local_addr().map_err(|e| Error::io("listen on", addr, e))?;
            if !local.ip().is_loopback() {
                if !opts.public {
                    return Err(Error::InvalidSetting(format!(
                        "--listen tcp:{addr}: not a loopback address; NBD has no authentication here, so anyone who \
                         can reach it reads the image. Pass --public to do it anyway"
                    )));
                }
                obs.note(&format!("WARNING: serving on {local} without authentication or encryption"));
            }
            obs.note(&format!(
                "serving image {} ({} bytes) read-only on tcp:{local} (e.g. nbdinfo nbd://{local})",
                export.name,
                export.size()
            ));
            l.set_nonblocking(true).map_err(|e| Error::io("listen on", addr, e))?;
            accept_loop(opts, export, done, obs, || {
                l.accept().and_then(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    s.set_nonblocking(false).map(|()| s)
                })
            })
        }
    }
}

/// Serve one client on `stream` until it disconnects or errs: the
/// handshake, then requests. What the accept loop runs per connection; also
/// the entry point of the NBD fuzz target.
pub fn session<S: Read + Write>(stream: S, export: &Export) -> Result<()> {
    Connection::new(stream, export)?.run()
}

/// At most this many clients are served at once (a thread each); more are
/// disconnected at once, with a note.
pub const MAX_CLIENTS: u64 = 64;

/// A client that leaves a reply unread this long is disconnected (its
/// share of the request budget is needed by the others).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Accept clients (the listener is non-blocking, so a signal is noticed
/// within 50 ms) and give each its own thread.
fn accept_loop<S>(
    opts: &ServeOptions,
    export: &Arc<Export>,
    done: &Arc<AtomicU64>,
    obs: &dyn Observer,
    accept: impl Fn() -> std::io::Result<S>,
) -> Result<()>
where
    S: Read + Write + Send + 'static,
{
    let mut started = 0u64;
    let mut turned_away = 0u64;
    loop {
        if crate::observe::interrupted() {
            return Ok(());
        }
        if opts.max_connections.is_some_and(|m| started >= m) {
            while opts.max_connections.is_some_and(|m| done.load(Ordering::Relaxed) < m) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            return Ok(());
        }
        let stream = match accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            // Out of descriptors or memory for one more client: it waits in
            // the listen queue until a client leaves; the others are served on.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                turned_away += 1;
                if turned_away.is_power_of_two() {
                    obs.note(&format!(
                        "a new client cannot be accepted yet ({e}); it waits until another leaves ({turned_away} \
                         tries so far)"
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(Error::io("accept", "listening socket", e)),
        };
        if started - done.load(Ordering::Relaxed) >= MAX_CLIENTS {
            turned_away += 1;
            if turned_away.is_power_of_two() {
                obs.note(&format!(
                    "{MAX_CLIENTS} clients are connected: a new one was turned away ({turned_away} so far)"
                ));
            }
            drop(stream);
            continue;
        }
        started += 1;
        let (export, ended) = (export.clone(), done.clone());
        let spawned = std::thread::Builder::new().name(format!("tintype-nbd-{started}")).spawn(move || {
            // Whatever the client does, it ends its own connection only.
            let _ = session(stream, &export);
            ended.fetch_add(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            // No thread for this client (RLIMIT_NPROC, memory): it goes (its
            // stream was moved into the closure, dropped with it), the
            // others are served on.
            done.fetch_add(1, Ordering::Relaxed);
            turned_away += 1;
            if turned_away.is_power_of_two() {
                obs.note(&format!("no thread for a new client ({e}); turned away ({turned_away} so far)"));
            }
        }
    }
}

/// Part of a decompressed chunk: (the chunk, first byte, length).
type Slice = (Arc<Vec<u8>>, usize, usize);

struct Connection<'a, S> {
    s: S,
    export: &'a Export,
    no_zeroes: bool,
    structured: bool,
    meta: bool,
    dec: Decoder,
}

type Io<T> = std::io::Result<T>;

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

impl<'a, S: Read + Write> Connection<'a, S> {
    fn new(s: S, export: &'a Export) -> Result<Self> {
        let dec = Decoder::new().map_err(|e| Error::io("create decoder for", "serve", e))?;
        Ok(Connection { s, export, no_zeroes: false, structured: false, meta: false, dec })
    }

    fn run(mut self) -> Result<()> {
        let go = self.handshake().map_err(|e| Error::io("NBD handshake", "client", e))?;
        if go {
            self.transmission().map_err(|e| Error::io("NBD transmission", "client", e))?;
        }
        Ok(())
    }

    fn u16(&mut self) -> Io<u16> {
        let mut b = [0u8; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> Io<u32> {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Io<u64> {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn opt_reply(&mut self, option: u32, kind: u32, data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(20 + data.len());
        m.extend_from_slice(&REP_MAGIC.to_be_bytes());
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)
    }

    fn export_flags(&self) -> u16 {
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
    fn known(&self, name: &[u8]) -> bool {
        name.is_empty() || (name.len() <= 16 && self.export.name.as_bytes().starts_with(name))
    }

    /// The fixed newstyle handshake. Ok(true): go to transmission.
    fn handshake(&mut self) -> Io<bool> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.s.write_all(&hello)?;
        let client = self.u32()?;
        if client & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
            return Err(bad("the client does not speak fixed newstyle"));
        }
        if client & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
            return Err(bad("unknown client flags"));
        }
        self.no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
        loop {
            if self.u64()? != IHAVEOPT {
                return Err(bad("bad option magic"));
            }
            let option = self.u32()?;
            let len = self.u32()?;
            if len > MAX_OPTION {
                // Too big to read: say so and drop the connection.
                let _ = self.opt_reply(option, REP_ERR_TOO_BIG, b"option too long");
                return Err(bad("option too long"));
            }
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
            match option {
                OPT_EXPORT_NAME => {
                    if !self.known(&data) {
                        return Err(bad("unknown export name"));
                    }
                    let mut m = Vec::new();
                    m.extend_from_slice(&self.export.size().to_be_bytes());
                    m.extend_from_slice(&self.export_flags().to_be_bytes());
                    if !self.no_zeroes {
                        m.extend_from_slice(&[0u8; 124]);
                    }
                    self.s.write_all(&m)?;
                    return Ok(true);
                }
                OPT_ABORT => {
                    let _ = self.opt_reply(option, REP_ACK, &[]);
                    return Ok(false);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.opt_reply(option, REP_ERR_INVALID, b"LIST takes no data")?;
                        continue;
                    }
                    let name = self.export.name.clone();
                    let mut m = (name.len() as u32).to_be_bytes().to_vec();
                    m.extend_from_slice(name.as_bytes());
                    self.opt_reply(option, REP_SERVER, &m)?;
                    self.opt_reply(option, REP_ACK, &[])?;
                }
                OPT_INFO | OPT_GO => {
                    let Some(name) = parse_info(&data) else {
                        self.opt_reply(option, REP_ERR_INVALID, b"malformed INFO/GO request")?;
                        continue;
                    };
                    if !self.known(name) {
                        self.opt_reply(option, REP_ERR_UNKNOWN, b"no such export")?;
                        continue;
                    }
                    let mut m = INFO_EXPORT.to_be_bytes().to_vec();
                    m.extend_from_slice(&self.export.size().to_be_bytes());
                    m.extend_from_slice(&self.export_flags().to_be_bytes());
                    self.opt_reply(option, REP_INFO, &m)?;
                    let mut m = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    m.extend_from_slice(&1u32.to_be_bytes());
                    m.extend_from_slice(&(self.export.chunk_bytes().min(u64::from(MAX_READ)) as u32).to_be_bytes());
                    m.extend_from_slice(&MAX_READ.to_be_bytes());
                    self.opt_reply(option, REP_INFO, &m)?;
                    self.opt_reply(option, REP_ACK, &[])?;
                    if option == OPT_GO {
                        return Ok(true);
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        self.opt_reply(option, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")?;
                        continue;
                    }
                    self.structured = true;
                    self.opt_reply(option, REP_ACK, &[])?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    let Some((name, queries)) = parse_meta(&data) else {
                        self.opt_reply(option, REP_ERR_INVALID, b"malformed meta context request")?;
                        continue;
                    };
                    if option == OPT_SET_META_CONTEXT && !self.structured {
                        self.opt_reply(option, REP_ERR_INVALID, b"structured replies first")?;
                        continue;
                    }
                    if !self.known(name) {
                        self.opt_reply(option, REP_ERR_UNKNOWN, b"no such export")?;
                        continue;
                    }
                    let wants = (option == OPT_LIST_META_CONTEXT && queries.is_empty())
                        || queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes() || *q == b"base:");
                    if option == OPT_SET_META_CONTEXT {
                        self.meta = wants;
                    }
                    if wants {
                        let mut m = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        m.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        self.opt_reply(option, REP_META_CONTEXT, &m)?;
                    }
                    self.opt_reply(option, REP_ACK, &[])?;
                }
                _ => self.opt_reply(option, REP_ERR_UNSUP, b"option not supported")?,
            }
        }
    }

    fn simple_reply(&mut self, handle: u64, error: u32, data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&error.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        self.s.write_all(&m)?;
        self.s.write_all(data)
    }

    fn chunk_reply(&mut self, handle: u64, flags: u16, kind: u16, head: &[u8], data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(20 + head.len());
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&((head.len() + data.len()) as u32).to_be_bytes());
        m.extend_from_slice(head);
        self.s.write_all(&m)?;
        self.s.write_all(data)
    }

    fn error_reply(&mut self, handle: u64, error: u32, msg: &str) -> Io<()> {
        if self.structured {
            let mut head = error.to_be_bytes().to_vec();
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            head.extend_from_slice(msg);
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &head, &[])
        } else {
            self.simple_reply(handle, error, &[])
        }
    }

    fn transmission(&mut self) -> Io<()> {
        let size = self.export.size();
        loop {
            if self.u32()? != REQUEST_MAGIC {
                return Err(bad("bad request magic"));
            }
            let flags = self.u16()?;
            let kind = self.u16()?;
            let handle = self.u64()?;
            let offset = self.u64()?;
            let len = self.u32()?;
            let in_range = offset.checked_add(u64::from(len)).is_some_and(|end| end <= size);
            match kind {
                CMD_DISC => return Ok(()),
                CMD_READ if !in_range => self.error_reply(handle, EINVAL, "read past the end of the export")?,
                CMD_READ if len > MAX_READ => self.error_reply(handle, EOVERFLOW, "read longer than 32 MiB")?,
                CMD_READ => {
                    let _share = self.export.budget.take(u64::from(len));
                    self.read(handle, flags, offset, len)?
                }
                CMD_WRITE if self.export.overlay.is_some() && in_range && len <= MAX_READ => {
                    let _share = self.export.budget.take(u64::from(len));
                    let mut data = vec![0u8; len as usize];
                    self.s.read_exact(&mut data)?;
                    let export = self.export;
                    let dec = &mut self.dec;
                    let r = export.overlay.as_ref().expect("overlay").lock().expect("overlay lock").write(
                        offset,
                        &data,
                        &mut |at, buf| export.read_base(at, buf, dec).map_err(|e| std::io::Error::other(e.to_string())),
                    );
                    match r {
                        Ok(()) => self.simple_or_done(handle)?,
                        Err(e) => self.error_reply(handle, EIO, &format!("overlay write failed: {e}"))?,
                    }
                }
                CMD_WRITE => {
                    // Read-only, out of range or too long: take the data off the wire, refuse it.
                    let err = if self.export.overlay.is_none() { EPERM } else { EINVAL };
                    let mut left = u64::from(len);
                    let mut sink = vec![0u8; 1 << 16];
                    while left > 0 {
                        let n = left.min(sink.len() as u64) as usize;
                        self.s.read_exact(&mut sink[..n])?;
                        left -= n as u64;
                    }
                    self.error_reply(handle, err, "the export is read-only, or the write is out of range")?
                }
                CMD_FLUSH => match self.export.overlay.as_ref().map(|o| o.lock().expect("overlay lock").flush()) {
                    Some(Err(e)) => self.error_reply(handle, EIO, &format!("overlay flush failed: {e}"))?,
                    _ => self.simple_or_done(handle)?,
                },
                CMD_BLOCK_STATUS if !self.meta => self.error_reply(handle, EINVAL, "no meta context was negotiated")?,
                CMD_BLOCK_STATUS if !in_range || len == 0 => {
                    self.error_reply(handle, EINVAL, "block status past the end of the export")?
                }
                CMD_BLOCK_STATUS => self.block_status(handle, offset, len)?,
                _ => self.error_reply(handle, EINVAL, "command not supported")?,
            }
        }
    }

    fn simple_or_done(&mut self, handle: u64) -> Io<()> {
        if self.structured {
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[])
        } else {
            self.simple_reply(handle, 0, &[])
        }
    }

    /// Read `[offset, offset+len)`: each chunk from the cache or its frame
    /// (hash-checked); zero and unused chunks without I/O. Structured replies
    /// send holes for them unless the client asked not to fragment.
    fn read(&mut self, handle: u64, flags: u16, offset: u64, len: u32) -> Io<()> {
        let cs = self.export.chunk_bytes();
        let end = offset + u64::from(len);
        // (start, data or None for zeros)
        let mut pieces: Vec<(u64, Option<Slice>)> = Vec::new();
        let mut at = offset;
        while at < end {
            let chunk = at / cs;
            let within = (at - chunk * cs) as usize;
            let n = ((chunk + 1) * cs).min(end) - at;
            match self.export.chunk(chunk, &mut self.dec) {
                Ok(ChunkData::Zeros) => pieces.push((at, None)),
                Ok(ChunkData::Data(d)) => pieces.push((at, Some((d, within, n as usize)))),
                Err(e) => {
                    return self.error_reply(handle, EIO, &format!("chunk {chunk} is damaged: {e}"));
                }
            }
            at += n;
        }
        let piece_len = |i: usize| {
            let next = pieces.get(i + 1).map_or(end, |p| p.0);
            next - pieces[i].0
        };
        let overlaid =
            self.export.overlay.as_ref().is_some_and(|o| o.lock().expect("overlay lock").any(offset, u64::from(len)));
        if !self.structured || flags & CMD_FLAG_DF != 0 || overlaid {
            let mut buf = Vec::with_capacity(len as usize);
            for (i, (_, piece)) in pieces.iter().enumerate() {
                match piece {
                    Some((d, from, n)) => buf.extend_from_slice(&d[*from..*from + *n]),
                    None => buf.resize(buf.len() + piece_len(i) as usize, 0),
                }
            }
            if overlaid {
                let patched = self
                    .export
                    .overlay
                    .as_ref()
                    .expect("overlay")
                    .lock()
                    .expect("overlay lock")
                    .patch(offset, &mut buf);
                if let Err(e) = patched {
                    return self.error_reply(handle, EIO, &format!("overlay read failed: {e}"));
                }
            }
            return if self.structured {
                let head = offset.to_be_bytes();
                self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, &head, &buf)
            } else {
                self.simple_reply(handle, 0, &buf)
            };
        }
        for i in 0..pieces.len() {
            let last = if i + 1 == pieces.len() { REPLY_FLAG_DONE } else { 0 };
            let start = pieces[i].0;
            match pieces[i].1.clone() {
                Some((d, from, n)) => {
                    self.chunk_reply(handle, last, REPLY_TYPE_OFFSET_DATA, &start.to_be_bytes(), &d[from..from + n])?
                }
                None => {
                    let mut head = start.to_be_bytes().to_vec();
                    head.extend_from_slice(&(piece_len(i) as u32).to_be_bytes());
                    self.chunk_reply(handle, last, REPLY_TYPE_OFFSET_HOLE, &head, &[])?
                }
            }
        }
        if pieces.is_empty() {
            self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[])?;
        }
        Ok(())
    }

    /// base:allocation for `[offset, offset+len)`: zero and unused chunks are
    /// holes that read as zeros, the rest is data. Extents of equal state merged.
    fn block_status(&mut self, handle: u64, offset: u64, len: u32) -> Io<()> {
        let cs = self.export.chunk_bytes();
        let end = offset + u64::from(len);
        let mut descs: Vec<(u32, u32)> = Vec::new();
        let mut at = offset;
        while at < end && descs.len() < 1 << 16 {
            let chunk = at / cs;
            let n = (((chunk + 1) * cs).min(end) - at) as u32;
            let written =
                self.export.overlay.as_ref().is_some_and(|o| o.lock().expect("overlay lock").any(at, u64::from(n)));
            let state = if written || self.export.is_data(chunk) { 0 } else { STATE_HOLE | STATE_ZERO };
            match descs.last_mut() {
                Some(last) if last.1 == state && last.0.checked_add(n).is_some() => last.0 += n,
                _ => descs.push((n, state)),
            }
            at += u64::from(n);
        }
        let mut head = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        for (l, s) in descs {
            head.extend_from_slice(&l.to_be_bytes());
            head.extend_from_slice(&s.to_be_bytes());
        }
        self.chunk_reply(handle, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &head, &[])
    }
}

/// INFO/GO payload: u32 name length, name, u16 count, count × u16 requests.
fn parse_info(d: &[u8]) -> Option<&[u8]> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let rest = d.get(4 + n..)?;
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    (rest.len() == 2 + 2 * count).then_some(name)
}

/// META_CONTEXT payload: u32 name length, name, u32 count, count × (u32 length, query).
fn parse_meta(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut rest = d.get(4 + n..)?;
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest = &rest[4..];
    let mut queries = Vec::new();
    for _ in 0..count {
        let l = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        queries.push(rest.get(4..4usize.checked_add(l)?)?);
        rest = &rest[4 + l..];
    }
    rest.is_empty().then_some((name, queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_payloads_parse_or_are_refused() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info(&d), Some(&b"abc"[..]));
        assert_eq!(parse_info(&d[..d.len() - 1]), None);
        assert_eq!(parse_info(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta(&m), Some((&b""[..], vec![&b"base:allocation"[..]])));
        m.push(0);
        assert_eq!(parse_meta(&m), None);
    }
}
