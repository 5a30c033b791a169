//! Request/response between nodes over QUIC.
//!
//! This module exists so the node runtime can think in "send this frame to that node, get its
//! reply" and never in connections, streams or flow control. The wire shape is fixed by the
//! architecture: one bidirectional stream per request; the requester writes one frame and
//! finishes the stream (FIN ends the frame, there is no length prefix); the responder reads to
//! the end under a hard size cap, writes one reply frame and finishes. Frames are opaque bytes
//! here; the bounded ETF codec lives elsewhere.
//!
//! Everything is bounded: frame size ([`TransportConfig::max_frame_bytes`]), outbound requests
//! in flight (semaphore), pooled outbound connections (LRU-evicted map keyed by address),
//! inbound connections (refused past the cap), streams per inbound connection (QUIC stream
//! credit), inbound streams being served at once (semaphore), and time (request, read and handler
//! timeouts; QUIC idle timeout).
//!
//! Refusals are explicit: a responder that will not answer resets its send stream (and stops its
//! receive stream) with a [`Refusal`] code, which the requester gets as
//! [`TransportError::Refused`]. A handler that panics resets the stream too; the requester never
//! mistakes a failure for an empty reply.
//!
//! Connections: one endpoint (one UDP socket) both dials and accepts, so peers see a node's
//! listening address as the source of its requests. Outbound connections carry only our
//! requests (the peer gets no stream credit on them); inbound connections carry only the peer's.
//! A pooled connection found dead (closed, reset, timed out) is dropped and the request is
//! redialled once; a request that times out also drops its connection from the pool, so the next
//! request dials afresh. The QUIC stateless-reset key is derived from the node's private key, so
//! a node restarted with the same identity resets its peers' stale connections at once.
//!
//! Retried requests may reach the peer twice (if the connection died after the peer read the
//! request): protocol messages must be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use macula_dht::NodeId;
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, ReadToEndError, VarInt, WriteError};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::identity::{id_hex, Identity};
use crate::tls::{peer_id, TlsContext, TlsError, SERVER_NAME};

/// Default hard cap on one frame (request or reply), in bytes: the wire protocol's.
pub use macula_dht::wire::MAX_FRAME_BYTES;

/// Largest `max_frame_bytes` a [`TransportConfig`] may set.
pub const MAX_FRAME_BYTES_LIMIT: usize = 64 << 20;

/// How long [`Endpoint::close`] waits for connections to drain.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Flow-control slack above `max_frame_bytes` per stream, so a frame of exactly the cap (and the
/// first byte past it, which is what proves it too large) is never stuck on stream credit.
const STREAM_WINDOW_SLACK: u64 = 64 << 10;

/// Connection-level receive window, in frames of the maximum size.
const CONNECTION_WINDOW_FRAMES: u64 = 4;

/// Tunables of an [`Endpoint`]. `Default` gives the production values.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Whole budget of one outbound request: waiting for an in-flight slot, dialling, sending,
    /// and receiving the reply.
    pub request_timeout: Duration,
    /// Inbound: how long a connection may take to complete its handshake, and a request frame to
    /// arrive in full once its stream is open.
    pub read_timeout: Duration,
    /// Inbound: how long the handler may take to produce a reply.
    pub handler_timeout: Duration,
    /// Hard cap on one frame, both ways. Larger inbound frames are refused with
    /// [`Refusal::FrameTooLarge`]; larger outbound frames fail locally without being sent.
    pub max_frame_bytes: usize,
    /// Inbound connections open at once; further connection attempts are refused.
    pub max_connections: usize,
    /// Streams (requests) a peer may have open at once on one inbound connection. QUIC enforces
    /// it: the peer's next `open` waits for credit.
    pub max_streams_per_connection: u32,
    /// Inbound streams being served at once, across all connections. Together with
    /// `max_frame_bytes` this bounds the memory held by inbound frames.
    pub max_inbound_streams: usize,
    /// Outbound requests in flight at once; further callers wait (within their timeout).
    pub max_in_flight: usize,
    /// Outbound connections kept for reuse; the least recently used is dropped past this.
    pub max_pooled_connections: usize,
    /// QUIC idle timeout (the smaller of the two sides' values applies).
    pub idle_timeout: Duration,
    /// Keep-alive interval on outbound connections, so pooled connections stay open while idle.
    pub keep_alive_interval: Duration,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            request_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            handler_timeout: Duration::from_secs(2),
            max_frame_bytes: MAX_FRAME_BYTES,
            max_connections: 1024,
            max_streams_per_connection: 256,
            max_inbound_streams: 1024,
            max_in_flight: 1024,
            max_pooled_connections: 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
        }
    }
}

/// The other side of an inbound request: its verified id and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's id, proven by its TLS handshake: SHA-256 of its certificate's Ed25519 key.
    pub id: NodeId,
    /// The UDP address the request came from: the peer's listening address, since one endpoint
    /// both dials and accepts.
    pub addr: SocketAddr,
}

/// Answers inbound requests. Implemented for every `Fn(Peer, Vec<u8>) -> impl Future<Output =
/// Vec<u8>>`, so a closure returning an `async` block is a handler.
///
/// The handler runs on its own task per request, under [`TransportConfig::handler_timeout`]. It
/// must answer from local data (the architecture forbids inbound requests from triggering
/// outbound lookups). A reply larger than the frame cap is refused rather than sent.
pub trait Handler: Send + Sync + 'static {
    /// The reply frame to the request `frame` (opaque bytes, at most the frame cap) from `peer`.
    fn handle(&self, peer: Peer, frame: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Peer, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send,
{
    fn handle(&self, peer: Peer, frame: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send {
        self(peer, frame)
    }
}

/// Why a responder refused a request (the QUIC stream error code it reset the stream with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The request frame exceeded the responder's `max_frame_bytes`.
    FrameTooLarge,
    /// The request frame did not arrive in full within the responder's `read_timeout`.
    ReadTimeout,
    /// The handler panicked or exceeded the responder's `handler_timeout`.
    HandlerFailed,
    /// The handler's reply exceeded the responder's `max_frame_bytes`.
    ReplyTooLarge,
    /// A code this version does not know.
    Other(u64),
}

impl Refusal {
    /// The stream error code on the wire.
    pub fn code(self) -> u64 {
        match self {
            Refusal::FrameTooLarge => 1,
            Refusal::ReadTimeout => 2,
            Refusal::HandlerFailed => 3,
            Refusal::ReplyTooLarge => 4,
            Refusal::Other(code) => code,
        }
    }

    /// The refusal a wire code stands for.
    pub fn from_code(code: u64) -> Refusal {
        match code {
            1 => Refusal::FrameTooLarge,
            2 => Refusal::ReadTimeout,
            3 => Refusal::HandlerFailed,
            4 => Refusal::ReplyTooLarge,
            other => Refusal::Other(other),
        }
    }

    fn var_int(self) -> VarInt {
        VarInt::from_u64(self.code()).unwrap_or(VarInt::MAX)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::FrameTooLarge => f.write_str("request frame too large"),
            Refusal::ReadTimeout => f.write_str("request frame not received in time"),
            Refusal::HandlerFailed => f.write_str("handler failed or timed out"),
            Refusal::ReplyTooLarge => f.write_str("reply frame too large"),
            Refusal::Other(code) => write!(f, "stream error code {code}"),
        }
    }
}

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound (e.g. the port is in use).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address that was to be bound.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// `Endpoint::bind` was called outside a tokio runtime.
    #[error("Endpoint::bind must be called from within a tokio runtime")]
    NoRuntime,
    /// A [`TransportConfig`] value is out of range.
    #[error("invalid transport config: {0}")]
    Config(String),
    /// The TLS configuration could not be built from the node's identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint has been closed.
    #[error("endpoint is closed")]
    Closed,
    /// `serve` was called twice.
    #[error("endpoint is already serving")]
    AlreadyServing,
    /// An outbound frame exceeds `max_frame_bytes`; nothing was sent.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Length of the refused frame, in bytes.
        len: usize,
        /// The endpoint's [`TransportConfig::max_frame_bytes`].
        max: usize,
    },
    /// The peer's reply exceeded `max_frame_bytes`; it was discarded.
    #[error("reply from {addr} exceeds the {max}-byte limit")]
    ReplyTooLarge {
        /// The peer's address.
        addr: SocketAddr,
        /// The endpoint's [`TransportConfig::max_frame_bytes`].
        max: usize,
    },
    /// The connection could not even be attempted.
    #[error("cannot dial {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// quinn's reason (an address it cannot send to, an invalid configuration, ...).
        source: quinn::ConnectError,
    },
    /// The handshake failed or the connection died.
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// The peer's address.
        addr: SocketAddr,
        /// How the handshake or the connection ended (refused, timed out, reset, closed, ...).
        source: ConnectionError,
    },
    /// The peer's certificate is for another id than the caller expected. On a new connection
    /// the handshake is aborted as soon as the certificate is seen, before its signature is
    /// checked, so `actual` is the id the certificate claims, not a proven one; on a pooled
    /// connection it is proven.
    #[error("peer at {addr} is {}, expected {}", id_hex(.actual), id_hex(.expected))]
    IdMismatch {
        /// The peer's address.
        addr: SocketAddr,
        /// The id the caller passed as `expect`.
        expected: NodeId,
        /// The id the peer's certificate stands for.
        actual: NodeId,
    },
    /// The request did not complete within `request_timeout`.
    #[error("request to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The [`TransportConfig::request_timeout`] that ran out.
        after: Duration,
    },
    /// The peer reset the stream instead of answering.
    #[error("peer at {addr} refused the request: {refusal}")]
    Refused {
        /// The peer's address.
        addr: SocketAddr,
        /// Why, as given by the stream error code the peer used.
        refusal: Refusal,
    },
    /// A stream-level failure that is none of the above.
    #[error("stream to {addr} failed: {reason}")]
    Stream {
        /// The peer's address.
        addr: SocketAddr,
        /// A description of the failure, for logs.
        reason: String,
    },
}

impl TransportError {
    /// Whether the error means the connection is gone (worth one redial).
    fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            TransportError::Connection {
                source: ConnectionError::ConnectionClosed(_)
                    | ConnectionError::ApplicationClosed(_)
                    | ConnectionError::Reset
                    | ConnectionError::TimedOut,
                ..
            }
        )
    }
}

/// A node's QUIC endpoint: dials peers with [`Endpoint::request`] and answers them once
/// [`Endpoint::serve`] has been called. Cheap to clone (all clones share one socket).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken out by `close`, so that the UDP socket is released once connections have drained.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    tls: TlsContext,
    config: TransportConfig,
    local_addr: SocketAddr,
    client_transport: Arc<quinn::TransportConfig>,
    pool: Pool,
    in_flight: Semaphore,
    inbound: Arc<Semaphore>,
    serving: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` (port 0 picks a free port) and sets up QUIC with the node's
    /// identity. Must be called from within a tokio runtime. The endpoint does not accept
    /// connections until [`Endpoint::serve`] is called.
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: TransportConfig,
    ) -> Result<Endpoint, TransportError> {
        validate(&config)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::NoRuntime);
        }
        let tls = TlsContext::new(identity)?;
        let client_transport = Arc::new(quic_transport(&config, Direction::Outbound)?);
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(identity),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        tracing::debug!(%local_addr, id = %id_hex(&identity.id()), "endpoint bound");
        Ok(Endpoint {
            inner: Arc::new(Inner {
                endpoint: Mutex::new(Some(endpoint)),
                tls,
                local_addr,
                client_transport,
                pool: Pool::new(config.max_pooled_connections),
                in_flight: Semaphore::new(config.max_in_flight),
                inbound: Arc::new(Semaphore::new(config.max_connections)),
                serving: Mutex::new(None),
                closed: AtomicBool::new(false),
                config,
            }),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.tls.id()
    }

    /// The configuration the endpoint was bound with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Sends `frame` to the node at `addr` and returns the peer's verified id and its reply.
    ///
    /// If `expect` is given, the peer must present that id: a new connection fails its handshake
    /// otherwise, and a pooled one is not used; both give [`TransportError::IdMismatch`]. The
    /// whole request is bounded by [`TransportConfig::request_timeout`].
    pub async fn request(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
        frame: Vec<u8>,
    ) -> Result<(NodeId, Vec<u8>), TransportError> {
        let after = self.inner.config.request_timeout;
        self.request_within(addr, expect, frame, after).await
    }

    /// [`Endpoint::request`] bounded by `after` instead (a node gives each peer as long as it
    /// usually takes to answer).
    pub async fn request_within(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
        frame: Vec<u8>,
        after: Duration,
    ) -> Result<(NodeId, Vec<u8>), TransportError> {
        let inner = &self.inner;
        let max = inner.config.max_frame_bytes;
        if frame.len() > max {
            return Err(TransportError::FrameTooLarge {
                len: frame.len(),
                max,
            });
        }
        if inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let mut used = None;
        let outcome = tokio::time::timeout(
            after,
            inner.request_once_or_twice(addr, expect, &frame, &mut used),
        )
        .await;
        match outcome {
            Ok(result) => result,
            Err(_elapsed) => {
                if let Some(slot) = used {
                    inner.pool.remove(addr, &slot);
                }
                Err(TransportError::Timeout { addr, after })
            }
        }
    }

    /// Starts answering inbound requests with `handler`, on background tasks, until
    /// [`Endpoint::close`]. Can be called once.
    pub fn serve<H: Handler>(&self, handler: H) -> Result<(), TransportError> {
        let inner = &self.inner;
        let mut serving = inner.serving.lock();
        if inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        if serving.is_some() {
            return Err(TransportError::AlreadyServing);
        }
        let Some(endpoint) = inner.endpoint.lock().clone() else {
            return Err(TransportError::Closed);
        };
        let crypto = QuicServerConfig::try_from(inner.tls.server_config()?)
            .map_err(|e| TransportError::Config(format!("QUIC server crypto: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config
            .transport_config(Arc::new(quic_transport(&inner.config, Direction::Inbound)?))
            .max_incoming(inner.config.max_connections);
        endpoint.set_server_config(Some(server_config));
        let shared = Arc::new(ServeShared {
            handler,
            config: inner.config.clone(),
            streams: Arc::new(Semaphore::new(inner.config.max_inbound_streams)),
        });
        *serving = Some(tokio::spawn(accept_loop(
            endpoint,
            inner.inbound.clone(),
            shared,
        )));
        tracing::debug!(local_addr = %inner.local_addr, "serving");
        Ok(())
    }

    /// Inbound connections currently open.
    pub fn inbound_connections(&self) -> usize {
        self.inner.config.max_connections - self.inner.inbound.available_permits()
    }

    /// Outbound connections currently pooled (including ones being dialled).
    pub fn pooled_connections(&self) -> usize {
        self.inner.pool.len()
    }

    /// Closes every connection, stops serving, and releases the UDP port, so that a restarted
    /// node can bind the same address at once. Waits at most about a second for connections to
    /// drain and the port to be free (checked by briefly binding it). Requests in flight fail with
    /// [`TransportError::Closed`] or a connection error. Idempotent; applies to every clone.
    pub async fn close(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        let endpoint = inner.endpoint.lock().take();
        let serving = inner.serving.lock().take();
        inner.pool.clear();
        let Some(endpoint) = endpoint else {
            return;
        };
        endpoint.close(VarInt::from_u32(0), b"shutdown");
        if let Some(task) = serving {
            // The accept loop holds a handle on the endpoint; wait until it is really gone.
            task.abort();
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        let _ = tokio::time::timeout_at(deadline, endpoint.wait_idle()).await;
        drop(endpoint);
        // quinn's driver drops the socket asynchronously once the last handle and connection are
        // gone: wait for that, boundedly.
        while tokio::time::Instant::now() < deadline {
            match std::net::UdpSocket::bind(inner.local_addr) {
                Ok(_probe) => break,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => break,
            }
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &id_hex(&self.id()))
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without this the accept loop (which holds its own handle on the quinn endpoint) would
        // outlive the last `Endpoint`.
        if let Some(endpoint) = self.endpoint.get_mut().take() {
            endpoint.close(VarInt::from_u32(0), b"shutdown");
        }
        if let Some(task) = self.serving.get_mut().take() {
            task.abort();
        }
    }
}

impl Inner {
    /// One request, redialled once if its pooled connection turns out to be dead. `used` tells
    /// the caller which pool slot was in use if the timeout cancels this future.
    async fn request_once_or_twice(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
        frame: &[u8],
        used: &mut Option<Arc<Slot>>,
    ) -> Result<(NodeId, Vec<u8>), TransportError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| TransportError::Closed)?;
        let mut retried = false;
        loop {
            let (slot, conn, id) = self.connection(addr, expect).await?;
            *used = Some(slot.clone());
            match exchange(&conn, addr, frame, self.config.max_frame_bytes).await {
                Ok(reply) => return Ok((id, reply)),
                Err(e) if !retried && e.is_connection_lost() => {
                    tracing::debug!(%addr, error = %e, "pooled connection lost, redialling once");
                    self.pool.remove(addr, &slot);
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A live connection to `addr` from the pool, dialling if needed. Concurrent callers for the
    /// same address share one dial.
    async fn connection(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<(Arc<Slot>, quinn::Connection, NodeId), TransportError> {
        let mut slot = self.pool.slot(addr);
        if let Some((conn, _)) = slot.cell.get() {
            if conn.close_reason().is_some() {
                self.pool.remove(addr, &slot);
                slot = self.pool.slot(addr);
            }
        }
        let (conn, id) = slot
            .cell
            .get_or_try_init(|| self.dial(addr, expect))
            .await?
            .clone();
        // The connection may have been dialled by a caller with another expectation.
        if let Some(expected) = expect {
            if expected != id {
                return Err(TransportError::IdMismatch {
                    addr,
                    expected,
                    actual: id,
                });
            }
        }
        Ok((slot, conn, id))
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<(quinn::Connection, NodeId), TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let Some(endpoint) = self.endpoint.lock().clone() else {
            return Err(TransportError::Closed);
        };
        let (tls, verifier) = self.tls.client_config(expect)?;
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Config(format!("QUIC client crypto: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.client_transport.clone());
        let connecting = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|source| match source {
                quinn::ConnectError::EndpointStopping => TransportError::Closed,
                source => TransportError::Connect { addr, source },
            })?;
        match connecting.await {
            Ok(conn) => {
                let Some(id) = peer_id(&conn) else {
                    // Our verifier always sees a certificate before it accepts; keep the check
                    // anyway rather than trusting that.
                    conn.close(VarInt::from_u32(0), b"no peer certificate");
                    return Err(TransportError::Stream {
                        addr,
                        reason: "peer presented no certificate".into(),
                    });
                };
                tracing::debug!(%addr, peer = %id_hex(&id), "connected");
                Ok((conn, id))
            }
            Err(source) => match (verifier.expected(), verifier.seen()) {
                (Some(expected), Some(actual)) if expected != actual => {
                    Err(TransportError::IdMismatch {
                        addr,
                        expected,
                        actual,
                    })
                }
                _ => Err(connection_error(addr, source)),
            },
        }
    }
}

/// Writes one frame, finishes, reads the reply to its end under the cap.
async fn exchange(
    conn: &quinn::Connection,
    addr: SocketAddr,
    frame: &[u8],
    max: usize,
) -> Result<Vec<u8>, TransportError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_error(addr, e))?;
    send.write_all(frame).await.map_err(|e| match e {
        WriteError::Stopped(code) => TransportError::Refused {
            addr,
            refusal: Refusal::from_code(code.into_inner()),
        },
        WriteError::ConnectionLost(e) => connection_error(addr, e),
        other => TransportError::Stream {
            addr,
            reason: other.to_string(),
        },
    })?;
    // Fails only if the stream was already finished or reset, which nothing here does; the read
    // below reports whatever the peer did.
    let _ = send.finish();
    match recv.read_to_end(max).await {
        Ok(reply) => Ok(reply),
        Err(ReadToEndError::TooLong) => {
            let _ = recv.stop(Refusal::ReplyTooLarge.var_int());
            Err(TransportError::ReplyTooLarge { addr, max })
        }
        Err(ReadToEndError::Read(ReadError::Reset(code))) => Err(TransportError::Refused {
            addr,
            refusal: Refusal::from_code(code.into_inner()),
        }),
        Err(ReadToEndError::Read(ReadError::ConnectionLost(e))) => Err(connection_error(addr, e)),
        Err(ReadToEndError::Read(other)) => Err(TransportError::Stream {
            addr,
            reason: other.to_string(),
        }),
    }
}

fn connection_error(addr: SocketAddr, source: ConnectionError) -> TransportError {
    match source {
        ConnectionError::LocallyClosed => TransportError::Closed,
        source => TransportError::Connection { addr, source },
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

struct ServeShared<H> {
    handler: H,
    config: TransportConfig,
    streams: Arc<Semaphore>,
}

async fn accept_loop<H: Handler>(
    endpoint: quinn::Endpoint,
    connections: Arc<Semaphore>,
    shared: Arc<ServeShared<H>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve_connection(incoming, permit, shared.clone()));
            }
            Err(_) => {
                tracing::debug!(addr = %incoming.remote_address(), "connection limit reached, refusing");
                incoming.refuse();
            }
        }
    }
    tracing::debug!("accept loop ended");
}

async fn serve_connection<H: Handler>(
    incoming: quinn::Incoming,
    _permit: OwnedSemaphorePermit,
    shared: Arc<ServeShared<H>>,
) {
    let addr = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.config.read_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "inbound handshake timed out");
            return;
        }
    };
    let Some(id) = peer_id(&conn) else {
        // Client certificates are mandatory, so this does not happen; refuse rather than trust it.
        conn.close(VarInt::from_u32(0), b"no peer certificate");
        return;
    };
    let peer = Peer { id, addr };
    tracing::debug!(%addr, peer = %id_hex(&id), "inbound connection");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "inbound connection ended");
                break;
            }
        };
        let Ok(permit) = shared.streams.clone().acquire_owned().await else {
            break;
        };
        tokio::spawn(serve_stream(send, recv, peer, shared.clone(), permit));
    }
}

async fn serve_stream<H: Handler>(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Peer,
    shared: Arc<ServeShared<H>>,
    _permit: OwnedSemaphorePermit,
) {
    let config = &shared.config;
    // Resets the stream with `HandlerFailed` unless a reply was handed over (panic, timeout, ...).
    let mut send = ResetOnDrop(Some(send));
    let frame = match tokio::time::timeout(
        config.read_timeout,
        recv.read_to_end(config.max_frame_bytes),
    )
    .await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(ReadToEndError::TooLong)) => {
            tracing::debug!(addr = %peer.addr, "request frame too large, refusing");
            let _ = recv.stop(Refusal::FrameTooLarge.var_int());
            send.reset(Refusal::FrameTooLarge);
            return;
        }
        Ok(Err(ReadToEndError::Read(e))) => {
            tracing::debug!(addr = %peer.addr, error = %e, "request stream failed");
            return;
        }
        Err(_) => {
            tracing::debug!(addr = %peer.addr, "request frame not received in time");
            let _ = recv.stop(Refusal::ReadTimeout.var_int());
            send.reset(Refusal::ReadTimeout);
            return;
        }
    };
    let reply = match tokio::time::timeout(
        config.handler_timeout,
        shared.handler.handle(peer, frame),
    )
    .await
    {
        Ok(reply) => reply,
        Err(_) => {
            tracing::debug!(addr = %peer.addr, "handler timed out");
            return;
        }
    };
    if reply.len() > config.max_frame_bytes {
        tracing::warn!(addr = %peer.addr, len = reply.len(), "handler reply exceeds the frame cap, refusing");
        send.reset(Refusal::ReplyTooLarge);
        return;
    }
    let Some(mut stream) = send.0.take() else {
        return;
    };
    if let Err(e) = stream.write_all(&reply).await {
        tracing::debug!(addr = %peer.addr, error = %e, "writing reply failed");
        return;
    }
    let _ = stream.finish();
}

struct ResetOnDrop(Option<quinn::SendStream>);

impl ResetOnDrop {
    fn reset(&mut self, refusal: Refusal) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.reset(refusal.var_int());
        }
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.reset(Refusal::HandlerFailed);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection pool

/// Outbound connections keyed by peer address, LRU-evicted past its capacity. A slot holds at
/// most one connection; concurrent callers dial through the slot's `OnceCell`, so they share one
/// handshake. Dropping a slot does not cut requests in flight on its connection (they hold their
/// own handle); QUIC closes the connection when the last handle goes.
struct Pool {
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    capacity: usize,
    clock: AtomicU64,
}

struct Slot {
    cell: OnceCell<(quinn::Connection, NodeId)>,
    last_used: AtomicU64,
}

impl Pool {
    fn new(capacity: usize) -> Pool {
        Pool {
            slots: Mutex::new(HashMap::new()),
            capacity,
            clock: AtomicU64::new(0),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(&addr) {
            slot.last_used.store(now, Ordering::Relaxed);
            return slot.clone();
        }
        if slots.len() >= self.capacity {
            let oldest = slots
                .iter()
                .min_by_key(|(_, slot)| slot.last_used.load(Ordering::Relaxed))
                .map(|(addr, _)| *addr);
            if let Some(oldest) = oldest {
                slots.remove(&oldest);
            }
        }
        let slot = Arc::new(Slot {
            cell: OnceCell::new(),
            last_used: AtomicU64::new(now),
        });
        slots.insert(addr, slot.clone());
        slot
    }

    /// Removes `slot` if it is still the one pooled for `addr` (not a newer one).
    fn remove(&self, addr: SocketAddr, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock();
        if slots.get(&addr).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&addr);
        }
    }

    fn clear(&self) {
        self.slots.lock().clear();
    }

    fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

fn validate(config: &TransportConfig) -> Result<(), TransportError> {
    let nonzero = [
        ("max_frame_bytes", config.max_frame_bytes),
        ("max_connections", config.max_connections),
        (
            "max_streams_per_connection",
            config.max_streams_per_connection as usize,
        ),
        ("max_inbound_streams", config.max_inbound_streams),
        ("max_in_flight", config.max_in_flight),
        ("max_pooled_connections", config.max_pooled_connections),
    ];
    for (name, value) in nonzero {
        if value == 0 {
            return Err(TransportError::Config(format!("{name} must be at least 1")));
        }
    }
    if config.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
        return Err(TransportError::Config(format!(
            "max_frame_bytes must be at most {MAX_FRAME_BYTES_LIMIT}"
        )));
    }
    let permits = [
        config.max_connections,
        config.max_inbound_streams,
        config.max_in_flight,
    ];
    if permits.iter().any(|&p| p > Semaphore::MAX_PERMITS) {
        return Err(TransportError::Config(
            "a concurrency bound is too large".into(),
        ));
    }
    for (name, value) in [
        ("request_timeout", config.request_timeout),
        ("read_timeout", config.read_timeout),
        ("handler_timeout", config.handler_timeout),
        ("idle_timeout", config.idle_timeout),
        ("keep_alive_interval", config.keep_alive_interval),
    ] {
        if value.is_zero() {
            return Err(TransportError::Config(format!("{name} must be positive")));
        }
    }
    Ok(())
}

/// Stateless-reset key and connection-id key derived from the identity, so that after a restart
/// with the same identity the endpoint recognises connection ids it issued before (quinn drops
/// packets whose id it cannot validate) and answers them with a reset token the peer accepts.
fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &identity.derived_secret("quic stateless reset"),
    );
    let cid_secret = identity.derived_secret("quic connection id");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// QUIC transport parameters tuned for small request/response frames with low latency: stream
/// windows that fit a whole maximum frame (a frame never waits for a window update), no
/// unidirectional streams or datagrams, and stream credit only where the peer should open
/// streams (inbound connections).
fn quic_transport(
    config: &TransportConfig,
    direction: Direction,
) -> Result<quinn::TransportConfig, TransportError> {
    let var_int = |v: u64| {
        VarInt::from_u64(v)
            .map_err(|_| TransportError::Config(format!("{v} exceeds a QUIC varint")))
    };
    // usize -> u64 never loses bits on the platforms Rust supports; frames are capped far below.
    let stream_window = config.max_frame_bytes as u64 + STREAM_WINDOW_SLACK;
    let connection_window = stream_window * CONNECTION_WINDOW_FRAMES;
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| TransportError::Config("idle_timeout too large".into()))?;
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(var_int(stream_window)?)
        .receive_window(var_int(connection_window)?)
        .send_window(connection_window)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(idle));
    match direction {
        Direction::Inbound => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection))
                .keep_alive_interval(None);
        }
        Direction::Outbound => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(0))
                .keep_alive_interval(Some(config.keep_alive_interval));
        }
    }
    Ok(t)
}
