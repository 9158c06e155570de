//! The first step of `create`: what this run is — a new full image, an
//! incremental or differential against which parent, or the resumption of
//! an unfinished run — and whether the source is the parent's.

use std::path::{Path, PathBuf};

use super::options::CreateOptions;
use crate::error::ChainBreak;
use crate::error::Refusal;
use crate::error::Uncommitted;
use crate::error::{Error, Result};
use crate::format::index::{ChunkState, Run};
use crate::format::manifest::{ImageKind, SourceInfo};
use crate::format::ImageId;
use crate::io::device::Source;
use crate::observe::Observer;
use crate::set::chain::Resolved;
use crate::set::image::Image;
use crate::set::index_writer::Part;
use crate::set::lineage::Lineage;
use crate::set::remove::remove_leftovers;
use crate::set::run_record::{RunOperation, RunRecord};
use crate::set::{ImageSet, Scan};

/// What `create` starts from: the parent (for a differential or
/// incremental), and what an interrupted run left (for `--resume`).
pub(crate) struct Start {
    pub id: ImageId,
    pub kind: ImageKind,
    pub parent: Option<Image>,
    pub chunk_bytes: u32,
    pub level: i32,
    pub resumed: Option<RunRecord>,
}

/// The source as the manifest records it.
pub(crate) fn source_info(source: &Source) -> SourceInfo {
    SourceInfo {
        path: std::fs::canonicalize(&source.path).unwrap_or_else(|_| source.path.clone()).display().to_string(),
        kind: source.kind.name().into(),
        size_bytes: source.size_bytes,
        logical_sector_bytes: source.logical_sector_bytes,
        physical_sector_bytes: source.physical_sector_bytes,
        identity: source.identity.clone(),
    }
}

/// Identity keys that name a device or file whatever it is called today
/// (device numbers and kernel names change between boots; these do not).
pub(crate) const STABLE_IDENTITY: &[&str] = &["serial", "wwid", "model", "loop_backing_file", "device", "inode"];

/// Is `src` the source `img` was taken from? A different size or sector
/// size is always refused; a different identity unless `force`.
pub(crate) fn check_same_source(img: &Image, src: &SourceInfo, force: bool) -> Result<()> {
    let was = &img.manifest.source;
    let refuse = |why: String| {
        Err(Error::Unusable { path: PathBuf::from(&src.path), reason: Refusal::NotTheParentsSource, why })
    };
    if was.size_bytes != src.size_bytes {
        return refuse(format!(
            "the source is {} bytes, but image {} (the parent) was taken from a source of {} bytes; an incremental \
             or differential image needs the same device: take a full image (into a new set) instead",
            src.size_bytes,
            img.id(),
            was.size_bytes
        ));
    }
    if was.logical_sector_bytes != src.logical_sector_bytes {
        return refuse(format!(
            "the source has {}-byte logical sectors, image {} (the parent) was taken from one with {}; take a full \
             image instead",
            src.logical_sector_bytes,
            img.id(),
            was.logical_sector_bytes
        ));
    }
    let mut differ: Vec<String> = STABLE_IDENTITY
        .iter()
        .filter_map(|k| match (was.identity.get(*k), src.identity.get(*k)) {
            (Some(a), Some(b)) if a != b => Some(format!("{k} {a:?} then, {b:?} now")),
            (Some(a), None) => Some(format!("{k} {a:?} then, none now")),
            _ => None,
        })
        .collect();
    if was.kind != src.kind {
        differ.insert(0, format!("a {} then, a {} now", was.kind, src.kind));
    }
    if !differ.is_empty() && !force {
        return refuse(format!(
            "this does not look like the source of image {} (the parent): {}; an incremental of another device \
             would store nonsense. If it is the same device, pass --force",
            img.id(),
            differ.join(", ")
        ));
    }
    Ok(())
}

/// The parent's raw hash of every chunk, for change detection: its chain
/// resolved into runs, so memory follows what the parent stores, and a
/// chunk's hash is a binary search away.
#[derive(Debug)]
pub(crate) struct ParentHashes {
    pub id: ImageId,
    resolved: Resolved,
}

impl ParentHashes {
    /// Resolve `img`'s chain (every index it needs must be intact).
    pub fn load(set: &ImageSet, img: &Image) -> Result<ParentHashes> {
        let resolved = Resolved::load(&set.chain(img)?).map_err(|e| {
            Error::corrupt(
                img.index_path(),
                0,
                format!(
                    "the parent image {} cannot be read to find the changes against it ({e}); run `tintype verify`",
                    img.id()
                ),
            )
        })?;
        Ok(ParentHashes { id: img.id(), resolved })
    }

    /// Cut `run` (known unused before reading) where the parent's chunks
    /// are unused too: those pieces are inherited, so an unchanged
    /// image's index is one run, not one per stretch of free space.
    pub fn inherit_unused(&self, run: Run, out: &mut Vec<Part>) {
        debug_assert_eq!(run.entry.state, ChunkState::Unused);
        for held in self.resolved.runs_in(run.first..run.end()) {
            let mut entry = run.entry;
            if held.entry.state == ChunkState::Unused && held.entry.raw_len == entry.raw_len {
                (entry.state, entry.image_id) = (ChunkState::Inherited, self.id);
            }
            out.push(Part::Known(Run { first: held.first, count: held.count, entry }));
        }
    }

    /// The pieces of `chunks` a child may inherit: all but those the parent
    /// holds unreadable.
    pub fn inheritable(&self, chunks: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        let runs = self.resolved.runs_in(chunks).filter(|r| r.entry.state != ChunkState::Unreadable);
        runs.map(|r| r.first..r.end()).collect()
    }

    /// The parent's raw hash of `chunk`; None where it has none (unused
    /// or unreadable there).
    pub fn get(&self, chunk: u64) -> Option<u128> {
        let e = self.resolved.entry(chunk);
        match e.state {
            ChunkState::Stored | ChunkState::Zero => Some(e.raw_hash),
            _ => None,
        }
    }
}

/// Decide what this run is: the resumption of an unfinished run, or a new
/// image and its parent.
pub(crate) fn start(opts: &CreateOptions, set: &ImageSet, src: &SourceInfo, obs: &dyn Observer) -> Result<Start> {
    let scan = set.scan()?;
    let images = set.load_all()?.images;
    // A run started afresh because its source changed keeps its kind and
    // chunk size.
    let mut fresh = Fresh { kind: opts.kind, chunk_bytes: opts.chunk_size_bytes };
    if opts.resume {
        match resume(opts, set, &scan, &images, src, obs)? {
            Resumed::Run(st) => return Ok(*st),
            Resumed::Restart(f) => fresh = f,
            Resumed::Nothing => obs.note("--resume: no unfinished run of this source in the set; starting a new image"),
        }
    }
    new_image(opts, set, &scan, &images, src, fresh)
}

/// What a new image starts from when not the options' own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fresh {
    kind: ImageKind,
    chunk_bytes: u32,
}

/// What `--resume` found.
enum Resumed {
    /// An unfinished run of this source to carry on.
    Run(Box<Start>),
    /// One whose source was written since: removed, and a new image of
    /// its kind and chunk size to start.
    Restart(Fresh),
    /// None.
    Nothing,
}

/// `--resume`: the newest unfinished create of this source, if any, and
/// whether its frames are still the source's bytes.
fn resume(
    opts: &CreateOptions,
    set: &ImageSet,
    scan: &Scan,
    images: &[Image],
    src: &SourceInfo,
    obs: &dyn Observer,
) -> Result<Resumed> {
    let mut runs: Vec<RunRecord> = scan
        .unfinished
        .iter()
        .filter_map(|id| RunRecord::load(&set.dir, *id))
        .filter(|r| r.operation == RunOperation::Create && r.source.size_bytes == src.size_bytes)
        .filter(|r| check_same_identity(&r.source, src) || (opts.force && r.source.path == src.path))
        .collect();
    runs.sort_by_key(|r| r.started_unix_seconds);
    let Some(run) = runs.pop() else { return Ok(Resumed::Nothing) };
    let id = ImageId::parse(&run.image_id).expect("checked on load");
    if opts.kind != ImageKind::Full && opts.kind != run.kind {
        return Err(Error::InvalidSetting(format!(
            "--resume: the unfinished run {id} is {} image, not {} one",
            run.kind.a(),
            opts.kind.a()
        )));
    }
    if let Some(cs) = opts.chunk_size_given.then_some(opts.chunk_size_bytes).filter(|&cs| cs != run.chunk_size_bytes) {
        return Err(Error::InvalidSetting(format!(
            "--resume: the unfinished run {id} uses {}-byte chunks, not {cs}",
            run.chunk_size_bytes
        )));
    }
    if let Some(why) = written_since(&run, src, set, obs) {
        obs.note(&format!(
            "--resume: the source was written since the unfinished run {id} started ({why}): its frames may no \
             longer be the source's bytes, so they are removed and a new {} image is started",
            run.kind.name()
        ));
        remove_leftovers(&set.dir, id)?;
        return Ok(Resumed::Restart(Fresh { kind: run.kind, chunk_bytes: run.chunk_size_bytes }));
    }
    let parent = resumed_parent(&run, id, set, images)?;
    if let Some(p) = &parent {
        check_same_source(p, src, opts.force)?;
        set.chain(p)?;
    }
    if !runs.is_empty() {
        obs.note(&format!("{} older unfinished run(s) of this source are left as they are", runs.len()));
    }
    Ok(Resumed::Run(Box::new(Start {
        id,
        kind: run.kind,
        parent,
        chunk_bytes: run.chunk_size_bytes,
        // Every frame says how it is stored: the rest may use another level.
        level: opts.level,
        resumed: Some(run),
    })))
}

/// Why the unfinished run's source counts as written since it started, if
/// it does (after a restart it cannot be told: said, and kept).
fn written_since(run: &RunRecord, src: &SourceInfo, set: &ImageSet, obs: &dyn Observer) -> Option<String> {
    match source_since(run, src) {
        SourceSince::Unchanged => None,
        SourceSince::Restarted => {
            obs.note(&format!(
                "--resume: the machine restarted since the unfinished run {} started, so whether the source was \
                 written meanwhile cannot be told; its frames are kept as the source's bytes. If it may have been \
                 written, discard them (tintype prune {} --discard-unfinished) and image again",
                run.image_id,
                set.dir.display()
            ));
            None
        }
        SourceSince::Written(why) => Some(why),
    }
}

/// The parent of a resumed run: its own, or the image a merge wrote in its
/// place; gone is an error.
fn resumed_parent(run: &RunRecord, id: ImageId, set: &ImageSet, images: &[Image]) -> Result<Option<Image>> {
    let Some(pid) = run.parent.as_deref().and_then(ImageId::parse) else { return Ok(None) };
    let found = Lineage::new(images).holder(pid).cloned();
    found.map(Some).ok_or_else(|| Error::BrokenChain {
        reason: ChainBreak::ParentMissing,
        path: set.dir.clone(),
        image: id.to_string(),
        why: format!(
            "the unfinished run's parent {pid} is no longer in the set; it cannot be resumed (remove its files with \
             `tintype prune {} --discard-unfinished` and take a new image)",
            set.dir.display()
        ),
    })
}

/// A new image: its ID, and for a differential or incremental its parent
/// (whose chunk size it takes).
fn new_image(
    opts: &CreateOptions,
    set: &ImageSet,
    scan: &Scan,
    images: &[Image],
    src: &SourceInfo,
    fresh: Fresh,
) -> Result<Start> {
    let kind = fresh.kind;
    let parent = parent_for(kind, set, images)?;
    let mut chunk_bytes = fresh.chunk_bytes;
    if let Some(p) = parent {
        check_same_source(p, src, opts.force)?;
        // The whole chain must be there for the new image to be usable.
        set.chain(p)?;
        let given = opts.chunk_size_given.then_some(opts.chunk_size_bytes);
        if let Some(cs) = given.filter(|&cs| cs != p.manifest.chunk_size_bytes) {
            return Err(Error::InvalidSetting(format!(
                "--chunk-size {cs}: the parent image {} uses {}-byte chunks, and {} image must use the same",
                p.id(),
                p.manifest.chunk_size_bytes,
                kind.a()
            )));
        }
        chunk_bytes = p.manifest.chunk_size_bytes;
    }
    let id = match opts.image_id {
        Some(id) if scan.holds(id) => {
            return Err(Error::InvalidSetting(format!("image {id} already exists in {}", set.dir.display())))
        }
        Some(id) => id,
        None => scan.fresh_id(),
    };
    Ok(Start { id, kind, parent: parent.cloned(), chunk_bytes, level: opts.level, resumed: None })
}

/// The parent a new image of `kind` takes changes against: the newest image
/// (incremental) or the newest full image (differential). Images a merge
/// has already replaced are on their way out: never a parent.
fn parent_for<'a>(kind: ImageKind, set: &ImageSet, images: &'a [Image]) -> Result<Option<&'a Image>> {
    let lineage = Lineage::new(images);
    let mut live = images.iter().filter(|i| lineage.replacement(i.id()).is_none());
    Ok(match kind {
        ImageKind::Full => None,
        ImageKind::Incremental => Some(live.next_back().ok_or_else(|| no_parent(set, "image"))?),
        ImageKind::Differential => {
            Some(live.rev().find(|i| i.manifest.kind == ImageKind::Full).ok_or_else(|| no_parent(set, "full image"))?)
        }
    })
}

/// What became of the source since an unfinished run started.
pub(crate) enum SourceSince {
    Unchanged,
    /// Written (through this kernel): why we know.
    Written(String),
    /// The machine restarted: its block devices' write counters started over.
    Restarted,
}

pub(crate) fn source_since(run: &RunRecord, src: &SourceInfo) -> SourceSince {
    let (Some(was), Some(now)) = (&run.source_written, crate::io::device::write_stamp(Path::new(&src.path))) else {
        return SourceSince::Unchanged;
    };
    if was.racy {
        SourceSince::Written(format!(
            "the source's filesystem keeps whole seconds and it was changed in the second the run started, so a \
             later write cannot be told from none ({})",
            was.stamp
        ))
    } else if was.stamp == now.stamp && was.boot == now.boot {
        SourceSince::Unchanged
    } else if was.boot != now.boot {
        SourceSince::Restarted
    } else {
        SourceSince::Written(format!("{} then, {} now", was.stamp, now.stamp))
    }
}

pub(crate) fn check_same_identity(a: &SourceInfo, b: &SourceInfo) -> bool {
    a.kind == b.kind && STABLE_IDENTITY.iter().all(|k| a.identity.get(*k) == b.identity.get(*k))
}

pub(crate) fn no_parent(set: &ImageSet, what: &str) -> Error {
    Error::NotCommitted {
        reason: Uncommitted::NoParent,
        path: set.dir.clone(),
        why: format!("the set holds no {what} to take changes against; take a full image first"),
    }
}
