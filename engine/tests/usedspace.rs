//! Used-space maps against the filesystem tools' own view: ext2/3/4 made by
//! mkfs.ext4 (populated with `-d`, so no mount and no root is needed), with
//! the free blocks our parser finds compared to what `dumpe2fs` reports.

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Block ranges: (first block, count).
type Blocks = Vec<(u64, u64)>;

/// What dumpe2fs says of `img`: block size, free blocks, never-read metadata.
fn dumpe2fs(img: &Path) -> (u64, Blocks, Blocks) {
    let out = Command::new("dumpe2fs").arg(img).output().expect("run dumpe2fs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (bs, free) = crate::dumpe2fs::free_blocks(&text);
    (bs, free, crate::dumpe2fs::never_read(&text))
}

fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("text.txt"), mixed_bytes(300 << 10, 1)).unwrap();
    std::fs::write(dir.join("sub/random.bin"), tintype::sample::random_bytes(2 << 20, 9)).unwrap();
    for i in 0..40 {
        std::fs::write(dir.join(format!("sub/small{i}")), format!("file {i}\n").repeat(i * 50)).unwrap();
    }
}

/// Several geometries and feature sets; the parser's free blocks equal
/// dumpe2fs's exactly, plus the metadata dumpe2fs shows is never read
/// (unused inode table ends, bitmaps of uninitialised groups).
#[test]
fn ext_free_space_equals_dumpe2fs() {
    if !require("ext_free_space_equals_dumpe2fs", &[Need::Tool("mkfs.ext4"), Need::Tool("dumpe2fs")]) {
        return;
    }
    let sb = Sandbox::new();
    populate(&sb.path("tree"));
    let variants: [(&str, &[&str], &str); 7] = [
        ("small-1k", &[], "64M"),
        ("4k", &["-b", "4096"], "256M"),
        ("no-flex-bg", &["-b", "4096", "-O", "^flex_bg"], "200M"),
        ("64bit-1k", &["-b", "1024", "-O", "64bit"], "96M"),
        ("no-csum", &["-b", "4096", "-O", "^metadata_csum,uninit_bg"], "128M"),
        ("ext2", &["-t", "ext2", "-b", "4096"], "64M"),
        ("ext3-2k", &["-t", "ext3", "-b", "2048"], "80M"),
    ];
    let mut never_read_seen = 0;
    for (name, opts, size) in variants {
        let img = sb.path(&format!("{name}.img"));
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d", sb.path("tree").to_str().unwrap()])
            .args(opts)
            .args([img.to_str().unwrap(), size])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let (bs, free, never_read) = dumpe2fs(&img);
        let want = crate::dumpe2fs::union(&free, &never_read);
        never_read_seen += never_read.iter().map(|r| r.1).sum::<u64>();
        let f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        let (fs, map) = tintype::fs::ext4::free_space(&f, 0, len).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fs.block_bytes, bs, "{name}");
        let got: Vec<(u64, u64)> = map.ranges().iter().map(|&(s, l)| (s / bs, l / bs)).collect();
        assert_eq!(got, want, "{name}: free blocks differ from dumpe2fs");
        let extra: u64 = want.iter().map(|r| r.1).sum::<u64>() - free.iter().map(|r| r.1).sum::<u64>();
        assert_eq!(map.free_bytes() / bs, fs.free_blocks + extra, "{name}: the superblock's free count agrees");
    }
    assert!(never_read_seen > 0, "some variant has inode table ends or bitmaps that are never read");
}

/// A damaged superblock or bitmap is refused (the caller images the
/// filesystem whole), never read as "free".
#[test]
fn damaged_ext_metadata_is_refused() {
    if !require("damaged_ext_metadata_is_refused", &[Need::Tool("mkfs.ext4"), Need::Tool("mkfs.ext3")]) {
        return;
    }
    let sb = Sandbox::new();
    populate(&sb.path("tree"));
    let img = sb.path("a.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d", sb.path("tree").to_str().unwrap(), img.to_str().unwrap(), "64M"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = std::fs::read(&img).unwrap();
    let check = |bytes: &[u8]| {
        std::fs::write(&img, bytes).unwrap();
        let f = std::fs::File::open(&img).unwrap();
        tintype::fs::ext4::free_space(&f, 0, bytes.len() as u64).map(|_| ())
    };
    check(&good).unwrap();
    // A flipped byte in the superblock (its free-blocks count).
    let mut bad = good.clone();
    bad[1024 + 0xC] ^= 0x40;
    assert!(check(&bad).unwrap_err().contains("superblock checksum"), "superblock");
    // A flipped bit in group 0's block bitmap.
    let gd = &good[4096..4096 + 64];
    let bitmap = u64::from(u32::from_le_bytes(gd[0..4].try_into().unwrap())) * 4096;
    let mut bad = good.clone();
    bad[bitmap as usize + 100] ^= 0x01;
    assert!(check(&bad).unwrap_err().contains("bitmap checksum"), "bitmap");

    // Without metadata_csum (ext3) nothing checksums a bitmap: one zeroed
    // (every block free, the file data in it too) disagrees with its
    // descriptor's free count, and is refused rather than trusted.
    let out = Command::new("mkfs.ext3")
        .args(["-q", "-F", "-b", "1024", "-d", sb.path("tree").to_str().unwrap(), img.to_str().unwrap(), "16M"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let good = std::fs::read(&img).unwrap();
    check(&good).unwrap();
    // 1 KiB blocks: descriptors in block 2, 32 bytes each; group 0's bitmap.
    let bitmap = u64::from(u32::from_le_bytes(good[2048..2052].try_into().unwrap())) * 1024;
    let mut bad = good.clone();
    bad[bitmap as usize..bitmap as usize + 1024].fill(0);
    let e = check(&bad).unwrap_err();
    assert!(e.contains("group 0") && e.contains("descriptor counts"), "{e}");
}

/// `--used-only on` fails when nothing can be mapped, and works on an ext4
/// image file (a filesystem on the whole "device"); `--used-only off`
/// reads everything; the default skips the free space.
#[test]
fn used_only_modes_on_an_image_file() {
    if !require("used_only_modes_on_an_image_file", &[Need::Tool("mkfs.ext4"), Need::Tool("e2fsck")]) {
        return;
    }
    let sb = Sandbox::new();
    std::fs::write(sb.path("noise.img"), tintype::sample::random_bytes(4 << 20, 2)).unwrap();
    let out = sb.expect(&["create", "noise.img", "set1", "--used-only", "on"], 1);
    assert!(stderr(&out).contains("--used-only on"), "{}", stderr(&out));
    assert!(!sb.path("set1").read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".seg")));

    populate(&sb.path("tree"));
    let img = sb.path("fs.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d", sb.path("tree").to_str().unwrap(), img.to_str().unwrap(), "48M"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fs_bytes = std::fs::read(&img).unwrap();
    let run = |mode: &str, set: &str| {
        let out = sb.expect(&["create", "fs.img", set, "--used-only", mode, "--json"], 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap_or(0)
    };
    let on = run("on", "set2");
    let auto = run("auto", "set3");
    let off = run("off", "set4");
    assert!(on > 20 && on == auto, "most of a 48 MiB filesystem holding ~3 MiB is free: {on}");
    assert_eq!(off, 0);
    // A merged image keeps the count of the unused chunks it holds.
    let out = sb.expect(&["create", "fs.img", "set2", "--incremental", "--used-only", "on", "--json"], 0);
    let inc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inc = inc["image_id"].as_str().unwrap().to_string();
    let out = sb.expect(&["merge", &format!("set2@{inc}"), "--full", "--json"], 0);
    let merged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = merged["merged"]["image_id"].as_str().unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.path("set2").join(format!("{id}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(m["stats"]["chunks_unused"].as_u64(), Some(on), "{}", m["stats"]);
    assert_eq!(m["stats"]["bytes_read"].as_u64(), Some(0), "a merge reads no source");
    sb.expect(&["verify", &format!("set2@{id}")], 0);
    // Restored: everything the filesystem uses is there (e2fsck clean);
    // the full copy is byte for byte.
    sb.expect(&["restore", "set3", "r3.img"], 0);
    let fsck = Command::new("e2fsck").args(["-fn", sb.path("r3.img").to_str().unwrap()]).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    sb.expect(&["restore", "set4", "r4.img"], 0);
    assert!(std::fs::read(sb.path("r4.img")).unwrap() == fs_bytes);
    let out = sb.expect(&["info", "set3"], 0);
    assert!(stdout(&out).contains("ext4") && stdout(&out).contains("used-only auto"), "{}", stdout(&out));
}

/// A v4 XFS (no checksums) whose by-size free-space btree disagrees with the
/// by-block one (and the AGF) is refused: on v4 nothing else vouches for the
/// trees, and trusting a damaged by-block tree would drop used blocks.
#[test]
fn xfs_free_space_trees_must_agree() {
    if !require("xfs_free_space_trees_must_agree", &[Need::Tool("mkfs.xfs")]) {
        return;
    }
    let sb = Sandbox::new();
    let img = sb.path("x4.img");
    std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
    let out = Command::new("mkfs.xfs").args(["-q", "-f", "-m", "crc=0", img.to_str().unwrap()]).output();
    let out = out.expect("run mkfs.xfs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let check = |bytes: &[u8]| {
        std::fs::write(&img, bytes).unwrap();
        let f = std::fs::File::open(&img).unwrap();
        tintype::fs::xfs::free_space(&f, 0, bytes.len() as u64).map(|(x, _)| x.free_blocks)
    };
    let good = std::fs::read(&img).unwrap();
    let free = check(&good).unwrap();
    assert!(free > 0);
    // AG 0's AGF is the second sector; its cntbt root at byte 20 (big-endian).
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let bs = be32(&good, 4) as usize;
    let sect = u16::from_be_bytes(good[102..104].try_into().unwrap()) as usize;
    let cnt_root = be32(&good, sect + 20) as usize;
    assert_eq!(&good[cnt_root * bs..cnt_root * bs + 4], b"ABTC", "a v4 by-size leaf");
    let mut bad = good.clone();
    let rec = cnt_root * bs + 16 + 4; // first record's block count
    let n = be32(&bad, rec);
    bad[rec..rec + 4].copy_from_slice(&(n - 1).to_be_bytes());
    let e = check(&bad).unwrap_err();
    assert!(e.contains("by-size") && e.contains("group 0"), "{e}");
}

/// An index grows with what is stored: a used-space image of a mostly empty
/// 1 GiB ext4 holds a record per stored chunk plus a few runs, and an
/// unchanged incremental of it is one inherited run (the free space its
/// parent left unused too, the zero chunks its parent held as zeros), so
/// it stores 128 bytes of index and no frame; both restore the source's
/// used chunks identical, free ones as zeros, and pass e2fsck.
#[test]
fn an_unchanged_incremental_of_a_used_space_image_is_one_run() {
    if !require("an_unchanged_incremental_of_a_used_space_image_is_one_run", &[Need::Tool("mkfs.ext4")]) {
        return;
    }
    let sb = Sandbox::new();
    populate(&sb.path("tree"));
    let img = sb.path("fs.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1", "-d", sb.path("tree").to_str().unwrap()])
        .args([img.to_str().unwrap(), "1G"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = |args: &[&str]| -> serde_json::Value { serde_json::from_slice(&sb.expect(args, 0).stdout).unwrap() };
    let full = json(&["create", "fs.img", "set", "--json"]);
    let fm = &full["manifest"];
    let stored = fm["stats"]["chunks_stored"].as_u64().unwrap();
    assert!(fm["stats"]["chunks_unused"].as_u64().unwrap() > 700, "most of 1024 chunks are free: {}", fm["stats"]);
    let records = (fm["index"]["size_bytes"].as_u64().unwrap() - 64) / 64;
    assert!(records <= stored + 64, "{records} records for {stored} stored chunks: runs, not chunks");
    let inc = json(&["create", "fs.img", "set", "--incremental", "--json"]);
    let im = &inc["manifest"];
    assert_eq!(im["stats"]["chunks_stored"], 0, "{}", im["stats"]);
    assert_eq!(im["stats"]["chunks_inherited"], 1024, "every chunk inherited: {}", im["stats"]);
    assert_eq!(im["index"]["size_bytes"], 64 + 64, "one run record: {}", im["index"]);
    sb.expect(&["verify", "set"], 0);
    let source = std::fs::read(&img).unwrap();
    let (_, entries) = load_image(&sb.path("set"), fm["image_id"].as_str().unwrap());
    for sel in [fm["image_id"].as_str().unwrap(), im["image_id"].as_str().unwrap()] {
        let _ = std::fs::remove_file(sb.path("back.img"));
        sb.expect(&["restore", &format!("set@{sel}"), "back.img"], 0);
        let out = Command::new("e2fsck").args(["-fn", sb.path("back.img").to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{sel}: e2fsck: {}", String::from_utf8_lossy(&out.stdout));
        let back = std::fs::read(sb.path("back.img")).unwrap();
        assert_eq!(back.len(), source.len());
        for (c, (a, b)) in back.chunks(1 << 20).zip(source.chunks(1 << 20)).enumerate() {
            match entries[c].state {
                tintype::format::index::ChunkState::Unused => assert!(a.iter().all(|&x| x == 0), "{sel}: chunk {c}"),
                _ => assert!(a == b, "{sel}: chunk {c} differs from the source"),
            }
        }
    }
}

/// Image `id` of `set` and its decoded entries.
fn load_image(set: &Path, id: &str) -> (tintype::set::Image, Vec<tintype::format::index::IndexEntry>) {
    let img = tintype::set::ImageSet::open(set).unwrap().resolve(Some(id)).unwrap();
    let entries = img.read_index().unwrap().entries.into_iter().map(|e| e.unwrap()).collect();
    (img, entries)
}
