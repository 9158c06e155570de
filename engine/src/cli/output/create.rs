//! What `tintype create` prints.

use serde_json::json;

use tintype::CreateReport;

use super::{human, mb_per_s, print_json, print_ranges, Format};

pub fn print(r: &CreateReport, format: Format) {
    let m = &r.manifest;
    let s = &m.stats;
    let ratio = if s.bytes_segments > 0 { m.source.size_bytes as f64 / s.bytes_segments as f64 } else { f64::INFINITY };
    if format == Format::Json {
        return print_json(&json!({
            "image_id": m.image_id,
            "manifest_path": r.manifest_path,
            "source_bytes": m.source.size_bytes,
            "bytes_stored": s.bytes_segments,
            "ratio": if ratio.is_finite() { json!(ratio) } else { json!(null) },
            "wall_seconds": s.wall_seconds,
            "throughput_mb_per_s": mb_per_s(s.bytes_read, s.wall_seconds),
            "manifest": m,
        }));
    }
    print_what_was_kept(r);
    print_work(m, ratio);
}

/// The commit, the parent, and what was kept without reading: unreadable
/// ranges and resumed chunks.
fn print_what_was_kept(r: &CreateReport) {
    let m = &r.manifest;
    let s = &m.stats;
    println!("image {} committed: {}", m.image_id, r.manifest_path.display());
    if let Some(p) = &m.parent {
        println!(
            "  {}  changes since image {p}: {} chunk(s) unchanged (inherited, not stored)",
            m.kind.name(),
            s.chunks_inherited
        );
    }
    if !m.unreadable.is_empty() {
        let total: u64 = m.unreadable.iter().map(|r| r.length).sum();
        println!(
            "  UNREADABLE {} in {} range(s) of the source, stored as zeros (map: {}.badmap):",
            human(total),
            m.unreadable.len(),
            m.image_id
        );
        print_ranges(&m.unreadable, "    ");
    }
    if s.chunks_resumed > 0 {
        println!("  resumed  {} chunk(s) kept from the interrupted run(s), not read again", s.chunks_resumed);
    }
}

/// The source, what was read and stored, and how the time went.
fn print_work(m: &tintype::format::manifest::Manifest, ratio: f64) {
    let s = &m.stats;
    println!(
        "  source   {} ({}, {}, {}-byte logical / {}-byte physical sectors)",
        m.source.path,
        m.source.kind,
        human(m.source.size_bytes),
        m.source.logical_sector_bytes,
        m.source.physical_sector_bytes
    );
    println!(
        "  read     {} in {:.2} s = {:.0} MB/s",
        human(s.bytes_read),
        s.wall_seconds,
        mb_per_s(s.bytes_read, s.wall_seconds)
    );
    println!(
        "  chunks   {} of {}: {} stored ({} of them raw, incompressible), {} zero (not stored){}",
        m.chunk_count,
        human(u64::from(m.chunk_size_bytes)),
        s.chunks_stored,
        s.chunks_stored_raw,
        s.chunks_zero,
        if s.chunks_unused > 0 {
            format!(", {} unused by any filesystem (not read)", s.chunks_unused)
        } else {
            String::new()
        } + &if s.chunks_unreadable > 0 {
            format!(", {} UNREADABLE (no byte could be read)", s.chunks_unreadable)
        } else {
            String::new()
        }
    );
    if m.parent.is_some() {
        let changed = s.chunks_stored;
        println!(
            "  stored   {} in {} segment(s) for {changed} changed chunk(s) ({} of source)",
            human(s.bytes_segments),
            m.segments.len(),
            human(changed * u64::from(m.chunk_size_bytes))
        );
    } else {
        let ratio = if ratio.is_finite() { format!("{ratio:.2}x") } else { "n/a (nothing stored)".into() };
        println!("  stored   {} in {} segment(s), ratio {ratio}", human(s.bytes_segments), m.segments.len());
    }
    let st = &s.stage_seconds;
    let g = |k: &str| st.get(k).copied().unwrap_or(0.0);
    println!(
        "  cpu      {:.2} s over {} lane(s): compress {:.2} s, hash {:.2} s, zero check {:.2} s; waiting on I/O {:.2} s",
        s.cpu_seconds,
        m.settings.lanes,
        g("compress"),
        g("hash"),
        g("zero_check"),
        g("io_wait")
    );
    let lat = &s.read_latency_us;
    if let (Some(p50), Some(p99), Some(max)) = (lat.get("p50"), lat.get("p99"), lat.get("max")) {
        println!("  reads    latency p50 {p50} µs, p99 {p99} µs, max {max} µs");
    }
    println!(
        "  settings zstd level {}, queue depth {}, {} I/O{}",
        m.level,
        m.settings.queue_depth,
        m.settings.io_backend,
        if m.settings.source_direct_io { ", O_DIRECT source" } else { ", buffered source" }
    );
}
