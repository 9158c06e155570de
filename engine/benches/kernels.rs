//! Kernel benchmarks: the per-chunk work of a lane (zero check, xxh3-128,
//! zstd at several levels on several kinds of data, frame checks) and the
//! ring driver against the portable backend.
//!
//! `cargo bench -p tintype --bench kernels` (add `-- zstd` to filter).

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tintype::codec::is_zero;
use tintype::codec::{Decoder, Encoder};
use tintype::format::frame::{check_frame, frame_len, Codec, FrameHeader, FRAME_HEADER_BYTES};
use tintype::format::ImageId;
use tintype::io::{self, Backend, OnRingFailure, Request};
use tintype::sample::xorshift;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

const CHUNK: usize = 1 << 20;

/// The kinds of data a disk holds, one chunk each.
fn corpora() -> Vec<(&'static str, Vec<u8>)> {
    let mut next = xorshift(0x5eed);
    let random: Vec<u8> = (0..CHUNK).map(|_| next() as u8).collect();
    const WORDS: [&str; 12] =
        ["the ", "disk ", "sector ", "image ", "of ", "and ", "kernel ", "block\n", "to ", "chunk ", "ring ", "lane "];
    let mut text = Vec::with_capacity(CHUNK);
    while text.len() < CHUNK {
        text.extend_from_slice(WORDS[(next() % 12) as usize].as_bytes());
    }
    text.truncate(CHUNK);
    // Binary-like: records with small counters and repeated structure.
    let binary: Vec<u8> = (0..CHUNK)
        .map(|i| if i % 64 < 8 { (next() % 7) as u8 } else { ((i / 64) as u8).wrapping_mul(3) ^ (i % 13) as u8 })
        .collect();
    // This program's own machine code: what system files look like.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap_or_default();
    let mut code = exe.into_iter().cycle().skip(1 << 16).take(CHUNK).collect::<Vec<u8>>();
    code.resize(CHUNK, 0);
    vec![("random", random), ("text", text), ("binary", binary), ("code", code)]
}

fn lane_kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let zeros = vec![0u8; CHUNK];
    let data = corpora().remove(0).1;
    g.bench_function("zero_check/zeros", |b| b.iter(|| is_zero(black_box(&zeros))));
    g.bench_function("zero_check/data", |b| b.iter(|| is_zero(black_box(&data))));
    g.bench_function("xxh3_128", |b| b.iter(|| xxh3_128(black_box(&data))));
    g.bench_function("xxh3_64", |b| b.iter(|| xxh3_64(black_box(&data))));
    g.finish();

    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, data) in corpora() {
        for level in [-5, 1, 3, 9] {
            let mut enc = Encoder::new(level).unwrap();
            let mut out = vec![0u8; CHUNK];
            g.bench_with_input(BenchmarkId::new(format!("encode/{name}"), level), &data, |b, d| {
                b.iter(|| enc.encode(black_box(d), &mut out))
            });
        }
        let mut enc = Encoder::new(1).unwrap();
        let mut stored = vec![0u8; CHUNK];
        let (codec, n) = enc.encode(&data, &mut stored);
        if codec == Codec::Zstd {
            let mut dec = Decoder::new().unwrap();
            let mut raw = vec![0u8; CHUNK];
            g.bench_function(format!("decode/{name}/1"), |b| b.iter(|| dec.decode(black_box(&stored[..n]), &mut raw)));
        }
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let (_, data) = corpora().remove(1);
    let mut enc = Encoder::new(1).unwrap();
    let mut frame = vec![0u8; frame_len(CHUNK as u32) as usize];
    let (codec, n) = enc.encode(&data, &mut frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + CHUNK]);
    let h = FrameHeader {
        image_id: ImageId(1),
        chunk: 7,
        raw_len: CHUNK as u32,
        stored_len: n as u32,
        codec,
        raw_hash: xxh3_128(&data),
        stored_hash: xxh3_64(&frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + n]),
    };
    h.encode(&mut frame);
    let mut g = c.benchmark_group("frame");
    g.bench_function("header_encode", |b| {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        b.iter(|| black_box(&h).encode(&mut out))
    });
    g.bench_function("header_decode", |b| b.iter(|| FrameHeader::decode(black_box(&frame))));
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let mut dec = Decoder::new().unwrap();
    let mut raw = vec![0u8; CHUNK];
    g.bench_function("check_and_decode/text", |b| {
        b.iter(|| check_frame(black_box(&frame), &mut raw, &mut |s, o| dec.decode(s, o)).unwrap())
    });
    g.finish();
}

/// Sequential reads of a 64 MiB file in /dev/shm (or the temp dir) through
/// each backend at a few queue depths.
fn ring_driver(c: &mut Criterion) {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let path = dir.join(format!("tintype-bench-ring-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let mut next = xorshift(9);
        let block: Vec<u8> = (0..CHUNK).map(|_| next() as u8).collect();
        for _ in 0..64 {
            f.write_all(&block).unwrap();
        }
    }
    let size = 64u64 << 20;
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Bytes(size));
    g.sample_size(20);
    let mut backends = vec![Backend::Portable];
    if io::uring::probe().is_ok() {
        backends.insert(0, Backend::uring(OnRingFailure::Fail));
    }
    for backend in backends {
        for qd in [1u32, 8, 32] {
            let mut ring = io::open(&backend, &vec![CHUNK; qd as usize], 1, qd).unwrap();
            let (file, _) = tintype::io::device::open_read_only(&path, tintype::io::device::OpenMode::Direct).unwrap();
            ring.set_file(0, Some(file)).unwrap();
            g.bench_function(BenchmarkId::new(format!("read_1MiB/{}", backend.name()), qd), |b| {
                b.iter(|| {
                    let mut next = 0u64;
                    let mut free: Vec<usize> = (0..qd as usize).collect();
                    loop {
                        while next < size {
                            let Some(buf) = free.pop() else { break };
                            ring.enqueue_read(Request {
                                slot: 0,
                                buf,
                                buf_offset: 0,
                                len: CHUNK,
                                file_offset: next,
                                tag: buf as u64,
                            });
                            next += CHUNK as u64;
                        }
                        if ring.in_flight() == 0 {
                            break;
                        }
                        ring.flush(1).unwrap();
                        while let Some(done) = ring.pop_completion() {
                            done.result.unwrap();
                            free.push(done.user_data as usize);
                        }
                    }
                })
            });
        }
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, lane_kernels, frames, ring_driver);
criterion_main!(benches);
