//! `create`: image a source into a set, as named steps — [`options`]
//! (what was asked), `start.rs` (what this run is), `salvage.rs` (what an
//! interrupted run left), `used_space.rs` (what needs no reading), `run.rs`
//! (the lanes read the source), `finish.rs` (index, manifest, commit) — and
//! the capture [`lane`]: one core's ring, buffers, compressor and writer.

mod finish;
pub mod lane;
pub mod options;
mod preset;
mod run;
mod salvage;
mod start;
mod used_space;

pub use options::{
    CreateOptions, CreateReport, OnReadError, UsedOnly, DEFAULT_CHUNK_BYTES, DEFAULT_LEVEL, DEFAULT_QUEUE_DEPTH,
    DEFAULT_SEGMENT_BYTES,
};

use std::path::Path;

use self::options::validate;
use self::run::Run;
use self::start::{source_info, start, Start};
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::format::manifest::rfc3339_utc;
use crate::io::device::OpenMode;
use crate::io::device::Source;
use crate::io::quiesce::check_mounts;
use crate::io::{self};
use crate::observe::Observer;
use crate::pipeline::lanes::available_cores;
use crate::set::image::Image;
use crate::set::lock::{lock_set, Access};
use crate::set::remove::Leftovers;
use crate::set::ImageSet;

/// Image `opts.source` into the set `opts.set`: the steps, each in its own
/// file — settle the options, decide what this run is (`start.rs`), prepare
/// its files (salvaging what an interrupted run left, mapping used space),
/// read the source through the lanes (`run.rs`), then write the index and
/// commit the manifest (`finish.rs`).
pub fn create(opts: &CreateOptions, obs: &dyn Observer) -> Result<CreateReport> {
    validate(opts)?;
    let backend = io::select(&opts.io, obs)?;
    let source = open_source(&opts.source, obs)?;
    let set = ImageSet::create_or_open(&opts.set)?;
    let lock = lock_set(&set.dir, Access::Add, &format!("create {}", opts.source.display()))?;
    if let Some(stale) = &lock.stale {
        obs.note(&format!("took over the set's lock from a run that did not finish ({stale})"));
    }
    let src = source_info(&source);
    // Thawed when dropped: after the commit, or after the guard below has
    // removed a failed run's files.
    let _frozen = check_mounts(&source, opts.when_mounted, obs)?;
    let st = start(opts, &set, &src, obs)?;
    note_clock(st.parent.as_ref(), obs);
    let lanes = settle_lanes(opts, &st, &source)?;
    let run = Run::new(opts, &set, &source, src, st, lanes, backend)?;
    // A run that wrote frames keeps them for `--resume`; one that wrote
    // nothing worth resuming is removed on failure.
    let mut unfinished = Leftovers { dir: &set.dir, id: run.id, armed: run.st.resumed.is_none() };
    let prepared = run.prepare(obs)?;
    let imaged = run.read_all(&prepared, &mut unfinished, obs)?;
    let report = finish::commit(&run, prepared, imaged, &mut unfinished, obs)?;
    drop(lock);
    Ok(report)
}

/// Open the source read-only (O_DIRECT where its filesystem allows it).
pub(crate) fn open_source(path: &Path, obs: &dyn Observer) -> Result<Source> {
    let source = Source::open(path, OpenMode::Direct)?;
    if !source.direct {
        obs.note(&format!(
            "{}: the filesystem refuses O_DIRECT; reading through the page cache",
            source.path.display()
        ));
    }
    if source.size_bytes == 0 {
        return Err(Error::Unusable {
            path: source.path.clone(),
            reason: Refusal::EmptySource,
            why: "the source is empty (0 bytes)".into(),
        });
    }
    Ok(source)
}

/// A clock earlier than the parent's time is worth saying: one of them is wrong.
pub(crate) fn note_clock(parent: Option<&Image>, obs: &dyn Observer) {
    let Some(p) = parent else { return };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    if now < p.manifest.point_in_time() {
        obs.note(&format!(
            "the clock ({}) is earlier than the parent image {}'s time ({}): one of them is wrong; the new image \
             still counts as newer than its parent",
            rfc3339_utc((now / 1_000_000_000) as u64),
            p.id(),
            p.manifest.created
        ));
    }
}

/// The number of lanes, once the run's chunk size and level are known
/// (a resumed or incremental run takes its parent's chunk size).
pub(crate) fn settle_lanes(opts: &CreateOptions, st: &Start, source: &Source) -> Result<u32> {
    let mut o = opts.clone();
    o.chunk_size_bytes = st.chunk_bytes;
    o.level = st.level;
    if o.lanes.is_none() && st.parent.is_some() {
        // An incremental mostly reads and hashes (xxh3, ~10 GB/s a core):
        // half the cores keep up with the device and leave the rest to the
        // kernel's side of the reads (a loop device copies on the CPU).
        o.lanes = Some(available_cores().div_ceil(2));
    }
    let lanes = validate(&o)?;
    if u64::from(st.chunk_bytes) % u64::from(source.dio_align_bytes) != 0 {
        return Err(Error::InvalidSetting(format!(
            "--chunk-size {} is not a multiple of the source's direct I/O alignment {}",
            st.chunk_bytes, source.dio_align_bytes
        )));
    }
    Ok(lanes)
}
