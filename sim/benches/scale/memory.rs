//! Heap bytes in use, counted by a global allocator wrapped around mimalloc (which serves the
//! two threads of a run, each freeing what the other allocated for its messages, faster than
//! the system allocator: about 6 % of a 10 k scenario's wall time).
//!
//! Each thread counts what it allocates and frees, so that the threads running a network do not
//! contend for one counter. What a network holds is measured on one thread, as the bytes that
//! dropping it there frees: memory allocated on other threads and freed on this one counts too.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::cell::Cell;

/// mimalloc, counting the bytes it holds for the program.
pub struct Counting;

thread_local! {
    /// Bytes this thread allocated less those it freed (negative when it freed others').
    static IN_USE: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: usize, sign: isize) {
    // A thread being torn down may free after its counter is gone: that is not counted.
    let _ = IN_USE.try_with(|c| c.set(c.get() + sign * bytes as isize));
}

// SAFETY: every call is passed on to mimalloc unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { MiMalloc.dealloc(ptr, layout) };
        add(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(layout.size(), -1);
            add(new_size, 1);
        }
        p
    }
}

/// Bytes this thread allocated less those it freed, so far: the difference between two
/// readings is what the thread allocated (or freed) in between.
pub fn in_use() -> isize {
    IN_USE.with(Cell::get)
}
