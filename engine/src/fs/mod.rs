//! What is on a source: its partition table (GPT, MBR with extended
//! partitions) and, for filesystems this build can read, which bytes they
//! do not use. The capture pipeline stores only chunks that hold used bytes;
//! everything else — the tables, the GPT backup, gaps between partitions,
//! filesystems it cannot read — is imaged whole.

pub mod ext4;
pub mod table;
pub mod xfs;

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// Reads metadata at byte offsets of the source (small reads, buffered).
pub trait MetaRead {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
}

impl MetaRead for File {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact_at(&mut v, offset)?;
        Ok(v)
    }
}

/// Byte ranges a filesystem does not use, kept sorted and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeMap {
    ranges: Vec<(u64, u64)>,
}

impl FreeMap {
    /// Add a free range (ranges must be pushed in increasing order, or
    /// `normalize` called afterwards).
    pub fn push(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        self.ranges.push((start, len));
    }

    /// Sort and merge.
    pub fn normalize(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, l) in &self.ranges {
            match out.last_mut() {
                Some(last) if last.0 + last.1 >= s => last.1 = last.1.max(s + l - last.0),
                _ => out.push((s, l)),
            }
        }
        self.ranges = out;
    }

    /// Mark `[start, start+len)` used.
    pub fn remove(&mut self, start: u64, len: u64) {
        let end = start + len;
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, l) in &self.ranges {
            let e = s + l;
            if e <= start || s >= end {
                out.push((s, l));
                continue;
            }
            if s < start {
                out.push((s, start - s));
            }
            if e > end {
                out.push((end, e - end));
            }
        }
        self.ranges = out;
    }

    /// Mark every range of `used` (sorted by start, may overlap) used, in
    /// one pass over both lists.
    pub fn subtract_sorted(&mut self, used: &[(u64, u64)]) {
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut u = 0;
        for &(s, l) in &self.ranges {
            let (mut s, e) = (s, s + l);
            while u < used.len() && used[u].0 + used[u].1 <= s {
                u += 1;
            }
            let mut k = u;
            while s < e {
                match used.get(k) {
                    Some(&(us, ul)) if us < e => {
                        if us > s {
                            out.push((s, us - s));
                        }
                        s = s.max(us + ul);
                        k += 1;
                    }
                    _ => {
                        out.push((s, e - s));
                        break;
                    }
                }
            }
        }
        self.ranges = out;
    }

    /// The same ranges moved by `offset` bytes.
    pub fn shifted(&self, offset: u64) -> FreeMap {
        FreeMap { ranges: self.ranges.iter().map(|&(s, l)| (s + offset, l)).collect() }
    }

    /// Add every range of `other`.
    pub fn extend(&mut self, other: &FreeMap) {
        self.ranges.extend_from_slice(&other.ranges);
        self.normalize();
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn free_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// The chunks of `chunk_bytes` of a `size`-byte source that are wholly
    /// free, as sorted runs of chunk numbers (a short last chunk counts when
    /// all of it is free). The map is sorted and its ranges apart, so the
    /// runs are too; touching runs are joined.
    pub fn unused_chunks(&self, size: u64, chunk_bytes: u64) -> Vec<std::ops::Range<u64>> {
        let n = size.div_ceil(chunk_bytes);
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for &(s, l) in &self.ranges {
            let end = s.saturating_add(l);
            let first = s.div_ceil(chunk_bytes).min(n);
            let last = if end >= size { n } else { (end / chunk_bytes).min(n) };
            if first >= last {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.end >= first => r.end = r.end.max(last),
                _ => out.push(first..last),
            }
        }
        out
    }
}

/// A filesystem as the analysers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext2,
    Ext3,
    Ext4,
    /// An ext2/3/4 superblock whose map could not be read.
    Ext,
    Xfs,
    /// No filesystem this build reads (or two signatures that contradict).
    Unknown,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Ext => "ext",
            FsKind::Xfs => "xfs",
            FsKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The partition table a source has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No table: a filesystem (or nothing known) on the whole device.
    #[default]
    None,
    /// A table that could not be read: the whole device is imaged.
    Damaged,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::None => "none",
            TableKind::Damaged => "damaged",
        })
    }
}

/// One partition (or the whole device when there is no table) and what was
/// found on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1-based number in the table; 0 for a filesystem on the whole device.
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The partition type: a GPT type name or GUID, or the MBR type byte.
    pub kind: String,
    /// GPT partition name, or the filesystem label.
    pub name: String,
    pub filesystem: FsKind,
    /// Bytes the filesystem uses, when its map could be read.
    pub used_bytes: Option<u64>,
    /// The filesystem's own size (its block count), when its map could be
    /// read: where it ends matters to a restore onto a smaller target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_bytes: Option<u64>,
    /// Why the partition is imaged whole, when it is.
    pub note: Option<String>,
}

/// The source's layout and the free space of the filesystems on it.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub table: TableKind,
    pub partitions: Vec<Partition>,
    /// Free byte ranges of the whole source (absolute offsets).
    pub free: FreeMap,
    /// Problems with the table itself (a damaged GPT backup, …).
    pub notes: Vec<String>,
}

/// Which filesystem starts at `base`.
pub fn detect(r: &dyn MetaRead, base: u64) -> &'static str {
    let ext = ext4::detect(r, base);
    let xfs = r.read(base, 4).is_ok_and(|m| m == b"XFSB");
    match (ext, xfs) {
        // Both signatures: one is a leftover of an earlier filesystem, and
        // its stale map would hide the other's data. Trust neither.
        (true, true) => "ambiguous",
        (true, false) => "ext",
        (false, true) => "xfs",
        _ => "unknown",
    }
}

/// Look at one filesystem region: detect, map, describe.
fn examine(r: &dyn MetaRead, mut p: Partition, free: &mut FreeMap) -> Partition {
    match detect(r, p.start_bytes) {
        "ext" => match ext4::free_space(r, p.start_bytes, p.size_bytes) {
            Ok((fs, map)) => {
                p.filesystem = fs.kind;
                if p.name.is_empty() {
                    p.name = fs.label.clone();
                }
                let fs_bytes = fs.blocks * fs.block_bytes;
                p.used_bytes = Some(fs_bytes.saturating_sub(map.free_bytes()));
                p.fs_bytes = Some(fs_bytes);
                free.extend(&map.shifted(p.start_bytes));
            }
            Err(why) => {
                p.filesystem = FsKind::Ext;
                p.note = Some(format!("ext filesystem imaged whole: {why}"));
            }
        },
        "xfs" => {
            p.filesystem = FsKind::Xfs;
            match xfs::free_space(r, p.start_bytes, p.size_bytes) {
                Ok((fs, map)) => {
                    if p.name.is_empty() {
                        p.name = fs.label.clone();
                    }
                    p.used_bytes = Some((fs.blocks * fs.block_bytes).saturating_sub(map.free_bytes()));
                    p.fs_bytes = Some(fs.blocks * fs.block_bytes);
                    free.extend(&map.shifted(p.start_bytes));
                }
                Err(why) => p.note = Some(format!("xfs filesystem imaged whole: {why}")),
            }
        }
        "ambiguous" => {
            p.filesystem = FsKind::Unknown;
            p.note = Some("both ext and XFS signatures (one is a leftover); imaged whole".into());
        }
        _ => {
            p.filesystem = FsKind::Unknown;
            p.note = Some("no filesystem this build reads; imaged whole".into());
        }
    }
    p
}

/// Read the partition table and the filesystems of a `size`-byte source
/// with `sector`-byte logical sectors.
pub fn analyze(r: &(impl MetaRead + ?Sized), file: &File, size: u64, sector: u32) -> Layout {
    let r: &dyn MetaRead = &ReadVia(r);
    let mut layout = Layout { table: TableKind::None, ..Default::default() };
    match table::read(file, size, sector) {
        Ok(Some(t)) => {
            layout.table = t.kind;
            layout.notes = t.notes;
            for p in t.partitions {
                let p = examine(r, p, &mut layout.free);
                layout.partitions.push(p);
            }
        }
        Ok(None) => {
            let whole = Partition {
                number: 0,
                start_bytes: 0,
                size_bytes: size,
                kind: "whole device".into(),
                name: String::new(),
                filesystem: FsKind::Unknown,
                used_bytes: None,
                fs_bytes: None,
                note: None,
            };
            let p = examine(r, whole, &mut layout.free);
            layout.partitions.push(p);
        }
        Err(why) => {
            layout.table = TableKind::Damaged;
            layout.notes.push(format!("partition table: {why}; the whole device is imaged"));
        }
    }
    layout
}

struct ReadVia<'a, R: MetaRead + ?Sized>(&'a R);

impl<R: MetaRead + ?Sized> MetaRead for ReadVia<'_, R> {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.0.read(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_maps_merge_subtract_and_cover_whole_chunks_only() {
        let mut f = FreeMap::default();
        f.push(4096, 8192);
        f.push(12288, 4096);
        f.push(1 << 20, 2 << 20);
        assert_eq!(f.ranges(), &[(4096, 12288), (1 << 20, 2 << 20)]);
        f.remove(8192, 4096);
        assert_eq!(f.ranges(), &[(4096, 4096), (12288, 4096), (1 << 20, 2 << 20)]);
        // 1 MiB chunks of a 3.5 MiB source: only chunks 1 and 2 are wholly free.
        assert_eq!(f.unused_chunks(3584 << 10, 1 << 20), vec![1..3]);
        // A short last chunk that is wholly free counts.
        let mut g = FreeMap::default();
        g.push(3 << 20, 512 << 10);
        assert_eq!(g.unused_chunks(3584 << 10, 1 << 20), vec![3..4]);
        g.extend(&f);
        assert_eq!(g.free_bytes(), f.free_bytes() + (512 << 10));
        let mut h = FreeMap::default();
        h.push(0, 100);
        h.push(200, 100);
        h.subtract_sorted(&[(10, 5), (12, 10), (90, 120), (250, 5), (400, 1)]);
        assert_eq!(h.ranges(), &[(0, 10), (22, 68), (210, 40), (255, 45)]);
    }
}
