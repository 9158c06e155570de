//! `tintype-bench`: measures Tintype against the device's raw read rate and
//! peer tools, in the same run, on the same device; reports medians, spread
//! and the ratios that matter.

mod corpus;
mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use measure::{bytes_under, run_measured, summarize, Sample, Summary};

#[derive(Parser, Debug)]
#[command(name = "tintype-bench", about = "Benchmark harness for Tintype")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a command and print its wall time, CPU time and peak RSS as JSON.
    /// The harness measures every tool through this small process, so the
    /// peak RSS the kernel reports is the tool's, not inherited from the
    /// harness's own memory at fork time.
    #[command(hide = true)]
    Measure {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// `tintype create` vs `dd iflag=direct | zstd -T<cores>` on a realistic
    /// ext4 disk (system files, incompressible files, stale data in free
    /// space, ~30% free) on a memory-backed loop device. Needs root.
    /// Then restores that image to a second loop device with `tintype restore`
    /// and with `zstd -dc | dd oflag=direct`, and checks the restored bytes.
    Ext4 {
        /// Size of the disk in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Measured runs of each tool (after one warm-up run each).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// zstd level for both tools.
        #[arg(long, default_value_t = 1)]
        level: i32,
        /// Logical sector size of the loop device.
        #[arg(long, default_value_t = 512)]
        sector: u32,
        /// Where the disk and outputs live (memory-backed by default).
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Extra flags for `tintype create`.
        #[arg(long, allow_hyphen_values = true)]
        tintype_args: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Measure { argv } => {
            let (w, cpu, rss) =
                run_measured(Command::new(&argv[0]).args(&argv[1..]).stdout(std::process::Stdio::null()))?;
            println!("{}", json!({"wall_seconds": w, "cpu_seconds": cpu, "peak_rss_bytes": rss}));
            Ok(())
        }
        Cmd::Ext4 { size_mib, runs, level, sector, dir, json, tintype_args } => {
            ext4(size_mib, runs.max(1), level, sector, &dir, json.as_deref(), tintype_args.as_deref())
        }
    }
}

/// Measure `argv` through a fresh `tintype-bench measure` process.
fn measure(argv: &[&str]) -> Result<(f64, f64, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .arg("measure")
        .arg("--")
        .args(argv)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run the measuring helper")?;
    if !out.status.success() {
        bail!("{argv:?} failed");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("helper output")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((f("wall_seconds"), f("cpu_seconds"), v["peak_rss_bytes"].as_u64().unwrap_or(0)))
}

fn tintype_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("tintype");
    if !bin.is_file() {
        bail!("{} not found: build it first (cargo build --release --workspace)", bin.display());
    }
    Ok(bin)
}

#[derive(Debug, Serialize)]
struct ToolResult {
    name: String,
    command: String,
    samples: Vec<Sample>,
    wall_seconds: Summary,
    mb_per_s: Summary,
    cpu_seconds: Summary,
    mb_per_cpu_second: f64,
    peak_rss_bytes: u64,
    output_bytes: u64,
}

fn tool_result(name: &str, command: String, samples: Vec<Sample>, source_bytes: u64) -> ToolResult {
    let walls: Vec<f64> = samples.iter().map(|s| s.wall_seconds).collect();
    let rates: Vec<f64> = walls.iter().map(|w| source_bytes as f64 / w / 1e6).collect();
    let cpus: Vec<f64> = samples.iter().map(|s| s.cpu_seconds).collect();
    let cpu = summarize(&cpus);
    ToolResult {
        name: name.into(),
        command,
        wall_seconds: summarize(&walls),
        mb_per_s: summarize(&rates),
        mb_per_cpu_second: source_bytes as f64 / 1e6 / cpu.median,
        cpu_seconds: cpu,
        peak_rss_bytes: samples.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
        output_bytes: samples.last().map_or(0, |s| s.output_bytes),
        samples,
    }
}

/// The device's raw sequential O_DIRECT read rate through io_uring, at the
/// best of a few queue depths and read sizes; in MB/s.
fn raw_read_ceiling(dev: &Path) -> Result<(f64, String)> {
    use tintype::io::{self, device::Source, Backend};
    let mut best = (0.0, String::new());
    for (read_bytes, qd) in [(1usize << 20, 8u32), (4 << 20, 4), (4 << 20, 16)] {
        let src = Source::open(dev, true)?;
        let backend = if io::uring::probe().is_ok() { Backend::Uring } else { Backend::Portable };
        let mut ring = io::open(backend, &vec![read_bytes; qd as usize], 1, qd)?;
        ring.set_file(0, Some(src.reopen()?))?;
        let started = Instant::now();
        let mut next = 0u64;
        let mut free: Vec<usize> = (0..qd as usize).collect();
        loop {
            while next < src.size_bytes {
                let Some(b) = free.pop() else { break };
                let len = (read_bytes as u64).min(src.size_bytes - next) as usize;
                ring.enqueue_read(0, b, 0, len, next, b as u64);
                next += len as u64;
            }
            if ring.in_flight() == 0 {
                break;
            }
            ring.flush(1)?;
            while let Some(c) = ring.pop_completion() {
                c.result.context("raw read")?;
                free.push(c.user_data as usize);
            }
        }
        let rate = src.size_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
        if rate > best.0 {
            best = (rate, format!("{} KiB reads, queue depth {qd}, {}", read_bytes >> 10, backend.name()));
        }
    }
    Ok(best)
}

fn git_rev() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_bytes": mem,
        "kernel": kernel.trim(),
        "cpu": cpu,
    })
}

fn ext4(
    size_mib: u64,
    runs: usize,
    level: i32,
    sector: u32,
    dir: &Path,
    json_out: Option<&Path>,
    extra: Option<&str>,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the ext4 benchmark needs root (loop devices, mkfs, mount)");
    }
    let bin = tintype_bin()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("bench: building a {size_mib} MiB ext4 disk in {}", dir.display());
    let corpus = corpus::ext4_disk(dir, size_mib << 20, sector, 0x5eed)?;
    let dev = corpus.dev.clone();
    let src_bytes = corpus.size_bytes;
    eprintln!("bench: {} ready, {} MiB used of {} MiB", dev.display(), corpus.used_bytes >> 20, src_bytes >> 20);
    let (raw, raw_how) = raw_read_ceiling(&dev)?;
    eprintln!("bench: raw O_DIRECT read ceiling {raw:.0} MB/s ({raw_how})");

    let out_dir = dir.join(format!("tintype-bench-out-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let set = out_dir.join("set");
    let zst = out_dir.join("dd.zst");
    let extra: Vec<String> = extra.map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();
    let ours_cmd = format!("tintype create {} SET --level {level} {}", dev.display(), extra.join(" "));
    let peer_cmd = format!("dd if={} bs=1M iflag=direct status=none | zstd -{level} -T{cores} -q > OUT", dev.display());
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    // One warm-up of each, then alternate so drift hits both alike.
    for i in 0..=runs {
        let _ = std::fs::remove_dir_all(&set);
        let level_arg = level.to_string();
        let mut argv = vec![bin.to_str().unwrap(), "create", dev.to_str().unwrap(), set.to_str().unwrap(), "--level"];
        argv.push(&level_arg);
        argv.extend(extra.iter().map(String::as_str));
        let (w, cpu, rss) = measure(&argv)?;
        let s = Sample { wall_seconds: w, cpu_seconds: cpu, peak_rss_bytes: rss, output_bytes: bytes_under(&set) };
        let _ = std::fs::remove_file(&zst);
        let pipeline = format!(
            "set -o pipefail; dd if={} bs=1M iflag=direct status=none | zstd -{level} -T{cores} -q > {}",
            dev.display(),
            zst.display()
        );
        let (w2, cpu2, rss2) = measure(&["bash", "-c", &pipeline])?;
        let p = Sample { wall_seconds: w2, cpu_seconds: cpu2, peak_rss_bytes: rss2, output_bytes: bytes_under(&zst) };
        eprintln!(
            "bench: run {i}{}: tintype {:.3} s ({} bytes), dd|zstd {:.3} s ({} bytes)",
            if i == 0 { " (warm-up)" } else { "" },
            s.wall_seconds,
            s.output_bytes,
            p.wall_seconds,
            p.output_bytes
        );
        if i > 0 {
            ours.push(s);
            peer.push(p);
        }
    }
    // Restore: both write the image they just made back to a second device.
    let target = corpus::blank(dir, src_bytes, sector)?;
    let tdev = target.dev.to_str().unwrap().to_string();
    let r_ours_cmd = format!("tintype restore SET {tdev} --force");
    let r_peer_cmd = format!("zstd -dc OUT | dd of={tdev} bs=1M oflag=direct");
    let mut r_ours = Vec::new();
    let mut r_peer = Vec::new();
    for i in 0..=runs {
        let (w, cpu, rss) = measure(&[bin.to_str().unwrap(), "restore", set.to_str().unwrap(), &tdev, "--force"])?;
        let pipeline =
            format!("set -o pipefail; zstd -dc -q {} | dd of={tdev} bs=1M oflag=direct status=none", zst.display());
        let (w2, cpu2, rss2) = measure(&["bash", "-c", &pipeline])?;
        eprintln!(
            "bench: restore run {i}{}: tintype {w:.3} s, zstd|dd {w2:.3} s",
            if i == 0 { " (warm-up)" } else { "" }
        );
        if i > 0 {
            r_ours.push(Sample { wall_seconds: w, cpu_seconds: cpu, peak_rss_bytes: rss, output_bytes: src_bytes });
            r_peer.push(Sample { wall_seconds: w2, cpu_seconds: cpu2, peak_rss_bytes: rss2, output_bytes: src_bytes });
        }
    }
    // One more tintype restore, then the proof: the target equals the source.
    measure(&[bin.to_str().unwrap(), "restore", set.to_str().unwrap(), &tdev, "--force"])?;
    let identical = corpus::hash_device(&target.dev)? == corpus::hash_device(&dev)?;
    eprintln!("bench: restored device identical to the source: {identical}");
    drop(target);
    let _ = std::fs::remove_dir_all(&out_dir);
    let ours = tool_result("tintype", ours_cmd, ours, src_bytes);
    let peer = tool_result("dd|zstd", peer_cmd, peer, src_bytes);
    let r_ours = tool_result("tintype restore", r_ours_cmd, r_ours, src_bytes);
    let r_peer = tool_result("zstd -dc | dd", r_peer_cmd, r_peer, src_bytes);
    let restore_ratio = r_peer.wall_seconds.median / r_ours.wall_seconds.median;
    // Ratios of medians of runs made in the same session, alternating.
    let speed_ratio = peer.wall_seconds.median / ours.wall_seconds.median;
    let size_ratio = ours.output_bytes as f64 / peer.output_bytes as f64;
    let of_ceiling = ours.mb_per_s.median / raw;
    println!("| tool | median MB/s (min–max) | CPU s | MB per CPU-s | peak RSS | output bytes |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for t in [&ours, &peer] {
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {} MiB | {} |",
            t.name,
            t.mb_per_s.median,
            t.mb_per_s.min,
            t.mb_per_s.max,
            t.cpu_seconds.median,
            t.mb_per_cpu_second,
            t.peak_rss_bytes >> 20,
            t.output_bytes
        );
    }
    println!();
    println!("raw O_DIRECT read ceiling: {raw:.0} MB/s ({raw_how})");
    println!("tintype ÷ dd|zstd throughput: {speed_ratio:.2}x   output size tintype ÷ dd|zstd: {size_ratio:.3}   tintype ÷ raw ceiling: {of_ceiling:.2}");
    println!();
    println!("| restore | median MB/s (min–max) | CPU s | MB per CPU-s | peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    for t in [&r_ours, &r_peer] {
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {} MiB |",
            t.name,
            t.mb_per_s.median,
            t.mb_per_s.min,
            t.mb_per_s.max,
            t.cpu_seconds.median,
            t.mb_per_cpu_second,
            t.peak_rss_bytes >> 20
        );
    }
    println!();
    println!("restore: tintype ÷ zstd|dd throughput: {restore_ratio:.2}x   restored device identical to the source: {identical}");
    if let Some(path) = json_out {
        let v = json!({
            "benchmark": "ext4",
            "git_revision": git_rev(),
            "machine": machine(),
            "settings": {"size_bytes": src_bytes, "used_bytes": corpus.used_bytes, "runs": runs, "level": level, "sector_bytes": sector, "dir": dir},
            "raw_read_mb_per_s": raw,
            "raw_read_how": raw_how,
            "tools": [ours, peer],
            "restore": {"tools": [r_ours, r_peer], "tintype_over_zstd_dd_throughput": restore_ratio, "restored_identical": identical},
            "ratios": {"tintype_over_dd_zstd_throughput": speed_ratio, "tintype_over_dd_zstd_output_size": size_ratio, "tintype_over_raw_read": of_ceiling},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
