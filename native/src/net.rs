//! Network mode: the runtime of `rust-node/` embedded in the BEAM, so that a BEAM node is a
//! peer of the DHT exactly as a native node is.
//!
//! One small tokio runtime per VM runs every node's network work; no NIF ever waits on it, except
//! `net_start`, which binds the listener on a dirty I/O scheduler. Peers are answered inside Rust
//! from the same store the Erlang API reads, so a peer's FIND_VALUE never reaches Erlang, and a
//! peer's STORE is visible to the next `get_local`. Work started from Erlang (a lookup, a
//! replication, a removal) starts in the node's engine at once and runs there to its end, within
//! the engine's bounds; what reports back is by message:
//!
//! - lookups: `{macula_dht_lookup, Tag, {ok | no_answer, Providers}}` to the caller, always
//!   sent, within the node's lookup timeout, or `{error, lookup_failed}` if its task died;
//! - events, to the process that owns the node: `{macula_dht_net, {peer_up | peer_down,
//!   NodeInfo}}` and `{macula_dht_net, {lookup, Summary}}` while it asked for them, and
//!   `{macula_dht_net, {bootstrap, Result}}` once after start.
//!
//! Peers entering and leaving the runtime's routing table are mirrored into the node's Erlang
//! routing table as `#{node_id, address, last_seen}`, so `size/1` and `find_closest/3` see the
//! mesh. The tasks waiting for lookups started from Erlang are bounded by `MAX_TASKS`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use macula_dht::etf;
use macula_dht::provider::ProviderRecord;
use macula_dht::settings::{self, Setting, SettingError};
use macula_dht::wire::{NodeInfo, PROTOCOL_VERSION};
use macula_dht_node::config::resolve_addr;
use macula_dht_node::{
    DhtConfig, Event, Host, Identity, LookupKind, LookupSummary, NodeConfig, NodeError, PickError,
    Strategy,
};
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, Resource, ResourceArc, Term};
use tokio::runtime::{Handle, Runtime};

use crate::node::{unix_ms, Node, Table};
use crate::reply::{self, atoms};

/// Lookups started from Erlang waiting for their outcome at once, per node.
const MAX_TASKS: usize = 4096;

/// Longest `close/1` waits for a node's endpoint to close (it gives up its port then).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Worker threads of the VM's runtime: network work is I/O bound and must not compete with the
/// schedulers.
const RUNTIME_THREADS: usize = 2;

mod net_atoms {
    rustler::atoms! {
        macula_dht_net, macula_dht_lookup, undefined,
        peer_up, peer_down, lookup, bootstrap, lookup_failed, overloaded, not_networked,
        already_networked, identity, listen, invalid_settings, runtime,
        address, kind, target, providers, queried, failed, hops, elapsed_us, timed_out,
        bootstrap_addrs = "bootstrap", lookup_timeout_ms, request_timeout_ms, alpha,
        find_node, find_value, no_answer, publisher_share_pct, peer_stores_per_s, wrong_publisher,
        unknown, not_32_bytes, invalid_strategy,
    }
}

/// The node's identity key, loaded in Erlang before the server starts (its id is the node id).
pub struct IdentityKey(Identity);

#[rustler::resource_impl]
impl Resource for IdentityKey {}

/// The network side of one node.
pub struct Net {
    node: Arc<macula_dht_node::Node>,
    runtime: Handle,
    tasks: Arc<AtomicUsize>,
    /// The owner hears peer and lookup events only while this is set.
    events: Arc<AtomicBool>,
}

impl Net {
    /// Whether removing `node_id`'s provider under `key` goes to the whole network: the node's own
    /// provider, or one it published with `store/3`.
    pub fn removes_everywhere(&self, key: &[u8], node_id: &[u8]) -> bool {
        node_id == self.node.id().0 || self.node.replicated(key, node_id)
    }

    /// Removes the provider here at once (leaving a tombstone) and sends REMOVE in the
    /// background to the `k` closest nodes and every node that took a copy from here. The
    /// engine runs it to the end and counts REMOVEs that were not acknowledged; nobody waits for
    /// its outcome.
    pub fn remove(&self, key: &[u8], node_id: &[u8]) {
        drop(self.node.remove(key, node_id));
    }

    /// Stops the node: timers at once, the endpoint as soon as the runtime gets to it.
    pub fn stop(&self) {
        let node = self.node.clone();
        self.runtime.spawn(async move { node.shutdown().await });
    }

    /// Stops the node and waits until its endpoint is closed. Blocks: dirty schedulers only.
    pub fn stop_and_wait(&self) {
        let node = self.node.clone();
        let closing = self.runtime.spawn(async move { node.shutdown().await });
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(STOP_WAIT, closing).await });
    }
}

/// One of a node's `MAX_TASKS` task slots, given back on drop.
struct TaskSlot(Arc<AtomicUsize>);

impl TaskSlot {
    fn take(tasks: &Arc<AtomicUsize>) -> Option<TaskSlot> {
        tasks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TASKS).then_some(n + 1)
            })
            .ok()
            .map(|_| TaskSlot(tasks.clone()))
    }
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .thread_name("macula_dht_net")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads the identity key at `path`, creating it when missing, or makes a new one for `undefined`.
/// `{ok, NodeId, Key}`.
#[rustler::nif(schedule = "DirtyIo")]
fn identity<'a>(env: Env<'a>, path: Term<'a>) -> Term<'a> {
    let loaded = if path.decode::<Atom>().ok() == Some(net_atoms::undefined()) {
        Identity::generate()
    } else {
        match Binary::from_term(path) {
            Ok(path) => Identity::load_or_create(String::from_utf8_lossy(path.as_slice()).as_ref()),
            Err(_) => return reply::error(env, (net_atoms::identity(), atoms::not_a_binary())),
        }
    };
    match loaded {
        Ok(identity) => {
            let id = reply::binary(env, &identity.id().0);
            (atoms::ok(), id, ResourceArc::new(IdentityKey(identity))).encode(env)
        }
        Err(e) => reply::error(env, (net_atoms::identity(), e.to_string())),
    }
}

/// What `net_start` reads from its settings map (checked by `macula_routing_config` first).
struct Settings {
    listen: SocketAddr,
    bootstrap: Vec<SocketAddr>,
    config: NodeConfig,
}

impl Settings {
    /// Reads the settings map; a value that cannot be used is an error naming its setting.
    fn from_term(term: Term<'_>) -> Result<Settings, SettingError> {
        let get = |setting: &'static str, key: Atom| {
            term.map_get(key).map_err(|_| SettingError::Invalid {
                setting,
                reason: "missing".into(),
            })
        };
        let addr = |setting: &'static str, t: Term<'_>| -> Result<SocketAddr, SettingError> {
            let invalid = |reason: String| SettingError::Invalid { setting, reason };
            let text = Binary::from_term(t).map_err(|_| invalid("not a binary".into()))?;
            resolve_addr(&String::from_utf8_lossy(text.as_slice()))
                .map_err(|e| invalid(e.to_string()))
        };
        let int = |setting: Setting, key: Atom| -> Result<u64, SettingError> {
            get(setting.name, key)?
                .decode::<u64>()
                .map_err(|_| setting.invalid("not a non-negative integer"))
        };
        let size = |setting: Setting, key: Atom| -> Result<usize, SettingError> {
            usize::try_from(int(setting, key)?).map_err(|_| setting.invalid("too large"))
        };
        let listen = addr("listen", get("listen", net_atoms::listen())?)?;
        let bootstrap_list: Vec<Term<'_>> = get("bootstrap", net_atoms::bootstrap_addrs())?
            .decode()
            .map_err(|_| SettingError::Invalid {
                setting: "bootstrap",
                reason: "not a list".into(),
            })?;
        let bootstrap = bootstrap_list
            .into_iter()
            .map(|t| addr("bootstrap", t))
            .collect::<Result<Vec<_>, _>>()?;
        let ms = |setting: Setting, key: Atom| int(setting, key).map(Duration::from_millis);
        let config = NodeConfig {
            dht: DhtConfig {
                k: size(settings::K, atoms::k())?,
                alpha: size(settings::ALPHA, net_atoms::alpha())?,
                replacements: size(settings::REPLACEMENTS, atoms::replacements())?,
                lookup_timeout: ms(settings::LOOKUP_TIMEOUT_MS, net_atoms::lookup_timeout_ms())?,
                request_timeout: ms(
                    settings::REQUEST_TIMEOUT_MS,
                    net_atoms::request_timeout_ms(),
                )?,
                publisher_share_pct: size(
                    settings::PUBLISHER_SHARE_PCT,
                    net_atoms::publisher_share_pct(),
                )?,
                peer_stores_per_s: size(
                    settings::PEER_STORES_PER_S,
                    net_atoms::peer_stores_per_s(),
                )?,
                ..DhtConfig::default()
            },
            ..NodeConfig::default()
        };
        config.dht.validate()?;
        Ok(Settings {
            listen,
            bootstrap,
            config,
        })
    }
}

/// `{error, {invalid_settings, Setting, Reason}}`.
fn invalid_settings<'a>(env: Env<'a>, e: &SettingError) -> Term<'a> {
    // Setting names come from the engine's fixed table, never from the caller.
    let setting = Atom::from_str(env, e.setting())
        .map_or_else(|_| net_atoms::undefined().encode(env), |a| a.encode(env));
    reply::error(env, (net_atoms::invalid_settings(), setting, e.to_string()))
}

/// Checks network settings before a server starts: the addresses resolve, the node config is
/// within bounds, and the listen address can be bound right now. `ok` or
/// `{error, {invalid_settings, Setting, Reason}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn net_check<'a>(env: Env<'a>, settings: Term<'a>) -> Term<'a> {
    let checked = Settings::from_term(settings).and_then(|s| {
        std::net::UdpSocket::bind(s.listen)
            .map(drop)
            .map_err(|e| SettingError::Invalid {
                setting: "listen",
                reason: format!("cannot listen on {}: {e}", s.listen),
            })
    });
    match checked {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => invalid_settings(env, &e),
    }
}

/// Joins the network: binds the listener, serves peers from the node's store, and bootstraps in
/// the background (the owner gets `{macula_dht_net, {bootstrap, Result}}`). Returns the bound
/// address, `{Ip, Port}`.
#[rustler::nif(schedule = "DirtyIo")]
fn net_start<'a>(
    env: Env<'a>,
    node: ResourceArc<Node>,
    key: ResourceArc<IdentityKey>,
    settings: Term<'a>,
) -> Term<'a> {
    let fail = |what: Atom, why: String| reply::error(env, (what, why));
    if node.net().is_some() {
        return reply::error(env, net_atoms::already_networked());
    }
    if key.0.id() != node.local_id() {
        return fail(
            net_atoms::identity(),
            "the identity's id is not the node's id".into(),
        );
    }
    let settings = match Settings::from_term(settings) {
        Ok(settings) => settings,
        Err(e) => return invalid_settings(env, &e),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(why) => return fail(net_atoms::runtime(), why),
    };
    let owner = env.pid();
    let events = Arc::new(AtomicBool::new(false));
    let host = Host {
        store: Some(node.store.clone()),
        events: Some(event_sink(owner, node.table.clone(), events.clone())),
    };
    let started = runtime.block_on(macula_dht_node::Node::start_hosted(
        &key.0,
        settings.listen,
        settings.config,
        host,
    ));
    let started = match started {
        Ok(started) => Arc::new(started),
        Err(e) => return fail(net_atoms::listen(), e.to_string()),
    };
    let addr = started.local_addr();
    let net = Arc::new(Net {
        node: started.clone(),
        runtime: runtime.handle().clone(),
        tasks: Arc::new(AtomicUsize::new(0)),
        events,
    });
    if let Err(net) = node.attach(net) {
        net.stop();
        return reply::error(env, net_atoms::already_networked());
    }
    let bootstrap = settings.bootstrap;
    runtime.spawn(async move {
        let result = if bootstrap.is_empty() {
            Ok(0)
        } else {
            started
                .bootstrap(&bootstrap)
                .await
                .map_err(|e| e.to_string())
        };
        send(&owner, |env| {
            let result = match result {
                Ok(peers) => (atoms::ok(), peers).encode(env),
                Err(why) => reply::error(env, why),
            };
            (
                net_atoms::macula_dht_net(),
                (net_atoms::bootstrap(), result),
            )
                .encode(env)
        });
    });
    (atoms::ok(), address(env, addr)).encode(env)
}

/// Turns peer and lookup events on or off for the node's owner.
#[rustler::nif]
fn net_events(node: &Node, on: bool) -> Atom {
    if let Some(net) = node.net() {
        net.events.store(on, Ordering::Release);
    }
    atoms::ok()
}

/// The providers of `key`: `{ok, Providers}` at once when this node holds at least `want`;
/// otherwise `ok`, and a lookup that stops once `want` providers are known sends the caller
/// `{macula_dht_lookup, Tag, Result}` (see `Node::providers`). `Result` is `{ok, Providers}`, or
/// `{no_answer, Providers}` when no peer answered the lookup (or none was known), so that a
/// failed lookup is not mistaken for a key nobody provides.
#[rustler::nif]
fn net_find_value<'a>(
    env: Env<'a>,
    node: &Node,
    key: Term<'a>,
    want: usize,
    tag: Term<'a>,
) -> Term<'a> {
    let (key, net) = match key_and_net(env, node, key) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    match crate::read_local(env, node, key.as_slice()) {
        Ok(Some(list)) if list.list_length().is_ok_and(|n| n >= want) => {
            return (atoms::ok(), list).encode(env);
        }
        Ok(_) => {}
        Err(reply) => return reply,
    }
    let key = key.as_slice().to_vec();
    for_caller(env, &net, tag, |lookup, reply| async move {
        if let Ok((found, report)) = lookup.providers_report(&key, want).await {
            let terms: Vec<Vec<u8>> = found.into_iter().map(|p| p.term).collect();
            let answered = report.is_none_or(|r| r.answered > 0);
            reply.providers(&terms, answered);
        }
    })
}

/// A request's key (a binary) and the node's network side: `{error, {invalid_key, ...}}` or
/// `{error, not_networked}` otherwise.
fn key_and_net<'a>(
    env: Env<'a>,
    node: &Node,
    key: Term<'a>,
) -> Result<(Binary<'a>, Arc<Net>), Term<'a>> {
    let Ok(key) = Binary::from_term(key) else {
        return Err(reply::invalid_key(env));
    };
    let net = node
        .net()
        .ok_or_else(|| reply::error(env, net_atoms::not_networked()))?;
    Ok((key, net))
}

/// Runs `work` on the node's runtime for a caller that waits for `{macula_dht_lookup, Tag,
/// Result}` (a reply dropped unsent is `{error, lookup_failed}`): `ok`, or `{error,
/// overloaded}` when too many are running.
fn for_caller<'a, F, Fut>(env: Env<'a>, net: &Net, tag: Term<'a>, work: F) -> Term<'a>
where
    F: FnOnce(Arc<macula_dht_node::Node>, LookupReply) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(slot) = TaskSlot::take(&net.tasks) else {
        return reply::error(env, net_atoms::overloaded());
    };
    let running = work(net.node.clone(), LookupReply::new(env.pid(), tag));
    net.runtime.spawn(async move {
        let _slot = slot;
        running.await;
    });
    atoms::ok().encode(env)
}

/// Publishes the provider as this node: signed with its key and stored here at once, then a
/// STORE to the `k` closest nodes in the background (the engine runs it to the end and counts
/// STOREs that were not acknowledged; nobody waits for its outcome). A provider without a
/// `node_id` cannot be a slot on other nodes: it is stored here only, as `store_put` does. One
/// whose `node_id` is another node's id (32 bytes) is refused: no node would take it from us.
#[rustler::nif]
fn net_store<'a>(env: Env<'a>, node: &'a Node, key: Term<'a>, value: Term<'a>) -> Term<'a> {
    let stored_here = |key| match crate::put(env, node, key, value) {
        Ok(_) => atoms::ok().encode(env),
        Err(reply) => reply,
    };
    let Some(net) = node.net() else {
        return stored_here(key);
    };
    let (bin, bytes) = match crate::provider_etf(env, node, key, value) {
        Ok(provider) => provider,
        Err(reply) => return reply,
    };
    match net.node.publish(bin.as_slice(), bytes.as_slice()) {
        Ok(sending) => {
            drop(sending);
            atoms::ok().encode(env)
        }
        Err(NodeError::NoNodeId) => stored_here(key),
        Err(NodeError::WrongPublisher) => {
            let etf = ProviderRecord::parse(bytes.as_slice());
            let node_id = etf.ok().and_then(|p| p.node_id().map(<[u8]>::to_vec));
            let node_id = reply::binary(env, &node_id.unwrap_or_default());
            reply::error(env, (net_atoms::wrong_publisher(), node_id))
        }
        Err(NodeError::Store(e)) => reply::store_error(env, &e),
        Err(_) => atoms::closed().encode(env),
    }
}

/// The bound address `{Ip, Port}`, or `{error, not_networked}`.
#[rustler::nif]
fn net_address<'a>(env: Env<'a>, node: &Node) -> Term<'a> {
    match node.net() {
        Some(net) => (atoms::ok(), address(env, net.node.local_addr())).encode(env),
        None => reply::error(env, net_atoms::not_networked()),
    }
}

/// The runtime's routing table: `[#{node_id, address}]`.
#[rustler::nif]
fn net_peers<'a>(env: Env<'a>, node: &Node) -> Vec<Term<'a>> {
    node.net()
        .map(|net| net.node.peers())
        .unwrap_or_default()
        .iter()
        .map(|peer| node_info(env, peer, None))
        .collect()
}

/// The smoothed round-trip time, in microseconds, of a peer's answers to this node:
/// `{ok, Micros}`, `unknown` when it never answered, `{error, not_networked}` on a single node.
#[rustler::nif]
fn net_rtt<'a>(env: Env<'a>, node: &Node, peer: Term<'a>) -> Term<'a> {
    let Some(net) = node.net() else {
        return reply::error(env, net_atoms::not_networked());
    };
    let id = Binary::from_term(peer)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
    let Some(id) = id else {
        return reply::error(env, (atoms::invalid_node_id(), net_atoms::not_32_bytes()));
    };
    match net.node.rtt(&macula_dht::NodeId(id)) {
        Some(rtt) => (atoms::ok(), rtt.as_micros() as u64).encode(env),
        None => net_atoms::unknown().encode(env),
    }
}

/// One provider of the service under `key` by `strategy` (`round_robin`, `random`,
/// `least_loaded` or `nearest`), as `Node::pick`: `ok` at once, then the caller gets
/// `{macula_dht_lookup, Tag, {ok, [Provider]}}`, or `{ok, []}` when there is none.
#[rustler::nif]
fn net_pick<'a>(
    env: Env<'a>,
    node: &Node,
    key: Term<'a>,
    strategy: Atom,
    tag: Term<'a>,
) -> Term<'a> {
    let (key, net) = match key_and_net(env, node, key) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let Some(strategy) = strategy
        .to_term(env)
        .atom_to_string()
        .ok()
        .and_then(|name| name.parse::<Strategy>().ok())
    else {
        return reply::error(env, (net_atoms::invalid_strategy(), strategy));
    };
    let key = key.as_slice().to_vec();
    for_caller(env, &net, tag, |picker, reply| async move {
        match picker.pick_by_key(&key, strategy).await {
            Ok(provider) => reply.providers(&[provider.term], true),
            Err(PickError::NoProviders) => reply.providers(&[], true),
            Err(PickError::Node(_)) => {}
        }
    })
}

/// The caller could not reach the provider `node_id` of the service under `key`: `pick` skips
/// it for a back-off. `{ok, BackoffMs}`.
#[rustler::nif]
fn net_report_failure<'a>(env: Env<'a>, node: &Node, key: Term<'a>, node_id: Term<'a>) -> Term<'a> {
    let (key, net) = match key_and_net(env, node, key) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let Ok(node_id) = Binary::from_term(node_id) else {
        return reply::error(env, (atoms::invalid_node_id(), node_id));
    };
    let backoff = net
        .node
        .report_failure_by_key(key.as_slice(), node_id.as_slice());
    (atoms::ok(), backoff.as_millis() as u64).encode(env)
}

/// Counters of the network side (zeros without one), as `[{Name, Count}]`, and whether the
/// node joined a network.
pub fn stats(node: &Node) -> ([(Atom, u64); 22], bool) {
    let status = node.net().map(|net| net.node.status());
    let joined = status.as_ref().is_some_and(|s| s.joined);
    let get = |f: fn(&macula_dht_node::Status) -> u64| status.as_ref().map_or(0, f);
    let counters = [
        (atoms::peers(), get(|s| s.peers as u64)),
        (atoms::suspects(), get(|s| s.suspects as u64)),
        (atoms::requests(), get(|s| s.requests)),
        (atoms::bad_requests(), get(|s| s.bad_requests)),
        (atoms::tombstones(), get(|s| s.tombstones as u64)),
        (atoms::lookups(), get(|s| s.lookups)),
        (atoms::lookup_timeouts(), get(|s| s.lookup_timeouts)),
        (atoms::lookup_p50_us(), get(|s| s.lookup_p50_us)),
        (atoms::lookup_p99_us(), get(|s| s.lookup_p99_us)),
        (atoms::lookup_failures(), get(|s| s.lookup_failures)),
        (atoms::store_failures(), get(|s| s.store_failures)),
        (atoms::remove_failures(), get(|s| s.remove_failures)),
        (atoms::handoff_failures(), get(|s| s.handoff_failures)),
        (atoms::protocol(), u64::from(PROTOCOL_VERSION)),
        (atoms::refused_version(), get(|s| s.refused_version)),
        (atoms::refused_forged(), get(|s| s.refused_forged)),
        (
            atoms::refused_wrong_publisher(),
            get(|s| s.refused_wrong_publisher),
        ),
        (atoms::refused_stale(), get(|s| s.refused_stale)),
        (atoms::refused_replay(), get(|s| s.refused_replay)),
        (atoms::refused_quota(), get(|s| s.refused_quota)),
        (atoms::refused_rate(), get(|s| s.refused_rate)),
        (atoms::forged_in_replies(), get(|s| s.forged_in_replies)),
    ];
    (counters, joined)
}

/// The reply to one lookup, owed to the caller: sent once, by `providers`, or on drop (the task
/// died) as `{error, lookup_failed}`.
struct LookupReply {
    pid: LocalPid,
    env: OwnedEnv,
    tag: SavedTerm,
    sent: bool,
}

impl LookupReply {
    fn new(pid: LocalPid, tag: Term<'_>) -> LookupReply {
        let env = OwnedEnv::new();
        let tag = env.save(tag);
        LookupReply {
            pid,
            env,
            tag,
            sent: false,
        }
    }

    /// `{ok, Providers}`, or `{no_answer, Providers}` when the lookup reached no peer.
    fn providers(mut self, terms: &[Vec<u8>], answered: bool) {
        let mut list = Vec::new();
        etf::write_list(terms.iter().map(Vec::as_slice), &mut list);
        let tag = if answered {
            atoms::ok()
        } else {
            net_atoms::no_answer()
        };
        self.send(|env| match crate::decode_list(env, &list) {
            Some(providers) => (tag, providers).encode(env),
            None => reply::error(env, atoms::corrupt_record()),
        });
    }

    fn send(&mut self, result: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
        self.sent = true;
        let tag = &self.tag;
        let pid = self.pid;
        self.env.run(|env| {
            let message = (net_atoms::macula_dht_lookup(), tag.load(env), result(env));
            let _ = env.send(&pid, message);
        });
    }
}

impl Drop for LookupReply {
    fn drop(&mut self) {
        if !self.sent {
            self.send(|env| reply::error(env, net_atoms::lookup_failed()));
        }
    }
}

/// Sends a message built in a fresh environment. Works from any thread: on a scheduler thread
/// the send is refused (the runtime's threads are not schedulers, so it does not happen).
fn send(pid: &LocalPid, message: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
    OwnedEnv::new().run(|env| {
        let _ = env.send(pid, message(env));
    });
}

/// Mirrors peers into the Erlang table and passes peer and lookup events on to `owner` while
/// `on` is set. The other events (publishes, troubles) are the runtime's log lines and counters.
fn event_sink(owner: LocalPid, table: Table, on: Arc<AtomicBool>) -> macula_dht_node::EventSink {
    Arc::new(move |event: Event| {
        match &event {
            Event::PeerUp(peer) => mirror_up(&table, peer),
            Event::PeerDown(peer) => {
                table.write().remove(&peer.id);
            }
            _ => {}
        }
        if on.load(Ordering::Acquire) {
            OwnedEnv::new().run(|env| {
                if let Some(term) = event_term(env, &event) {
                    let _ = env.send(&owner, (net_atoms::macula_dht_net(), term).encode(env));
                }
            });
        }
    })
}

/// `{peer_up | peer_down, NodeInfo}` or `{lookup, Summary}`; `None` for events Erlang is not
/// sent.
fn event_term<'a>(env: Env<'a>, event: &Event) -> Option<Term<'a>> {
    Some(match event {
        Event::PeerUp(peer) => (net_atoms::peer_up(), node_info(env, peer, None)).encode(env),
        Event::PeerDown(peer) => (net_atoms::peer_down(), node_info(env, peer, None)).encode(env),
        Event::Lookup(summary) => (net_atoms::lookup(), lookup_summary(env, summary)).encode(env),
        _ => return None,
    })
}

/// Puts a peer of the runtime into the Erlang table, as `table_add` stores a NodeInfo map.
fn mirror_up(table: &Table, peer: &NodeInfo) {
    let bytes =
        OwnedEnv::new().run(|env| crate::node_info_bytes(node_info(env, peer, Some(unix_ms()))));
    if let Ok(bytes) = bytes {
        table.write().insert(peer.id, bytes);
    }
}

/// `#{node_id => Id, address => {Ip, Port}}`, with `last_seen` when given.
fn node_info<'a>(env: Env<'a>, peer: &NodeInfo, last_seen: Option<u64>) -> Term<'a> {
    let mut pairs = vec![
        (atoms::node_id(), reply::binary(env, &peer.id.0)),
        (net_atoms::address(), address(env, peer.addr)),
    ];
    if let Some(ms) = last_seen {
        pairs.push((atoms::last_seen(), ms.encode(env)));
    }
    reply::map(env, &pairs)
}

fn lookup_summary<'a>(env: Env<'a>, s: &LookupSummary) -> Term<'a> {
    let elapsed_us = u64::try_from(s.elapsed.as_micros()).unwrap_or(u64::MAX);
    let kind = match s.kind {
        LookupKind::FindNode => net_atoms::find_node(),
        LookupKind::FindValue => net_atoms::find_value(),
    };
    reply::map(
        env,
        &[
            (net_atoms::kind(), kind.encode(env)),
            (net_atoms::target(), reply::binary(env, &s.target.0)),
            (net_atoms::providers(), s.providers.encode(env)),
            (net_atoms::queried(), s.queried.encode(env)),
            (net_atoms::failed(), s.failed.encode(env)),
            (net_atoms::hops(), s.hops.encode(env)),
            (net_atoms::elapsed_us(), elapsed_us.encode(env)),
            (net_atoms::timed_out(), s.timed_out.encode(env)),
        ],
    )
}

/// `{{A, B, C, D}, Port}` or `{{A, ..., H}, Port}`, as `inet` writes addresses.
fn address(env: Env<'_>, addr: SocketAddr) -> Term<'_> {
    let ip: Vec<Term<'_>> = match addr.ip() {
        IpAddr::V4(v4) => v4.octets().iter().map(|o| o.encode(env)).collect(),
        IpAddr::V6(v6) => v6.segments().iter().map(|s| s.encode(env)).collect(),
    };
    (make_tuple(env, &ip), addr.port()).encode(env)
}
