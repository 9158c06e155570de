//! Which chunks a run must touch, handed out in batches from one shared
//! cursor so each lane's reads stay sequential while the lanes balance.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cursor over chunks `0..chunk_count`, claimed `batch_chunks` at a time.
#[derive(Debug)]
pub struct Plan {
    chunk_count: u64,
    batch_chunks: u64,
    next: AtomicU64,
}

impl Plan {
    pub fn new(chunk_count: u64, batch_chunks: u64) -> Plan {
        assert!(batch_chunks > 0);
        Plan { chunk_count, batch_chunks, next: AtomicU64::new(0) }
    }

    /// A plan whose batches give each of `lanes` lanes about eight, so a
    /// small source is still spread over every lane, and are at most
    /// `batch_max_chunks` (long sequential reads, yet lanes still balance).
    pub fn for_lanes(chunk_count: u64, lanes: u32, batch_max_chunks: u64) -> Plan {
        Plan::new(chunk_count, (chunk_count / (u64::from(lanes) * 8)).clamp(1, batch_max_chunks.max(1)))
    }

    /// Chunks a batch holds.
    pub fn batch_chunks(&self) -> u64 {
        self.batch_chunks
    }

    /// The next batch, or None when every chunk has been claimed.
    pub fn claim(&self) -> Option<Range<u64>> {
        let start = self.next.fetch_add(self.batch_chunks, Ordering::Relaxed);
        (start < self.chunk_count).then(|| start..(start + self.batch_chunks).min(self.chunk_count))
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
}
