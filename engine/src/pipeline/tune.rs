//! `tintype tune`: a short, bounded, read-only sweep of a device. It finds
//! the smallest read size and queue depth that reach 95% of the device's
//! peak sequential read rate, then the highest zstd level whose throughput
//! on a sample of the device's own data, on the cores available, still keeps
//! up with that rate; and it turns the result into a profile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::codec::is_zero;
use crate::codec::Encoder;
use crate::error::Left;
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::io::device::OpenMode;
use crate::io::Request;
use crate::io::{self, device::Source, Backend, IoChoice};
use crate::observe::Observer;
use crate::pipeline::lanes::available_cores;
use crate::profile::Profile;
use crate::units::format_size;

/// How to run `tune`.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    pub device: PathBuf,
    pub io: IoChoice,
    /// Upper bound of one read measurement.
    pub step_time: Duration,
    /// Upper bound of bytes read by one read measurement.
    pub step_bytes: u64,
}

impl TuneOptions {
    pub fn new(device: impl Into<PathBuf>) -> TuneOptions {
        TuneOptions {
            device: device.into(),
            io: IoChoice::Auto,
            step_time: Duration::from_millis(400),
            step_bytes: 1 << 30,
        }
    }
}

/// One read measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ReadStep {
    pub read_bytes: u64,
    /// Reads in flight in total (one ring).
    pub queue_depth: u32,
    pub mb_per_s: f64,
}

/// One compression measurement on the device's sample.
#[derive(Debug, Clone, Serialize)]
pub struct LevelStep {
    pub level: i32,
    /// Source bytes per second one core compresses (zero chunks count, free).
    pub mb_per_s_per_core: f64,
    /// On every available core.
    pub projected_mb_per_s: f64,
    /// Sample bytes ÷ stored bytes.
    pub ratio: f64,
}

/// What `tune` measured and chose.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub device: String,
    pub size_bytes: u64,
    pub io_backend: String,
    pub reads: Vec<ReadStep>,
    pub peak_mb_per_s: f64,
    pub chosen_read_bytes: u64,
    pub chosen_total_queue_depth: u32,
    pub cores: u32,
    pub sample_bytes: u64,
    pub levels: Vec<LevelStep>,
    pub chosen_level: i32,
    pub keeps_up: bool,
    pub profile: Profile,
}

const READ_SIZES: [u64; 3] = [256 << 10, 1 << 20, 4 << 20];
const QUEUE_DEPTHS: [u32; 6] = [1, 2, 4, 8, 16, 32];
const LEVELS: [i32; 11] = [-5, -3, -1, 1, 2, 3, 4, 5, 6, 7, 9];

/// Sequential O_DIRECT reads from `start` for at most `time` or `bytes`.
fn read_rate(
    src: &Source,
    backend: Backend,
    read_bytes: u64,
    qd: u32,
    start: u64,
    time: Duration,
    bytes: u64,
) -> Result<f64> {
    let mut ring = io::open(&backend, &vec![read_bytes as usize; qd as usize], 1, qd)
        .map_err(|e| Error::io("set up the I/O ring for", &src.path, e))?;
    ring.set_file(0, Some(src.reopen()?)).map_err(|e| Error::io("register", &src.path, e))?;
    let end = src.size_bytes / read_bytes * read_bytes;
    let mut next = start.min(end.saturating_sub(read_bytes)) / read_bytes * read_bytes;
    let mut free: Vec<usize> = (0..qd as usize).collect();
    let (mut done, started) = (0u64, Instant::now());
    loop {
        // A signal stops the step; what is in flight drains below.
        let stop = started.elapsed() >= time || done >= bytes || crate::observe::interrupted();
        if !stop {
            while let Some(b) = free.pop() {
                if next + read_bytes > end {
                    next = 0; // wrap around: small devices are read again
                }
                ring.enqueue_read(Request {
                    slot: 0,
                    buf: b,
                    buf_offset: 0,
                    len: read_bytes as usize,
                    file_offset: next,
                    tag: b as u64,
                });
                next += read_bytes;
            }
        }
        if ring.in_flight() == 0 {
            break;
        }
        ring.flush(1).map_err(|e| Error::io("read", &src.path, e))?;
        while let Some(c) = ring.pop_completion() {
            let n = c.result.map_err(|e| Error::io("read", &src.path, e))?;
            done += n as u64;
            free.push(c.user_data as usize);
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Measure a device: read rates at every read size × queue depth, then
/// zstd levels on a sample of its data; choose settings and a profile.
pub fn tune(opts: &TuneOptions, obs: &dyn Observer) -> Result<TuneReport> {
    let backend = io::select(&opts.io, obs)?;
    let src = Source::open(&opts.device, OpenMode::Direct)?;
    if !src.direct {
        obs.note(&format!("{}: O_DIRECT refused; rates include the page cache", src.path.display()));
    }
    let reads = measure_reads(opts, &src, &backend, obs)?;
    let peak = reads.iter().map(|r| r.mb_per_s).fold(0.0, f64::max);
    // The cheapest setting within 95% of the peak: least memory in flight, then fewest reads in flight.
    let chosen = reads
        .iter()
        .filter(|r| r.mb_per_s >= 0.95 * peak)
        .min_by_key(|r| (r.read_bytes * u64::from(r.queue_depth), r.queue_depth))
        .expect("the peak itself qualifies")
        .clone();
    // Compression: a sample of the device's own data, 32 chunks spread over it.
    let chunk = chosen.read_bytes.max(64 << 10);
    let sample = read_sample(&src, chunk, 32)?;
    let cores = available_cores();
    let levels = measure_levels(&sample, chunk, cores)?;
    let (chosen_level, keeps_up) = choose_level(&levels, peak);
    let profile = tuned_profile(
        &src,
        &backend,
        Chosen { peak, chunk, level: chosen_level, keeps_up, cores, queue_depth: chosen.queue_depth },
    );
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }
    Ok(TuneReport {
        device: src.path.display().to_string(),
        size_bytes: src.size_bytes,
        io_backend: backend.name().into(),
        reads,
        peak_mb_per_s: peak,
        chosen_read_bytes: chosen.read_bytes,
        chosen_total_queue_depth: chosen.queue_depth,
        cores,
        sample_bytes: sample.len() as u64,
        levels,
        chosen_level,
        keeps_up,
        profile,
    })
}

/// Every read size at every queue depth, each from a fresh offset so a
/// device cache does not serve a step from the previous one.
fn measure_reads(opts: &TuneOptions, src: &Source, backend: &Backend, obs: &dyn Observer) -> Result<Vec<ReadStep>> {
    let usable: Vec<u64> = READ_SIZES.iter().copied().filter(|&r| r <= src.size_bytes).collect();
    if usable.is_empty() {
        return Err(Error::Unusable {
            path: src.path.clone(),
            reason: Refusal::TooSmall,
            why: "too small to tune (under 256 KiB)".into(),
        });
    }
    let mut reads = Vec::new();
    let steps = (usable.len() * QUEUE_DEPTHS.len()) as u64;
    for (i, &rb) in usable.iter().enumerate() {
        for (j, &qd) in QUEUE_DEPTHS.iter().enumerate() {
            let k = (i * QUEUE_DEPTHS.len() + j) as u64;
            obs.progress(k, steps);
            let start = src.size_bytes / steps * k;
            let rate = read_rate(src, backend.clone(), rb, qd, start, opts.step_time, opts.step_bytes)?;
            if crate::observe::interrupted() {
                return Err(Error::interrupted(
                    Left::NothingChanged,
                    "tune stopped by a signal; it only reads the device, and no profile was written".into(),
                ));
            }
            reads.push(ReadStep { read_bytes: rb, queue_depth: qd, mb_per_s: rate });
        }
    }
    obs.progress(steps, steps);
    Ok(reads)
}

/// Each of [`LEVELS`] on the sample: rate per core, projected over `cores`, and ratio.
fn measure_levels(sample: &[u8], chunk: u64, cores: u32) -> Result<Vec<LevelStep>> {
    let mut levels = Vec::new();
    let mut out = vec![0u8; chunk as usize];
    for level in LEVELS {
        let mut enc = Encoder::new(level).map_err(|e| Error::InvalidSetting(format!("zstd level {level}: {e}")))?;
        let started = Instant::now();
        let mut stored = 0u64;
        for c in sample.chunks(chunk as usize) {
            if is_zero(c) {
                continue;
            }
            stored += enc.encode(c, &mut out[..c.len()]).1 as u64;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let per_core = sample.len() as f64 / secs / 1e6;
        levels.push(LevelStep {
            level,
            mb_per_s_per_core: per_core,
            projected_mb_per_s: per_core * f64::from(cores),
            ratio: sample.len() as f64 / stored.max(1) as f64,
        });
    }
    Ok(levels)
}

/// Among the levels that keep up with the read rate, the best ratio; a
/// higher level that stores no less (within 1%: incompressible or all-zero
/// data) is not worth its CPU, so ties go to the lowest level. If none
/// keeps up, the fastest. Returns the level and whether it keeps up.
fn choose_level(levels: &[LevelStep], peak: f64) -> (i32, bool) {
    let keeping: Vec<&LevelStep> = levels.iter().filter(|l| l.projected_mb_per_s >= peak).collect();
    if keeping.is_empty() {
        let fastest = levels.iter().max_by(|a, b| a.projected_mb_per_s.total_cmp(&b.projected_mb_per_s));
        return (fastest.expect("levels").level, false);
    }
    let best = keeping.iter().map(|l| l.ratio).fold(0.0, f64::max);
    (keeping.iter().filter(|l| l.ratio >= best * 0.99).map(|l| l.level).min().expect("non-empty"), true)
}

/// What the measurements chose.
struct Chosen {
    peak: f64,
    chunk: u64,
    level: i32,
    keeps_up: bool,
    cores: u32,
    /// Reads in flight over all lanes.
    queue_depth: u32,
}

/// The profile a tuned device gets.
fn tuned_profile(src: &Source, backend: &Backend, c: Chosen) -> Profile {
    let name = src.path.file_name().map_or("device".into(), |n| n.to_string_lossy().into_owned());
    Profile {
        name: Some(format!("tuned-{name}")),
        description: Some(format!(
            "measured by tintype tune on {}: peak read {:.0} MB/s; zstd {} {} on {} cores",
            src.path.display(),
            c.peak,
            c.level,
            if c.keeps_up { "keeps up" } else { "is the fastest measured but does not keep up" },
            c.cores
        )),
        queue_depth: Some(c.queue_depth.div_ceil(c.cores).max(1)),
        read_size: Some(format_size(c.chunk)),
        chunk_size: Some(format_size(c.chunk)),
        level: Some(c.level),
        lanes: None,
        segment_size: None,
        io: Some(match backend.name() {
            "io_uring" => "uring".into(),
            _ => "portable".into(),
        }),
    }
}

/// `count` chunks read at evenly spread offsets.
fn read_sample(src: &Source, chunk: u64, count: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let chunks = (src.size_bytes / chunk).max(1);
    let count = count.min(chunks);
    let mut buf = crate::io::AlignedBuf::new(chunk as usize);
    let mut sample = Vec::with_capacity((chunk * count) as usize);
    for i in 0..count {
        let offset = chunks * i / count * chunk;
        let n = src
            .file
            .read_at(buf.as_mut_slice(), offset)
            .map_err(|e| Error::io_at("read sample from", &src.path, offset, e))?;
        sample.extend_from_slice(&buf.as_slice()[..n]);
    }
    Ok(sample)
}

/// Write `profile` to `path` (never replacing an existing file).
pub fn write_profile(profile: &Profile, path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create profile", path, e))?;
    let text = format!("# Written by `tintype tune`; see docs/TUNING.md for the schema.\n{}", profile.to_toml());
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io("write profile", path, e))
}
