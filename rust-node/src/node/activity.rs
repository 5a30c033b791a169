//! What a node's runtime did, counted for a metrics endpoint: requests by direction, type and
//! outcome, undecodable requests by reason, and lookups by kind and outcome with histograms of
//! their duration and hops.
//!
//! Recorded where the work happens with relaxed atomic adds into fixed arrays (no lock, no
//! allocation), and read as an [`ActivitySnapshot`] when someone asks. The engine's own counters
//! (refusals, failures) and the node's state come from [`Status`](super::Status).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use macula_dht::dht::{LookupKind, LookupSummary};
use macula_dht::wire::{ErrorReason, Request};

#[cfg(doc)]
use super::Node;

/// Upper bounds of the lookup duration buckets, in microseconds (a lookup on loopback takes a
/// few hundred; the lookup timeout is 5 s by default).
pub const LOOKUP_DURATION_BOUNDS_US: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the lookup hops buckets.
pub const LOOKUP_HOPS_BOUNDS: [u64; 11] = [0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20];

/// Request types, in the order of [`Request::type_name`]'s variants.
const REQUEST_TYPES: [&str; 5] = ["ping", "find_node", "find_value", "store", "remove"];

/// Outcomes besides "ok" and the peer's error reasons: how a request this node sent failed.
const SEND_FAILURES: [&str; 6] = [
    "timeout",
    "unreachable",
    "wrong_peer",
    "failed",
    "bad_reply",
    "closed",
];

/// "ok", each [`ErrorReason`], then each of [`SEND_FAILURES`].
const OUTCOMES: usize = 1 + ErrorReason::ALL.len() + SEND_FAILURES.len();

/// Lookup outcomes: see [`LookupOutcome`].
const LOOKUP_OUTCOMES: [&str; 3] = ["ok", "timed_out", "no_answer"];

const LOOKUP_KINDS: [LookupKind; 2] = [LookupKind::FindNode, LookupKind::FindValue];

/// Which way a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A peer asked this node.
    Inbound,
    /// This node asked a peer.
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

/// A request's type, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestKind(usize);

impl RequestKind {
    pub(crate) fn of(request: &Request) -> RequestKind {
        RequestKind(match request {
            Request::Ping => 0,
            Request::FindNode { .. } => 1,
            Request::FindValue { .. } => 2,
            Request::Store { .. } => 3,
            Request::Remove { .. } => 4,
        })
    }

    /// The type's name on the wire.
    pub(crate) fn name(self) -> &'static str {
        REQUEST_TYPES[self.0]
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Answered with the reply its type calls for.
    Ok,
    /// Answered with an `error` reply.
    Refused(ErrorReason),
    /// Sent, and not answered in time.
    Timeout,
    /// Sent, and the peer could not be reached.
    Unreachable,
    /// Sent, and another node than the one expected answered.
    WrongPeer,
    /// Sent, and the exchange failed otherwise (the peer refused the connection or the stream).
    Failed,
    /// Sent, and the reply did not decode or was of another type.
    BadReply,
    /// Not answered because this node is closing.
    Closed,
}

impl RequestOutcome {
    fn index(self) -> usize {
        let failure = |n: usize| 1 + ErrorReason::ALL.len() + n;
        match self {
            RequestOutcome::Ok => 0,
            RequestOutcome::Refused(reason) => 1 + reason_index(reason),
            RequestOutcome::Timeout => failure(0),
            RequestOutcome::Unreachable => failure(1),
            RequestOutcome::WrongPeer => failure(2),
            RequestOutcome::Failed => failure(3),
            RequestOutcome::BadReply => failure(4),
            RequestOutcome::Closed => failure(5),
        }
    }

    /// `ok`, the reply's error reason (`forged_signature`, ...), `timeout`, `unreachable`,
    /// `wrong_peer`, `failed`, `bad_reply` or `closed`.
    pub fn name(self) -> &'static str {
        RequestOutcome::name_of(self.index())
    }

    /// The label of outcome `index` (the inverse of `index`).
    fn name_of(index: usize) -> &'static str {
        match index {
            0 => "ok",
            i if i <= ErrorReason::ALL.len() => ErrorReason::ALL[i - 1].name(),
            i => SEND_FAILURES[i - 1 - ErrorReason::ALL.len()],
        }
    }
}

/// How a lookup ended: `no_answer` when no peer answered (whether or not it timed out),
/// `timed_out` when it hit the lookup timeout with answers, else `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome {
    /// It ended on its own.
    Ok,
    /// It hit the lookup timeout and ended with what it had.
    TimedOut,
    /// No peer answered it.
    NoAnswer,
}

impl LookupOutcome {
    /// The outcome of the lookup `summary` describes.
    pub fn of(summary: &LookupSummary) -> LookupOutcome {
        if summary.answered == 0 {
            LookupOutcome::NoAnswer
        } else if summary.timed_out {
            LookupOutcome::TimedOut
        } else {
            LookupOutcome::Ok
        }
    }

    fn index(self) -> usize {
        match self {
            LookupOutcome::Ok => 0,
            LookupOutcome::TimedOut => 1,
            LookupOutcome::NoAnswer => 2,
        }
    }
}

/// The counters of one node, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Activity {
    /// `[direction][request type][outcome]`.
    requests: [[[AtomicU64; OUTCOMES]; REQUEST_TYPES.len()]; 2],
    /// Inbound frames that did not decode, by the reason answered.
    bad_requests: [AtomicU64; ErrorReason::ALL.len()],
    /// By [`LookupKind`]: find_node, find_value.
    lookups: [LookupCounters; 2],
}

#[derive(Debug)]
struct LookupCounters {
    outcomes: [AtomicU64; LOOKUP_OUTCOMES.len()],
    duration_us: Histogram<{ LOOKUP_DURATION_BOUNDS_US.len() + 1 }>,
    hops: Histogram<{ LOOKUP_HOPS_BOUNDS.len() + 1 }>,
}

/// Counts per bucket (not cumulative) and a sum; `B` is the number of bounds plus one (+Inf).
#[derive(Debug)]
struct Histogram<const B: usize> {
    bounds: &'static [u64],
    counts: [AtomicU64; B],
    sum: AtomicU64,
}

impl<const B: usize> Histogram<B> {
    fn new(bounds: &'static [u64]) -> Self {
        debug_assert_eq!(bounds.len() + 1, B);
        Histogram {
            bounds,
            counts: zeros(),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, count)| (self.bounds.get(i).copied(), count.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| zeros())),
            bad_requests: zeros(),
            lookups: std::array::from_fn(|_| LookupCounters {
                outcomes: zeros(),
                duration_us: Histogram::new(&LOOKUP_DURATION_BOUNDS_US),
                hops: Histogram::new(&LOOKUP_HOPS_BOUNDS),
            }),
        }
    }
}

impl Activity {
    /// One request that ended.
    pub(crate) fn request(&self, direction: Direction, kind: RequestKind, outcome: RequestOutcome) {
        self.requests[direction.index()][kind.0][outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One inbound frame that did not decode, answered with `reason`.
    pub(crate) fn bad_request(&self, reason: ErrorReason) {
        self.bad_requests[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// One lookup that ended.
    pub(crate) fn lookup(&self, summary: &LookupSummary) {
        let counters = &self.lookups[kind_index(summary.kind)];
        counters.outcomes[LookupOutcome::of(summary).index()].fetch_add(1, Ordering::Relaxed);
        counters.duration_us.observe(micros(summary.elapsed));
        counters.hops.observe(u64::from(summary.hops));
    }

    /// The counts so far; series that never moved are left out, except the lookup histograms.
    pub(crate) fn snapshot(&self) -> ActivitySnapshot {
        let mut requests = Vec::new();
        for direction in [Direction::Inbound, Direction::Outbound] {
            for (t, outcomes) in self.requests[direction.index()].iter().enumerate() {
                for (o, count) in outcomes.iter().enumerate() {
                    let count = count.load(Ordering::Relaxed);
                    if count > 0 {
                        requests.push(RequestCount {
                            direction,
                            request: REQUEST_TYPES[t],
                            outcome: RequestOutcome::name_of(o),
                            count,
                        });
                    }
                }
            }
        }
        let bad_requests = ErrorReason::ALL
            .iter()
            .zip(&self.bad_requests)
            .map(|(reason, count)| (reason.name(), count.load(Ordering::Relaxed)))
            .filter(|&(_, count)| count > 0)
            .collect();
        let lookups = LOOKUP_KINDS
            .iter()
            .zip(&self.lookups)
            .map(|(&kind, counters)| LookupCounts {
                kind,
                outcomes: LOOKUP_OUTCOMES
                    .iter()
                    .zip(&counters.outcomes)
                    .map(|(&name, count)| (name, count.load(Ordering::Relaxed)))
                    .collect(),
                duration_us: counters.duration_us.snapshot(),
                hops: counters.hops.snapshot(),
            })
            .collect();
        ActivitySnapshot {
            requests,
            bad_requests,
            lookups,
        }
    }
}

/// The counts of a node's requests and lookups at one moment ([`Node::activity`]). Each series is read on its own, so a
/// request that ends while the snapshot is taken may show in one series and not yet in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivitySnapshot {
    /// Requests that ended, by direction, type and outcome; only those that happened.
    pub requests: Vec<RequestCount>,
    /// Inbound frames that did not decode, by the reason answered (`malformed`, ...); only
    /// reasons that happened.
    pub bad_requests: Vec<(&'static str, u64)>,
    /// Lookups of each kind.
    pub lookups: Vec<LookupCounts>,
}

/// How many requests of one type ended one way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCount {
    /// Which way they went.
    pub direction: Direction,
    /// The request type on the wire (`ping`, `find_node`, `find_value`, `store`, `remove`).
    pub request: &'static str,
    /// `ok`; an error reason of the reply (`forged_signature`, `rate_limited`, ...); or, for
    /// outbound requests, `timeout`, `unreachable`, `wrong_peer`, `failed`, `bad_reply` or
    /// `closed` (this node was closing).
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// The lookups of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupCounts {
    /// Which kind.
    pub kind: LookupKind,
    /// Lookups by outcome (`ok`, `timed_out`, `no_answer`: see [`LookupOutcome`]), every outcome
    /// listed.
    pub outcomes: Vec<(&'static str, u64)>,
    /// Their durations, in microseconds.
    pub duration_us: HistogramSnapshot,
    /// Their hops: the longest chain of answers that led to a queried peer.
    pub hops: HistogramSnapshot,
}

/// A histogram's buckets and sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound, count)` in ascending order, the last one unbounded (`None`); each count is
    /// of its bucket alone, not cumulative.
    pub buckets: Vec<(Option<u64>, u64)>,
    /// The sum of the values observed.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Values observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, count)| count).sum()
    }
}

/// The reason's place in [`ErrorReason::ALL`], which lists them in declaration order.
fn reason_index(reason: ErrorReason) -> usize {
    reason as usize
}

fn kind_index(kind: LookupKind) -> usize {
    match kind {
        LookupKind::FindNode => 0,
        LookupKind::FindValue => 1,
    }
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use macula_dht::NodeId;

    fn summary(
        kind: LookupKind,
        answered: usize,
        timed_out: bool,
        ms: u64,
        hops: u32,
    ) -> LookupSummary {
        LookupSummary {
            kind,
            target: NodeId([0; 32]),
            providers: 0,
            queried: 3,
            answered,
            failed: 3 - answered,
            hops,
            elapsed: Duration::from_millis(ms),
            timed_out,
        }
    }

    #[test]
    fn reasons_are_indexed_by_their_place_in_all() {
        for (i, reason) in ErrorReason::ALL.into_iter().enumerate() {
            assert_eq!(reason_index(reason), i, "{reason:?}");
        }
    }

    #[test]
    fn request_types_are_labelled_as_on_the_wire() {
        let key = vec![1];
        let target = NodeId([1; 32]);
        for request in [
            Request::Ping,
            Request::FindNode { target },
            Request::FindValue { key },
        ] {
            assert_eq!(RequestKind::of(&request).name(), request.type_name());
        }
        assert_eq!(REQUEST_TYPES[3], "store");
        assert_eq!(REQUEST_TYPES[4], "remove");
    }

    #[test]
    fn every_outcome_has_its_own_label() {
        let names: Vec<&str> = (0..OUTCOMES).map(RequestOutcome::name_of).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), OUTCOMES, "{names:?}");
        for outcome in [
            RequestOutcome::Ok,
            RequestOutcome::Refused(ErrorReason::RateLimited),
            RequestOutcome::Timeout,
            RequestOutcome::BadReply,
        ] {
            let name = outcome.name();
            let expected = match outcome {
                RequestOutcome::Ok => "ok",
                RequestOutcome::Refused(_) => "rate_limited",
                RequestOutcome::Timeout => "timeout",
                _ => "bad_reply",
            };
            assert_eq!(name, expected);
        }
    }

    #[test]
    fn requests_are_counted_by_direction_type_and_outcome() {
        let activity = Activity::default();
        let ping = RequestKind::of(&Request::Ping);
        let find_value = RequestKind::of(&Request::FindValue { key: vec![1] });
        activity.request(Direction::Inbound, ping, RequestOutcome::Ok);
        activity.request(Direction::Inbound, ping, RequestOutcome::Ok);
        activity.request(Direction::Outbound, find_value, RequestOutcome::Timeout);
        activity.request(
            Direction::Outbound,
            find_value,
            RequestOutcome::Refused(ErrorReason::Limit),
        );
        activity.bad_request(ErrorReason::Malformed);
        let snapshot = activity.snapshot();
        let counts: Vec<(&str, &str, &str, u64)> = snapshot
            .requests
            .iter()
            .map(|r| (r.direction.name(), r.request, r.outcome, r.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("inbound", "ping", "ok", 2),
                ("outbound", "find_value", "limit", 1),
                ("outbound", "find_value", "timeout", 1),
            ]
        );
        assert_eq!(snapshot.bad_requests, [("malformed", 1)]);
    }

    #[test]
    fn lookups_fill_their_kind_outcome_and_buckets() {
        let activity = Activity::default();
        activity.lookup(&summary(LookupKind::FindValue, 2, false, 3, 2));
        activity.lookup(&summary(LookupKind::FindValue, 1, true, 5_000, 4));
        activity.lookup(&summary(LookupKind::FindNode, 0, true, 5_000, 0));
        let snapshot = activity.snapshot();
        let [find_node, find_value] = &snapshot.lookups[..] else {
            panic!("two kinds: {snapshot:?}");
        };
        assert_eq!(find_node.kind, LookupKind::FindNode);
        assert_eq!(
            find_node.outcomes,
            [("ok", 0), ("timed_out", 0), ("no_answer", 1)]
        );
        assert_eq!(
            find_value.outcomes,
            [("ok", 1), ("timed_out", 1), ("no_answer", 0)]
        );
        assert_eq!(find_value.duration_us.count(), 2);
        assert_eq!(find_value.duration_us.sum, 5_003_000);
        // 3 ms falls in the 5 ms bucket; 5 s exactly in the 5 s bucket (bounds are inclusive).
        let in_bucket = |h: &HistogramSnapshot, bound: u64| {
            h.buckets
                .iter()
                .find(|(b, _)| *b == Some(bound))
                .map(|&(_, n)| n)
        };
        assert_eq!(in_bucket(&find_value.duration_us, 5_000), Some(1));
        assert_eq!(in_bucket(&find_value.duration_us, 5_000_000), Some(1));
        assert_eq!(in_bucket(&find_value.hops, 2), Some(1));
        assert_eq!(in_bucket(&find_value.hops, 4), Some(1));
        assert_eq!(find_value.hops.sum, 6);
        assert_eq!(find_node.hops.buckets.last(), Some(&(None, 0)));
    }

    #[test]
    fn values_past_the_last_bound_go_to_the_unbounded_bucket() {
        let activity = Activity::default();
        activity.lookup(&summary(LookupKind::FindNode, 1, false, 60_000, 40));
        let lookups = activity.snapshot().lookups;
        assert_eq!(lookups[0].duration_us.buckets.last(), Some(&(None, 1)));
        assert_eq!(lookups[0].hops.buckets.last(), Some(&(None, 1)));
    }
}
