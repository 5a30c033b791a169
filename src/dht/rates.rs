//! How fast each peer may send STOREs: a token bucket per peer, so that one peer flooding a
//! node is refused while every other peer's STOREs are still taken.
//!
//! Bounded: at most [`MAX_PEERS`] buckets; past that, the buckets of peers that have been quiet
//! longest (full again anyway) are dropped first.

use std::collections::BTreeMap;

use crate::time::Time;
use crate::NodeId;

/// Peers whose rate is tracked at once.
pub const MAX_PEERS: usize = 4_096;

/// Seconds' worth of STOREs a quiet peer may send at once.
const BURST_SECS: u64 = 5;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in millionths of a STORE.
    micro_tokens: u64,
    at: Time,
}

/// Token buckets by peer (ordered, so that eviction is the same every run).
#[derive(Debug)]
pub(crate) struct PeerRates {
    per_s: u64,
    buckets: BTreeMap<NodeId, Bucket>,
}

impl PeerRates {
    pub(crate) fn new(per_s: usize) -> PeerRates {
        PeerRates {
            per_s: u64::try_from(per_s).unwrap_or(u64::MAX).max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Whether `peer` may send one more STORE at `now` (and takes its token if so).
    pub(crate) fn allow(&mut self, peer: NodeId, now: Time) -> bool {
        let full = self
            .per_s
            .saturating_mul(BURST_SECS)
            .saturating_mul(1_000_000);
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= MAX_PEERS {
            self.evict_quietest();
        }
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            micro_tokens: full,
            at: now,
        });
        // One token per `1 / per_s` seconds: `per_s` millionths of a token per microsecond.
        let refill = now.since(bucket.at).as_micros().min(u128::from(u64::MAX)) as u64;
        bucket.micro_tokens = bucket
            .micro_tokens
            .saturating_add(refill.saturating_mul(self.per_s))
            .min(full);
        bucket.at = now;
        if bucket.micro_tokens < 1_000_000 {
            return false;
        }
        bucket.micro_tokens -= 1_000_000;
        true
    }

    fn evict_quietest(&mut self) {
        let quietest = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(peer, _)| *peer);
        if let Some(peer) = quietest {
            self.buckets.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_other_peers_unaffected() {
        let mut r = PeerRates::new(10);
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let t0 = Time::from_millis(1_000);
        let allowed = (0..100).filter(|_| r.allow(a, t0)).count();
        assert_eq!(allowed, 50, "five seconds' worth at once");
        assert!(r.allow(b, t0), "another peer is not held back");
        // Then ten a second.
        let mut t = t0;
        let step = Duration::from_secs(1) / 20;
        let later = (0..20)
            .filter(|_| {
                t = t + step;
                r.allow(a, t)
            })
            .count();
        assert_eq!(later, 10);
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut r = PeerRates::new(1);
        for i in 0..(MAX_PEERS + 10) {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            r.allow(NodeId(id), Time::from_millis(i as u64));
        }
        assert_eq!(r.buckets.len(), MAX_PEERS);
    }
}
