//! `tintype serve`: real NBD clients (libnbd's nbdinfo and nbdcopy, qemu-img)
//! against the export, and a hand-written client for damage and abuse.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A running `tintype serve`; interrupted (SIGINT) on drop.
struct Server {
    child: Child,
    sock: PathBuf,
}

impl Server {
    fn start(sb: &Sandbox, spec: &str) -> Server {
        Server::start_with(sb, spec, &[])
    }

    fn start_with(sb: &Sandbox, spec: &str, extra: &[&str]) -> Server {
        let sock = sb.path("nbd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(["serve", spec, "--listen", &format!("unix:{}", sock.display())])
            .args(extra)
            .current_dir(sb.dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, sock }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    /// SIGINT: the server stops, exit 0, and removes its socket.
    fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) }, 0);
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(!self.sock.exists(), "the socket is removed");
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source(sb: &Sandbox) -> Vec<u8> {
    // Data, then a zero stretch, then data: the map must show the hole.
    let mut v = mixed_bytes(12 << 20, 31);
    v[4 << 20..7 << 20].fill(0);
    std::fs::write(sb.path("src.img"), &v).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "1M"], 0);
    v
}

/// nbdinfo, nbdcopy, qemu-img compare and nbdinfo --map against the export.
#[test]
fn real_nbd_clients_read_the_image() {
    let needs = [Need::Tool("nbdinfo"), Need::Tool("nbdcopy"), Need::Tool("qemu-img")];
    if !require("real_nbd_clients_read_the_image", &needs) {
        return;
    }
    let sb = Sandbox::new();
    let data = source(&sb);
    let srv = Server::start(&sb, "set");
    let out = Command::new("nbdinfo").args(["--json", &srv.uri()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], data.len() as u64);
    assert_eq!(e["is_read_only"], true);
    assert_eq!(e["block_size_preferred"], 1 << 20);
    assert_eq!(e["block_size_minimum"], 1);
    let out = Command::new("nbdcopy").args([&srv.uri(), sb.path("copy.img").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(sb.path("copy.img")).unwrap() == data, "nbdcopy of the export equals the source");
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", sb.path("src.img").to_str().unwrap(), &srv.uri()])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("identical"));
    let out = Command::new("nbdinfo").args(["--map", "--json", &srv.uri()]).output().unwrap();
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holes: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"].as_u64() == Some(3))
        .map(|m| (m["offset"].as_u64().unwrap(), m["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(holes, vec![(4 << 20, 3 << 20)], "the zero chunks are reported as holes: {map}");
    srv.stop();
}

/// A minimal client: handshake with NO_ZEROES, then OPT_GO for the default export.
fn connect(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut go = b"IHAVEOPT".to_vec();
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&6u32.to_be_bytes());
    go.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    s.write_all(&go).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        if kind == 1 {
            return s;
        }
        assert_eq!(kind, 3, "an INFO reply before the ACK");
    }
}

/// Send a request; return (error, data) from the simple reply.
fn request(s: &mut UnixStream, kind: u16, offset: u64, len: u32) -> (u32, Vec<u8>) {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&42u64.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    s.write_all(&r).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 42);
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut d = vec![0u8; if err == 0 && kind == 0 { len as usize } else { 0 }];
    s.read_exact(&mut d).unwrap();
    (err, d)
}

/// A damaged chunk reads as EIO while the others still read; bad requests
/// get the protocol's errors; garbage, oversized options and clients that
/// vanish mid-request end only their own connection.
#[test]
fn damage_and_abuse_do_not_take_the_server_down() {
    let sb = Sandbox::new();
    let data = source(&sb);
    let (seg, e) = frame_of(&sb.path("set"), 1);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0xa5; 16], e.offset + 200).unwrap();
    }
    let srv = Server::start(&sb, "set");
    let mut c = connect(&srv.sock);
    assert_eq!(request(&mut c, 0, (1 << 20) + 10, 100).0, 5, "the damaged chunk: EIO");
    let (err, d) = request(&mut c, 0, (2 << 20) + 7, 5000);
    assert_eq!(err, 0);
    assert!(d == data[(2 << 20) + 7..(2 << 20) + 5007], "another chunk still reads");
    let (err, d) = request(&mut c, 0, 5 << 20, 4096);
    assert!(err == 0 && d.iter().all(|&b| b == 0), "a zero chunk reads as zeros");
    assert_eq!(request(&mut c, 0, 12 << 20, 1).0, 22, "past the end: EINVAL");
    assert_eq!(request(&mut c, 0, u64::MAX - 10, 100).0, 22, "offset overflow: EINVAL");
    assert_eq!(request(&mut c, 0, 0, 1 << 30).0, 22, "1 GiB past the 12 MiB end: EINVAL");
    assert_eq!(request(&mut c, 99, 0, 1).0, 22, "an unknown command: EINVAL");
    // Abuse on other connections.
    let mut bad = UnixStream::connect(&srv.sock).unwrap();
    let mut hello = [0u8; 18];
    bad.read_exact(&mut hello).unwrap();
    bad.write_all(b"garbage garbage garbage").unwrap();
    drop(bad);
    let mut big = UnixStream::connect(&srv.sock).unwrap();
    big.read_exact(&mut hello).unwrap();
    big.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&u32::MAX.to_be_bytes());
    big.write_all(&opt).unwrap();
    let mut rest = Vec::new();
    let _ = big.read_to_end(&mut rest);
    assert!(rest.len() >= 20, "an error reply, then the connection closes");
    let mut unknown = connect(&srv.sock);
    unknown.write_all(&[0x25, 0x60]).unwrap(); // half a request, then gone
    drop(unknown);
    let mut opt_client = UnixStream::connect(&srv.sock).unwrap();
    opt_client.read_exact(&mut hello).unwrap();
    opt_client.write_all(&1u32.to_be_bytes()).unwrap();
    let mut o = b"IHAVEOPT".to_vec();
    o.extend_from_slice(&999u32.to_be_bytes());
    o.extend_from_slice(&0u32.to_be_bytes());
    opt_client.write_all(&o).unwrap();
    let mut h = [0u8; 20];
    opt_client.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[12..16].try_into().unwrap()), 1 | 1 << 31, "unknown option: ERR_UNSUP");
    drop(opt_client);
    // The first client and new ones are still served.
    let (err, d) = request(&mut c, 0, 0, 1000);
    assert!(err == 0 && d == data[..1000]);
    let mut again = connect(&srv.sock);
    assert_eq!(request(&mut again, 0, 3 << 20, 10).0, 0);
    // NBD_CMD_DISC: no reply; the server closes the connection.
    let mut disc = 0x2560_9513u32.to_be_bytes().to_vec();
    disc.extend_from_slice(&[0, 0, 0, 2]);
    disc.extend_from_slice(&[0u8; 20]);
    c.write_all(&disc).unwrap();
    let mut tail = Vec::new();
    assert_eq!(c.read_to_end(&mut tail).unwrap(), 0, "closed after DISC");
    srv.stop();
}

/// A write request with its data; returns the simple reply's error.
fn write(s: &mut UnixStream, offset: u64, data: &[u8]) -> u32 {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&7u64.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    s.write_all(&r).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    u32::from_be_bytes(h[4..8].try_into().unwrap())
}

fn set_files(set: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(set)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("tintype"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

/// Without an overlay writes are refused (EPERM); with `--writable-overlay`
/// they land in the overlay — partial blocks included — are read back by
/// every client, and the image's files stay byte for byte as they were.
#[test]
fn writes_go_to_the_overlay_never_to_the_image() {
    let sb = Sandbox::new();
    let mut data = source(&sb);
    let before = set_files(&sb.path("set"));
    let srv = Server::start(&sb, "set");
    let mut c = connect(&srv.sock);
    assert_eq!(write(&mut c, 0, b"nope"), 1, "read-only export: EPERM");
    srv.stop();

    let srv = Server::start_with(&sb, "set", &["--writable-overlay", "overlay.img"]);
    let mut c = connect(&srv.sock);
    assert_eq!(write(&mut c, 1000, b"partial block"), 0);
    data[1000..1013].copy_from_slice(b"partial block");
    let block: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(write(&mut c, 5 << 20, &block), 0, "into a zero chunk");
    data[5 << 20..(5 << 20) + 8192].copy_from_slice(&block);
    assert_eq!(write(&mut c, (12 << 20) - 10, b"x".repeat(20).as_slice()), 22, "past the end: EINVAL");
    let (err, d) = request(&mut c, 0, 900, 300);
    assert!(err == 0 && d == data[900..1200], "read back across the written bytes");
    assert_eq!(request(&mut c, 3, 0, 0).0, 0, "flush");
    // Another client (nbdcopy, several connections) sees the writes.
    if require("writes_go_to_the_overlay_never_to_the_image (its nbdcopy part)", &[Need::Tool("nbdcopy")]) {
        let out = Command::new("nbdcopy").args([&srv.uri(), sb.path("copy.img").to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(sb.path("copy.img")).unwrap() == data, "the export with the overlay's writes");
    }
    srv.stop();
    assert!(set_files(&sb.path("set")) == before, "the image's files were not written");
    assert!(!sb.path("overlay.img").exists(), "the overlay lives for the run only");
    std::fs::write(sb.path("overlay.img"), b"someone's").unwrap();
    let out = sb.expect(&["serve", "set", "--listen", "unix:x.sock", "--writable-overlay", "overlay.img"], 1);
    assert!(stderr(&out).contains("overlay.img: exists"), "an existing file is never used: {}", stderr(&out));
    assert_eq!(std::fs::read(sb.path("overlay.img")).unwrap(), b"someone's", "nor removed");
}

/// TCP: loopback by default; any other address is refused without --public.
#[test]
fn tcp_listens_on_loopback_and_refuses_other_addresses_without_public() {
    let sb = Sandbox::new();
    let data = source(&sb);
    let out = sb.expect(&["serve", "set", "--listen", "tcp:0.0.0.0:0"], 2);
    assert!(stderr(&out).contains("--public") && stderr(&out).contains("authentication"), "{}", stderr(&out));
    sb.expect(&["serve", "set", "--listen", "carrier-pigeon"], 2);
    if !require("tcp_listens_on_loopback_and_refuses_other_addresses_without_public", &[Need::Tool("nbdcopy")]) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(["serve", "set", "--listen", &format!("tcp:127.0.0.1:{port}")])
        .current_dir(sb.dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("nbdcopy")
        .args([&format!("nbd://127.0.0.1:{port}"), sb.path("tcp.img").to_str().unwrap()])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(sb.path("tcp.img")).unwrap() == data);
}

/// While an image is served, prune and merge cannot remove it (exit 5,
/// naming the reader); once the server stops they can.
#[test]
fn a_served_image_is_not_pruned_from_under_its_clients() {
    let sb = Sandbox::new();
    let data = source(&sb);
    let mut changed = data.clone();
    changed[0..4096].fill(7);
    std::fs::write(sb.path("src.img"), &changed).unwrap();
    sb.expect(&["create", "src.img", "set"], 0);
    let first = {
        let set = tintype::set::ImageSet::open(&sb.path("set")).unwrap();
        set.images().unwrap()[0].manifest.image_id.clone()
    };
    let srv = Server::start(&sb, &format!("set@{first}"));
    let out = sb.expect(&["prune", "set", "--keep-last", "1"], 5);
    assert!(stderr(&out).contains("serve"), "{}", stderr(&out));
    let mut c = connect(&srv.sock);
    let (err, d) = request(&mut c, 0, 0, 4096);
    assert!(err == 0 && d == data[..4096], "the served image still reads");
    drop(c);
    srv.stop();
    sb.expect(&["prune", "set", "--keep-last", "1"], 0);
}

/// A socket left by a server killed with -9 is stale (nobody listens): the
/// next serve replaces it. A live server's socket, or a plain file, is
/// refused and left alone.
#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let sb = Sandbox::new();
    let data = source(&sb);
    let sock = sb.path("nbd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "the stale socket file stays behind");
    let child = Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(["serve", "set", "--listen", &format!("unix:{}", sock.display())])
        .current_dir(sb.dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let srv = Server { child, sock: sock.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the server never listened on the replaced socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = connect(&sock);
    let (err, d) = request(&mut c, 0, 0, 4096);
    assert!(err == 0 && d == data[..4096]);
    drop(c);
    // A second server on the live socket: refused, the first unharmed.
    let out = sb.expect(&["serve", "set", "--listen", &format!("unix:{}", sock.display())], 1);
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let mut c = connect(&sock);
    assert_eq!(request(&mut c, 0, 0, 512).0, 0);
    drop(c);
    srv.stop();
    std::fs::write(sb.path("plain"), b"mine").unwrap();
    sb.expect(&["serve", "set", "--listen", "unix:plain"], 1);
    assert_eq!(std::fs::read(sb.path("plain")).unwrap(), b"mine");
}

/// More clients than the server serves at once: the extra ones are
/// disconnected at once (no handshake), the others keep working, and a
/// client that connects after some left is served.
#[test]
fn clients_beyond_the_limit_are_turned_away() {
    let sb = Sandbox::new();
    let data = source(&sb);
    let srv = Server::start(&sb, "set");
    let max = tintype::serve::nbd::MAX_CLIENTS as usize;
    let mut held: Vec<UnixStream> = (0..max).map(|_| connect(&srv.sock)).collect();
    let mut extra = UnixStream::connect(&srv.sock).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(extra.read(&mut b).unwrap_or(0), 0, "turned away: closed without a greeting");
    let (err, d) = request(&mut held[0], 0, 0, 4096);
    assert!(err == 0 && d == data[..4096], "the connected clients still work");
    held.truncate(max - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The server notices the closed connection when its thread ends.
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 8];
        if s.read_exact(&mut hello).is_ok() {
            assert_eq!(&hello, b"NBDMAGIC");
            break;
        }
        assert!(Instant::now() < deadline, "a client is served again once another left");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    srv.stop();
}

/// A reader that may not write the set (here: `nobody` serving root's set)
/// still holds the readers' lock through a read-only descriptor, so the
/// owner's merge cannot delete what it serves (exit 5, and the client's
/// reads go on).
#[test]
fn a_reader_without_write_access_still_keeps_merge_out() {
    use std::os::unix::fs::PermissionsExt;
    if !require("a_reader_without_write_access_still_keeps_merge_out", &[Need::Root]) {
        return;
    }
    let sb = Sandbox::new();
    let mut data = mixed_bytes(4 << 20, 93);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set"], 0);
    data[100_000] ^= 1;
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--incremental"], 0);
    // The set stays root's (0755 / 0644, lock files included); nobody may
    // only traverse to it and write its socket elsewhere.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(sb.path("out")).unwrap();
    std::fs::set_permissions(sb.path("out"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = sb.path("out/s.sock");
    let listen = format!("unix:{}", sock.display());
    let mut cmd = sb.command_with(&["serve", "set", "--listen", &listen], &[], true);
    cmd.stderr(Stdio::piped());
    // Killed with the test if it fails (it holds the test's stdout).
    let server = Server { child: cmd.stdout(Stdio::null()).spawn().unwrap(), sock: sock.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let newest = tintype::set::ImageSet::open(&sb.path("set")).unwrap().resolve(None).unwrap().manifest.image_id;
    let out = sb.expect(&["merge", &format!("set@{newest}")], 5);
    assert!(stderr(&out).contains("reading images"), "{}", stderr(&out));
    server.stop();
    sb.expect(&["merge", &format!("set@{newest}")], 0);
    assert_image_holds(&sb.path("set"), None, &data);
}
