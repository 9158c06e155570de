//! The set as `list` shows it: every image as a row of a tree (each image
//! under the image it depends on, oldest first), with its state; the
//! manifests that do not load; the unfinished runs; and who writes the set
//! now. Typed rows, so a program using the library gets the listing the
//! CLI prints (as a table or as JSON).

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

use super::image::{FileProblem, Image, IndexHash};
use super::lineage::Lineage;
use super::lock::writer;
use super::run_record::{RunOperation, RunRecord};
use super::ImageSet;
use crate::error::Result;
use crate::format::manifest::ImageKind;
use crate::format::names::{image_file_id, removed_file_name};
use crate::format::ImageId;

/// The whole listing of a set.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub set: PathBuf,
    /// Depth-first from the roots (full images, or images whose parent is
    /// gone), oldest first; images whose parents loop come last.
    pub images: Vec<ImageRow>,
    /// Committed images whose manifest does not load.
    pub damaged: Vec<DamagedRow>,
    pub unfinished: Vec<UnfinishedRow>,
    /// Who writes the set right now, if anyone.
    pub in_use_by: Option<String>,
}

/// One committed image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub image_id: String,
    pub kind: ImageKind,
    pub parent: Option<String>,
    /// The image it depends on: its parent, or what a merge wrote in its place.
    pub depends_on: Option<String>,
    /// Its depth in the tree (0: a root).
    pub depth: usize,
    pub created: String,
    pub created_unix_seconds: u64,
    pub source: String,
    pub source_bytes: u64,
    /// Segments and index.
    pub stored_bytes: u64,
    pub replaces: Vec<String>,
    pub unreadable_bytes: u64,
    pub state: ImageState,
}

/// What shape an image is in, as far as its files and lineage tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    Ok,
    /// A file is missing or has the wrong size.
    Damaged {
        problem: FileProblem,
    },
    /// A merge wrote an image in its place; its removal is pending.
    Replaced {
        by: ImageId,
    },
    /// Its parent is not in the set.
    ParentMissing {
        parent: ImageId,
    },
    /// Its chain of parents loops back to itself.
    Loops,
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageState::Ok => write!(f, "ok"),
            ImageState::Damaged { problem } => write!(f, "DAMAGED: {problem}"),
            ImageState::Replaced { by } => write!(f, "replaced by {by} (removal pending)"),
            ImageState::ParentMissing { parent } => write!(f, "BROKEN: parent {parent} is missing"),
            ImageState::Loops => write!(f, "BROKEN: its chain of parents loops back to itself"),
        }
    }
}

/// In JSON a state is the sentence the table shows.
impl Serialize for ImageState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A committed image whose manifest does not load.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedRow {
    pub image_id: String,
    pub error: String,
}

/// The files of an Image ID without a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct UnfinishedRow {
    pub image_id: String,
    /// What its run record says, when it has one that parses.
    pub operation: Option<RunOperation>,
    pub kind: Option<ImageKind>,
    pub parent: Option<String>,
    pub source: Option<String>,
    pub bytes_on_disk: u64,
    /// `create --resume` can carry it on.
    pub resumable: bool,
    /// An image's removal that did not finish (its removal marker is there).
    #[serde(skip)]
    pub being_removed: bool,
}

/// List the set.
pub fn list(set: &ImageSet) -> Result<Listing> {
    let loaded = set.load_all()?;
    let images = &loaded.images;
    let lineage = Lineage::new(images);
    let order = tree_order(images, &lineage);
    let rows = order.iter().map(|&(depth, i, looped)| image_row(i, depth, looped, &lineage)).collect();
    let damaged = loaded
        .unloadable
        .iter()
        .map(|u| DamagedRow { image_id: u.id.to_string(), error: u.error.to_string() })
        .collect();
    let unfinished = set.scan()?.unfinished.iter().map(|id| unfinished_row(set, *id)).collect();
    Ok(Listing { set: set.dir.clone(), images: rows, damaged, unfinished, in_use_by: writer(&set.dir) })
}

/// Depth-first from the roots (images with nothing to depend on), oldest
/// first. What no root reaches depends on itself through its parents: it
/// is listed too, as looping, never hidden.
fn tree_order<'a>(images: &'a [Image], lineage: &Lineage<'a>) -> Vec<(usize, &'a Image, bool)> {
    let mut order: Vec<(usize, &Image, bool)> = Vec::new();
    for r in images.iter().filter(|i| lineage.parent(i).is_none()) {
        walk(r, 0, false, images, lineage, &mut order);
    }
    let reached: Vec<ImageId> = order.iter().map(|(_, i, _)| i.id()).collect();
    for i in images.iter().filter(|i| !reached.contains(&i.id())) {
        walk(i, 0, true, images, lineage, &mut order);
    }
    order
}

fn walk<'a>(
    i: &'a Image,
    depth: usize,
    looped: bool,
    images: &'a [Image],
    lineage: &Lineage<'a>,
    out: &mut Vec<(usize, &'a Image, bool)>,
) {
    if out.iter().any(|(_, o, _)| o.id() == i.id()) {
        return;
    }
    out.push((depth, i, looped));
    for c in images.iter().filter(|c| lineage.parent(c).map(|p| p.id()) == Some(i.id()) && c.id() != i.id()) {
        walk(c, depth + 1, looped, images, lineage, out);
    }
}

fn image_row(i: &Image, depth: usize, looped: bool, lineage: &Lineage<'_>) -> ImageRow {
    let m = &i.manifest;
    ImageRow {
        image_id: m.image_id.clone(),
        kind: m.kind,
        parent: m.parent.clone(),
        depends_on: lineage.parent(i).map(|p| p.id().to_string()),
        depth,
        created: m.created.clone(),
        created_unix_seconds: m.created_unix_seconds,
        source: m.source.path.clone(),
        source_bytes: m.source.size_bytes,
        stored_bytes: m.stats.bytes_segments + m.index.size_bytes,
        replaces: m.replaces.clone(),
        unreadable_bytes: m.unreadable.iter().map(|r| r.length).sum(),
        state: if looped { ImageState::Loops } else { state(i, lineage) },
    }
}

fn state(i: &Image, lineage: &Lineage<'_>) -> ImageState {
    if let Err(problem) = i.check_files(IndexHash::Skip) {
        return ImageState::Damaged { problem };
    }
    if let Some(r) = lineage.replacement(i.id()) {
        return ImageState::Replaced { by: r.id() };
    }
    match (i.manifest.parent_id(), lineage.parent(i)) {
        (Some(parent), None) => ImageState::ParentMissing { parent },
        _ => ImageState::Ok,
    }
}

fn unfinished_row(set: &ImageSet, id: ImageId) -> UnfinishedRow {
    let rec = RunRecord::load(&set.dir, id);
    let bytes_on_disk = std::fs::read_dir(&set.dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| image_file_id(&e.file_name().to_string_lossy()) == Some(id))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    UnfinishedRow {
        image_id: id.to_string(),
        operation: rec.as_ref().map(|r| r.operation),
        kind: rec.as_ref().map(|r| r.kind),
        parent: rec.as_ref().and_then(|r| r.parent.clone()),
        source: rec.as_ref().map(|r| r.source.path.clone()),
        bytes_on_disk,
        resumable: rec.as_ref().is_some_and(|r| r.operation == RunOperation::Create),
        being_removed: set.dir.join(removed_file_name(id)).exists(),
    }
}
