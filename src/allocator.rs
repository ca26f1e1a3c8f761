//! The process's allocator: mimalloc, called the way its fast paths expect.
//!
//! The dataflow allocates and frees rows at a high rate on its own threads, where
//! glibc's per-thread arenas grow by `mprotect` calls (measured in docs/benchmarks.md),
//! so Weir uses mimalloc. The `mimalloc` crate's allocator passes every request to
//! `mi_malloc_aligned`, whose fast path (mimalloc v3) only serves a block that happens to
//! be free in the right size's page and otherwise takes the generic aligned path, and
//! sometimes over-allocates: measured with callgrind on the dataflow thread of
//! `engine-window` as 112 instructions per allocation (38M of 343M for 100k events).
//! Every mimalloc block is aligned to at least 8 bytes, so a request for no more than
//! that goes to plain `mi_malloc`; stricter alignments still take the aligned calls.

#![allow(unsafe_code)] // (an allocator is unsafe by contract; the workspace denies `unsafe` elsewhere)

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (its smallest block is a machine word).
const NATURAL_ALIGN: usize = 8;

/// mimalloc, with plain calls for naturally aligned requests.
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc function of the same contract; a layout
// whose alignment mimalloc's blocks do not always have goes to its aligned variant.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= NATURAL_ALIGN {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= NATURAL_ALIGN {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= NATURAL_ALIGN {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8 }
        }
    }
}

/// mimalloc's `mi_option_purge_delay` and `mi_option_allow_thp`: their positions in
/// `mi_option_e` (mimalloc v3's `mimalloc.h`, which the `libmimalloc-sys` crate builds;
/// its Rust constants stop before these).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: mi::mi_option_t = 43;

/// Tunes the allocator for a process that frees and allocates rows at a high rate.
///
/// Memory freed is kept for reuse instead of being returned to the kernel after a delay
/// (`purge_delay` -1; `MIMALLOC_PURGE_DELAY` still decides when set). Memory returned
/// came back as fresh pages, which the kernel zeroes (a whole transparent huge page at a
/// time) on first touch: measured on a 2-core VM (docs/benchmarks.md, 2026-12-04) as up
/// to 4 s of system time in a 1M-event run, and with purging off engine-window ran at
/// 1.54M–1.59M events/s in four runs of four (304k–1.58M before), nexmark-q5 at
/// 1.20M–1.28M in three (380k–511k), ingest-http at 424k–521k (400k–508k). The cost:
/// the process keeps its peak memory.
///
/// Transparent huge pages are off for the process (`allow_thp` 0, and the process's
/// THP-disable flag for the arena mimalloc mapped, and advised huge, before `main`;
/// `MIMALLOC_ALLOW_THP` still decides when set): with them, each first touch of a 2 MiB
/// region faults in, zeroes and (with the kernel's usual `defrag=madvise`) may first
/// compact a huge page, and the system time that cost swung from 0.2 to 3.7 s between
/// identical 1M-event runs on a 2-core VM; without them nexmark-q0 ran at 1.73M–2.26M
/// events/s against 0.62M–1.35M, and every other workload measured faster too
/// (docs/benchmarks.md, 2026-12-04, third session).
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options (an integer it reads when it would purge)
        unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: sets one of mimalloc's options (an integer it reads when it maps memory),
        // then sets the process's THP-disable flag, as mimalloc does itself when the option
        // is 0 at its start; prctl takes no pointers here
        unsafe {
            mi::mi_option_set(MI_OPTION_ALLOW_THP, 0);
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 12, 24, 40, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: a non-zero layout, freed with the same layout
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null() && p as usize % align == 0, "{size} bytes at {align}");
                    p.write_bytes(7, size);
                    let q = Allocator.realloc(p, layout, size * 3);
                    assert!(!q.is_null() && q as usize % align == 0 && *q.add(size - 1) == 7, "{size} bytes at {align}, grown");
                    Allocator.dealloc(q, Layout::from_size_align(size * 3, align).expect("a valid layout"));
                    let z = Allocator.alloc_zeroed(layout);
                    assert!(z as usize % align == 0 && (0..size).all(|i| *z.add(i) == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
