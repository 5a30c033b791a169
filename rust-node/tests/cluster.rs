//! Nine separate `rust-node run` processes on 127.0.0.1, driven only through the binary
//! (`rust-node ctl` to advertise and remove, `rust-node discover` to look up):
//!
//! 1. a service advertised on one node is discovered from every node;
//! 2. two providers of one service are both returned;
//! 3. a removal is seen by every node within `REMOVAL_BOUND` of `ctl remove` returning (in
//!    practice at once: `remove` returns once the k closest have acknowledged the REMOVE, and
//!    with k = 20 > 9 nodes every node is one of them);
//! 4. a record published once with ttl 4 s is gone everywhere by `ttl + EXPIRY_SLACK`, while a
//!    republished record with ttl 13 s (republished every max(10, 13 - 60) = 10 s) is still
//!    everywhere 15 s after it was first published;
//! 5. after `kill -9` of a third of the nodes (not the advertiser) every survivor still
//!    discovers the service, and a new advertisement still reaches every survivor.
//!
//! Every child is killed by its pid when the test ends, pass or fail (`Procs`' `Drop`).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::procs::{NodeProc, Procs};

const NODES: usize = 9;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const REMOVAL_BOUND: Duration = Duration::from_secs(5);
const EXPIRY_SLACK: Duration = Duration::from_secs(3);

/// `rust-node discover --json` through `via`: the providers' endpoints (sorted) and node ids,
/// or `None` when it exits 1 (nothing found; stderr is then exactly one line).
fn discover(procs: &mut Procs, via: &NodeProc, service: &str) -> Option<Vec<(String, String)>> {
    let addr = via.addr.to_string();
    let ran = procs.run(
        &[
            "discover",
            "--bootstrap",
            &addr,
            service,
            "--json",
            "--timeout",
            "10",
        ],
        COMMAND_TIMEOUT,
    );
    match ran.status.code() {
        Some(0) => {
            let list: Vec<Value> = serde_json::from_str(ran.stdout.trim()).unwrap();
            let mut found: Vec<(String, String)> = list
                .iter()
                .map(|p| {
                    (
                        p["endpoint"].as_str().unwrap().to_string(),
                        p["node_id"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            found.sort();
            Some(found)
        }
        Some(1) => {
            assert_eq!(ran.stderr.lines().count(), 1, "one line: {:?}", ran.stderr);
            assert!(ran.stderr.contains("no provider of"), "{:?}", ran.stderr);
            None
        }
        _ => panic!("discover via {} failed: {ran:?}", via.name),
    }
}

fn endpoints(found: &Option<Vec<(String, String)>>) -> Vec<&str> {
    found
        .iter()
        .flatten()
        .map(|(endpoint, _)| endpoint.as_str())
        .collect()
}

/// Repeats `discover` through every node in `nodes` until each sees `expected` endpoints, or
/// panics after `within`.
fn all_see(
    procs: &mut Procs,
    nodes: &[NodeProc],
    service: &str,
    expected: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    for node in nodes {
        loop {
            let found = discover(procs, node, service);
            if endpoints(&found) == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{service} through {}: {:?}, expected {expected:?}",
                node.name,
                endpoints(&found)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn nine_node_processes_share_one_dht() {
    let started = Instant::now();
    let mut procs = Procs::new("cluster");
    let timeout = ["--request-timeout-ms".to_string(), "1000".to_string()];
    let nodes = procs.start_cluster(NODES, &timeout);
    eprintln!("cluster: {NODES} nodes up after {:?}", started.elapsed());

    // 1. One advertiser, discovered from every node.
    let advertiser = nodes[1].clone();
    let out = procs.ctl(
        &advertiser,
        &["advertise", "calc", "https://calc:9443", "--ttl", "300"],
    );
    assert!(out.contains("acknowledged by 8 of 8"), "{out}");
    for node in &nodes {
        let found = discover(&mut procs, node, "calc");
        assert_eq!(
            found,
            Some(vec![(
                "https://calc:9443".to_string(),
                advertiser.id.clone()
            )]),
            "calc through {}",
            node.name
        );
    }
    assert_eq!(discover(&mut procs, &nodes[4], "never-advertised"), None);

    // 2. Two providers of one service.
    procs.ctl(&nodes[2], &["advertise", "db", "https://db-a:5432"]);
    procs.ctl(&nodes[5], &["advertise", "db", "https://db-b:5432"]);
    let both = ["https://db-a:5432", "https://db-b:5432"];
    all_see(&mut procs, &nodes, "db", &both, Duration::ZERO);

    // 3. Removal of one of them, seen everywhere within the bound.
    procs.ctl(&nodes[5], &["remove", "db"]);
    all_see(
        &mut procs,
        &nodes,
        "db",
        &["https://db-a:5432"],
        REMOVAL_BOUND,
    );
    eprintln!(
        "cluster: removal seen everywhere after {:?}",
        started.elapsed()
    );

    // 4. Expiry of an unrefreshed record; a refreshed one stays.
    procs.ctl(
        &nodes[3],
        &[
            "advertise",
            "brief",
            "https://brief:1",
            "--ttl",
            "4",
            "--once",
        ],
    );
    let published = Instant::now();
    procs.ctl(
        &nodes[4],
        &["advertise", "kept", "https://kept:1", "--ttl", "13"],
    );
    all_see(
        &mut procs,
        &nodes,
        "brief",
        &["https://brief:1"],
        Duration::ZERO,
    );
    all_see(
        &mut procs,
        &nodes,
        "kept",
        &["https://kept:1"],
        Duration::ZERO,
    );
    std::thread::sleep(Duration::from_secs(4).saturating_sub(published.elapsed()));
    all_see(&mut procs, &nodes, "brief", &[], EXPIRY_SLACK);
    eprintln!(
        "cluster: brief expired everywhere {:?} after publishing",
        published.elapsed()
    );
    std::thread::sleep(Duration::from_secs(15).saturating_sub(published.elapsed()));
    all_see(
        &mut procs,
        &nodes,
        "kept",
        &["https://kept:1"],
        Duration::ZERO,
    );
    eprintln!(
        "cluster: kept still everywhere {:?} after publishing",
        published.elapsed()
    );

    // 5. kill -9 of a third of the nodes, not the advertiser.
    let (survivors, doomed) = nodes.split_at(NODES - NODES / 3);
    assert!(doomed.iter().all(|n| n.pid != advertiser.pid));
    for node in doomed {
        procs.kill(node.pid);
    }
    all_see(
        &mut procs,
        survivors,
        "calc",
        &["https://calc:9443"],
        Duration::ZERO,
    );
    // The network still takes new records: publishing has to get past the dead peers.
    procs.ctl(&nodes[0], &["advertise", "after", "https://after:1"]);
    all_see(
        &mut procs,
        survivors,
        "after",
        &["https://after:1"],
        Duration::ZERO,
    );
    let status = procs.ctl(&advertiser, &["status"]);
    assert!(status.contains("adverts: calc"), "{status}");
    eprintln!("cluster: done after {:?}", started.elapsed());
}
