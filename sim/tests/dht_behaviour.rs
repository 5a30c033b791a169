//! What the DHT does, shown on small simulated networks: where records go, how they follow the
//! network as it changes, how they leave it, and how nodes deal with peers that die. Every test
//! is deterministic (one seed, no loss unless it says so) and runs minutes of virtual time in
//! milliseconds.

use std::time::Duration;

use macula_dht::dht::{Outcome, Started};
use macula_dht::record::service_key;
use macula_dht::seal::Keypair;
use macula_dht::wire::{Request, SealedRecord};
use macula_dht::{DhtConfig, NodeId, Time};
use macula_dht_sim::{addr_of, Links, Network, SimConfig};

const SECOND: Duration = Duration::from_secs(1);

/// `k`-wide replication on a quiet network with 20 ms round trips.
fn config(k: usize) -> SimConfig {
    SimConfig {
        seed: 7,
        dht: DhtConfig {
            k,
            ..DhtConfig::default()
        },
        links: Links {
            median_rtt: Duration::from_millis(20),
            spread: 0.3,
            loss: 0.0,
        },
        ..SimConfig::default()
    }
}

/// A network of `n` nodes that have settled (every node joined and refreshed once).
fn network(config: SimConfig, n: usize) -> (Network, Vec<usize>) {
    let mut net = Network::new(config);
    let nodes = net.grow(n, Duration::from_millis(200));
    net.run_for(Duration::from_secs(90));
    (net, nodes)
}

/// A key whose node id is closer to `key` than every node of `than`.
fn closer_key(net: &mut Network, key: &[u8], than: &[usize]) -> Keypair {
    let target = NodeId::normalize(key);
    let farthest = than
        .iter()
        .map(|&i| net.node(i).id().distance(&target))
        .max()
        .expect("some nodes to beat");
    loop {
        let keypair = net.keypair();
        if keypair.node_id().distance(&target) < farthest {
            return keypair;
        }
    }
}

fn without(mut nodes: Vec<usize>, node: usize) -> Vec<usize> {
    nodes.retain(|&i| i != node);
    nodes
}

/// A record `service` published once by the first of `n` settled nodes replicating `k`-wide,
/// and the nodes that took a copy.
struct Replicated {
    net: Network,
    nodes: Vec<usize>,
    publisher: usize,
    key: [u8; 32],
    holders: Vec<usize>,
}

fn replicated(k: usize, n: usize, service: &str) -> Replicated {
    let (mut net, nodes) = network(config(k), n);
    let publisher = nodes[0];
    net.publish_once(publisher, service, "https://p:1", 3_600);
    net.run_for(5 * SECOND);
    let key = service_key(service);
    let holders = without(net.holders(&key), publisher);
    Replicated {
        net,
        nodes,
        publisher,
        key,
        holders,
    }
}

/// A node closer to the record's key than every replica, joined through `via`.
fn closer_newcomer(r: &mut Replicated, via: usize) -> usize {
    let keypair = closer_key(&mut r.net, &r.key, &r.holders);
    let newcomer = r.net.add_node_with_key(keypair);
    r.net.join(newcomer, &[via]);
    r.net.run_for(5 * SECOND);
    newcomer
}

#[test]
fn a_store_reaches_the_k_closest_nodes() {
    let Replicated {
        net,
        publisher,
        key,
        holders,
        ..
    } = replicated(4, 60, "svc");
    let mut closest = without(net.closest_alive(&key, 5), publisher);
    closest.truncate(4);
    for replica in &closest {
        assert!(
            holders.contains(replica),
            "{replica} of {closest:?} lacks the record"
        );
    }
}

#[test]
fn a_newcomer_gets_the_records_it_is_now_responsible_for() {
    // Published once: only a hand-off can bring it to a node that joins later.
    let mut r = replicated(3, 30, "handed");
    let via = r.nodes[10];
    let newcomer = closer_newcomer(&mut r, via);
    r.net.run_for(5 * SECOND);
    assert!(r.net.holders(&r.key).contains(&newcomer));
}

#[test]
fn a_removal_reaches_copies_outside_the_current_closest() {
    let mut r = replicated(2, 12, "moving");
    assert_eq!(r.holders.len(), 2);
    // A newcomer closer to the key than both holders: the current 2 closest are no longer the
    // nodes the STORE reached.
    let via = r.nodes[1];
    let newcomer = closer_newcomer(&mut r, via);
    let id = r.net.node(newcomer).id();
    r.net
        .run_command(r.publisher, 10 * SECOND, |dht, store, now| {
            dht.find_node(store, id, now)
        });

    r.net.withdraw(r.publisher, "moving");
    r.net.run_for(5 * SECOND);
    assert_eq!(r.net.holders(&r.key), Vec::<usize>::new());
}

#[test]
fn a_removal_follows_the_copies_a_replica_handed_off() {
    let mut r = replicated(2, 12, "handed");
    assert_eq!(r.holders.len(), 2);
    // A newcomer closer to the key joins through a holder, which hands it the record.
    let via = r.holders[0];
    let newcomer = closer_newcomer(&mut r, via);
    assert!(r.net.holders(&r.key).contains(&newcomer));
    let Replicated {
        mut net,
        nodes,
        publisher,
        key,
        holders,
    } = r;

    // The publisher's REMOVE reaches the holders only (it is cut off from every other node);
    // they pass it on to the copy they handed off.
    for i in nodes.iter().copied().chain([newcomer]) {
        if !holders.contains(&i) && i != publisher {
            net.cut(publisher, i);
        }
    }
    net.withdraw(publisher, "handed");
    net.run_for(5 * SECOND);
    assert_eq!(net.holders(&key), Vec::<usize>::new());
}

#[test]
fn a_late_copy_of_a_removed_record_stays_out_and_a_newer_one_goes_in() {
    let Replicated {
        mut net,
        nodes,
        publisher,
        key,
        holders,
    } = replicated(3, 12, "late");
    let holder = holders[0];
    let now_ms = net.now().as_millis();
    let old = net
        .node(holder)
        .store
        .records(&key, now_ms)
        .find_map(|r| {
            r.seal().map(|seal| SealedRecord {
                term: r.term.to_vec(),
                seal,
            })
        })
        .expect("the holder's sealed copy");

    net.withdraw(publisher, "late");
    net.run_for(5 * SECOND);
    assert!(!net.holders(&key).contains(&holder));
    // The STORE of the old record, replayed: the tombstone keeps it out.
    let store = Request::Store {
        key: key.to_vec(),
        record: old,
    };
    net.inject(nodes[7], holder, store);
    net.run_for(SECOND);
    assert!(!net.holders(&key).contains(&holder));
    assert_eq!(net.node(holder).dht.status().stats.refused_replay, 1);
    // A new advertisement is dated after the removal and goes through.
    net.publish_once(publisher, "late", "https://p:2", 3_600);
    net.run_for(5 * SECOND);
    assert!(net.holders(&key).contains(&holder));
}

#[test]
fn records_nobody_refreshes_expire_everywhere_and_advertised_ones_stay() {
    let (mut net, nodes) = network(config(3), 20);
    net.publish_once(nodes[1], "once", "https://once:1", 30);
    net.advertise(nodes[2], "kept", "https://kept:1", 30);
    net.run_for(Duration::from_secs(120));
    assert_eq!(net.holders(&service_key("once")), Vec::<usize>::new());
    let queries: Vec<(usize, &str, usize)> = nodes.iter().map(|&i| (i, "kept", 1)).collect();
    for (i, found) in nodes.iter().zip(net.discover_many(&queries)) {
        let found = found.expect("lookup ended");
        assert_eq!(found.len(), 1, "node {i}");
        assert_eq!(found[0].endpoint.as_deref(), Some("https://kept:1"));
    }
}

#[test]
fn a_republish_reaches_the_new_closest_after_the_replicas_crash() {
    let (mut net, nodes) = network(config(3), 30);
    let publisher = nodes[3];
    // Republished every 10 s (the floor: ttl 60 - margin 60 is less).
    net.advertise(publisher, "phoenix", "https://p:1", 60);
    net.run_for(5 * SECOND);
    let key = service_key("phoenix");
    for holder in without(net.holders(&key), publisher) {
        net.crash(holder);
    }
    assert_eq!(net.holders(&key), vec![publisher]);
    net.run_for(30 * SECOND);
    let mut closest = without(net.closest_alive(&key, 4), publisher);
    closest.truncate(3);
    let holders = net.holders(&key);
    for replica in &closest {
        assert!(
            holders.contains(replica),
            "{replica} of {closest:?} lacks the record"
        );
    }
}

/// Runs a FIND_NODE of `target` from node `i`: the nodes it returned.
fn find_node(net: &mut Network, i: usize, target: NodeId) -> Vec<usize> {
    let outcome = net.run_command(i, 10 * SECOND, |dht, store, now| {
        dht.find_node(store, target, now)
    });
    let Some(Outcome::Lookup(report)) = outcome else {
        panic!("lookup from {i} did not end");
    };
    report
        .closest
        .iter()
        .map(|n| macula_dht_sim::index_of(n.addr).expect("a simulated address"))
        .collect()
}

#[test]
fn lookups_drop_dead_peers_from_the_table_and_then_find_the_live_closest() {
    let (mut net, nodes) = network(config(4), 40);
    let dead: Vec<usize> = nodes.iter().copied().step_by(4).collect();
    for &i in &dead {
        net.crash(i);
    }
    let downs_before = net.stats().peer_downs;
    let alive = net.alive();
    // Every node looks up every dead node: the dead one is the first it asks, fails, and is
    // suspect: not asked again nor offered to others for a while. Answers may still name dead
    // nodes others have not noticed, so these lookups return live nodes, the closest live one
    // first, but not always the exact k closest.
    for &i in &alive {
        for &d in &dead {
            let id = net.node(d).id();
            let found = find_node(&mut net, i, id);
            let nearest = without(net.closest_alive(&id.0, 2), i)[0];
            assert_eq!(found.first(), Some(&nearest), "lookup of {d} from {i}");
            assert!(found.iter().all(|&f| net.node(f).is_alive()));
        }
    }
    // Probed when their suspect time is up, the dead fail twice more and leave every table.
    net.run_for(30 * SECOND);
    for &i in &alive {
        let peers = net.node(i).dht.peers();
        for &d in &dead {
            assert!(
                !peers.iter().any(|p| p.addr == addr_of(d)),
                "{i} still lists dead {d}"
            );
        }
    }
    assert!(net.stats().peer_downs > downs_before);
    // Once every table is rid of the dead, lookups find exactly the k closest live nodes.
    for &i in &alive {
        for &d in &dead {
            let id = net.node(d).id();
            let mut expected = without(net.closest_alive(&id.0, 5), i);
            expected.truncate(4);
            assert_eq!(
                find_node(&mut net, i, id),
                expected,
                "lookup of {d} from {i}"
            );
        }
    }
}

/// The bucket of each peer in node `i`'s routing table.
fn buckets_used(net: &Network, i: usize) -> Vec<u32> {
    let own = net.node(i).id();
    let peers = net.node(i).dht.peers();
    peers.iter().map(|p| own.bucket_index(&p.id)).collect()
}

#[test]
fn nodes_that_all_join_through_one_learn_the_far_parts_of_the_network() {
    let mut config = config(8);
    // No periodic refresh in this test: what a node knows, it learnt joining or being asked.
    config.dht.refresh_interval = Duration::from_secs(3600);
    let mut net = Network::new(config);
    let first = net.add_node();
    let mut nodes = vec![first];
    for _ in 1..300 {
        let i = net.add_node();
        net.join(i, &[first]);
        net.run_for(Duration::from_millis(100));
        nodes.push(i);
    }
    net.run_for(30 * SECOND);
    // Every node knows someone in each half of the network, and in each quarter: from any of
    // them, a lookup of any id ends at the closest node.
    for &i in &nodes {
        let used = buckets_used(&net, i);
        assert!(
            used.contains(&0) && used.contains(&1),
            "node {i} knows buckets {used:?}"
        );
    }
    for (n, &i) in nodes.iter().enumerate().step_by(10) {
        let target = net.node(nodes[(n * 7 + 3) % nodes.len()]).id();
        let nearest = without(net.closest_alive(&target.0, 2), i)[0];
        assert_eq!(
            find_node(&mut net, i, target).first(),
            Some(&nearest),
            "from {i}"
        );
    }
}

#[test]
fn peers_on_slow_links_are_not_taken_for_dead() {
    // Wide-area round trips (log-normal, median 50 ms, a tenth of the pairs over 95 ms), no loss:
    // every request that fails is a live peer's answer given up on.
    let (mut net, nodes) = network(
        SimConfig {
            links: Links {
                loss: 0.0,
                ..Links::default()
            },
            ..config(20)
        },
        300,
    );
    let (mut queried, mut failed) = (0, 0);
    for (n, &i) in nodes.iter().enumerate().step_by(10) {
        let target = net.node(nodes[(n * 7 + 3) % nodes.len()]).id();
        let outcome = net.run_command(i, 10 * SECOND, |dht, store, now| {
            dht.find_node(store, target, now)
        });
        let Some(Outcome::Lookup(report)) = outcome else {
            panic!("lookup from {i} did not end");
        };
        queried += report.queried;
        failed += report.failed;
    }
    assert!(queried >= 500, "{queried} queries");
    assert!(
        failed * 200 <= queried,
        "{failed} of {queried} queries failed"
    );
}

#[test]
fn a_peer_that_could_only_be_a_replacement_is_not_pinged_back() {
    let (mut net, nodes) = network(config(4), 40);
    let x = nodes[0];
    let own = net.node(x).id();
    let buckets = buckets_used(&net, x);
    assert_eq!(
        buckets.iter().filter(|&&b| b == 0).count(),
        4,
        "bucket 0 is full"
    );
    let nearest = buckets.iter().max().copied().unwrap_or(0);
    // Two newcomers ask x something: one in its full bucket 0, one nearer than any bucket it
    // holds nodes in.
    let newcomer = |net: &mut Network, fits: &dyn Fn(u32) -> bool| loop {
        let keypair = net.keypair();
        if fits(own.bucket_index(&keypair.node_id())) {
            break net.add_node_with_key(keypair);
        }
    };
    let far = newcomer(&mut net, &|b| b == 0);
    let near = newcomer(&mut net, &|b| b > nearest);
    let sent = |net: &Network| net.node(x).dht.status().stats.requests_sent;
    let before = sent(&net);
    net.inject(far, x, Request::Ping);
    net.run_for(SECOND);
    assert_eq!(sent(&net), before, "its bucket has no room: no ping back");
    net.inject(near, x, Request::Ping);
    net.run_for(SECOND);
    assert_eq!(sent(&net), before + 1, "pinged back");
    let peers = net.node(x).dht.peers();
    assert!(peers.iter().any(|p| p.addr == addr_of(near)));
    assert!(!peers.iter().any(|p| p.addr == addr_of(far)));
}

/// Lookups node `i` ran (and ended) so far.
fn lookups_run(net: &Network, i: usize) -> u64 {
    net.node(i).dht.status().stats.lookups
}

#[test]
fn a_refresh_leaves_out_the_buckets_other_lookups_went_through_within_its_interval() {
    // 100 nodes, the n-th one added at 1 s + n * 200 ms, each refreshing every 60 s from then:
    // nodes 50 and 51 at 71 s, 131 s, 191 s and 71.2 s, 131.2 s, 191.2 s.
    let (mut net, nodes) = network(config(4), 100);
    let (busy, idle) = (nodes[50], nodes[51]);
    assert_eq!(net.now(), Time::from_millis(111_000));
    // At 111 s, node 50 looks up its own id and an id in each bucket it may refresh (its id with
    // bit i flipped is in bucket i).
    let own = net.node(busy).id();
    for index in 0..32 {
        let mut target = own;
        target.0[index / 8] ^= 0x80 >> (index % 8);
        find_node(&mut net, busy, target);
    }
    find_node(&mut net, busy, own);
    net.run_for(Time::from_millis(125_000).since(net.now()));
    let before = (lookups_run(&net, busy), lookups_run(&net, idle));
    net.run_for(15 * SECOND);
    assert_eq!(
        lookups_run(&net, busy),
        before.0,
        "node 50's refresh at 131 s had nothing left to look up"
    );
    assert_eq!(
        lookups_run(&net, idle),
        before.1 + 5,
        "node 51's refresh at 131.2 s looked up its own id and 4 buckets"
    );
    // 80 s after its lookups, node 50's next refresh does the work; node 51's does again what
    // its refresh did a minute before.
    net.run_for(60 * SECOND);
    assert_eq!(lookups_run(&net, busy), before.0 + 5);
    assert_eq!(lookups_run(&net, idle), before.1 + 10);
}

#[test]
fn a_silent_peer_holds_a_lookup_only_as_long_as_it_takes_to_answer() {
    let mut config = config(3);
    config.dht.request_timeout = Duration::from_secs(30);
    let mut net = Network::new(config);
    let nodes = net.grow(3, SECOND);
    // Both peers answered before (the joins measured them): 20 ms or so.
    net.crash(nodes[0]);
    let outcome = net.run_command(nodes[2], 10 * SECOND, |dht, store, now| {
        dht.find_value(store, b"anything", None, now)
    });
    let Some(Outcome::Lookup(report)) = outcome else {
        panic!("the lookup did not end");
    };
    // The lookup stopped waiting for the dead peer once it was late; its request failed at the
    // floor of the adaptive timeout, not after 30 s.
    assert!(!report.timed_out);
    assert!(
        report.elapsed <= Duration::from_millis(150),
        "{:?}",
        report.elapsed
    );
    assert_eq!((report.queried, report.answered), (2, 1));
    net.run_for(SECOND);
    let status = net.node(nodes[2]).dht.status();
    assert_eq!(
        (status.suspects, status.peers),
        (1, 2),
        "suspect, still in the table"
    );
    // A second lookup does not ask it.
    let outcome = net.run_command(nodes[2], 10 * SECOND, |dht, store, now| {
        dht.find_value(store, b"anything else", None, now)
    });
    let Some(Outcome::Lookup(report)) = outcome else {
        panic!("the lookup did not end");
    };
    assert_eq!((report.queried, report.answered), (1, 1));
}

#[test]
fn a_dead_peer_offered_again_after_it_left_the_table_does_not_hold_a_lookup() {
    // k = 2: with 2 peers each, the tables are full and no node rejoins.
    let mut config = config(2);
    config.dht.request_timeout = Duration::from_secs(30);
    // No refresh lookups either: b asks x nothing.
    config.dht.refresh_interval = Duration::from_secs(3600);
    let mut net = Network::new(config);
    let nodes = net.grow(3, SECOND);
    let (a, b, x) = (nodes[0], nodes[1], nodes[2]);
    net.crash(x);
    let lookup = |net: &mut Network| {
        let outcome = net.run_command(a, 10 * SECOND, |dht, store, now| {
            dht.find_value(store, b"anything", None, now)
        });
        let Some(Outcome::Lookup(report)) = outcome else {
            panic!("the lookup did not end");
        };
        report
    };
    lookup(&mut net);
    // Probed as its suspect times run out, x fails its way out of a's table; b, which has not
    // asked it anything since, still lists it, and offers it.
    net.run_for(120 * SECOND);
    let listed = |net: &Network, i: usize| {
        let peers = net.node(i).dht.peers();
        peers.iter().any(|p| p.addr == addr_of(x))
    };
    assert_eq!((listed(&net, a), listed(&net, b)), (false, true));
    assert_eq!(
        net.node(a).dht.status().suspects,
        0,
        "its suspect time is over"
    );
    // a asks it again, offered by b, but does not wait for it: the lookup ends on b's answer,
    // one 20 ms round trip, not at x's timeout (at least 100 ms, doubled per failure).
    let report = lookup(&mut net);
    assert_eq!((report.queried, report.answered), (2, 1));
    assert!(
        report.elapsed < Duration::from_millis(50),
        "{:?}",
        report.elapsed
    );
    // Its query ran on to its deadline (a few seconds at most): x failed once more, and is
    // suspect again.
    net.run_for(5 * SECOND);
    assert_eq!(net.node(a).dht.status().suspects, 1);
}

#[test]
fn a_lookup_through_a_silent_peer_ends_at_the_lookup_timeout() {
    let mut config = config(3);
    // Shorter than any request timeout (at least 100 ms) and than the time after which a lookup
    // stops waiting for a late peer (at least 10 ms).
    config.dht.lookup_timeout = Duration::from_millis(8);
    config.dht.request_timeout = Duration::from_secs(30);
    let mut net = Network::new(config);
    let nodes = net.grow(2, SECOND);
    net.crash(nodes[0]);
    let failures = net.node(nodes[1]).dht.status().stats.lookup_failures;
    let outcome = net.run_command(nodes[1], 10 * SECOND, |dht, store, now| {
        dht.find_value(store, b"anything", None, now)
    });
    let Some(Outcome::Lookup(report)) = outcome else {
        panic!("the lookup did not end");
    };
    assert!(report.timed_out);
    assert_eq!(report.elapsed, Duration::from_millis(8));
    assert_eq!((report.queried, report.answered), (1, 0));
    assert_eq!(
        net.node(nodes[1]).dht.status().stats.lookup_failures,
        failures + 1
    );
}

#[test]
fn lookups_wait_for_a_free_slot_within_a_bounded_queue() {
    let mut config = config(3);
    config.dht.max_lookups = 1;
    config.dht.max_queued_lookups = 1;
    let (mut net, nodes) = network(config, 10);
    let asker = nodes[4];
    let ops: Vec<_> = (0..3u8)
        .map(|i| {
            net.command(asker, |dht, store, now| {
                dht.find_node(store, NodeId([i; 32]), now)
            })
        })
        .collect();
    // No slot and no room to wait: the third ends at once, timed out, having asked no one.
    let Some(Outcome::Lookup(third)) = net.outcome(asker, ops[2]) else {
        panic!("the third lookup should have ended at once");
    };
    assert!(third.timed_out && third.queried == 0);
    net.run_for(10 * SECOND);
    let reports: Vec<_> = ops[..2]
        .iter()
        .map(|op| match net.outcome(asker, *op) {
            Some(Outcome::Lookup(report)) => report,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(reports.iter().all(|r| !r.timed_out && r.answered > 0));
    assert!(
        reports[1].elapsed > reports[0].elapsed,
        "the second waited for the first"
    );
}

#[test]
fn a_node_cut_off_at_its_bootstrap_joins_once_it_can_reach_the_network() {
    let (mut net, nodes) = network(config(4), 20);
    let seed = nodes[3];
    // The bootstrap of `island` is lost; `late` joins through `island`, which knows no one.
    let island = net.add_node();
    net.cut(island, seed);
    net.join(island, &[seed]);
    net.run_for(5 * SECOND);
    let late = net.add_node();
    net.join(late, &[island]);
    net.run_for(5 * SECOND);
    assert!(net.node(late).dht.peer_count() <= 1);
    net.heal(island, seed);
    net.run_for(Duration::from_secs(30));
    for i in [island, late] {
        assert!(net.node(i).dht.peer_count() >= 4, "{i} joined the network");
    }
    net.advertise(nodes[0], "reachable", "https://r:1", 300);
    net.run_for(5 * SECOND);
    let found = net.discover(late, "reachable", 1).expect("lookup ended");
    assert_eq!(found.len(), 1);
}

#[test]
fn an_advertisement_made_before_the_join_reached_anyone_is_placed_once_it_does() {
    // Enough nodes that the key's closest are not the ones the node meets joining.
    let (mut net, nodes) = network(config(4), 200);
    let seed = nodes[3];
    let early = net.add_node();
    net.cut(early, seed);
    net.join(early, &[seed]);
    net.run_for(5 * SECOND);
    // Advertised with a long time to live: its republish is due only in 10 minutes.
    let op = net.advertise(early, "early", "https://early:1", 3_600);
    net.run_for(SECOND);
    match net.outcome(early, op) {
        Some(Outcome::Published(Ok(published))) => assert_eq!(published.acked, 0),
        other => panic!("publish outcome {other:?}"),
    }
    net.heal(early, seed);
    net.run_for(Duration::from_secs(60));
    let key = service_key("early");
    let holders = net.holders(&key);
    for replica in without(net.closest_alive(&key, 5), early).iter().take(4) {
        assert!(holders.contains(replica), "{replica} of {holders:?}");
    }
    let found = net.discover(nodes[10], "early", 1).expect("lookup ended");
    assert_eq!(found.len(), 1);
}

#[test]
fn answers_to_a_client_come_from_local_data_only() {
    let (mut net, nodes) = network(config(3), 10);
    net.publish_once(nodes[0], "local", "https://l:1", 600);
    net.run_for(5 * SECOND);
    let key = service_key("local");
    // A holder answers at once from its store; a node holding enough answers without a lookup.
    let holder = without(net.holders(&key), nodes[0])[0];
    let lookups_before = net.node(holder).dht.status().stats.lookups;
    let now = net.now();
    let node = net.node_mut(holder);
    let Started::Done(held) = node.dht.providers(&mut node.store, &key, 1, now) else {
        panic!("a holder answers from its store");
    };
    assert_eq!(held.len(), 1);
    assert_eq!(net.node(holder).dht.status().stats.lookups, lookups_before);
}

#[test]
fn one_seed_gives_one_outcome_on_one_thread_or_several() {
    let run = |threads| {
        let mut config = config(4);
        config.links.loss = 0.02;
        config.threads = threads;
        let (mut net, nodes) = network(config, 40);
        net.advertise(nodes[1], "a", "https://a:1", 60);
        net.crash(nodes[2]);
        net.run_for(Duration::from_secs(120));
        let peers: Vec<_> = net
            .alive()
            .iter()
            .map(|&i| net.node(i).dht.peers())
            .collect();
        (net.stats(), peers, net.holders(&service_key("a")))
    };
    let one = run(1);
    assert_eq!(one, run(1));
    assert_eq!(one, run(2), "two threads, as one");
    assert_eq!(one, run(3), "three threads, as one");
}

#[test]
fn a_network_smaller_than_k_keeps_its_timers_moving() {
    // Fewer nodes than k: every join finds fewer than k, so re-joins keep coming (less and less
    // often) and meet the periodic refresh. The simulator panics on a node whose deadline does
    // not move on.
    let mut config = config(20);
    // Re-joins that take longer than the refresh period overlap it.
    config.dht.refresh_interval = SECOND;
    config.links.median_rtt = Duration::from_millis(400);
    let (mut net, nodes) = network(config, 6);
    net.run_for(Duration::from_secs(600));
    for &i in &nodes {
        assert_eq!(
            net.node(i).dht.peer_count(),
            5,
            "{i} knows every other node"
        );
    }
}
