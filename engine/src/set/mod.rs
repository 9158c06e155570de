//! Image sets: a directory of images, each named by its Image ID, and
//! everything about the images in it — what the directory holds
//! ([`ImageSet::scan`]), one image ([`image`]), which image a `SET@ID`
//! names ([`select`]), which stands for which ([`lineage`]), an image with
//! everything it depends on ([`chain`]), committing and removing images
//! ([`commit`]), the records of unfinished runs ([`run_record`]), the set's
//! locks ([`lock`]), writing segments ([`segment_writer`]), the files of
//! unreadable ranges ([`unreadable`]) and the set as listing rows
//! ([`listing`]).

pub mod chain;
pub mod commit;
pub mod image;
pub mod index_reader;
pub mod index_writer;
pub mod lineage;
pub mod listing;
pub mod lock;
pub mod remove;
pub mod run_record;
pub mod segment_writer;
pub mod select;
pub mod unreadable;

use std::path::{Path, PathBuf};

pub use self::chain::{Resolved, SegmentRef};
pub use self::image::Image;
use self::lineage::Lineage;
use crate::error::{Error, Result};
use crate::format::names::{image_file_id, is_manifest_name};
use crate::format::ImageId;

/// A directory of images.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub dir: PathBuf,
}

/// What a set's directory holds, by Image ID (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// IDs with a manifest: committed images.
    pub committed: Vec<ImageId>,
    /// IDs with only data files: unfinished runs (or removals).
    pub unfinished: Vec<ImageId>,
}

impl Scan {
    /// Is `id` taken, by an image or an unfinished run?
    pub fn holds(&self, id: ImageId) -> bool {
        self.committed.contains(&id) || self.unfinished.contains(&id)
    }

    /// A fresh Image ID that nothing in the set uses.
    pub fn fresh_id(&self) -> ImageId {
        loop {
            let id = ImageId::generate();
            if !self.holds(id) {
                break id;
            }
        }
    }
}

/// A committed image whose manifest does not load, and why.
#[derive(Debug)]
pub struct Unloadable {
    pub id: ImageId,
    pub error: Error,
}

/// The committed images of a set: those that load, oldest first, and those
/// that do not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub images: Vec<Image>,
    pub unloadable: Vec<Unloadable>,
}

impl ImageSet {
    /// An existing set directory.
    pub fn open(dir: &Path) -> Result<ImageSet> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            // `SET@SEL` with a selector that is not hex was taken as a path.
            let spec = dir.to_string_lossy();
            match spec.rsplit_once('@') {
                Some((set, sel)) if e.kind() == std::io::ErrorKind::NotFound && Path::new(set).is_dir() => {
                    Error::InvalidSetting(format!(
                        "{spec}: {sel:?} is not an Image ID: after `@` give a prefix of an image's 16 hex digits \
                         (`tintype list {set}` shows them)"
                    ))
                }
                _ => Error::io("open image set", dir, e),
            }
        })?;
        if !meta.is_dir() {
            return Err(Error::Unusable {
                reason: crate::error::Refusal::NotADirectory,
                path: dir.into(),
                why: "an image set is a directory; this is not one".into(),
            });
        }
        Ok(ImageSet { dir: dir.into() })
    }

    /// Open the set directory, creating it (and its parents) if absent.
    pub fn create_or_open(dir: &Path) -> Result<ImageSet> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            // A file where the set should be: said as `open` says it.
            if dir.exists() && !dir.is_dir() {
                return ImageSet::open(dir);
            }
            return Err(Error::io("create image set directory", dir, e));
        }
        ImageSet::open(dir)
    }

    /// What the directory holds: committed images and unfinished runs.
    pub fn scan(&self) -> Result<Scan> {
        let mut scan = Scan::default();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            // Only names tintype writes (FORMAT §1).
            let Some(id) = image_file_id(&name) else {
                continue;
            };
            if is_manifest_name(&name) {
                scan.committed.push(id);
            } else if !scan.unfinished.contains(&id) {
                scan.unfinished.push(id);
            }
        }
        let committed = scan.committed.clone();
        scan.unfinished.retain(|id| !committed.contains(id));
        scan.committed.sort();
        scan.unfinished.sort();
        Ok(scan)
    }

    /// The committed images, oldest first.
    /// Fails on the first image whose manifest does not load.
    pub fn images(&self) -> Result<Vec<Image>> {
        let loaded = self.load_all()?;
        match loaded.unloadable.into_iter().next() {
            Some(u) => Err(u.error),
            None => Ok(loaded.images),
        }
    }

    /// The committed images that load, oldest first, and those whose
    /// manifest does not (with why). An image removed while the directory
    /// is being read (by a merge or prune) is simply not listed.
    pub fn load_all(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        for id in self.scan()?.committed {
            match Image::load(&self.dir, id) {
                Ok(i) => loaded.images.push(i),
                Err(Error::NotCommitted { .. }) => {}
                Err(error) => loaded.unloadable.push(Unloadable { id, error }),
            }
        }
        // Oldest first, but never before an image's own parent: a child
        // dated earlier than its parent (the clock was wrong for one of
        // them) is still newer than it, so "the newest image", the parent
        // of the next incremental and --keep-last follow the chain, not a
        // wrong clock.
        let when = Lineage::new(&loaded.images).effective_times();
        loaded.images.sort_by_key(|i| (when.get(&i.id()).copied().unwrap_or(0), i.committed_nanos));
        Ok(loaded)
    }
}
