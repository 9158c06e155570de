//! Making files durable: the atomic commit of a manifest (temporary file,
//! fsync, rename without replacing, directory fsync), the durable
//! replacement of a rewritten file (`replace_durably`), and a directory's
//! fsync (`sync_dir`). Removal is in [`super::remove`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::names::manifest_file_name;

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
