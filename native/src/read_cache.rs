//! A bounded cache of decoded provider lists for the keys read most, so that a hot read is one
//! term copy instead of an ETF decode.
//!
//! Decoding three provider maps with `binary_to_term` costs over a microsecond; copying the
//! already-built list into the caller's heap (`enif_make_copy`) a fraction of that. Service
//! discovery reads a few keys over and over, so the lists of recently read keys are kept as
//! terms in process-independent environments. The store stays the source of truth: every write
//! to a key drops its entry (under the store's write lock, so no reader can put back a stale
//! list), and an entry is only served until the earliest expiry of the records it holds.
//!
//! A key is cached on its second read with no write in between: keys read once, or read once
//! after each write (a discover after each publish), would only pay for building an entry that
//! the next write throws away.

use std::hash::BuildHasher;

// Randomly seeded and fast on short keys: this sits on every read and write.
use hashbrown::{DefaultHashBuilder, HashMap, HashSet};

use rustler::env::OwnedEnv;
use rustler::sys::ErlNifTerm;
use rustler::{Env, Term};

/// A provider list built once, copied out on every hit.
struct Entry {
    env: OwnedEnv,
    /// The list, living in `env`. Kept raw rather than as a `SavedTerm`, whose every load
    /// touches a shared reference count: readers on different schedulers would fight over it.
    list: ErlNifTerm,
    valid_until_ms: u64,
}

// SAFETY: after construction an entry's environment is only read: `enif_make_copy` reads the
// list and writes into the caller's environment. It is freed only when the entry is removed,
// which needs `&mut ReadCache`, i.e. the cache's write lock, so no reader holds it then.
unsafe impl Sync for Entry {}

pub struct ReadCache {
    entries: HashMap<Box<[u8]>, Entry>,
    capacity: usize,
    /// Hashes of keys read once and not cached yet; cleared when it grows past its bound.
    seen_once: HashSet<u64>,
    hasher: DefaultHashBuilder,
}

impl ReadCache {
    pub fn new(capacity: usize) -> Self {
        ReadCache {
            entries: HashMap::new(),
            capacity,
            seen_once: HashSet::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The cached list of `key` copied into `env`, if there is one still valid at `now_ms`.
    pub fn get<'a>(&self, env: Env<'a>, key: &[u8], now_ms: u64) -> Option<Term<'a>> {
        let entry = self.entries.get(key)?;
        if entry.valid_until_ms <= now_ms {
            return None;
        }
        // SAFETY: `list` was made in `entry.env`, which is neither cleared nor freed while the
        // entry exists (see `Entry`).
        Some(
            entry
                .env
                .run(|owned| unsafe { Term::new(owned, entry.list) }.in_env(env)),
        )
    }

    /// Called on a miss: keeps a copy of `list` for `key` until `valid_until_ms` if the key was
    /// read before, else remembers that it was. When full, an arbitrary entry makes room: the
    /// cache only has to keep the hottest keys most of the time.
    pub fn admit(&mut self, key: &[u8], list: Term<'_>, valid_until_ms: u64) {
        if self.capacity == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        if self.seen_once.insert(hash) {
            if self.seen_once.len() > 4 * self.capacity {
                self.seen_once.clear();
            }
            return;
        }
        self.seen_once.remove(&hash);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(key) {
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.entries.remove(&victim);
            }
        }
        let env = OwnedEnv::new();
        let list = env.run(|owned| list.in_env(owned).as_c_arg());
        self.entries.insert(
            key.into(),
            Entry {
                env,
                list,
                valid_until_ms,
            },
        );
    }

    pub fn invalidate(&mut self, key: &[u8]) {
        if self.entries.is_empty() && self.seen_once.is_empty() {
            return;
        }
        self.entries.remove(key);
        let hash = self.hasher.hash_one(key);
        self.seen_once.remove(&hash);
    }
}
