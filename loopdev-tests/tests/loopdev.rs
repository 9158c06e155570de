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
    if !require_loop_devices("images_a_real_ext4_filesystem") {
        return;
    }
    if which("mkfs.ext4").is_none() {
        panic!("mkfs.ext4 is missing: .ci/run installs e2fsprogs");
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
    let out = tintype(&["create", dev.as_str(), set.to_str().unwrap()]);
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
    }
    let out = restore(&[set, fsdev.as_str(), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read(&fs_file).unwrap() == content);
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
    assert!(std::fs::read(&t_file).unwrap() == std::fs::read(&src_file).unwrap());
    sh("e2fsck", &["-fn", t.as_str()]);
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

    fn grow(&self, size: &str) {
        sh("mount", &["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
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
    assert!(err.contains("no space left"), "{err}");
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
