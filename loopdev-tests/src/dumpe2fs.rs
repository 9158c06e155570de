//! What `dumpe2fs` says about an ext2/3/4 filesystem, parsed from its
//! output: the free blocks, and the metadata blocks the kernel never reads.
//! Shared by the engine's tests and the loop-device tests (included by path).

/// The block size and the free block ranges (merged) `dumpe2fs` lists.
pub fn free_blocks(text: &str) -> (u64, Vec<(u64, u64)>) {
    let bs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("block size");
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    // Per-group lines are indented; the summary line "Free blocks:   N" is not.
    for l in text.lines().filter_map(|l| l.strip_prefix("  Free blocks: ")) {
        if l.trim().is_empty() || l.contains(':') {
            continue;
        }
        for r in l.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == a => last.1 += b - a + 1,
                _ => ranges.push((a, b - a + 1)),
            }
        }
    }
    (bs, ranges)
}

/// Blocks of metadata the kernel never reads, from dumpe2fs's own group
/// listing: the end of each inode table past its last inode ever used
/// (`N unused inodes`), and the bitmaps of groups flagged BLOCK_UNINIT /
/// INODE_UNINIT — trusted only with group checksums, as the kernel does.
pub fn never_read(text: &str) -> Vec<(u64, u64)> {
    let features = text.lines().find_map(|l| l.strip_prefix("Filesystem features:")).unwrap_or_default();
    if !features.contains("metadata_csum") && !features.contains("uninit_bg") {
        return Vec::new();
    }
    let num = |key: &str| -> u64 {
        text.lines()
            .find_map(|x| x.strip_prefix(key))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{key}"))
    };
    let (ipg, isize, bs) = (num("Inodes per group:"), num("Inode size:"), num("Block size:"));
    let mut out: Vec<(u64, u64)> = Vec::new();
    let (mut block_uninit, mut inode_uninit, mut table) = (false, false, None);
    for l in text.lines() {
        let first_word = |r: &str| r.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        if l.starts_with("Group ") {
            block_uninit = l.contains("BLOCK_UNINIT");
            inode_uninit = l.contains("INODE_UNINIT");
        } else if let Some(r) = l.strip_prefix("  Block bitmap at ").filter(|_| block_uninit) {
            out.push((first_word(r), 1));
        } else if let Some(r) = l.strip_prefix("  Inode bitmap at ").filter(|_| inode_uninit) {
            out.push((first_word(r), 1));
        } else if let Some(r) = l.strip_prefix("  Inode table at ") {
            let (a, b) = r.split_whitespace().next().unwrap().split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            table = Some((a, b - a + 1));
        } else if let Some(n) = l.split(", ").find_map(|p| p.strip_suffix(" unused inodes")) {
            let unused: u64 = if inode_uninit { ipg } else { n.trim().parse().unwrap() };
            let (a, len) = table.take().expect("the group's inode table comes first");
            let in_use = ((ipg - unused) * isize).div_ceil(bs);
            if len > in_use {
                out.push((a + in_use, len - in_use));
            }
        }
    }
    out
}

/// Sorted, merged union of two block range lists.
pub fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in all {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= s => last.1 = last.1.max(s + l - last.0),
            _ => out.push((s, l)),
        }
    }
    out
}
