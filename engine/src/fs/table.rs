//! Partition tables: GPT (primary and backup headers, CRCs checked by
//! `gptman`) and MBR with extended partitions (`mbrman`).

use std::fs::File;

use super::Partition;

/// A partition table as read from the source.
#[derive(Debug)]
pub struct Table {
    /// Gpt or Mbr.
    pub kind: super::TableKind,
    pub partitions: Vec<Partition>,
    /// Damage found that did not stop the read (a bad GPT backup, …).
    pub notes: Vec<String>,
}

fn partition(number: u32, start: u64, size: u64, kind: String, name: String) -> Partition {
    Partition {
        number,
        start_bytes: start,
        size_bytes: size,
        kind,
        name,
        filesystem: super::FsKind::Unknown,
        used_bytes: None,
        fs_bytes: None,
        note: None,
    }
}

/// A name for well-known GPT partition type GUIDs (as stored: mixed-endian).
fn gpt_type_name(guid: &[u8; 16]) -> String {
    let s = format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([guid[0], guid[1], guid[2], guid[3]]),
        u16::from_le_bytes([guid[4], guid[5]]),
        u16::from_le_bytes([guid[6], guid[7]]),
        guid[8],
        guid[9],
        guid[10..].iter().map(|b| format!("{b:02X}")).collect::<String>()
    );
    let known = match s.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        _ => return s,
    };
    known.to_string()
}

/// Partitions that overlap would let one filesystem's free space hide
/// another partition's data: such a table is not trusted.
fn no_overlaps(parts: &[Partition]) -> Result<(), String> {
    let mut v: Vec<(u64, u64, u32)> = parts.iter().map(|p| (p.start_bytes, p.size_bytes, p.number)).collect();
    v.sort_unstable();
    for w in v.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(())
}

/// Read the partition table of a `size`-byte source. `Ok(None)`: there is
/// none (no GPT signature and no MBR partitions).
pub fn read(file: &File, size: u64, sector: u32) -> Result<Option<Table>, String> {
    // The table parsers are other people's code reading hostile bytes: a
    // panic in one (mbrman 0.6 had one, found by fuzzing) makes the table
    // untrusted, never the run fail.
    guarded(|| read_table(file, size, sector))
}

/// Run a parser, turning its panic into an error that carries the panic's
/// message (which goes into the error, not to stderr as a "panicked" line).
fn guarded<T>(parse: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    quiet_panics::install();
    quiet_panics::QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse));
    quiet_panics::QUIET.with(|q| q.set(false));
    r.unwrap_or_else(|payload| {
        quiet_panics::CAUGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the partition table parser failed on it (a bug it has: {what}); not trusted"))
    })
}

/// How many panics of the table parsers `read` has caught in this process
/// (each one is a parser bug the fuzz regressions must not see again).
pub fn caught_panics() -> u64 {
    quiet_panics::CAUGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// A panic hook that stays silent on a thread inside `read` and hands every
/// other panic to the hook that was there before.
mod quiet_panics {
    use std::cell::Cell;
    use std::sync::atomic::AtomicU64;
    use std::sync::Once;

    thread_local! {
        pub(super) static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    pub(super) static CAUGHT: AtomicU64 = AtomicU64::new(0);

    pub(super) fn install() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    previous(info);
                }
            }));
        });
    }
}

/// A used MBR entry starting at LBA 0 overlays the MBR itself, and makes
/// mbrman 0.6 panic (its alignment guess divides a range that is empty).
/// Only a sector with the boot signature is an MBR at all.
fn mbr_entries_sane(file: &File) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 512];
    if file.read_exact_at(&mut b, 0).is_err() || b[510..512] != [0x55, 0xAA] {
        return Ok(());
    }
    for n in 0..4 {
        let e = &b[446 + 16 * n..446 + 16 * (n + 1)];
        let start = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
        if e[4] != 0 && start == 0 {
            return Err(format!("MBR partition {} starts at LBA 0, over the MBR itself", n + 1));
        }
    }
    Ok(())
}

/// Largest GPT partition entry array this build reads (the usual one is
/// 128 entries of 128 bytes = 16 KiB).
const GPT_ARRAY_MAX: u64 = 4 << 20;

/// Check a GPT header at `lba` (if it has the signature) before gptman
/// reads it: gptman trusts the entry count and size (it allocates for 2^32
/// entries, or loops 2^32 times over 0-byte entries) and panics when every
/// used entry starts at LBA 0. Returns the problem, if any.
fn gpt_header_sane(file: &File, lba: u64, ss: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let Some(at) = lba.checked_mul(ss) else { return Ok(()) };
    let mut h = vec![0u8; ss as usize];
    if file.read_exact_at(&mut h, at).is_err() || &h[..8] != b"EFI PART" {
        return Ok(());
    }
    let le32 = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let (array_lba, count, entry) = (u64::from_le_bytes(h[72..80].try_into().expect("8 bytes")), le32(80), le32(84));
    let bytes = u64::from(count) * u64::from(entry);
    if entry < 128 || entry % 8 != 0 || bytes > GPT_ARRAY_MAX {
        return Err(format!(
            "the GPT header at LBA {lba} describes {count} partition entries of {entry} bytes: not a table this build reads"
        ));
    }
    let mut array = vec![0u8; bytes as usize];
    let Some(array_at) = array_lba.checked_mul(ss) else { return Ok(()) };
    if file.read_exact_at(&mut array, array_at).is_err() {
        return Ok(());
    }
    for (n, e) in array.chunks_exact(entry as usize).enumerate() {
        let used = e[..16].iter().any(|&b| b != 0);
        if used && u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")) == 0 {
            return Err(format!("GPT partition {} starts at LBA 0, over the protective MBR", n + 1));
        }
    }
    Ok(())
}

fn read_table(file: &File, size: u64, sector: u32) -> Result<Option<Table>, String> {
    let mut f = file;
    let ss = u64::from(sector);
    // gptman reads the primary header (LBA 1) and, if that is bad, the
    // backup at the last LBA.
    gpt_header_sane(file, 1, ss)?;
    gpt_header_sane(file, (size / ss).saturating_sub(1), ss)?;
    // A source too small for LBA 1 cannot hold a GPT (only, maybe, an MBR).
    let gpt = if size >= 2 * ss { gptman::GPT::read_from(&mut f, ss) } else { Err(gptman::Error::InvalidSignature) };
    match gpt {
        Ok(gpt) => {
            let mut notes = Vec::new();
            // gptman falls back to the backup when the primary is bad; check both.
            let primary = {
                use std::io::{Seek, SeekFrom};
                f.seek(SeekFrom::Start(ss)).map_err(|e| e.to_string())?;
                gptman::GPTHeader::read_from(&mut f)
            };
            match primary {
                Err(e) => notes.push(format!("the primary GPT header is damaged ({e}); read the backup")),
                Ok(h) => {
                    use std::io::{Seek, SeekFrom};
                    let backup = gpt_header_sane(file, h.backup_lba, ss);
                    let backup = backup.and_then(|()| {
                        f.seek(SeekFrom::Start(h.backup_lba.saturating_mul(ss)))
                            .map_err(|e| e.to_string())
                            .and_then(|_| gptman::GPTHeader::read_from(&mut f).map_err(|e| e.to_string()))
                            .and_then(|b| b.read_partitions(&mut f, ss).map(|p| (b, p)).map_err(|e| e.to_string()))
                    });
                    match backup {
                        Err(e) => notes.push(format!("the backup GPT (LBA {}) is damaged: {e}", h.backup_lba)),
                        Ok((b, _)) if b.partition_entry_array_crc32 != h.partition_entry_array_crc32 => {
                            notes.push("the backup GPT's partition array differs from the primary's".into())
                        }
                        Ok(_) => {}
                    }
                    if h.backup_lba.checked_add(1).and_then(|n| n.checked_mul(ss)) != Some(size) {
                        notes.push(format!(
                            "the GPT backup header is at LBA {}, not at the device's last LBA {}",
                            h.backup_lba,
                            size / ss - 1
                        ));
                    }
                }
            }
            let mut parts = Vec::new();
            for (n, p) in gpt.iter().filter(|(_, p)| p.is_used()) {
                let start = p.starting_lba.saturating_mul(ss);
                let len = p.ending_lba.saturating_add(1).saturating_sub(p.starting_lba).saturating_mul(ss);
                if start.checked_add(len).is_none_or(|end| end > size) {
                    return Err(format!("GPT partition {n} ends past the device's end"));
                }
                parts.push(partition(
                    n,
                    start,
                    len,
                    gpt_type_name(&p.partition_type_guid),
                    p.partition_name.as_str().to_string(),
                ));
            }
            no_overlaps(&parts)?;
            Ok(Some(Table { kind: super::TableKind::Gpt, partitions: parts, notes }))
        }
        Err(gptman::Error::InvalidSignature) => {
            match mbr_entries_sane(file).map(|()| mbrman::MBR::read_from(&mut f, sector))? {
                Ok(mbr) => {
                    let mut parts = Vec::new();
                    for (n, p) in mbr.iter().filter(|(_, p)| p.is_used() && !p.is_extended()) {
                        let start = u64::from(p.starting_lba) * ss;
                        let len = u64::from(p.sectors) * ss;
                        if start + len > size {
                            return Err(format!("MBR partition {n} ends past the device's end"));
                        }
                        parts.push(partition(n as u32, start, len, format!("MBR type {:#04x}", p.sys), String::new()));
                    }
                    if parts.is_empty() {
                        return Ok(None);
                    }
                    no_overlaps(&parts)?;
                    Ok(Some(Table { kind: super::TableKind::Mbr, partitions: parts, notes: Vec::new() }))
                }
                Err(e) => {
                    // No 0x55AA signature: no table at all. A signature with a
                    // table that does not read (a broken EBR chain) is damage.
                    let mut sig = [0u8; 2];
                    use std::os::unix::fs::FileExt;
                    match file.read_exact_at(&mut sig, 510) {
                        Ok(()) if sig == [0x55, 0xAA] => Err(format!("the MBR cannot be read: {e}")),
                        _ => Ok(None),
                    }
                }
            }
        }
        Err(e) => Err(format!("the GPT cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_partitions_are_not_trusted() {
        let p = |n, s, l| partition(n, s, l, String::new(), String::new());
        assert!(no_overlaps(&[p(1, 1 << 20, 1 << 20), p(2, 2 << 20, 1 << 20)]).is_ok());
        let e = no_overlaps(&[p(2, 2 << 20, 1 << 20), p(1, 1 << 20, (1 << 20) + 1)]).unwrap_err();
        assert!(e.contains("1 and 2 overlap"), "{e}");
    }

    #[test]
    fn a_panicking_parser_becomes_an_error_naming_the_panic() {
        let before = caught_panics();
        let e = guarded::<()>(|| panic!("attempt to divide by zero")).unwrap_err();
        assert!(e.contains("attempt to divide by zero") && e.contains("not trusted"), "{e}");
        assert_eq!(caught_panics(), before + 1);
        assert_eq!(guarded(|| Ok::<_, String>(7)), Ok(7));
        // The hook is quiet only inside `guarded`: other panics still report.
        assert!(!quiet_panics::QUIET.with(std::cell::Cell::get));
    }
}
