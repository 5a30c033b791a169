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
    pub lookup_deadlines: BTreeSet<(Time, OpId)>,
    pub rpcs: BTreeMap<RpcId, Rpc>,
    pub rpc_deadlines: BTreeSet<(Time, RpcId)>,
    /// `stall_at` of the lookup queries in flight.
    pub rpc_stalls: BTreeSet<(Time, RpcId)>,
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
            &self.lookup_deadlines.first().map(|(at, _)| *at),
            &self.rpc_deadlines.first().map(|(at, _)| *at),
            &self.rpc_stalls.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
    }

    /// Puts `rpc` in flight.
    pub(crate) fn put_rpc(&mut self, rpc: Rpc) {
        self.rpc_deadlines.insert((rpc.deadline, rpc.id));
        if let Some(at) = rpc.stall_at {
            self.rpc_stalls.insert((at, rpc.id));
        }
        self.rpcs.insert(rpc.id, rpc);
    }

    /// Takes the request `rpc` out of flight.
    pub(crate) fn take_rpc(&mut self, rpc: RpcId) -> Option<Rpc> {
        let taken = self.rpcs.remove(&rpc)?;
        self.rpc_deadlines.remove(&(taken.deadline, rpc));
        if let Some(at) = taken.stall_at {
            self.rpc_stalls.remove(&(at, rpc));
        }
        Some(taken)
    }

    /// The first lookup query stalled at or before `now`, taken off the stalls.
    pub(crate) fn stalled_rpc(&mut self, now: Time) -> Option<RpcId> {
        let &(at, rpc) = self.rpc_stalls.first()?;
        if at > now {
            return None;
        }
        self.rpc_stalls.remove(&(at, rpc));
        Some(rpc)
    }

    /// The first request whose deadline is at or before `now`.
    pub(crate) fn overdue_rpc(&self, now: Time) -> Option<RpcId> {
        self.rpc_deadlines
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, rpc)| *rpc)
    }

    /// The first lookup whose deadline is at or before `now`.
    pub(crate) fn overdue_lookup(&self, now: Time) -> Option<OpId> {
        self.lookup_deadlines
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, op)| *op)
    }
}
