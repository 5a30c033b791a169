//! The store's memory budget: at most 300 bytes per stored provider, all-in, for 100 000 keys
//! holding one ~158-byte provider each, counted as glibc malloc chunk sizes.
//!
//! A counting global allocator sees every allocation of this test binary, which is why this file
//! holds a single test.

#[path = "engine_support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use macula_dht::store::{ProviderStore, StoreLimits};

/// Live bytes as glibc would account them.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// What glibc malloc really takes for a request: an 8-byte header, rounded up to 16 bytes with a
/// 32-byte minimum; requests from 128 KiB up are mmapped whole pages.
fn chunk(size: usize) -> usize {
    if size >= 128 * 1024 {
        (size + 16).next_multiple_of(4096)
    } else {
        (size + 8).next_multiple_of(16).max(32)
    }
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new_size), Ordering::Relaxed);
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_stored_provider_costs_at_most_300_bytes() {
    const KEYS: u32 = 100_000;
    let mut node_id = [7u8; 32];
    let etf = support::sample_provider(&node_id);
    assert_eq!(etf.len() - 1, 158, "the budget's provider term");

    let before = LIVE.load(Ordering::Relaxed);
    let mut store = ProviderStore::new(StoreLimits::default());
    let mut key = [0u8; 32];
    for i in 0..KEYS {
        // Distinct keys and node ids, like sha256(ServiceId) keys of distinct providers.
        key[..4].copy_from_slice(&i.to_le_bytes());
        key[28..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_be_bytes());
        node_id[..4].copy_from_slice(&i.to_be_bytes());
        let etf = support::sample_provider(&node_id);
        store.upsert(&key, &etf, 0).unwrap();
    }
    let per_record = (LIVE.load(Ordering::Relaxed) - before) as f64 / f64::from(KEYS);
    let stats = store.stats();
    assert_eq!((stats.keys, stats.records), (KEYS as usize, KEYS as usize));
    println!("{per_record:.1} bytes per stored provider ({stats:?})");
    assert!(
        per_record <= 300.0,
        "{per_record:.1} bytes per stored provider"
    );
}
