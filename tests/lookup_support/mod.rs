//! A deterministic in-memory Kademlia network that drives [`Lookup`] the way the runtime will,
//! for the lookup simulation tests and the lookup bench.
//!
//! Every node has a `RoutingTable<u32>` (k = 20) holding what it would keep after inserting every
//! other node in its own random order: the first 20 of that order in each bucket. Inserting the
//! rest would only fill replacement caches, which `closest` never reads, so they are skipped;
//! that keeps a 10 000-node network buildable in about a second. A node answers a query with the
//! 20 closest to the target from its table; a dead node's queries fail. Answers arrive in a
//! random order among those in flight, like real latencies would reorder them.
//!
//! Dead nodes come in two flavours ([`Dead`]): just died, still listed in every table and so in
//! answers; or noticed, left out of answers (a node serves only peers it knows are good, as
//! BEP 5 asks) while the initiator's own table still lists them.
#![allow(dead_code)] // each includer uses a part

use std::collections::{HashMap, HashSet};

use macula_dht::lookup::{Lookup, LookupConfig, Outcome};
use macula_dht::table::{RoutingTable, TableConfig};
use macula_dht::{NodeId, ID_LEN};

pub const K: usize = 20;

/// xorshift64*: deterministic, so every run sees the same network and lookups.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for a test (n is far below 2^32).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    pub fn id(&mut self) -> NodeId {
        let mut id = [0u8; ID_LEN];
        for chunk in id.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        NodeId(id)
    }
}

/// Which nodes are dead, and whether the other nodes have noticed.
#[derive(Clone, Copy)]
pub struct Dead<'a> {
    /// `nodes[i]`: queries to node i fail.
    pub nodes: &'a [bool],
    /// Answers leave dead nodes out (seeds from the initiator's table still include them).
    pub noticed: bool,
}

impl Dead<'_> {
    pub fn is(&self, at: u32) -> bool {
        self.nodes.get(at as usize).copied().unwrap_or(false)
    }
}

pub struct Network {
    pub ids: Vec<NodeId>,
    pub tables: Vec<RoutingTable<u32>>,
    /// Address of each id.
    pub index: HashMap<NodeId, u32>,
}

/// One lookup as the simulation saw it.
pub struct Run {
    pub outcome: Outcome<u32>,
    /// Addresses queried, in order.
    pub queried: Vec<u32>,
    /// Most queries in flight at once.
    pub max_in_flight: usize,
    /// Every node the lookup was told about (seeds and answers), with repeats.
    pub heard: Vec<NodeId>,
}

impl Network {
    pub fn build(n: usize, rng: &mut Rng) -> Network {
        let ids: Vec<NodeId> = (0..n).map(|_| rng.id()).collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let tables = ids
            .iter()
            .map(|local| {
                let mut table = RoutingTable::new(
                    *local,
                    TableConfig {
                        k: K,
                        replacements: 8,
                    },
                );
                let mut in_bucket = [0usize; 257];
                // Fisher-Yates: this node's own random insertion order.
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i + 1));
                }
                for &j in &order {
                    let id = ids[j as usize];
                    let bucket = local.bucket_index(&id) as usize;
                    if bucket < 256 && in_bucket[bucket] < K {
                        in_bucket[bucket] += 1;
                        table.insert(id, j);
                    }
                }
                table
            })
            .collect();
        let index = ids.iter().zip(0..).map(|(id, i)| (*id, i)).collect();
        Network { ids, tables, index }
    }

    /// Node `at`'s answer to FIND_NODE(target): its table's 20 closest, live ones only if the
    /// deaths were noticed.
    pub fn answer(&self, at: u32, target: &NodeId, dead: Dead) -> Vec<(NodeId, u32)> {
        let table = &self.tables[at as usize];
        let n = if dead.noticed { table.len() } else { K };
        table
            .closest(target, n)
            .into_iter()
            .filter(|(_, a)| !dead.noticed || !dead.is(**a))
            .take(K)
            .map(|(id, a)| (*id, *a))
            .collect()
    }

    /// The true `k` closest live nodes to `target`, `from` excluded (it never queries itself).
    pub fn true_closest(&self, from: u32, target: &NodeId, dead: Dead) -> Vec<NodeId> {
        let live = (0..self.ids.len() as u32)
            .filter(|&i| i != from && !dead.is(i))
            .map(|i| self.ids[i as usize]);
        k_closest(live, target)
    }

    /// Runs one lookup from node `from`, seeded with its table's closest to `target` (dead or
    /// not). `providers(i)`: the provider records node i holds for the target.
    pub fn lookup(
        &self,
        from: u32,
        target: &NodeId,
        config: LookupConfig,
        dead: Dead,
        providers: impl Fn(u32) -> Vec<(Vec<u8>, Vec<u8>)>,
        rng: &mut Rng,
    ) -> Run {
        let alpha = config.alpha;
        let config = LookupConfig {
            local: Some(self.ids[from as usize]),
            ..config
        };
        let seeds = self.answer(
            from,
            target,
            Dead {
                noticed: false,
                ..dead
            },
        );
        let mut heard: Vec<NodeId> = seeds.iter().map(|(id, _)| *id).collect();
        let mut lookup = Lookup::new(*target, config, seeds);
        let mut in_flight: Vec<(NodeId, u32)> = Vec::with_capacity(alpha);
        let mut queried = Vec::new();
        let mut max_in_flight = 0;
        loop {
            let sent = lookup.next_queries();
            queried.extend(sent.iter().map(|(_, a)| *a));
            in_flight.extend(sent);
            max_in_flight = max_in_flight.max(in_flight.len());
            if lookup.is_finished() {
                break;
            }
            assert!(
                !in_flight.is_empty(),
                "unfinished lookup with nothing to send or await"
            );
            let (peer, at) = in_flight.swap_remove(rng.below(in_flight.len()));
            if dead.is(at) {
                lookup.on_failure(&peer);
            } else {
                let answer = self.answer(at, target, dead);
                heard.extend(answer.iter().map(|(id, _)| *id));
                lookup.on_response(&peer, answer, providers(at));
            }
        }
        Run {
            outcome: lookup.into_outcome(),
            queried,
            max_in_flight,
            heard,
        }
    }
}

impl Network {
    /// The `k` closest live nodes to `target` among those `run` heard of, `from` excluded: the
    /// best any lookup could answer from the same information.
    pub fn best_heard(&self, run: &Run, from: u32, target: &NodeId, dead: Dead) -> Vec<NodeId> {
        let live = run
            .heard
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|id| {
                self.index
                    .get(*id)
                    .is_some_and(|&i| i != from && !dead.is(i))
            })
            .copied();
        k_closest(live, target)
    }
}

/// The `K` closest of `ids` to `target`, closest first (brute force).
fn k_closest(ids: impl Iterator<Item = NodeId>, target: &NodeId) -> Vec<NodeId> {
    let mut all: Vec<_> = ids.map(|id| (id.distance(target), id)).collect();
    if all.len() > K {
        all.select_nth_unstable(K);
        all.truncate(K);
    }
    all.sort_unstable();
    all.into_iter().map(|(_, id)| id).collect()
}

/// Asserts the lookup never queried `from` itself nor any peer twice, and kept within alpha.
pub fn check_invariants(run: &Run, from: u32, alpha: usize) {
    assert!(!run.queried.contains(&from), "queried itself");
    let distinct: HashSet<u32> = run.queried.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        run.queried.len(),
        "a peer was queried twice"
    );
    assert!(
        run.max_in_flight <= alpha,
        "{} in flight",
        run.max_in_flight
    );
}

/// The `p`-th percentile (nearest rank) of `values`, sorted in place.
pub fn percentile(values: &mut [u32], p: f64) -> u32 {
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}
