//! Scenarios at scale: a network grows, services are advertised, then lookups spread over a
//! period of virtual time are measured while nodes leave (sessions drawn from a distribution)
//! and new ones replace them.
//!
//! Everything runs on [`Network`], the same engine code as every other simulation; this module
//! only decides who joins, leaves, advertises and looks up, and when, and what a lookup should
//! have found.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use macula_dht::dht::Outcome;
use macula_dht::record::service_key;
use macula_dht::{DhtConfig, LookupReport, NodeId, OpId, Time};

use crate::churn::Sessions;
use crate::report::{NodeSample, ProviderSample, Report};
use crate::{Links, Network, SimConfig};

/// The virtual time between two looks at what ended (joins, publishes, lookups) and at who is
/// due to leave: a departure or a lookup start is late by less than this.
const SLICE: Duration = Duration::from_secs(1);

/// Bootstrap nodes given to a joining node (random ones whose join ended), as an operator lists
/// a few: with one, a newcomer whose bootstrap node leaves during its join stays cut off.
const BOOTSTRAP_NODES: usize = 3;

/// The parameters of one scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name in reports.
    pub name: String,
    /// Seeds everything: one seed, one report.
    pub seed: u64,
    /// Nodes running at any time.
    pub nodes: usize,
    /// Round-trip times and message loss.
    pub links: Links,
    /// The config of every node.
    pub dht: DhtConfig,
    /// Virtual time between two nodes joining while the network grows.
    pub join_spacing: Duration,
    /// Virtual time after the last join before services are advertised.
    pub settle: Duration,
    /// Services advertised.
    pub services: usize,
    /// Nodes advertising each service.
    pub providers_per_service: usize,
    /// The advertisements' time to live.
    pub ttl_secs: u32,
    /// How long nodes stay once the measured period begins; `None`: nobody leaves.
    pub sessions: Option<Sessions>,
    /// The measured period: lookups are spread evenly over it, and churn runs through it.
    pub period: Duration,
    /// Provider lookups in the period.
    pub provider_lookups: usize,
    /// Node lookups in the period.
    pub node_lookups: usize,
    /// Threads that run the network ([`SimConfig::threads`]: the report does not depend on it).
    pub threads: usize,
}

impl Scenario {
    /// `nodes` nodes, wide-area links (log-normal round-trip times, median 50 ms, 1 % loss),
    /// no churn, a ten-minute period with 1 000 provider and 200 node lookups.
    pub fn new(name: &str, seed: u64, nodes: usize) -> Scenario {
        Scenario {
            name: name.to_string(),
            seed,
            nodes,
            links: Links {
                loss: 0.01,
                ..Links::default()
            },
            dht: DhtConfig {
                // Housekeeping (expiry, republish) every 5 s instead of every second: a
                // network of 100 k nodes would otherwise spend most of its events on it.
                tick: Duration::from_secs(5),
                refresh_interval: Duration::from_secs(600),
                ..DhtConfig::default()
            },
            join_spacing: Duration::from_millis(10),
            settle: Duration::from_secs(60),
            services: 200,
            providers_per_service: 2,
            ttl_secs: 600,
            sessions: None,
            period: Duration::from_secs(600),
            provider_lookups: 1_000,
            node_lookups: 200,
            threads: 1,
        }
    }

    /// Grows the network, advertises, measures; deterministic in the seed.
    pub fn run(&self) -> Report {
        self.run_keeping_network().0
    }

    /// [`Scenario::run`], and the network as it is at the end (to measure what it holds).
    pub fn run_keeping_network(&self) -> (Report, Network) {
        Run::new(self).measure()
    }
}

/// The nodes that run, with constant-time random choice and removal.
#[derive(Debug, Default)]
struct Population {
    alive: Vec<usize>,
    /// Position in `alive` by node index (`usize::MAX`: not alive).
    position: Vec<usize>,
}

impl Population {
    fn insert(&mut self, node: usize) {
        if self.position.len() <= node {
            self.position.resize(node + 1, usize::MAX);
        }
        self.position[node] = self.alive.len();
        self.alive.push(node);
    }

    fn remove(&mut self, node: usize) {
        let at = std::mem::replace(&mut self.position[node], usize::MAX);
        self.alive.swap_remove(at);
        if let Some(&moved) = self.alive.get(at) {
            self.position[moved] = at;
        }
    }

    fn contains(&self, node: usize) -> bool {
        self.position.get(node).is_some_and(|&p| p != usize::MAX)
    }
}

/// A command whose outcome the run waits for.
#[derive(Debug)]
enum Pending {
    /// A join; then the node may be asked to look up, and it advertises `service` if given.
    Join { service: Option<usize> },
    /// A publish of `service`.
    Advertise { service: usize },
    /// A provider lookup that should find `expected`: node ids, and how long before the lookup
    /// their publish ended.
    Providers {
        expected: BTreeMap<NodeId, Duration>,
    },
    /// A node lookup that should find `truth`, the `k` closest live nodes (other than the one
    /// that runs it) at its start.
    Nodes { truth: Vec<NodeId> },
}

struct Run<'a> {
    scenario: &'a Scenario,
    net: Network,
    population: Population,
    /// Nodes whose join ended (they are asked to look things up, and joined through).
    ready: Vec<bool>,
    /// Per service, the running nodes that published it, and when their publish ended.
    published: Vec<BTreeMap<usize, Time>>,
    /// Per node, the service it advertises, if any.
    advertises: Vec<Option<usize>>,
    /// Departure times, earliest first.
    departures: BinaryHeap<Reverse<(Time, usize)>>,
    pending: Vec<(usize, OpId, Pending)>,
    report: Report,
}

impl<'a> Run<'a> {
    fn new(scenario: &'a Scenario) -> Run<'a> {
        let net = Network::new(SimConfig {
            seed: scenario.seed,
            dht: scenario.dht.clone(),
            links: scenario.links.clone(),
            threads: scenario.threads,
            ..SimConfig::default()
        });
        Run {
            scenario,
            net,
            population: Population::default(),
            ready: Vec::new(),
            published: vec![BTreeMap::new(); scenario.services],
            advertises: Vec::new(),
            departures: BinaryHeap::new(),
            pending: Vec::new(),
            report: Report {
                name: scenario.name.clone(),
                nodes: scenario.nodes,
                median_rtt: scenario.links.median_rtt,
                provider_lookups: Vec::new(),
                node_lookups: Vec::new(),
                abandoned: 0,
                departures: 0,
                net: Default::default(),
                virtual_time: Duration::ZERO,
            },
        }
    }

    fn measure(mut self) -> (Report, Network) {
        let s = self.scenario;
        for _ in 0..s.nodes {
            self.add_node(None);
            self.run_slice(s.join_spacing);
        }
        self.run_slice(s.settle);
        // Distinct nodes for all services: a node advertises one service at most, so that its
        // departure ends that service's expectation and its replacement takes that one over.
        let providers = self
            .net
            .rng()
            .pick(&self.population.alive, s.services * s.providers_per_service);
        for (i, node) in providers.into_iter().enumerate() {
            self.advertise(node, i % s.services);
        }
        // Time for the first publishes to reach their replicas.
        self.run_slice(Duration::from_secs(30));
        if let Some(sessions) = s.sessions {
            for node in self.population.alive.clone() {
                self.schedule_departure(node, sessions);
            }
        }

        let start = self.net.now();
        let mut provider_starts = spread(start, s.period, s.provider_lookups).peekable();
        let mut node_starts = spread(start, s.period, s.node_lookups).peekable();
        let end = start + s.period;
        while self.net.now() < end {
            self.depart_due();
            let now = self.net.now();
            while provider_starts.next_if(|at| *at <= now).is_some() {
                self.start_provider_lookup();
            }
            while node_starts.next_if(|at| *at <= now).is_some() {
                self.start_node_lookup();
            }
            self.run_slice(SLICE);
        }
        // The last lookups end.
        self.run_slice(s.dht.lookup_timeout + s.dht.request_timeout);
        self.report.abandoned += self
            .pending
            .iter()
            .filter(|(_, _, p)| matches!(p, Pending::Providers { .. } | Pending::Nodes { .. }))
            .count();
        self.report.net = self.net.stats();
        self.report.virtual_time = self.net.now().since(Time::ZERO);
        (self.report, self.net)
    }

    /// Runs the network for `d`, then takes what ended.
    fn run_slice(&mut self, d: Duration) {
        self.net.run_for(d);
        for (node, op, pending) in std::mem::take(&mut self.pending) {
            if !self.population.contains(node) {
                if matches!(pending, Pending::Providers { .. } | Pending::Nodes { .. }) {
                    self.report.abandoned += 1;
                }
                continue;
            }
            match self.net.outcome(node, op) {
                Some(outcome) => self.ended(node, pending, outcome),
                None => self.pending.push((node, op, pending)),
            }
        }
    }

    fn ended(&mut self, node: usize, pending: Pending, outcome: Outcome) {
        match (pending, outcome) {
            // A join that failed leaves a running node with a thin table: it is asked to look
            // things up like any other, as a real one would be.
            (Pending::Join { service }, _) => {
                self.ready[node] = true;
                if let Some(service) = service {
                    self.advertise(node, service);
                }
            }
            (Pending::Advertise { service }, Outcome::Published(Ok(_))) => {
                self.published[service].insert(node, self.net.now());
            }
            (Pending::Providers { expected }, Outcome::Lookup(report)) => {
                self.report
                    .provider_lookups
                    .push(provider_sample(&expected, &report));
            }
            (Pending::Nodes { truth }, Outcome::Lookup(report)) => {
                let returned: BTreeSet<NodeId> = report.closest.iter().map(|n| n.id).collect();
                self.report.node_lookups.push(NodeSample {
                    recalled: truth.iter().filter(|id| returned.contains(id)).count(),
                    truth: truth.len(),
                    hops: report.hops,
                    path_hops: report.path_hops,
                    messages: report.queried,
                    elapsed: report.elapsed,
                });
            }
            // A failed publish: the service is not counted as published by this node.
            _ => {}
        }
    }

    /// Adds a node that joins through a few random ready ones (and then advertises `service`).
    fn add_node(&mut self, service: Option<usize>) -> usize {
        let mut via: Vec<usize> = (0..BOOTSTRAP_NODES)
            .filter_map(|_| self.random_ready())
            .collect();
        via.sort_unstable();
        via.dedup();
        let node = self.net.add_node();
        self.ready.push(false);
        self.advertises.push(service);
        self.population.insert(node);
        if via.is_empty() {
            self.ready[node] = true; // the first node
        } else {
            let op = self.net.join(node, &via);
            self.pending.push((node, op, Pending::Join { service }));
        }
        node
    }

    fn advertise(&mut self, node: usize, service: usize) {
        self.advertises[node] = Some(service);
        let endpoint = format!("https://node-{node}:443");
        let op = self.net.advertise(
            node,
            &service_name(service),
            &endpoint,
            self.scenario.ttl_secs,
        );
        self.pending
            .push((node, op, Pending::Advertise { service }));
    }

    fn schedule_departure(&mut self, node: usize, sessions: Sessions) {
        let at = self.net.now() + sessions.draw(self.net.rng());
        self.departures.push(Reverse((at, node)));
    }

    /// Nodes whose session ended crash (leaving without a word, as most do), and a new node
    /// takes each one's place and its advertisement.
    fn depart_due(&mut self) {
        let Some(sessions) = self.scenario.sessions else {
            return;
        };
        let now = self.net.now();
        while let Some(Reverse((_, node))) = self
            .departures
            .peek()
            .copied()
            .filter(|Reverse((at, _))| *at <= now)
        {
            self.departures.pop();
            self.net.crash(node);
            self.population.remove(node);
            self.report.departures += 1;
            let service = self.advertises[node];
            if let Some(service) = service {
                self.published[service].remove(&node);
            }
            let newcomer = self.add_node(service);
            self.schedule_departure(newcomer, sessions);
        }
    }

    /// A full FIND_VALUE of a service with live providers, from a random ready node.
    fn start_provider_lookup(&mut self) {
        let Some(node) = self.random_ready() else {
            return;
        };
        let services = self.published.len();
        let first = self.net.rng().below(services.max(1));
        let Some(service) = (0..services)
            .map(|i| (first + i) % services)
            .find(|&s| !self.published[s].is_empty())
        else {
            return;
        };
        let now = self.net.now();
        let expected = self.published[service]
            .iter()
            .map(|(&p, &at)| (self.net.node(p).id(), now.since(at)))
            .collect();
        let key = service_key(&service_name(service));
        let op = self.net.command(node, |dht, store, now| {
            dht.find_value(store, &key, None, now)
        });
        self.pending
            .push((node, op, Pending::Providers { expected }));
    }

    /// A FIND_NODE of a random id, from a random ready node.
    fn start_node_lookup(&mut self) {
        let Some(node) = self.random_ready() else {
            return;
        };
        let target = self.net.rng().id();
        let truth = self.closest_alive(&target, node);
        let op = self
            .net
            .command(node, |dht, store, now| dht.find_node(store, target, now));
        self.pending.push((node, op, Pending::Nodes { truth }));
    }

    /// The `k` live nodes other than `asker` closest to `target`, in no order (a partial
    /// selection: a sort of 100 k ids per lookup would dominate the run). A lookup returns other
    /// nodes, never the one that runs it.
    fn closest_alive(&self, target: &NodeId, asker: usize) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .population
            .alive
            .iter()
            .filter(|&&i| i != asker)
            .map(|&i| self.net.node(i).id())
            .collect();
        let k = self.scenario.dht.k.min(ids.len());
        if k < ids.len() {
            ids.select_nth_unstable_by_key(k, |id| id.distance(target));
            ids.truncate(k);
        }
        ids
    }

    /// A random node whose join ended (tries a few: nearly all are).
    fn random_ready(&mut self) -> Option<usize> {
        let alive = &self.population.alive;
        if alive.is_empty() {
            return None;
        }
        for _ in 0..64 {
            let node = alive[self.net.rng().below(alive.len())];
            if self.ready[node] {
                return Some(node);
            }
        }
        None
    }
}

fn provider_sample(expected: &BTreeMap<NodeId, Duration>, report: &LookupReport) -> ProviderSample {
    let found: BTreeSet<NodeId> = report
        .providers
        .iter()
        .filter_map(|p| {
            <[u8; macula_dht::ID_LEN]>::try_from(p.node_id.as_slice())
                .ok()
                .map(NodeId)
        })
        .collect();
    let live_found = expected.keys().filter(|id| found.contains(id)).count();
    let youngest_missed = expected
        .iter()
        .filter(|(id, _)| !found.contains(id))
        .map(|(_, age)| *age)
        .min();
    ProviderSample {
        found_all: live_found == expected.len(),
        found_one: live_found > 0,
        hops: report.hops,
        path_hops: report.path_hops,
        messages: report.queried,
        elapsed: report.elapsed,
        // The report's first provider may be a departed one whose record lives on: for the
        // latency of a usable answer, a lookup that found no live one has none.
        first_provider: report.first_provider.filter(|_| live_found > 0),
        timed_out: report.timed_out,
        youngest_missed,
    }
}

/// `n` instants spread evenly over `period` from `start`.
fn spread(start: Time, period: Duration, n: usize) -> impl Iterator<Item = Time> {
    (0..n).map(move |i| start + period.mul_f64((i as f64 + 0.5) / n as f64))
}

fn service_name(service: usize) -> String {
    format!("svc.scale.{service}")
}
