//! `rust-node` processes started in any order: a node whose bootstrap peer is not up yet keeps
//! serving and joins once the peer starts; then picking and failure reports through `ctl`.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::procs::{random_port, NodeProc, Procs};

fn status(procs: &mut Procs, node: &NodeProc) -> Value {
    serde_json::from_str(procs.ctl(node, &["status", "--json"]).trim()).unwrap()
}

fn wait_joined(procs: &mut Procs, node: &NodeProc, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if status(procs, node)["joined"] == Value::Bool(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_node_started_before_its_bootstrap_peer_joins_when_the_peer_comes_up() {
    let mut procs = Procs::new("start-order");
    let later = format!("127.0.0.1:{}", random_port());
    let early = procs.start_node("early", &["--bootstrap".into(), later.clone()]);
    let alone = status(&mut procs, &early);
    assert_eq!(alone["joined"], Value::Bool(false), "{alone}");
    assert_eq!(alone["peers"], 0);

    // Wait for a retry or two before the peer comes up: the node is still running.
    std::thread::sleep(Duration::from_secs(2));
    let peer = procs.start_node("peer", &["--listen".into(), later]);
    assert!(wait_joined(&mut procs, &early, Duration::from_secs(20)));
    assert!(wait_joined(&mut procs, &peer, Duration::from_secs(5)));

    procs.ctl(
        &peer,
        &["advertise", "calc", "https://calc:1", "--meta", "load=3"],
    );
    let picked: Value = serde_json::from_str(
        procs
            .ctl(
                &early,
                &["pick", "calc", "--strategy", "least-loaded", "--json"],
            )
            .trim(),
    )
    .unwrap();
    assert_eq!(picked["node_id"], Value::String(peer.id.clone()));
    assert_eq!(picked["endpoint"], "https://calc:1");
    assert_eq!(picked["metadata"]["load"], "3");

    let reported = procs.ctl(&early, &["report-failure", "calc", &peer.id]);
    assert!(reported.contains("skipped for 5000 ms"), "{reported}");
    // Its only provider is skipped: one fresh lookup, then no provider.
    let socket = early.ctl.display().to_string();
    let ran = procs.run(
        &["ctl", "--socket", &socket, "pick", "calc"],
        Duration::from_secs(30),
    );
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{ran:?}");
    assert!(ran.stderr.contains("no providers"), "{ran:?}");

    for bad in [
        vec!["pick", "calc", "--strategy", "fastest"],
        vec!["report-failure", "calc", "xyz"],
    ] {
        let mut args = vec!["ctl", "--socket", &socket];
        args.extend(bad);
        let ran = procs.run(&args, Duration::from_secs(30));
        assert_eq!(ran.status.code(), Some(2), "{ran:?}");
    }
}
