//! Floors for a request/response on loopback: a plain UDP echo, and a minimal plain-quinn echo
//! with one bidirectional stream per request on one long-lived connection. The quinn echo uses
//! what the node's transport uses where it costs time: the node's own TLS configs ([`TlsContext`]:
//! mutual TLS 1.3, the Ed25519 self-signed certificate of a fresh [`Identity`] on each side, the
//! node's verifiers), its QUIC transport settings, the same stream shape (the requester writes
//! the frame and finishes, the responder reads to the end, writes the reply and finishes) and a
//! task per inbound stream. It has none of the transport's bounds (timeouts, semaphores, the
//! connection pool): those are part of what the floor is compared against.
//!
//! The servers run as tasks on the caller's runtime (beside a node, on its thread), the clients on
//! the caller's. A request says how long its reply is (its first 4 bytes, little-endian), so an
//! echo carries frames of the sizes of the request it is read beside, both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use macula_dht_node::tls::SERVER_NAME;
use macula_dht_node::{Identity, TlsContext, TransportConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use tokio::net::UdpSocket;

const LOOPBACK: &str = "127.0.0.1:0";

/// Where the echo servers listen.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub udp: SocketAddr,
    pub quinn: SocketAddr,
}

/// Starts both echo servers on the current runtime; they answer until it ends.
pub async fn serve() -> Addrs {
    let udp = UdpSocket::bind(LOOPBACK).await.expect("bind UDP echo");
    let udp_addr = udp.local_addr().expect("UDP echo address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&reply(&buf[..len]), from).await;
        }
    });

    let tls = TlsContext::new(&Identity::generate().expect("identity")).expect("TLS");
    let crypto =
        QuicServerConfig::try_from(tls.server_config().expect("server TLS")).expect("QUIC crypto");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(Side::Serving));
    let endpoint =
        quinn::Endpoint::server(config, LOOPBACK.parse().expect("addr")).expect("bind quinn echo");
    let quinn_addr = endpoint.local_addr().expect("quinn echo address");
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let max = TransportConfig::default().max_frame_bytes;
                        if let Ok(request) = recv.read_to_end(max).await {
                            if send.write_all(&reply(&request)).await.is_ok() {
                                let _ = send.finish();
                            }
                        }
                    });
                }
            });
        }
    });
    Addrs {
        udp: udp_addr,
        quinn: quinn_addr,
    }
}

/// A client of the UDP echo: one connected socket.
pub struct UdpClient {
    socket: UdpSocket,
    request: Vec<u8>,
    buf: Vec<u8>,
    reply_len: usize,
}

impl UdpClient {
    /// Requests of `request_len` bytes, asking for replies of `reply_len`.
    pub async fn connect(addr: SocketAddr, request_len: usize, reply_len: usize) -> UdpClient {
        let socket = UdpSocket::bind(LOOPBACK).await.expect("bind UDP client");
        socket.connect(addr).await.expect("connect UDP client");
        UdpClient {
            socket,
            request: request(request_len, reply_len),
            buf: vec![0; reply_len + 1],
            reply_len,
        }
    }

    /// One request and its reply. Loopback does not lose datagrams sent one at a time.
    pub async fn round_trip(&mut self) {
        self.socket.send(&self.request).await.expect("UDP send");
        let len = self.socket.recv(&mut self.buf).await.expect("UDP recv");
        assert_eq!(len, self.reply_len, "UDP echo reply");
    }
}

/// A client of the quinn echo: one connection, a stream per request.
pub struct QuinnClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    request: Vec<u8>,
    reply_len: usize,
}

impl QuinnClient {
    /// Dials `addr` (a full handshake); requests of `request_len` bytes, asking for replies of
    /// `reply_len`.
    pub async fn connect(addr: SocketAddr, request_len: usize, reply_len: usize) -> QuinnClient {
        let tls = TlsContext::new(&Identity::generate().expect("identity")).expect("TLS");
        let (tls, _) = tls.client_config(None).expect("client TLS");
        let crypto = QuicClientConfig::try_from(tls).expect("QUIC crypto");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(Side::Dialling));
        let endpoint =
            quinn::Endpoint::client(LOOPBACK.parse().expect("addr")).expect("bind quinn client");
        let conn = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .expect("dial quinn echo")
            .await
            .expect("quinn echo handshake");
        QuinnClient {
            endpoint,
            conn,
            request: request(request_len, reply_len),
            reply_len,
        }
    }

    /// One request on a stream of its own and its reply.
    pub async fn round_trip(&self) {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("open stream");
        send.write_all(&self.request).await.expect("write request");
        let _ = send.finish();
        let max = TransportConfig::default().max_frame_bytes;
        let reply = recv.read_to_end(max).await.expect("read reply");
        assert_eq!(reply.len(), self.reply_len, "quinn echo reply");
    }

    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// A request of `len` bytes (at least 4) asking for a reply of `reply_len`.
fn request(len: usize, reply_len: usize) -> Vec<u8> {
    let mut request = vec![0; len.max(4)];
    let reply_len = u32::try_from(reply_len).expect("reply length");
    request[..4].copy_from_slice(&reply_len.to_le_bytes());
    request
}

/// The reply a request asks for (allocated, as a node allocates the reply it encodes).
fn reply(request: &[u8]) -> Vec<u8> {
    let len = request
        .first_chunk::<4>()
        .map_or(0, |len| u32::from_le_bytes(*len));
    vec![0; len as usize]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Serving,
    Dialling,
}

/// The QUIC settings of the node's transport with its default config (`quic_transport` in
/// `src/transport.rs`, private there): stream windows that hold a whole frame plus 64 KiB, a
/// connection window of four of them, no unidirectional streams or datagrams, stream credit only
/// for the side that is asked, keep-alive only on the side that dials.
fn transport(side: Side) -> Arc<quinn::TransportConfig> {
    let node = TransportConfig::default();
    let stream_window = node.max_frame_bytes as u64 + (64 << 10);
    let var_int = |v: u64| VarInt::from_u64(v).expect("a QUIC varint");
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(var_int(stream_window))
        .receive_window(var_int(4 * stream_window))
        .send_window(4 * stream_window)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(node.idle_timeout.try_into().expect("idle timeout")));
    match side {
        Side::Serving => t
            .max_concurrent_bidi_streams(VarInt::from_u32(node.max_streams_per_connection))
            .keep_alive_interval(None),
        Side::Dialling => t
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(node.keep_alive_interval)),
    };
    Arc::new(t)
}
