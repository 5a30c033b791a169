//! `make bench-scale`, its real part: a testnet of 1 000 nodes in this process, each a full node
//! (its own QUIC endpoint on a loopback port, its engine, its store), all on one two-thread
//! runtime. Writes `target/bench/testnet.json`:
//!
//! - `testnet_1000_first_provider_p50_ms`: lookups that end on the first provider found
//!   (`find_providers(key, Some(1))`, the network only), from random nodes, one at a time; the
//!   caller's time around the call.
//! - `testnet_1000_p99_hops`: path hops of those lookups (to the peer whose answer brought the
//!   provider), and `testnet_1000_p99_longest_chain_hops` beside it.
//! - `testnet_1000_bytes_per_node`: the process's resident memory grown by starting the nodes,
//!   per node (engine, store, endpoint, connections, tasks: everything a node costs here).
//! - `testnet_udp_echo_p50_us`: the machine's loopback floor, measured in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use macula_dht_node::{service_key, NodeConfig, Testnet};

// Shared by the node benches; this one uses only a part of it.
#[allow(dead_code)]
mod support;
use support::{percentile, udp_round_trips, write_rows, Row};

const NODES: usize = 1_000;
const SERVICES: usize = 20;
const LOOKUPS: usize = 400;
/// Between the last advertisement and the first measured lookup.
const SETTLE: Duration = Duration::from_secs(5);

fn main() {
    let mut rows = Vec::new();
    let floor = udp_round_trips(2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let before = resident_bytes();
    let started = Instant::now();
    let (took, hops, chains, grown) = runtime.block_on(async {
        let mut config = NodeConfig::default();
        // As in the simulator's scenarios: with the default 60 s, the refreshes of the first
        // few hundred nodes (their QUIC handshakes with far nodes) take both cores while the
        // rest are still joining.
        config.dht.refresh_interval = Duration::from_secs(600);
        let net = Testnet::start(NODES, config).await.expect("testnet");
        let grown = resident_bytes().saturating_sub(before);
        println!(
            "testnet of {NODES} nodes up in {:?}, {} MiB more resident",
            started.elapsed(),
            grown >> 20
        );
        let mut rng = Lcg(0x7e57_0000);
        let mut keys = Vec::with_capacity(SERVICES);
        for s in 0..SERVICES {
            let service = format!("bench.testnet.{s}");
            let node = &net.nodes()[rng.below(NODES)];
            node.advertise(&service, "https://bench:1", BTreeMap::new(), 3600)
                .await
                .expect("advertise");
            keys.push(service_key(&service));
        }
        tokio::time::sleep(SETTLE).await;
        let (mut took, mut hops, mut chains) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..LOOKUPS {
            let node = &net.nodes()[rng.below(NODES)];
            let start = Instant::now();
            let report = node
                .find_providers(&keys[i % SERVICES], Some(1))
                .await
                .expect("lookup");
            took.push(start.elapsed());
            assert!(!report.providers.is_empty(), "lookup {i} found nothing");
            hops.push(report.path_hops);
            chains.push(report.hops);
        }
        net.shutdown().await;
        (took, hops, chains, grown)
    });
    let mut took = took;
    took.sort_unstable();
    let (mut hops, mut chains) = (hops, chains);
    hops.sort_unstable();
    chains.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{LOOKUPS} lookups to the first provider: p50 {:?} p99 {:?}; path hops p50 {} p99 {}, \
         longest chain p50 {} p99 {}; udp echo p50 {:?}",
        percentile(&took, 0.50),
        percentile(&took, 0.99),
        percentile(&hops, 0.50),
        percentile(&hops, 0.99),
        percentile(&chains, 0.50),
        percentile(&chains, 0.99),
        percentile(&floor, 0.50),
    );
    rows.push(Row {
        name: "testnet_udp_echo_p50_us",
        unit: "us",
        ours: percentile(&floor, 0.50).as_secs_f64() * 1e6,
    });
    rows.push(Row {
        name: "testnet_1000_first_provider_p50_ms",
        unit: "ms",
        ours: ms(percentile(&took, 0.50)),
    });
    rows.push(Row {
        name: "testnet_1000_first_provider_p99_ms",
        unit: "ms",
        ours: ms(percentile(&took, 0.99)),
    });
    rows.push(Row {
        name: "testnet_1000_p99_hops",
        unit: "hops",
        ours: percentile(&hops, 0.99).into(),
    });
    rows.push(Row {
        name: "testnet_1000_p99_longest_chain_hops",
        unit: "hops",
        ours: percentile(&chains, 0.99).into(),
    });
    rows.push(Row {
        name: "testnet_1000_bytes_per_node",
        unit: "bytes",
        ours: grown as f64 / NODES as f64,
    });
    write_rows("testnet.json", &rows);
}

/// The process's resident set, from `/proc/self/status` (0 where there is none).
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A small deterministic generator: the same nodes and services every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}
