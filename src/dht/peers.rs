//! Who is in the routing table, and the rules for getting in and out.
//!
//! A peer that answers one of our requests is proven (the transport checked its id against its
//! key, and it answered at that address), so it enters the table at once. A peer that only sends
//! us a request is pinged back first: one-shot clients (`rust-node discover`) talk to us from
//! ports that close a moment later, and must not sit in our buckets until a lookup times out on
//! them. A peer that fails a request for a liveness reason (timeout, unreachable, another node at
//! its address) leaves the table, and the bucket's most recent replacement moves up.
//!
//! Bounded: the table by its buckets, peers being verified by `max_verifying`, remembered
//! bootstrap addresses by [`MAX_BOOTSTRAP`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::table::{Inserted, Removed, RoutingTable, TableConfig};
use crate::wire::NodeInfo;
use crate::NodeId;

use crate::settings::MAX_BOOTSTRAP;

/// A node's routing table with its liveness bookkeeping.
#[derive(Debug)]
pub(crate) struct Peers {
    table: RoutingTable<SocketAddr>,
    /// Peers being pinged back before they enter the table.
    verifying: BTreeSet<NodeId>,
    max_verifying: usize,
    /// Bootstrap addresses, for re-joining when the table runs empty.
    seeds: Vec<SocketAddr>,
}

/// What a peer leaving the table changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Departure {
    pub left: NodeInfo,
    /// The replacement that took its slot.
    pub promoted: Option<NodeInfo>,
}

impl Peers {
    pub(crate) fn new(local: NodeId, table: TableConfig, max_verifying: usize) -> Peers {
        Peers {
            table: RoutingTable::new(local, table),
            verifying: BTreeSet::new(),
            max_verifying,
            seeds: Vec::new(),
        }
    }

    /// A peer answered us from `addr`: it is (again) in the table, most recently seen. True when
    /// it is new there.
    pub(crate) fn answered(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        self.table.insert(id, addr) == Inserted::Added
    }

    /// A peer sent us a request from `addr`. Known at that address: refreshed, and false.
    /// Otherwise true when it should be pinged back now (it is not being verified already, and
    /// fewer than `max_verifying` are); the caller reports the ping's end with
    /// [`Peers::verified`].
    pub(crate) fn requested(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        if self.table.get(&id) == Some(&addr) {
            self.table.insert(id, addr);
            return false;
        }
        self.verifying.len() < self.max_verifying && self.verifying.insert(id)
    }

    /// The ping back to `id` ended (the answer, if any, went through [`Peers::answered`]).
    pub(crate) fn verified(&mut self, id: &NodeId) {
        self.verifying.remove(id);
    }

    /// `id` failed a request for a liveness reason: it leaves its bucket (or its replacement
    /// cache). `Some` when it was in a bucket.
    pub(crate) fn unreachable(&mut self, id: &NodeId) -> Option<Departure> {
        let addr = self.table.get(id).copied()?;
        let Removed::Node { promoted } = self.table.remove(id) else {
            return None;
        };
        let promoted = promoted.and_then(|next| {
            self.table.get(&next).map(|addr| NodeInfo {
                id: next,
                addr: *addr,
            })
        });
        Some(Departure {
            left: NodeInfo { id: *id, addr },
            promoted,
        })
    }

    /// The address of `id`, if it is in a bucket.
    pub(crate) fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.table.get(id).copied()
    }

    /// The `n` closest nodes of the table to `target`, closest first.
    pub(crate) fn closest(&self, target: &NodeId, n: usize) -> Vec<NodeInfo> {
        self.table
            .closest(target, n)
            .into_iter()
            .map(|(id, addr)| NodeInfo {
                id: *id,
                addr: *addr,
            })
            .collect()
    }

    /// Whether `peer` is among the `k` closest nodes of the table to `target`.
    pub(crate) fn is_among_closest(&self, peer: &NodeId, target: &NodeId, k: usize) -> bool {
        self.table
            .closest(target, k)
            .iter()
            .any(|(id, _)| *id == peer)
    }

    /// Every node in a bucket.
    pub(crate) fn all(&self) -> Vec<NodeInfo> {
        self.table
            .buckets()
            .flat_map(|(_, nodes)| {
                nodes
                    .into_iter()
                    .map(|(id, addr)| NodeInfo {
                        id: *id,
                        addr: *addr,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Indices of the empty buckets farther than the bucket of the `k`-th nearest known node,
    /// farthest first, at most `max`. With the `k` nearest nodes in bucket `b` or nearer, the
    /// network holds about `k * 2^(b + 1)` nodes and bucket `i` about `k * 2^(b - i)` of them: an
    /// empty bucket farther than `b` is empty for want of knowing its nodes, one nearer may be
    /// empty for want of nodes.
    pub(crate) fn empty_far_buckets(&self, max: usize) -> Vec<u32> {
        // `buckets` yields the non-empty ones by ascending index.
        let used: Vec<(u32, usize)> = self
            .table
            .buckets()
            .map(|(index, nodes)| (index, nodes.len()))
            .collect();
        let k = self.table.config().k;
        let mut nearer = 0;
        let bound = used
            .iter()
            .rev()
            .find(|(_, len)| {
                nearer += len;
                nearer >= k
            })
            .map_or(0, |(index, _)| *index);
        (0..bound)
            .filter(|index| !used.iter().any(|(u, _)| u == index))
            .take(max)
            .collect()
    }

    /// Index of the nearest non-empty bucket (0 when the table is empty).
    pub(crate) fn nearest_bucket(&self) -> u32 {
        self.table
            .buckets()
            .map(|(index, _)| index)
            .max()
            .unwrap_or(0)
    }

    /// Remembers bootstrap addresses (the first [`MAX_BOOTSTRAP`] distinct ones).
    pub(crate) fn remember_seeds(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs {
            if self.seeds.len() < MAX_BOOTSTRAP && !self.seeds.contains(addr) {
                self.seeds.push(*addr);
            }
        }
    }

    pub(crate) fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn peers() -> Peers {
        Peers::new(
            NodeId([0; 32]),
            TableConfig {
                k: 1,
                replacements: 1,
            },
            2,
        )
    }

    #[test]
    fn answering_peers_enter_and_requesting_peers_are_verified_first() {
        let mut p = peers();
        let a = NodeId([0x80; 32]);
        assert!(p.requested(a, addr(1)), "unknown: ping it back");
        assert!(!p.requested(a, addr(1)), "already being verified");
        assert!(p.answered(a, addr(1)));
        p.verified(&a);
        assert!(!p.answered(a, addr(1)), "known: refreshed, not new");
        assert!(!p.requested(a, addr(1)), "known at that address");
        assert!(p.requested(a, addr(2)), "known elsewhere: verified again");
        p.verified(&a);
        assert!(p.requested(NodeId([1; 32]), addr(3)));
        assert!(p.requested(NodeId([2; 32]), addr(4)));
        assert!(
            !p.requested(NodeId([3; 32]), addr(5)),
            "two at once at most"
        );
    }

    #[test]
    fn a_join_fills_the_empty_buckets_farther_than_its_k_nearest_peers() {
        let mut p = Peers::new(
            NodeId([0; 32]),
            TableConfig {
                k: 2,
                replacements: 1,
            },
            2,
        );
        // One peer each in buckets 1, 4 and 7 (the first set bit of the id is the bucket).
        for (port, bucket) in [(1, 1), (2, 4), (3, 7)] {
            let mut id = [0; 32];
            id[0] = 0x80 >> bucket;
            assert!(p.answered(NodeId(id), addr(port)));
        }
        // The two nearest are in buckets 7 and 4: buckets 0, 2 and 3 are empty for want of
        // knowing their nodes; 5 and 6, nearer, may be empty for want of nodes.
        assert_eq!(p.empty_far_buckets(8), [0, 2, 3]);
        assert_eq!(p.empty_far_buckets(2), [0, 2], "farthest first");
    }

    #[test]
    fn an_unreachable_peer_leaves_and_its_replacement_moves_up() {
        let mut p = peers();
        let (a, b) = (NodeId([0x80; 32]), NodeId([0x81; 32]));
        assert!(p.answered(a, addr(1)));
        assert!(!p.answered(b, addr(2)), "bucket of one is full: b waits");
        let gone = p.unreachable(&a).unwrap();
        assert_eq!(
            gone.left,
            NodeInfo {
                id: a,
                addr: addr(1)
            }
        );
        assert_eq!(
            gone.promoted,
            Some(NodeInfo {
                id: b,
                addr: addr(2)
            })
        );
        assert_eq!(
            p.all(),
            vec![NodeInfo {
                id: b,
                addr: addr(2)
            }]
        );
        assert_eq!(p.unreachable(&a), None);
        assert!(p.is_among_closest(&b, &a, 1));
    }

    #[test]
    fn seeds_are_bounded_and_distinct() {
        let mut p = peers();
        let many: Vec<SocketAddr> = (0..40).map(|i| addr(i % 20)).collect();
        p.remember_seeds(&many);
        assert_eq!(p.seeds().len(), MAX_BOOTSTRAP);
        assert_eq!(p.seeds()[0], addr(0));
    }
}
