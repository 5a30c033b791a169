//! Who may say what about a provider, checked in one place: the STOREs and REMOVEs peers send,
//! and the providers replicas return to a lookup.
//!
//! A slot is (key, publisher, provider `node_id`); only its publisher writes or removes it, with
//! a sequence newer than the slot's, and a tombstone keeps a removed slot's sequence so that a
//! replayed STORE stays out. A STORE is refused, with its reason and a count, when its sender
//! sends too fast, its seal does not verify (or names another node's id as its provider), its
//! publisher removed the slot since, its publisher already has its share of this node's store,
//! or the slot holds a newer record. The node's own records are exempt from the share.

use super::{Cx, StoreAccess};
use crate::provider::ProviderRecord;
use crate::record::versioned;
use crate::seal::{Publisher, Removal, SealError};
use crate::store::StoreError;
use crate::wire::{ErrorReason, NodeInfo, Response, SealedRecord};

impl super::Dht {
    /// Checks a provider a replica returned for `key`: its identity in the lookup (publisher and
    /// `node_id`, or the term for a provider without one) when its seal verifies.
    pub(super) fn verify(&mut self, key: &[u8], record: &SealedRecord) -> Option<Vec<u8>> {
        let etf = versioned(&record.term);
        let node_id = ProviderRecord::parse(&etf).ok()?.node_id();
        self.verifier
            .check_seal(key, &record.term, node_id, &record.seal)
            .ok()?;
        let identity = match node_id {
            Some(id) => [&record.seal.publisher[..], id].concat(),
            None => record.term.clone(),
        };
        Some(identity)
    }
}

impl<S: StoreAccess> Cx<'_, S> {
    /// A peer's STORE: taken, or refused with the reason (and counted).
    pub(super) fn accept_store(
        &mut self,
        from: NodeInfo,
        key: &[u8],
        record: SealedRecord,
    ) -> Response {
        let refused = |reason| Response::Error { reason };
        if !self.dht.rates.allow(from.id, self.now) {
            self.dht.stats.refused_rate += 1;
            return refused(ErrorReason::RateLimited);
        }
        let etf = versioned(&record.term);
        let Ok(provider) = ProviderRecord::parse(&etf) else {
            return refused(ErrorReason::InvalidProvider);
        };
        // A record on the network needs a node_id: it names the slot.
        let Some(node_id) = provider.node_id() else {
            return refused(ErrorReason::InvalidProvider);
        };
        let seal = record.seal;
        if let Err(e) = self
            .dht
            .verifier
            .check_seal(key, &record.term, Some(node_id), &seal)
        {
            return self.refuse_seal(e);
        }
        let now_ms = self.now_ms();
        if self
            .dht
            .tombstones
            .blocks(key, &seal.publisher, node_id, seal.seq, now_ms)
        {
            self.dht.stats.refused_replay += 1;
            return refused(ErrorReason::Removed);
        }
        if !self.within_share(key, node_id, &seal.publisher, etf.len()) {
            self.dht.stats.refused_quota += 1;
            return refused(ErrorReason::OverQuota);
        }
        match self
            .store
            .write(key, |s| s.upsert_sealed(key, &etf, &seal, now_ms))
        {
            Ok(_) => {
                self.dht.tombstones.clear(key, &seal.publisher, node_id);
                Response::Stored
            }
            Err(StoreError::Stale { .. }) => {
                self.dht.stats.refused_stale += 1;
                refused(ErrorReason::Stale)
            }
            Err(StoreError::InvalidProvider(_)) => refused(ErrorReason::InvalidProvider),
            Err(_) => refused(ErrorReason::Limit),
        }
    }

    /// A peer's REMOVE of its publisher's slot: the record goes (if held and older), a tombstone
    /// keeps the removal, and the removal is passed on to the nodes this node gave a copy.
    pub(super) fn accept_remove(
        &mut self,
        from: NodeInfo,
        key: &[u8],
        node_id: &[u8],
        removal: Removal,
    ) -> Response {
        if let Err(e) = self.dht.verifier.check_removal(key, node_id, &removal) {
            return self.refuse_seal(e);
        }
        let now_ms = self.now_ms();
        let publisher = removal.publisher;
        let held = self.store.read(|s| {
            s.slot(key, node_id, Some(&publisher), now_ms)
                .and_then(|r| r.seal())
        });
        if held.is_some_and(|seal| seal.seq >= removal.seq) {
            self.dht.stats.refused_stale += 1;
            return Response::Error {
                reason: ErrorReason::Stale,
            };
        }
        let until = self.tombstone_end(key, node_id, &publisher);
        self.store
            .write(key, |s| s.remove_slot(key, node_id, Some(&publisher)));
        self.dht.tombstones.insert(key, node_id, &removal, until);
        self.forward_remove(key, node_id, &removal, Some(from.id));
        Response::Removed
    }

    /// When a tombstone of the slot ends: as long as its record could have lived (its sealed
    /// ttl if it is held here, else the longest ttl the store applies).
    pub(super) fn tombstone_end(&self, key: &[u8], node_id: &[u8], publisher: &Publisher) -> u64 {
        let now_ms = self.now_ms();
        let ttl_secs = self.store.read(|s| {
            let max = s.limits().max_ttl_secs;
            s.slot(key, node_id, Some(publisher), now_ms)
                .and_then(|r| r.seal())
                .map_or(max, |seal| seal.ttl_secs.min(max))
        });
        now_ms.saturating_add(u64::from(ttl_secs) * 1000)
    }

    /// Whether a record of `bytes` from `publisher` fits its share of the store: always for
    /// this node's own records, and for a record that replaces one of the same slot.
    fn within_share(
        &self,
        key: &[u8],
        node_id: &[u8],
        publisher: &Publisher,
        bytes: usize,
    ) -> bool {
        if publisher == self.dht.keypair.public() {
            return true;
        }
        let pct = self.dht.config.publisher_share_pct;
        let now_ms = self.now_ms();
        self.store.read(|s| {
            if s.slot(key, node_id, Some(publisher), now_ms).is_some() {
                return true;
            }
            let limits = s.limits();
            let share = s.share(publisher);
            let max_records = (limits.max_records.saturating_mul(pct) / 100).max(1);
            let max_bytes = limits.max_bytes.saturating_mul(pct) / 100;
            share.records < max_records && share.bytes.saturating_add(bytes) <= max_bytes
        })
    }

    fn refuse_seal(&mut self, e: SealError) -> Response {
        let reason = match e {
            SealError::Forged => {
                self.dht.stats.refused_forged += 1;
                ErrorReason::Forged
            }
            SealError::WrongPublisher => {
                self.dht.stats.refused_wrong_publisher += 1;
                ErrorReason::WrongPublisher
            }
        };
        Response::Error { reason }
    }
}
