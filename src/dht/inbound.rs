//! Answers to peers' requests, from local data only.
//!
//! An inbound request never starts a lookup: a node answers with what it holds (its table, its
//! store), so answering is short. Two requests go a little further: one from a peer not in the
//! table makes the node ping it back, and a REMOVE is passed on to the nodes this node gave a
//! copy of the record (no lookup).

use std::sync::Arc;

use super::ops::Purpose;
use super::{Cx, StoreAccess};
use crate::provider::ProviderRecord;
use crate::record::{advertised_at, versioned, Provider};
use crate::store::StoreError;
use crate::wire::{ErrorReason, NodeInfo, Request, Response};
use crate::NodeId;

impl<S: StoreAccess> Cx<'_, S> {
    /// The reply to `request` from `from`.
    pub(super) fn answer(&mut self, from: NodeInfo, request: Request) -> Response {
        self.observe_request(from);
        match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                nodes: self.dht.peers.closest(&target, self.dht.config.k),
            },
            Request::FindValue { key } => self.find_value(&key),
            Request::Store { key, value } => self.accept_store(&key, &value),
            Request::Remove { key, node_id } => {
                self.remove_with_tombstone(&key, &node_id);
                self.forward_remove(&key, &node_id, Some(from.id));
                Response::Removed
            }
        }
    }

    /// A peer sent us a request. Known at that address: refreshed. Otherwise it is pinged back
    /// (at most `max_verifying` at once) and enters the table if it answers.
    fn observe_request(&mut self, from: NodeInfo) {
        if self.dht.peers.requested(from.id, from.addr) {
            let ping = Arc::new(Request::Ping);
            self.send(Some(from.id), from.addr, ping, Purpose::Verify(from.id));
        }
    }

    fn find_value(&mut self, key: &[u8]) -> Response {
        let nodes = self
            .dht
            .peers
            .closest(&NodeId::normalize(key), self.dht.config.k);
        let now_ms = self.now_ms();
        self.store.read(|store| {
            let mut providers = store.providers(key, now_ms).peekable();
            if providers.peek().is_none() {
                return Response::NoValue { nodes };
            }
            Response::value_fitting(providers, nodes)
        })
    }

    /// A STORE: upserted unless a tombstone says it is an older copy of a removed provider
    /// (then dropped, and acknowledged all the same: the sender has nothing to retry).
    fn accept_store(&mut self, key: &[u8], value: &[u8]) -> Response {
        let etf = versioned(value);
        let now_ms = self.now_ms();
        if let Ok(record) = ProviderRecord::parse(&etf) {
            if let Some(node_id) = record.node_id() {
                let stamp = advertised_at(value);
                if self.dht.tombstones.blocks(key, node_id, stamp, now_ms) {
                    return Response::Stored;
                }
            }
        }
        match self
            .store
            .write(key, |store| store.upsert(key, &etf, now_ms))
        {
            Ok(_) => Response::Stored,
            Err(StoreError::InvalidProvider(_)) => Response::Error {
                reason: ErrorReason::InvalidProvider,
            },
            Err(_) => Response::Error {
                reason: ErrorReason::Limit,
            },
        }
    }

    /// Removes `node_id`'s provider under `key` from the store and leaves a tombstone for as
    /// long as the record could have lived (its own ttl if it was held here, else the longest
    /// ttl the store applies).
    pub(super) fn remove_with_tombstone(&mut self, key: &[u8], node_id: &[u8]) {
        let now_ms = self.now_ms();
        let ttl_secs = self.store.write(key, |store| {
            let limits = store.limits();
            let held_ttl = store
                .providers(key, now_ms)
                .filter_map(|term| Provider::parse(term).ok())
                .find(|p| p.node_id == node_id)
                .map(|p| p.ttl_secs.unwrap_or(limits.default_ttl_secs));
            let ttl_secs = held_ttl
                .unwrap_or(limits.max_ttl_secs)
                .min(limits.max_ttl_secs);
            store.remove(key, node_id);
            ttl_secs
        });
        let until = now_ms.saturating_add(u64::from(ttl_secs) * 1000);
        let removed_at = self.unix_secs();
        self.dht.tombstones.insert(key, node_id, until, removed_at);
    }

    /// Sends REMOVE of the record to the nodes this node gave a copy (by STORE or hand-off),
    /// except `from`; each forgets them here, and passes it on to those it gave copies in turn.
    /// Bounded: the copies noted are.
    pub(super) fn forward_remove(&mut self, key: &[u8], node_id: &[u8], from: Option<NodeId>) {
        let own = self.dht.id;
        let mut copies = self.dht.handed_off.take(key, node_id);
        copies.extend(self.dht.published.take(key, node_id));
        copies.retain(|n| Some(n.id) != from && n.id != own);
        copies.sort_by_key(|n| n.id);
        copies.dedup_by_key(|n| n.id);
        if copies.is_empty() {
            return;
        }
        let request = Arc::new(Request::Remove {
            key: key.to_vec(),
            node_id: node_id.to_vec(),
        });
        for node in copies {
            self.send(Some(node.id), node.addr, request.clone(), Purpose::Forward);
        }
    }
}
