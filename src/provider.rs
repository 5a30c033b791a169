//! A provider record, parsed once at the boundary.
//!
//! The store keeps each provider as the exact term bytes it was given (other fields must come
//! back untouched), but it needs two facts out of them: the `node_id` that identifies the provider
//! for upserts, and the `ttl` that sets its expiry. This module finds both in one bounded walk of
//! the map and rejects anything that is not a well-formed map, so the store never handles raw,
//! unvalidated bytes.

use std::ops::Range;

use crate::etf::{self, EtfError, Scalar};

/// Longest accepted `node_id` value, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 255;

/// Why a provider term was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The term is well-formed ETF but not a map.
    #[error("provider is not a map")]
    NotAMap,
    /// The bytes are not one complete, bounded ETF term (no version byte, truncated, trailing
    /// bytes, too deep, ...); carries the reader's reason.
    #[error("malformed provider term: {0}")]
    Malformed(#[from] EtfError),
    /// A `node_id` field is present but is not a binary of at most [`MAX_NODE_ID_BYTES`] bytes.
    #[error("provider node_id is not a binary of at most {MAX_NODE_ID_BYTES} bytes")]
    InvalidNodeId,
    /// A `ttl` field is present but is not an integer number of seconds in `1..=u32::MAX`.
    #[error("provider ttl is not an integer in 1..=4294967295")]
    InvalidTtl,
}

/// A provider map with its `node_id` and `ttl` located. Both fields may be keyed by the atom or by
/// the binary of the same name (`node_id` or `<<"node_id">>`); the two forms name one field and
/// the atom form wins when both are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord<'a> {
    term: &'a [u8],
    node_id: Option<Range<usize>>,
    ttl: Option<u32>,
}

impl<'a> ProviderRecord<'a> {
    /// `etf` is a complete versioned term (first byte 131), as produced by `term_to_binary`. The
    /// whole term must be exactly consumed (trailing bytes = `Malformed`).
    pub fn parse(etf: &'a [u8]) -> Result<Self, ProviderError> {
        let term = etf::strip_version(etf)?;
        let mut fields = etf::map_fields(term, 0).map_err(|e| match e {
            EtfError::NotAMap => ProviderError::NotAMap,
            other => ProviderError::Malformed(other),
        })?;
        let mut node_id = Field::default();
        let mut ttl = Field::default();
        for field in &mut fields {
            let (key, value) = field?;
            let (name, is_atom) = match etf::scalar(term, key)? {
                Scalar::Atom(name) => (name, true),
                Scalar::Binary(name) => (name, false),
                _ => continue,
            };
            match name {
                b"node_id" => node_id.offer(value, is_atom),
                b"ttl" => ttl.offer(value, is_atom),
                _ => {}
            }
        }
        if fields.end() != Some(term.len()) {
            return Err(EtfError::TrailingBytes.into());
        }
        Ok(ProviderRecord {
            term,
            node_id: node_id
                .value
                .map(|at| node_id_range(term, at))
                .transpose()?,
            ttl: ttl.value.map(|at| ttl_secs(term, at)).transpose()?,
        })
    }

    /// The `node_id` binary, if the provider has one.
    pub fn node_id(&self) -> Option<&'a [u8]> {
        self.node_id.clone().and_then(|range| self.term.get(range))
    }

    /// Where [`node_id`](Self::node_id) lies within [`term`](Self::term).
    pub fn node_id_range(&self) -> Option<Range<usize>> {
        self.node_id.clone()
    }

    /// `None` when absent; otherwise at least 1.
    pub fn ttl_secs(&self) -> Option<u32> {
        self.ttl
    }

    /// The term bytes without the version byte.
    pub fn term(&self) -> &'a [u8] {
        self.term
    }
}

/// The value offset of a field that may appear under an atom key and a binary key.
#[derive(Default)]
struct Field {
    value: Option<usize>,
    from_atom: bool,
}

impl Field {
    fn offer(&mut self, value: usize, is_atom: bool) {
        if self.value.is_none() || (is_atom && !self.from_atom) {
            self.value = Some(value);
            self.from_atom = is_atom;
        }
    }
}

fn node_id_range(term: &[u8], at: usize) -> Result<Range<usize>, ProviderError> {
    match etf::scalar(term, at)? {
        Scalar::Binary(bytes) if bytes.len() <= MAX_NODE_ID_BYTES => {
            // BINARY_EXT: the tag, a 4-byte length, then the bytes.
            let start = at + 5;
            Ok(start..start + bytes.len())
        }
        _ => Err(ProviderError::InvalidNodeId),
    }
}

fn ttl_secs(term: &[u8], at: usize) -> Result<u32, ProviderError> {
    match etf::scalar(term, at)? {
        Scalar::Integer(secs) if secs >= 1 => {
            u32::try_from(secs).map_err(|_| ProviderError::InvalidTtl)
        }
        _ => Err(ProviderError::InvalidTtl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etf::tests::SMALL_MAP;

    /// A map of the given already-encoded `(key, value)` fields, versioned.
    fn map(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut t = vec![131, 116];
        t.extend((fields.len() as u32).to_be_bytes());
        for (k, v) in fields {
            t.extend(*k);
            t.extend(*v);
        }
        t
    }

    fn atom(name: &str) -> Vec<u8> {
        [&[119, name.len() as u8][..], name.as_bytes()].concat()
    }

    fn bin(bytes: &[u8]) -> Vec<u8> {
        [&[109][..], &(bytes.len() as u32).to_be_bytes(), bytes].concat()
    }

    #[test]
    fn parses_a_real_term() {
        let p = ProviderRecord::parse(SMALL_MAP).unwrap();
        assert_eq!(p.node_id(), Some(&[1u8, 2][..]));
        assert_eq!(p.node_id_range(), Some(19..21));
        assert_eq!(p.ttl_secs(), Some(300));
        assert_eq!(p.term(), &SMALL_MAP[1..]);
    }

    #[test]
    fn fields_are_optional_and_others_kept() {
        let t = map(&[(&atom("endpoint"), &bin(b"https://h:9443"))]);
        let p = ProviderRecord::parse(&t).unwrap();
        assert_eq!((p.node_id(), p.ttl_secs()), (None, None));
        assert_eq!(p.term(), &t[1..]);
    }

    #[test]
    fn binary_keys_name_the_same_fields() {
        let t = map(&[(&bin(b"node_id"), &bin(b"n1")), (&bin(b"ttl"), &[97, 9])]);
        let p = ProviderRecord::parse(&t).unwrap();
        assert_eq!((p.node_id(), p.ttl_secs()), (Some(&b"n1"[..]), Some(9)));
    }

    #[test]
    fn atom_form_wins_in_either_order() {
        let a = atom("node_id");
        let b = bin(b"node_id");
        let bad_ttl = [106];
        for t in [
            map(&[
                (&a, &bin(b"atom")),
                (&b, &bin(b"binary")),
                (&bin(b"ttl"), &bad_ttl),
                (&atom("ttl"), &[97, 5]),
            ]),
            map(&[
                (&b, &bin(b"binary")),
                (&a, &bin(b"atom")),
                (&atom("ttl"), &[97, 5]),
                (&bin(b"ttl"), &bad_ttl),
            ]),
        ] {
            let p = ProviderRecord::parse(&t).unwrap();
            assert_eq!((p.node_id(), p.ttl_secs()), (Some(&b"atom"[..]), Some(5)));
        }
    }

    #[test]
    fn rejects_bad_node_ids() {
        let key = atom("node_id");
        for value in [vec![97, 1], bin(&[0; MAX_NODE_ID_BYTES + 1]), atom("x")] {
            assert_eq!(
                ProviderRecord::parse(&map(&[(&key, &value)])),
                Err(ProviderError::InvalidNodeId)
            );
        }
        let longest = bin(&[7; MAX_NODE_ID_BYTES]);
        let t = map(&[(&key, &longest)]);
        let p = ProviderRecord::parse(&t).unwrap();
        assert_eq!(p.node_id().map(<[u8]>::len), Some(MAX_NODE_ID_BYTES));
    }

    #[test]
    fn rejects_bad_ttls() {
        let key = atom("ttl");
        let too_big = [110, 5, 0, 0, 0, 0, 0, 1]; // 2^32
        for value in [
            &[97, 0][..],
            &[98, 255, 255, 255, 255],
            &too_big,
            &[70, 0, 0, 0, 0, 0, 0, 0, 0],
            &[106],
        ] {
            assert_eq!(
                ProviderRecord::parse(&map(&[(&key, value)])),
                Err(ProviderError::InvalidTtl),
                "{value:?}"
            );
        }
        let max = [110, 4, 0, 255, 255, 255, 255];
        assert_eq!(
            ProviderRecord::parse(&map(&[(&key, &max)]))
                .unwrap()
                .ttl_secs(),
            Some(u32::MAX)
        );
    }

    #[test]
    fn rejects_non_maps_and_malformed_terms() {
        assert_eq!(
            ProviderRecord::parse(&[131, 106]),
            Err(ProviderError::NotAMap)
        );
        assert_eq!(
            ProviderRecord::parse(&SMALL_MAP[1..]),
            Err(EtfError::MissingVersion.into())
        );
        assert_eq!(
            ProviderRecord::parse(&[131]),
            Err(EtfError::Truncated.into())
        );
        let mut trailing = SMALL_MAP.to_vec();
        trailing.push(106);
        assert_eq!(
            ProviderRecord::parse(&trailing),
            Err(EtfError::TrailingBytes.into())
        );
        for cut in 1..SMALL_MAP.len() {
            assert!(ProviderRecord::parse(&SMALL_MAP[..cut]).is_err());
        }
    }
}
