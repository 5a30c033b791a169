//! Shared by the `wire_*` tests: sample messages (with real publisher seals) and a tiny
//! hand-rolled ETF builder for frames the encoder would never write (other atom tags, other key
//! orders, hostile shapes).

#![allow(dead_code)]

use std::sync::OnceLock;

use macula_dht::seal::{Keypair, Removal, Seal};
use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response, SealedRecord};
use macula_dht::NodeId;

/// A node info with an id of 32 copies of `byte`.
pub fn node(byte: u8, addr: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId([byte; 32]),
        addr: addr.parse().unwrap(),
    }
}

/// `#{node_id => NodeId, ttl => Ttl}` as term bytes without version byte (atom keys, sorted).
pub fn provider(node_id: &[u8], ttl: u32) -> Vec<u8> {
    map(&[(atom("node_id"), bin(node_id)), (atom("ttl"), int(ttl))])
}

/// The publisher key made from the seed of 32 copies of `seed` (Erlang:
/// `crypto:generate_key(eddsa, ed25519, binary:copy(<<Seed>>, 32))`).
pub fn keypair(seed: u8) -> Keypair {
    Keypair::from_seed(&[seed; 32])
}

/// `term` under `key`, sealed by the publisher of seed 1.
pub fn sealed(key: &[u8], term: Vec<u8>, seq: u64, ttl: u32) -> SealedRecord {
    sealed_by(1, key, term, seq, ttl)
}

/// `term` under `key`, sealed by the publisher of seed `seed`.
pub fn sealed_by(seed: u8, key: &[u8], term: Vec<u8>, seq: u64, ttl: u32) -> SealedRecord {
    let seal = keypair(seed).seal(key, &term, seq, ttl);
    SealedRecord { term, seal }
}

/// A `store` of `term` under `key`, sealed by the publisher of seed 1.
pub fn store(key: &[u8], term: Vec<u8>, seq: u64, ttl: u32) -> Request {
    Request::Store {
        key: key.to_vec(),
        record: sealed(key, term, seq, ttl),
    }
}

/// A `remove` of `node_id` under `key`, signed by the publisher of seed 1.
pub fn remove(key: &[u8], node_id: &[u8], seq: u64) -> Request {
    Request::Remove {
        key: key.to_vec(),
        node_id: node_id.to_vec(),
        removal: keypair(1).removal(key, node_id, seq),
    }
}

/// A provider with binary keys and nested terms (any map is a provider).
pub fn nested_provider() -> Vec<u8> {
    map(&[
        (bin(b"node_id"), bin(b"n2")),
        (
            atom("metadata"),
            map(&[(atom("tags"), list(&[atom("a"), int(7)]))]),
        ),
    ])
}

pub fn sample_requests() -> Vec<Request> {
    let own = keypair(2).node_id().0;
    vec![
        Request::Ping,
        Request::FindNode {
            target: NodeId(std::array::from_fn(|i| i as u8)),
        },
        Request::FindValue {
            key: vec![0xab; 32],
        },
        Request::FindValue { key: Vec::new() },
        store(b"k", provider(b"n1", 300), 1_764_160_000_000, 300),
        // The largest sequence and ttl, a 1024-byte key, a provider with binary keys.
        store(&[1; 1024], nested_provider(), u64::MAX, u32::MAX),
        // The smallest ones, an empty key.
        store(b"", provider(b"n3", 1), 0, 0),
        remove(b"k", b"n1", 1_764_160_000_001),
        // A node id as `node_id`, removed by its own publisher.
        Request::Remove {
            key: Vec::new(),
            node_id: own.to_vec(),
            removal: keypair(2).removal(b"", &own, u64::MAX),
        },
    ]
}

pub fn sample_responses() -> Vec<Response> {
    let nodes = vec![
        node(7, "127.0.0.1:4433"),
        node(8, "[::1]:9443"),
        node(9, "[2001:db8::17]:1"),
        node(10, "[::ffff:10.1.2.3]:65535"),
    ];
    let mut responses = vec![
        Response::Pong,
        Response::Nodes { nodes: Vec::new() },
        Response::Nodes {
            nodes: nodes.clone(),
        },
        Response::Value {
            providers: vec![
                sealed(b"k", provider(b"n1", 300), 7, 3600),
                sealed_by(2, b"k", provider(b"n2", 1 << 20), u64::MAX, u32::MAX),
            ],
            nodes: Vec::new(),
        },
        Response::Value {
            providers: vec![sealed(b"k", nested_provider(), 0, 0)],
            nodes: nodes.clone(),
        },
        Response::Value {
            providers: Vec::new(),
            nodes: Vec::new(),
        },
        Response::NoValue { nodes: Vec::new() },
        Response::NoValue { nodes },
        Response::Stored,
        Response::Removed,
    ];
    responses.extend(ErrorReason::ALL.map(|reason| Response::Error { reason }));
    responses
}

/// Every sample frame, requests and responses (made once: sealing takes a while).
pub fn sample_frames() -> Vec<Vec<u8>> {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES
        .get_or_init(|| {
            let requests = sample_requests().into_iter().map(|r| r.encode());
            requests
                .chain(sample_responses().into_iter().map(|r| r.encode()))
                .collect()
        })
        .clone()
}

/// SMALL_ATOM_UTF8_EXT.
pub fn atom(name: &str) -> Vec<u8> {
    [&[119, name.len() as u8][..], name.as_bytes()].concat()
}

/// An atom with the given atom tag (100, 115, 118 or 119).
pub fn atom_as(tag: u8, name: &str) -> Vec<u8> {
    let mut t = vec![tag];
    match tag {
        100 | 118 => t.extend((name.len() as u16).to_be_bytes()),
        _ => t.push(name.len() as u8),
    }
    t.extend(name.as_bytes());
    t
}

pub fn bin(bytes: &[u8]) -> Vec<u8> {
    [&[109][..], &(bytes.len() as u32).to_be_bytes(), bytes].concat()
}

/// An integer as `term_to_binary` writes it: SMALL_INTEGER, INTEGER, or SMALL_BIG past 2^31 - 1.
pub fn int(n: u32) -> Vec<u8> {
    uint(n.into())
}

/// A 64-bit integer as `term_to_binary` writes it: SMALL_INTEGER, INTEGER, or SMALL_BIG of as
/// many little-endian bytes as needed past 2^31 - 1.
pub fn uint(n: u64) -> Vec<u8> {
    if let Ok(small) = u8::try_from(n) {
        vec![97, small]
    } else if let Ok(int) = i32::try_from(n) {
        [&[98][..], &int.to_be_bytes()].concat()
    } else {
        let len = 8 - (n.leading_zeros() / 8) as usize;
        [&[110, len as u8, 0][..], &n.to_le_bytes()[..len]].concat()
    }
}

/// A SMALL_BIG of the given sign and little-endian magnitude bytes, written as given.
pub fn small_big(negative: bool, digits: &[u8]) -> Vec<u8> {
    [&[110, digits.len() as u8, negative as u8][..], digits].concat()
}

/// The current protocol version as a `v` value.
pub fn v() -> Vec<u8> {
    int(2)
}

pub fn list(items: &[Vec<u8>]) -> Vec<u8> {
    if items.is_empty() {
        return vec![106];
    }
    let mut t = vec![108];
    t.extend((items.len() as u32).to_be_bytes());
    for item in items {
        t.extend(item);
    }
    t.push(106);
    t
}

/// A map term (no version byte) with the fields in the given order.
pub fn map(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut t = vec![116];
    t.extend((fields.len() as u32).to_be_bytes());
    for (k, v) in fields {
        t.extend(k);
        t.extend(v);
    }
    t
}

/// A versioned frame of one term.
pub fn frame(term: &[u8]) -> Vec<u8> {
    [&[131][..], term].concat()
}

/// A map term with atom keys: `fields` are `(name, value term)`.
pub fn atom_map(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let fields: Vec<_> = fields
        .iter()
        .map(|(name, value)| (atom(name), value.clone()))
        .collect();
    map(&fields)
}

/// A frame of a map with atom keys: `fields` are `(name, value term)`.
pub fn msg(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    frame(&atom_map(fields))
}

/// The `publisher`, `seq`, `ttl` and `sig` fields of a seal, as `(name, value term)`.
pub fn seal_fields(seal: &Seal) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("publisher", bin(&seal.publisher)),
        ("seq", uint(seal.seq)),
        ("ttl", int(seal.ttl_secs)),
        ("sig", bin(&seal.sig)),
    ]
}

/// The `publisher`, `seq` and `sig` fields of a removal, as `(name, value term)`.
pub fn removal_fields(removal: &Removal) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("publisher", bin(&removal.publisher)),
        ("seq", uint(removal.seq)),
        ("sig", bin(&removal.sig)),
    ]
}

/// The fields of a sealed provider map (`value` and the seal's), as `(name, value term)`.
pub fn sealed_fields(record: &SealedRecord) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![("value", record.term.clone())];
    fields.extend(seal_fields(&record.seal));
    fields
}

/// The fields of a `store` request for `record` under `key`, as `(name, value term)`.
pub fn store_fields(key: &[u8], record: &SealedRecord) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![("v", v()), ("type", atom("store")), ("key", bin(key))];
    fields.extend(sealed_fields(record));
    fields
}

/// The fields of a `remove` request, as `(name, value term)`.
pub fn remove_fields(
    key: &[u8],
    node_id: &[u8],
    removal: &Removal,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("v", v()),
        ("type", atom("remove")),
        ("key", bin(key)),
        ("node_id", bin(node_id)),
    ];
    fields.extend(removal_fields(removal));
    fields
}

/// `fields` with the value of `name` replaced by `value` (added if absent).
pub fn with(
    fields: &[(&'static str, Vec<u8>)],
    name: &'static str,
    value: Vec<u8>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = without(fields, name);
    out.push((name, value));
    out
}

/// `fields` without `name`.
pub fn without(fields: &[(&'static str, Vec<u8>)], name: &str) -> Vec<(&'static str, Vec<u8>)> {
    fields.iter().filter(|(n, _)| *n != name).cloned().collect()
}

/// A node info map term.
pub fn node_term(id: &[u8], addr: &str) -> Vec<u8> {
    map(&[
        (atom("node_id"), bin(id)),
        (atom("address"), bin(addr.as_bytes())),
    ])
}
