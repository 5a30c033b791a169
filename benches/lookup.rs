//! Criterion bench of one full iterative lookup in a simulated 10 000-node network (the runtime's
//! loop without the network), and of the lookup state machine alone on the same queries.

#[path = "../tests/lookup_support/mod.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use macula_dht::lookup::{Lookup, LookupConfig};
use macula_dht::NodeId;
use support::{Dead, Network, Rng};

const NODES: usize = 10_000;
const CASES: usize = 256;

fn lookup(c: &mut Criterion) {
    let net = Network::build(NODES, &mut Rng(0x5eed_10000));
    let mut rng = Rng(0xbe7c);
    let alive = vec![false; NODES];
    let dead = Dead {
        nodes: &alive,
        noticed: false,
    };
    let cases: Vec<(u32, NodeId)> = (0..CASES)
        .map(|_| (rng.below(NODES) as u32, rng.id()))
        .collect();

    let mut next = cases.iter().cycle();
    c.bench_function("lookup_10k_nodes_full", |b| {
        b.iter(|| {
            let (from, target) = next.next().expect("cycle is endless");
            let run = net.lookup(
                *from,
                target,
                LookupConfig::default(),
                dead,
                |_| Vec::new(),
                &mut rng,
            );
            black_box(run.outcome.closest.len())
        })
    });

    // The same lookups with every answer computed beforehand: what the engine itself costs.
    let canned: Vec<Canned> = cases
        .iter()
        .map(|(from, target)| Canned::record(&net, *from, target, dead))
        .collect();
    let mut next = canned.iter().cycle();
    c.bench_function("lookup_10k_nodes_engine_only", |b| {
        b.iter(|| {
            let case = next.next().expect("cycle is endless");
            black_box(case.replay_canned())
        })
    });
}

/// One lookup's seeds and the answers of every peer it queries.
struct Canned {
    local: NodeId,
    target: NodeId,
    seeds: Vec<(NodeId, u32)>,
    answers: HashMap<NodeId, Vec<(NodeId, u32)>>,
}

impl Canned {
    fn record(net: &Network, from: u32, target: &NodeId, dead: Dead) -> Canned {
        let mut canned = Canned {
            local: net.ids[from as usize],
            target: *target,
            seeds: net.answer(from, target, dead),
            answers: HashMap::new(),
        };
        let mut answers = HashMap::new();
        canned.replay(|peer, at| {
            let answer = net.answer(at, target, dead);
            answers.insert(*peer, answer.clone());
            answer
        });
        canned.answers = answers;
        canned
    }

    fn replay_canned(&self) -> usize {
        self.replay(|peer, _| self.answers.get(peer).cloned().unwrap_or_default())
    }

    /// Runs the lookup, answers in FIFO order, each from `answer(peer, address)`.
    fn replay(&self, mut answer: impl FnMut(&NodeId, u32) -> Vec<(NodeId, u32)>) -> usize {
        let config = LookupConfig {
            local: Some(self.local),
            ..LookupConfig::default()
        };
        let mut lookup = Lookup::new(self.target, config, self.seeds.iter().copied());
        let mut in_flight = VecDeque::new();
        loop {
            in_flight.extend(lookup.next_queries());
            let Some((peer, at)) = in_flight.pop_front() else {
                break;
            };
            lookup.on_response(&peer, answer(&peer, at), []);
        }
        lookup.into_outcome().closest.len()
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = lookup
}
criterion_main!(benches);
