//! What Rust's std would otherwise supply to the component: an allocator, a
//! panic handler and the `cabi_realloc` export.
//!
//! The component is `no_std`. On `wasm32-wasip2`, std brings its own runtime
//! (stdio, environment, exit, a panic hook that formats messages to stderr),
//! and with it imports of `wasi:cli@0.2.6`: about 40 KiB, and a second WASI
//! version beside the 0.2.12 of `wasi:http`. Without it the component imports
//! nothing but `wasi:http`, `wasi:io`, `wasi:clocks` and the token source.

use alloc::alloc::{alloc, realloc, Layout};

/// Grows linear memory as needed. A component instance is single-threaded,
/// which is what talc's wasm allocator requires.
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

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
