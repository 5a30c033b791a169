//! The node's background work: one housekeeping timer (record expiry, tombstone purge, due
//! republishes, and every `refresh_interval` a bucket refresh) and one hand-off worker fed by a
//! bounded queue. Both hold the node weakly and end when it is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use macula_dht::wire::{NodeInfo, Request};
use macula_dht::{NodeId, ID_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;

/// The housekeeping loop.
pub(super) async fn timers(node: Weak<Shared>) {
    let Some(tick) = node.upgrade().map(|s| s.config.tick) else {
        return;
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_refresh = None;
    loop {
        ticker.tick().await;
        let Some(shared) = node.upgrade() else {
            return;
        };
        shared.housekeeping();
        let now = Instant::now();
        let due = next_refresh.get_or_insert(now + shared.config.refresh_interval);
        if now >= *due {
            *due = now + shared.config.refresh_interval;
            // One refresh at a time; a slow one is not stacked on.
            if !shared.refreshing.swap(true, Ordering::AcqRel) {
                tokio::spawn(async move {
                    shared.refresh().await;
                    shared.refreshing.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Hands records to newcomers, one at a time, in arrival order.
pub(super) async fn hand_offs(node: Weak<Shared>, mut newcomers: mpsc::Receiver<NodeInfo>) {
    while let Some(peer) = newcomers.recv().await {
        let Some(shared) = node.upgrade() else {
            return;
        };
        shared.hand_off(peer).await;
    }
}

impl Shared {
    fn housekeeping(self: &Arc<Self>) {
        let now = self.now_ms();
        let expired = self.store.expire(now);
        if expired > 0 {
            tracing::debug!(expired, "records expired");
        }
        self.tombstones.lock().purge(now);
        self.republish_due();
    }

    /// Re-joins through the bootstrap nodes when the table is empty; otherwise looks up our own
    /// id and a random id in each of the next `refresh_buckets` buckets (round robin over the
    /// buckets from the farthest to the nearest non-empty one). Lookups meet the peers in those
    /// ranges, which refreshes them, finds newcomers and drops the dead.
    async fn refresh(self: &Arc<Self>) {
        let (empty, nearest) = {
            let table = self.table.lock();
            let nearest = table.buckets().map(|(index, _)| index).max().unwrap_or(0);
            (table.is_empty(), nearest as usize)
        };
        if empty {
            let seeds = self.seeds.lock().clone();
            if !seeds.is_empty() {
                if let Err(e) = self.bootstrap(&seeds).await {
                    tracing::debug!(error = %e, "re-join failed");
                }
            }
            return;
        }
        let mut targets = vec![self.id];
        for _ in 0..self.config.refresh_buckets {
            let index = self.refresh_cursor.fetch_add(1, Ordering::Relaxed) % (nearest + 1);
            if let Some(target) = random_id_in_bucket(&self.id, index) {
                targets.push(target);
            }
        }
        for target in targets {
            if self
                .lookup(target, Request::FindNode { target }, None)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A random id whose XOR distance to `local` has exactly `index` leading zero bits (an id that
/// falls in bucket `index`). `None` if the system RNG fails.
fn random_id_in_bucket(local: &NodeId, index: usize) -> Option<NodeId> {
    let mut random = [0u8; ID_LEN];
    SystemRandom::new().fill(&mut random).ok()?;
    let mut id = local.0;
    for bit in index..ID_LEN * 8 {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        let flip = if bit == index {
            true // the first differing bit
        } else {
            random[byte] & mask != 0
        };
        if flip {
            id[byte] ^= mask;
        }
    }
    Some(NodeId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_land_in_the_asked_bucket() {
        let local = NodeId([0x5a; ID_LEN]);
        for index in [0, 1, 7, 8, 100, 255] {
            let id = random_id_in_bucket(&local, index).unwrap();
            assert_eq!(local.bucket_index(&id), index as u32);
        }
    }
}
