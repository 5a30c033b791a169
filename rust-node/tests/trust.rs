//! Four `rust-node run` processes on 127.0.0.1 and a hostile peer in this process, with a valid
//! identity of its own, that speaks the protocol directly (`examples/hostile_peer/attacks.rs`):
//!
//! 1. a forged STORE under each honest provider's slot, a forged REMOVE of it, and a STORE of a
//!    provider naming the honest node's id signed by the hostile key: refused by every node as
//!    `forged_signature`, `forged_signature` and `wrong_publisher`;
//! 2. a signed record captured before its publisher removed it, sent again: refused by every
//!    node as `removed`;
//! 3. a hostile replica, its id close to the key, answering every lookup with providers their
//!    publishers never signed: every node's lookup drops them and counts them;
//! 4. a STORE flood beyond the flooder's share of one node's store and beyond its rate: refused
//!    as `over_quota` and `rate_limited` past the caps, while an honest node's STORE to the same
//!    node during the flood is accepted.
//!
//! After all of it every node still returns exactly the honest providers, and its `ctl status`
//! counts each refusal. Every child is killed by its pid when the test ends, pass or fail.

#[path = "../examples/hostile_peer/attacks.rs"]
mod attacks;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use attacks::{Hostile, Tally};
use macula_dht::wire::Request;
use macula_dht_node::{service_key, Identity};
use serde_json::Value;
use support::procs::{NodeProc, Procs};

const NODES: usize = 4;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);
/// Store caps of every node: one other publisher may hold 10 % of 2000 records, and send 100
/// STOREs a second (bursts of 500).
const MAX_RECORDS: usize = 2000;
const SHARE: usize = MAX_RECORDS / 10;
const STORES_PER_S: usize = 100;

#[test]
fn a_hostile_peer_cannot_forge_remove_replay_inject_or_flood() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Endpoints bind and serve on this runtime; the ctl commands block this thread meanwhile.
    let _in_rt = rt.enter();
    let mut procs = Procs::new("trust");
    let nodes = start_cluster(&mut procs);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    // Two honest providers of one service.
    let victim_key = service_key("svc.victim");
    advertise(&mut procs, &nodes[1], "svc.victim", "https://victim-1:443");
    advertise(&mut procs, &nodes[2], "svc.victim", "https://victim-2:443");
    let honest = ["https://victim-1:443", "https://victim-2:443"];
    all_see(&mut procs, &nodes, "svc.victim", &honest);

    // 1. Forgeries under their slots, sent to every node.
    let hostile = fresh();
    let victims = rt.block_on(hostile.held(nodes[0].addr, &victim_key));
    assert_eq!(victims.len(), 2);
    for victim in &victims {
        let attacks = [
            (
                hostile.forged_store(&victim_key, victim),
                "forged_signature",
            ),
            (
                hostile.forged_remove(&victim_key, victim),
                "forged_signature",
            ),
            (
                hostile.wrong_publisher_store(&victim_key, victim),
                "wrong_publisher",
            ),
        ];
        for (request, refusal) in &attacks {
            for node in &addrs {
                assert_eq!(rt.block_on(hostile.send(*node, request)), *refusal);
            }
        }
    }

    // 2. A record captured before its removal, replayed after it.
    let gone_key = service_key("svc.gone");
    advertise(&mut procs, &nodes[3], "svc.gone", "https://gone:443");
    all_see(&mut procs, &nodes, "svc.gone", &["https://gone:443"]);
    let captured = rt.block_on(hostile.held(nodes[0].addr, &gone_key));
    assert_eq!(captured.len(), 1);
    procs.ctl(&nodes[3], &["remove", "svc.gone"]);
    all_see(&mut procs, &nodes, "svc.gone", &[]);
    let replay = Request::Store {
        key: gone_key.to_vec(),
        record: captured[0].clone(),
    };
    for node in &addrs {
        assert_eq!(rt.block_on(hostile.send(*node, &replay)), "removed");
    }
    rt.block_on(hostile.close());

    // 3. A hostile replica near the key injects providers into every node's lookups.
    let near = attacks::identity_near(&victim_key, 256).unwrap();
    let replica = Hostile::bind(&near).unwrap();
    let served = replica.serve_injections(&victim_key, &victims).unwrap();
    eprintln!("trust: hostile replica at {}", replica.addr());
    for node in &addrs {
        assert_eq!(rt.block_on(replica.send(*node, &Request::Ping)), "pong");
    }
    wait_for(
        &mut procs,
        &nodes,
        "the hostile replica in every table",
        |s| s["peers"].as_u64() == Some(NODES as u64),
    );
    for node in &nodes {
        // More providers wanted than exist: the lookup asks every node, the replica included.
        let found = ctl_discover(&mut procs, node, "svc.victim", 5);
        assert_eq!(found, honest, "svc.victim through {}", node.name);
    }
    assert!(served.load(std::sync::atomic::Ordering::Relaxed) >= NODES as u64);

    // 4. A flood of valid STOREs of the flooder's own records at one node.
    let flooder = fresh();
    let target = nodes[0].addr;
    let first = rt.block_on(flooder.flood(target, 3 * SHARE, 16));
    eprintln!("trust: first flood {first:?}");
    assert_eq!(count(&first, "accepted"), SHARE, "{first:?}");
    assert!(count(&first, "over_quota") > 0, "{first:?}");
    // While it floods on, an honest node publishes: n0 takes it.
    let second = rt.spawn(async move {
        let tally = flooder.flood(target, 5 * STORES_PER_S, 16).await;
        flooder.close().await;
        tally
    });
    let out = procs.ctl(
        &nodes[2],
        &["advertise", "svc.during", "https://during:443"],
    );
    let second = rt.block_on(second).unwrap();
    let during = rt.block_on(async {
        let observer = fresh();
        let held = observer.held(target, &service_key("svc.during")).await;
        observer.close().await;
        held
    });
    assert_eq!(during.len(), 1, "n0 took the honest STORE: {out}");
    eprintln!("trust: second flood {second:?}");
    assert_eq!(count(&second, "accepted"), 0, "{second:?}");
    let refused = |reason| count(&first, reason) + count(&second, reason);
    assert!(refused("rate_limited") > 0, "{first:?} {second:?}");
    assert_eq!(
        refused("over_quota") + refused("rate_limited") + SHARE,
        3 * SHARE + 5 * STORES_PER_S,
        "every flood STORE answered"
    );

    // Every node still returns the honest providers, and counted every refusal.
    all_see(&mut procs, &nodes, "svc.victim", &honest);
    all_see(&mut procs, &nodes, "svc.during", &["https://during:443"]);
    all_see(&mut procs, &nodes, "svc.gone", &[]);
    for node in &nodes {
        let s = status(&mut procs, node);
        let n = |field: &str| s[field].as_u64().unwrap_or(u64::MAX);
        assert_eq!(n("protocol"), 2);
        assert_eq!(n("refused_forged"), 4, "{} {s}", node.name);
        assert_eq!(n("refused_wrong_publisher"), 2, "{} {s}", node.name);
        assert_eq!(n("refused_replay"), 1, "{} {s}", node.name);
        assert!(n("forged_in_replies") >= 4, "{} {s}", node.name);
    }
    let s = status(&mut procs, &nodes[0]);
    assert_eq!(
        s["refused_quota"].as_u64(),
        Some(refused("over_quota") as u64)
    );
    assert_eq!(
        s["refused_rate"].as_u64(),
        Some(refused("rate_limited") as u64)
    );
    assert!(s["records"].as_u64().unwrap() <= MAX_RECORDS as u64);
    rt.block_on(replica.close());
}

fn fresh() -> Hostile {
    Hostile::bind(&Identity::generate().unwrap()).unwrap()
}

fn count(tally: &Tally, answer: &str) -> usize {
    tally.get(answer).copied().unwrap_or(0)
}

fn start_cluster(procs: &mut Procs) -> Vec<NodeProc> {
    let caps = [
        "--request-timeout-ms".to_string(),
        "1000".into(),
        "--max-records".into(),
        MAX_RECORDS.to_string(),
        "--peer-stores-per-s".into(),
        STORES_PER_S.to_string(),
    ];
    let nodes = procs.start_cluster(NODES, &caps);
    wait_for(procs, &nodes, "every node knows the others", |s| {
        s["peers"].as_u64() == Some(NODES as u64 - 1)
    });
    nodes
}

fn advertise(procs: &mut Procs, node: &NodeProc, service: &str, endpoint: &str) {
    let out = procs.ctl(node, &["advertise", service, endpoint, "--ttl", "300"]);
    assert!(out.contains("acknowledged by 3 of 3"), "{out}");
}

fn status(procs: &mut Procs, node: &NodeProc) -> Value {
    serde_json::from_str(&procs.ctl(node, &["status", "--json"])).unwrap()
}

/// The sorted endpoints a lookup through `node` (in the node) finds, wanting `want`.
fn ctl_discover(procs: &mut Procs, node: &NodeProc, service: &str, want: usize) -> Vec<String> {
    let socket = node.ctl.display().to_string();
    let want = want.to_string();
    let args = [
        "ctl", "--socket", &socket, "discover", service, "--want", &want, "--json",
    ];
    let ran = procs.run(&args, COMMAND_TIMEOUT);
    if ran.status.code() == Some(1) && ran.stderr.contains("no provider of") {
        return Vec::new();
    }
    assert!(ran.status.success(), "discover via {}: {ran:?}", node.name);
    let list: Vec<Value> = serde_json::from_str(ran.stdout.trim()).unwrap();
    let mut found: Vec<String> = list
        .iter()
        .map(|p| p["endpoint"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    found
}

/// Until every node finds exactly `expected` (sorted) for `service`, or panics after `WAIT`.
fn all_see(procs: &mut Procs, nodes: &[NodeProc], service: &str, expected: &[&str]) {
    let deadline = Instant::now() + WAIT;
    for node in nodes {
        loop {
            let found = ctl_discover(procs, node, service, expected.len().max(1));
            if found == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{service} through {}: {found:?}, expected {expected:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Until `check` holds for every node's status, or panics after `WAIT`.
fn wait_for(procs: &mut Procs, nodes: &[NodeProc], what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    for node in nodes {
        loop {
            let s = status(procs, node);
            if check(&s) {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: {} {s}", node.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
