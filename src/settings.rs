//! Every numeric setting a user can give, defined once.
//!
//! The same names are used by the Rust config structs, `rust-node run` flags, its TOML file and
//! the Erlang config map of `macula_routing_server:start_link/2` (which reads this table through
//! the NIF), so a limit has one default and one range wherever it is set. Where a host accepts
//! another range, the variant is defined here next to the setting, with the reason.

use crate::wire;

/// One numeric setting: its name everywhere, its default and the range it must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The name in Rust configs, flags, TOML and the Erlang config map.
    pub name: &'static str,
    /// The value used when the setting is not given.
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
}

/// Why a setting was refused. Every variant names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// A number outside the setting's range.
    #[error("{setting} must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A value that is wrong for another reason (an address that does not resolve, settings
    /// that contradict each other, ...).
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it, in one line.
        reason: String,
    },
}

impl SettingError {
    /// The name of the refused setting.
    pub fn setting(&self) -> &'static str {
        match self {
            SettingError::OutOfRange { setting, .. } | SettingError::Invalid { setting, .. } => {
                setting
            }
        }
    }
}

impl Setting {
    /// `value` if it is in range.
    pub fn check(&self, value: u64) -> Result<u64, SettingError> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(SettingError::OutOfRange {
                setting: self.name,
                value,
                min: self.min,
                max: self.max,
            })
        }
    }

    /// [`Setting::check`] of a count or size.
    pub fn check_usize(&self, value: usize) -> Result<usize, SettingError> {
        self.check(u64::try_from(value).unwrap_or(u64::MAX))
            .map(|_| value)
    }

    /// The default as a count or size (every default fits: they are small).
    pub const fn default_usize(&self) -> usize {
        self.default as usize
    }

    /// A [`SettingError::Invalid`] of this setting.
    pub fn invalid(&self, reason: impl Into<String>) -> SettingError {
        SettingError::Invalid {
            setting: self.name,
            reason: reason.into(),
        }
    }
}

/// Most bootstrap addresses a node takes (pings at once, and remembers for re-joining); more are
/// refused by the Erlang config and ignored by the runtime.
pub const MAX_BOOTSTRAP: usize = 16;

/// Bucket size, replication width and lookup width. A reply carries at most
/// [`wire::MAX_NODES`] nodes, so a node on the network takes at most that.
pub const K: Setting = Setting {
    name: "k",
    default: 20,
    min: 1,
    max: wire::MAX_NODES as u64,
};

/// `k` of a BEAM server without `listen`: its table never goes on the wire, so it keeps the
/// range the old routing server accepted.
pub const K_TABLE_ONLY: Setting = Setting { max: 65_536, ..K };

/// Lookup requests in flight at once.
pub const ALPHA: Setting = Setting {
    name: "alpha",
    default: 3,
    min: 1,
    max: 64,
};

/// Replacement cache size of each k-bucket.
pub const REPLACEMENTS: Setting = Setting {
    name: "replacements",
    default: 8,
    min: 0,
    max: 1024,
};

/// Longest one request to one peer may take, in milliseconds.
pub const REQUEST_TIMEOUT_MS: Setting = Setting {
    name: "request_timeout_ms",
    default: 2_000,
    min: 1,
    max: 600_000,
};

/// Longest a lookup may run (waiting for a free lookup slot included), in milliseconds; it
/// then ends with what it found.
pub const LOOKUP_TIMEOUT_MS: Setting = Setting {
    name: "lookup_timeout_ms",
    default: 5_000,
    min: 1,
    max: 600_000,
};

/// Keys a provider store holds at most.
pub const MAX_KEYS: Setting = Setting {
    name: "max_keys",
    default: 1_000_000,
    min: 1,
    max: 100_000_000,
};

/// Providers under one key at most.
pub const MAX_PROVIDERS_PER_KEY: Setting = Setting {
    name: "max_providers_per_key",
    default: 1_000,
    min: 1,
    max: 1_000_000,
};

/// Longest provider record, in bytes of its term. The store's packed layout holds at most
/// 16 MiB - 1.
pub const MAX_RECORD_BYTES: Setting = Setting {
    name: "max_record_bytes",
    default: 65_536,
    min: 64,
    max: (1 << 24) - 1,
};

/// `max_record_bytes` of a node on the network: a record must fit in a STORE frame with its
/// key and the message around it.
pub const MAX_RECORD_BYTES_NETWORKED: Setting = Setting {
    max: (wire::MAX_FRAME_BYTES - wire::MAX_KEY_BYTES - 1024) as u64,
    ..MAX_RECORD_BYTES
};

/// Longest DHT key, in bytes. The store's packed layout holds at most 65 535.
pub const MAX_KEY_BYTES: Setting = Setting {
    name: "max_key_bytes",
    default: wire::MAX_KEY_BYTES as u64,
    min: 1,
    max: 65_535,
};

/// `max_key_bytes` of a node on the network: a longer key cannot cross the wire
/// ([`wire::MAX_KEY_BYTES`]).
pub const MAX_KEY_BYTES_NETWORKED: Setting = Setting {
    max: wire::MAX_KEY_BYTES as u64,
    ..MAX_KEY_BYTES
};

/// Records a provider store holds at most, under all keys.
pub const MAX_RECORDS: Setting = Setting {
    name: "max_records",
    default: 1_000_000,
    min: 1,
    max: 1_000_000_000,
};

/// Bytes of keys, terms and seals a provider store holds at most.
pub const MAX_BYTES: Setting = Setting {
    name: "max_bytes",
    default: 512 << 20,
    min: 1 << 20,
    max: 1 << 40,
};

/// Percent of `max_records` and of `max_bytes` that the records of one publisher (other than
/// the node itself) may take in a node's store.
pub const PUBLISHER_SHARE_PCT: Setting = Setting {
    name: "publisher_share_pct",
    default: 10,
    min: 1,
    max: 100,
};

/// STOREs per second one peer may send; a burst of five seconds' worth is allowed.
pub const PEER_STORES_PER_S: Setting = Setting {
    name: "peer_stores_per_s",
    default: 2_000,
    min: 1,
    max: 1_000_000,
};

/// Seconds a provider without `ttl` lives.
pub const DEFAULT_TTL: Setting = Setting {
    name: "default_ttl",
    default: 300,
    min: 1,
    max: 31_536_000,
};

/// Longest `ttl` applied, in seconds; larger ones are clamped.
pub const MAX_TTL: Setting = Setting {
    name: "max_ttl",
    default: 86_400,
    min: 1,
    max: 31_536_000,
};

/// BEAM host only: keys whose decoded provider lists the NIF keeps for repeated reads (0: none).
pub const READ_CACHE: Setting = Setting {
    name: "read_cache",
    default: 1_024,
    min: 0,
    max: 1_000_000,
};

/// BEAM host only: period of the server's expiry timer, in milliseconds.
pub const EXPIRE_INTERVAL_MS: Setting = Setting {
    name: "expire_interval_ms",
    default: 1_000,
    min: 10,
    max: 3_600_000,
};

/// The settings of `macula_routing_server` (the BEAM host), as it accepts them without
/// `listen`.
pub const SERVER: [Setting; 13] = [
    K_TABLE_ONLY,
    ALPHA,
    REPLACEMENTS,
    MAX_KEYS,
    MAX_PROVIDERS_PER_KEY,
    MAX_RECORD_BYTES,
    MAX_KEY_BYTES,
    DEFAULT_TTL,
    MAX_TTL,
    MAX_RECORDS,
    MAX_BYTES,
    READ_CACHE,
    EXPIRE_INTERVAL_MS,
];

/// What a node on the network accepts besides (or instead of) [`SERVER`]: narrower ranges where
/// the wire needs them, and the network's own timeouts.
pub const NETWORK: [Setting; 7] = [
    K,
    MAX_RECORD_BYTES_NETWORKED,
    MAX_KEY_BYTES_NETWORKED,
    REQUEST_TIMEOUT_MS,
    LOOKUP_TIMEOUT_MS,
    PUBLISHER_SHARE_PCT,
    PEER_STORES_PER_S,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_range_and_names_are_unique() {
        let all: Vec<Setting> = SERVER.iter().chain(&NETWORK).copied().collect();
        for s in &all {
            assert_eq!(s.check(s.default), Ok(s.default), "{}", s.name);
        }
        let mut names: Vec<&str> = SERVER.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVER.len());
        for s in &NETWORK {
            if let Some(local) = SERVER.iter().find(|l| l.name == s.name) {
                assert!(s.max <= local.max, "{} is narrower on the network", s.name);
            }
        }
    }

    #[test]
    fn errors_name_the_setting() {
        let e = K.check(65).unwrap_err();
        assert_eq!(e.setting(), "k");
        assert_eq!(e.to_string(), "k must be between 1 and 64, not 65");
        assert_eq!(K_TABLE_ONLY.check(65), Ok(65));
        assert_eq!(ALPHA.invalid("odd").to_string(), "invalid alpha: odd");
        assert_eq!(ALPHA.check_usize(0).unwrap_err().setting(), "alpha");
    }
}
