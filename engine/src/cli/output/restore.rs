//! What `tintype restore` prints.

use tintype::RestoreReport;

use super::{human, mb_per_s, print_json_verdict, print_ranges, Format};

pub fn print(r: &RestoreReport, format: Format) {
    if format == Format::Json {
        return print_json_verdict(r, r.is_clean());
    }
    for b in &r.bad_chunks {
        println!(
            "BAD chunk {} (source offset {}) written as zeros: {} at offset {}: {}",
            b.chunk,
            b.source_offset,
            b.segment.as_deref().unwrap_or("?"),
            b.segment_offset.unwrap_or(0),
            b.reason
        );
    }
    let verdict = if r.bad_chunks.is_empty() { "restored" } else { "restored WITH DAMAGE" };
    println!("image {} {verdict} to {} ({})", r.image_id, r.target, r.target_kind);
    if r.bytes_zeroed > 0 {
        println!(
            "  wrote    {} in {} chunks; {} of zero or unused chunks as {} (not written byte by byte)",
            human(r.bytes_written),
            r.chunks_written,
            human(r.bytes_zeroed),
            r.zero_method
        );
    } else {
        println!("  wrote    {} in {} chunks; no zero chunks", human(r.bytes_written), r.chunks_written);
    }
    println!(
        "  speed    {} of source in {:.2} s = {:.0} MB/s ({} I/O{})",
        human(r.source_bytes),
        r.wall_seconds,
        mb_per_s(r.source_bytes, r.wall_seconds),
        r.io_backend,
        if r.target_direct_io { ", O_DIRECT target" } else { ", buffered target" }
    );
    if r.target_bytes > r.source_bytes {
        println!(
            "  target   {} bytes; the {} bytes past the image's end were left untouched",
            r.target_bytes,
            r.target_bytes - r.source_bytes
        );
    }
    if !r.bad_chunks.is_empty() {
        println!("  {} damaged chunk(s) were written as zeros (listed above)", r.bad_chunks.len());
    }
    if !r.source_unreadable.is_empty() {
        println!(
            "  note     the source had {} unreadable range(s) when imaged; they were restored as zeros:",
            r.source_unreadable.len()
        );
        print_ranges(&r.source_unreadable, "           ");
    }
    if let Some(rb) = &r.read_back {
        if rb.mismatched_chunks.is_empty() {
            println!("  read back: all {} chunks match the image", rb.chunks_checked);
        } else {
            let zeroed = rb.mismatched_chunks.iter().filter(|c| r.bad_chunks.iter().any(|b| b.chunk == **c)).count();
            println!(
                "  read back: {} of {} chunks DIFFER from the image{}: {:?}",
                rb.mismatched_chunks.len(),
                rb.chunks_checked,
                if zeroed > 0 {
                    format!(" ({zeroed} of them the damaged chunks written as zeros)")
                } else {
                    String::new()
                },
                &rb.mismatched_chunks[..rb.mismatched_chunks.len().min(20)]
            );
        }
    }
}
