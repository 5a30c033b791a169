//! What the passing of time does: requests and lookups fail at their deadlines, and a serving
//! node keeps house (record expiry, tombstone purge, due republishes) every `tick` and refreshes
//! its buckets every `refresh_interval`.
//!
//! A refresh re-joins through the bootstrap nodes when the table is empty; otherwise it looks up
//! the node's own id and a random id in each of the next `refresh_buckets` buckets (round robin
//! from the farthest to the nearest non-empty one). Lookups meet the peers in those ranges, which
//! refreshes them, finds newcomers and drops the dead. One refresh runs at a time.

use super::adverts::Command;
use super::flows::{AfterContact, AfterLookup, Origin};
use super::{Cx, DhtConfig, Reply, StoreAccess};
use crate::time::Time;
use crate::wire::Request;
use crate::{Failure, FailureKind};

/// When housekeeping and refresh run next.
#[derive(Debug)]
pub(crate) struct Timers {
    next_tick: Time,
    next_refresh: Time,
    refresh_cursor: usize,
    /// A refresh (or re-join) is running.
    pub refreshing: bool,
}

impl Timers {
    pub(crate) fn new(config: &DhtConfig, now: Time) -> Timers {
        Timers {
            next_tick: now + config.tick,
            next_refresh: now + config.refresh_interval,
            refresh_cursor: 0,
            refreshing: false,
        }
    }

    /// The next housekeeping or refresh; none for a node that does not serve.
    pub(crate) fn next(&self, config: &DhtConfig) -> Option<Time> {
        config.serve.then(|| self.next_tick.min(self.next_refresh))
    }
}

impl<S: StoreAccess> Cx<'_, S> {
    pub(super) fn on_timeout(&mut self) {
        let now = self.now;
        while let Some(rpc) = self.dht.ops.overdue_rpc(now) {
            if let Some(rpc) = self.dht.ops.take_rpc(rpc) {
                let detail = format!(
                    "request to {} timed out after {:?}",
                    rpc.addr, self.dht.config.request_timeout
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
        self.resume_handoff();
        if self.dht.config.serve {
            if self.dht.timers.next_tick <= now {
                self.dht.timers.next_tick = now + self.dht.config.tick;
                self.housekeeping();
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

    fn refresh(&mut self) {
        if self.dht.peers.is_empty() {
            let seeds = self.dht.peers.seeds().to_vec();
            if !seeds.is_empty() {
                self.dht.timers.refreshing = true;
                let op = self.dht.ops.next_op();
                self.contact(op, &seeds, AfterContact::Rejoin, false);
            }
            return;
        }
        let own = self.dht.id;
        let buckets = self.dht.peers.nearest_bucket() as usize + 1;
        let mut targets = Vec::with_capacity(self.dht.config.refresh_buckets + 1);
        for _ in 0..self.dht.config.refresh_buckets {
            let index = self.dht.timers.refresh_cursor % buckets;
            self.dht.timers.refresh_cursor = self.dht.timers.refresh_cursor.wrapping_add(1);
            targets.push(self.dht.rng.id_in_bucket(&own, index));
        }
        // Looked up last first: the own id, then the buckets in cursor order.
        targets.reverse();
        self.dht.timers.refreshing = true;
        let op = self.dht.ops.next_op();
        let then = AfterLookup::Refresh { rest: targets };
        self.lookup(
            op,
            own,
            Request::FindNode { target: own },
            None,
            then,
            false,
        );
    }
}
