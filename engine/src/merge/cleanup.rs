//! Removal and clean-up: what no remaining image needs, the images a merge
//! replaced, and what an interrupted merge or prune left.

use std::collections::HashSet;

use crate::error::ChainBreak;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::names::parse_file_name;
use crate::format::names::removed_file_name;
use crate::format::names::FileKind;
use crate::format::ImageId;
use crate::observe::{interrupted, test_pause, Observer};
use crate::set::image::Image;
use crate::set::image::IndexHash;
use crate::set::lineage::Lineage;
use crate::set::remove::{remove_image, remove_leftovers};
use crate::set::run_record::{RunOperation, RunRecord};
use crate::set::ImageSet;

/// Deciding what nothing needs is only possible when every image can be
/// read: refuse while a manifest does not load.
pub(super) fn refuse_unreadable(set: &ImageSet) -> Result<()> {
    match set.load_all()?.unloadable.first() {
        None => Ok(()),
        Some(u) => Err(Error::BrokenChain {
            reason: ChainBreak::ManifestUnreadable,
            path: set.dir.clone(),
            image: u.id.to_string(),
            why: format!(
                "its manifest cannot be read ({}); merge and prune remove nothing while an image they cannot \
                 see might depend on what they would remove",
                u.error
            ),
        }),
    }
}

/// Finish what an interrupted merge or prune left: images already replaced
/// that nothing needs, and the files of merge runs that never committed.
pub(super) fn finish_pending(set: &ImageSet, obs: &dyn Observer) -> Result<()> {
    let removed = remove_unneeded(set, Removal::default(), obs).map_err(|e| match e {
        Error::Interrupted { why: m, .. } => Error::interrupted(
            Left::RunAgain,
            format!("finishing an earlier merge's removals {m}; nothing else was changed: run the command again"),
        ),
        e => e,
    })?;
    if !removed.is_empty() {
        obs.note(&format!("removed {} image(s) an earlier merge had replaced", removed.len()));
    }
    let images = set.load_all()?.images;
    let unfinished = set.scan()?.unfinished;
    let names: Vec<String> = match unfinished.is_empty() {
        true => Vec::new(),
        false => std::fs::read_dir(&set.dir)
            .map_err(|e| Error::io("list", &set.dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    };
    for id in unfinished {
        if is_leftover(set, id, &images, &names) {
            obs.note(&format!(
                "removing the leftovers of {id} (an interrupted merge, or a removal that did not finish)"
            ));
            remove_leftovers(&set.dir, id)?;
        }
    }
    Ok(())
}

/// Is unfinished run `id` something only a merge or a removal leaves
/// (never a create that `--resume` can carry on)?
pub(crate) fn is_leftover(set: &ImageSet, id: ImageId, images: &[Image], names: &[String]) -> bool {
    let record = RunRecord::load(&set.dir, id);
    let operation = record.as_ref().map(|r| r.operation);
    // A merge replaces committed images only: an unfinished create that a
    // manifest names is a false claim, and stays resumable.
    let replaced = operation != Some(RunOperation::Create) && images.iter().any(|i| i.manifest.replaces_id(id));
    let removing = set.dir.join(removed_file_name(id)).exists();
    // A run killed while writing its run record (before any data file):
    // the record does not parse and is all there is; nothing to resume.
    // (No create runs now: this holds the set's writers' lock.)
    let stillborn = record.is_none() && {
        let mut mine = names.iter().filter_map(|n| parse_file_name(n)).filter(|f| f.id == id).peekable();
        mine.peek().is_some() && mine.all(|f| f.kind == FileKind::RunRecord)
    };
    operation == Some(RunOperation::Merge) || replaced || removing || stillborn
}

/// What a removal may take.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Removal<'a> {
    /// Images to remove when nothing needs them (besides the images a merge
    /// replaced, which always are).
    pub candidates: &'a [ImageId],
    /// Replacements this very run wrote, checked frame by frame as they
    /// were written; any other has its segments hashed before the image it
    /// replaced goes.
    pub written_now: &'a [ImageId],
}

/// Remove the candidates, and the images a merge replaced, that no other
/// image depends on; children before parents, so a crash never leaves a
/// child whose parent is gone while the child itself is still listed.
/// Returns what was removed.
pub(super) fn remove_unneeded(set: &ImageSet, removal: Removal<'_>, obs: &dyn Observer) -> Result<Vec<ImageId>> {
    let images = set.load_all()?.images;
    let obsolete = obsolete(&images, removal.written_now, obs);
    let needed = needed(set, &images, |i| !removal.candidates.contains(&i.id()) && !obsolete.contains(&i.id()))?;
    let mut removed = Vec::new();
    for i in images.iter().rev() {
        let goes = removal.candidates.contains(&i.id()) || obsolete.contains(&i.id());
        if !goes || needed.contains(&i.id()) {
            continue;
        }
        if !removed.is_empty() {
            test_pause("between-removals");
        }
        if interrupted() {
            return Err(Error::interrupted(
                Left::RunAgain,
                format!(
                    "was stopped by a signal while removing the images no longer needed, after removing {} [{}]; \
                 every image that stays is intact",
                    removed.len(),
                    removed.iter().map(|i: &ImageId| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        obs.note(&format!("removing image {} ({}, {})", i.id(), i.manifest.kind.name(), i.manifest.created));
        remove_image(&set.dir, i.id())?;
        removed.push(i.id());
    }
    Ok(removed)
}

/// The images a merge replaced whose replacement's files are all there as
/// committed: never removed on the word of a damaged manifest. Claims that
/// do not count are said.
pub(crate) fn obsolete(images: &[Image], written_now: &[ImageId], obs: &dyn Observer) -> HashSet<ImageId> {
    let lineage = Lineage::new(images);
    let kept = |i: &Image, r: &Image, why: &str| {
        obs.note(&format!(
            "image {} is kept although image {} names it as replaced: {why}; verify {}, and remove it by hand if it \
             is bad",
            i.id(),
            r.id(),
            r.id()
        ))
    };
    let mut obsolete = HashSet::new();
    for i in images {
        let Some(r) = lineage.replacement(i.id()) else {
            // Claims that do not count: say why where the claimant is damaged.
            for r in images.iter().filter(|r| r.id() != i.id() && r.manifest.replaces_id(i.id())) {
                match r.check_files(IndexHash::Skip) {
                    Err(why) => kept(i, r, &format!("{} is damaged ({why})", r.id())),
                    Ok(()) => kept(
                        i,
                        r,
                        "it cannot stand for it (another point in time or source, or its child), so the claim is \
                         ignored",
                    ),
                }
            }
            continue;
        };
        let deep = !written_now.contains(&r.id());
        match r.check_files(IndexHash::Check).and_then(|()| if deep { r.check_segment_hashes() } else { Ok(()) }) {
            Ok(()) => {
                obsolete.insert(i.id());
            }
            Err(why) => kept(i, r, &format!("{} is damaged ({why})", r.id())),
        }
    }
    obsolete
}

/// Everything reachable through parents from the images that `stay`, and
/// from the parent of an unfinished create that `--resume` can carry on.
pub(crate) fn needed(set: &ImageSet, images: &[Image], stay: impl Fn(&Image) -> bool) -> Result<HashSet<ImageId>> {
    let lineage = Lineage::new(images);
    let resumable = set
        .scan()?
        .unfinished
        .iter()
        .filter_map(|id| RunRecord::load(&set.dir, *id))
        .filter(|r| r.operation == RunOperation::Create)
        .filter_map(|r| r.parent.as_deref().and_then(ImageId::parse))
        .filter_map(|pid| lineage.holder(pid))
        .collect::<Vec<_>>();
    let mut needed = HashSet::new();
    for start in images.iter().filter(|i| stay(i)).chain(resumable) {
        let mut cur = Some(start);
        // `insert` is false on an image already walked: also ends a loop.
        while let Some(i) = cur.filter(|i| needed.insert(i.id())) {
            cur = lineage.parent(i);
        }
    }
    Ok(needed)
}
