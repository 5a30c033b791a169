//! Picking providers by strategy and failing over, on in-process nodes over real QUIC: the
//! strategies' choices, back-off after a failure report, re-advertisement, the one fresh lookup
//! when every provider is reported, and `call_with_failover` against real TCP endpoints.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use macula_dht_node::{
    FailoverError, Identity, Node, NodeConfig, PickError, SelectConfig, Strategy, Testnet,
};
use support::fast_config;
use support::relay::DelayRelay;

const SERVICE: &str = "pick.svc";

fn config(first_backoff: Duration) -> NodeConfig {
    NodeConfig {
        select: SelectConfig {
            cache_for: Duration::from_millis(200),
            first_backoff,
            ..SelectConfig::default()
        },
        ..fast_config()
    }
}

/// Four nodes; nodes 1-3 advertise `SERVICE` at the given endpoints with the given `load`s.
/// Returns the network and the providers' node ids in node order.
async fn three_providers(
    first_backoff: Duration,
    endpoints: [&str; 3],
    loads: [Option<&str>; 3],
) -> (Testnet, Vec<Vec<u8>>) {
    let net = Testnet::start(4, config(first_backoff)).await.unwrap();
    let mut ids = Vec::new();
    for (i, (endpoint, load)) in endpoints.into_iter().zip(loads).enumerate() {
        let node = net.node(i + 1).unwrap();
        let metadata = load
            .map(|l| BTreeMap::from([("load".to_string(), l.to_string())]))
            .unwrap_or_default();
        node.advertise(SERVICE, endpoint, metadata, 60)
            .await
            .unwrap();
        ids.push(node.id().0.to_vec());
    }
    (net, ids)
}

async fn pick(node: &Node, strategy: Strategy) -> Vec<u8> {
    node.pick(SERVICE, strategy).await.unwrap().node_id
}

async fn counts(node: &Node, strategy: Strategy, picks: usize) -> HashMap<Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        *counts.entry(pick(node, strategy).await).or_default() += 1;
    }
    counts
}

const ENDPOINTS: [&str; 3] = ["https://p1:1", "https://p2:1", "https://p3:1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_visits_each_provider_twice_in_six_picks() {
    let (net, ids) = three_providers(Duration::from_secs(5), ENDPOINTS, [None; 3]).await;
    let client = net.node(0).unwrap();
    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(pick(client, Strategy::RoundRobin).await);
    }
    for id in &ids {
        assert_eq!(picks.iter().filter(|p| *p == id).count(), 2, "{picks:?}");
    }
    assert_eq!(picks[..3], picks[3..], "the same rotation each round");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_picks_pass_a_chi_square_test() {
    let (net, ids) = three_providers(Duration::from_secs(5), ENDPOINTS, [None; 3]).await;
    let counts = counts(net.node(0).unwrap(), Strategy::Random, 3000).await;
    let expected = 1000.0;
    let chi_square: f64 = ids
        .iter()
        .map(|id| {
            let seen = counts.get(id).copied().unwrap_or(0) as f64;
            (seen - expected).powi(2) / expected
        })
        .sum();
    // 2 degrees of freedom, p = 0.001.
    assert!(chi_square < 13.82, "chi-square {chi_square} of {counts:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_takes_the_smallest_load() {
    let loads = [Some("7"), None, Some("2.5")];
    let (net, ids) = three_providers(Duration::from_secs(5), ENDPOINTS, loads).await;
    let client = net.node(0).unwrap();
    for _ in 0..3 {
        assert_eq!(pick(client, Strategy::LeastLoaded).await, ids[2]);
    }
    client.report_failure(SERVICE, &ids[2]);
    assert_eq!(pick(client, Strategy::LeastLoaded).await, ids[0]);
    client.report_failure(SERVICE, &ids[0]);
    assert_eq!(
        pick(client, Strategy::LeastLoaded).await,
        ids[1],
        "no load: last"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_avoids_the_publisher_whose_replies_are_delayed() {
    // A client that reaches one publisher straight and the other through a relay adding 20 ms
    // each way. The publishers do not know each other, so the client keeps the relay's address.
    let start = || async {
        Node::start(
            &Identity::generate().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            config(Duration::from_secs(5)),
        )
        .await
        .unwrap()
    };
    let (near, far, client) = (start().await, start().await, start().await);
    near.advertise(SERVICE, "https://near:1", BTreeMap::new(), 60)
        .await
        .unwrap();
    far.advertise(SERVICE, "https://far:1", BTreeMap::new(), 60)
        .await
        .unwrap();
    let relay = DelayRelay::start(far.local_addr(), Duration::from_millis(20)).await;
    client
        .bootstrap(&[near.local_addr(), relay.addr()])
        .await
        .unwrap();

    for _ in 0..5 {
        let picked = client.pick(SERVICE, Strategy::Nearest).await.unwrap();
        assert_eq!(picked.endpoint.as_deref(), Some("https://near:1"));
    }
    let (near_rtt, far_rtt) = (client.rtt(&near.id()), client.rtt(&far.id()));
    assert!(
        far_rtt.unwrap() > near_rtt.unwrap() + Duration::from_millis(20),
        "{near_rtt:?} {far_rtt:?}"
    );
    // With the near one reported, the far one is the nearest left.
    client.report_failure(SERVICE, &near.id().0);
    let picked = client.pick(SERVICE, Strategy::Nearest).await.unwrap();
    assert_eq!(picked.endpoint.as_deref(), Some("https://far:1"));
    for node in [client, near, far] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_provider_is_skipped_until_its_backoff_ends() {
    let (net, ids) = three_providers(Duration::from_millis(600), ENDPOINTS, [None; 3]).await;
    let client = net.node(0).unwrap();
    client.report_failure(SERVICE, &ids[0]);
    let skipped = counts(client, Strategy::RoundRobin, 6).await;
    assert_eq!(skipped.get(&ids[0]), None, "{skipped:?}");
    assert_eq!((skipped[&ids[1]], skipped[&ids[2]]), (3, 3));

    tokio::time::sleep(Duration::from_millis(700)).await;
    let back = counts(client, Strategy::RoundRobin, 3).await;
    assert_eq!(
        back.get(&ids[0]),
        Some(&1),
        "back after its back-off: {back:?}"
    );

    // Reported twice while skipped: twice the back-off.
    assert_eq!(
        client.report_failure(SERVICE, &ids[1]),
        Duration::from_millis(600)
    );
    assert_eq!(
        client.report_failure(SERVICE, &ids[1]),
        Duration::from_millis(1200)
    );
    assert!(client.skipped_for(SERVICE, &ids[1]).unwrap() > Duration::from_millis(1100));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readvertised_provider_comes_back_at_once() {
    let (net, ids) = three_providers(Duration::from_secs(60), ENDPOINTS, [None; 3]).await;
    let client = net.node(0).unwrap();
    let _ = pick(client, Strategy::RoundRobin).await;
    client.report_failure(SERVICE, &ids[1]);
    assert!(client.skipped_for(SERVICE, &ids[1]).is_some());

    net.node(2)
        .unwrap()
        .advertise(SERVICE, ENDPOINTS[1], BTreeMap::new(), 60)
        .await
        .unwrap();
    // The next pick after the cached list expires sees the higher sequence.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let back = counts(client, Strategy::RoundRobin, 3).await;
    assert_eq!(back.get(&ids[1]), Some(&1), "{back:?}");
    assert_eq!(client.skipped_for(SERVICE, &ids[1]), None);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reported_makes_one_fresh_lookup_then_no_providers() {
    let (net, ids) = three_providers(Duration::from_secs(60), ENDPOINTS, [None; 3]).await;
    let client = net.node(0).unwrap();
    let _ = pick(client, Strategy::Random).await;
    for id in &ids {
        client.report_failure(SERVICE, id);
    }
    let lookups = client.status().lookups;
    let answer = client.pick(SERVICE, Strategy::Random).await;
    assert!(matches!(answer, Err(PickError::NoProviders)), "{answer:?}");
    assert_eq!(
        client.status().lookups,
        lookups + 1,
        "exactly one fresh lookup"
    );

    // An unknown service: one lookup, no providers.
    let answer = client.pick("nobody.svc", Strategy::Random).await;
    assert!(matches!(answer, Err(PickError::NoProviders)), "{answer:?}");
    assert_eq!(client.status().lookups, lookups + 2);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_failover_reaches_the_live_provider() {
    // The first provider in round-robin order (the smallest node id) refuses connections.
    let refused = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap().to_string();
    let net = Testnet::start(4, config(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut providers: Vec<&Node> = net.nodes()[1..].iter().collect();
    providers.sort_by_key(|n| n.id());
    let endpoints = [refused.to_string(), live_addr.clone(), live_addr.clone()];
    for (node, endpoint) in providers.iter().zip(&endpoints) {
        node.advertise(SERVICE, endpoint, BTreeMap::new(), 60)
            .await
            .unwrap();
    }
    let client = net.node(0).unwrap();
    let (provider, ()) = client
        .call_with_failover(SERVICE, Strategy::RoundRobin, 3, |p| async move {
            let endpoint = p.endpoint.unwrap_or_default();
            tokio::net::TcpStream::connect(endpoint).await.map(drop)
        })
        .await
        .unwrap();
    assert_eq!(provider.endpoint.as_deref(), Some(live_addr.as_str()));
    let dead = providers[0].id().0;
    assert!(
        client.skipped_for(SERVICE, &dead).is_some(),
        "the refusing one was reported"
    );

    // Every call failing: each provider is tried once, then no provider is left.
    let failed = client
        .call_with_failover(SERVICE, Strategy::RoundRobin, 5, |_| async {
            Err::<(), _>("down")
        })
        .await
        .unwrap_err();
    match failed {
        FailoverError::Pick { error, failed } => {
            assert!(matches!(error, PickError::NoProviders));
            assert_eq!(failed.len(), 2, "the two not yet reported");
        }
        other => panic!("{other:?}"),
    }
    drop(live);
    net.shutdown().await;
}
