//! The native macula_dht node runtime: the network shell around the sans-IO engine.
//!
//! This crate exists so that a native node (the `macula-dht` binary) and the BEAM-embedded node
//! (the NIF) share one implementation of everything that touches the network. This first layer
//! is the foundation every node-to-node exchange stands on:
//!
//! - [`identity`]: the node's Ed25519 key, its self-signed certificate, and the id rule
//!   (`id = SHA-256(raw Ed25519 public key)`);
//! - [`tls`]: mutual TLS 1.3 without a CA, where a peer's id is proven by its handshake signature;
//! - [`transport`]: request/response over QUIC, one bidirectional stream per request, with every
//!   resource bounded.
//!
//! Lookups, replication, timers and the CLI are built on top of [`Endpoint`].

pub mod identity;
pub mod tls;
pub mod transport;

pub use identity::{id_hex, node_id_from_public_key, Identity, IdentityError};
pub use macula_dht::NodeId;
pub use tls::{certificate_id, peer_id, TlsContext, TlsError, ALPN};
pub use transport::{
    Endpoint, Handler, Peer, Refusal, TransportConfig, TransportError, MAX_FRAME_BYTES,
};
