//! Who is in the routing table, the rules for getting in and out, and what this node has seen
//! of each peer.
//!
//! A peer that answers one of our requests is proven (the transport checked its id against its
//! key, and it answered at that address), so it enters the table at once. A peer that only sends
//! us a request is pinged back first, if its bucket has room: one-shot clients (`rust-node
//! discover`) talk to us from ports that close a moment later, and must not sit in our buckets
//! until a lookup times out on them. A peer that fails a request for a liveness reason (timeout,
//! unreachable, another node at its address) leaves the table, and the bucket's most recent
//! replacement moves up.
//!
//! A peer's id is kept once: its address and round-trip time live in its table entry (in a
//! bucket or a replacement cache), and the health bookkeeping (`health`) keeps only what the
//! table does not: failures, and the round-trip times of peers the table let go of.
//!
//! Bounded: the table by its buckets, health by its own bounds, peers being verified by
//! `max_verifying`, remembered bootstrap addresses by [`MAX_BOOTSTRAP`].

use std::net::SocketAddr;
use std::time::Duration;

use super::health::{Health, Rtt};
use crate::table::{Inserted, Removed, RoutingTable, TableConfig};
use crate::time::Time;
use crate::wire::NodeInfo;
use crate::NodeId;

use crate::settings::MAX_BOOTSTRAP;

/// A node's routing table with its liveness bookkeeping.
#[derive(Debug)]
pub(crate) struct Peers {
    table: RoutingTable<Known>,
    health: Health,
    /// Peers being pinged back before they enter the table.
    verifying: Vec<NodeId>,
    max_verifying: usize,
    /// Bootstrap addresses, for re-joining when the table runs empty.
    seeds: Vec<SocketAddr>,
}

/// What the table keeps of a peer: it entered by answering, so its round-trip time is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    addr: SocketAddr,
    rtt: Rtt,
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
            health: Health::default(),
            verifying: Vec::new(),
            max_verifying,
            seeds: Vec::new(),
        }
    }

    /// A peer answered at `now`, from `addr`, a request sent `rtt` ago: one more round-trip
    /// sample, it is no longer suspect, and it is (again) in the table, most recently seen (in
    /// its bucket, or its bucket's replacement cache). True when it is new in its bucket.
    pub(crate) fn answered(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        rtt: Duration,
        now: Time,
    ) -> bool {
        let known = self
            .table
            .get(&id)
            .or_else(|| self.table.replacement(&id))
            .map(|k| k.rtt);
        let rtt = self.health.answered(&id, rtt, known);
        let (inserted, let_go) = self.table.admit(id, Known { addr, rtt });
        if let Some((id, gone)) = let_go {
            self.health.keep(id, gone.rtt, now);
        }
        inserted == Inserted::Added
    }

    /// A peer sent us a request from `addr`. Known at that address: refreshed, and false.
    /// Otherwise true when it should be pinged back now (its bucket has room for it, it is not
    /// being verified already, and fewer than `max_verifying` are); the caller reports the
    /// ping's end with [`Peers::verified`]. A peer whose bucket is full is not pinged: it could
    /// only enter a replacement cache, which the answers to this node's own requests fill, and
    /// in a large network most requests come from such peers (at 100 k nodes, pings back to
    /// them were most of all requests).
    pub(crate) fn requested(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        let known = self.table.get(&id).copied();
        if let Some(known) = known.filter(|k| k.addr == addr) {
            self.table.insert(id, known);
            return false;
        }
        // Known at another address: verified there, in its own slot.
        let room = known.is_some() || self.table.bucket_has_room(&id);
        if !room || self.verifying.len() >= self.max_verifying || self.verifying.contains(&id) {
            return false;
        }
        self.verifying.push(id);
        true
    }

    /// The ping back to `id` ended (the answer, if any, went through [`Peers::answered`]).
    pub(crate) fn verified(&mut self, id: &NodeId) {
        self.verifying.retain(|v| v != id);
        if self.verifying.is_empty() {
            self.verifying.shrink_to_fit(); // pings back come and go: no room kept between them
        }
    }

    /// `id` failed a request for a liveness reason at `now`: suspect for a while. True when it
    /// has failed so many times in a row that it should leave the table.
    pub(crate) fn failed(&mut self, id: NodeId, now: Time) -> bool {
        self.health.failed(id, now)
    }

    /// `id` failed a request for a liveness reason: it leaves its bucket (or its replacement
    /// cache). `Some` when it was in a bucket.
    pub(crate) fn unreachable(&mut self, id: &NodeId) -> Option<Departure> {
        let addr = self.addr(id)?;
        let Removed::Node { promoted } = self.table.remove(id) else {
            return None;
        };
        let promoted =
            promoted.and_then(|next| self.addr(&next).map(|addr| NodeInfo { id: next, addr }));
        Some(Departure {
            left: NodeInfo { id: *id, addr },
            promoted,
        })
    }

    /// The address of `id`, if it is in a bucket.
    pub(crate) fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.table.get(id).map(|k| k.addr)
    }

    /// The `n` closest nodes of the table to `target`, closest first.
    pub(crate) fn closest(&self, target: &NodeId, n: usize) -> Vec<NodeInfo> {
        self.table
            .closest(target, n)
            .into_iter()
            .map(|(id, known)| NodeInfo {
                id: *id,
                addr: known.addr,
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
                    .map(|(id, known)| NodeInfo {
                        id: *id,
                        addr: known.addr,
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
                self.seeds.reserve_exact(1); // a node has one or a few: no room to spare
                self.seeds.push(*addr);
            }
        }
    }

    pub(crate) fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    // ---- health -----------------------------------------------------------------------------

    /// Whether `id` failed of late and should not be asked or offered (see `health`).
    pub(crate) fn is_suspect(&self, id: &NodeId, now: Time) -> bool {
        self.health.is_suspect(id, now)
    }

    /// Whether `id` failed its last request and has not answered since (suspect or no longer).
    pub(crate) fn failed_last(&self, id: &NodeId) -> bool {
        self.health.failed_last(id)
    }

    /// Peers that failed of late and whose suspect time is up at `now`, each returned once, to
    /// be asked again (those of the table).
    pub(crate) fn due_probes(&mut self, now: Time) -> Vec<NodeId> {
        self.health.due_probes(now)
    }

    /// `id` is being probed until `until`: suspect till then (its probe's outcome decides).
    pub(crate) fn probing(&mut self, id: NodeId, until: Time) {
        self.health.probing(&id, until);
    }

    /// How long to wait for `id`'s answer, at most `cap`; with `stall`, also when a lookup
    /// stops holding a slot for it (see `health`). One look at its round-trip time for both.
    pub(crate) fn timeout(
        &self,
        id: Option<&NodeId>,
        cap: Duration,
        stall: bool,
    ) -> (Duration, Option<Duration>) {
        let rtt = id.and_then(|id| self.rtt_of(id));
        let timeout = self.health.timeout(id, rtt, cap);
        let stall_after = (stall && id.is_some())
            .then(|| self.health.stall_after(rtt, timeout))
            .flatten();
        (timeout, stall_after)
    }

    /// `id`'s smoothed round-trip time, if it answered and is still remembered.
    pub(crate) fn rtt(&self, id: &NodeId) -> Option<Duration> {
        self.rtt_of(id).map(|rtt| rtt.srtt())
    }

    /// Peers suspect at `now`.
    pub(crate) fn suspects(&self, now: Time) -> usize {
        self.health.suspects(now)
    }

    fn rtt_of(&self, id: &NodeId) -> Option<Rtt> {
        self.table
            .get(id)
            .or_else(|| self.table.replacement(id))
            .map(|k| k.rtt)
            .or_else(|| self.health.recent_rtt(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `id` answers from `addr`, `ms` after the request.
    fn answer(p: &mut Peers, id: NodeId, addr: SocketAddr, ms: u64) -> bool {
        p.answered(id, addr, Duration::from_millis(ms), Time::ZERO)
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
        assert!(answer(&mut p, a, addr(1), 10));
        p.verified(&a);
        assert!(!answer(&mut p, a, addr(1), 10), "known: refreshed, not new");
        assert!(!p.requested(a, addr(1)), "known at that address");
        assert!(
            !p.requested(NodeId([0x81; 32]), addr(6)),
            "a's bucket of one is full: it could only be a replacement"
        );
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
            assert!(answer(&mut p, NodeId(id), addr(port), 10));
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
        assert!(answer(&mut p, a, addr(1), 10));
        assert!(
            !answer(&mut p, b, addr(2), 10),
            "bucket of one is full: b waits"
        );
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

    #[test]
    fn round_trip_times_stay_with_the_table_and_past_its_replacement_caches() {
        let mut p = peers();
        let (a, b, c) = (NodeId([0x80; 32]), NodeId([0x81; 32]), NodeId([0x82; 32]));
        assert!(answer(&mut p, a, addr(1), 10));
        assert!(
            !answer(&mut p, b, addr(2), 20),
            "b waits in the replacement cache"
        );
        assert!(!answer(&mut p, c, addr(3), 30), "c takes its place there");
        let ms = |p: &Peers, id| p.rtt(&id).map(|d| d.as_millis());
        assert_eq!(
            (ms(&p, a), ms(&p, b), ms(&p, c)),
            (Some(10), Some(20), Some(30))
        );
        assert!(!answer(&mut p, b, addr(2), 60), "b back in the cache");
        assert_eq!(
            ms(&p, b),
            Some(25),
            "one more sample: 20 ms * 7/8 + 60 ms / 8"
        );
        let gone = p.unreachable(&a).unwrap();
        assert_eq!(gone.promoted.map(|n| n.id), Some(b));
        assert_eq!(ms(&p, b), Some(25), "promoted with it");
        assert_eq!(ms(&p, c), Some(30), "let go of, still known");
        assert_eq!(ms(&p, a), None, "it failed its way out: forgotten");
        assert_eq!(
            p.timeout(Some(&c), Duration::from_secs(2), false).0,
            Duration::from_millis(100),
            "30 ms + 4 * 15 ms, at the floor"
        );
    }

    #[test]
    fn a_dead_peer_outside_the_table_stays_failed_while_many_others_come_and_go() {
        let mut p = Peers::new(NodeId([0; 32]), TableConfig::default(), 2);
        let dead = NodeId([0x42; 32]);
        assert!(!p.failed(dead, Time::ZERO));
        // Many more peers than any bound of remembered peers answer, all after it failed.
        for n in 0..10_000u32 {
            let mut id = [0x80; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            let now = Time::from_millis(1 + u64::from(n) / 4);
            p.answered(NodeId(id), addr(n as u16), Duration::from_millis(20), now);
        }
        assert!(p.is_suspect(&dead, Time::from_millis(4_000)));
        assert_eq!(p.due_probes(Time::from_millis(5_000)), [dead]);
        assert!(!p.is_suspect(&dead, Time::from_millis(5_000)));
        assert!(p.failed_last(&dead), "not waited for by lookups");
        assert!(
            p.timeout(Some(&dead), Duration::from_secs(2), false).0 >= Duration::from_millis(200)
        );
    }
}
