//! What `tintype tune` prints.

use super::{human, print_json, Format};

pub fn print(r: &tintype::pipeline::tune::TuneReport, wrote: Option<&std::path::Path>, format: Format) {
    if format == Format::Json {
        print_json(r);
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
