//! Unreadable source ranges as files: the ddrescue map (`IMAGEID.badmap`)
//! written beside an image at commit, and the journal (`IMAGEID.unreadable`)
//! an unfinished run appends to before it stores a chunk with bad sectors,
//! so `--resume` never keeps such a chunk without its ranges.

use std::fs::OpenOptions;
use std::path::Path;

use super::commit::{replace_durably, sync_dir};
use crate::error::{Error, Result};

/// A ddrescue-style map of the source: `+` read, `-` unreadable. Replaces
/// the run's earlier map atomically (temporary file, fsync, rename).
pub fn write_badmap(path: &Path, bad: &[(u64, u64)], size: u64) -> Result<()> {
    let mut s = String::from("# Mapfile. Created by tintype: the source ranges it could not read\n");
    s += &format!("0x{size:08X}     +\n");
    let mut at = 0;
    for &(o, l) in bad {
        if o > at {
            s += &format!("0x{at:08X}  0x{:08X}  +\n", o - at);
        }
        s += &format!("0x{o:08X}  0x{l:08X}  -\n");
        at = o + l;
    }
    if at < size {
        s += &format!("0x{at:08X}  0x{:08X}  +\n", size - at);
    }
    replace_durably(path, s.as_bytes())
}

/// Append `bad` to the run's journal of unreadable ranges (`ID.unreadable`:
/// one "OFFSET LENGTH" line each, decimal) and sync it, opening it on first
/// use. One append and one fdatasync per chunk with bad sectors.
pub fn journal_unreadable(file: &mut Option<std::fs::File>, path: &Path, bad: &[(u64, u64)]) -> Result<()> {
    use std::io::Write;
    if file.is_none() {
        let f = OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::io("create", path, e))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        *file = Some(f);
    }
    let f = file.as_mut().expect("opened above");
    let lines: String = bad.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| Error::io("write", path, e))
}

/// Why an unfinished run's journal cannot be used.
#[derive(Debug)]
pub enum JournalError {
    /// It exists but cannot be read (or checked).
    Unreadable(std::io::Error),
    /// A whole line that is not "OFFSET LENGTH".
    BadLine(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Unreadable(e) => write!(f, "cannot be read ({e})"),
            JournalError::BadLine(line) => write!(f, "has a line that is not \"OFFSET LENGTH\": {line:?}"),
        }
    }
}

/// The ranges an unfinished run journalled (empty when it has no journal).
/// A torn last line (no newline) was never synced whole, so its chunk's
/// frame was not written either: it is ignored.
pub fn read_journal(path: &Path) -> std::result::Result<Vec<(u64, u64)>, JournalError> {
    match path.try_exists() {
        Ok(false) => return Ok(Vec::new()),
        Ok(true) => {}
        Err(e) => return Err(JournalError::Unreadable(e)),
    }
    let text = std::fs::read_to_string(path).map_err(JournalError::Unreadable)?;
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut all = Vec::new();
    for line in whole.lines() {
        let mut f = line.split(' ');
        match (f.next().and_then(|o| o.parse::<u64>().ok()), f.next().and_then(|l| l.parse::<u64>().ok()), f.next()) {
            (Some(o), Some(l), None) => all.push((o, l)),
            _ => return Err(JournalError::BadLine(line.to_string())),
        }
    }
    Ok(all)
}

/// Replace the journal with `ranges`, atomically (temporary file, fsync,
/// rename, directory fsync).
pub fn rewrite_journal(path: &Path, ranges: &[(u64, u64)]) -> Result<()> {
    let lines: String = ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    replace_durably(path, lines.as_bytes())
}
