//! The native macula_dht node: the network shell around the sans-IO engine.
//!
//! This crate exists so that a native node (the `rust-node` binary) and the BEAM-embedded node
//! (the NIF) share one implementation of everything that touches the network:
//!
//! - [`identity`]: the node's Ed25519 key, its self-signed certificate, and the id rule
//!   (`id = SHA-256(raw Ed25519 public key)`);
//! - [`tls`]: mutual TLS 1.3 without a CA, where a peer's id is proven by its handshake signature;
//! - [`transport`]: request/response over QUIC, one bidirectional stream per request, with every
//!   resource bounded;
//! - [`node`]: the DHT runtime: the engine's state machine (`macula_dht::dht`) driven over the
//!   endpoint with a clock and tasks, behind an async client API;
//! - [`record`]: provider records as the runtime shows them;
//! - [`shared_store`]: the provider store a node serves from, shareable with its host;
//! - [`ctl`]: the local control socket of a running node;
//! - [`config`]: the `rust-node run` settings, from flags and a TOML file;
//! - `metrics` (feature `metrics`, on with `cli`): the OpenMetrics endpoint of `rust-node run
//!   --metrics`;
//! - [`testnet`]: many nodes in one process, for tests and benches.

#![warn(missing_docs)]

pub mod config;
pub mod ctl;
pub mod identity;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod node;
pub mod record;
pub mod shared_store;
pub mod testnet;
pub mod tls;
pub mod transport;

pub use identity::{id_hex, node_id_from_public_key, Identity, IdentityError};
pub use macula_dht::DhtConfig;
pub use macula_dht::NodeId;
pub use node::{
    Event, EventSink, FailoverError, Host, LookupKind, LookupReport, LookupSummary, Node,
    NodeConfig, NodeError, PickError, Published, SelectConfig, Status, Strategy, Trouble,
    UnknownStrategy,
};
pub use record::{service_key, Advertisement, Provider};
pub use shared_store::SharedStore;
pub use testnet::Testnet;

pub use tls::{certificate_id, peer_id, TlsContext, TlsError, ALPN};
pub use transport::{
    Endpoint, Handler, Peer, Refusal, TransportConfig, TransportError, MAX_FRAME_BYTES,
};
