//! Links wasi-libc for the component's `memcpy`, `memset` and `memcmp`.
//!
//! The component is `no_std` (src/runtime.rs); on `wasm32-wasip2` those
//! functions come from wasi-libc, which std would otherwise link. Only the
//! memory functions are pulled from it: libc's start-up code, and its
//! imports of `wasi:cli`, stay out.

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch == "wasm32" && os == "wasi" {
        println!("cargo:rustc-link-lib=c");
    }
}
