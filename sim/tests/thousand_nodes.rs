//! A thousand nodes through an hour of virtual time: joins, advertisements, a crash of a
//! quarter of the network, republishes, withdrawals and expiry, with wide-area latency and
//! message loss. At the end every live record must be found from every running node, and every
//! withdrawn or abandoned one from none; and a second run with the same seed must give exactly
//! the same figures.

use std::time::{Duration, Instant};

use macula_dht::DhtConfig;
use macula_dht_sim::{Links, NetStats, Network, SimConfig};

const NODES: usize = 1_000;
const SERVICES: usize = 40;
const TTL_SECS: u32 = 600;

/// A service and the nodes that advertise it.
struct Service {
    name: String,
    providers: Vec<usize>,
}

/// What a run did and found; two runs with one seed must agree on all of it.
#[derive(Debug, PartialEq, Eq)]
struct Figures {
    net: NetStats,
    virtual_ms: u64,
    /// Per service kind: (queries, queries that found exactly the live providers).
    live: (usize, usize),
    withdrawn: (usize, usize),
    abandoned: (usize, usize),
    peers_total: usize,
}

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        dht: DhtConfig {
            tick: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(600),
            ..DhtConfig::default()
        },
        links: Links {
            median_rtt: Duration::from_millis(50),
            spread: 0.5,
            loss: 0.01,
        },
        ..SimConfig::default()
    }
}

fn run(seed: u64) -> Figures {
    let mut net = Network::new(config(seed));
    let nodes = net.grow(NODES, Duration::from_millis(100));

    // Services, a quarter of them with two providers.
    let mut services = Vec::new();
    for s in 0..SERVICES {
        let providers = net.rng().pick(&nodes, if s % 4 == 0 { 2 } else { 1 });
        services.push(Service {
            name: format!("svc.{s}"),
            providers,
        });
    }
    for service in &services {
        for &p in &service.providers {
            net.advertise(p, &service.name, &format!("https://node-{p}:443"), TTL_SECS);
        }
    }
    net.run_for(Duration::from_secs(600));

    // A quarter of the network crashes at once.
    for i in net.rng().pick(&nodes, NODES / 4) {
        net.crash(i);
    }
    net.run_for(Duration::from_secs(600));

    // Ten services whose providers all run are withdrawn by them.
    let mut withdrawn = Vec::new();
    for (s, service) in services.iter().enumerate() {
        if withdrawn.len() < 10 && service.providers.iter().all(|&p| net.node(p).is_alive()) {
            for &p in &service.providers {
                net.withdraw(p, &service.name);
            }
            withdrawn.push(s);
        }
    }
    // Past an hour in all, long past the ttl of every record nobody republishes.
    net.run_for(Duration::from_secs(2_700));
    assert!(net.now().as_millis() >= 3_600_000);

    let alive = net.alive();
    let mut live = Vec::new();
    let mut gone = Vec::new();
    let mut abandoned = Vec::new();
    for (s, service) in services.iter().enumerate() {
        let running: Vec<usize> = service
            .providers
            .iter()
            .copied()
            .filter(|&p| net.node(p).is_alive())
            .collect();
        if withdrawn.contains(&s) {
            gone.push(s);
        } else if running.is_empty() {
            abandoned.push(s);
        } else {
            live.push((s, running));
        }
    }
    assert!(
        !abandoned.is_empty(),
        "some services lost every provider in the crash"
    );

    // Every live provider, from every running node.
    let mut queries = Vec::new();
    for (s, running) in &live {
        for &i in &alive {
            queries.push((i, services[*s].name.as_str(), running.len()));
        }
    }
    let answers = net.discover_many(&queries);
    let mut live_ok = 0;
    for ((i, name, _), answer) in queries.iter().zip(&answers) {
        let (_, running) = live
            .iter()
            .find(|(s, _)| services[*s].name == *name)
            .expect("queried services are live");
        let mut want: Vec<Vec<u8>> = running
            .iter()
            .map(|&p| net.node(p).id().0.to_vec())
            .collect();
        let mut got: Vec<Vec<u8>> = answer.iter().flatten().map(|p| p.node_id.clone()).collect();
        want.sort();
        got.sort();
        if got == want {
            live_ok += 1;
        } else {
            eprintln!(
                "node {i} finds {} of {name}: peers {} status {:?}",
                got.len(),
                net.node(*i).dht.peer_count(),
                net.node(*i).dht.status().stats
            );
        }
    }

    // Withdrawn and abandoned ones, from none: full lookups.
    let withdrawn_figures = found_nowhere(&mut net, &services, &gone, &alive);
    let abandoned_figures = found_nowhere(&mut net, &services, &abandoned, &alive);

    Figures {
        net: net.stats(),
        virtual_ms: net.now().as_millis(),
        live: (queries.len(), live_ok),
        withdrawn: withdrawn_figures,
        abandoned: abandoned_figures,
        peers_total: alive.iter().map(|&i| net.node(i).dht.peer_count()).sum(),
    }
}

/// (queries, queries that found nothing) for full lookups of `which` services from `from`.
fn found_nowhere(
    net: &mut Network,
    services: &[Service],
    which: &[usize],
    from: &[usize],
) -> (usize, usize) {
    let queries: Vec<(usize, &str, usize)> = which
        .iter()
        .flat_map(|&s| {
            from.iter()
                .map(move |&i| (i, services[s].name.as_str(), usize::MAX))
        })
        .collect();
    let answers = net.discover_many(&queries);
    let clean = answers
        .iter()
        .filter(|a| a.as_ref().is_some_and(|found| found.is_empty()))
        .count();
    (queries.len(), clean)
}

#[test]
fn a_thousand_nodes_through_an_hour_of_churn_and_removal() {
    let started = Instant::now();
    let first = run(0x5eed_0001);
    let one_run = started.elapsed();
    eprintln!("one run: {one_run:?}, {first:?}");
    assert_eq!(
        first.live.0, first.live.1,
        "every live record from every node"
    );
    assert_eq!(
        first.withdrawn.0, first.withdrawn.1,
        "withdrawn records from none"
    );
    assert_eq!(
        first.abandoned.0, first.abandoned.1,
        "abandoned records from none"
    );
    assert!(first.live.0 >= 10_000 && first.withdrawn.0 >= 7_500 && first.abandoned.0 > 0);
    assert!(first.net.lost > 0 && first.net.unanswered > 0 && first.net.peer_downs > 0);

    let second = run(0x5eed_0001);
    assert_eq!(first, second, "one seed, one outcome");
    eprintln!("two runs: {:?}", started.elapsed());
}
