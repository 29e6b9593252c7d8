//! Link settings for the component on `wasm32-wasip2`.
//!
//! - **wasi-libc's `memcpy`, `memset` and `memcmp`.** The component is
//!   `no_std` (src/runtime.rs); those functions come from wasi-libc, which std
//!   would otherwise link. Only the memory functions are pulled from it:
//!   libc's start-up code, and its imports of `wasi:cli`, stay out.
//! - **The stack in linear memory: 256 KiB, not Rust's default 1 MiB.** Every
//!   call gets a fresh instance whose memory the host sets up, resets and
//!   releases, so the memory's size is a per-call cost; the default stack made
//!   it 17 pages. The deepest call is serde_json's recursion at its nesting
//!   limit (128) through the manifest's own struct (`spec` nested in `spec`),
//!   which needs between 72 and 80 KiB: host-example/tests/library.rs
//!   (`the_deepest_inputs_fit_the_guest_stack`) runs that input and the other
//!   recursive ones at the limit and beyond, and
//!   failed (a trap) with 64 and 72 KiB stacks, passed with 80 KiB and up.
//!   256 KiB leaves three times that. The stack is placed first (wasm-ld's
//!   default for Rust), so an overflow runs off address 0 and traps instead
//!   of overwriting data, as those failures showed.
//!   `CLOUDSMITH_GUEST_STACK_BYTES` overrides the size, for measuring (the
//!   benchmark builds a 1 MiB variant to price this setting).
//! - **The initial memory: the stack, the data and a 100 KiB heap**, so that
//!   an ordinary call never grows memory (see [`initial_memory`]);
//!   `CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES` overrides it, and
//!   `CLOUDSMITH_GUEST_TALC_GROWS_FIRST=1` puts back talc's own wasm source
//!   (which grows memory on the first allocation), for measuring.

/// The linear memory the component starts with: the stack, the data (about
/// 20 KiB) and a heap of about 100 KiB. An ordinary call allocates less than
/// 64 KiB (it grew memory by one page before src/runtime.rs handed the
/// initial pages to the allocator), so it never grows memory: growing costs an
/// `mprotect` here and another when the host's pool shrinks the slot back.
fn initial_memory(stack: u32) -> u32 {
    const PAGE: u32 = 64 * 1024;
    (stack + 128 * 1024).div_ceil(PAGE) * PAGE
}

/// The stack the component reserves in its linear memory.
const STACK_BYTES: u32 = 256 * 1024;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    println!("cargo:rerun-if-env-changed=CLOUDSMITH_GUEST_STACK_BYTES");
    println!("cargo:rerun-if-env-changed=CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES");
    println!("cargo:rerun-if-env-changed=CLOUDSMITH_GUEST_TALC_GROWS_FIRST");
    println!("cargo:rustc-check-cfg=cfg(talc_grows_first)");
    // talc's own wasm source instead of src/runtime.rs's StartThenGrow: every call
    // grows memory, as before. For the benchmark's lever row only.
    if std::env::var_os("CLOUDSMITH_GUEST_TALC_GROWS_FIRST").is_some() {
        println!("cargo:rustc-cfg=talc_grows_first");
    }
    if arch == "wasm32" && os == "wasi" {
        println!("cargo:rustc-link-lib=c");
        let stack = match std::env::var("CLOUDSMITH_GUEST_STACK_BYTES") {
            Ok(bytes) => match bytes.parse::<u32>() {
                Ok(n) if n >= 4096 && n % 16 == 0 => n,
                _ => {
                    panic!("CLOUDSMITH_GUEST_STACK_BYTES: {bytes:?} is not a multiple of 16 of at least 4096")
                }
            },
            Err(_) => STACK_BYTES,
        };
        println!("cargo:rustc-link-arg=-zstack-size={stack}");
        let initial = match std::env::var("CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES") {
            Ok(bytes) => match bytes.parse::<u32>() {
                Ok(n) if n % (64 * 1024) == 0 && n > stack => n,
                _ => panic!("CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES: {bytes:?} is not a whole number of 64 KiB pages above the stack"),
            },
            Err(_) => initial_memory(stack),
        };
        println!("cargo:rustc-link-arg=--initial-memory={initial}");
    }
}
