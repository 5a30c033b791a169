//! The wire messages: round trips, byte-exact golden vectors (made with OTP 25's
//! `term_to_binary(T, [{minor_version, 2}])` and, for seals, `crypto:sign(eddsa, ...)`; also shown
//! in docs/protocol.md), and how the decoder reads frames the encoder would never write: other
//! atom tags, other key orders, extra keys, missing or ill-typed fields, limits, version 1 frames.

mod wire_support;

use macula_dht::etf::EtfError;
use macula_dht::seal::{SealError, Verifier};
use macula_dht::wire::{
    ErrorReason, NodeInfo, Request, Response, SealedRecord, WireError, MAX_FRAME_BYTES,
    MAX_KEY_BYTES, MAX_NODES, MAX_PROVIDERS,
};
use macula_dht::{NodeId, ProviderError};
use wire_support::*;

// In the golden vectors below, `Pub` and `Priv` are
// `crypto:generate_key(eddsa, ed25519, binary:copy(<<1>>, 32))` (the publisher of seed 1),
// `P` is `#{node_id => <<"n1">>, ttl => 300}`, and
// `Sealed(K, P, Seq, Ttl)` is `#{value => P, publisher => Pub, seq => Seq, ttl => Ttl, sig => Sig}`
// with `Sig = crypto:sign(eddsa, none, Msg, [Priv, ed25519])` over the provider message of
// `macula_dht::seal` (`PB` being `P`'s `term_to_binary` less its version byte):
// `<<"macula-dht/2 provider", 0, (byte_size(K)):32, K/binary, Pub/binary, Seq:64, Ttl:32,
//    (byte_size(PB)):32, PB/binary>>`.

/// `term_to_binary(#{v => 2, type => ping}, [{minor_version, 2}])`.
const PING: &[u8] = &[
    131, 116, 0, 0, 0, 2, 119, 4, 116, 121, 112, 101, 119, 4, 112, 105, 110, 103, 119, 1, 118, 97,
    2,
];

/// `term_to_binary(#{v => 2, type => find_node, target => list_to_binary(lists:seq(0, 31))},
/// [{minor_version, 2}])`.
const FIND_NODE: &[u8] = &[
    131, 116, 0, 0, 0, 3, 119, 6, 116, 97, 114, 103, 101, 116, 109, 0, 0, 0, 32, 0, 1, 2, 3, 4, 5,
    6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 119, 4, 116, 121, 112, 101, 119, 9, 102, 105, 110, 100, 95, 110, 111, 100, 101, 119, 1,
    118, 97, 2,
];

/// `term_to_binary(maps:merge(#{v => 2, type => store, key => <<"k">>},
/// Sealed(<<"k">>, P, 1764160000000, 300)), [{minor_version, 2}])`.
const STORE: &[u8] = &[
    131, 116, 0, 0, 0, 8, 119, 3, 107, 101, 121, 109, 0, 0, 0, 1, 107, 119, 9, 112, 117, 98, 108,
    105, 115, 104, 101, 114, 109, 0, 0, 0, 32, 138, 136, 227, 221, 116, 9, 241, 149, 253, 82, 219,
    45, 60, 186, 93, 114, 202, 103, 9, 191, 29, 148, 18, 27, 243, 116, 136, 1, 180, 15, 111, 92,
    119, 3, 115, 101, 113, 110, 6, 0, 0, 80, 33, 192, 154, 1, 119, 3, 115, 105, 103, 109, 0, 0, 0,
    64, 133, 220, 187, 192, 239, 153, 207, 62, 57, 62, 255, 66, 243, 33, 255, 163, 207, 130, 242,
    126, 226, 141, 156, 12, 103, 113, 69, 156, 234, 245, 151, 169, 57, 119, 22, 128, 68, 48, 107,
    173, 121, 75, 46, 158, 186, 241, 4, 114, 46, 157, 213, 30, 132, 135, 24, 246, 74, 104, 196, 98,
    59, 92, 244, 9, 119, 3, 116, 116, 108, 98, 0, 0, 1, 44, 119, 4, 116, 121, 112, 101, 119, 5,
    115, 116, 111, 114, 101, 119, 1, 118, 97, 2, 119, 5, 118, 97, 108, 117, 101, 116, 0, 0, 0, 2,
    119, 7, 110, 111, 100, 101, 95, 105, 100, 109, 0, 0, 0, 2, 110, 49, 119, 3, 116, 116, 108, 98,
    0, 0, 1, 44,
];

/// `term_to_binary(#{v => 2, type => remove, key => <<"k">>, node_id => <<"n1">>,
/// publisher => Pub, seq => 1764160000001, sig => Sig}, [{minor_version, 2}])`, `Sig` signing
/// `<<"macula-dht/2 remove", 0, 1:32, "k", Pub/binary, 1764160000001:64, 2:32, "n1">>`.
const REMOVE: &[u8] = &[
    131, 116, 0, 0, 0, 7, 119, 3, 107, 101, 121, 109, 0, 0, 0, 1, 107, 119, 7, 110, 111, 100, 101,
    95, 105, 100, 109, 0, 0, 0, 2, 110, 49, 119, 9, 112, 117, 98, 108, 105, 115, 104, 101, 114,
    109, 0, 0, 0, 32, 138, 136, 227, 221, 116, 9, 241, 149, 253, 82, 219, 45, 60, 186, 93, 114,
    202, 103, 9, 191, 29, 148, 18, 27, 243, 116, 136, 1, 180, 15, 111, 92, 119, 3, 115, 101, 113,
    110, 6, 0, 1, 80, 33, 192, 154, 1, 119, 3, 115, 105, 103, 109, 0, 0, 0, 64, 53, 197, 169, 12,
    155, 243, 212, 203, 137, 201, 38, 248, 38, 40, 125, 105, 36, 37, 9, 60, 255, 244, 63, 11, 10,
    242, 182, 223, 232, 35, 128, 57, 118, 74, 161, 38, 28, 50, 214, 142, 42, 171, 94, 63, 46, 217,
    31, 92, 66, 170, 20, 249, 0, 69, 242, 236, 23, 227, 204, 75, 180, 42, 109, 6, 119, 4, 116, 121,
    112, 101, 119, 6, 114, 101, 109, 111, 118, 101, 119, 1, 118, 97, 2,
];

/// `term_to_binary(#{v => 2, type => find_value_reply, result => value,
/// value => [Sealed(<<"k">>, P, 7, 3600)],
/// nodes => [#{node_id => binary:copy(<<7>>, 32), address => <<"127.0.0.1:4433">>}]},
/// [{minor_version, 2}])`.
const FIND_VALUE_HIT: &[u8] = &[
    131, 116, 0, 0, 0, 5, 119, 5, 110, 111, 100, 101, 115, 108, 0, 0, 0, 1, 116, 0, 0, 0, 2, 119,
    7, 97, 100, 100, 114, 101, 115, 115, 109, 0, 0, 0, 14, 49, 50, 55, 46, 48, 46, 48, 46, 49, 58,
    52, 52, 51, 51, 119, 7, 110, 111, 100, 101, 95, 105, 100, 109, 0, 0, 0, 32, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 106, 119, 6, 114,
    101, 115, 117, 108, 116, 119, 5, 118, 97, 108, 117, 101, 119, 4, 116, 121, 112, 101, 119, 16,
    102, 105, 110, 100, 95, 118, 97, 108, 117, 101, 95, 114, 101, 112, 108, 121, 119, 1, 118, 97,
    2, 119, 5, 118, 97, 108, 117, 101, 108, 0, 0, 0, 1, 116, 0, 0, 0, 5, 119, 9, 112, 117, 98, 108,
    105, 115, 104, 101, 114, 109, 0, 0, 0, 32, 138, 136, 227, 221, 116, 9, 241, 149, 253, 82, 219,
    45, 60, 186, 93, 114, 202, 103, 9, 191, 29, 148, 18, 27, 243, 116, 136, 1, 180, 15, 111, 92,
    119, 3, 115, 101, 113, 97, 7, 119, 3, 115, 105, 103, 109, 0, 0, 0, 64, 144, 211, 179, 157, 83,
    236, 140, 138, 137, 73, 51, 216, 186, 164, 41, 236, 194, 219, 207, 188, 83, 191, 67, 160, 133,
    119, 37, 187, 86, 124, 202, 87, 128, 135, 40, 128, 177, 41, 147, 169, 11, 217, 195, 51, 232,
    12, 133, 252, 181, 246, 28, 251, 161, 34, 161, 160, 6, 239, 209, 254, 215, 242, 154, 11, 119,
    3, 116, 116, 108, 98, 0, 0, 14, 16, 119, 5, 118, 97, 108, 117, 101, 116, 0, 0, 0, 2, 119, 7,
    110, 111, 100, 101, 95, 105, 100, 109, 0, 0, 0, 2, 110, 49, 119, 3, 116, 116, 108, 98, 0, 0, 1,
    44, 106,
];

/// `term_to_binary(#{v => 2, type => find_value_reply, result => nodes, nodes => []},
/// [{minor_version, 2}])`.
const FIND_VALUE_MISS: &[u8] = &[
    131, 116, 0, 0, 0, 4, 119, 5, 110, 111, 100, 101, 115, 106, 119, 6, 114, 101, 115, 117, 108,
    116, 119, 5, 110, 111, 100, 101, 115, 119, 4, 116, 121, 112, 101, 119, 16, 102, 105, 110, 100,
    95, 118, 97, 108, 117, 101, 95, 114, 101, 112, 108, 121, 119, 1, 118, 97, 2,
];

/// `term_to_binary(#{v => 2, type => error, reason => malformed}, [{minor_version, 2}])`.
const ERROR_MALFORMED: &[u8] = &[
    131, 116, 0, 0, 0, 3, 119, 6, 114, 101, 97, 115, 111, 110, 119, 9, 109, 97, 108, 102, 111, 114,
    109, 101, 100, 119, 4, 116, 121, 112, 101, 119, 5, 101, 114, 114, 111, 114, 119, 1, 118, 97, 2,
];

/// `term_to_binary(#{v => 2, type => error, reason => forged_signature}, [{minor_version, 2}])`.
const ERROR_FORGED: &[u8] = &[
    131, 116, 0, 0, 0, 3, 119, 6, 114, 101, 97, 115, 111, 110, 119, 16, 102, 111, 114, 103, 101,
    100, 95, 115, 105, 103, 110, 97, 116, 117, 114, 101, 119, 4, 116, 121, 112, 101, 119, 5, 101,
    114, 114, 111, 114, 119, 1, 118, 97, 2,
];

/// A version 1 frame: `term_to_binary(#{v => 1, type => store, key => <<"k">>,
/// value => #{node_id => <<"n1">>, ttl => 300}}, [{minor_version, 2}])`.
const V1_STORE: &[u8] = &[
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
    let p = provider(b"n1", 300);
    let hit = Response::Value {
        providers: vec![sealed(b"k", p.clone(), 7, 3600)],
        nodes: vec![node(7, "127.0.0.1:4433")],
    };
    let requests = [
        (Request::Ping, PING),
        (Request::FindNode { target }, FIND_NODE),
        (store(b"k", p, 1_764_160_000_000, 300), STORE),
        (remove(b"k", b"n1", 1_764_160_000_001), REMOVE),
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
        (
            Response::Error {
                reason: ErrorReason::Forged,
            },
            ERROR_FORGED,
        ),
    ];
    for (resp, golden) in responses {
        assert_eq!(resp.encode(), golden, "{resp:?}");
        assert_eq!(Response::decode(golden), Ok(resp));
    }
}

#[test]
fn decoded_seals_verify_and_the_decoder_leaves_checking_them_to_the_node() {
    let mut verifier = Verifier::new(0);
    let mut checked = 0;
    for req in sample_requests() {
        let frame = req.encode();
        let check = |verifier: &mut Verifier, req: &Request| match req {
            Request::Store { key, record } => {
                Some(verifier.check_seal(key, &record.term, None, &record.seal))
            }
            Request::Remove {
                key,
                node_id,
                removal,
            } => Some(verifier.check_removal(key, node_id, removal)),
            _ => None,
        };
        let decoded = Request::decode(&frame).unwrap();
        let Some(result) = check(&mut verifier, &decoded) else {
            continue;
        };
        assert_eq!(result, Ok(()), "{req:?}");
        // One bit of the signature flipped in the frame: still decodes, no longer verifies.
        let sig = match &req {
            Request::Store { record, .. } => record.seal.sig,
            Request::Remove { removal, .. } => removal.sig,
            _ => unreachable!(),
        };
        let at = frame.windows(64).position(|w| w == sig).unwrap();
        let mut forged = frame.clone();
        forged[at + 10] ^= 1;
        let decoded = Request::decode(&forged).unwrap();
        assert_ne!(decoded, req);
        assert_eq!(
            check(&mut verifier, &decoded),
            Some(Err(SealError::Forged)),
            "{req:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
    // The seals of a hit verify under the key that was looked up (all the samples' are "k").
    let mut providers_checked = 0;
    for resp in sample_responses() {
        let Ok(Response::Value { providers, .. }) = Response::decode(&resp.encode()) else {
            continue;
        };
        for p in &providers {
            assert_eq!(verifier.check_seal(b"k", &p.term, None, &p.seal), Ok(()));
            assert_eq!(
                verifier.check_seal(b"K", &p.term, None, &p.seal),
                Err(SealError::Forged)
            );
            providers_checked += 1;
        }
    }
    assert_eq!(providers_checked, 3);
}

#[test]
fn any_atom_tag_and_any_key_order_are_accepted() {
    let target = [3u8; 32];
    let record = sealed(b"k", provider(b"n1", 300), 1 << 40, 60);
    for tag in [100, 115, 118, 119] {
        let a = |name: &str| atom_as(tag, name);
        let fields = [
            (a("v"), v()),
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
        // A store: its seal fields in reverse order, spelled with this tag.
        let mut store: Vec<_> = store_fields(b"k", &record)
            .into_iter()
            .map(|(name, value)| (a(name), value))
            .collect();
        store.reverse();
        assert_eq!(
            Request::decode(&frame(&map(&store))),
            Ok(Request::Store {
                key: b"k".to_vec(),
                record: record.clone()
            }),
            "tag {tag}"
        );
        let node = map(&[
            (a("address"), bin(b"10.0.0.1:1")),
            (a("node_id"), bin(&target)),
        ]);
        let mut sealed: Vec<_> = sealed_fields(&record)
            .into_iter()
            .map(|(name, value)| (a(name), value))
            .collect();
        sealed.rotate_left(2);
        let reply = frame(&map(&[
            (a("type"), a("find_value_reply")),
            (a("value"), list(&[map(&sealed)])),
            (a("nodes"), list(&[node])),
            (a("result"), a("value")),
            (a("v"), v()),
        ]));
        assert_eq!(
            Response::decode(&reply),
            Ok(Response::Value {
                providers: vec![record.clone()],
                nodes: vec![NodeInfo {
                    id: NodeId(target),
                    addr: "10.0.0.1:1".parse().unwrap()
                }]
            }),
            "tag {tag}"
        );
    }
}

#[test]
fn unknown_keys_are_ignored() {
    let extra = [
        (atom("trace"), bin(b"abc")),
        (bin(b"type"), atom("store")),
        (bin(b"sig"), bin(b"short")),
        (vec![104, 2, 97, 1, 97, 2], list(&[int(1), int(2)])),
        (int(5), vec![116, 0, 0, 0, 0]),
    ];
    let mut fields = vec![
        (atom("v"), v()),
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
    let ping = msg(&[
        ("v", v()),
        ("type", atom("ping")),
        ("key", int(3)),
        ("publisher", bin(b"")),
        ("seq", int(1)),
    ]);
    assert_eq!(Request::decode(&ping), Ok(Request::Ping));
    // A `remove` has no ttl: one is ignored, whatever it is.
    let removal = keypair(1).removal(b"k", b"n1", 9);
    let remove_with_ttl = with(&remove_fields(b"k", b"n1", &removal), "ttl", atom("x"));
    assert_eq!(
        Request::decode(&msg(&remove_with_ttl)),
        Ok(Request::Remove {
            key: b"k".to_vec(),
            node_id: b"n1".to_vec(),
            removal
        })
    );
    // And in node infos.
    let mut node = vec![
        (atom("node_id"), bin(&[1; 32])),
        (atom("address"), bin(b"[::1]:5")),
        (atom("endpoint"), bin(b"https://h:9443")),
        (atom("last_seen"), vec![110, 6, 0, 0, 0, 0, 0, 0, 1]),
    ];
    node.extend(extra.iter().cloned());
    let reply = msg(&[
        ("v", v()),
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
    // And in sealed providers.
    let record = sealed(b"k", provider(b"n1", 300), 3, 4);
    let mut sealed: Vec<_> = sealed_fields(&record)
        .into_iter()
        .map(|(name, value)| (atom(name), value))
        .collect();
    sealed.extend(extra.iter().cloned());
    sealed.push((atom("node_id"), bin(b"other")));
    let reply = msg(&[
        ("v", v()),
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        ("value", list(&[map(&sealed)])),
    ]);
    assert_eq!(
        Response::decode(&reply),
        Ok(Response::Value {
            providers: vec![record],
            nodes: vec![]
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
    assert_eq!(Request::decode(&frame_v(int(2))), Ok(Request::Ping));
    assert_eq!(
        Response::decode(&msg(&[("v", int(2)), ("type", atom("pong"))])),
        Ok(Response::Pong)
    );
    for n in [0, 1, 3, 255, 70_000, i32::MAX as u32, u32::MAX] {
        assert_eq!(
            Request::decode(&frame_v(int(n))),
            Err(WireError::UnsupportedVersion(n)),
            "{n}"
        );
        assert_eq!(
            Response::decode(&frame_v(int(n))),
            Err(WireError::UnsupportedVersion(n)),
            "{n}"
        );
    }
    // A newer version is reported as such whatever its shape.
    let v3 = msg(&[("v", int(3)), ("type", atom("some_future_type"))]);
    assert_eq!(Request::decode(&v3), Err(WireError::UnsupportedVersion(3)));
    for bad in [
        vec![98, 255, 255, 255, 255],
        uint(u64::from(u32::MAX) + 1),
        vec![110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        bin(b"2"),
        atom("v2"),
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
fn version_1_frames_are_refused() {
    let v1 = |fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("v", int(1))];
        all.extend(fields.iter().cloned());
        msg(&all)
    };
    // A v1 store, as OTP wrote it for the old protocol: no seal.
    assert_eq!(
        Request::decode(V1_STORE),
        Err(WireError::UnsupportedVersion(1))
    );
    let find_value = v1(&[("type", atom("find_value")), ("key", bin(b"k"))]);
    assert_eq!(
        Request::decode(&find_value),
        Err(WireError::UnsupportedVersion(1))
    );
    let remove = v1(&[
        ("type", atom("remove")),
        ("key", bin(b"k")),
        ("node_id", bin(b"n1")),
    ]);
    assert_eq!(
        Request::decode(&remove),
        Err(WireError::UnsupportedVersion(1))
    );
    // A v2 body under `v => 1` (a valid seal included) is not read as version 2 either.
    let record = sealed(b"k", provider(b"n1", 300), 1, 60);
    let relabelled = with(&store_fields(b"k", &record), "v", int(1));
    assert_eq!(
        Request::decode(&msg(&relabelled)),
        Err(WireError::UnsupportedVersion(1))
    );
    assert_eq!(
        Request::decode(&msg(&store_fields(b"k", &record))),
        Ok(Request::Store {
            key: b"k".to_vec(),
            record
        })
    );
    // v1 replies: a hit with bare providers, a pong.
    let hit = v1(&[
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        ("value", list(&[provider(b"n1", 300)])),
    ]);
    assert_eq!(
        Response::decode(&hit),
        Err(WireError::UnsupportedVersion(1))
    );
    assert_eq!(
        Response::decode(&v1(&[("type", atom("pong"))])),
        Err(WireError::UnsupportedVersion(1))
    );
    // The answer to a v1 request: a v2 `unsupported_version` error.
    let answer = Response::from(&WireError::UnsupportedVersion(1));
    assert_eq!(
        answer,
        Response::Error {
            reason: ErrorReason::UnsupportedVersion
        }
    );
    assert_eq!(
        answer.encode(),
        msg(&[
            ("reason", atom("unsupported_version")),
            ("type", atom("error")),
            ("v", int(2)),
        ])
    );
}

#[test]
fn types_must_be_known_atoms() {
    let with_type = |t: Vec<u8>| msg(&[("v", v()), ("type", t)]);
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
        Response::decode(&msg(&store_fields(
            b"k",
            &sealed(b"k", provider(b"n", 1), 1, 1)
        ))),
        Err(WireError::UnknownType)
    );
    assert_eq!(
        Request::decode(&with_type(bin(b"ping"))),
        Err(WireError::Malformed("type"))
    );
    assert_eq!(
        Request::decode(&msg(&[("v", v())])),
        Err(WireError::Malformed("type"))
    );
}

#[test]
fn missing_and_ill_typed_fields_are_malformed() {
    let req = |t: &str, fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("v", v()), ("type", atom(t))];
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
    // The old v1 shapes under `v => 2`: a store or a remove without a seal.
    let record = sealed(b"k", provider(b"n", 1), 1, 1);
    let unsealed = [("key", bin(b"k")), ("value", record.term.clone())];
    assert!(matches!(
        req("store", &unsealed),
        Err(WireError::Malformed("ttl" | "publisher" | "seq" | "sig"))
    ));
    assert!(matches!(
        req("remove", &[("key", bin(b"k")), ("node_id", bin(b"n"))]),
        Err(WireError::Malformed("publisher" | "seq" | "sig"))
    ));

    let resp = |fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("v", v())];
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
    assert_eq!(
        resp(&[
            ("type", fv.clone()),
            ("result", atom("value")),
            ("value", atom_map(&sealed_fields(&record)))
        ]),
        malformed("value")
    );
    // A hit without `nodes` has none.
    assert_eq!(
        resp(&[
            ("type", fv.clone()),
            ("result", atom("value")),
            ("value", list(&[atom_map(&sealed_fields(&record))]))
        ]),
        Ok(Response::Value {
            providers: vec![record],
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
    // A v2 reason spelled as a binary, or misspelled, is not one.
    assert_eq!(
        resp(&[
            ("type", atom("error")),
            ("reason", bin(b"forged_signature"))
        ]),
        malformed("reason")
    );
    assert_eq!(
        resp(&[("type", atom("error")), ("reason", atom("forged"))]),
        malformed("reason")
    );
}

/// Values no seal field may take, each with the fields it is tried in.
fn bad_seal_values() -> Vec<(&'static str, Vec<u8>)> {
    let mut bad = vec![
        ("publisher", bin(&[])),
        ("publisher", bin(&[1; 31])),
        ("publisher", bin(&[1; 33])),
        ("publisher", bin(&[1; 64])),
        ("publisher", atom("me")),
        ("publisher", list(&[int(1)])),
        ("sig", bin(&[])),
        ("sig", bin(&[1; 32])),
        ("sig", bin(&[1; 63])),
        ("sig", bin(&[1; 65])),
        ("sig", int(0)),
        ("sig", vec![107, 0, 2, 1, 2]),
    ];
    let integers = [
        // -1 as INTEGER_EXT and as SMALL_BIG, and the most negative INTEGER_EXT.
        vec![98, 255, 255, 255, 255],
        small_big(true, &[1]),
        vec![98, 128, 0, 0, 0],
        // -(2^64 - 1).
        small_big(true, &[255; 8]),
        // A float, a binary, an atom, a tuple.
        [&[70][..], &1.0f64.to_be_bytes()].concat(),
        bin(b"1"),
        atom("infinity"),
        vec![104, 1, 97, 1],
        // LARGE_BIG_EXT of a small value: Erlang never writes it, and it is not read.
        vec![111, 0, 0, 0, 1, 0, 1],
    ];
    for name in ["seq", "ttl"] {
        bad.extend(integers.iter().map(|v| (name, v.clone())));
        // 2^64 (nine magnitude bytes), and 2^64 with high zero bytes (more than 8 bytes).
        bad.push((name, small_big(false, &[0, 0, 0, 0, 0, 0, 0, 0, 1])));
        bad.push((name, small_big(false, &[1, 0, 0, 0, 0, 0, 0, 0, 0])));
        bad.push((name, small_big(false, &[255; 255])));
    }
    // A ttl past u32::MAX.
    bad.push(("ttl", uint(u64::from(u32::MAX) + 1)));
    bad.push(("ttl", uint(1 << 40)));
    bad.push(("ttl", uint(u64::MAX)));
    bad
}

#[test]
fn seal_fields_are_checked() {
    let key = b"k";
    let record = sealed(key, provider(b"n1", 300), 5, 60);
    let store = store_fields(key, &record);
    let removal = keypair(1).removal(key, b"n1", 6);
    let remove = remove_fields(key, b"n1", &removal);
    let hit = |sealed: &[(&'static str, Vec<u8>)]| {
        msg(&[
            ("v", v()),
            ("type", atom("find_value_reply")),
            ("result", atom("value")),
            (
                "value",
                list(&[atom_map(&sealed_fields(&record)), atom_map(sealed)]),
            ),
        ])
    };
    let sealed = sealed_fields(&record);
    assert_eq!(
        Request::decode(&msg(&store)),
        Ok(Request::Store {
            key: key.to_vec(),
            record: record.clone()
        })
    );
    assert_eq!(
        Request::decode(&msg(&remove)),
        Ok(Request::Remove {
            key: key.to_vec(),
            node_id: b"n1".to_vec(),
            removal: removal.clone()
        })
    );
    assert_eq!(
        Response::decode(&hit(&sealed)),
        Ok(Response::Value {
            providers: vec![record.clone(), record.clone()],
            nodes: vec![]
        })
    );
    for name in ["publisher", "seq", "ttl", "sig"] {
        assert_eq!(
            Request::decode(&msg(&without(&store, name))),
            malformed(name),
            "store without {name}"
        );
        assert_eq!(
            Response::decode(&hit(&without(&sealed, name))),
            malformed(name),
            "sealed provider without {name}"
        );
        if name != "ttl" {
            assert_eq!(
                Request::decode(&msg(&without(&remove, name))),
                malformed(name),
                "remove without {name}"
            );
        }
    }
    for (name, value) in bad_seal_values() {
        assert_eq!(
            Request::decode(&msg(&with(&store, name, value.clone()))),
            malformed(name),
            "store with {name} = {value:?}"
        );
        assert_eq!(
            Response::decode(&hit(&with(&sealed, name, value.clone()))),
            malformed(name),
            "sealed provider with {name} = {value:?}"
        );
        if name != "ttl" {
            assert_eq!(
                Request::decode(&msg(&with(&remove, name, value.clone()))),
                malformed(name),
                "remove with {name} = {value:?}"
            );
        }
    }
    // The bounds themselves are accepted, in whatever integer encoding.
    let seals = [
        (uint(0), int(0), 0, 0),
        (uint(u64::MAX), int(u32::MAX), u64::MAX, u32::MAX),
        (
            small_big(false, &[255; 8]),
            small_big(false, &[255; 4]),
            u64::MAX,
            u32::MAX,
        ),
        // Not how Erlang writes them (SMALL_BIG of small values, high zero bytes), same values.
        (small_big(false, &[7, 0, 0]), small_big(false, &[9]), 7, 9),
        (vec![98, 0, 0, 0, 7], vec![98, 0, 0, 0, 9], 7, 9),
    ];
    for (seq, ttl, seq_n, ttl_n) in seals {
        let fields = with(&with(&store, "seq", seq.clone()), "ttl", ttl);
        let Ok(Request::Store { record: got, .. }) = Request::decode(&msg(&fields)) else {
            panic!("seq {seq:?}")
        };
        assert_eq!((got.seal.seq, got.seal.ttl_secs), (seq_n, ttl_n));
        assert_eq!(
            (got.seal.publisher, got.seal.sig),
            (record.seal.publisher, record.seal.sig)
        );
        let Ok(Request::Remove { removal: got, .. }) =
            Request::decode(&msg(&with(&remove, "seq", seq.clone())))
        else {
            panic!("seq {seq:?}")
        };
        assert_eq!(got.seq, seq_n);
    }
}

#[test]
fn sealed_providers_are_maps_with_a_value() {
    let record = sealed(b"k", provider(b"n1", 300), 5, 60);
    let good = atom_map(&sealed_fields(&record));
    assert_eq!(
        hit(vec![good.clone()]),
        Ok(Response::Value {
            providers: vec![record.clone()],
            nodes: vec![]
        })
    );
    for not_a_map in [
        int(3),
        bin(b"sealed"),
        list(std::slice::from_ref(&good)),
        [&[104, 2][..], &atom("value"), &record.term].concat(),
        atom("value"),
    ] {
        assert_eq!(
            hit(vec![good.clone(), not_a_map.clone()]),
            malformed("sealed provider"),
            "{not_a_map:?}"
        );
    }
    // A v1 provider, unsealed, where a sealed one should be: it has no `value`.
    assert_eq!(hit(vec![provider(b"n1", 300)]), malformed("value"));
    assert_eq!(
        hit(vec![atom_map(&without(&sealed_fields(&record), "value"))]),
        malformed("value")
    );
    // `value` must be an atom key.
    let binary_value = map(&[
        (bin(b"value"), record.term.clone()),
        (atom("publisher"), bin(&record.seal.publisher)),
        (atom("seq"), int(5)),
        (atom("ttl"), int(60)),
        (atom("sig"), bin(&record.seal.sig)),
    ]);
    assert_eq!(hit(vec![binary_value]), malformed("value"));
    assert_eq!(hit(vec![vec![116, 0, 0, 0, 0]]), malformed("value"));
    // Twice the same field.
    let mut twice = sealed_fields(&record);
    twice.push(("sig", bin(&record.seal.sig)));
    assert_eq!(hit(vec![atom_map(&twice)]), malformed("duplicate key"));
}

#[test]
fn node_infos_are_checked() {
    let reply = |node: Vec<u8>| {
        Response::decode(&msg(&[
            ("v", v()),
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
        ("v", v()),
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
        (atom("v"), v()),
        (atom_as(100, "type"), atom("ping")),
        (atom_as(115, "type"), atom("ping")),
    ]);
    assert_eq!(
        Request::decode(&frame),
        Err(WireError::Malformed("duplicate key"))
    );
    // A seal field twice, even with the same value.
    let record = sealed(b"k", provider(b"n", 1), 1, 1);
    for name in ["publisher", "seq", "ttl", "sig"] {
        let mut fields = store_fields(b"k", &record);
        let again = fields.iter().find(|(n, _)| *n == name).unwrap().clone();
        fields.push(again);
        assert_eq!(
            Request::decode(&msg(&fields)),
            Err(WireError::Malformed("duplicate key")),
            "{name}"
        );
    }
}

fn frame_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    frame(&map(fields))
}

#[test]
fn providers_are_validated() {
    let record = sealed(b"k", provider(b"n", 1), 1, 1);
    let store =
        |value: Vec<u8>| Request::decode(&msg(&with(&store_fields(b"k", &record), "value", value)));
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
    // The decoder does not check the seal: a provider it does not cover is read (the node
    // refuses it).
    let empty = vec![116, 0, 0, 0, 0];
    assert_eq!(
        store(empty.clone()),
        Ok(Request::Store {
            key: b"k".to_vec(),
            record: SealedRecord {
                term: empty,
                seal: record.seal
            }
        })
    );
    let with_value = |value: Vec<u8>| atom_map(&with(&sealed_fields(&record), "value", value));
    assert_eq!(
        hit(vec![with_value(provider(b"a", 1)), with_value(int(3))]),
        Err(WireError::InvalidProvider(ProviderError::NotAMap))
    );
    assert_eq!(
        hit(vec![with_value(map(&[(atom("ttl"), int(0))]))]),
        Err(WireError::InvalidProvider(ProviderError::InvalidTtl))
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
    let long_key = vec![1; MAX_KEY_BYTES + 1];
    assert_eq!(
        Request::decode(&store(&long_key, provider(b"n", 1), 1, 1).encode()),
        Err(WireError::Limit {
            what: "key",
            max: MAX_KEY_BYTES
        })
    );
    assert_eq!(
        Request::decode(&remove(&long_key, b"n", 1).encode()),
        Err(WireError::Limit {
            what: "key",
            max: MAX_KEY_BYTES
        })
    );
    let at_limit = remove(b"k", &[1; 255], 1);
    assert_eq!(Request::decode(&at_limit.encode()), Ok(at_limit));
    assert_eq!(
        Request::decode(&remove(b"k", &[1; 256], 1).encode()),
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
    let one = sealed(b"k", provider(b"p", 1), 1, 1);
    let hit = |n: usize| Response::Value {
        providers: vec![one.clone(); n],
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

/// Bytes `record` adds to a `find_value_reply` beyond the list header.
fn size_in_reply(record: &SealedRecord) -> usize {
    let frame = |providers| {
        Response::Value {
            providers,
            nodes: vec![],
        }
        .encode()
        .len()
    };
    // The empty list is NIL (1 byte); a list of one is a 5-byte header, the element and NIL.
    frame(vec![record.clone()]) - frame(vec![]) - 5
}

#[test]
fn value_fitting_stays_within_the_caps() {
    let nodes: Vec<_> = (0..100).map(|i| node(i, "[::1]:1")).collect();
    // Many small providers: the count cap binds.
    let small = sealed(b"k", provider(b"p", 1), 1, 1);
    let reply = Response::value_fitting(std::iter::repeat_n(small, 5000), nodes.clone());
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
    let big = sealed(b"k", map(&[(atom("blob"), bin(&[0; 60_000]))]), 2, 2);
    let each = size_in_reply(&big);
    assert!(each > 60_000 + 64 + 32);
    let reply = Response::value_fitting(std::iter::repeat_n(big, 100), nodes);
    let Response::Value { providers, .. } = &reply else {
        panic!("{reply:?}")
    };
    let frame = reply.encode();
    assert!(frame.len() <= MAX_FRAME_BYTES);
    assert!(frame.len() + each > MAX_FRAME_BYTES);
    assert_eq!(providers.len(), MAX_FRAME_BYTES / each);
    assert_eq!(Response::decode(&frame).as_ref(), Ok(&reply));
    // Exactly at the cap: one provider padded so the frame is MAX_FRAME_BYTES long; one byte
    // more and it does not fit.
    let padded = |len: usize| sealed(b"k", map(&[(atom("b"), bin(&vec![0; len]))]), 3, 3);
    let unpadded = Response::value_fitting([padded(0)], vec![]).encode().len();
    let fill = MAX_FRAME_BYTES - unpadded;
    let reply = Response::value_fitting([padded(fill)], vec![]);
    assert_eq!(reply.encode().len(), MAX_FRAME_BYTES);
    assert!(Response::decode(&reply.encode()).is_ok());
    let reply = Response::value_fitting([padded(fill + 1), padded(0)], vec![]);
    assert_eq!(
        reply,
        Response::Value {
            providers: vec![],
            nodes: vec![]
        },
        "stops at the first provider that does not fit"
    );
}

#[test]
fn errors_map_to_reasons() {
    let cases = [
        (WireError::TooLarge(1), ErrorReason::TooLarge),
        (WireError::Etf(EtfError::Truncated), ErrorReason::Malformed),
        (WireError::Malformed("x"), ErrorReason::Malformed),
        (
            WireError::UnsupportedVersion(1),
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
    assert_eq!(ErrorReason::from_name(b"nope"), None);
}

#[test]
fn every_error_reason_has_its_wire_name_and_round_trips() {
    let names: Vec<_> = ErrorReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        [
            "unknown_message",
            "unsupported_version",
            "malformed",
            "too_large",
            "invalid_provider",
            "limit",
            "internal",
            "forged_signature",
            "wrong_publisher",
            "stale_sequence",
            "removed",
            "over_quota",
            "rate_limited",
        ]
    );
    for reason in ErrorReason::ALL {
        let name = reason.name();
        assert_eq!(ErrorReason::from_name(name.as_bytes()), Some(reason));
        let reply = Response::Error { reason };
        assert_eq!(
            reply.encode(),
            msg(&[
                ("reason", atom(name)),
                ("type", atom("error")),
                ("v", int(2))
            ]),
            "{name}"
        );
        assert_eq!(
            Response::decode(&reply.encode()),
            Ok(reply.clone()),
            "{name}"
        );
        // As Erlang's default options write it (ATOM_EXT).
        let old_atoms = frame(&map(&[
            (atom_as(100, "reason"), atom_as(100, name)),
            (atom_as(100, "type"), atom_as(100, "error")),
            (atom_as(100, "v"), v()),
        ]));
        assert_eq!(Response::decode(&old_atoms), Ok(reply.clone()), "{name}");
        // Not a request, and not a reason with a letter more or less.
        assert_eq!(
            Request::decode(&reply.encode()),
            Err(WireError::UnknownType)
        );
        for near in [&name[1..], &format!("{name}s")] {
            let frame = msg(&[("v", v()), ("type", atom("error")), ("reason", atom(near))]);
            assert_eq!(Response::decode(&frame), malformed("reason"), "{near}");
        }
    }
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
    // term_to_binary writes atom keys sorted by name; so must we (for byte-exact output): in
    // the message, its sealed providers and its node infos.
    let mut maps = 0;
    for frame in sample_frames() {
        let term = &frame[1..];
        for at in message_maps(term) {
            let keys = atom_keys(term, at);
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            maps += 1;
        }
    }
    assert!(maps > sample_frames().len() + 10, "{maps}");
}

/// Offsets of the message map at 0 and of the maps in its `value` and `nodes` lists.
fn message_maps(term: &[u8]) -> Vec<usize> {
    use macula_dht::etf::{map_fields, scalar, skip_term, Scalar};
    let mut maps = vec![0];
    for field in map_fields(term, 0).unwrap() {
        let (key, value) = field.unwrap();
        let Ok(Scalar::Atom(b"value" | b"nodes")) = scalar(term, key) else {
            continue;
        };
        if term[value] != 108 {
            continue;
        }
        let len = u32::from_be_bytes(term[value + 1..value + 5].try_into().unwrap());
        let mut at = value + 5;
        for _ in 0..len {
            maps.push(at);
            at = skip_term(term, at).unwrap();
        }
    }
    maps
}

/// The names of the atom keys of the map at `at`, in order.
fn atom_keys(term: &[u8], at: usize) -> Vec<Vec<u8>> {
    use macula_dht::etf::{map_fields, scalar, Scalar};
    map_fields(term, at)
        .unwrap()
        .map(|f| match scalar(term, f.unwrap().0).unwrap() {
            Scalar::Atom(name) => name.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn fuzz_seeds_are_valid_frames() {
    use std::collections::BTreeSet;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    // The seeds' sealed records are all under this key.
    let key = NodeId::normalize(b"svc").0;
    let mut verifier = Verifier::new(0);
    let mut types = BTreeSet::new();
    let mut seals = 0;
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seen += 1;
        if name.starts_with("provider") {
            assert!(macula_dht::ProviderRecord::parse(&bytes).is_ok(), "{name}");
            continue;
        }
        let mut check = |term: &[u8], seal| {
            assert_eq!(
                verifier.check_seal(&key, term, None, seal),
                Ok(()),
                "{name}"
            );
            seals += 1;
        };
        if let Ok(req) = Request::decode(&bytes) {
            match &req {
                Request::Store { key: k, record } => {
                    assert_eq!(k, &key, "{name}");
                    check(&record.term, &record.seal);
                }
                Request::Remove {
                    key: k,
                    node_id,
                    removal,
                } => {
                    assert_eq!(k, &key, "{name}");
                    assert_eq!(
                        verifier.check_removal(k, node_id, removal),
                        Ok(()),
                        "{name}"
                    );
                    seals += 1;
                }
                _ => {}
            }
            types.insert(req.type_name().to_string());
        } else {
            let resp = Response::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            if let Response::Value { providers, .. } = &resp {
                assert!(!providers.is_empty(), "{name}");
                for p in providers {
                    check(&p.term, &p.seal);
                }
                types.insert("find_value_reply (value)".to_string());
            } else {
                types.insert(resp.type_name().to_string());
            }
        }
    }
    let expected = [
        "error",
        "find_node",
        "find_node_reply",
        "find_value",
        "find_value_reply",
        "find_value_reply (value)",
        "ping",
        "pong",
        "remove",
        "remove_reply",
        "store",
        "store_reply",
    ];
    assert_eq!(types.into_iter().collect::<Vec<_>>(), expected);
    assert!(seals >= 10, "only {seals} seals");
    assert!(seen >= 20, "only {seen} seeds");
}

/// A hit holding `providers` (sealed provider maps as built by the test).
fn hit(providers: Vec<Vec<u8>>) -> Result<Response, WireError> {
    Response::decode(&msg(&[
        ("v", v()),
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        ("value", list(&providers)),
    ]))
}
