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

mod wire_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macula_dht::etf::EtfError;
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

/// Erlang variables every snippet may use.
const PRELUDE: &str = r#"
    Id = list_to_binary(lists:seq(0, 31)),
    N7 = binary:copy(<<7>>, 32),
    N8 = binary:copy(<<8>>, 32),
    P1 = #{node_id => <<"n1">>, endpoint => <<"https://h:9443">>, ttl => 300,
           advertised_at => 1764160000, metadata => #{region => <<"eu">>, tags => [a, <<"b">>, 3]}},
    P2 = #{<<"node_id">> => <<"n2">>, <<"ttl">> => 60, last_seen => 1764160000000},
    P3 = #{node_id => <<"n3">>},
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
    /// An Erlang expression of the message term.
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

fn from_erlang_cases() -> Vec<FromErlang> {
    use Expect::{Req, Resp};
    let id = NodeId(std::array::from_fn(|i| i as u8));
    let nodes_term = r#"[#{node_id => N7, address => <<"10.1.2.3:4433">>, last_seen => 1764160000000},
                         #{node_id => N8, address => <<"[2001:db8::1]:9443">>, endpoint => <<"https://x">>}]"#;
    let mut cases = vec![
        case("ping", "#{v => 1, type => ping}", &[], |_| Req(Ok(Request::Ping))),
        case(
            "find_node",
            "#{v => 1, type => find_node, target => Id}",
            &[],
            move |_| Req(Ok(Request::FindNode { target: id })),
        ),
        case(
            "find_value",
            "#{v => 1, type => find_value, key => crypto:hash(sha256, <<\"svc\">>)}",
            &[],
            |_| {
                Req(Ok(Request::FindValue {
                    key: NodeId::normalize(b"svc").0.to_vec(),
                }))
            },
        ),
        case(
            "store",
            "#{v => 1, type => store, key => <<\"k\">>, value => P1}",
            &["P1"],
            |p| {
                Req(Ok(Request::Store {
                    key: b"k".to_vec(),
                    value: p[0].clone(),
                }))
            },
        ),
        case(
            "store_binary_keys",
            "#{v => 1, type => store, key => <<>>, value => P2}",
            &["P2"],
            |p| {
                Req(Ok(Request::Store {
                    key: vec![],
                    value: p[0].clone(),
                }))
            },
        ),
        case(
            "remove",
            "#{v => 1, type => remove, key => <<\"k\">>, node_id => <<\"n1\">>}",
            &[],
            |_| {
                Req(Ok(Request::Remove {
                    key: b"k".to_vec(),
                    node_id: b"n1".to_vec(),
                }))
            },
        ),
        case(
            "request_extra_keys",
            "#{v => 1, type => ping, trace => {1, self()}, <<\"type\">> => <<\"store\">>, 7 => []}",
            &[],
            |_| Req(Ok(Request::Ping)),
        ),
        case("pong", "#{v => 1, type => pong}", &[], |_| Resp(Ok(Response::Pong))),
        case(
            "find_node_reply",
            &format!("#{{v => 1, type => find_node_reply, nodes => {nodes_term}}}"),
            &[],
            |_| {
                Resp(Ok(Response::Nodes {
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "find_node_reply_empty",
            "#{v => 1, type => find_node_reply, nodes => []}",
            &[],
            |_| Resp(Ok(Response::Nodes { nodes: vec![] })),
        ),
        case(
            "find_value_hit",
            &format!(
                "#{{v => 1, type => find_value_reply, result => value, value => [P1, P2, P3], nodes => {nodes_term}}}"
            ),
            &["P1", "P2", "P3"],
            |p| {
                Resp(Ok(Response::Value {
                    providers: p.to_vec(),
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "find_value_hit_without_nodes",
            "#{v => 1, type => find_value_reply, result => value, value => [P3]}",
            &["P3"],
            |p| {
                Resp(Ok(Response::Value {
                    providers: p.to_vec(),
                    nodes: vec![],
                }))
            },
        ),
        case(
            "find_value_miss",
            &format!("#{{v => 1, type => find_value_reply, result => nodes, nodes => {nodes_term}}}"),
            &[],
            |_| {
                Resp(Ok(Response::NoValue {
                    nodes: vec![v4(7), v6(8)],
                }))
            },
        ),
        case(
            "store_reply",
            "#{v => 1, type => store_reply, result => ok}",
            &[],
            |_| Resp(Ok(Response::Stored)),
        ),
        case(
            "remove_reply",
            "#{v => 1, type => remove_reply, result => ok}",
            &[],
            |_| Resp(Ok(Response::Removed)),
        ),
        case(
            "future_version",
            "#{v => 2, type => find_everything}",
            &[],
            |_| Req(Err(WireError::UnsupportedVersion(2))),
        ),
        case(
            "unknown_type",
            "#{v => 1, type => find_everything}",
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
            "#{v => 1, type => store, key => <<\"k\">>, value => [P1]}",
            &[],
            |_| Req(Err(WireError::InvalidProvider(macula_dht::ProviderError::NotAMap))),
        ),
        FromErlang {
            options: &["[compressed]"],
            ..case(
                "compressed",
                "#{v => 1, type => find_value, key => binary:copy(<<0>>, 1000)}",
                &[],
                |_| Req(Err(WireError::Etf(EtfError::Compressed))),
            )
        },
    ];
    for reason in ErrorReason::ALL {
        cases.push(case(
            &format!("error_{}", reason.name()),
            &format!("#{{v => 1, type => error, reason => {}}}", reason.name()),
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
               [io:format("~s ~b ~s~s~n", [Name, I, binary:encode_hex(term_to_binary(T, O)),
                                            [[" ", binary:encode_hex(term_to_binary(P, O))] || P <- Ps]])
                || {I, O} <- lists:zip(lists:seq(1, length(Opts)), Opts)]
           end,
"#,
    );
    for c in &cases {
        code.push_str(&format!(
            "F(\"{}\", {}, [{}], [{}]),\n",
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

#[test]
fn our_frames_read_back_in_erlang() {
    let id_term = "list_to_binary(lists:seq(0, 31))";
    let n7 = r#"#{node_id => binary:copy(<<7>>, 32), address => <<"10.1.2.3:4433">>}"#;
    let n8 = r#"#{node_id => binary:copy(<<8>>, 32), address => <<"[2001:db8::1]:9443">>}"#;
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
    let mut cases: Vec<(String, Vec<u8>, String)> = vec![
        ("ping".into(), Request::Ping.encode(), "#{v => 1, type => ping}".into()),
        (
            "find_node".into(),
            Request::FindNode {
                target: NodeId(std::array::from_fn(|i| i as u8)),
            }
            .encode(),
            format!("#{{v => 1, type => find_node, target => {id_term}}}"),
        ),
        (
            "find_value".into(),
            Request::FindValue {
                key: NodeId::normalize(b"svc").0.to_vec(),
            }
            .encode(),
            "#{v => 1, type => find_value, key => crypto:hash(sha256, <<\"svc\">>)}".into(),
        ),
        (
            "store".into(),
            Request::Store {
                key: b"k".to_vec(),
                value: nested.clone(),
            }
            .encode(),
            format!("#{{v => 1, type => store, key => <<\"k\">>, value => {nested_term}}}"),
        ),
        (
            "remove".into(),
            Request::Remove {
                key: vec![],
                node_id: b"n1".to_vec(),
            }
            .encode(),
            "#{v => 1, type => remove, key => <<>>, node_id => <<\"n1\">>}".into(),
        ),
        ("pong".into(), Response::Pong.encode(), "#{v => 1, type => pong}".into()),
        (
            "find_node_reply".into(),
            Response::Nodes {
                nodes: vec![v4(7), v6(8)],
            }
            .encode(),
            format!("#{{v => 1, type => find_node_reply, nodes => [{n7}, {n8}]}}"),
        ),
        (
            "find_node_reply_empty".into(),
            Response::Nodes { nodes: vec![] }.encode(),
            "#{v => 1, type => find_node_reply, nodes => []}".into(),
        ),
        (
            "find_value_hit".into(),
            Response::Value {
                providers: vec![provider(b"n1", 300), nested, provider(b"n3", 1 << 31)],
                nodes: vec![v6(8)],
            }
            .encode(),
            format!(
                "#{{v => 1, type => find_value_reply, result => value, value => [{}, {nested_term}, {}], nodes => [{n8}]}}",
                provider_term("n1", 300),
                provider_term("n3", 1 << 31)
            ),
        ),
        (
            "find_value_miss".into(),
            Response::NoValue {
                nodes: vec![v4(7)],
            }
            .encode(),
            format!("#{{v => 1, type => find_value_reply, result => nodes, nodes => [{n7}]}}"),
        ),
        (
            "store_reply".into(),
            Response::Stored.encode(),
            "#{v => 1, type => store_reply, result => ok}".into(),
        ),
        (
            "remove_reply".into(),
            Response::Removed.encode(),
            "#{v => 1, type => remove_reply, result => ok}".into(),
        ),
    ];
    for reason in ErrorReason::ALL {
        cases.push((
            format!("error_{}", reason.name()),
            Response::Error { reason }.encode(),
            format!("#{{v => 1, type => error, reason => {}}}", reason.name()),
        ));
    }
    let mut code = String::from(
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
