//! Hostile input: seeded mutation loops over the parsers that read what a
//! disk or a client hands us (ext4 and XFS metadata, partition tables,
//! manifests, index entries, frames). No input may panic; a failure prints
//! its seed (`TINTYPE_HOSTILE_SEED=N` replays one, `TINTYPE_HOSTILE_ROUNDS`
//! runs more).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;

use crate::util::*;

struct Rng<F: FnMut() -> u64>(F);

impl<F: FnMut() -> u64> Rng<F> {
    fn next(&mut self) -> u64 {
        (self.0)()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn rounds(default: u64) -> u64 {
    std::env::var("TINTYPE_HOSTILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn seeds(default: u64) -> Vec<u64> {
    match std::env::var("TINTYPE_HOSTILE_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => (1..=rounds(default)).collect(),
    }
}

/// Flip a few bytes of `base` inside `[from, to)`: a byte set to a random or
/// an extreme value (0, 0xff), biased towards the first bytes where headers live.
fn mutate(base: &[u8], rng: &mut Rng<impl FnMut() -> u64>, from: usize, to: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    let to = to.min(v.len());
    for _ in 0..1 + rng.below(6) {
        let span = if rng.below(2) == 0 { (to - from).min(8192) } else { to - from };
        let at = from + rng.below(span as u64) as usize;
        v[at] = match rng.below(3) {
            0 => 0,
            1 => 0xff,
            _ => rng.next() as u8,
        };
    }
    v
}

/// Run `f` on mutations of `base`; any panic fails with the seed.
fn hammer(name: &str, base: &[u8], from: usize, to: usize, default_rounds: u64, f: impl Fn(&[u8])) {
    for seed in seeds(default_rounds) {
        let mut rng = Rng(tintype::sample::xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let m = mutate(base, &mut rng, from, to);
        let r = catch_unwind(AssertUnwindSafe(|| f(&m)));
        assert!(r.is_ok(), "{name}: seed {seed} panicked (replay with TINTYPE_HOSTILE_SEED={seed})");
    }
}

fn file_with(sb: &Sandbox, name: &str, bytes: &[u8]) -> std::fs::File {
    let p = sb.path(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::File::open(&p).unwrap()
}

#[test]
fn mutated_ext4_metadata_never_panics_and_never_frees_past_the_end() {
    if !require("mutated_ext4_metadata_never_panics_and_never_frees_past_the_end", &[Need::Tool("mkfs.ext4")]) {
        return;
    }
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("tree")).unwrap();
    std::fs::write(sb.path("tree/a"), mixed_bytes(200 << 10, 4)).unwrap();
    let img = sb.path("e.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", sb.path("tree").to_str().unwrap(), img.to_str().unwrap(), "16M"])
        .output()
        .expect("run mkfs.ext4");
    assert!(out.status.success());
    let base = std::fs::read(&img).unwrap();
    // The superblock, descriptors and the first groups' bitmaps.
    hammer("ext4", &base, 1024, 64 << 10, 400, |m| {
        // Half the rounds re-seal the superblock's checksum, so the parser
        // goes past it into the descriptors and bitmaps.
        let mut m = m.to_vec();
        if m[1100] & 1 == 0 {
            let c = !crc32c::crc32c_append(0, &m[1024..1024 + 0x3FC]);
            m[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&c.to_le_bytes());
        }
        let m = &m[..];
        let f = file_with(&sb, "m.img", m);
        if let Ok((_, map)) = tintype::fs::ext4::free_space(&f, 0, m.len() as u64) {
            assert!(map.ranges().iter().all(|&(s, l)| s + l <= m.len() as u64), "free space past the end");
        }
        let _ = tintype::fs::analyze(&f, &f, m.len() as u64, 512);
    });
}

#[test]
fn mutated_xfs_metadata_never_panics() {
    if !require("mutated_xfs_metadata_never_panics", &[Need::Tool("mkfs.xfs")]) {
        return;
    }
    let sb = Sandbox::new();
    let img = sb.path("x.img");
    std::fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
    let out = Command::new("mkfs.xfs").args(["-q", "-f", img.to_str().unwrap()]).output();
    let out = out.expect("run mkfs.xfs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Only the first AG's headers and btree blocks matter; keep 1 MiB of it.
    let full = std::fs::read(&img).unwrap();
    let f = file_with(&sb, "ok.img", &full);
    tintype::fs::xfs::free_space(&f, 0, full.len() as u64).expect("the pristine filesystem parses");
    drop(f);
    // Mutate only the first 64 KiB (superblock, AG 0's headers and btree
    // roots) in place, restoring them after each round.
    let path = sb.path("ok.img");
    let w = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let head = full[..64 << 10].to_vec();
    hammer("xfs", &head, 0, 64 << 10, 300, |m| {
        use std::os::unix::fs::FileExt;
        // Re-seal the superblock's and AGF's CRCs (sectors 0 and 1) half the
        // time, so the parser reaches the btrees.
        let mut m = m.to_vec();
        if m[7] & 1 == 0 {
            for (start, at) in [(0usize, 224usize), (512, 216)] {
                m[start + at..start + at + 4].fill(0);
                let c = crc32c::crc32c(&m[start..start + 512]);
                m[start + at..start + at + 4].copy_from_slice(&c.to_le_bytes());
            }
        }
        w.write_all_at(&m, 0).unwrap();
        if let Ok((_, map)) = tintype::fs::xfs::free_space(&w, 0, full.len() as u64) {
            assert!(map.ranges().iter().all(|&(s, l)| s + l <= full.len() as u64), "free space past the end");
        }
        w.write_all_at(&head, 0).unwrap();
    });
}

#[test]
fn mutated_partition_tables_never_panic() {
    if !require("mutated_partition_tables_never_panic", &[Need::Tool("sfdisk")]) {
        return;
    }
    let sb = Sandbox::new();
    let img = sb.path("d.img");
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    for label in ["gpt", "dos"] {
        let table = format!("label: {label}\nstart=2048, size=4096, type=L\nsize=+, type=L\n");
        let mut c = Command::new("sfdisk")
            .args(["-q", img.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run sfdisk");
        use std::io::Write;
        c.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
        let base = std::fs::read(&img).unwrap();
        let len = base.len();
        hammer(label, &base, 0, 3 * 512 + 16384, 300, |m| {
            let f = file_with(&sb, "m.img", m);
            let _ = tintype::fs::table::read(&f, len as u64, 512);
            let _ = tintype::fs::analyze(&f, &f, len as u64, 512);
        });
    }
}

#[test]
fn mutated_manifests_indexes_and_frames_never_panic() {
    let sb = Sandbox::new();
    let data = mixed_bytes(3 << 20, 9);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K"], 0);
    let img = tintype::set::ImageSet::open(&sb.path("set")).unwrap().resolve(None).unwrap();
    let manifest = std::fs::read(&img.manifest_path).unwrap();
    hammer("manifest", &manifest, 0, manifest.len(), 400, |m| {
        let _ = tintype::format::manifest::Manifest::from_json(m);
    });
    let index = std::fs::read(img.index_path()).unwrap();
    hammer("index", &index, 0, index.len(), 400, |m| {
        let _ = tintype::format::index::IndexHeader::decode(m);
        let mut zero = tintype::format::index::ZeroHashes::default();
        for e in m[64..].chunks_exact(64) {
            if let Ok(r) = tintype::format::index::Run::decode(e, img.id(), None) {
                let _ = img.check_run(&r, &mut zero);
                let _ = img.check_stored_location(&r.entry);
            }
        }
        for e in m[64..].chunks_exact(48) {
            if let Ok(e) = tintype::format::index::IndexEntry::decode(e) {
                let _ = img.check_entry(0, &e, &mut zero);
            }
        }
    });
    // The whole reader, with the manifest's size and hash made to agree with
    // the mutated file: records out of order, overlapping, past the end or
    // with a count of 2^64 are errors naming the index, never a panic, and
    // whatever loads covers every chunk once.
    let idx_path = img.index_path();
    hammer("index file", &index, 48, index.len(), 200, |m| {
        std::fs::write(&idx_path, m).unwrap();
        let mut img = img.clone();
        img.manifest.index.size_bytes = m.len() as u64;
        img.manifest.index.xxh3_128 = tintype::format::Xxh128(xxhash_rust::xxh3::xxh3_128(m));
        if let Ok(r) = tintype::set::Resolved::load(std::slice::from_ref(&img)) {
            let covered: u64 = r.runs().iter().map(|run| run.count).sum();
            assert_eq!(covered, img.manifest.chunk_count, "a loaded index covers every chunk once");
            assert!(r.runs().windows(2).all(|w| w[0].end() == w[1].first), "runs follow each other");
        }
        let _ = img.read_index();
    });
    std::fs::write(&idx_path, &index).unwrap();
    let seg = std::fs::read(img.segment_path(0)).unwrap();
    hammer("frame", &seg[4096..], 0, 8192, 400, |m| {
        let mut out = vec![0u8; 64 << 10];
        let mut dec = tintype::codec::Decoder::new().unwrap();
        let _ = tintype::format::frame::check_frame(m, &mut out, &mut |s, o| dec.decode(s, o));
    });
}

/// The re-sealing the mutation loops rely on is right: a pristine superblock
/// re-sealed the same way still parses (so mutated ones get past the check).
#[test]
fn resealed_superblocks_parse() {
    if !require("resealed_superblocks_parse", &[Need::Tool("mkfs.ext4")]) {
        return;
    }
    let sb = Sandbox::new();
    let img = sb.path("e.img");
    let out = Command::new("mkfs.ext4").args(["-q", "-F", img.to_str().unwrap(), "8M"]).output().unwrap();
    assert!(out.status.success());
    let mut m = std::fs::read(&img).unwrap();
    m[1024 + 0x3FC..1024 + 0x400].fill(0);
    let c = !crc32c::crc32c_append(0, &m[1024..1024 + 0x3FC]);
    m[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&c.to_le_bytes());
    let f = file_with(&sb, "r.img", &m);
    tintype::fs::ext4::free_space(&f, 0, m.len() as u64).expect("re-sealed superblock parses");
}

/// Every input the fuzzers ever crashed on (engine/fuzz/regressions/TARGET/)
/// replayed through the same entry points, plus the golden fixtures through
/// each format harness so the harnesses themselves are exercised.
#[test]
fn fuzz_regressions_and_fixtures_replay_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    type Harness = fn(&[u8]);
    let targets: [(&str, Harness); 7] = [
        ("frame", |d| {
            tintype::fuzz::frame(d);
        }),
        ("index", tintype::fuzz::index),
        ("manifest", tintype::fuzz::manifest),
        ("table", tintype::fuzz::table),
        ("ext4", |d| {
            tintype::fuzz::ext4(d);
        }),
        ("xfs", |d| {
            tintype::fuzz::xfs(d);
        }),
        ("nbd", tintype::fuzz::nbd),
    ];
    // The table parsers catch panics themselves (a panicking third-party
    // parser makes the table untrusted, silently): count those too, so a
    // regression that panics again is seen even when it is caught.
    let caught = tintype::fs::table::caught_panics;
    let mut replayed = 0;
    for (name, f) in targets {
        let dir = root.join("fuzz/regressions").join(name);
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let before = caught();
            let r = catch_unwind(AssertUnwindSafe(|| f(&data)));
            let panicked = caught() != before;
            assert!(r.is_ok() && !panicked, "{name}: {} panics again", e.path().display());
            replayed += 1;
        }
    }
    let set = root.join("tests/fixtures/v1/set");
    for e in std::fs::read_dir(&set).unwrap().flatten() {
        let data = std::fs::read(e.path()).unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".manifest.json") {
            tintype::fuzz::manifest(&data);
        } else if name.ends_with(".index") {
            tintype::fuzz::index(&data);
        } else if name.ends_with(".seg") {
            let mut framed = vec![1u8];
            framed.extend_from_slice(&data[4096..]);
            assert!(tintype::fuzz::frame(&framed), "the first golden frame checks through the harness");
            // A changed raw hash, re-sealed, gets past the header's hash to
            // the decompressor and fails only at the raw data's check.
            framed[1 + 32] ^= 1; // the raw hash
            assert!(!tintype::fuzz::frame(&framed));
        }
    }
    assert!(replayed >= 2, "the saved fuzz inputs were found (engine/fuzz/regressions)");
    eprintln!("replayed {replayed} saved fuzz inputs");
}

/// The fuzz harnesses' seeds reach the deep parsers: a fresh ext4 parses
/// through the harness (superblock re-sealed), and a fresh XFS's head with
/// a copy of its log's first blocks parses once flag bit 1 points the
/// superblock at that log and makes it one AG — the layout run-all's seeds use.
#[test]
fn fuzz_harness_seeds_parse() {
    if !require("fuzz_harness_seeds_parse", &[Need::Tool("mkfs.ext4"), Need::Tool("mkfs.xfs")]) {
        return;
    }
    let sb = Sandbox::new();
    let e = sb.path("e.img");
    let out = Command::new("mkfs.ext4").args(["-q", "-F", e.to_str().unwrap(), "16M"]).output().unwrap();
    assert!(out.status.success());
    let mut seed = vec![1u8];
    seed.extend_from_slice(&std::fs::read(&e).unwrap()[..320 << 10]);
    assert!(tintype::fuzz::ext4(&seed), "the ext4 seed parses through the harness");

    let x = sb.path("x.img");
    std::fs::File::create(&x).unwrap().set_len(300 << 20).unwrap();
    let out = Command::new("mkfs.xfs").args(["-q", "-f", x.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let img = std::fs::read(&x).unwrap();
    let be32 = |at: usize| u32::from_be_bytes(img[at..at + 4].try_into().unwrap()) as u64;
    let (bs, logstart) = (be32(4), u64::from_be_bytes(img[48..56].try_into().unwrap()));
    let (agblocks, agblklog) = (be32(84), u32::from(img[124]));
    let log_at = (((logstart >> agblklog) * agblocks + (logstart & ((1 << agblklog) - 1))) * bs) as usize;
    let mut seed = vec![3u8];
    seed.extend_from_slice(&img[..64 << 10]);
    seed.extend_from_slice(&img[log_at..log_at + (32 << 10)]);
    assert!(tintype::fuzz::xfs(&seed), "the XFS seed parses through the harness");
    seed[0] = 1;
    assert!(!tintype::fuzz::xfs(&seed), "without the log pointed at, the 64 MiB log is not in the input");
}
