//! Entry points of the fuzz targets (`engine/fuzz`), one per parser of
//! untrusted bytes. They live in the library so the regression test
//! (`engine/tests/hostile.rs`) replays every saved input through exactly
//! the code the fuzzer ran. Each takes arbitrary bytes, must not panic,
//! allocate without bound or loop forever, and checks what it can of the
//! result. Where a checksum would stop the fuzzer at the door, the first
//! byte decides whether the harness re-seals it so parsing goes deeper.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use crate::fs::MetaRead;

/// A frame as the lanes and restore read it: header, payload hash, zstd
/// payload, raw hash. With flag bit 0 the payload hash and then the
/// header's own hash are re-sealed, so mutated headers and payloads get to
/// the decompressor. True when the frame checked.
pub fn frame(data: &[u8]) -> bool {
    use crate::format::frame::{check_frame, FrameHeader, FRAME_HEADER_BYTES};
    let Some((&flags, rest)) = data.split_first() else { return false };
    let mut bytes = rest.to_vec();
    if flags & 1 == 1 && bytes.len() >= FRAME_HEADER_BYTES {
        let stored = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes")) as usize;
        if let Some(end) = FRAME_HEADER_BYTES.checked_add(stored).filter(|&e| e <= bytes.len()) {
            let h = xxhash_rust::xxh3::xxh3_64(&bytes[FRAME_HEADER_BYTES..end]);
            bytes[48..56].copy_from_slice(&h.to_le_bytes());
        }
        let h = xxhash_rust::xxh3::xxh3_64(&bytes[..56]);
        bytes[56..64].copy_from_slice(&h.to_le_bytes());
    }
    let _ = FrameHeader::decode(&bytes);
    let mut out = vec![0u8; 256 << 10];
    let mut dec = crate::codec::Decoder::new().expect("zstd decoder");
    match check_frame(&bytes, &mut out, &mut |s, o| dec.decode(s, o)) {
        Ok(h) => {
            assert!(h.raw_len as usize <= out.len());
            true
        }
        Err(_) => false,
    }
}

/// Index header, version-1 entries and version-2 run records, and segment
/// headers.
pub fn index(data: &[u8]) {
    use crate::format::index::{IndexEntry, IndexHeader, Run, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES, RUN_RECORD_BYTES};
    let header = IndexHeader::decode(data);
    let _ = crate::format::segment::SegmentHeader::decode(data);
    if let Ok(h) = &header {
        let _ = h.file_bytes();
    }
    if data.len() > INDEX_HEADER_BYTES {
        for e in data[INDEX_HEADER_BYTES..].chunks_exact(INDEX_ENTRY_BYTES) {
            let _ = IndexEntry::decode(e);
        }
        for r in data[INDEX_HEADER_BYTES..].chunks_exact(RUN_RECORD_BYTES) {
            if let Ok(run) = Run::decode(r, crate::format::ImageId(1), None) {
                let _ = run.first.checked_add(run.count);
            }
        }
    }
}

/// A manifest: JSON, then its own checks.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = crate::format::manifest::Manifest::from_json(data) {
        let _ = m.id();
        let _ = m.parent_id();
        let _ = m.point_in_time();
        let _ = m.to_json();
    }
}

/// A disk of `size` bytes whose first bytes are `data` and the rest zeros.
struct Disk<'a> {
    data: &'a [u8],
    size: u64,
}

impl MetaRead for Disk<'_> {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if offset.checked_add(len as u64).is_none_or(|end| end > self.size) {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end of the disk"));
        }
        let mut v = vec![0u8; len];
        if let Some(have) = self.data.get(offset as usize..) {
            let n = have.len().min(len);
            v[..n].copy_from_slice(&have[..n]);
        }
        Ok(v)
    }
}

const DISK_BYTES: u64 = 64 << 20;

fn check_map(map: &crate::fs::FreeMap, size: u64) {
    let mut last = 0;
    for &(s, l) in map.ranges() {
        assert!(l > 0 && s >= last && s + l <= size, "free range {s}+{l} out of order or past the end");
        last = s + l;
    }
}

/// ext4 metadata: superblock (its checksum re-sealed when the flag says),
/// group descriptors, bitmaps. The input is the disk from byte 0. True
/// when it parsed (so tests can tell that a seed reaches the bitmaps).
pub fn ext4(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else { return false };
    let mut bytes = rest.to_vec();
    if flags & 1 == 1 && bytes.len() >= 2048 {
        let c = !crc32c::crc32c_append(0, &bytes[1024..1024 + 0x3FC]);
        bytes[1024 + 0x3FC..2048].copy_from_slice(&c.to_le_bytes());
    }
    let disk = Disk { data: &bytes, size: DISK_BYTES };
    match crate::fs::ext4::free_space(&disk, 0, DISK_BYTES) {
        Ok((_, map)) => {
            check_map(&map, DISK_BYTES);
            true
        }
        Err(_) => false,
    }
}

/// XFS metadata: superblock and AG 0's AGF (CRCs re-sealed when flag bit
/// 0 says), the free-space B+tree. The input is the disk from byte 0. A
/// real log is 64 MiB or more, somewhere in the middle: with flag bit 1 the
/// superblock is pointed at a log made of the input's bytes past 64 KiB
/// (the seeds put a copy of a clean log's first blocks there) and made of
/// AG 0 alone, so the fuzzer gets past the clean-log check to the btrees
/// cheaply, and a parse can succeed.
pub fn xfs(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else { return false };
    let mut bytes = rest.to_vec();
    const HEAD: usize = 64 << 10;
    if flags & 2 == 2 && bytes.len() > HEAD + 4096 {
        let bs = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        if (512..=65536).contains(&bs) && bs.is_power_of_two() && bytes.len() >= HEAD + bs {
            bytes[48..56].copy_from_slice(&((HEAD / bs) as u64).to_be_bytes());
            let log_blocks = ((bytes.len() - HEAD) / bs) as u32;
            bytes[96..100].copy_from_slice(&log_blocks.to_be_bytes());
            let agblocks = u32::from_be_bytes(bytes[84..88].try_into().expect("4 bytes"));
            bytes[8..16].copy_from_slice(&u64::from(agblocks).to_be_bytes());
            bytes[88..92].copy_from_slice(&1u32.to_be_bytes());
        }
    }
    if flags & 1 == 1 && bytes.len() >= 1024 {
        for (start, at) in [(0usize, 224usize), (512, 216)] {
            bytes[start + at..start + at + 4].fill(0);
            let c = crc32c::crc32c(&bytes[start..start + 512]);
            bytes[start + at..start + at + 4].copy_from_slice(&c.to_le_bytes());
        }
    }
    let size = 4 * DISK_BYTES;
    let disk = Disk { data: &bytes, size };
    match crate::fs::xfs::free_space(&disk, 0, size) {
        Ok((_, map)) => {
            check_map(&map, size);
            true
        }
        Err(_) => false,
    }
}

/// Partition tables (GPT, MBR with logical partitions) and the whole
/// layout analysis over them. The input is the disk from byte 0; the disk
/// is the input's length rounded up to whole sectors, at least 1 MiB, so
/// that a backup GPT can sit at its end.
pub fn table(data: &[u8]) {
    thread_local! {
        static FILE: std::fs::File = std::fs::File::from(
            rustix::fs::memfd_create("tintype-fuzz-disk", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd_create"),
        );
    }
    FILE.with(|f| {
        let size = (data.len() as u64).div_ceil(512).max(2048) * 512;
        f.set_len(0).and_then(|()| f.set_len(size)).expect("size the temporary disk");
        f.write_all_at(data, 0).expect("write the temporary disk");
        if let Ok(Some(t)) = crate::fs::table::read(f, size, 512) {
            for p in &t.partitions {
                assert!(p.start_bytes + p.size_bytes <= size, "partition past the end of the disk");
            }
        }
        let layout = crate::fs::analyze(f, f, size, 512);
        check_map(&layout.free, size);
    });
}

/// One NBD client session against a small image (zero, compressible and
/// random chunks): the input is everything the client sends; what the
/// server answers goes nowhere.
pub fn nbd(data: &[u8]) {
    static EXPORT: OnceLock<crate::serve::Export> = OnceLock::new();
    let export = EXPORT.get_or_init(|| {
        // One small set per process, made on first use (the fuzz scripts
        // remove these directories afterwards).
        let dir = std::env::temp_dir().join(format!("tintype-fuzz-nbd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        let src = dir.join("src.img");
        let mut v = crate::sample::random_bytes(96 << 10, 7);
        v.extend(std::iter::repeat_n(0u8, 64 << 10));
        v.extend(b"tintype ".iter().cycle().take(100 << 10));
        std::fs::write(&src, &v).expect("write the source");
        let set = dir.join("set");
        let mut o = crate::CreateOptions::new(&src, &set);
        o.chunk_size_bytes = 64 << 10;
        o.chunk_size_given = true;
        o.lanes = Some(1);
        o.io = crate::io::IoChoice::Portable;
        crate::create(&o, &crate::Quiet).expect("create the fuzz image");
        let opts = crate::serve::ServeOptions {
            set,
            image: None,
            listen: crate::serve::Listen::Unix(dir.join("unused.sock")),
            public: false,
            cache_bytes: 1 << 20,
            max_connections: None,
            overlay: None,
        };
        crate::serve::Export::open(&opts).expect("open the export")
    });
    struct Client<'a> {
        input: &'a [u8],
        sent: u64,
    }
    impl Read for Client<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Client<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.sent += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Client { input: data, sent: 0 };
    let _ = crate::serve::nbd::session(&mut c, export);
    // Replies are bounded by what was asked: at most the whole export (plus
    // headers) per option or request, each at least 16 bytes of input.
    let bound = 256 + (data.len() as u64 / 16 + 1) * (export.size() + 4096);
    assert!(c.sent <= bound, "replied {} bytes to {} bytes of requests", c.sent, data.len());
}
