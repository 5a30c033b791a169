//! Reads messages from untrusted frames.
//!
//! One pass of [`etf::map_fields`] validates the whole frame (each key and value walked by the
//! bounded [`etf::skip_term`]) and records where the known fields are; only then is any field
//! read, and every read is bounds-checked again anyway. Keys are matched against the fixed
//! [`FIELDS`] table; other keys are skipped. Lists are counted against their cap before anything
//! is allocated for them. Node infos and providers are maps inside the frame, read the same way.

use std::net::SocketAddr;

use super::{
    ErrorReason, NodeInfo, Request, Response, SealedRecord, WireError, MAX_ADDRESS_BYTES,
    MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_NODES, MAX_NODE_ID_BYTES, MAX_PROVIDERS, PROTOCOL_VERSION,
};
use crate::etf::{self, tag, EtfError, Scalar};
use crate::id::{NodeId, ID_LEN};
use crate::provider::ProviderRecord;
use crate::seal::{Removal, Seal};

/// Parses an untrusted request frame; see [`Request::decode`].
pub(super) fn request(frame: &[u8]) -> Result<Request, WireError> {
    let msg = Message::parse(frame)?;
    Ok(match msg.type_name()? {
        b"ping" => Request::Ping,
        b"find_node" => Request::FindNode {
            target: msg.id(Field::Target, "target")?,
        },
        b"find_value" => Request::FindValue { key: msg.key()? },
        b"store" => Request::Store {
            key: msg.key()?,
            record: SealedRecord {
                term: msg.provider(msg.required(Field::Value, "value")?)?,
                seal: seal(msg.term, &msg.values)?,
            },
        },
        b"remove" => Request::Remove {
            key: msg.key()?,
            node_id: msg
                .binary(Field::NodeId, MAX_NODE_ID_BYTES, "node_id")?
                .to_vec(),
            removal: Removal {
                publisher: fixed(
                    msg.term,
                    msg.required(Field::Publisher, "publisher")?,
                    "publisher",
                )?,
                seq: unsigned(msg.term, msg.required(Field::Seq, "seq")?, "seq")?,
                sig: fixed(msg.term, msg.required(Field::Sig, "sig")?, "sig")?,
            },
        },
        _ => return Err(WireError::UnknownType),
    })
}

/// Parses an untrusted reply frame; see [`Response::decode`].
pub(super) fn response(frame: &[u8]) -> Result<Response, WireError> {
    let msg = Message::parse(frame)?;
    Ok(match msg.type_name()? {
        b"pong" => Response::Pong,
        b"find_node_reply" => Response::Nodes {
            nodes: msg.nodes(true)?,
        },
        b"find_value_reply" => match msg.atom(Field::Result, "result")? {
            b"value" => {
                let list = msg.list(Field::Value, MAX_PROVIDERS, "value")?;
                let mut providers = Vec::with_capacity(list.remaining());
                for at in list {
                    providers.push(msg.sealed(at?)?);
                }
                Response::Value {
                    providers,
                    nodes: msg.nodes(false)?,
                }
            }
            b"nodes" => Response::NoValue {
                nodes: msg.nodes(true)?,
            },
            _ => return Err(WireError::Malformed("result")),
        },
        b"store_reply" => {
            msg.ok_result()?;
            Response::Stored
        }
        b"remove_reply" => {
            msg.ok_result()?;
            Response::Removed
        }
        b"error" => Response::Error {
            reason: ErrorReason::from_name(msg.atom(Field::Reason, "reason")?)
                .ok_or(WireError::Malformed("reason"))?,
        },
        _ => return Err(WireError::UnknownType),
    })
}

/// The keys any message may use. A message reads only those its type needs; the last five
/// also name the fields of a sealed provider inside a `find_value_reply`.
#[derive(Clone, Copy)]
enum Field {
    V,
    Type,
    Target,
    Key,
    NodeId,
    Nodes,
    Result,
    Reason,
    Value,
    Publisher,
    Seq,
    Ttl,
    Sig,
}

/// Names of [`Field`]s, in declaration order.
const FIELDS: [&[u8]; 13] = [
    b"v",
    b"type",
    b"target",
    b"key",
    b"node_id",
    b"nodes",
    b"result",
    b"reason",
    b"value",
    b"publisher",
    b"seq",
    b"ttl",
    b"sig",
];

/// The fields of a sealed provider: the tail of [`FIELDS`], from `value` on.
const SEALED_FIELDS: usize = Field::Value as usize;

/// A validated frame: the term (after the version byte) and where each known field's value is.
struct Message<'a> {
    term: &'a [u8],
    values: [Option<usize>; FIELDS.len()],
}

impl<'a> Message<'a> {
    /// Checks size, version byte, that the frame is exactly one well-formed map, and `v`.
    fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(frame.len()));
        }
        let term = etf::strip_version(frame)?;
        let mut values = [None; FIELDS.len()];
        let end = fields(term, 0, &FIELDS, &mut values)?;
        if end != term.len() {
            return Err(EtfError::TrailingBytes.into());
        }
        let msg = Message { term, values };
        match msg.scalar(Field::V, "v")? {
            Scalar::Integer(v) if v == i128::from(PROTOCOL_VERSION) => Ok(msg),
            Scalar::Integer(v) => Err(u32::try_from(v)
                .map(WireError::UnsupportedVersion)
                .unwrap_or(WireError::Malformed("v"))),
            _ => Err(WireError::Malformed("v")),
        }
    }

    fn type_name(&self) -> Result<&'a [u8], WireError> {
        self.atom(Field::Type, "type")
    }

    fn required(&self, field: Field, what: &'static str) -> Result<usize, WireError> {
        self.values[field as usize].ok_or(WireError::Malformed(what))
    }

    fn scalar(&self, field: Field, what: &'static str) -> Result<Scalar<'a>, WireError> {
        Ok(etf::scalar(self.term, self.required(field, what)?)?)
    }

    fn atom(&self, field: Field, what: &'static str) -> Result<&'a [u8], WireError> {
        match self.scalar(field, what)? {
            Scalar::Atom(name) => Ok(name),
            _ => Err(WireError::Malformed(what)),
        }
    }

    fn binary(&self, field: Field, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        binary(self.term, self.required(field, what)?, max, what)
    }

    fn id(&self, field: Field, what: &'static str) -> Result<NodeId, WireError> {
        node_id(self.term, self.required(field, what)?, what)
    }

    fn key(&self) -> Result<Vec<u8>, WireError> {
        Ok(self.binary(Field::Key, MAX_KEY_BYTES, "key")?.to_vec())
    }

    fn ok_result(&self) -> Result<(), WireError> {
        match self.atom(Field::Result, "result")? {
            b"ok" => Ok(()),
            _ => Err(WireError::Malformed("result")),
        }
    }

    fn list(&self, field: Field, max: usize, what: &'static str) -> Result<List<'a>, WireError> {
        List::new(self.term, self.required(field, what)?, max, what)
    }

    /// The `nodes` list; when not `required`, a missing one is empty.
    fn nodes(&self, required: bool) -> Result<Vec<NodeInfo>, WireError> {
        if !required && self.values[Field::Nodes as usize].is_none() {
            return Ok(Vec::new());
        }
        let list = self.list(Field::Nodes, MAX_NODES, "nodes")?;
        let mut nodes = Vec::with_capacity(list.remaining());
        for at in list {
            nodes.push(node_info(self.term, at?)?);
        }
        Ok(nodes)
    }

    /// The sealed provider map at `at` (`#{value, publisher, seq, ttl, sig}`).
    fn sealed(&self, at: usize) -> Result<SealedRecord, WireError> {
        let names = &FIELDS[SEALED_FIELDS..];
        let mut found = [None; FIELDS.len() - SEALED_FIELDS];
        fields(self.term, at, names, &mut found).map_err(|e| match e {
            WireError::Malformed("not a map") => WireError::Malformed("sealed provider"),
            e => e,
        })?;
        let mut values = [None; FIELDS.len()];
        values[SEALED_FIELDS..].copy_from_slice(&found);
        let value = values[Field::Value as usize].ok_or(WireError::Malformed("value"))?;
        Ok(SealedRecord {
            term: self.provider(value)?,
            seal: seal(self.term, &values)?,
        })
    }

    /// The provider map at `at`, as term bytes without version byte.
    fn provider(&self, at: usize) -> Result<Vec<u8>, WireError> {
        let end = etf::skip_term(self.term, at)?;
        let term = self.term.get(at..end).ok_or(EtfError::Truncated)?;
        // `ProviderRecord::parse` wants the version byte: parse a versioned copy, then drop it.
        let mut bytes = Vec::with_capacity(term.len() + 1);
        bytes.push(etf::VERSION);
        bytes.extend_from_slice(term);
        ProviderRecord::parse(&bytes)?;
        bytes.remove(0);
        Ok(bytes)
    }
}

/// Walks the map at `pos` (validating every key and value), records in `values` where the value of
/// each atom key named in `names` is, and returns the offset past the map. Other keys are
/// skipped; a known key given twice is `Malformed`.
fn fields(
    term: &[u8],
    pos: usize,
    names: &[&[u8]],
    values: &mut [Option<usize>],
) -> Result<usize, WireError> {
    let mut map = etf::map_fields(term, pos).map_err(|e| match e {
        EtfError::NotAMap => match etf::skip_term(term, pos) {
            // A well-formed term that is not a map; else report why it is not well-formed.
            Ok(_) => WireError::Malformed("not a map"),
            Err(e) => e.into(),
        },
        e => e.into(),
    })?;
    for field in &mut map {
        let (key, value) = field?;
        let Scalar::Atom(name) = etf::scalar(term, key)? else {
            continue;
        };
        let Some(i) = names.iter().position(|n| *n == name) else {
            continue;
        };
        let slot = values.get_mut(i).ok_or(WireError::Malformed("field"))?;
        if slot.replace(value).is_some() {
            return Err(WireError::Malformed("duplicate key"));
        }
    }
    // Every field was read without error (the loop returns on the first one).
    map.end().ok_or(WireError::Etf(EtfError::Truncated))
}

fn binary<'a>(
    term: &'a [u8],
    at: usize,
    max: usize,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
    match etf::scalar(term, at)? {
        Scalar::Binary(bytes) if bytes.len() > max => Err(WireError::Limit { what, max }),
        Scalar::Binary(bytes) => Ok(bytes),
        _ => Err(WireError::Malformed(what)),
    }
}

/// The `publisher`, `seq`, `ttl` and `sig` fields found in `values`, as a seal.
fn seal(term: &[u8], values: &[Option<usize>; FIELDS.len()]) -> Result<Seal, WireError> {
    let at = |field: Field, what| values[field as usize].ok_or(WireError::Malformed(what));
    let ttl = unsigned(term, at(Field::Ttl, "ttl")?, "ttl")?;
    Ok(Seal {
        publisher: fixed(term, at(Field::Publisher, "publisher")?, "publisher")?,
        seq: unsigned(term, at(Field::Seq, "seq")?, "seq")?,
        ttl_secs: u32::try_from(ttl).map_err(|_| WireError::Malformed("ttl"))?,
        sig: fixed(term, at(Field::Sig, "sig")?, "sig")?,
    })
}

/// A binary of exactly `N` bytes.
fn fixed<const N: usize>(term: &[u8], at: usize, what: &'static str) -> Result<[u8; N], WireError> {
    match etf::scalar(term, at)? {
        Scalar::Binary(bytes) => <[u8; N]>::try_from(bytes).map_err(|_| WireError::Malformed(what)),
        _ => Err(WireError::Malformed(what)),
    }
}

/// A non-negative integer that fits in 64 bits.
fn unsigned(term: &[u8], at: usize, what: &'static str) -> Result<u64, WireError> {
    match etf::scalar(term, at)? {
        Scalar::Integer(n) => u64::try_from(n).map_err(|_| WireError::Malformed(what)),
        _ => Err(WireError::Malformed(what)),
    }
}

fn node_id(term: &[u8], at: usize, what: &'static str) -> Result<NodeId, WireError> {
    match etf::scalar(term, at)? {
        Scalar::Binary(bytes) => <[u8; ID_LEN]>::try_from(bytes)
            .map(NodeId)
            .map_err(|_| WireError::Malformed(what)),
        _ => Err(WireError::Malformed(what)),
    }
}

/// `#{node_id => <<32 bytes>>, address => <<"ip:port">>}`, other keys ignored.
fn node_info(term: &[u8], at: usize) -> Result<NodeInfo, WireError> {
    const NAMES: [&[u8]; 2] = [b"node_id", b"address"];
    let mut values = [None; 2];
    fields(term, at, &NAMES, &mut values).map_err(|e| match e {
        WireError::Malformed("not a map") => WireError::Malformed("node info"),
        e => e,
    })?;
    let [Some(id), Some(addr)] = values else {
        return Err(WireError::Malformed("node info"));
    };
    let addr = binary(term, addr, MAX_ADDRESS_BYTES, "address")?;
    let addr = std::str::from_utf8(addr)
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .ok_or(WireError::Malformed("address"))?;
    Ok(NodeInfo {
        id: node_id(term, id, "node_id")?,
        addr,
    })
}

/// The element offsets of a proper list (`NIL_EXT`, or `LIST_EXT` with a `NIL_EXT` tail) whose
/// length was checked against a cap.
struct List<'a> {
    term: &'a [u8],
    next: usize,
    remaining: usize,
    what: &'static str,
}

impl<'a> List<'a> {
    fn new(term: &'a [u8], at: usize, max: usize, what: &'static str) -> Result<Self, WireError> {
        let len = match term.get(at) {
            Some(&tag::NIL) => 0,
            Some(&tag::LIST) => {
                let bytes = term.get(at + 1..at + 5).ok_or(EtfError::Truncated)?;
                let mut len = [0u8; 4];
                len.copy_from_slice(bytes);
                u32::from_be_bytes(len) as usize
            }
            Some(_) => return Err(WireError::Malformed(what)),
            None => return Err(EtfError::Truncated.into()),
        };
        if len > max {
            return Err(WireError::Limit { what, max });
        }
        let next = match term.get(at) {
            Some(&tag::LIST) => at + 5,
            _ => at + 1,
        };
        // A LIST_EXT of no elements (Erlang never writes one) must still end in NIL.
        if len == 0 && next == at + 5 && term.get(next) != Some(&tag::NIL) {
            return Err(WireError::Malformed(what));
        }
        Ok(List {
            term,
            next,
            remaining: len,
            what,
        })
    }

    fn remaining(&self) -> usize {
        self.remaining
    }
}

impl Iterator for List<'_> {
    /// An element's offset; after the last element, the tail is checked to be `NIL_EXT` (an
    /// improper list yields one `Malformed` error).
    type Item = Result<usize, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let at = self.next;
        let step = etf::skip_term(self.term, at).map_err(WireError::from);
        let item = step.and_then(|end| {
            self.remaining -= 1;
            self.next = end;
            if self.remaining == 0 && self.term.get(end) != Some(&tag::NIL) {
                return Err(WireError::Malformed(self.what));
            }
            Ok(at)
        });
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let nil = [tag::NIL];
        assert_eq!(List::new(&nil, 0, 0, "l").unwrap().count(), 0);
        let empty = [tag::LIST, 0, 0, 0, 0, tag::NIL];
        assert_eq!(List::new(&empty, 0, 0, "l").unwrap().count(), 0);
        let two = [tag::LIST, 0, 0, 0, 2, 97, 1, 97, 2, tag::NIL];
        let items: Vec<_> = List::new(&two, 0, 2, "l").unwrap().collect();
        assert_eq!(items, [Ok(5), Ok(7)]);
        assert!(matches!(
            List::new(&two, 0, 1, "l"),
            Err(WireError::Limit { what: "l", max: 1 })
        ));
        let improper = [tag::LIST, 0, 0, 0, 1, 97, 1, 97, 2];
        let items: Vec<_> = List::new(&improper, 0, 2, "l").unwrap().collect();
        assert_eq!(items, [Err(WireError::Malformed("l"))]);
        let string = [tag::STRING, 0, 1, 7];
        assert!(matches!(
            List::new(&string, 0, 9, "l"),
            Err(WireError::Malformed("l"))
        ));
        assert!(matches!(
            List::new(&[tag::LIST, 0, 0], 0, 9, "l"),
            Err(WireError::Etf(EtfError::Truncated))
        ));
        let bad = [tag::LIST, 0, 0, 0, 2, 42];
        let items: Vec<_> = List::new(&bad, 0, 2, "l").unwrap().collect();
        assert_eq!(items, [Err(WireError::Etf(EtfError::UnknownTag(42)))]);
    }

    #[test]
    fn field_table_matches_the_enum() {
        assert_eq!(FIELDS[Field::V as usize], b"v");
        assert_eq!(FIELDS[Field::Reason as usize], b"reason");
        assert_eq!(FIELDS[Field::NodeId as usize], b"node_id");
        let sealed: Vec<&[u8]> = [
            Field::Value,
            Field::Publisher,
            Field::Seq,
            Field::Ttl,
            Field::Sig,
        ]
        .map(|f| FIELDS[f as usize])
        .to_vec();
        assert_eq!(&FIELDS[SEALED_FIELDS..], &sealed[..]);
    }
}
