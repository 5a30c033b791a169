//! Provider records as this node writes and reads them.
//!
//! The engine stores providers as opaque ETF maps and only looks at `node_id` and `ttl`. A node
//! also has to *make* one (when it advertises a service) and *show* one (the `discover` command,
//! the client API), which needs the other fields of the contract's provider map: `endpoint`,
//! `metadata` and `advertised_at`. This module does both, for that one shape only:
//!
//! ```text
//! #{advertised_at => UnixSecs, endpoint => <<"https://...">>, metadata => #{<<"k">> => <<"v">>},
//!   node_id => <<32 bytes>>, ttl => Secs}
//! ```
//!
//! The map is written with [`etf::Writer`], keys in term order (metadata keys sorted), so the
//! bytes are what `term_to_binary/1` gives. The reader walks terms that already passed the
//! engine's bounded [`ProviderRecord::parse`]; fields it does not understand are left alone,
//! never fail the record.

use std::collections::BTreeMap;

use crate::etf::{self, Scalar};
use crate::id::NodeId;
use crate::provider::{ProviderError, ProviderRecord};
use sha2::{Digest, Sha256};

/// Longest endpoint this node advertises, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 1024;

/// Most metadata entries this node advertises.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Longest metadata key or value this node advertises, in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;

/// The DHT key of a service: `sha256(ServiceId)`, 32 raw bytes, no prefix (the contract's rule).
pub fn service_key(service: &str) -> [u8; 32] {
    Sha256::digest(service.as_bytes()).into()
}

/// Why an advertisement cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The service name is empty.
    #[error("service name is empty")]
    EmptyService,
    /// The endpoint is empty.
    #[error("endpoint is empty")]
    EmptyEndpoint,
    /// The endpoint is longer than [`MAX_ENDPOINT_BYTES`].
    #[error("endpoint exceeds {MAX_ENDPOINT_BYTES} bytes")]
    EndpointTooLong,
    /// The ttl is zero.
    #[error("ttl must be at least 1 second")]
    ZeroTtl,
    /// More than [`MAX_METADATA_ENTRIES`] entries, or a key or value longer than
    /// [`MAX_METADATA_BYTES`].
    #[error("metadata exceeds {MAX_METADATA_ENTRIES} entries or {MAX_METADATA_BYTES} bytes per key or value")]
    MetadataTooLarge,
}

/// What a node advertises for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Where callers reach the service, e.g. `https://calc.example:9443`.
    pub endpoint: String,
    /// Free-form entries the record carries (`zone`, `load`, ...).
    pub metadata: BTreeMap<String, String>,
    /// Seconds the record lives on other nodes without being published again (at least 1).
    pub ttl_secs: u32,
}

impl Advertisement {
    /// Checks the caps above (the store checks its own, larger ones).
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.endpoint.is_empty() {
            return Err(RecordError::EmptyEndpoint);
        }
        if self.endpoint.len() > MAX_ENDPOINT_BYTES {
            return Err(RecordError::EndpointTooLong);
        }
        if self.ttl_secs == 0 {
            return Err(RecordError::ZeroTtl);
        }
        let too_big = |s: &String| s.len() > MAX_METADATA_BYTES;
        if self.metadata.len() > MAX_METADATA_ENTRIES
            || self.metadata.iter().any(|(k, v)| too_big(k) || too_big(v))
        {
            return Err(RecordError::MetadataTooLarge);
        }
        Ok(())
    }

    /// The provider map as a complete (versioned) external term.
    pub fn encode(&self, node_id: &NodeId, advertised_at: u64) -> Vec<u8> {
        let mut w = etf::Writer::new();
        w.map(5);
        w.atom("advertised_at");
        w.unsigned(advertised_at);
        w.atom("endpoint");
        w.binary(self.endpoint.as_bytes());
        w.atom("metadata");
        // Bounded by MAX_METADATA_ENTRIES once validated; a u32 either way.
        w.map(u32::try_from(self.metadata.len()).unwrap_or(u32::MAX));
        for (key, value) in self.metadata.iter().take(u32::MAX as usize) {
            w.binary(key.as_bytes());
            w.binary(value.as_bytes());
        }
        w.atom("node_id");
        w.binary(&node_id.0);
        w.atom("ttl");
        w.unsigned(u64::from(self.ttl_secs));
        w.into_bytes()
    }
}

/// A provider record as found in the DHT, with the contract's fields read out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The provider's `node_id` (for records made by a native node, its 32-byte id); empty when
    /// the record has none.
    pub node_id: Vec<u8>,
    /// The `endpoint`, when it is a binary.
    pub endpoint: Option<String>,
    /// Metadata entries whose key and value are binaries, atoms or integers, as text; other
    /// entries are left out (they stay in [`Provider::term`]).
    pub metadata: BTreeMap<String, String>,
    /// The `ttl`, in seconds, when it is a non-negative integer that fits.
    pub ttl_secs: Option<u32>,
    /// The `advertised_at`, in Unix seconds, when it is a non-negative integer.
    pub advertised_at: Option<u64>,
    /// The whole record, term bytes without the version byte, exactly as stored.
    pub term: Vec<u8>,
    /// The publisher whose seal the record carried, when it came from the network through a
    /// lookup (`None` for a record read from a store or a term).
    pub publisher: Option<crate::seal::Publisher>,
    /// The sequence of that seal: it grows each time the publisher advertises again.
    pub seq: Option<u64>,
}

impl Provider {
    /// Reads a record given as term bytes without version byte (the wire's and the store's form).
    pub fn parse(term: &[u8]) -> Result<Provider, ProviderError> {
        let versioned = versioned(term);
        let record = ProviderRecord::parse(&versioned)?;
        let mut provider = Provider {
            node_id: record.node_id().map(<[u8]>::to_vec).unwrap_or_default(),
            endpoint: None,
            metadata: BTreeMap::new(),
            ttl_secs: record.ttl_secs(),
            advertised_at: None,
            term: term.to_vec(),
            publisher: None,
            seq: None,
        };
        // `parse` above walked the whole map successfully, so these walks cannot fail; errors
        // are skipped all the same.
        for (key, value) in fields(term, 0) {
            match field_name(term, key) {
                Some(b"endpoint") => {
                    if let Ok(Scalar::Binary(b)) = etf::scalar(term, value) {
                        provider.endpoint = Some(String::from_utf8_lossy(b).into_owned());
                    }
                }
                Some(b"advertised_at") => {
                    if let Ok(Scalar::Integer(i)) = etf::scalar(term, value) {
                        provider.advertised_at = u64::try_from(i).ok();
                    }
                }
                Some(b"metadata") => {
                    for (k, v) in fields(term, value) {
                        if let (Some(k), Some(v)) = (scalar_text(term, k), scalar_text(term, v)) {
                            provider.metadata.insert(k, v);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(provider)
    }

    /// Notes who sealed the record (`None`: a record stored without a seal).
    pub fn sealed_by(&mut self, seal: Option<crate::seal::Seal>) {
        self.publisher = seal.map(|s| s.publisher);
        self.seq = seal.map(|s| s.seq);
    }

    /// Seconds until `advertised_at + ttl` by the wall clock `now_unix` (negative once past);
    /// `None` when the record lacks either field.
    pub fn ttl_left(&self, now_unix: u64) -> Option<i64> {
        let end = self.advertised_at? as i128 + i128::from(self.ttl_secs?);
        i64::try_from(end - now_unix as i128).ok()
    }
}

/// The `advertised_at` of a record given without version byte, if it has a non-negative integer
/// one. Used on the STORE path, so it is one walk of the top-level fields.
pub fn advertised_at(term: &[u8]) -> Option<u64> {
    fields(term, 0)
        .find(|(key, _)| field_name(term, *key) == Some(b"advertised_at"))
        .and_then(|(_, value)| match etf::scalar(term, value) {
            Ok(Scalar::Integer(i)) => u64::try_from(i).ok(),
            _ => None,
        })
}

/// `term` with the ETF version byte in front (the engine's parsers want complete terms).
pub fn versioned(term: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(term.len() + 1);
    out.push(etf::VERSION);
    out.extend_from_slice(term);
    out
}

/// Lowercase hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes from hex digits of either case; `None` for an odd length or another character.
pub fn unhex(digits: &[u8]) -> Option<Vec<u8>> {
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Top-level `(key, value)` offsets of the map at `pos`; nothing if it is not a well-formed map.
fn fields(term: &[u8], pos: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    etf::map_fields(term, pos)
        .into_iter()
        .flatten()
        .map_while(Result::ok)
}

/// The name of a map key that is an atom or a binary (both forms name one field).
fn field_name(term: &[u8], pos: usize) -> Option<&[u8]> {
    match etf::scalar(term, pos).ok()? {
        Scalar::Atom(name) | Scalar::Binary(name) => Some(name),
        _ => None,
    }
}

fn scalar_text(term: &[u8], pos: usize) -> Option<String> {
    match etf::scalar(term, pos).ok()? {
        Scalar::Atom(b) | Scalar::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Scalar::Integer(i) => Some(i.to_string()),
        Scalar::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad() -> Advertisement {
        Advertisement {
            endpoint: "https://node-1:9443".into(),
            metadata: BTreeMap::from([("zone".into(), "eu".into()), ("a".into(), "1".into())]),
            ttl_secs: 300,
        }
    }

    #[test]
    fn service_key_is_sha256_of_the_name() {
        let key = service_key("abc");
        assert_eq!(&key[..4], &[0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn written_record_reads_back() {
        let id = NodeId([7; 32]);
        let etf = ad().encode(&id, 1_700_000_000);
        let record = ProviderRecord::parse(&etf).unwrap();
        assert_eq!(record.node_id(), Some(&id.0[..]));
        assert_eq!(record.ttl_secs(), Some(300));
        let p = Provider::parse(&etf[1..]).unwrap();
        assert_eq!(p.node_id, id.0.to_vec());
        assert_eq!(p.endpoint.as_deref(), Some("https://node-1:9443"));
        assert_eq!(p.advertised_at, Some(1_700_000_000));
        assert_eq!(p.metadata, ad().metadata);
        assert_eq!(p.ttl_left(1_700_000_100), Some(200));
        assert_eq!(advertised_at(&etf[1..]), Some(1_700_000_000));
    }

    #[test]
    fn empty_metadata_is_an_empty_map() {
        let mut a = ad();
        a.metadata.clear();
        let etf = a.encode(&NodeId([1; 32]), 1);
        assert!(Provider::parse(&etf[1..]).unwrap().metadata.is_empty());
    }

    #[test]
    fn limits_are_checked() {
        let mut a = ad();
        assert_eq!(a.validate(), Ok(()));
        a.ttl_secs = 0;
        assert_eq!(a.validate(), Err(RecordError::ZeroTtl));
        a.ttl_secs = 1;
        a.endpoint.clear();
        assert_eq!(a.validate(), Err(RecordError::EmptyEndpoint));
        a.endpoint = "x".repeat(MAX_ENDPOINT_BYTES + 1);
        assert_eq!(a.validate(), Err(RecordError::EndpointTooLong));
    }

    #[test]
    fn records_without_optional_fields_parse() {
        // #{node_id => <<1>>}
        let term = [
            116, 0, 0, 0, 1, 119, 7, b'n', b'o', b'd', b'e', b'_', b'i', b'd', 109, 0, 0, 0, 1, 1,
        ];
        let p = Provider::parse(&term).unwrap();
        assert_eq!(p.node_id, vec![1]);
        assert_eq!(p.endpoint, None);
        assert_eq!(p.ttl_left(0), None);
        assert_eq!(advertised_at(&term), None);
    }
}
