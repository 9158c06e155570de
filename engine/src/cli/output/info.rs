//! What `tintype info` prints: an image's metadata, or a device's layout.

use serde_json::json;

use tintype::set::image::Image;

use super::{human, mb_per_s, print_json, print_ranges, Format};

pub fn print(img: &Image, all: &[Image], format: Format) {
    let m = &img.manifest;
    if format == Format::Json {
        let v = json!({
            "manifest_path": img.manifest_path,
            "images_in_set": all.iter().map(|i| i.manifest.image_id.clone()).collect::<Vec<_>>(),
            "manifest": m,
        });
        print_json(&v);
        return;
    }
    let s = &m.stats;
    println!("image      {} ({}, format version {})", m.image_id, m.kind.name(), m.format_version);
    if let Some(p) = &m.parent {
        println!("parent     {p} ({} chunk(s) inherited from it)", s.chunks_inherited);
    }
    if !m.replaces.is_empty() {
        println!("replaces   {} (consolidated by merge; same point in time)", m.replaces.join(", "));
    }
    println!("created    {} by tintype {}", m.created, m.tool_version);
    println!("source     {} ({})", m.source.path, m.source.kind);
    println!(
        "size       {} ({} bytes), {}-byte logical / {}-byte physical sectors",
        human(m.source.size_bytes),
        m.source.size_bytes,
        m.source.logical_sector_bytes,
        m.source.physical_sector_bytes
    );
    for (k, v) in &m.source.identity {
        println!("identity   {k}: {v}");
    }
    println!(
        "chunks     {} of {}: {} stored ({} raw), {} zero",
        m.chunk_count,
        human(u64::from(m.chunk_size_bytes)),
        s.chunks_stored,
        s.chunks_stored_raw,
        s.chunks_zero
    );
    if !m.unreadable.is_empty() {
        let total: u64 = m.unreadable.iter().map(|r| r.length).sum();
        println!(
            "UNREADABLE {} in {} range(s) of the source could not be read and restore as zeros (map: {}.badmap){}",
            human(total),
            m.unreadable.len(),
            m.image_id,
            if s.chunks_unreadable > 0 { format!("; {} chunk(s) wholly", s.chunks_unreadable) } else { String::new() }
        );
        print_ranges(&m.unreadable, "           ");
    }
    println!(
        "stored     {} in {} segment(s) + index {}; codec {} level {}",
        human(s.bytes_segments),
        m.segments.len(),
        human(m.index.size_bytes),
        m.codec,
        m.level
    );
    println!(
        "captured   in {:.2} s ({:.0} MB/s), {} lane(s), queue depth {}, {} I/O",
        s.wall_seconds,
        mb_per_s(s.bytes_read, s.wall_seconds),
        m.settings.lanes,
        m.settings.queue_depth,
        m.settings.io_backend
    );
    if let Some(l) = &m.layout {
        println!(
            "layout     partition table {}, used-only {}: {} recorded unused (not stored)",
            l.table,
            l.used_only,
            human(l.bytes_unused)
        );
        for p in &l.partitions {
            println!(
                "  #{:<2} {:>10} at {:>12}  {:<8} used {:>10}  {} {}",
                p.number,
                human(p.size_bytes),
                p.start_bytes,
                p.filesystem,
                p.used_bytes.map_or("-".to_string(), human),
                p.kind,
                p.name
            );
        }
    }
    if all.len() > 1 {
        let others: Vec<_> = all.iter().map(|i| i.manifest.image_id.as_str()).collect();
        println!("set holds  {} images: {}", all.len(), others.join(", "));
    }
}

/// A source's partitions and filesystems.
pub fn print_layout(what: &str, size: u64, layout: &tintype::fs::Layout, format: Format) {
    let (table, parts, notes) = (&layout.table, &layout.partitions, &layout.notes);
    if format == Format::Json {
        let v = json!({"source": what, "size_bytes": size, "table": table, "partitions": parts, "notes": notes});
        print_json(&v);
        return;
    }
    println!("{what}: {} ({size} bytes), partition table: {table}", human(size));
    println!("{:>3}  {:>12}  {:>10}  {:<10}  {:>10}  {:<24}  name", "#", "start", "size", "fs", "used", "type");
    for p in parts {
        println!(
            "{:>3}  {:>12}  {:>10}  {:<10}  {:>10}  {:<24}  {}",
            p.number,
            p.start_bytes,
            human(p.size_bytes),
            p.filesystem,
            p.used_bytes.map_or("-".to_string(), human),
            p.kind,
            p.name
        );
        if let Some(n) = &p.note {
            println!("     {n}");
        }
    }
    for n in notes {
        println!("note: {n}");
    }
}
