//! verify and restore agree: whatever restore refuses, verify rejects.
//!
//! A chain (a full image and an incremental on top) is damaged at random, one
//! byte or one manifest value at a time, in every part of the format: index
//! header and entries, frame headers, payloads and padding, segment headers
//! and their zero bytes, manifests. Every checksum that would give the
//! damage away is then recomputed, as a buggy tool or an attacker would
//! leave it, so only the format's own rules can catch it. For each case:
//! if `verify` says the image is intact, `restore` must succeed and write
//! exactly the source's bytes; neither may panic.

use std::os::unix::fs::FileExt;
use std::path::Path;

use tintype::format::index::{ChunkState, IndexEntry};
use tintype::set::image::Image;
use tintype::set::ImageSet;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::util::*;

const CASES: u64 = 600;

/// The part of an image one case damages.
#[derive(Debug, Clone, Copy)]
enum Part {
    IndexHeader,
    IndexEntry,
    FrameHeader,
    Payload,
    FramePadding,
    SegmentHeader,
    SegmentHeaderZeros,
    Manifest,
}

const PARTS: [Part; 8] = [
    Part::IndexHeader,
    Part::IndexEntry,
    Part::FrameHeader,
    Part::Payload,
    Part::FramePadding,
    Part::SegmentHeader,
    Part::SegmentHeaderZeros,
    Part::Manifest,
];

#[test]
fn random_damage_with_hashes_fixed_up_never_passes_verify_while_restore_refuses_it() {
    let sb = Sandbox::new();
    let (ids, newest) = chain(&sb);
    let mut next = tintype::sample::xorshift(0x7e57_da3a);
    let (mut rejected, mut per_part) = (0u64, [0u64; PARTS.len()]);
    for case in 0..CASES {
        let part = PARTS[(next() % PARTS.len() as u64) as usize];
        let id = &ids[(next() % 2) as usize];
        let dir = sb.path(&format!("case{case}"));
        copy_dir(&sb.path("set"), &dir);
        let img = ImageSet::open(&dir).unwrap().resolve(Some(id)).unwrap();
        let Some(what) = damage(&img, part, &mut next) else { continue };
        per_part[part as usize] += 1;
        let sel = format!("{}@{}", dir.display(), ids[1]);
        let verify = sb.run(&["verify", &sel]);
        let target = sb.path(&format!("case{case}.img"));
        let restore = sb.run(&["restore", &sel, target.to_str().unwrap()]);
        let context = format!("case {case}: {what}\nverify: {}{}\nrestore: {}", stdout(&verify), stderr(&verify), {
            stderr(&restore)
        });
        for out in [&verify, &restore] {
            assert!(!stderr(out).contains("panicked"), "{context}");
        }
        if verify.status.code() == Some(0) {
            assert_eq!(restore.status.code(), Some(0), "verify passed what restore refuses: {context}");
            assert!(std::fs::read(&target).unwrap() == newest, "verify passed, restore wrote other bytes: {context}");
        } else {
            rejected += 1;
        }
        let _ = std::fs::remove_file(&target);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("agreement: {rejected} of {CASES} damaged images rejected by verify; cases per part {per_part:?}");
    // The damage is real: most of it must be caught (only informative
    // fields, such as a segment's lane number, may change unnoticed).
    assert!(rejected * 4 > CASES * 3, "only {rejected} of {CASES} damaged images were rejected");
    assert!(per_part.iter().all(|&n| n > 5), "every part was damaged: {per_part:?}");
}

/// A full image and an incremental of a changed source; returns their IDs
/// (oldest first) and the newest source's bytes.
fn chain(sb: &Sandbox) -> ([String; 2], Vec<u8>) {
    let mut data = mixed_bytes(1536 << 10, 31);
    let create = |data: &[u8], extra: &[&str]| {
        std::fs::write(sb.path("src.img"), data).unwrap();
        let mut args = vec!["create", "src.img", "set", "--chunk-size", "64K", "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_slice(&sb.expect(&args, 0).stdout).unwrap();
        v["image_id"].as_str().unwrap().to_string()
    };
    let full = create(&data, &[]);
    data[3 << 16..4 << 16].fill(0);
    data[9 << 16..(9 << 16) + 300].copy_from_slice(&[0xa5; 300]);
    data[(20 << 16) + 7] ^= 0xff;
    let inc = create(&data, &["--incremental"]);
    ([full, inc], data)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Damage `part` of `img` and fix up every checksum that covers it; says
/// what was done, or None when the image has no such part (no padding).
fn damage(img: &Image, part: Part, next: &mut impl FnMut() -> u64) -> Option<String> {
    let mut pick = |n: u64| next() % n.max(1);
    let entries: Vec<IndexEntry> = img.read_index().unwrap().entries.into_iter().map(|e| e.unwrap()).collect();
    let stored: Vec<&IndexEntry> = entries.iter().filter(|e| e.state == ChunkState::Stored).collect();
    let frame = stored.get(pick(stored.len() as u64) as usize).copied();
    let seg = pick(img.manifest.segments.len() as u64) as usize;
    let value = 1 + pick(255) as u8;
    match part {
        Part::IndexHeader => {
            let at = pick(56);
            xor_at(&img.index_path(), at, value);
            rehash64(&img.index_path(), 0, 56);
            fix_index_hash(img);
            Some(format!("index header byte {at} ^= {value:#x}"))
        }
        Part::IndexEntry => {
            let len = std::fs::metadata(img.index_path()).unwrap().len();
            let at = 64 + pick(len - 64);
            xor_at(&img.index_path(), at, value);
            fix_index_hash(img);
            Some(format!("index byte {at} ^= {value:#x}"))
        }
        Part::FrameHeader | Part::Payload | Part::FramePadding => {
            let e = frame?;
            let (path, start, payload) = (img.segment_path(e.segment as usize), e.offset, u64::from(e.stored_len));
            let padding = (64 + payload).next_multiple_of(4096) - 64 - payload;
            let at = match part {
                Part::FrameHeader => start + pick(56),
                Part::Payload => start + 64 + pick(payload),
                _ if padding == 0 => return None,
                _ => start + 64 + payload + pick(padding),
            };
            xor_at(&path, at, value);
            if matches!(part, Part::Payload) {
                let mut bytes = vec![0u8; payload as usize];
                std::fs::File::open(&path).unwrap().read_exact_at(&mut bytes, start + 64).unwrap();
                write_at(&path, start + 48, &xxh3_64(&bytes).to_le_bytes());
            }
            rehash64(&path, start, 56);
            fix_segment_hash(img, e.segment as usize);
            Some(format!("{part:?}: {} byte {at} ^= {value:#x}", path.display()))
        }
        Part::SegmentHeader | Part::SegmentHeaderZeros => {
            let path = img.segment_path(seg);
            let at = if matches!(part, Part::SegmentHeader) { pick(56) } else { 64 + pick(4096 - 64) };
            xor_at(&path, at, value);
            rehash64(&path, 0, 56);
            fix_segment_hash(img, seg);
            Some(format!("{part:?}: {} byte {at} ^= {value:#x}", path.display()))
        }
        Part::Manifest => Some(damage_manifest(img, &mut pick)),
    }
}

/// Change one value of the manifest: a number nudged, a string edited, a
/// boolean flipped, a null filled in.
fn damage_manifest(img: &Image, pick: &mut impl FnMut(u64) -> u64) -> String {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&img.manifest_path).unwrap()).unwrap();
    let mut leaves = Vec::new();
    collect_leaves(&m, String::new(), &mut leaves);
    let path = &leaves[pick(leaves.len() as u64) as usize];
    let v = m.pointer_mut(path).unwrap();
    let was = v.clone();
    *v = match &was {
        serde_json::Value::Number(n) => match (n.as_u64(), pick(4)) {
            (Some(x), 0) => (x + 1).into(),
            (Some(x), 1) => x.saturating_sub(1).into(),
            (Some(x), 2) => (x * 2).into(),
            (Some(_), _) => 0.into(),
            (None, _) => serde_json::Value::from(-1),
        },
        serde_json::Value::String(s) if s.is_empty() => "x".into(),
        serde_json::Value::String(s) => {
            let mut b = s.clone().into_bytes();
            let i = pick(b.len() as u64) as usize;
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8_lossy(&b).into_owned().into()
        }
        serde_json::Value::Bool(b) => (!b).into(),
        _ => 7.into(),
    };
    let now = v.clone();
    std::fs::write(&img.manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    format!("manifest {path}: {was} -> {now}")
}

fn collect_leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| collect_leaves(v, format!("{at}/{k}"), out)),
        serde_json::Value::Array(a) => {
            a.iter().enumerate().for_each(|(i, v)| collect_leaves(v, format!("{at}/{i}"), out))
        }
        _ => out.push(at),
    }
}

fn xor_at(path: &Path, at: u64, value: u8) {
    let mut b = [0u8];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, at).unwrap();
    write_at(path, at, &[b[0] ^ value]);
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

/// Recompute the xxh3-64 of `len` bytes at `start`, stored right after them.
fn rehash64(path: &Path, start: u64, len: usize) {
    let mut b = vec![0u8; len];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, start).unwrap();
    write_at(path, start + len as u64, &xxh3_64(&b).to_le_bytes());
}

fn fix_index_hash(img: &Image) {
    let hash = xxh3_128(&std::fs::read(img.index_path()).unwrap());
    edit_manifest(img, |m| m["index"]["xxh3_128"] = format!("{hash:032x}").into());
}

fn fix_segment_hash(img: &Image, seg: usize) {
    let hash = xxh3_64(&std::fs::read(img.segment_path(seg)).unwrap());
    edit_manifest(img, |m| m["segments"][seg]["xxh3_64"] = format!("{hash:016x}").into());
}

fn edit_manifest(img: &Image, change: impl FnOnce(&mut serde_json::Value)) {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&img.manifest_path).unwrap()).unwrap();
    change(&mut m);
    std::fs::write(&img.manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// verify reads indexes a window at a time, the parent's in step with the
/// child's: an image of more than one window (4096 chunks) whose inherited
/// chunks lie in a later window verifies, and a forged inherited hash there
/// is named with its chunk number.
#[test]
fn inherited_chunks_past_the_first_index_window_are_checked_against_the_parent() {
    let sb = Sandbox::new();
    let chunk = 64 << 10;
    let chunks = 4096 * 2 + 100;
    let src = std::fs::File::create(sb.path("src.img")).unwrap();
    src.set_len((chunks * chunk) as u64).unwrap();
    let data = mixed_bytes(40 * chunk, 5);
    src.write_all_at(&data, (5000 * chunk) as u64).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K"], 0);
    src.write_all_at(&[1u8; 10], (5020 * chunk) as u64).unwrap();
    src.write_all_at(&[2u8; 10], (8200 * chunk) as u64).unwrap();
    let out = sb.expect(&["create", "src.img", "set", "--chunk-size", "64K", "--incremental", "--json"], 0);
    let inc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inc["manifest"]["stats"]["chunks_stored"], 2, "{}", inc["manifest"]["stats"]);
    sb.expect(&["verify", "set"], 0);
    // restore resolves the chain a window at a time too.
    sb.expect(&["restore", "set", "back.img"], 0);
    assert!(same_bytes(&sb.path("src.img"), &sb.path("back.img")), "the restored chain equals the source");
    std::fs::remove_file(sb.path("back.img")).unwrap();

    // Version 2 records no hash for inherited runs; an image written as
    // version 1 did, and a forged one is caught across windows too.
    let parent_hashes = chunk_hashes(&sb.path("set"), Some(&first_id(&sb.path("set"))));
    rewrite_as_v1(&sb.path("set"), None, &parent_hashes);
    sb.expect(&["verify", "set"], 0);
    let img = ImageSet::open(&sb.path("set")).unwrap().resolve(None).unwrap();
    let entries: Vec<IndexEntry> = img.read_index().unwrap().entries.into_iter().map(|e| e.unwrap()).collect();
    assert_eq!(entries[5030].state, ChunkState::Inherited);
    let mut e = entries[5030];
    e.raw_hash ^= 1;
    let mut bytes = [0u8; 48];
    e.encode(&mut bytes);
    write_at(&img.index_path(), 64 + 48 * 5030, &bytes);
    fix_index_hash(&img);
    let out = sb.expect(&["verify", "set"], 3);
    let text = stdout(&out);
    assert!(text.contains("BAD chunk 5030 ") && text.contains("holds a different chunk there"), "{text}");
    assert_eq!(text.matches("BAD chunk").count(), 1, "{text}");
    let out = sb.expect(&["restore", "set", "back.img"], 3);
    assert!(stderr(&out).contains("chunk 5030 is inherited"), "{}", stderr(&out));
    assert!(!sb.path("back.img").exists());
}

/// A version-2 inherited run that covers a chunk its parent holds
/// unreadable (the parent's record forged so, its index hash fixed up; its
/// segment then holds a frame nothing names, which verify reports too) is
/// refused by verify and by restore alike, though the run starts on a
/// chunk the parent holds well.
#[test]
fn an_inherited_run_over_an_unreadable_parent_chunk_fails_verify_and_restore_alike() {
    let sb = Sandbox::new();
    let data = mixed_bytes(2 << 20, 8);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K"], 0);
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K", "--incremental"], 0);
    let parent = first_id(&sb.path("set"));
    let img = ImageSet::open(&sb.path("set")).unwrap().resolve(Some(&parent)).unwrap();
    let entries: Vec<IndexEntry> = img.read_index().unwrap().entries.into_iter().map(|e| e.unwrap()).collect();
    let c = (1..entries.len())
        .find(|&c| entries[c].state == ChunkState::Stored && entries[c - 1].state == ChunkState::Stored);
    let c = c.expect("two stored chunks in a row") as u64;
    forge_record_of(&sb.path("set"), Some(&parent), c, |r| {
        r[0] = 4; // unreadable: no frame, no hash
        r[24..40].fill(0);
        r[48..64].fill(0);
    });
    let out = sb.expect(&["verify", "set"], 3);
    assert!(stdout(&out).contains("holds no data there (unreadable)"), "{}", stdout(&out));
    let out = sb.expect(&["restore", "set", "back.img"], 3);
    assert!(stderr(&out).contains("holds no data there (unreadable)"), "{}", stderr(&out));
    assert!(!sb.path("back.img").exists());
}

/// The ID of the oldest image of `set`.
fn first_id(set: &Path) -> String {
    let mut all = ImageSet::open(set).unwrap().load_all().unwrap().images;
    all.remove(0).manifest.image_id
}

/// Two files hold the same bytes (compared a MiB at a time).
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
