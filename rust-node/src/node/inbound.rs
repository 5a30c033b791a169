//! Answers to inbound requests, from local data only.
//!
//! The architecture forbids an inbound request from starting a lookup: a node answers with what
//! it holds (its table, its store) and nothing else, so answering is synchronous, short, and
//! holds each lock only for the copy it needs. The one request that goes further is REMOVE: it
//! is passed on, in the background, to the nodes this node handed the record to (no lookup).
//! A frame that does not decode gets an `error` reply with the decoder's reason and the node
//! goes on serving; the sender does not enter the table.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response};
use macula_dht::{NodeId, ProviderRecord, StoreError};

use super::Shared;
use crate::identity::id_hex;
use crate::record::{advertised_at, unix_now, versioned, Provider};
use crate::transport::{Handler, Peer};

/// The transport handler of a node. Holds the node weakly, so that the endpoint's serving task
/// does not keep a dropped node alive.
pub(super) struct Responder(Weak<Shared>);

impl Responder {
    pub(super) fn new(shared: &Arc<Shared>) -> Responder {
        Responder(Arc::downgrade(shared))
    }
}

impl Handler for Responder {
    fn handle(&self, peer: Peer, frame: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send {
        let reply = match self.0.upgrade() {
            Some(shared) => shared.answer(peer, &frame),
            None => Response::Error {
                reason: ErrorReason::Internal,
            }
            .encode(),
        };
        std::future::ready(reply)
    }
}

impl Shared {
    /// The reply frame to one request frame.
    fn answer(self: &Arc<Self>, peer: Peer, frame: &[u8]) -> Vec<u8> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let request = match Request::decode(frame) {
            Ok(request) => request,
            Err(e) => {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %id_hex(&peer.id), addr = %peer.addr, error = %e, "bad request");
                return Response::from(&e).encode();
            }
        };
        self.observe_request(peer);
        let response = match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                nodes: self.closest(&target),
            },
            Request::FindValue { key } => self.find_value(&key),
            Request::Store { key, value } => self.accept_store(&key, &value),
            Request::Remove { key, node_id } => self.accept_remove(peer, &key, &node_id),
        };
        response.encode()
    }

    /// The `k` closest nodes of the table to `target`.
    pub(super) fn closest(&self, target: &NodeId) -> Vec<NodeInfo> {
        self.table
            .lock()
            .closest(target, self.config.k)
            .into_iter()
            .map(|(id, addr)| NodeInfo {
                id: *id,
                addr: *addr,
            })
            .collect()
    }

    fn find_value(&self, key: &[u8]) -> Response {
        let nodes = self.closest(&NodeId::normalize(key));
        let now = self.now_ms();
        let store = self.store.read();
        let mut providers = store.providers(key, now).peekable();
        if providers.peek().is_none() {
            return Response::NoValue { nodes };
        }
        Response::value_fitting(providers, nodes)
    }

    /// A STORE: upserted unless a tombstone says it is an older copy of a removed provider
    /// (then dropped, and acknowledged all the same: the sender has nothing to retry).
    fn accept_store(&self, key: &[u8], value: &[u8]) -> Response {
        let etf = versioned(value);
        let now = self.now_ms();
        if let Ok(record) = ProviderRecord::parse(&etf) {
            if let Some(node_id) = record.node_id() {
                let stamp = advertised_at(value);
                if self.tombstones.lock().blocks(key, node_id, stamp, now) {
                    tracing::debug!(node_id = %crate::record::hex(node_id), "store of a removed provider dropped");
                    return Response::Stored;
                }
            }
        }
        match self.store.write(key, |store| store.upsert(key, &etf, now)) {
            Ok(_) => Response::Stored,
            Err(StoreError::InvalidProvider(_)) => Response::Error {
                reason: ErrorReason::InvalidProvider,
            },
            Err(e) => {
                tracing::debug!(error = %e, "store refused");
                Response::Error {
                    reason: ErrorReason::Limit,
                }
            }
        }
    }

    /// A REMOVE: the provider goes, and a tombstone stays for as long as the record could have
    /// lived (its own ttl if we held it, else the longest ttl the store applies). The removal
    /// follows the copies this node made (hand-offs): sent on to them, not looked up.
    fn accept_remove(self: &Arc<Self>, peer: Peer, key: &[u8], node_id: &[u8]) -> Response {
        self.remove_with_tombstone(key, node_id);
        self.forward_remove(key, node_id, Some(peer.id));
        Response::Removed
    }

    /// Removes `node_id`'s provider under `key` from the store and leaves a tombstone.
    pub(super) fn remove_with_tombstone(&self, key: &[u8], node_id: &[u8]) {
        let now = self.now_ms();
        let ttl_secs = self.store.write(key, |store| {
            let limits = store.limits();
            let held_ttl = store
                .providers(key, now)
                .filter_map(|term| Provider::parse(term).ok())
                .find(|p| p.node_id == node_id)
                .map(|p| p.ttl_secs.unwrap_or(limits.default_ttl_secs));
            let ttl_secs = held_ttl
                .unwrap_or(limits.max_ttl_secs)
                .min(limits.max_ttl_secs);
            store.remove(key, node_id);
            ttl_secs
        });
        let until = now.saturating_add(u64::from(ttl_secs) * 1000);
        self.tombstones
            .lock()
            .insert(key, node_id, until, unix_now());
    }
}
