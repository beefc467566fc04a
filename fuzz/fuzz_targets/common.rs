//! Shared by every target (included with `#[path]`; not a target itself).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a target may make. libFuzzer's `-malloc_limit_mb` needs a
/// sanitizer's malloc hooks, and `-rss_limit_mb` misses a huge allocation that is never
/// touched (`vec![0; n]` maps zero pages lazily), so without a sanitizer an absurd
/// allocation is caught here: the process aborts and libFuzzer saves the input.
pub const MAX_ALLOCATION: usize = 256 << 20;

struct Capped;

// SAFETY: forwards to the system allocator unchanged; only refuses to return for sizes over
// the cap (it aborts instead).
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // No formatting machinery here (it may allocate): a fixed message, then abort.
        use std::io::Write;
        let _ = std::io::stderr()
            .write_all(b"\n==warren-fuzz== single allocation over MAX_ALLOCATION (256 MiB)\n");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// A fresh directory for one input, removed when dropped. On tmpfs (`/dev/shm`) where the
/// machine has one: the store fsyncs, which on a disk would dominate the run time.
pub fn scratch_dir(target: &str) -> tempfile::TempDir {
    let prefix = format!("warren-fuzz-{target}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = b.tempdir_in(shm)
    {
        return d;
    }
    b.tempdir().expect("temp dir")
}
