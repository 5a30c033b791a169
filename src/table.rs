//! The k-bucket routing table.
//!
//! Lookups, replication and `find_closest` all ask one question: which known nodes are closest to
//! an id. The old code answered it by sorting every node on every call. Here each node is kept
//! once, in one vector sorted by id. A k-bucket's nodes share the local id's bits before the
//! bucket's index and differ from it at that index, so each bucket is one contiguous run of the
//! vector: Kademlia's membership policy (bounded buckets, least recently seen first, a bounded
//! replacement cache each) reads and writes those runs, and [`RoutingTable::closest`] walks the
//! vector as an implicit binary trie, so an exact answer costs O(depth * log N + n log n) instead
//! of O(N log N).
//!
//! Beside each sorted vector of entries runs a compact one of their ids' first 64 bits (8 bytes
//! more per entry), and the searches run on it: eight of these keys fit in a 64-byte cache line,
//! where an entry of the engine's (id, address, round-trip time, stamp: 76 bytes) does not, and a
//! simulation of thousands of nodes waits on memory, a cache line per step of a search. Ids are
//! compared whole only where their first 64 bits are equal, so every answer is the one a search
//! of the ids gives.

use std::ops::Range;

use crate::id::{halves, NodeId, ID_BITS, ID_LEN};

/// Bucket sizes of a [`RoutingTable`].
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Capacity of each bucket.
    pub k: usize,
    /// Capacity of each bucket's replacement cache.
    pub replacements: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            k: 20,
            replacements: 8,
        }
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new id entered its bucket, as most recently seen.
    Added,
    /// The id was already in its bucket: its info was replaced and it became most recently seen.
    Updated,
    /// The bucket is full: the node was kept in the bucket's replacement cache instead.
    Pending,
    /// The local id: ignored.
    Local,
}

/// What [`RoutingTable::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The id was in no bucket and no replacement cache; nothing changed.
    Unknown,
    /// The id was only in a replacement cache.
    Replacement,
    /// The id left its bucket; `promoted` is the replacement that took its slot.
    Node {
        /// The most recently seen replacement, now in the bucket; `None` when the bucket's
        /// replacement cache was empty.
        promoted: Option<NodeId>,
    },
}

impl Removed {
    /// Whether the id was in the table at all, in a bucket or in a replacement cache.
    pub fn was_known(self) -> bool {
        self != Removed::Unknown
    }
}

/// Known nodes and their info `T`, organised by XOR distance to the local id.
#[derive(Debug, Clone)]
pub struct RoutingTable<T> {
    local: NodeId,
    config: TableConfig,
    /// The nodes in buckets.
    nodes: Sorted<T>,
    /// The nodes of every replacement cache: a bucket's cache is a contiguous run as its nodes
    /// are, and the buckets without one cost nothing.
    replacements: Sorted<T>,
    /// The last stamp given: a node seen later has a higher `seen`.
    clock: u32,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    id: NodeId,
    info: T,
    /// When it was last seen (in a bucket), or kept (in a replacement cache), by `clock`.
    seen: u32,
}

/// Entries by ascending id, and each id's [`key`] in the same order, where the searches run.
#[derive(Debug, Clone)]
struct Sorted<T> {
    keys: Vec<u64>,
    entries: Vec<Entry<T>>,
}

impl<T> RoutingTable<T> {
    /// An empty table around `local`, the id of this node, which is never inserted.
    pub fn new(local: NodeId, config: TableConfig) -> Self {
        RoutingTable {
            local,
            config,
            nodes: Sorted::new(),
            replacements: Sorted::new(),
            clock: 0,
        }
    }

    /// The id of this node, given to [`new`](Self::new).
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The bucket sizes given to [`new`](Self::new).
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// A known id gets its info replaced and becomes most recently seen (`Updated`). With room in
    /// its bucket, a new id is added as most recently seen (`Added`). A full bucket does not
    /// take the newcomer: it goes to that bucket's bounded replacement cache, where the most
    /// recent are kept and the oldest dropped (`Pending`).
    pub fn insert(&mut self, id: NodeId, info: T) -> Inserted {
        self.admit(id, info).0
    }

    /// As [`insert`](Self::insert), and returns what the table let go of to make room: the
    /// oldest node of a full replacement cache, or the newcomer itself when replacement caches
    /// hold nothing.
    pub fn admit(&mut self, id: NodeId, info: T) -> (Inserted, Option<(NodeId, T)>) {
        let index = self.local.bucket_index(&id) as usize;
        // Bucket 256 ("same id") does not exist: that is the local id.
        if index >= ID_BITS {
            return (Inserted::Local, None);
        }
        let seen = self.tick();
        let at = match self.nodes.search(&id) {
            Ok(at) => {
                if let Some(known) = self.nodes.entries.get_mut(at) {
                    known.info = info;
                    known.seen = seen;
                }
                return (Inserted::Updated, None);
            }
            Err(at) => at,
        };
        let entry = Entry { id, info, seen };
        if self.nodes.bucket_run(&self.local, index).len() >= self.config.k {
            return (Inserted::Pending, self.remember(index, entry));
        }
        self.forget(&id); // a node is never both in a bucket and in its cache
        self.nodes.insert(at, entry, self.config.k);
        (Inserted::Added, None)
    }

    /// Removes a node from its bucket or its replacement cache. When a bucket slot frees up, the
    /// most recently seen replacement moves into the bucket.
    pub fn remove(&mut self, id: &NodeId) -> Removed {
        let Ok(at) = self.nodes.search(id) else {
            return match self.forget(id) {
                Some(_) => Removed::Replacement,
                None => Removed::Unknown,
            };
        };
        self.nodes.remove(at, self.config.k);
        let index = self.local.bucket_index(id) as usize;
        let run = self.replacements.bucket_run(&self.local, index);
        let Some((newest, _)) = self.replacements.stamps(run).max_by_key(|&(_, seen)| seen) else {
            return Removed::Node { promoted: None };
        };
        let mut promoted = self.replacements.remove(newest, self.config.replacements);
        promoted.seen = self.tick();
        let id = promoted.id;
        let at = self.nodes.below(&id);
        self.nodes.insert(at, promoted, self.config.k);
        Removed::Node { promoted: Some(id) }
    }

    /// Whether the bucket of `id` holds fewer than `k` nodes: a full bucket would keep a
    /// newcomer only in its replacement cache.
    pub fn bucket_has_room(&self, id: &NodeId) -> bool {
        let index = self.local.bucket_index(id) as usize;
        index < ID_BITS && self.nodes.bucket_run(&self.local, index).len() < self.config.k
    }

    /// Info of a node in a bucket (not of the replacement caches).
    pub fn get(&self, id: &NodeId) -> Option<&T> {
        self.nodes.find(id).map(|e| &e.info)
    }

    /// Info of a node in a replacement cache.
    pub fn replacement(&self, id: &NodeId) -> Option<&T> {
        self.replacements.find(id).map(|e| &e.info)
    }

    /// Nodes in buckets (not in the replacement caches).
    pub fn len(&self) -> usize {
        self.nodes.entries.len()
    }

    /// Whether no bucket holds a node (replacement caches may still hold some).
    pub fn is_empty(&self) -> bool {
        self.nodes.entries.is_empty()
    }

    /// The exact `n` closest nodes to `target` in ascending XOR distance, without sorting the
    /// table.
    ///
    /// Ids sharing a prefix are contiguous in the sorted nodes, and within such a range every id
    /// whose next bit matches the target's is closer than every id whose next bit does not. So the
    /// walk splits ranges by the next bit (a binary search), goes down the matching half first and
    /// the other half only if more are needed, and takes whole any range that fits in what is
    /// still needed. Only the <= n nodes collected are then sorted by distance.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(&NodeId, &T)> {
        let n = n.min(self.len());
        // With each its distance, computed once rather than at every comparison of the sort.
        let mut picked: Vec<((u128, u128), &Entry<T>)> = Vec::with_capacity(n);
        // (range, depth); nearer ranges are pushed last so they are taken first. At most one
        // pending range per depth plus the one being split: bounded by ID_BITS + 1.
        let mut ranges = Vec::with_capacity(ID_BITS + 1);
        ranges.push((0..self.len(), 0));
        while let Some((range, depth)) = ranges.pop() {
            let need = n - picked.len();
            if need == 0 {
                break;
            }
            let Some(entries) = self.nodes.entries.get(range.clone()) else {
                continue;
            };
            if entries.len() <= need || depth >= ID_BITS {
                let keyed = entries
                    .iter()
                    .map(|e| (halves(&e.id.distance(target).0), e));
                picked.extend(keyed.take(need));
                continue;
            }
            let split = self.nodes.split(range.clone(), depth);
            let (zeros, ones) = (range.start..split, split..range.end);
            let (near, far) = if target.bit(depth) {
                (ones, zeros)
            } else {
                (zeros, ones)
            };
            for half in [far, near] {
                if !half.is_empty() {
                    ranges.push((half, depth + 1));
                }
            }
        }
        picked.sort_unstable_by_key(|(distance, _)| *distance);
        picked.into_iter().map(|(_, e)| (&e.id, &e.info)).collect()
    }

    /// Buckets that hold nodes: (index, nodes least recently seen first), by ascending index.
    pub fn buckets(&self) -> impl Iterator<Item = (u32, Vec<(&NodeId, &T)>)> + '_ {
        let mut order: Vec<(u32, u32, &Entry<T>)> = self
            .nodes
            .entries
            .iter()
            .map(|e| (self.local.bucket_index(&e.id), e.seen, e))
            .collect();
        order.sort_unstable_by_key(|&(index, seen, _)| (index, seen));
        let mut buckets: Vec<(u32, Vec<(&NodeId, &T)>)> = Vec::new();
        for (index, _, e) in order {
            match buckets.last_mut() {
                Some((last, nodes)) if *last == index => nodes.push((&e.id, &e.info)),
                _ => buckets.push((index, vec![(&e.id, &e.info)])),
            }
        }
        buckets.into_iter()
    }

    /// Keeps a newcomer to a full bucket in that bucket's replacement cache, as its most recent
    /// entry; returns what was dropped for it.
    fn remember(&mut self, index: usize, entry: Entry<T>) -> Option<(NodeId, T)> {
        self.forget(&entry.id);
        let capacity = self.config.replacements;
        if capacity == 0 {
            return Some((entry.id, entry.info));
        }
        let run = self.replacements.bucket_run(&self.local, index);
        let dropped = if run.len() >= capacity {
            self.replacements
                .stamps(run)
                .min_by_key(|&(_, seen)| seen)
                .map(|(oldest, _)| self.replacements.remove(oldest, capacity))
        } else {
            None
        };
        let at = self.replacements.below(&entry.id);
        self.replacements.insert(at, entry, capacity);
        dropped.map(|e| (e.id, e.info))
    }

    /// Takes a node out of its replacement cache.
    fn forget(&mut self, id: &NodeId) -> Option<T> {
        let at = self.replacements.search(id).ok()?;
        Some(self.replacements.remove(at, self.config.replacements).info)
    }

    /// The next stamp for `seen`. Stamps only order the entries: when they run out, the
    /// entries are stamped again from 1 in the same order.
    fn tick(&mut self) -> u32 {
        if self.clock == u32::MAX {
            let mut stamps: Vec<&mut u32> = self
                .nodes
                .entries
                .iter_mut()
                .chain(self.replacements.entries.iter_mut())
                .map(|e| &mut e.seen)
                .collect();
            stamps.sort_unstable_by_key(|seen| **seen);
            self.clock = 0;
            for (stamp, seen) in (1..).zip(stamps) {
                *seen = stamp;
                self.clock = stamp;
            }
        }
        self.clock += 1;
        self.clock
    }
}

impl<T> Sorted<T> {
    fn new() -> Self {
        Sorted {
            keys: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// As `binary_search` on the ids: `Ok` where `id` is, `Err` where it would go.
    fn search(&self, id: &NodeId) -> Result<usize, usize> {
        let same = self.same_key(key(id));
        let start = same.start;
        let same = self.entries.get(same).unwrap_or_default();
        match same.binary_search_by(|e| e.id.cmp(id)) {
            Ok(at) => Ok(start + at),
            Err(at) => Err(start + at),
        }
    }

    /// Where the keys equal to `key` are. Seldom more than one: ids share their first 64 bits
    /// only by chance (about 2^-64 for two of them) or by sharing them with the local id.
    fn same_key(&self, key: u64) -> Range<usize> {
        let start = self.keys.partition_point(|&k| k < key);
        let rest = self.keys.get(start..).unwrap_or_default();
        start..start + rest.iter().take_while(|&&k| k == key).count()
    }

    /// The entry of `id`.
    fn find(&self, id: &NodeId) -> Option<&Entry<T>> {
        self.entries.get(self.search(id).ok()?)
    }

    /// How many ids are lower than `id`.
    fn below(&self, id: &NodeId) -> usize {
        match self.search(id) {
            Ok(at) | Err(at) => at,
        }
    }

    /// How many ids are lower than or equal to `id`.
    fn up_to(&self, id: &NodeId) -> usize {
        match self.search(id) {
            Ok(at) => at + 1,
            Err(at) => at,
        }
    }

    /// Where the entries of bucket `index` are: between the lowest and the highest id of the
    /// bucket, which have the local id's bits before `index`, the opposite bit at `index`, then
    /// all zeros or all ones.
    fn bucket_run(&self, local: &NodeId, index: usize) -> Range<usize> {
        let (byte, bit) = (index / 8, 0x80u8 >> (index % 8));
        let (mut low, mut high) = ([0u8; ID_LEN], [0xffu8; ID_LEN]);
        for (i, ((l, h), own)) in low.iter_mut().zip(high.iter_mut()).zip(local.0).enumerate() {
            if i < byte {
                (*l, *h) = (own, own);
            } else if i == byte {
                *l = (own ^ bit) & !(bit - 1);
                *h = *l | (bit - 1);
            }
        }
        self.below(&NodeId(low))..self.up_to(&NodeId(high))
    }

    /// Where the ids in `range`, which share their first `depth` bits, go from bit `depth`
    /// clear to bit `depth` set.
    fn split(&self, range: Range<usize>, depth: usize) -> usize {
        let start = range.start;
        let within = if depth < KEY_BITS {
            let bit = 1u64 << (KEY_BITS - 1 - depth);
            let keys = self.keys.get(range).unwrap_or_default();
            keys.partition_point(|&k| k & bit == 0)
        } else {
            let entries = self.entries.get(range).unwrap_or_default();
            entries.partition_point(|e| !e.id.bit(depth))
        };
        start + within
    }

    /// Positions and `seen` stamps of the entries in `run`.
    fn stamps(&self, run: Range<usize>) -> impl Iterator<Item = (usize, u32)> + '_ {
        let start = run.start;
        let run = self.entries.get(run).unwrap_or_default();
        (start..).zip(run).map(|(at, e)| (at, e.seen))
    }

    /// Inserts at `at`, where the order puts it; both vectors grow by `step`.
    fn insert(&mut self, at: usize, entry: Entry<T>, step: usize) {
        insert_at(&mut self.keys, at, key(&entry.id), step);
        insert_at(&mut self.entries, at, entry, step);
    }

    /// Removes the entry at `at`; both vectors shrink by `step`.
    fn remove(&mut self, at: usize, step: usize) -> Entry<T> {
        remove_at(&mut self.keys, at, step);
        remove_at(&mut self.entries, at, step)
    }
}

/// Bits in a [`key`].
const KEY_BITS: usize = 64;

/// An id's first [`KEY_BITS`] bits, big-endian: keys order as their ids do, but for ids that
/// share those bits.
fn key(id: &NodeId) -> u64 {
    let mut first = [0u8; KEY_BITS / 8];
    first.copy_from_slice(&id.0[..KEY_BITS / 8]);
    u64::from_be_bytes(first)
}

/// Inserts into a vector that grows `step` entries at a time: the table's vectors grow only as
/// far as the network makes them, and doubling would leave up to half of them unused.
fn insert_at<E>(entries: &mut Vec<E>, at: usize, entry: E, step: usize) {
    if entries.len() == entries.capacity() {
        entries.reserve_exact(step.max(1));
    }
    entries.insert(at, entry);
}

/// Removes from such a vector, giving back what is unused past one step.
fn remove_at<E>(entries: &mut Vec<E>, at: usize, step: usize) -> E {
    let entry = entries.remove(at);
    if entries.capacity() - entries.len() > 2 * step.max(1) {
        entries.shrink_to(entries.len() + step.max(1));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(bytes: &[u8]) -> NodeId {
        let mut b = [0u8; ID_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        NodeId(b)
    }

    fn table(k: usize, replacements: usize) -> RoutingTable<u32> {
        RoutingTable::new(id(&[]), TableConfig { k, replacements })
    }

    fn bucket_ids(t: &RoutingTable<u32>, index: u32) -> Vec<NodeId> {
        t.buckets()
            .find(|(i, _)| *i == index)
            .map_or(vec![], |(_, n)| n.into_iter().map(|(id, _)| *id).collect())
    }

    #[test]
    fn local_id_is_ignored() {
        let mut t = table(2, 1);
        assert_eq!(t.insert(id(&[]), 1), Inserted::Local);
        assert!(t.is_empty());
        assert_eq!(t.remove(&id(&[])), Removed::Unknown);
    }

    #[test]
    fn room_grows_and_shrinks_by_steps_with_the_nodes() {
        let mut t = table(2, 1);
        assert_eq!(
            t.nodes.entries.capacity() + t.replacements.entries.capacity(),
            0,
            "nothing up front"
        );
        assert_eq!(t.insert(id(&[0x80]), 1), Inserted::Added);
        assert_eq!(t.insert(id(&[0, 1]), 2), Inserted::Added);
        assert_eq!(t.nodes.entries.capacity(), 2, "one step of k");
        assert_eq!(t.insert(id(&[0x40]), 3), Inserted::Added);
        assert_eq!(t.nodes.entries.capacity(), 4);
        assert_eq!(
            t.remove(&id(&[0, 0, 1])),
            Removed::Unknown,
            "in bucket 23, which holds nothing"
        );
        assert_eq!(t.closest(&id(&[]), 5).len(), 3);
        let many: Vec<NodeId> = (0..8u8).map(|b| id(&[b, 0xff])).collect();
        for x in &many {
            t.insert(*x, 0);
        }
        let most = t.nodes.entries.capacity();
        for x in &many {
            t.remove(x);
        }
        assert!(t.nodes.entries.capacity() < most && t.nodes.entries.capacity() <= t.len() + 4);
        assert_eq!(t.nodes.keys.capacity(), t.nodes.entries.capacity());
    }

    #[test]
    fn replacements_are_found_and_what_a_full_cache_drops_is_returned() {
        let mut t = table(1, 2);
        let ids: Vec<NodeId> = (0..4).map(|i| id(&[0x80 | i])).collect();
        assert_eq!(t.admit(ids[0], 0), (Inserted::Added, None));
        assert_eq!(t.admit(ids[1], 1), (Inserted::Pending, None));
        assert_eq!(t.admit(ids[2], 2), (Inserted::Pending, None));
        assert_eq!(t.replacement(&ids[1]), Some(&1));
        assert_eq!(t.get(&ids[1]), None);
        assert_eq!(t.admit(ids[3], 3), (Inserted::Pending, Some((ids[1], 1))));
        assert_eq!(t.replacement(&ids[1]), None);
        let mut none = table(1, 0);
        none.insert(ids[0], 0);
        assert_eq!(
            none.admit(ids[1], 1),
            (Inserted::Pending, Some((ids[1], 1)))
        );
    }

    #[test]
    fn stamps_run_out_without_changing_the_order() {
        let mut t = table(3, 2);
        let (a, b, c) = (id(&[0x80]), id(&[0x81]), id(&[0xc0]));
        for x in [c, a, b] {
            t.insert(x, 0);
        }
        t.clock = u32::MAX - 1;
        t.insert(c, 0);
        t.insert(a, 0);
        assert_eq!(t.clock, 4, "stamped again from 1");
        t.insert(b, 0);
        assert_eq!(bucket_ids(&t, 0), vec![c, a, b]);
    }

    #[test]
    fn buckets_keep_least_recently_seen_first() {
        let mut t = table(3, 1);
        let (a, b, c) = (id(&[0x80]), id(&[0x81]), id(&[0xc0]));
        for (n, x) in [a, b, c].into_iter().enumerate() {
            assert_eq!(t.insert(x, n as u32), Inserted::Added);
        }
        assert_eq!(t.insert(a, 10), Inserted::Updated);
        assert_eq!(bucket_ids(&t, 0), vec![b, c, a]);
        assert_eq!(t.get(&a), Some(&10));
        assert_eq!(t.insert(id(&[1]), 5), Inserted::Added);
        let indices: Vec<u32> = t.buckets().map(|(i, _)| i).collect();
        assert_eq!(indices, vec![0, 7]);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn full_bucket_keeps_newcomers_pending_and_promotes_on_remove() {
        let mut t = table(2, 2);
        let ids: Vec<NodeId> = (0..6).map(|i| id(&[0x80 | i])).collect();
        assert_eq!(t.insert(ids[0], 0), Inserted::Added);
        assert_eq!(t.insert(ids[1], 1), Inserted::Added);
        for (i, x) in ids.iter().enumerate().take(5).skip(2) {
            assert_eq!(t.insert(*x, i as u32), Inserted::Pending);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&ids[2]), None);
        // The cache holds the two most recent (3, 4); 2 was dropped. Seeing 3 again refreshes it.
        assert_eq!(t.insert(ids[3], 33), Inserted::Pending);
        assert_eq!(t.remove(&ids[2]), Removed::Unknown);
        assert_eq!(
            t.remove(&ids[0]),
            Removed::Node {
                promoted: Some(ids[3])
            }
        );
        assert_eq!(bucket_ids(&t, 0), vec![ids[1], ids[3]]);
        assert_eq!(t.get(&ids[3]), Some(&33));
        // Removing a cached node empties the cache without touching the bucket.
        assert_eq!(t.remove(&ids[4]), Removed::Replacement);
        assert_eq!(t.remove(&ids[1]), Removed::Node { promoted: None });
        assert_eq!(bucket_ids(&t, 0), vec![ids[3]]);
        assert_eq!(t.insert(ids[5], 5), Inserted::Added);
    }

    #[test]
    fn closest_is_exact_and_ordered() {
        let mut t = table(100, 0);
        let all: Vec<NodeId> = (0..=255u8).step_by(3).map(|b| id(&[b, b ^ 0x5a])).collect();
        for (n, x) in all.iter().enumerate() {
            t.insert(*x, n as u32);
        }
        for target in [id(&[]), id(&[0x7f, 1]), id(&[0xff; 32]), all[7]] {
            for n in [0, 1, 5, 20, 200] {
                let mut expected = all.clone();
                expected.sort_by_key(|x| x.distance(&target));
                expected.truncate(n);
                let got: Vec<NodeId> = t.closest(&target, n).into_iter().map(|(x, _)| *x).collect();
                assert_eq!(got, expected, "n={n}");
            }
        }
        assert!(table(1, 0).closest(&id(&[]), 3).is_empty());
    }

    #[test]
    fn ids_sharing_their_first_64_bits_are_told_apart() {
        // Ids equal in their first 8 bytes (the keys the searches run on), among them the local
        // id's own (buckets past 63) and others in bucket 0.
        let local = id(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        let mut t = RoutingTable::new(
            local,
            TableConfig {
                k: 3,
                replacements: 2,
            },
        );
        let mut all = vec![];
        for head in [[0u8; 8], [0x80, 0, 0, 0, 0, 0, 0, 1]] {
            for tail in [0x00u8, 0x01, 0x3f, 0x40, 0x41, 0x7f, 0x80, 0xc0, 0xff] {
                for last in [0u8, 9] {
                    let mut x = [0u8; ID_LEN];
                    x[..8].copy_from_slice(&head);
                    (x[8], x[31]) = (tail, last);
                    all.push(NodeId(x));
                }
            }
        }
        for (n, x) in all.iter().enumerate() {
            t.insert(*x, n as u32);
        }
        agrees_with_full_ids(&t, &all);
        for x in all.iter().step_by(3) {
            t.remove(x);
        }
        agrees_with_full_ids(&t, &all);
    }

    /// The searches on keys find what searches on the full ids would.
    fn agrees_with_full_ids(t: &RoutingTable<u32>, ids: &[NodeId]) {
        for sorted in [&t.nodes, &t.replacements] {
            let keys: Vec<u64> = sorted.entries.iter().map(|e| key(&e.id)).collect();
            assert_eq!(sorted.keys, keys);
            for x in ids {
                let at = sorted.entries.binary_search_by(|e| e.id.cmp(x));
                assert_eq!(sorted.search(x), at);
            }
            for index in 0..ID_BITS {
                let run: Vec<usize> = sorted.bucket_run(&t.local, index).collect();
                let expected: Vec<usize> = (0..sorted.entries.len())
                    .filter(|&at| t.local.bucket_index(&sorted.entries[at].id) as usize == index)
                    .collect();
                assert_eq!(run, expected, "bucket {index}");
            }
        }
        let resident: Vec<NodeId> = t.nodes.entries.iter().map(|e| e.id).collect();
        for target in ids.iter().chain([&t.local, &id(&[0x80])]) {
            let mut expected = resident.clone();
            expected.sort_by_key(|x| x.distance(target));
            expected.truncate(7);
            let got: Vec<NodeId> = t.closest(target, 7).into_iter().map(|(x, _)| *x).collect();
            assert_eq!(got, expected);
        }
    }
}
