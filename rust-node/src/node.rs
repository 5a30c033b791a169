//! The DHT node runtime: the engine's [`Dht`] on a real [`Endpoint`], with a clock and tasks,
//! behind an async API that a binary (`rust-node`) and the BEAM host can both use.
//!
//! Every decision (who enters the routing table, what a lookup asks next, where a STORE or a
//! REMOVE goes, when to republish, hand off, refresh or give up on a peer) is the engine's. This
//! module only carries them out (`driver`): it feeds the engine requests from peers, the outcomes
//! of the requests it asked to send, and the passing of time, and does what it asks for. Its
//! state is split by owner: the engine is one value behind one lock (with the callers waiting on
//! its commands); the provider store is shared with the host behind its own lock; the endpoint
//! owns the sockets.

mod activity;
mod driver;
mod logging;
mod picking;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use macula_dht::dht::{AdvertError, JoinError, Outcome, PublishError};
use macula_dht::wire::NodeInfo;
use macula_dht::{Dht, DhtConfig, NodeId, SettingError, StoreError, StoreLimits};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::identity::{id_hex, Identity};
use crate::record::{service_key, Advertisement, Provider};
use crate::shared_store::SharedStore;
use crate::transport::{Endpoint, TransportConfig, TransportError};
use driver::{Begun, Shared};

pub use activity::{
    ActivitySnapshot, Direction, HistogramSnapshot, LookupCounts, LookupOutcome, RequestCount,
    RequestOutcome, LOOKUP_DURATION_BOUNDS_US, LOOKUP_HOPS_BOUNDS,
};
pub use macula_dht::select::{SelectConfig, Strategy, UnknownStrategy};
pub use picking::{FailoverError, PickError, MAX_TRIES};

pub use macula_dht::dht::{Event, LookupKind, LookupReport, LookupSummary, Published, Trouble};

/// Receives a node's [`Event`]s, on the runtime's threads. It must be quick and must not block
/// (the NIF's sends one message to an Erlang process).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Settings of a [`Node`]. `Default` gives production values.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    /// The DHT's settings (k, alpha, timeouts, bounds); see [`DhtConfig`].
    pub dht: DhtConfig,
    /// The endpoint's settings. Its `request_timeout` is replaced by `dht.request_timeout`, so
    /// that the engine and the transport give up on a request at the same moment.
    pub transport: TransportConfig,
    /// Limits of the store [`Node::start`] creates (a host passing its own store sets its own).
    pub store: StoreLimits,
    /// How [`Node::pick`] caches providers and backs off from reported ones.
    pub select: SelectConfig,
}

impl NodeConfig {
    /// Checks every bound; [`Node::start`] refuses a config that fails this.
    pub fn validate(&self) -> Result<(), NodeError> {
        Ok(self.dht.validate()?)
    }

    /// The endpoint's settings as the node uses them.
    fn endpoint_config(&self) -> TransportConfig {
        TransportConfig {
            request_timeout: self.dht.request_timeout,
            ..self.transport.clone()
        }
    }
}

/// Everything a node operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A setting is out of range.
    #[error("invalid node config: {0}")]
    Config(#[from] SettingError),
    /// The node's identity could not be made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// None of the bootstrap addresses answered a ping.
    #[error("no bootstrap node answered: {0}")]
    Bootstrap(String),
    /// An advertisement or withdrawal was refused.
    #[error(transparent)]
    Advert(#[from] AdvertError),
    /// The local store refused the record.
    #[error("record refused: {0}")]
    Store(#[from] StoreError),
    /// A record to publish has no `node_id` (it names the record's slot on other nodes).
    #[error("a published provider needs a node_id")]
    NoNodeId,
    /// A record to publish names another node's id (32 bytes) as its `node_id`.
    #[error("the provider's node_id is another node's id")]
    WrongPublisher,
    /// The node is shut down.
    #[error("node is shut down")]
    Closed,
}

impl From<JoinError> for NodeError {
    fn from(e: JoinError) -> NodeError {
        match e {
            JoinError::NoneAnswered(detail) => NodeError::Bootstrap(detail),
        }
    }
}

impl From<PublishError> for NodeError {
    fn from(e: PublishError) -> NodeError {
        match e {
            PublishError::Store(e) => NodeError::Store(e),
            PublishError::NoNodeId => NodeError::NoNodeId,
            PublishError::WrongPublisher => NodeError::WrongPublisher,
        }
    }
}

/// A snapshot of a node's state, for `rust-node ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node's id, hex.
    pub id: String,
    /// The address it listens on.
    pub addr: String,
    /// Nodes in its routing table.
    pub peers: usize,
    /// Whether it knows at least one peer (it joined a network, or one joined it).
    #[serde(default)]
    pub joined: bool,
    /// Peers that failed of late: not asked and not offered to others for a while.
    #[serde(default)]
    pub suspects: usize,
    /// Keys in its store.
    pub keys: usize,
    /// Records in its store.
    pub records: usize,
    /// Bytes of keys, records and seals in its store.
    #[serde(default)]
    pub store_bytes: usize,
    /// QUIC connections peers opened to it, open now.
    #[serde(default)]
    pub inbound_connections: usize,
    /// QUIC connections it opened to peers, pooled now (including ones being dialled).
    #[serde(default)]
    pub outbound_connections: usize,
    /// Tombstones of removed records it keeps.
    pub tombstones: usize,
    /// Services this node advertises (and republishes).
    pub adverts: Vec<String>,
    /// Requests peers sent it.
    pub requests: u64,
    /// Of those, how many did not decode.
    pub bad_requests: u64,
    /// Lookups run (FIND_NODE and FIND_VALUE).
    pub lookups: u64,
    /// Of those, how many hit the lookup timeout.
    pub lookup_timeouts: u64,
    /// Of those, how many got no answer at all.
    #[serde(default)]
    pub lookup_failures: u64,
    /// Median duration of the most recent lookups, in microseconds.
    pub lookup_p50_us: u64,
    /// 99th percentile of the same.
    pub lookup_p99_us: u64,
    /// STOREs of replications and republishes that were not acknowledged.
    #[serde(default)]
    pub store_failures: u64,
    /// REMOVEs (sent or passed on) that were not acknowledged.
    #[serde(default)]
    pub remove_failures: u64,
    /// Hand-offs to newcomers stopped by a failed STORE, or skipped with the queue full.
    #[serde(default)]
    pub handoff_failures: u64,
    /// The protocol version this node speaks ([`macula_dht::wire::PROTOCOL_VERSION`]).
    #[serde(default)]
    pub protocol: u8,
    /// Exchanges with peers of another protocol version (their requests, or their replies to
    /// ours).
    #[serde(default)]
    pub refused_version: u64,
    /// STOREs and REMOVEs refused: the signature did not verify.
    #[serde(default)]
    pub refused_forged: u64,
    /// STOREs and REMOVEs refused: the provider's `node_id` is another node's id.
    #[serde(default)]
    pub refused_wrong_publisher: u64,
    /// STOREs and REMOVEs refused: the sequence was not newer than the slot's.
    #[serde(default)]
    pub refused_stale: u64,
    /// STOREs refused: the publisher had removed the slot since (a replay).
    #[serde(default)]
    pub refused_replay: u64,
    /// STOREs refused: the publisher had its share of the store already.
    #[serde(default)]
    pub refused_quota: u64,
    /// STOREs refused: the peer sent them too fast.
    #[serde(default)]
    pub refused_rate: u64,
    /// Providers dropped from `find_value` replies: their seal did not verify.
    #[serde(default)]
    pub forged_in_replies: u64,
}

/// What a host embedding a node provides. `Default`: a store of its own and no events.
#[derive(Clone, Default)]
pub struct Host {
    /// The store to serve from, shared with the host; `None` makes one from `NodeConfig::store`.
    pub store: Option<Arc<SharedStore>>,
    /// Receives the node's [`Event`]s.
    pub events: Option<EventSink>,
}

/// A running DHT node. Dropping it stops its timer; [`Node::shutdown`] also closes the endpoint
/// at once (otherwise it closes when the last request in flight is done).
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Owned by the node's callers, apart from the engine: picks never wait on a lookup.
    selector: parking_lot::Mutex<macula_dht::select::Selector>,
}

impl Node {
    /// Binds `listen` (port 0 picks one), starts answering requests (unless `config.dht.serve`
    /// is false) and starts the timer. Must be called within a tokio runtime. The node knows no
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
        let endpoint = Endpoint::bind(listen, identity, config.endpoint_config())?;
        let store = host
            .store
            .unwrap_or_else(|| Arc::new(SharedStore::new(config.store.clone())));
        let keypair = identity.keypair()?;
        let selector = picking::selector(&config);
        let (shared, tasks) = Shared::launch(keypair, config, endpoint, store, host.events)?;
        tracing::debug!(addr = %shared.endpoint().local_addr(), id = %id_hex(&identity.id()), "node started");
        Ok(Node {
            shared,
            tasks,
            selector,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id()
    }

    /// The key it publishes under: the publisher of the records it advertises.
    pub fn publisher(&self) -> macula_dht::seal::Publisher {
        self.shared.with_dht(|dht| *dht.publisher())
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.endpoint().local_addr()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &NodeConfig {
        self.shared.config()
    }

    /// Pings each address (at once) and then looks up the node's own id through those that
    /// answered, which fills the routing table. Fails only when none answered. The addresses are
    /// remembered (at most 16) for re-joining when the table runs empty. Returns the table size.
    pub async fn bootstrap(&self, addrs: &[SocketAddr]) -> Result<usize, NodeError> {
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.bootstrap(store, addrs, now)))?
            .await?;
        match outcome {
            Outcome::Joined(joined) => Ok(joined?),
            _ => Err(NodeError::Closed),
        }
    }

    /// Pings the addresses (at most 16, at once) and adds those that answer to the table,
    /// without a lookup: enough for a client that is about to look something up anyway. Fails
    /// when none answered.
    pub async fn contact(&self, addrs: &[SocketAddr]) -> Result<usize, NodeError> {
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.contact(store, addrs, now)))?
            .await?;
        match outcome {
            Outcome::Contacted(contacted) => Ok(contacted?),
            _ => Err(NodeError::Closed),
        }
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
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.advertise(store, service, ad, refresh, now)?))?
            .await?;
        published(outcome)
    }

    /// Stops advertising `service`: removes this node's provider locally and sends REMOVE to the
    /// `k` closest nodes of its key and to every node that took a copy from here, which keep a
    /// tombstone so late copies stay out. Sent even if this process did not advertise it (a
    /// previous run with the same identity may have).
    pub async fn withdraw(&self, service: &str) -> Result<Published, NodeError> {
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.withdraw(store, service, now)?))?
            .await?;
        published(outcome)
    }

    /// Providers of `service`: see [`Node::providers`].
    pub async fn discover(&self, service: &str, want: usize) -> Result<Vec<Provider>, NodeError> {
        self.providers(&service_key(service), want).await
    }

    /// Providers of `key`: see [`Dht::providers`].
    pub async fn providers(&self, key: &[u8], want: usize) -> Result<Vec<Provider>, NodeError> {
        Ok(self.providers_report(key, want).await?.0)
    }

    /// [`Node::providers`], with the report of the lookup when one ran (`None`: answered from
    /// the local store).
    pub async fn providers_report(
        &self,
        key: &[u8],
        want: usize,
    ) -> Result<(Vec<Provider>, Option<LookupReport>), NodeError> {
        let started = self
            .shared
            .start(|dht, store, now| Ok(dht.providers(store, key, want, now)))?;
        match started {
            Begun::Done(held) => Ok((held, None)),
            Begun::Running(waiting) => match waiting.await? {
                Outcome::Lookup(mut report) => {
                    let providers = std::mem::take(&mut report.providers);
                    Ok((providers, Some(report)))
                }
                _ => Err(NodeError::Closed),
            },
        }
    }

    /// A FIND_VALUE lookup of `key` on the network (the local store is not consulted), ending
    /// once `want` providers are known, or when the `k` closest have answered.
    pub async fn find_providers(
        &self,
        key: &[u8],
        want: Option<usize>,
    ) -> Result<LookupReport, NodeError> {
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.find_value(store, key, want, now)))?
            .await?;
        lookup_report(outcome)
    }

    /// A FIND_NODE lookup of `target`: the `k` closest nodes that answered.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupReport, NodeError> {
        let outcome = self
            .shared
            .begin(|dht, store, now| Ok(dht.find_node(store, target, now)))?
            .await?;
        lookup_report(outcome)
    }

    /// Publishes a provider (versioned ETF) under `key` as this node: signed with the node's
    /// key, stored here and sent to the `k` closest nodes of `key` (see [`Dht::publish`]).
    /// Nobody republishes it: the caller does, as Macula's advertisers do. The local store is
    /// written at once (refusals come back at once); the returned future sends the STOREs.
    pub fn publish(
        &self,
        key: &[u8],
        etf: &[u8],
    ) -> Result<
        impl std::future::Future<Output = Result<Published, NodeError>> + Send + 'static,
        NodeError,
    > {
        let waiting = self
            .shared
            .begin(|dht, store, now| Ok(dht.publish(store, key, etf, now)?))?;
        Ok(async move { published(waiting.await?) })
    }

    /// Removes `node_id`'s provider under `key` here at once (leaving a tombstone); the returned
    /// future sends REMOVE to the `k` closest nodes of `key` and to every node this node gave a
    /// copy, which keep a tombstone too so late copies stay out.
    pub fn remove(
        &self,
        key: &[u8],
        node_id: &[u8],
    ) -> impl std::future::Future<Output = Result<Published, NodeError>> + Send + 'static {
        let waiting = self
            .shared
            .begin(|dht, store, now| Ok(dht.remove(store, key, node_id, now)));
        async move { published(waiting?.await?) }
    }

    /// Whether this node sent a STORE of `node_id`'s provider under `key` (and has not removed
    /// it since): its removal then goes to every node that took a copy.
    pub fn replicated(&self, key: &[u8], node_id: &[u8]) -> bool {
        self.shared.with_dht(|dht| dht.replicated(key, node_id))
    }

    /// The live providers this node holds under `key`.
    pub fn local_providers(&self, key: &[u8]) -> Vec<Provider> {
        let store = self.shared.store();
        store
            .read()
            .records(key, store.now_ms())
            .filter_map(|record| {
                let mut provider = Provider::parse(record.term).ok()?;
                provider.sealed_by(record.seal());
                Some(provider)
            })
            .collect()
    }

    /// Nodes in the routing table.
    pub fn peers(&self) -> Vec<NodeInfo> {
        self.shared.with_dht(Dht::peers)
    }

    /// The smoothed round-trip time of `peer`'s answers to this node, if it ever answered.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        self.shared.with_dht(|dht| dht.rtt(peer))
    }

    /// A snapshot of the node's state and counters.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// The requests it answered and sent, and the lookups it ran, by how they ended (for
    /// metrics; see [`ActivitySnapshot`]).
    pub fn activity(&self) -> ActivitySnapshot {
        self.shared.activity()
    }

    /// Stops the timer and closes the endpoint (connections closed, port released).
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.endpoint().close().await;
        tracing::debug!(id = %id_hex(&self.id()), "node stopped");
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
            .field("id", &id_hex(&self.id()))
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

fn published(outcome: Outcome) -> Result<Published, NodeError> {
    match outcome {
        Outcome::Published(published) => Ok(published?),
        _ => Err(NodeError::Closed),
    }
}

fn lookup_report(outcome: Outcome) -> Result<LookupReport, NodeError> {
    match outcome {
        Outcome::Lookup(report) => Ok(report),
        _ => Err(NodeError::Closed),
    }
}
