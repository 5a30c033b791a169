//! Provider records as the runtime shows them. Writing and reading them is the engine's
//! ([`macula_dht::record`], re-exported here); this module adds what needs a clock or serde.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

pub use macula_dht::record::*;
use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    unix_now_us() / 1_000_000
}

/// Microseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a person or a script is shown of a provider: the contract's fields, the id in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderView {
    /// The provider's `node_id`, lowercase hex.
    pub node_id: String,
    /// Where the service is reached, when the record says.
    pub endpoint: Option<String>,
    /// Metadata entries whose key and value read as text.
    pub metadata: BTreeMap<String, String>,
    /// The record's `ttl`, in seconds.
    pub ttl: Option<u32>,
    /// The record's `advertised_at`, in Unix seconds.
    pub advertised_at: Option<u64>,
}

impl From<&Provider> for ProviderView {
    fn from(p: &Provider) -> ProviderView {
        ProviderView {
            node_id: hex(&p.node_id),
            endpoint: p.endpoint.clone(),
            metadata: p.metadata.clone(),
            ttl: p.ttl_secs,
            advertised_at: p.advertised_at,
        }
    }
}

impl ProviderView {
    /// Seconds until `advertised_at + ttl` by the wall clock `now_unix` (0 once past), when the
    /// record has both.
    pub fn ttl_left(&self, now_unix: u64) -> Option<u64> {
        Some((self.advertised_at? + u64::from(self.ttl?)).saturating_sub(now_unix))
    }
}
