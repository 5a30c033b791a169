//! Settings of `rust-node run`, from command-line flags, a TOML file, or both.
//!
//! This module exists so that the two sources share one meaning: every setting has a flag and a
//! TOML key of the same name, a flag overrides the file (a list flag such as `--bootstrap`
//! replaces the file's list), and everything is parsed here, once, into [`RunSettings`] with
//! typed values. Unknown TOML keys are errors, so a typo does not pass silently. Every error is
//! one line.
//!
//! ```toml
//! listen = "127.0.0.1:4000"
//! bootstrap = ["127.0.0.1:4001"]
//! identity = "/var/lib/rust-node/key.pem"
//! advertise = ["calc=https://calc:9443@120"]
//! k = 20
//! alpha = 3
//! ctl = "/run/rust-node.sock"
//! log = "info"
//! request_timeout_ms = 2000
//! lookup_timeout_ms = 5000
//! max_records = 1000000
//! max_bytes = 536870912
//! publisher_share_pct = 10
//! peer_stores_per_s = 2000
//! require_bootstrap = false
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use macula_dht::{settings, SettingError};
use serde::Deserialize;

use crate::node::NodeConfig;

/// TTL of an `--advertise` without `@TTL`, in seconds (the contract's `default_ttl`).
pub const DEFAULT_TTL_SECS: u32 = 300;

/// Log levels accepted by `log` / `--log`.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The TOML file is not valid, or has a key this version does not know.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, on one line, with the line number.
        message: String,
    },
    /// Neither `--listen` nor `listen` was given.
    #[error("no listen address: give --listen or `listen` in the config file")]
    NoListen,
    /// An address does not parse or resolve.
    #[error("invalid address {value:?}: {reason}")]
    Address {
        /// The address as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// An `--advertise` is not `SERVICE=ENDPOINT[@TTL]`.
    #[error("invalid advertisement {value:?}: {reason}")]
    Advertise {
        /// The advertisement as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A setting out of its range, named.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A value that is not one of those accepted.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// One `SERVICE=ENDPOINT[@TTL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseSpec {
    /// The service name.
    pub service: String,
    /// Where it is reached.
    pub endpoint: String,
    /// Its ttl, in seconds ([`DEFAULT_TTL_SECS`] when not given).
    pub ttl_secs: u32,
}

impl FromStr for AdvertiseSpec {
    type Err = ConfigError;

    /// The TTL is the part after the last `@` when that part is all digits; otherwise the whole
    /// right-hand side is the endpoint (which may itself contain `@`).
    fn from_str(s: &str) -> Result<AdvertiseSpec, ConfigError> {
        let bad = |reason: &str| ConfigError::Advertise {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (service, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("expected SERVICE=ENDPOINT[@TTL]"))?;
        let (endpoint, ttl_secs) = match rest.rsplit_once('@') {
            Some((endpoint, ttl)) if !ttl.is_empty() && ttl.bytes().all(|b| b.is_ascii_digit()) => {
                let ttl = ttl
                    .parse::<u32>()
                    .map_err(|_| bad("ttl does not fit in 32 bits"))?;
                (endpoint, ttl)
            }
            _ => (rest, DEFAULT_TTL_SECS),
        };
        if service.is_empty() || endpoint.is_empty() {
            return Err(bad("service and endpoint must not be empty"));
        }
        if ttl_secs == 0 {
            return Err(bad("ttl must be at least 1"));
        }
        Ok(AdvertiseSpec {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            ttl_secs,
        })
    }
}

/// The settings as given: every field optional, from flags or from the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// `--listen`: the address to listen on.
    pub listen: Option<String>,
    /// `--bootstrap`: nodes to join through.
    pub bootstrap: Option<Vec<String>>,
    /// `--identity`: the key file.
    pub identity: Option<PathBuf>,
    /// `--advertise`: `SERVICE=ENDPOINT[@TTL]` to advertise from the start.
    pub advertise: Option<Vec<String>>,
    /// `--k` ([`settings::K`]).
    pub k: Option<usize>,
    /// `--alpha` ([`settings::ALPHA`]).
    pub alpha: Option<usize>,
    /// `--ctl`: the control socket's path.
    pub ctl: Option<PathBuf>,
    /// `--log`: one of [`LOG_LEVELS`].
    pub log: Option<String>,
    /// `--request-timeout-ms` ([`settings::REQUEST_TIMEOUT_MS`]).
    pub request_timeout_ms: Option<u64>,
    /// `--lookup-timeout-ms` ([`settings::LOOKUP_TIMEOUT_MS`]).
    pub lookup_timeout_ms: Option<u64>,
    /// `--max-records` ([`settings::MAX_RECORDS`]).
    pub max_records: Option<usize>,
    /// `--max-bytes` ([`settings::MAX_BYTES`]).
    pub max_bytes: Option<usize>,
    /// `--publisher-share-pct` ([`settings::PUBLISHER_SHARE_PCT`]).
    pub publisher_share_pct: Option<usize>,
    /// `--peer-stores-per-s` ([`settings::PEER_STORES_PER_S`]).
    pub peer_stores_per_s: Option<usize>,
    /// `--require-bootstrap`: exit when no bootstrap node answers at start.
    pub require_bootstrap: Option<bool>,
}

impl RunOptions {
    /// Reads a TOML file of these options.
    pub fn from_file(path: &Path) -> Result<RunOptions, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line_toml_error(&text, &e),
        })
    }

    /// `self` (the flags) over `file`: a field set here wins.
    pub fn over(self, file: RunOptions) -> RunOptions {
        RunOptions {
            listen: self.listen.or(file.listen),
            bootstrap: self.bootstrap.or(file.bootstrap),
            identity: self.identity.or(file.identity),
            advertise: self.advertise.or(file.advertise),
            k: self.k.or(file.k),
            alpha: self.alpha.or(file.alpha),
            ctl: self.ctl.or(file.ctl),
            log: self.log.or(file.log),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            lookup_timeout_ms: self.lookup_timeout_ms.or(file.lookup_timeout_ms),
            max_records: self.max_records.or(file.max_records),
            max_bytes: self.max_bytes.or(file.max_bytes),
            publisher_share_pct: self.publisher_share_pct.or(file.publisher_share_pct),
            peer_stores_per_s: self.peer_stores_per_s.or(file.peer_stores_per_s),
            require_bootstrap: self.require_bootstrap.or(file.require_bootstrap),
        }
    }

    /// Parses and checks every value.
    pub fn resolve(self) -> Result<RunSettings, ConfigError> {
        let listen = self.listen.ok_or(ConfigError::NoListen)?;
        let listen = resolve_addr(&listen)?;
        let bootstrap = self
            .bootstrap
            .unwrap_or_default()
            .iter()
            .map(|a| resolve_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let advertise = self
            .advertise
            .unwrap_or_default()
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<_>, _>>()?;
        let log = self.log.unwrap_or_else(|| "info".into());
        if !LOG_LEVELS.contains(&log.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "log level {log:?} is not one of {}",
                LOG_LEVELS.join(", ")
            )));
        }
        let mut node = NodeConfig::default();
        let dht = &mut node.dht;
        if let Some(k) = self.k {
            dht.k = settings::K.check_usize(k)?;
        }
        if let Some(alpha) = self.alpha {
            dht.alpha = settings::ALPHA.check_usize(alpha)?;
        }
        if let Some(ms) = self.request_timeout_ms {
            dht.request_timeout = Duration::from_millis(settings::REQUEST_TIMEOUT_MS.check(ms)?);
        }
        if let Some(ms) = self.lookup_timeout_ms {
            dht.lookup_timeout = Duration::from_millis(settings::LOOKUP_TIMEOUT_MS.check(ms)?);
        }
        if let Some(pct) = self.publisher_share_pct {
            dht.publisher_share_pct = settings::PUBLISHER_SHARE_PCT.check_usize(pct)?;
        }
        if let Some(rate) = self.peer_stores_per_s {
            dht.peer_stores_per_s = settings::PEER_STORES_PER_S.check_usize(rate)?;
        }
        if let Some(n) = self.max_records {
            node.store.max_records = settings::MAX_RECORDS.check_usize(n)?;
        }
        if let Some(n) = self.max_bytes {
            node.store.max_bytes = settings::MAX_BYTES.check_usize(n)?;
        }
        Ok(RunSettings {
            listen,
            require_bootstrap: self.require_bootstrap.unwrap_or(false),
            bootstrap,
            identity: self.identity,
            advertise,
            ctl: self.ctl,
            log,
            node,
        })
    }
}

/// What `rust-node run` runs with.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Nodes to join through.
    pub bootstrap: Vec<SocketAddr>,
    /// Exit at start when none of them answers (else serve and keep trying to join).
    pub require_bootstrap: bool,
    /// Key file; `None`: a fresh identity for this run only.
    pub identity: Option<PathBuf>,
    /// Services advertised from the start.
    pub advertise: Vec<AdvertiseSpec>,
    /// The control socket's path, if one is served.
    pub ctl: Option<PathBuf>,
    /// The log level.
    pub log: String,
    /// The node's settings.
    pub node: NodeConfig,
}

/// `ip:port`, `[v6]:port`, or `host:port` (resolved once, first address).
pub fn resolve_addr(value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let bad = |reason: String| ConfigError::Address {
        value: value.to_string(),
        reason,
    };
    let mut addrs = value.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("name resolves to no address".into()))
}

/// toml's errors span several lines (with a source excerpt); this keeps the line number and
/// the message.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_specs() {
        let spec: AdvertiseSpec = "calc=https://h:9443@60".parse().unwrap();
        assert_eq!(
            spec,
            AdvertiseSpec {
                service: "calc".into(),
                endpoint: "https://h:9443".into(),
                ttl_secs: 60
            }
        );
        let spec: AdvertiseSpec = "calc=https://user@h:9443".parse().unwrap();
        assert_eq!(spec.endpoint, "https://user@h:9443");
        assert_eq!(spec.ttl_secs, DEFAULT_TTL_SECS);
        for bad in ["calc", "=x", "calc=", "calc=x@0", "calc=x@99999999999"] {
            assert!(bad.parse::<AdvertiseSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file: RunOptions = toml::from_str(
            "listen = \"127.0.0.1:1\"\nbootstrap = [\"127.0.0.1:2\"]\nk = 8\nalpha = 2\n\
             lookup_timeout_ms = 750\nmax_records = 5000\npublisher_share_pct = 20\n",
        )
        .unwrap();
        let flags = RunOptions {
            listen: Some("127.0.0.1:5".into()),
            alpha: Some(4),
            publisher_share_pct: Some(5),
            peer_stores_per_s: Some(50),
            ..RunOptions::default()
        };
        let s = flags.over(file).resolve().unwrap();
        assert_eq!(s.listen, "127.0.0.1:5".parse().unwrap());
        assert_eq!(s.bootstrap, vec!["127.0.0.1:2".parse().unwrap()]);
        assert_eq!((s.node.dht.k, s.node.dht.alpha), (8, 4));
        assert_eq!(s.node.dht.lookup_timeout, Duration::from_millis(750));
        assert_eq!(s.node.store.max_records, 5000);
        assert_eq!(s.node.dht.publisher_share_pct, 5);
        assert_eq!(s.node.dht.peer_stores_per_s, 50);
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        let e = toml::from_str::<RunOptions>("listen = 1\n").unwrap_err();
        assert!(!one_line_toml_error("listen = 1\n", &e).contains('\n'));
        assert!(toml::from_str::<RunOptions>("lisen = \"x\"\n").is_err());
        assert!(matches!(
            RunOptions::default().resolve(),
            Err(ConfigError::NoListen)
        ));
        let k0 = RunOptions {
            listen: Some("127.0.0.1:0".into()),
            k: Some(0),
            ..RunOptions::default()
        };
        assert!(matches!(k0.resolve(), Err(ConfigError::Setting(e)) if e.setting() == "k"));
        let no_time = RunOptions {
            listen: Some("127.0.0.1:0".into()),
            lookup_timeout_ms: Some(0),
            ..RunOptions::default()
        };
        assert!(matches!(
            no_time.resolve(),
            Err(ConfigError::Setting(e)) if e.setting() == "lookup_timeout_ms"
        ));
        let no_share = RunOptions {
            listen: Some("127.0.0.1:0".into()),
            publisher_share_pct: Some(101),
            ..RunOptions::default()
        };
        assert!(matches!(
            no_share.resolve(),
            Err(ConfigError::Setting(e)) if e.setting() == "publisher_share_pct"
        ));
        let bad_addr = RunOptions {
            listen: Some("nonsense".into()),
            ..RunOptions::default()
        };
        assert!(matches!(
            bad_addr.resolve(),
            Err(ConfigError::Address { .. })
        ));
    }
}
