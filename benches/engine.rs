//! Criterion benches of the engine's hot paths, against the budgets of performance.md.

#[path = "../tests/engine_support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use macula_dht::etf;
use macula_dht::store::{ProviderStore, StoreLimits};
use macula_dht::table::{RoutingTable, TableConfig};
use macula_dht::NodeId;

/// Deterministic pseudo-random bytes (xorshift64*), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn id(&mut self) -> [u8; 32] {
        let mut id = [0u8; 32];
        for chunk in id.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        id
    }
}

/// A store whose key `[0; 32]` holds `n` providers; returns it with their terms.
fn store_with(n: usize, rng: &mut Rng) -> (ProviderStore, Vec<Vec<u8>>) {
    let mut store = ProviderStore::new(StoreLimits::default());
    let providers: Vec<Vec<u8>> = (0..n)
        .map(|_| support::sample_provider(&rng.id()))
        .collect();
    for p in &providers {
        store.upsert(&[0; 32], p, 0).expect("accepted");
    }
    (store, providers)
}

fn store(c: &mut Criterion) {
    let mut rng = Rng(0x5eed);
    let (mut store, providers) = store_with(100, &mut rng);
    let middle = &providers[50];
    c.bench_function("store_upsert_refresh_100_providers", |b| {
        b.iter(|| {
            store
                .upsert(black_box(&[0; 32]), black_box(middle), 1)
                .expect("accepted")
        })
    });

    let (store, _) = store_with(3, &mut rng);
    let mut out = Vec::with_capacity(1024);
    c.bench_function("store_write_list_3_providers", |b| {
        b.iter(|| {
            out.clear();
            store.write_list(black_box(&[0; 32]), 1, &mut out)
        })
    });

    let provider = support::sample_provider(&rng.id());
    c.bench_function("store_upsert_distinct_keys", |b| {
        // Fresh stores of at most 100 000 keys (the memory budget's size), built outside the
        // timing, so memory stays bounded however many iterations criterion asks for.
        const KEYS_PER_STORE: u64 = 100_000;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut key = [0u8; 32];
            for first in (0..iters).step_by(KEYS_PER_STORE as usize) {
                let mut store = ProviderStore::new(StoreLimits::default());
                let start = Instant::now();
                for i in first..iters.min(first + KEYS_PER_STORE) {
                    key[..8].copy_from_slice(&i.to_le_bytes());
                    store
                        .upsert(black_box(&key), &provider, 0)
                        .expect("accepted");
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
}

fn table(c: &mut Criterion) {
    for (name, nodes) in [
        ("table_closest_k20_1k_nodes", 1_000),
        ("table_closest_k20_10k_nodes", 10_000),
    ] {
        let mut rng = Rng(0xc105e57);
        // k large enough that every node is resident.
        let config = TableConfig {
            k: 16_384,
            replacements: 8,
        };
        let mut table = RoutingTable::new(NodeId(rng.id()), config);
        for i in 0..nodes {
            table.insert(NodeId(rng.id()), i);
        }
        assert_eq!(table.len(), nodes);
        let targets: Vec<NodeId> = (0..1024).map(|_| NodeId(rng.id())).collect();
        let mut next = targets.iter().cycle();
        c.bench_function(name, |b| {
            b.iter(|| {
                table
                    .closest(next.next().expect("cycle is endless"), 20)
                    .len()
            })
        });
    }
}

fn etf_skip(c: &mut Criterion) {
    let provider = support::sample_provider(&[7; 32]);
    c.bench_function("etf_skip_provider", |b| {
        b.iter(|| etf::skip_term(black_box(&provider), 1).expect("valid"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = store, table, etf_skip
}
criterion_main!(benches);
