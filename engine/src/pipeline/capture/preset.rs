//! What a run knows about chunks before reading them: the entries a resumed
//! run keeps (its complete frames, and the old index's zero and inherited
//! entries) and the chunks the used-space map says no filesystem uses.
//! Memory follows what is known one chunk at a time; unused chunks, which
//! can be most of a device, are kept as runs.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::format::index::{ChunkState, IndexEntry};
use crate::format::ImageId;

/// Chunks known before reading, each with the entry the run records for it.
#[derive(Debug, Clone)]
pub(crate) struct Preset {
    chunk_bytes: u64,
    size: u64,
    entries: BTreeMap<u64, IndexEntry>,
    /// Unused chunks with no entry of their own: sorted, disjoint runs.
    unused: Vec<Range<u64>>,
}

impl Preset {
    /// Nothing known yet about a `size`-byte source cut in `chunk_bytes`.
    pub fn new(chunk_bytes: u32, size: u64) -> Preset {
        Preset { chunk_bytes: u64::from(chunk_bytes), size, entries: BTreeMap::new(), unused: Vec::new() }
    }

    /// The raw length of `chunk` (the last one may be short).
    fn extent(&self, chunk: u64) -> u32 {
        self.chunk_bytes.min(self.size - chunk * self.chunk_bytes) as u32
    }

    /// The entry known for `chunk`, if any.
    pub fn get(&self, chunk: u64) -> Option<IndexEntry> {
        if let Some(e) = self.entries.get(&chunk) {
            return Some(*e);
        }
        self.in_unused_run(chunk).map(|_| self.unused_entry(chunk))
    }

    pub fn is_known(&self, chunk: u64) -> bool {
        self.entries.contains_key(&chunk) || self.in_unused_run(chunk).is_some()
    }

    /// Record `e` for `chunk` (it replaces whatever was known).
    pub fn insert(&mut self, chunk: u64, e: IndexEntry) {
        self.forget(chunk);
        self.entries.insert(chunk, e);
    }

    /// Forget `chunk`: it will be read.
    pub fn forget(&mut self, chunk: u64) {
        self.entries.remove(&chunk);
        if let Some(i) = self.in_unused_run(chunk) {
            let run = self.unused[i].clone();
            let (before, after) = (run.start..chunk, chunk + 1..run.end);
            let pieces: Vec<Range<u64>> = [before, after].into_iter().filter(|r| !r.is_empty()).collect();
            self.unused.splice(i..=i, pieces);
        }
    }

    /// Mark as unused every chunk of the sorted runs `unused`, where
    /// nothing else is known of it; returns the source bytes those chunks
    /// cover. Memory follows the runs, not the chunks.
    pub fn mark_unused(&mut self, unused: &[Range<u64>]) -> u64 {
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut bytes = 0;
        for c in unused.iter().flat_map(|r| r.clone()).filter(|&c| !self.is_known(c)) {
            bytes += u64::from(self.extent(c));
            match runs.last_mut() {
                Some(r) if r.end == c => r.end = c + 1,
                _ => runs.push(c..c + 1),
            }
        }
        self.unused.extend(runs);
        self.unused.sort_unstable_by_key(|r| r.start);
        bytes
    }

    /// How many chunks are known.
    pub fn known(&self) -> u64 {
        self.entries.len() as u64 + self.unused.iter().map(|r| r.end - r.start).sum::<u64>()
    }

    /// Every known chunk with its entry, in chunk order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, IndexEntry)> + '_ {
        let mut singles = self.entries.iter().map(|(&c, &e)| (c, e)).peekable();
        let mut runs = self.unused.iter().flat_map(|r| r.clone()).peekable();
        std::iter::from_fn(move || match (singles.peek(), runs.peek()) {
            (Some(&(c, _)), Some(&u)) if u < c => runs.next().map(|u| (u, self.unused_entry(u))),
            (Some(_), _) => singles.next(),
            (None, Some(_)) => runs.next().map(|u| (u, self.unused_entry(u))),
            (None, None) => None,
        })
    }

    fn in_unused_run(&self, chunk: u64) -> Option<usize> {
        let i = self.unused.partition_point(|r| r.end <= chunk);
        self.unused.get(i).filter(|r| r.contains(&chunk)).map(|_| i)
    }

    fn unused_entry(&self, chunk: u64) -> IndexEntry {
        IndexEntry {
            state: ChunkState::Unused,
            segment: 0,
            offset: 0,
            stored_len: 0,
            raw_len: self.extent(chunk),
            raw_hash: 0,
            image_id: ImageId(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(chunk: u64) -> IndexEntry {
        IndexEntry {
            state: ChunkState::Stored,
            segment: 0,
            offset: 4096 * (chunk + 1),
            stored_len: 10,
            raw_len: 100,
            raw_hash: u128::from(chunk) + 1,
            image_id: ImageId(9),
        }
    }

    /// Runs and single entries read back as one per-chunk table would.
    #[test]
    fn runs_and_entries_behave_as_a_table_of_every_chunk() {
        // 10 chunks of 100 bytes, the last 50.
        let mut p = Preset::new(100, 950);
        p.insert(3, stored(3));
        assert_eq!(p.mark_unused(&[1..5, 7..8, 9..10]), 100 * 4 + 50, "chunk 3 keeps its frame; chunk 9 is short");
        let mut table: Vec<Option<IndexEntry>> = (0..10).map(|c| p.get(c)).collect();
        assert_eq!(table[3], Some(stored(3)));
        assert_eq!(table[9].map(|e| (e.state, e.raw_len)), Some((ChunkState::Unused, 50)));
        assert!(table[0].is_none() && table[5].is_none() && table[8].is_none());
        assert_eq!(p.known(), 6);
        p.forget(2);
        p.forget(3);
        table[2] = None;
        table[3] = None;
        let listed: Vec<(u64, IndexEntry)> = p.iter().collect();
        let expected: Vec<(u64, IndexEntry)> =
            table.iter().enumerate().filter_map(|(c, e)| e.map(|e| (c as u64, e))).collect();
        assert_eq!(listed, expected);
        assert_eq!(listed.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 4, 7, 9]);
        assert!(!p.is_known(2) && p.is_known(1) && p.is_known(4));
        p.insert(4, stored(4));
        assert_eq!(p.get(4), Some(stored(4)));
        assert_eq!(p.known(), 4);
    }
}
