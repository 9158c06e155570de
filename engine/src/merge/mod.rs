//! `merge` and `prune`: consolidate images without reading the source, and
//! keep a retention window.
//!
//! Committed files are never modified, so consolidating writes a **new**
//! image: the same point in time as the image it consolidates, its frames
//! copied (headers rewritten to the new Image ID, payloads byte for byte,
//! each payload's hash checked on the way) from the images it folds, its
//! manifest listing the image it `replaces`. Children of the replaced image
//! resolve their parent to the new one (`set::lineage::Lineage::parent`). Only once the
//! new image is committed are images that nothing needs any more removed,
//! manifest first. A crash at any moment leaves the old chain, or the new
//! one, or both (with the obsolete images removed by the next merge or
//! prune), and every committed image restorable.

mod cleanup;
mod consolidate;
pub mod options;
pub mod prune;
pub mod retention;

use self::cleanup::{finish_pending, refuse_unreadable, remove_unneeded, Removal};
use self::consolidate::consolidate;
pub use self::options::{Consolidated, MergeOptions, MergeReport, MergeSpan};
pub use self::prune::{prune, Kept, PruneOptions, PruneReport};
pub use self::retention::Retention;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::ImageId;
use crate::observe::{interrupted, test_pause, Observer};
use crate::set::lineage::Lineage;
use crate::set::lock::{lock_set, Access};
use crate::set::ImageSet;

/// Consolidate an image into its parent (or, with `full`, its whole chain
/// into a synthetic full image).
pub fn merge(opts: &MergeOptions, obs: &dyn Observer) -> Result<MergeReport> {
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Delete, &format!("merge {}", opts.image))?;
    refuse_unreadable(&set)?;
    {
        // An image a merge already replaced is on its way out: say which
        // image stands for it, before finishing its removal.
        let images = set.load_all()?.images;
        let img = set.resolve(Some(&opts.image))?;
        if let Some(r) = Lineage::new(&images).replacement(img.id()) {
            return Err(Error::InvalidSetting(format!(
                "image {} was replaced by image {} (an earlier merge; same point in time): merge {} instead",
                img.id(),
                r.id(),
                r.id()
            )));
        }
    }
    finish_pending(&set, obs)?;
    let img = set.resolve(Some(&opts.image))?;
    let chain = set.chain(&img)?;
    if chain.len() == 1 {
        return Err(Error::InvalidSetting(format!(
            "image {} is a full image: it has no parent to merge into",
            img.id()
        )));
    }
    let span = match opts.span {
        MergeSpan::Parent => 2,
        MergeSpan::WholeChain => chain.len(),
    };
    let merged = consolidate(&set, &chain[..span], &opts.io, obs).inspect_err(|e| {
        if !matches!(e, Error::Interrupted { .. }) {
            obs.note("the merge stopped before its commit: the set is as it was (its partial files are removed)");
        }
    })?;
    let folded: Vec<ImageId> = chain[..span].iter().map(|i| i.id()).collect();
    let fresh = [ImageId::parse(&merged.image_id).expect("an ID this run made")];
    test_pause("merge-removals");
    if interrupted() {
        return Err(Error::interrupted(
            Left::RunAgain,
            format!(
            "merge stopped by a signal after committing image {} (it stands in for {}); the images it replaces were \
             not removed: the next merge or prune removes them",
            merged.image_id, merged.replaces
        ),
        ));
    }
    let removal = Removal { candidates: &folded, written_now: &fresh };
    let removed = remove_unneeded(&set, removal, obs).map_err(|e| match e {
        Error::Interrupted { why: m, .. } => Error::interrupted(
            Left::RunAgain,
            format!(
                "merge committed image {} (it stands in for {}), then {m}; the next merge or prune removes the rest",
                merged.image_id, merged.replaces
            ),
        ),
        e => e,
    })?;
    let kept = folded.iter().filter(|id| !removed.contains(id)).map(|id| id.to_string()).collect();
    Ok(MergeReport { merged, removed: removed.iter().map(|i| i.to_string()).collect(), kept })
}
