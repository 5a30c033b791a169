//! The scale scenario in small: a thousand nodes under churn (sessions of 20 minutes median,
//! each departed node replaced by a new one), lookups spread over 5 minutes of virtual time.
//! Asserts on success and hops, and that one seed gives one report, figure for figure.

use std::time::{Duration, Instant};

use macula_dht_sim::{Scenario, Sessions};

fn scenario() -> Scenario {
    Scenario {
        services: 100,
        sessions: Some(Sessions::exponential(Duration::from_secs(1_200))),
        period: Duration::from_secs(300),
        provider_lookups: 200,
        node_lookups: 60,
        ..Scenario::new("sim_1k_churn", 0x5ca1e, 1_000)
    }
}

#[test]
fn a_thousand_nodes_under_churn_find_their_providers_in_few_hops() {
    let started = Instant::now();
    let first = scenario().run();
    let report = first.summary();
    eprintln!("{} in {:?}: {report}", first.name, started.elapsed());
    // The same seed again, on two threads.
    let second = Scenario {
        threads: 2,
        ..scenario()
    }
    .run();
    eprintln!("and on two threads in {:?}", started.elapsed());
    assert_eq!(first, second, "one seed, one report, on one thread or two");

    assert!(first.provider_lookups.len() >= 195 && first.node_lookups.len() >= 58);
    assert!(first.departures >= 100, "churn: {report}");
    assert!(first.success_all_pct() >= 99.0, "{report}");
    assert!(first.success_one_pct() >= 99.0, "{report}");
    // Path hops (to the first provider, or the closest node) within the budget of 10 k nodes;
    // the longest chain of answers to any of the k closest a full lookup queried, a few more.
    assert!(first.path_hops_quantile(0.99) <= 4, "{report}");
    assert!(first.hops_quantile(0.99) <= 6, "{report}");
    assert!(first.replica_recall_pct() >= 90.0, "{report}");
}

/// Short sessions and short-lived records: a departed provider's records expire within the
/// period, so a lookup that expected it would miss it. A lookup expects only the providers that
/// still run (each node advertises one service at most, and its replacement takes that one
/// over), and finds them.
#[test]
fn lookups_expect_only_the_providers_that_still_run() {
    let report = Scenario {
        // 200 providers among 300 nodes: drawn service by service, many would be drawn twice.
        services: 100,
        ttl_secs: 120,
        sessions: Some(Sessions::exponential(Duration::from_secs(300))),
        provider_lookups: 200,
        node_lookups: 10,
        ..Scenario::new("short_sessions", 3, 300)
    }
    .run();
    let summary = report.summary();
    assert!(report.departures >= 300, "{summary}");
    assert!(report.success_all_pct() >= 99.0, "{summary}");
}
