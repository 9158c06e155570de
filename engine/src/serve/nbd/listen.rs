//! Listening: the socket, and the accept loop with its limits (clients at
//! once, bytes of requests in service, a write timeout).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::connection::session;
use crate::error::{Error, Result};
use crate::observe::Observer;
use crate::serve::export::Export;
use crate::serve::options::{Listen, ServeOptions};

pub(crate) fn listen(
    opts: &ServeOptions,
    export: &Arc<Export>,
    done: &Arc<AtomicU64>,
    obs: &dyn Observer,
) -> Result<()> {
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
                        reason: crate::error::Refusal::Exists,
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
