//! Removing images and what unfinished runs left: the manifest goes first
//! (renamed to a removal marker, made durable), then the data files, the
//! marker last, so a crash never leaves something that looks like an image;
//! and [`Leftovers`], the guard that removes a failed run's files unless it
//! committed.

use std::path::Path;

use super::commit::{commit_manifest, sync_dir};
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::names::{manifest_file_name, parse_file_name, removed_file_name, FileKind, FileName};
use crate::format::ImageId;
use std::path::PathBuf;

/// Remove a committed image. Its manifest is first renamed to
/// `IMAGEID.removed.json` (from that moment it is not an image, and the
/// name says its data files are garbage), made durable, then the data files
/// go, the marker last. A crash in between leaves files without a manifest,
/// which are never used as an image and which the next merge or prune
/// removes.
pub fn remove_image(dir: &Path, id: ImageId) -> Result<()> {
    let manifest = dir.join(manifest_file_name(id));
    let marker = dir.join(removed_file_name(id));
    match std::fs::rename(&manifest, &marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove (rename) manifest", &manifest, e)),
    }
    sync_dir(dir)?;
    remove_leftovers(dir, id)
}

/// Remove every file of `id` that is not a manifest (an unfinished run's
/// leftovers, or a removed image's data), the removal marker last.
pub fn remove_leftovers(dir: &Path, id: ImageId) -> Result<()> {
    let marker = removed_file_name(id);
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Everything of the image but its committed manifest and the
        // removal marker (which goes last).
        let kept = |f: FileName| !f.temporary && matches!(f.kind, FileKind::Manifest | FileKind::RemovalMarker);
        if parse_file_name(&name).is_some_and(|f| f.id == id && !kept(f)) {
            std::fs::remove_file(e.path()).map_err(|err| Error::io("remove", e.path(), err))?;
        }
    }
    sync_dir(dir)?;
    match std::fs::remove_file(dir.join(&marker)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir.join(&marker), e)),
    }
}

/// The files of an image being written: removed on drop while `armed`
/// (a failure, a panic), kept once the image is committed.
#[derive(Debug)]
pub struct Leftovers<'a> {
    pub dir: &'a Path,
    pub id: ImageId,
    pub armed: bool,
}

impl Leftovers<'_> {
    /// Commit `manifest` and disarm. If the commit fails after the manifest
    /// got its name (only the directory fsync failed), the image exists and
    /// its data stays: disarmed too.
    pub fn commit(&mut self, manifest: &Manifest) -> Result<PathBuf> {
        let r = commit_manifest(self.dir, manifest);
        if r.is_ok() || self.dir.join(manifest_file_name(self.id)).exists() {
            self.armed = false;
        }
        r
    }
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_leftovers(self.dir, self.id);
        }
    }
}
