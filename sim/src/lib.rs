//! An in-memory network of DHT nodes on a virtual clock.
//!
//! Each node is the engine's [`Dht`] with a [`ProviderStore`] of its own: the same state
//! machines the runtime drives over QUIC, driven here by a queue of timed deliveries instead of
//! sockets and timers. Messages take a per-pair latency and may be lost; nodes join, crash and
//! leave. Everything random comes from one seed, and simultaneous deliveries run in the order
//! they were scheduled, so one seed gives one outcome: a test can assert exact figures, and
//! thousands of virtual seconds cost milliseconds.
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
mod queue;
mod report;
mod rng;
mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use macula_dht::dht::{Action, Event, Outcome, Reply, Started};
use macula_dht::record::{service_key, Advertisement, Provider};
use macula_dht::seal::Keypair;
use macula_dht::wire::{NodeInfo, Request, Response};
use macula_dht::{Dht, DhtConfig, NodeId, OpId, ProviderStore, RpcId, StoreLimits, Time};

use queue::Queue;

pub use churn::Sessions;
pub use link::Links;
pub use report::{quantile, sorted_quantile, NodeSample, ProviderSample, Report};
pub use rng::Rng;
pub use scenario::Scenario;

/// Wake-ups of one node at one instant before the simulation calls it a livelock (a paused
/// hand-off legitimately asks for a few: each step examines a chunk of keys).
const MAX_WAKES_AT_ONCE: u32 = 10_000;

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
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            dht: DhtConfig::default(),
            store: StoreLimits::default(),
            links: Links::default(),
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

#[derive(Debug)]
enum Delivery {
    Request {
        from: usize,
        to: usize,
        /// `None`: injected by a test, nobody waits for the answer.
        rpc: Option<RpcId>,
        request: Arc<Request>,
    },
    Reply {
        from: usize,
        to: usize,
        rpc: RpcId,
        response: Response,
    },
    Wake {
        node: usize,
    },
}

/// The network: nodes, the virtual clock and what is on its way.
#[derive(Debug)]
pub struct Network {
    config: SimConfig,
    now: Time,
    rng: Rng,
    nodes: Vec<SimNode>,
    /// Each node's id, and the wake-up scheduled for it, if any (others in the queue are
    /// stale): what each delivery reads of nodes it does not otherwise touch, packed apart from
    /// the nodes' state.
    ids: Vec<NodeId>,
    wakes: Vec<Option<Time>>,
    queue: Queue<Delivery>,
    /// Order of scheduling: what is due at the same time is delivered in this order.
    seq: u64,
    outcomes: BTreeMap<(usize, OpId), Outcome>,
    /// Pairs of nodes whose messages to each other are lost (a partition), lower index first.
    cuts: BTreeSet<(usize, usize)>,
    /// Commands that ended while `discover_many` waits (`None` otherwise).
    ended: Option<Vec<(usize, OpId)>>,
    stats: NetStats,
}

impl Network {
    /// An empty network at virtual time 1 s.
    pub fn new(config: SimConfig) -> Network {
        Network {
            rng: Rng::new(config.seed),
            config,
            now: Time::from_millis(1_000),
            nodes: Vec::new(),
            ids: Vec::new(),
            wakes: Vec::new(),
            queue: Queue::new(),
            seq: 0,
            outcomes: BTreeMap::new(),
            cuts: BTreeSet::new(),
            ended: None,
            stats: NetStats::default(),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// What crossed the network so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Every node ever added, by index (crashed ones included).
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// The nodes, the rest of the network dropped: what they hold is then all that is left
    /// of it (a measure of memory per node).
    pub fn into_nodes(self) -> Vec<SimNode> {
        self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Every node, to drive one directly (what it asks for is not carried out: use
    /// [`Network::command`] for that).
    pub fn nodes_mut(&mut self) -> &mut [SimNode] {
        &mut self.nodes
    }

    /// Indices of the nodes that run.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect()
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
            self.config.dht.clone(),
            self.now,
            UNIX_ORIGIN_US + self.now.as_micros(),
            seed,
        )
        .expect("the simulation's DhtConfig is valid");
        self.ids.push(dht.id());
        self.wakes.push(None);
        self.nodes.push(SimNode {
            dht,
            store: ProviderStore::new(self.config.store.clone()),
            alive: true,
            woken_at: (Time::ZERO, 0),
            leaving: None,
        });
        let i = self.nodes.len() - 1;
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
        self.nodes[i].alive = false;
        self.wakes[i] = None;
    }

    /// From now on, every message between `a` and `b` is lost, until [`Network::heal`].
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cuts.insert((a.min(b), a.max(b)));
    }

    /// Messages between `a` and `b` get through again.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.cuts.remove(&(a.min(b), a.max(b)));
    }

    /// Delivers `request` to node `to` as if node `from` had sent it (its answer goes nowhere):
    /// for tests of what a node does with a request a peer may send at any time.
    pub fn inject(&mut self, from: usize, to: usize, request: Request) {
        self.seq += 1;
        let delivery = Delivery::Request {
            from,
            to,
            rpc: None,
            request: Arc::new(request),
        };
        self.queue.push(self.now, self.seq, delivery);
    }

    /// The running nodes that hold a live provider under `key`.
    pub fn holders(&self, key: &[u8]) -> Vec<usize> {
        let now_ms = self.now.as_millis();
        self.alive()
            .into_iter()
            .filter(|&i| self.nodes[i].store.providers(key, now_ms).next().is_some())
            .collect()
    }

    /// The `k` running nodes closest to `key`, closest first: the replicas a perfect network
    /// would choose.
    pub fn closest_alive(&self, key: &[u8], k: usize) -> Vec<usize> {
        let target = NodeId::normalize(key);
        let mut alive = self.alive();
        alive.sort_by_key(|&i| self.nodes[i].id().distance(&target));
        alive.truncate(k);
        alive
    }

    /// Node `i` withdraws every service it advertises and goes once those withdrawals ended.
    pub fn leave(&mut self, i: usize) {
        let services = self.nodes[i].dht.status().adverts;
        let mut ops = Vec::new();
        for service in services {
            if let Ok(op) = self.command(i, |dht, store, now| dht.withdraw(store, &service, now)) {
                ops.push(op);
            }
        }
        if ops.is_empty() {
            self.crash(i);
        } else {
            self.nodes[i].leaving = Some(ops);
        }
    }

    /// Runs `command` on node `i` at the current time and carries out what it asks for.
    pub fn command<R>(
        &mut self,
        i: usize,
        command: impl FnOnce(&mut Dht, &mut ProviderStore, Time) -> R,
    ) -> R {
        let now = self.now;
        let node = &mut self.nodes[i];
        let result = command(&mut node.dht, &mut node.store, now);
        self.after_input(i);
        result
    }

    /// The outcome of node `i`'s command `op`, once it ended (taken: a second call gives `None`).
    pub fn outcome(&mut self, i: usize, op: OpId) -> Option<Outcome> {
        self.outcomes.remove(&(i, op))
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
        while !self.outcomes.contains_key(&(i, op)) {
            let Some(next) = self.next_at().filter(|at| *at <= deadline) else {
                break;
            };
            self.step(next);
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
            let node = &mut self.nodes[i];
            match node.dht.providers(&mut node.store, &key, want, now) {
                Started::Done(held) => answers[at] = Some(held),
                Started::Running(op) => running.push((at, i, op)),
            }
            self.after_input(i);
        }
        let within = self.config.dht.lookup_timeout + self.config.dht.request_timeout;
        let deadline = self.now + within;
        let mut pending: BTreeSet<(usize, OpId)> =
            running.iter().map(|(_, i, op)| (*i, *op)).collect();
        self.ended = Some(Vec::new());
        while !pending.is_empty() {
            let Some(next) = self.next_at().filter(|at| *at <= deadline) else {
                break;
            };
            self.step(next);
            for ended in self.ended.iter_mut().flat_map(|e| e.drain(..)) {
                pending.remove(&ended);
            }
        }
        self.ended = None;
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
        while let Some(next) = self.next_at().filter(|at| *at <= until) {
            self.step(next);
        }
        self.now = until;
    }

    fn next_at(&self) -> Option<Time> {
        self.queue.next_at()
    }

    /// Delivers the next scheduled thing, at `at`.
    fn step(&mut self, at: Time) {
        let Some((due, delivery)) = self.queue.pop() else {
            return;
        };
        self.now = at.max(self.now);
        match delivery {
            Delivery::Request {
                from,
                to,
                rpc,
                request,
            } => self.deliver_request(from, to, rpc, request),
            Delivery::Reply {
                from,
                to,
                rpc,
                response,
            } => {
                if self.nodes[to].alive {
                    let from = self.ids[from];
                    let now = self.now;
                    let node = &mut self.nodes[to];
                    let reply = Reply::Answered {
                        from,
                        response: Ok(response),
                    };
                    node.dht.handle_reply(&mut node.store, rpc, reply, now);
                    self.after_input(to);
                }
            }
            Delivery::Wake { node } => {
                if self.wakes[node] == Some(due) && self.nodes[node].alive {
                    self.wakes[node] = None;
                    let n = &mut self.nodes[node];
                    n.woken_at = match n.woken_at {
                        (at, count) if at == due => (at, count + 1),
                        _ => (due, 1),
                    };
                    assert!(
                        n.woken_at.1 < MAX_WAKES_AT_ONCE,
                        "node {node} asks to be woken at {due:?} again and again: a deadline that does not move on",
                    );
                    n.dht.handle_timeout(&mut n.store, due);
                    self.after_input(node);
                }
            }
        }
    }

    fn deliver_request(
        &mut self,
        from: usize,
        to: usize,
        rpc: Option<RpcId>,
        request: Arc<Request>,
    ) {
        if !self.nodes[to].alive {
            self.stats.unanswered += 1;
            return;
        }
        let sender = NodeInfo {
            id: self.ids[from],
            addr: addr_of(from),
        };
        let now = self.now;
        let node = &mut self.nodes[to];
        let request = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        let response = node
            .dht
            .handle_request(&mut node.store, sender, request, now);
        self.after_input(to);
        let Some(rpc) = rpc else {
            return;
        };
        self.stats.replies += 1;
        let reply = Delivery::Reply {
            from: to,
            to: from,
            rpc,
            response,
        };
        self.transmit(to, from, reply);
    }

    /// Schedules a message from `from` to `to` after their one-way latency, unless it is lost.
    fn transmit(&mut self, from: usize, to: usize, delivery: Delivery) {
        if self.config.links.lost(&mut self.rng)
            || self.cuts.contains(&(from.min(to), from.max(to)))
        {
            self.stats.lost += 1;
            return;
        }
        let at = self.now + self.config.links.rtt(self.config.seed, from, to) / 2;
        self.seq += 1;
        self.queue.push(at, self.seq, delivery);
    }

    /// Carries out what node `i` asks for after an input, and schedules its next wake-up.
    fn after_input(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].dht.poll_action() {
            match action {
                Action::Send(out) => {
                    self.stats.requests += 1;
                    let Some(to) = index_of(out.addr).filter(|&to| to < self.nodes.len()) else {
                        continue; // nobody there: it times out
                    };
                    let request = Delivery::Request {
                        from: i,
                        to,
                        rpc: Some(out.rpc),
                        request: out.request,
                    };
                    self.transmit(i, to, request);
                }
                // The reply, when it comes, is ignored by the engine.
                Action::Cancel(_) => {}
                Action::Event(event) => self.count(&event),
                Action::Done(op, outcome) => {
                    self.outcomes.insert((i, op), outcome);
                    if let Some(ended) = self.ended.as_mut() {
                        ended.push((i, op));
                    }
                    self.settle_leaving(i, op);
                }
            }
        }
        let node = &self.nodes[i];
        if !node.alive {
            return;
        }
        let wake = node.dht.poll_timeout();
        if wake != self.wakes[i] {
            self.wakes[i] = wake;
            if let Some(at) = wake {
                self.seq += 1;
                let at = at.max(self.now);
                self.queue.push(at, self.seq, Delivery::Wake { node: i });
            }
        }
    }

    fn count(&mut self, event: &Event) {
        let stats = &mut self.stats;
        match event {
            Event::PeerUp(_) => stats.peer_ups += 1,
            Event::PeerDown(_) => stats.peer_downs += 1,
            Event::Lookup(_) => stats.lookups += 1,
            Event::Trouble(_) => stats.troubles += 1,
            _ => {}
        }
    }

    /// A leaving node goes once its last withdrawal ended.
    fn settle_leaving(&mut self, i: usize, op: OpId) {
        let Some(ops) = self.nodes[i].leaving.as_mut() else {
            return;
        };
        ops.retain(|o| *o != op);
        if ops.is_empty() {
            self.nodes[i].leaving = None;
            self.outcomes.retain(|(node, _), _| *node != i);
            self.crash(i);
        }
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
