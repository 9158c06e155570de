//! What a run knows about chunks before reading them: the entries a resumed
//! run keeps (its complete frames, and the old index's zero and inherited
//! entries) and the chunks the used-space map says no filesystem uses.
//! Memory follows what is known one chunk at a time; unused chunks, which
//! can be most of a device, are kept as runs.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::format::index::{ChunkState, IndexEntry, Run};
use crate::format::ImageId;
use crate::pipeline::capture::lane::shared::LaneStats;
use crate::set::index_writer::Part;

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
    #[cfg(test)]
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
    /// cover. Time and memory follow the runs and the single entries, not
    /// the chunks.
    pub fn mark_unused(&mut self, unused: &[Range<u64>]) -> u64 {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for r in unused {
            let mut at = r.start;
            for (&c, _) in self.entries.range(r.clone()) {
                push_piece(&mut runs, at..c);
                at = c + 1;
            }
            push_piece(&mut runs, at..r.end);
        }
        // Nothing here is in an unused run already: runs come from one map.
        let mut old = std::mem::take(&mut self.unused);
        let mut bytes = 0;
        for r in &runs {
            bytes += self.bytes_of(r);
            let i = old.partition_point(|o| o.end <= r.start);
            debug_assert!(old.get(i).is_none_or(|o| o.start >= r.end), "marked unused twice");
        }
        old.extend(runs);
        old.sort_unstable_by_key(|r| r.start);
        self.unused = old;
        bytes
    }

    /// Source bytes of the chunks `r`.
    fn bytes_of(&self, r: &Range<u64>) -> u64 {
        if r.is_empty() {
            return 0;
        }
        (r.end - r.start - 1) * self.chunk_bytes + u64::from(self.extent(r.end - 1))
    }

    /// How many chunks are known.
    pub fn known(&self) -> u64 {
        self.entries.len() as u64 + self.unused.iter().map(|r| r.end - r.start).sum::<u64>()
    }

    /// Source bytes of the known chunks.
    pub fn known_bytes(&self) -> u64 {
        let singles: u64 = self.entries.keys().map(|&c| u64::from(self.extent(c))).sum();
        singles + self.unused.iter().map(|r| self.bytes_of(r)).sum::<u64>()
    }

    /// Every chunk in chunk order, as what is known (a single entry, or a
    /// run of unused chunks) and the gaps between: the ranges to read.
    pub fn parts(&self, chunk_count: u64) -> Vec<Part> {
        let mut known: Vec<Run> = self.entries.iter().map(|(&first, &entry)| Run { first, count: 1, entry }).collect();
        known.extend(self.unused.iter().map(|r| Run {
            first: r.start,
            count: r.end - r.start,
            entry: self.unused_entry(r.start),
        }));
        known.sort_unstable_by_key(|r| r.first);
        let mut parts = Vec::with_capacity(known.len() * 2 + 1);
        let mut at = 0;
        for run in known {
            // The short last chunk has an entry of its own length.
            let split = run.count > 1 && run.end() == chunk_count && self.extent(run.end() - 1) != run.entry.raw_len;
            if run.first > at {
                parts.push(Part::Read(at..run.first));
            }
            if split {
                parts.push(Part::Known(Run { count: run.count - 1, ..run }));
                parts.push(Part::Known(Run {
                    first: run.end() - 1,
                    count: 1,
                    entry: self.unused_entry(run.end() - 1),
                }));
            } else {
                parts.push(Part::Known(run));
            }
            at = run.end();
        }
        if at < chunk_count {
            parts.push(Part::Read(at..chunk_count));
        }
        parts
    }

    /// The chunks to read, in chunk order.
    pub fn to_read(&self, chunk_count: u64) -> Vec<Range<u64>> {
        self.parts(chunk_count)
            .into_iter()
            .filter_map(|p| match p {
                Part::Read(r) => Some(r),
                Part::Known(_) => None,
            })
            .collect()
    }

    /// The counters the lanes would have kept for the known chunks.
    pub fn stats(&self) -> LaneStats {
        let mut st = LaneStats { chunks: self.known(), ..LaneStats::default() };
        st.chunks_unused = self.unused.iter().map(|r| r.end - r.start).sum();
        for e in self.entries.values() {
            match e.state {
                ChunkState::Unused => st.chunks_unused += 1,
                ChunkState::Zero => {
                    st.chunks_resumed += 1;
                    st.chunks_zero += 1
                }
                ChunkState::Inherited => {
                    st.chunks_resumed += 1;
                    st.chunks_inherited += 1
                }
                _ => st.chunks_resumed += 1,
            }
        }
        st
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

/// Add `r` to `runs` (sorted), joined to the last one when adjacent.
fn push_piece(runs: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => runs.push(r),
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
        // The parts: known runs (the short last chunk its own) and the gaps to read.
        let parts = p.parts(10);
        let mut listed: Vec<(u64, IndexEntry)> = Vec::new();
        let mut read: Vec<u64> = Vec::new();
        for part in &parts {
            match part {
                Part::Known(r) => listed.extend((r.first..r.end()).map(|c| (c, r.entry))),
                Part::Read(r) => read.extend(r.clone()),
            }
        }
        let expected: Vec<(u64, IndexEntry)> =
            table.iter().enumerate().filter_map(|(c, e)| e.map(|e| (c as u64, e))).collect();
        assert_eq!(listed, expected);
        assert_eq!(listed.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 4, 7, 9]);
        assert_eq!(read, vec![0, 2, 3, 5, 6, 8], "every other chunk is read, once");
        assert_eq!(p.to_read(10), vec![0..1, 2..4, 5..7, 8..9]);
        assert_eq!(p.known_bytes(), 3 * 100 + 50);
        let st = p.stats();
        assert_eq!((st.chunks, st.chunks_unused, st.chunks_resumed), (4, 4, 0));
        assert!(!p.is_known(2) && p.is_known(1) && p.is_known(4));
        p.insert(4, stored(4));
        assert_eq!(p.get(4), Some(stored(4)));
        assert_eq!(p.known(), 4);
        let st = p.stats();
        assert_eq!((st.chunks, st.chunks_unused, st.chunks_resumed), (4, 3, 1));
    }
}
