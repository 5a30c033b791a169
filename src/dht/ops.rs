//! The commands running and the requests in flight, with their deadlines.
//!
//! Maps are ordered (by id, and deadlines by time then id), so that whatever ends at the same
//! moment ends in the same order every run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::flows::Op;
use super::{OpId, RpcId};
use crate::time::Time;
use crate::wire::Request;
use crate::NodeId;

/// A command and whether its caller is owed an [`Action::Done`](super::Action::Done).
#[derive(Debug)]
pub(crate) struct Running {
    pub op: Op,
    pub reply: bool,
}

/// A request in flight.
#[derive(Debug)]
pub(crate) struct Rpc {
    pub id: RpcId,
    pub to: Option<NodeId>,
    pub addr: SocketAddr,
    pub request: Arc<Request>,
    pub purpose: Purpose,
    pub sent: Time,
    pub deadline: Time,
    /// For a lookup's query: when the lookup stops holding a slot for it (see
    /// [`crate::lookup::Lookup::stalled`]).
    pub stall_at: Option<Time>,
}

/// What a request's outcome is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A query of a lookup.
    Lookup(OpId),
    /// A STORE or REMOVE of a replication.
    Fanout(OpId),
    /// A ping of a bootstrap or contact.
    Contact(OpId),
    /// A ping back to a peer that sent us a request.
    Verify(NodeId),
    /// A ping to a suspect peer whose wait is up: it clears it or fails it further.
    Probe,
    /// A STORE of the hand-off running now.
    HandOff,
    /// A REMOVE passed on to a node this node gave a copy.
    Forward,
}

#[derive(Debug, Default)]
pub(crate) struct Ops {
    next_id: u64,
    pub running: BTreeMap<OpId, Running>,
    /// Lookups holding a slot (of `max_lookups`).
    pub lookups_running: usize,
    /// Lookups waiting for a slot, oldest first.
    pub queued: VecDeque<OpId>,
    pub lookup_deadlines: Deadlines<OpId>,
    pub rpcs: BTreeMap<RpcId, Rpc>,
    pub rpc_deadlines: Deadlines<RpcId>,
    /// `stall_at` of the lookup queries in flight.
    pub rpc_stalls: Deadlines<RpcId>,
    /// Requests refused at `max_requests`, failed before the input that made them returns.
    pub unsent: VecDeque<Rpc>,
    /// Free lookup slots are being handed out (see `fill_lookup_slots`).
    pub filling: bool,
}

impl Ops {
    pub(crate) fn next_op(&mut self) -> OpId {
        self.next_id += 1;
        OpId(self.next_id)
    }

    pub(crate) fn next_rpc(&mut self) -> RpcId {
        self.next_id += 1;
        RpcId(self.next_id)
    }

    /// The earliest deadline of a lookup or a request, or stall of a lookup's query.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        [
            self.lookup_deadlines.earliest(),
            self.rpc_deadlines.earliest(),
            self.rpc_stalls.earliest(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Puts `rpc` in flight.
    pub(crate) fn put_rpc(&mut self, rpc: Rpc) {
        self.rpc_deadlines.insert(rpc.deadline, rpc.id);
        if let Some(at) = rpc.stall_at {
            self.rpc_stalls.insert(at, rpc.id);
        }
        self.rpcs.insert(rpc.id, rpc);
    }

    /// Takes the request `rpc` out of flight.
    pub(crate) fn take_rpc(&mut self, rpc: RpcId) -> Option<Rpc> {
        let taken = self.rpcs.remove(&rpc)?;
        self.rpc_deadlines.remove(taken.deadline, rpc);
        if let Some(at) = taken.stall_at {
            self.rpc_stalls.remove(at, rpc);
        }
        Some(taken)
    }

    /// The first lookup query stalled at or before `now`, taken off the stalls.
    pub(crate) fn stalled_rpc(&mut self, now: Time) -> Option<RpcId> {
        self.rpc_stalls.pop_due(now)
    }

    /// The first request whose deadline is at or before `now`.
    pub(crate) fn overdue_rpc(&self, now: Time) -> Option<RpcId> {
        self.rpc_deadlines.due(now)
    }

    /// The first lookup whose deadline is at or before `now`.
    pub(crate) fn overdue_lookup(&self, now: Time) -> Option<OpId> {
        self.lookup_deadlines.due(now)
    }
}

/// Ids by deadline, the earliest deadline kept at hand: a node is asked for it after every
/// input, and reading it out of the set would visit the set's memory each time.
#[derive(Debug)]
pub(crate) struct Deadlines<T> {
    set: BTreeSet<(Time, T)>,
    earliest: Option<Time>,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines {
            set: BTreeSet::new(),
            earliest: None,
        }
    }
}

impl<T: Ord + Copy> Deadlines<T> {
    pub(crate) fn insert(&mut self, at: Time, id: T) {
        self.set.insert((at, id));
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
    }

    pub(crate) fn remove(&mut self, at: Time, id: T) {
        if self.set.remove(&(at, id)) && self.earliest == Some(at) {
            self.earliest = self.set.first().map(|(at, _)| *at);
        }
    }

    /// The first id whose deadline is at or before `now`.
    pub(crate) fn due(&self, now: Time) -> Option<T> {
        if self.earliest? > now {
            return None;
        }
        self.set.first().map(|(_, id)| *id)
    }

    /// [`Deadlines::due`], taken out.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<T> {
        if self.earliest? > now {
            return None;
        }
        let (_, id) = self.set.pop_first()?;
        self.earliest = self.set.first().map(|(at, _)| *at);
        Some(id)
    }

    fn earliest(&self) -> Option<Time> {
        self.earliest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_follows_the_set() {
        let at = Time::from_millis;
        let mut d = Deadlines::default();
        assert_eq!((d.earliest(), d.due(at(100))), (None, None));
        d.insert(at(30), 3);
        d.insert(at(10), 1);
        d.insert(at(10), 2);
        d.insert(at(20), 4);
        assert_eq!(d.earliest(), Some(at(10)));
        assert_eq!((d.due(at(9)), d.due(at(10))), (None, Some(1)));
        d.remove(at(10), 1);
        assert_eq!(d.earliest(), Some(at(10)), "2 is due then too");
        d.remove(at(20), 9);
        d.remove(at(10), 2);
        assert_eq!(d.earliest(), Some(at(20)));
        assert_eq!(d.pop_due(at(19)), None);
        assert_eq!(d.pop_due(at(25)), Some(4));
        assert_eq!(d.earliest(), Some(at(30)));
        assert_eq!(d.pop_due(at(30)), Some(3));
        assert_eq!((d.earliest(), d.pop_due(at(99))), (None, None));
    }
}
