//! Shared by the `wire_*` tests: sample messages and a tiny hand-rolled ETF builder for frames
//! the encoder would never write (other atom tags, other key orders, hostile shapes).

#![allow(dead_code)]

use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response};
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

pub fn sample_requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::FindNode {
            target: NodeId(std::array::from_fn(|i| i as u8)),
        },
        Request::FindValue {
            key: vec![0xab; 32],
        },
        Request::FindValue { key: Vec::new() },
        Request::Store {
            key: b"k".to_vec(),
            value: provider(b"n1", 300),
        },
        Request::Store {
            key: vec![1; 1024],
            // Any map is a provider, binary keys and nested terms included.
            value: map(&[
                (bin(b"node_id"), bin(b"n2")),
                (
                    atom("metadata"),
                    map(&[(atom("tags"), list(&[atom("a"), int(7)]))]),
                ),
            ]),
        },
        Request::Remove {
            key: b"k".to_vec(),
            node_id: b"n1".to_vec(),
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
            providers: vec![provider(b"n1", 300), provider(b"n2", 1 << 20)],
            nodes: Vec::new(),
        },
        Response::Value {
            providers: vec![provider(b"n1", 300)],
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

/// Every sample frame, requests and responses.
pub fn sample_frames() -> Vec<Vec<u8>> {
    let requests = sample_requests().into_iter().map(|r| r.encode());
    requests
        .chain(sample_responses().into_iter().map(|r| r.encode()))
        .collect()
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
    if let Ok(small) = u8::try_from(n) {
        vec![97, small]
    } else if let Ok(int) = i32::try_from(n) {
        [&[98][..], &int.to_be_bytes()].concat()
    } else {
        [&[110, 4, 0][..], &n.to_le_bytes()].concat()
    }
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

/// A frame of a map with atom keys: `fields` are `(name, value term)`.
pub fn msg(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let fields: Vec<_> = fields
        .iter()
        .map(|(name, value)| (atom(name), value.clone()))
        .collect();
    frame(&map(&fields))
}

/// A node info map term.
pub fn node_term(id: &[u8], addr: &str) -> Vec<u8> {
    map(&[
        (atom("node_id"), bin(id)),
        (atom("address"), bin(addr.as_bytes())),
    ])
}
