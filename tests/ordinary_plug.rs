//! A plug built the ordinary way composes with the generator, by both tools.
//!
//! `tests/plug-template/` is a token-source plug as a new plug author writes
//! one: Rust's std, wit-bindgen against our `wit/`, `generate_all`, no version
//! tricks. This suite builds it, checks that every WASI import it has is the
//! generator's version, composes it with `wac plug` and with `wasm-tools
//! compose`, and runs each result in the wasmtime CLI against a stand-in
//! Cloudsmith that issues ESO's own test-vector token: the outputs must be
//! exactly ESO's (`expiry` = `1700000000`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use testkit::cloudsmith::{auth_for, StandIn, ESO_TOKEN};
use testkit::process::{assert_no_secret, expect_success};

/// The one WASI version the generator and its plugs share.
const WASI_VERSION: &str = "@0.2.12";
/// Building the plug from a cold cache takes about a minute on two cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The wasmtime CLI's name for the export (WAVE puts the version last).
const WASMTIME_INVOKE: &str = "secretgen:generator/generator.generate@0.1.0";

fn workspace() -> PathBuf {
    testkit::workspace_root()
}

/// Builds the template exactly as its README comment says a plug author
/// would, into its own target directory (the running cargo holds the lock on
/// the workspace's).
fn build_template() -> PathBuf {
    let template = workspace().join("tests").join("plug-template");
    let target = workspace().join("target").join("plug-template");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&template)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        // Flags meant for the host build (coverage, sanitizers) break a wasm one.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    expect_success("building tests/plug-template", cmd, BUILD_TIMEOUT);
    let wasm = target.join("wasm32-wasip2/release/ordinary_plug.wasm");
    assert!(wasm.is_file(), "{} is missing", wasm.display());
    wasm
}

/// The `import` lines of a component's world.
fn imports(wasm: &Path) -> Vec<String> {
    let mut cmd = Command::new(testkit::tools::wasm_tools());
    cmd.args(["component", "wit"]).arg(wasm);
    let out = expect_success("wasm-tools component wit", cmd, RUN_TIMEOUT);
    out.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("import "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

fn assert_one_wasi_version(what: &str, imports: &[String]) {
    let wasi: Vec<&String> = imports.iter().filter(|i| i.starts_with("wasi:")).collect();
    assert!(!wasi.is_empty(), "{what}: no WASI imports at all: {imports:?}");
    let others: Vec<&&String> = wasi.iter().filter(|i| !i.ends_with(WASI_VERSION)).collect();
    assert!(
        others.is_empty(),
        "{what}: WASI imports not at {WASI_VERSION}: {others:?}"
    );
}

#[test]
fn an_ordinary_plug_composes_both_ways_and_runs_esos_vector_in_wasmtime() {
    let plug = build_template();
    let plug_imports = imports(&plug);
    assert_one_wasi_version("the template plug", &plug_imports);
    // It does use WASI (std's environment), so the check above means something.
    assert!(
        plug_imports.iter().any(|i| i == "wasi:cli/environment@0.2.12"),
        "{plug_imports:?}"
    );

    let generator = testkit::artifacts::wasm("cloudsmith-access-token");
    let work = tempfile::tempdir().unwrap();
    // `wasm-tools compose -d` names the instance after the file: kebab-case.
    let plug_copy = work.path().join("ordinary-plug.wasm");
    std::fs::copy(&plug, &plug_copy).unwrap();

    let (_runtime, stand_in) = StandIn::eso_vector_blocking();
    let manifest = json!({
        "spec": {
            "apiUrl": stand_in.url(),
            "orgSlug": "my-org",
            "serviceSlug": "my-svc",
            "serviceAccountRef": {"name": "default"},
        }
    })
    .to_string();
    let oidc = testkit::oidc::token("system:serviceaccount:apps:default", &[&stand_in.origin()]);
    let want = json!({"ok": [["auth", auth_for(ESO_TOKEN)], ["expiry", "1700000000"]]});
    assert_eq!(
        want["ok"][0][1],
        "dG9rZW46ZXlKaGJHY2lPaUpJVXpJMU5pSXNJblI1Y0NJNklrcFhWQ0o5LmV5SnpkV0lpT2lJeE1qTTBOVFkzT0Rrd0lpd2libUZ0WlNJNklrcHZhRzRnUkc5bElpd2laWGh3SWpveE56QXdNREF3TURBd2ZRLnNpZ25hdHVyZQ==",
        "the expected auth is ESO's, computed independently"
    );

    for composer in ["wac", "wasm-tools"] {
        let composed = work.path().join(format!("{composer}.wasm"));
        let mut cmd = match composer {
            "wac" => {
                let mut c = Command::new(testkit::tools::wac());
                c.arg("plug").arg("--plug").arg(&plug_copy).arg(&generator);
                c
            }
            _ => {
                let mut c = Command::new(testkit::tools::wasm_tools());
                c.args(["compose", "--quiet"])
                    .arg(&generator)
                    .arg("-d")
                    .arg(&plug_copy);
                c
            }
        };
        cmd.arg("-o").arg(&composed);
        expect_success(
            &format!("{composer} composing the template plug"),
            cmd,
            RUN_TIMEOUT,
        );

        let composed_imports = imports(&composed);
        assert_one_wasi_version(composer, &composed_imports);
        assert!(
            !composed_imports.iter().any(|i| i.starts_with("secretgen:")),
            "{composer}: the plug did not satisfy token-source: {composed_imports:?}"
        );

        let mut cmd = Command::new(testkit::tools::wasmtime());
        cmd.args(["run", "-S", "http", "--env", "OIDC_TOKEN", "--invoke"])
            .arg(format!(
                "{WASMTIME_INVOKE}({}, {})",
                testkit::wave::string(&manifest),
                testkit::wave::string("apps")
            ))
            .arg(&composed)
            .env("OIDC_TOKEN", &oidc);
        let out = expect_success(
            &format!("wasmtime running the {composer} composition"),
            cmd,
            RUN_TIMEOUT,
        );
        assert_no_secret(&[&out.stdout, &out.stderr], &[&oidc]);
        let got = testkit::wave::parse(out.stdout.trim())
            .and_then(testkit::wave::outputs_as_text)
            .unwrap_or_else(|e| panic!("{composer}: {e}: {}", out.stdout));
        assert_eq!(got, want, "{composer}");
    }
    // One exchange per composition reached Cloudsmith, each with the plug's token.
    let requests = stand_in.requests_for("my-org");
    assert_eq!(requests.len(), 2, "{requests:?}");
    for r in requests {
        assert_eq!(r.json().unwrap()["oidc_token"], oidc.as_str());
    }
}
