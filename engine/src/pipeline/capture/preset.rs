//! What a run knows about chunks before reading them: the entries a resumed
//! run keeps (its complete frames, and the old index's zero and inherited
//! entries) and the chunks the used-space map says no filesystem uses.
//! Memory follows what is known: single entries one chunk at a time, and
//! runs (unused chunks, which can be most of a device; a finished index's
//! zero and inherited runs) a run at a time.

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
    /// Runs of chunks with one entry each, none of them in `entries`:
    /// sorted, disjoint; every chunk of a run has its run's entry (the
    /// short last chunk is never in a longer run).
    runs: Vec<Run>,
}

impl Preset {
    /// Nothing known yet about a `size`-byte source cut in `chunk_bytes`.
    pub fn new(chunk_bytes: u32, size: u64) -> Preset {
        Preset { chunk_bytes: u64::from(chunk_bytes), size, entries: BTreeMap::new(), runs: Vec::new() }
    }

    /// The raw length of `chunk` (the last one may be short).
    fn extent(&self, chunk: u64) -> u32 {
        self.chunk_bytes.min(self.size - chunk * self.chunk_bytes) as u32
    }

    fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_bytes)
    }

    /// The entry known for `chunk`, if any.
    #[cfg(test)]
    pub fn get(&self, chunk: u64) -> Option<IndexEntry> {
        if let Some(e) = self.entries.get(&chunk) {
            return Some(*e);
        }
        self.in_run(chunk).map(|i| self.runs[i].entry)
    }

    pub fn is_known(&self, chunk: u64) -> bool {
        self.entries.contains_key(&chunk) || self.in_run(chunk).is_some()
    }

    /// Record `e` for `chunk` (it replaces whatever was known).
    pub fn insert(&mut self, chunk: u64, e: IndexEntry) {
        self.forget(chunk);
        self.entries.insert(chunk, e);
    }

    /// Forget `chunk`: it will be read.
    pub fn forget(&mut self, chunk: u64) {
        self.entries.remove(&chunk);
        if let Some(i) = self.in_run(chunk) {
            let run = self.runs[i];
            let before = Run { count: chunk - run.first, ..run };
            let after = Run { first: chunk + 1, count: run.end() - chunk - 1, entry: run.entry };
            let pieces: Vec<Run> = [before, after].into_iter().filter(|r| r.count > 0).collect();
            self.runs.splice(i..=i, pieces);
        }
    }

    /// The single entries, in chunk order.
    pub fn singles(&self) -> impl Iterator<Item = (u64, IndexEntry)> + '_ {
        self.entries.iter().map(|(&c, &e)| (c, e))
    }

    /// Record `run` for those of its chunks nothing is known of yet (a
    /// run never mixes chunk lengths: its entry is every chunk's).
    pub fn insert_run(&mut self, run: Run) {
        let mut fresh = Vec::new();
        for piece in self.unknown_in(run.first..run.end()) {
            fresh.push(Run { first: piece.start, count: piece.end - piece.start, entry: run.entry });
        }
        self.runs.extend(fresh);
        self.runs.sort_unstable_by_key(|r| r.first);
    }

    /// The pieces of `chunks` nothing is known of, in order.
    fn unknown_in(&self, chunks: Range<u64>) -> Vec<Range<u64>> {
        let mut known: Vec<Range<u64>> = self.entries.range(chunks.clone()).map(|(&c, _)| c..c + 1).collect();
        let from = self.runs.partition_point(|r| r.end() <= chunks.start);
        known.extend(self.runs[from..].iter().take_while(|r| r.first < chunks.end).map(|r| r.first..r.end()));
        known.sort_unstable_by_key(|r| r.start);
        let mut out = Vec::new();
        let mut at = chunks.start;
        for k in known {
            push_piece(&mut out, at..k.start.min(chunks.end));
            at = at.max(k.end);
        }
        push_piece(&mut out, at..chunks.end);
        out
    }

    /// Mark as unused every chunk of the sorted runs `unused`, where
    /// nothing else is known of it; returns the source bytes those chunks
    /// cover. Time and memory follow the runs and the single entries, not
    /// the chunks.
    pub fn mark_unused(&mut self, unused: &[Range<u64>]) -> u64 {
        let mut bytes = 0;
        let mut fresh = Vec::new();
        for r in unused {
            for piece in self.unknown_in(r.clone()) {
                bytes += self.bytes_of(&piece);
                fresh.extend(self.unused_runs(piece));
            }
        }
        self.runs.extend(fresh);
        self.runs.sort_unstable_by_key(|r| r.first);
        bytes
    }

    /// `chunks` as unused runs: the short last chunk a run of its own.
    fn unused_runs(&self, chunks: Range<u64>) -> Vec<Run> {
        let unused = |first: u64, count: u64| Run { first, count, entry: self.unused_entry(first) };
        let last = chunks.end - 1;
        if chunks.end - chunks.start > 1
            && chunks.end == self.chunk_count()
            && self.extent(last) != self.extent(chunks.start)
        {
            return vec![unused(chunks.start, last - chunks.start), unused(last, 1)];
        }
        vec![unused(chunks.start, chunks.end - chunks.start)]
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
        self.entries.len() as u64 + self.runs.iter().map(|r| r.count).sum::<u64>()
    }

    /// Source bytes of the known chunks.
    pub fn known_bytes(&self) -> u64 {
        let singles: u64 = self.entries.keys().map(|&c| u64::from(self.extent(c))).sum();
        singles + self.runs.iter().map(|r| self.bytes_of(&(r.first..r.end()))).sum::<u64>()
    }

    /// Every chunk in chunk order, as what is known (a single entry, or a
    /// run) and the gaps between: the ranges to read.
    pub fn parts(&self, chunk_count: u64) -> Vec<Part> {
        let mut known: Vec<Run> = self.entries.iter().map(|(&first, &entry)| Run { first, count: 1, entry }).collect();
        known.extend(self.runs.iter().copied());
        known.sort_unstable_by_key(|r| r.first);
        let mut parts = Vec::with_capacity(known.len() * 2 + 1);
        let mut at = 0;
        for run in known {
            if run.first > at {
                parts.push(Part::Read(at..run.first));
            }
            at = run.end();
            parts.push(Part::Known(run));
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
        let singles = self.entries.values().map(|e| (e, 1));
        for (e, n) in singles.chain(self.runs.iter().map(|r| (&r.entry, r.count))) {
            match e.state {
                ChunkState::Unused => st.chunks_unused += n,
                ChunkState::Zero => {
                    st.chunks_resumed += n;
                    st.chunks_zero += n
                }
                ChunkState::Inherited => {
                    st.chunks_resumed += n;
                    st.chunks_inherited += n
                }
                _ => st.chunks_resumed += n,
            }
        }
        st
    }

    fn in_run(&self, chunk: u64) -> Option<usize> {
        let i = self.runs.partition_point(|r| r.end() <= chunk);
        self.runs.get(i).filter(|r| r.first <= chunk).map(|_| i)
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

    /// Runs kept whole (a finished index's zero and inherited runs) cover
    /// only what nothing else covers, split where single entries sit, and
    /// are forgotten chunk by chunk like any other.
    #[test]
    fn known_runs_fill_only_the_unknown_chunks() {
        let mut p = Preset::new(100, 2000); // 20 chunks of 100 bytes
        p.insert(5, stored(5));
        let zero = IndexEntry { state: ChunkState::Zero, raw_len: 100, raw_hash: 7, ..stored(0) };
        let zero = IndexEntry { segment: 0, offset: 0, stored_len: 0, image_id: ImageId(0), ..zero };
        p.insert_run(Run { first: 2, count: 8, entry: zero });
        assert_eq!(p.known(), 8, "chunks 2..10: 5 keeps its frame, the other seven the run");
        assert_eq!(p.get(5), Some(stored(5)));
        assert_eq!(p.get(9), Some(zero));
        let all: Vec<Range<u64>> = vec![0..10, 10..20];
        assert_eq!(p.mark_unused(&all), 12 * 100, "only chunks nothing else covers become unused");
        assert_eq!(p.known(), 20);
        p.forget(3);
        assert_eq!(p.to_read(20), vec![3..4]);
        let st = p.stats();
        assert_eq!((st.chunks_zero, st.chunks_resumed, st.chunks_unused), (6, 7, 12));
    }
}
