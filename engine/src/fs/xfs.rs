//! XFS: free space from each allocation group's free-space B+tree (by
//! block number, the "bnobt"), reached from the AGF. On version 5
//! filesystems the superblock, every AGF and every btree block are
//! CRC-checked. Everything not in a free extent — the AG headers, the free
//! list, the internal log, inodes, data — is used. A check that fails, a
//! realtime section or an unexpected shape is an error: the caller images
//! the filesystem whole.

use super::{FreeMap, MetaRead};

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// XFS's checksum: CRC-32C of the buffer with its CRC field taken as zero,
/// stored little-endian.
fn crc_ok(buf: &[u8], at: usize) -> bool {
    let mut c = crc32c::crc32c(&buf[..at]);
    c = crc32c::crc32c_append(c, &[0; 4]);
    c = crc32c::crc32c_append(c, &buf[at + 4..]);
    c == u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// What the superblock says.
#[derive(Debug, Clone)]
pub struct Xfs {
    pub block_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub label: String,
}

const NULL_AGBLOCK: u32 = 0xFFFF_FFFF;

/// Longest internal log this build reads to check it is clean.
const LOG_MAX: u64 = 2 << 30;
const LOG_RECORD_MAGIC: u32 = 0xFEED_BABE;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;

/// Allocations still in a dirty log are not in the free-space btrees yet:
/// map the filesystem only when its log ends with an unmount record. The
/// last record written is the one with the highest LSN; every 512-byte log
/// block starts with its cycle number except record headers, which start
/// with the magic, so scanning for the magic finds every header.
fn log_is_clean(r: &dyn MetaRead, base: u64, sb: &[u8], bs: u64, agblocks: u64, blocks: u64) -> Result<(), String> {
    let logstart = be64(sb, 48);
    if logstart == 0 {
        return Err("an external log device: whether the log is clean cannot be checked here".into());
    }
    let agblklog = u32::from(sb[124]);
    if agblklog >= 32 {
        return Err("implausible AG block log".into());
    }
    let (agno, agbno) = (logstart >> agblklog, logstart & ((1 << agblklog) - 1));
    let log_blocks = u64::from(be32(sb, 96));
    let len = log_blocks * bs;
    if len == 0 || len > LOG_MAX {
        return Err(format!("a log of {len} bytes is not checked by this build"));
    }
    // The log lies inside the filesystem (its fields are untrusted).
    let first = agno.checked_mul(agblocks).and_then(|b| b.checked_add(agbno));
    let Some(first) = first.filter(|&f| agbno < agblocks && f.checked_add(log_blocks).is_some_and(|e| e <= blocks))
    else {
        return Err(format!("the log's start (block {logstart}) lies outside the filesystem"));
    };
    let start = base + first * bs;
    let mut best: Option<(u64, u64)> = None; // (lsn, byte offset in the log)
    let piece = 4u64 << 20;
    let mut at = 0;
    while at < len {
        let n = piece.min(len - at);
        let b = r.read(start + at, n as usize).map_err(|e| format!("cannot read the log: {e}"))?;
        for (i, bb) in b.chunks_exact(512).enumerate() {
            if be32(bb, 0) != LOG_RECORD_MAGIC || !matches!(be32(bb, 8), 1 | 2) {
                continue;
            }
            let lsn = be64(bb, 16);
            if best.is_none_or(|(l, _)| lsn > l) {
                best = Some((lsn, at + i as u64 * 512));
            }
        }
        at += n;
    }
    let Some((_, off)) = best else { return Err("no log record found".into()) };
    let head = r.read(start + off, 512).map_err(|e| format!("cannot read the log: {e}"))?;
    let size = u64::from(be32(&head, 320));
    let hblks = if be32(&head, 8) & 2 != 0 && size > 32768 { size.div_ceil(32768) } else { 1 };
    let op_at = (off + hblks * 512) % len;
    let op = r.read(start + op_at, 512).map_err(|e| format!("cannot read the log: {e}"))?;
    if be32(&head, 40) == 1 && op[9] & XLOG_UNMOUNT_TRANS != 0 {
        return Ok(());
    }
    Err("the log is not clean (not unmounted cleanly, or mounted with norecovery): allocations in it are not \
         in the free-space btrees yet"
        .into())
}

/// Read the XFS at `base` (`len` bytes) and return what it is and its free
/// space (byte ranges relative to `base`).
pub fn free_space(r: &dyn MetaRead, base: u64, len: u64) -> Result<(Xfs, FreeMap), String> {
    let sb0 = r.read(base, 512).map_err(|e| format!("cannot read the superblock: {e}"))?;
    if &sb0[..4] != b"XFSB" {
        return Err("no XFS superblock (bad magic)".into());
    }
    let sect = u64::from(be16(&sb0, 102));
    if !(512..=32768).contains(&sect) || !sect.is_power_of_two() {
        return Err(format!("sector size {sect} is out of range"));
    }
    let sb = r.read(base, sect as usize).map_err(|e| format!("cannot read the superblock: {e}"))?;
    let v5 = be16(&sb, 100) & 0xF == 5;
    if v5 && !crc_ok(&sb, 224) {
        return Err("superblock checksum mismatch".into());
    }
    let bs = u64::from(be32(&sb, 4));
    let blocks = be64(&sb, 8);
    let rblocks = be64(&sb, 16);
    let agblocks = u64::from(be32(&sb, 84));
    let agcount = u64::from(be32(&sb, 88));
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() || agblocks == 0 || agcount == 0 {
        return Err(format!("implausible geometry: {bs}-byte blocks, {agcount} groups of {agblocks} blocks"));
    }
    if rblocks != 0 {
        return Err("a realtime section is not read by this build".into());
    }
    if sb[126] != 0 {
        return Err("the filesystem was never finished (sb_inprogress)".into());
    }
    if blocks.checked_mul(bs).is_none_or(|b| b > len)
        || blocks > agblocks * agcount
        || (agcount - 1) * agblocks >= blocks
    {
        return Err(format!("the filesystem says it is {blocks} blocks of {bs} bytes, more than its {len} bytes"));
    }
    log_is_clean(r, base, &sb, bs, agblocks, blocks)?;
    let hdr = if v5 { 56 } else { 16 };
    let mut free = FreeMap::default();
    let mut free_blocks = 0;
    for ag in 0..agcount {
        let ag_start = ag * agblocks;
        let agf = r
            .read(base + ag_start * bs + sect, sect as usize)
            .map_err(|e| format!("cannot read the AGF of group {ag}: {e}"))?;
        if &agf[..4] != b"XAGF" || be32(&agf, 8) as u64 != ag {
            return Err(format!("group {ag}: bad AGF (magic or sequence number)"));
        }
        if v5 && !crc_ok(&agf, 216) {
            return Err(format!("group {ag}: AGF checksum mismatch"));
        }
        let ag_len = u64::from(be32(&agf, 12));
        if ag_len != agblocks.min(blocks.saturating_sub(ag_start)) {
            return Err(format!("group {ag}: the AGF says {ag_len} blocks, the superblock's geometry says otherwise"));
        }
        let (bno_root, cnt_root) = (be32(&agf, 16), be32(&agf, 20));
        let (bno_levels, cnt_levels) = (be32(&agf, 28), be32(&agf, 32));
        let want_free = u64::from(be32(&agf, 52));
        for (root, levels) in [(bno_root, bno_levels), (cnt_root, cnt_levels)] {
            if ag_len > agblocks || !(1..=10).contains(&levels) || u64::from(root) >= ag_len {
                return Err(format!("group {ag}: implausible AGF (length {ag_len}, root {root}, {levels} levels)"));
            }
        }
        let tree = Tree { r, base, bs, ag, ag_start, ag_len, v5, hdr };
        // The by-block tree gives the extents, in order, never over the AG's headers.
        let mut got = 0u64;
        let mut last_end = 0u64;
        tree.walk(bno_root, bno_levels, if v5 { b"AB3B" } else { b"ABTB" }, &mut |start, count| {
            if start < last_end {
                return Err(format!("group {ag}: free extent {start}+{count} is out of order"));
            }
            last_end = start + count;
            if start * bs < 4 * sect {
                return Err(format!("group {ag}: a free extent covers the AG headers"));
            }
            free.push((ag_start + start) * bs, count * bs);
            got += count;
            Ok(())
        })?;
        if got != want_free {
            return Err(format!("group {ag}: the btree holds {got} free blocks, the AGF says {want_free}"));
        }
        // The by-size tree holds the same extents: its total must agree too
        // (a v4 filesystem has no checksums to vouch for either tree).
        let mut by_size = 0u64;
        tree.walk(cnt_root, cnt_levels, if v5 { b"AB3C" } else { b"ABTC" }, &mut |_, count| {
            by_size += count;
            Ok(())
        })?;
        if by_size != got {
            return Err(format!(
                "group {ag}: the by-block free-space btree holds {got} free blocks, the by-size one {by_size}"
            ));
        }
        free_blocks += got;
    }
    let label = String::from_utf8_lossy(&sb[108..120]).trim_end_matches('\0').to_string();
    Ok((Xfs { block_bytes: bs, blocks, free_blocks, label }, free))
}

/// One allocation group's free-space btree reader.
struct Tree<'a> {
    r: &'a dyn MetaRead,
    base: u64,
    bs: u64,
    ag: u64,
    ag_start: u64,
    ag_len: u64,
    v5: bool,
    hdr: usize,
}

impl Tree<'_> {
    fn block(&self, agbno: u32, level: u32, magic: &[u8; 4]) -> Result<Vec<u8>, String> {
        let ag = self.ag;
        if u64::from(agbno) >= self.ag_len {
            return Err(format!("group {ag}: btree block {agbno} is outside the group"));
        }
        let b = self
            .r
            .read(self.base + (self.ag_start + u64::from(agbno)) * self.bs, self.bs as usize)
            .map_err(|e| format!("group {ag}: cannot read btree block {agbno}: {e}"))?;
        if &b[..4] != magic || u32::from(be16(&b, 4)) != level {
            return Err(format!("group {ag}: free-space btree block {agbno}: bad magic or level"));
        }
        if self.v5 && !crc_ok(&b, 52) {
            return Err(format!("group {ag}: free-space btree block {agbno}: checksum mismatch"));
        }
        if usize::from(be16(&b, 6)) > (self.bs as usize - self.hdr) / 8 {
            return Err(format!("group {ag}: free-space btree block {agbno}: too many records"));
        }
        Ok(b)
    }

    /// Every record (start, count) of the tree at `root`: down the leftmost
    /// path to the first leaf, then along the leaves. Records are checked to
    /// lie in the group and be non-empty.
    fn walk(
        &self,
        root: u32,
        levels: u32,
        magic: &[u8; 4],
        visit: &mut dyn FnMut(u64, u64) -> Result<(), String>,
    ) -> Result<(), String> {
        let (ag, hdr) = (self.ag, self.hdr);
        let mut at = root;
        for level in (1..levels).rev() {
            let b = self.block(at, level, magic)?;
            if be16(&b, 6) == 0 {
                return Err(format!("group {ag}: empty free-space btree node {at}"));
            }
            let maxrecs = (self.bs as usize - hdr) / 12;
            at = be32(&b, hdr + maxrecs * 8);
        }
        let mut seen = 0u64;
        while at != NULL_AGBLOCK {
            seen += 1;
            if seen > self.ag_len {
                return Err(format!("group {ag}: the free-space btree's leaves loop"));
            }
            let b = self.block(at, 0, magic)?;
            for i in 0..usize::from(be16(&b, 6)) {
                let start = u64::from(be32(&b, hdr + i * 8));
                let count = u64::from(be32(&b, hdr + i * 8 + 4));
                if count == 0 || start + count > self.ag_len {
                    return Err(format!("group {ag}: free extent {start}+{count} is out of range"));
                }
                visit(start, count)?;
            }
            at = be32(&b, 12);
        }
        Ok(())
    }
}
