//! The k-bucket routing table.
//!
//! Lookups, replication and `find_closest` all ask one question: which known nodes are closest to
//! an id. The old code answered it by sorting every node on every call. Here nodes are kept twice
//! over, cheaply: in Kademlia's k-buckets (least recently seen first, bounded, with a bounded
//! replacement cache each) for membership policy, and in one sorted vector of ids that
//! [`RoutingTable::closest`] walks as an implicit binary trie, so an exact answer costs
//! O(depth * log N + n log n) instead of O(N log N).

use std::collections::HashMap;

use crate::id::{NodeId, ID_BITS};

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
    /// Info of the nodes in buckets.
    nodes: HashMap<NodeId, T>,
    /// One per bucket index, from 0 to the nearest one that ever held a node (made on demand).
    buckets: Vec<Bucket<T>>,
    /// Ids of the nodes in buckets, ascending.
    sorted: Vec<NodeId>,
}

#[derive(Debug, Clone)]
struct Bucket<T> {
    /// Least recently seen first.
    nodes: Vec<NodeId>,
    /// Oldest first.
    replacements: Vec<(NodeId, T)>,
}

impl<T> RoutingTable<T> {
    /// An empty table around `local`, the id of this node, which is never inserted.
    pub fn new(local: NodeId, config: TableConfig) -> Self {
        RoutingTable {
            local,
            config,
            nodes: HashMap::new(),
            buckets: Vec::new(),
            sorted: Vec::new(),
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
    /// its bucket, a new id is appended as most recently seen (`Added`). A full bucket does not
    /// take the newcomer: it goes to that bucket's bounded replacement cache, where the most
    /// recent are kept and the oldest dropped (`Pending`).
    pub fn insert(&mut self, id: NodeId, info: T) -> Inserted {
        // Bucket 256 ("same id") does not exist: that is the local id.
        let index = self.local.bucket_index(&id) as usize;
        if index >= ID_BITS {
            return Inserted::Local;
        }
        // Buckets are made as far as the nearest one used: in a network of n nodes only about
        // log2(n) of the 256 ever hold a node.
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, || Bucket {
                nodes: Vec::new(),
                replacements: Vec::new(),
            });
        }
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Inserted::Local;
        };
        if let Some(known) = self.nodes.get_mut(&id) {
            *known = info;
            bucket.touch(&id);
            return Inserted::Updated;
        }
        if bucket.nodes.len() >= self.config.k {
            bucket.remember(id, info, self.config.replacements);
            return Inserted::Pending;
        }
        bucket.forget(&id); // a node is never both in a bucket and in its cache
        bucket.nodes.push(id);
        self.nodes.insert(id, info);
        sorted_insert(&mut self.sorted, id);
        Inserted::Added
    }

    /// Removes a node from its bucket or its replacement cache. When a bucket slot frees up, the
    /// most recently seen replacement moves into the bucket.
    pub fn remove(&mut self, id: &NodeId) -> Removed {
        let Some(bucket) = self.buckets.get_mut(self.local.bucket_index(id) as usize) else {
            return Removed::Unknown;
        };
        if self.nodes.remove(id).is_none() {
            return match bucket.forget(id) {
                Some(_) => Removed::Replacement,
                None => Removed::Unknown,
            };
        }
        bucket.nodes.retain(|n| n != id);
        if let Ok(at) = self.sorted.binary_search(id) {
            self.sorted.remove(at);
        }
        let promoted = bucket.replacements.pop().map(|(promoted, info)| {
            bucket.nodes.push(promoted);
            self.nodes.insert(promoted, info);
            sorted_insert(&mut self.sorted, promoted);
            promoted
        });
        Removed::Node { promoted }
    }

    /// Info of a node in a bucket (not of the replacement caches).
    pub fn get(&self, id: &NodeId) -> Option<&T> {
        self.nodes.get(id)
    }

    /// Nodes in buckets (not in the replacement caches).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no bucket holds a node (replacement caches may still hold some).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The exact `n` closest nodes to `target` in ascending XOR distance, without sorting the
    /// table.
    ///
    /// Ids sharing a prefix are contiguous in the sorted index, and within such a range every id
    /// whose next bit matches the target's is closer than every id whose next bit does not. So the
    /// walk splits ranges by the next bit (a binary search), goes down the matching half first and
    /// the other half only if more are needed, and takes whole any range that fits in what is
    /// still needed. Only the <= n ids collected are then sorted by distance.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(&NodeId, &T)> {
        let n = n.min(self.sorted.len());
        let mut picked: Vec<&NodeId> = Vec::with_capacity(n);
        // (range, depth); nearer ranges are pushed last so they are taken first. At most one
        // pending range per depth plus the one being split: bounded by ID_BITS + 1.
        let mut ranges = Vec::with_capacity(ID_BITS + 1);
        ranges.push((0..self.sorted.len(), 0));
        while let Some((range, depth)) = ranges.pop() {
            let need = n - picked.len();
            if need == 0 {
                break;
            }
            let Some(ids) = self.sorted.get(range.clone()) else {
                continue;
            };
            if ids.len() <= need || depth >= ID_BITS {
                picked.extend(ids.iter().take(need));
                continue;
            }
            let split = range.start + ids.partition_point(|id| !id.bit(depth));
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
        picked.sort_unstable_by_key(|id| id.distance(target));
        picked
            .into_iter()
            .filter_map(|id| self.nodes.get_key_value(id))
            .collect()
    }

    /// Buckets that hold nodes: (index, nodes least recently seen first).
    pub fn buckets(&self) -> impl Iterator<Item = (u32, Vec<(&NodeId, &T)>)> + '_ {
        (0u32..)
            .zip(&self.buckets)
            .filter(|(_, b)| !b.nodes.is_empty())
            .map(|(index, bucket)| {
                let nodes = bucket
                    .nodes
                    .iter()
                    .filter_map(|id| self.nodes.get_key_value(id));
                (index, nodes.collect())
            })
    }
}

impl<T> Bucket<T> {
    /// Makes a node of this bucket the most recently seen.
    fn touch(&mut self, id: &NodeId) {
        if let Some(at) = self.nodes.iter().position(|n| n == id) {
            let node = self.nodes.remove(at);
            self.nodes.push(node);
        }
    }

    /// Keeps a newcomer in the replacement cache as its most recent entry.
    fn remember(&mut self, id: NodeId, info: T, capacity: usize) {
        self.forget(&id);
        if capacity == 0 {
            return;
        }
        if self.replacements.len() >= capacity {
            self.replacements.remove(0);
        }
        self.replacements.push((id, info));
    }

    fn forget(&mut self, id: &NodeId) -> Option<T> {
        let at = self.replacements.iter().position(|(n, _)| n == id)?;
        Some(self.replacements.remove(at).1)
    }
}

fn sorted_insert(sorted: &mut Vec<NodeId>, id: NodeId) {
    if let Err(at) = sorted.binary_search(&id) {
        sorted.insert(at, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ID_LEN;

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
    fn buckets_are_made_as_far_as_the_nearest_one_used() {
        let mut t = table(2, 1);
        assert_eq!(t.buckets.len(), 0, "nothing up front");
        assert_eq!(t.insert(id(&[0x80]), 1), Inserted::Added);
        assert_eq!(t.buckets.len(), 1);
        assert_eq!(t.insert(id(&[0, 1]), 2), Inserted::Added);
        assert_eq!(t.buckets.len(), 16, "up to bucket 15, the nearest used");
        assert_eq!(
            t.remove(&id(&[0, 0, 1])),
            Removed::Unknown,
            "in bucket 23, never made"
        );
        assert_eq!(t.closest(&id(&[]), 5).len(), 2);
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
}
