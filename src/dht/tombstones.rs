//! Tombstones of removed providers.
//!
//! A REMOVE reaches the replicas, but a copy of the removed record may still be on its way: a
//! hand-off from a replica that had not heard of the removal yet, a STORE that crossed the
//! REMOVE. Without a memory of the removal, such a late STORE would bring the record back until
//! it expires. So a removal leaves a tombstone `(key, node_id) -> until` that lives as long as
//! the removed record could have, and a STORE of that provider whose `advertised_at` is not newer
//! than the removal is dropped while it stands. A genuine re-advertisement carries a later
//! `advertised_at` and goes through.
//!
//! The set is bounded: past its capacity the tombstone closest to its end is dropped first.
//! Times: `until_ms` on the node's monotonic clock, `removed_at` in Unix seconds (it is compared
//! with `advertised_at`, which is wall-clock seconds written by the advertiser).

use std::collections::{BTreeSet, HashMap};

/// `(key, node_id)` of a removed provider.
type Id = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct Tomb {
    until_ms: u64,
    removed_at: u64,
}

/// Bounded set of tombstones.
#[derive(Debug)]
pub(crate) struct Tombstones {
    by_id: HashMap<Id, Tomb>,
    /// `(until_ms, key, node_id)`, for purging and for evicting the one that ends first.
    by_end: BTreeSet<(u64, Vec<u8>, Vec<u8>)>,
    capacity: usize,
}

impl Tombstones {
    /// A set holding at most `capacity` tombstones (at least 1).
    pub(crate) fn new(capacity: usize) -> Tombstones {
        Tombstones {
            by_id: HashMap::new(),
            by_end: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records that `node_id`'s provider under `key` was removed at `removed_at` (Unix seconds)
    /// and that copies must be refused until `until_ms`. An existing tombstone is extended, never
    /// shortened.
    pub(crate) fn insert(&mut self, key: &[u8], node_id: &[u8], until_ms: u64, removed_at: u64) {
        let id = (key.to_vec(), node_id.to_vec());
        let tomb = match self.by_id.get(&id) {
            Some(old) => {
                self.by_end
                    .remove(&(old.until_ms, id.0.clone(), id.1.clone()));
                Tomb {
                    until_ms: old.until_ms.max(until_ms),
                    removed_at: old.removed_at.max(removed_at),
                }
            }
            None => {
                if self.by_id.len() >= self.capacity {
                    self.evict_first();
                }
                Tomb {
                    until_ms,
                    removed_at,
                }
            }
        };
        self.by_end
            .insert((tomb.until_ms, id.0.clone(), id.1.clone()));
        self.by_id.insert(id, tomb);
    }

    /// Whether a STORE of `node_id`'s provider under `key`, advertised at `advertised_at`, must
    /// be dropped at `now_ms`: a tombstone stands and the record is not newer than the removal
    /// (a record without `advertised_at` is taken as old).
    pub(crate) fn blocks(
        &self,
        key: &[u8],
        node_id: &[u8],
        advertised_at: Option<u64>,
        now_ms: u64,
    ) -> bool {
        if self.by_id.is_empty() {
            return false;
        }
        let Some(tomb) = self.by_id.get(&(key.to_vec(), node_id.to_vec())) else {
            return false;
        };
        tomb.until_ms > now_ms && advertised_at.is_none_or(|at| at <= tomb.removed_at)
    }

    /// Forgets the tombstone of `(key, node_id)` (the owner advertises it again).
    pub(crate) fn clear(&mut self, key: &[u8], node_id: &[u8]) {
        if let Some(tomb) = self.by_id.remove(&(key.to_vec(), node_id.to_vec())) {
            self.by_end
                .remove(&(tomb.until_ms, key.to_vec(), node_id.to_vec()));
        }
    }

    /// Drops the tombstones that ended at or before `now_ms`; returns how many.
    pub(crate) fn purge(&mut self, now_ms: u64) -> usize {
        let mut purged = 0;
        while let Some(first) = self.by_end.first() {
            if first.0 > now_ms {
                break;
            }
            self.evict_first();
            purged += 1;
        }
        purged
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn evict_first(&mut self) {
        if let Some((_, key, node_id)) = self.by_end.pop_first() {
            self.by_id.remove(&(key, node_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_older_copies_until_it_ends() {
        let mut t = Tombstones::new(10);
        t.insert(b"k", b"n", 1_000, 50);
        assert!(t.blocks(b"k", b"n", Some(49), 0));
        assert!(t.blocks(b"k", b"n", Some(50), 999));
        assert!(t.blocks(b"k", b"n", None, 0));
        assert!(
            !t.blocks(b"k", b"n", Some(51), 0),
            "a newer advertisement goes through"
        );
        assert!(!t.blocks(b"k", b"n", Some(1), 1_000), "ended");
        assert!(!t.blocks(b"k", b"other", Some(1), 0));
        assert!(!t.blocks(b"other", b"n", Some(1), 0));
    }

    #[test]
    fn purge_and_clear() {
        let mut t = Tombstones::new(10);
        t.insert(b"a", b"n", 10, 0);
        t.insert(b"b", b"n", 20, 0);
        assert_eq!(t.purge(10), 1);
        assert_eq!(t.len(), 1);
        t.clear(b"b", b"n");
        assert_eq!(t.len(), 0);
        assert!(t.by_end.is_empty());
    }

    #[test]
    fn reinsert_extends_and_capacity_evicts_the_first_to_end() {
        let mut t = Tombstones::new(2);
        t.insert(b"a", b"n", 10, 5);
        t.insert(b"a", b"n", 5, 1);
        assert!(
            t.blocks(b"a", b"n", Some(5), 9),
            "kept the later end and removal"
        );
        assert_eq!(t.by_end.len(), 1);
        t.insert(b"b", b"n", 30, 0);
        t.insert(b"c", b"n", 20, 0);
        assert_eq!(t.len(), 2);
        assert!(
            !t.blocks(b"a", b"n", None, 0),
            "a ended first and was evicted"
        );
        assert!(t.blocks(b"b", b"n", None, 0));
        assert!(t.blocks(b"c", b"n", None, 0));
    }
}
