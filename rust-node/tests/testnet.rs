//! In-process networks of nodes on loopback: the runtime carrying out the engine's decisions over
//! real QUIC (advertise, discover, two providers, withdrawal, hand-off to a newcomer). What the
//! decisions are (expiry, republish, eviction of dead peers, removal following every copy) is
//! shown on the simulator, in `sim/tests`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use macula_dht::wire::{ErrorReason, Request, Response};
use macula_dht_node::{service_key, Endpoint, Identity, Node, Testnet, TransportConfig};
use support::{eventually, fast_config, sealed_copies};

const NODES: usize = 10;

fn meta() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A one-shot client (serves nothing, stores nothing) knowing only `bootstrap`.
async fn client(bootstrap: SocketAddr) -> Node {
    let mut config = fast_config();
    config.dht.serve = false;
    let node = Node::start(
        &Identity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        config,
    )
    .await
    .unwrap();
    node.contact(&[bootstrap]).await.unwrap();
    node
}

/// Endpoints of `service` as found over the network from `node` (local store not consulted).
async fn network_endpoints(node: &Node, service: &str, want: Option<usize>) -> Vec<String> {
    let report = node
        .find_providers(&service_key(service), want)
        .await
        .unwrap();
    let mut endpoints: Vec<String> = report
        .providers
        .into_iter()
        .filter_map(|p| p.endpoint)
        .collect();
    endpoints.sort();
    endpoints
}

fn local_endpoints(node: &Node, service: &str) -> Vec<String> {
    let mut endpoints: Vec<String> = node
        .local_providers(&service_key(service))
        .into_iter()
        .filter_map(|p| p.endpoint)
        .collect();
    endpoints.sort();
    endpoints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_on_one_node_is_discovered_from_every_node() {
    let net = Testnet::start(NODES, fast_config()).await.unwrap();
    for node in net.nodes() {
        assert!(
            node.peers().len() >= NODES / 2,
            "tables filled by bootstrap"
        );
    }
    let published = net.nodes()[3]
        .advertise("calc", "https://calc:9443", meta(), 300)
        .await
        .unwrap();
    assert_eq!(
        published.targets,
        NODES - 1,
        "k = 20 > n: every other node is a replica"
    );
    assert_eq!(published.acked, NODES - 1);
    for (i, node) in net.nodes().iter().enumerate() {
        let found = node.discover("calc", 1).await.unwrap();
        assert_eq!(found.len(), 1, "node {i}");
        assert_eq!(found[0].endpoint.as_deref(), Some("https://calc:9443"));
        assert_eq!(found[0].node_id, net.nodes()[3].id().0.to_vec());
        assert_eq!(found[0].ttl_secs, Some(300));
        assert_eq!(
            network_endpoints(node, "calc", Some(1)).await,
            ["https://calc:9443"],
            "node {i}"
        );
    }
    let c = client(net.nodes()[7].local_addr()).await;
    let found = c.discover("calc", 1).await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        c.local_providers(&service_key("calc")).is_empty(),
        "a client stores nothing"
    );
    assert!(c.discover("nothing-here", 1).await.unwrap().is_empty());
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_of_one_service_are_both_returned() {
    let net = Testnet::start(NODES, fast_config()).await.unwrap();
    net.nodes()[1]
        .advertise("db", "https://db-a:5432", meta(), 300)
        .await
        .unwrap();
    net.nodes()[6]
        .advertise("db", "https://db-b:5432", meta(), 300)
        .await
        .unwrap();
    let both = ["https://db-a:5432", "https://db-b:5432"];
    for (i, node) in net.nodes().iter().enumerate() {
        assert_eq!(local_endpoints(node, "db"), both, "node {i} holds both");
        assert_eq!(
            network_endpoints(node, "db", Some(2)).await,
            both,
            "node {i}"
        );
        assert_eq!(node.discover("db", 2).await.unwrap().len(), 2, "node {i}");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_reaches_every_replica_and_late_copies_stay_out() {
    let net = Testnet::start(NODES, fast_config()).await.unwrap();
    let owner = &net.nodes()[2];
    owner
        .advertise("gone", "https://gone:1", meta(), 300)
        .await
        .unwrap();
    let key = service_key("gone");
    let stranger = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Identity::generate().unwrap(),
        TransportConfig::default(),
    )
    .unwrap();
    let old_copy = sealed_copies(&stranger, net.nodes()[5].local_addr(), &key).await;
    assert_eq!(old_copy.len(), 1);
    let withdrawn = owner.withdraw("gone").await.unwrap();
    assert_eq!(withdrawn.acked, NODES - 1);
    // The bound: once `withdraw` has returned, every replica it reached has dropped the record.
    for (i, node) in net.nodes().iter().enumerate() {
        assert!(
            local_endpoints(node, "gone").is_empty(),
            "node {i} still holds it"
        );
        assert!(
            node.discover("gone", 1).await.unwrap().is_empty(),
            "node {i}"
        );
    }
    assert!(owner.status().adverts.is_empty());
    // A late STORE of the old copy (a hand-off that crossed the REMOVE, or a replay) does not
    // resurrect it.
    let late = Request::Store {
        key: key.to_vec(),
        record: old_copy[0].clone(),
    };
    let (_, reply) = stranger
        .request(net.nodes()[5].local_addr(), None, late.encode())
        .await
        .unwrap();
    assert_eq!(
        Response::decode(&reply).unwrap(),
        Response::Error {
            reason: ErrorReason::Removed
        }
    );
    assert!(
        local_endpoints(&net.nodes()[5], "gone").is_empty(),
        "tombstone kept it out"
    );
    assert_eq!(net.nodes()[5].status().refused_replay, 1);
    // Advertising again right away is a newer record and goes through everywhere.
    owner
        .advertise("gone", "https://back:1", meta(), 300)
        .await
        .unwrap();
    for (i, node) in net.nodes().iter().enumerate() {
        assert_eq!(
            local_endpoints(node, "gone"),
            ["https://back:1"],
            "node {i}"
        );
    }
    stranger.close().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_gets_the_records_it_is_now_responsible_for() {
    let net = Testnet::start(4, fast_config()).await.unwrap();
    // Published once: only a hand-off can bring it to a node that joins later.
    net.nodes()[1]
        .publish_once("handed", "https://handed:1", meta(), 60)
        .await
        .unwrap();
    let newcomer = Node::start(
        &Identity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        fast_config(),
    )
    .await
    .unwrap();
    newcomer.bootstrap(&[net.bootstrap_addr()]).await.unwrap();
    let handed = eventually(Duration::from_secs(5), || async {
        local_endpoints(&newcomer, "handed") == ["https://handed:1"]
    })
    .await;
    assert!(handed, "the newcomer received the record by hand-off");
    newcomer.shutdown().await;
    net.shutdown().await;
}
