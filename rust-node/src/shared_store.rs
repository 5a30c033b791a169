//! The provider store a node serves from, shareable with the host that embeds the node.
//!
//! A BEAM node reads its store straight from Erlang processes (through the NIF) while the
//! runtime answers peers from the same store, so there is one store per node whichever door a
//! record came through. The store also owns the node's monotonic clock, because expiry times
//! written by one door must mean the same to the other.
//!
//! A host may keep data derived from the store (the NIF keeps decoded lists of hot keys). The
//! write hook runs under the store's write lock for every key a write touched, so derived data
//! can never outlive a write.

use std::time::Instant;

use macula_dht::{ProviderStore, StoreAccess, StoreLimits, Time};
use parking_lot::{RwLock, RwLockReadGuard};

/// Called with the key of every write, under the store's write lock.
pub type WriteHook = Box<dyn Fn(&[u8]) + Send + Sync>;

/// A node's provider store and clock, shared between the runtime and its host.
pub struct SharedStore {
    store: RwLock<ProviderStore>,
    clock: Instant,
    on_write: Option<WriteHook>,
}

impl SharedStore {
    /// An empty store with these limits; its clock starts now.
    pub fn new(limits: StoreLimits) -> SharedStore {
        SharedStore {
            store: RwLock::new(ProviderStore::new(limits)),
            clock: Instant::now(),
            on_write: None,
        }
    }

    /// A store whose writes also run `hook` (see the module doc).
    pub fn with_write_hook(limits: StoreLimits, hook: WriteHook) -> SharedStore {
        SharedStore {
            on_write: Some(hook),
            ..SharedStore::new(limits)
        }
    }

    /// The time on the store's monotonic clock: the one clock every read, write and expiry of
    /// this store, and the engine of the node that serves it, run on. Never below 1 ms.
    pub fn now(&self) -> Time {
        let elapsed = u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX);
        Time::from_micros(elapsed.saturating_add(1_000))
    }

    /// [`SharedStore::now`] in milliseconds (never 0).
    pub fn now_ms(&self) -> u64 {
        self.now().as_millis()
    }

    /// The store, read-locked.
    pub fn read(&self) -> RwLockReadGuard<'_, ProviderStore> {
        self.store.read()
    }

    /// Runs `write` on the store under its write lock, then the write hook for `key`.
    pub fn write<R>(&self, key: &[u8], write: impl FnOnce(&mut ProviderStore) -> R) -> R {
        let mut store = self.store.write();
        let result = write(&mut store);
        if let Some(hook) = &self.on_write {
            hook(key);
        }
        result
    }

    /// Purges expired records. Not hooked: derived data carries its own expiry.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.store.write().expire(now_ms)
    }
}

/// The engine reaches a shared store through its locks, one operation at a time.
impl StoreAccess for &SharedStore {
    fn read<R>(&self, read: impl FnOnce(&ProviderStore) -> R) -> R {
        read(&SharedStore::read(self))
    }

    fn write<R>(&mut self, key: &[u8], write: impl FnOnce(&mut ProviderStore) -> R) -> R {
        SharedStore::write(self, key, write)
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        SharedStore::expire(self, now_ms)
    }
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("limits", self.store.read().limits())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const RECORD: &[u8] = &[131, 116, 0, 0, 0, 0]; // #{}

    #[test]
    fn writes_run_the_hook_with_their_key_and_reads_see_them() {
        let hooked = Arc::new(AtomicUsize::new(0));
        let seen = hooked.clone();
        let store = SharedStore::with_write_hook(
            StoreLimits::default(),
            Box::new(move |key| {
                assert_eq!(key, b"k");
                seen.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let now = store.now_ms();
        assert!(now >= 1);
        store
            .write(b"k", |s| s.upsert(b"k", RECORD, now))
            .expect("an empty map is a valid provider");
        assert_eq!(hooked.load(Ordering::Relaxed), 1);
        assert_eq!(store.read().providers(b"k", now).count(), 1);
        assert_eq!(store.expire(now), 0);
        assert_eq!(hooked.load(Ordering::Relaxed), 1);
    }
}
