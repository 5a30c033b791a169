//! Hand-off: a newcomer that became one of the `k` closest nodes of a key this node holds gets
//! that key's records, so replicas follow the network as it changes.
//!
//! One newcomer at a time, in arrival order, one STORE at a time; a failed STORE ends that
//! newcomer's hand-off (it gets the rest when the records are published again). Records whose
//! advertiser has let them run out (`advertised_at + ttl` in the past) are not passed on, so
//! hand-offs cannot keep an abandoned record alive. Every copy handed off is noted, so that a
//! removal follows it.
//!
//! Bounded: newcomers waiting (`handoff_queue`; more are skipped), keys examined per newcomer
//! (`max_handoff_keys`), and keys examined per step ([`CHUNK`]), so a node holding many keys
//! answers its peers between steps.

use std::collections::VecDeque;
use std::sync::Arc;

use super::ops::Purpose;
use super::{Cx, Event, Failure, StoreAccess, Trouble};
use crate::record::Provider;
use crate::seal::Seal;
use crate::time::Time;
use crate::wire::{NodeInfo, Request, Response, SealedRecord};
use crate::NodeId;

/// Keys examined per step of a hand-off.
const CHUNK: usize = 256;

#[derive(Debug)]
pub(crate) struct HandOffs {
    waiting: VecDeque<NodeInfo>,
    max_waiting: usize,
    active: Option<Active>,
}

/// The hand-off running now.
#[derive(Debug)]
struct Active {
    peer: NodeInfo,
    /// Keys held when it started, sorted (the store's order is not stable between runs).
    keys: Vec<Vec<u8>>,
    /// Next key to examine.
    next: usize,
    /// The key being handed off and its sealed records still to send.
    current: Option<(Vec<u8>, VecDeque<SealedRecord>)>,
    /// The record whose STORE is in flight: (key, its seal, provider `node_id`).
    sending: Option<(Vec<u8>, Seal, Vec<u8>)>,
    /// Set when a step ran out of its chunk: the next step runs at the next timeout.
    resume_at: Option<Time>,
}

impl HandOffs {
    pub(crate) fn new(max_waiting: usize) -> HandOffs {
        HandOffs {
            waiting: VecDeque::new(),
            max_waiting,
            active: None,
        }
    }

    /// When a paused hand-off goes on.
    pub(crate) fn resume_at(&self) -> Option<Time> {
        self.active.as_ref().and_then(|a| a.resume_at)
    }
}

impl<S: StoreAccess> Cx<'_, S> {
    /// A peer entered the table: it may be owed records.
    pub(super) fn offer_handoff(&mut self, peer: NodeInfo) {
        let handoffs = &mut self.dht.handoffs;
        if handoffs.active.is_none() {
            self.start_handoff(peer);
        } else if handoffs.waiting.len() < handoffs.max_waiting {
            handoffs.waiting.push_back(peer);
        } else {
            self.dht.stats.handoffs_skipped += 1;
        }
    }

    fn start_handoff(&mut self, peer: NodeInfo) {
        let max = self.dht.config.max_handoff_keys;
        let mut keys: Vec<Vec<u8>> = self
            .store
            .read(|s| s.keys().take(max).map(<[u8]>::to_vec).collect());
        keys.sort_unstable();
        self.dht.handoffs.active = Some(Active {
            peer,
            keys,
            next: 0,
            current: None,
            sending: None,
            resume_at: None,
        });
        self.step_handoff();
    }

    /// Sends the next record owed, examining at most [`CHUNK`] keys to find it; ends the
    /// hand-off when every key was examined.
    pub(super) fn step_handoff(&mut self) {
        let k = self.dht.config.k;
        let now_ms = self.now_ms();
        let unix = self.unix_secs();
        let Some(active) = self.dht.handoffs.active.as_mut() else {
            return;
        };
        active.resume_at = None;
        let mut examined = 0;
        loop {
            if let Some((key, records)) = &mut active.current {
                if let Some(record) = records.pop_front() {
                    let node_id = Provider::parse(&record.term)
                        .map(|p| p.node_id)
                        .unwrap_or_default();
                    active.sending = Some((key.clone(), record.seal, node_id));
                    let request = Arc::new(Request::Store {
                        key: key.clone(),
                        record,
                    });
                    let peer = active.peer;
                    self.send(Some(peer.id), peer.addr, request, Purpose::HandOff);
                    return;
                }
                active.current = None;
            }
            let Some(key) = active.keys.get(active.next).cloned() else {
                self.finish_handoff();
                return;
            };
            if examined == CHUNK {
                active.resume_at = Some(self.now);
                return;
            }
            active.next += 1;
            examined += 1;
            let target = NodeId::normalize(&key);
            if !self.dht.peers.is_among_closest(&active.peer.id, &target, k) {
                continue;
            }
            // Only sealed records go to other nodes, untouched.
            let records: VecDeque<SealedRecord> = self.store.read(|s| {
                s.records(&key, now_ms)
                    .filter(|r| still_advertised(r.term, unix))
                    .filter_map(|r| {
                        r.seal().map(|seal| SealedRecord {
                            term: r.term.to_vec(),
                            seal,
                        })
                    })
                    .collect()
            });
            active.current = Some((key, records));
        }
    }

    /// The STORE of the hand-off's current record ended.
    pub(super) fn handoff_reply(&mut self, result: Result<(NodeId, Response), Failure>) {
        let Some(active) = self.dht.handoffs.active.as_mut() else {
            return;
        };
        let peer = active.peer;
        let sending = active.sending.take();
        match result {
            Ok(_) => {
                self.dht.stats.handed_off += 1;
                if let Some((key, seal, node_id)) = sending {
                    self.note_handed_off(&key, &seal, &node_id, peer);
                }
                self.step_handoff();
            }
            Err(failure) => {
                self.dht.stats.handoffs_stopped += 1;
                self.emit(Event::Trouble(Trouble::HandOffStopped {
                    peer,
                    detail: failure.detail,
                }));
                self.finish_handoff();
            }
        }
    }

    /// Remembers that `peer` took a copy of the record, so that its removal follows; if the
    /// record was removed here while the copy was on its way, the removal follows at once.
    fn note_handed_off(&mut self, key: &[u8], seal: &Seal, node_id: &[u8], peer: NodeInfo) {
        let publisher = &seal.publisher;
        self.dht.handed_off.add(key, publisher, node_id, &[peer]);
        let now_ms = self.now_ms();
        let removed = self
            .dht
            .tombstones
            .removal(key, publisher, node_id, seal.seq, now_ms);
        if let Some(removal) = removed {
            self.forward_remove(key, node_id, &removal, None);
        }
    }

    /// The next newcomer waiting, if any, gets its hand-off.
    fn finish_handoff(&mut self) {
        self.dht.handoffs.active = None;
        if let Some(next) = self.dht.handoffs.waiting.pop_front() {
            self.start_handoff(next);
        }
    }

    /// A paused hand-off whose time came goes on.
    pub(super) fn resume_handoff(&mut self) {
        if self
            .dht
            .handoffs
            .resume_at()
            .is_some_and(|at| at <= self.now)
        {
            self.step_handoff();
        }
    }
}

/// Whether a held record is still within its advertiser's `advertised_at + ttl` (records
/// without those fields count as live).
fn still_advertised(term: &[u8], now_unix: u64) -> bool {
    Provider::parse(term)
        .ok()
        .and_then(|p| p.ttl_left(now_unix))
        .is_none_or(|left| left > 0)
}
