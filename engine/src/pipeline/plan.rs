//! Which chunks a run must touch, handed out in batches from one shared
//! cursor so each lane's reads stay sequential while the lanes balance.
//! A plan is a cursor over chunks `0..n` (every chunk is touched), or over
//! a list of batches made up front from the ranges that need work (the
//! chunks to read of a used-space image; the runs of a restore), so time
//! follows the work, not the device.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cursor over chunks, claimed a batch at a time.
#[derive(Debug)]
pub struct Plan {
    batch_chunks: u64,
    next: AtomicU64,
    work: Work,
}

#[derive(Debug)]
enum Work {
    /// Chunks `0..n`, `batch_chunks` at a time.
    All(u64),
    /// These batches, in order.
    Batches(Vec<Range<u64>>),
}

impl Plan {
    pub fn new(chunk_count: u64, batch_chunks: u64) -> Plan {
        assert!(batch_chunks > 0);
        Plan { batch_chunks, next: AtomicU64::new(0), work: Work::All(chunk_count) }
    }

    /// The batch size that gives each of `lanes` lanes about eight of
    /// `chunks` chunks' batches, so a small source is still spread over
    /// every lane, and at most `batch_max_chunks` (long sequential reads,
    /// yet lanes still balance).
    pub fn batch_for(chunks: u64, lanes: u32, batch_max_chunks: u64) -> u64 {
        (chunks / (u64::from(lanes) * 8)).clamp(1, batch_max_chunks.max(1))
    }

    /// Every chunk of `0..chunk_count`, in batches sized for `lanes`.
    pub fn for_lanes(chunk_count: u64, lanes: u32, batch_max_chunks: u64) -> Plan {
        Plan::new(chunk_count, Plan::batch_for(chunk_count, lanes, batch_max_chunks))
    }

    /// The chunks of `ranges` (sorted, disjoint), in batches sized for
    /// `lanes` by how many chunks they hold; no batch spans two ranges.
    pub fn over(ranges: &[Range<u64>], lanes: u32, batch_max_chunks: u64) -> Plan {
        let chunks: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let batch = Plan::batch_for(chunks, lanes, batch_max_chunks);
        let mut batches = Vec::new();
        for r in ranges {
            let mut at = r.start;
            while at < r.end {
                let end = (at + batch).min(r.end);
                batches.push(at..end);
                at = end;
            }
        }
        Plan::batches(batches, batch)
    }

    /// These batches (in order), each claimed whole; `batch_chunks` is what
    /// the manifest records as the batch size.
    pub fn batches(batches: Vec<Range<u64>>, batch_chunks: u64) -> Plan {
        debug_assert!(batches.windows(2).all(|w| w[0].end <= w[1].start), "batches in chunk order");
        Plan { batch_chunks: batch_chunks.max(1), next: AtomicU64::new(0), work: Work::Batches(batches) }
    }

    /// Chunks a batch holds (at most).
    pub fn batch_chunks(&self) -> u64 {
        self.batch_chunks
    }

    /// The next batch, or None when every chunk has been claimed. Batches
    /// come out in chunk order.
    pub fn claim(&self) -> Option<Range<u64>> {
        match &self.work {
            Work::All(n) => {
                let start = self.next.fetch_add(self.batch_chunks, Ordering::Relaxed);
                (start < *n).then(|| start..(start + self.batch_chunks).min(*n))
            }
            Work::Batches(b) => b.get(self.next.fetch_add(1, Ordering::Relaxed) as usize).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_chunk_once() {
        let p = Plan::new(10, 4);
        assert_eq!(p.claim(), Some(0..4));
        assert_eq!(p.claim(), Some(4..8));
        assert_eq!(p.claim(), Some(8..10));
        assert_eq!(p.claim(), None);
        assert_eq!(p.claim(), None);
    }

    #[test]
    fn a_plan_over_ranges_hands_out_only_their_chunks_never_across_a_gap() {
        // 1 lane: batches of 40 / 8 = 5 chunks.
        let p = Plan::over(&[3..10, 100..103, 1 << 40..(1 << 40) + 30], 1, 64);
        assert_eq!(p.batch_chunks(), 5);
        let got: Vec<Range<u64>> = std::iter::from_fn(|| p.claim()).collect();
        let big = 1u64 << 40;
        let mut want = vec![3..8, 8..10, 100..103];
        want.extend((0..6).map(|k| big + 5 * k..big + 5 * (k + 1)));
        assert_eq!(got, want);
        assert_eq!(Plan::over(&[], 2, 64).claim(), None);
    }
}
