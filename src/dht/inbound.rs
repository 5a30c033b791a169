//! Answers to peers' requests, from local data only.
//!
//! An inbound request never starts a lookup: a node answers with what it holds (its table, its
//! store), so answering is short. Two requests go a little further: one from a peer not in the
//! table makes the node ping it back, and a REMOVE is passed on to the nodes this node gave a
//! copy of the record (no lookup). STOREs and REMOVEs are checked in `trust`; peers are served
//! only sealed records (a record stored locally without a seal stays local).

use std::sync::Arc;

use super::ops::Purpose;
use super::{Cx, StoreAccess};
use crate::seal::Removal;
use crate::wire::{NodeInfo, Request, Response, SealedRecord};
use crate::NodeId;

impl<S: StoreAccess> Cx<'_, S> {
    /// The reply to `request` from `from`.
    pub(super) fn answer(&mut self, from: NodeInfo, request: Request) -> Response {
        self.observe_request(from);
        match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                nodes: self.live_closest(&target, self.dht.config.k),
            },
            Request::FindValue { key } => self.find_value(&key),
            Request::Store { key, record } => self.accept_store(from, &key, record),
            Request::Remove {
                key,
                node_id,
                removal,
            } => self.accept_remove(from, &key, &node_id, removal),
        }
    }

    /// A peer sent us a request. Known at that address: refreshed. Otherwise, if its bucket has
    /// room, it is pinged back (at most `max_verifying` at once) and enters the table if it
    /// answers.
    fn observe_request(&mut self, from: NodeInfo) {
        if self.dht.peers.requested(from.id, from.addr) {
            let ping = Arc::new(Request::Ping);
            self.send(Some(from.id), from.addr, ping, Purpose::Verify(from.id));
        }
    }

    fn find_value(&mut self, key: &[u8]) -> Response {
        let nodes = self.live_closest(&NodeId::normalize(key), self.dht.config.k);
        let now_ms = self.now_ms();
        let sealed: Vec<SealedRecord> = self.store.read(|store| {
            store
                .records(key, now_ms)
                .filter_map(|r| {
                    r.seal().map(|seal| SealedRecord {
                        term: r.term.to_vec(),
                        seal,
                    })
                })
                .collect()
        });
        if sealed.is_empty() {
            return Response::NoValue { nodes };
        }
        Response::value_fitting(sealed, nodes)
    }

    /// Sends the publisher's `removal` of its record on to the nodes this node gave a copy (by
    /// STORE or hand-off), except `from`; each forgets them here, and passes it on to those it
    /// gave copies in turn. Bounded: the copies noted are.
    pub(super) fn forward_remove(
        &mut self,
        key: &[u8],
        node_id: &[u8],
        removal: &Removal,
        from: Option<NodeId>,
    ) {
        let own = self.dht.id;
        let publisher = &removal.publisher;
        let mut copies = self.dht.handed_off.take(key, publisher, node_id);
        copies.extend(self.dht.published.take(key, publisher, node_id));
        copies.retain(|n| Some(n.id) != from && n.id != own);
        copies.sort_by_key(|n| n.id);
        copies.dedup_by_key(|n| n.id);
        if copies.is_empty() {
            return;
        }
        let request = Arc::new(Request::Remove {
            key: key.to_vec(),
            node_id: node_id.to_vec(),
            removal: removal.clone(),
        });
        for node in copies {
            self.send(Some(node.id), node.addr, request.clone(), Purpose::Forward);
        }
    }
}
