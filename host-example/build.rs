//! Builds the generator component and embeds it, so `cargo run -p cloudsmith-gen -- demo`
//! works on a fresh clone with nothing built beforehand.
//!
//! The component is built by a nested `cargo build --target wasm32-wasip2 --release` into
//! its own target directory (`<workspace>/target/guest`): the outer build holds the lock on
//! the usual target directory, and sharing it would deadlock.
//!
//! Set `CLOUDSMITH_GEN_COMPONENT=/path/to/component.wasm` to embed a prebuilt component
//! instead (offline or cross builds).
//!
//! It also records the commit the binary is built from, for `component push`'s
//! annotations and reproducible `created` time: `CLOUDSMITH_GEN_REVISION` (the commit
//! hash), `CLOUDSMITH_GEN_COMMIT_TIME` (its committer time, UNIX seconds) and
//! `CLOUDSMITH_GEN_SOURCE` (the `origin` remote, when it is an https URL). Outside a git
//! checkout all three are empty.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PACKAGE: &str = "cloudsmith-access-token";
const ARTIFACT: &str = "cloudsmith_access_token.wasm";
const PREBUILT_ENV: &str = "CLOUDSMITH_GEN_COMPONENT";

/// Variables the outer cargo sets for its own compilation that must not leak into
/// the nested build: wrappers (clippy's driver, sccache) and flags meant for the host
/// target, or a target dir / target that would send the nested build elsewhere.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("host-example lives inside the workspace")
        .to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(ARTIFACT);

    println!("cargo:rerun-if-env-changed={PREBUILT_ENV}");
    let built = match env::var_os(PREBUILT_ENV) {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            for input in ["src", "wit", "build.rs", "Cargo.toml", "Cargo.lock"] {
                println!("cargo:rerun-if-changed={}", workspace.join(input).display());
            }
            build_component(&workspace)
        }
    };
    if let Err(e) = std::fs::copy(&built, &out) {
        fail(&format!("copying {} to {}: {e}", built.display(), out.display()));
    }
    record_commit(&workspace);
}

/// Sets the `CLOUDSMITH_GEN_*` commit variables (see the module docs), and asks to be run
/// again when HEAD moves.
fn record_commit(workspace: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let revision = git(&["rev-parse", "HEAD"]);
    let time = git(&["log", "-1", "--format=%ct"]);
    let source = git(&["config", "--get", "remote.origin.url"]);
    // A local path or an ssh address says nothing to a reader of the annotation.
    let source = if source.starts_with("https://") {
        source
    } else {
        String::new()
    };
    println!("cargo:rustc-env=CLOUDSMITH_GEN_REVISION={revision}");
    println!("cargo:rustc-env=CLOUDSMITH_GEN_COMMIT_TIME={time}");
    println!("cargo:rustc-env=CLOUDSMITH_GEN_SOURCE={source}");
    let git_dir = git(&["rev-parse", "--absolute-git-dir"]);
    if !git_dir.is_empty() {
        let git_dir = Path::new(&git_dir);
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
        // Only files that exist: cargo runs the script on every build for a missing one.
        for file in [
            git_dir.join("HEAD"),
            git_dir.join(head_ref),
            git_dir.join("packed-refs"),
        ] {
            if file.is_file() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
    }
}

/// Runs the nested build and returns the component's path.
fn build_component(workspace: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_target_installed();
    let target_dir = workspace.join("target").join("guest");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            PACKAGE,
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "the nested component build ({cargo} build --release --target {TARGET} -p {PACKAGE}) failed: {status}"
        )),
        Err(e) => fail(&format!("could not run {cargo}: {e}")),
    }
    target_dir.join(TARGET).join("release").join(ARTIFACT)
}

/// Adds the wasm32-wasip2 std when the toolchain lacks it. rustup does not add targets
/// from rust-toolchain.toml to an already installed toolchain, so a fresh clone needs this.
fn ensure_target_installed() {
    if target_std_present() {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "`rustup target add {TARGET}` failed ({s}); run it by hand"
        )),
        Err(e) => fail(&format!(
            "the {TARGET} standard library is missing and rustup could not be run ({e}): \
             install the target for this toolchain, or set {PREBUILT_ENV} to a prebuilt component"
        )),
    }
}

fn target_std_present() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

fn fail(message: &str) -> ! {
    // A build script's panic is a multi-line backtrace; this is the one line that matters.
    eprintln!("error: {message}");
    std::process::exit(1);
}
