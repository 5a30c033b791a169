//! Putting this node's records on the network and taking them back: advertise (store locally
//! and on the `k` closest), republish, withdraw (remove everywhere it was sent), and hand-off of
//! held records to a newcomer that became one of the `k` closest for them.
//!
//! Publishes of one service are serialised by the service's own async lock, so a withdrawal
//! never races a republish of the same service (a STORE sent after the REMOVE would otherwise
//! look newer than it is); different services publish concurrently.

use std::future::Future;
use std::sync::Arc;

use macula_dht::wire::{NodeInfo, Request, Response};
use macula_dht::{NodeId, ProviderRecord};
use tokio::task::JoinSet;

use super::{AdvertSlot, NodeError, Published, Shared};
use crate::identity::id_hex;
use crate::record::{
    advertised_at, hex, service_key, unix_now, Advertisement, Provider, RecordError,
};

/// Keys checked per table lock during a hand-off, so inbound requests are not held up.
const HANDOFF_CHUNK: usize = 256;

impl Shared {
    /// Publishes `ad` for `service` now; with `refresh`, keeps republishing it.
    pub(super) async fn advertise(
        self: &Arc<Self>,
        service: &str,
        ad: Advertisement,
        refresh: bool,
    ) -> Result<Published, NodeError> {
        if service.is_empty() {
            return Err(RecordError::EmptyService.into());
        }
        ad.validate()?;
        let lock = self.advert_lock(service)?;
        let _serial = lock.lock().await;
        let interval = self.config.republish_interval(ad.ttl_secs);
        let withdrawn_at = {
            let mut adverts = self.adverts.lock();
            let slot = adverts.get_mut(service).ok_or(NodeError::Closed)?;
            slot.advert = refresh.then(|| ad.clone());
            slot.next_at_ms = self.now_ms().saturating_add(millis(interval));
            slot.withdrawn_at
        };
        self.publish(service, &ad, withdrawn_at).await
    }

    /// Stops republishing `service` and removes this node's provider everywhere it was sent.
    pub(super) async fn withdraw(self: &Arc<Self>, service: &str) -> Result<Published, NodeError> {
        let lock = self.advert_lock(service)?;
        let _serial = lock.lock().await;
        if let Some(slot) = self.adverts.lock().get_mut(service) {
            slot.advert = None;
            slot.withdrawn_at = unix_now();
        }
        let published = self
            .remove_everywhere(&service_key(service), &self.id.0)
            .await?;
        tracing::info!(
            service,
            acked = published.acked,
            targets = published.targets,
            "withdrawn"
        );
        Ok(published)
    }

    /// Starts a republish of every advertisement that is due and not being published already.
    pub(super) fn republish_due(self: &Arc<Self>) {
        let now = self.now_ms();
        let mut due = Vec::new();
        {
            let mut adverts = self.adverts.lock();
            for (service, slot) in adverts.iter_mut() {
                let Some(ad) = &slot.advert else { continue };
                if slot.next_at_ms > now {
                    continue;
                }
                let Ok(serial) = slot.lock.clone().try_lock_owned() else {
                    continue; // being published or withdrawn right now
                };
                let interval = self.config.republish_interval(ad.ttl_secs);
                slot.next_at_ms = now.saturating_add(millis(interval));
                due.push((service.clone(), ad.clone(), slot.withdrawn_at, serial));
            }
        }
        // At most `max_adverts` tasks, each holding its service's lock.
        for (service, ad, withdrawn_at, serial) in due {
            let shared = self.clone();
            tokio::spawn(async move {
                let _serial = serial;
                if let Err(e) = shared.publish(&service, &ad, withdrawn_at).await {
                    tracing::warn!(service, error = %e, "republish failed");
                }
            });
        }
    }

    /// Stores the provider record locally and on the `k` closest nodes. Caller holds the
    /// service's lock.
    async fn publish(
        self: &Arc<Self>,
        service: &str,
        ad: &Advertisement,
        withdrawn_at: u64,
    ) -> Result<Published, NodeError> {
        let key = service_key(service);
        // Dated after the last withdrawal, so replicas' tombstones let it through.
        let advertised_at = unix_now().max(withdrawn_at.saturating_add(1));
        let etf = ad.encode(&self.id, advertised_at);
        let now = self.now_ms();
        self.store
            .write(&key, |store| store.upsert(&key, &etf, now))?;
        let published = self.replicate_record(&key, &etf).await?;
        tracing::info!(
            service,
            acked = published.acked,
            targets = published.targets,
            "published"
        );
        Ok(published)
    }

    /// Replicates a record held under `key` (versioned ETF) to the `k` closest nodes. Starts at
    /// once: the provider's tombstone here goes (this is a newer advertisement) and the record is
    /// noted among the replicated ones, so a removal right after still goes to the network. The
    /// returned future sends the STOREs and notes which nodes took a copy.
    pub(super) fn replicate_record(
        self: &Arc<Self>,
        key: &[u8],
        etf: &[u8],
    ) -> impl Future<Output = Result<Published, NodeError>> + Send + 'static {
        let node_id = ProviderRecord::parse(etf)
            .map(|record| record.node_id().map(<[u8]>::to_vec))
            .map_err(|e| NodeError::Store(e.into()));
        if let Ok(Some(node_id)) = &node_id {
            self.tombstones.lock().clear(key, node_id);
            self.holders.lock().add(key, node_id, &[]);
        }
        let shared = self.clone();
        let (key, etf) = (key.to_vec(), etf.to_vec());
        async move {
            let node_id = node_id?;
            let request = Request::Store {
                key: key.clone(),
                // The wire carries the term without the version byte.
                value: etf[1..].to_vec(),
            };
            let (published, acked) = shared.replicate(&key, request, Vec::new()).await?;
            if let Some(node_id) = node_id {
                shared.holders.lock().add(&key, &node_id, &acked);
            }
            Ok(published)
        }
    }

    /// Removes `node_id`'s provider under `key` here at once, leaving a tombstone; the returned
    /// future sends REMOVE to the `k` closest nodes and to every node this node gave a copy.
    pub(super) fn remove_everywhere(
        self: &Arc<Self>,
        key: &[u8],
        node_id: &[u8],
    ) -> impl Future<Output = Result<Published, NodeError>> + Send + 'static {
        self.remove_with_tombstone(key, node_id);
        let mut copies = self.holders.lock().take(key, node_id);
        copies.extend(self.handed_off.lock().take(key, node_id));
        let request = Request::Remove {
            key: key.to_vec(),
            node_id: node_id.to_vec(),
        };
        let shared = self.clone();
        let key = key.to_vec();
        async move {
            let (published, _) = shared.replicate(&key, request, copies).await?;
            Ok(published)
        }
    }

    /// Looks up the `k` closest nodes to `key` and sends `request` (STORE or REMOVE) to them and
    /// to `also`. Returns what it reached and the nodes that acknowledged.
    async fn replicate(
        self: &Arc<Self>,
        key: &[u8],
        request: Request,
        also: Vec<NodeInfo>,
    ) -> Result<(Published, Vec<NodeInfo>), NodeError> {
        let target = NodeId::normalize(key);
        let found = self
            .lookup(target, Request::FindNode { target }, None)
            .await?;
        let mut targets = found.closest;
        for node in also {
            if node.id != self.id && !targets.iter().any(|t| t.id == node.id) {
                targets.push(node);
            }
        }
        let request = Arc::new(request);
        // At most `k` plus `Holders`' bound requests, each bounded by the request timeout.
        let mut sends = JoinSet::new();
        for node in &targets {
            let shared = self.clone();
            let request = request.clone();
            let node = *node;
            sends.spawn(async move {
                let sent = shared.rpc(node.addr, Some(node.id), &request).await;
                (node, sent)
            });
        }
        let mut acked = Vec::new();
        while let Some(sent) = sends.join_next().await {
            if let Ok((node, Ok((_, Response::Stored | Response::Removed)))) = sent {
                acked.push(node);
            }
        }
        let published = Published {
            key: hex(key),
            targets: targets.len(),
            acked: acked.len(),
        };
        Ok((published, acked))
    }

    /// The lock of `service`'s slot, creating the slot if needed (within `max_adverts`; slots of
    /// withdrawn services are reused first).
    fn advert_lock(&self, service: &str) -> Result<Arc<tokio::sync::Mutex<()>>, NodeError> {
        let mut adverts = self.adverts.lock();
        if let Some(slot) = adverts.get(service) {
            return Ok(slot.lock.clone());
        }
        if adverts.len() >= self.config.max_adverts {
            let idle = adverts
                .iter()
                .find(|(_, slot)| slot.advert.is_none() && Arc::strong_count(&slot.lock) == 1)
                .map(|(name, _)| name.clone());
            match idle {
                Some(name) => {
                    adverts.remove(&name);
                }
                None => {
                    return Err(NodeError::TooManyAdverts {
                        max: self.config.max_adverts,
                    })
                }
            }
        }
        let slot = AdvertSlot {
            advert: None,
            next_at_ms: u64::MAX,
            withdrawn_at: 0,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        let lock = slot.lock.clone();
        adverts.insert(service.to_string(), slot);
        Ok(lock)
    }

    /// Sends `peer` the records of every held key (at most `max_handoff_keys`) for which it is
    /// now among the `k` closest nodes we know. Records whose advertiser has let them run out
    /// (`advertised_at + ttl` in the past) are not passed on, so hand-offs cannot keep an
    /// abandoned record alive.
    pub(super) async fn hand_off(self: &Arc<Self>, peer: NodeInfo) {
        let keys: Vec<Vec<u8>> = self
            .store
            .read()
            .keys()
            .take(self.config.max_handoff_keys)
            .map(<[u8]>::to_vec)
            .collect();
        let mut owed = Vec::new();
        for chunk in keys.chunks(HANDOFF_CHUNK) {
            let table = self.table.lock();
            for key in chunk {
                let target = NodeId::normalize(key);
                if table
                    .closest(&target, self.config.k)
                    .iter()
                    .any(|(id, _)| **id == peer.id)
                {
                    owed.push(key);
                }
            }
        }
        let now_unix = unix_now();
        let mut sent = 0;
        for key in owed {
            let records: Vec<Vec<u8>> = {
                let now = self.now_ms();
                let store = self.store.read();
                store
                    .providers(key, now)
                    .filter(|term| still_advertised(term, now_unix))
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            for value in records {
                let node_id = Provider::parse(&value)
                    .ok()
                    .map(|p| p.node_id)
                    .filter(|id| !id.is_empty());
                let stamp = advertised_at(&value);
                let request = Request::Store {
                    key: key.clone(),
                    value,
                };
                if let Err(e) = self.rpc(peer.addr, Some(peer.id), &request).await {
                    tracing::debug!(peer = %id_hex(&peer.id), error = %e, "hand-off stopped");
                    return;
                }
                sent += 1;
                if let Some(node_id) = node_id {
                    self.note_handed_off(key, &node_id, stamp, peer).await;
                }
            }
        }
        if sent > 0 {
            tracing::debug!(peer = %id_hex(&peer.id), records = sent, "handed off");
        }
    }
}

impl Shared {
    /// Remembers that `peer` took a copy of the record, so that its removal follows; if the
    /// record was removed here while the copy was on its way, the removal follows at once.
    async fn note_handed_off(
        self: &Arc<Self>,
        key: &[u8],
        node_id: &[u8],
        advertised_at: Option<u64>,
        peer: NodeInfo,
    ) {
        self.handed_off.lock().add(key, node_id, &[peer]);
        let removed = self
            .tombstones
            .lock()
            .blocks(key, node_id, advertised_at, self.now_ms());
        if removed {
            self.forward_remove(key, node_id, None);
        }
    }

    /// Sends REMOVE of the record to the nodes this node gave a copy (by STORE or hand-off),
    /// except `from`, in the background; each forgets them here, and forwards it to those it
    /// gave copies in turn. Bounded: the copies noted are.
    pub(super) fn forward_remove(
        self: &Arc<Self>,
        key: &[u8],
        node_id: &[u8],
        from: Option<NodeId>,
    ) {
        let mut copies = self.handed_off.lock().take(key, node_id);
        copies.extend(self.holders.lock().take(key, node_id));
        copies.retain(|n| Some(n.id) != from && n.id != self.id);
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
            let shared = self.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let _ = shared.rpc(node.addr, Some(node.id), &request).await;
            });
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

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
