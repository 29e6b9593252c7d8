//! The `cloudsmith-gen` binary as a process: argument and input errors end in one
//! `error:` line and the documented exit code; `demo` succeeds without any account.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

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

/// The binary under test: `CLOUDSMITH_GEN` runs another build (an older one, to see a
/// test fail before its fix).
fn bin() -> String {
    std::env::var("CLOUDSMITH_GEN").unwrap_or_else(|_| BIN.to_string())
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin())
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
        stderr.contains("demo stand-in") && stderr.contains("not the real service"),
        "the demo says it is not Cloudsmith: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let obj = json.as_object().expect("an object");
    assert_eq!(obj.len(), 2, "exactly ESO's keys: {json}");
    // ESO's outputs, decoded here: auth is base64 of `token:<access JWT>`, and expiry the
    // JWT's `exp`, an hour from now.
    let auth = STANDARD
        .decode(obj["auth"].as_str().expect("auth"))
        .expect("base64 auth");
    let access = String::from_utf8(auth)
        .unwrap()
        .strip_prefix("token:")
        .expect("token:<jwt>")
        .to_string();
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(obj["expiry"], exp.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now..=now + 3600).contains(&exp),
        "exp {exp} is within the hour after {now}"
    );
}

/// What `cargo install --path host-example` and `cargo build --release -p cloudsmith-gen` link
/// is what this build links: the same default features (the profile changes no crate).
/// Before the demo became product code, both binaries held testkit's stand-ins and its test
/// signing key. The debug build keeps symbol names, so a linked testkit would show here.
#[test]
fn the_shipped_binaries_link_no_test_code() {
    for bin in [PathBuf::from(BIN), testkit::tools::docker_credential_cloudsmith()] {
        let bytes = std::fs::read(&bin).expect("read the built binary");
        let contains = |needle: &[u8]| memchr::memmem::find(&bytes, needle).is_some();
        for marker in [
            &b"testkit"[..],
            // testkit::oidc's signing key, in case a build strips symbols.
            b"testkit service account issuer key",
            b"stand-in Cloudsmith",
        ] {
            assert!(
                !contains(marker),
                "{} holds {:?}",
                bin.display(),
                String::from_utf8_lossy(marker)
            );
        }
    }
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

/// The ExternalSecret from ESO's Cloudsmith generator documentation, byte for byte: the
/// documentation shows it beside [`SEED`], and users keep the two in one file.
const EXTERNAL_SECRET: &str = r#"apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: cloudsmith-credentials
  namespace: default
spec:
  dataFrom:
    - sourceRef:
        generatorRef:
          apiVersion: generators.external-secrets.io/v1alpha1
          kind: CloudsmithAccessToken
          name: my-cloudsmith-token
  refreshInterval: 50m # Refresh before token expires
  target:
    name: cloudsmith-credentials
    template:
      type: kubernetes.io/dockerconfigjson
      data:
        .dockerconfigjson: |
          {
            "auths": {
              "docker.cloudsmith.io": {
                "auth": "{{ .auth }}"
              }
            }
          }
"#;

/// How a multi-document case must end.
enum Want {
    /// Exit 0 with ESO's outputs for a token minted for this org.
    Auth(&'static str),
    /// This exit code and one `error:` line holding every needle.
    Fails(i32, Vec<String>),
}

/// Multi-document manifests against the stand-in Cloudsmith: the generator document is
/// found among the others, `--generator` picks by name, and every wrong file is one
/// `error:` line with exit code 2 that never reaches Cloudsmith.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_document_manifests() {
    use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig};
    const SUBJECT: &str = "system:serviceaccount:default:default";
    const DOCUMENTED_ORG: &str = "my-organization";

    let stand_in = StandIn::start(StandInConfig::default()).await.expect("stand-in");
    let token = write(
        "token-multi",
        &testkit::oidc::token(SUBJECT, &[&stand_in.origin()]),
    );
    let documented = testkit::cloudsmith::documented_manifest(&stand_in.url());
    // The documented generator renamed and pointed at another org: which org the
    // stand-in saw, and the token minted for it, tell which document was used.
    let generator = |name: &str, org: &str| {
        documented
            .replace("name: my-cloudsmith-token", &format!("name: {name}"))
            .replace(DOCUMENTED_ORG, org)
    };
    let cluster = |name: &str| {
        format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: ClusterGenerator\n\
             metadata:\n  name: {name}\nspec:\n  kind: CloudsmithAccessToken\n  generator:\n    \
             cloudsmithAccessTokenSpec:\n      apiHost: \"{}\"\n      orgSlug: org-cluster\n      \
             serviceSlug: my-oidc-service\n      serviceAccountRef:\n        name: default\n",
            stand_in.url()
        )
    };
    let join = |docs: &[&str]| docs.join("---\n");
    let needles = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: other\n";

    // (case, file, --generator, manifest on stdin, how it ends)
    let table: Vec<(&str, String, Option<&str>, bool, Want)> = vec![
        (
            "documented, one document",
            documented.clone(),
            None,
            false,
            Want::Auth(DOCUMENTED_ORG),
        ),
        (
            "documented generator and ExternalSecret",
            join(&[&documented, EXTERNAL_SECRET]),
            None,
            false,
            Want::Auth(DOCUMENTED_ORG),
        ),
        (
            "ExternalSecret first, on stdin, with empty documents",
            format!("---\n{EXTERNAL_SECRET}---\n---\n{documented}---\n"),
            None,
            true,
            Want::Auth(DOCUMENTED_ORG),
        ),
        (
            "two generators",
            join(&[&generator("a", "org-a"), EXTERNAL_SECRET, &cluster("b")]),
            None,
            false,
            Want::Fails(
                2,
                needles(&[
                    "2 generator documents (CloudsmithAccessToken/a, ClusterGenerator/b)",
                    "--generator NAME",
                ]),
            ),
        ),
        (
            "--generator picks the first",
            join(&[&generator("a", "org-a"), &generator("b", "org-b")]),
            Some("a"),
            false,
            Want::Auth("org-a"),
        ),
        (
            "--generator picks the second",
            join(&[
                &generator("a", "org-a"),
                EXTERNAL_SECRET,
                &generator("b", "org-b"),
            ]),
            Some("b"),
            false,
            Want::Auth("org-b"),
        ),
        (
            "--generator passes over a ClusterGenerator",
            join(&[&cluster("b"), &generator("c", "org-c")]),
            Some("c"),
            false,
            Want::Auth("org-c"),
        ),
        (
            "a lone ClusterGenerator",
            cluster("b"),
            None,
            false,
            Want::Auth("org-cluster"),
        ),
        (
            "--generator picks a ClusterGenerator",
            join(&[&generator("c", "org-c"), EXTERNAL_SECRET, &cluster("b")]),
            Some("b"),
            false,
            Want::Auth("org-cluster"),
        ),
        (
            "unknown --generator",
            join(&[&generator("a", "org-a"), &generator("b", "org-b")]),
            Some("nope"),
            false,
            Want::Fails(
                2,
                needles(&[
                    "no generator document named \"nope\"",
                    "CloudsmithAccessToken/a, CloudsmithAccessToken/b",
                ]),
            ),
        ),
        (
            "no generator document",
            join(&[EXTERNAL_SECRET, secret]),
            None,
            false,
            Want::Fails(
                2,
                needles(&[
                    "no generator document",
                    "ExternalSecret/cloudsmith-credentials, Secret/other",
                ]),
            ),
        ),
        (
            "malformed second document",
            join(&[&documented, "spec: [unclosed\n"]),
            None,
            false,
            Want::Fails(2, needles(&["invalid YAML"])),
        ),
        (
            "a list among the documents",
            join(&[&documented, "- a\n- b\n"]),
            None,
            false,
            Want::Fails(2, needles(&["document 2 of 2 is not a mapping"])),
        ),
        (
            "too many documents",
            join(&vec![secret; 101]),
            None,
            false,
            Want::Fails(2, needles(&["more than 100 YAML documents"])),
        ),
    ];

    let mut wrong = Vec::new();
    let mut stdouts = Vec::new();
    for (i, (case, text, name, on_stdin, want)) in table.into_iter().enumerate() {
        let file = write(&format!("multi-{i}.yaml"), &text);
        let manifest = if on_stdin {
            "-".to_string()
        } else {
            file.display().to_string()
        };
        let mut args: Vec<String> = [
            "generate",
            "--manifest",
            &manifest,
            "--oidc-token-file",
            token.to_str().unwrap(),
            "--allow-host",
            &stand_in.authority(),
            "--allow-http",
        ]
        .map(String::from)
        .to_vec();
        if let Some(name) = name {
            args.extend(["--generator".to_string(), name.to_string()]);
        }
        let stdin = on_stdin.then_some(text);
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, stdin.as_deref())
        })
        .await
        .expect("run the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match want {
            Want::Auth(org) => {
                let expected = serde_json::json!({
                    "auth": auth_for(&access_token_for(SUBJECT, org, "my-oidc-service", 1_700_000_000)),
                    "expiry": "1700000000",
                });
                match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    Ok(got) if out.status.code() == Some(0) && got == expected => {
                        stdouts.push((case, out.stdout.clone()));
                    }
                    got => wrong.push(format!(
                        "{case}: exit {:?}, stdout {got:?}, stderr {stderr}, want a token for {org}",
                        out.status.code()
                    )),
                }
            }
            Want::Fails(code, needles) => {
                let lines: Vec<&str> = stderr.lines().collect();
                let one_line = lines.len() == 1 && lines[0].starts_with("error: ");
                let named = needles.iter().all(|n| stderr.contains(n.as_str()));
                if out.status.code() != Some(code) || !one_line || !named || !out.stdout.is_empty() {
                    wrong.push(format!(
                        "{case}: exit {:?}, stderr {stderr:?}, want exit {code} and one line with {needles:?}",
                        out.status.code()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The multi-document files gave what the single document gave, byte for byte.
    let documented_runs: Vec<_> = stdouts.iter().take(3).collect();
    assert_eq!(documented_runs.len(), 3);
    assert!(
        documented_runs
            .iter()
            .all(|(_, out)| *out == documented_runs[0].1),
        "{documented_runs:?}"
    );
    // Each success reached Cloudsmith once, for the chosen document's org; no failure,
    // and no document that was not chosen, reached it at all.
    let seen: Vec<String> = stand_in
        .requests()
        .iter()
        .map(|r| r.org().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        seen,
        [
            DOCUMENTED_ORG,
            DOCUMENTED_ORG,
            DOCUMENTED_ORG,
            "org-a",
            "org-b",
            "org-c",
            "org-cluster",
            "org-cluster"
        ],
        "orgs the stand-in saw, in order"
    );
}

/// A token whose subject the stand-in's OIDC service does not trust: the one `error:`
/// line names the issuer, subject and audiences Cloudsmith saw, and none of the
/// token's three parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_exchange_names_the_tokens_issuer_subject_and_audience() {
    use testkit::cloudsmith::{StandIn, StandInConfig, Trusted};
    const SUBJECT: &str = "system:serviceaccount:default:default";

    let stand_in = StandIn::start(StandInConfig {
        trusted: vec![Trusted::new(
            testkit::oidc::ISSUER,
            "system:serviceaccount:apps:*",
        )],
        ..StandInConfig::default()
    })
    .await
    .expect("stand-in");
    let token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
    let manifest = local_manifest("refused.yaml", &stand_in.url());
    let (authority, env_token) = (stand_in.authority(), token.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["generate", "--manifest"])
            .arg(&manifest)
            .args([
                "--oidc-token-env",
                "REFUSED_TOKEN",
                "--allow-http",
                "--allow-host",
                &authority,
            ])
            .env("REFUSED_TOKEN", &env_token)
            .env("XDG_CACHE_HOME", cache_dir())
            .stdin(Stdio::null())
            .output()
            .expect("cloudsmith-gen runs")
    })
    .await
    .expect("run the CLI");
    assert_fails(
        &out,
        5,
        &format!(
            "Cloudsmith rejected the credentials (401): OIDC token cannot be authenticated; \
             the token's iss={}, sub={SUBJECT}, aud={}: the Cloudsmith OIDC service must trust \
             this issuer and subject",
            testkit::oidc::ISSUER,
            stand_in.origin()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in token.split('.') {
        assert!(!stderr.contains(part), "a part of the token in: {stderr}");
    }
    eprintln!("{stderr}");
}

/// No kubeconfig anywhere and not in a cluster: one `error:` line that says first what
/// to give, then kube's causes, whole words only.
#[test]
fn no_kubernetes_configuration_says_what_to_give_first() {
    let home = tempfile::tempdir().expect("empty home");
    let manifest = local_manifest("no-kube.yaml", "https://api.cloudsmith.io");
    let out = Command::new(BIN)
        .args(["generate", "--manifest"])
        .arg(&manifest)
        .env("HOME", home.path())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("XDG_CACHE_HOME", cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("cloudsmith-gen runs");
    assert_fails(
        &out,
        3,
        "error: token source failed: no Kubernetes configuration found: \
         give --kubeconfig, --oidc-token-file or --oidc-token-env; ",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.trim_end();
    // Both places kube looked, each cause whole (the line fits, so nothing is cut).
    assert!(
        line.ends_with(
            "; in-cluster: KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set; \
             kubeconfig: failed to read kubeconfig from '/nonexistent/kubeconfig': \
             No such file or directory (os error 2)"
        ),
        "{line}"
    );
    eprintln!("{line}");
}

/// `component push` refuses what it cannot publish before any registry call (the
/// registry named is a closed port: a request would end in exit 10, not 2).
#[test]
fn component_push_refuses_bad_input_before_the_registry() {
    let core = scratch().join("core.wasm");
    // The preamble of a core module (version 1, layer 0), as `wasm-tools parse "(module)"` writes it.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = write("not-wasm.wasm", "hello");
    let core = core.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["component", "push", "127.0.0.1:9/x:1", "--component", core],
            "is a core Wasm module, not a component",
        ),
        (
            &[
                "component",
                "push",
                "127.0.0.1:9/x:1",
                "--component",
                text.to_str().unwrap(),
            ],
            "is not a Wasm component",
        ),
        (
            &[
                "component",
                "push",
                "127.0.0.1:9/x:1",
                "--component",
                "/nonexistent.wasm",
            ],
            "/nonexistent.wasm",
        ),
        (&["component", "push", "plugins/x:1"], "is not a registry host"),
        (
            &[
                "component",
                "push",
                &format!("127.0.0.1:9/x@sha256:{}", "a".repeat(64)),
            ],
            "push to a tag, not a digest",
        ),
        (
            &[
                "generate",
                "--manifest",
                "-",
                "--component",
                "oci://127.0.0.1:9/x@sha256:12",
            ],
            "64 hex digits",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args, Some(""));
        assert_fails(&out, 2, needle);
    }
}

#[test]
fn ca_files_that_tls_cannot_use_are_named() {
    // PEM that parses, around DER that is no certificate: rustls refuses it as a root.
    let bad = write(
        "bad-ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
    );
    let empty = write("empty-ca.pem", "");
    let m = local_manifest("m-ca.yaml", "https://127.0.0.1:9");
    let t = token_file();
    for (ca, needle) in [
        (&bad, "certificate 1 is not a CA certificate TLS can use"),
        (&empty, "no certificate found"),
    ] {
        let ca = ca.to_str().unwrap();
        let generate = [
            "generate",
            "--manifest",
            m.to_str().unwrap(),
            "--oidc-token-file",
            t.to_str().unwrap(),
            "--ca-file",
            ca,
        ];
        let push = ["component", "push", "127.0.0.1:9/x:1", "--ca-file", ca];
        for args in [&generate[..], &push[..]] {
            let out = run(args, None);
            assert_fails(&out, 2, needle);
            assert_fails(&out, 2, ca);
        }
    }
}

/// [`run`] with environment variables set (and nothing else inherited that the helper
/// reads).
fn run_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin());
    command.args(args).env("XDG_CACHE_HOME", cache_dir());
    for name in [
        "CLOUDSMITH_API_HOST",
        "CLOUDSMITH_GENERATOR_MANIFEST",
        "CLOUDSMITH_OIDC_TOKEN",
        "CLOUDSMITH_REGISTRIES",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cloudsmith-gen");
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin");
        let _ = pipe.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("cloudsmith-gen runs")
}

/// Every door's outbound policy comes from its flags (generate, kubelet provider) or
/// its environment (Docker helper), never from the manifest: a manifest naming a host
/// the operator did not allow is refused (exit 4) before anything reaches that host.
/// (Before, the Docker helper allowed whatever CLOUDSMITH_GENERATOR_MANIFEST's apiUrl
/// named, plain http included.)
#[test]
fn the_outbound_policy_comes_from_flags_and_environment_never_the_manifest() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stand_in = runtime
        .block_on(testkit::cloudsmith::StandIn::start(Default::default()))
        .expect("stand-in");
    let manifest = local_manifest("m-elsewhere.yaml", &stand_in.url());
    let manifest = manifest.to_str().unwrap();
    let token = testkit::oidc::token("system:serviceaccount:default:default", &[&stand_in.origin()]);
    let token_path = write("policy-token", &token);
    let token_path = token_path.to_str().unwrap();

    let generate = run(
        &[
            "generate",
            "--manifest",
            manifest,
            "--oidc-token-file",
            token_path,
        ],
        None,
    );
    assert_fails(
        &generate,
        4,
        &format!("host {} is not in the outbound allowlist", stand_in.authority()),
    );

    let request = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/a/b"}"#;
    let kubelet = run(
        &[
            "kubelet-credential-provider",
            "--manifest",
            manifest,
            "--oidc-token-file",
            token_path,
            "--no-token-cache",
        ],
        Some(request),
    );
    assert_fails(&kubelet, 4, "is not in the outbound allowlist");

    let helper = |env: &[(&str, &str)]| {
        let mut all = vec![
            ("CLOUDSMITH_GENERATOR_MANIFEST", manifest),
            ("CLOUDSMITH_OIDC_TOKEN", token.as_str()),
        ];
        all.extend_from_slice(env);
        run_env(
            &["docker-credential-helper", "get"],
            "docker.cloudsmith.io",
            &[all.as_slice(), &[("CLOUDSMITH_NO_TOKEN_CACHE", "1")]].concat(),
        )
    };
    // The helper's reason goes to stdout as well, where Docker's helper client reads it
    // (docs/docker-credential-helper.md); the rest of assert_fails holds.
    let refused = helper(&[]);
    let stdout = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(stdout.contains("is not in the outbound allowlist"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_fails(
        &Output {
            stdout: Vec::new(),
            ..refused
        },
        4,
        "is not in the outbound allowlist",
    );
    assert!(
        stand_in.requests().is_empty(),
        "nothing reached the host the manifests name"
    );

    // The operator's variable allows it (plain http: written http://, to a loopback host).
    let url = stand_in.url();
    let allowed = helper(&[("CLOUDSMITH_API_HOST", &url)]);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(stand_in.requests().len(), 1);
    drop(runtime);
}

/// Plain http goes only to the hosts named for it, or to loopback, never to Cloudsmith:
/// `--allow-http api.cloudsmith.io` is a usage error, and a manifest sending the
/// exchange to `http://api.cloudsmith.io:443` is refused by the policy whatever the
/// flags. (Before, `--allow-http` allowed plain http to every allowed host, Cloudsmith's
/// included: the OIDC token would have crossed the network in clear.)
#[test]
fn plain_http_is_per_host_and_never_to_cloudsmith() {
    let t = token_file();
    let t = t.to_str().unwrap();
    for flag in [
        "--allow-http=api.cloudsmith.io",
        "--allow-http=api.cloudsmith.io:443",
    ] {
        let out = run(
            &["generate", "--manifest", "-", "--oidc-token-file", t, flag],
            Some(SEED),
        );
        assert_fails(&out, 2, "is never allowed");
    }
    let m = local_manifest("m-plain-cloudsmith.yaml", "http://api.cloudsmith.io:443");
    let out = run(
        &[
            "generate",
            "--manifest",
            m.to_str().unwrap(),
            "--oidc-token-file",
            t,
            "--allow-http",
            "--allow-host",
            "api.cloudsmith.io:443",
        ],
        None,
    );
    assert_fails(&out, 4, "plain http to api.cloudsmith.io:443 is never allowed");
    // To a named host: allowed by name, and only there (no other port).
    let m = local_manifest("m-plain-named.yaml", "http://127.0.0.1:9");
    let named = run(
        &[
            "generate",
            "--manifest",
            m.to_str().unwrap(),
            "--oidc-token-file",
            t,
            "--allow-http",
            "127.0.0.1:10",
        ],
        None,
    );
    assert_fails(&named, 4, "host 127.0.0.1:9 is not in the outbound allowlist");
}

/// A compile cache directory others can write is not used: one warning line, and the
/// call works. (Before, any readable directory was used as it was found.)
#[cfg(unix)]
#[test]
fn an_unsafe_compile_cache_is_not_used_and_the_call_works() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch().join("shared-cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&["info", "--cache-dir", dir.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one warning line: {stderr}");
    assert!(
        lines[0].starts_with("cloudsmith-gen: warning: compiled-component cache not used: directory ")
            && lines[0].contains("writable by group or others"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written there"
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info is JSON");
    assert_eq!(info["kind"], "CloudsmithAccessToken");
}

/// `install docker-credential-helper` adds its entries to Docker's config.json and keeps
/// every other byte (order, tabs, a key it does not know), writing through a symlinked
/// config.json as docker/cli does: the link stays a link. (Before, the file was written
/// again from its parsed value, keys sorted and indented by two spaces, and the link
/// replaced by a regular file.)
#[cfg(unix)]
#[test]
fn install_keeps_config_json_and_writes_through_its_symlink() {
    let home = scratch().join("install-home");
    let docker = home.join(".docker");
    let dotfiles = home.join("dotfiles");
    let bin_dir = home.join("bin");
    for dir in [&docker, &dotfiles, &bin_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let real = dotfiles.join("docker.json");
    std::fs::write(
        &real,
        "{\n\t\"psFormat\": \"table\",\n\t\"auths\": {},\n\t\"zzUnknown\": {\"kept\": [1, 2]}\n}\n",
    )
    .unwrap();
    let link = docker.join("config.json");
    std::os::unix::fs::symlink("../dotfiles/docker.json", &link).unwrap();
    let out = run_env(
        &[
            "install",
            "docker-credential-helper",
            "--dir",
            bin_dir.to_str().unwrap(),
        ],
        "",
        &[
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("HOME", home.to_str().unwrap()),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
        "config.json is still a symlink"
    );
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        "{\n\t\"psFormat\": \"table\",\n\t\"auths\": {},\n\t\"zzUnknown\": {\"kept\": [1, 2]},\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\"\n\t}\n}\n"
    );
}
