//! Property tests: the provider store and the routing table against deliberately naive models.

#[path = "engine_support/mod.rs"]
mod support;

use std::collections::BTreeSet;

use macula_dht::store::{ProviderStore, StoreError, StoreLimits, Upserted};
use macula_dht::table::{Inserted, RoutingTable, TableConfig};
use macula_dht::NodeId;
use proptest::prelude::*;
use support::Term;

// Shrunk failures are printed; there is no lib.rs next to this file to persist them beside.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Store

const LIMITS: StoreLimits = StoreLimits {
    max_keys: 3,
    max_providers_per_key: 3,
    max_record_bytes: 70,
    max_key_bytes: 8,
    default_ttl_secs: 3,
    max_ttl_secs: 5,
    // Far above what 3 keys of 3 records of 70 bytes take: the model has no such caps.
    max_records: 1_000,
    max_bytes: 1 << 20,
};
const KEYS: u8 = 5;

#[derive(Debug, Clone)]
enum StoreOp {
    Upsert {
        key: u8,
        node: Option<u8>,
        /// `<<"node_id">>` instead of the atom `node_id`.
        binary_key: bool,
        ttl: Option<u8>,
        pad: u8,
    },
    Remove {
        key: u8,
        node: u8,
    },
    Expire,
    Advance(u16),
}

fn store_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        6 => (0..KEYS, prop::option::weighted(0.85, 0..5u8), any::<bool>(), prop::option::of(1..8u8), 0..3u8)
            .prop_map(|(key, node, binary_key, ttl, pad)| StoreOp::Upsert { key, node, binary_key, ttl, pad }),
        2 => (0..KEYS, 0..5u8).prop_map(|(key, node)| StoreOp::Remove { key, node }),
        1 => Just(StoreOp::Expire),
        // Half-second steps land exactly on expiry times (whole seconds) often.
        3 => (0..6u16).prop_map(|halves| StoreOp::Advance(500 * halves)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    // Key 4 is too long for LIMITS.
    if k == 4 {
        vec![4; 9]
    } else {
        vec![b'k', k]
    }
}

fn node_id(n: u8) -> Vec<u8> {
    vec![b'n', n]
}

fn provider_term(node: Option<u8>, binary_key: bool, ttl: Option<u8>, pad: u8) -> Vec<u8> {
    let node = node.map(node_id);
    let padding = vec![0xaa; 20 * pad as usize];
    let mut fields = vec![(Term::Atom("pad"), Term::Bin(&padding))];
    if let Some(id) = &node {
        let name = if binary_key {
            Term::Bin(b"node_id")
        } else {
            Term::Atom("node_id")
        };
        fields.push((name, Term::Bin(id)));
    }
    if let Some(ttl) = ttl {
        fields.push((Term::Atom("ttl"), Term::Int(ttl.into())));
    }
    support::encode(&Term::Map(fields))
}

/// One record of the model: node id, term bytes (without version byte), expiry.
type ModelRecord = (Option<Vec<u8>>, Vec<u8>, u64);

#[derive(Default)]
struct StoreModel {
    keys: Vec<(Vec<u8>, Vec<ModelRecord>)>,
    expired: u64,
    rejected: u64,
}

impl StoreModel {
    fn position(&self, key: &[u8]) -> Option<usize> {
        self.keys.iter().position(|(k, _)| k == key)
    }

    fn upsert(
        &mut self,
        key: &[u8],
        node: Option<Vec<u8>>,
        etf: &[u8],
        ttl: Option<u32>,
        now: u64,
    ) -> Result<Upserted, StoreError> {
        let result = self.try_upsert(key, node, etf, ttl, now);
        if result.is_err() {
            self.rejected += 1;
        }
        result
    }

    fn try_upsert(
        &mut self,
        key: &[u8],
        node: Option<Vec<u8>>,
        etf: &[u8],
        ttl: Option<u32>,
        now: u64,
    ) -> Result<Upserted, StoreError> {
        if key.len() > LIMITS.max_key_bytes {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max: LIMITS.max_key_bytes,
            });
        }
        let term = etf[1..].to_vec();
        if term.len() > LIMITS.max_record_bytes {
            return Err(StoreError::RecordTooLarge {
                len: term.len(),
                max: LIMITS.max_record_bytes,
            });
        }
        let ttl = ttl
            .unwrap_or(LIMITS.default_ttl_secs)
            .min(LIMITS.max_ttl_secs);
        let record = (node, term, now + u64::from(ttl) * 1000);
        if let Some(i) = self.position(key) {
            let before = self.keys[i].1.len();
            self.keys[i].1.retain(|r| r.2 > now);
            self.expired += (before - self.keys[i].1.len()) as u64;
            if self.keys[i].1.is_empty() {
                self.keys.remove(i);
            }
        }
        let Some(i) = self.position(key) else {
            if self.keys.len() >= LIMITS.max_keys {
                self.expire(now);
                if self.keys.len() >= LIMITS.max_keys {
                    return Err(StoreError::TooManyKeys {
                        max: LIMITS.max_keys,
                    });
                }
            }
            self.keys.push((key.to_vec(), vec![record]));
            return Ok(Upserted::Inserted);
        };
        let records = &mut self.keys[i].1;
        if record.0.is_some() {
            if let Some(same) = records.iter_mut().find(|r| r.0 == record.0) {
                *same = record;
                return Ok(Upserted::Replaced);
            }
        }
        if records.len() >= LIMITS.max_providers_per_key {
            return Err(StoreError::TooManyProviders {
                max: LIMITS.max_providers_per_key,
            });
        }
        records.insert(0, record);
        Ok(Upserted::Inserted)
    }

    fn remove(&mut self, key: &[u8], node: &[u8]) -> bool {
        let Some(i) = self.position(key) else {
            return false;
        };
        let records = &mut self.keys[i].1;
        let Some(at) = records.iter().position(|r| r.0.as_deref() == Some(node)) else {
            return false;
        };
        records.remove(at);
        if records.is_empty() {
            self.keys.remove(i);
        }
        true
    }

    fn expire(&mut self, now: u64) -> usize {
        let before: usize = self.keys.iter().map(|(_, r)| r.len()).sum();
        for (_, records) in &mut self.keys {
            records.retain(|r| r.2 > now);
        }
        self.keys.retain(|(_, r)| !r.is_empty());
        let removed = before - self.keys.iter().map(|(_, r)| r.len()).sum::<usize>();
        self.expired += removed as u64;
        removed
    }

    fn providers(&self, key: &[u8], now: u64) -> Vec<Vec<u8>> {
        let Some(i) = self.position(key) else {
            return vec![];
        };
        self.keys[i]
            .1
            .iter()
            .filter(|r| r.2 > now)
            .map(|r| r.1.clone())
            .collect()
    }

    fn check(&self, store: &ProviderStore, now: u64) -> Result<(), TestCaseError> {
        for k in 0..KEYS {
            let key = key(k);
            let live: Vec<Vec<u8>> = store.providers(&key, now).map(<[u8]>::to_vec).collect();
            prop_assert_eq!(&live, &self.providers(&key, now), "key {}", k);
            let mut list = Vec::new();
            let listed = store.write_list(&key, now, &mut list);
            prop_assert_eq!(listed.count, live.len());
            let earliest = self
                .position(&key)
                .into_iter()
                .flat_map(|i| &self.keys[i].1)
                .map(|r| r.2)
                .filter(|&at| at > now)
                .min()
                .unwrap_or(u64::MAX);
            prop_assert_eq!(listed.valid_until_ms, earliest);
            prop_assert_eq!(store.contains_key(&key), self.position(&key).is_some());
        }
        let keys: BTreeSet<Vec<u8>> = store.keys().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(
            keys,
            self.keys
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<BTreeSet<_>>()
        );
        let stats = store.stats();
        let records = self.keys.iter().flat_map(|(_, r)| r);
        prop_assert_eq!(stats.keys, self.keys.len());
        prop_assert_eq!(stats.records, records.clone().count());
        let bytes = self.keys.iter().map(|(k, _)| k.len()).sum::<usize>()
            + records.map(|r| r.1.len()).sum::<usize>();
        prop_assert_eq!(stats.bytes, bytes);
        prop_assert_eq!(
            (stats.expired, stats.rejected),
            (self.expired, self.rejected)
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(store_op(), 1..120)) {
        let mut store = ProviderStore::new(LIMITS);
        let mut model = StoreModel::default();
        let mut now = 1_000u64;
        for op in ops {
            match op {
                StoreOp::Upsert { key: k, node, binary_key, ttl, pad } => {
                    let etf = provider_term(node, binary_key, ttl, pad);
                    let key = key(k);
                    let got = store.upsert(&key, &etf, now);
                    let expected = model.upsert(&key, node.map(node_id), &etf, ttl.map(u32::from), now);
                    prop_assert_eq!(got, expected);
                }
                StoreOp::Remove { key: k, node } => {
                    prop_assert_eq!(store.remove(&key(k), &node_id(node)), model.remove(&key(k), &node_id(node)));
                }
                StoreOp::Expire => prop_assert_eq!(store.expire(now), model.expire(now)),
                StoreOp::Advance(ms) => now += u64::from(ms),
            }
            model.check(&store, now)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing table

/// Ids with few distinct leading bytes and trailing bits, so that prefixes are shared deeply and
/// the same id comes up again.
fn table_id() -> impl Strategy<Value = NodeId> {
    let byte = prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()];
    (prop::array::uniform3(byte), 0..4u8).prop_map(|(head, tail)| {
        let mut id = [0u8; 32];
        id[..3].copy_from_slice(&head);
        id[31] = tail;
        NodeId(id)
    })
}

#[derive(Debug, Clone)]
enum TableOp {
    Insert(NodeId, u32),
    Remove(NodeId),
    Closest(NodeId, usize),
}

fn table_op() -> impl Strategy<Value = TableOp> {
    prop_oneof![
        5 => (table_id(), any::<u32>()).prop_map(|(id, info)| TableOp::Insert(id, info)),
        2 => table_id().prop_map(TableOp::Remove),
        3 => (table_id(), 0..25usize).prop_map(|(id, n)| TableOp::Closest(id, n)),
    ]
}

/// The `n` nodes of `nodes` closest to `target`, by sorting them all.
fn sorted_closest(mut nodes: Vec<(NodeId, u32)>, target: &NodeId, n: usize) -> Vec<(NodeId, u32)> {
    nodes.sort_by_key(|(id, _)| id.distance(target));
    nodes.truncate(n);
    nodes
}

fn owned(closest: Vec<(&NodeId, &u32)>) -> Vec<(NodeId, u32)> {
    closest.into_iter().map(|(id, info)| (*id, *info)).collect()
}

proptest! {
    #![proptest_config(config())]

    /// With buckets large enough that nothing is pending, the table is a set of nodes.
    #[test]
    fn table_matches_model(local in table_id(), ops in prop::collection::vec(table_op(), 1..200)) {
        let mut table = RoutingTable::new(local, TableConfig { k: 1_000, replacements: 8 });
        let mut model: Vec<(NodeId, u32)> = Vec::new();
        for op in ops {
            match op {
                TableOp::Insert(id, info) => {
                    let expected = if id == local {
                        Inserted::Local
                    } else if let Some(known) = model.iter_mut().find(|(m, _)| *m == id) {
                        known.1 = info;
                        Inserted::Updated
                    } else {
                        model.push((id, info));
                        Inserted::Added
                    };
                    prop_assert_eq!(table.insert(id, info), expected);
                }
                TableOp::Remove(id) => {
                    let known = model.iter().any(|(m, _)| *m == id);
                    model.retain(|(m, _)| *m != id);
                    prop_assert_eq!(table.remove(&id).was_known(), known);
                }
                TableOp::Closest(target, n) => {
                    prop_assert_eq!(owned(table.closest(&target, n)), sorted_closest(model.clone(), &target, n));
                }
            }
            prop_assert_eq!(table.len(), model.len());
            for (id, info) in &model {
                prop_assert_eq!(table.get(id), Some(info));
            }
        }
    }

    /// With small buckets: capacity holds, pending nodes are not resident, and closest is exact
    /// over the resident nodes.
    #[test]
    fn small_buckets_stay_bounded(local in table_id(), ops in prop::collection::vec(table_op(), 1..300)) {
        let k = 2;
        let mut table = RoutingTable::new(local, TableConfig { k, replacements: 2 });
        for op in ops {
            match op {
                TableOp::Insert(id, info) => {
                    let bucket_len = table.buckets().find(|(i, _)| *i == local.bucket_index(&id)).map_or(0, |(_, n)| n.len());
                    let inserted = table.insert(id, info);
                    match inserted {
                        Inserted::Pending => {
                            prop_assert_eq!(bucket_len, k);
                            prop_assert_eq!(table.get(&id), None);
                        }
                        Inserted::Local => prop_assert_eq!(id, local),
                        Inserted::Added | Inserted::Updated => prop_assert_eq!(table.get(&id), Some(&info)),
                    }
                }
                TableOp::Remove(id) => {
                    table.remove(&id);
                    prop_assert_eq!(table.get(&id), None);
                }
                TableOp::Closest(target, n) => {
                    let resident: Vec<(NodeId, u32)> = table.buckets().flat_map(|(_, nodes)| owned(nodes)).collect();
                    prop_assert_eq!(owned(table.closest(&target, n)), sorted_closest(resident, &target, n));
                }
            }
            let mut resident = 0;
            for (index, nodes) in table.buckets() {
                prop_assert!(!nodes.is_empty() && nodes.len() <= k);
                for (id, _) in &nodes {
                    prop_assert_eq!(local.bucket_index(id), index);
                }
                resident += nodes.len();
            }
            prop_assert_eq!(table.len(), resident);
        }
    }
}
