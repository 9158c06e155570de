//! Every check that can refuse a restore, run before anything is written:
//! the target's size, sector size, mounts and contents, the image's
//! segments, and what `--allow-shrink` would cut.
use crate::codec::Decoder;
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::format::index::ChunkState;
use crate::io::quiesce::mounted_at;
use crate::io::target::describe_contents;
use crate::io::target::Target;
use crate::io::target::TargetKind;
use crate::pipeline::restore::options::RestoreOptions;
use crate::set::chain::Resolved;
use crate::set::chain::SegmentProblem;
use crate::set::chain::SegmentRef;
use crate::set::image::Image;
use crate::set::ImageSet;
use std::path::Path;
use std::path::PathBuf;

/// Every check that can refuse the restore, before anything is written.
/// Returns how many bytes of the source go to the target.
pub(crate) fn preflight(opts: &RestoreOptions, img: &Image, resolved: &Resolved) -> Result<u64> {
    let m = &img.manifest;
    let source_bytes = m.source.size_bytes;
    let path = &opts.target;
    let refuse = |reason: Refusal, why: String| Err(Error::Unusable { path: path.clone(), reason, why });
    let Some(p) = Target::probe(path)? else {
        // A new file: will the data fit on its filesystem?
        let stored: u64 = resolved
            .runs()
            .iter()
            .filter(|r| r.entry.state == ChunkState::Stored)
            .map(|r| u64::from(r.entry.raw_len))
            .sum();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if stored > free {
                return refuse(Refusal::NoSpace, format!(
                    "its filesystem has {} free, and the image's data needs {} (zero chunks become holes and need nothing)",
                    crate::units::human_bytes(free),
                    crate::units::human_bytes(stored)
                ));
            }
        }
        return Ok(source_bytes);
    };
    let (kind, size, sector, rdev) = (p.kind, p.size_bytes, p.logical_sector_bytes, p.rdev);
    if let Some(rdev) = rdev {
        if let Some(at) = mounted_at(rdev) {
            return refuse(
                Refusal::Mounted,
                format!("the device (or a partition of it) is mounted at {at}; unmount it first"),
            );
        }
    }
    if kind == TargetKind::BlockDevice && sector != m.source.logical_sector_bytes && !opts.force {
        return refuse(
            Refusal::SectorSizeDiffers,
            format!(
                "its logical sector size is {sector} bytes, the image's source had {}; partition tables and \
             filesystems laid out for one do not work on the other (use --force if you know they do)",
                m.source.logical_sector_bytes
            ),
        );
    }
    let mut limit = source_bytes;
    if kind == TargetKind::BlockDevice && size < source_bytes {
        if !opts.allow_shrink {
            return refuse(
                Refusal::TooSmall,
                format!(
                    "the device is {size} bytes ({}), smaller than the image's source, {source_bytes} bytes ({}); \
                 use a device at least that large, or --allow-shrink if everything past {size} is unused",
                    crate::units::human_bytes(size),
                    crate::units::human_bytes(source_bytes)
                ),
            );
        }
        shrink_check(img, resolved, size)?;
        limit = size;
    }
    if !opts.force {
        if let Some(what) = describe_contents(path, size)? {
            return refuse(
                Refusal::HoldsData,
                format!(
                    "it is {size} bytes ({}) and holds {what}; restoring would overwrite it. Pass --force to \
                 overwrite it anyway",
                    crate::units::human_bytes(size)
                ),
            );
        }
    }
    Ok(limit)
}

/// Every segment must be there with the size the manifest records and a
/// header naming it (FORMAT §7 check 14, the check verify applies too).
/// Under --skip-bad a segment that cannot be opened, or whose header is
/// damaged, only makes its chunks bad: returns why, per segment.
pub(crate) fn segments_present(
    opts: &RestoreOptions,
    segments: &[SegmentRef],
    chunk_bytes: u32,
) -> Result<Vec<Option<String>>> {
    let mut skipped = vec![None; segments.len()];
    for (i, s) in segments.iter().enumerate() {
        let path = &s.path;
        let (problem, whole) = match std::fs::metadata(path) {
            Err(e) => (Some(format!("cannot be opened: {e}")), true),
            Ok(md) if md.len() < s.size_bytes => {
                (Some(format!("is {} bytes, the manifest says {} (truncated)", md.len(), s.size_bytes)), false)
            }
            Ok(_) => match s.check_header(chunk_bytes) {
                Ok(()) => (None, false),
                Err(SegmentProblem::Unreadable(why)) => (Some(format!("cannot be read: {why}")), true),
                Err(SegmentProblem::Damaged(why)) => (Some(format!("is damaged: {why}")), true),
            },
        };
        let Some(problem) = problem else { continue };
        if !opts.skip_bad {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "segment {problem} (it belongs to image {}); nothing was written (--skip-bad restores every \
                     chunk it can)",
                    s.image
                ),
            ));
        }
        // A truncated segment's surviving frames are still restored; only
        // a segment that cannot be opened, or is not the segment it should
        // be, is skipped whole.
        if whole {
            skipped[i] = Some(format!("its segment {problem}"));
        }
    }
    Ok(skipped)
}

/// With --allow-shrink: every chunk past the target's end must hold only zeros.
pub(crate) fn shrink_check(img: &Image, resolved: &Resolved, limit: u64) -> Result<()> {
    // A filesystem whose free tail was recorded unused fits the data check
    // below, but past the target's end it would describe blocks that are
    // not there (unmountable): refused.
    for p in img.manifest.layout.iter().flat_map(|l| &l.partitions).filter(|p| p.used_bytes.is_some()) {
        let end = p.start_bytes.saturating_add(p.fs_bytes.unwrap_or(p.size_bytes));
        if end > limit {
            let what = if p.number == 0 { "the source's".to_string() } else { format!("partition {}'s", p.number) };
            return Err(Error::Unusable {
                reason: Refusal::ShrinkCutsData,
                path: img.dir.clone(),
                why: format!(
                    "--allow-shrink: {what} {} filesystem ends at byte {end}, past the target's end at {limit}; \
                     restored, it would describe blocks the target does not have. Shrink the filesystem first \
                     (resize2fs; XFS cannot shrink) and image it again, or restore to a target of at least {end} \
                     bytes",
                    p.filesystem
                ),
            });
        }
    }
    let mut dec = Decoder::new().map_err(|e| Error::io("create decoder for", &img.dir, e))?;
    let mut buf = vec![0u8; img.manifest.chunk_size_bytes as usize];
    let first_cut = limit / u64::from(img.manifest.chunk_size_bytes);
    let runs = resolved.runs_in(first_cut..img.manifest.chunk_count);
    for chunk in
        runs.filter(|r| !matches!(r.entry.state, ChunkState::Zero | ChunkState::Unused)).flat_map(|r| r.first..r.end())
    {
        let e = resolved.entry(chunk);
        let (start, len) = img.chunk_extent(chunk);
        if start + u64::from(len) <= limit {
            continue;
        }
        // Stored data (or unreadable) past the end: only all-zero bytes may be dropped.
        let n = resolved.read_chunk(img, chunk, &mut buf, &mut dec)?;
        let from = limit.saturating_sub(start) as usize;
        if e.state == ChunkState::Unreadable || buf[from..n].iter().any(|&b| b != 0) {
            return Err(Error::Unusable {
                reason: Refusal::ShrinkCutsData,
                path: img.dir.clone(),
                why: format!(
                    "--allow-shrink: chunk {chunk} (source offset {start}) holds data past the target's end at {limit}; \
                     the target is too small for this image"
                ),
            });
        }
    }
    Ok(())
}

/// A target that is one of the set's own files (a segment, an index, under
/// any name) would be overwritten with the image read from it: refused,
/// `--force` or not.
pub(crate) fn refuse_own_file(set: &ImageSet, target: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(mut t) = std::fs::metadata(target) else { return Ok(()) };
    let mut through = String::new();
    if t.file_type().is_block_device() {
        // A loop device (or a partition of one) over a file of the set is
        // that file too.
        let rdev = t.rdev();
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev)));
        let backing = [sys.join("loop/backing_file"), sys.join("../loop/backing_file")]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| PathBuf::from(s.trim()));
        match backing.and_then(|b| std::fs::metadata(&b).ok().map(|m| (b, m))) {
            Some((b, m)) => {
                through = format!(" (through the loop device over {})", b.display());
                t = m;
            }
            None => return Ok(()),
        }
    } else if t.is_file() {
        // A file a mounted filesystem lives in, through a loop device:
        // refused like the mounted device itself, --force or not.
        for d in crate::io::quiesce::loops_backed_by(target) {
            if let Some((at, _)) = crate::io::quiesce::mounts_of(d).into_iter().next() {
                return Err(Error::Unusable {
                    reason: Refusal::Mounted,
                    path: target.into(),
                    why: format!(
                        "it backs loop device {}:{}, whose filesystem is mounted at {at}; unmount it first",
                        d.0, d.1
                    ),
                });
            }
        }
    }
    if !t.is_file() {
        return Ok(());
    }
    let rd = std::fs::read_dir(&set.dir).map_err(|e| Error::io("list", &set.dir, e))?;
    for e in rd.flatten() {
        if let Ok(m) = e.metadata() {
            if m.dev() == t.dev() && m.ino() == t.ino() {
                return Err(Error::Unusable {
                    reason: Refusal::FileOfTheSet,
                    path: target.into(),
                    why: format!(
                        "this is {}{through}, a file of the image set being restored; restore to another file or \
                         device",
                        e.path().display()
                    ),
                });
            }
        }
    }
    Ok(())
}
