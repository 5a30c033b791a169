//! Tombstones of removed provider slots.
//!
//! A REMOVE reaches the replicas, but a copy of the removed record may still be on its way: a
//! hand-off from a replica that had not heard of the removal yet, a STORE that crossed the
//! REMOVE, or a STORE captured earlier and replayed on purpose. Without a memory of the removal,
//! such a STORE would bring the record back until it expires. So a removal leaves a tombstone
//! on its slot `(key, publisher, node_id)` holding the removal's sequence, for as long as the
//! removed record could have lived, and a STORE of that slot whose sequence is not newer is
//! refused while it stands. The publisher's next record carries a higher sequence and goes
//! through. The tombstone keeps the removal's signature too, so that the removal can follow a
//! copy handed off while it was on its way. Sequences are the publisher's: they are compared with each other only, never with
//! this node's clock.
//!
//! The set is bounded: past its capacity the tombstone closest to its end is dropped first.
//! `until_ms` is on the node's monotonic clock.

use std::collections::{BTreeSet, HashMap};

use crate::seal::{Publisher, Removal, SIGNATURE_LEN};

/// A removed slot: `(key, publisher, node_id)`.
type Slot = (Vec<u8>, Publisher, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct Tomb {
    until_ms: u64,
    seq: u64,
    /// The signature of the removal with sequence `seq`.
    sig: [u8; SIGNATURE_LEN],
}

/// Bounded set of tombstones.
#[derive(Debug)]
pub(crate) struct Tombstones {
    by_slot: HashMap<Slot, Tomb>,
    /// `(until_ms, slot)`, for purging and for evicting the one that ends first.
    by_end: BTreeSet<(u64, Slot)>,
    capacity: usize,
}

impl Tombstones {
    /// A set holding at most `capacity` tombstones (at least 1).
    pub(crate) fn new(capacity: usize) -> Tombstones {
        Tombstones {
            by_slot: HashMap::new(),
            by_end: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records the publisher's `removal` of its provider `node_id` under `key`: older copies
    /// are refused until `until_ms`. An existing tombstone is extended, never shortened, and
    /// keeps the newer removal.
    pub(crate) fn insert(&mut self, key: &[u8], node_id: &[u8], removal: &Removal, until_ms: u64) {
        let slot = (key.to_vec(), removal.publisher, node_id.to_vec());
        let new = Tomb {
            until_ms,
            seq: removal.seq,
            sig: removal.sig,
        };
        let tomb = match self.by_slot.get(&slot) {
            Some(old) => {
                self.by_end.remove(&(old.until_ms, slot.clone()));
                let newer = if old.seq >= new.seq { old } else { &new };
                Tomb {
                    until_ms: old.until_ms.max(until_ms),
                    ..*newer
                }
            }
            None => {
                if self.by_slot.len() >= self.capacity {
                    self.evict_first();
                }
                new
            }
        };
        self.by_end.insert((tomb.until_ms, slot.clone()));
        self.by_slot.insert(slot, tomb);
    }

    /// Whether a STORE of the slot with sequence `seq` must be refused at `now_ms`: a
    /// tombstone stands and the record is not newer than the removal.
    pub(crate) fn blocks(
        &self,
        key: &[u8],
        publisher: &Publisher,
        node_id: &[u8],
        seq: u64,
        now_ms: u64,
    ) -> bool {
        self.removal(key, publisher, node_id, seq, now_ms).is_some()
    }

    /// The removal behind the slot's tombstone, if one stands at `now_ms` and `seq` is not
    /// newer than it.
    pub(crate) fn removal(
        &self,
        key: &[u8],
        publisher: &Publisher,
        node_id: &[u8],
        seq: u64,
        now_ms: u64,
    ) -> Option<Removal> {
        if self.by_slot.is_empty() {
            return None;
        }
        self.by_slot
            .get(&(key.to_vec(), *publisher, node_id.to_vec()))
            .filter(|tomb| tomb.until_ms > now_ms && seq <= tomb.seq)
            .map(|tomb| Removal {
                publisher: *publisher,
                seq: tomb.seq,
                sig: tomb.sig,
            })
    }

    /// Forgets the tombstone of the slot (its publisher stored a newer record).
    pub(crate) fn clear(&mut self, key: &[u8], publisher: &Publisher, node_id: &[u8]) {
        if self.by_slot.is_empty() {
            return;
        }
        let slot = (key.to_vec(), *publisher, node_id.to_vec());
        if let Some(tomb) = self.by_slot.remove(&slot) {
            self.by_end.remove(&(tomb.until_ms, slot));
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
        self.by_slot.len()
    }

    fn evict_first(&mut self) {
        if let Some((_, slot)) = self.by_end.pop_first() {
            self.by_slot.remove(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Publisher = [1; 32];
    const Q: Publisher = [2; 32];

    fn removal(seq: u64) -> Removal {
        Removal {
            publisher: P,
            seq,
            sig: [seq as u8; SIGNATURE_LEN],
        }
    }

    #[test]
    fn blocks_older_copies_of_its_slot_until_it_ends() {
        let mut t = Tombstones::new(10);
        t.insert(b"k", b"n", &removal(50), 1_000);
        assert!(t.blocks(b"k", &P, b"n", 49, 0));
        assert!(
            t.blocks(b"k", &P, b"n", 50, 999),
            "a replay of the removal's own sequence"
        );
        assert!(
            !t.blocks(b"k", &P, b"n", 51, 0),
            "the publisher's next record goes through"
        );
        assert!(!t.blocks(b"k", &P, b"n", 1, 1_000), "ended");
        assert!(!t.blocks(b"k", &Q, b"n", 1, 0), "another publisher's slot");
        assert!(!t.blocks(b"k", &P, b"other", 1, 0));
        assert!(!t.blocks(b"other", &P, b"n", 1, 0));
    }

    #[test]
    fn purge_and_clear() {
        let mut t = Tombstones::new(10);
        t.insert(b"a", b"n", &removal(0), 10);
        t.insert(b"b", b"n", &removal(0), 20);
        assert_eq!(t.purge(10), 1);
        assert_eq!(t.len(), 1);
        t.clear(b"b", &P, b"n");
        assert_eq!(t.len(), 0);
        assert!(t.by_end.is_empty());
    }

    #[test]
    fn reinsert_extends_and_capacity_evicts_the_first_to_end() {
        let mut t = Tombstones::new(2);
        t.insert(b"a", b"n", &removal(5), 10);
        t.insert(b"a", b"n", &removal(1), 5);
        assert!(
            t.blocks(b"a", &P, b"n", 5, 9),
            "kept the later end and sequence"
        );
        assert_eq!(
            t.removal(b"a", &P, b"n", 0, 9),
            Some(removal(5)),
            "and the newer removal"
        );
        assert_eq!(t.by_end.len(), 1);
        t.insert(b"b", b"n", &removal(0), 30);
        t.insert(b"c", b"n", &removal(0), 20);
        assert_eq!(t.len(), 2);
        assert!(
            !t.blocks(b"a", &P, b"n", 0, 0),
            "a ended first and was evicted"
        );
        assert!(t.blocks(b"b", &P, b"n", 0, 0));
        assert!(t.blocks(b"c", &P, b"n", 0, 0));
    }
}
