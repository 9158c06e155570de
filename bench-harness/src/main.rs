//! `tintype-bench`: measures Tintype against the device's raw read rate and
//! peer tools, in the same run, on the same device; reports medians, spread
//! and the ratios that matter; gates regressions on those ratios.

mod compare;
mod corpus;
mod measure;
mod peers;
mod report;
mod sparse;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tintype::io::Request;

use corpus::CorpusKind;
use measure::{bytes_under, measure, run_measured, summarize, Sample};
use peers::{Ctx, Phase, Tool};
use report::{markdown, Ratio, RawRead, Report, ToolResult};

#[derive(Parser, Debug)]
#[command(
    name = "tintype-bench",
    about = "Benchmark harness for Tintype: same-run ratios against the device and peer tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct SuiteArgs {
    /// What the source device holds.
    #[arg(long, value_enum, default_value_t = CorpusKind::Ext4)]
    corpus: CorpusKind,
    /// Size of the source device in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Measured runs of each tool, after one warm-up run each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// zstd level for every tool.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    level: i32,
    /// Logical sector size of the loop devices.
    #[arg(long, default_value_t = 512, value_parser = parse_sector)]
    sector: u32,
    /// Where the devices' backing files and the outputs live (memory-backed by default).
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Extra flags for `tintype create`, e.g. "--queue-depth 16".
    #[arg(long, allow_hyphen_values = true)]
    tintype_args: Option<String>,
    /// Only Tintype; no peer tools.
    #[arg(long)]
    no_peers: bool,
    /// Skip the restore half.
    #[arg(long)]
    no_restore: bool,
    /// Write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Param {
    QueueDepth,
    Lanes,
    ChunkSize,
    Level,
    /// The raw reader's read size (KiB) at queue depth 8.
    ReadSize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a command and print its wall time, CPU time and peak RSS as JSON.
    #[command(hide = true)]
    Measure {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// The full suite: raw read ceiling (own io_uring reader, fio), the
    /// compression ceiling (zstd alone), then create and restore with
    /// Tintype and every installed peer (dd|zstd, partclone|zstd, qemu-img),
    /// alternating, several runs each; ratios measured in the same run.
    Run(SuiteArgs),
    /// The CI job (well under a minute): a 256 MiB mixed corpus, Tintype
    /// against dd|zstd and zstd -dc|dd, five runs each.
    Quick {
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
    },
    /// Compare the gated same-run ratios of a baseline with one or more
    /// reports of the same build; exit 1 on a regression beyond
    /// --max-regression (widened to the measured noise) that every report
    /// shows.
    Compare {
        baseline: PathBuf,
        #[arg(required = true, num_args = 1..)]
        current: Vec<PathBuf>,
        #[arg(long, default_value_t = 25.0)]
        max_regression: f64,
    },
    /// The large-sparse scenario: a 16 TiB ext4 (sparse file) with about
    /// 1 GiB of files against a twin just large enough for them; create,
    /// unchanged incremental, verify, restore, merge on each, in the same
    /// run: time, peak RSS, index and stored bytes. Exits 1 when memory or
    /// index grows with the device (docs/BENCHMARKS.md).
    Sparse {
        #[arg(long, default_value_t = 16384)]
        size_gib: u64,
        #[arg(long, default_value_t = 1024)]
        data_mib: u64,
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Sweep one setting and show where throughput stops growing.
    Sweep {
        #[arg(long, value_enum)]
        param: Param,
        /// Comma-separated values (sizes in KiB for chunk-size and read-size).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        values: Vec<i64>,
        #[arg(long, value_enum, default_value_t = CorpusKind::Mixed)]
        corpus: CorpusKind,
        #[arg(long, default_value_t = 512)]
        size_mib: u64,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        level: i32,
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn parse_sector(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (512 | 1024 | 2048 | 4096)) => Ok(n),
        _ => Err(format!("{s:?}: a logical sector size is 512, 1024, 2048 or 4096")),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Measure { argv } => {
            let (w, cpu, rss) =
                run_measured(Command::new(&argv[0]).args(&argv[1..]).stdout(std::process::Stdio::null()))?;
            println!("{}", json!({"wall_seconds": w, "cpu_seconds": cpu, "peak_rss_bytes": rss}));
            Ok(())
        }
        Cmd::Run(a) => finish(run_suite(&a, true)?, a.json.as_deref()),
        Cmd::Quick { json, dir } => {
            let a = SuiteArgs {
                corpus: CorpusKind::Mixed,
                size_mib: 256,
                runs: 5,
                level: 1,
                sector: 512,
                dir,
                tintype_args: None,
                no_peers: false,
                no_restore: false,
                json: json.clone(),
            };
            finish(run_suite(&a, false)?, json.as_deref())
        }
        Cmd::Compare { baseline, current, max_regression } => {
            let load = |p: &Path| -> Result<Report> {
                serde_json::from_slice(&std::fs::read(p).with_context(|| format!("read {}", p.display()))?)
                    .with_context(|| format!("{} is not a tintype-bench report", p.display()))
            };
            // Bad input exits 2, so CI can tell it from a regression (exit 1).
            let input_error = |e: anyhow::Error| -> ! {
                eprintln!("tintype-bench: {e:#}");
                std::process::exit(2)
            };
            if !(max_regression.is_finite() && max_regression > 0.0) {
                input_error(anyhow::anyhow!("--max-regression {max_regression}: must be a positive percentage"));
            }
            let b = load(&baseline).unwrap_or_else(|e| input_error(e));
            let c: Vec<Report> = current.iter().map(|p| load(p).unwrap_or_else(|e| input_error(e))).collect();
            if let Err(why) = compare::check_baseline(&b) {
                input_error(anyhow::anyhow!("{}: {why}", baseline.display()));
            }
            let verdicts = compare::compare_all(&b, &c, max_regression);
            println!(
                "| ratio | baseline | current | worse by | allowed | verdict |\n| --- | --- | --- | --- | --- | --- |"
            );
            for v in &verdicts {
                println!(
                    "| {} | {:.3} | {:.3} | {:.1}% | {:.1}% | {} |",
                    v.key,
                    v.baseline,
                    v.current,
                    v.worse_by * 100.0,
                    v.tolerance * 100.0,
                    if v.regressed { "REGRESSED" } else { "ok" }
                );
            }
            if verdicts.iter().any(|v| v.regressed) {
                eprintln!(
                    "tintype-bench: performance regressed beyond the allowed {max_regression}% (or the measured noise)"
                );
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Sparse { size_gib, data_mib, dir, json } => {
            let r = sparse::run(&sparse::SparseArgs { size_gib, data_mib, dir }, &tintype_bin()?, git_rev())?;
            print!("{}", sparse::markdown(&r));
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_vec_pretty(&r)?).with_context(|| format!("write {}", p.display()))?;
            }
            if r.checks.iter().any(|c| !c.holds) {
                bail!("memory or index grew with the device: see the checks above");
            }
            Ok(())
        }
        Cmd::Sweep { param, values, corpus, size_mib, runs, level, dir, json } => {
            sweep(param, &values, corpus, size_mib << 20, runs as usize, level, &dir, json.as_deref())
        }
    }
}

fn finish(r: Report, json_out: Option<&Path>) -> Result<()> {
    print!("{}", markdown(&r));
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?).with_context(|| format!("write {}", p.display()))?;
    }
    if r.restored_identical == Some(false) {
        bail!("the restored device differs from the source");
    }
    Ok(())
}

fn tintype_bin() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("tintype");
    if !bin.is_file() {
        bail!("{} not found: build it first (cargo build --release --workspace)", bin.display());
    }
    Ok(bin)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sequential O_DIRECT reads of the whole device through io_uring with
/// `read_bytes` reads and `qd` in flight; returns MB/s and, if asked, the
/// per-read latency histogram.
fn raw_read(dev: &Path, read_bytes: usize, qd: u32, latency: bool) -> Result<(f64, BTreeMap<String, u64>)> {
    use tintype::io::{self, device::Source, Backend};
    let src = Source::open(dev, tintype::io::device::OpenMode::Direct)?;
    if read_bytes == 0 || read_bytes % src.dio_align_bytes as usize != 0 {
        bail!("read size {read_bytes} must be a positive multiple of {} bytes", src.dio_align_bytes);
    }
    let backend = if io::uring::probe().is_ok() { Backend::uring(io::OnRingFailure::Fail) } else { Backend::Portable };
    let mut ring = io::open(&backend, &vec![read_bytes; qd as usize], 1, qd)?;
    ring.set_file(0, Some(src.reopen()?))?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut started_at = vec![Instant::now(); qd as usize];
    let started = Instant::now();
    let mut next = 0u64;
    let mut free: Vec<usize> = (0..qd as usize).collect();
    loop {
        while next < src.size_bytes {
            let Some(b) = free.pop() else { break };
            let len = (read_bytes as u64).min(src.size_bytes - next) as usize;
            let len = len.next_multiple_of(src.dio_align_bytes as usize).min(read_bytes);
            started_at[b] = Instant::now();
            ring.enqueue_read(Request { slot: 0, buf: b, buf_offset: 0, len, file_offset: next, tag: b as u64 });
            next += read_bytes as u64;
        }
        if ring.in_flight() == 0 {
            break;
        }
        ring.flush(1)?;
        while let Some(c) = ring.pop_completion() {
            c.result.context("raw read")?;
            let b = c.user_data as usize;
            if latency {
                hist.record(started_at[b].elapsed().as_micros().max(1) as u64)?;
            }
            free.push(b);
        }
    }
    let rate = src.size_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    let mut lat = BTreeMap::new();
    if latency && !hist.is_empty() {
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            lat.insert(k.to_string(), hist.value_at_quantile(q));
        }
        lat.insert("max".into(), hist.max());
    }
    Ok((rate, lat))
}

fn raw_read_ceiling(dev: &Path) -> Result<RawRead> {
    let mut tried = BTreeMap::new();
    let mut best = (0.0, 1usize << 20, 8u32);
    for (read_bytes, qd) in [(1usize << 20, 1u32), (1 << 20, 8), (1 << 20, 32), (4 << 20, 4), (4 << 20, 16)] {
        let (rate, _) = raw_read(dev, read_bytes, qd, false)?;
        tried.insert(format!("{} KiB x {qd}", read_bytes >> 10), rate);
        if rate > best.0 {
            best = (rate, read_bytes, qd);
        }
    }
    let (_, latency_us) = raw_read(dev, best.1, best.2, true)?;
    Ok(RawRead {
        mb_per_s: best.0,
        how: format!("{} KiB reads, queue depth {}, io_uring when available", best.1 >> 10, best.2),
        latency_us,
        tried,
    })
}

fn fio_read(dev: &Path, size: u64) -> Option<f64> {
    if !peers::installed("fio") {
        return None;
    }
    let out = Command::new("fio")
        .args(["--name=read", "--rw=read", "--bs=1M", "--iodepth=16", "--ioengine=io_uring", "--direct=1"])
        .arg(format!("--filename={}", dev.display()))
        .arg(format!("--size={size}"))
        .arg("--output-format=json")
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["jobs"][0]["read"]["bw_bytes"].as_f64().map(|b| b / 1e6)
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
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map_or(0, |k| k * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cores": cores(), "memory_bytes": mem, "kernel": kernel.trim(), "cpu": cpu})
}

/// Run every tool of `tools` `runs` times (plus a warm-up), alternating.
fn run_tools(tools: &[Tool], runs: usize, source_bytes: u64) -> Result<Vec<ToolResult>> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for i in 0..=runs {
        for (t, out) in tools.iter().zip(samples.iter_mut()) {
            if t.phase == Phase::Create {
                let _ = std::fs::remove_dir_all(&t.output);
                let _ = std::fs::remove_file(&t.output);
            }
            let argv: Vec<&str> = t.argv.iter().map(String::as_str).collect();
            let (w, cpu, rss) = measure(&argv, &[])?;
            let output_bytes = if t.phase == Phase::Create { bytes_under(&t.output) } else { source_bytes };
            eprintln!("bench: {} run {i}{}: {w:.3} s", t.name, if i == 0 { " (warm-up)" } else { "" });
            if i > 0 {
                out.push(Sample { wall_seconds: w, cpu_seconds: cpu, peak_rss_bytes: rss, output_bytes });
            }
        }
    }
    Ok(tools
        .iter()
        .zip(samples)
        .map(|(t, s)| ToolResult::new(&t.key, &t.name, t.phase, t.shown.clone(), s, source_bytes))
        .collect())
}

/// Ratio of two tools' wall times per run and of their medians: how many
/// times faster `ours` is than `peer`.
fn speed_ratio(ours: &ToolResult, peer: &ToolResult, gate: bool, meaning: String) -> Ratio {
    Ratio {
        value: peer.wall_seconds.median / ours.wall_seconds.median,
        per_run: ours.samples.iter().zip(&peer.samples).map(|(o, p)| p.wall_seconds / o.wall_seconds).collect(),
        higher_is_better: true,
        gate,
        meaning,
    }
}

fn run_suite(a: &SuiteArgs, extras: bool) -> Result<Report> {
    let bin = tintype_bin()?;
    let mut notes = Vec::new();
    if !corpus::is_root() {
        notes.push("not root: the corpus is a plain file, not a loop device".to_string());
    }
    let size = a.size_mib << 20;
    eprintln!("bench: building a {} MiB {:?} corpus in {}", a.size_mib, a.corpus, a.dir.display());
    let source = corpus::make(a.corpus, &a.dir, size, a.sector, 0x5eed)?;
    eprintln!("bench: source {} ({} MiB used)", source.path.display(), source.used_bytes >> 20);
    let raw = raw_read_ceiling(&source.path)?;
    eprintln!("bench: raw read ceiling {:.0} MB/s ({})", raw.mb_per_s, raw.how);
    let fio = if extras { fio_read(&source.path, size) } else { None };
    let out = corpus::TempDir::new(a.dir.join(format!("tintype-bench-out-{}", std::process::id())))?;
    run_in(a, extras, &bin, &source, &out.0, raw, fio, notes)
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    a: &SuiteArgs,
    extras: bool,
    bin: &Path,
    source: &corpus::Device,
    out_dir: &Path,
    raw: RawRead,
    fio: Option<f64>,
    notes: Vec<String>,
) -> Result<Report> {
    let size = source.size_bytes;
    let n = cores();
    let zstd_ceiling = if extras && !a.no_peers && peers::installed("zstd") {
        let script = format!("zstd -{} -T{n} -q -c {} > /dev/null", a.level, source.backing.display());
        let tool = Tool {
            key: "zstd_ceiling".into(),
            name: format!("zstd -{} -T{n} alone", a.level),
            phase: Phase::Create,
            argv: vec!["bash".into(), "-c".into(), script],
            output: out_dir.join("none"),
            shown: format!("zstd -{} -T{n} -c BACKING_FILE > /dev/null", a.level),
        };
        run_tools(&[tool], a.runs as usize, size)?.pop()
    } else {
        None
    };
    let target = if a.no_restore { None } else { Some(corpus::blank(&a.dir, size, a.sector)?) };
    let extra: Vec<String> =
        a.tintype_args.as_deref().map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();
    let ctx = Ctx {
        tintype: bin,
        source: &source.path,
        target: target.as_ref().map_or(Path::new("/nonexistent"), |t| &t.path),
        out_dir,
        level: a.level,
        cores: n,
        ext4: a.corpus == CorpusKind::Ext4,
        tintype_args: &extra,
        peers: !a.no_peers,
    };
    let mut create = peers::create_tools(&ctx);
    if !extras {
        create.retain(|t| t.key == "tintype" || t.key == "dd_zstd");
    }
    let mut results = run_tools(&create, a.runs as usize, size)?;
    let latency = tintype::set::ImageSet::open(&out_dir.join("set"))
        .and_then(|s| s.resolve(None))
        .map(|i| i.manifest.stats.read_latency_us)
        .unwrap_or_default();
    let mut restored_identical = None;
    if let Some(target) = &target {
        let restore = peers::restore_tools(&ctx, &create);
        results.extend(run_tools(&restore, a.runs as usize, size)?);
        // One more Tintype restore onto a target filled with a pattern (so
        // nothing left by an earlier restore can pass for Tintype's work),
        // then the proof: the target equals the source.
        corpus::fill_pattern(&target.path, size)?;
        let argv: Vec<&str> = restore[0].argv.iter().map(String::as_str).collect();
        measure(&argv, &[])?;
        let mut same = corpus::matches_image(&source.path, &target.path, &out_dir.join("set"))?;
        if a.corpus == CorpusKind::Ext4 {
            // Free space comes back as zeros; the filesystem must be intact.
            let fsck = std::process::Command::new("e2fsck").arg("-fn").arg(&target.path).output()?;
            if !fsck.status.success() {
                eprintln!(
                    "bench: e2fsck -fn of the restored device failed:\n{}",
                    String::from_utf8_lossy(&fsck.stdout)
                );
                same = false;
            }
        }
        restored_identical = Some(same);
    }
    let mut ratios = BTreeMap::new();
    let ours_c = results.iter().find(|t| t.key == "tintype" && t.phase == Phase::Create).expect("tintype create ran");
    ratios.insert(
        "create_over_raw_read".into(),
        Ratio {
            value: ours_c.mb_per_s.median / raw.mb_per_s,
            per_run: vec![],
            higher_is_better: true,
            gate: false,
            meaning: "tintype create MB/s ÷ the device's raw O_DIRECT read rate".into(),
        },
    );
    if let Some(z) = &zstd_ceiling {
        ratios.insert(
            "create_cpu_over_zstd_alone".into(),
            Ratio {
                value: ours_c.cpu_seconds.median / z.cpu_seconds.median,
                per_run: vec![],
                higher_is_better: false,
                gate: false,
                meaning: format!("tintype create CPU s ÷ {} CPU s on the same bytes", z.name),
            },
        );
        ratios.insert(
            "create_over_zstd_alone".into(),
            Ratio {
                value: ours_c.mb_per_s.median / z.mb_per_s.median,
                per_run: vec![],
                higher_is_better: true,
                gate: false,
                meaning: format!("tintype create MB/s ÷ {} MB/s (the compression ceiling)", z.name),
            },
        );
    }
    for phase in [Phase::Create, Phase::Restore] {
        let Some(ours) = results.iter().find(|t| t.key == "tintype" && t.phase == phase) else { continue };
        for peer in results.iter().filter(|t| t.key != "tintype" && t.phase == phase) {
            let gate = peer.key == "dd_zstd";
            let what = if phase == Phase::Create { "create" } else { "restore" };
            ratios.insert(
                format!("{what}_vs_{}", peer.key),
                speed_ratio(ours, peer, gate, format!("times faster than {} (wall, same run)", peer.name)),
            );
            if phase == Phase::Create {
                ratios.insert(
                    format!("output_vs_{}", peer.key),
                    Ratio {
                        value: ours.output_bytes as f64 / peer.output_bytes as f64,
                        per_run: ours
                            .samples
                            .iter()
                            .zip(&peer.samples)
                            .map(|(o, p)| o.output_bytes as f64 / p.output_bytes as f64)
                            .collect(),
                        higher_is_better: false,
                        gate,
                        meaning: format!("tintype's output bytes ÷ {}'s", peer.name),
                    },
                );
            }
        }
    }
    // An incremental of the unchanged device: it only reads, hashes and
    // compares, so it should run at the device's read rate and store nothing.
    if out_dir.join("set").is_dir() {
        let mut argv = vec![
            bin.display().to_string(),
            "create".into(),
            source.path.display().to_string(),
            out_dir.join("set").display().to_string(),
            "--incremental".into(),
        ];
        argv.extend(extra.iter().filter(|x| !x.starts_with("--level")).cloned());
        let tool = Tool {
            key: "tintype_incremental".into(),
            name: "tintype create --incremental (unchanged device)".into(),
            phase: Phase::Create,
            argv,
            output: out_dir.join("not-removed"),
            shown: "tintype create DEV SET --incremental".into(),
        };
        if let Some(inc) = run_tools(&[tool], a.runs as usize, size)?.pop() {
            let stored = tintype::set::ImageSet::open(&out_dir.join("set"))
                .and_then(|s| s.resolve(None))
                .map(|i| i.manifest.stats.bytes_segments)
                .unwrap_or(u64::MAX);
            ratios.insert(
                "incremental_unchanged_over_raw_read".into(),
                Ratio {
                    value: inc.mb_per_s.median / raw.mb_per_s,
                    per_run: vec![],
                    higher_is_better: true,
                    gate: false,
                    meaning: format!(
                        "tintype create --incremental of the unchanged device, MB/s ÷ the raw O_DIRECT read rate \
                         (it stored {stored} bytes of segments)"
                    ),
                },
            );
            results.push(inc);
        }
    }
    Ok(Report {
        benchmark: format!("{:?}", a.corpus).to_lowercase(),
        git_revision: git_rev(),
        machine: machine(),
        settings: json!({
            "size_bytes": size, "used_bytes": source.used_bytes, "runs": a.runs as usize, "level": a.level,
            "sector_bytes": a.sector, "dir": a.dir, "loop_device": source.is_loop, "tintype_args": extra,
        }),
        raw_read: raw,
        fio_read_mb_per_s: fio,
        zstd_ceiling,
        tools: results,
        tintype_read_latency_us: latency,
        ratios,
        restored_identical,
        notes,
    })
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    param: Param,
    values: &[i64],
    corpus_kind: CorpusKind,
    size: u64,
    runs: usize,
    level: i32,
    dir: &Path,
    json_out: Option<&Path>,
) -> Result<()> {
    if values.is_empty() {
        bail!("--values needs at least one value");
    }
    for &v in values {
        let ok = match param {
            Param::QueueDepth => (1..=1024).contains(&v),
            Param::Lanes => (1..=256).contains(&v),
            Param::ChunkSize => (64..=65536).contains(&v) && (v as u64).is_power_of_two(),
            Param::ReadSize => (4..=65536).contains(&v) && v % 4 == 0,
            Param::Level => (-131_072..=22).contains(&v),
        };
        if !ok {
            bail!("--values {v} is out of range for {param:?} (sizes are in KiB)");
        }
    }
    let bin = tintype_bin()?;
    let source = corpus::make(corpus_kind, dir, size, 512, 0x5eed)?;
    let out = dir.join(format!("tintype-bench-sweep-{}", std::process::id()));
    let mut rows = Vec::new();
    for &v in values {
        let mut rates = Vec::new();
        for i in 0..=runs {
            let rate = match param {
                Param::ReadSize => raw_read(&source.path, (v as usize) << 10, 8, false)?.0,
                _ => {
                    let _ = std::fs::remove_dir_all(&out);
                    let (flag, val) = match param {
                        Param::QueueDepth => ("--queue-depth", v.to_string()),
                        Param::Lanes => ("--lanes", v.to_string()),
                        Param::ChunkSize => ("--chunk-size", format!("{v}K")),
                        Param::Level => ("--level", v.to_string()),
                        Param::ReadSize => unreachable!(),
                    };
                    let mut argv =
                        vec![bin.to_str().unwrap(), "create", source.path.to_str().unwrap(), out.to_str().unwrap()];
                    let lvl = level.to_string();
                    if !matches!(param, Param::Level) {
                        argv.extend(["--level", &lvl]);
                    }
                    argv.extend([flag, &val]);
                    let (w, _, _) = measure(&argv, &[])?;
                    size as f64 / w / 1e6
                }
            };
            if i > 0 {
                rates.push(rate);
            }
        }
        let _ = std::fs::remove_dir_all(&out);
        rows.push((v, summarize(&rates)));
    }
    println!("| {param:?} | median MB/s (min–max) | gain over the previous value |\n| --- | --- | --- |");
    let mut prev: Option<f64> = None;
    let mut plateau = None;
    for (v, s) in &rows {
        let gain = prev.map(|p| s.median / p - 1.0);
        if plateau.is_none() && gain.is_some_and(|g| g < 0.05) {
            plateau = Some(*v);
        }
        println!(
            "| {v} | {:.0} ({:.0}–{:.0}) | {} |",
            s.median,
            s.min,
            s.max,
            gain.map_or("—".into(), |g| format!("{:+.1}%", g * 100.0))
        );
        prev = Some(s.median);
    }
    match plateau {
        Some(v) => println!("\nthroughput stops growing (< 5% gain) at {param:?} = {v}"),
        None => println!("\nthroughput still grows at the largest value tried"),
    }
    if let Some(p) = json_out {
        let v = json!({
            "param": format!("{param:?}"), "corpus": corpus_kind, "size_bytes": size, "runs": runs, "level": level,
            "git_revision": git_rev(), "machine": machine(),
            "rows": rows.iter().map(|(v, s)| json!({"value": v, "mb_per_s": s})).collect::<Vec<_>>(),
            "plateau_at": plateau,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
