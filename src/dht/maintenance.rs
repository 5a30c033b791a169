//! What the passing of time does: requests and lookups fail at their deadlines, and a serving
//! node keeps house (record expiry, tombstone purge, due republishes) every `tick` and refreshes
//! its buckets every `refresh_interval`.
//!
//! A refresh re-joins through the bootstrap nodes when the table holds fewer than `k` nodes
//! (after a bootstrap that failed, or through a node that was itself cut off, a node may know only
//! a few others that know no one else either); otherwise it looks up the node's own id and a
//! random id in each of the next `refresh_buckets` buckets (round robin from the farthest to the
//! nearest non-empty one). Lookups meet the peers in those ranges, which
//! refreshes them, finds newcomers and drops the dead. One refresh runs at a time. As in
//! Kademlia, a bucket (or the own id) that another lookup went through within the last
//! `refresh_interval` is not looked up again: that lookup did the refresh's work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::adverts::Command;
use super::flows::{AfterContact, AfterLookup, Origin};
use super::ops::Purpose;
use super::{Cx, DhtConfig, Reply, StoreAccess};
use crate::id::ID_BITS;
use crate::time::Time;
use crate::wire::Request;
use crate::{Failure, FailureKind, NodeId};

/// The first wait before re-joining a table that holds fewer than `k` nodes; it doubles after
/// each re-join that leaves it so, up to `refresh_interval`.
const FIRST_REJOIN: Duration = Duration::from_secs(1);
/// Empty far buckets a join fills at most (each is one lookup).
const MAX_FAR_FILLS: usize = 8;

/// When housekeeping, refresh and re-joins run next.
#[derive(Debug)]
pub(crate) struct Timers {
    next_tick: Time,
    next_refresh: Time,
    refresh_cursor: usize,
    /// A refresh (or re-join) is running.
    pub refreshing: bool,
    rejoin_at: Option<Time>,
    rejoin_delay: Duration,
    /// When lookups other than the refresh's own last went through each bucket.
    pub looked_up: LookedUp,
}

/// When a lookup last went through each bucket, and through the node's own id: the last time
/// one with its target there got an answer. The periodic refresh's own lookups are not noted,
/// so that each refresh does the work the previous one did, unless other lookups did it.
#[derive(Debug, Default)]
pub(crate) struct LookedUp {
    /// By bucket index, as far as the farthest index noted (at most [`ID_BITS`]).
    buckets: Vec<Option<Time>>,
    own: Option<Time>,
}

impl LookedUp {
    /// A lookup of `target` by the node `own` got an answer at `now`.
    pub(crate) fn note(&mut self, own: &NodeId, target: &NodeId, now: Time) {
        let index = own.bucket_index(target) as usize;
        if index >= ID_BITS {
            self.own = Some(now);
            return;
        }
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, None);
        }
        self.buckets[index] = Some(now);
    }

    /// Whether a lookup went through bucket `index` (`None`: the own id) less than `within` ago.
    fn recent(&self, index: Option<usize>, now: Time, within: Duration) -> bool {
        let at = match index {
            Some(index) => self.buckets.get(index).copied().flatten(),
            None => self.own,
        };
        at.is_some_and(|at| now.since(at) < within)
    }
}

impl Timers {
    pub(crate) fn new(config: &DhtConfig, now: Time) -> Timers {
        Timers {
            next_tick: now + config.tick,
            next_refresh: now + config.refresh_interval,
            refresh_cursor: 0,
            refreshing: false,
            rejoin_at: None,
            rejoin_delay: FIRST_REJOIN,
            looked_up: LookedUp::default(),
        }
    }

    /// How long until the next re-join (zero when none is due).
    pub(crate) fn rejoin_in(&self, now: Time) -> Duration {
        self.rejoin_at.map_or(Duration::ZERO, |at| at.since(now))
    }

    /// The next housekeeping, refresh or re-join; none for a node that does not serve.
    pub(crate) fn next(&self, config: &DhtConfig) -> Option<Time> {
        let periodic = self.next_tick.min(self.next_refresh);
        config
            .serve
            .then(|| self.rejoin_at.map_or(periodic, |at| at.min(periodic)))
    }
}

impl<S: StoreAccess> Cx<'_, S> {
    pub(super) fn on_timeout(&mut self) {
        let now = self.now;
        while let Some(rpc) = self.dht.ops.overdue_rpc(now) {
            if let Some(rpc) = self.dht.ops.take_rpc(rpc) {
                let detail = format!(
                    "request to {} timed out after {:?}",
                    rpc.addr,
                    rpc.deadline.since(rpc.sent)
                );
                let failure = Failure {
                    kind: FailureKind::Timeout,
                    detail,
                };
                self.conclude(rpc, Reply::Failed(failure));
            }
        }
        while let Some(op) = self.dht.ops.overdue_lookup(now) {
            self.finish_lookup(op, true);
        }
        while let Some(rpc) = self.dht.ops.stalled_rpc(now) {
            self.lookup_stalled(rpc);
        }
        self.resume_handoff();
        if self.dht.config.serve {
            if self.dht.timers.next_tick <= now {
                self.dht.timers.next_tick = now + self.dht.config.tick;
                self.housekeeping();
            }
            if self.dht.timers.rejoin_at.is_some_and(|at| at <= now) {
                if self.dht.timers.refreshing {
                    // A refresh is running: the re-join waits for it rather than overlapping.
                    self.dht.timers.rejoin_at = Some(now + FIRST_REJOIN);
                } else {
                    self.dht.timers.rejoin_at = None;
                    self.rejoin();
                }
            }
            if self.dht.timers.next_refresh <= now {
                self.dht.timers.next_refresh = now + self.dht.config.refresh_interval;
                if !self.dht.timers.refreshing {
                    self.refresh();
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        self.probe_suspects();
        let now_ms = self.now_ms();
        self.store.expire(now_ms);
        self.dht.tombstones.purge(now_ms);
        let config = &self.dht.config;
        let due = self
            .dht
            .adverts
            .take_due(self.now, |ttl| config.republish_interval(ttl));
        for (service, ad) in due {
            let op = self.dht.ops.next_op();
            let command = Command::Publish { ad, refresh: true };
            self.run_command(op, &service, command, Origin::Republish);
        }
    }

    /// A bootstrap (`rejoin`: a re-join) ended, with `answered` nodes answering its lookup of
    /// the node's own id (`None`: no bootstrap node answered). Unless that reached `k` nodes,
    /// the node re-joins through the bootstrap nodes again: a second later at first, then less
    /// and less often. A node whose bootstrap failed, or that joined through a node cut off
    /// itself, so finds the network as soon as its bootstrap nodes do; a node in a network of
    /// more than `k` nodes that found `k` of them leaves it to the periodic refresh. A join that
    /// reached a node makes due the advertisements whose last publish reached none.
    pub(super) fn after_join(&mut self, rejoin: bool, answered: Option<usize>) {
        if answered.is_some_and(|n| n > 0) {
            self.dht.adverts.place_unplaced(self.now);
        }
        let short =
            answered.is_none_or(|n| n < self.dht.config.k) && !self.dht.peers.seeds().is_empty();
        let timers = &mut self.dht.timers;
        if rejoin {
            timers.refreshing = false;
        }
        if short {
            timers.rejoin_at = Some(self.now + timers.rejoin_delay);
            timers.rejoin_delay = (timers.rejoin_delay * 2).min(self.dht.config.refresh_interval);
        } else {
            timers.rejoin_at = None;
            timers.rejoin_delay = FIRST_REJOIN;
        }
    }

    /// Pings the peers of the table whose suspect time is up: an answer clears one, a failure
    /// makes it suspect for longer or takes it out of the table.
    fn probe_suspects(&mut self) {
        let now = self.now;
        let due: Vec<(NodeId, SocketAddr)> = self
            .dht
            .peers
            .due_probes(now)
            .into_iter()
            .filter_map(|id| self.dht.peers.addr(&id).map(|addr| (id, addr)))
            .collect();
        for (id, addr) in due {
            if let Some(rpc) = self.send(Some(id), addr, Arc::new(Request::Ping), Purpose::Probe) {
                // Suspect while the probe runs, so that the next tick does not probe it again.
                let until = self.dht.ops.rpcs.get(&rpc).map_or(now, |r| r.deadline);
                self.dht.peers.probing(id, until);
            }
        }
    }

    /// As a join ends: looks up a random id in each empty bucket farther than those of its `k`
    /// nearest peers (`Peers::empty_far_buckets`; at most [`MAX_FAR_FILLS`], farthest first). A
    /// joining node learns of the nodes near itself from its own lookup, but of a far part of
    /// the network only once someone there contacts it; until then no lookup through it reaches
    /// that part. (Kademlia's join refreshes every bucket farther than the closest neighbour;
    /// those already holding a node are left to the periodic refresh, and those near enough to
    /// be empty for want of nodes are not looked up: at 100 k nodes they were most of the cost.)
    pub(super) fn fill_far_buckets(&mut self) {
        // A table shorter than `k` re-joins soon anyway (`after_join`), and a refresh running
        // would hold that re-join back.
        if self.dht.timers.refreshing || self.dht.peers.len() < self.dht.config.k {
            return;
        }
        let own = self.dht.id;
        let mut targets: Vec<NodeId> = self
            .dht
            .peers
            .empty_far_buckets(MAX_FAR_FILLS)
            .into_iter()
            .rev()
            .map(|index| self.dht.rng.id_in_bucket(&own, index as usize))
            .collect();
        // Taken from the end: the farthest bucket first.
        if let Some(first) = targets.pop() {
            self.look_up_in_turn(first, targets, false);
        }
    }

    /// Pings the bootstrap nodes, then looks up the node's own id.
    fn rejoin(&mut self) {
        let seeds = self.dht.peers.seeds().to_vec();
        self.dht.timers.refreshing = true;
        let op = self.dht.ops.next_op();
        self.contact(op, &seeds, AfterContact::Rejoin, false);
    }

    fn refresh(&mut self) {
        if self.dht.peers.len() < self.dht.config.k && !self.dht.peers.seeds().is_empty() {
            self.rejoin();
            return;
        }
        if self.dht.peers.is_empty() {
            return;
        }
        let own = self.dht.id;
        let (now, within) = (self.now, self.dht.config.refresh_interval);
        let buckets = self.dht.peers.nearest_bucket() as usize + 1;
        let mut targets = Vec::with_capacity(self.dht.config.refresh_buckets + 1);
        for _ in 0..self.dht.config.refresh_buckets {
            let index = self.dht.timers.refresh_cursor % buckets;
            self.dht.timers.refresh_cursor = self.dht.timers.refresh_cursor.wrapping_add(1);
            if !self.dht.timers.looked_up.recent(Some(index), now, within) {
                targets.push(self.dht.rng.id_in_bucket(&own, index));
            }
        }
        // Looked up last first: the own id, then the buckets in cursor order.
        targets.reverse();
        if !self.dht.timers.looked_up.recent(None, now, within) {
            targets.push(own);
        }
        if let Some(first) = targets.pop() {
            self.look_up_in_turn(first, targets, true);
        }
    }

    /// A refresh: FIND_NODE of `first`, then of each of `rest` from its end, one after the
    /// other; `refreshing` until the last ends. `periodic`: the periodic refresh's (see
    /// [`LookedUp`]).
    fn look_up_in_turn(&mut self, first: NodeId, rest: Vec<NodeId>, periodic: bool) {
        self.dht.timers.refreshing = true;
        let op = self.dht.ops.next_op();
        let then = AfterLookup::Refresh { rest, periodic };
        let request = Request::FindNode { target: first };
        self.lookup(op, first, request, None, then, false);
    }
}
