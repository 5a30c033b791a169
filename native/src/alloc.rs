//! Heap accounting for the NIF: every allocation the engine makes inside the BEAM is counted,
//! so `stats/1` and the memory benchmark can report what the store really holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes as glibc malloc chunks (size plus an 8-byte header,
/// rounded up to 16, at least 32): the memory a record really costs, not just what was asked for.
pub struct CountingAllocator;

static HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of heap currently held by Rust code in this VM (engine, store, table, buffers).
pub fn heap_bytes() -> usize {
    HEAP_BYTES.load(Ordering::Relaxed)
}

fn chunk_size(size: usize) -> usize {
    (size.saturating_add(8 + 15) & !15).max(32)
}

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated beside it.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            HEAP_BYTES.fetch_add(chunk_size(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            HEAP_BYTES.fetch_add(chunk_size(layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HEAP_BYTES.fetch_sub(chunk_size(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            HEAP_BYTES.fetch_sub(chunk_size(layout.size()), Ordering::Relaxed);
            HEAP_BYTES.fetch_add(chunk_size(new_size), Ordering::Relaxed);
        }
        new
    }
}
