//! ext2/3/4: which blocks the filesystem uses, from its superblock, group
//! descriptors (32- and 64-bit) and block bitmaps. Groups whose bitmap was
//! never initialised (BLOCK_UNINIT) are free except for the metadata the
//! group holds (superblock and descriptor backups, any group's bitmaps and
//! inode tables placed there, as flex_bg does). With metadata_csum the
//! superblock, every descriptor and every initialised bitmap are checked; a
//! check that fails, a feature this parser does not read (meta_bg,
//! bigalloc), or a journal that still needs recovery, is an error: the
//! caller then images the filesystem whole.

use super::{FreeMap, MetaRead};

/// The ext superblock magic, at byte 1080 of the filesystem.
pub const EXT_MAGIC: u16 = 0xEF53;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Incompat features whose layout this parser understands.
const INCOMPAT_KNOWN: u32 = 0x2
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | 0x100
    | 0x200
    | 0x400
    | INCOMPAT_CSUM_SEED
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;
/// ext4's names for incompat feature bits, and the bits it has no name for.
fn incompat_names(bits: u32) -> String {
    const NAMES: [(u32, &str); 4] =
        [(0x1, "compression"), (0x8, "journal_dev"), (0x10, "meta_bg"), (0x1000, "dirdata")];
    let mut out: Vec<String> = NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| n.to_string()).collect();
    let rest = bits & !NAMES.iter().fold(0, |a, (b, _)| a | b);
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out.join(", ")
}

const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const BG_BLOCK_UNINIT: u16 = 0x2;
const BG_INODE_UNINIT: u16 = 0x1;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// gdt_csum's CRC-16 (polynomial 0x8005, bits reflected, no final
/// inversion), continued from `crc`: Linux's `crc16`.
fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// ext4's checksum: CRC-32C continued from `seed`, without the final inversion.
fn ext4_crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// What the superblock says.
#[derive(Debug, Clone)]
pub struct Ext4 {
    /// Ext2, Ext3 or Ext4 (by features: extents → ext4, a journal → ext3).
    pub kind: super::FsKind,
    pub block_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub label: String,
}

/// Is there an ext superblock at `base`?
pub fn detect(r: &dyn MetaRead, base: u64) -> bool {
    r.read(base + 1024, 1024).is_ok_and(|sb| u16_at(&sb, 0x38) == EXT_MAGIC)
}

/// Read the filesystem at `base` (`len` bytes) and return what it is and its
/// free space (byte ranges relative to `base`).
pub fn free_space(r: &dyn MetaRead, base: u64, len: u64) -> Result<(Ext4, FreeMap), String> {
    let sb = r.read(base + 1024, 1024).map_err(|e| format!("cannot read the superblock: {e}"))?;
    let s = Super::parse(&sb, len)?;
    let (groups, metadata) = read_groups(r, base, &s)?;
    let meta = metadata.used();
    let mut free = FreeMap::default();
    let mut initialised = groups.iter().peekable();
    for g in 0..s.groups() {
        match initialised.next_if(|grp| grp.number == g) {
            Some(grp) => map_bitmap(r, base, &s, grp, &mut free)?,
            None => map_uninit(&s, g, &meta, &mut free),
        }
    }
    drop(groups);
    // Metadata is used whatever a bitmap says; what is never read is free
    // whatever it says.
    free.subtract_sorted(&meta.iter().map(|&(b, n)| (b * s.bs, n * s.bs)).collect::<Vec<_>>());
    for &(b, n) in &metadata.never_read {
        free.push(b * s.bs, n * s.bs);
    }
    free.normalize();
    let label = String::from_utf8_lossy(&sb[0x78..0x88]).trim_end_matches('\0').to_string();
    Ok((Ext4 { kind: s.kind, block_bytes: s.bs, blocks: s.blocks, free_blocks: s.free_blocks, label }, free))
}

/// What the superblock says, checked.
struct Super {
    kind: super::FsKind,
    bs: u64,
    blocks: u64,
    free_blocks: u64,
    /// The first data block (1 for 1 KiB blocks, else 0).
    first: u64,
    /// Blocks and inodes per group.
    bpg: u64,
    ipg: u64,
    inode_size: u64,
    /// Bytes of one group descriptor.
    desc: u64,
    is64: bool,
    /// metadata_csum: superblock, descriptors and bitmaps carry checksums.
    csum: bool,
    ro_compat: u32,
    reserved_gdt: u64,
    /// The checksum seed.
    seed: u32,
    /// The filesystem UUID (gdt_csum's crc16 starts from it).
    uuid: [u8; 16],
    /// sparse_super2's two backup groups.
    backups: Option<[u32; 2]>,
}

impl Super {
    fn parse(sb: &[u8], len: u64) -> Result<Super, String> {
        if u16_at(sb, 0x38) != EXT_MAGIC {
            return Err("no ext superblock (bad magic)".into());
        }
        let (incompat, ro_compat, compat) = (u32_at(sb, 0x60), u32_at(sb, 0x64), u32_at(sb, 0x5C));
        let csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        if csum && ext4_crc(!0, &sb[..0x3FC]) != u32_at(sb, 0x3FC) {
            return Err("superblock checksum mismatch".into());
        }
        let log = u32_at(sb, 0x18);
        if log > 6 {
            return Err(format!("block size 1024 << {log} is out of range"));
        }
        check_features(sb, incompat, ro_compat, compat)?;
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let hi = |at: usize| if is64 { u64::from(u32_at(sb, at)) << 32 } else { 0 };
        let s = Super {
            kind: if incompat & INCOMPAT_EXTENTS != 0 || is64 {
                super::FsKind::Ext4
            } else if compat & 0x4 != 0 {
                super::FsKind::Ext3
            } else {
                super::FsKind::Ext2
            },
            bs: 1024u64 << log,
            blocks: u64::from(u32_at(sb, 0x4)) | hi(0x150),
            free_blocks: u64::from(u32_at(sb, 0xC)) | hi(0x158),
            first: u64::from(u32_at(sb, 0x14)),
            bpg: u64::from(u32_at(sb, 0x20)),
            ipg: u64::from(u32_at(sb, 0x28)),
            inode_size: u64::from(u16_at(sb, 0x58)).max(128),
            desc: if is64 { u64::from(u16_at(sb, 0xFE)) } else { 32 },
            is64,
            csum,
            ro_compat,
            reserved_gdt: u64::from(u16_at(sb, 0xCE)),
            seed: if incompat & INCOMPAT_CSUM_SEED != 0 { u32_at(sb, 0x270) } else { ext4_crc(!0, &sb[0x68..0x78]) },
            uuid: sb[0x68..0x78].try_into().expect("16 bytes"),
            backups: (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [u32_at(sb, 0x24C), u32_at(sb, 0x250)]),
        };
        s.check_geometry(len)?;
        Ok(s)
    }

    fn check_geometry(&self, len: u64) -> Result<(), String> {
        let (bs, blocks, first, bpg, desc) = (self.bs, self.blocks, self.first, self.bpg, self.desc);
        if first != u64::from(bs == 1024) {
            return Err(format!("first data block {first} does not fit {bs}-byte blocks"));
        }
        if bpg < 256
            || bpg % 8 != 0
            || bpg > bs * 8
            || blocks <= first
            || !(32..=1024).contains(&desc)
            || !desc.is_power_of_two()
        {
            return Err(format!("implausible geometry: {blocks} blocks, {bpg} per group, descriptors of {desc} bytes"));
        }
        if blocks.checked_mul(bs).is_none_or(|b| b > len) {
            return Err(format!(
                "the filesystem says it is {blocks} blocks of {bs} bytes, more than its {len}-byte partition"
            ));
        }
        if self.gdt_blocks() * bs > 256 << 20 {
            return Err(format!("{} groups: descriptor tables this large are not read by this build", self.groups()));
        }
        Ok(())
    }

    fn groups(&self) -> u64 {
        (self.blocks - self.first).div_ceil(self.bpg)
    }

    fn gdt_blocks(&self) -> u64 {
        (self.groups() * self.desc).div_ceil(self.bs)
    }

    /// Does group `g` hold a copy of the superblock (and descriptors)?
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(b) = self.backups {
            return b.contains(&(g as u32));
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                x *= p;
            }
            x == g
        })
    }
}

/// The features said by name first; then any other this parser does not
/// read, named where ext4 names it; then the state: bitmaps are trusted
/// only on a filesystem that was cleanly unmounted and has no errors.
fn check_features(sb: &[u8], incompat: u32, ro_compat: u32, compat: u32) -> Result<(), String> {
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err("an external journal device, not a filesystem".into());
    }
    if incompat & INCOMPAT_META_BG != 0 {
        return Err("meta_bg layout is not read by this build".into());
    }
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(format!(
            "incompatible features this build does not read: {}",
            incompat_names(incompat & !INCOMPAT_KNOWN)
        ));
    }
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return Err("bigalloc (cluster bitmaps) is not read by this build".into());
    }
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err("the journal needs recovery (not cleanly unmounted): the bitmaps may be stale".into());
    }
    let state = u16_at(sb, 0x3A);
    if state & 0x2 != 0 {
        return Err("the filesystem is marked as having errors (run fsck): its bitmaps are not trusted".into());
    }
    if state & 0x1 == 0 && compat & 0x4 == 0 {
        return Err("not cleanly unmounted (no journal to make the bitmaps consistent)".into());
    }
    Ok(())
}

/// An initialised block group as its descriptor describes it: what
/// mapping its free blocks needs (its metadata goes straight into
/// [`Metadata`]; a BLOCK_UNINIT group needs nothing more, so memory
/// follows the initialised groups).
struct Group {
    number: u64,
    bitmap: u64,
    bitmap_csum: u32,
    /// Free blocks, as the descriptor counts them.
    free: u64,
}

/// Descriptors decoded per read: 256 KiB of a 64-byte descriptor table.
const DESCRIPTORS_PER_READ: u64 = 4096;

/// Read and check every group descriptor, a window at a time, and gather
/// the groups' metadata as it goes.
fn read_groups(r: &dyn MetaRead, base: u64, s: &Super) -> Result<(Vec<Group>, Metadata), String> {
    let mut gs = Vec::new();
    let mut meta = Metadata::default();
    let mut g = 0;
    while g < s.groups() {
        let n = (s.groups() - g).min(DESCRIPTORS_PER_READ);
        let at = base + (s.first + 1) * s.bs + g * s.desc;
        let gdt = r
            .read(at, (n * s.desc) as usize)
            .map_err(|e| format!("cannot read the group descriptors from group {g}: {e}"))?;
        for (i, d) in gdt.chunks_exact(s.desc as usize).enumerate() {
            gs.extend(decode_group(s, g + i as u64, d, &mut meta)?);
        }
        g += n;
    }
    meta.check(s)?;
    Ok((gs, meta))
}

/// Decode group `g`'s descriptor `d` (checksum checked with metadata_csum),
/// adding its metadata to `meta`; None for a BLOCK_UNINIT group.
fn decode_group(s: &Super, g: u64, d: &[u8], meta: &mut Metadata) -> Result<Option<Group>, String> {
    let (desc, is64) = (s.desc, s.is64);
    let hi = |at: usize| if is64 && desc >= 64 { u64::from(u32_at(d, at)) << 32 } else { 0 };
    if s.csum {
        let mut c = ext4_crc(s.seed, &(g as u32).to_le_bytes());
        c = ext4_crc(c, &d[..0x1E]);
        c = ext4_crc(c, &[0, 0]);
        c = ext4_crc(c, &d[0x20..]);
        if (c & 0xFFFF) as u16 != u16_at(d, 0x1E) {
            return Err(format!("group descriptor {g}: checksum mismatch"));
        }
    } else if s.ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        // gdt_csum: a crc16 the kernel checks before it trusts the
        // UNINIT flags and the unused-inode count; so do we.
        let mut c = crc16(0xFFFF, &s.uuid);
        c = crc16(c, &(g as u32).to_le_bytes());
        c = crc16(c, &d[..0x1E]);
        if s.is64 && desc > 0x20 {
            c = crc16(c, &d[0x20..]);
        }
        if c != u16_at(d, 0x1E) {
            return Err(format!("group descriptor {g}: checksum (crc16) mismatch"));
        }
    }
    // The kernel honours the UNINIT flags only with group checksums.
    let checksummed = s.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    let flags = u16_at(d, 0x12);
    let uninit = flags & BG_BLOCK_UNINIT != 0 && checksummed;
    let bitmap = u64::from(u32_at(d, 0)) | hi(0x20);
    meta.add_group(
        s,
        g,
        GroupMeta {
            bitmap,
            inode_bitmap: u64::from(u32_at(d, 4)) | hi(0x24),
            inode_table: u64::from(u32_at(d, 8)) | hi(0x28),
            block_uninit: uninit,
            inode_uninit: flags & BG_INODE_UNINIT != 0 && checksummed,
            itable_unused: itable_unused(s, d, is64),
        },
    );
    Ok((!uninit).then(|| Group {
        number: g,
        bitmap,
        bitmap_csum: u32::from(u16_at(d, 0x18)) | if desc >= 64 { u32::from(u16_at(d, 0x38)) << 16 } else { 0 },
        free: u64::from(u16_at(d, 0x0C)) | if is64 && desc >= 64 { u64::from(u16_at(d, 0x2C)) << 16 } else { 0 },
    }))
}

/// The inodes at the end of a group's table that were never used, when
/// group checksums make the count one the kernel trusts.
fn itable_unused(s: &Super, d: &[u8], is64: bool) -> u64 {
    if s.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) == 0 {
        return 0;
    }
    if u16_at(d, 0x12) & BG_INODE_UNINIT != 0 {
        return s.ipg;
    }
    let hi = |at: usize| if is64 && s.desc >= 64 { u64::from(u16_at(d, at)) << 16 } else { 0 };
    let unused = u64::from(u16_at(d, 0x1C)) | hi(0x32);
    let free = u64::from(u16_at(d, 0x0E)) | hi(0x2E);
    // Unused inodes are free ones: a count past that (or past the table) is
    // not one to leave inodes out on.
    if unused > free || unused > s.ipg {
        return 0;
    }
    unused
}

/// What one descriptor says of its group's metadata.
struct GroupMeta {
    bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    block_uninit: bool,
    inode_uninit: bool,
    /// Inodes at the end of the table never used (`bg_itable_unused`, all
    /// of them for INODE_UNINIT); 0 unless group checksums vouch for it.
    itable_unused: u64,
}

/// Every group's metadata as block ranges, gathered a kind at a time so
/// that the adjacent ranges flex_bg lays out (sixteen groups' bitmaps in a
/// row, their inode tables after) fold into one: memory follows the flex
/// groups, not the groups. `used` is always used. `never_read` holds the
/// end of each inode table past its last inode ever used, and the bitmaps
/// of uninitialised groups: on a large, young filesystem (lazy_itable_init)
/// most of its "used" blocks, which neither the kernel nor e2fsck reads —
/// free.
#[derive(Default)]
struct Metadata {
    supers: Vec<(u64, u64)>,
    bitmaps: Vec<(u64, u64)>,
    tables: Vec<(u64, u64)>,
    never_read: Vec<(u64, u64)>,
    /// The first range found outside the filesystem, if any.
    outside: Option<(u64, u64)>,
}

impl Metadata {
    fn add_group(&mut self, s: &Super, g: u64, m: GroupMeta) {
        if s.has_super(g) {
            fold(&mut self.supers, (s.first + g * s.bpg, 1 + s.gdt_blocks() + s.reserved_gdt));
        }
        // A bitmap the kernel never reads (it builds the bitmap of an
        // uninitialised group when it first allocates there) is free.
        let into = |never: bool| if never { 3 } else { 1 };
        let itable_blocks = (s.ipg * s.inode_size).div_ceil(s.bs);
        let in_use = ((s.ipg - m.itable_unused) * s.inode_size).div_ceil(s.bs);
        let Some(table_rest) = m.inode_table.checked_add(in_use) else {
            self.outside.get_or_insert((m.inode_table, itable_blocks));
            return;
        };
        for (kind, range) in [
            (into(m.block_uninit), (m.bitmap, 1)),
            (into(m.inode_uninit), (m.inode_bitmap, 1)),
            (2, (m.inode_table, in_use)),
            (3, (table_rest, itable_blocks - in_use)),
        ] {
            if range.0.checked_add(range.1).is_none_or(|end| end > s.blocks) {
                self.outside.get_or_insert(range);
                continue;
            }
            let list = match kind {
                1 => &mut self.bitmaps,
                2 => &mut self.tables,
                _ => &mut self.never_read,
            };
            fold(list, range);
        }
    }

    /// Every range lies inside the filesystem.
    fn check(&self, s: &Super) -> Result<(), String> {
        let outside = self
            .outside
            .or_else(|| self.supers.iter().find(|&&(b, n)| b.checked_add(n).is_none_or(|end| end > s.blocks)).copied());
        match outside {
            Some((b, n)) => {
                Err(format!("metadata at block {b} (+{n}) lies outside the filesystem's {} blocks", s.blocks))
            }
            None => Ok(()),
        }
    }

    /// The used ranges, sorted.
    fn used(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> =
            [&self.supers, &self.bitmaps, &self.tables].into_iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

/// Add `range` to `list`, folded into the last range when it follows it;
/// empty ranges are dropped.
fn fold(list: &mut Vec<(u64, u64)>, (b, n): (u64, u64)) {
    if n == 0 {
        return;
    }
    match list.last_mut() {
        Some(last) if last.0.checked_add(last.1) == Some(b) => last.1 += n,
        _ => list.push((b, n)),
    }
}

/// Add a BLOCK_UNINIT group's free blocks to `free`: everything but the
/// metadata inside it.
fn map_uninit(s: &Super, g: u64, meta: &[(u64, u64)], free: &mut FreeMap) {
    let bs = s.bs;
    let start = s.first + g * s.bpg;
    let end = (start + s.bpg).min(s.blocks);
    let mut at = start;
    let from = meta.partition_point(|&(b, n)| b + n <= start);
    for &(b, n) in meta[from..].iter().take_while(|(b, _)| *b < end) {
        if b > at {
            free.push(at * bs, (b - at) * bs);
        }
        at = at.max(b + n);
    }
    if end > at {
        free.push(at * bs, (end - at) * bs);
    }
}

/// Add an initialised group's free blocks to `free`, from its block bitmap
/// (checked).
fn map_bitmap(r: &dyn MetaRead, base: u64, s: &Super, grp: &Group, free: &mut FreeMap) -> Result<(), String> {
    let (bs, g) = (s.bs, grp.number);
    let start = s.first + g * s.bpg;
    let end = (start + s.bpg).min(s.blocks);
    let bm = r
        .read(base + grp.bitmap * bs, bs as usize)
        .map_err(|e| format!("cannot read the block bitmap of group {g}: {e}"))?;
    if s.csum {
        let c = ext4_crc(s.seed, &bm[..(s.bpg / 8) as usize]);
        let want = if s.desc >= 64 { c } else { c & 0xFFFF };
        if want != grp.bitmap_csum {
            return Err(format!("group {g}: block bitmap checksum mismatch"));
        }
    }
    let mut run: Option<u64> = None;
    let mut marked_free = 0;
    for blk in start..end {
        let bit = (blk - start) as usize;
        let used = bm[bit / 8] & (1 << (bit % 8)) != 0;
        match (used, run) {
            (false, None) => run = Some(blk),
            (true, Some(s)) => {
                free.push(s * bs, (blk - s) * bs);
                marked_free += blk - s;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        free.push(s * bs, (end - s) * bs);
        marked_free += end - s;
    }
    // Without metadata_csum nothing vouches for a bitmap's bytes: its free
    // count must at least be the one the descriptor keeps (the two are
    // updated together), or the bitmap is not trusted.
    if marked_free != grp.free {
        return Err(format!(
            "group {g}: its block bitmap marks {marked_free} blocks free, its descriptor counts {}: the bitmap is not \
             trusted",
            grp.free
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unread_features_are_named() {
        assert_eq!(super::incompat_names(0x1 | 0x1000), "compression, dirdata");
        assert_eq!(super::incompat_names(0x10 | 0x20 | 0x100000), "meta_bg, 0x100020");
    }
}
