//! What this node has seen of its peers: how long each takes to answer, and which failed of
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
//! Where it is kept: a peer's round-trip time lives with the peer in the routing table, in its
//! bucket or its replacement cache (`Peers`); here only for peers that answered and that a full
//! replacement cache let go of since, at most [`RECENT`], the one kept here longest forgotten first
//! (a peer that failed its way out of the table is forgotten: it is likely gone). Failures are kept
//! here for every peer, in the table or not (a dead node that others still name is in no bucket of
//! this node): at most [`MAX_FAILING`] peers, and past that the one whose suspect time ended
//! longest ago is forgotten first, so that a peer suspect now is only ever forgotten for another
//! suspect one.

use std::time::Duration;

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
/// Peers with failures remembered.
pub const MAX_FAILING: usize = 256;
/// Round-trip times remembered of peers the routing table let go of.
pub const RECENT: usize = 128;

/// A smoothed round-trip time, in microseconds (a request's answer comes within
/// `request_timeout`, at most 600 s: well within a `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rtt {
    srtt: u32,
    rttvar: u32,
}

impl Rtt {
    fn first(sample: u32) -> Rtt {
        Rtt {
            srtt: sample,
            rttvar: sample / 2,
        }
    }

    fn update(&mut self, sample: u32) {
        let (srtt, rttvar, sample) = (
            u64::from(self.srtt),
            u64::from(self.rttvar),
            u64::from(sample),
        );
        // Weighted means of u32 values: each fits a u32 again.
        let mean = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        self.rttvar = mean((3 * rttvar + srtt.abs_diff(sample)) / 4);
        self.srtt = mean((7 * srtt + sample) / 8);
    }

    fn timeout(&self) -> Duration {
        Duration::from_micros(u64::from(self.srtt) + 4 * u64::from(self.rttvar))
    }

    /// The smoothed round-trip time itself.
    pub(crate) fn srtt(&self) -> Duration {
        Duration::from_micros(self.srtt.into())
    }
}

/// A peer whose last request failed.
#[derive(Debug, Clone, Copy)]
struct Failing {
    id: NodeId,
    /// Liveness failures in a row.
    failures: u32,
    /// Suspect until then.
    suspect_until: Time,
    /// Not yet handed out by [`Health::due_probes`] since it last failed.
    probe_due: bool,
}

impl Failing {
    /// Suspect before its time is up, and after it until its probe goes out (so that no lookup
    /// asks it first).
    fn is_suspect(&self, now: Time) -> bool {
        self.suspect_until > now || self.probe_due
    }
}

/// The round-trip time of a peer the routing table let go of.
#[derive(Debug, Clone, Copy)]
struct Recent {
    id: NodeId,
    rtt: Rtt,
    /// When it was kept here.
    kept: Time,
}

/// Failures of late and round-trip times. Both lists are sorted by id.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: Vec<Failing>,
    recent: Vec<Recent>,
    /// Over all peers.
    all: Option<Rtt>,
}

impl Health {
    /// `id` answered a request sent `rtt` ago: one more sample, and it is no longer suspect.
    /// `known` is its round-trip time so far if the routing table holds it; else the one kept
    /// here, if any, is taken out. Returns its new round-trip time, for the table to hold.
    pub(crate) fn answered(&mut self, id: &NodeId, rtt: Duration, known: Option<Rtt>) -> Rtt {
        let sample = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        match &mut self.all {
            Some(all) => all.update(sample),
            None => self.all = Some(Rtt::first(sample)),
        }
        if let Ok(at) = self.failing.binary_search_by(|p| p.id.cmp(id)) {
            self.failing.remove(at);
        }
        let kept = known.or_else(|| {
            let at = self.recent.binary_search_by(|r| r.id.cmp(id)).ok()?;
            Some(self.recent.remove(at).rtt)
        });
        match kept {
            Some(mut rtt) => {
                rtt.update(sample);
                rtt
            }
            None => Rtt::first(sample),
        }
    }

    /// Keeps the round-trip time of a peer the routing table let go of at `now`; past
    /// [`RECENT`], the one kept longest is forgotten.
    pub(crate) fn keep(&mut self, id: NodeId, rtt: Rtt, now: Time) {
        let at = match self.recent.binary_search_by(|r| r.id.cmp(&id)) {
            Ok(at) => {
                self.recent.remove(at);
                at
            }
            Err(at) if self.recent.len() < RECENT => at,
            Err(_) => {
                let oldest = (0..).zip(&self.recent).min_by_key(|(_, r)| r.kept);
                if let Some((oldest, _)) = oldest {
                    self.recent.remove(oldest);
                }
                self.recent.partition_point(|r| r.id < id)
            }
        };
        self.recent.insert(at, Recent { id, rtt, kept: now });
    }

    /// The round-trip time kept here of a peer the routing table let go of.
    pub(crate) fn recent_rtt(&self, id: &NodeId) -> Option<Rtt> {
        let at = self.recent.binary_search_by(|r| r.id.cmp(id)).ok()?;
        self.recent.get(at).map(|r| r.rtt)
    }

    /// `id` failed a request for a liveness reason at `now`: suspect for a while. True when it
    /// has now failed [`EVICT_AFTER`] times in a row (it should leave the table).
    pub(crate) fn failed(&mut self, id: NodeId, now: Time) -> bool {
        let at = match self.failing.binary_search_by(|p| p.id.cmp(&id)) {
            Ok(at) => at,
            Err(at) => {
                let at = if self.failing.len() < MAX_FAILING {
                    at
                } else {
                    self.forget_a_failing_peer(now);
                    self.failing.partition_point(|p| p.id < id)
                };
                let new = Failing {
                    id,
                    failures: 0,
                    suspect_until: now,
                    probe_due: false,
                };
                self.failing.insert(at, new);
                at
            }
        };
        let Some(peer) = self.failing.get_mut(at) else {
            return false;
        };
        peer.failures = peer.failures.saturating_add(1);
        let doubled = SUSPECT_FOR.saturating_mul(1 << (peer.failures - 1).min(16));
        peer.suspect_until = now + doubled.min(MAX_SUSPECT);
        peer.probe_due = true;
        peer.failures >= EVICT_AFTER
    }

    /// Whether `id` failed of late and should not be asked or offered: before its time is up,
    /// and after it until its probe goes out (so that no lookup asks it first), unless it
    /// answered since.
    pub(crate) fn is_suspect(&self, id: &NodeId, now: Time) -> bool {
        self.failing_peer(id).is_some_and(|p| p.is_suspect(now))
    }

    /// Whether `id` failed its last request and has not answered since (suspect or no longer).
    pub(crate) fn failed_last(&self, id: &NodeId) -> bool {
        self.failing_peer(id).is_some()
    }

    /// Peers that failed of late and whose suspect time is up at `now`, each returned once: to
    /// be asked again, so that a dead one fails its way out of the table and a live one is
    /// cleared. Soonest first.
    pub(crate) fn due_probes(&mut self, now: Time) -> Vec<NodeId> {
        let mut due: Vec<(Time, NodeId)> = Vec::new();
        for peer in &mut self.failing {
            if peer.probe_due && peer.suspect_until <= now {
                peer.probe_due = false;
                due.push((peer.suspect_until, peer.id));
            }
        }
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// `id` is being probed until `until`: suspect till then (its probe's outcome decides).
    pub(crate) fn probing(&mut self, id: &NodeId, until: Time) {
        if let Ok(at) = self.failing.binary_search_by(|p| p.id.cmp(id)) {
            if let Some(peer) = self.failing.get_mut(at) {
                peer.suspect_until = peer.suspect_until.max(until);
            }
        }
    }

    /// How long to wait for `id`'s answer, at most `cap`; `rtt` is its round-trip time, if
    /// known (else twice the one over all peers counts).
    pub(crate) fn timeout(&self, id: Option<&NodeId>, rtt: Option<Rtt>, cap: Duration) -> Duration {
        let base = match (rtt, self.all) {
            (Some(rtt), _) => rtt.timeout(),
            (None, Some(all)) => all.timeout().saturating_mul(UNMEASURED_FACTOR),
            (None, None) => return cap,
        };
        let failures = id
            .and_then(|id| self.failing_peer(id))
            .map_or(0, |p| p.failures)
            .min(16);
        base.max(MIN_TIMEOUT).saturating_mul(1 << failures).min(cap)
    }

    /// When a lookup stops holding a slot for the answer of a peer whose round-trip time is
    /// `rtt` (it still takes it until `timeout`): once the peer is later than it usually is, at
    /// least [`MIN_STALL`] after sending. `None` when that would not come before `timeout`, or
    /// nothing was measured yet.
    pub(crate) fn stall_after(&self, rtt: Option<Rtt>, timeout: Duration) -> Option<Duration> {
        let after = rtt.or(self.all)?.timeout().max(MIN_STALL);
        (after < timeout).then_some(after)
    }

    /// Peers suspect at `now`.
    pub(crate) fn suspects(&self, now: Time) -> usize {
        self.failing.iter().filter(|p| p.is_suspect(now)).count()
    }

    fn failing_peer(&self, id: &NodeId) -> Option<&Failing> {
        if self.failing.is_empty() {
            return None; // most peers asked about are fine
        }
        let at = self.failing.binary_search_by(|p| p.id.cmp(id)).ok()?;
        self.failing.get(at)
    }

    /// Makes room for a failing peer: forgets the one not suspect at `now` whose suspect time
    /// ended longest ago, or if all are suspect, the one whose suspect time ends first.
    fn forget_a_failing_peer(&mut self, now: Time) {
        let gone = (0..)
            .zip(&self.failing)
            .min_by_key(|(_, p)| (p.is_suspect(now), p.suspect_until));
        if let Some((at, _)) = gone {
            self.failing.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn numbered(n: u64) -> NodeId {
        let mut raw = [0; 32];
        raw[..8].copy_from_slice(&n.to_be_bytes());
        NodeId(raw)
    }

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn timeouts_follow_the_measured_round_trips() {
        let mut h = Health::default();
        let cap = Duration::from_secs(2);
        assert_eq!(
            h.timeout(Some(&id(1)), None, cap),
            cap,
            "nothing measured yet"
        );
        let mut one = None;
        for _ in 0..20 {
            one = Some(h.answered(&id(1), Duration::from_millis(40), one));
        }
        // srtt 40 ms, rttvar shrinking towards 0: about 40 ms plus a little, above the floor.
        let known = h.timeout(Some(&id(1)), one, cap);
        assert!(known >= Duration::from_millis(100) && known < Duration::from_millis(200));
        assert_eq!(one.map(|r| r.srtt()), Some(Duration::from_millis(40)));
        // A peer never measured gets twice the estimate over all peers: under the floor here.
        assert_eq!(h.timeout(Some(&id(2)), None, cap), known);
        let mut slow = None;
        for _ in 0..20 {
            slow = Some(h.answered(&id(3), Duration::from_millis(600), slow));
        }
        assert!(h.timeout(Some(&id(3)), slow, cap) >= Duration::from_millis(600));
        let all = h.all.map(|all| all.timeout() * UNMEASURED_FACTOR);
        assert_eq!(Some(h.timeout(Some(&id(2)), None, cap)), all);
        assert_eq!(
            h.timeout(Some(&id(3)), slow, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        let stall = h.stall_after(one, Duration::from_millis(300));
        assert!(stall.is_some_and(|d| d >= Duration::from_millis(40) && d < known));
        assert_eq!(h.stall_after(slow, Duration::from_millis(300)), None);
    }

    #[test]
    fn failures_make_a_peer_suspect_then_evict_it() {
        let mut h = Health::default();
        let cap = Duration::from_secs(2);
        let rtt = Some(h.answered(&id(1), Duration::from_millis(1), None));
        let base = h.timeout(Some(&id(1)), rtt, cap);
        assert!(!h.failed_last(&id(1)));
        assert!(!h.failed(id(1), at(0)));
        assert!(h.is_suspect(&id(1), at(0)));
        assert!(h.failed_last(&id(1)));
        assert_eq!(
            h.timeout(Some(&id(1)), rtt, cap),
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
        assert!(h.failed_last(&id(1)), "until it answers");
        assert_eq!(h.suspects(at(5_600)), 0);
        assert!(!h.failed(id(1), at(5_000)));
        assert!(
            h.is_suspect(&id(1), at(14_999)),
            "the second wait is twice as long"
        );
        assert_eq!(h.due_probes(at(15_000)), [id(1)]);
        h.probing(&id(1), at(20_000));
        assert!(h.is_suspect(&id(1), at(19_999)), "while its probe runs");
        assert!(
            h.failed(id(1), at(15_000)),
            "the third failure in a row evicts"
        );
        h.answered(&id(1), Duration::from_millis(1), rtt);
        assert!(!h.is_suspect(&id(1), at(15_001)));
        assert!(!h.failed_last(&id(1)));
        assert!(h.due_probes(at(99_999)).is_empty());
        assert_eq!(h.suspects(at(15_001)), 0);
    }

    #[test]
    fn probes_are_due_soonest_first() {
        let mut h = Health::default();
        h.failed(id(9), at(2_000));
        h.failed(id(1), at(3_000));
        h.failed(id(5), at(1_000));
        assert_eq!(h.due_probes(at(7_500)), [id(5), id(9)]);
        assert_eq!(h.due_probes(at(8_000)), [id(1)]);
    }

    #[test]
    fn past_the_bound_a_failing_peer_no_longer_suspect_is_forgotten_first() {
        let mut h = Health::default();
        let all: Vec<NodeId> = (0..MAX_FAILING as u64).map(numbered).collect();
        for peer in &all {
            h.failed(*peer, at(0));
        }
        // Half fail again at 8 s (suspect until 18 s); the others' time is up at 10 s, and their
        // probes went out.
        let (again, done) = all.split_at(MAX_FAILING / 2);
        for peer in again {
            h.failed(*peer, at(8_000));
        }
        assert_eq!(h.due_probes(at(10_000)).len(), done.len());
        let newcomers: Vec<NodeId> = (0..done.len() as u64)
            .map(|n| numbered(n + 1_000_000))
            .collect();
        for peer in &newcomers {
            h.failed(*peer, at(10_000));
        }
        assert_eq!(h.failing.len(), MAX_FAILING);
        assert!(again.iter().all(|p| h.is_suspect(p, at(10_000))));
        assert!(newcomers.iter().all(|p| h.is_suspect(p, at(10_000))));
        assert!(done.iter().all(|p| !h.failed_last(p)), "forgotten");
        // All suspect now: the one whose time ends first goes.
        h.failed(numbered(u64::MAX), at(10_000));
        assert!(!h.failed_last(&newcomers[0]), "suspect until 15 s");
        assert!(h.failed_last(&newcomers[1]));
        assert!(again.iter().all(|p| h.failed_last(p)), "suspect until 18 s");
    }

    #[test]
    fn round_trip_times_let_go_of_are_kept_the_newest_first() {
        let mut h = Health::default();
        let rtt = h.answered(&id(0), Duration::from_millis(30), None);
        for n in 0..=RECENT as u64 {
            h.keep(numbered(n), rtt, at(n));
        }
        assert_eq!(h.recent.len(), RECENT);
        assert_eq!(h.recent_rtt(&numbered(0)), None, "kept the longest: gone");
        assert_eq!(h.recent_rtt(&numbered(1)), Some(rtt));
        // An answer takes it out (the table holds it again), one sample on.
        let next = h.answered(&numbered(1), Duration::from_millis(70), None);
        assert_eq!(next.srtt(), Duration::from_millis(35));
        assert_eq!(h.recent_rtt(&numbered(1)), None);
        assert_eq!(h.recent.len(), RECENT - 1);
    }
}
