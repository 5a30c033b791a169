//! The provider store: what this node holds for each DHT key.
//!
//! Every local or network write of a provider lands here through [`ProviderStore::upsert`], and
//! every read comes from here, so the contract's rules live in one place: multi-provider upsert
//! order, per-record TTL expiry, and hard caps that refuse a write whole instead of growing
//! without bound. The packed memory layout is in `entry.rs`, the expiry index in `expiry.rs`.

mod entry;
mod expiry;

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::OccupiedEntry;
use hashbrown::HashTable;

use crate::etf;
use crate::provider::{ProviderError, ProviderRecord};
use crate::seal::{Publisher, Seal};
use entry::{KeyEntry, NewRecord, Upsert};

pub use entry::Record;
use expiry::ExpiryIndex;

/// Hard caps and TTL policy of a [`ProviderStore`].
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Most keys held at once. A write that would add a key beyond it first purges expired
    /// records, then fails with [`StoreError::TooManyKeys`].
    pub max_keys: usize,
    /// Most providers under one key. Adding one beyond it fails with
    /// [`StoreError::TooManyProviders`]; replacing a provider with the same `node_id` never does.
    pub max_providers_per_key: usize,
    /// Longest provider term, in bytes without the version byte (at most 16 MiB - 1 whatever is
    /// configured: the packed layout's cap).
    pub max_record_bytes: usize,
    /// Longest key, in bytes (at most 65 535 whatever is configured: the packed layout's cap).
    pub max_key_bytes: usize,
    /// TTL, in seconds, of a provider without a `ttl` field.
    pub default_ttl_secs: u32,
    /// Longest TTL applied, in seconds; larger `ttl` values are clamped to it.
    pub max_ttl_secs: u32,
    /// Most records held at once, under all keys. Adding one beyond it first purges expired
    /// records, then fails with [`StoreError::TooManyRecords`].
    pub max_records: usize,
    /// Most bytes of keys, terms and seals held at once ([`StoreStats::bytes`]). Adding a record
    /// beyond it first purges expired records, then fails with [`StoreError::TooManyBytes`].
    pub max_bytes: usize,
}

impl Default for StoreLimits {
    /// The defaults of the settings table ([`crate::settings`]).
    fn default() -> Self {
        use crate::settings::*;
        StoreLimits {
            max_keys: MAX_KEYS.default_usize(),
            max_providers_per_key: MAX_PROVIDERS_PER_KEY.default_usize(),
            max_record_bytes: MAX_RECORD_BYTES.default_usize(),
            max_key_bytes: MAX_KEY_BYTES.default_usize(),
            default_ttl_secs: DEFAULT_TTL.default as u32,
            max_ttl_secs: MAX_TTL.default as u32,
            max_records: MAX_RECORDS.default_usize(),
            max_bytes: MAX_BYTES.default_usize(),
        }
    }
}

/// Why an upsert was refused. A refused upsert changes no stored provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key is longer than [`StoreLimits::max_key_bytes`] (or the packed layout's cap).
    #[error("key of {len} bytes exceeds {max}")]
    KeyTooLarge {
        /// Length of the refused key, in bytes.
        len: usize,
        /// Longest key accepted, in bytes: the smaller of the limit and the layout's cap.
        max: usize,
    },
    /// The provider term is longer than [`StoreLimits::max_record_bytes`] (or the packed
    /// layout's cap). Checked before the term is parsed.
    #[error("provider of {len} bytes exceeds {max}")]
    RecordTooLarge {
        /// Length of the refused term, in bytes without the version byte.
        len: usize,
        /// Longest term accepted, in bytes: the smaller of the limit and the layout's cap.
        max: usize,
    },
    /// The key is new and the store holds [`StoreLimits::max_keys`] keys even after purging
    /// expired records.
    #[error("store already holds {max} keys")]
    TooManyKeys {
        /// The configured [`StoreLimits::max_keys`].
        max: usize,
    },
    /// The provider would be added (not replaced) under a key that already holds
    /// [`StoreLimits::max_providers_per_key`] live providers.
    #[error("key already holds {max} providers")]
    TooManyProviders {
        /// The configured [`StoreLimits::max_providers_per_key`].
        max: usize,
    },
    /// The record would be added while the store holds [`StoreLimits::max_records`] records
    /// even after purging expired ones.
    #[error("store already holds {max} records")]
    TooManyRecords {
        /// The configured [`StoreLimits::max_records`].
        max: usize,
    },
    /// The record would take the store past [`StoreLimits::max_bytes`] even after purging
    /// expired records.
    #[error("store would hold more than {max} bytes")]
    TooManyBytes {
        /// The configured [`StoreLimits::max_bytes`].
        max: usize,
    },
    /// A sealed record whose slot holds a record of the same publisher with a sequence at least
    /// as high (an old or replayed copy); does not count in [`StoreStats::rejected`].
    #[error("sequence {seq} is not newer than the {held} held")]
    Stale {
        /// The sequence offered.
        seq: u64,
        /// The sequence held.
        held: u64,
    },
    /// The term is not a valid provider map; does not count in [`StoreStats::rejected`].
    #[error("invalid provider: {0}")]
    InvalidProvider(#[from] ProviderError),
}

/// What one publisher's sealed records take in a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    /// Records held.
    pub records: usize,
    /// Term and seal bytes held.
    pub bytes: usize,
}

/// What [`ProviderStore::write_list`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// Number of live providers in the list written.
    pub count: usize,
    /// The earliest expiry of the listed records (`u64::MAX` when none): until then, and until the
    /// next write to the key, the same list would be written again.
    pub valid_until_ms: u64,
}

/// What an accepted upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// The provider was added, first under its key (the key itself may be new).
    Inserted,
    /// A live provider with the same `node_id` was replaced in place, keeping its position; its
    /// expiry was refreshed.
    Replaced,
}

/// Counters of a [`ProviderStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys held, including keys whose records have all expired but are not yet purged.
    pub keys: usize,
    /// Records held, including expired ones not yet purged.
    pub records: usize,
    /// Key, term and seal bytes held.
    pub bytes: usize,
    /// Records ever removed because they expired.
    pub expired: u64,
    /// Upserts ever refused by a limit.
    pub rejected: u64,
    /// Entries in the expiry index, stale ones included.
    pub expiry_index: usize,
    /// Expiry index entries ever popped: the work [`ProviderStore::expire`] has done.
    pub expiry_pops: u64,
}

/// DHT key -> providers, with TTL expiry and caps. Time is an argument (`now_ms`): the store
/// has no clock.
#[derive(Debug)]
pub struct ProviderStore {
    limits: StoreLimits,
    entries: HashTable<KeyEntry>,
    // Keys can come from untrusted peers: a keyed hash keeps collisions out of their reach.
    hasher: RandomState,
    expiry: ExpiryIndex,
    counts: Counts,
}

impl ProviderStore {
    /// An empty store that enforces `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        ProviderStore {
            limits,
            entries: HashTable::new(),
            hasher: RandomState::new(),
            expiry: ExpiryIndex::default(),
            counts: Counts::default(),
        }
    }

    /// The limits given to [`new`](Self::new), as configured (the packed layout may cap
    /// `max_record_bytes` and `max_key_bytes` lower).
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Multi-provider upsert (contract order) of a local, unsealed record: a provider whose
    /// node_id equals a stored unsealed provider's node_id under `key` replaces it in place
    /// (keeping its position); otherwise the new provider goes first. A provider without node_id
    /// is always added (first). Expiry is `now + min(ttl or default_ttl, max_ttl)` seconds; a
    /// replace refreshes it.
    ///
    /// Limits: key length and term length are always checked; `max_keys` only when the key is new;
    /// `max_providers_per_key`, `max_records` and `max_bytes` only when adding, never for a
    /// replace. Expired records are treated as gone: those under `key` are purged first, and when
    /// the store is at a limit expired records everywhere are purged before a write is refused. A
    /// refused upsert changes no live provider.
    pub fn upsert(&mut self, key: &[u8], etf: &[u8], now_ms: u64) -> Result<Upserted, StoreError> {
        self.counted(|s| s.try_upsert(key, etf, None, now_ms))
    }

    /// [`upsert`](Self::upsert) of a record from the network, with its publisher's seal
    /// (checked by the caller). Its slot is (`node_id`, publisher): it replaces only a record of
    /// the same publisher, and only with a higher sequence ([`StoreError::Stale`] otherwise).
    /// Expiry is `now + min(seal's ttl, max_ttl)`.
    pub fn upsert_sealed(
        &mut self,
        key: &[u8],
        etf: &[u8],
        seal: &Seal,
        now_ms: u64,
    ) -> Result<Upserted, StoreError> {
        self.counted(|s| s.try_upsert(key, etf, Some(seal), now_ms))
    }

    fn counted(
        &mut self,
        upsert: impl FnOnce(&mut Self) -> Result<Upserted, StoreError>,
    ) -> Result<Upserted, StoreError> {
        let result = upsert(self);
        if let Err(e) = &result {
            if !matches!(e, StoreError::InvalidProvider(_) | StoreError::Stale { .. }) {
                self.counts.rejected += 1;
            }
        }
        self.compact_index();
        result
    }

    /// Removes every provider with that node_id under key (live or expired, of any publisher);
    /// the key disappears when its last provider goes. Returns whether something was removed.
    pub fn remove(&mut self, key: &[u8], node_id: &[u8]) -> bool {
        self.remove_where(key, |r| r.node_id == Some(node_id))
    }

    /// Removes the record of one slot: `node_id` as published by `publisher` (`None`: the
    /// unsealed local record). Returns whether it was held.
    pub fn remove_slot(
        &mut self,
        key: &[u8],
        node_id: &[u8],
        publisher: Option<&Publisher>,
    ) -> bool {
        self.remove_where(key, |r| {
            r.node_id == Some(node_id) && r.publisher() == publisher
        })
    }

    fn remove_where(&mut self, key: &[u8], which: impl Fn(&Record<'_>) -> bool) -> bool {
        let hash = self.hasher.hash_one(key);
        let Ok(mut slot) = self.entries.find_entry(hash, |e| e.key() == key) else {
            return false;
        };
        let counts = &mut self.counts;
        let removed = slot
            .get_mut()
            .remove_where(which, &mut |r| counts.forget(r));
        if slot.get().is_empty() {
            let (gone, _) = slot.remove();
            self.counts.bytes -= gone.key().len();
        }
        self.compact_index();
        removed > 0
    }

    /// The live record of one slot (`publisher`: `None` for the unsealed local record).
    pub fn slot(
        &self,
        key: &[u8],
        node_id: &[u8],
        publisher: Option<&Publisher>,
        now_ms: u64,
    ) -> Option<Record<'_>> {
        self.entry(key)?
            .slot(node_id, publisher)
            .filter(|r| r.expires_at > now_ms)
    }

    /// The live records under `key` in stored order, with their seals.
    pub fn records(&self, key: &[u8], now_ms: u64) -> impl Iterator<Item = Record<'_>> + '_ {
        self.live_records(key, now_ms)
    }

    /// What `publisher`'s sealed records take in this store (expired ones not yet purged
    /// included).
    pub fn share(&self, publisher: &Publisher) -> Share {
        self.counts
            .shares
            .get(publisher)
            .copied()
            .unwrap_or_default()
    }

    /// Live providers (`expires_at > now`) under key in stored order, as term bytes without the
    /// version byte; empty when the key is absent.
    pub fn providers(&self, key: &[u8], now_ms: u64) -> impl Iterator<Item = &[u8]> + '_ {
        self.live_records(key, now_ms).map(|r| r.term)
    }

    /// Appends the live providers of key to `out` as one versioned ETF list (the empty list when
    /// none is live or the key is absent) and says how many there are and until when that list
    /// stays true without a write: the earliest expiry among them.
    pub fn write_list(&self, key: &[u8], now_ms: u64, out: &mut Vec<u8>) -> Listed {
        let mut listed = Listed {
            count: 0,
            valid_until_ms: u64::MAX,
        };
        etf::write_list(
            self.live_records(key, now_ms).map(|r| {
                listed.count += 1;
                listed.valid_until_ms = listed.valid_until_ms.min(r.expires_at);
                r.term
            }),
            out,
        );
        listed
    }

    /// The records under `key` that have not expired at `now_ms`, in stored order.
    fn live_records(&self, key: &[u8], now_ms: u64) -> impl Iterator<Item = Record<'_>> + '_ {
        self.entry(key)
            .into_iter()
            .flat_map(KeyEntry::records)
            .filter(move |r| r.expires_at > now_ms)
    }

    /// Removes every record with `expires_at <= now`; returns how many. The work is proportional
    /// to the keys that have something due, not to the size of the store.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.counts.expired;
        while let Some((at, hash)) = self.expiry.pop_due(now_ms) {
            let hasher = &self.hasher;
            // Only the key scheduled at exactly this time owns this index entry; otherwise the
            // entry is stale (its key was removed or rescheduled).
            let owner = |e: &KeyEntry| e.scheduled() == at && hasher.hash_one(e.key()) == hash;
            if let Ok(slot) = self.entries.find_entry(hash, owner) {
                purge(slot, hash, now_ms, &mut self.expiry, &mut self.counts);
            }
        }
        self.compact_index();
        // Bounded by the number of records held.
        (self.counts.expired - before) as usize
    }

    /// Every key held, including keys whose records have all expired but are not yet purged.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries.iter().map(KeyEntry::key)
    }

    /// Whether `key` is held, even when all its records have expired but are not yet purged.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.entry(key).is_some()
    }

    /// The current counters; cheap, nothing is walked.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.entries.len(),
            records: self.counts.records,
            bytes: self.counts.bytes,
            expired: self.counts.expired,
            rejected: self.counts.rejected,
            expiry_index: self.expiry.len(),
            expiry_pops: self.expiry.pops(),
        }
    }

    fn try_upsert(
        &mut self,
        key: &[u8],
        etf: &[u8],
        seal: Option<&Seal>,
        now_ms: u64,
    ) -> Result<Upserted, StoreError> {
        let max_key = self.limits.max_key_bytes.min(entry::MAX_KEY);
        if key.len() > max_key {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max: max_key,
            });
        }
        // Checked before parsing so that an oversized value costs nothing; the version byte is
        // not stored.
        let term_len = etf.len().saturating_sub(1);
        let max_term = self.limits.max_record_bytes.min(entry::MAX_TERM);
        let too_large = StoreError::RecordTooLarge {
            len: term_len,
            max: max_term,
        };
        if term_len > max_term {
            return Err(too_large);
        }
        let provider = ProviderRecord::parse(etf)?;
        let ttl = match seal {
            Some(seal) => seal.ttl_secs,
            None => provider.ttl_secs().unwrap_or(self.limits.default_ttl_secs),
        };
        let ttl_ms = u64::from(ttl.min(self.limits.max_ttl_secs)) * 1000;
        let record =
            NewRecord::new(&provider, now_ms.saturating_add(ttl_ms), seal).ok_or(too_large)?;

        let hash = self.hasher.hash_one(key);
        let existing = match self.entries.find_entry(hash, |e| e.key() == key) {
            // Expired records under the key count as gone: purge them before they can take room
            // or be "replaced in place" as if live.
            Ok(slot) if slot.get().scheduled() <= now_ms => {
                purge(slot, hash, now_ms, &mut self.expiry, &mut self.counts)
            }
            Ok(slot) => Some(slot.into_mut()),
            Err(_) => None,
        };
        let adds = record.stored_len() + if existing.is_none() { key.len() } else { 0 };
        let replaces = existing
            .as_ref()
            .and_then(|e| {
                record
                    .node_id()
                    .and_then(|id| e.slot(id, record.publisher()))
            })
            .is_some();
        if !replaces {
            self.make_room(adds, now_ms)?;
        }
        // `make_room` may have purged the key: look it up again.
        let existing = self.entries.find_mut(hash, |e| e.key() == key);
        let Some(entry) = existing else {
            return self.insert_key(key, hash, &record, now_ms);
        };
        let upserted = match entry.upsert(&record, self.limits.max_providers_per_key) {
            Upsert::Replaced { old_len } => {
                self.counts
                    .replace(record.publisher(), old_len, record.stored_len());
                Upserted::Replaced
            }
            Upsert::Inserted => {
                self.counts.add(record.publisher(), record.stored_len());
                Upserted::Inserted
            }
            Upsert::Full => {
                let max = self.limits.max_providers_per_key;
                return Err(StoreError::TooManyProviders { max });
            }
            Upsert::Stale { held } => {
                let seq = seal.map_or(0, |s| s.seq);
                return Err(StoreError::Stale { seq, held });
            }
        };
        if record.expires_at() < entry.scheduled() {
            entry.set_scheduled(record.expires_at());
            self.expiry.push(record.expires_at(), hash);
        }
        Ok(upserted)
    }

    fn insert_key(
        &mut self,
        key: &[u8],
        hash: u64,
        record: &NewRecord,
        now_ms: u64,
    ) -> Result<Upserted, StoreError> {
        if self.limits.max_providers_per_key == 0 {
            return Err(StoreError::TooManyProviders { max: 0 });
        }
        if self.entries.len() >= self.limits.max_keys {
            // Keys whose records all expired still take room until purged.
            self.expire(now_ms);
            if self.entries.len() >= self.limits.max_keys {
                return Err(StoreError::TooManyKeys {
                    max: self.limits.max_keys,
                });
            }
        }
        let entry = KeyEntry::new(key, record).ok_or(StoreError::KeyTooLarge {
            len: key.len(),
            max: entry::MAX_KEY,
        })?;
        let hasher = &self.hasher;
        self.entries
            .insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
        self.expiry.push(record.expires_at(), hash);
        self.counts.add(record.publisher(), record.stored_len());
        self.counts.bytes += key.len();
        Ok(Upserted::Inserted)
    }

    /// Refuses a write that adds a record of `bytes` past `max_records` or `max_bytes`, once
    /// expired records are purged.
    fn make_room(&mut self, bytes: usize, now_ms: u64) -> Result<(), StoreError> {
        let full = |s: &Self| {
            if s.counts.records >= s.limits.max_records {
                Some(StoreError::TooManyRecords {
                    max: s.limits.max_records,
                })
            } else if s.counts.bytes.saturating_add(bytes) > s.limits.max_bytes {
                Some(StoreError::TooManyBytes {
                    max: s.limits.max_bytes,
                })
            } else {
                None
            }
        };
        if full(self).is_none() {
            return Ok(());
        }
        self.expire(now_ms);
        full(self).map_or(Ok(()), Err)
    }

    fn entry(&self, key: &[u8]) -> Option<&KeyEntry> {
        self.entries
            .find(self.hasher.hash_one(key), |e| e.key() == key)
    }

    fn compact_index(&mut self) {
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.expiry.compact(entries.len(), || {
            entries
                .iter()
                .map(|e| (e.scheduled(), hasher.hash_one(e.key())))
        });
    }
}

/// Running totals behind [`StoreStats`], and each publisher's share.
#[derive(Debug, Default)]
struct Counts {
    records: usize,
    bytes: usize,
    expired: u64,
    rejected: u64,
    /// Publishers of sealed records held; an entry goes with its publisher's last record.
    shares: hashbrown::HashMap<Publisher, Share>,
}

impl Counts {
    fn add(&mut self, publisher: Option<&Publisher>, len: usize) {
        self.records += 1;
        self.bytes += len;
        if let Some(publisher) = publisher {
            let share = self.shares.entry(*publisher).or_default();
            share.records += 1;
            share.bytes += len;
        }
    }

    fn replace(&mut self, publisher: Option<&Publisher>, old_len: usize, len: usize) {
        self.bytes = self.bytes - old_len + len;
        if let Some(share) = publisher.and_then(|p| self.shares.get_mut(p)) {
            share.bytes = share.bytes - old_len + len;
        }
    }

    fn forget(&mut self, record: &Record<'_>) {
        let len = record.stored_len();
        self.records -= 1;
        self.bytes -= len;
        if let Some(publisher) = record.publisher() {
            if let Some(share) = self.shares.get_mut(publisher) {
                share.records -= 1;
                share.bytes -= len;
                if share.records == 0 {
                    self.shares.remove(publisher);
                }
            }
        }
    }
}

/// Purges the expired records of one key and reschedules it, or removes the key when nothing is
/// left. Returns the key's entry if it still exists. (A function rather than a method: the caller
/// holds `slot`, a borrow of the entries, alongside the other fields.)
fn purge<'t>(
    mut slot: OccupiedEntry<'t, KeyEntry>,
    hash: u64,
    now_ms: u64,
    expiry: &mut ExpiryIndex,
    counts: &mut Counts,
) -> Option<&'t mut KeyEntry> {
    let next_expiry = slot.get_mut().purge_expired(now_ms, &mut |r| {
        counts.forget(r);
        counts.expired += 1;
    });
    match next_expiry {
        Some(at) => {
            // Every record left expires after `now`; scheduling after `now` regardless keeps
            // `expire` from popping this key again in the same pass, whatever the records say.
            let at = at.max(now_ms.saturating_add(1));
            let entry = slot.into_mut();
            entry.set_scheduled(at);
            expiry.push(at, hash);
            Some(entry)
        }
        None => {
            let (gone, _) = slot.remove();
            counts.bytes -= gone.key().len();
            None
        }
    }
}

#[cfg(test)]
#[path = "../tests/engine_support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use super::support::{provider, Term};
    use super::*;

    const S: u64 = 1000;

    fn with_ttl(node_id: &str, ttl: i64) -> Vec<u8> {
        provider(Some(node_id.as_bytes()), Some(ttl), &[])
    }

    fn node_ids(store: &ProviderStore, key: &[u8], now: u64) -> Vec<Vec<u8>> {
        store
            .providers(key, now)
            .map(|t| {
                let etf = [&[etf::VERSION][..], t].concat();
                ProviderRecord::parse(&etf)
                    .unwrap()
                    .node_id()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    fn ids(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn new_providers_go_first_and_replacements_keep_their_place() {
        let mut s = ProviderStore::new(StoreLimits::default());
        for id in ["a", "b", "c"] {
            assert_eq!(s.upsert(b"k", &with_ttl(id, 60), 0), Ok(Upserted::Inserted));
        }
        assert_eq!(node_ids(&s, b"k", 0), ids(&["c", "b", "a"]));
        let longer = provider(Some(b"b"), Some(60), &[("extra", Term::Bin(b"xyz"))]);
        assert_eq!(s.upsert(b"k", &longer, 0), Ok(Upserted::Replaced));
        assert_eq!(node_ids(&s, b"k", 0), ids(&["c", "b", "a"]));
        assert_eq!(s.providers(b"k", 0).nth(1), Some(&longer[1..]));
        assert_eq!(s.stats().records, 3);
        let anon = provider(None, None, &[]);
        assert_eq!(s.upsert(b"k", &anon, 0), Ok(Upserted::Inserted));
        assert_eq!(s.upsert(b"k", &anon, 0), Ok(Upserted::Inserted));
        assert_eq!(s.providers(b"k", 0).count(), 5);
        assert_eq!(s.providers(b"k", 0).next(), Some(&anon[1..]));
    }

    #[test]
    fn atom_and_binary_node_id_keys_are_one_provider() {
        let mut s = ProviderStore::new(StoreLimits::default());
        let atom_keyed = provider(Some(b"n1"), None, &[]);
        let mut binary_keyed = vec![131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 7];
        binary_keyed.extend(b"node_id");
        binary_keyed.extend([109, 0, 0, 0, 2, b'n', b'1']);
        assert_eq!(s.upsert(b"k", &atom_keyed, 0), Ok(Upserted::Inserted));
        assert_eq!(s.upsert(b"k", &binary_keyed, 0), Ok(Upserted::Replaced));
        assert_eq!(
            s.providers(b"k", 0).collect::<Vec<_>>(),
            vec![&binary_keyed[1..]]
        );
    }

    #[test]
    fn ttl_default_and_clamp() {
        let limits = StoreLimits {
            default_ttl_secs: 10,
            max_ttl_secs: 100,
            ..Default::default()
        };
        let mut s = ProviderStore::new(limits);
        s.upsert(b"default", &provider(Some(b"a"), None, &[]), 0)
            .unwrap();
        s.upsert(b"own", &with_ttl("a", 50), 0).unwrap();
        s.upsert(b"clamped", &with_ttl("a", 1_000_000), 0).unwrap();
        let live = |s: &ProviderStore, now| {
            ["default", "own", "clamped"].map(|k| s.providers(k.as_bytes(), now).count())
        };
        assert_eq!(live(&s, 10 * S - 1), [1, 1, 1]);
        assert_eq!(live(&s, 10 * S), [0, 1, 1]);
        assert_eq!(live(&s, 50 * S), [0, 0, 1]);
        assert_eq!(live(&s, 100 * S), [0, 0, 0]);
    }

    #[test]
    fn replace_refreshes_expiry() {
        let mut s = ProviderStore::new(StoreLimits::default());
        s.upsert(b"k", &with_ttl("a", 10), 0).unwrap();
        s.upsert(b"k", &with_ttl("a", 10), 8 * S).unwrap();
        assert_eq!(s.expire(12 * S), 0);
        assert_eq!(node_ids(&s, b"k", 12 * S), ids(&["a"]));
        assert_eq!(s.expire(18 * S), 1);
        assert!(!s.contains_key(b"k"));
    }

    #[test]
    fn expiry_removes_exactly_the_expired_and_scans_nothing_else() {
        let mut s = ProviderStore::new(StoreLimits::default());
        for i in 0..10_000u32 {
            s.upsert(&i.to_be_bytes(), &with_ttl("long", 1000), 0)
                .unwrap();
        }
        for i in 0..10u32 {
            s.upsert(&i.to_be_bytes(), &with_ttl("short", 5), 0)
                .unwrap();
            s.upsert(format!("gone{i}").as_bytes(), &with_ttl("short", 5), 0)
                .unwrap();
        }
        let before = s.stats();
        assert_eq!(s.expire(5 * S - 1), 0);
        assert_eq!(s.expire(5 * S), 20);
        let after = s.stats();
        assert!(after.expiry_pops - before.expiry_pops <= 30, "{after:?}");
        assert_eq!(
            (after.keys, after.records, after.expired),
            (10_000, 10_000, 20)
        );
        assert_eq!(node_ids(&s, &3u32.to_be_bytes(), 5 * S), ids(&["long"]));
        assert!(!s.contains_key(b"gone3"));
        assert_eq!(s.expire(1000 * S), 10_000);
        assert_eq!(
            s.stats(),
            StoreStats {
                expired: 10_020,
                expiry_pops: s.stats().expiry_pops,
                ..Default::default()
            }
        );
    }

    #[test]
    fn key_vanishes_after_last_removal() {
        let mut s = ProviderStore::new(StoreLimits::default());
        s.upsert(b"k", &with_ttl("a", 10), 0).unwrap();
        s.upsert(b"k", &with_ttl("b", 10), 0).unwrap();
        assert!(!s.remove(b"k", b"zzz"));
        assert!(!s.remove(b"nokey", b"a"));
        assert!(s.remove(b"k", b"a"));
        assert_eq!(s.keys().collect::<Vec<_>>(), vec![&b"k"[..]]);
        assert!(s.remove(b"k", b"b"));
        assert!(!s.contains_key(b"k"));
        assert_eq!(s.keys().count(), 0);
        assert_eq!(s.stats().bytes, 0);
        // The stale index entry of the removed key is skipped.
        assert_eq!(s.expire(u64::MAX), 0);
    }

    #[test]
    fn each_limit_refuses_and_changes_nothing() {
        let limits = StoreLimits {
            max_keys: 2,
            max_providers_per_key: 2,
            max_record_bytes: 64,
            max_key_bytes: 4,
            ..Default::default()
        };
        let mut s = ProviderStore::new(limits);
        s.upsert(b"k1", &with_ttl("a", 10), 0).unwrap();
        s.upsert(b"k1", &with_ttl("b", 10), 0).unwrap();
        s.upsert(b"k2", &with_ttl("a", 10), 0).unwrap();
        let stats = s.stats();
        let big = provider(Some(b"c"), None, &[("pad", Term::Bin(&[0; 40]))]);
        let cases = [
            (
                &b"k3"[..],
                with_ttl("a", 10),
                StoreError::TooManyKeys { max: 2 },
            ),
            (
                b"k1",
                with_ttl("c", 10),
                StoreError::TooManyProviders { max: 2 },
            ),
            (
                b"k2",
                big.clone(),
                StoreError::RecordTooLarge {
                    len: big.len() - 1,
                    max: 64,
                },
            ),
            (
                b"kkkkk",
                with_ttl("a", 10),
                StoreError::KeyTooLarge { len: 5, max: 4 },
            ),
        ];
        for (key, etf, err) in cases {
            assert_eq!(s.upsert(key, &etf, 0), Err(err));
        }
        assert_eq!(
            s.upsert(b"k1", &[131, 106], 0),
            Err(ProviderError::NotAMap.into())
        );
        assert_eq!(
            s.stats(),
            StoreStats {
                rejected: 4,
                ..stats
            }
        );
        assert_eq!(node_ids(&s, b"k1", 0), ids(&["b", "a"]));
        // Refreshes of stored providers are accepted at both limits.
        assert_eq!(
            s.upsert(b"k1", &with_ttl("a", 20), 0),
            Ok(Upserted::Replaced)
        );
        assert_eq!(
            s.upsert(b"k2", &with_ttl("a", 20), 0),
            Ok(Upserted::Replaced)
        );
    }

    #[test]
    fn expired_records_do_not_count_against_limits() {
        let limits = StoreLimits {
            max_keys: 1,
            max_providers_per_key: 1,
            ..Default::default()
        };
        let mut s = ProviderStore::new(limits);
        s.upsert(b"k1", &with_ttl("a", 1), 0).unwrap();
        // Same node id, but the stored one expired: it is gone, not replaced.
        assert_eq!(
            s.upsert(b"k1", &with_ttl("a", 1), S),
            Ok(Upserted::Inserted)
        );
        assert_eq!(
            s.upsert(b"k1", &with_ttl("b", 1), 2 * S),
            Ok(Upserted::Inserted)
        );
        assert_eq!(
            s.upsert(b"k2", &with_ttl("a", 1), 3 * S),
            Ok(Upserted::Inserted)
        );
        assert_eq!(s.keys().collect::<Vec<_>>(), vec![&b"k2"[..]]);
        assert_eq!(s.stats().expired, 3);
        assert_eq!(s.stats().records, 1);
    }

    #[test]
    fn write_list_appends_live_providers() {
        let mut s = ProviderStore::new(StoreLimits::default());
        let mut out = Vec::new();
        assert_eq!(
            s.write_list(b"k", 0, &mut out),
            Listed {
                count: 0,
                valid_until_ms: u64::MAX
            }
        );
        assert_eq!(out, [131, 106]);
        let (a, b) = (with_ttl("a", 1), with_ttl("b", 10));
        s.upsert(b"k", &a, 0).unwrap();
        s.upsert(b"k", &b, 0).unwrap();
        out.clear();
        // valid until the first of the two expires (ttl 1 s)
        assert_eq!(
            s.write_list(b"k", 0, &mut out),
            Listed {
                count: 2,
                valid_until_ms: S
            }
        );
        let expected = [&[131, 108, 0, 0, 0, 2][..], &b[1..], &a[1..], &[106]].concat();
        assert_eq!(out, expected);
        out.clear();
        assert_eq!(
            s.write_list(b"k", S, &mut out),
            Listed {
                count: 1,
                valid_until_ms: 10 * S
            }
        );
        assert_eq!(out, [&[131, 108, 0, 0, 0, 1][..], &b[1..], &[106]].concat());
    }

    #[test]
    fn sealed_records_keep_their_seal_their_slot_and_their_publishers_share() {
        let mut s = ProviderStore::new(StoreLimits::default());
        let (k1, k2) = (
            crate::seal::Keypair::from_seed(&[1; 32]),
            crate::seal::Keypair::from_seed(&[2; 32]),
        );
        let p = with_ttl("node-1", 3600);
        let seal = |k: &crate::seal::Keypair, seq| k.seal(b"k", &p[1..], seq, 60);
        s.upsert(b"k", &p, 0).unwrap();
        assert_eq!(
            s.upsert_sealed(b"k", &p, &seal(&k1, 5), 0),
            Ok(Upserted::Inserted)
        );
        assert_eq!(
            s.upsert_sealed(b"k", &p, &seal(&k2, 1), 0),
            Ok(Upserted::Inserted)
        );
        assert_eq!(
            s.upsert_sealed(b"k", &p, &seal(&k1, 4), 0),
            Err(StoreError::Stale { seq: 4, held: 5 })
        );
        assert_eq!(
            s.upsert_sealed(b"k", &p, &seal(&k1, 5), 0),
            Ok(Upserted::Replaced),
            "the same record again"
        );
        assert_eq!(s.stats().rejected, 0, "a stale copy is no limit");
        assert_eq!(
            s.upsert_sealed(b"k", &p, &seal(&k1, 6), 0),
            Ok(Upserted::Replaced)
        );
        assert_eq!(s.records(b"k", 0).count(), 3);
        let held = s.slot(b"k", b"node-1", Some(k1.public()), 0).unwrap();
        assert_eq!(held.seal().map(|x| x.seq), Some(6));
        // The seal's ttl sets the expiry, not the term's.
        assert_eq!(held.expires_at, 60 * S);
        assert!(s.slot(b"k", b"node-1", Some(k1.public()), 60 * S).is_none());
        let share = s.share(k1.public());
        assert_eq!(
            share,
            Share {
                records: 1,
                bytes: p.len() - 1 + crate::seal::SEAL_LEN
            }
        );
        assert!(s.remove_slot(b"k", b"node-1", Some(k2.public())));
        assert_eq!(s.share(k2.public()), Share::default());
        assert_eq!(s.records(b"k", 0).count(), 2);
        // A local removal by node_id takes every slot of it.
        assert!(s.remove(b"k", b"node-1"));
        assert!(!s.contains_key(b"k"));
        assert_eq!(s.share(k1.public()), Share::default());
        assert_eq!((s.stats().records, s.stats().bytes), (0, 0));
        // Expiry gives the share back too.
        s.upsert_sealed(b"k", &p, &seal(&k1, 7), 0).unwrap();
        assert_eq!(s.expire(60 * S), 1);
        assert_eq!(s.share(k1.public()), Share::default());
    }

    #[test]
    fn total_records_and_bytes_are_capped() {
        let limits = StoreLimits {
            max_records: 2,
            max_bytes: 1 << 20,
            ..StoreLimits::default()
        };
        let mut s = ProviderStore::new(limits);
        s.upsert(b"a", &with_ttl("x", 10), 0).unwrap();
        s.upsert(b"b", &with_ttl("x", 100), 0).unwrap();
        assert_eq!(
            s.upsert(b"c", &with_ttl("x", 100), 0),
            Err(StoreError::TooManyRecords { max: 2 })
        );
        assert_eq!(
            s.upsert(b"b", &with_ttl("x", 100), 0),
            Ok(Upserted::Replaced)
        );
        // Once the first has expired, there is room again.
        assert_eq!(
            s.upsert(b"c", &with_ttl("x", 100), 10 * S),
            Ok(Upserted::Inserted)
        );
        let tiny = StoreLimits {
            max_bytes: 40,
            ..StoreLimits::default()
        };
        let mut s = ProviderStore::new(tiny);
        s.upsert(b"a", &with_ttl("x", 10), 0).unwrap();
        assert_eq!(
            s.upsert(b"b", &with_ttl("y", 10), 0),
            Err(StoreError::TooManyBytes { max: 40 })
        );
        assert_eq!(s.stats().rejected, 1);
    }

    #[test]
    fn expiry_index_stays_bounded_under_churn() {
        let mut s = ProviderStore::new(StoreLimits::default());
        for round in 0..200u64 {
            for k in 0..10u8 {
                s.upsert(&[k], &with_ttl("a", 100), round).unwrap();
                // A shorter ttl reschedules the key earlier, leaving a stale index entry.
                s.upsert(&[k], &with_ttl("a", 1 + (200 - round as i64)), round)
                    .unwrap();
            }
            s.remove(&[0], b"a");
        }
        assert!(s.stats().expiry_index <= 3 * 10 + 64 + 1, "{:?}", s.stats());
        assert_eq!(s.expire(u64::MAX), 9);
    }
}
