//! What the commands print: a progress bar on a terminal, a human summary,
//! or JSON on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tintype::set::Image;
use tintype::{CreateReport, Observer, RestoreReport, VerifyReport};

/// Notes go to stderr; progress is a bar when stderr is a terminal.
pub struct Console {
    bar: Option<ProgressBar>,
}

impl Console {
    pub fn new(what: &str, json: bool) -> Console {
        let bar = (std::io::stderr().is_terminal() && !json).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
                ))
                .expect("progress template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Console { bar }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Console {
    fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("tintype: note: {msg}")),
            None => eprintln!("tintype: note: {msg}"),
        }
    }

    fn progress(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }
}

pub use tintype::sample::human_bytes as human;

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

pub fn print_create(r: &CreateReport, json: bool) {
    let m = &r.manifest;
    let s = &m.stats;
    let ratio = if s.bytes_segments > 0 { m.source.size_bytes as f64 / s.bytes_segments as f64 } else { f64::INFINITY };
    if json {
        let v = json!({
            "image_id": m.image_id,
            "manifest_path": r.manifest_path,
            "source_bytes": m.source.size_bytes,
            "bytes_stored": s.bytes_segments,
            "ratio": if ratio.is_finite() { json!(ratio) } else { json!(null) },
            "wall_seconds": s.wall_seconds,
            "throughput_mb_per_s": mb_per_s(s.bytes_read, s.wall_seconds),
            "manifest": m,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
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

/// A report as JSON on stdout, with a top-level `clean` verdict added.
fn print_json_verdict(report: &impl serde::Serialize, clean: bool) {
    let mut v = serde_json::to_value(report).expect("json");
    v["clean"] = json!(clean);
    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
}

pub fn print_verify(r: &VerifyReport, json: bool) {
    if json {
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

pub fn print_info(img: &Image, all: &[Image], json: bool) {
    let m = &img.manifest;
    if json {
        let v = json!({
            "manifest_path": img.manifest_path,
            "images_in_set": all.iter().map(|i| i.manifest.image_id.clone()).collect::<Vec<_>>(),
            "manifest": m,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
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
pub fn print_layout(
    what: &str,
    size: u64,
    table: &str,
    parts: &[tintype::fs::Partition],
    notes: &[String],
    json: bool,
) {
    if json {
        let v = json!({"source": what, "size_bytes": size, "table": table, "partitions": parts, "notes": notes});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
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

pub fn print_restore(r: &RestoreReport, json: bool) {
    if json {
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

pub fn print_tune(r: &tintype::tune::TuneReport, wrote: Option<&std::path::Path>, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("json"));
        return;
    }
    println!("device {} ({}), {} I/O, {} core(s)", r.device, human(r.size_bytes), r.io_backend, r.cores);
    println!("\nsequential O_DIRECT reads (MB/s), read size x reads in flight:");
    let sizes: Vec<u64> = r.reads.iter().map(|s| s.read_bytes).fold(Vec::new(), |mut v, b| {
        if !v.contains(&b) {
            v.push(b);
        }
        v
    });
    let qds: Vec<u32> = r.reads.iter().map(|s| s.queue_depth).fold(Vec::new(), |mut v, q| {
        if !v.contains(&q) {
            v.push(q);
        }
        v
    });
    print!("{:>10}", "");
    for q in &qds {
        print!("{:>9}", format!("qd {q}"));
    }
    println!();
    for b in &sizes {
        print!("{:>10}", human(*b));
        for q in &qds {
            let rate = r.reads.iter().find(|s| s.read_bytes == *b && s.queue_depth == *q).map_or(0.0, |s| s.mb_per_s);
            print!("{rate:>9.0}");
        }
        println!();
    }
    println!(
        "peak {:.0} MB/s; chosen: {} reads, {} in flight (the least memory within 95% of the peak)",
        r.peak_mb_per_s,
        human(r.chosen_read_bytes),
        r.chosen_total_queue_depth
    );
    println!("\nzstd on {} of the device's own data (sampled across it):", human(r.sample_bytes));
    println!("{:>7} {:>14} {:>16} {:>7}", "level", "MB/s per core", "MB/s all cores", "ratio");
    for l in &r.levels {
        println!("{:>7} {:>14.0} {:>16.0} {:>7.2}", l.level, l.mb_per_s_per_core, l.projected_mb_per_s, l.ratio);
    }
    if r.keeps_up {
        println!(
            "chosen: level {}, the highest that keeps up with {:.0} MB/s on {} core(s)",
            r.chosen_level, r.peak_mb_per_s, r.cores
        );
    } else {
        println!(
            "chosen: level {}, the fastest measured; no level keeps up with {:.0} MB/s on {} core(s), so compression will be the bottleneck",
            r.chosen_level, r.peak_mb_per_s, r.cores
        );
    }
    println!("\nprofile:\n{}", r.profile.to_toml());
    if let Some(p) = wrote {
        // `--profile` takes a name for built-ins; a path must look like one.
        let shown = p.display().to_string();
        let arg = if shown.contains('/') || shown.ends_with(".toml") { shown.clone() } else { format!("./{shown}") };
        println!("written to {shown} (use: tintype create --profile {arg} SOURCE SET)");
    }
}

/// The set as a tree: each image under the image it depends on.
pub fn print_list(set: &tintype::set::ImageSet, json: bool) -> anyhow::Result<()> {
    use tintype::set::{find_parent, replaced_by, RunRecord};
    let (images, bad) = set.images_lenient()?;
    let (_, partial) = set.scan()?;
    let parent_of = |i: &Image| find_parent(i, &images).map(|p| p.id());
    let state = |i: &Image| -> String {
        if let Err(why) = i.check_files(false) {
            return format!("DAMAGED: {why}");
        }
        if let Some(r) = replaced_by(i, &images) {
            return format!("replaced by {} (removal pending)", r.id());
        }
        match (i.manifest.parent_id(), parent_of(i)) {
            (Some(p), None) => format!("BROKEN: parent {p} is missing"),
            _ => "ok".into(),
        }
    };
    let stored = |i: &Image| i.manifest.stats.bytes_segments + i.manifest.index.size_bytes;
    // Depth-first from the roots (full images, or images whose parent is gone), oldest first.
    let mut order: Vec<(usize, &Image)> = Vec::new();
    fn walk<'a>(
        i: &'a Image,
        depth: usize,
        images: &'a [Image],
        parent_of: &dyn Fn(&Image) -> Option<tintype::format::ImageId>,
        out: &mut Vec<(usize, &'a Image)>,
    ) {
        if out.iter().any(|(_, o)| o.id() == i.id()) {
            return;
        }
        out.push((depth, i));
        for c in images.iter().filter(|c| parent_of(c) == Some(i.id()) && c.id() != i.id()) {
            walk(c, depth + 1, images, parent_of, out);
        }
    }
    for r in images.iter().filter(|i| parent_of(i).is_none()) {
        walk(r, 0, &images, &parent_of, &mut order);
    }
    // What no root reaches depends on itself through its parents: listed,
    // as broken, never hidden.
    let looped: Vec<&Image> = images.iter().filter(|i| !order.iter().any(|(_, o)| o.id() == i.id())).collect();
    let state = |i: &Image| -> String {
        match looped.iter().any(|l| l.id() == i.id()) {
            true => "BROKEN: its chain of parents loops back to itself".into(),
            false => state(i),
        }
    };
    for i in &looped {
        walk(i, 0, &images, &parent_of, &mut order);
    }
    let unfinished: Vec<serde_json::Value> = partial
        .iter()
        .map(|id| {
            let rec = RunRecord::load(&set.dir, *id);
            let bytes: u64 = std::fs::read_dir(&set.dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| tintype::set::image_file_id(&e.file_name().to_string_lossy()) == Some(*id))
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            json!({
                "image_id": id.to_string(),
                "operation": rec.as_ref().map(|r| r.operation.clone()),
                "kind": rec.as_ref().map(|r| r.kind),
                "parent": rec.as_ref().and_then(|r| r.parent.clone()),
                "source": rec.as_ref().map(|r| r.source.path.clone()),
                "bytes_on_disk": bytes,
                "resumable": rec.as_ref().is_some_and(|r| r.operation == "create"),
            })
        })
        .collect();
    let in_use = tintype::lock::writer(&set.dir);
    if json {
        let rows: Vec<_> = order
            .iter()
            .map(|(depth, i)| {
                let m = &i.manifest;
                json!({
                    "image_id": m.image_id,
                    "kind": m.kind,
                    "parent": m.parent,
                    "depends_on": parent_of(i).map(|p| p.to_string()),
                    "depth": depth,
                    "created": m.created,
                    "created_unix_seconds": m.created_unix_seconds,
                    "source": m.source.path,
                    "source_bytes": m.source.size_bytes,
                    "stored_bytes": stored(i),
                    "replaces": m.replaces,
                    "unreadable_bytes": m.unreadable.iter().map(|r| r.length).sum::<u64>(),
                    "state": state(i),
                })
            })
            .collect();
        let v = json!({
            "set": set.dir,
            "images": rows,
            "damaged": bad.iter().map(|(id, e)| json!({"image_id": id.to_string(), "error": e.to_string()})).collect::<Vec<_>>(),
            "unfinished": unfinished,
            "in_use_by": in_use,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    // The tree's indent widens the first column: size it to the deepest row.
    let prefixes = tree_prefixes(&order.iter().map(|(d, _)| *d).collect::<Vec<_>>());
    let names: Vec<String> =
        order.iter().zip(&prefixes).map(|((_, i), p)| format!("{p}{}", i.manifest.image_id)).collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(24);
    println!("{:<w$}  {:<12}  {:<20}  {:>10}  {:>10}  state", "image", "kind", "created", "size", "stored");
    for ((_, i), name) in order.iter().zip(&names) {
        let m = &i.manifest;
        println!(
            "{:<w$}  {:<12}  {:<20}  {:>10}  {:>10}  {}",
            name,
            m.kind.name(),
            m.created,
            human(m.source.size_bytes),
            human(stored(i)),
            state(i)
                + &match m.unreadable.iter().map(|r| r.length).sum::<u64>() {
                    0 => String::new(),
                    n => format!(" ({} of the source unreadable, restores as zeros)", human(n)),
                }
        );
    }
    for (id, e) in &bad {
        println!("{:<w$}  DAMAGED: {e}", id.to_string());
    }
    if let Some(who) = &in_use {
        if unfinished.is_empty() {
            println!("(the set is being written now by {who})");
        } else {
            println!("(the set is being written now by {who}: an unfinished run below may be that run, in progress)");
        }
    }
    for u in &unfinished {
        let id = u["image_id"].as_str().unwrap_or_default();
        let bytes = human(u["bytes_on_disk"].as_u64().unwrap_or(0));
        let what = match (u["operation"].as_str(), u["source"].as_str()) {
            (Some("create"), Some(src)) => format!(
                "unfinished {} create of {src} ({bytes} written): `tintype create {} {} --resume` carries it on",
                u["kind"].as_str().unwrap_or("full"),
                shell_quote(src),
                shell_quote(&set.dir.to_string_lossy())
            ),
            (Some("merge"), _) => format!("unfinished merge ({bytes}): the next merge or prune removes it"),
            _ if tintype::format::ImageId::parse(id)
                .is_some_and(|i| set.dir.join(tintype::set::removed_file_name(i)).exists()) =>
            {
                format!("an image being removed ({bytes} left): the next merge or prune finishes the removal")
            }
            _ => format!("data files without a manifest ({bytes}; an interrupted run; not an image)"),
        };
        println!("{id:<w$}  {what}");
    }
    if images.is_empty() && partial.is_empty() && bad.is_empty() {
        println!("(the set holds no images)");
    }
    Ok(())
}

pub fn print_merge(r: &tintype::merge::MergeReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("json"));
        return;
    }
    let c = &r.merged;
    println!(
        "image {} ({}) now stands in for {}: folded {}, copied {} chunk(s), {} in {:.2} s",
        c.image_id,
        c.kind,
        c.replaces,
        c.folded.join(" + "),
        c.chunks_copied,
        human(c.bytes_copied),
        c.wall_seconds
    );
    if !r.removed.is_empty() {
        println!("  removed  {}", r.removed.join(", "));
    }
    if !r.kept.is_empty() {
        println!("  kept     {} (other images depend on them)", r.kept.join(", "));
    }
}

pub fn print_prune(r: &tintype::merge::PruneReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("json"));
        return;
    }
    let will = if r.dry_run { "would " } else { "" };
    for k in &r.kept {
        let rewrite = if k.folds.is_empty() {
            String::new()
        } else {
            match &k.rewritten_as {
                Some(n) => format!("; rewritten as {n}, folding {}", k.folds.join(" + ")),
                None => format!("; {will}be rewritten, folding {}", k.folds.join(" + ")),
            }
        };
        println!("keep    {} {} {} ({}){rewrite}", k.image_id, k.kind, k.created, k.reasons.join(", "));
    }
    for id in &r.removed {
        println!("{}  {id}", if r.dry_run { "would remove" } else { "removed" });
    }
    for id in &r.unfinished_removed {
        println!("{}  unfinished run {id}", if r.dry_run { "would discard" } else { "discarded" });
    }
    if r.dry_run {
        println!("(dry run: nothing was changed)");
    }
}

/// Source byte ranges (unreadable ones), one a line, the first 20; how
/// many more there are, and where they are all listed.
fn print_ranges(ranges: &[tintype::format::manifest::ByteRange], indent: &str) {
    for r in ranges.iter().take(20) {
        println!("{indent}bytes {}..{} ({} bytes)", r.offset, r.offset + r.length, r.length);
    }
    if ranges.len() > 20 {
        println!("{indent}… {} more in the image's .badmap and `info --json`", ranges.len() - 20);
    }
}

/// The tree drawing before each row of a depth-first listing given each
/// row's depth: `├─ ` for a child with siblings after it, `└─ ` for the
/// last one, and `│  ` under an ancestor whose siblings continue below.
fn tree_prefixes(depths: &[usize]) -> Vec<String> {
    // Whether the row at `i` (depth d) has a sibling later: a later row of
    // depth d comes before any row shallower than d.
    let has_next_sibling = |i: usize| {
        let d = depths[i];
        depths[i + 1..].iter().find(|&&e| e <= d).is_some_and(|&e| e == d)
    };
    let mut out = Vec::with_capacity(depths.len());
    // For each level above the current row: does that ancestor continue?
    let mut open: Vec<bool> = Vec::new();
    for (i, &d) in depths.iter().enumerate() {
        open.truncate(d);
        let mut p = String::new();
        let next = has_next_sibling(i);
        if d > 0 {
            for &cont in open.iter().skip(1) {
                p.push_str(if cont { "│  " } else { "   " });
            }
            p.push_str(if next { "├─ " } else { "└─ " });
        }
        open.resize(d, false);
        open.push(next);
        out.push(p);
    }
    out
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./-:@+=,%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tree_drawing() {
        // F ─ I1 ─ I2, F ─ D ─ I3, and a second root R ─ X.
        let got = super::tree_prefixes(&[0, 1, 2, 1, 2, 0, 1]);
        assert_eq!(got, ["", "├─ ", "│  └─ ", "└─ ", "   └─ ", "", "└─ "]);
        // Three levels with siblings at each.
        let got = super::tree_prefixes(&[0, 1, 2, 3, 2, 1]);
        assert_eq!(got, ["", "├─ ", "│  ├─ ", "│  │  └─ ", "│  └─ ", "└─ "]);
        assert!(super::tree_prefixes(&[]).is_empty());
    }

    #[test]
    fn shell_words() {
        assert_eq!(super::shell_quote("/dev/sda"), "/dev/sda");
        assert_eq!(super::shell_quote("my set"), "'my set'");
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}
