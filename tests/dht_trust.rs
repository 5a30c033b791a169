//! Who may write or remove a provider, checked on one node's state machine: forged, misattributed,
//! stale and replayed STOREs and REMOVEs are refused and counted, a replica cannot slip unsigned
//! providers into a lookup, and one publisher or one sender cannot crowd out the others.

use std::net::SocketAddr;

use macula_dht::dht::{Action, Outcome, Reply};
use macula_dht::seal::{Keypair, Removal, Seal};
use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response, SealedRecord, WireError};
use macula_dht::{Dht, DhtConfig, ProviderStore, StoreLimits, Time};

#[path = "engine_support/mod.rs"]
mod support;

const KEY: &[u8] = b"svc.victim key";
const NOW: Time = Time::from_millis(1_000);

fn keypair(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

fn node(config: DhtConfig, limits: StoreLimits) -> (Dht, ProviderStore) {
    let dht = Dht::new(keypair(0), config, NOW, 1_800_000_000_000_000, 1).unwrap();
    (dht, ProviderStore::new(limits))
}

fn peer(n: u8) -> NodeInfo {
    NodeInfo {
        id: keypair(n).node_id(),
        addr: SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(n))),
    }
}

/// `#{endpoint => Endpoint, node_id => NodeId}` without version byte.
fn term(node_id: &[u8], endpoint: &str) -> Vec<u8> {
    let etf = support::provider(
        Some(node_id),
        None,
        &[("endpoint", support::Term::Bin(endpoint.as_bytes()))],
    );
    etf[1..].to_vec()
}

fn sealed(by: &Keypair, key: &[u8], node_id: &[u8], endpoint: &str, seq: u64) -> SealedRecord {
    let term = term(node_id, endpoint);
    SealedRecord {
        seal: by.seal(key, &term, seq, 600),
        term,
    }
}

fn store(
    dht: &mut Dht,
    s: &mut ProviderStore,
    from: u8,
    key: &[u8],
    record: SealedRecord,
) -> Response {
    let request = Request::Store {
        key: key.to_vec(),
        record,
    };
    dht.handle_request(s, peer(from), request, NOW)
}

fn remove(
    dht: &mut Dht,
    s: &mut ProviderStore,
    from: u8,
    node_id: &[u8],
    removal: Removal,
) -> Response {
    let request = Request::Remove {
        key: KEY.to_vec(),
        node_id: node_id.to_vec(),
        removal,
    };
    dht.handle_request(s, peer(from), request, NOW)
}

fn refused(reason: ErrorReason) -> Response {
    Response::Error { reason }
}

fn endpoints(s: &ProviderStore, key: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = s
        .providers(key, NOW.as_millis())
        .filter_map(|t| macula_dht::record::Provider::parse(t).ok()?.endpoint)
        .collect();
    found.sort();
    found
}

#[test]
fn nobody_but_the_publisher_writes_or_removes_its_slot() {
    let (mut dht, mut s) = node(DhtConfig::default(), StoreLimits::default());
    let (victim, attacker) = (keypair(1), keypair(2));
    let victim_id = victim.node_id().0;
    let honest = sealed(&victim, KEY, &victim_id, "https://victim:443", 10);
    assert_eq!(
        store(&mut dht, &mut s, 1, KEY, honest.clone()),
        Response::Stored
    );

    // A STORE under the victim's slot, signed by the attacker: the signature is not the
    // victim's.
    let mut forged = sealed(&attacker, KEY, &victim_id, "https://evil:443", 11);
    forged.seal.publisher = *victim.public();
    assert_eq!(
        store(&mut dht, &mut s, 2, KEY, forged),
        refused(ErrorReason::Forged)
    );
    // A record whose bytes were changed after signing.
    let mut tampered = honest.clone();
    tampered.term = term(&victim_id, "https://evil:443");
    tampered.seal.seq = 12;
    assert_eq!(
        store(&mut dht, &mut s, 2, KEY, tampered),
        refused(ErrorReason::Forged)
    );
    // The attacker's own record claiming the victim's node id as its provider id.
    let claimed = sealed(&attacker, KEY, &victim_id, "https://evil:443", 13);
    assert_eq!(
        store(&mut dht, &mut s, 2, KEY, claimed),
        refused(ErrorReason::WrongPublisher)
    );
    // A REMOVE of the victim's slot signed by the attacker.
    let mut removal = attacker.removal(KEY, &victim_id, 14);
    removal.publisher = *victim.public();
    assert_eq!(
        remove(&mut dht, &mut s, 2, &victim_id, removal),
        refused(ErrorReason::Forged)
    );
    // The attacker removing its own slot of that node id: not its to claim either.
    let own = attacker.removal(KEY, &victim_id, 15);
    assert_eq!(
        remove(&mut dht, &mut s, 2, &victim_id, own),
        refused(ErrorReason::WrongPublisher)
    );
    // An older record of the victim's own (a replay of an earlier STORE).
    let older = sealed(&victim, KEY, &victim_id, "https://victim:80", 9);
    assert_eq!(
        store(&mut dht, &mut s, 2, KEY, older),
        refused(ErrorReason::Stale)
    );

    assert_eq!(endpoints(&s, KEY), ["https://victim:443"]);
    let stats = dht.status().stats;
    assert_eq!(
        (
            stats.refused_forged,
            stats.refused_wrong_publisher,
            stats.refused_stale
        ),
        (3, 2, 1)
    );
}

#[test]
fn a_free_form_node_id_is_one_slot_per_publisher() {
    let (mut dht, mut s) = node(DhtConfig::default(), StoreLimits::default());
    let (a, b) = (keypair(1), keypair(2));
    let one = sealed(&a, KEY, b"node-1", "https://a:1", 5);
    let two = sealed(&b, KEY, b"node-1", "https://b:1", 1);
    assert_eq!(store(&mut dht, &mut s, 1, KEY, one), Response::Stored);
    assert_eq!(store(&mut dht, &mut s, 2, KEY, two), Response::Stored);
    assert_eq!(endpoints(&s, KEY), ["https://a:1", "https://b:1"]);
    // B's removal of its "node-1" takes its own slot only.
    let removal = b.removal(KEY, b"node-1", 2);
    assert_eq!(
        remove(&mut dht, &mut s, 2, b"node-1", removal),
        Response::Removed
    );
    assert_eq!(endpoints(&s, KEY), ["https://a:1"]);
}

#[test]
fn a_removal_keeps_replays_out_until_the_publisher_publishes_again() {
    let (mut dht, mut s) = node(DhtConfig::default(), StoreLimits::default());
    let victim = keypair(1);
    let id = victim.node_id().0;
    let record = sealed(&victim, KEY, &id, "https://victim:443", 10);
    assert_eq!(
        store(&mut dht, &mut s, 1, KEY, record.clone()),
        Response::Stored
    );
    // A removal older than the record is refused; a newer one is taken.
    let early = victim.removal(KEY, &id, 9);
    assert_eq!(
        remove(&mut dht, &mut s, 3, &id, early),
        refused(ErrorReason::Stale)
    );
    let removal = victim.removal(KEY, &id, 20);
    assert_eq!(remove(&mut dht, &mut s, 3, &id, removal), Response::Removed);
    assert!(endpoints(&s, KEY).is_empty());
    assert_eq!(dht.status().tombstones, 1);
    // The captured STORE, replayed by anyone, stays out.
    assert_eq!(
        store(&mut dht, &mut s, 2, KEY, record),
        refused(ErrorReason::Removed)
    );
    assert_eq!(dht.status().stats.refused_replay, 1);
    // The publisher's next record is newer than its removal and goes in.
    let again = sealed(&victim, KEY, &id, "https://victim:443", 21);
    assert_eq!(store(&mut dht, &mut s, 1, KEY, again), Response::Stored);
    assert_eq!(endpoints(&s, KEY), ["https://victim:443"]);
}

#[test]
fn a_lookup_drops_providers_nobody_signed() {
    let (mut dht, mut s) = node(DhtConfig::default(), StoreLimits::default());
    let (victim, liar) = (keypair(1), keypair(2));
    let id = victim.node_id().0;
    // The node knows one peer: the lying replica.
    let liar_info = peer(2);
    let op = dht.contact(&mut s, &[liar_info.addr], NOW);
    let sent = sends(&mut dht);
    dht.handle_reply(&mut s, sent[0], answered(&liar, Response::Pong), NOW);
    assert!(matches!(
        done(&mut dht, op),
        Some(Outcome::Contacted(Ok(1)))
    ));

    let op = dht.find_value(&mut s, KEY, None, NOW);
    let sent = sends(&mut dht);
    let honest = sealed(&victim, KEY, &id, "https://victim:443", 10);
    let mut injected = sealed(&liar, KEY, &id, "https://evil:443", 11);
    injected.seal.publisher = *victim.public();
    let unsigned = SealedRecord {
        term: term(b"free", "https://evil:80"),
        seal: Seal {
            publisher: *liar.public(),
            seq: 1,
            ttl_secs: 60,
            sig: [0; 64],
        },
    };
    let reply = Response::Value {
        providers: vec![injected, honest, unsigned],
        nodes: Vec::new(),
    };
    dht.handle_reply(&mut s, sent[0], answered(&liar, reply), NOW);
    let Some(Outcome::Lookup(report)) = done(&mut dht, op) else {
        panic!("the lookup ended");
    };
    let found: Vec<_> = report
        .providers
        .iter()
        .filter_map(|p| p.endpoint.clone())
        .collect();
    assert_eq!(found, ["https://victim:443"]);
    assert_eq!(report.providers[0].publisher, Some(*victim.public()));
    assert_eq!(dht.status().stats.forged_in_replies, 2);
}

#[test]
fn peers_of_another_protocol_version_are_counted() {
    let (mut dht, mut s) = node(DhtConfig::default(), StoreLimits::default());
    let old = keypair(3);
    let op = dht.contact(&mut s, &[peer(3).addr, peer(4).addr], NOW);
    let sent = sends(&mut dht);
    // One answers in version 1, the other refuses our version.
    let v1 = Reply::Answered {
        from: old.node_id(),
        response: Err(WireError::UnsupportedVersion(1)),
    };
    dht.handle_reply(&mut s, sent[0], v1, NOW);
    let refusal = Response::Error {
        reason: ErrorReason::UnsupportedVersion,
    };
    dht.handle_reply(&mut s, sent[1], answered(&keypair(4), refusal), NOW);
    assert!(matches!(
        done(&mut dht, op),
        Some(Outcome::Contacted(Ok(0)) | Outcome::Contacted(Err(_)))
    ));
    // The host counts the requests it could not decode.
    dht.refused_version();
    assert_eq!(dht.status().stats.refused_version, 3);
}

#[test]
fn one_publisher_may_take_its_share_of_the_store_only() {
    let limits = StoreLimits {
        max_records: 100,
        ..StoreLimits::default()
    };
    let (mut dht, mut s) = node(DhtConfig::default(), limits);
    let (flooder, honest) = (keypair(2), keypair(3));
    let mut results = Vec::new();
    for i in 0..20u32 {
        let key = format!("flood {i}");
        let record = sealed(&flooder, key.as_bytes(), b"f", "https://f:1", 1);
        results.push(store(&mut dht, &mut s, 2, key.as_bytes(), record));
    }
    assert_eq!(
        results.iter().filter(|r| **r == Response::Stored).count(),
        10,
        "10 % of 100"
    );
    assert_eq!(results[10], refused(ErrorReason::OverQuota));
    // A refresh of a slot it already holds is still taken; another publisher is unaffected.
    let refresh = sealed(&flooder, b"flood 0", b"f", "https://f:1", 2);
    assert_eq!(
        store(&mut dht, &mut s, 2, b"flood 0", refresh),
        Response::Stored
    );
    let other = sealed(&honest, KEY, b"h", "https://h:1", 1);
    assert_eq!(store(&mut dht, &mut s, 3, KEY, other), Response::Stored);
    assert_eq!(dht.status().stats.refused_quota, 10);
    assert_eq!(s.stats().records, 11);
}

#[test]
fn one_sender_may_send_so_many_stores_a_second() {
    let config = DhtConfig {
        peer_stores_per_s: 2,
        ..DhtConfig::default()
    };
    let (mut dht, mut s) = node(config, StoreLimits::default());
    let sender = keypair(2);
    let replies: Vec<Response> = (0..15u64)
        .map(|seq| {
            let record = sealed(&sender, KEY, b"s", "https://s:1", seq + 1);
            store(&mut dht, &mut s, 2, KEY, record)
        })
        .collect();
    // A burst of five seconds' worth.
    assert_eq!(
        replies.iter().filter(|r| **r == Response::Stored).count(),
        10
    );
    assert_eq!(replies[10], refused(ErrorReason::RateLimited));
    let other = sealed(&keypair(3), KEY, b"o", "https://o:1", 1);
    assert_eq!(store(&mut dht, &mut s, 3, KEY, other), Response::Stored);
    assert_eq!(dht.status().stats.refused_rate, 5);
}

/// The requests a node asked to send since the last call, in order.
fn sends(dht: &mut Dht) -> Vec<macula_dht::RpcId> {
    let mut rpcs = Vec::new();
    while let Some(action) = dht.poll_action() {
        if let Action::Send(out) = action {
            rpcs.push(out.rpc);
        }
    }
    rpcs
}

/// The outcome of `op`, if the node reported it since the last call.
fn done(dht: &mut Dht, op: macula_dht::OpId) -> Option<Outcome> {
    let mut outcome = None;
    while let Some(action) = dht.poll_action() {
        if let Action::Done(o, result) = action {
            if o == op {
                outcome = Some(result);
            }
        }
    }
    outcome
}

fn answered(by: &Keypair, response: Response) -> Reply {
    Reply::Answered {
        from: by.node_id(),
        response: Ok(response),
    }
}
