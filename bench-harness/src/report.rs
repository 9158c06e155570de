//! What a run reports: per tool, medians and spread of its samples; the
//! ratios measured in the same run; a markdown table and JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::measure::{summarize, Sample, Summary};
use crate::peers::Phase;

/// One tool's results over the measured runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolResult {
    pub key: String,
    pub name: String,
    pub phase: Phase,
    pub command: String,
    pub samples: Vec<Sample>,
    pub wall_seconds: Summary,
    /// Device bytes per second (10^6), from each run's wall time.
    pub mb_per_s: Summary,
    pub cpu_seconds: Summary,
    pub mb_per_cpu_second: f64,
    pub peak_rss_bytes: u64,
    pub output_bytes: u64,
}

impl ToolResult {
    pub fn new(key: &str, name: &str, phase: Phase, command: String, samples: Vec<Sample>, bytes: u64) -> ToolResult {
        let walls: Vec<f64> = samples.iter().map(|s| s.wall_seconds).collect();
        let rates: Vec<f64> = walls.iter().map(|w| bytes as f64 / w / 1e6).collect();
        let cpu = summarize(&samples.iter().map(|s| s.cpu_seconds).collect::<Vec<_>>());
        ToolResult {
            key: key.into(),
            name: name.into(),
            phase,
            command,
            wall_seconds: summarize(&walls),
            mb_per_s: summarize(&rates),
            mb_per_cpu_second: if cpu.median > 0.0 { bytes as f64 / 1e6 / cpu.median } else { 0.0 },
            cpu_seconds: cpu,
            peak_rss_bytes: samples.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
            output_bytes: samples.last().map_or(0, |s| s.output_bytes),
            samples,
        }
    }
}

/// A ratio measured in one run, with its value per run so its noise is known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// The ratio of the medians.
    pub value: f64,
    /// The same ratio for each run (tools alternate, so run i of each pairs up).
    pub per_run: Vec<f64>,
    pub higher_is_better: bool,
    /// Whether `compare` gates on it.
    pub gate: bool,
    pub meaning: String,
}

impl Ratio {
    /// How much the per-run values disagree: (max - min) / median.
    pub fn noise(&self) -> f64 {
        if self.per_run.is_empty() {
            return 0.0;
        }
        summarize(&self.per_run).relative_spread()
    }
}

/// The device's own read rate, measured by the harness.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawRead {
    pub mb_per_s: f64,
    pub how: String,
    /// Per-read latency at the best setting, µs (p50, p90, p99, p999, max).
    pub latency_us: BTreeMap<String, u64>,
    /// Every setting tried: "read KiB x queue depth" -> MB/s.
    pub tried: BTreeMap<String, f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub benchmark: String,
    pub git_revision: String,
    pub machine: serde_json::Value,
    pub settings: serde_json::Value,
    pub raw_read: RawRead,
    pub fio_read_mb_per_s: Option<f64>,
    /// `zstd -L -T<cores>` alone on the same bytes: the compression ceiling.
    pub zstd_ceiling: Option<ToolResult>,
    pub tools: Vec<ToolResult>,
    /// Tintype's read latency from its manifest (last run).
    pub tintype_read_latency_us: BTreeMap<String, u64>,
    pub ratios: BTreeMap<String, Ratio>,
    pub restored_identical: Option<bool>,
    pub notes: Vec<String>,
}

fn mib(n: u64) -> u64 {
    n >> 20
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s += &format!(
        "raw O_DIRECT read ceiling: {:.0} MB/s ({}); read latency p50 {} µs, p99 {} µs\n",
        r.raw_read.mb_per_s,
        r.raw_read.how,
        r.raw_read.latency_us.get("p50").unwrap_or(&0),
        r.raw_read.latency_us.get("p99").unwrap_or(&0)
    );
    if let Some(f) = r.fio_read_mb_per_s {
        s += &format!("fio sequential read (1 MiB, queue depth 16, io_uring, direct): {f:.0} MB/s\n");
    }
    if let Some(z) = &r.zstd_ceiling {
        s += &format!(
            "compression ceiling ({}): {:.0} MB/s, {:.2} CPU s\n",
            z.command, z.mb_per_s.median, z.cpu_seconds.median
        );
    }
    for phase in [Phase::Create, Phase::Restore] {
        let tools: Vec<&ToolResult> = r.tools.iter().filter(|t| t.phase == phase).collect();
        if tools.is_empty() {
            continue;
        }
        s += &format!(
            "\n| {} | median MB/s (min–max) | CPU s | MB per CPU-s | peak RSS | output bytes |\n| --- | --- | --- | --- | --- | --- |\n",
            if phase == Phase::Create { "create" } else { "restore" }
        );
        for t in tools {
            s += &format!(
                "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} | {} MiB | {} |\n",
                t.name.replace('|', "\\|"),
                t.mb_per_s.median,
                t.mb_per_s.min,
                t.mb_per_s.max,
                t.cpu_seconds.median,
                t.mb_per_cpu_second,
                mib(t.peak_rss_bytes),
                if phase == Phase::Create { t.output_bytes.to_string() } else { "—".into() }
            );
        }
    }
    s += "\n| ratio | value | per-run spread | meaning |\n| --- | --- | --- | --- |\n";
    for (k, v) in &r.ratios {
        s += &format!("| {k} | {:.3} | {:.0}% | {} |\n", v.value, v.noise() * 100.0, v.meaning.replace('|', "\\|"));
    }
    if let Some(same) = r.restored_identical {
        s += &format!(
            "\nrestored device equals the source (chunks no filesystem uses: zeros; ext4: e2fsck -fn clean): {same}\n"
        );
    }
    for n in &r.notes {
        s += &format!("\nnote: {n}\n");
    }
    s
}
