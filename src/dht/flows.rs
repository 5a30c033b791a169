//! The node's multi-step work: lookups, bootstrap and contact, replication (a lookup of the
//! key's closest nodes, then STORE or REMOVE to them and to the copies this node made), the
//! publish and withdrawal of services, and what a request's outcome teaches about the peer.
//!
//! Each command is an [`Op`] that moves through these steps as replies and deadlines arrive; a
//! caller that asked for it gets one [`Outcome`] at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::adverts::Command;
use super::ops::{Purpose, Rpc, Running};
use super::{
    Cx, Event, Failure, FailureKind, JoinError, LookupKind, LookupReport, LookupSummary, OpId,
    Outcome, PublishError, Published, Reply, RpcId, StoreAccess, Trouble,
};
use crate::lookup::{Lookup, LookupConfig};
use crate::provider::ProviderRecord;
use crate::record::{hex, service_key, Provider};
use crate::seal::{may_publish, Seal, SEAL_LEN};
use crate::store::StoreError;
use crate::time::Time;
use crate::wire::{ErrorReason, NodeInfo, Request, Response, SealedRecord, WireError};
use crate::NodeId;

/// A running command.
#[derive(Debug)]
pub(crate) enum Op {
    Lookup(Box<LookupOp>),
    Fanout(Fanout),
    Contact(Contact),
}

/// A lookup and what follows it.
#[derive(Debug)]
pub(crate) struct LookupOp {
    lookup: Lookup<SocketAddr>,
    request: Arc<Request>,
    kind: LookupKind,
    started: Time,
    deadline: Time,
    first_provider: Option<Time>,
    /// Holds one of the `max_lookups` slots (else it waits for one).
    running: bool,
    /// Its queries in flight (at most `alpha`): cancelled when it ends before they answer.
    in_flight: Vec<RpcId>,
    then: AfterLookup,
}

/// What a lookup is for.
#[derive(Debug)]
pub(crate) enum AfterLookup {
    /// Its report goes to the caller.
    Report,
    /// The report goes to the caller, with the providers held here first.
    Providers { local: Vec<Provider> },
    /// A bootstrap's own-id lookup: the caller gets the table size.
    Join,
    /// A re-join's own-id lookup (no caller).
    Rejoin,
    /// The closest nodes found get a STORE or REMOVE.
    Replicate(Replication),
    /// A bucket refresh (`periodic`), or a join's lookups of its far buckets: more targets to
    /// look up, last first.
    Refresh { rest: Vec<NodeId>, periodic: bool },
}

/// What a contact is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterContact {
    /// The caller gets the count of answers.
    Report,
    /// A bootstrap: a lookup of the node's own id follows.
    Join,
    /// A re-join through the bootstrap nodes (no caller).
    Rejoin,
}

/// Who asked for a replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A caller, owed the outcome.
    Caller,
    /// The node itself, republishing a service.
    Republish,
}

/// A STORE or REMOVE of one record, on its way to the key's closest nodes.
#[derive(Debug)]
pub(crate) struct Replication {
    key: Vec<u8>,
    request: Arc<Request>,
    /// Nodes that hold copies made by this node, reached besides the closest.
    also: Vec<NodeInfo>,
    /// A STORE of a record with this provider `node_id`: the nodes that acknowledge it are
    /// noted, so that its removal follows.
    note: Option<Vec<u8>>,
    /// A service's publish or withdrawal: its next command runs after this.
    service: Option<String>,
    origin: Origin,
}

/// STOREs or REMOVEs in flight to a list of nodes.
#[derive(Debug)]
pub(crate) struct Fanout {
    replication: Replication,
    targets: usize,
    pending: usize,
    acked: Vec<NodeInfo>,
}

/// Pings to addresses.
#[derive(Debug)]
pub(crate) struct Contact {
    pending: usize,
    answered: usize,
    last_error: Option<String>,
    then: AfterContact,
}

/// The live providers held under `key`, read out.
pub(crate) fn held_providers<S: StoreAccess>(store: &S, key: &[u8], now: Time) -> Vec<Provider> {
    store.read(|s| {
        s.records(key, now.as_millis())
            .filter_map(|r| {
                let mut provider = Provider::parse(r.term).ok()?;
                provider.sealed_by(r.seal());
                Some(provider)
            })
            .collect()
    })
}

/// A verified provider as the lookup state machine carries it: seal bytes, then the term.
fn pack(record: &SealedRecord) -> Vec<u8> {
    [&record.seal.to_bytes()[..], &record.term].concat()
}

/// The provider [`pack`] packed, read out with its publisher.
fn unpack(packed: &[u8]) -> Option<Provider> {
    let (seal, term) = packed.split_first_chunk::<SEAL_LEN>()?;
    let mut provider = Provider::parse(term).ok()?;
    provider.sealed_by(Some(Seal::from_bytes(seal)));
    Some(provider)
}

/// Whether two providers are one: the same slot (`node_id` and publisher), or for records
/// without a `node_id` the same bytes.
fn same_provider(a: &Provider, b: &Provider) -> bool {
    if a.node_id.is_empty() || b.node_id.is_empty() {
        a.term == b.term
    } else {
        a.node_id == b.node_id && a.publisher == b.publisher
    }
}

impl<S: StoreAccess> Cx<'_, S> {
    // ---- requests and what their outcomes teach -------------------------------------------

    /// Sends `request` to `addr` (which must be `to`, if given), for `purpose`. `None` when it
    /// was refused at `max_requests` (it fails before the input returns).
    pub(super) fn send(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        request: Arc<Request>,
        purpose: Purpose,
    ) -> Option<RpcId> {
        let rpc_id = self.dht.ops.next_rpc();
        let lookup = matches!(purpose, Purpose::Lookup(_));
        let (timeout, stall_after) =
            self.dht
                .peers
                .timeout(to.as_ref(), self.dht.config.request_timeout, lookup);
        let rpc = Rpc {
            id: rpc_id,
            to,
            addr,
            request,
            purpose,
            sent: self.now,
            deadline: self.now + timeout,
            stall_at: stall_after.map(|after| self.now + after),
        };
        if self.dht.ops.rpcs.len() >= self.dht.config.max_requests {
            self.dht.stats.requests_dropped += 1;
            self.dht.ops.unsent.push_back(rpc);
            return None;
        }
        self.dht.stats.requests_sent += 1;
        self.dht
            .actions
            .push_back(super::Action::Send(super::Outgoing {
                rpc: rpc_id,
                to,
                addr,
                request: rpc.request.clone(),
                timeout,
            }));
        self.dht.ops.put_rpc(rpc);
        Some(rpc_id)
    }

    /// Fails the requests refused at `max_requests`. Their failure may start more work, which
    /// may be refused in turn: a loop, not recursion, and each round settles something.
    pub(super) fn settle(&mut self) {
        while let Some(rpc) = self.dht.ops.unsent.pop_front() {
            let failure = Failure {
                kind: FailureKind::Refused,
                detail: format!(
                    "not sent: {} requests in flight",
                    self.dht.config.max_requests
                ),
            };
            self.dispatch(rpc, Err(failure));
        }
    }

    pub(super) fn on_reply(&mut self, rpc: RpcId, reply: Reply) {
        if let Some(rpc) = self.dht.ops.take_rpc(rpc) {
            self.conclude(rpc, reply);
        }
    }

    /// What a request's outcome says about the peer, then what it means to its purpose.
    pub(super) fn conclude(&mut self, rpc: Rpc, reply: Reply) {
        let result = match reply {
            Reply::Answered { from, response } => {
                let rtt = self.now.since(rpc.sent);
                self.observe_answer(from, rpc.addr, rtt);
                if speaks_another_version(&response) {
                    self.dht.stats.refused_version += 1;
                }
                match response {
                    Ok(Response::Error { reason }) => Err(refused(format!(
                        "peer answered with error {}",
                        reason.name()
                    ))),
                    Ok(response) if response.answers(&rpc.request) => Ok((from, response)),
                    Ok(response) => Err(refused(format!(
                        "peer answered {} to {}",
                        response.type_name(),
                        rpc.request.type_name()
                    ))),
                    Err(e) => Err(refused(format!("undecodable reply: {e}"))),
                }
            }
            Reply::Failed(failure) => {
                if let Some(id) = rpc.to {
                    self.on_failure(&id, failure.kind);
                }
                Err(failure)
            }
        };
        if result.is_err() {
            self.dht.stats.requests_failed += 1;
        }
        self.dispatch(rpc, result);
    }

    fn dispatch(&mut self, rpc: Rpc, result: Result<(NodeId, Response), Failure>) {
        match rpc.purpose {
            Purpose::Lookup(op) => self.lookup_reply(op, rpc.id, rpc.to, result),
            Purpose::Fanout(op) => self.fanout_reply(op, rpc.to, rpc.addr, result),
            Purpose::Contact(op) => self.contact_reply(op, rpc.addr, result),
            Purpose::Verify(id) => self.dht.peers.verified(&id),
            Purpose::Probe => {}
            Purpose::HandOff => self.handoff_reply(result),
            Purpose::Forward => {
                if result.is_err() {
                    self.dht.stats.remove_failures += 1;
                }
            }
        }
    }

    /// A peer answered from `addr`, `rtt` after the request: it is (again) in the table, most
    /// recently seen. A new entry may be owed records (hand-off).
    fn observe_answer(&mut self, id: NodeId, addr: SocketAddr, rtt: Duration) {
        if self.dht.peers.answered(id, addr, rtt, self.now) {
            let peer = NodeInfo { id, addr };
            self.emit(Event::PeerUp(peer));
            if self.dht.config.serve {
                self.offer_handoff(peer);
            }
        }
    }

    /// A peer failed a request: for a liveness reason, it is suspect for a while; after
    /// repeated failures, or at once when another node answered at its address, it leaves the
    /// table.
    fn on_failure(&mut self, id: &NodeId, kind: FailureKind) {
        let evict = match kind {
            FailureKind::WrongPeer => true,
            FailureKind::Timeout | FailureKind::Unreachable => self.dht.peers.failed(*id, self.now),
            FailureKind::Refused => false,
        };
        if evict {
            self.on_unreachable(id);
        }
    }

    /// The `n` nodes of the table closest to `target` that are not suspect, closest first.
    pub(super) fn live_closest(&self, target: &NodeId, n: usize) -> Vec<NodeInfo> {
        let mut asked = n;
        loop {
            let mut nodes = self.dht.peers.closest(target, asked);
            let all = nodes.len();
            nodes.retain(|node| !self.dht.peers.is_suspect(&node.id, self.now));
            if nodes.len() >= n || all < asked {
                nodes.truncate(n);
                return nodes;
            }
            asked = asked.saturating_mul(2);
        }
    }

    /// Of `nodes` a peer offered, those not suspect here.
    fn live(&self, mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
        nodes.retain(|node| !self.dht.peers.is_suspect(&node.id, self.now));
        nodes
    }

    /// A peer is taken to be gone: it leaves the table. The replacement that moves up was last
    /// heard from a while ago: it is pinged, so that a dead one fails its way out too.
    fn on_unreachable(&mut self, id: &NodeId) {
        if let Some(gone) = self.dht.peers.unreachable(id) {
            self.emit(Event::PeerDown(gone.left));
            if let Some(promoted) = gone.promoted {
                self.emit(Event::PeerUp(promoted));
                let ping = Arc::new(Request::Ping);
                self.send(Some(promoted.id), promoted.addr, ping, Purpose::Probe);
            }
        }
    }

    // ---- contact and bootstrap -------------------------------------------------------------

    /// Pings the first `MAX_BOOTSTRAP` of `addrs` at once.
    pub(super) fn contact(
        &mut self,
        op: OpId,
        addrs: &[SocketAddr],
        then: AfterContact,
        reply: bool,
    ) {
        let addrs = &addrs[..addrs.len().min(crate::settings::MAX_BOOTSTRAP)];
        let contact = Contact {
            pending: addrs.len(),
            answered: 0,
            last_error: None,
            then,
        };
        self.dht.ops.running.insert(
            op,
            Running {
                op: Op::Contact(contact),
                reply,
            },
        );
        if addrs.is_empty() {
            self.finish_contact(op);
            return;
        }
        let ping = Arc::new(Request::Ping);
        for addr in addrs {
            self.send(None, *addr, ping.clone(), Purpose::Contact(op));
        }
    }

    fn contact_reply(
        &mut self,
        op: OpId,
        addr: SocketAddr,
        result: Result<(NodeId, Response), Failure>,
    ) {
        let own = self.dht.id;
        let Some(Op::Contact(contact)) = self.dht.ops.running.get_mut(&op).map(|r| &mut r.op)
        else {
            return;
        };
        match result {
            Ok((id, _)) if id == own => {
                contact.last_error = Some(format!("{addr} is this node itself"));
            }
            Ok(_) => contact.answered += 1,
            Err(failure) => contact.last_error = Some(failure.detail),
        }
        contact.pending -= 1;
        if contact.pending == 0 {
            self.finish_contact(op);
        }
    }

    fn finish_contact(&mut self, op: OpId) {
        let Some(Running {
            op: Op::Contact(contact),
            reply,
        }) = self.dht.ops.running.remove(&op)
        else {
            return;
        };
        let result = if contact.answered == 0 {
            Err(JoinError::NoneAnswered(
                contact
                    .last_error
                    .unwrap_or_else(|| "no address given".into()),
            ))
        } else {
            Ok(contact.answered)
        };
        match (contact.then, result) {
            (AfterContact::Report, result) => {
                if reply {
                    self.done(op, Outcome::Contacted(result));
                }
            }
            (then, Ok(_)) => {
                let target = self.dht.id;
                let after = if then == AfterContact::Join {
                    AfterLookup::Join
                } else {
                    AfterLookup::Rejoin
                };
                self.lookup(op, target, Request::FindNode { target }, None, after, reply);
            }
            (AfterContact::Join, Err(e)) => {
                self.after_join(false, None);
                if reply {
                    self.done(op, Outcome::Joined(Err(e)));
                }
            }
            (AfterContact::Rejoin, Err(JoinError::NoneAnswered(detail))) => {
                self.after_join(true, None);
                let retry_in = self.dht.timers.rejoin_in(self.now);
                let peers = self.dht.peers.len();
                self.emit(Event::Trouble(Trouble::RejoinFailed {
                    detail,
                    retry_in,
                    peers,
                }));
            }
        }
    }

    // ---- lookups ---------------------------------------------------------------------------

    /// Starts a lookup of `target` with `request` (FIND_NODE or FIND_VALUE), seeded with the `k`
    /// closest nodes of the table; with `want`, it ends as soon as that many distinct providers
    /// are known. It waits for a slot when `max_lookups` run, and ends at the lookup timeout in
    /// any case.
    pub(super) fn lookup(
        &mut self,
        op: OpId,
        target: NodeId,
        request: Request,
        want: Option<usize>,
        then: AfterLookup,
        reply: bool,
    ) {
        let config = &self.dht.config;
        let lookup_config = LookupConfig {
            k: config.k,
            alpha: config.alpha,
            want_providers: want,
            max_queries: config.max_lookup_queries,
            max_providers: self.store.read(|s| s.limits().max_providers_per_key),
            local: Some(self.dht.id),
            ..LookupConfig::default()
        };
        // Twice k: when the closest fail, the lookup goes on with the next ones of the table.
        let seeds = contacts(self.live_closest(&target, 2 * config.k));
        let kind = match request {
            Request::FindValue { .. } => LookupKind::FindValue,
            _ => LookupKind::FindNode,
        };
        let deadline = self.now + config.lookup_timeout;
        let state = LookupOp {
            lookup: Lookup::new(target, lookup_config, seeds),
            request: Arc::new(request),
            kind,
            started: self.now,
            deadline,
            first_provider: None,
            running: false,
            in_flight: Vec::new(),
            then,
        };
        let ops = &mut self.dht.ops;
        ops.running.insert(
            op,
            Running {
                op: Op::Lookup(Box::new(state)),
                reply,
            },
        );
        ops.lookup_deadlines.insert(deadline, op);
        if ops.lookups_running < self.dht.config.max_lookups {
            self.run_lookup(op);
        } else if ops.queued.len() < self.dht.config.max_queued_lookups {
            ops.queued.push_back(op);
        } else {
            // No slot and no room to wait for one: it ends at once, timed out.
            self.finish_lookup(op, true);
        }
    }

    fn lookup_mut(&mut self, op: OpId) -> Option<&mut LookupOp> {
        match self.dht.ops.running.get_mut(&op).map(|r| &mut r.op) {
            Some(Op::Lookup(state)) => Some(state),
            _ => None,
        }
    }

    /// Gives a lookup its slot and sends its first queries.
    fn run_lookup(&mut self, op: OpId) {
        let Some(state) = self.lookup_mut(op) else {
            return;
        };
        state.running = true;
        self.dht.ops.lookups_running += 1;
        self.advance_lookup(op);
    }

    /// Gives free slots to the lookups waiting, oldest first. A lookup given a slot may end at
    /// once and free it again; the loop of the outermost call takes care of that, so this does
    /// not recurse through a long queue.
    fn fill_lookup_slots(&mut self) {
        if self.dht.ops.filling {
            return;
        }
        self.dht.ops.filling = true;
        while self.dht.ops.lookups_running < self.dht.config.max_lookups {
            let Some(next) = self.dht.ops.queued.pop_front() else {
                break;
            };
            self.run_lookup(next);
        }
        self.dht.ops.filling = false;
    }

    /// A lookup's query is out longer than its peer usually takes: the lookup asks the next
    /// candidate meanwhile.
    pub(super) fn lookup_stalled(&mut self, rpc: RpcId) {
        let Some((op, peer)) = self.dht.ops.rpcs.get(&rpc).and_then(|r| match r.purpose {
            Purpose::Lookup(op) => Some((op, r.to?)),
            _ => None,
        }) else {
            return;
        };
        if let Some(state) = self.lookup_mut(op) {
            state.lookup.stalled(&peer);
            self.advance_lookup(op);
        }
    }

    /// Sends what the lookup hands out; ends it when it is finished. A peer that failed its
    /// last request is asked but not waited for: its slot goes to the next candidate at once.
    fn advance_lookup(&mut self, op: OpId) {
        loop {
            let Some(state) = self.lookup_mut(op) else {
                return;
            };
            let queries = state.lookup.next_queries();
            let request = state.request.clone();
            let mut freed = false;
            for (id, addr) in queries {
                let Some(rpc) = self.send(Some(id), addr, request.clone(), Purpose::Lookup(op))
                else {
                    continue;
                };
                let unawaited = self.dht.peers.failed_last(&id);
                if let Some(state) = self.lookup_mut(op) {
                    state.in_flight.push(rpc);
                    if unawaited {
                        state.lookup.unawaited(&id);
                        freed = true;
                    }
                }
            }
            // Each round that frees a slot has used up a candidate: this ends.
            if freed {
                continue;
            }
            if self.lookup_mut(op).is_some_and(|s| s.lookup.is_finished()) {
                self.finish_lookup(op, false);
            }
            return;
        }
    }

    fn lookup_reply(
        &mut self,
        op: OpId,
        rpc: RpcId,
        peer: Option<NodeId>,
        result: Result<(NodeId, Response), Failure>,
    ) {
        let now = self.now;
        // The dead stay out of the lookup: a peer's word does not outweigh our own failures.
        let result = result.map(|(from, response)| match response {
            Response::Nodes { nodes } => (
                from,
                Response::Nodes {
                    nodes: self.live(nodes),
                },
            ),
            Response::NoValue { nodes } => (
                from,
                Response::NoValue {
                    nodes: self.live(nodes),
                },
            ),
            Response::Value { providers, nodes } => {
                let nodes = self.live(nodes);
                (from, Response::Value { providers, nodes })
            }
            other => (from, other),
        });
        let (Some(state), Some(peer)) = (self.lookup_mut(op), peer) else {
            return;
        };
        state.in_flight.retain(|r| *r != rpc);
        match result {
            Ok((_, Response::Nodes { nodes } | Response::NoValue { nodes })) => {
                state
                    .lookup
                    .on_response(&peer, contacts(nodes), std::iter::empty());
            }
            Ok((_, Response::Value { providers, nodes })) => {
                let key = match &*state.request {
                    Request::FindValue { key } => key.clone(),
                    _ => Vec::new(),
                };
                let mut found = Vec::with_capacity(providers.len());
                for record in providers {
                    match self.dht.verify(&key, &record) {
                        Some(identity) => found.push((identity, pack(&record))),
                        None => self.dht.stats.forged_in_replies += 1,
                    }
                }
                let Some(state) = self.lookup_mut(op) else {
                    return;
                };
                if state.first_provider.is_none() && !found.is_empty() {
                    state.first_provider = Some(now);
                }
                state.lookup.on_response(&peer, contacts(nodes), found);
            }
            Ok(_) | Err(_) => state.lookup.on_failure(&peer),
        }
        self.advance_lookup(op);
    }

    /// Ends a lookup: its slot goes to the next one waiting, its report to what follows it.
    pub(super) fn finish_lookup(&mut self, op: OpId, timed_out: bool) {
        let Some(Running {
            op: Op::Lookup(state),
            reply,
        }) = self.dht.ops.running.remove(&op)
        else {
            return;
        };
        let state = *state;
        self.dht.ops.lookup_deadlines.remove(state.deadline, op);
        // Answers still on their way are not needed any more: the host may stop those requests.
        // A late one (stalled or unawaited) runs on to its deadline, unwaited for: whether its
        // peer answers late or not at all is how a dead peer comes to be suspect.
        for rpc in &state.in_flight {
            let late = self
                .dht
                .ops
                .rpcs
                .get(rpc)
                .and_then(|r| r.to)
                .is_some_and(|peer| state.lookup.is_late(&peer));
            if !late && self.dht.ops.take_rpc(*rpc).is_some() {
                self.dht.actions.push_back(super::Action::Cancel(*rpc));
            }
        }
        if state.running {
            self.dht.ops.lookups_running -= 1;
            self.fill_lookup_slots();
        } else {
            self.dht.ops.queued.retain(|queued| *queued != op);
        }
        let target = *state.lookup.target();
        let outcome = state.lookup.into_outcome();
        let mut report = LookupReport {
            providers: outcome
                .providers
                .iter()
                .filter_map(|p| unpack(&p.record))
                .collect(),
            closest: outcome
                .closest
                .into_iter()
                .map(|(id, addr)| NodeInfo { id, addr })
                .collect(),
            hops: outcome.hops,
            path_hops: outcome.path_hops,
            queried: outcome.queried,
            answered: outcome.answered,
            failed: outcome.failed,
            elapsed: self.now.since(state.started),
            first_provider: state.first_provider.map(|t| t.since(state.started)),
            timed_out,
        };
        self.record_lookup(state.kind, target, &report);
        let periodic = matches!(state.then, AfterLookup::Refresh { periodic: true, .. });
        if report.answered > 0 && !periodic {
            let own = self.dht.id;
            self.dht.timers.looked_up.note(&own, &target, self.now);
        }
        match state.then {
            AfterLookup::Report => {
                if reply {
                    self.done(op, Outcome::Lookup(report));
                }
            }
            AfterLookup::Providers { mut local } => {
                for provider in report.providers {
                    if !local.iter().any(|p| same_provider(p, &provider)) {
                        local.push(provider);
                    }
                }
                report.providers = local;
                if reply {
                    self.done(op, Outcome::Lookup(report));
                }
            }
            AfterLookup::Join | AfterLookup::Rejoin => {
                let peers = self.dht.peers.len();
                let rejoin = matches!(state.then, AfterLookup::Rejoin);
                self.after_join(rejoin, Some(report.answered));
                self.fill_far_buckets();
                self.emit(Event::Joined { peers });
                if reply {
                    self.done(op, Outcome::Joined(Ok(peers)));
                }
            }
            AfterLookup::Replicate(replication) => {
                self.fanout(op, replication, report.closest, reply);
            }
            AfterLookup::Refresh { mut rest, periodic } => match rest.pop() {
                Some(target) => {
                    let then = AfterLookup::Refresh { rest, periodic };
                    self.lookup(op, target, Request::FindNode { target }, None, then, false);
                }
                None => self.dht.timers.refreshing = false,
            },
        }
    }

    fn record_lookup(&mut self, kind: LookupKind, target: NodeId, report: &LookupReport) {
        let stats = &mut self.dht.stats;
        stats.lookups += 1;
        if report.timed_out {
            stats.lookup_timeouts += 1;
        }
        if report.answered == 0 {
            stats.lookup_failures += 1;
        }
        self.dht.latencies.record(report.elapsed);
        self.emit(Event::Lookup(LookupSummary {
            kind,
            target,
            providers: report.providers.len(),
            queried: report.queried,
            answered: report.answered,
            failed: report.failed,
            hops: report.hops,
            elapsed: report.elapsed,
            timed_out: report.timed_out,
        }));
    }

    // ---- replication and removal -----------------------------------------------------------

    /// Publishes a provider (versioned ETF) under `key` as this node: seals it with the next
    /// sequence (ttl: the record's own, else the store's default), stores it here, then sends it
    /// to the `k` closest nodes. The record is noted among the published ones at once, so a
    /// removal right after still goes to the network. Refused without a change when it has no
    /// `node_id`, its `node_id` is another node's id, or the store refuses it.
    pub(super) fn publish_record(
        &mut self,
        op: OpId,
        key: &[u8],
        etf: &[u8],
        service: Option<String>,
        origin: Origin,
    ) -> Result<(), PublishError> {
        let provider = ProviderRecord::parse(etf).map_err(StoreError::from)?;
        let node_id = provider.node_id().ok_or(PublishError::NoNodeId)?.to_vec();
        if !may_publish(self.dht.keypair.public(), &node_id) {
            return Err(PublishError::WrongPublisher);
        }
        let default_ttl = self.store.read(|s| s.limits().default_ttl_secs);
        let ttl = provider.ttl_secs().unwrap_or(default_ttl);
        let seq = self.next_seq();
        let seal = self.dht.keypair.seal(key, provider.term(), seq, ttl);
        let now_ms = self.now_ms();
        // The sealed record supersedes a local, unsealed one of the same provider.
        self.store.write(key, |s| {
            s.upsert_sealed(key, etf, &seal, now_ms)?;
            s.remove_slot(key, &node_id, None);
            Ok::<_, StoreError>(())
        })?;
        let own = seal.publisher;
        self.dht.tombstones.clear(key, &own, &node_id);
        self.dht.published.add(key, &own, &node_id, &[]);
        let record = SealedRecord {
            term: provider.term().to_vec(),
            seal,
        };
        let replication = Replication {
            key: key.to_vec(),
            request: Arc::new(Request::Store {
                key: key.to_vec(),
                record,
            }),
            also: Vec::new(),
            note: Some(node_id),
            service,
            origin,
        };
        self.spread(op, replication);
        Ok(())
    }

    /// Removes `node_id`'s provider under `key` here at once (every record of it held here, and
    /// a tombstone on this node's slot), then sends this node's signed REMOVE to the `k` closest
    /// nodes and to every node this node gave a copy.
    pub(super) fn remove_everywhere(
        &mut self,
        op: OpId,
        key: &[u8],
        node_id: &[u8],
        service: Option<String>,
        origin: Origin,
    ) {
        let seq = self.next_seq();
        let removal = self.dht.keypair.removal(key, node_id, seq);
        let until = self.tombstone_end(key, node_id, &removal.publisher);
        self.store.write(key, |s| s.remove(key, node_id));
        self.dht.tombstones.insert(key, node_id, &removal, until);
        let own = removal.publisher;
        let mut also = self.dht.published.take(key, &own, node_id);
        also.extend(self.dht.handed_off.take(key, &own, node_id));
        let replication = Replication {
            key: key.to_vec(),
            request: Arc::new(Request::Remove {
                key: key.to_vec(),
                node_id: node_id.to_vec(),
                removal,
            }),
            also,
            note: None,
            service,
            origin,
        };
        self.spread(op, replication);
    }

    /// Looks up the key's closest nodes, then sends them the replication's request.
    fn spread(&mut self, op: OpId, replication: Replication) {
        let target = NodeId::normalize(&replication.key);
        let reply = replication.origin == Origin::Caller;
        let then = AfterLookup::Replicate(replication);
        self.lookup(op, target, Request::FindNode { target }, None, then, reply);
    }

    fn fanout(&mut self, op: OpId, replication: Replication, closest: Vec<NodeInfo>, reply: bool) {
        let own = self.dht.id;
        let mut targets = closest;
        for node in &replication.also {
            if node.id != own && !targets.iter().any(|t| t.id == node.id) {
                targets.push(*node);
            }
        }
        let request = replication.request.clone();
        let fanout = Fanout {
            replication,
            targets: targets.len(),
            pending: targets.len(),
            acked: Vec::new(),
        };
        self.dht.ops.running.insert(
            op,
            Running {
                op: Op::Fanout(fanout),
                reply,
            },
        );
        if targets.is_empty() {
            self.finish_fanout(op);
            return;
        }
        for node in targets {
            self.send(
                Some(node.id),
                node.addr,
                request.clone(),
                Purpose::Fanout(op),
            );
        }
    }

    fn fanout_reply(
        &mut self,
        op: OpId,
        to: Option<NodeId>,
        addr: SocketAddr,
        result: Result<(NodeId, Response), Failure>,
    ) {
        let Some(Op::Fanout(fanout)) = self.dht.ops.running.get_mut(&op).map(|r| &mut r.op) else {
            return;
        };
        match (result, to) {
            (Ok((_, Response::Stored | Response::Removed)), Some(id)) => {
                fanout.acked.push(NodeInfo { id, addr });
            }
            _ => match *fanout.replication.request {
                Request::Remove { .. } => self.dht.stats.remove_failures += 1,
                _ => self.dht.stats.store_failures += 1,
            },
        }
        fanout.pending -= 1;
        if fanout.pending == 0 {
            self.finish_fanout(op);
        }
    }

    fn finish_fanout(&mut self, op: OpId) {
        let Some(Running {
            op: Op::Fanout(fanout),
            reply,
        }) = self.dht.ops.running.remove(&op)
        else {
            return;
        };
        let replication = fanout.replication;
        if let Some(node_id) = &replication.note {
            let own = *self.dht.keypair.public();
            self.dht
                .published
                .add(&replication.key, &own, node_id, &fanout.acked);
        }
        let outcome = Published {
            key: hex(&replication.key),
            targets: fanout.targets,
            acked: fanout.acked.len(),
        };
        if let Some(service) = replication.service {
            let publish = !matches!(*replication.request, Request::Remove { .. });
            if let Some(slot) = self.dht.adverts.get_mut(&service) {
                slot.unplaced = publish && outcome.acked == 0;
            }
            let event = match *replication.request {
                Request::Remove { .. } => Event::Withdrawn {
                    service: service.clone(),
                    outcome: outcome.clone(),
                },
                _ => Event::Published {
                    service: service.clone(),
                    outcome: outcome.clone(),
                    republish: replication.origin == Origin::Republish,
                },
            };
            self.emit(event);
            self.next_command(&service);
        }
        if reply {
            self.done(op, Outcome::Published(Ok(outcome)));
        }
    }

    // ---- services --------------------------------------------------------------------------

    /// Runs a publish or withdrawal of `service` now (its slot is free).
    pub(super) fn run_command(
        &mut self,
        op: OpId,
        service: &str,
        command: Command,
        origin: Origin,
    ) {
        let interval = |ttl| self.dht.config.republish_interval(ttl);
        let now = self.now;
        let unix = self.unix_secs();
        let Some(slot) = self.dht.adverts.get_mut(service) else {
            return;
        };
        slot.running = Some(op);
        let key = service_key(service);
        let own = self.dht.id.0;
        match command {
            Command::Publish { ad, refresh } => {
                slot.next_at = now + interval(ad.ttl_secs);
                slot.advert = refresh.then(|| ad.clone());
                let etf = ad.encode(&self.dht.id, unix);
                let published =
                    self.publish_record(op, &key, &etf, Some(service.to_string()), origin.clone());
                if let Err(e) = published {
                    match origin {
                        Origin::Caller => self.done(op, Outcome::Published(Err(e))),
                        Origin::Republish => {
                            self.dht.stats.republish_failures += 1;
                            self.emit(Event::Trouble(Trouble::RepublishFailed {
                                service: service.to_string(),
                                error: e,
                            }));
                        }
                    }
                    self.next_command(service);
                }
            }
            Command::Withdraw => {
                slot.advert = None;
                self.remove_everywhere(op, &key, &own, Some(service.to_string()), origin);
            }
        }
    }

    /// `service`'s running command ended: the next one waiting runs.
    fn next_command(&mut self, service: &str) {
        let Some(slot) = self.dht.adverts.get_mut(service) else {
            return;
        };
        slot.running = None;
        if let Some((op, command)) = slot.waiting.pop_front() {
            self.run_command(op, service, command, Origin::Caller);
        }
    }
}

fn contacts(nodes: Vec<NodeInfo>) -> impl Iterator<Item = (NodeId, SocketAddr)> {
    nodes.into_iter().map(|n| (n.id, n.addr))
}

fn refused(detail: String) -> Failure {
    Failure {
        kind: FailureKind::Refused,
        detail,
    }
}

/// A reply in another protocol version, or one saying that ours is not the peer's.
fn speaks_another_version(response: &Result<Response, WireError>) -> bool {
    matches!(
        response,
        Err(WireError::UnsupportedVersion(_))
            | Ok(Response::Error {
                reason: ErrorReason::UnsupportedVersion
            })
    )
}
