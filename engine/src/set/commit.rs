//! Making images durable and removing them: the atomic commit of a manifest
//! (temporary file, fsync, rename without replacing, directory fsync), the
//! removal of an image manifest first, and the guard that removes an
//! unfinished image's files on failure.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::names::{image_file_id, manifest_file_name, removed_file_name};
use crate::format::ImageId;

/// Commit `manifest` into `dir`: write a temporary file, fsync it, rename it
/// to its final name without replacing anything, fsync the directory.
pub fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<PathBuf> {
    let id = manifest.id();
    let final_name = manifest_file_name(id);
    let tmp_name = format!("{final_name}.tmp");
    let tmp = dir.join(&tmp_name);
    let dest = dir.join(&final_name);
    // A temporary manifest left by a crash of this image's own earlier
    // attempt (resume) is never part of an image: replace it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale", &tmp, e)),
    }
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let write = f.write_all(&manifest.to_json()).and_then(|()| f.sync_all());
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp, e));
    }
    drop(f);
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    let renamed =
        rustix::fs::renameat_with(&d, tmp_name.as_str(), &d, final_name.as_str(), rustix::fs::RenameFlags::NOREPLACE);
    let committed = match renamed {
        // Filesystems without RENAME_NOREPLACE (NFS, some FUSE): a hard link
        // is just as atomic and just as unwilling to replace.
        Err(rustix::io::Errno::INVAL) => std::fs::hard_link(&tmp, &dest).map(|()| {
            let _ = std::fs::remove_file(&tmp);
        }),
        other => other.map_err(std::io::Error::from),
    };
    if let Err(e) = committed {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("commit (rename) manifest to", &dest, e));
    }
    d.sync_all().map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(dest)
}

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
        if image_file_id(&name) == Some(id) && !name.ends_with(".manifest.json") && name != marker.as_str() {
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

/// Replace the file at `path` with `bytes` so that a crash leaves the old
/// file or the new one, never a mix: write `PATH.tmp`, fsync it, rename it
/// over `path`, fsync the directory. For files that are rewritten (a badmap,
/// a journal); committed files are never replaced ([`commit_manifest`]).
pub fn replace_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Make a directory entry durable: fsync the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync directory", dir, e))
}
