//! The allocation watch: a global allocator that records the largest single allocation a
//! thread makes while it runs a fuzz input, so the runner can report an input that makes a
//! decoder ask for more than [`ALLOCATION_LIMIT`] at once (libFuzzer's `-malloc_limit_mb`).
//!
//! The limit is soft: the allocation is still served (a decoder that asks for 300 MiB gets
//! it, and the input is reported after it returns). An allocation the system cannot serve
//! aborts the process as it would in the server; the runner prints the seed first, so such
//! a run is reproduced with the same `--seed`. Only the fuzzing thread's own allocations
//! count (a decoder that spawned threads would escape the watch; none does).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Largest single allocation an input may cause: 256 MiB.
pub const ALLOCATION_LIMIT: usize = 256 << 20;

thread_local! {
    /// Whether this thread is running an input, and the largest allocation since armed.
    /// `const` initialised and without a destructor, so reading it never allocates.
    static WATCH: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The process's allocator: the system's, watched.
pub struct WatchingAllocator;

fn record(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; nothing is watched then.
    let _ = WATCH.try_with(|w| {
        if let Some(largest) = w.get()
            && size > largest
        {
            w.set(Some(size));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// only addition is `record`, which neither allocates nor unwinds.
#[allow(unsafe_code)] // A `GlobalAlloc` impl is `unsafe` by definition; this crate's only one.
unsafe impl GlobalAlloc for WatchingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as `dealloc`; `new_size` is the caller's, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts watching this thread's allocations (for one input).
pub fn arm() {
    WATCH.with(|w| w.set(Some(0)));
}

/// Stops watching; returns the largest single allocation since [`arm`].
pub fn disarm() -> usize {
    WATCH.with(|w| w.replace(None)).unwrap_or(0)
}
