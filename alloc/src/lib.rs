//! The global allocator of Sluice's binaries: mimalloc for blocks under [`LARGE`] bytes,
//! the C library's malloc for larger ones, and for every block in a process that asked for
//! it with [`small_blocks_from_the_system`] (the model server).
//!
//! Measured on the whole request path (`bench/proxy/path.py --alt`, bench/RESULTS.md),
//! mimalloc serves the proxies' many short-lived small blocks (request heads, header maps,
//! futures, TLS records) with less CPU than glibc's malloc. The same binary runs the model
//! server, which fared worse under mimalloc alone (`bench/model-server/alloc.py`): zeroed
//! weight buffers of tens of megabytes were written rather than mapped lazily, and
//! mimalloc's eagerly committed arenas added about 7 MB to every process, so peak RSS and
//! start-up time rose with no gain in throughput. Large blocks therefore always come from
//! the C library, which maps them from the kernel and gives them back when freed; mimalloc
//! commits its arenas as they are used ([`init`]) and does not ask for transparent huge
//! pages; and the model server takes its small blocks from the C library too once it
//! starts.
//!
//! A block goes back to the allocator that made it: large ones by their size alone (which
//! `dealloc` and `realloc` are given exactly as the block was allocated with, by
//! [`GlobalAlloc`]'s contract); small ones by asking mimalloc whether the address is in its
//! heap, once a process may have both kinds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// Blocks of this many bytes or more come from the C library's malloc (mimalloc's "medium"
/// bound: its pages for larger blocks were the ones that stayed resident).
pub const LARGE: usize = 64 * 1024;

/// Whether new small blocks come from mimalloc. Only ever goes from `true` to `false`: while
/// it reads `true`, every small block there is was made by mimalloc.
static SMALL_FROM_MIMALLOC: AtomicBool = AtomicBool::new(true);

/// From now on this process takes its small blocks from the C library too (those already
/// made by mimalloc go back to it). For a process whose memory matters more than its
/// allocation speed: the model server, whose RSS is mostly its weights.
pub fn small_blocks_from_the_system() {
    SMALL_FROM_MIMALLOC.store(false, Ordering::Relaxed);
}

/// mimalloc's `mi_option_arena_eager_commit` (its `mi_option_e` in mimalloc.h, v3).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc up for this process; first thing in `main`. Its arenas are committed as
/// they are used rather than at once: committed at once, they made about 7 MB more resident
/// in every process (measured on the model server at rest: 123.9 MB against 116.2 MB, and
/// 117.1 MB under the C library's malloc alone).
#[allow(unsafe_code)]
pub fn init() {
    // SAFETY: sets an option mimalloc reads when it next reserves an arena; any value is
    // valid for it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// mimalloc for small blocks, the system allocator for large ones (see the crate docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct SplitAlloc;

fn is_small(size: usize) -> bool {
    size < LARGE
}

/// Whether a new block of `size` bytes comes from mimalloc.
fn new_from_mimalloc(size: usize) -> bool {
    is_small(size) && SMALL_FROM_MIMALLOC.load(Ordering::Relaxed)
}

/// Whether small block `ptr` was made by mimalloc.
#[allow(unsafe_code)]
fn made_by_mimalloc(ptr: *mut u8) -> bool {
    // Relaxed is enough: a thread that sees `false` here after the switch also sees it for
    // every block made after the switch and handed to it (those hand-overs synchronize).
    SMALL_FROM_MIMALLOC.load(Ordering::Relaxed)
        // SAFETY: only looks the address up in mimalloc's page map; any address may be asked.
        || unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every method forwards to one of two sound allocators; a block is freed or resized
// by the one that made it (large blocks: by size, which the caller passes as allocated;
// small ones: by mimalloc's own page map once both may hold small blocks).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for SplitAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's `layout` obligations carry over unchanged.
        unsafe {
            if new_from_mimalloc(layout.size()) {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if new_from_mimalloc(layout.size()) {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout` by the allocator chosen here.
        unsafe {
            if is_small(layout.size()) && made_by_mimalloc(ptr) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_small, now_small) = (is_small(layout.size()), is_small(new_size));
        // SAFETY: `ptr` was allocated with `layout` by the allocator chosen here; the caller
        // guarantees `new_size`, rounded up to `layout.align()`, does not overflow, so the
        // new layout is valid.
        unsafe {
            match (was_small, now_small) {
                (true, true) if made_by_mimalloc(ptr) => MiMalloc.realloc(ptr, layout, new_size),
                (true, true) | (false, false) => System.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// Fills `len` bytes at `p` with a pattern.
    unsafe fn fill(p: *mut u8, len: usize) {
        for i in 0..len {
            unsafe { *p.add(i) = (i % 251) as u8 };
        }
    }

    /// Whether the first `len` bytes at `p` hold the pattern.
    unsafe fn holds(p: *const u8, len: usize) -> bool {
        (0..len).all(|i| unsafe { *p.add(i) } == (i % 251) as u8)
    }

    /// Grows and shrinks one block across the bound through `realloc`, checking that its
    /// contents move with it and that each allocator frees only what it made.
    #[test]
    fn a_block_keeps_its_bytes_across_the_bound_both_ways() {
        let a = SplitAlloc;
        for align in [1, 8, 64, 4096] {
            let small = Layout::from_size_align(1000, align).unwrap();
            unsafe {
                let p = a.alloc(small);
                assert!(!p.is_null());
                fill(p, 1000);
                let big = a.realloc(p, small, 3 * LARGE);
                assert!(!big.is_null());
                assert_eq!(big as usize % align, 0);
                assert!(holds(big, 1000));
                *big.add(3 * LARGE - 1) = 7;
                let big_layout = Layout::from_size_align(3 * LARGE, align).unwrap();
                let back = a.realloc(big, big_layout, 500);
                assert!(!back.is_null());
                assert!(holds(back, 500));
                a.dealloc(back, Layout::from_size_align(500, align).unwrap());
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides_of_the_bound() {
        let a = SplitAlloc;
        for size in [16, LARGE - 1, LARGE, 4 * LARGE] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                a.dealloc(p, layout);
            }
        }
    }

    /// Small blocks made before the switch go back to mimalloc, those made after to the C
    /// library: both kinds are resized and freed in any order. (The switch is one-way, so
    /// this is the only test that makes it.)
    #[test]
    fn blocks_from_before_and_after_the_switch_are_freed_where_they_came_from() {
        let a = SplitAlloc;
        let layout = Layout::from_size_align(200, 8).unwrap();
        unsafe {
            let before: Vec<*mut u8> = (0..64).map(|_| a.alloc(layout)).collect();
            assert!(
                before
                    .iter()
                    .all(|p| libmimalloc_sys::mi_is_in_heap_region(p.cast()))
            );
            small_blocks_from_the_system();
            let after: Vec<*mut u8> = (0..64).map(|_| a.alloc(layout)).collect();
            assert!(
                after
                    .iter()
                    .all(|p| !libmimalloc_sys::mi_is_in_heap_region(p.cast()))
            );
            for (i, p) in before.iter().chain(&after).enumerate() {
                fill(*p, 200);
                // Half grown in place within the small class, half freed as they are.
                if i % 2 == 0 {
                    let grown = a.realloc(*p, layout, 2000);
                    assert!(holds(grown, 200));
                    a.dealloc(grown, Layout::from_size_align(2000, 8).unwrap());
                } else {
                    a.dealloc(*p, layout);
                }
            }
        }
    }
}
