//! Interop with a real Erlang VM (`erl` on PATH; skipped with a note when it is not):
//!
//! - what `term_to_binary` makes for every message shape (default options, which on OTP 25 write
//!   `ATOM_EXT` atoms, and `[{minor_version, 2}]`) decodes to the expected Rust value;
//! - what we encode reads back in Erlang with `binary_to_term(B, [safe])` as exactly (`=:=`) the
//!   expected term.
//!
//! Decoded values are compared, never frame bytes. The one place bytes are compared is a
//! provider: the decoder keeps providers as raw term bytes, so the bytes it sliced out of an
//! Erlang frame must be the provider's own `term_to_binary` (less the version byte); they are
//! also parsed with `ProviderRecord::parse`. Frames go to `erl` as hex on its command line.
//!
//! Seals are made on both sides, with the same keys: Erlang signs with `crypto:sign(eddsa, ...)`
//! over the signed bytes it lays out itself, `macula_dht` with `seal::Keypair`; Ed25519
//! signatures are deterministic, so equal values mean both sign the same bytes.

mod wire_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macula_dht::etf::EtfError;
use macula_dht::seal::Seal;
use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response, WireError};
use macula_dht::{NodeId, ProviderRecord};
use wire_support::*;

/// Runs `code` (a sequence of Erlang expressions, without the final `halt()`) in a fresh VM and
/// returns its standard output; `None` when `erl` is not installed.
fn erl(code: &str) -> Option<String> {
    let eval = format!(
        "try {code} catch Class:Reason:Stack -> io:format(\"crash ~p~n\", [{{Class, Reason, Stack}}]) end, halt()."
    );
    let mut child = match Command::new("erl")
        .args(["-noshell", "-eval", &eval])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: `erl` not found on PATH: Erlang interop test skipped");
            return None;
        }
        Err(e) => panic!("cannot run erl: {e}"),
    };
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "erl exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("erl did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = reader.join().unwrap();
    assert!(!out.contains("crash"), "erl crashed:\n{out}");
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Erlang variables every snippet may use. `Sealed(Seed, K, P, Seq, Ttl, O)` is the sealed
/// provider map (`#{value, publisher, seq, ttl, sig}`) of `P` under `K`, signed by the key of
/// seed `binary:copy(<<Seed>>, 32)` over `P`'s `term_to_binary(P, O)` (less the version byte),
/// as `macula_dht::seal` lays the signed bytes out; `Removal(Seed, K, NodeId, Seq)` is the
/// `#{publisher, seq, sig}` of a removal. Both sign with Erlang's own `crypto`, so a match with
/// what `macula_dht` signs shows both sides sign the same bytes.
const PRELUDE: &str = r#"
    Id = list_to_binary(lists:seq(0, 31)),
    N7 = binary:copy(<<7>>, 32),
    N8 = binary:copy(<<8>>, 32),
    P1 = #{node_id => <<"n1">>, endpoint => <<"https://h:9443">>, ttl => 300,
           advertised_at => 1764160000, metadata => #{region => <<"eu">>, tags => [a, <<"b">>, 3]}},
    P2 = #{<<"node_id">> => <<"n2">>, <<"ttl">> => 60, last_seen => 1764160000000},
    P3 = #{node_id => <<"n3">>},
    Keys = fun(KSeed) -> crypto:generate_key(eddsa, ed25519, binary:copy(<<KSeed>>, 32)) end,
    Pub1 = element(1, Keys(1)),
    Sealed = fun(SSeed, SK, SP, SSeq, STtl, SO) ->
        {SPub, SPriv} = Keys(SSeed),
        <<131, SPB/binary>> = term_to_binary(SP, SO),
        SMsg = <<"macula-dht/2 provider", 0, (byte_size(SK)):32, SK/binary, SPub/binary,
                 SSeq:64, STtl:32, (byte_size(SPB)):32, SPB/binary>>,
        #{value => SP, publisher => SPub, seq => SSeq, ttl => STtl,
          sig => crypto:sign(eddsa, none, SMsg, [SPriv, ed25519])}
    end,
    Removal = fun(RSeed, RK, RId, RSeq) ->
        {RPub, RPriv} = Keys(RSeed),
        RMsg = <<"macula-dht/2 remove", 0, (byte_size(RK)):32, RK/binary, RPub/binary, RSeq:64,
                 (byte_size(RId)):32, RId/binary>>,
        #{publisher => RPub, seq => RSeq, sig => crypto:sign(eddsa, none, RMsg, [RPriv, ed25519])}
    end,
"#;

/// The value a frame should decode to, given the raw provider terms Erlang made for it.
enum Expect {
    Req(Result<Request, WireError>),
    Resp(Result<Response, WireError>),
}

/// Builds the expected value from the providers' raw terms.
type ExpectFn = dyn Fn(&[Vec<u8>]) -> Expect;

struct FromErlang {
    name: String,
    /// An Erlang expression of the message term; it may use `O`, the `term_to_binary` options
    /// the frame is made with (seals sign the provider's bytes as written with them).
    term: String,
    /// Erlang expressions of the providers inside, in order.
    providers: &'static [&'static str],
    /// `term_to_binary` option lists to try.
    options: &'static [&'static str],
    expect: Box<ExpectFn>,
}

const BOTH: &[&str] = &["[]", "[{minor_version, 2}]"];

fn case(
    name: &str,
    term: &str,
    providers: &'static [&'static str],
    expect: impl Fn(&[Vec<u8>]) -> Expect + 'static,
) -> FromErlang {
    FromErlang {
        name: name.to_string(),
        term: term.to_string(),
        providers,
        options: BOTH,
        expect: Box::new(expect),
    }
}

fn v4(byte: u8) -> NodeInfo {
    node(byte, "10.1.2.3:4433")
}

fn v6(byte: u8) -> NodeInfo {
    node(byte, "[2001:db8::1]:9443")
}

/// A sequence number as publishers make them: milliseconds since the epoch.
const SEQ: u64 = 1_764_160_000_000;

fn from_erlang_cases() -> Vec<FromErlang> {
    use Expect::{Req, Resp};
    let id = NodeId(std::array::from_fn(|i| i as u8));
    let nodes_term = r#"[#{node_id => N7, address => <<"10.1.2.3:4433">>, last_seen => 1764160000000},
                         #{node_id => N8, address => <<"[2001:db8::1]:9443">>, endpoint => <<"https://x">>}]"#;
    let store = |key: &str, rest: &str| {
        format!("maps:merge(#{{v => 2, type => store, key => {key}}}, {rest})")
    };
    let mut cases = vec![
        case("ping", "#{v => 2, type => ping}", &[], |_| Req(Ok(Request::Ping))),
        case(
            "find_node",
            "#{v => 2, type => find_node, target => Id}",
            &[],
            move |_| Req(Ok(Request::FindNode { target: id })),
        ),
        case(
            "find_value",
            "#{v => 2, type => find_value, key => crypto:hash(sha256, <<\"svc\">>)}",
            &[],
            |_| {
                Req(Ok(Request::FindValue {
                    key: NodeId::normalize(b"svc").0.to_vec(),
                }))
            },
        ),
        case(
            "store",
            &store(
                "<<\"k\">>",
                "Sealed(1, <<\"k\">>, P1, 1764160000000, 300, O)",
            ),
            &["P1"],
            |p| Req(Ok(wire_support::store(b"k", p[0].clone(), SEQ, 300))),
        ),
        case(
            "store_binary_keys_largest_seal",
            &store(
                "<<>>",
                "Sealed(2, <<>>, P2, 18446744073709551615, 4294967295, O)",
            ),
            &["P2"],
            |p| {
                Req(Ok(Request::Store {
                    key: vec![],
                    record: sealed_by(2, b"", p[0].clone(), u64::MAX, u32::MAX),
                }))
            },
        ),
        case(
            "store_smallest_seal",
            &store("<<\"k\">>", "Sealed(1, <<\"k\">>, P3, 0, 0, O)"),
            &["P3"],
            |p| Req(Ok(wire_support::store(b"k", p[0].clone(), 0, 0))),
        ),
        case(
            "remove",
            "maps:merge(#{v => 2, type => remove, key => <<\"k\">>, node_id => <<\"n1\">>}, \
             Removal(1, <<\"k\">>, <<\"n1\">>, 1764160000001))",
            &[],
            |_| Req(Ok(remove(b"k", b"n1", SEQ + 1))),
        ),
        case(
            "remove_own_node_id",
            "maps:merge(#{v => 2, type => remove, key => <<>>, node_id => crypto:hash(sha256, Pub1)}, \
             Removal(1, <<>>, crypto:hash(sha256, Pub1), 0))",
            &[],
            |_| Req(Ok(remove(b"", &keypair(1).node_id().0, 0))),
        ),
        case(
            "request_extra_keys",
            "#{v => 2, type => ping, trace => {1, self()}, <<\"type\">> => <<\"store\">>, 7 => []}",
            &[],
            |_| Req(Ok(Request::Ping)),
        ),
        case("pong", "#{v => 2, type => pong}", &[], |_| Resp(Ok(Response::Pong))),
        case(
            "find_node_reply",
            &format!("#{{v => 2, type => find_node_reply, nodes => {nodes_term}}}"),
            &[],
            |_| {
                Resp(Ok(Response::Nodes {
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "find_node_reply_empty",
            "#{v => 2, type => find_node_reply, nodes => []}",
            &[],
            |_| Resp(Ok(Response::Nodes { nodes: vec![] })),
        ),
        case(
            "find_value_hit",
            &format!(
                "#{{v => 2, type => find_value_reply, result => value, \
                   value => [Sealed(1, <<\"k\">>, P1, 1764160000000, 300, O), \
                             Sealed(2, <<\"k\">>, P2, 7, 3600, O), \
                             maps:put(extra, [x], Sealed(1, <<\"k\">>, P3, 18446744073709551615, 0, O))], \
                   nodes => {nodes_term}}}"
            ),
            &["P1", "P2", "P3"],
            |p| {
                Resp(Ok(Response::Value {
                    providers: vec![
                        sealed(b"k", p[0].clone(), SEQ, 300),
                        sealed_by(2, b"k", p[1].clone(), 7, 3600),
                        sealed(b"k", p[2].clone(), u64::MAX, 0),
                    ],
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "find_value_hit_without_nodes",
            "#{v => 2, type => find_value_reply, result => value, \
               value => [Sealed(1, <<\"svc\">>, P3, 1, 60, O)]}",
            &["P3"],
            |p| {
                Resp(Ok(Response::Value {
                    providers: vec![sealed(b"svc", p[0].clone(), 1, 60)],
                    nodes: vec![],
                }))
            },
        ),
        case(
            "find_value_miss",
            &format!("#{{v => 2, type => find_value_reply, result => nodes, nodes => {nodes_term}}}"),
            &[],
            |_| {
                Resp(Ok(Response::NoValue {
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "store_reply",
            "#{v => 2, type => store_reply, result => ok}",
            &[],
            |_| Resp(Ok(Response::Stored)),
        ),
        case(
            "remove_reply",
            "#{v => 2, type => remove_reply, result => ok}",
            &[],
            |_| Resp(Ok(Response::Removed)),
        ),
        // Version 1 frames, as the old protocol wrote them, and a v1 frame carrying a seal.
        case(
            "v1_store",
            "#{v => 1, type => store, key => <<\"k\">>, value => P1}",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(1))),
        ),
        case(
            "v1_store_sealed",
            "maps:merge(#{v => 1, type => store, key => <<\"k\">>}, Sealed(1, <<\"k\">>, P1, 1, 1, O))",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(1))),
        ),
        case(
            "v1_find_value",
            "#{v => 1, type => find_value, key => crypto:hash(sha256, <<\"svc\">>)}",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(1))),
        ),
        case(
            "v1_remove",
            "#{v => 1, type => remove, key => <<\"k\">>, node_id => <<\"n1\">>}",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(1))),
        ),
        case(
            "v1_find_value_hit",
            "#{v => 1, type => find_value_reply, result => value, value => [P1, P3]}",
            &[],
            |_| Resp(Err(WireError::UnsupportedVersion(1))),
        ),
        case(
            "future_version",
            "#{v => 3, type => find_everything}",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(3))),
        ),
        case(
            "unknown_type",
            "#{v => 2, type => find_everything}",
            &[],
            |_| Req(Err(WireError::UnknownType)),
        ),
        case(
            "old_shape_without_v",
            "#{<<\"type\">> => <<\"find_node\">>, <<\"target\">> => Id}",
            &[],
            |_| Req(Err(WireError::Malformed("v"))),
        ),
        case(
            "non_map_provider",
            &store("<<\"k\">>", "Sealed(1, <<\"k\">>, [P1], 1, 1, O)"),
            &[],
            |_| Req(Err(WireError::InvalidProvider(macula_dht::ProviderError::NotAMap))),
        ),
        // Seal fields out of shape, as Erlang writes them.
        case(
            "store_without_ttl",
            &store("<<\"k\">>", "maps:remove(ttl, Sealed(1, <<\"k\">>, P1, 1, 1, O))"),
            &[],
            |_| Req(Err(WireError::Malformed("ttl"))),
        ),
        case(
            "store_negative_seq",
            &store("<<\"k\">>", "maps:put(seq, -1, Sealed(1, <<\"k\">>, P1, 1, 1, O))"),
            &[],
            |_| Req(Err(WireError::Malformed("seq"))),
        ),
        case(
            "store_seq_past_64_bits",
            &store("<<\"k\">>", "maps:put(seq, 1 bsl 64, Sealed(1, <<\"k\">>, P1, 1, 1, O))"),
            &[],
            |_| Req(Err(WireError::Malformed("seq"))),
        ),
        case(
            "store_ttl_past_32_bits",
            &store("<<\"k\">>", "maps:put(ttl, 1 bsl 32, Sealed(1, <<\"k\">>, P1, 1, 1, O))"),
            &[],
            |_| Req(Err(WireError::Malformed("ttl"))),
        ),
        case(
            "store_short_publisher",
            &store(
                "<<\"k\">>",
                "maps:put(publisher, binary:copy(<<1>>, 31), Sealed(1, <<\"k\">>, P1, 1, 1, O))",
            ),
            &[],
            |_| Req(Err(WireError::Malformed("publisher"))),
        ),
        case(
            "store_long_sig",
            &store(
                "<<\"k\">>",
                "maps:update_with(sig, fun(S) -> <<S/binary, 0>> end, Sealed(1, <<\"k\">>, P1, 1, 1, O))",
            ),
            &[],
            |_| Req(Err(WireError::Malformed("sig"))),
        ),
        case(
            "remove_without_sig",
            "maps:merge(#{v => 2, type => remove, key => <<\"k\">>, node_id => <<\"n1\">>}, \
             maps:remove(sig, Removal(1, <<\"k\">>, <<\"n1\">>, 1)))",
            &[],
            |_| Req(Err(WireError::Malformed("sig"))),
        ),
        case(
            "hit_unsealed_provider",
            "#{v => 2, type => find_value_reply, result => value, value => [P1]}",
            &[],
            |_| Resp(Err(WireError::Malformed("value"))),
        ),
        case(
            "hit_sealed_provider_not_a_map",
            "#{v => 2, type => find_value_reply, result => value, \
               value => [list_to_tuple(maps:to_list(Sealed(1, <<\"k\">>, P1, 1, 1, O)))]}",
            &[],
            |_| Resp(Err(WireError::Malformed("sealed provider"))),
        ),
        FromErlang {
            options: &["[compressed]"],
            ..case(
                "compressed",
                "#{v => 2, type => find_value, key => binary:copy(<<0>>, 1000)}",
                &[],
                |_| Req(Err(WireError::Etf(EtfError::Compressed))),
            )
        },
    ];
    for reason in ErrorReason::ALL {
        cases.push(case(
            &format!("error_{}", reason.name()),
            &format!("#{{v => 2, type => error, reason => {}}}", reason.name()),
            &[],
            move |_| Resp(Ok(Response::Error { reason })),
        ));
    }
    cases
}

#[test]
fn erlang_frames_decode_to_the_expected_values() {
    let cases = from_erlang_cases();
    let mut code = String::from(PRELUDE);
    code.push_str(
        r#"F = fun(Name, T, Ps, Opts) ->
               [io:format("~s ~b ~s~s~n", [Name, I, binary:encode_hex(term_to_binary(T(O), O)),
                                            [[" ", binary:encode_hex(term_to_binary(P, O))] || P <- Ps]])
                || {I, O} <- lists:zip(lists:seq(1, length(Opts)), Opts)]
           end,
"#,
    );
    for c in &cases {
        code.push_str(&format!(
            "F(\"{}\", fun(O) -> {} end, [{}], [{}]),\n",
            c.name,
            c.term,
            c.providers.join(", "),
            c.options.join(", ")
        ));
    }
    code.push_str("ok");
    let Some(out) = erl(&code) else { return };

    let mut checked = 0;
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(option), Some(frame)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let c = cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("unexpected line {line}"));
        let frame = unhex(frame);
        // The providers' own encodings, without version byte.
        let providers: Vec<Vec<u8>> = words.map(|p| unhex(p)[1..].to_vec()).collect();
        for p in &providers {
            ProviderRecord::parse(&[&[131][..], p].concat()).unwrap();
        }
        let label = format!("{name} with option #{option}");
        match (c.expect)(&providers) {
            Expect::Req(expected) => assert_eq!(Request::decode(&frame), expected, "{label}"),
            Expect::Resp(expected) => assert_eq!(Response::decode(&frame), expected, "{label}"),
        }
        checked += 1;
    }
    let expected: usize = cases.iter().map(|c| c.options.len()).sum();
    assert_eq!(checked, expected, "erl output:\n{out}");
}

/// Erlang term of `provider(node_id, ttl)` from the test support.
fn provider_term(node_id: &str, ttl: u32) -> String {
    format!("#{{node_id => <<\"{node_id}\">>, ttl => {ttl}}}")
}

/// Erlang expression of a binary, as hex.
fn erl_bin(bytes: &[u8]) -> String {
    format!("binary:decode_hex(<<\"{}\">>)", hex(bytes))
}

/// The seal fields of `seal`, as Erlang map associations (their values copied, not recomputed).
fn erl_seal(seal: &Seal) -> String {
    format!(
        "publisher => {}, seq => {}, ttl => {}, sig => {}",
        erl_bin(&seal.publisher),
        seal.seq,
        seal.ttl_secs,
        erl_bin(&seal.sig)
    )
}

#[test]
fn our_frames_read_back_in_erlang() {
    let id_term = "list_to_binary(lists:seq(0, 31))";
    let n7 = r#"#{node_id => binary:copy(<<7>>, 32), address => <<"10.1.2.3:4433">>}"#;
    let n8 = r#"#{node_id => binary:copy(<<8>>, 32), address => <<"[2001:db8::1]:9443">>}"#;
    // Not in Erlang's key order: a BEAM node reads it, but would not write these bytes, so its
    // seal (over these bytes) is given to Erlang as is rather than recomputed there.
    let nested = map(&[
        (bin(b"node_id"), bin(b"n2")),
        (
            atom("metadata"),
            map(&[(atom("tags"), list(&[atom("a"), int(7)]))]),
        ),
        (atom("advertised_at"), int(1_764_160_000)),
    ]);
    let nested_term =
        "#{<<\"node_id\">> => <<\"n2\">>, metadata => #{tags => [a, 7]}, advertised_at => 1764160000}";
    let nested_sealed = sealed_by(2, b"k", nested.clone(), SEQ, 300);
    let utf8 = "[{minor_version, 2}]";
    let mut cases: Vec<(String, Vec<u8>, String)> = vec![
        ("ping".into(), Request::Ping.encode(), "#{v => 2, type => ping}".into()),
        (
            "find_node".into(),
            Request::FindNode {
                target: NodeId(std::array::from_fn(|i| i as u8)),
            }
            .encode(),
            format!("#{{v => 2, type => find_node, target => {id_term}}}"),
        ),
        (
            "find_value".into(),
            Request::FindValue {
                key: NodeId::normalize(b"svc").0.to_vec(),
            }
            .encode(),
            "#{v => 2, type => find_value, key => crypto:hash(sha256, <<\"svc\">>)}".into(),
        ),
        // Sealed in Rust, sealed again in Erlang: the same signature.
        (
            "store".into(),
            wire_support::store(b"k", provider(b"n1", 300), SEQ, 300).encode(),
            format!(
                "maps:merge(#{{v => 2, type => store, key => <<\"k\">>}}, \
                 Sealed(1, <<\"k\">>, {}, {SEQ}, 300, {utf8}))",
                provider_term("n1", 300)
            ),
        ),
        (
            "store_largest_seal".into(),
            wire_support::store(b"", provider(b"n1", 300), u64::MAX, u32::MAX).encode(),
            format!(
                "maps:merge(#{{v => 2, type => store, key => <<>>}}, \
                 Sealed(1, <<>>, {}, 18446744073709551615, 4294967295, {utf8}))",
                provider_term("n1", 300)
            ),
        ),
        (
            "store_nested".into(),
            Request::Store {
                key: b"k".to_vec(),
                record: nested_sealed.clone(),
            }
            .encode(),
            format!(
                "#{{v => 2, type => store, key => <<\"k\">>, value => {nested_term}, {}}}",
                erl_seal(&nested_sealed.seal)
            ),
        ),
        (
            "remove".into(),
            remove(b"", b"n1", 0).encode(),
            "maps:merge(#{v => 2, type => remove, key => <<>>, node_id => <<\"n1\">>}, \
             Removal(1, <<>>, <<\"n1\">>, 0))"
                .into(),
        ),
        (
            "remove_own_node_id".into(),
            remove(b"k", &keypair(1).node_id().0, SEQ).encode(),
            format!(
                "maps:merge(#{{v => 2, type => remove, key => <<\"k\">>, node_id => crypto:hash(sha256, Pub1)}}, \
                 Removal(1, <<\"k\">>, crypto:hash(sha256, Pub1), {SEQ}))"
            ),
        ),
        ("pong".into(), Response::Pong.encode(), "#{v => 2, type => pong}".into()),
        (
            "find_node_reply".into(),
            Response::Nodes {
                nodes: vec![v4(7), v6(8)],
            }
            .encode(),
            format!("#{{v => 2, type => find_node_reply, nodes => [{n7}, {n8}]}}"),
        ),
        (
            "find_node_reply_empty".into(),
            Response::Nodes { nodes: vec![] }.encode(),
            "#{v => 2, type => find_node_reply, nodes => []}".into(),
        ),
        (
            "find_value_hit".into(),
            Response::Value {
                providers: vec![
                    sealed(b"k", provider(b"n1", 300), SEQ, 300),
                    nested_sealed.clone(),
                    sealed(b"k", provider(b"n3", 1 << 31), 1, 1 << 31),
                ],
                nodes: vec![v6(8)],
            }
            .encode(),
            format!(
                "#{{v => 2, type => find_value_reply, result => value, \
                   value => [Sealed(1, <<\"k\">>, {}, {SEQ}, 300, {utf8}), \
                             #{{value => {nested_term}, {}}}, \
                             Sealed(1, <<\"k\">>, {}, 1, {}, {utf8})], \
                   nodes => [{n8}]}}",
                provider_term("n1", 300),
                erl_seal(&nested_sealed.seal),
                provider_term("n3", 1 << 31),
                1u32 << 31
            ),
        ),
        (
            "find_value_hit_empty".into(),
            Response::Value {
                providers: vec![],
                nodes: vec![],
            }
            .encode(),
            "#{v => 2, type => find_value_reply, result => value, value => [], nodes => []}".into(),
        ),
        (
            "find_value_miss".into(),
            Response::NoValue {
                nodes: vec![v4(7)],
            }
            .encode(),
            format!("#{{v => 2, type => find_value_reply, result => nodes, nodes => [{n7}]}}"),
        ),
        (
            "store_reply".into(),
            Response::Stored.encode(),
            "#{v => 2, type => store_reply, result => ok}".into(),
        ),
        (
            "remove_reply".into(),
            Response::Removed.encode(),
            "#{v => 2, type => remove_reply, result => ok}".into(),
        ),
    ];
    for reason in ErrorReason::ALL {
        cases.push((
            format!("error_{}", reason.name()),
            Response::Error { reason }.encode(),
            format!("#{{v => 2, type => error, reason => {}}}", reason.name()),
        ));
    }
    let mut code = String::from(PRELUDE);
    code.push_str(
        r#"C = fun(Name, Hex, Expected) ->
               R = try binary_to_term(binary:decode_hex(Hex), [safe]) of
                       T when T =:= Expected -> ok;
                       T -> {mismatch, T}
                   catch Class:Reason -> {Class, Reason}
                   end,
               io:format("~s ~p~n", [Name, R])
           end,
"#,
    );
    for (name, frame, expected) in &cases {
        code.push_str(&format!(
            "C(\"{name}\", <<\"{}\">>, {expected}),\n",
            hex(frame)
        ));
    }
    code.push_str("ok");
    let Some(out) = erl(&code) else { return };
    for (name, _, _) in &cases {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no result for {name}:\n{out}"));
        assert_eq!(line, format!("{name} ok"), "erl output:\n{out}");
    }
}
