//! The expiry index: which key needs an expiry pass next.
//!
//! Expiring must cost what expires, never a scan of the store. Each key carries the time of its
//! next pass (`scheduled`, never later than its earliest record expiry) and this min-heap holds
//! `(scheduled, key hash)` pairs, so it keeps no copy of any key. An entry goes stale when its key
//! is removed or rescheduled; a stale entry is recognised when popped (no key with that hash is
//! scheduled at that time) and skipped. The heap is rebuilt from the keys once stale entries
//! outnumber live ones (one per key) about two to one, so it stays within a constant factor of the
//! number of keys.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale entries tolerated per live one before a rebuild.
const STALE_PER_LIVE: usize = 2;
/// Stale entries always tolerated, so small stores do not rebuild on every change.
const STALE_SLACK: usize = 64;

#[derive(Debug, Default)]
pub(super) struct ExpiryIndex {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    pops: u64,
}

impl ExpiryIndex {
    /// Schedules a pass at `at` (ms) for the key whose hash is `hash`.
    pub fn push(&mut self, at: u64, hash: u64) {
        self.heap.push(Reverse((at, hash)));
    }

    /// Pops the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, u64)> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.pops += 1;
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Total entries ever popped.
    pub fn pops(&self) -> u64 {
        self.pops
    }

    /// Rebuilds the heap from the live `(scheduled, hash)` pairs of `live` keys when stale
    /// entries have piled up.
    pub fn compact<I>(&mut self, live: usize, entries: impl FnOnce() -> I)
    where
        I: Iterator<Item = (u64, u64)>,
    {
        if self.heap.len() > live * (1 + STALE_PER_LIVE) + STALE_SLACK {
            self.heap = entries().map(Reverse).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_only_when_due() {
        let mut index = ExpiryIndex::default();
        index.push(30, 1);
        index.push(10, 2);
        index.push(20, 3);
        assert_eq!(index.pop_due(5), None);
        assert_eq!(index.pop_due(25), Some((10, 2)));
        assert_eq!(index.pop_due(25), Some((20, 3)));
        assert_eq!(index.pop_due(25), None);
        assert_eq!((index.len(), index.pops()), (1, 2));
    }

    #[test]
    fn compacts_only_when_stale_entries_pile_up() {
        let mut index = ExpiryIndex::default();
        for i in 0..100 {
            index.push(i, i);
        }
        index.compact(100, std::iter::empty);
        assert_eq!(index.len(), 100);
        index.compact(10, || (0..10).map(|i| (i, i)));
        assert_eq!(index.len(), 10);
    }
}
