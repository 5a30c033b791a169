//! The iterative lookup in a simulated network: random ids, every node's routing table filled
//! from all the others, answers from those tables. It must find the true k closest (checked by
//! brute force) in few hops, cope with a fifth of the nodes dead, and stop at the first provider
//! in FIND_VALUE mode. Debug builds run fewer lookups; `--release` also runs 10 000 nodes.
//!
//! With dead nodes that nobody has noticed yet, answers still list them, so the live nodes just
//! past the k closest overall are often named by no node the lookup has reason to ask: no lookup
//! can then return exactly the k closest live nodes. There the test holds the lookup to the best
//! answer its information allows, and to the closest live node; the exact k closest live are
//! required once answers leave dead nodes out.

#[path = "lookup_support/mod.rs"]
mod support;

use std::sync::OnceLock;

use macula_dht::lookup::LookupConfig;
use macula_dht::NodeId;
use support::{check_invariants, percentile, Dead, Network, Rng, K};

fn lookups() -> usize {
    if cfg!(debug_assertions) {
        100
    } else {
        1_000
    }
}

fn network_1000() -> &'static Network {
    static NET: OnceLock<Network> = OnceLock::new();
    NET.get_or_init(|| Network::build(1_000, &mut Rng(0x5eed_1000)))
}

/// Each node dead with probability `percent` %.
fn dead_mask(n: usize, percent: usize, rng: &mut Rng) -> Vec<bool> {
    (0..n).map(|_| rng.below(100) < percent).collect()
}

#[derive(Default)]
struct Stats {
    lookups: usize,
    /// Exactly the k closest live nodes.
    exact: usize,
    /// The closest live node first.
    nearest: usize,
    /// The k closest live nodes among those the lookup heard of.
    best_heard: usize,
    /// Sum over lookups of how many of the k closest live nodes were found.
    found: usize,
    hops: Vec<u32>,
    queried: usize,
    failed: usize,
}

impl Stats {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.lookups as f64
    }

    fn p99(&mut self) -> u32 {
        percentile(&mut self.hops, 99.0)
    }

    fn report(&mut self, name: &str) {
        let [p50, p90, p99, max] = [50.0, 90.0, 99.0, 100.0].map(|p| percentile(&mut self.hops, p));
        println!(
            "{name}: {} lookups; exact k closest {:.1} %, closest found {:.1} %, best of heard \
             {:.1} %, recall {:.2} %; hops p50 {p50} p90 {p90} p99 {p99} max {max}; \
             queries/lookup {:.1}, failed/lookup {:.1}",
            self.lookups,
            100.0 * self.rate(self.exact),
            100.0 * self.rate(self.nearest),
            100.0 * self.rate(self.best_heard),
            100.0 * self.found as f64 / (self.lookups * K) as f64,
            self.queried as f64 / self.lookups as f64,
            self.failed as f64 / self.lookups as f64,
        );
    }
}

/// Runs `count` FIND_NODE lookups from random live nodes to random targets.
fn find_node(net: &Network, dead: Dead, count: usize, rng: &mut Rng) -> Stats {
    let config = LookupConfig::default();
    let mut stats = Stats {
        lookups: count,
        ..Stats::default()
    };
    for _ in 0..count {
        let from = loop {
            let at = rng.below(net.ids.len()) as u32;
            if !dead.is(at) {
                break at;
            }
        };
        let target = rng.id();
        let run = net.lookup(from, &target, config.clone(), dead, |_| Vec::new(), rng);
        check_invariants(&run, from, config.alpha);
        let got: Vec<NodeId> = run.outcome.closest.iter().map(|(id, _)| *id).collect();
        let truth = net.true_closest(from, &target, dead);
        stats.exact += usize::from(got == truth);
        stats.nearest += usize::from(got.first() == truth.first());
        stats.best_heard += usize::from(got == net.best_heard(&run, from, &target, dead));
        stats.found += truth.iter().filter(|id| got.contains(id)).count();
        stats.hops.push(run.outcome.hops);
        stats.queried += run.outcome.queried;
        stats.failed += run.outcome.failed;
    }
    stats
}

/// No failures: every lookup exact, p99 hops <= 4.
fn check_healthy(net: &Network, count: usize, rng: &mut Rng, name: &str) {
    let alive = vec![false; net.ids.len()];
    let dead = Dead {
        nodes: &alive,
        noticed: false,
    };
    let mut stats = find_node(net, dead, count, rng);
    stats.report(name);
    assert_eq!(stats.exact, stats.lookups);
    assert!(stats.p99() <= 4, "p99 hops {}", stats.p99());
}

/// 20 % dead: >= 99 % exact once the deaths are noticed; fresh deaths still give the best answer
/// the information allows, the closest live node >= 99 % of the time and most of the k closest.
fn check_fifth_dead(net: &Network, count: usize, rng: &mut Rng, name: &str) {
    let nodes = dead_mask(net.ids.len(), 20, rng);
    for noticed in [false, true] {
        let dead = Dead {
            nodes: &nodes,
            noticed,
        };
        let mut stats = find_node(net, dead, count, rng);
        let when = if noticed { "noticed" } else { "just died" };
        stats.report(&format!("{name}, 20 % dead, {when}"));
        assert_eq!(stats.best_heard, stats.lookups);
        assert!(stats.rate(stats.nearest) >= 0.99);
        assert!(stats.found as f64 >= 0.9 * (stats.lookups * K) as f64);
        if noticed {
            assert!(stats.rate(stats.exact) >= 0.99);
        }
        assert!(stats.p99() <= 4, "p99 hops {}", stats.p99());
    }
}

#[test]
fn every_lookup_finds_the_true_closest_in_1000_nodes() {
    check_healthy(network_1000(), lookups(), &mut Rng(1), "1000 nodes");
}

#[test]
fn lookups_survive_a_fifth_of_1000_nodes_dead() {
    check_fifth_dead(network_1000(), lookups(), &mut Rng(2), "1000 nodes");
}

#[test]
fn find_value_stops_at_the_first_provider() {
    // A key replicated, as a store would, on its k closest nodes, each holding the same provider
    // (one identity, a record of its own).
    let net = network_1000();
    let mut rng = Rng(3);
    let alive = vec![false; net.ids.len()];
    let dead = Dead {
        nodes: &alive,
        noticed: false,
    };
    let config = LookupConfig {
        want_providers: Some(1),
        ..LookupConfig::default()
    };
    let mut queried = 0;
    for _ in 0..lookups() {
        let from = rng.below(net.ids.len()) as u32;
        let key = rng.id();
        let holders: Vec<NodeId> = net.true_closest(u32::MAX, &key, dead);
        let holds = |at: u32| {
            if holders.contains(&net.ids[at as usize]) {
                vec![(b"provider-1".to_vec(), at.to_be_bytes().to_vec())]
            } else {
                Vec::new()
            }
        };
        let run = net.lookup(from, &key, config.clone(), dead, holds, &mut rng);
        check_invariants(&run, from, config.alpha);
        let out = run.outcome;
        assert_eq!(out.providers.len(), 1, "found no provider");
        assert_eq!(out.providers[0].identity, b"provider-1");
        queried += out.queried;
    }
    let avg = queried as f64 / lookups() as f64;
    println!("find_value, 1000 nodes: {avg:.1} queries/lookup to the first provider");
    assert!(avg < 10.0, "{avg} queries per find_value");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "10 000 nodes: run with --release")]
fn ten_thousand_nodes_meet_the_budget() {
    let net = Network::build(10_000, &mut Rng(0x5eed_10000));
    check_healthy(&net, 1_000, &mut Rng(4), "10 000 nodes");
    check_fifth_dead(&net, 1_000, &mut Rng(5), "10 000 nodes");
}
