//! One node's DHT logic as a sans-IO state machine: routing-table membership and liveness,
//! answers to peers, lookups, replication, republish, hand-off to newcomers, removal that
//! follows every copy, tombstones, expiry and bucket refresh.
//!
//! Everything a node decides lives here, once; hosts only carry the decisions out. The runtime
//! (`rust-node`) drives a [`Dht`] over QUIC with a real clock, and the simulator drives
//! thousands of them in memory on a virtual clock. The shape follows `quinn-proto`:
//!
//! - inputs: a peer's request ([`Dht::handle_request`], answered at once from local data), the
//!   outcome of a request this node sent ([`Dht::handle_reply`]), the passing of time
//!   ([`Dht::handle_timeout`] once [`Dht::poll_timeout`] is reached), and commands (bootstrap,
//!   lookups, advertise, withdraw, replicate, remove);
//! - outputs, taken with [`Dht::poll_action`]: requests to send, events for the host, and the
//!   outcomes of commands.
//!
//! Time is an argument ([`Time`]); randomness (bucket refresh targets) comes from a seed given
//! at creation. With the same inputs in the same order, a node does the same things: the
//! simulator relies on it. The provider store is reached through [`StoreAccess`], because a host
//! may share it (the NIF reads it from Erlang processes without going through this machine).
//!
//! Every collection is bounded by [`DhtConfig`], and every request this node sends fails at its
//! deadline if the host does not report it sooner.

mod adverts;
mod config;
mod copies;
mod events;
mod flows;
mod handoff;
mod health;
mod inbound;
mod maintenance;
mod ops;
mod peers;
mod rates;
mod rng;
mod tombstones;
mod trust;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use adverts::MAX_WAITING;
pub use config::DhtConfig;
pub use events::{Event, LookupKind, LookupSummary, Trouble};

use crate::record::{Advertisement, Provider, RecordError};
use crate::seal::{Keypair, Publisher, Verifier};
use crate::settings::SettingError;
use crate::store::{ProviderStore, StoreError};
use crate::table::TableConfig;
use crate::time::Time;
use crate::wire::{NodeInfo, Request, Response, WireError};
use crate::NodeId;
use adverts::{Adverts, Command};
use copies::Copies;
use events::LookupLatencies;
use handoff::HandOffs;
use ops::Ops;
use peers::Peers;
use rates::PeerRates;
use rng::Rng;
use tombstones::Tombstones;

/// How the engine reaches the provider store it serves from. The simulator owns a
/// [`ProviderStore`] per node; the runtime shares one behind a lock with its host.
pub trait StoreAccess {
    /// Runs `read` on the store.
    fn read<R>(&self, read: impl FnOnce(&ProviderStore) -> R) -> R;
    /// Runs `write` on the store; `key` is the key it writes (a host may keep data derived from
    /// it).
    fn write<R>(&mut self, key: &[u8], write: impl FnOnce(&mut ProviderStore) -> R) -> R;
    /// Purges records expired at `now_ms`; returns how many.
    fn expire(&mut self, now_ms: u64) -> usize;
}

impl StoreAccess for ProviderStore {
    fn read<R>(&self, read: impl FnOnce(&ProviderStore) -> R) -> R {
        read(self)
    }

    fn write<R>(&mut self, _key: &[u8], write: impl FnOnce(&mut ProviderStore) -> R) -> R {
        write(self)
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        ProviderStore::expire(self, now_ms)
    }
}

/// A command this node runs (a lookup, a bootstrap, a publish, ...), named in the
/// [`Action::Done`] that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(u64);

/// One request this node sent, named in the [`Dht::handle_reply`] that reports its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RpcId(u64);

/// Something the host must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send a request and report its outcome with [`Dht::handle_reply`].
    Send(Outgoing),
    /// A request sent earlier whose answer is no longer needed (its lookup ended): the host may
    /// stop it. An outcome reported for it anyway is ignored.
    Cancel(RpcId),
    /// Tell the host.
    Event(Event),
    /// A command ended.
    Done(OpId, Outcome),
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Names the request in its reply.
    pub rpc: RpcId,
    /// The id the peer must prove; `None` for an address whose node is not known yet (a
    /// bootstrap address).
    pub to: Option<NodeId>,
    /// Where to send it.
    pub addr: SocketAddr,
    /// The request (shared: one lookup or replication sends the same one to many peers).
    pub request: Arc<Request>,
    /// The engine fails the request as timed out after this; a reply reported later is ignored.
    pub timeout: Duration,
}

/// The outcome of a request, as the host reports it.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The peer `from` (its id proven by the transport) answered; `response` is its reply, or
    /// why the reply did not decode.
    Answered {
        /// The peer's proven id.
        from: NodeId,
        /// The decoded reply.
        response: Result<Response, WireError>,
    },
    /// No answer.
    Failed(Failure),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure, which decides what it says about the peer.
    pub kind: FailureKind,
    /// For people: the transport's error, in one line.
    pub detail: String,
}

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The peer could not be reached, or the connection to it died.
    Unreachable,
    /// Another node answered at the peer's address.
    WrongPeer,
    /// The peer refused, or the request failed for a reason that says nothing about the peer's
    /// liveness (a frame too large, this node closing, ...).
    Refused,
}

impl FailureKind {
    /// Whether the peer is taken to be gone (it leaves the routing table).
    pub fn is_liveness(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout | FailureKind::Unreachable | FailureKind::WrongPeer
        )
    }
}

/// How a command ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A lookup ([`Dht::find_node`], [`Dht::find_value`], [`Dht::providers`]).
    Lookup(LookupReport),
    /// [`Dht::bootstrap`]: the table size afterwards.
    Joined(Result<usize, JoinError>),
    /// [`Dht::contact`]: how many addresses answered.
    Contacted(Result<usize, JoinError>),
    /// [`Dht::advertise`], [`Dht::withdraw`], [`Dht::replicate`], [`Dht::remove`].
    Published(Result<Published, PublishError>),
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReport {
    /// Distinct providers (by `node_id`), in arrival order; for [`Dht::providers`], the ones
    /// held here first.
    pub providers: Vec<Provider>,
    /// Up to `k` nodes that answered, closest first.
    pub closest: Vec<NodeInfo>,
    /// Longest chain of answers that led to a queried peer (a seed from the table is hop 1).
    pub hops: u32,
    /// Hops to what the lookup was for: to the peer whose answer brought the first provider,
    /// else to the closest peer that answered (see [`crate::lookup::Outcome::path_hops`]).
    pub path_hops: u32,
    /// Queries sent.
    pub queried: usize,
    /// Queries answered.
    pub answered: usize,
    /// Queries that failed or timed out.
    pub failed: usize,
    /// From start to end.
    pub elapsed: Duration,
    /// When the first provider arrived, if any did.
    pub first_provider: Option<Duration>,
    /// The lookup hit the lookup timeout and returns what it had by then.
    pub timed_out: bool,
}

/// What a publish or a removal reached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Published {
    /// The DHT key, hex.
    pub key: String,
    /// Nodes the STORE or REMOVE went to (not counting this node).
    pub targets: usize,
    /// Of those, how many acknowledged it.
    pub acked: usize,
}

/// Why a bootstrap or a contact failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// None of the addresses answered a ping.
    #[error("no bootstrap node answered: {0}")]
    NoneAnswered(String),
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The local store refused the record.
    #[error("record refused: {0}")]
    Store(#[from] StoreError),
    /// A record on the network needs a `node_id`: it names the record's slot.
    #[error("a published provider needs a node_id")]
    NoNodeId,
    /// The provider's `node_id` is a node id (32 bytes) other than this node's: only that node
    /// may publish it.
    #[error("the provider's node_id is another node's id")]
    WrongPublisher,
}

/// Why an advertisement or a withdrawal was refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// The advertisement itself is invalid.
    #[error("invalid advertisement: {0}")]
    Record(#[from] RecordError),
    /// `max_adverts` services are advertised (or being published) already.
    #[error("this node already advertises {max} services")]
    TooManyAdverts {
        /// The bound.
        max: usize,
    },
    /// [`MAX_WAITING`] commands of this service are waiting already.
    #[error("{service} has too many publishes and withdrawals waiting")]
    Busy {
        /// The service's name.
        service: String,
    },
}

/// A command that may be answered at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started<T> {
    /// Answered now.
    Done(T),
    /// Running; its [`Action::Done`] carries the answer.
    Running(OpId),
}

/// Counters of a node's work, for `ctl status` and `stats/1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Lookups run (FIND_NODE and FIND_VALUE).
    pub lookups: u64,
    /// Of those, how many hit the lookup timeout.
    pub lookup_timeouts: u64,
    /// Of those, how many got no answer at all (every peer failed, or none was known).
    pub lookup_failures: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Of those, how many failed (no answer, or an error answer).
    pub requests_failed: u64,
    /// Requests not sent because `max_requests` were in flight.
    pub requests_dropped: u64,
    /// STOREs of a replication or republish that were not acknowledged.
    pub store_failures: u64,
    /// REMOVEs (sent or passed on) that were not acknowledged.
    pub remove_failures: u64,
    /// Records handed to newcomers.
    pub handed_off: u64,
    /// Hand-offs stopped by a failed STORE.
    pub handoffs_stopped: u64,
    /// Newcomers not handed records because the hand-off queue was full.
    pub handoffs_skipped: u64,
    /// Republishes the local store refused.
    pub republish_failures: u64,
    /// STOREs and REMOVEs refused because their signature did not verify.
    pub refused_forged: u64,
    /// STOREs and REMOVEs refused because the provider's `node_id` is another node's id.
    pub refused_wrong_publisher: u64,
    /// STOREs and REMOVEs refused because their sequence was not newer than the slot's.
    pub refused_stale: u64,
    /// STOREs refused because their publisher had removed the slot since (replays).
    pub refused_replay: u64,
    /// STOREs refused because their publisher had its share of the store already.
    pub refused_quota: u64,
    /// STOREs refused because their sender sent them too fast.
    pub refused_rate: u64,
    /// Providers in `find_value` replies dropped because their seal did not verify.
    pub forged_in_replies: u64,
    /// Exchanges with peers of another protocol version: their requests refused here, and
    /// replies in another version or refusing ours.
    pub refused_version: u64,
}

/// A snapshot of a node's DHT state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtStatus {
    /// Nodes in the routing table.
    pub peers: usize,
    /// Tombstones kept.
    pub tombstones: usize,
    /// Services advertised (and republished), sorted.
    pub adverts: Vec<String>,
    /// Peers that failed of late: lookups do not ask them and replies do not offer them for a
    /// while (see [`Dht::rtt`]).
    pub suspects: usize,
    /// Whether the node knows at least one peer: it joined a network (or one joined it).
    pub joined: bool,
    /// Median duration of the most recent lookups, in microseconds.
    pub lookup_p50_us: u64,
    /// 99th percentile of the same.
    pub lookup_p99_us: u64,
    /// Counters.
    pub stats: DhtStats,
}

/// One node's DHT state machine. See the module documentation.
#[derive(Debug)]
pub struct Dht {
    id: NodeId,
    /// The node's signing key: it publishes under it.
    keypair: Keypair,
    /// The last sequence it signed with.
    last_seq: u64,
    verifier: Verifier,
    rates: PeerRates,
    config: DhtConfig,
    /// Unix microseconds at `Time::ZERO` of the host's clock: the one clock is the host's, and
    /// wall-clock stamps (`advertised_at`, removal times) are derived from it.
    unix_origin_us: u64,
    /// The routing table, and round-trip times and recent failures of the peers it talked to.
    peers: Peers,
    /// The latest time an input brought.
    now: Time,
    tombstones: Tombstones,
    /// Where this node's STOREs of records it published went, for their removal.
    published: Copies,
    /// Where this node's hand-offs went, for passing a removal on.
    handed_off: Copies,
    adverts: Adverts,
    handoffs: HandOffs,
    ops: Ops,
    timers: maintenance::Timers,
    rng: Rng,
    stats: DhtStats,
    latencies: LookupLatencies,
    actions: VecDeque<Action>,
}

impl Dht {
    /// A node with the key `keypair` (its id is the key's), started at `now`, when the wall
    /// clock reads `unix_now_us` microseconds since the Unix epoch. `seed` drives its random
    /// choices. It knows no one until [`Dht::bootstrap`] (or a peer's request).
    pub fn new(
        keypair: Keypair,
        config: DhtConfig,
        now: Time,
        unix_now_us: u64,
        seed: u64,
    ) -> Result<Dht, SettingError> {
        config.validate()?;
        let id = keypair.node_id();
        let table = TableConfig {
            k: config.k,
            replacements: config.replacements,
        };
        Ok(Dht {
            id,
            keypair,
            last_seq: 0,
            verifier: Verifier::new(config.verified_cache),
            rates: PeerRates::new(config.peer_stores_per_s),
            peers: Peers::new(id, table, config.max_verifying),
            now,
            tombstones: Tombstones::new(config.max_tombstones),
            published: Copies::new(config.max_replicated, 2 * config.k),
            handed_off: Copies::new(config.max_replicated, 2 * config.k),
            adverts: Adverts::new(config.max_adverts),
            handoffs: HandOffs::new(config.handoff_queue),
            ops: Ops::default(),
            timers: maintenance::Timers::new(&config, now),
            rng: Rng::new(seed),
            stats: DhtStats::default(),
            latencies: LookupLatencies::default(),
            actions: VecDeque::new(),
            unix_origin_us: unix_now_us.saturating_sub(now.as_micros()),
            config,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The config in force.
    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    /// The next thing the host must do, if any. Call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Dht::handle_timeout`] must be called next (`None`: not until another input).
    pub fn poll_timeout(&self) -> Option<Time> {
        [
            self.ops.next_deadline(),
            self.handoffs.resume_at(),
            self.timers.next(&self.config),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Answers a request from `from` with local data only (an inbound request never starts a
    /// lookup). May also queue requests: a ping back to an unknown peer, a removal passed on to
    /// the copies this node made.
    pub fn handle_request<S: StoreAccess>(
        &mut self,
        store: &mut S,
        from: NodeInfo,
        request: Request,
        now: Time,
    ) -> Response {
        self.with(store, now, |cx| cx.answer(from, request))
    }

    /// The outcome of request `rpc`. Outcomes of requests that already timed out, or that were
    /// never sent, are ignored.
    pub fn handle_reply<S: StoreAccess>(
        &mut self,
        store: &mut S,
        rpc: RpcId,
        reply: Reply,
        now: Time,
    ) {
        self.with(store, now, |cx| cx.on_reply(rpc, reply));
    }

    /// Lets time pass: fails requests and lookups past their deadlines, and runs housekeeping,
    /// republish, hand-off and bucket refresh when due.
    pub fn handle_timeout<S: StoreAccess>(&mut self, store: &mut S, now: Time) {
        self.with(store, now, |cx| cx.on_timeout());
    }

    /// Pings `addrs` (the first [`MAX_BOOTSTRAP`](crate::settings::MAX_BOOTSTRAP), at once),
    /// then looks up this node's own id through
    /// those that answered, which fills the routing table. Ends with [`Outcome::Joined`]: the
    /// table size, or an error when none answered. The addresses are remembered for re-joining
    /// when the table runs empty.
    pub fn bootstrap<S: StoreAccess>(
        &mut self,
        store: &mut S,
        addrs: &[SocketAddr],
        now: Time,
    ) -> OpId {
        self.peers.remember_seeds(addrs);
        let op = self.ops.next_op();
        self.with(store, now, |cx| {
            cx.contact(op, addrs, flows::AfterContact::Join, true)
        });
        op
    }

    /// Pings `addrs` (the first [`MAX_BOOTSTRAP`](crate::settings::MAX_BOOTSTRAP), at once);
    /// those that answer enter the table.
    /// Ends with [`Outcome::Contacted`]. Enough for a client that is about to look something up.
    pub fn contact<S: StoreAccess>(
        &mut self,
        store: &mut S,
        addrs: &[SocketAddr],
        now: Time,
    ) -> OpId {
        let op = self.ops.next_op();
        self.with(store, now, |cx| {
            cx.contact(op, addrs, flows::AfterContact::Report, true)
        });
        op
    }

    /// A FIND_NODE lookup of `target`; ends with [`Outcome::Lookup`] holding the `k` closest
    /// nodes that answered.
    pub fn find_node<S: StoreAccess>(&mut self, store: &mut S, target: NodeId, now: Time) -> OpId {
        let op = self.ops.next_op();
        let request = Request::FindNode { target };
        self.with(store, now, |cx| {
            cx.lookup(op, target, request, None, flows::AfterLookup::Report, true)
        });
        op
    }

    /// A FIND_VALUE lookup of `key` on the network (the local store is not consulted), ending
    /// once `want` providers are known, or when the `k` closest have answered.
    pub fn find_value<S: StoreAccess>(
        &mut self,
        store: &mut S,
        key: &[u8],
        want: Option<usize>,
        now: Time,
    ) -> OpId {
        let op = self.ops.next_op();
        let target = NodeId::normalize(key);
        let request = Request::FindValue { key: key.to_vec() };
        self.with(store, now, |cx| {
            cx.lookup(op, target, request, want, flows::AfterLookup::Report, true)
        });
        op
    }

    /// Providers of `key`: the ones held here if there are at least `want` (at least 1);
    /// otherwise a FIND_VALUE lookup that stops once `want` distinct providers are known, whose
    /// report lists the ones held here first. Empty when none is found anywhere.
    ///
    /// Holding some providers is not enough to answer alone, even for a node that believes it
    /// is one of the key's `k` closest: its table may lack closer nodes, and other providers'
    /// STOREs may have gone to them.
    pub fn providers<S: StoreAccess>(
        &mut self,
        store: &mut S,
        key: &[u8],
        want: usize,
        now: Time,
    ) -> Started<Vec<Provider>> {
        let want = want.max(1);
        let local = flows::held_providers(store, key, now);
        if local.len() >= want {
            return Started::Done(local);
        }
        let op = self.ops.next_op();
        let target = NodeId::normalize(key);
        let request = Request::FindValue { key: key.to_vec() };
        let then = flows::AfterLookup::Providers { local };
        self.with(store, now, |cx| {
            cx.lookup(op, target, request, Some(want), then, true)
        });
        Started::Running(op)
    }

    /// Advertises `service` at `ad`: the provider map `#{node_id, endpoint, metadata, ttl,
    /// advertised_at}` is stored here and on the `k` closest nodes to `sha256(service)`; with
    /// `refresh`, it is published again every `max(10, ttl - 60)` s until [`Dht::withdraw`].
    /// A second call replaces the first. Runs after the service's earlier commands; ends with
    /// [`Outcome::Published`].
    pub fn advertise<S: StoreAccess>(
        &mut self,
        store: &mut S,
        service: &str,
        ad: Advertisement,
        refresh: bool,
        now: Time,
    ) -> Result<OpId, AdvertError> {
        if service.is_empty() {
            return Err(RecordError::EmptyService.into());
        }
        ad.validate()?;
        self.command(store, service, Command::Publish { ad, refresh }, now)
    }

    /// Stops advertising `service`: removes this node's provider here, leaving a tombstone, and
    /// sends REMOVE to the `k` closest nodes of its key and to every node that took a copy from
    /// here. Sent even if this node did not advertise it (a previous run with the same identity
    /// may have). Ends with [`Outcome::Published`].
    pub fn withdraw<S: StoreAccess>(
        &mut self,
        store: &mut S,
        service: &str,
        now: Time,
    ) -> Result<OpId, AdvertError> {
        self.command(store, service, Command::Withdraw, now)
    }

    fn command<S: StoreAccess>(
        &mut self,
        store: &mut S,
        service: &str,
        command: Command,
        now: Time,
    ) -> Result<OpId, AdvertError> {
        let op = self.ops.next_op();
        let slot = self.adverts.slot(service)?;
        if slot.running.is_some() {
            if slot.waiting.len() >= adverts::MAX_WAITING {
                return Err(AdvertError::Busy {
                    service: service.to_string(),
                });
            }
            slot.waiting.push_back((op, command));
        } else {
            self.with(store, now, |cx| {
                cx.run_command(op, service, command, flows::Origin::Caller)
            });
        }
        Ok(op)
    }

    /// Publishes a provider under `key` (versioned ETF) as this node: signs it (its ttl is the
    /// record's own, else the store's default), stores it here and sends it to the `k` closest
    /// nodes of `key`. Nobody republishes it: the caller does, as Macula's advertisers do. From
    /// this call on, [`Dht::replicated`] knows the record, so a removal right after it still goes
    /// to the network. Ends with [`Outcome::Published`]; refused at once when the record has no
    /// `node_id` or the store refuses it.
    pub fn publish<S: StoreAccess>(
        &mut self,
        store: &mut S,
        key: &[u8],
        etf: &[u8],
        now: Time,
    ) -> Result<OpId, PublishError> {
        let op = self.ops.next_op();
        self.with(store, now, |cx| {
            cx.publish_record(op, key, etf, None, flows::Origin::Caller)
        })?;
        Ok(op)
    }

    /// Removes `node_id`'s provider under `key` here at once (every record of it held here, and a
    /// tombstone on this node's slot), then sends this node's signed REMOVE to the `k` closest
    /// nodes of `key` and to every node this node gave a copy, which keep a tombstone too so late
    /// copies stay out. Ends with [`Outcome::Published`].
    pub fn remove<S: StoreAccess>(
        &mut self,
        store: &mut S,
        key: &[u8],
        node_id: &[u8],
        now: Time,
    ) -> OpId {
        let op = self.ops.next_op();
        self.with(store, now, |cx| {
            cx.remove_everywhere(op, key, node_id, None, flows::Origin::Caller)
        });
        op
    }

    /// Whether this node sent a STORE of `node_id`'s provider under `key` (and has not removed
    /// it since): its removal then goes to every node that took a copy.
    pub fn replicated(&self, key: &[u8], node_id: &[u8]) -> bool {
        self.published.contains(key, self.keypair.public(), node_id)
    }

    /// The key this node publishes under.
    pub fn publisher(&self) -> &Publisher {
        self.keypair.public()
    }

    /// Counts a request refused because it spoke another protocol version (the host decodes
    /// frames, so it is the one that sees them).
    pub fn refused_version(&mut self) {
        self.stats.refused_version += 1;
    }

    /// The smoothed round-trip time of `peer`'s answers to this node, if it answered and is still
    /// remembered: in the routing table, or among the last peers the table let go of. A
    /// request to a peer times out at a multiple of it (at least 100 ms, at most
    /// `request_timeout`); one that fails makes the peer suspect for a while, and three failures
    /// in a row take it out of the routing table.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        self.peers.rtt(peer)
    }

    /// Nodes in the routing table.
    pub fn peers(&self) -> Vec<NodeInfo> {
        self.peers.all()
    }

    /// Nodes in the routing table, counted.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A snapshot of the node's state and counters.
    pub fn status(&self) -> DhtStatus {
        let (lookup_p50_us, lookup_p99_us) = self.latencies.percentiles_us();
        DhtStatus {
            peers: self.peers.len(),
            suspects: self.peers.suspects(self.now),
            joined: !self.peers.is_empty(),
            tombstones: self.tombstones.len(),
            adverts: self.adverts.advertised(),
            lookup_p50_us,
            lookup_p99_us,
            stats: self.stats,
        }
    }

    /// Runs one input's work in a [`Cx`], then fails what could not be sent.
    fn with<S: StoreAccess, R>(
        &mut self,
        store: &mut S,
        now: Time,
        work: impl FnOnce(&mut Cx<'_, S>) -> R,
    ) -> R {
        self.now = self.now.max(now);
        let mut cx = Cx::new(self, store, now);
        let result = work(&mut cx);
        cx.settle();
        result
    }

    /// Seconds since the Unix epoch at `now`, by the clock this node was given.
    pub fn unix_secs(&self, now: Time) -> u64 {
        self.unix_origin_us.saturating_add(now.as_micros()) / 1_000_000
    }
}

/// One input being handled: the node, its store and the time. The flows of the node are
/// methods of this (in `flows`, `inbound`, `handoff`, `maintenance`), so they need not pass the
/// store and the time to each other.
struct Cx<'a, S> {
    dht: &'a mut Dht,
    store: &'a mut S,
    now: Time,
}

impl<'a, S: StoreAccess> Cx<'a, S> {
    fn new(dht: &'a mut Dht, store: &'a mut S, now: Time) -> Self {
        Cx { dht, store, now }
    }

    fn emit(&mut self, event: Event) {
        self.dht.actions.push_back(Action::Event(event));
    }

    fn done(&mut self, op: OpId, outcome: Outcome) {
        self.dht.actions.push_back(Action::Done(op, outcome));
    }

    fn now_ms(&self) -> u64 {
        self.now.as_millis()
    }

    fn unix_secs(&self) -> u64 {
        self.dht.unix_secs(self.now)
    }

    /// The next sequence this node signs with: milliseconds since the Unix epoch, or one more
    /// than the last if the clock has not moved on (or went back).
    fn next_seq(&mut self) -> u64 {
        let unix_ms = self.dht.unix_origin_us.saturating_add(self.now.as_micros()) / 1000;
        self.dht.last_seq = unix_ms.max(self.dht.last_seq.saturating_add(1));
        self.dht.last_seq
    }
}
