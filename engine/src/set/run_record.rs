//! `IMAGEID.run.json`: the record of an unfinished run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::commit::sync_dir;
use crate::error::{Error, Result};
use crate::format::manifest::{ImageKind, SourceInfo};
use crate::format::names::run_file_name;
use crate::format::ImageId;
use crate::io::device::WriteStamp;

/// What kind of run left a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOperation {
    /// `create`: resumable with `create --resume`.
    Create,
    /// `merge` (or `prune`) writing a consolidated image: never resumed;
    /// the next merge or prune removes what it left.
    Merge,
}

/// `IMAGEID.run.json`: what an unfinished run (a `create`, or a `merge`
/// writing a new image) is doing, written before its first data file, so
/// `create --resume` can carry it on and `list` can describe it. Removed
/// once the image is committed. Not part of any image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// Always "tintype-run".
    pub format: String,
    pub format_version: u32,
    pub image_id: String,
    pub operation: RunOperation,
    pub kind: ImageKind,
    pub parent: Option<String>,
    pub source: SourceInfo,
    pub chunk_size_bytes: u32,
    pub level: i32,
    pub started_unix_seconds: u64,
    /// The source's write stamp when the run started: a resume keeps the
    /// run's frames only while it is unchanged. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_written: Option<WriteStamp>,
}

impl RunRecord {
    /// Write the record (never replacing one) and make it durable.
    pub fn write_new(&self, dir: &Path) -> Result<()> {
        let path = dir
            .join(ImageId::parse(&self.image_id).map_or_else(|| format!("{}.run.json", self.image_id), run_file_name));
        let mut f =
            OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut v = serde_json::to_vec_pretty(self).expect("run record serializes");
        v.push(b'\n');
        f.write_all(&v).and_then(|()| f.sync_all()).map_err(|e| Error::io("write", &path, e))?;
        sync_dir(dir)
    }

    /// The record of run `id`, if it has one that parses.
    pub fn load(dir: &Path, id: ImageId) -> Option<RunRecord> {
        let bytes = std::fs::read(dir.join(run_file_name(id))).ok()?;
        let r: RunRecord = serde_json::from_slice(&bytes).ok()?;
        (r.format == "tintype-run" && r.format_version == 1 && ImageId::parse(&r.image_id) == Some(id)).then_some(r)
    }
}

/// Seconds since the epoch, now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
