//! Tunables of a [`Dht`](super::Dht).

use std::time::Duration;

use crate::settings::{self, SettingError};

/// Tunables of one node's DHT logic. `Default` gives production values (k = 20, alpha = 3, the
/// contract's republish rule). Every count is a bound: nothing the node keeps grows past it.
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// Bucket size, replication width and lookup width ([`settings::K`]).
    pub k: usize,
    /// Lookup requests in flight at once ([`settings::ALPHA`]).
    pub alpha: usize,
    /// Replacement cache size per bucket ([`settings::REPLACEMENTS`]).
    pub replacements: usize,
    /// Answer peers and keep the network's records: hand-offs, housekeeping and bucket refresh.
    /// `false` makes a client that only asks (the `discover` command): it stores nothing for
    /// others and runs no timers but its requests' and lookups' deadlines.
    pub serve: bool,
    /// Longest one request to one peer may take; it then fails as a timeout
    /// ([`settings::REQUEST_TIMEOUT_MS`]).
    pub request_timeout: Duration,
    /// Longest a lookup may run, waiting for a free lookup slot included; it then ends with
    /// what it has found ([`settings::LOOKUP_TIMEOUT_MS`]).
    pub lookup_timeout: Duration,
    /// Period of housekeeping: record expiry, tombstone purge, due republishes.
    pub tick: Duration,
    /// Period of bucket refresh (and of re-joining through the bootstrap nodes when the table
    /// is empty).
    pub refresh_interval: Duration,
    /// Buckets refreshed per refresh (round robin), besides the lookup of the node's own id.
    pub refresh_buckets: usize,
    /// An advertisement is published again `max(republish_floor, ttl - republish_margin)` after
    /// each publish. The contract's values are 10 s and 60 s.
    pub republish_floor: Duration,
    /// See `republish_floor`.
    pub republish_margin: Duration,
    /// Lookups running at once; further ones wait for a slot.
    pub max_lookups: usize,
    /// Lookups waiting for a slot; past this a lookup ends at once, timed out.
    pub max_queued_lookups: usize,
    /// Queries one lookup may send.
    pub max_lookup_queries: usize,
    /// Requests in flight at once; past this a request fails at once without being sent.
    pub max_requests: usize,
    /// Services this node advertises at once.
    pub max_adverts: usize,
    /// Tombstones kept (the one closest to its end is dropped past this).
    pub max_tombstones: usize,
    /// Records whose copies (STORE and hand-off targets) are remembered for their removal, each
    /// of the two kinds (the oldest is forgotten past this; its removal then reaches the
    /// current closest nodes only).
    pub max_replicated: usize,
    /// Unknown peers being pinged back at once before they enter the table.
    pub max_verifying: usize,
    /// Newcomers waiting for a hand-off; more are skipped (they get records on republish).
    pub handoff_queue: usize,
    /// Keys examined per newcomer for a hand-off.
    pub max_handoff_keys: usize,
    /// Percent of the store's `max_records` and `max_bytes` that one publisher (other than this
    /// node) may take ([`settings::PUBLISHER_SHARE_PCT`]).
    pub publisher_share_pct: usize,
    /// STOREs per second one peer may send, with a burst of five seconds' worth
    /// ([`settings::PEER_STORES_PER_S`]).
    pub peer_stores_per_s: usize,
    /// Seals remembered as verified, so that a record seen again is not checked again.
    pub verified_cache: usize,
}

impl Default for DhtConfig {
    fn default() -> DhtConfig {
        DhtConfig {
            k: settings::K.default_usize(),
            alpha: settings::ALPHA.default_usize(),
            replacements: settings::REPLACEMENTS.default_usize(),
            serve: true,
            request_timeout: Duration::from_millis(settings::REQUEST_TIMEOUT_MS.default),
            lookup_timeout: Duration::from_millis(settings::LOOKUP_TIMEOUT_MS.default),
            tick: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(60),
            refresh_buckets: 4,
            republish_floor: Duration::from_secs(10),
            republish_margin: Duration::from_secs(60),
            max_lookups: 256,
            max_queued_lookups: 4_096,
            max_lookup_queries: 320,
            max_requests: 4_096,
            max_adverts: 1_024,
            max_tombstones: 100_000,
            max_replicated: 65_536,
            max_verifying: 64,
            handoff_queue: 64,
            max_handoff_keys: 10_000,
            publisher_share_pct: settings::PUBLISHER_SHARE_PCT.default_usize(),
            peer_stores_per_s: settings::PEER_STORES_PER_S.default_usize(),
            verified_cache: 8_192,
        }
    }
}

impl DhtConfig {
    /// Checks every bound; a [`Dht`](super::Dht) is never made from a config that fails this.
    pub fn validate(&self) -> Result<(), SettingError> {
        settings::K.check_usize(self.k)?;
        settings::ALPHA.check_usize(self.alpha)?;
        settings::REPLACEMENTS.check_usize(self.replacements)?;
        settings::PUBLISHER_SHARE_PCT.check_usize(self.publisher_share_pct)?;
        settings::PEER_STORES_PER_S.check_usize(self.peer_stores_per_s)?;
        check_ms(settings::REQUEST_TIMEOUT_MS, self.request_timeout)?;
        check_ms(settings::LOOKUP_TIMEOUT_MS, self.lookup_timeout)?;
        let positive = [
            ("tick", self.tick),
            ("refresh_interval", self.refresh_interval),
            ("republish_floor", self.republish_floor),
        ];
        for (setting, d) in positive {
            if d.is_zero() {
                return Err(SettingError::Invalid {
                    setting,
                    reason: "must be positive".into(),
                });
            }
        }
        let counts = [
            ("max_lookups", self.max_lookups),
            ("max_queued_lookups", self.max_queued_lookups),
            ("max_lookup_queries", self.max_lookup_queries),
            ("max_requests", self.max_requests),
            ("max_adverts", self.max_adverts),
            ("max_tombstones", self.max_tombstones),
            ("max_replicated", self.max_replicated),
            ("max_verifying", self.max_verifying),
            ("handoff_queue", self.handoff_queue),
        ];
        for (setting, n) in counts {
            if n == 0 {
                return Err(SettingError::Invalid {
                    setting,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// How long after a publish an advertisement with this ttl is published again.
    pub fn republish_interval(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs))
            .saturating_sub(self.republish_margin)
            .max(self.republish_floor)
    }
}

/// A duration setting given in milliseconds, checked against its range.
fn check_ms(setting: settings::Setting, d: Duration) -> Result<(), SettingError> {
    setting
        .check(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republish_follows_the_contract() {
        let config = DhtConfig::default();
        assert_eq!(config.republish_interval(300), Duration::from_secs(240));
        assert_eq!(config.republish_interval(65), Duration::from_secs(10));
        assert_eq!(config.republish_interval(1), Duration::from_secs(10));
    }

    #[test]
    fn bounds_are_checked_and_errors_name_the_setting() {
        assert!(DhtConfig::default().validate().is_ok());
        let cases = [
            (
                DhtConfig {
                    k: 0,
                    ..DhtConfig::default()
                },
                "k",
            ),
            (
                DhtConfig {
                    k: 65,
                    ..DhtConfig::default()
                },
                "k",
            ),
            (
                DhtConfig {
                    alpha: 0,
                    ..DhtConfig::default()
                },
                "alpha",
            ),
            (
                DhtConfig {
                    tick: Duration::ZERO,
                    ..DhtConfig::default()
                },
                "tick",
            ),
            (
                DhtConfig {
                    lookup_timeout: Duration::ZERO,
                    ..DhtConfig::default()
                },
                "lookup_timeout_ms",
            ),
            (
                DhtConfig {
                    max_tombstones: 0,
                    ..DhtConfig::default()
                },
                "max_tombstones",
            ),
        ];
        for (config, setting) in cases {
            assert_eq!(config.validate().unwrap_err().setting(), setting);
        }
    }
}
