//! The large-sparse scenario: memory and index follow the data, not the
//! device. A large ext4 (a sparse file, 16 TiB by default, made with
//! lazy_itable_init as a young large filesystem is) holding about 1 GiB of
//! files, and a twin just large enough for the same files, both made with
//! `mkfs.ext4 -d` (no mount, no root). On each, in the same run: a full
//! create, an unchanged incremental, verify of the chain, restore to a new
//! sparse file, serve (a client reading 1 GiB of the export), and merge
//! --full; wall time and peak RSS per command (each
//! measured in a fresh process), index and stored bytes. The report checks
//! what must hold whatever the machine's speed — peak RSS within 10% (plus
//! 4 MiB) of the twin's, an unchanged incremental storing at most 1 MiB, a
//! full image's index at most 1% of its stored data — and gives the time
//! ratios beside their target (at most 3x the twin), which are noisy.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::measure::{bytes_under, measure};

/// The scenario's settings.
#[derive(Debug, Clone)]
pub struct SparseArgs {
    pub size_gib: u64,
    pub data_mib: u64,
    pub dir: PathBuf,
}

/// One command on one source.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub command: String,
    pub wall_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Everything measured on one source.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub name: String,
    pub size_bytes: u64,
    pub steps: Vec<Step>,
    /// The full image's index file, and its stored bytes (segments + index + manifest).
    pub full_index_bytes: u64,
    pub full_stored_bytes: u64,
    /// What the unchanged incremental stored: index and manifest (and any segment).
    pub incremental_stored_bytes: u64,
    pub incremental_index_bytes: u64,
}

/// A check of the report, and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub value: String,
    pub limit: String,
    pub holds: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SparseReport {
    pub git_revision: String,
    pub data_bytes: u64,
    pub sources: Vec<Source>,
    pub checks: Vec<Check>,
    /// Wall time of each command, big ÷ twin (target: at most 3).
    pub time_ratios: Vec<(String, f64)>,
}

/// Run the scenario; fails (after printing the report) when a check does not hold.
pub fn run(a: &SparseArgs, bin: &Path, git_revision: String) -> Result<SparseReport> {
    let work = a.dir.join(format!("tintype-sparse-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let result = run_in(a, bin, &work, git_revision);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(a: &SparseArgs, bin: &Path, work: &Path, git_revision: String) -> Result<SparseReport> {
    let tree = work.join("tree");
    let data_bytes = write_tree(&tree, a.data_mib << 20)?;
    // The twin: the data plus a quarter, in whole GiB (room for the metadata).
    let twin_gib = (data_bytes + data_bytes / 4).div_ceil(1 << 30).max(1);
    let mut sources = Vec::new();
    for (name, gib) in [("twin", twin_gib), ("large", a.size_gib)] {
        let img = work.join(format!("{name}.img"));
        mkfs(&img, gib << 30, &tree)?;
        sources.push(measure_source(bin, work, name, &img, gib << 30)?);
        std::fs::remove_file(&img).ok();
    }
    let checks = checks(&sources);
    let (twin, large) = (&sources[0], &sources[1]);
    let time_ratios = twin
        .steps
        .iter()
        .zip(&large.steps)
        .map(|(t, l)| (t.command.clone(), l.wall_seconds / t.wall_seconds.max(1e-6)))
        .collect();
    Ok(SparseReport { git_revision, data_bytes, sources, checks, time_ratios })
}

/// Files of about `bytes` in all under `dir`: incompressible and text, a
/// few large and many small. Returns their total size.
fn write_tree(dir: &Path, bytes: u64) -> Result<u64> {
    std::fs::create_dir_all(dir.join("small"))?;
    let mut total = 0;
    let mut n = 0u64;
    while total < bytes {
        let len = (bytes - total).min(64 << 20);
        let body = match n % 2 {
            0 => tintype::sample::random_bytes(len as usize, n + 1),
            _ => b"the chunk of the lane of the ring\n".iter().copied().cycle().take(len as usize).collect(),
        };
        std::fs::write(dir.join(format!("file{n:03}")), body)?;
        total += len;
        n += 1;
    }
    for i in 0..200 {
        let body = format!("small file {i}\n").repeat(1 + i * 7);
        total += body.len() as u64;
        std::fs::write(dir.join(format!("small/{i}.txt")), body)?;
    }
    Ok(total)
}

fn mkfs(img: &Path, size: u64, tree: &Path) -> Result<()> {
    std::fs::File::create(img)?.set_len(size)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d"])
        .arg(tree)
        .arg(img)
        .output()
        .context("run mkfs.ext4 (e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4 {}: {}", img.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn measure_source(bin: &Path, work: &Path, name: &str, img: &Path, size: u64) -> Result<Source> {
    let set = work.join(format!("{name}-set"));
    let target = work.join(format!("{name}-restored.img"));
    let (b, i, s, t) = (bin.to_str().unwrap(), img.to_str().unwrap(), set.to_str().unwrap(), target.to_str().unwrap());
    let mut steps = Vec::new();
    let step = |steps: &mut Vec<Step>, command: &str, argv: &[&str]| -> Result<()> {
        let (wall, _, rss) = measure(argv, &[])?;
        steps.push(Step { command: command.into(), wall_seconds: wall, peak_rss_bytes: rss });
        Ok(())
    };
    step(&mut steps, "create", &[b, "create", i, s])?;
    let full_stored_bytes = bytes_under(&set);
    let full_index_bytes = index_bytes(&set)?;
    step(&mut steps, "create --incremental (unchanged)", &[b, "create", i, s, "--incremental"])?;
    let incremental_stored_bytes = bytes_under(&set) - full_stored_bytes;
    let incremental_index_bytes = index_bytes(&set)? - full_index_bytes;
    step(&mut steps, "verify (the chain)", &[b, "verify", s])?;
    step(&mut steps, "restore (to a new sparse file)", &[b, "restore", s, t])?;
    std::fs::remove_file(&target).ok();
    steps.push(serve_step(b, s, &work.join(format!("{name}.sock")), size)?);
    let newest = newest_image(&set)?;
    step(&mut steps, "merge --full", &[b, "merge", &format!("{s}@{newest}"), "--full"])?;
    std::fs::remove_dir_all(&set).ok();
    Ok(Source {
        name: name.into(),
        size_bytes: size,
        steps,
        full_index_bytes,
        full_stored_bytes,
        incremental_stored_bytes,
        incremental_index_bytes,
    })
}

/// serve of the chain, one client (qemu-io) reading the first GiB and the
/// last 64 MiB of the export; serve stops when it disconnects, and its
/// peak RSS is what the measuring helper reports (the cache holds up to its
/// default 256 MiB either way).
fn serve_step(bin: &str, set: &str, sock: &Path, size: u64) -> Result<Step> {
    let listen = format!("unix:{}", sock.display());
    let argv = [bin, "serve", set, "--listen", &listen, "--max-connections", "1"];
    let server = std::thread::scope(|scope| -> Result<(f64, f64, u64)> {
        let server = scope.spawn(|| measure(&argv, &[]));
        let started = std::time::Instant::now();
        while !sock.exists() {
            if server.is_finished() || started.elapsed().as_secs() > 60 {
                bail!("serve did not start listening on {}", sock.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        let tail = format!("read -q {} 64M", size - (64 << 20));
        let out = Command::new("qemu-io")
            .args(["-r", "-f", "raw", &uri, "-c", "read -q 0 1G", "-c", &tail])
            .output()
            .context("run qemu-io (qemu-utils)")?;
        if !out.status.success() {
            bail!("qemu-io against the export: {}", String::from_utf8_lossy(&out.stderr));
        }
        server.join().expect("serve measuring thread")
    })?;
    Ok(Step {
        command: "serve (1 GiB and the last 64 MiB read)".into(),
        wall_seconds: server.0,
        peak_rss_bytes: server.2,
    })
}

/// Bytes of every index file in `set`.
fn index_bytes(set: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(set)?.flatten() {
        if e.file_name().to_string_lossy().ends_with(".index") {
            n += e.metadata()?.len();
        }
    }
    Ok(n)
}

/// The ID of the most recently committed image of `set`.
fn newest_image(set: &Path) -> Result<String> {
    let mut m: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(set)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".manifest.json")?.to_string();
            Some((e.metadata().ok()?.modified().ok()?, id))
        })
        .collect();
    m.sort();
    m.pop().map(|(_, id)| id).context("no committed image")
}

fn checks(sources: &[Source]) -> Vec<Check> {
    let (twin, large) = (&sources[0], &sources[1]);
    let mut out = Vec::new();
    for (t, l) in twin.steps.iter().zip(&large.steps) {
        let limit = t.peak_rss_bytes + t.peak_rss_bytes / 10 + (4 << 20);
        out.push(Check {
            what: format!("peak RSS of {}", l.command),
            value: mib(l.peak_rss_bytes),
            limit: format!("<= {} (twin {} + 10% + 4 MiB)", mib(limit), mib(t.peak_rss_bytes)),
            holds: l.peak_rss_bytes <= limit,
        });
    }
    for s in [twin, large] {
        out.push(Check {
            what: format!("{}: an unchanged incremental stores", s.name),
            value: format!("{} bytes", s.incremental_stored_bytes),
            limit: "<= 1 MiB".into(),
            holds: s.incremental_stored_bytes <= 1 << 20,
        });
        let data = s.full_stored_bytes - s.full_index_bytes;
        out.push(Check {
            what: format!("{}: the full image's index", s.name),
            value: format!(
                "{} bytes ({:.3}% of {} stored)",
                s.full_index_bytes,
                pct(s.full_index_bytes, data),
                mib(data)
            ),
            limit: "<= 1% of the stored data".into(),
            holds: s.full_index_bytes * 100 <= data,
        });
    }
    out
}

fn pct(a: u64, b: u64) -> f64 {
    a as f64 * 100.0 / b.max(1) as f64
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The report as markdown tables.
pub fn markdown(r: &SparseReport) -> String {
    let mut s = format!("## Large sparse source (revision {})\n\n", r.git_revision);
    s += &format!("{} of files on each source.\n\n", mib(r.data_bytes));
    s += "| command | twin | large | time large ÷ twin |\n| --- | --- | --- | --- |\n";
    let (t, l) = (&r.sources[0], &r.sources[1]);
    for ((a, b), (_, ratio)) in t.steps.iter().zip(&l.steps).zip(&r.time_ratios) {
        s += &format!(
            "| {} | {:.2} s, {} | {:.2} s, {} | {ratio:.2} |\n",
            a.command,
            a.wall_seconds,
            mib(a.peak_rss_bytes),
            b.wall_seconds,
            mib(b.peak_rss_bytes)
        );
    }
    s += &format!(
        "| size; full index; unchanged incremental stored | {} GiB; {} B; {} B | {} GiB; {} B; {} B | |\n\n",
        t.size_bytes >> 30,
        t.full_index_bytes,
        t.incremental_stored_bytes,
        l.size_bytes >> 30,
        l.full_index_bytes,
        l.incremental_stored_bytes
    );
    s += "| check | value | limit | holds |\n| --- | --- | --- | --- |\n";
    for c in &r.checks {
        s += &format!("| {} | {} | {} | {} |\n", c.what, c.value, c.limit, if c.holds { "yes" } else { "NO" });
    }
    s
}
