//! An in-memory network of DHT nodes on a virtual clock.
//!
//! Each node is the engine's [`Dht`] with a [`ProviderStore`] of its own: the same state
//! machines the runtime drives over QUIC, driven here by a queue of timed deliveries instead of
//! sockets and timers. Messages take a per-pair latency and may be lost; nodes join, crash and
//! leave. Everything random comes from one seed, and simultaneous deliveries run in an order
//! that comes from the nodes that scheduled them, so one seed gives one outcome, on one thread or
//! on several ([`SimConfig::threads`]): a test can assert exact figures, and thousands of
//! virtual seconds cost milliseconds.
//!
//! Messages are passed as decoded [`Request`]/[`Response`] values (the codec has its own tests
//! and fuzzing); a request to a crashed node, or a lost message, is simply never answered, and
//! the sender's engine fails it at its deadline as a real node would.
//!
//! ```
//! use std::time::Duration;
//! use macula_dht_sim::{Network, SimConfig};
//!
//! let mut net = Network::new(SimConfig::default()); // seed 1, 50 ms median round trip
//! let nodes = net.grow(100, Duration::from_millis(100)); // each joins through a random one
//! net.advertise(nodes[3], "svc.calc", "https://calc:1", 300);
//! net.run_for(Duration::from_secs(60));
//! assert_eq!(net.discover(nodes[50], "svc.calc", 1).unwrap().len(), 1);
//! ```

#![warn(missing_docs)]

mod churn;
mod link;
mod parallel;
mod queue;
mod report;
mod rng;
mod scenario;
mod shard;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use macula_dht::dht::{Outcome, Started};
use macula_dht::record::{service_key, Advertisement, Provider};
use macula_dht::seal::Keypair;
use macula_dht::wire::Request;
use macula_dht::{Dht, DhtConfig, NodeId, OpId, ProviderStore, StoreLimits, Time};

use parallel::Crew;
use shard::{Common, Shard};

pub use churn::Sessions;
pub use link::Links;
pub use report::{quantile, sorted_quantile, NodeSample, ProviderSample, Report};
pub use rng::Rng;
pub use scenario::Scenario;

/// Unix time of the virtual clock's origin: 2026-01-01.
const UNIX_ORIGIN_US: u64 = 1_767_225_600_000_000;

/// Settings of a simulated network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds every random choice: node ids, latencies, losses, the nodes' own randomness.
    pub seed: u64,
    /// The config of every node.
    pub dht: DhtConfig,
    /// The store limits of every node.
    pub store: StoreLimits,
    /// Round-trip times between pairs of nodes, and message loss.
    pub links: Links,
    /// Threads that run the network side by side (each its share of the nodes): the outcome is
    /// the same with any number; more are faster on a network with many deliveries at once.
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            dht: DhtConfig::default(),
            store: StoreLimits::default(),
            links: Links::default(),
            threads: 1,
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its DHT state machine.
    pub dht: Dht,
    /// Its provider store.
    pub store: ProviderStore,
    alive: bool,
    /// Wake-ups in a row at one instant: a node whose deadline does not move on would spin.
    woken_at: (Time, u32),
    /// Withdrawals that must end before a leaving node goes.
    leaving: Option<Vec<OpId>>,
    /// Deliveries it scheduled (messages and wake-ups): their order among simultaneous ones.
    scheduled: u64,
}

impl SimNode {
    /// Whether it runs (not crashed, not gone).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Its address in the network.
    pub fn id(&self) -> NodeId {
        self.dht.id()
    }
}

/// Counters of what crossed the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests sent.
    pub requests: u64,
    /// Replies sent.
    pub replies: u64,
    /// Messages lost on the way.
    pub lost: u64,
    /// Requests that reached a crashed or departed node.
    pub unanswered: u64,
    /// Peers entering a routing table.
    pub peer_ups: u64,
    /// Peers leaving a routing table.
    pub peer_downs: u64,
    /// Lookups ended.
    pub lookups: u64,
    /// Background troubles reported.
    pub troubles: u64,
}

impl std::ops::AddAssign for NetStats {
    fn add_assign(&mut self, o: NetStats) {
        self.requests += o.requests;
        self.replies += o.replies;
        self.lost += o.lost;
        self.unanswered += o.unanswered;
        self.peer_ups += o.peer_ups;
        self.peer_downs += o.peer_downs;
        self.lookups += o.lookups;
        self.troubles += o.troubles;
    }
}

/// The network: nodes, the virtual clock and what is on its way.
#[derive(Debug)]
pub struct Network {
    /// Lent to the crew's threads while they run (`common_mut` between runs).
    common: Arc<Common>,
    now: Time,
    rng: Rng,
    /// The nodes and their deliveries, in [`SimConfig::threads`] shards.
    shards: Vec<Shard>,
    /// The threads that run the shards after the first, if there are several.
    crew: Option<Crew>,
}

impl Network {
    /// An empty network at virtual time 1 s.
    pub fn new(config: SimConfig) -> Network {
        let shards = config.threads.max(1);
        Network {
            rng: Rng::new(config.seed),
            common: Arc::new(Common {
                config,
                ids: Vec::new(),
                cuts: BTreeSet::new(),
                shards,
            }),
            now: Time::from_millis(1_000),
            shards: (0..shards).map(|_| Shard::new(shards)).collect(),
            crew: (shards > 1).then(|| Crew::new(shards)),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// What crossed the network so far.
    pub fn stats(&self) -> NetStats {
        let mut stats = NetStats::default();
        for shard in &self.shards {
            stats += shard.stats;
        }
        stats
    }

    /// Nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.common.ids.len()
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.common.ids.is_empty()
    }

    /// The nodes, the rest of the network dropped: what they hold is then all that is left
    /// of it (a measure of memory per node). In no particular order.
    pub fn into_nodes(self) -> Vec<SimNode> {
        self.shards
            .into_iter()
            .flat_map(Shard::into_nodes)
            .collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        self.shard(i).node(i, &self.common)
    }

    /// Node `i`, to drive it directly (what it asks for is not carried out: use
    /// [`Network::command`] for that).
    pub fn node_mut(&mut self, i: usize) -> &mut SimNode {
        let shard = self.common.shard_of(i);
        self.shards[shard].node_mut(i, &self.common)
    }

    /// Indices of the nodes that run.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.node(i).alive).collect()
    }

    /// The network's random source (for a test's own choices, so they replay too).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Adds a node with a random key; it knows no one yet. Returns its index.
    pub fn add_node(&mut self) -> usize {
        let keypair = self.keypair();
        self.add_node_with_key(keypair)
    }

    /// A new key from the network's random source (its id is SHA-256 of its public key).
    pub fn keypair(&mut self) -> Keypair {
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        Keypair::from_seed(&seed)
    }

    /// Adds a node with the key `keypair`. Returns its index.
    pub fn add_node_with_key(&mut self, keypair: Keypair) -> usize {
        let seed = self.rng.next_u64();
        let dht = Dht::new(
            keypair,
            self.common.config.dht.clone(),
            self.now,
            UNIX_ORIGIN_US + self.now.as_micros(),
            seed,
        )
        .expect("the simulation's DhtConfig is valid");
        let i = self.len();
        self.common_mut().ids.push(dht.id());
        let node = SimNode {
            dht,
            store: ProviderStore::new(self.common.config.store.clone()),
            alive: true,
            woken_at: (Time::ZERO, 0),
            leaving: None,
            scheduled: 0,
        };
        let shard = self.common.shard_of(i);
        self.shards[shard].push(i, node, &self.common);
        self.after_input(i);
        i
    }

    /// Node `i` bootstraps through `via`. Returns the command, whose outcome
    /// [`Network::outcome`] gives once it ended.
    pub fn join(&mut self, i: usize, via: &[usize]) -> OpId {
        let addrs: Vec<SocketAddr> = via.iter().map(|&v| addr_of(v)).collect();
        self.command(i, |dht, store, now| dht.bootstrap(store, &addrs, now))
    }

    /// Node `i` stops at once: it answers nothing more and its state is kept only for
    /// inspection.
    pub fn crash(&mut self, i: usize) {
        let shard = self.common.shard_of(i);
        self.shards[shard].crash(i, &self.common);
    }

    /// From now on, every message between `a` and `b` is lost, until [`Network::heal`].
    pub fn cut(&mut self, a: usize, b: usize) {
        self.common_mut().cuts.insert((a.min(b), a.max(b)));
    }

    /// Messages between `a` and `b` get through again.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.common_mut().cuts.remove(&(a.min(b), a.max(b)));
    }

    /// Delivers `request` to node `to` as if node `from` had sent it (its answer goes nowhere):
    /// for tests of what a node does with a request a peer may send at any time.
    pub fn inject(&mut self, from: usize, to: usize, request: Request) {
        let (sender, receiver) = (self.common.shard_of(from), self.common.shard_of(to));
        let order = self.shards[sender].order(from, &self.common);
        self.shards[receiver].inject(self.now, order, from, to, request);
    }

    /// The running nodes that hold a live provider under `key`.
    pub fn holders(&self, key: &[u8]) -> Vec<usize> {
        let now_ms = self.now.as_millis();
        self.alive()
            .into_iter()
            .filter(|&i| self.node(i).store.providers(key, now_ms).next().is_some())
            .collect()
    }

    /// The `k` running nodes closest to `key`, closest first: the replicas a perfect network
    /// would choose.
    pub fn closest_alive(&self, key: &[u8], k: usize) -> Vec<usize> {
        let target = NodeId::normalize(key);
        let mut alive = self.alive();
        alive.sort_by_key(|&i| self.common.ids[i].distance(&target));
        alive.truncate(k);
        alive
    }

    /// Node `i` withdraws every service it advertises and goes once those withdrawals ended.
    pub fn leave(&mut self, i: usize) {
        let services = self.node(i).dht.status().adverts;
        let mut ops = Vec::new();
        for service in services {
            if let Ok(op) = self.command(i, |dht, store, now| dht.withdraw(store, &service, now)) {
                ops.push(op);
            }
        }
        if ops.is_empty() {
            self.crash(i);
        } else {
            self.node_mut(i).leaving = Some(ops);
        }
    }

    /// Runs `command` on node `i` at the current time and carries out what it asks for.
    pub fn command<R>(
        &mut self,
        i: usize,
        command: impl FnOnce(&mut Dht, &mut ProviderStore, Time) -> R,
    ) -> R {
        let now = self.now;
        let node = self.node_mut(i);
        let result = command(&mut node.dht, &mut node.store, now);
        self.after_input(i);
        result
    }

    /// The outcome of node `i`'s command `op`, once it ended (taken: a second call gives `None`).
    pub fn outcome(&mut self, i: usize, op: OpId) -> Option<Outcome> {
        self.shard_mut(i).outcomes.remove(&(i, op))
    }

    /// Runs a command on node `i` and the network until it ends (or `within` passed).
    pub fn run_command(
        &mut self,
        i: usize,
        within: Duration,
        command: impl FnOnce(&mut Dht, &mut ProviderStore, Time) -> OpId,
    ) -> Option<Outcome> {
        let op = self.command(i, command);
        let deadline = self.now + within;
        while !self.shard(i).outcomes.contains_key(&(i, op)) {
            if !self.step_until(deadline) {
                break;
            }
        }
        self.outcome(i, op)
    }

    /// Adds `n` nodes, one every `spacing` of virtual time, each joining through a random node
    /// already running (the first through none). Returns their indices.
    pub fn grow(&mut self, n: usize, spacing: Duration) -> Vec<usize> {
        let mut added = Vec::with_capacity(n);
        for _ in 0..n {
            let alive = self.alive();
            let i = self.add_node();
            if !alive.is_empty() {
                let via = alive[self.rng.below(alive.len())];
                self.join(i, &[via]);
            }
            added.push(i);
            self.run_for(spacing);
        }
        added
    }

    /// Node `i` advertises `service` at `endpoint` for `ttl_secs` and keeps it published.
    pub fn advertise(&mut self, i: usize, service: &str, endpoint: &str, ttl_secs: u32) -> OpId {
        self.publish(i, service, endpoint, ttl_secs, true)
    }

    /// Node `i` publishes `service` once: nobody refreshes it.
    pub fn publish_once(&mut self, i: usize, service: &str, endpoint: &str, ttl_secs: u32) -> OpId {
        self.publish(i, service, endpoint, ttl_secs, false)
    }

    fn publish(
        &mut self,
        i: usize,
        service: &str,
        endpoint: &str,
        ttl: u32,
        refresh: bool,
    ) -> OpId {
        let ad = Advertisement {
            endpoint: endpoint.to_string(),
            metadata: BTreeMap::new(),
            ttl_secs: ttl,
        };
        self.command(i, |dht, store, now| {
            dht.advertise(store, service, ad, refresh, now)
                .expect("a valid advertisement within bounds")
        })
    }

    /// Node `i` withdraws `service`.
    pub fn withdraw(&mut self, i: usize, service: &str) -> OpId {
        self.command(i, |dht, store, now| {
            dht.withdraw(store, service, now)
                .expect("within the bound of commands waiting")
        })
    }

    /// The providers of `service` as node `i` finds them: see [`Network::discover_many`].
    pub fn discover(&mut self, i: usize, service: &str, want: usize) -> Option<Vec<Provider>> {
        self.discover_many(&[(i, service, want)]).pop().flatten()
    }

    /// For each `(node, service, want)`, the providers of `service` as `node` finds them: held
    /// ones if there are at least `want`, else a lookup that stops at `want` (`usize::MAX`: runs
    /// to the end). All start at once, and the network runs until every lookup ended; `None`
    /// for one that did not end within the lookup timeout and a request timeout.
    pub fn discover_many(
        &mut self,
        queries: &[(usize, &str, usize)],
    ) -> Vec<Option<Vec<Provider>>> {
        let now = self.now;
        let mut answers: Vec<Option<Vec<Provider>>> = vec![None; queries.len()];
        let mut running = Vec::new();
        for (at, &(i, service, want)) in queries.iter().enumerate() {
            let key = service_key(service);
            let node = self.node_mut(i);
            match node.dht.providers(&mut node.store, &key, want, now) {
                Started::Done(held) => answers[at] = Some(held),
                Started::Running(op) => running.push((at, i, op)),
            }
            self.after_input(i);
        }
        let dht = &self.common.config.dht;
        let deadline = self.now + dht.lookup_timeout + dht.request_timeout;
        let mut pending: BTreeSet<(usize, OpId)> =
            running.iter().map(|(_, i, op)| (*i, *op)).collect();
        for shard in &mut self.shards {
            shard.ended = Some(Vec::new());
        }
        while !pending.is_empty() && self.step_until(deadline) {
            for shard in &mut self.shards {
                for ended in shard.ended.iter_mut().flat_map(|e| e.drain(..)) {
                    pending.remove(&ended);
                }
            }
        }
        for shard in &mut self.shards {
            shard.ended = None;
        }
        for (at, i, op) in running {
            if let Some(Outcome::Lookup(report)) = self.outcome(i, op) {
                answers[at] = Some(report.providers);
            }
        }
        answers
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        let lookahead = self.common.config.links.shortest_rtt() / 2;
        match &self.crew {
            Some(crew) if lookahead >= Duration::from_micros(1) => {
                crew.run(&mut self.shards, &self.common, lookahead, until);
            }
            _ => while self.step_until(until) {},
        }
        self.now = until;
    }

    /// Delivers the first thing due, if it is due by `until`; false when nothing is.
    fn step_until(&mut self, until: Time) -> bool {
        let first = (0..self.shards.len())
            .filter_map(|s| self.shards[s].next_key().map(|key| (key, s)))
            .min();
        let Some((key, s)) = first.filter(|(key, _)| (key >> 64) as u64 <= until.as_micros())
        else {
            return false;
        };
        self.now = Time::from_micros((key >> 64) as u64).max(self.now);
        self.shards[s].step(&self.common);
        self.hand_over();
        true
    }

    /// Carries out what node `i` asks for after a command.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let shard = self.common.shard_of(i);
        self.shards[shard].after_input(i, now, &self.common);
        self.hand_over();
    }

    /// Queues what the shards sent the nodes of other shards.
    fn hand_over(&mut self) {
        for from in 0..self.shards.len() {
            for to in 0..self.shards.len() {
                let letters = std::mem::take(&mut self.shards[from].outbox[to]);
                if !letters.is_empty() {
                    self.shards[to].receive(letters);
                }
            }
        }
    }

    fn common_mut(&mut self) -> &mut Common {
        Arc::get_mut(&mut self.common).expect("the crew gives it back at the end of each run")
    }

    fn shard(&self, i: usize) -> &Shard {
        &self.shards[self.common.shard_of(i)]
    }

    fn shard_mut(&mut self, i: usize) -> &mut Shard {
        let shard = self.common.shard_of(i);
        &mut self.shards[shard]
    }
}

/// The address of node `i`: `10.x.y.z:port`, unique for 2^32 nodes.
pub fn addr_of(i: usize) -> SocketAddr {
    let i = i as u64;
    let ip = Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff) as u32);
    SocketAddr::from((ip, 4000 + (i >> 24) as u16))
}

/// The node at `addr`, if it is a simulated address.
pub fn index_of(addr: SocketAddr) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let ip = u32::from(*v4.ip());
    if ip >> 24 != 0x0a {
        return None;
    }
    let high = u64::from(v4.port().checked_sub(4000)?);
    Some(((high << 24) | u64::from(ip & 0x00ff_ffff)) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_back_to_indices() {
        for i in [0, 1, 255, 65_536, (1 << 24) + 3, 100_000] {
            assert_eq!(index_of(addr_of(i)), Some(i));
        }
        assert_eq!(index_of("127.0.0.1:4000".parse().unwrap()), None);
    }
}
