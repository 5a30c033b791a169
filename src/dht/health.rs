//! What this node has seen of each peer: how long it takes to answer, and whether it failed of
//! late.
//!
//! Round-trip times are smoothed as TCP does (RFC 6298: `srtt`, `rttvar`, gains 1/8 and 1/4),
//! per peer and over all peers. A request to a peer times out at `srtt + 4 * rttvar` of that
//! peer, or twice that of all peers for one never measured, at least [`MIN_TIMEOUT`] and at
//! most the configured `request_timeout`, doubled for each failure in a row; before any sample at
//! all, at `request_timeout`. So a dead peer holds a request for about its usual answer time, not
//! for the whole timeout.
//!
//! A peer that fails a request for a liveness reason is suspect for [`SUSPECT_FOR`], doubled for
//! each failure in a row: lookups do not ask it and replies do not offer it; when the time is up
//! the node asks it again (a probe, for a peer in the table). After [`EVICT_AFTER`] failures in a
//! row it leaves the routing table. Any answer clears it.
//!
//! Bounded: at most [`MAX_PEERS`] peers, the one updated longest ago forgotten first.

use std::collections::BTreeSet;
use std::time::Duration;

use hashbrown::HashMap;

use crate::time::Time;
use crate::NodeId;

/// The shortest a request may be given, however fast its peer usually answers: a peer busy for a
/// moment is not taken for dead.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The earliest a lookup gives the slot of an unanswered query to the next candidate: live peers
/// answer later than usual now and then (a busy host), and each early give-away costs a query.
pub const MIN_STALL: Duration = Duration::from_millis(10);
/// How much longer than the estimate over all peers a request to a peer never measured is
/// given: that estimate follows the spread of round trips from one answer to the next, and a
/// peer taken at random may be in the slow tail of all peers (on wide-area links a tenth of the
/// pairs take twice the median or more). Given the estimate alone, 2 % of the requests to live
/// peers of a simulated wide-area network timed out, and those peers were taken for dead.
const UNMEASURED_FACTOR: u32 = 2;
/// How long a peer stays suspect after its first failure; doubled for each further one.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Longest a peer stays suspect after one failure.
const MAX_SUSPECT: Duration = Duration::from_secs(60);
/// Failures in a row after which a peer leaves the routing table.
pub const EVICT_AFTER: u32 = 3;
/// Peers remembered.
pub const MAX_PEERS: usize = 4096;
/// How finely the age of a peer's last update is kept.
const AGE_STEP: Duration = Duration::from_secs(1);

/// A smoothed round-trip time, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rtt {
    srtt: u64,
    rttvar: u64,
}

impl Rtt {
    fn first(sample: u64) -> Rtt {
        Rtt {
            srtt: sample,
            rttvar: sample / 2,
        }
    }

    fn update(&mut self, sample: u64) {
        let delta = self.srtt.abs_diff(sample);
        self.rttvar = (3 * self.rttvar + delta) / 4;
        self.srtt = (7 * self.srtt + sample) / 8;
    }

    fn timeout(&self) -> Duration {
        Duration::from_micros(self.srtt.saturating_add(self.rttvar.saturating_mul(4)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    rtt: Option<Rtt>,
    /// Liveness failures in a row.
    failures: u32,
    /// Suspect until then (when `failures > 0`).
    suspect_until: Time,
    /// Last update, for forgetting the oldest.
    updated: Time,
}

/// Slots of [`Failing`].
const SLOTS: usize = 256;

/// A counting filter of the failing peers: no false "no", few false "maybe". Its slots are made
/// at the first failure: most nodes of a quiet network never see one.
#[derive(Debug, Default)]
struct Failing(Option<Box<[u16; SLOTS]>>);

impl Failing {
    fn slot(id: &NodeId) -> usize {
        usize::from(u16::from_be_bytes([id.0[0], id.0[1]])) % SLOTS
    }

    // At most MAX_PEERS (4096) peers are counted: a u16 never overflows.
    fn add(&mut self, id: &NodeId) {
        self.0.get_or_insert_with(|| Box::new([0; SLOTS]))[Failing::slot(id)] += 1;
    }

    fn remove(&mut self, id: &NodeId) {
        if let Some(slots) = &mut self.0 {
            slots[Failing::slot(id)] -= 1;
        }
    }

    fn may_hold(&self, id: &NodeId) -> bool {
        self.0
            .as_ref()
            .is_some_and(|slots| slots[Failing::slot(id)] > 0)
    }
}

/// The health of the peers this node has talked to. The peers are looked up, never walked:
/// whatever goes by order (probes, forgetting) goes through the ordered sets, the same every run.
#[derive(Debug, Default)]
pub(crate) struct Health {
    peers: HashMap<NodeId, Peer>,
    /// How many peers with a failure in a row fall in each slot (by their id's first bytes):
    /// most peers asked about are fine, and a zero here answers without hashing the id.
    failing: Failing,
    /// `(updated, id)` of every remembered peer, oldest first.
    by_age: BTreeSet<(Time, NodeId)>,
    /// `(suspect_until, id)` of the suspect peers not yet due a probe, soonest first.
    waiting: BTreeSet<(Time, NodeId)>,
    /// Over all peers.
    all: Option<Rtt>,
}

impl Health {
    /// `id` answered a request sent `rtt` ago: one more sample, and it is no longer suspect.
    pub(crate) fn answered(&mut self, id: NodeId, rtt: Duration, now: Time) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        match &mut self.all {
            Some(all) => all.update(sample),
            None => self.all = Some(Rtt::first(sample)),
        }
        let peer = self.entry(id, now);
        match &mut peer.rtt {
            Some(rtt) => rtt.update(sample),
            None => peer.rtt = Some(Rtt::first(sample)),
        }
        let (until, was_failing) = (peer.suspect_until, peer.failures > 0);
        peer.failures = 0;
        if was_failing {
            self.failing.remove(&id);
            self.waiting.remove(&(until, id));
        }
    }

    /// `id` failed a request for a liveness reason at `now`: suspect for a while. True when it
    /// has now failed [`EVICT_AFTER`] times in a row (it should leave the table).
    pub(crate) fn failed(&mut self, id: NodeId, now: Time) -> bool {
        let peer = self.entry(id, now);
        let (before, newly) = (peer.suspect_until, peer.failures == 0);
        peer.failures = peer.failures.saturating_add(1);
        let doubled = SUSPECT_FOR.saturating_mul(1 << (peer.failures - 1).min(16));
        peer.suspect_until = now + doubled.min(MAX_SUSPECT);
        let (until, evict) = (peer.suspect_until, peer.failures >= EVICT_AFTER);
        if newly {
            self.failing.add(&id);
        }
        self.waiting.remove(&(before, id));
        self.waiting.insert((until, id));
        evict
    }

    /// Whether `id` failed of late and should not be asked or offered: before its time is up,
    /// and after it until its probe goes out (so that no lookup asks it first), unless it
    /// answered since.
    pub(crate) fn is_suspect(&self, id: &NodeId, now: Time) -> bool {
        self.failing.may_hold(id)
            && self.peers.get(id).is_some_and(|p| {
                p.failures > 0
                    && (p.suspect_until > now || self.waiting.contains(&(p.suspect_until, *id)))
            })
    }

    /// Whether `id` failed its last request and has not answered since (suspect or no longer).
    pub(crate) fn failed_last(&self, id: &NodeId) -> bool {
        self.failing.may_hold(id) && self.peers.get(id).is_some_and(|p| p.failures > 0)
    }

    /// Peers that failed of late and whose suspect time is up at `now`, each returned once: to
    /// be asked again, so that a dead one fails its way out of the table and a live one is
    /// cleared.
    pub(crate) fn due_probes(&mut self, now: Time) -> Vec<NodeId> {
        let mut due = Vec::new();
        while let Some(&(until, id)) = self.waiting.first() {
            if until > now {
                break;
            }
            self.waiting.pop_first();
            due.push(id);
        }
        due
    }

    /// `id` is being probed until `until`: suspect till then (its probe's outcome decides).
    pub(crate) fn probing(&mut self, id: NodeId, until: Time) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.suspect_until = peer.suspect_until.max(until);
        }
    }

    /// How long to wait for `id`'s answer, at most `cap`.
    pub(crate) fn timeout(&self, id: Option<&NodeId>, cap: Duration) -> Duration {
        let peer = id.and_then(|id| self.peers.get(id));
        let base = match (peer.and_then(|p| p.rtt), self.all) {
            (Some(rtt), _) => rtt.timeout(),
            (None, Some(all)) => all.timeout().saturating_mul(UNMEASURED_FACTOR),
            (None, None) => return cap,
        };
        let failures = peer.map_or(0, |p| p.failures).min(16);
        base.max(MIN_TIMEOUT).saturating_mul(1 << failures).min(cap)
    }

    /// When a lookup stops holding a slot for `id`'s answer (it still takes it until `timeout`):
    /// once `id` is later than it usually is, at least [`MIN_STALL`] after sending. `None` when
    /// that would not come before `timeout`, or nothing was measured yet.
    pub(crate) fn stall_after(&self, id: &NodeId, timeout: Duration) -> Option<Duration> {
        let rtt = self.peers.get(id).and_then(|p| p.rtt).or(self.all)?;
        let after = rtt.timeout().max(MIN_STALL);
        (after < timeout).then_some(after)
    }

    /// `id`'s smoothed round-trip time, if it ever answered.
    pub(crate) fn rtt(&self, id: &NodeId) -> Option<Duration> {
        self.peers
            .get(id)
            .and_then(|p| p.rtt)
            .map(|rtt| Duration::from_micros(rtt.srtt))
    }

    /// Peers suspect at `now`.
    pub(crate) fn suspects(&self, now: Time) -> usize {
        self.peers
            .keys()
            .filter(|id| self.is_suspect(id, now))
            .count()
    }

    /// `id`'s entry, made (forgetting the oldest past [`MAX_PEERS`]) if new, its age stamped.
    fn entry(&mut self, id: NodeId, now: Time) -> &mut Peer {
        match self.peers.get(&id).map(|p| p.updated) {
            // Ages are kept to the second: a busy peer is not moved on every answer.
            Some(updated) if now.since(updated) < AGE_STEP => {}
            Some(updated) => {
                self.by_age.remove(&(updated, id));
                self.by_age.insert((now, id));
            }
            None => {
                if self.peers.len() >= MAX_PEERS {
                    if let Some((_, oldest)) = self.by_age.pop_first() {
                        if let Some(gone) = self.peers.remove(&oldest) {
                            if gone.failures > 0 {
                                self.failing.remove(&oldest);
                                self.waiting.remove(&(gone.suspect_until, oldest));
                            }
                        }
                    }
                }
                self.by_age.insert((now, id));
            }
        }
        let peer = self.peers.entry(id).or_insert(Peer {
            rtt: None,
            failures: 0,
            suspect_until: now,
            updated: now,
        });
        if now.since(peer.updated) >= AGE_STEP {
            peer.updated = now;
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn timeouts_follow_the_measured_round_trips() {
        let mut h = Health::default();
        let cap = Duration::from_secs(2);
        assert_eq!(h.timeout(Some(&id(1)), cap), cap, "nothing measured yet");
        for _ in 0..20 {
            h.answered(id(1), Duration::from_millis(40), at(0));
        }
        // srtt 40 ms, rttvar shrinking towards 0: about 40 ms plus a little, above the floor.
        let known = h.timeout(Some(&id(1)), cap);
        assert!(known >= Duration::from_millis(100) && known < Duration::from_millis(200));
        assert_eq!(h.rtt(&id(1)), Some(Duration::from_millis(40)));
        // A peer never measured gets the estimate over all peers.
        assert_eq!(h.timeout(Some(&id(2)), cap), known);
        for _ in 0..20 {
            h.answered(id(3), Duration::from_millis(600), at(0));
        }
        assert!(h.timeout(Some(&id(3)), cap) >= Duration::from_millis(600));
        assert_eq!(
            h.timeout(Some(&id(3)), Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn failures_make_a_peer_suspect_then_evict_it() {
        let mut h = Health::default();
        let cap = Duration::from_secs(2);
        h.answered(id(1), Duration::from_millis(1), at(0));
        let base = h.timeout(Some(&id(1)), cap);
        assert!(!h.failed(id(1), at(0)));
        assert!(h.is_suspect(&id(1), at(0)));
        assert_eq!(
            h.timeout(Some(&id(1)), cap),
            base * 2,
            "more time after a failure"
        );
        assert!(h.is_suspect(&id(1), at(4_999)));
        assert!(
            h.is_suspect(&id(1), at(5_600)),
            "its time is up, but no probe went out yet"
        );
        assert_eq!(h.suspects(at(5_600)), 1);
        assert_eq!(h.due_probes(at(5_600)), [id(1)]);
        assert!(h.due_probes(at(5_600)).is_empty(), "once");
        assert!(
            !h.is_suspect(&id(1), at(5_600)),
            "not probed (not in the table): may be asked again"
        );
        assert_eq!(h.suspects(at(5_600)), 0);
        assert!(!h.failed(id(1), at(5_000)));
        assert!(
            h.is_suspect(&id(1), at(14_999)),
            "the second wait is twice as long"
        );
        assert!(
            h.failed(id(1), at(15_000)),
            "the third failure in a row evicts"
        );
        h.answered(id(1), Duration::from_millis(1), at(15_001));
        assert!(!h.is_suspect(&id(1), at(15_001)));
        assert!(h.due_probes(at(99_999)).is_empty());
        assert_eq!(h.suspects(at(15_001)), 0);
    }

    #[test]
    fn the_oldest_peer_is_forgotten_past_the_bound() {
        let mut h = Health::default();
        for n in 0..MAX_PEERS as u64 + 1 {
            let mut raw = [0; 32];
            raw[..8].copy_from_slice(&n.to_be_bytes());
            h.answered(NodeId(raw), Duration::from_millis(1), at(n));
        }
        assert_eq!(h.peers.len(), MAX_PEERS);
        assert_eq!(h.by_age.len(), MAX_PEERS);
        assert_eq!(h.rtt(&NodeId([0; 32])), None, "the first one went");
    }
}
