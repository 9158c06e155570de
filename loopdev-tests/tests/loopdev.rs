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
