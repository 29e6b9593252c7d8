//! Building wasm artifacts of workspace packages, once per process.
//!
//! Guests are built into their own target directory (`target/guest`): the
//! cargo running the tests holds the lock on the main one, and a nested build
//! there would wait for it forever.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// The target every component is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds workspace package `package` for `wasm32-wasip2` in release mode
/// (once per process, whichever test asks first) and returns the path of its
/// `.wasm`. Panics with cargo's output if the build fails.
pub fn wasm(package: &str) -> PathBuf {
    // One lock per package: tests needing different packages build in
    // parallel, tests needing the same one wait for a single build.
    static BUILDS: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let cell = BUILDS
        .get_or_init(Mutex::default)
        .lock()
        .expect("build table lock")
        .entry(package.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| build(package)).clone()
}

fn build(package: &str) -> PathBuf {
    build_in(package, "guest", &[])
}

/// Builds `package` for `wasm32-wasip2` in release mode with the build-time
/// variables `env` set (e.g. the root build.rs's `CLOUDSMITH_GUEST_*`
/// measuring settings), in a target directory of its own
/// (`target/<dir>`), and returns the path of its `.wasm`. Every call runs
/// cargo (which does nothing when the build is current). Panics with cargo's
/// output if the build fails.
pub fn wasm_variant(package: &str, dir: &str, env: &[(&str, String)]) -> PathBuf {
    build_in(package, dir, env)
}

fn build_in(package: &str, dir: &str, env: &[(&str, String)]) -> PathBuf {
    let root = crate::workspace_root();
    let target_dir = root.join("target").join(dir);
    // `CARGO` is the cargo running the tests: the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&root)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            package,
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build (coverage, sanitizers) break a wasm one.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("could not run cargo to build {package}: {e}"));
    if !output.status.success() {
        panic!(
            "building {package} for {TARGET} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        path.is_file(),
        "cargo built {package} but {} is missing",
        path.display()
    );
    path
}
