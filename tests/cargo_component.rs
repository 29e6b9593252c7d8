//! `cargo component build --release --target wasm32-wasip2` builds the same
//! generator as plain `cargo build`.
//!
//! cargo-component 0.21 does two things with that command: it runs cargo for
//! the named target, and, since it does not count `wasm32-wasip2` as a wasm
//! target, it also builds for `wasm32-wasip1` and turns that module into a
//! component itself ("Creating component ..."). Both results must be the
//! generator: the first byte for byte, the second with the same WIT world and
//! the same answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::cloudsmith::{auth_for, StandIn, ESO_TOKEN};
use testkit::process::{expect_success, Output};

/// Two release builds (wasip2 and wasip1) from a cold target directory.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs cargo-component as `cargo component` would, and returns the
/// component it says it created.
fn cargo_component_build(target_dir: &Path) -> PathBuf {
    let mut cmd = Command::new(testkit::tools::cargo_component());
    cmd.current_dir(testkit::workspace_root())
        .args([
            "component",
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "-p",
            "cloudsmith-access-token",
            "--target-dir",
        ])
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let out = expect_success("cargo component build", cmd, BUILD_TIMEOUT);
    // It names the component only when it makes it anew (a rerun with nothing
    // to do is silent), relative to where it ran.
    match out
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Creating component "))
    {
        Some(created) => testkit::workspace_root().join(created.trim()),
        None => target_dir.join("wasm32-wasip1/release/cloudsmith_access_token.wasm"),
    }
}

fn wit(wasm: &Path) -> String {
    let mut cmd = Command::new(testkit::tools::wasm_tools());
    cmd.args(["component", "wit"]).arg(wasm);
    expect_success("wasm-tools component wit", cmd, RUN_TIMEOUT).stdout
}

/// The WIT text's lines, sorted: the same imports, exports and types whatever
/// order the encoder chose.
fn wit_lines(wasm: &Path) -> Vec<String> {
    let mut lines: Vec<String> = wit(wasm)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// `cloudsmith-gen generate --component <wasm>` against `stand_in`.
fn generate(wasm: &Path, stand_in: &StandIn, work: &Path) -> Output {
    let manifest = work.join("generator.json");
    std::fs::write(
        &manifest,
        serde_json::json!({"spec": {
            "apiUrl": stand_in.url(),
            "orgSlug": "my-org",
            "serviceSlug": "my-svc",
            "serviceAccountRef": {"name": "default"},
        }})
        .to_string(),
    )
    .unwrap();
    let token = work.join("token");
    std::fs::write(
        &token,
        testkit::oidc::token("system:serviceaccount:apps:default", &[&stand_in.origin()]),
    )
    .unwrap();
    let mut cmd = Command::new(testkit::tools::cloudsmith_gen());
    cmd.args(["generate", "--no-cache", "--namespace", "apps", "--allow-http"])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--oidc-token-file")
        .arg(&token)
        .arg("--allow-host")
        .arg(stand_in.authority())
        .arg("--component")
        .arg(wasm);
    expect_success(
        &format!("cloudsmith-gen with {}", wasm.display()),
        cmd,
        RUN_TIMEOUT,
    )
}

#[test]
fn cargo_component_builds_the_same_generator() {
    let plain = testkit::artifacts::wasm("cloudsmith-access-token");
    let target_dir = testkit::workspace_root().join("target").join("cargo-component");
    let created = cargo_component_build(&target_dir);

    // The wasm32-wasip2 artifact is rustc's, linked the same way: identical.
    let wasip2 = target_dir.join("wasm32-wasip2/release/cloudsmith_access_token.wasm");
    assert_eq!(
        std::fs::read(&wasip2).unwrap(),
        std::fs::read(&plain).unwrap(),
        "{} differs from the plain build {}",
        wasip2.display(),
        plain.display()
    );

    // The component cargo-component made itself: the same world (its
    // wit-component lists types in another order, so compare line sets)...
    assert!(created.is_file(), "{} is missing", created.display());
    assert_eq!(wit_lines(&created), wit_lines(&plain));

    // ...and the same answers, ESO's own vector included.
    let (_runtime, stand_in) = StandIn::eso_vector_blocking();
    let work = tempfile::tempdir().unwrap();
    let from_plain = generate(&plain, &stand_in, work.path());
    let from_created = generate(&created, &stand_in, work.path());
    let want = serde_json::json!({"auth": auth_for(ESO_TOKEN), "expiry": "1700000000"});
    assert_eq!(from_plain.stdout_json(), want);
    assert_eq!(from_created.stdout_json(), want);
    assert_eq!(from_plain.stdout, from_created.stdout);
}
