//! `prune`: turn a retention policy into the images kept, rewrite every
//! kept image whose parent goes onto its nearest kept ancestor, and remove
//! the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::cleanup::{finish_pending, refuse_unreadable, remove_unneeded, Removal};
use super::consolidate::consolidate;
use super::options::Consolidated;
use super::retention::Retention;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::ImageId;
use crate::io::IoChoice;
use crate::observe::{interrupted, Observer};
use crate::set::image::Image;
use crate::set::lineage::Lineage;
use crate::set::lock::{lock_set, Access};
use crate::set::remove::remove_leftovers;
use crate::set::ImageSet;

/// How to run `prune`.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    pub set: PathBuf,
    pub retention: Retention,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
    /// Also remove the files of unfinished runs (which `create --resume` could carry on).
    pub discard_unfinished: bool,
    /// As [`super::options::MergeOptions::io`].
    pub io: IoChoice,
}

/// One image and why the policy keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub image_id: String,
    pub kind: String,
    pub created: String,
    pub reasons: Vec<String>,
    /// It depends on images the policy removes: it is rewritten onto its
    /// nearest kept ancestor (or as a full image) first.
    pub rewritten_as: Option<String>,
    pub folds: Vec<String>,
}

/// What `prune` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub kept: Vec<Kept>,
    pub removed: Vec<String>,
    pub consolidated: Vec<Consolidated>,
    pub unfinished_removed: Vec<String>,
}

/// What the policy decides for the set as it is.
pub(crate) struct PrunePlan {
    pub kept: Vec<Kept>,
    /// Spans to consolidate: a kept image, then the ancestors it folds.
    pub rewrites: Vec<Vec<Image>>,
    /// Images outside the policy.
    pub doomed: Vec<ImageId>,
}

/// Apply a retention policy.
pub fn prune(opts: &PruneOptions, obs: &dyn Observer) -> Result<PruneReport> {
    if opts.retention.is_empty() && !opts.discard_unfinished {
        return Err(Error::InvalidSetting(
            "prune needs a policy: --keep-last N, --keep-daily N and/or --keep-weekly N (or --discard-unfinished \
             alone, which keeps every image and removes only unfinished runs)"
                .into(),
        ));
    }
    opts.retention.check()?;
    let set = ImageSet::open(&opts.set)?;
    let _lock = if opts.dry_run { None } else { Some(lock_set(&set.dir, Access::Delete, "prune")?) };
    refuse_unreadable(&set)?;
    if !opts.dry_run {
        finish_pending(&set, obs)?;
    }
    let plan = plan(&set, &opts.retention)?;
    let unfinished = set.scan()?.unfinished;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        kept: plan.kept,
        removed: plan.doomed.iter().map(|i| i.to_string()).collect(),
        consolidated: Vec::new(),
        unfinished_removed: match opts.discard_unfinished {
            true => unfinished.iter().map(|p| p.to_string()).collect(),
            false => Vec::new(),
        },
    };
    if opts.dry_run {
        return Ok(report);
    }
    rewrite(&set, &plan.rewrites, &opts.io, &mut report, obs)?;
    let mut candidates = plan.doomed.clone();
    candidates.extend(plan.rewrites.iter().map(|s| s[0].id()));
    let fresh: Vec<ImageId> = report.consolidated.iter().filter_map(|c| ImageId::parse(&c.image_id)).collect();
    let removal = Removal { candidates: &candidates, written_now: &fresh };
    let removed = remove_unneeded(&set, removal, obs).map_err(|e| match e {
        Error::Interrupted { why: m, .. } => Error::interrupted(
            Left::RunAgain,
            format!(
                "prune rewrote {} image(s), then {m}: run the same prune again to finish",
                report.consolidated.len()
            ),
        ),
        e => e,
    })?;
    report.removed = removed.iter().filter(|id| plan.doomed.contains(id)).map(|i| i.to_string()).collect();
    if let Some(left) = plan.doomed.iter().find(|d| !removed.contains(d)) {
        obs.note(&format!(
            "image {left} is outside the policy but still needed by a kept image or a resumable run; it stays"
        ));
    }
    if opts.discard_unfinished {
        for p in unfinished {
            remove_leftovers(&set.dir, p)?;
        }
    }
    Ok(report)
}

/// Which images the policy keeps (and why), which kept images must be
/// rewritten onto their nearest kept ancestor, and which go.
pub(crate) fn plan(set: &ImageSet, retention: &Retention) -> Result<PrunePlan> {
    let images = set.load_all()?.images;
    let lineage = Lineage::new(&images);
    let live: Vec<&Image> = images.iter().filter(|i| lineage.replacement(i.id()).is_none()).collect();
    let points: Vec<(ImageId, u64)> = live.iter().map(|i| (i.id(), i.manifest.created_unix_seconds)).collect();
    let mut reasons: BTreeMap<ImageId, Vec<String>> = retention.keeps(&points);
    if retention.is_empty() {
        // --discard-unfinished alone: every image stays.
        for (id, _) in &points {
            reasons.entry(*id).or_default().push("no policy given (--discard-unfinished alone)".into());
        }
    }
    // Every kept image whose parent goes is rewritten onto its nearest kept
    // ancestor, oldest first.
    let mut plan = PrunePlan { kept: Vec::new(), rewrites: Vec::new(), doomed: Vec::new() };
    for i in &live {
        let Some(why) = reasons.get(&i.id()) else {
            plan.doomed.push(i.id());
            continue;
        };
        let chain = set.chain(i)?;
        let j = chain.iter().skip(1).position(|a| reasons.contains_key(&a.id())).map_or(chain.len(), |p| p + 1);
        let folds: Vec<String> = chain[1..j].iter().map(|a| a.id().to_string()).collect();
        if !folds.is_empty() {
            plan.rewrites.push(chain[..j].to_vec());
        }
        plan.kept.push(Kept {
            image_id: i.id().to_string(),
            kind: i.manifest.kind.name().into(),
            created: i.manifest.created.clone(),
            reasons: why.clone(),
            rewritten_as: None,
            folds,
        });
    }
    Ok(plan)
}

/// Consolidate each rewrite in turn, noting the new image in the report.
pub(crate) fn rewrite(
    set: &ImageSet,
    rewrites: &[Vec<Image>],
    io: &IoChoice,
    report: &mut PruneReport,
    obs: &dyn Observer,
) -> Result<()> {
    let stopped = |done: usize, what: &str| {
        Error::interrupted(
            Left::RunAgain,
            format!(
            "prune stopped by a signal after rewriting {done} of {} image(s) (each rewritten one stands in for the \
             image it replaces{what}); nothing was removed: run the same prune again to finish",
            rewrites.len()
        ),
        )
    };
    for span in rewrites {
        let c = consolidate(set, span, io, obs).map_err(|e| match e {
            // Earlier rewrites are committed: say so, and how to finish.
            Error::Interrupted { .. } => {
                stopped(report.consolidated.len(), "; the unfinished one's files were removed")
            }
            e => e,
        })?;
        if let Some(k) = report.kept.iter_mut().find(|k| k.image_id == c.replaces) {
            k.rewritten_as = Some(c.image_id.clone());
        }
        report.consolidated.push(c);
    }
    if interrupted() {
        return Err(stopped(report.consolidated.len(), ""));
    }
    Ok(())
}
