//! Reading the source: the run's files prepared (what an interrupted run
//! left salvaged, or a new run recorded; a fresh index; the chunks that need
//! no reading preset), then every chunk read through the capture lanes.

use super::preset::Preset;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lane::shared::{CaptureShared, LaneReport};
use super::lane::CaptureLane;
use super::options::{staging_bytes, CreateOptions, BATCH_BYTES};
use super::salvage::{keep_unreadable, salvage};
use super::used_space::used_space;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::manifest::{LayoutInfo, SegmentInfo, SourceInfo};
use crate::format::names::{index_file_name, journal_file_name};
use crate::format::ImageId;
use crate::io::device::Source;
use crate::io::device::{write_stamp, WriteStamp};
use crate::io::Backend;
use crate::observe::{interrupted, test_pause, Observer};
use crate::pipeline::capture::start::ParentHashes;
use crate::pipeline::capture::start::Start;
use crate::pipeline::lanes::run_lanes;
use crate::pipeline::lanes::Pinning;
use crate::pipeline::plan::Plan;
use crate::set::index_writer::Existing;
use crate::set::index_writer::IndexFile;
use crate::set::remove::Leftovers;
use crate::set::run_record::{unix_now, RunOperation, RunRecord};
use crate::set::ImageSet;

/// One run of `create`, once it is decided what it is.
pub(super) struct Run<'a> {
    pub opts: &'a CreateOptions,
    pub set: &'a ImageSet,
    pub source: &'a Source,
    pub src: SourceInfo,
    pub st: Start,
    pub lanes: u32,
    pub backend: Backend,
    pub id: ImageId,
    pub chunk_count: u64,
    pub index_path: PathBuf,
    /// The run's journal of unreadable ranges (`ID.unreadable`).
    pub journal: PathBuf,
    /// For a differential or incremental: the parent's raw hash per chunk.
    pub parent_hashes: Option<ParentHashes>,
    /// The source's write stamp before the reads: recorded for `--resume`,
    /// and compared after them to tell a source written while it was read.
    pub stamp_at_start: Option<WriteStamp>,
}

/// What the run has on disk before its lanes start.
pub(super) struct Prepared {
    pub index: IndexFile,
    /// Per chunk, the entry it already has: kept by a resumed run, or
    /// unused by any filesystem.
    pub preset: Preset,
    pub layout: Option<LayoutInfo>,
    /// The segments a resumed run keeps.
    pub kept_segments: Vec<SegmentInfo>,
    /// The unreadable ranges of the chunks a resumed run keeps.
    pub unreadable_kept: Vec<(u64, u64)>,
}

/// What the lanes did.
pub(super) struct Imaged {
    pub reports: Vec<LaneReport>,
    pub wall: Duration,
    pub batch_chunks: u64,
    /// Every unreadable source range, adjacent pieces joined, sorted.
    pub unreadable: Vec<(u64, u64)>,
}

impl<'a> Run<'a> {
    pub fn new(
        opts: &'a CreateOptions,
        set: &'a ImageSet,
        source: &'a Source,
        src: SourceInfo,
        st: Start,
        lanes: u32,
        backend: Backend,
    ) -> Result<Run<'a>> {
        let parent_hashes = st.parent.as_ref().map(|p| ParentHashes::load(set, p)).transpose()?;
        let id = st.id;
        Ok(Run {
            opts,
            set,
            source,
            src,
            lanes,
            backend,
            id,
            chunk_count: source.size_bytes.div_ceil(u64::from(st.chunk_bytes)),
            index_path: set.dir.join(index_file_name(id)),
            journal: set.dir.join(journal_file_name(id)),
            parent_hashes,
            // Whether the source is written while it is read (it is refused
            // when a filesystem on it is mounted read-write, but a program
            // can write a file or a device directly) is told from the same
            // stamps --resume uses: one before the reads, one after.
            stamp_at_start: write_stamp(&source.path),
            st,
        })
    }

    /// The parent's hashes and ID, for change detection.
    pub fn parent(&self) -> Option<&ParentHashes> {
        self.parent_hashes.as_ref()
    }

    /// Salvage what an interrupted run left (or record this new run), make
    /// a fresh index, and preset the chunks that need no reading.
    pub fn prepare(&self, obs: &dyn Observer) -> Result<Prepared> {
        let (mut preset, kept_segments, unreadable_kept) = match &self.st.resumed {
            Some(_) => self.salvage(obs)?,
            None => {
                self.record().write_new(&self.set.dir)?;
                (Preset::new(self.st.chunk_bytes, self.source.size_bytes), Vec::new(), Vec::new())
            }
        };
        // A fresh index (a resumed run's own is emptied: what it keeps is in
        // `preset`), then the entries known without reading.
        let existing = if self.st.resumed.is_some() { Existing::Reuse } else { Existing::Refuse };
        let index = IndexFile::create(&self.index_path, self.chunk_count, existing)?;
        let layout = used_space(self.opts.used_only, self.source, self.st.chunk_bytes, &mut preset, obs)?;
        // What a resumed run kept one chunk at a time goes into the table
        // too, so a run stopped again keeps it again (unused runs are found
        // again; zero and inherited runs kept from a finished index are
        // read again).
        index.write_singles(preset.singles())?;
        Ok(Prepared { index, preset, layout, kept_segments, unreadable_kept })
    }

    /// Resuming: the entries, segments and unreadable ranges kept.
    #[allow(clippy::type_complexity)]
    fn salvage(&self, obs: &dyn Observer) -> Result<(Preset, Vec<SegmentInfo>, Vec<(u64, u64)>)> {
        let (id, cb, size) = (self.id, self.st.chunk_bytes, self.source.size_bytes);
        let mut s = salvage(&self.set.dir, id, cb, size, self.parent())?;
        let unreadable = keep_unreadable(&self.journal, &mut s.preset, cb, size, self.opts.on_read_error, obs)?;
        let known = s.preset.known();
        obs.note(&format!(
            "resuming image {id}: {} frame(s) in {} segment(s) kept, {known} of {} chunks already done",
            s.kept,
            s.segments.len(),
            self.chunk_count
        ));
        Ok((s.preset, s.segments, unreadable))
    }

    /// The record a new run leaves until its image is committed.
    fn record(&self) -> RunRecord {
        RunRecord {
            format: "tintype-run".into(),
            format_version: 1,
            image_id: self.id.to_string(),
            operation: RunOperation::Create,
            kind: self.st.kind,
            parent: self.st.parent.as_ref().map(|p| p.id().to_string()),
            source: self.src.clone(),
            chunk_size_bytes: self.st.chunk_bytes,
            level: self.st.level,
            started_unix_seconds: unix_now(),
            source_written: self.stamp_at_start.clone(),
        }
    }

    /// Read every chunk through the lanes. On failure, a run that wrote
    /// frames keeps them for `--resume` (the guard is disarmed) and one that
    /// wrote nothing is removed.
    pub fn read_all(&self, p: &Prepared, unfinished: &mut Leftovers<'_>, obs: &dyn Observer) -> Result<Imaged> {
        let (cb, opts) = (self.st.chunk_bytes, self.opts);
        // Batches of up to 64 MiB keep each lane's reads sequential; a small
        // source gets smaller batches so every lane has a share.
        // Only the chunks nothing is known of are handed out: time follows
        // what is read, not the size of the device.
        let plan = Plan::over(&p.preset.to_read(self.chunk_count), self.lanes, BATCH_BYTES / u64::from(cb));
        let batch_chunks = plan.batch_chunks();
        let stop = AtomicBool::new(false);
        let unreadable = std::sync::Mutex::new((p.unreadable_kept.clone(), None));
        let sh = CaptureShared {
            image_id: self.id,
            dir: &self.set.dir,
            source: self.source,
            chunk_bytes: cb,
            queue_depth: opts.queue_depth,
            segment_size_bytes: opts.segment_size_bytes,
            staging_bytes: staging_bytes(cb, opts.staging_bytes),
            level: self.st.level,
            backend: self.backend.clone(),
            plan,
            index: &p.index,
            stop: &stop,
            bytes_done: AtomicU64::new(p.preset.known_bytes()),
            next_segment: AtomicU32::new(p.kept_segments.len() as u32),
            parent: self.parent(),
            on_read_error: opts.on_read_error,
            read_retries: opts.read_retries.min(100),
            unreadable: &unreadable,
            journal: &self.journal,
        };
        let started = Instant::now();
        let reports = match run_capture_lanes(&sh, self.lanes, obs) {
            Ok(r) => r,
            Err(e) => return Err(self.stopped(e, sh.next_segment.load(Ordering::Relaxed) > 0, unfinished, obs)),
        };
        let wall = started.elapsed();
        test_pause("create-read-all");
        self.note_written_meanwhile(obs);
        let unreadable = joined(unreadable.into_inner().unwrap_or_else(|p| p.into_inner()).0);
        Ok(Imaged { reports, wall, batch_chunks, unreadable })
    }

    /// The lanes failed or were stopped: what is kept, and said.
    fn stopped(&self, e: Error, wrote: bool, unfinished: &mut Leftovers<'_>, obs: &dyn Observer) -> Error {
        let id = self.id;
        unfinished.armed &= !wrote;
        let kept = format!(
            "the unfinished image {id}'s files are kept in {}: run the same command with --resume to carry on \
             where it stopped",
            self.set.dir.display()
        );
        match e {
            Error::Interrupted { .. } if interrupted() && wrote => {
                Error::interrupted(Left::Resumable, format!("no image was committed; {kept}"))
            }
            Error::Interrupted { .. } if interrupted() => Error::interrupted(
                Left::NothingChanged,
                format!("no image was committed; the unfinished image {id} had written nothing and was removed"),
            ),
            e => {
                if wrote {
                    obs.note(&kept);
                }
                e
            }
        }
    }

    /// Say so when the source was written while it was read.
    fn note_written_meanwhile(&self, obs: &dyn Observer) {
        if let (Some(was), Some(now)) = (&self.stamp_at_start, write_stamp(&self.source.path)) {
            if was.boot == now.boot && was.stamp != now.stamp {
                obs.note(&format!(
                    "the source was written while it was being imaged ({} then, {} now): the image may mix older \
                     and newer contents; for one consistent point in time image it unmounted, frozen (--freeze), or \
                     from a snapshot",
                    was.stamp, now.stamp
                ));
            }
        }
    }
}

/// Unreadable pieces (one per chunk) sorted, adjacent ones joined.
pub(crate) fn joined(mut pieces: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    pieces.sort_unstable();
    pieces.into_iter().fold(Vec::new(), |mut v: Vec<(u64, u64)>, (o, l)| {
        match v.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => v.push((o, l)),
        }
        v
    })
}

/// Run `lanes` capture lanes, each pinned to a core, reporting progress
/// from this thread until they finish.
pub(crate) fn run_capture_lanes(sh: &CaptureShared<'_>, lanes: u32, obs: &dyn Observer) -> Result<Vec<LaneReport>> {
    // Lanes set up (rings, buffers) first and start claiming together, so a
    // quick first lane does not take a small source's every batch.
    let start = std::sync::Barrier::new(lanes as usize);
    let total = sh.source.size_bytes;
    run_lanes(
        lanes,
        "tintype-lane",
        Pinning::PinToCores,
        sh.stop,
        || obs.progress(sh.bytes_done.load(Ordering::Relaxed), total),
        |lane| {
            let lane = CaptureLane::new(sh, lane);
            start.wait();
            lane.and_then(|l| l.run())
        },
    )
}
