//! What Rust's std would otherwise supply to the component: an allocator, a
//! panic handler and the `cabi_realloc` export.
//!
//! The component is `no_std`. On `wasm32-wasip2`, std brings its own runtime
//! (stdio, environment, exit, a panic hook that formats messages to stderr),
//! and with it imports of `wasi:cli@0.2.6`: about 40 KiB, and a second WASI
//! version beside the 0.2.12 of `wasi:http`. Without it the component imports
//! nothing but `wasi:http`, `wasi:io`, `wasi:clocks` and the token source.

use alloc::alloc::{alloc, realloc, Layout};
use core::ptr::NonNull;

use talc::base::binning::Binning;
use talc::base::Talc;
use talc::source::Source;

/// talc with [`StartThenGrow`]. A component instance is single-threaded,
/// which is what `TalcSyncCell::new_wasm` requires.
#[cfg(not(talc_grows_first))]
#[global_allocator]
static ALLOCATOR: talc::cell::TalcSyncCell<StartThenGrow, talc::wasm::WasmBinning> =
    talc::cell::TalcSyncCell::new_wasm(StartThenGrow {
        end: None,
        started: false,
    });

/// talc's own wasm allocator, which grows memory on the first allocation: only
/// built to measure the difference (the root build.rs, for the benchmark).
#[cfg(talc_grows_first)]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[cfg_attr(talc_grows_first, allow(dead_code))]
const PAGE: usize = 64 * 1024;

unsafe extern "C" {
    /// Where the linker ends the stack and the data: the heap may start here.
    static __heap_base: u8;
}

/// Gives talc the memory the module starts with (from `__heap_base` to the end
/// of its initial pages) before growing it.
///
/// talc's own wasm source grows memory on the first allocation and never uses
/// the initial pages past the data. Every call has a fresh instance, so every
/// call grew by a page, and the host's pooling allocator then shrank the slot
/// back for the next instance: two `mprotect`s per call, each sending TLB
/// shootdowns to the other cores. The root build.rs sizes the initial memory so
/// that an ordinary call never grows it (BENCHMARKS.md, "Levers").
#[derive(Debug)]
#[cfg_attr(talc_grows_first, allow(dead_code))]
pub struct StartThenGrow {
    /// The end of the heap talc manages, to extend it when memory grows.
    end: Option<NonNull<u8>>,
    /// Whether the initial pages have been handed over.
    started: bool,
}

// SAFETY: `acquire` only claims memory nothing else uses (the initial pages past
// `__heap_base`, then pages it has just grown) and touches no allocator.
unsafe impl Source for StartThenGrow {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        if !talc.source.started {
            talc.source.started = true;
            let base = core::ptr::addr_of!(__heap_base) as usize;
            let end = core::arch::wasm32::memory_size(0) * PAGE;
            if end > base {
                // SAFETY: between the heap base and the end of memory nothing lives.
                talc.source.end = unsafe { talc.claim(base as *mut u8, end - base) };
                if talc.source.end.is_some() {
                    return Ok(());
                }
            }
        }
        // Room for the block and talc's bookkeeping around it.
        let pages = (layout.size() + layout.align() + 256).div_ceil(PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return Err(());
        }
        let base = (previous * PAGE) as *mut u8;
        let bytes = pages * PAGE;
        if let Some(old_end) = talc.source.end.take() {
            if old_end.as_ptr() == base {
                // SAFETY: the grown pages start where the heap ends.
                talc.source.end = Some(unsafe { talc.extend(old_end, base.wrapping_add(bytes)) });
                return Ok(());
            }
        }
        // SAFETY: the pages were just grown and belong to nothing else.
        talc.source.end = unsafe { talc.claim(base, bytes) };
        talc.source.end.map(drop).ok_or(())
    }
}

/// A panic is a bug; the host reports the trap as the call's failure. There
/// is nowhere to print a message: the component has no stderr.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocator hook, through which the host hands the
/// component strings and lists. wit-bindgen's own copy is linked only for
/// targets without wasi-libc; on wasm32-wasip2 std normally exports it. This
/// is wit-bindgen's implementation, on the global allocator above.
///
/// # Safety
///
/// Called by the host per the canonical ABI: `old_ptr`/`old_len`/`align`
/// describe a live allocation made here (or `old_len` is 0).
#[unsafe(export_name = "cabi_realloc")]
unsafe extern "C" fn cabi_realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    let ptr = if old_len == 0 {
        if new_len == 0 {
            return align as *mut u8;
        }
        // SAFETY: the ABI passes a power-of-two alignment and a size that fits.
        unsafe { alloc(Layout::from_size_align_unchecked(new_len, align)) }
    } else {
        // SAFETY: the caller hands back an allocation of `old_len` bytes at `align`.
        unsafe {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}
