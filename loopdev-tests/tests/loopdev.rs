//! Root-only tests on real loop devices: 512- and 4096-byte logical sectors,
//! sizes that are not a multiple of the chunk size, and a real ext4
//! filesystem. Where they cannot run they print why; CI runs as root.

use std::path::Path;

use loopdev_tests::*;
use tintype::codec::Decoder;
use tintype::format::index::ChunkState;
use tintype::set::ImageSet;
use xxhash_rust::xxh3::xxh3_128;

/// Deterministic mixed content: zeros, text, random, in 64 KiB pieces.
fn mixed(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![0u8; size];
    for (i, piece) in v.chunks_mut(64 << 10).enumerate() {
        match i % 5 {
            0 | 3 => {}
            1 => piece.iter_mut().enumerate().for_each(|(j, b)| *b = b"block device text "[j % 18]),
            _ => piece.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
        }
    }
    v
}

/// The image's index hashes equal hashes of `content` computed here; every
/// chunk reads back identical; and verify passes.
fn check_image(set: &Path, content: &[u8], sector: u32) {
    let img = ImageSet::open(set).unwrap().resolve(None).unwrap();
    let m = &img.manifest;
    assert_eq!(m.source.kind, "block-device");
    assert_eq!(m.source.size_bytes, content.len() as u64);
    assert_eq!(m.source.logical_sector_bytes, sector);
    assert!(m.settings.source_direct_io, "block devices are read with O_DIRECT");
    let idx = img.read_index().unwrap();
    assert!(idx.hash_matches);
    let mut dec = Decoder::new().unwrap();
    let mut buf = vec![0u8; m.chunk_size_bytes as usize];
    for (chunk, e) in idx.entries.iter().enumerate() {
        let e = e.as_ref().unwrap();
        let (start, len) = img.chunk_extent(chunk as u64);
        let raw = &content[start as usize..(start + u64::from(len)) as usize];
        assert_eq!(e.raw_hash, xxh3_128(raw), "chunk {chunk}: recorded hash equals the device's bytes");
        assert_eq!(e.state == ChunkState::Zero, raw.iter().all(|&b| b == 0));
        let n = img.read_chunk(e, chunk as u64, &mut buf, &mut dec).unwrap();
        assert!(buf[..n] == *raw, "chunk {chunk} reads back identical");
    }
    let out = tintype(&["verify", set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn images_loop_devices_with_512_and_4096_byte_sectors_and_odd_sizes() {
    if !require_loop_devices("images_loop_devices_with_512_and_4096_byte_sectors_and_odd_sizes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for sector in [512u32, 4096] {
        // 5 MiB + 3 sectors of 4 KiB: a multiple of both sector sizes, not of the chunk.
        let size = (5 << 20) + 3 * 4096;
        let content = mixed(size, u64::from(sector));
        let backing = dir.path().join(format!("disk{sector}.img"));
        std::fs::write(&backing, &content).unwrap();
        let dev = LoopDev::attach(&backing, sector);
        for backend in ["uring", "portable"] {
            let set = dir.path().join(format!("set-{sector}-{backend}"));
            let out = tintype(&[
                "create",
                dev.as_str(),
                set.to_str().unwrap(),
                "--used-only",
                "off",
                "--io",
                backend,
                "--lanes",
                "2",
                "--chunk-size",
                "256K",
            ]);
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            check_image(&set, &content, sector);
        }
        assert_eq!(std::fs::read(&backing).unwrap(), content, "the source was not written to");
    }
}

#[test]
fn images_a_real_ext4_filesystem() {
    if !require("images_a_real_ext4_filesystem", &[Need::LoopDevices, Need::Tool("mkfs.ext4")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("ext4.img");
    // 64 MiB + 20 KiB: not a multiple of the 1 MiB chunk.
    std::fs::File::create(&backing).unwrap().set_len((64 << 20) + 20 * 1024).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    sh("mkfs.ext4", &["-q", "-F", dev.as_str()]);
    {
        let mnt = Mount::new(&dev, &dir.path().join("mnt"));
        // Real files, an incompressible one, and one written then deleted
        // so free space holds stale data.
        for src in ["/etc/services", "/etc/passwd", "/usr/bin/ls", "/usr/bin/cp"] {
            if Path::new(src).exists() {
                std::fs::copy(src, mnt.dir.join(Path::new(src).file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(mnt.dir.join("random.bin"), mixed(8 << 20, 3)).unwrap();
        std::fs::write(mnt.dir.join("deleted.bin"), mixed(6 << 20, 4)).unwrap();
        sh("sync", &[]);
        std::fs::remove_file(mnt.dir.join("deleted.bin")).unwrap();
    }
    sh("sync", &[]);
    let before = std::fs::read(&backing).unwrap();
    let set = dir.path().join("set");
    // A full sector copy (forensics): every chunk, free space included.
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--used-only", "off"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    check_image(&set, &before, 512);
    assert_eq!(std::fs::read(&backing).unwrap(), before, "the source was not written to");
    let info = tintype(&["info", set.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("loop_backing_file"));
}

fn restore(args: &[&str]) -> std::process::Output {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    tintype(&a)
}

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Image a device, then restore to zeroed, junk-filled (with --force, and
/// with --discard) and larger devices: the source's bytes come back exactly,
/// zero regions included, and bytes past the image's end stay as they were.
#[test]
fn restores_to_loop_devices_byte_for_byte() {
    if !require_loop_devices("restores_to_loop_devices_byte_for_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for sector in [512u32, 4096] {
        let size = (5 << 20) + 3 * 4096;
        let content = mixed(size, 100 + u64::from(sector));
        let src_file = dir.path().join(format!("src{sector}.img"));
        std::fs::write(&src_file, &content).unwrap();
        let src = LoopDev::attach(&src_file, sector);
        let set = dir.path().join(format!("set{sector}"));
        let out = tintype(&["create", src.as_str(), set.to_str().unwrap(), "--chunk-size", "256K"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let set = set.to_str().unwrap();

        for backend in ["uring", "portable"] {
            // A zeroed device of the same size: nothing on it, no --force needed.
            let t_file = dir.path().join(format!("t{sector}{backend}.img"));
            std::fs::File::create(&t_file).unwrap().set_len(size as u64).unwrap();
            let t = LoopDev::attach(&t_file, sector);
            let out = restore(&[set, t.as_str(), "--io", backend, "--verify-after"]);
            assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
            assert!(out_text(&out).contains("zero-out"), "zero chunks are zeroed by the kernel: {}", out_text(&out));
            assert!(std::fs::read(&t_file).unwrap() == content, "sector {sector} {backend}: identical");

            // Junk everywhere: refused without --force, identical with it (and with --discard).
            for extra in [&[][..], &["--discard"][..]] {
                std::fs::write(&t_file, vec![0xa5u8; size]).unwrap();
                let out = restore(&[set, t.as_str(), "--io", backend]);
                assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
                assert!(std::fs::read(&t_file).unwrap().iter().all(|&b| b == 0xa5), "refused: untouched");
                let mut a = vec![set, t.as_str(), "--io", backend, "--force"];
                a.extend_from_slice(extra);
                let out = restore(&a);
                assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
                assert!(std::fs::read(&t_file).unwrap() == content, "junk target {extra:?}: identical");
            }
        }

        // A larger device: the image's bytes, then the rest untouched.
        let big_file = dir.path().join(format!("big{sector}.img"));
        let mut big = vec![0u8; size + (3 << 20)];
        big[size..].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 253) as u8 | 0x80);
        std::fs::write(&big_file, &big).unwrap();
        let bigdev = LoopDev::attach(&big_file, sector);
        // Data in its last MiB is data: refused without --force.
        let out = restore(&[set, bigdev.as_str()]);
        assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
        assert!(std::fs::read(&big_file).unwrap() == big, "refused: untouched");
        let out = restore(&[set, bigdev.as_str(), "--force"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let got = std::fs::read(&big_file).unwrap();
        assert!(got[..size] == content[..], "the source's bytes");
        assert!(got[size..] == big[size..], "then the rest untouched");
    }
}

/// Targets that must be refused: too small, another sector size, mounted,
/// holding a filesystem. Each refusal names the cause and leaves the target
/// byte-for-byte unchanged.
#[test]
fn refuses_unsafe_targets_and_leaves_them_untouched() {
    if !require_loop_devices("refuses_unsafe_targets_and_leaves_them_untouched") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 8 << 20;
    // Data in the first 7 MiB, zeros in the last MiB (for --allow-shrink).
    let mut content = mixed(size, 7);
    content[7 << 20..].fill(0);
    let src_file = dir.path().join("src.img");
    std::fs::write(&src_file, &content).unwrap();
    let src = LoopDev::attach(&src_file, 512);
    let set = dir.path().join("set");
    let out = tintype(&["create", src.as_str(), set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let set = set.to_str().unwrap();
    let check_refused = |dev: &LoopDev, file: &Path, args: &[&str], needle: &str| {
        let before = std::fs::read(file).unwrap();
        let mut a = vec![set, dev.as_str()];
        a.extend_from_slice(args);
        let out = restore(&a);
        assert_ne!(out.status.code(), Some(0), "{args:?} must be refused");
        assert!(out_text(&out).contains(needle), "{args:?}: expected {needle:?} in: {}", out_text(&out));
        assert!(std::fs::read(file).unwrap() == before, "{args:?}: the target is unchanged");
    };

    // Smaller by 1 MiB: refused; with --allow-shrink fine, since that MiB is zero.
    let small_file = dir.path().join("small.img");
    std::fs::File::create(&small_file).unwrap().set_len((size - (1 << 20)) as u64).unwrap();
    let small = LoopDev::attach(&small_file, 512);
    check_refused(&small, &small_file, &[], "smaller than the image's source");
    let out = restore(&[set, small.as_str(), "--allow-shrink", "--verify-after"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read(&small_file).unwrap() == content[..size - (1 << 20)]);
    // Smaller by 2 MiB: data would be lost, so refused even with --allow-shrink.
    let tiny_file = dir.path().join("tiny.img");
    std::fs::File::create(&tiny_file).unwrap().set_len((size - (2 << 20)) as u64).unwrap();
    let tiny = LoopDev::attach(&tiny_file, 512);
    check_refused(&tiny, &tiny_file, &["--allow-shrink"], "holds data past the target's end");

    // Data only in the middle of a device (none in its first or last MiB,
    // no signature): found by the samples, refused without --force.
    let mid_file = dir.path().join("mid.img");
    let mut mid = vec![0u8; size];
    mid[(3 << 20)..(5 << 20)].copy_from_slice(&content[..2 << 20]);
    mid[(3 << 20)..(5 << 20)].iter_mut().for_each(|b| *b |= 1);
    std::fs::write(&mid_file, &mid).unwrap();
    let middev = LoopDev::attach(&mid_file, 512);
    check_refused(&middev, &mid_file, &[], "non-zero data (at byte");
    drop(middev);

    // Another logical sector size: refused unless --force.
    let s4k_file = dir.path().join("s4k.img");
    std::fs::File::create(&s4k_file).unwrap().set_len(size as u64).unwrap();
    let s4k = LoopDev::attach(&s4k_file, 4096);
    check_refused(&s4k, &s4k_file, &[], "logical sector size is 4096 bytes");
    let out = restore(&[set, s4k.as_str(), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read(&s4k_file).unwrap() == content);

    // A filesystem on it: refused, naming it; mounted: refused even with --force.
    let fs_file = dir.path().join("fs.img");
    std::fs::File::create(&fs_file).unwrap().set_len(size as u64).unwrap();
    let fsdev = LoopDev::attach(&fs_file, 512);
    sh("mkfs.ext4", &["-q", "-F", fsdev.as_str()]);
    check_refused(&fsdev, &fs_file, &[], "ext2/3/4 filesystem");
    {
        let _m = Mount::new(&fsdev, &dir.path().join("mnt"));
        check_refused(&fsdev, &fs_file, &["--force"], "mounted at");
        // The file under that mounted loop device: refused too, --force or
        // not (it would be overwritten under the mounted filesystem).
        let before = std::fs::read(&fs_file).unwrap();
        let out = restore(&[set, fs_file.to_str().unwrap(), "--force"]);
        assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
        assert!(out_text(&out).contains("whose filesystem is mounted at"), "{}", out_text(&out));
        assert!(std::fs::read(&fs_file).unwrap() == before, "the file under the mount is unchanged");
    }
    let out = restore(&[set, fsdev.as_str(), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read(&fs_file).unwrap() == content);

    // A loop device over a segment of the set itself: refused, --force or
    // not; the image still verifies.
    let seg = std::fs::read_dir(set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".000000.seg"))
        .unwrap();
    let over_seg = LoopDev::attach(&seg, 512);
    let before = std::fs::read(&seg).unwrap();
    let out = restore(&[set, over_seg.as_str(), "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert!(out_text(&out).contains("a file of the image set being restored"), "{}", out_text(&out));
    drop(over_seg);
    assert!(std::fs::read(&seg).unwrap() == before);
    let out = tintype(&["verify", set]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
}

/// An ext4 filesystem imaged and restored to another device: identical
/// bytes, and e2fsck finds it clean.
#[test]
fn restored_ext4_filesystem_is_clean() {
    if !require_loop_devices("restored_ext4_filesystem_is_clean") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 48u64 << 20;
    let src_file = dir.path().join("ext4.img");
    std::fs::File::create(&src_file).unwrap().set_len(size).unwrap();
    let src = LoopDev::attach(&src_file, 4096);
    sh("mkfs.ext4", &["-q", "-F", src.as_str()]);
    {
        let m = Mount::new(&src, &dir.path().join("mnt"));
        for p in ["/etc/services", "/usr/bin/ls"] {
            if Path::new(p).exists() {
                std::fs::copy(p, m.dir.join(Path::new(p).file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(m.dir.join("random.bin"), mixed(5 << 20, 9)).unwrap();
    }
    sh("sync", &[]);
    let set = dir.path().join("set");
    let out = tintype(&["create", src.as_str(), set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let t_file = dir.path().join("t.img");
    std::fs::File::create(&t_file).unwrap().set_len(size).unwrap();
    let t = LoopDev::attach(&t_file, 4096);
    let out = restore(&[set.to_str().unwrap(), t.as_str(), "--verify-after"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    // The target is free the moment restore returns (`restore && mount`):
    // an exclusive open succeeds at once, on either I/O backend.
    let exclusive = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(t.as_str())
    };
    assert!(exclusive().is_ok(), "the target is still held after restore: {:?}", exclusive().err());
    for io in ["uring", "portable"] {
        let out = restore(&[set.to_str().unwrap(), t.as_str(), "--force", "--io", io]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        assert!(exclusive().is_ok(), "--io {io}: the target is still held after restore: {:?}", exclusive().err());
    }
    assert!(std::fs::read(&t_file).unwrap() == std::fs::read(&src_file).unwrap());
    sh("e2fsck", &["-fn", t.as_str()]);
}

/// --allow-shrink with used-space imaging: a filesystem's free tail is
/// recorded unused, so the data check alone would pass; a filesystem that
/// ends past the smaller target is refused (it would not mount), one that
/// ends before it restores and checks clean.
#[test]
fn allow_shrink_never_cuts_a_filesystem() {
    if !require_loop_devices("allow_shrink_never_cuts_a_filesystem") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("data.bin"), mixed(3 << 20, 4)).unwrap();
    let target_file = dir.path().join("t.img");
    std::fs::File::create(&target_file).unwrap().set_len(48 << 20).unwrap();
    let target = LoopDev::attach(&target_file, 512);
    for (fs_mib, fits) in [(64u64, false), (40, true)] {
        let src = dir.path().join(format!("src{fs_mib}.img"));
        std::fs::File::create(&src).unwrap().set_len(64 << 20).unwrap();
        let size = format!("{}M", fs_mib);
        sh("mkfs.ext4", &["-q", "-F", "-b", "4096", "-d", tree.to_str().unwrap(), src.to_str().unwrap(), &size]);
        let set = dir.path().join(format!("set{fs_mib}"));
        let out = tintype(&["create", src.to_str().unwrap(), set.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let out = restore(&[set.to_str().unwrap(), target.as_str(), "--allow-shrink", "--force"]);
        if fits {
            assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
            sh("e2fsck", &["-fn", target.as_str()]);
        } else {
            assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
            assert!(out_text(&out).contains("filesystem ends at byte"), "{}", out_text(&out));
        }
    }
}

/// Images of files whose size is not a multiple of the target device's
/// sector, ending in zeros: the kernel zeroes whole sectors only, so the
/// unaligned end is written as explicit zeros and the restore completes.
#[test]
fn unaligned_zero_tails_restore_to_block_devices() {
    if !require_loop_devices("unaligned_zero_tails_restore_to_block_devices") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (tail, sector) in [(100usize, 512u32), (512, 4096), (4096 + 100, 4096)] {
        let mut content = mixed(3 << 20, 5);
        content.extend(vec![0u8; (1 << 20) + tail]);
        let src = dir.path().join(format!("s{tail}.img"));
        std::fs::write(&src, &content).unwrap();
        let set = dir.path().join(format!("set{tail}"));
        let out = tintype(&["create", src.to_str().unwrap(), set.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        for backend in ["uring", "portable"] {
            let t_file = dir.path().join(format!("t{tail}{backend}.img"));
            let mut old = vec![0u8; 8 << 20];
            old[content.len()..].fill(0x3c);
            old[..content.len()].iter_mut().enumerate().for_each(|(i, b)| *b = if i < (1 << 20) { 0 } else { 0x77 });
            std::fs::write(&t_file, &old).unwrap();
            let t = LoopDev::attach(&t_file, sector);
            let out = restore(&[set.to_str().unwrap(), t.as_str(), "--io", backend, "--force", "--verify-after"]);
            assert_eq!(out.status.code(), Some(0), "tail {tail} sector {sector} {backend}: {}", out_text(&out));
            let got = std::fs::read(&t_file).unwrap();
            assert!(got[..content.len()] == content[..], "tail {tail} sector {sector} {backend}: identical");
            assert!(got[content.len()..] == old[content.len()..], "the rest untouched");
        }
    }
}

/// A week on a loop device, as a user would run it: a full image on day 0,
/// an incremental every day after (a differential on day 4), a few percent
/// of the device changed in between, `prune --keep-last 3` after each run,
/// and one run killed mid-way and resumed. Every kept image restores — to a
/// file and to another loop device — to the device's bytes of its day.
#[test]
fn a_week_of_daily_incrementals_with_retention_and_an_interruption() {
    if !require_loop_devices("a_week_of_daily_incrementals_with_retention_and_an_interruption") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 48usize << 20;
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, mixed(size, 42)).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    let set = dir.path().join("set");
    let set_s = set.to_str().unwrap();
    let mut days: Vec<u128> = Vec::new(); // the hash of each day's bytes
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for day in 0..7u64 {
        if day > 0 {
            // Change ~3% of the 1 MiB chunks, at random offsets, through the device.
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&dev.path).unwrap();
            for _ in 0..2 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % (size as u64 - 8192)) & !511;
                let fresh: Vec<u8> = (0..8192u64).map(|i| (x.rotate_left((i % 64) as u32) ^ i) as u8).collect();
                f.write_all_at(&fresh, at).unwrap();
            }
            f.sync_all().unwrap();
        }
        let kind = match day {
            0 => None,
            4 => Some("--differential"),
            _ => Some("--incremental"),
        };
        let mut args = vec!["create", dev.as_str(), set_s];
        args.extend(kind);
        let mut finished = false;
        if day == 5 {
            // Interrupted at a random moment, then resumed.
            let mut slow = args.clone();
            slow.extend(["--level", "19", "--lanes", "1"]);
            let mut child = std::process::Command::new(tintype_bin())
                .args(&slow)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100 + x % 400));
            let _ = child.kill();
            // Killed, or (rarely) done before the kill landed: then that is the day's image.
            finished = child.wait().unwrap().success();
            args.push("--resume");
        }
        if !finished {
            let out = tintype(&args);
            assert_eq!(out.status.code(), Some(0), "day {day}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let content = std::fs::read(&backing).unwrap();
        days.push(xxh3_128(&content));
        let out = tintype(&["prune", set_s, "--keep-last", "3"]);
        assert_eq!(out.status.code(), Some(0), "day {day}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let images = ImageSet::open(&set).unwrap().images().unwrap();
    assert_eq!(images.len(), 3, "the retention window holds three images");
    let target_file = dir.path().join("target.img");
    std::fs::File::create(&target_file).unwrap().set_len(size as u64).unwrap();
    let target = LoopDev::attach(&target_file, 512);
    // Oldest first: the three kept images are days 4, 5 and 6.
    for (img, want) in images.iter().zip(&days[4..]) {
        let spec = format!("{set_s}@{}", img.id());
        let file = dir.path().join(format!("{}.img", img.id()));
        let out = tintype(&["restore", &spec, file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(xxh3_128(&std::fs::read(&file).unwrap()), *want, "image {} restores its day", img.id());
        let out = tintype(&["restore", &spec, target.as_str(), "--force", "--verify-after"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(xxh3_128(&std::fs::read(&target_file).unwrap()), *want, "image {} on a device", img.id());
        let out = tintype(&["verify", &spec]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tintype-test", dir.to_str().unwrap()]);
        Tmpfs(dir.into())
    }

    fn with_options(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh("mount", &["-t", "tmpfs", "-o", options, "tintype-test", dir.to_str().unwrap()]);
        Tmpfs(dir.into())
    }

    fn grow(&self, size: &str) {
        sh("mount", &["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

/// The destination fills up mid-run: create fails naming the cause and
/// keeps what it wrote; once there is room, `--resume` finishes an image
/// that restores to the device's bytes, reading only what was missing.
#[test]
fn a_full_destination_then_resume() {
    if !require_loop_devices("a_full_destination_then_resume") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64usize << 20;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let content: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, &content).unwrap();
    let dev = LoopDev::attach(&backing, 4096);
    let fs = Tmpfs::new(&dir.path().join("small"), "40m");
    let set = fs.0.join("set");
    let set_s = set.to_str().unwrap();
    let out = tintype(&["create", dev.as_str(), set_s, "--level", "1", "--chunk-size", "256K"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("no space left"), "the cause is named: {err}");
    assert!(err.contains("--resume"), "the message says how to carry on: {err}");
    let kept = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(kept > 0, "the frames written before the disk filled are kept");
    fs.grow("200m");
    let out = tintype(&["create", dev.as_str(), set_s, "--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = v["manifest"]["stats"]["chunks_resumed"].as_u64().unwrap();
    let read = v["manifest"]["stats"]["bytes_read"].as_u64().unwrap();
    assert!(resumed > 0 && read < size as u64, "resumed {resumed} chunks, read {read} bytes again");
    assert_eq!(read + resumed * (256 << 10), size as u64, "every chunk was either kept or read once");
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set_s, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == content, "the resumed image restores to the device's bytes");
    let out = tintype(&["verify", set_s]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A run stops on a full destination; then the device is written (through
/// the loop device: its sectors-written counter moves) before `--resume`:
/// the kept frames are stale, so the resume says so and images the device
/// afresh, and the image holds the device as it is now.
#[test]
fn a_resume_after_the_device_was_written_starts_afresh() {
    if !require_loop_devices("a_resume_after_the_device_was_written_starts_afresh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 24usize << 20;
    let mut content = noise(size, 5);
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, &content).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    let fs = Tmpfs::new(&dir.path().join("small"), "12m");
    let set = fs.0.join("set");
    let set_s = set.to_str().unwrap();
    let out = tintype(&["create", dev.as_str(), set_s, "--chunk-size", "256K"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("no space left"), "{err}");
    // Chunk 0 was stored by the run that stopped; write over part of it,
    // through the page cache, and keep the device open without fsync: the
    // write has not reached the device (nor its counter) when the resume
    // starts.
    content[4096..8192].fill(0x5A);
    let dev_file = std::fs::OpenOptions::new().write(true).open(dev.as_str()).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&dev_file, &content[4096..8192], 4096).unwrap();
    fs.grow("64m");
    let out = tintype(&["create", dev.as_str(), set_s, "--resume", "--json"]);
    drop(dev_file);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("the source was written since") && err.contains("sectors written"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &v["manifest"]["stats"];
    assert!(stats["chunks_resumed"].as_u64().unwrap_or(0) == 0 && stats["bytes_read"] == size, "{stats}");
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set_s, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == content, "the image holds the device as it is now");
}

/// The kernel's partition devices of a loop device (`partx -a`), removed
/// on drop (before the loop device is detached: declare it after).
struct Partitions(String);

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = std::process::Command::new("partx").args(["-d", &self.0]).status();
    }
}

/// Writes the source's own counters and times would miss: a partition
/// written through its whole disk, and a file on a filesystem that keeps
/// whole seconds changed in the second the run started. Either way the
/// resume must not keep the interrupted run's frames.
#[test]
fn a_resume_sees_writes_through_the_disk_and_coarse_timestamps() {
    if !require_loop_devices("a_resume_sees_writes_through_the_disk_and_coarse_timestamps") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let resume_fresh = |source: &str, set: &Path, fs: &Tmpfs, why: &str| -> serde_json::Value {
        fs.grow("96m");
        let out = tintype(&["create", source, set.to_str().unwrap(), "--resume", "--json"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("the source was written since") && err.contains(why), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["manifest"]["stats"]["chunks_resumed"].as_u64().unwrap_or(0), 0, "{}", v["manifest"]["stats"]);
        v
    };
    let stop_on_full = |source: &str, set: &Path| {
        let out = tintype(&["create", source, set.to_str().unwrap(), "--chunk-size", "256K", "--lanes", "1"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.code() == Some(1) && err.contains("--resume"), "{err}");
    };

    // A GPT disk with one partition; the partition is the source.
    let backing = dir.path().join("disk.img");
    let mut disk = noise(48 << 20, 9);
    std::fs::write(&backing, &disk).unwrap();
    let mut sf = std::process::Command::new("sfdisk")
        .args(["-q", backing.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    sf.stdin.take().unwrap().write_all(b"label: gpt\nstart=2048, size=81920\n").unwrap();
    assert!(sf.wait().unwrap().success());
    disk = std::fs::read(&backing).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    sh("partx", &["-a", dev.as_str()]);
    let _parts = Partitions(dev.as_str().to_string());
    let part = format!("{}p1", dev.as_str());
    wait_for(Path::new(&part), "the partition device");
    let fs = Tmpfs::new(&dir.path().join("small"), "16m");
    let set = fs.0.join("set");
    stop_on_full(&part, &set);
    // Write the partition's first chunk (stored by the stopped run) through the disk.
    let at = (1 << 20) + 4096;
    disk[at..at + 4096].fill(0x3C);
    let f = std::fs::OpenOptions::new().write(true).open(dev.as_str()).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &disk[at..at + 4096], at as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    resume_fresh(&part, &set, &fs, "sectors written");
    let target = dir.path().join("part.img");
    let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == disk[1 << 20..(1 << 20) + (40 << 20)], "the partition as it is now");
    drop(fs);

    // ext4 with 128-byte inodes keeps whole-second timestamps.
    let fsimg = dir.path().join("ext4.img");
    std::fs::File::create(&fsimg).unwrap().set_len(64 << 20).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-I", "128", fsimg.to_str().unwrap()]);
    let fsdev = LoopDev::attach(&fsimg, 512);
    let mnt = Mount::new(&fsdev, &dir.path().join("ext4"));
    let source = mnt.dir.join("source.img");
    std::fs::write(&source, noise(24 << 20, 10)).unwrap();
    let fs = Tmpfs::new(&dir.path().join("small2"), "12m");
    let set = fs.0.join("set");
    // Started within a second of the file's last write: its stamp cannot
    // tell a later write in that second, so the resume starts afresh.
    stop_on_full(source.to_str().unwrap(), &set);
    resume_fresh(source.to_str().unwrap(), &set, &fs, "keeps whole seconds");
}

/// The destination fills up at the very end, when the committed index or
/// the manifest is written (a tmpfs out of inodes, the smallest count that
/// lets everything but the commit in): every chunk was imaged, so the run's files are kept, and
/// `--resume` commits the image without reading the source again.
#[test]
fn a_destination_that_fills_at_the_commit() {
    if !require_loop_devices("a_destination_that_fills_at_the_commit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 4usize << 20;
    let content = noise(size, 77);
    let source = dir.path().join("source.img");
    std::fs::write(&source, &content).unwrap();
    let source_s = source.to_str().unwrap();
    fn args<'a>(source: &'a str, set: &'a str) -> Vec<&'a str> {
        vec!["create", source, set, "--lanes", "1", "--chunk-size", "256K"]
    }
    let mut found = None;
    for inodes in 2..40 {
        let fs =
            Tmpfs::with_options(&dir.path().join(format!("small{inodes}")), &format!("size=64m,nr_inodes={inodes}"));
        let set = fs.0.join("set");
        let out = tintype(&args(source_s, set.to_str().unwrap()));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.code() == Some(1) || out.status.success(),
            "{inodes} inodes: exit {:?}: {err}",
            out.status.code()
        );
        assert!(!err.contains("panicked"), "{err}");
        if out.status.success() {
            break;
        }
        // The commit writes the committed index (IMAGEID.index.tmp, which
        // needs one more inode while the working table is still there) and
        // then the manifest: a full disk at either keeps every frame.
        if err.contains(".manifest.json") || err.contains(".index.tmp") {
            found = Some((fs, inodes, err));
            break;
        }
    }
    let (fs, inodes, err) = found.expect("some inode count lets everything but the commit in");
    assert!(err.to_lowercase().contains("no space left"), "the cause is named: {err}");
    assert!(err.contains("every chunk was imaged") && err.contains("--resume"), "{err}");
    let set = fs.0.join("set");
    let set_s = set.to_str().unwrap();
    let segments: u64 = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(segments > size as u64, "{inodes} inodes: the frames are kept ({segments} bytes of segments)");
    let out = tintype(&["list", set_s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unfinished"][0]["resumable"], true, "{v}");
    sh("mount", &["-o", "remount,nr_inodes=1000", fs.0.to_str().unwrap()]);
    let mut resume = args(source_s, set_s);
    resume.extend(["--resume", "--json"]);
    let out = tintype(&resume);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["stats"]["bytes_read"], 0, "nothing was read again: {}", v["manifest"]["stats"]);
    assert_eq!(v["manifest"]["stats"]["chunks_resumed"], 16);
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set_s, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == content, "the committed image restores to the source's bytes");
}

/// The destination runs out of space at every step of a run in turn — a
/// tmpfs sized in 16 KiB steps from just the earlier image up to room for
/// both, and one out of inodes at each file: whatever step fails, the
/// error names the cause, the earlier image still verifies, and once there
/// is room `--resume` (or a new run) commits an image that restores
/// identical. No step panics or loses the earlier image.
#[test]
fn a_destination_full_at_every_step() {
    if !require_loop_devices("a_destination_full_at_every_step") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = noise(1 << 20, 21);
    let mut second = first.clone();
    second[300_000..700_000].copy_from_slice(&noise(400_000, 22));
    let source = dir.path().join("source.img");
    let src = source.to_str().unwrap();
    let base = dir.path().join("base");
    std::fs::write(&source, &first).unwrap();
    let create = |set: &Path, extra: &[&str]| {
        let mut a = vec!["create", src, set.to_str().unwrap(), "--chunk-size", "64K", "--lanes", "1"];
        a.extend_from_slice(extra);
        tintype(&a)
    };
    assert!(create(&base, &[]).status.success());
    std::fs::write(&source, &second).unwrap();
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&base)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    let used: usize = files.iter().map(|(_, b)| b.len().div_ceil(4096) * 4096).sum();
    let mut failures = 0;
    let mut sizes_done = false;
    let mut where_failed = std::collections::BTreeSet::new();
    let mut limits: Vec<String> = (0..).map(|k| format!("size={}", used + k * 16384)).take(100).collect();
    limits.extend((files.len() + 1..files.len() + 12).map(|n| format!("size=16m,nr_inodes={n}")));
    for (step, limit) in limits.iter().enumerate() {
        if sizes_done && !limit.contains("nr_inodes") {
            continue;
        }
        let fs = Tmpfs::with_options(&dir.path().join(format!("d{step}")), limit);
        let set = fs.0.join("set");
        // (Too few inodes even for the earlier image: not a step of the run.)
        if std::fs::create_dir(&set).is_err() || files.iter().any(|(n, b)| std::fs::write(set.join(n), b).is_err()) {
            continue;
        }
        let out = create(&set, &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{limit}: {err}");
        let v = tintype(&["verify", set.to_str().unwrap(), "--json"]);
        if out.status.success() {
            assert_eq!(v.status.code(), Some(0), "{limit}");
            sizes_done = true;
            continue;
        }
        failures += 1;
        assert_eq!(out.status.code(), Some(1), "{limit}: {err}");
        // What was being written: a segment, the index, the manifest, …
        let what = err.lines().find(|l| l.contains("error:")).unwrap_or_default();
        for kind in [".seg", ".index", ".manifest.json", ".run.json", ".badmap", "tintype.lock"] {
            if what.contains(kind) {
                where_failed.insert(kind);
            }
        }
        assert!(err.contains("No space left") || err.contains("ENOSPC"), "{limit}: the cause is named: {err}");
        // The earlier image is untouched (it is the newest committed one).
        let listed = tintype(&["list", set.to_str().unwrap(), "--json"]);
        let l: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(l["images"].as_array().map(Vec::len), Some(1), "{limit}: {l}");
        assert_eq!(v.status.code(), Some(0), "{limit}: the earlier image verifies");
        sh("mount", &["-o", "remount,size=64m,nr_inodes=10000", fs.0.to_str().unwrap()]);
        let out = create(&set, &["--resume"]);
        assert!(out.status.success(), "{limit}: {}", String::from_utf8_lossy(&out.stderr));
        let target = dir.path().join("restored.img");
        let _ = std::fs::remove_file(&target);
        let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap()]);
        assert!(out.status.success(), "{limit}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&target).unwrap() == second, "{limit}: the finished image restores identical");
        let out = tintype(&["verify", set.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{limit}");
    }
    eprintln!("a_destination_full_at_every_step: {failures} runs met a full disk, writing {where_failed:?}");
    assert!(failures > 20, "the sweep met the full disk at many steps ({failures})");
    assert!(where_failed.contains(".seg"), "the sweep reached a full disk while writing a segment: {where_failed:?}");
    // At the commit: the committed index (written beside the working table,
    // which its rename then frees, so the manifest after it rarely meets a
    // full disk) or the manifest.
    assert!(
        where_failed.contains(".index") || where_failed.contains(".manifest.json"),
        "the sweep reached a full disk at the commit: {where_failed:?}"
    );
}

/// Random bytes from a seed (incompressible: every byte costs space).
fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The destination is a small, nearly full ext4 (a loop-mounted file): a
/// second image runs out of space. ENOSPC is reported, the first image
/// still verifies and restores, and once space is freed `--resume`
/// finishes an image that restores identical.
#[test]
fn a_nearly_full_ext4_destination() {
    if !require_loop_devices("a_nearly_full_ext4_destination") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 24usize << 20;
    let first = noise(size, 0x9e37_79b9_7f4a_7c15);
    let backing = dir.path().join("source.img");
    std::fs::write(&backing, &first).unwrap();
    let src = LoopDev::attach(&backing, 4096);
    let dest_file = dir.path().join("dest.ext4");
    std::fs::File::create(&dest_file).unwrap().set_len(96 << 20).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-m", "0", dest_file.to_str().unwrap()]);
    let dest_dev = LoopDev::attach(&dest_file, 512);
    let dest = Mount::new(&dest_dev, &dir.path().join("dest"));
    let set = dest.dir.join("set");
    let set_s = set.to_str().unwrap();
    let common = ["--level", "1", "--chunk-size", "256K", "--json"];

    let mut args = vec!["create", src.as_str(), set_s];
    args.extend(common);
    let out = tintype(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first_id = v["manifest"]["image_id"].as_str().unwrap().to_string();

    // The source changes; the destination fills up to ~8 MiB free.
    let mut second = first.clone();
    second[..size / 2].copy_from_slice(&noise(size / 2, 77));
    std::fs::write(&backing, &second).unwrap();
    let avail = |p: &Path| -> u64 {
        sh("df", &["--output=avail", "-B1", p.to_str().unwrap()]).lines().nth(1).unwrap().trim().parse().unwrap()
    };
    let filler = dest.dir.join("filler");
    let fill = avail(&dest.dir).saturating_sub(8 << 20);
    sh("fallocate", &["-l", &fill.to_string(), filler.to_str().unwrap()]);
    assert!(avail(&dest.dir) < 10 << 20, "the destination is nearly full");

    let mut args = vec!["create", src.as_str(), set_s];
    args.extend(common);
    let out = tintype(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("no space left"), "ENOSPC is named: {err}");
    assert!(err.contains(set_s), "the message names the file in the set: {err}");
    assert!(err.contains("--resume"), "the message says how to carry on: {err}");

    // The first image is untouched: it verifies and restores.
    let spec = format!("{set_s}@{first_id}");
    let out = tintype(&["verify", &spec]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", &spec, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == first, "the earlier image restores to its bytes");
    std::fs::remove_file(&target).unwrap();

    // Space is freed: --resume completes, reading only what it lacks.
    std::fs::remove_file(&filler).unwrap();
    let mut args = vec!["create", src.as_str(), set_s, "--resume"];
    args.extend(common);
    let out = tintype(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // About 8 MiB were free: a full disk is written to the last 4 KiB that
    // takes a whole frame, so most of that space holds kept frames (each a
    // 256 KiB chunk of noise), not only what earlier flushes put there.
    let resumed = v["manifest"]["stats"]["chunks_resumed"].as_u64().unwrap_or(0);
    assert!(
        resumed >= 20,
        "frames written before ENOSPC are kept ({resumed}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tintype(&["restore", set_s, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == second, "the resumed image restores to the source's new bytes");
    for id in [first_id.as_str(), v["manifest"]["image_id"].as_str().unwrap()] {
        let out = tintype(&["verify", &format!("{set_s}@{id}")]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Write a partition table described in sfdisk's script format to `file`.
fn sfdisk(file: &Path, table: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed on {table:?}");
}

/// A loop device over `sectors` 512-byte sectors of `file` from `start`.
fn part_of(file: &Path, start: u64, sectors: u64) -> LoopDev {
    let out = sh(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &(start * 512).to_string(),
            "--sizelimit",
            &(sectors * 512).to_string(),
            file.to_str().unwrap(),
        ],
    );
    LoopDev { path: out.trim().into() }
}

/// The block size, and the blocks a used-space image may leave out: free
/// ones and metadata the kernel never reads (dumpe2fs's own listing).
fn dumpe2fs_free_blocks(dev: &str) -> (u64, Vec<(u64, u64)>) {
    let text = sh("dumpe2fs", &[dev]);
    let (bs, free) = loopdev_tests::dumpe2fs::free_blocks(&text);
    (bs, loopdev_tests::dumpe2fs::union(&free, &loopdev_tests::dumpe2fs::never_read(&text)))
}

/// Every file under `a` has the same content, size, mode and mtime under `b`.
fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    let mut stack = vec![a.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(a).unwrap();
            if rel.starts_with("lost+found") {
                continue;
            }
            let (ma, mb) = (std::fs::symlink_metadata(&p).unwrap(), std::fs::symlink_metadata(b.join(rel)).unwrap());
            assert_eq!(
                (ma.mode(), ma.size(), ma.mtime(), ma.uid()),
                (mb.mode(), mb.size(), mb.mtime(), mb.uid()),
                "{rel:?}"
            );
            if ma.is_dir() {
                stack.push(p);
            } else if ma.is_file() {
                assert!(std::fs::read(&p).unwrap() == std::fs::read(b.join(rel)).unwrap(), "{rel:?} differs");
                n += 1;
            }
        }
    }
    assert!(n > 10, "compared {n} files");
}

/// ext4 in several geometries, files written and a big one deleted (its
/// data stays in free space): only chunks with used blocks are stored — no
/// chunk dumpe2fs calls wholly free is read, no used block is left out —
/// and the restored filesystem passes `e2fsck -fn` with every file equal.
#[test]
fn used_space_imaging_of_ext4_with_deleted_files() {
    if !require_loop_devices("used_space_imaging_of_ext4_with_deleted_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in
        [("default", vec![]), ("1k-no-flex", vec!["-b", "1024", "-O", "^flex_bg"]), ("64bit", vec!["-O", "64bit"])]
    {
        let backing = dir.path().join(format!("{name}.img"));
        std::fs::File::create(&backing).unwrap().set_len(160 << 20).unwrap();
        let dev = LoopDev::attach(&backing, 512);
        let mut args = vec!["-q", "-F"];
        args.extend(opts.iter().copied());
        args.push(dev.as_str());
        sh("mkfs.ext4", &args);
        let src_mnt = dir.path().join(format!("{name}-src"));
        {
            let m = Mount::new(&dev, &src_mnt);
            let _ = &m;
            std::fs::write(src_mnt.join("stale.bin"), tintype::sample::random_bytes(48 << 20, 3)).unwrap();
            sh("sync", &[]);
            std::fs::remove_file(src_mnt.join("stale.bin")).unwrap();
            std::fs::create_dir(src_mnt.join("docs")).unwrap();
            for i in 0..30 {
                std::fs::write(src_mnt.join(format!("docs/f{i}.txt")), mixed(40_000 + i * 1000, i as u64)).unwrap();
            }
            std::fs::write(src_mnt.join("random.bin"), tintype::sample::random_bytes(12 << 20, 4)).unwrap();
        }
        let set = dir.path().join(format!("{name}-set"));
        let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let layout = &v["manifest"]["layout"];
        assert_eq!(layout["partitions"][0]["filesystem"], "ext4", "{name}: {layout}");
        let unused = v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap_or(0);
        assert!(unused > 60, "{name}: most of the 160 chunks are free space ({unused} unused)");
        // Against dumpe2fs: a chunk is unused exactly when all its blocks are free.
        let (bs, free) = dumpe2fs_free_blocks(dev.as_str());
        let mut is_free = vec![false; (160u64 << 20).div_ceil(bs) as usize];
        for (a, n) in free {
            for b in a..a + n {
                is_free[b as usize] = true;
            }
        }
        let img = ImageSet::open(&set).unwrap().resolve(None).unwrap();
        let idx = img.read_index().unwrap();
        let per_chunk = (1u64 << 20) / bs;
        for (c, e) in idx.entries.iter().enumerate() {
            let all_free = (c as u64 * per_chunk..(c as u64 + 1) * per_chunk).all(|b| is_free[b as usize]);
            assert_eq!(e.as_ref().unwrap().state == ChunkState::Unused, all_free, "{name}: chunk {c}");
        }
        // Restore to a fresh file, fsck, mount, compare every file.
        let target = dir.path().join(format!("{name}-restored.img"));
        let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap(), "--verify-after"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        sh("e2fsck", &["-fn", target.to_str().unwrap()]);
        let rdev = LoopDev::attach(&target, 512);
        let (a, b) = (dir.path().join(format!("{name}-a")), dir.path().join(format!("{name}-b")));
        let ma = Mount::new(&dev, &a);
        let mb = Mount::new(&rdev, &b);
        assert_same_tree(&a, &b);
        drop((ma, mb));
    }
}

/// A GPT disk (sfdisk) with an ext4 partition, one of random bytes and an
/// empty ext4 one: `info` lists them, the image skips the free space, and the
/// restored disk has the same table and data (fsck clean, files equal); a
/// damaged superblock makes create image that partition whole and say so.
#[test]
fn a_gpt_disk_with_several_partitions() {
    if !require("a_gpt_disk_with_several_partitions", &[Need::LoopDevices, Need::Tool("sfdisk")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk.img");
    // 440 MiB, sparse: root (ext4, 80 MiB), junk (random, 20 MiB), data (XFS,
    // 320 MiB), then ~19 MiB nothing is partitioned in, then the GPT backup.
    std::fs::File::create(&backing).unwrap().set_len(440 << 20).unwrap();
    let table = "label: gpt\nstart=2048, size=163840, type=L, name=root\nsize=40960, type=L, name=junk\nsize=655360, type=L, name=data\n";
    sfdisk(&backing, table);
    let root = part_of(&backing, 2048, 163840);
    sh("mkfs.ext4", &["-q", "-F", "-L", "rootfs", root.as_str()]);
    let mnt = dir.path().join("root");
    {
        let _m = Mount::new(&root, &mnt);
        for i in 0..20 {
            std::fs::write(mnt.join(format!("file{i}")), mixed(100_000 + i * 3000, i as u64)).unwrap();
        }
    }
    drop(root);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
        f.write_all_at(&tintype::sample::random_bytes(40960 * 512, 8), 165888 * 512).unwrap();
    }
    let data = part_of(&backing, 206848, 655360);
    sh("mkfs.xfs", &["-q", "-f", data.as_str()]);
    {
        let _m = Mount::new(&data, &dir.path().join("data"));
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("data/x{i}")), mixed(200_000 + i * 7000, 50 + i as u64)).unwrap();
        }
    }
    drop(data);
    // Something in the unpartitioned gap (a boot loader might live there).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
        f.write_all_at(b"not in any partition", 862208 * 512 + 4096).unwrap();
    }
    let dev = LoopDev::attach(&backing, 512);
    let out = tintype(&["info", dev.as_str(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["table"], "gpt");
    let fs: Vec<&str> = v["partitions"].as_array().unwrap().iter().map(|p| p["filesystem"].as_str().unwrap()).collect();
    assert_eq!(fs, ["ext4", "unknown", "xfs"], "{v}");
    assert_eq!(v["partitions"][0]["name"], "root");
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap() > 100, "{}", v["manifest"]["stats"]);
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (std::fs::read(&backing).unwrap(), std::fs::read(&target).unwrap());
    // Table, GPT backup, the unknown partition: byte for byte.
    assert!(a[..2048 * 512] == b[..2048 * 512], "the primary GPT");
    assert!(a[a.len() - 34 * 512..] == b[b.len() - 34 * 512..], "the backup GPT");
    assert!(a[165888 * 512..206848 * 512] == b[165888 * 512..206848 * 512], "the unknown partition");
    assert!(a[862208 * 512..] == b[862208 * 512..], "the unpartitioned tail and the backup GPT");
    let out = std::process::Command::new("sfdisk").args(["-d", target.to_str().unwrap()]).output().unwrap();
    let want = std::process::Command::new("sfdisk").args(["-d", backing.to_str().unwrap()]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).replace(target.to_str().unwrap(), "X"),
        String::from_utf8_lossy(&want.stdout).replace(backing.to_str().unwrap(), "X")
    );
    let rroot = part_of(&target, 2048, 163840);
    sh("e2fsck", &["-fn", rroot.as_str()]);
    let sroot = part_of(&backing, 2048, 163840);
    {
        let (ma, mb) = (Mount::new(&sroot, &dir.path().join("sa")), Mount::new(&rroot, &dir.path().join("sb")));
        for i in 0..20 {
            let f = format!("file{i}");
            assert!(
                std::fs::read(dir.path().join("sa").join(&f)).unwrap()
                    == std::fs::read(dir.path().join("sb").join(&f)).unwrap()
            );
        }
        drop((ma, mb));
    }
    drop((rroot, sroot));
    {
        let (sdata, rdata) = (part_of(&backing, 206848, 655360), part_of(&target, 206848, 655360));
        sh("xfs_repair", &["-n", rdata.as_str()]);
        let ma = Mount::with_options(&sdata, &dir.path().join("xa"), "ro");
        let mb = Mount::with_options(&rdata, &dir.path().join("xb"), "ro,nouuid");
        for i in 0..10 {
            let f = format!("x{i}");
            assert!(
                std::fs::read(dir.path().join("xa").join(&f)).unwrap()
                    == std::fs::read(dir.path().join("xb").join(&f)).unwrap()
            );
        }
        drop((ma, mb));
    }

    // A damaged superblock (metadata_csum catches it): that partition is imaged whole.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
        f.write_all_at(&[0x5a], 2048 * 512 + 1024 + 0x10).unwrap();
    }
    let set2 = dir.path().join("set2");
    let out = tintype(&["create", dev.as_str(), set2.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("partition 1") && err.contains("imaged whole") && err.contains("checksum"), "{err}");
    let target2 = dir.path().join("restored2.img");
    let out = tintype(&["restore", set2.to_str().unwrap(), target2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (std::fs::read(&backing).unwrap(), std::fs::read(&target2).unwrap());
    assert!(a[..206848 * 512] == b[..206848 * 512], "partition 1 (and everything before partition 3) restored whole");
}

/// A filesystem mounted read-write is refused with the reasons and the ways
/// out; --freeze freezes it for the run and thaws it afterwards.
#[test]
fn a_mounted_read_write_source_is_refused_or_frozen() {
    if !require_loop_devices("a_mounted_read_write_source_is_refused_or_frozen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("fs.img");
    std::fs::File::create(&backing).unwrap().set_len(64 << 20).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    sh("mkfs.ext4", &["-q", "-F", dev.as_str()]);
    let mnt = dir.path().join("mnt");
    let m = Mount::new(&dev, &mnt);
    std::fs::write(mnt.join("a"), b"live data").unwrap();
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mounted read-write") && err.contains("snapshot") && err.contains("--freeze"), "{err}");
    // The file behind the loop device is the same live filesystem, and so
    // is a second loop device over that file.
    let second = LoopDev::attach(&backing, 512);
    for source in [backing.to_str().unwrap(), second.as_str()] {
        let out = tintype(&["create", source, set.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{source}: {err}");
        assert!(err.contains("mounted read-write") && err.contains(&*mnt.to_string_lossy()), "{source}: {err}");
    }
    drop(second);
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--freeze"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("froze"), "{err}");
    // Thawed: writing works again (a frozen filesystem would block here).
    assert!(err.contains(&format!("thawed {}", mnt.display())), "{err}");
    std::fs::write(mnt.join("b"), b"after").unwrap();
    sh("sync", &[]);
    // SIGTERM while frozen: the run stops (exit 130), says so, and thaws.
    // Text at zstd level 19 on one lane is slow enough to interrupt.
    let words = ["frozen ", "thaw ", "sector ", "signal ", "ext4 ", "journal\n", "tintype ", "lane "];
    let mut x = 7u64;
    let text: Vec<u8> = (0..6 << 20)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words[(x % 8) as usize].bytes()
        })
        .take(24 << 20)
        .collect();
    std::fs::write(mnt.join("text"), &text).unwrap();
    sh("sync", &[]);
    let set2 = dir.path().join("set-signal");
    let mut child = std::process::Command::new(tintype_bin())
        .args(["create", dev.as_str(), set2.to_str().unwrap(), "--freeze", "--level", "19", "--lanes", "1"])
        .args(["--used-only", "off"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_dir(&set2)
        .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".index")))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "create finished before it could be interrupted");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains(&format!("thawed {}", mnt.display())) && err.contains("--resume"), "{err}");
    // Writable at once; a write into a still-frozen filesystem would block,
    // so it runs in a thread and the test thaws by hand if it must.
    let probe = mnt.join("after-signal");
    let writer = std::thread::spawn(move || std::fs::write(probe, b"x").is_ok());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !writer.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !writer.is_finished() {
        sh("fsfreeze", &["-u", mnt.to_str().unwrap()]);
        panic!("the filesystem was still frozen after the interrupted run");
    }
    assert!(writer.join().unwrap());
    // Mounted read-only is fine without --freeze.
    sh("mount", &["-o", "remount,ro", mnt.to_str().unwrap()]);
    let out = tintype(&["create", dev.as_str(), dir.path().join("set-ro").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    drop(m);
    let out = tintype(&["verify", set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

/// XFS (v5, CRCs) with files written and a big one deleted: the free space
/// the parser reads from the free-space btrees equals the AGFs' counts as
/// `xfs_db` prints them; the image skips it; the restored filesystem passes
/// `xfs_repair -n` with every file equal. A damaged AGF makes create image
/// the filesystem whole and say so.
#[test]
fn used_space_imaging_of_xfs() {
    if !require("used_space_imaging_of_xfs", &[Need::LoopDevices, Need::Tool("mkfs.xfs")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("xfs.img");
    std::fs::File::create(&backing).unwrap().set_len(320 << 20).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    sh("mkfs.xfs", &["-q", "-f", dev.as_str()]);
    let mnt = dir.path().join("src");
    {
        let _m = Mount::new(&dev, &mnt);
        std::fs::write(mnt.join("stale.bin"), tintype::sample::random_bytes(64 << 20, 5)).unwrap();
        sh("sync", &[]);
        std::fs::remove_file(mnt.join("stale.bin")).unwrap();
        std::fs::create_dir(mnt.join("docs")).unwrap();
        for i in 0..40 {
            std::fs::write(mnt.join(format!("docs/f{i}.txt")), mixed(30_000 + i * 2000, i as u64)).unwrap();
        }
        std::fs::write(mnt.join("random.bin"), tintype::sample::random_bytes(20 << 20, 6)).unwrap();
    }
    let f = std::fs::File::open(&dev.path).unwrap();
    let (fs, map) = tintype::fs::xfs::free_space(&f, 0, 320 << 20).unwrap();
    let agcount: u64 = sh("xfs_db", &["-r", "-c", "sb 0", "-c", "print agcount", dev.as_str()])
        .trim()
        .trim_start_matches("agcount = ")
        .parse()
        .unwrap();
    let mut want = 0u64;
    for ag in 0..agcount {
        let out = sh("xfs_db", &["-r", "-c", &format!("agf {ag}"), "-c", "print freeblks", dev.as_str()]);
        want += out.trim().trim_start_matches("freeblks = ").parse::<u64>().unwrap();
    }
    assert_eq!(fs.free_blocks, want, "free blocks equal the AGFs' counts (xfs_db)");
    assert_eq!(map.free_bytes(), want * fs.block_bytes);
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["layout"]["partitions"][0]["filesystem"], "xfs");
    let unused = v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap_or(0);
    assert!(
        unused > 150,
        "most of the deleted 64 MiB and the empty space are skipped ({unused} chunks): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rdev = LoopDev::attach(&target, 512);
    sh("xfs_repair", &["-n", rdev.as_str()]);
    {
        // A copy of an XFS has the same UUID: the second mount needs nouuid.
        let ma = Mount::with_options(&dev, &dir.path().join("a"), "ro");
        let mb = Mount::with_options(&rdev, &dir.path().join("b"), "ro,nouuid");
        assert_same_tree(&dir.path().join("a"), &dir.path().join("b"));
        drop((ma, mb));
    }
    // A dirty log (shut down after a sync, no unmount record): allocations
    // in the log are not in the btrees yet, so the filesystem is imaged whole.
    {
        let _m = Mount::new(&dev, &dir.path().join("dirty"));
        std::fs::write(dir.path().join("dirty/late.bin"), tintype::sample::random_bytes(4 << 20, 9)).unwrap();
        sh("sync", &[]);
        sh("xfs_io", &["-x", "-c", "shutdown", dir.path().join("dirty").to_str().unwrap()]);
    }
    let out = tintype(&["create", dev.as_str(), dir.path().join("set-dirty").to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("the log is not clean"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap_or(0), 0);
    // Mounting replays the log; unmounted cleanly it is mapped again.
    drop(Mount::new(&dev, &dir.path().join("dirty")));
    let f = std::fs::File::open(&dev.path).unwrap();
    tintype::fs::xfs::free_space(&f, 0, 320 << 20).expect("clean again after log recovery");
    drop(f);
    // A damaged AGF (one byte of group 1's): imaged whole, and said so.
    let agblocks: u64 = sh("xfs_db", &["-r", "-c", "sb 0", "-c", "print agblocks", dev.as_str()])
        .trim()
        .trim_start_matches("agblocks = ")
        .parse()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let w = std::fs::OpenOptions::new().write(true).open(&dev.path).unwrap();
        w.write_all_at(&[0x77], agblocks * fs.block_bytes + 512 + 52).unwrap();
        w.sync_all().unwrap();
    }
    let set2 = dir.path().join("set2");
    let out = tintype(&["create", dev.as_str(), set2.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("xfs filesystem imaged whole") && err.contains("AGF"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap_or(0), 0);
}

/// An MBR disk with an extended partition and two logical ones (sfdisk):
/// `info` finds the logical partitions at their absolute offsets, the ext4
/// on a logical partition is mapped, and the restored disk has the same
/// table and a clean, equal filesystem.
#[test]
fn an_mbr_disk_with_logical_partitions() {
    if !require("an_mbr_disk_with_logical_partitions", &[Need::LoopDevices, Need::Tool("sfdisk")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("mbr.img");
    std::fs::File::create(&backing).unwrap().set_len(200 << 20).unwrap();
    let table = "label: dos\nstart=2048, size=102400, type=83\nstart=104448, size=+, type=5\nsize=61440, type=83\nsize=+, type=83\n";
    sfdisk(&backing, table);
    let p5 = part_of(&backing, 106496, 61440);
    sh("mkfs.ext4", &["-q", "-F", p5.as_str()]);
    {
        let _m = Mount::new(&p5, &dir.path().join("p5"));
        for i in 0..8 {
            std::fs::write(dir.path().join(format!("p5/f{i}")), mixed(90_000 + i * 5000, 70 + i as u64)).unwrap();
        }
    }
    drop(p5);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
        f.write_all_at(&tintype::sample::random_bytes(8 << 20, 12), 169984 * 512).unwrap();
    }
    let dev = LoopDev::attach(&backing, 512);
    let out = tintype(&["info", dev.as_str(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["table"], "mbr");
    let parts: Vec<(u64, u64, String)> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["start_bytes"].as_u64().unwrap(),
                p["filesystem"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![(1, 2048 * 512, "unknown".into()), (5, 106496 * 512, "ext4".into()), (6, 169984 * 512, "unknown".into())]
    );
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["manifest"]["stats"]["chunks_unused"].as_u64().unwrap() > 10, "the logical ext4's free space is skipped");
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set.to_str().unwrap(), target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let dump = |p: &Path| {
        let out = std::process::Command::new("sfdisk").args(["-d", p.to_str().unwrap()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).replace(p.to_str().unwrap(), "X")
    };
    assert_eq!(dump(&target), dump(&backing), "the same partition table, extended boot records included");
    let (s5, r5) = (part_of(&backing, 106496, 61440), part_of(&target, 106496, 61440));
    sh("e2fsck", &["-fn", r5.as_str()]);
    let (ma, mb) =
        (Mount::with_options(&s5, &dir.path().join("a"), "ro"), Mount::with_options(&r5, &dir.path().join("b"), "ro"));
    for i in 0..8 {
        let f = format!("f{i}");
        assert!(
            std::fs::read(dir.path().join("a").join(&f)).unwrap()
                == std::fs::read(dir.path().join("b").join(&f)).unwrap()
        );
    }
    drop((ma, mb));
    let (a, b) = (std::fs::read(&backing).unwrap(), std::fs::read(&target).unwrap());
    assert!(a[169984 * 512..] == b[169984 * 512..], "the unknown logical partition, whole");
}

/// Browsing an image as a user would: serve an image of a real ext4 loop
/// device, expose the export as a file with `nbdfuse`, mount that read-only
/// and compare every file with the source filesystem.
#[test]
fn browse_an_image_through_nbd() {
    if !require("browse_an_image_through_nbd", &[Need::LoopDevices, Need::Tool("nbdfuse"), Need::Fuse]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("fs.img");
    std::fs::File::create(&backing).unwrap().set_len(96 << 20).unwrap();
    let dev = LoopDev::attach(&backing, 512);
    sh("mkfs.ext4", &["-q", "-F", dev.as_str()]);
    let src = dir.path().join("src");
    {
        let _m = Mount::new(&dev, &src);
        std::fs::create_dir(src.join("etc")).unwrap();
        for i in 0..25 {
            std::fs::write(src.join(format!("etc/f{i}.conf")), mixed(20_000 + i * 999, 90 + i as u64)).unwrap();
        }
        std::fs::write(src.join("blob.bin"), tintype::sample::random_bytes(6 << 20, 77)).unwrap();
    }
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let sock = dir.path().join("nbd.sock");
    let _server = Process::spawn(
        &tintype_bin(),
        &["serve", set.to_str().unwrap(), "--listen", &format!("unix:{}", sock.display())],
    );
    wait_for(&sock, "serve");
    let export = FuseExport::new(&dir.path().join("fuse"), &sock);
    let file = export.file.clone();
    let exported =
        LoopDev { path: sh("losetup", &["--find", "--show", "--read-only", file.to_str().unwrap()]).trim().into() };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ma = Mount::with_options(&dev, &a, "ro");
    let mb = Mount::with_options(&exported, &b, "ro,noload");
    assert_same_tree(&a, &b);
    drop((ma, mb, exported));
}

/// A real failing device: nbdkit's ddrescue filter serves a file with EIO on
/// the ranges its mapfile marks bad; nbdfuse makes that a file and losetup a
/// block device. The default stops naming the bad bytes; `--on-read-error
/// skip` finds exactly the injected ranges, exits 6, writes a map beside the
/// image, and everything else restores identical (the bad ranges as zeros).
#[test]
fn a_source_with_unreadable_sectors() {
    if !require(
        "a_source_with_unreadable_sectors",
        &[Need::LoopDevices, Need::Tool("nbdkit"), Need::Tool("nbdfuse"), Need::Fuse],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = tintype::sample::random_bytes(16 << 20, 21);
    std::fs::write(dir.path().join("disk.img"), &data).unwrap();
    // Bad: 8 KiB at 5 MiB, one 512-byte sector at 9 MiB + 1536, and all of chunk 12.
    let bad: [(u64, u64); 3] = [(5 << 20, 8192), ((9 << 20) + 1536, 512), (12 << 20, 1 << 20)];
    let mut map = String::from("# Mapfile\n0x0 ?\n");
    let mut at = 0;
    for (o, l) in bad {
        map += &format!("0x{at:X} 0x{:X} +\n0x{o:X} 0x{l:X} -\n", o - at);
        at = o + l;
    }
    map += &format!("0x{at:X} 0x{:X} +\n", (16u64 << 20) - at);
    std::fs::write(dir.path().join("map.txt"), map).unwrap();
    let sock = dir.path().join("nbd.sock");
    let mapfile = format!("ddrescue-mapfile={}", dir.path().join("map.txt").display());
    let disk = dir.path().join("disk.img");
    let _nbdkit = Process::spawn(
        Path::new("nbdkit"),
        &["-U", sock.to_str().unwrap(), "-f", "--filter=ddrescue", "file", disk.to_str().unwrap(), &mapfile],
    );
    wait_for(&sock, "nbdkit");
    let export = FuseExport::new(&dir.path().join("fuse"), &sock);
    let dev = LoopDev {
        path: sh("losetup", &["--find", "--show", "--read-only", export.file.to_str().unwrap()]).trim().into(),
    };
    let set = dir.path().join("set");
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap(), "--lanes", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("bytes {}..{}", 5 << 20, (5 << 20) + 8192)) && err.contains("--on-read-error skip"),
        "{err}"
    );
    let set2 = dir.path().join("set2");
    let out = tintype(&[
        "create",
        dev.as_str(),
        set2.to_str().unwrap(),
        "--on-read-error",
        "skip",
        "--read-retries",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(u64, u64)> = v["manifest"]["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect();
    // Exact down to the device's direct-I/O read unit (512 or 4096 bytes):
    // each reported range is the injected one rounded out to that unit.
    assert_eq!(got.len(), bad.len(), "{got:?}");
    for (&(go, gl), &(o, l)) in got.iter().zip(&bad) {
        let (ro, re) = (o / 4096 * 4096, (o + l).div_ceil(4096) * 4096);
        assert!(go <= o && go + gl >= o + l && go >= ro && go + gl <= re, "{got:?} vs injected {bad:?}");
    }
    let id = v["manifest"]["image_id"].as_str().unwrap().to_string();
    let badmap = std::fs::read_to_string(set2.join(format!("{id}.badmap"))).unwrap();
    assert!(badmap.contains("0x00500000  0x00002000  -"), "{badmap}");
    let img = ImageSet::open(&set2).unwrap().resolve(None).unwrap();
    let idx = img.read_index().unwrap();
    assert_eq!(idx.entries[12].as_ref().unwrap().state, ChunkState::Unreadable, "a chunk with no readable byte");
    assert_eq!(v["manifest"]["stats"]["chunks_unreadable"], 1, "{}", v["manifest"]["stats"]);
    // `info` and `list` say it too, not only the run that found it.
    let out = tintype(&["info", set2.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("UNREADABLE") && said.contains(&format!("bytes {}..", 5 << 20)), "{said}");
    let out = tintype(&["list", set2.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreadable"), "{}", String::from_utf8_lossy(&out.stdout));
    let target = dir.path().join("restored.img");
    let out = tintype(&["restore", set2.to_str().unwrap(), target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("unreadable range(s)") && said.contains(&format!("bytes {}..", 5 << 20)), "{said}");
    let mut want = data.clone();
    for &(o, l) in &got {
        want[o as usize..(o + l) as usize].fill(0);
    }
    assert!(std::fs::read(&target).unwrap() == want, "everything readable restores identical, the rest as zeros");
    let out = tintype(&["verify", set2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    drop(dev);
}
