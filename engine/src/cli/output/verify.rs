//! What `tintype verify` prints.

use tintype::VerifyReport;

use super::{human, mb_per_s, print_json_verdict, Format};

pub fn print(r: &VerifyReport, format: Format) {
    if format == Format::Json {
        return print_json_verdict(r, r.is_clean());
    }
    for b in &r.bad_chunks {
        let whose = if b.image == r.image_id { String::new() } else { format!(" of ancestor {}", b.image) };
        match (&b.segment, b.segment_offset) {
            (Some(seg), Some(off)) => println!(
                "BAD chunk {}{whose} (source offset {}): {} at offset {}: {}",
                b.chunk, b.source_offset, seg, off, b.reason
            ),
            _ => println!("BAD chunk {}{whose} (source offset {}): {}", b.chunk, b.source_offset, b.reason),
        }
    }
    for p in &r.problems {
        match p.offset {
            Some(o) => println!("DAMAGED {} at offset {o}: {}", p.file, p.what),
            None => println!("DAMAGED {}: {}", p.file, p.what),
        }
    }
    let verdict = if r.is_clean() { "OK" } else { "DAMAGED" };
    println!(
        "image {} {verdict}: {} chunks: {} stored and intact, {} inherited, {} zero, {} unused, {} unreadable at capture, {} bad; {} problem(s) with files",
        r.image_id,
        r.chunk_count,
        r.chunks_stored_ok,
        r.chunks_inherited,
        r.chunks_zero,
        r.chunks_unused,
        r.chunks_unreadable,
        r.bad_chunks.len(),
        r.problems.len()
    );
    for c in r.chain.iter().skip(1) {
        println!(
            "  depends on {} ({}): {} stored and intact, {} bad, {} problem(s)",
            c.image_id, c.kind, c.chunks_stored_ok, c.bad_chunks, c.problems
        );
    }
    println!(
        "  read {} of segments in {:.2} s = {:.0} MB/s ({} I/O)",
        human(r.bytes_segments_read),
        r.wall_seconds,
        mb_per_s(r.bytes_segments_read, r.wall_seconds),
        r.io_backend
    );
}
