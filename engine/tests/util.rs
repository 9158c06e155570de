//! Helpers: a sandbox directory, running the CLI, deterministic sources.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tintype::codec::Decoder;
use tintype::format::index::IndexEntry;
use tintype::set::{Image, ImageSet};

pub use crate::needs::{require, Need};

/// The backends every test body runs on. io_uring is left out only where
/// the kernel refuses it, and then the test says so.
/// (Under CI io_uring must work: see `needs`.)
pub fn backends() -> Vec<&'static str> {
    match require("the io_uring half of a test on both backends", &[Need::IoUring]) {
        true => vec!["uring", "portable"],
        false => vec!["portable"],
    }
}

/// A fresh directory, removed afterwards.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `tintype` with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run tintype")
    }

    /// `tintype args` in the sandbox, to be run with each `(resource, bytes)`
    /// limit set (soft and hard) and, with `nobody`, as user and group 65534
    /// (root's capabilities would ignore some limits).
    pub fn command_with(&self, args: &[&str], limits: &[(libc::__rlimit_resource_t, u64)], nobody: bool) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(env!("CARGO_BIN_EXE_tintype"));
        c.args(args).current_dir(self.dir.path());
        let limits = limits.to_vec();
        // SAFETY: between fork and exec only async-signal-safe calls
        // (setrlimit, setgroups, setgid, setuid) on values the closure owns.
        unsafe {
            c.pre_exec(move || {
                for &(resource, bytes) in &limits {
                    let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if nobody
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(65534) != 0
                        || libc::setuid(65534) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Run and require exit code `code`, returning stdout.
    pub fn expect(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tintype {args:?} exited {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic mixed content in 16 KiB pieces: zeros, text, random bytes
/// and repetitive binary, so small sources still exercise every path.
pub fn mixed_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut next = tintype::sample::xorshift(seed);
    let mut v = vec![0u8; size];
    let words: [&[u8]; 8] = [b"sector ", b"image ", b"the ", b"chunk ", b"lane ", b"of ", b"ring ", b"frame\n"];
    let mut at = 0;
    while at < size {
        let piece = (16 << 10) * (1 + (next() % 8) as usize);
        let end = (at + piece).min(size);
        match next() % 4 {
            0 => {}
            1 => {
                let mut i = at;
                while i < end {
                    let w = words[(next() % 8) as usize];
                    let n = w.len().min(end - i);
                    v[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            2 => v[at..end].iter_mut().for_each(|b| *b = next() as u8),
            _ => v[at..end].iter_mut().enumerate().for_each(|(i, b)| *b = (i / 512) as u8 ^ 0x5a),
        }
        at = end;
    }
    v
}

/// The newest image of `set` and its decoded index entries.
pub fn load(set: &Path) -> (Image, Vec<IndexEntry>) {
    let img = ImageSet::open(set).unwrap().resolve(None).unwrap();
    let idx = img.read_index().unwrap();
    assert!(idx.hash_matches, "index hash matches the manifest");
    let entries = idx.entries.into_iter().map(|e| e.unwrap()).collect();
    (img, entries)
}

/// Read every chunk of the newest image of `set` back and compare with `source`.
pub fn assert_round_trip(set: &Path, source: &[u8]) {
    assert_image_holds(set, None, source);
}

/// Read every chunk of image `sel` (an ID prefix; None for the newest) back
/// through its chain and compare with `source`.
pub fn assert_image_holds(set: &Path, sel: Option<&str>, source: &[u8]) {
    let s = ImageSet::open(set).unwrap();
    let img = s.resolve(sel).unwrap();
    let chain = s.chain(&img).unwrap();
    let resolved = tintype::set::Resolved::load(&chain).unwrap();
    assert_eq!(img.manifest.source.size_bytes, source.len() as u64);
    let mut dec = Decoder::new().unwrap();
    let mut buf = vec![0u8; img.manifest.chunk_size_bytes as usize];
    for chunk in 0..img.manifest.chunk_count {
        let n = resolved.read_chunk(&img, chunk, &mut buf, &mut dec).unwrap();
        let (start, len) = img.chunk_extent(chunk);
        assert_eq!(n, len as usize);
        assert!(
            buf[..n] == source[start as usize..start as usize + n],
            "image {}: chunk {chunk} differs from the source",
            img.id()
        );
    }
}

/// The path of the only segment file of the newest image that holds `chunk`.
pub fn frame_of(set: &Path, chunk: u64) -> (PathBuf, IndexEntry) {
    let (img, entries) = load(set);
    let e = entries[chunk as usize];
    (img.segment_path(e.segment as usize), e)
}

/// The `reason` of a failed `--json` command's `{"error": …}` on stdout: the
/// matchable kind of refusal or breakage (`holds_data`, `parent_missing`…).
pub fn error_reason(o: &Output) -> String {
    error_field(o, "reason")
}

/// A field of a failed `--json` command's `{"error": …}` on stdout.
pub fn error_field(o: &Output, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)));
    v["error"][key].as_str().unwrap_or_else(|| panic!("no error.{key} in {v}")).to_string()
}

/// Where the version-2 record of the run starting at `chunk` is in the
/// index of `img`, and the run (a stored chunk's run is its own).
pub fn record_of(img: &Image, chunk: u64) -> (u64, tintype::format::index::Run) {
    use tintype::format::index::{Run, INDEX_HEADER_BYTES, RUN_RECORD_BYTES};
    let bytes = std::fs::read(img.index_path()).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2, "a version-2 index");
    let parent = img.manifest.parent_id();
    bytes[INDEX_HEADER_BYTES..]
        .chunks_exact(RUN_RECORD_BYTES)
        .enumerate()
        .map(|(i, b)| ((INDEX_HEADER_BYTES + i * RUN_RECORD_BYTES) as u64, Run::decode(b, img.id(), parent).unwrap()))
        .find(|(_, r)| r.first == chunk)
        .unwrap_or_else(|| panic!("no run starts at chunk {chunk}"))
}

/// Rewrite the version-2 record of the run starting at `chunk` of the
/// newest image of `set` (`change` edits its 64 bytes, FORMAT §5) and fix
/// up the manifest's index hash, as a buggy writer or a hand edit would
/// leave it.
pub fn forge_record(set: &Path, chunk: u64, change: impl FnOnce(&mut [u8])) {
    forge_record_of(set, None, chunk, change)
}

/// [`forge_record`] for image `sel` (an ID prefix; None: the newest).
pub fn forge_record_of(set: &Path, sel: Option<&str>, chunk: u64, change: impl FnOnce(&mut [u8])) {
    use std::os::unix::fs::FileExt;
    let img = ImageSet::open(set).unwrap().resolve(sel).unwrap();
    let (at, _) = record_of(&img, chunk);
    let idx = img.index_path();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&idx).unwrap();
    let mut rec = [0u8; 64];
    f.read_exact_at(&mut rec, at).unwrap();
    change(&mut rec);
    f.write_all_at(&rec, at).unwrap();
    set_index_hash(&img);
}

/// Record the index's current xxh3-128 in the manifest of `img`.
pub fn set_index_hash(img: &Image) {
    let idx = std::fs::read(img.index_path()).unwrap();
    let hash = xxhash_rust::xxh3::xxh3_128(&idx);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&img.manifest_path).unwrap()).unwrap();
    m["index"]["xxh3_128"] = format!("{hash:032x}").into();
    m["index"]["size_bytes"] = idx.len().into();
    std::fs::write(&img.manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Rewrite image `sel` of `set` (an ID prefix; None: the newest) as format
/// version 1 wrote it: an index entry per chunk, inherited entries with the
/// parent's hash (`parent_hashes`, or 0 where none is given).
pub fn rewrite_as_v1(set: &Path, sel: Option<&str>, parent_hashes: &[u128]) {
    use tintype::format::index::{ChunkState, IndexHeader, INDEX_ENTRY_BYTES};
    let img = ImageSet::open(set).unwrap().resolve(sel).unwrap();
    let idx = img.read_index().unwrap();
    let mut bytes = vec![0u8; 64 + INDEX_ENTRY_BYTES * idx.entries.len()];
    IndexHeader { version: 1, records: 0, ..idx.header }.encode(&mut bytes);
    for (c, e) in idx.entries.iter().enumerate() {
        let mut e = e.unwrap();
        if e.state == ChunkState::Inherited {
            e.raw_hash = parent_hashes.get(c).copied().unwrap_or(0);
        }
        e.encode(&mut bytes[64 + INDEX_ENTRY_BYTES * c..]);
    }
    std::fs::write(img.index_path(), &bytes).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&img.manifest_path).unwrap()).unwrap();
    m["format_version"] = 1.into();
    std::fs::write(&img.manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    set_index_hash(&img);
}

/// The raw hash of every chunk of image `sel` of `set`, through its chain.
pub fn chunk_hashes(set: &Path, sel: Option<&str>) -> Vec<u128> {
    let s = ImageSet::open(set).unwrap();
    let img = s.resolve(sel).unwrap();
    let r = tintype::set::Resolved::load(&s.chain(&img).unwrap()).unwrap();
    (0..img.manifest.chunk_count).map(|c| r.entry(c).raw_hash).collect()
}
