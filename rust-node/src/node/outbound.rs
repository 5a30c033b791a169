//! Requests this node sends: one request/response exchange, what it teaches about the peer
//! (table membership and liveness), and the iterative lookup built from them.
//!
//! Table rules: a peer that answers one of our requests is proven (the transport checked its id
//! against its TLS key, and it answered at that address), so it enters the table at once. A peer
//! that only sends us a request is pinged back first: one-shot clients (`rust-node discover`)
//! talk to us from ports that close a moment later, and must not sit in our buckets until a
//! lookup times out on them. A peer that fails a request for a liveness reason (timeout, lost
//! connection, another node at its address) leaves the table; the engine then promotes the
//! bucket's most recent replacement.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response, WireError};
use macula_dht::{Inserted, Lookup, LookupConfig, NodeId, ProviderRecord};
use tokio::task::JoinSet;

use super::{Event, LookupKind, LookupReport, LookupSummary, NodeError, Shared, MAX_SEEDS};
use crate::identity::id_hex;
use crate::record::{versioned, Provider};
use crate::transport::{Peer, TransportError};

/// Why one request/response exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RpcError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("undecodable reply: {0}")]
    Decode(#[from] WireError),
    #[error("peer answered with error {}", .0.name())]
    Remote(ErrorReason),
    #[error("peer answered {got} to {sent}")]
    Unexpected {
        sent: &'static str,
        got: &'static str,
    },
}

impl Shared {
    /// Sends `request` to `addr` (which must be `expect`, if given) and returns the peer's id and
    /// its reply, which answers the request and is not an `error`. Updates the table: the peer
    /// goes in if it answered at all, out if it is unreachable.
    pub(super) async fn rpc(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
        request: &Request,
    ) -> Result<(NodeId, Response), RpcError> {
        let (id, frame) = match self.endpoint.request(addr, expect, request.encode()).await {
            Ok(reply) => reply,
            Err(e) => {
                if let Some(id) = expect {
                    self.on_unreachable(id, &e);
                }
                return Err(e.into());
            }
        };
        self.observe_answer(id, addr);
        let response = Response::decode(&frame)?;
        if let Response::Error { reason } = response {
            return Err(RpcError::Remote(reason));
        }
        if !response.answers(request) {
            return Err(RpcError::Unexpected {
                sent: request.type_name(),
                got: response.type_name(),
            });
        }
        Ok((id, response))
    }

    /// A peer answered us from `addr`: it is (again) in the table, most recently seen. A new
    /// entry may be owed records (hand-off).
    pub(super) fn observe_answer(&self, id: NodeId, addr: SocketAddr) {
        if self.table_insert(id, addr) == Inserted::Added {
            tracing::debug!(peer = %id_hex(&id), %addr, "peer added");
            if self.config.serve {
                // Full queue: this newcomer gets its records at the next republish instead.
                let _ = self.handoff.try_send(NodeInfo { id, addr });
            }
        }
    }

    /// A peer sent us a request. Known at that address: refreshed. Otherwise it is pinged back
    /// (at most `max_verifying` at once) and enters the table if it answers.
    pub(super) fn observe_request(self: &Arc<Self>, peer: Peer) {
        {
            let mut table = self.table.lock();
            if table.get(&peer.id) == Some(&peer.addr) {
                table.insert(peer.id, peer.addr);
                return;
            }
        }
        {
            let mut verifying = self.verifying.lock();
            if verifying.len() >= self.config.max_verifying || !verifying.insert(peer.id) {
                return;
            }
        }
        let shared = self.clone();
        tokio::spawn(async move {
            // `rpc` puts the peer in the table when it answers.
            let _ = shared.rpc(peer.addr, Some(peer.id), &Request::Ping).await;
            shared.verifying.lock().remove(&peer.id);
        });
    }

    /// A request to `id` failed; liveness failures drop it from the table.
    fn on_unreachable(&self, id: NodeId, error: &TransportError) {
        let dead = matches!(
            error,
            TransportError::Timeout { .. }
                | TransportError::Connection { .. }
                | TransportError::Connect { .. }
                | TransportError::IdMismatch { .. }
        );
        if dead && self.table_remove(&id) {
            tracing::debug!(peer = %id_hex(&id), %error, "peer removed from the table");
        }
    }

    /// Pings every address at once; then a lookup of our own id through those that answered.
    pub(super) async fn bootstrap(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
    ) -> Result<usize, NodeError> {
        {
            let mut seeds = self.seeds.lock();
            for addr in addrs {
                if seeds.len() < MAX_SEEDS && !seeds.contains(addr) {
                    seeds.push(*addr);
                }
            }
        }
        self.contact(addrs).await?;
        let target = self.id;
        self.lookup(target, Request::FindNode { target }, None)
            .await?;
        let peers = self.table.lock().len();
        tracing::info!(peers, "bootstrapped");
        Ok(peers)
    }

    /// Pings the first 16 addresses at once; those that answer enter the table. Fails when none
    /// did (with the last error seen). Returns how many answered.
    pub(super) async fn contact(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
    ) -> Result<usize, NodeError> {
        let mut pings = JoinSet::new();
        for &addr in addrs.iter().take(MAX_SEEDS) {
            let shared = self.clone();
            pings.spawn(async move { (addr, shared.rpc(addr, None, &Request::Ping).await) });
        }
        let mut answered = 0;
        let mut last_error = None;
        while let Some(joined) = pings.join_next().await {
            match joined {
                Ok((_, Ok((id, _)))) if id != self.id => answered += 1,
                Ok((addr, Ok(_))) => {
                    last_error = Some(format!("{addr} is this node itself"));
                }
                Ok((_, Err(e))) => last_error = Some(e.to_string()),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if answered == 0 {
            return Err(NodeError::Bootstrap(
                last_error.unwrap_or_else(|| "no address given".into()),
            ));
        }
        Ok(answered)
    }

    /// An iterative lookup of `target` with `request` (FIND_NODE or FIND_VALUE), seeded with the
    /// `k` closest nodes of the table, `alpha` requests in flight. With `want`, ends as soon as
    /// that many distinct providers are known; in any case by `lookup_timeout`, with what it has.
    pub(super) async fn lookup(
        self: &Arc<Self>,
        target: NodeId,
        request: Request,
        want: Option<usize>,
    ) -> Result<LookupReport, NodeError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.lookup_timeout;
        let kind = match request {
            Request::FindValue { .. } => LookupKind::FindValue,
            _ => LookupKind::FindNode,
        };
        // Held until the lookup returns.
        let permit = match tokio::time::timeout_at(deadline, self.lookups.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) => return Err(NodeError::Closed),
            Err(_) => None, // no slot in time: ends at once, timed out
        };
        let mut timed_out = permit.is_none();
        let seeds: Vec<(NodeId, SocketAddr)> = self
            .table
            .lock()
            .closest(&target, self.config.k)
            .into_iter()
            .map(|(id, addr)| (*id, *addr))
            .collect();
        let config = LookupConfig {
            k: self.config.k,
            alpha: self.config.alpha,
            want_providers: want,
            max_queries: self.config.max_lookup_queries,
            max_providers: self.store.read().limits().max_providers_per_key,
            local: Some(self.id),
            ..LookupConfig::default()
        };
        let mut lookup = Lookup::new(target, config, seeds);
        let request = Arc::new(request);
        // At most `alpha` requests: the lookup hands out no more than that at once.
        let mut in_flight = JoinSet::new();
        let mut first_provider = None;
        while !timed_out {
            for (id, addr) in lookup.next_queries() {
                let shared = self.clone();
                let request = request.clone();
                in_flight.spawn(async move { (id, shared.rpc(addr, Some(id), &request).await) });
            }
            if lookup.is_finished() {
                break;
            }
            let Ok(joined) = tokio::time::timeout_at(deadline, in_flight.join_next()).await else {
                timed_out = true;
                break;
            };
            let Some(joined) = joined else {
                break; // nothing in flight and nothing to send: done
            };
            // A request task only fails to join if it panicked; its peer then stays "in
            // flight" and the lookup ends when the rest is settled.
            let Ok((peer, result)) = joined else {
                continue;
            };
            match result {
                Ok((_, Response::Nodes { nodes } | Response::NoValue { nodes })) => {
                    lookup.on_response(&peer, contacts(nodes), std::iter::empty());
                }
                Ok((_, Response::Value { providers, nodes })) => {
                    if first_provider.is_none() && !providers.is_empty() {
                        first_provider = Some(started.elapsed());
                    }
                    let found = providers.into_iter().map(|p| (provider_identity(&p), p));
                    lookup.on_response(&peer, contacts(nodes), found);
                }
                Ok(_) | Err(_) => lookup.on_failure(&peer),
            }
        }
        // Dropping `in_flight` cancels requests still running after an early end.
        let outcome = lookup.into_outcome();
        let report = LookupReport {
            providers: outcome
                .providers
                .iter()
                .filter_map(|p| Provider::parse(&p.record).ok())
                .collect(),
            closest: outcome
                .closest
                .into_iter()
                .map(|(id, addr)| NodeInfo { id, addr })
                .collect(),
            hops: outcome.hops,
            queried: outcome.queried,
            answered: outcome.answered,
            failed: outcome.failed,
            elapsed: started.elapsed(),
            first_provider,
            timed_out,
        };
        self.record_lookup(kind, target, &report);
        Ok(report)
    }

    fn record_lookup(&self, kind: LookupKind, target: NodeId, report: &LookupReport) {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        if report.timed_out {
            self.counters
                .lookup_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        self.latencies.lock().record(report.elapsed);
        self.emit(Event::Lookup(LookupSummary {
            kind,
            target,
            providers: report.providers.len(),
            queried: report.queried,
            failed: report.failed,
            hops: report.hops,
            elapsed: report.elapsed,
            timed_out: report.timed_out,
        }));
    }
}

fn contacts(nodes: Vec<NodeInfo>) -> impl Iterator<Item = (NodeId, SocketAddr)> {
    nodes.into_iter().map(|n| (n.id, n.addr))
}

/// What makes two provider records the same provider: the `node_id`, else the whole record.
fn provider_identity(term: &[u8]) -> Vec<u8> {
    let etf = versioned(term);
    match ProviderRecord::parse(&etf).ok().and_then(|r| r.node_id()) {
        Some(id) => id.to_vec(),
        None => term.to_vec(),
    }
}
