//! Transport tests over real QUIC on 127.0.0.1 (port 0: the OS picks free ports). Every
//! endpoint is closed at the end of its test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use macula_dht_node::{
    Endpoint, Identity, NodeId, Peer, Refusal, TransportConfig, TransportError, MAX_FRAME_BYTES,
};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn endpoint(config: TransportConfig) -> Endpoint {
    Endpoint::bind(any_port(), &Identity::generate().unwrap(), config).unwrap()
}

/// A serving endpoint whose handler replies with the requester's id followed by the frame.
fn echo_server(config: TransportConfig) -> Endpoint {
    let server = endpoint(config);
    server
        .serve(|peer: Peer, frame: Vec<u8>| async move {
            let mut reply = peer.id.0.to_vec();
            reply.extend_from_slice(&frame);
            reply
        })
        .unwrap();
    server
}

/// An endpoint at `addr` with the identity kept in `key`, replying with each frame as is.
fn keyed_echo_server(addr: SocketAddr, key: &std::path::Path) -> Endpoint {
    let server = Endpoint::bind(
        addr,
        &Identity::load_or_create(key).unwrap(),
        TransportConfig::default(),
    )
    .unwrap();
    server
        .serve(|_peer: Peer, frame: Vec<u8>| async move { frame })
        .unwrap();
    server
}

fn echoed(client: &Endpoint, frame: &[u8]) -> Vec<u8> {
    let mut reply = client.id().0.to_vec();
    reply.extend_from_slice(frame);
    reply
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("macula-node-{name}-{}-{nanos}", std::process::id()))
}

#[tokio::test]
async fn echo_round_trip_with_mutual_ids() {
    let server = echo_server(TransportConfig::default());
    let client = endpoint(TransportConfig::default());
    let (id, reply) = client
        .request(server.local_addr(), Some(server.id()), b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(id, server.id());
    // The server saw the client's real id.
    assert_eq!(reply, echoed(&client, b"hello"));
    // Empty frames are frames too; without an expected id the peer's id is still reported.
    let (id, reply) = client
        .request(server.local_addr(), None, Vec::new())
        .await
        .unwrap();
    assert_eq!(id, server.id());
    assert_eq!(reply, echoed(&client, b""));
    assert_eq!(client.pooled_connections(), 1);
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection() {
    let server = echo_server(TransportConfig::default());
    let client = endpoint(TransportConfig::default());
    let addr = server.local_addr();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let frame = i.to_be_bytes().repeat(100);
            let (_, reply) = client.request(addr, None, frame.clone()).await.unwrap();
            assert_eq!(reply[32..], frame[..]);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(client.pooled_connections(), 1);
    assert_eq!(server.inbound_connections(), 1);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_server_keeps_serving() {
    let server = echo_server(TransportConfig::default());
    // A client allowed bigger frames than the server accepts, so the frame reaches the server.
    let big_client = endpoint(TransportConfig {
        max_frame_bytes: 4 * MAX_FRAME_BYTES,
        ..TransportConfig::default()
    });
    let addr = server.local_addr();
    let err = big_client
        .request(addr, None, vec![7; MAX_FRAME_BYTES + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Refused {
                refusal: Refusal::FrameTooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    // Same connection still works, and a frame of exactly the cap is fine.
    let (_, reply) = big_client
        .request(addr, None, b"next".to_vec())
        .await
        .unwrap();
    assert_eq!(reply, echoed(&big_client, b"next"));
    let (_, reply) = big_client
        .request(addr, None, vec![1; MAX_FRAME_BYTES - 32])
        .await
        .unwrap();
    assert_eq!(reply.len(), MAX_FRAME_BYTES);
    // A default client refuses to send an oversized frame at all.
    let client = endpoint(TransportConfig::default());
    let err = client
        .request(addr, None, vec![0; MAX_FRAME_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::FrameTooLarge { len, max }
        if len == MAX_FRAME_BYTES + 1 && max == MAX_FRAME_BYTES));
    // A reply over the cap (cap + 32-byte id prefix) is refused by the server, not sent.
    let err = big_client
        .request(addr, None, vec![1; MAX_FRAME_BYTES])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Refused {
                refusal: Refusal::ReplyTooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    let (_, reply) = client.request(addr, None, b"still".to_vec()).await.unwrap();
    assert_eq!(reply, echoed(&client, b"still"));
    client.close().await;
    big_client.close().await;
    server.close().await;
}

#[tokio::test]
async fn wrong_expected_id_is_a_typed_error_and_server_keeps_serving() {
    let server = echo_server(TransportConfig::default());
    let client = endpoint(TransportConfig::default());
    let addr = server.local_addr();
    let wrong = NodeId([0xab; 32]);

    // On a new connection: the handshake fails.
    let err = client
        .request(addr, Some(wrong), b"x".to_vec())
        .await
        .unwrap_err();
    match err {
        TransportError::IdMismatch {
            addr: a,
            expected,
            actual,
        } => {
            assert_eq!((a, expected, actual), (addr, wrong, server.id()));
        }
        other => panic!("expected IdMismatch, got {other:?}"),
    }
    assert!(err_message_has_both_ids(&client, addr, wrong, server.id()).await);

    // The right id works, then the pooled connection is not used for a wrong expectation.
    let (id, _) = client
        .request(addr, Some(server.id()), b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(id, server.id());
    let err = client
        .request(addr, Some(wrong), b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::IdMismatch { actual, .. } if actual == server.id()));
    let (_, reply) = client.request(addr, None, b"after".to_vec()).await.unwrap();
    assert_eq!(reply, echoed(&client, b"after"));
    client.close().await;
    server.close().await;
}

async fn err_message_has_both_ids(
    client: &Endpoint,
    addr: SocketAddr,
    wrong: NodeId,
    actual: NodeId,
) -> bool {
    let fresh = Endpoint::bind(
        any_port(),
        &Identity::generate().unwrap(),
        client.config().clone(),
    )
    .unwrap();
    let msg = fresh
        .request(addr, Some(wrong), Vec::new())
        .await
        .unwrap_err()
        .to_string();
    fresh.close().await;
    msg.contains(&macula_dht_node::id_hex(&wrong))
        && msg.contains(&macula_dht_node::id_hex(&actual))
        && msg.contains(&addr.to_string())
}

#[tokio::test]
async fn request_to_closed_port_fails_within_timeout() {
    let timeout = Duration::from_millis(300);
    let client = endpoint(TransportConfig {
        request_timeout: timeout,
        ..TransportConfig::default()
    });
    // A port nobody listens on: bind one, note it, let it go.
    let addr = std::net::UdpSocket::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let start = Instant::now();
    let err = client
        .request(addr, None, b"anyone?".to_vec())
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(
            err,
            TransportError::Timeout { .. } | TransportError::Connection { .. }
        ),
        "{err:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(250),
        "took {elapsed:?}"
    );
    // A bound but not serving endpoint does not answer either.
    let silent = endpoint(TransportConfig::default());
    let err = client
        .request(silent.local_addr(), None, b"hello?".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout { .. } | TransportError::Connection { .. }
        ),
        "{err:?}"
    );
    silent.close().await;
    client.close().await;
}

#[tokio::test]
async fn binding_a_port_in_use_is_a_clean_error() {
    let first = endpoint(TransportConfig::default());
    let addr = first.local_addr();
    let err = Endpoint::bind(
        addr,
        &Identity::generate().unwrap(),
        TransportConfig::default(),
    )
    .unwrap_err();
    match &err {
        TransportError::Bind { addr: a, source } => {
            assert_eq!(*a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind, got {other:?}"),
    }
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    first.close().await;
}

#[tokio::test]
async fn identity_persists_across_endpoint_restarts() {
    let dir = temp_dir("restart");
    let key = dir.join("node.key");
    let server = keyed_echo_server(any_port(), &key);
    let (addr, first_id) = (server.local_addr(), server.id());
    let client = endpoint(TransportConfig::default());
    client
        .request(addr, Some(first_id), b"1".to_vec())
        .await
        .unwrap();
    server.close().await;

    let restarted = keyed_echo_server(addr, &key);
    assert_eq!(restarted.id(), first_id);
    // The client's pooled connection died with the old server; it redials transparently, well
    // within the request timeout.
    let start = Instant::now();
    let (id, reply) = client
        .request(addr, Some(first_id), b"2".to_vec())
        .await
        .unwrap();
    assert_eq!((id, reply), (first_id, b"2".to_vec()));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    client.close().await;
    restarted.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn handler_panic_or_timeout_is_a_refusal_not_an_empty_reply() {
    let server = endpoint(TransportConfig {
        handler_timeout: Duration::from_millis(100),
        ..TransportConfig::default()
    });
    server
        .serve(|_peer: Peer, frame: Vec<u8>| async move {
            match frame.as_slice() {
                b"panic" => panic!("handler panics on purpose"),
                b"slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    frame
                }
                _ => frame,
            }
        })
        .unwrap();
    let client = endpoint(TransportConfig::default());
    let addr = server.local_addr();
    for frame in [&b"panic"[..], b"slow"] {
        let err = client
            .request(addr, None, frame.to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Refused {
                    refusal: Refusal::HandlerFailed,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let (_, reply) = client.request(addr, None, b"fine".to_vec()).await.unwrap();
    assert_eq!(reply, b"fine");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_refused() {
    let server = echo_server(TransportConfig {
        max_connections: 1,
        ..TransportConfig::default()
    });
    let addr = server.local_addr();
    let first = endpoint(TransportConfig::default());
    first.request(addr, None, b"a".to_vec()).await.unwrap();
    let second = endpoint(TransportConfig::default());
    let err = second.request(addr, None, b"b".to_vec()).await.unwrap_err();
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    // The admitted peer is unaffected.
    first.request(addr, None, b"c".to_vec()).await.unwrap();
    // Once it leaves, the slot is free again.
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.inbound_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.request(addr, None, b"d".to_vec()).await.unwrap();
    second.close().await;
    server.close().await;
}

#[tokio::test]
async fn close_and_misuse_are_typed_errors() {
    let server = echo_server(TransportConfig::default());
    assert!(matches!(
        server.serve(|_: Peer, f: Vec<u8>| async move { f }),
        Err(TransportError::AlreadyServing)
    ));
    let client = endpoint(TransportConfig::default());
    client
        .request(server.local_addr(), None, b"x".to_vec())
        .await
        .unwrap();
    client.close().await;
    client.close().await;
    let err = client
        .request(server.local_addr(), None, b"y".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err:?}");
    server.close().await;
    assert!(matches!(
        server.serve(|_: Peer, f: Vec<u8>| async move { f }),
        Err(TransportError::Closed)
    ));
    assert!(matches!(
        Endpoint::bind(
            any_port(),
            &Identity::generate().unwrap(),
            TransportConfig {
                max_in_flight: 0,
                ..TransportConfig::default()
            }
        ),
        Err(TransportError::Config(_))
    ));
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Endpoint::bind(
        any_port(),
        &Identity::generate().unwrap(),
        TransportConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TransportError::NoRuntime), "{err:?}");
}

/// Runs a server on its own thread and runtime until told to "crash": the runtime is dropped
/// first, so the server never sends CONNECTION_CLOSE, as when a process dies.
fn crashable_server(identity: Identity, addr: SocketAddr) -> (SocketAddr, impl FnOnce()) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(async move {
            let server = Endpoint::bind(addr, &identity, TransportConfig::default()).unwrap();
            server
                .serve(|_peer: Peer, frame: Vec<u8>| async move { frame })
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            let _ = crash_rx.await;
            server
        });
        drop(rt);
        drop(server);
    });
    let addr = addr_rx.recv().unwrap();
    (addr, move || {
        crash_tx.send(()).unwrap();
        thread.join().unwrap();
    })
}

#[tokio::test]
async fn restarted_node_resets_stale_connections_at_once() {
    let identity = Identity::generate().unwrap();
    let (addr, crash) = crashable_server(identity.clone(), any_port());
    let client = endpoint(TransportConfig::default());
    client
        .request(addr, Some(identity.id()), b"1".to_vec())
        .await
        .unwrap();
    crash();

    // Same identity, same address: the new process derives the same stateless-reset key, so the
    // client's stale connection is reset on its first packet and the request is redialled,
    // instead of waiting for the 2 s request timeout.
    let (addr2, stop) = crashable_server(identity.clone(), addr);
    assert_eq!(addr2, addr);
    let start = Instant::now();
    let (id, reply) = client
        .request(addr, Some(identity.id()), b"2".to_vec())
        .await
        .unwrap();
    assert_eq!((id, reply), (identity.id(), b"2".to_vec()));
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    client.close().await;
    stop();
}
