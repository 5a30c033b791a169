//! The iterative Kademlia lookup (FIND_NODE / FIND_VALUE) as a sans-IO state machine.
//!
//! Finding the nodes closest to a key, or the providers stored near it, takes rounds of queries
//! across the network: ask the closest nodes known, learn closer ones from their answers, ask
//! those, until the k closest known have all answered. That logic lives here once, without
//! sockets, timers or threads, so the runtime (tokio + quinn) drives it over the network and a
//! simulation drives thousands of lookups in memory with the same code.
//!
//! The caller loop: send what [`Lookup::next_queries`] hands out; report each answer with
//! [`Lookup::on_response`] and each error or timeout with [`Lookup::on_failure`]; call
//! `next_queries` again after every report; stop when [`Lookup::is_finished`], then read
//! [`Lookup::outcome`]. Timeouts are the caller's: this module has no clock.
//!
//! Semantics are those of libp2p's and mainline's closest-peers iterators: candidates ordered by
//! XOR distance to the target, at most `alpha` queries in flight, each peer queried at most once,
//! only candidates among the k closest non-failed ones are queried, and the lookup ends when none
//! of those is left unqueried and nothing is in flight. Every collection is bounded: candidates by
//! `max_candidates`, queries by `max_queries`, providers by `max_providers`, in flight by `alpha`.

use hashbrown::HashSet;

use crate::id::{halves, Distance, NodeId};

/// Parameters of one [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupConfig {
    /// Number of closest nodes wanted (and replication width): the lookup ends when the `k`
    /// closest non-failed candidates have all answered. At least 1.
    pub k: usize,
    /// Most queries in flight at once. At least 1.
    pub alpha: usize,
    /// FIND_VALUE: stop as soon as this many distinct providers are known. `None`: run to
    /// convergence (FIND_NODE, or FIND_VALUE collecting every provider met on the way).
    pub want_providers: Option<usize>,
    /// Bound on the candidate set. Raised to at least `k + alpha` so that in-flight peers and the
    /// `k` closest answered peers are never evicted.
    pub max_candidates: usize,
    /// Bound on the queries one lookup sends. Once reached, no more are sent and the lookup ends
    /// when the in-flight ones are settled.
    pub max_queries: usize,
    /// Bound on the providers kept; later distinct providers are ignored. A `want_providers`
    /// above it is reached at `max_providers`.
    pub max_providers: usize,
    /// The local node's id: never queried, never a candidate.
    pub local: Option<NodeId>,
}

impl Default for LookupConfig {
    /// k = 20, alpha = 3, run to convergence, 8·k = 160 candidates, 16·k = 320 queries (a lookup
    /// in a simulated 10 000-node network with a fifth of it dead takes about 30), 1000 providers
    /// (the store's per-key cap), no local id.
    fn default() -> Self {
        LookupConfig {
            k: 20,
            alpha: 3,
            want_providers: None,
            max_candidates: 160,
            max_queries: 320,
            max_providers: 1_000,
            local: None,
        }
    }
}

/// A provider record met during a lookup, as the answering peer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundProvider {
    /// What deduplicates providers (e.g. the provider's `node_id` bytes), as the caller gave it.
    pub identity: Vec<u8>,
    /// The opaque record (e.g. the provider's ETF term).
    pub record: Vec<u8>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<A> {
    /// Up to `k` peers that answered, closest to the target first.
    pub closest: Vec<(NodeId, A)>,
    /// Distinct providers (first record seen per identity), in arrival order.
    pub providers: Vec<FoundProvider>,
    /// Longest chain of answers that led to a queried peer: a seed is hop 1, a peer first learnt
    /// from a seed's answer hop 2, and so on. 0 when nothing was queried.
    pub hops: u32,
    /// Hops on the path to what the lookup was for: the hop of the peer whose answer brought the
    /// first provider, else of the closest peer that answered. 0 when no peer answered.
    pub path_hops: u32,
    /// Queries sent.
    pub queried: usize,
    /// Queries answered.
    pub answered: usize,
    /// Queries that failed or timed out.
    pub failed: usize,
}

/// One iterative lookup towards `target`. `A` is the peer address type: `SocketAddr` in the
/// runtime, a plain index in a simulation.
#[derive(Debug, Clone)]
pub struct Lookup<A> {
    target: NodeId,
    config: LookupConfig,
    /// Ascending distance to the target; distinct ids (XOR with the target is a bijection, so
    /// distinct distances too). Failed peers are removed. At most `config.max_candidates`.
    candidates: Vec<Candidate<A>>,
    /// The distance of each candidate, in the same order: what a binary search reads, packed
    /// apart from the rest (the hot path of a lookup is that search).
    distances: Vec<(u128, u128)>,
    /// Ids never to be added again: every peer queried, and every candidate reported failed.
    /// At most `max_queries` + the candidates reported failed before being queried.
    excluded: HashSet<NodeId>,
    in_flight: usize,
    /// Queries out longer than their peer usually takes: still awaited, but their slots are
    /// given to the next candidates, so a dead peer does not hold the lookup back.
    stalled: usize,
    providers: Vec<FoundProvider>,
    provider_ids: HashSet<Vec<u8>>,
    hops: u32,
    /// The hop of the peer whose answer brought the first provider.
    first_provider_hop: Option<u32>,
    queried: usize,
    answered: usize,
    failed: usize,
}

#[derive(Debug, Clone)]
struct Candidate<A> {
    id: NodeId,
    addr: A,
    state: State,
    /// 1 for a seed, else 1 + the hop of the peer whose answer introduced it first.
    hop: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Stalled,
    /// Asked, though it failed its last request to this node: holds no slot, and the lookup
    /// does not wait for it to end (see [`Lookup::unawaited`]).
    Unawaited,
    Answered,
}

impl<A: Clone> Lookup<A> {
    /// A lookup of `target` starting from `seeds` (typically the local routing table's
    /// `closest(target, k)`). Out-of-range config values are raised to their minimum (see
    /// [`LookupConfig`]); the local id and duplicate seeds are skipped.
    pub fn new(
        target: NodeId,
        mut config: LookupConfig,
        seeds: impl IntoIterator<Item = (NodeId, A)>,
    ) -> Self {
        config.k = config.k.max(1);
        config.alpha = config.alpha.max(1);
        config.max_candidates = config.max_candidates.max(config.k + config.alpha);
        let mut lookup = Lookup {
            target,
            candidates: Vec::with_capacity(config.max_candidates + 1),
            distances: Vec::with_capacity(config.max_candidates + 1),
            config,
            excluded: HashSet::new(),
            in_flight: 0,
            stalled: 0,
            providers: Vec::new(),
            provider_ids: HashSet::new(),
            hops: 0,
            first_provider_hop: None,
            queried: 0,
            answered: 0,
            failed: 0,
        };
        for (id, addr) in seeds {
            lookup.offer(id, addr, 1);
        }
        lookup
    }

    /// The id looked up.
    pub fn target(&self) -> &NodeId {
        &self.target
    }

    /// The config in force (after raising out-of-range values).
    pub fn config(&self) -> &LookupConfig {
        &self.config
    }

    /// Queries sent and not yet answered or failed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next peers to query, closest first, keeping at most `alpha` in flight; each returned
    /// peer is marked in flight. Empty when nothing more should be sent now (the lookup is
    /// finished, or waits for answers).
    pub fn next_queries(&mut self) -> Vec<(NodeId, A)> {
        if self.is_finished() {
            return Vec::new();
        }
        let budget = self
            .config
            .alpha
            .saturating_sub(self.in_flight)
            .min(self.config.max_queries.saturating_sub(self.queried));
        let mut out = Vec::with_capacity(budget);
        if budget == 0 {
            return out;
        }
        // Failed peers are not in `candidates`, so its first k (leaving out the unawaited) are
        // the k closest that may still be waited for.
        let window = self
            .candidates
            .iter_mut()
            .filter(|c| c.state != State::Unawaited)
            .take(self.config.k);
        for c in window {
            if c.state != State::Waiting {
                continue;
            }
            c.state = State::InFlight;
            self.excluded.insert(c.id);
            self.hops = self.hops.max(c.hop);
            out.push((c.id, c.addr.clone()));
            if out.len() == budget {
                break;
            }
        }
        self.in_flight += out.len();
        self.queried += out.len();
        out
    }

    /// `peer` answered with closer `nodes` and, for FIND_VALUE, `providers` as (identity, record)
    /// pairs; providers are deduplicated by identity, the first record seen is kept. Ignored
    /// unless `peer` is in flight. Once enough providers are known the answer only frees its
    /// slot. At most `max_candidates` nodes and `max_providers` providers of one answer are read.
    pub fn on_response(
        &mut self,
        peer: &NodeId,
        nodes: impl IntoIterator<Item = (NodeId, A)>,
        providers: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) {
        let Some(at) = self.position(peer) else {
            return;
        };
        let Some(c) = self.candidates.get_mut(at) else {
            return;
        };
        match c.state {
            State::InFlight => self.in_flight -= 1,
            State::Stalled | State::Unawaited => self.stalled -= 1,
            State::Waiting | State::Answered => return,
        }
        c.state = State::Answered;
        let answered_hop = c.hop;
        let hop = answered_hop.saturating_add(1);
        self.answered += 1;
        if self.providers_reached() {
            return;
        }
        for (identity, record) in providers.into_iter().take(self.config.max_providers) {
            if self.providers.len() >= self.config.max_providers {
                break;
            }
            if !self.provider_ids.contains(&identity) {
                self.provider_ids.insert(identity.clone());
                self.providers.push(FoundProvider { identity, record });
                self.first_provider_hop.get_or_insert(answered_hop);
            }
        }
        if self.providers_reached() {
            return;
        }
        for (id, addr) in nodes.into_iter().take(self.config.max_candidates) {
            self.offer(id, addr, hop);
        }
    }

    /// `peer` failed or timed out: its slot is freed and it is never queried or reconsidered.
    /// A candidate not yet queried may be reported too (known dead): it is dropped. A peer that
    /// already answered keeps its answer.
    pub fn on_failure(&mut self, peer: &NodeId) {
        let Some(at) = self.position(peer) else {
            return;
        };
        let Some(c) = self.candidates.get(at) else {
            return;
        };
        match c.state {
            State::Answered => return,
            State::InFlight => {
                self.in_flight -= 1;
                self.failed += 1;
            }
            State::Stalled | State::Unawaited => {
                self.stalled -= 1;
                self.failed += 1;
            }
            State::Waiting => {
                self.excluded.insert(c.id);
            }
        }
        self.remove(at);
    }

    /// `peer`'s query is out longer than that peer usually takes to answer: its slot goes to the
    /// next candidate, while its answer (or failure) is still awaited and counted. Ignored
    /// unless `peer` is in flight.
    pub fn stalled(&mut self, peer: &NodeId) {
        let Some(c) = self
            .position(peer)
            .and_then(|at| self.candidates.get_mut(at))
        else {
            return;
        };
        if c.state == State::InFlight {
            c.state = State::Stalled;
            self.in_flight -= 1;
            self.stalled += 1;
        }
    }

    /// `peer`, just asked, failed its last request to this node and has not answered since: it
    /// is likely dead. Its query holds no slot and the lookup ends without it once the others
    /// allow (its answer still counts if it comes first), so a peer that died unseen by the
    /// ones offering it costs no wait. Ignored unless `peer` is in flight.
    pub fn unawaited(&mut self, peer: &NodeId) {
        self.stalled(peer);
        if let Some(c) = self
            .position(peer)
            .and_then(|at| self.candidates.get_mut(at))
            .filter(|c| c.state == State::Stalled)
        {
            c.state = State::Unawaited;
        }
    }

    /// Whether the lookup stopped holding a slot for `peer`'s query (stalled or unawaited).
    pub fn is_late(&self, peer: &NodeId) -> bool {
        self.position(peer)
            .and_then(|at| self.candidates.get(at))
            .is_some_and(|c| matches!(c.state, State::Stalled | State::Unawaited))
    }

    /// True when enough providers are known (`want_providers`); or when the k closest
    /// non-failed candidates, leaving out the unawaited, have all answered (queries still out to
    /// farther peers are not waited for); or when nothing is in flight (stalled, unawaited or
    /// not) and no candidate among the k closest is left unqueried (which covers "every peer
    /// failed"), or `max_queries` were sent.
    pub fn is_finished(&self) -> bool {
        if self.providers_reached() {
            return true;
        }
        let mut awaited = self
            .candidates
            .iter()
            .filter(|c| c.state != State::Unawaited)
            .take(self.config.k)
            .peekable();
        // With no candidate but the unawaited, they are all there is to wait for.
        if awaited.peek().is_some() && awaited.clone().all(|c| c.state == State::Answered) {
            return true;
        }
        if self.in_flight > 0 || self.stalled > 0 {
            return false;
        }
        self.queried >= self.config.max_queries || !awaited.any(|c| c.state == State::Waiting)
    }

    /// What was found so far (final once [`Lookup::is_finished`]).
    pub fn outcome(&self) -> Outcome<A> {
        Outcome {
            path_hops: self.path_hops(),
            closest: self
                .candidates
                .iter()
                .filter(|c| c.state == State::Answered)
                .take(self.config.k)
                .map(|c| (c.id, c.addr.clone()))
                .collect(),
            providers: self.providers.clone(),
            hops: self.hops,
            queried: self.queried,
            answered: self.answered,
            failed: self.failed,
        }
    }

    /// [`Lookup::outcome`] without copying the providers.
    pub fn into_outcome(self) -> Outcome<A> {
        let k = self.config.k;
        Outcome {
            path_hops: self.path_hops(),
            closest: self
                .candidates
                .into_iter()
                .filter(|c| c.state == State::Answered)
                .take(k)
                .map(|c| (c.id, c.addr))
                .collect(),
            providers: self.providers,
            hops: self.hops,
            queried: self.queried,
            answered: self.answered,
            failed: self.failed,
        }
    }

    fn path_hops(&self) -> u32 {
        self.first_provider_hop
            .or_else(|| {
                let mut answered = self
                    .candidates
                    .iter()
                    .filter(|c| c.state == State::Answered);
                answered.next().map(|c| c.hop)
            })
            .unwrap_or(0)
    }

    fn providers_reached(&self) -> bool {
        self.config
            .want_providers
            .is_some_and(|want| self.providers.len() >= want.min(self.config.max_providers))
    }

    fn position(&self, id: &NodeId) -> Option<usize> {
        self.distances
            .binary_search(&key(&id.distance(&self.target)))
            .ok()
    }

    fn remove(&mut self, at: usize) {
        self.candidates.remove(at);
        self.distances.remove(at);
    }

    /// Adds a candidate unless it is the local id, already known, queried or failed; then keeps
    /// the set within its bound.
    fn offer(&mut self, id: NodeId, addr: A, hop: u32) {
        let distance = key(&id.distance(&self.target));
        // Known candidates are the common case in a converging lookup: rule them out first. A
        // shorter chain of answers to a known one lowers its hop (answers come in the order of
        // their round trips, not of their chains).
        let at = match self.distances.binary_search(&distance) {
            Ok(known) => {
                if let Some(c) = self.candidates.get_mut(known) {
                    c.hop = c.hop.min(hop);
                }
                return;
            }
            Err(at) => at,
        };
        if self.config.local == Some(id) || self.excluded.contains(&id) {
            return;
        }
        let candidate = Candidate {
            id,
            addr,
            state: State::Waiting,
            hop,
        };
        self.candidates.insert(at, candidate);
        self.distances.insert(at, distance);
        if self.candidates.len() > self.config.max_candidates {
            self.evict_one();
        }
    }

    /// Drops the farthest candidate that is neither in flight nor among the k closest answered
    /// (those are the result). One always exists: at most `alpha + k` are protected and the set
    /// holds `max_candidates + 1 > k + alpha` here.
    fn evict_one(&mut self) {
        let k = self.config.k;
        let mut answered = 0;
        let mut last_result = None;
        for (i, c) in self.candidates.iter().enumerate() {
            if c.state == State::Answered {
                answered += 1;
                if answered == k {
                    last_result = Some(i);
                    break;
                }
            }
        }
        let protected_until = last_result.unwrap_or(usize::MAX);
        let victim = self
            .candidates
            .iter()
            .enumerate()
            .rev()
            .find(|(i, c)| match c.state {
                State::Waiting => true,
                State::InFlight | State::Stalled | State::Unawaited => false,
                State::Answered => *i > protected_until,
            })
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.remove(i);
        }
    }
}

/// A distance as two big-endian `u128` halves, which order exactly as its bytes do.
fn key(d: &Distance) -> (u128, u128) {
    halves(&d.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ID_LEN;

    /// An id at distance `d` (big-endian in the last 8 bytes) from the zero target.
    fn id(d: u64) -> NodeId {
        let mut b = [0u8; ID_LEN];
        b[ID_LEN - 8..].copy_from_slice(&d.to_be_bytes());
        NodeId(b)
    }

    fn target() -> NodeId {
        id(0)
    }

    fn config(k: usize, alpha: usize) -> LookupConfig {
        LookupConfig {
            k,
            alpha,
            ..LookupConfig::default()
        }
    }

    fn peers(ds: impl IntoIterator<Item = u64>) -> Vec<(NodeId, u64)> {
        ds.into_iter().map(|d| (id(d), d)).collect()
    }

    fn ids(q: &[(NodeId, u64)]) -> Vec<u64> {
        q.iter().map(|(_, a)| *a).collect()
    }

    const NO_PROVIDERS: [(Vec<u8>, Vec<u8>); 0] = [];

    #[test]
    fn alpha_bound_is_respected() {
        let mut l = Lookup::new(target(), config(20, 3), peers(1..=10));
        assert_eq!(ids(&l.next_queries()), vec![1, 2, 3]);
        assert!(l.next_queries().is_empty());
        assert_eq!(l.in_flight(), 3);
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![4]);
        assert!(l.next_queries().is_empty());
        assert_eq!(l.in_flight(), 3);
    }

    #[test]
    fn a_stalled_query_gives_its_slot_away_and_is_still_awaited() {
        let mut l = Lookup::new(target(), config(3, 2), peers(1..=4));
        assert_eq!(ids(&l.next_queries()), vec![1, 2]);
        l.stalled(&id(1));
        l.stalled(&id(1));
        l.stalled(&id(9));
        assert_eq!(l.in_flight(), 1, "stalled twice or unknown: counted once");
        assert_eq!(ids(&l.next_queries()), vec![3]);
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        l.on_response(&id(3), peers([]), NO_PROVIDERS);
        assert!(
            l.next_queries().is_empty(),
            "the 3 closest are asked, one still out"
        );
        assert!(!l.is_finished(), "the stalled one may still answer");
        l.on_response(&id(1), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        assert_eq!(l.outcome().answered, 3);

        // A stalled query that fails is counted as failed, and the next candidate is asked.
        let mut l = Lookup::new(target(), config(2, 1), peers(1..=3));
        assert_eq!(ids(&l.next_queries()), vec![1]);
        l.stalled(&id(1));
        assert_eq!(ids(&l.next_queries()), vec![2]);
        l.on_failure(&id(1));
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![3]);
        l.on_response(&id(3), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        assert_eq!((l.outcome().answered, l.outcome().failed), (2, 1));
    }

    #[test]
    fn an_unawaited_query_holds_no_slot_and_the_lookup_ends_without_it() {
        let mut l = Lookup::new(target(), config(2, 1), peers(1..=3));
        assert_eq!(ids(&l.next_queries()), vec![1]);
        l.unawaited(&id(1));
        assert!(l.is_late(&id(1)));
        assert_eq!(ids(&l.next_queries()), vec![2], "its slot is free at once");
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert!(!l.is_finished(), "2 and 3 are the 2 closest awaited");
        assert_eq!(ids(&l.next_queries()), vec![3]);
        l.on_response(&id(3), peers([]), NO_PROVIDERS);
        assert!(l.is_finished(), "1 is closer but not waited for");
        assert_eq!(l.outcome().answered, 2);

        // Its answer, if it comes first, counts as any other.
        let mut l = Lookup::new(target(), config(2, 2), peers(1..=3));
        assert_eq!(ids(&l.next_queries()), vec![1, 2]);
        l.unawaited(&id(1));
        l.on_response(&id(1), peers([]), NO_PROVIDERS);
        assert!(!l.is_late(&id(1)));
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        let closest: Vec<u64> = l.outcome().closest.iter().map(|(_, a)| *a).collect();
        assert_eq!(closest, vec![1, 2]);
    }

    #[test]
    fn with_only_unawaited_peers_left_the_lookup_waits_for_them() {
        let mut l = Lookup::new(target(), config(3, 3), peers([1, 2]));
        assert_eq!(ids(&l.next_queries()), vec![1, 2]);
        l.unawaited(&id(1));
        l.unawaited(&id(2));
        assert!(!l.is_finished(), "they are all there is");
        l.on_failure(&id(1));
        assert!(!l.is_finished());
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        assert_eq!((l.outcome().answered, l.outcome().failed), (1, 1));
    }

    #[test]
    fn ends_when_the_k_closest_answered_whatever_is_still_out() {
        let mut l = Lookup::new(target(), config(2, 2), peers([2, 3, 4]));
        assert_eq!(ids(&l.next_queries()), vec![2, 3]);
        // 2 offers a closer peer: the two closest are now 1 and 2, while 3 is still out.
        l.on_response(&id(2), peers([1]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![1]);
        assert!(!l.is_finished());
        l.on_response(&id(1), peers([]), NO_PROVIDERS);
        assert!(
            l.is_finished(),
            "the 2 closest answered; 3 is not waited for"
        );
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn never_queries_self_or_a_peer_twice() {
        let local = id(5);
        let cfg = LookupConfig {
            local: Some(local),
            ..config(20, 2)
        };
        let mut l = Lookup::new(target(), cfg, peers([5, 7, 9, 7]));
        let mut sent = Vec::new();
        while !l.is_finished() {
            let q = l.next_queries();
            assert!(
                !q.is_empty(),
                "not finished, so something must be in flight or sent"
            );
            for (peer, _) in q {
                sent.push(peer);
                // Every answer offers self, the peer itself and already-queried peers again.
                l.on_response(&peer, peers([5, 7, 9, 3]), NO_PROVIDERS);
            }
        }
        let mut unique = sent.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            sent.len(),
            "a peer was queried twice: {sent:?}"
        );
        assert!(!sent.contains(&local));
        assert_eq!(unique, vec![id(3), id(7), id(9)]);
        let out = l.outcome();
        assert_eq!(ids(&out.closest), vec![3, 7, 9]);
        assert_eq!(out.queried, 3);
    }

    #[test]
    fn failure_frees_a_slot_and_the_lookup_moves_on() {
        let mut l = Lookup::new(target(), config(2, 1), peers([1, 2, 3]));
        assert_eq!(ids(&l.next_queries()), vec![1]);
        l.on_failure(&id(1));
        assert_eq!(l.in_flight(), 0);
        assert_eq!(ids(&l.next_queries()), vec![2]);
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        // Peer 1 failed, so the 2 closest non-failed are 2 and 3.
        assert_eq!(ids(&l.next_queries()), vec![3]);
        l.on_failure(&id(3));
        // A failed peer offered again is not reconsidered.
        l.on_response(&id(1), peers([1]), NO_PROVIDERS);
        assert!(l.is_finished());
        let out = l.outcome();
        assert_eq!(ids(&out.closest), vec![2]);
        assert_eq!((out.queried, out.answered, out.failed), (3, 1, 2));
        // A late answer of a failed peer changes nothing.
        l.on_response(&id(3), peers([4]), NO_PROVIDERS);
        assert!(l.next_queries().is_empty());
    }

    #[test]
    fn only_the_k_closest_are_queried_and_closer_answers_move_the_window() {
        let mut l = Lookup::new(target(), config(2, 3), peers([10, 20, 30]));
        assert_eq!(ids(&l.next_queries()), vec![10, 20]);
        l.on_response(&id(10), peers([5, 6]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![5, 6]);
        l.on_response(&id(20), peers([]), NO_PROVIDERS);
        l.on_response(&id(5), peers([]), NO_PROVIDERS);
        assert!(!l.is_finished(), "6 is still in flight");
        l.on_response(&id(6), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        let out = l.outcome();
        assert_eq!(ids(&out.closest), vec![5, 6]);
        assert_eq!(out.queried, 4);
        assert_eq!(out.hops, 2);
    }

    #[test]
    fn stops_early_with_want_providers() {
        let cfg = LookupConfig {
            want_providers: Some(2),
            ..config(20, 3)
        };
        let mut l = Lookup::new(target(), cfg, peers(1..=10));
        let q = l.next_queries();
        assert_eq!(q.len(), 3);
        l.on_response(&id(1), peers([100]), [(b"a".to_vec(), b"ra".to_vec())]);
        assert!(!l.is_finished());
        l.on_response(&id(2), peers([]), [(b"b".to_vec(), b"rb".to_vec())]);
        assert!(
            l.is_finished(),
            "two providers known, peer 3 still in flight"
        );
        assert!(l.next_queries().is_empty());
        // The straggler's providers are ignored.
        l.on_response(&id(3), peers([]), [(b"c".to_vec(), b"rc".to_vec())]);
        let out = l.outcome();
        let found: Vec<&[u8]> = out.providers.iter().map(|p| &p.identity[..]).collect();
        assert_eq!(found, vec![&b"a"[..], b"b"]);
        assert_eq!(out.queried, 3);
    }

    #[test]
    fn terminates_when_all_seeds_fail() {
        let mut l = Lookup::new(target(), config(20, 3), peers(1..=5));
        let mut rounds = 0;
        while !l.is_finished() {
            rounds += 1;
            assert!(rounds < 10);
            for (peer, _) in l.next_queries() {
                l.on_failure(&peer);
            }
        }
        let out = l.outcome();
        assert!(out.closest.is_empty());
        assert_eq!((out.queried, out.failed), (5, 5));
        // No seeds at all: finished at once.
        let empty: Lookup<u64> = Lookup::new(target(), config(20, 3), []);
        assert!(empty.is_finished());
        assert_eq!(empty.outcome().hops, 0);
    }

    #[test]
    fn providers_are_deduplicated_first_record_kept() {
        let mut l = Lookup::new(target(), config(20, 3), peers([1, 2]));
        l.next_queries();
        let p = |i: &str, r: &str| (i.as_bytes().to_vec(), r.as_bytes().to_vec());
        l.on_response(
            &id(1),
            peers([]),
            [p("x", "x1"), p("y", "y1"), p("x", "x2")],
        );
        l.on_response(&id(2), peers([]), [p("y", "y2"), p("z", "z1")]);
        assert!(l.is_finished());
        let out = l.into_outcome();
        let got: Vec<(&[u8], &[u8])> = out
            .providers
            .iter()
            .map(|f| (&f.identity[..], &f.record[..]))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"x"[..], &b"x1"[..]),
                (&b"y"[..], &b"y1"[..]),
                (&b"z"[..], &b"z1"[..])
            ]
        );
    }

    #[test]
    fn providers_and_queries_are_bounded() {
        let cfg = LookupConfig {
            max_providers: 2,
            max_queries: 4,
            ..config(20, 3)
        };
        let mut l = Lookup::new(target(), cfg, peers(1..=10));
        let many = (0..100u8).map(|i| (vec![i], vec![i]));
        let q = l.next_queries();
        l.on_response(&q[0].0, peers([]), many);
        assert_eq!(l.outcome().providers.len(), 2);
        assert_eq!(l.next_queries().len(), 1, "4 queries at most");
        assert!(l.next_queries().is_empty());
        for (peer, _) in q.iter().skip(1) {
            l.on_failure(peer);
        }
        assert!(!l.is_finished(), "the 4th query is in flight");
        l.on_failure(&id(4));
        assert!(l.is_finished());
        assert_eq!(l.outcome().queried, 4);
    }

    #[test]
    fn candidate_set_is_bounded_and_keeps_the_results() {
        let cfg = LookupConfig {
            max_candidates: 1,
            ..config(2, 2)
        };
        let mut l = Lookup::new(target(), cfg, peers([100, 200]));
        // Raised to k + alpha.
        assert_eq!(l.config().max_candidates, 4);
        assert_eq!(ids(&l.next_queries()), vec![100, 200]);
        l.on_response(&id(100), peers([]), NO_PROVIDERS);
        l.on_response(&id(200), peers(1..=50), NO_PROVIDERS);
        // Only the first max_candidates nodes of an answer are read, and the two answered peers
        // (the current result) are kept while the farthest waiting candidates are evicted.
        let kept: Vec<u64> = l
            .candidates
            .iter()
            .map(|c| u64::from_be_bytes(c.id.0[ID_LEN - 8..].try_into().unwrap()))
            .collect();
        assert_eq!(kept, vec![1, 2, 100, 200]);
        assert_eq!(ids(&l.next_queries()), vec![1, 2]);
        l.on_response(&id(1), peers([]), NO_PROVIDERS);
        l.on_response(&id(2), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        assert_eq!(ids(&l.outcome().closest), vec![1, 2]);
    }

    #[test]
    fn hops_follow_the_chain_of_answers() {
        let mut l = Lookup::new(target(), config(1, 1), peers([64]));
        for step in [32, 16, 8] {
            let q = l.next_queries();
            assert_eq!(q.len(), 1);
            l.on_response(&q[0].0, peers([step]), NO_PROVIDERS);
        }
        let q = l.next_queries();
        l.on_response(&q[0].0, peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        let out = l.outcome();
        assert_eq!(out.hops, 4);
        assert_eq!(out.path_hops, 4, "the closest, 8, was hop 4");
        assert_eq!(ids(&out.closest), vec![8]);
    }

    #[test]
    fn a_shorter_chain_to_a_known_candidate_lowers_its_hop() {
        let mut l = Lookup::new(target(), config(5, 3), peers([10, 20]));
        assert_eq!(ids(&l.next_queries()), vec![10, 20]);
        l.on_response(&id(10), peers([15]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![15]);
        l.on_response(&id(15), peers([5]), NO_PROVIDERS);
        assert_eq!(
            ids(&l.next_queries()),
            vec![5],
            "5 is hop 3, through 10 and 15"
        );
        l.on_response(&id(20), peers([5]), NO_PROVIDERS);
        l.on_response(&id(5), peers([]), NO_PROVIDERS);
        assert!(l.is_finished());
        let out = l.outcome();
        assert_eq!((out.hops, out.path_hops), (3, 2), "20, a seed, named 5 too");
    }

    #[test]
    fn path_hops_count_to_the_first_provider_or_else_the_closest() {
        let provider = |name: &[u8]| (name.to_vec(), b"record".to_vec());
        // Seeds 10 and 20 are hop 1; 5, learnt from 10, is hop 2 and the closest; 30, learnt
        // from 20, is hop 2 too, and its answer brings the first provider.
        let mut l = Lookup::new(target(), config(5, 4), peers([10, 20]));
        assert_eq!(l.outcome().path_hops, 0, "nothing answered yet");
        assert_eq!(ids(&l.next_queries()), vec![10, 20]);
        l.on_response(&id(10), peers([5]), NO_PROVIDERS);
        l.on_response(&id(20), peers([30]), NO_PROVIDERS);
        assert_eq!(ids(&l.next_queries()), vec![5, 30]);
        l.on_response(&id(5), peers([]), NO_PROVIDERS);
        assert_eq!(l.outcome().path_hops, 2, "the closest that answered");
        l.on_response(&id(30), peers([40]), [provider(b"p")]);
        assert_eq!(ids(&l.next_queries()), vec![40]);
        l.on_response(&id(40), peers([]), [provider(b"q")]);
        let out = l.outcome();
        assert_eq!(
            (out.hops, out.path_hops),
            (3, 2),
            "the first provider came from 30"
        );
    }

    #[test]
    fn unsolicited_answers_are_ignored() {
        let mut l = Lookup::new(target(), config(20, 1), peers([1, 2]));
        l.on_response(&id(2), peers([0]), [(b"x".to_vec(), vec![])]);
        l.on_response(&id(42), peers([3]), NO_PROVIDERS);
        let out = l.outcome();
        assert!(out.providers.is_empty() && out.closest.is_empty());
        assert_eq!(ids(&l.next_queries()), vec![1]);
    }
}
