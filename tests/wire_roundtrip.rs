//! The wire messages: round trips, byte-exact golden vectors (made with OTP 25's
//! `term_to_binary(T, [{minor_version, 2}])`, also shown in docs/protocol.md), and how the decoder
//! reads frames the encoder would never write: other atom tags, other key orders, extra keys,
//! missing or ill-typed fields, limits.

mod wire_support;

use macula_dht::etf::EtfError;
use macula_dht::wire::{
    ErrorReason, NodeInfo, Request, Response, WireError, MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_NODES,
    MAX_PROVIDERS,
};
use macula_dht::{NodeId, ProviderError};
use wire_support::*;

/// `term_to_binary(#{v => 1, type => ping}, [{minor_version, 2}])`.
const PING: &[u8] = &[
    131, 116, 0, 0, 0, 2, 119, 4, 116, 121, 112, 101, 119, 4, 112, 105, 110, 103, 119, 1, 118, 97,
    1,
];

/// `term_to_binary(#{v => 1, type => find_node, target => list_to_binary(lists:seq(0, 31))},
/// [{minor_version, 2}])`.
const FIND_NODE: &[u8] = &[
    131, 116, 0, 0, 0, 3, 119, 6, 116, 97, 114, 103, 101, 116, 109, 0, 0, 0, 32, 0, 1, 2, 3, 4, 5,
    6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 119, 4, 116, 121, 112, 101, 119, 9, 102, 105, 110, 100, 95, 110, 111, 100, 101, 119, 1,
    118, 97, 1,
];

/// `term_to_binary(#{v => 1, type => find_value_reply, result => value,
/// value => [#{node_id => <<"n1">>, ttl => 300}],
/// nodes => [#{node_id => binary:copy(<<7>>, 32), address => <<"127.0.0.1:4433">>}]},
/// [{minor_version, 2}])`.
const FIND_VALUE_HIT: &[u8] = &[
    131, 116, 0, 0, 0, 5, 119, 5, 110, 111, 100, 101, 115, 108, 0, 0, 0, 1, 116, 0, 0, 0, 2, 119,
    7, 97, 100, 100, 114, 101, 115, 115, 109, 0, 0, 0, 14, 49, 50, 55, 46, 48, 46, 48, 46, 49, 58,
    52, 52, 51, 51, 119, 7, 110, 111, 100, 101, 95, 105, 100, 109, 0, 0, 0, 32, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 106, 119, 6, 114,
    101, 115, 117, 108, 116, 119, 5, 118, 97, 108, 117, 101, 119, 4, 116, 121, 112, 101, 119, 16,
    102, 105, 110, 100, 95, 118, 97, 108, 117, 101, 95, 114, 101, 112, 108, 121, 119, 1, 118, 97,
    1, 119, 5, 118, 97, 108, 117, 101, 108, 0, 0, 0, 1, 116, 0, 0, 0, 2, 119, 7, 110, 111, 100,
    101, 95, 105, 100, 109, 0, 0, 0, 2, 110, 49, 119, 3, 116, 116, 108, 98, 0, 0, 1, 44, 106,
];

/// `term_to_binary(#{v => 1, type => find_value_reply, result => nodes, nodes => []},
/// [{minor_version, 2}])`.
const FIND_VALUE_MISS: &[u8] = &[
    131, 116, 0, 0, 0, 4, 119, 5, 110, 111, 100, 101, 115, 106, 119, 6, 114, 101, 115, 117, 108,
    116, 119, 5, 110, 111, 100, 101, 115, 119, 4, 116, 121, 112, 101, 119, 16, 102, 105, 110, 100,
    95, 118, 97, 108, 117, 101, 95, 114, 101, 112, 108, 121, 119, 1, 118, 97, 1,
];

/// `term_to_binary(#{v => 1, type => error, reason => malformed}, [{minor_version, 2}])`.
const ERROR_MALFORMED: &[u8] = &[
    131, 116, 0, 0, 0, 3, 119, 6, 114, 101, 97, 115, 111, 110, 119, 9, 109, 97, 108, 102, 111, 114,
    109, 101, 100, 119, 4, 116, 121, 112, 101, 119, 5, 101, 114, 114, 111, 114, 119, 1, 118, 97, 1,
];

/// `term_to_binary(#{v => 1, type => store, key => <<"k">>,
/// value => #{node_id => <<"n1">>, ttl => 300}}, [{minor_version, 2}])`.
const STORE: &[u8] = &[
    131, 116, 0, 0, 0, 4, 119, 3, 107, 101, 121, 109, 0, 0, 0, 1, 107, 119, 4, 116, 121, 112, 101,
    119, 5, 115, 116, 111, 114, 101, 119, 1, 118, 97, 1, 119, 5, 118, 97, 108, 117, 101, 116, 0, 0,
    0, 2, 119, 7, 110, 111, 100, 101, 95, 105, 100, 109, 0, 0, 0, 2, 110, 49, 119, 3, 116, 116,
    108, 98, 0, 0, 1, 44,
];

#[test]
fn every_message_round_trips() {
    for req in sample_requests() {
        assert_eq!(Request::decode(&req.encode()), Ok(req.clone()), "{req:?}");
    }
    for resp in sample_responses() {
        assert_eq!(
            Response::decode(&resp.encode()),
            Ok(resp.clone()),
            "{resp:?}"
        );
    }
}

#[test]
fn golden_vectors_match_erlang_byte_for_byte() {
    let target = NodeId(std::array::from_fn(|i| i as u8));
    let hit = Response::Value {
        providers: vec![provider(b"n1", 300)],
        nodes: vec![node(7, "127.0.0.1:4433")],
    };
    let store = Request::Store {
        key: b"k".to_vec(),
        value: provider(b"n1", 300),
    };
    let requests = [
        (Request::Ping, PING),
        (Request::FindNode { target }, FIND_NODE),
        (store, STORE),
    ];
    for (req, golden) in requests {
        assert_eq!(req.encode(), golden, "{req:?}");
        assert_eq!(Request::decode(golden), Ok(req));
    }
    let responses = [
        (hit, FIND_VALUE_HIT),
        (Response::NoValue { nodes: vec![] }, FIND_VALUE_MISS),
        (
            Response::Error {
                reason: ErrorReason::Malformed,
            },
            ERROR_MALFORMED,
        ),
    ];
    for (resp, golden) in responses {
        assert_eq!(resp.encode(), golden, "{resp:?}");
        assert_eq!(Response::decode(golden), Ok(resp));
    }
}

#[test]
fn any_atom_tag_and_any_key_order_are_accepted() {
    let target = [3u8; 32];
    for tag in [100, 115, 118, 119] {
        let a = |name: &str| atom_as(tag, name);
        let fields = [
            (a("v"), int(1)),
            (a("type"), a("find_node")),
            (a("target"), bin(&target)),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let shuffled: Vec<_> = order.iter().map(|&i| fields[i].clone()).collect();
            assert_eq!(
                Request::decode(&frame(&map(&shuffled))),
                Ok(Request::FindNode {
                    target: NodeId(target)
                }),
                "tag {tag}, order {order:?}"
            );
        }
        let node = map(&[
            (a("address"), bin(b"10.0.0.1:1")),
            (a("node_id"), bin(&target)),
        ]);
        let reply = frame(&map(&[
            (a("type"), a("find_node_reply")),
            (a("nodes"), list(&[node])),
            (a("v"), int(1)),
        ]));
        assert_eq!(
            Response::decode(&reply),
            Ok(Response::Nodes {
                nodes: vec![NodeInfo {
                    id: NodeId(target),
                    addr: "10.0.0.1:1".parse().unwrap()
                }]
            })
        );
    }
}

#[test]
fn unknown_keys_are_ignored() {
    let extra = [
        (atom("trace"), bin(b"abc")),
        (bin(b"type"), atom("store")),
        (vec![104, 2, 97, 1, 97, 2], list(&[int(1), int(2)])),
        (int(5), vec![116, 0, 0, 0, 0]),
    ];
    let mut fields = vec![
        (atom("v"), int(1)),
        (atom("type"), atom("find_value")),
        (atom("key"), bin(b"key")),
    ];
    fields.extend(extra.iter().cloned());
    assert_eq!(
        Request::decode(&frame(&map(&fields))),
        Ok(Request::FindValue {
            key: b"key".to_vec()
        })
    );
    // Fields of other message types are ignored too, even ill-typed.
    let ping = msg(&[("v", int(1)), ("type", atom("ping")), ("key", int(3))]);
    assert_eq!(Request::decode(&ping), Ok(Request::Ping));
    // And in node infos.
    let mut node = vec![
        (atom("node_id"), bin(&[1; 32])),
        (atom("address"), bin(b"[::1]:5")),
        (atom("endpoint"), bin(b"https://h:9443")),
        (atom("last_seen"), vec![110, 6, 0, 0, 0, 0, 0, 0, 1]),
    ];
    node.extend(extra.iter().cloned());
    let reply = msg(&[
        ("v", int(1)),
        ("type", atom("find_node_reply")),
        ("nodes", list(&[map(&node)])),
        ("extra", atom("x")),
    ]);
    assert_eq!(
        Response::decode(&reply),
        Ok(Response::Nodes {
            nodes: vec![node_info(1, "[::1]:5")]
        })
    );
}

fn malformed<T>(what: &'static str) -> Result<T, WireError> {
    Err(WireError::Malformed(what))
}

fn node_info(byte: u8, addr: &str) -> NodeInfo {
    node(byte, addr)
}

#[test]
fn version_is_checked_first() {
    let frame_v = |v: Vec<u8>| msg(&[("v", v), ("type", atom("ping"))]);
    assert_eq!(
        Request::decode(&frame_v(int(2))),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(
        Response::decode(&frame_v(int(70_000))),
        Err(WireError::UnsupportedVersion(70_000))
    );
    assert_eq!(
        Request::decode(&frame_v(int(0))),
        Err(WireError::UnsupportedVersion(0))
    );
    // A newer version is reported as such whatever its shape.
    let v2 = msg(&[("v", int(2)), ("type", atom("some_future_type"))]);
    assert_eq!(Request::decode(&v2), Err(WireError::UnsupportedVersion(2)));
    for bad in [
        vec![98, 255, 255, 255, 255],
        vec![110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        bin(b"1"),
        atom("v1"),
        vec![106],
    ] {
        assert_eq!(
            Request::decode(&frame_v(bad)),
            Err(WireError::Malformed("v"))
        );
    }
    let no_v = msg(&[("type", atom("ping"))]);
    assert_eq!(Request::decode(&no_v), Err(WireError::Malformed("v")));
}

#[test]
fn types_must_be_known_atoms() {
    let with_type = |t: Vec<u8>| msg(&[("v", int(1)), ("type", t)]);
    assert_eq!(
        Request::decode(&with_type(atom("hello"))),
        Err(WireError::UnknownType)
    );
    // Reply types are not requests, and request types are not replies.
    assert_eq!(
        Request::decode(&with_type(atom("pong"))),
        Err(WireError::UnknownType)
    );
    assert_eq!(
        Response::decode(&with_type(atom("ping"))),
        Err(WireError::UnknownType)
    );
    assert_eq!(
        Request::decode(&with_type(bin(b"ping"))),
        Err(WireError::Malformed("type"))
    );
    assert_eq!(
        Request::decode(&msg(&[("v", int(1))])),
        Err(WireError::Malformed("type"))
    );
}

#[test]
fn missing_and_ill_typed_fields_are_malformed() {
    let req = |t: &str, fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("v", int(1)), ("type", atom(t))];
        all.extend(fields.iter().cloned());
        Request::decode(&msg(&all))
    };
    assert_eq!(req("find_node", &[]), malformed("target"));
    assert_eq!(
        req("find_node", &[("target", bin(&[0; 31]))]),
        malformed("target")
    );
    assert_eq!(
        req("find_node", &[("target", bin(&[0; 33]))]),
        malformed("target")
    );
    assert_eq!(
        req("find_node", &[("target", atom("x"))]),
        malformed("target")
    );
    assert_eq!(req("find_value", &[]), malformed("key"));
    assert_eq!(
        req("find_value", &[("key", list(&[int(1)]))]),
        malformed("key")
    );
    assert_eq!(
        req("store", &[("value", provider(b"n", 1))]),
        malformed("key")
    );
    assert_eq!(req("store", &[("key", bin(b"k"))]), malformed("value"));
    assert_eq!(req("remove", &[("key", bin(b"k"))]), malformed("node_id"));
    assert_eq!(
        req("remove", &[("key", bin(b"k")), ("node_id", int(1))]),
        malformed("node_id")
    );

    let resp = |fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("v", int(1))];
        all.extend(fields.iter().cloned());
        Response::decode(&msg(&all))
    };
    assert_eq!(
        resp(&[("type", atom("find_node_reply"))]),
        malformed("nodes")
    );
    assert_eq!(
        resp(&[("type", atom("find_node_reply")), ("nodes", bin(b""))]),
        malformed("nodes")
    );
    // A list of small integers is a STRING_EXT, still not a list of node infos.
    assert_eq!(
        resp(&[
            ("type", atom("find_node_reply")),
            ("nodes", vec![107, 0, 1, 5])
        ]),
        malformed("nodes")
    );
    // An improper list.
    assert_eq!(
        resp(&[
            ("type", atom("find_node_reply")),
            ("nodes", vec![108, 0, 0, 0, 0, 97, 1])
        ]),
        malformed("nodes")
    );
    let fv = atom("find_value_reply");
    assert_eq!(resp(&[("type", fv.clone())]), malformed("result"));
    assert_eq!(
        resp(&[("type", fv.clone()), ("result", atom("maybe"))]),
        malformed("result")
    );
    assert_eq!(
        resp(&[("type", fv.clone()), ("result", atom("value"))]),
        malformed("value")
    );
    assert_eq!(
        resp(&[("type", fv.clone()), ("result", atom("nodes"))]),
        malformed("nodes")
    );
    // A hit without `nodes` has none.
    assert_eq!(
        resp(&[
            ("type", fv.clone()),
            ("result", atom("value")),
            ("value", list(&[provider(b"n", 5)]))
        ]),
        Ok(Response::Value {
            providers: vec![provider(b"n", 5)],
            nodes: vec![]
        })
    );
    for t in ["store_reply", "remove_reply"] {
        assert_eq!(resp(&[("type", atom(t))]), malformed("result"));
        assert_eq!(
            resp(&[("type", atom(t)), ("result", atom("error"))]),
            malformed("result")
        );
    }
    assert_eq!(resp(&[("type", atom("error"))]), malformed("reason"));
    assert_eq!(
        resp(&[("type", atom("error")), ("reason", atom("bored"))]),
        malformed("reason")
    );
    assert_eq!(
        resp(&[("type", atom("error")), ("reason", bin(b"malformed"))]),
        malformed("reason")
    );
}

#[test]
fn node_infos_are_checked() {
    let reply = |node: Vec<u8>| {
        Response::decode(&msg(&[
            ("v", int(1)),
            ("type", atom("find_node_reply")),
            ("nodes", list(&[node])),
        ]))
    };
    let id = [5u8; 32];
    assert_eq!(
        reply(node_term(&id, "192.168.1.2:80")),
        Ok(Response::Nodes {
            nodes: vec![node(5, "192.168.1.2:80")]
        })
    );
    for addr in [
        "host.example:80",
        "1.2.3.4",
        "1.2.3.4:70000",
        "::1:80",
        "",
        "[::1]",
    ] {
        assert_eq!(
            reply(node_term(&id, addr)),
            Err(WireError::Malformed("address")),
            "{addr}"
        );
    }
    assert_eq!(
        reply(node_term(&id, &"9".repeat(65))),
        Err(WireError::Limit {
            what: "address",
            max: 64
        })
    );
    let not_utf8 = map(&[
        (atom("node_id"), bin(&id)),
        (atom("address"), bin(&[0xff, 0xfe, b':', b'1'])),
    ]);
    assert_eq!(reply(not_utf8), Err(WireError::Malformed("address")));
    assert_eq!(
        reply(node_term(&[5; 31], "1.2.3.4:5")),
        Err(WireError::Malformed("node_id"))
    );
    let no_address = map(&[(atom("node_id"), bin(&id))]);
    assert_eq!(reply(no_address), Err(WireError::Malformed("node info")));
    let tuple_address = map(&[
        (atom("node_id"), bin(&id)),
        (atom("address"), vec![104, 2, 97, 1, 97, 2]),
    ]);
    assert_eq!(reply(tuple_address), Err(WireError::Malformed("address")));
    assert_eq!(reply(bin(b"x")), Err(WireError::Malformed("node info")));
    let twice = map(&[
        (atom("node_id"), bin(&id)),
        (atom("node_id"), bin(&id)),
        (atom("address"), bin(b"1.2.3.4:5")),
    ]);
    assert_eq!(reply(twice), Err(WireError::Malformed("duplicate key")));
}

#[test]
fn duplicate_keys_are_malformed() {
    let frame = msg(&[
        ("v", int(1)),
        ("type", atom("find_value")),
        ("key", bin(b"a")),
        ("key", bin(b"b")),
    ]);
    assert_eq!(
        Request::decode(&frame),
        Err(WireError::Malformed("duplicate key"))
    );
    // Even when spelled with different atom tags.
    let frame = frame_of(&[
        (atom("v"), int(1)),
        (atom_as(100, "type"), atom("ping")),
        (atom_as(115, "type"), atom("ping")),
    ]);
    assert_eq!(
        Request::decode(&frame),
        Err(WireError::Malformed("duplicate key"))
    );
}

fn frame_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    frame(&map(fields))
}

#[test]
fn providers_are_validated() {
    let store = |value: Vec<u8>| {
        Request::decode(&msg(&[
            ("v", int(1)),
            ("type", atom("store")),
            ("key", bin(b"k")),
            ("value", value),
        ]))
    };
    assert_eq!(
        store(bin(b"not a map")),
        Err(WireError::InvalidProvider(ProviderError::NotAMap))
    );
    assert_eq!(
        store(map(&[(atom("ttl"), int(0))])),
        Err(WireError::InvalidProvider(ProviderError::InvalidTtl))
    );
    assert_eq!(
        store(map(&[(atom("node_id"), int(0))])),
        Err(WireError::InvalidProvider(ProviderError::InvalidNodeId))
    );
    let empty = vec![116, 0, 0, 0, 0];
    assert_eq!(
        store(empty.clone()),
        Ok(Request::Store {
            key: b"k".to_vec(),
            value: empty
        })
    );
    let hit = |providers: Vec<Vec<u8>>| {
        Response::decode(&msg(&[
            ("v", int(1)),
            ("type", atom("find_value_reply")),
            ("result", atom("value")),
            ("value", list(&providers)),
        ]))
    };
    assert_eq!(
        hit(vec![provider(b"a", 1), int(3)]),
        Err(WireError::InvalidProvider(ProviderError::NotAMap))
    );
}

#[test]
fn limits_are_enforced() {
    let find = |len: usize| Request::FindValue { key: vec![1; len] };
    assert_eq!(
        Request::decode(&find(MAX_KEY_BYTES).encode()),
        Ok(find(MAX_KEY_BYTES))
    );
    assert_eq!(
        Request::decode(&find(MAX_KEY_BYTES + 1).encode()),
        Err(WireError::Limit {
            what: "key",
            max: MAX_KEY_BYTES
        })
    );
    let remove = Request::Remove {
        key: b"k".to_vec(),
        node_id: vec![1; 256],
    };
    assert_eq!(
        Request::decode(&remove.encode()),
        Err(WireError::Limit {
            what: "node_id",
            max: 255
        })
    );
    let nodes = |n: usize| Response::Nodes {
        nodes: (0..n).map(|i| node(i as u8, "10.0.0.1:1")).collect(),
    };
    assert_eq!(
        Response::decode(&nodes(MAX_NODES).encode()),
        Ok(nodes(MAX_NODES))
    );
    assert_eq!(
        Response::decode(&nodes(MAX_NODES + 1).encode()),
        Err(WireError::Limit {
            what: "nodes",
            max: MAX_NODES
        })
    );
    let hit = |n: usize| Response::Value {
        providers: vec![provider(b"p", 1); n],
        nodes: vec![],
    };
    assert_eq!(
        Response::decode(&hit(MAX_PROVIDERS).encode()),
        Ok(hit(MAX_PROVIDERS))
    );
    assert_eq!(
        Response::decode(&hit(MAX_PROVIDERS + 1).encode()),
        Err(WireError::Limit {
            what: "value",
            max: MAX_PROVIDERS
        })
    );
}

#[test]
fn value_fitting_stays_within_the_caps() {
    let nodes: Vec<_> = (0..100).map(|i| node(i, "[::1]:1")).collect();
    // Many small providers: the count cap binds.
    let small = provider(b"p", 1);
    let reply = Response::value_fitting(std::iter::repeat_n(&small[..], 5000), nodes.clone());
    let Response::Value {
        providers,
        nodes: kept,
    } = &reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!((providers.len(), kept.len()), (MAX_PROVIDERS, MAX_NODES));
    assert_eq!(Response::decode(&reply.encode()).as_ref(), Ok(&reply));
    // Large providers: the frame cap binds, and the frame is filled up to it.
    let big = map(&[(atom("blob"), bin(&[0; 60_000]))]);
    let reply = Response::value_fitting(std::iter::repeat_n(&big[..], 100), nodes);
    let Response::Value { providers, .. } = &reply else {
        panic!("{reply:?}")
    };
    let frame = reply.encode();
    assert!(frame.len() <= MAX_FRAME_BYTES);
    assert!(frame.len() + big.len() > MAX_FRAME_BYTES);
    assert_eq!(providers.len(), MAX_FRAME_BYTES / big.len());
    assert_eq!(Response::decode(&frame).as_ref(), Ok(&reply));
    // Exactly at the cap: one provider padded so the frame is MAX_FRAME_BYTES long.
    let base = Response::value_fitting(std::iter::empty(), vec![])
        .encode()
        .len()
        + 5;
    let fill = map(&[(atom("b"), bin(&vec![0; MAX_FRAME_BYTES - base - 13]))]);
    let reply = Response::value_fitting([&fill[..]], vec![]);
    assert_eq!(reply.encode().len(), MAX_FRAME_BYTES);
    assert!(Response::decode(&reply.encode()).is_ok());
}

#[test]
fn errors_map_to_reasons() {
    let cases = [
        (WireError::TooLarge(1), ErrorReason::TooLarge),
        (WireError::Etf(EtfError::Truncated), ErrorReason::Malformed),
        (WireError::Malformed("x"), ErrorReason::Malformed),
        (
            WireError::UnsupportedVersion(2),
            ErrorReason::UnsupportedVersion,
        ),
        (WireError::UnknownType, ErrorReason::UnknownMessage),
        (
            WireError::Limit {
                what: "key",
                max: 1,
            },
            ErrorReason::Limit,
        ),
        (
            WireError::InvalidProvider(ProviderError::NotAMap),
            ErrorReason::InvalidProvider,
        ),
    ];
    for (e, reason) in cases {
        assert_eq!(e.reason(), reason);
        assert_eq!(Response::from(&e), Response::Error { reason });
    }
    for reason in ErrorReason::ALL {
        assert_eq!(
            ErrorReason::from_name(reason.name().as_bytes()),
            Some(reason)
        );
    }
    assert_eq!(ErrorReason::from_name(b"nope"), None);
}

#[test]
fn replies_answer_their_requests() {
    let requests = sample_requests();
    let responses = sample_responses();
    for req in &requests {
        for resp in &responses {
            let expected = matches!(
                (req.type_name(), resp.type_name()),
                (_, "error")
                    | ("ping", "pong")
                    | ("find_node", "find_node_reply")
                    | ("find_value", "find_value_reply")
                    | ("store", "store_reply")
                    | ("remove", "remove_reply")
            );
            assert_eq!(resp.answers(req), expected, "{req:?} {resp:?}");
        }
    }
}

#[test]
fn encoded_keys_are_in_erlang_order() {
    // term_to_binary writes atom keys sorted by name; so must we (for byte-exact output).
    for frame in sample_frames() {
        let keys = top_level_keys(&frame);
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

/// The names of a frame's top-level atom keys, in order.
fn top_level_keys(frame: &[u8]) -> Vec<Vec<u8>> {
    use macula_dht::etf::{map_fields, scalar, Scalar};
    let term = &frame[1..];
    map_fields(term, 0)
        .unwrap()
        .map(|f| match scalar(term, f.unwrap().0).unwrap() {
            Scalar::Atom(name) => name.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn fuzz_seeds_are_valid_frames() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let valid = if name.starts_with("provider") {
            macula_dht::ProviderRecord::parse(&bytes).is_ok()
        } else {
            Request::decode(&bytes).is_ok() || Response::decode(&bytes).is_ok()
        };
        assert!(valid, "{name}");
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} seeds");
}
