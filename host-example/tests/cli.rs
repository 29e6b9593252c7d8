//! The `cloudsmith-gen` binary as a process: argument and input errors end in one
//! `error:` line and the documented exit code; `demo` succeeds without any account.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_cloudsmith-gen");

/// One compiled-component cache for every process this test binary starts, so only
/// the first compiles.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("XDG_CACHE_HOME", cache_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cloudsmith-gen");
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin");
        let _ = pipe.write_all(stdin.unwrap_or("").as_bytes());
    }
    child.wait_with_output().expect("cloudsmith-gen runs")
}

/// Asserts a failure: the exit code, and exactly one stderr line naming `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

/// The documentation's example manifest, byte for byte (shared with the e2e suites).
const SEED: &str = testkit::cloudsmith::DOCUMENTED_MANIFEST;

fn local_manifest(name: &str, api: &str) -> PathBuf {
    write(name, &testkit::cloudsmith::documented_manifest(api))
}

fn token_file() -> PathBuf {
    write("token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl\n")
}

#[test]
fn missing_manifest_file() {
    let out = run(&["generate", "--manifest", "/nonexistent/manifest.yaml"], None);
    assert_fails(&out, 2, "manifest /nonexistent/manifest.yaml");
}

#[test]
fn bad_yaml_on_stdin() {
    let out = run(&["generate", "--manifest", "-"], Some("spec: [1,\n"));
    assert_fails(&out, 2, "invalid YAML");
}

#[test]
fn manifest_that_is_not_a_mapping() {
    let out = run(&["generate", "--manifest", "-"], Some("- a\n- b\n"));
    assert_fails(&out, 2, "not a mapping");
}

#[test]
fn bad_allow_host() {
    for (value, needle) in [
        ("https://x.io", "is a URL"),
        ("x.io:0", "not a port number"),
        ("bad_host", "not a host name"),
    ] {
        let out = run(&["generate", "--manifest", "-", "--allow-host", value], None);
        assert_fails(&out, 2, needle);
    }
}

#[test]
fn unknown_flag_and_bad_numbers() {
    assert_fails(&run(&["generate", "--bogus"], None), 2, "--bogus");
    let m = local_manifest("m-num.yaml", "api.cloudsmith.io");
    let m = m.to_str().unwrap();
    assert_fails(
        &run(&["generate", "--manifest", m, "--timeout", "0"], None),
        2,
        "out of range",
    );
    assert_fails(
        &run(&["generate", "--manifest", m, "--memory-limit", "x"], None),
        2,
        "memory-limit",
    );
    assert_fails(
        &run(
            &["generate", "--manifest", m, "--wasi-dir", "nodoublecolon"],
            None,
        ),
        2,
        "HOST_DIR::GUEST_DIR",
    );
    let t = token_file();
    let out = run(
        &[
            "generate",
            "--manifest",
            m,
            "--oidc-token-file",
            t.to_str().unwrap(),
            "--oidc-token-env",
            "X",
        ],
        None,
    );
    assert_fails(&out, 2, "cannot be used with");
}

#[test]
fn invalid_spec_names_the_field() {
    let t = token_file();
    let out = run(
        &[
            "generate",
            "--manifest",
            "-",
            "--oidc-token-file",
            t.to_str().unwrap(),
        ],
        Some("spec: {orgSlug: my-org, serviceAccountRef: {name: default}}\n"),
    );
    assert_fails(&out, 2, "serviceSlug");
}

#[test]
fn refused_host_is_named() {
    let m = local_manifest("m-deny.yaml", "https://127.0.0.1:9");
    let t = token_file();
    let out = run(
        &[
            "generate",
            "--manifest",
            m.to_str().unwrap(),
            "--oidc-token-file",
            t.to_str().unwrap(),
        ],
        None,
    );
    assert_fails(
        &out,
        4,
        "host 127.0.0.1:9 is not in the outbound allowlist (allowed: api.cloudsmith.io:443)",
    );
}

#[test]
fn plain_http_needs_allow_http() {
    let m = local_manifest("m-http.yaml", "http://127.0.0.1:9");
    let t = token_file();
    let out = run(
        &[
            "generate",
            "--manifest",
            m.to_str().unwrap(),
            "--oidc-token-file",
            t.to_str().unwrap(),
            "--allow-host",
            "127.0.0.1:9",
        ],
        None,
    );
    assert_fails(&out, 4, "plain http to 127.0.0.1:9");
}

#[test]
fn token_source_failures_name_the_source() {
    let m = local_manifest("m-tok.yaml", "https://127.0.0.1:9");
    let m = m.to_str().unwrap();
    let out = run(
        &[
            "generate",
            "--manifest",
            m,
            "--oidc-token-file",
            "/nonexistent/token",
        ],
        None,
    );
    assert_fails(&out, 3, "token file /nonexistent/token");
    let out = run(
        &[
            "generate",
            "--manifest",
            m,
            "--oidc-token-env",
            "CLOUDSMITH_GEN_TEST_UNSET_VAR",
        ],
        None,
    );
    assert_fails(
        &out,
        3,
        "environment variable CLOUDSMITH_GEN_TEST_UNSET_VAR is not set",
    );
    let cross = write(
        "m-cross.yaml",
        &SEED.replace("namespace: \"default\"", "namespace: \"kube-system\""),
    );
    let t = token_file();
    let out = run(
        &[
            "generate",
            "--manifest",
            cross.to_str().unwrap(),
            "--oidc-token-file",
            t.to_str().unwrap(),
        ],
        None,
    );
    assert_fails(&out, 3, "kube-system/default");
}

#[test]
fn demo_prints_eso_outputs() {
    let out = run(&["demo"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("stand-in"),
        "the demo says it is not Cloudsmith: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let obj = json.as_object().expect("an object");
    assert_eq!(obj.len(), 2);
    assert_eq!(obj["expiry"], "1700000000");
    assert!(obj["auth"].as_str().is_some_and(|a| !a.is_empty()));
}

#[test]
fn demo_secret_output_is_a_dockerconfigjson_secret() {
    let out = run(
        &[
            "demo",
            "--output",
            "secret",
            "--namespace",
            "team-a",
            "--secret-name",
            "pull",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(secret["metadata"]["name"], "pull");
    assert_eq!(secret["metadata"]["namespace"], "team-a");
}

#[test]
fn verbose_never_prints_a_token() {
    let out = run(&["demo", "-v"], None);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let auth = json["auth"].as_str().unwrap();
    assert!(!stderr.contains(auth));
    assert!(!stderr.contains("eyJ"), "no JWT on stderr: {stderr}");
    assert!(stderr.contains("request: POST http://127.0.0.1:"), "{stderr}");
}

#[test]
fn info_prints_the_generator_description() {
    let out = run(&["info"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(info["kind"], "CloudsmithAccessToken");
    assert_eq!(info["outputKeys"], serde_json::json!(["auth", "expiry"]));
}
