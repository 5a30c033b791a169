//! Cluster benches of the node runtime; writes `target/bench/cluster.json`.
//!
//! - The floor: a plain UDP round trip on loopback, the machine's cost of two wake-ups.
//! - One remote FIND_VALUE of an unchanged one-provider key over loopback QUIC: encode, request,
//!   the node's answer, decode, and the check of the provider's seal that a lookup makes (with
//!   the bounded cache of seals already verified, as a node keeps it). The node runs on its own
//!   thread and single-threaded runtime, the client on another, like two processes on one
//!   machine. Latency percentiles of sequential requests, then the throughput of 64 concurrent
//!   callers.
//! - Signed STOREs one node takes from 64 callers (each its own peer and publisher, each record
//!   new, so every one is verified), per second; and one signature verification alone.
//! - A 100-node loopback testnet in this process (k = 20, alpha = 3): services advertised from
//!   random nodes, then FIND_VALUE lookups (want 1 provider) from nodes that do not hold the
//!   key: time to the first provider and hop counts.
//!
//! Budgets (docs performance.md): one hop <= 60 us p50, >= 40 k req/s with 64 callers, first
//! provider <= 5 ms p50 in a 100-node cluster; >= 10 k verified STOREs/s. Rows have no baseline
//! (`null`).
//!
//! `cargo bench -p macula_dht_node --bench cluster`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use macula_dht::provider::ProviderRecord;
use macula_dht::record::versioned;
use macula_dht::seal::{Keypair, Verifier};
use macula_dht::wire::{Request, Response, SealedRecord};
use macula_dht_node::record::Advertisement;
use macula_dht_node::{service_key, Endpoint, Identity, Node, NodeConfig, Testnet};

mod support;
use support::{client_endpoint, current_thread, percentile, udp_round_trips, ServerThread};

const SEQUENTIAL: usize = 20_000;
const CALLERS: usize = 64;
const CONCURRENT_TOTAL: usize = CALLERS * 3_125;
const TESTNET_NODES: usize = 100;
const SERVICES: usize = 20;
const LOOKUPS: usize = 400;
/// Signed STOREs per caller: within one peer's burst (five seconds at 2000/s).
const STORES_PER_CALLER: usize = 400;
const VERIFICATIONS: usize = 10_000;
/// Seals a lookup node remembers (`DhtConfig::verified_cache`'s default).
const VERIFIED_CACHE: usize = 8192;

struct Row {
    name: &'static str,
    unit: &'static str,
    ours: f64,
}

/// A node on its own thread and runtime.
fn start_server() -> ServerThread {
    ServerThread::start(|| async {
        let node = Node::start(
            &Identity::generate().expect("identity"),
            "127.0.0.1:0".parse().expect("addr"),
            NodeConfig::default(),
        )
        .await
        .expect("node");
        let addr = node.local_addr();
        (addr, async move { node.shutdown().await })
    })
}

/// One FIND_VALUE, its providers checked as a lookup checks them; how many there were.
async fn find_value(
    client: &Endpoint,
    addr: SocketAddr,
    key: &[u8],
    frame: &[u8],
    verifier: &mut Verifier,
) -> usize {
    let (_, reply) = client
        .request(addr, None, frame.to_vec())
        .await
        .expect("request");
    match Response::decode(&reply).expect("decode") {
        Response::Value { providers, .. } => {
            for p in &providers {
                let etf = versioned(&p.term);
                let node_id = ProviderRecord::parse(&etf).expect("provider").node_id();
                verifier
                    .check_seal(key, &p.term, node_id, &p.seal)
                    .expect("a valid seal");
            }
            providers.len()
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

/// A STORE of a new record of `publisher`'s own under a key of its own.
fn signed_store(publisher: &Keypair, n: usize) -> Request {
    let key = service_key(&format!(
        "bench.store.{}.{n}",
        hex(&publisher.public()[..4])
    ));
    let ad = Advertisement {
        endpoint: format!("https://provider-{n}.example:9443"),
        metadata: BTreeMap::from([("zone".to_string(), "eu-west".to_string())]),
        ttl_secs: 3600,
    };
    let etf = ad.encode(&publisher.node_id(), 1_800_000_000);
    Request::Store {
        key: key.to_vec(),
        record: SealedRecord {
            seal: publisher.seal(&key, &etf[1..], 1, 3600),
            term: etf[1..].to_vec(),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The loopback floor, measured right before the one-hop figure it qualifies.
fn floor(rows: &mut Vec<Row>) {
    let rtts = udp_round_trips(SEQUENTIAL);
    let p50 = percentile(&rtts, 0.50);
    println!("floor: UDP round trip on loopback, {SEQUENTIAL} sequential: p50 {p50:?}");
    rows.push(Row {
        name: "loopback_udp_round_trip_p50_us",
        unit: "us",
        ours: p50.as_secs_f64() * 1e6,
    });
}

fn one_hop(rows: &mut Vec<Row>) {
    let key = service_key("bench.one_hop");
    let server = start_server();
    let addr = server.addr;
    let rt = current_thread();
    let client = rt.block_on(async {
        let client = client_endpoint();
        let ad = Advertisement {
            endpoint: "https://provider.example:9443".to_string(),
            metadata: BTreeMap::from([("zone".to_string(), "eu-west".to_string())]),
            ttl_secs: 3600,
        };
        // Published by its own node, as the protocol requires.
        let publisher = Keypair::from_seed(&[1; 32]);
        let etf = ad.encode(&publisher.node_id(), 1_800_000_000);
        let store = Request::Store {
            key: key.to_vec(),
            record: SealedRecord {
                seal: publisher.seal(&key, &etf[1..], 1, 3600),
                term: etf[1..].to_vec(),
            },
        };
        client
            .request(addr, None, store.encode())
            .await
            .expect("store");
        client
    });
    let frame = Request::FindValue { key: key.to_vec() }.encode();
    let mut lat = rt.block_on(async {
        let mut verifier = Verifier::new(VERIFIED_CACHE);
        for _ in 0..2_000 {
            assert_eq!(
                find_value(&client, addr, &key, &frame, &mut verifier).await,
                1
            );
        }
        let mut lat = Vec::with_capacity(SEQUENTIAL);
        for _ in 0..SEQUENTIAL {
            let start = Instant::now();
            find_value(&client, addr, &key, &frame, &mut verifier).await;
            lat.push(start.elapsed());
        }
        lat
    });
    lat.sort_unstable();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!("find_value one hop, {SEQUENTIAL} sequential: p50 {p50:?} p99 {p99:?}");
    rows.push(Row {
        name: "find_value_one_hop_p50_us",
        unit: "us",
        ours: p50.as_secs_f64() * 1e6,
    });
    rows.push(Row {
        name: "find_value_one_hop_p99_us",
        unit: "us",
        ours: p99.as_secs_f64() * 1e6,
    });
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CALLERS {
            let n = CONCURRENT_TOTAL / CALLERS;
            let client = client.clone();
            let frame = frame.clone();
            tasks.spawn(async move {
                let mut verifier = Verifier::new(VERIFIED_CACHE);
                for _ in 0..n {
                    find_value(&client, addr, &key, &frame, &mut verifier).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("caller");
        }
        start.elapsed()
    });
    let rps = CONCURRENT_TOTAL as f64 / elapsed.as_secs_f64();
    println!("find_value, {CALLERS} callers: {rps:.0} req/s");
    rows.push(Row {
        name: "find_value_64_callers_rps",
        unit: "req/s",
        ours: rps,
    });
    rt.block_on(client.close());
    server.stop();
}

/// Signed STOREs one node takes from 64 callers, each its own peer (one endpoint) and publisher,
/// every record new; then one verification alone.
fn stores_verified(rows: &mut Vec<Row>) {
    let server = start_server();
    let addr = server.addr;
    let rt = current_thread();
    let callers: Vec<(Endpoint, Vec<Vec<u8>>)> = (0..CALLERS)
        .map(|c| {
            let publisher = Keypair::from_seed(&[c as u8 + 10; 32]);
            let frames = (0..STORES_PER_CALLER)
                .map(|n| signed_store(&publisher, n).encode())
                .collect();
            (rt.block_on(async { client_endpoint() }), frames)
        })
        .collect();
    let (elapsed, endpoints) = rt.block_on(async {
        // Connections first: the figure is the node's work, not 64 handshakes.
        for (client, _) in &callers {
            client
                .request(addr, None, Request::Ping.encode())
                .await
                .expect("ping");
        }
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (client, frames) in callers {
            tasks.spawn(async move {
                for frame in frames {
                    let (_, reply) = client.request(addr, None, frame).await.expect("store");
                    assert_eq!(Response::decode(&reply).expect("decode"), Response::Stored);
                }
                client
            });
        }
        let mut endpoints = Vec::new();
        while let Some(done) = tasks.join_next().await {
            endpoints.push(done.expect("caller"));
        }
        (start.elapsed(), endpoints)
    });
    let total = CALLERS * STORES_PER_CALLER;
    let rps = total as f64 / elapsed.as_secs_f64();
    println!("signed STOREs, {CALLERS} callers, {total} new records: {rps:.0} stored/s");
    rows.push(Row {
        name: "store_verified_per_s",
        unit: "stores/s",
        ours: rps,
    });
    rt.block_on(async {
        for client in endpoints {
            client.close().await;
        }
    });
    server.stop();

    let publisher = Keypair::from_seed(&[9; 32]);
    let Request::Store { key, record } = signed_store(&publisher, 0) else {
        unreachable!("a store");
    };
    let node_id = publisher.node_id();
    // No cache: every call checks the signature.
    let mut verifier = Verifier::new(0);
    let start = Instant::now();
    for _ in 0..VERIFICATIONS {
        verifier
            .check_seal(&key, &record.term, Some(&node_id.0), &record.seal)
            .expect("a valid seal");
    }
    let each = start.elapsed().as_secs_f64() * 1e6 / VERIFICATIONS as f64;
    println!("one provider verification: {each:.1} us");
    rows.push(Row {
        name: "verify_provider_us",
        unit: "us",
        ours: each,
    });
}

fn lookups(rows: &mut Vec<Row>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut first, mut hops) = rt.block_on(async {
        let started = Instant::now();
        let net = Testnet::start(TESTNET_NODES, NodeConfig::default())
            .await
            .expect("testnet");
        println!(
            "testnet of {TESTNET_NODES} nodes up in {:?}",
            started.elapsed()
        );
        // A tiny xorshift: deterministic picks, no RNG dependency.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut keys = Vec::new();
        for s in 0..SERVICES {
            let service = format!("bench.service.{s}");
            let from = next(TESTNET_NODES);
            net.nodes()[from]
                .advertise(&service, "https://bench:1", BTreeMap::new(), 3600)
                .await
                .expect("advertise");
            keys.push(service_key(&service));
        }
        let mut first = Vec::with_capacity(LOOKUPS);
        let mut hops = Vec::with_capacity(LOOKUPS);
        let mut misses = 0;
        while first.len() < LOOKUPS {
            let key = keys[next(SERVICES)];
            let node = &net.nodes()[next(TESTNET_NODES)];
            if !node.local_providers(&key).is_empty() {
                continue; // a replica would answer locally: not a network lookup
            }
            let report = node.find_providers(&key, Some(1)).await.expect("lookup");
            match report.first_provider {
                Some(at) => {
                    first.push(at);
                    hops.push(report.hops);
                }
                None => misses += 1,
            }
        }
        println!("{LOOKUPS} lookups, {misses} found nothing");
        net.shutdown().await;
        (first, hops)
    });
    first.sort_unstable();
    hops.sort_unstable();
    let p50 = percentile(&first, 0.50);
    let p99_hops = percentile(&hops, 0.99);
    println!(
        "100-node lookups: first provider p50 {p50:?} p99 {:?}; hops p50 {} p99 {p99_hops}",
        percentile(&first, 0.99),
        percentile(&hops, 0.50)
    );
    rows.push(Row {
        name: "lookup_100_nodes_first_provider_p50_ms",
        unit: "ms",
        ours: p50.as_secs_f64() * 1e3,
    });
    rows.push(Row {
        name: "lookup_100_nodes_p99_hops",
        unit: "hops",
        ours: f64::from(p99_hops),
    });
}

fn output_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The workspace root is the parent of this package.
            let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            package.parent().unwrap_or(package).join("target")
        });
    target.join("bench").join("cluster.json")
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let mut rows = Vec::new();
    floor(&mut rows);
    one_hop(&mut rows);
    stores_verified(&mut rows);
    lookups(&mut rows);
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"name\": \"{}\", \"unit\": \"{}\", \"ours\": {:.4}, \"baseline\": null, \"ratio\": null}}",
                r.name, r.unit, r.ours
            )
        })
        .collect();
    let json = format!("[\n{}\n]\n", lines.join(",\n"));
    let path = output_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create target/bench");
    }
    std::fs::write(&path, json).expect("write cluster.json");
    println!("wrote {}", path.display());
}
