//! The built component against its contract: valid, the WIT world it
//! promises, no filesystem or sockets, within its size budget, and with the
//! small stack the host relies on.

use std::process::Command;

/// The component's size budget: 192 KiB (196,608 bytes).
const SIZE_BUDGET: u64 = 192 * 1024;

/// What `wasm-tools <args> <the component>` prints; the run must succeed.
fn wasm_tools(args: &[&str]) -> String {
    let wasm = testkit::artifacts::wasm("cloudsmith-access-token");
    let out = Command::new(testkit::tools::wasm_tools())
        .args(args)
        .arg(&wasm)
        .output()
        .unwrap_or_else(|e| panic!("run wasm-tools {args:?}: {e}"));
    assert!(
        out.status.success(),
        "wasm-tools {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn component_wit() -> String {
    wasm_tools(&["component", "wit"])
}

/// The `import`/`export` lines of the component's world.
fn world_items(wit: &str, kind: &str) -> Vec<String> {
    wit.lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix(kind)
                .map(|rest| rest.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

#[test]
fn wasm_tools_validates_the_component() {
    wasm_tools(&["validate"]);
}

#[test]
fn world_exports_the_generator_and_imports_the_token_source_and_http() {
    let wit = component_wit();
    assert_eq!(
        world_items(&wit, "export "),
        ["secretgen:generator/generator@0.1.0"]
    );
    let imports = world_items(&wit, "import ");
    for needed in [
        "secretgen:generator/token-source@0.1.0",
        "wasi:http/outgoing-handler@0.2.12",
    ] {
        assert!(
            imports.iter().any(|i| i == needed),
            "missing import {needed} in {imports:?}"
        );
    }
    // Only the token source, wasi:http and what it needs (io, clocks): the
    // component has no std runtime, so no wasi:cli either. The sandbox
    // promise depends on this list staying short.
    let allowed = [
        "secretgen:generator/token-source",
        "wasi:http/",
        "wasi:io/",
        "wasi:clocks/",
    ];
    for import in &imports {
        assert!(
            allowed.iter().any(|p| import.starts_with(p)),
            "unexpected import {import}"
        );
    }
    for forbidden in ["wasi:filesystem", "wasi:sockets", "wasi:cli", "wasi:random"] {
        assert!(!wit.contains(forbidden), "component imports {forbidden}");
    }
}

#[test]
fn every_wasi_import_has_one_version() {
    // Mixed versions (std's wasi:cli@0.2.6 beside wasi:http's wasi:io@0.2.12)
    // are what made `wasm-tools compose` refuse ordinary plugs.
    let imports = world_items(&component_wit(), "import ");
    let wasi: Vec<&String> = imports.iter().filter(|i| i.starts_with("wasi:")).collect();
    assert!(wasi.len() >= 5, "{imports:?}");
    for import in wasi {
        assert!(import.ends_with("@0.2.12"), "{import} is not WASI 0.2.12");
    }
}

#[test]
fn generator_interface_keeps_its_public_names() {
    let wit = component_wit();
    for name in [
        "service-account-token: func(account: service-account-ref, namespace: string) -> result<string, string>",
        "info: func() -> generator-info",
        "generate: func(manifest: string, namespace: string) -> result<list<tuple<string, list<u8>>>, generate-error>",
        "invalid-spec(string)",
        "token-source(string)",
        "policy-denied(string)",
        "unauthorized(upstream-status)",
        "rejected(upstream-status)",
        "rate-limited(rate-limit)",
        "upstream(upstream-failure)",
        "invalid-token(string)",
    ] {
        assert!(wit.contains(name), "component WIT lacks `{name}`");
    }
}

#[test]
fn component_fits_its_size_budget() {
    let wasm = testkit::artifacts::wasm("cloudsmith-access-token");
    let size = std::fs::metadata(&wasm).expect("component metadata").len();
    assert!(
        size <= SIZE_BUDGET,
        "component is {size} bytes, over the {SIZE_BUDGET}-byte budget"
    );
}

/// The stack the root `build.rs` reserves in linear memory.
const STACK_BYTES: u64 = 256 * 1024;

/// The number after `prefix` on the first line of the main core module's text
/// that starts with `prefix`.
fn first_number_after(wat: &str, prefix: &str) -> u64 {
    let main = &wat[wat.find("(core module $main").expect("a main core module")..];
    let line = main
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"));
    let digits: String = line[prefix.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:.80}"))
}

#[test]
fn the_stack_is_small_and_placed_below_the_data() {
    let wat = wasm_tools(&["print"]);
    // The stack pointer starts at the top of the stack, which grows down to 0.
    let stack_top = first_number_after(&wat, "(global (;0;) (mut i32) i32.const");
    assert_eq!(stack_top, STACK_BYTES, "the stack pointer's initial value");
    // Data after the stack: an overflow runs off address 0 (a trap), not into data.
    let data = first_number_after(&wat, "(data (;0;) (i32.const");
    assert!(
        data >= stack_top,
        "data at {data} is inside the stack (top {stack_top})"
    );
    // Stack and data in a few pages: not Rust's default 1 MiB stack (17 pages).
    let pages = first_number_after(&wat, "(memory (;0;)");
    assert!(
        pages * 65536 <= STACK_BYTES + 128 * 1024,
        "initial memory is {pages} pages"
    );
}
