//! Used-space imaging: the partition table and filesystems read, and every
//! chunk no filesystem uses recorded "unused" without being read.

use super::options::UsedOnly;
use super::preset::Preset;
use crate::error::Refusal;
use crate::error::{Error, Result};
use crate::format::manifest::{Filesystem, LayoutInfo, PartitionInfo, PartitionTable, UsedOnlyMode};
use crate::fs::{FsKind, Partition, TableKind};
use crate::io::device::Source;
use crate::observe::Observer;

/// Used-space imaging: read the partition table and the filesystems, and
/// mark every chunk no filesystem uses as unused in `preset` (where a
/// resumed run does not already know the chunk). Says per partition what
/// was found and what is imaged whole.
pub(crate) fn used_space(
    mode: UsedOnly,
    source: &Source,
    chunk_bytes: u32,
    preset: &mut Preset,
    obs: &dyn Observer,
) -> Result<Option<crate::format::manifest::LayoutInfo>> {
    if mode == UsedOnly::Off {
        return Ok(None);
    }
    let meta = std::fs::File::open(&source.path).map_err(|e| Error::io("open for metadata", &source.path, e))?;
    if source.kind == crate::io::device::SourceKind::BlockDevice {
        crate::io::quiesce::flush_buffer_cache(&meta, &source.path, obs)?;
    }
    let layout = crate::fs::analyze(&meta, &meta, source.size_bytes, source.logical_sector_bytes);
    for n in &layout.notes {
        obs.note(n);
    }
    let mapped = layout.partitions.iter().filter(|p| p.used_bytes.is_some()).count();
    for p in &layout.partitions {
        let whole = match source.kind {
            crate::io::device::SourceKind::File => "the source",
            _ => "the device",
        };
        let what = if p.number == 0 { whole.to_string() } else { format!("partition {}", p.number) };
        match (&p.used_bytes, &p.note) {
            (Some(u), _) => obs.note(&format!(
                "{what}: {} uses {} of {}; only chunks holding used blocks are read",
                p.filesystem,
                crate::units::human_bytes(*u),
                crate::units::human_bytes(p.size_bytes)
            )),
            (None, Some(why)) => obs.note(&format!("{what} ({}): {why}", crate::units::human_bytes(p.size_bytes))),
            (None, None) => {}
        }
    }
    if mode == UsedOnly::On && mapped == 0 {
        return Err(Error::Unusable {
            reason: Refusal::NoFilesystemMapped,
            path: source.path.clone(),
            why: "--used-only on: no filesystem on the source could be mapped (see the notes above); use --used-only \
                  auto or off to image it whole"
                .into(),
        });
    }
    let unused = layout.free.unused_chunks(source.size_bytes, u64::from(chunk_bytes));
    let bytes_unused = preset.mark_unused(&unused);
    Ok(Some(LayoutInfo {
        table: match layout.table {
            TableKind::Gpt => PartitionTable::Gpt,
            TableKind::Mbr => PartitionTable::Mbr,
            TableKind::None => PartitionTable::None,
            TableKind::Damaged => PartitionTable::Damaged,
        },
        used_only: if mode == UsedOnly::On { UsedOnlyMode::On } else { UsedOnlyMode::Auto },
        partitions: layout.partitions.iter().map(partition_info).collect(),
        bytes_unused,
        notes: layout.notes,
    }))
}

/// What the manifest records of a partition the analysers examined.
fn partition_info(p: &Partition) -> PartitionInfo {
    PartitionInfo {
        number: p.number,
        start_bytes: p.start_bytes,
        size_bytes: p.size_bytes,
        kind: p.kind.clone(),
        name: p.name.clone(),
        filesystem: match p.filesystem {
            FsKind::Ext2 => Filesystem::Ext2,
            FsKind::Ext3 => Filesystem::Ext3,
            FsKind::Ext4 => Filesystem::Ext4,
            FsKind::Ext => Filesystem::Ext,
            FsKind::Xfs => Filesystem::Xfs,
            FsKind::Unknown => Filesystem::Unknown,
        },
        used_bytes: p.used_bytes,
        fs_bytes: p.fs_bytes,
        note: p.note.clone(),
    }
}
