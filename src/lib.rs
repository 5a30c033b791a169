//! `macula_dht`: the sans-IO engine of Macula's Kademlia DHT for service discovery.
//!
//! No I/O, no clock, no threads: callers pass time in as an argument and drive everything. The
//! same engine runs inside the BEAM (through the NIF in `native/`), in native nodes, and in the
//! simulator, so storage, routing, every DHT decision and the wire format exist exactly once.
//!
//! - [`dht`]: one node's DHT logic as a state machine: table membership and liveness, answers
//!   to peers, lookups, replication, republish, hand-off, removal, tombstones and refresh.
//! - [`id`]: node ids, XOR distance, bucket index.
//! - [`etf`]: a bounded, non-recursive reader of Erlang's External Term Format.
//! - [`provider`]: a provider record located in its ETF bytes (`node_id`, `ttl`).
//! - [`store`]: the provider store (upsert, removal, TTL expiry, caps).
//! - [`table`]: the k-bucket routing table with exact closest-node queries.
//! - [`lookup`]: the iterative lookup state machine.
//! - [`wire`]: the versioned request/response messages nodes exchange, as bounded ETF.
//! - [`record`]: the provider map a node advertises, written and read.
//! - [`seal`]: publisher signatures on provider records and removals.
//! - [`select`]: picking one provider by a strategy, skipping those callers could not reach.
//! - [`settings`]: every user-facing setting with its default and range, defined once.
//! - [`time`]: the time the host passes in.

#![warn(missing_docs)]

pub mod dht;
pub mod etf;
pub mod id;
pub mod lookup;
pub mod provider;
pub mod record;
pub mod seal;
pub mod select;
pub mod settings;
pub mod store;
pub mod table;
pub mod time;
pub mod wire;

pub use dht::{
    Action, Dht, DhtConfig, Event, Failure, FailureKind, LookupReport, OpId, Outgoing, Published,
    Reply, RpcId, StoreAccess,
};
pub use etf::EtfError;
pub use id::{Distance, NodeId, ID_LEN};
pub use lookup::{FoundProvider, Lookup, LookupConfig, Outcome};
pub use provider::{ProviderError, ProviderRecord};
pub use settings::{Setting, SettingError};
pub use store::{Listed, ProviderStore, StoreError, StoreLimits, StoreStats, Upserted};
pub use table::{Inserted, Removed, RoutingTable, TableConfig};
pub use time::Time;
