//! A node under bad input: malformed frames, oversized frames, unknown message types, a wrong
//! protocol version, an invalid provider, and a peer that is not who it is expected to be. Each
//! gets an error and the node goes on serving everyone.

mod support;

use std::net::SocketAddr;

use macula_dht::wire::{ErrorReason, Request, Response};
use macula_dht_node::{
    Endpoint, Identity, Node, NodeId, Refusal, TransportConfig, TransportError, MAX_FRAME_BYTES,
};
use std::time::Duration;

use support::{eventually, fast_config};

async fn node() -> Node {
    Node::start(
        &Identity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        fast_config(),
    )
    .await
    .unwrap()
}

/// A raw endpoint that may send frames up to 4 MiB (more than the node accepts).
fn raw_client() -> Endpoint {
    Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Identity::generate().unwrap(),
        TransportConfig {
            max_frame_bytes: 4 << 20,
            ..TransportConfig::default()
        },
    )
    .unwrap()
}

async fn send(client: &Endpoint, addr: SocketAddr, frame: Vec<u8>) -> Response {
    let (_, reply) = client.request(addr, None, frame).await.unwrap();
    Response::decode(&reply).unwrap()
}

/// The node still answers a ping, and still answers a find_value from a fresh peer.
async fn still_serving(node: &Node) {
    let fresh = raw_client();
    assert_eq!(
        send(&fresh, node.local_addr(), Request::Ping.encode()).await,
        Response::Pong
    );
    let reply = send(
        &fresh,
        node.local_addr(),
        Request::FindValue { key: vec![1; 32] }.encode(),
    )
    .await;
    assert!(matches!(reply, Response::NoValue { .. }), "{reply:?}");
    fresh.close().await;
}

fn error(reason: ErrorReason) -> Response {
    Response::Error { reason }
}

/// `#{type => T, v => V}` with atoms as SMALL_ATOM_UTF8.
fn message(type_name: &str, version: u8) -> Vec<u8> {
    let mut f = vec![131, 116, 0, 0, 0, 2, 119, 4];
    f.extend(b"type");
    f.extend([119, type_name.len() as u8]);
    f.extend(type_name.as_bytes());
    f.extend([119, 1, b'v', 97, version]);
    f
}

#[tokio::test]
async fn malformed_frames_get_an_error_reply() {
    let node = node().await;
    let client = raw_client();
    let addr = node.local_addr();
    let hostile: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xde, 0xad, 0xbe, 0xef],
        vec![131],
        // a list announcing 2^32 - 1 elements
        vec![131, 108, 0xff, 0xff, 0xff, 0xff],
        // a binary announcing 1 GiB
        vec![131, 109, 0x40, 0, 0, 0, 1, 2, 3],
        // 100 000 nested one-element lists
        std::iter::once(131)
            .chain(std::iter::repeat_n([108u8, 0, 0, 0, 1], 100_000).flatten())
            .collect(),
        // a distribution header
        vec![131, 68, 0],
        // a truncated ping
        message("ping", 1)[..9].to_vec(),
    ];
    for frame in hostile {
        let reply = send(&client, addr, frame.clone()).await;
        assert_eq!(
            reply,
            error(ErrorReason::Malformed),
            "frame {:?}",
            &frame[..frame.len().min(12)]
        );
    }
    assert!(node.status().bad_requests >= 8);
    assert_eq!(
        node.peers().len(),
        0,
        "senders of garbage do not enter the table"
    );
    still_serving(&node).await;
    client.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_types_and_versions_get_their_own_errors() {
    let node = node().await;
    let client = raw_client();
    let addr = node.local_addr();
    assert_eq!(
        send(&client, addr, message("ping", 2)).await,
        Response::Pong
    );
    assert_eq!(
        send(&client, addr, message("frobnicate", 2)).await,
        error(ErrorReason::UnknownMessage)
    );
    // A peer still speaking version 1 is refused, not read as version 2, and counted.
    for version in [1, 3] {
        assert_eq!(
            send(&client, addr, message("ping", version)).await,
            error(ErrorReason::UnsupportedVersion)
        );
    }
    assert_eq!(node.status().refused_version, 2);
    assert_eq!(node.status().protocol, 2);
    // A STORE whose value is not a provider map.
    let keypair = macula_dht::seal::Keypair::from_seed(&[3; 32]);
    let store = Request::Store {
        key: vec![7; 32],
        record: macula_dht::wire::SealedRecord {
            term: vec![97, 1],
            seal: keypair.seal(&[7; 32], &[97, 1], 1, 60),
        },
    };
    let reply = send(&client, addr, store.encode()).await;
    assert!(matches!(reply, Response::Error { .. }), "{reply:?}");
    still_serving(&node).await;
    client.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let node = node().await;
    let client = raw_client();
    let addr = node.local_addr();
    let mut frame = message("ping", 1);
    frame.resize(MAX_FRAME_BYTES + 1, 0);
    match client.request(addr, None, frame).await {
        Err(TransportError::Refused {
            refusal: Refusal::FrameTooLarge,
            ..
        }) => {}
        other => panic!("expected a FrameTooLarge refusal, got {other:?}"),
    }
    // Well past the cap too, on the same connection.
    match client.request(addr, None, vec![0; 3 << 20]).await {
        Err(TransportError::Refused { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        send(&client, addr, Request::Ping.encode()).await,
        Response::Pong
    );
    still_serving(&node).await;
    client.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_peer_with_another_id_than_expected_is_refused() {
    let node = node().await;
    let client = raw_client();
    let addr = node.local_addr();
    let wrong = NodeId([0xab; 32]);
    match client
        .request(addr, Some(wrong), Request::Ping.encode())
        .await
    {
        Err(TransportError::IdMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, node.id());
        }
        other => panic!("expected IdMismatch, got {other:?}"),
    }
    // The right id works, on the same endpoint.
    let (id, reply) = client
        .request(addr, Some(node.id()), Request::Ping.encode())
        .await
        .unwrap();
    assert_eq!(id, node.id());
    assert_eq!(Response::decode(&reply).unwrap(), Response::Pong);
    still_serving(&node).await;
    client.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_at_an_address_taken_over_by_another_id_leaves_the_table() {
    // `a` learns `b`; `b` goes away and `c` comes up at b's address with another identity.
    let a = node().await;
    let b = node().await;
    let b_addr = b.local_addr();
    a.contact(&[b_addr]).await.unwrap();
    assert_eq!(a.peers().len(), 1);
    // Let b finish pinging a back: a handshake cut by shutdown keeps the port for seconds.
    let verified = eventually(Duration::from_secs(3), || async { b.peers().len() == 1 }).await;
    assert!(verified, "b put a in its table after pinging it back");
    let b_id = b.id();
    b.shutdown().await;
    let c = Node::start(&Identity::generate().unwrap(), b_addr, fast_config())
        .await
        .unwrap();
    let report = a.find_node(NodeId([0; 32])).await.unwrap();
    assert_eq!(
        report.failed, 1,
        "the lookup asked b's address for b and was refused"
    );
    assert!(a.peers().iter().all(|p| p.id != b_id), "b left the table");
    // Nothing was published, so there is nothing to find; the node serves on.
    assert!(a.discover("x", 1).await.unwrap().is_empty());
    still_serving(&a).await;
    c.shutdown().await;
    a.shutdown().await;
}
