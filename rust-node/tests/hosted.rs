//! A node inside a host, as the NIF runs one: the host's store served to peers, the host told
//! of peers and lookups, raw records replicated and removed, lookups ended by their timeout,
//! and the rule for when the local store answers for a key. Where removals go when the network
//! has changed since the STORE is shown on the simulator (`sim/tests/dht_behaviour.rs`).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use macula_dht::etf::Writer;
use macula_dht::StoreLimits;
use macula_dht_node::{Event, Host, Identity, LookupKind, Node, NodeConfig, SharedStore, Testnet};
use support::{eventually, fast_config, sealed_copies};

const WITHIN: Duration = Duration::from_secs(5);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `#{node_id => Id, endpoint => Endpoint}` as versioned ETF.
fn record(node_id: &[u8], endpoint: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(2);
    w.atom("endpoint");
    w.binary(endpoint.as_bytes());
    w.atom("node_id");
    w.binary(node_id);
    w.into_bytes()
}

/// `#{endpoint => <<"https://anon:1">>}` as versioned ETF.
fn record_without_node_id() -> Vec<u8> {
    let mut w = Writer::new();
    w.map(1);
    w.atom("endpoint");
    w.binary(b"https://anon:1");
    w.into_bytes()
}

/// A provider naming `id` as its `node_id`.
fn record_of(id: &macula_dht_node::NodeId) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(2);
    w.atom("endpoint");
    w.binary(b"https://someone:1");
    w.atom("node_id");
    w.binary(&id.0);
    w.into_bytes()
}

/// A node started in a host that shares `store` and collects its events.
async fn hosted(config: NodeConfig, store: Arc<SharedStore>) -> (Node, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let host = Host {
        store: Some(store),
        events: Some(Arc::new(move |e| sink.lock().unwrap().push(e))),
    };
    let node = Node::start_hosted(&Identity::generate().unwrap(), loopback(), config, host)
        .await
        .unwrap();
    (node, events)
}

/// Replication to the 2 closest only, so that which nodes are the closest matters.
fn narrow_config() -> NodeConfig {
    let mut config = fast_config();
    config.dht.k = 2;
    config
}

fn count(events: &Mutex<Vec<Event>>, pick: impl Fn(&Event) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| pick(e)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_store_into_the_hosts_store_and_the_host_hears_peers_and_lookups() {
    let net = Testnet::start(3, fast_config()).await.unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let hooked = writes.clone();
    let store = Arc::new(SharedStore::with_write_hook(
        StoreLimits::default(),
        Box::new(move |_| {
            hooked.fetch_add(1, Ordering::Relaxed);
        }),
    ));
    let (node, events) = hosted(fast_config(), store.clone()).await;
    node.bootstrap(&[net.bootstrap_addr()]).await.unwrap();
    // A peer whose answer to the join's lookup came late (a busy machine) is announced when it
    // comes, possibly after the join returned.
    let peers_up = || count(&events, |e| matches!(e, Event::PeerUp(_)));
    assert!(eventually(WITHIN, || std::future::ready(peers_up() == 3)).await);
    assert!(
        count(
            &events,
            |e| matches!(e, Event::Lookup(s) if s.kind == LookupKind::FindNode)
        ) >= 1
    );

    // A record advertised elsewhere lands in the host's store (k = 20 > 4 nodes).
    let provider = net.node(1).unwrap();
    provider
        .advertise("svc", "https://svc:1", Default::default(), 60)
        .await
        .unwrap();
    let key = macula_dht_node::service_key("svc");
    let now = || store.now_ms();
    assert!(
        eventually(WITHIN, || async {
            store.read().providers(&key, now()).count() == 1
        })
        .await
    );
    assert!(
        writes.load(Ordering::Relaxed) >= 1,
        "the host's hook saw the peer's STORE"
    );

    // A lookup is reported with what it found.
    node.find_providers(&key, None).await.unwrap();
    assert!(
        count(&events, |e| matches!(
            e,
            Event::Lookup(s) if s.kind == LookupKind::FindValue && s.providers == 1 && !s.timed_out
        )) == 1
    );

    // A peer that stops answering is suspect once a request to it fails, and leaves the table
    // after it also fails the probes sent after each suspect period (5 s, then 10 s); the host
    // hears it.
    assert_eq!(peers_up(), 3, "each peer is announced once");
    let gone = net.node(2).unwrap().id();
    let mut net = net;
    net.stop(2).await;
    let _ = node.find_node(gone).await;
    assert!(eventually(WITHIN, || std::future::ready(node.status().suspects == 1)).await);
    assert!(
        eventually(Duration::from_secs(40), || async {
            count(&events, |e| matches!(e, Event::PeerDown(p) if p.id == gone)) == 1
        })
        .await
    );
    node.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_records_are_replicated_and_removed_everywhere() {
    let net = Testnet::start(4, fast_config()).await.unwrap();
    let store = Arc::new(SharedStore::new(StoreLimits::default()));
    let (node, _) = hosted(fast_config(), store.clone()).await;
    node.bootstrap(&[net.bootstrap_addr()]).await.unwrap();
    let key = b"any key, not a service hash".to_vec();
    let etf = record(b"provider-1", "https://p1:1");

    let published = node.publish(&key, &etf).unwrap().await.unwrap();
    assert_eq!((published.targets, published.acked), (4, 4));
    assert_eq!(
        store.read().providers(&key, store.now_ms()).count(),
        1,
        "held in the host's store"
    );
    for peer in net.nodes() {
        assert_eq!(peer.local_providers(&key).len(), 1);
    }
    let client = macula_dht_node::Endpoint::bind(
        loopback(),
        &Identity::generate().unwrap(),
        macula_dht_node::TransportConfig::default(),
    )
    .unwrap();
    let copy = sealed_copies(&client, net.node(2).unwrap().local_addr(), &key).await;
    assert_eq!(copy[0].seal.publisher, node.publisher());

    // Removal is immediate here, before the returned future runs.
    let sending = node.remove(&key, b"provider-1");
    assert!(node.local_providers(&key).is_empty());
    let removed = sending.await.unwrap();
    assert_eq!(removed.acked, 4);
    for peer in net.nodes() {
        assert!(peer.local_providers(&key).is_empty());
    }
    // A late copy of the removed record is kept out by the replicas' tombstones.
    let late = macula_dht::wire::Request::Store {
        key: key.clone(),
        record: copy[0].clone(),
    };
    client
        .request(net.node(2).unwrap().local_addr(), None, late.encode())
        .await
        .unwrap();
    assert!(net.node(2).unwrap().local_providers(&key).is_empty());
    // A record without a node_id names no slot: it is not published.
    assert!(matches!(
        node.publish(&key, &record_without_node_id()),
        Err(macula_dht_node::NodeError::NoNodeId)
    ));
    // Another node's id is that node's to publish, not this one's: refused, nothing stored.
    let other = net.node(2).unwrap().id();
    assert!(matches!(
        node.publish(&key, &record_of(&other)),
        Err(macula_dht_node::NodeError::WrongPublisher)
    ));
    assert!(node.local_providers(&key).is_empty());
    client.close().await;
    node.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_through_a_silent_peer_ends_at_its_adaptive_timeout() {
    let mut config = fast_config();
    config.dht.lookup_timeout = Duration::from_secs(30);
    config.dht.request_timeout = Duration::from_secs(30);
    let peer = Node::start(&Identity::generate().unwrap(), loopback(), fast_config())
        .await
        .unwrap();
    let addr = peer.local_addr();
    let (node, events) = hosted(config, Arc::new(SharedStore::new(StoreLimits::default()))).await;
    node.bootstrap(&[addr]).await.unwrap();
    assert!(node.rtt(&peer.id()).is_some(), "the join measured the peer");
    // The peer's port now swallows every packet: requests to it hang.
    peer.shutdown().await;
    drop(peer);
    let mut silent = None;
    // The closed endpoint releases its port once its driver task has finished.
    assert!(
        eventually(WITHIN, || {
            silent = silent.take().or_else(|| UdpSocket::bind(addr).ok());
            std::future::ready(silent.is_some())
        })
        .await
    );

    // The request waits a few of the peer's round trips, not the 30 s request timeout; its
    // failure makes the peer suspect.
    let started = std::time::Instant::now();
    let report = node.find_providers(b"missing", None).await.unwrap();
    let took = started.elapsed();
    assert!(report.providers.is_empty());
    assert!(!report.timed_out, "{report:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(eventually(WITHIN, || std::future::ready(node.status().suspects == 1)).await);
    assert_eq!(node.status().lookup_timeouts, 0);
    // Neither the join's lookups nor this one timed out.
    assert_eq!(
        count(&events, |e| matches!(e, Event::Lookup(s) if s.timed_out)),
        0
    );
    assert_eq!(
        count(
            &events,
            |e| matches!(e, Event::Lookup(s) if s.kind == LookupKind::FindValue)
        ),
        1
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_fewer_providers_than_wanted_asks_the_network() {
    let config = narrow_config();
    let net = Testnet::start(8, config).await.unwrap();
    let key = b"a key".to_vec();
    let target = macula_dht::NodeId::normalize(&key);
    let mut by_distance: Vec<&Node> = net.nodes().iter().collect();
    by_distance.sort_by_key(|n| n.id().distance(&target));
    let (nearest, farthest) = (by_distance[0], by_distance[7]);

    // The farthest publishes its own record and keeps it; a second provider's STORE goes to
    // the key's 2 closest only.
    let own = record(&farthest.id().0, "https://far:1");
    let sending = farthest.publish(&key, &own).unwrap();
    assert!(
        farthest.replicated(&key, &farthest.id().0),
        "known from the call on"
    );
    sending.await.unwrap();
    nearest
        .publish(&key, &record(b"other", "https://other:1"))
        .unwrap()
        .await
        .unwrap();
    let endpoints = |found: Vec<macula_dht_node::Provider>| {
        let mut e: Vec<String> = found.into_iter().filter_map(|p| p.endpoint).collect();
        e.sort();
        e
    };
    assert_eq!(
        endpoints(farthest.providers(&key, 20).await.unwrap()),
        ["https://far:1", "https://other:1"]
    );
    net.shutdown().await;
}
