//! The DHT node runtime: the engine driven over the network.
//!
//! This module exists to put the sans-IO engine (routing table, provider store, lookup state
//! machine, wire messages) on a real [`Endpoint`], with a clock and timers, behind an async API
//! that a binary (`rust-node`) and the BEAM host can both use:
//!
//! - inbound requests (ping, find_node, find_value, store, remove) are answered from local data
//!   only, never by starting lookups (`inbound`);
//! - every peer that answers us, or talks to us and answers a ping back, enters the routing
//!   table; a peer that stops answering leaves it and the bucket's replacement cache moves up
//!   (`outbound`);
//! - iterative lookups keep `alpha` requests in flight and skip failed peers (`outbound`);
//! - advertising stores a provider locally and on the `k` closest nodes, republishes it every
//!   `max(10, ttl - 60)` s, and withdrawing removes it everywhere it was sent, leaving
//!   tombstones so late copies do not come back (`publish`);
//! - records expire by their own `ttl`; a newcomer that becomes one of the `k` closest for a
//!   key gets that key's records; buckets are refreshed on a timer (`maintenance`).
//!
//! Everything is bounded: lookups running at once, advertisements, tombstones, peers being
//! verified, the hand-off queue and the keys handed off per newcomer, plus the transport's own
//! bounds on requests, connections and frames.

mod events;
mod inbound;
mod maintenance;
mod outbound;
mod publish;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use macula_dht::wire::{NodeInfo, Request, MAX_NODES};
use macula_dht::{NodeId, RoutingTable, StoreError, StoreLimits, TableConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::holders::Holders;
use crate::identity::{id_hex, Identity};
use crate::record::{service_key, Advertisement, Provider, RecordError};
use crate::shared_store::SharedStore;
use crate::tombstones::Tombstones;

use crate::transport::{Endpoint, TransportConfig, TransportError};
use events::LookupLatencies;
pub use events::{Event, EventSink, LookupKind, LookupSummary};

/// Most bootstrap addresses remembered for re-joining.
const MAX_SEEDS: usize = 16;

/// Tunables of a [`Node`]. `Default` gives production values (k = 20, alpha = 3, the contract's
/// republish rule).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Bucket size, replication width and lookup width. 1..=64 (a reply carries at most 64 nodes).
    pub k: usize,
    /// Lookup requests in flight at once. 1..=64.
    pub alpha: usize,
    /// Replacement cache size per bucket.
    pub replacements: usize,
    /// Answer inbound requests. `false` makes a client that only asks (the `discover` command):
    /// it stores nothing for others and runs no timers.
    pub serve: bool,
    pub transport: TransportConfig,
    /// Limits of the store [`Node::start`] creates (a host passing its own store sets its own).
    pub store: StoreLimits,
    /// Longest a lookup may run, waiting for a free lookup slot included; it then ends with
    /// what it has found.
    pub lookup_timeout: Duration,
    /// Period of the housekeeping timer: record expiry, tombstone purge, due republishes.
    pub tick: Duration,
    /// Period of bucket refresh (and of re-joining through the bootstrap nodes when the table
    /// is empty).
    pub refresh_interval: Duration,
    /// Buckets refreshed per refresh (round robin), besides the lookup of the node's own id.
    pub refresh_buckets: usize,
    /// Republish period of an advertisement: `max(republish_floor, ttl - republish_margin)`.
    /// The contract's values are 10 s and 60 s.
    pub republish_floor: Duration,
    pub republish_margin: Duration,
    /// Lookups running at once; further callers wait.
    pub max_lookups: usize,
    /// Queries one lookup may send.
    pub max_lookup_queries: usize,
    /// Services this node advertises at once.
    pub max_adverts: usize,
    /// Tombstones kept (the one closest to its end is dropped past this).
    pub max_tombstones: usize,
    /// Records whose copies (STORE and hand-off targets) are remembered for their removal, each
    /// of the two kinds (the oldest is forgotten past this; its removal then reaches the
    /// current closest nodes only).
    pub max_replicated: usize,
    /// Unknown peers being pinged back at once before they enter the table.
    pub max_verifying: usize,
    /// Newcomers waiting for a hand-off; more are skipped (they get records on republish).
    pub handoff_queue: usize,
    /// Keys examined per newcomer for a hand-off.
    pub max_handoff_keys: usize,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            k: 20,
            alpha: 3,
            replacements: 8,
            serve: true,
            transport: TransportConfig::default(),
            store: StoreLimits::default(),
            lookup_timeout: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(60),
            refresh_buckets: 4,
            republish_floor: Duration::from_secs(10),
            republish_margin: Duration::from_secs(60),
            max_lookups: 256,
            max_lookup_queries: 320,
            max_adverts: 1024,
            max_tombstones: 100_000,
            max_replicated: 65_536,
            max_verifying: 64,
            handoff_queue: 64,
            max_handoff_keys: 10_000,
        }
    }
}

impl NodeConfig {
    /// Checks every bound; `Node::start` refuses a config that fails this.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |what: &str| Err(NodeError::Config(what.to_string()));
        if !(1..=MAX_NODES).contains(&self.k) {
            return bad("k must be between 1 and 64");
        }
        if !(1..=64).contains(&self.alpha) {
            return bad("alpha must be between 1 and 64");
        }
        if self.tick.is_zero()
            || self.refresh_interval.is_zero()
            || self.republish_floor.is_zero()
            || self.lookup_timeout.is_zero()
        {
            return bad(
                "tick, refresh_interval, republish_floor and lookup_timeout must be positive",
            );
        }
        let counts = [
            self.max_lookups,
            self.max_lookup_queries,
            self.max_adverts,
            self.max_tombstones,
            self.max_replicated,
            self.max_verifying,
            self.handoff_queue,
        ];
        if counts.contains(&0) {
            return bad("every max_* bound and handoff_queue must be at least 1");
        }
        if self.max_lookups > Semaphore::MAX_PERMITS {
            return bad("max_lookups is too large");
        }
        Ok(())
    }

    /// How long after a publish an advertisement with this ttl is published again.
    pub fn republish_interval(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs))
            .saturating_sub(self.republish_margin)
            .max(self.republish_floor)
    }
}

/// Everything a node operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("invalid node config: {0}")]
    Config(String),
    /// None of the bootstrap addresses answered a ping.
    #[error("no bootstrap node answered: {0}")]
    Bootstrap(String),
    #[error("invalid advertisement: {0}")]
    Advert(#[from] RecordError),
    /// The local store refused the record.
    #[error("record refused: {0}")]
    Store(#[from] StoreError),
    #[error("this node already advertises {max} services")]
    TooManyAdverts { max: usize },
    #[error("node is shut down")]
    Closed,
}

/// What a publish or a withdrawal reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The DHT key, hex.
    pub key: String,
    /// Closest nodes found for the key (not counting this node).
    pub targets: usize,
    /// Of those, how many acknowledged the STORE or REMOVE.
    pub acked: usize,
}

/// What a network lookup found.
#[derive(Debug, Clone)]
pub struct LookupReport {
    /// Distinct providers (by `node_id`), in arrival order.
    pub providers: Vec<Provider>,
    /// Up to `k` nodes that answered, closest first.
    pub closest: Vec<NodeInfo>,
    /// Longest chain of answers that led to a queried peer (a bootstrap peer is hop 1).
    pub hops: u32,
    pub queried: usize,
    pub answered: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// When the first provider arrived, if any did.
    pub first_provider: Option<Duration>,
    /// The lookup hit `lookup_timeout` and returns what it had by then.
    pub timed_out: bool,
}

/// A snapshot of a node's state, for `rust-node ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub addr: String,
    pub peers: usize,
    pub keys: usize,
    pub records: usize,
    pub tombstones: usize,
    /// Services this node advertises (and republishes).
    pub adverts: Vec<String>,
    pub requests: u64,
    pub bad_requests: u64,
    /// Lookups run (FIND_NODE and FIND_VALUE), and of those, how many hit `lookup_timeout`.
    pub lookups: u64,
    pub lookup_timeouts: u64,
    /// Median and 99th percentile duration of the most recent lookups, in microseconds.
    pub lookup_p50_us: u64,
    pub lookup_p99_us: u64,
}

/// What a host embedding a node provides. `Default`: a store of its own and no events.
#[derive(Clone, Default)]
pub struct Host {
    /// The store to serve from, shared with the host; `None` makes one from `NodeConfig::store`.
    pub store: Option<Arc<SharedStore>>,
    /// Receives the node's [`Event`]s, on the runtime's threads.
    pub events: Option<EventSink>,
}

/// A running DHT node. Dropping it stops its timers; [`Node::shutdown`] also closes the endpoint
/// at once (otherwise it closes when the last in-flight operation is done).
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Binds `listen` (port 0 picks one), starts answering requests (unless `config.serve` is
    /// false) and starts the timers. Must be called within a tokio runtime. The node knows no
    /// one until [`Node::bootstrap`].
    pub async fn start(
        identity: &Identity,
        listen: SocketAddr,
        config: NodeConfig,
    ) -> Result<Node, NodeError> {
        Node::start_hosted(identity, listen, config, Host::default()).await
    }

    /// [`Node::start`] inside a host that shares its store and hears the node's events.
    pub async fn start_hosted(
        identity: &Identity,
        listen: SocketAddr,
        config: NodeConfig,
        host: Host,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let endpoint = Endpoint::bind(listen, identity, config.transport.clone())?;
        let (handoff_tx, handoff_rx) = mpsc::channel(config.handoff_queue);
        let id = identity.id();
        let store = host
            .store
            .unwrap_or_else(|| Arc::new(SharedStore::new(config.store.clone())));
        let shared = Arc::new(Shared {
            id,
            endpoint,
            table: Mutex::new(RoutingTable::new(
                id,
                TableConfig {
                    k: config.k,
                    replacements: config.replacements,
                },
            )),
            store,
            events: host.events,
            tombstones: Mutex::new(Tombstones::new(config.max_tombstones)),
            holders: Mutex::new(Holders::new(config.max_replicated, 2 * config.k)),
            handed_off: Mutex::new(Holders::new(config.max_replicated, 2 * config.k)),
            adverts: Mutex::new(HashMap::new()),
            seeds: Mutex::new(Vec::new()),
            verifying: Mutex::new(HashSet::new()),
            lookups: Semaphore::new(config.max_lookups),
            handoff: handoff_tx,
            counters: Counters::default(),
            latencies: Mutex::new(LookupLatencies::default()),
            refresh_cursor: AtomicUsize::new(0),
            refreshing: AtomicBool::new(false),
            config,
        });
        let mut tasks = Vec::new();
        if shared.config.serve {
            shared.endpoint.serve(inbound::Responder::new(&shared))?;
            tasks.push(tokio::spawn(maintenance::timers(Arc::downgrade(&shared))));
            tasks.push(tokio::spawn(maintenance::hand_offs(
                Arc::downgrade(&shared),
                handoff_rx,
            )));
        }
        tracing::debug!(addr = %shared.endpoint.local_addr(), id = %id_hex(&id), "node started");
        Ok(Node { shared, tasks })
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.endpoint.local_addr()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// Pings each address (concurrently) and then looks up the node's own id through those that
    /// answered, which fills the routing table. Fails only when none answered. The addresses are
    /// remembered (at most 16) for re-joining when the table runs empty. Returns the table size.
    pub async fn bootstrap(&self, addrs: &[SocketAddr]) -> Result<usize, NodeError> {
        self.shared.bootstrap(addrs).await
    }

    /// Pings the addresses (at most 16, at once) and adds those that answer to the table,
    /// without a lookup: enough for a client that is about to look something up anyway. Fails
    /// when none answered.
    pub async fn contact(&self, addrs: &[SocketAddr]) -> Result<usize, NodeError> {
        self.shared.contact(addrs).await
    }

    /// Advertises `service` at `endpoint` for `ttl_secs`: the provider map
    /// `#{node_id, endpoint, metadata, ttl, advertised_at}` is stored locally and on the `k`
    /// closest nodes to `sha256(service)`, and republished every
    /// `max(10, ttl - 60)` s until [`Node::withdraw`]. A second call replaces the first.
    pub async fn advertise(
        &self,
        service: &str,
        endpoint: &str,
        metadata: BTreeMap<String, String>,
        ttl_secs: u32,
    ) -> Result<Published, NodeError> {
        self.advertise_with(service, endpoint, metadata, ttl_secs, true)
            .await
    }

    /// Like [`Node::advertise`] but published once: nobody refreshes it, so it expires
    /// everywhere `ttl_secs` after it was stored.
    pub async fn publish_once(
        &self,
        service: &str,
        endpoint: &str,
        metadata: BTreeMap<String, String>,
        ttl_secs: u32,
    ) -> Result<Published, NodeError> {
        self.advertise_with(service, endpoint, metadata, ttl_secs, false)
            .await
    }

    async fn advertise_with(
        &self,
        service: &str,
        endpoint: &str,
        metadata: BTreeMap<String, String>,
        ttl_secs: u32,
        refresh: bool,
    ) -> Result<Published, NodeError> {
        let ad = Advertisement {
            endpoint: endpoint.to_string(),
            metadata,
            ttl_secs,
        };
        self.shared.advertise(service, ad, refresh).await
    }

    /// Stops advertising `service`: removes this node's provider locally and sends REMOVE to the
    /// `k` closest nodes of its key, which keep a tombstone so late copies stay out. Sent even
    /// if this process did not advertise it (a previous run with the same identity may have).
    pub async fn withdraw(&self, service: &str) -> Result<Published, NodeError> {
        self.shared.withdraw(service).await
    }

    /// Providers of `service`: see [`Node::providers`].
    pub async fn discover(&self, service: &str, want: usize) -> Result<Vec<Provider>, NodeError> {
        self.providers(&service_key(service), want).await
    }

    /// Providers of `key`: the local ones if there are at least `want` (at least 1); otherwise
    /// an iterative FIND_VALUE lookup that returns as soon as `want` distinct providers are
    /// known, with the local ones first. Empty when none is found anywhere.
    ///
    /// Holding some providers is not enough to answer alone, even for a node that believes it
    /// is one of the key's `k` closest: its table may lack closer nodes, and other providers'
    /// STOREs may have gone to them.
    pub async fn providers(&self, key: &[u8], want: usize) -> Result<Vec<Provider>, NodeError> {
        let want = want.max(1);
        let mut found = self.local_providers(key);
        if found.len() >= want {
            return Ok(found);
        }
        let report = self.find_providers(key, Some(want)).await?;
        for provider in report.providers {
            if !found.iter().any(|p| same_provider(p, &provider)) {
                found.push(provider);
            }
        }
        Ok(found)
    }

    /// A FIND_VALUE lookup of `key` on the network (the local store is not consulted), ending
    /// once `want` providers are known, or when the `k` closest have answered.
    pub async fn find_providers(
        &self,
        key: &[u8],
        want: Option<usize>,
    ) -> Result<LookupReport, NodeError> {
        let target = NodeId::normalize(key);
        let request = Request::FindValue { key: key.to_vec() };
        self.shared.lookup(target, request, want).await
    }

    /// A FIND_NODE lookup of `target`: the `k` closest nodes that answered.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupReport, NodeError> {
        self.shared
            .lookup(target, Request::FindNode { target }, None)
            .await
    }

    /// Sends a record this node holds under `key` (versioned ETF) to the `k` closest nodes of
    /// `key` (STORE). Nobody republishes it: the caller does, as Macula's advertisers do. From
    /// the call on, [`Node::replicated`] knows the record, so a removal right after it still
    /// goes to the network.
    pub fn replicate(
        &self,
        key: &[u8],
        etf: &[u8],
    ) -> impl std::future::Future<Output = Result<Published, NodeError>> + Send + 'static {
        self.shared.replicate_record(key, etf)
    }

    /// Removes `node_id`'s provider under `key` here at once (leaving a tombstone); the returned
    /// future sends REMOVE to the `k` closest nodes of `key` and to every node this node gave a
    /// copy, which keep a tombstone too so late copies stay out.
    pub fn remove(
        &self,
        key: &[u8],
        node_id: &[u8],
    ) -> impl std::future::Future<Output = Result<Published, NodeError>> + Send + 'static {
        self.shared.remove_everywhere(key, node_id)
    }

    /// Whether this node sent a STORE of `node_id`'s provider under `key` (and has not removed
    /// it since): its removal then goes to every node that took a copy.
    pub fn replicated(&self, key: &[u8], node_id: &[u8]) -> bool {
        self.shared.holders.lock().contains(key, node_id)
    }

    /// The live providers this node holds under `key`.
    pub fn local_providers(&self, key: &[u8]) -> Vec<Provider> {
        self.shared.local_providers(key)
    }

    /// Nodes in the routing table.
    pub fn peers(&self) -> Vec<NodeInfo> {
        self.shared
            .table
            .lock()
            .buckets()
            .flat_map(|(_, nodes)| {
                nodes
                    .into_iter()
                    .map(|(id, addr)| NodeInfo {
                        id: *id,
                        addr: *addr,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn status(&self) -> Status {
        let s = &self.shared;
        // One lock at a time.
        let stats = s.store.read().stats();
        let peers = s.table.lock().len();
        let tombstones = s.tombstones.lock().len();
        let mut adverts: Vec<String> = s
            .adverts
            .lock()
            .iter()
            .filter(|(_, slot)| slot.advert.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        adverts.sort();
        let (lookup_p50_us, lookup_p99_us) = s.latencies.lock().percentiles_us();
        Status {
            id: id_hex(&s.id),
            addr: s.endpoint.local_addr().to_string(),
            peers,
            keys: stats.keys,
            records: stats.records,
            tombstones,
            adverts,
            requests: s.counters.requests.load(Ordering::Relaxed),
            bad_requests: s.counters.bad_requests.load(Ordering::Relaxed),
            lookups: s.counters.lookups.load(Ordering::Relaxed),
            lookup_timeouts: s.counters.lookup_timeouts.load(Ordering::Relaxed),
            lookup_p50_us,
            lookup_p99_us,
        }
    }

    /// Stops the timers and closes the endpoint (connections closed, port released).
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.endpoint.close().await;
        tracing::debug!(id = %id_hex(&self.shared.id), "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &id_hex(&self.shared.id))
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

fn same_provider(a: &Provider, b: &Provider) -> bool {
    if a.node_id.is_empty() || b.node_id.is_empty() {
        a.term == b.term
    } else {
        a.node_id == b.node_id
    }
}

/// State shared by the node's API, its request handler and its background tasks.
struct Shared {
    id: NodeId,
    config: NodeConfig,
    endpoint: Endpoint,
    table: Mutex<RoutingTable<SocketAddr>>,
    /// Its clock is the node's: tombstones and records run on the same milliseconds.
    store: Arc<SharedStore>,
    events: Option<EventSink>,
    tombstones: Mutex<Tombstones>,
    /// Where this node's STOREs of records it published went, for their removal.
    holders: Mutex<Holders>,
    /// Where this node's hand-offs went, for passing a removal on.
    handed_off: Mutex<Holders>,
    /// Services this node advertises or advertised, by name (at most `max_adverts`).
    adverts: Mutex<HashMap<String, AdvertSlot>>,
    /// Bootstrap addresses, for re-joining (at most `MAX_SEEDS`).
    seeds: Mutex<Vec<SocketAddr>>,
    /// Peers being pinged back before they enter the table (at most `max_verifying`).
    verifying: Mutex<HashSet<NodeId>>,
    lookups: Semaphore,
    /// Newcomers to hand records to (bounded channel).
    handoff: mpsc::Sender<NodeInfo>,
    counters: Counters,
    latencies: Mutex<LookupLatencies>,
    refresh_cursor: AtomicUsize,
    refreshing: AtomicBool,
}

/// One advertised (or withdrawn) service.
struct AdvertSlot {
    /// `Some` while it is advertised and republished.
    advert: Option<Advertisement>,
    /// Monotonic ms of the next republish.
    next_at_ms: u64,
    /// Unix seconds of the last withdrawal: a new advertisement is dated after it, so replicas'
    /// tombstones let it through.
    withdrawn_at: u64,
    /// Serialises publish, republish and withdrawal of this service.
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bad_requests: AtomicU64,
    lookups: AtomicU64,
    lookup_timeouts: AtomicU64,
}

impl Shared {
    /// Milliseconds on the node's monotonic clock (the store's, never 0).
    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    fn local_providers(&self, key: &[u8]) -> Vec<Provider> {
        let now = self.now_ms();
        let store = self.store.read();
        store
            .providers(key, now)
            .filter_map(|term| Provider::parse(term).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republish_follows_the_contract() {
        let config = NodeConfig::default();
        assert_eq!(config.republish_interval(300), Duration::from_secs(240));
        assert_eq!(config.republish_interval(65), Duration::from_secs(10));
        assert_eq!(config.republish_interval(1), Duration::from_secs(10));
    }

    #[test]
    fn config_bounds_are_checked() {
        assert!(NodeConfig::default().validate().is_ok());
        for bad in [
            NodeConfig {
                k: 0,
                ..NodeConfig::default()
            },
            NodeConfig {
                k: 65,
                ..NodeConfig::default()
            },
            NodeConfig {
                alpha: 0,
                ..NodeConfig::default()
            },
            NodeConfig {
                tick: Duration::ZERO,
                ..NodeConfig::default()
            },
            NodeConfig {
                max_tombstones: 0,
                ..NodeConfig::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(NodeError::Config(_))));
        }
    }
}
