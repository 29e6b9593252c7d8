//! Suite api_host: the seed's manifest says `apiHost` (ESO's documentation does), but the
//! CRD of ESO's Cloudsmith generator has `apiUrl`. The real API server with ESO v0.20.4's
//! CRDs installed (from its Go module, `deploy/crds/bundle.yaml`) shows what it keeps of
//! that manifest; `check` and `generate` then tell a user whose `apiHost` ESO would never
//! see.
//!
//! | test | what it proves |
//! |---|---|
//! | [`the_api_server_drops_api_host_and_check_and_generate_say_so`] | kubectl's default (`--validate=strict`) refuses the seed's manifest; a client that does not ask for strict validation (`--validate=warn` here; client-go and controllers send none) gets it stored without `apiHost`, so ESO would call api.cloudsmith.io; `check` warns (WARN step, the field and the fix `apiUrl: https://HOST`) and `generate` warns on stderr; with `apiUrl` both are silent and the API server keeps it |

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::cloudsmith::{documented_manifest, StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::cluster::Cluster;
use testkit::process::Output;

const CRD: &str = "cloudsmithaccesstokens.generators.external-secrets.io";
const HOST: &str = "cloudsmith.acme.example";

/// ESO's CRDs from the ESO module harness/go.mod pins (env `ESO_CRDS`, written by
/// scripts/harness.sh), installed once per process.
fn install_eso_crds(cluster: &Cluster) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = std::env::var_os("ESO_CRDS")
            .map(PathBuf::from)
            .unwrap_or_else(|| testkit::workspace_root().join("target/harness/eso-crds.yaml"));
        let crds = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: run `bash scripts/test.sh`", path.display()));
        cluster.apply(&crds);
        cluster.kubectl_ok(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            &format!("crd/{CRD}"),
        ]);
    });
}

/// The seed's manifest (ESO's documented example) with `apiHost: api`, in `namespace`.
fn seed(api: &str, namespace: &str) -> String {
    let manifest = documented_manifest(api);
    let line = "  namespace: default\n";
    assert_eq!(manifest.matches(line).count(), 1, "{manifest}");
    manifest.replace(line, &format!("  namespace: {namespace}\n"))
}

async fn run(args: &[&str], dir: &Path) -> Output {
    let mut command = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
    command
        .args(args)
        .env("HOME", dir)
        .env("XDG_CACHE_HOME", dir.join("xdg"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CLOUDSMITH_") {
            command.env_remove(name);
        }
    }
    testkit::process::run(command, None, Duration::from_secs(120))
        .await
        .expect("cloudsmith-gen")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_drops_api_host_and_check_and_generate_say_so() {
    let cluster = Cluster::shared();
    install_eso_crds(cluster);
    let namespace = cluster.namespace("api-host");
    let manifest = seed(HOST, &namespace);

    // kubectl 1.32's default, --validate=strict (fieldValidation=Strict): refused.
    let strict = cluster.kubectl_stdin(&["create", "-f", "-"], manifest.as_bytes());
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success(), "created: {stderr}");
    assert!(stderr.contains("unknown field \"spec.apiHost\""), "{stderr}");

    // Without strict validation (client-go sends no fieldValidation; the server then
    // warns): stored, without apiHost.
    let warn = cluster.kubectl_stdin(&["create", "--validate=warn", "-f", "-"], manifest.as_bytes());
    let stderr = String::from_utf8_lossy(&warn.stderr);
    assert!(warn.status.success(), "{stderr}");
    assert!(stderr.contains("unknown field \"spec.apiHost\""), "{stderr}");
    let stored: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "cloudsmithaccesstoken",
        "my-cloudsmith-token",
        "-n",
        &namespace,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        stored["spec"],
        json!({"orgSlug": "my-organization", "serviceSlug": "my-oidc-service",
               "serviceAccountRef": {"name": "default", "namespace": "default",
                                     "audiences": [PRODUCTION_AUDIENCE]}}),
        "the API server keeps everything but apiHost"
    );

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        testkit::oidc::token("system:serviceaccount:default:default", &[PRODUCTION_AUDIENCE]),
    )
    .unwrap();
    let token = token.display().to_string();
    let check = |file: &Path| {
        let file = file.display().to_string();
        let token = token.clone();
        let dir = dir.path().to_path_buf();
        async move {
            run(
                &[
                    "check",
                    "--manifest",
                    &file,
                    "--oidc-token-file",
                    &token,
                    "--no-exchange",
                ],
                &dir,
            )
            .await
        }
    };

    // check: the manifest step warns, naming the field and the fix.
    let seed_file = dir.path().join("seed.yaml");
    std::fs::write(&seed_file, &manifest).unwrap();
    let out = check(&seed_file).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(out.code, Some(1), "a warning fails check: {}", out.stdout);
    assert!(
        lines[0].starts_with("WARN manifest: document=CloudsmithAccessToken/my-cloudsmith-token, api=https://cloudsmith.acme.example"),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[1],
        "     spec.apiHost is not a field of ESO's CloudsmithAccessToken CRD (it has spec.apiUrl): an API server \
         with that CRD drops apiHost, and ESO calls https://api.cloudsmith.io, not https://cloudsmith.acme.example"
    );
    assert_eq!(
        lines[2],
        "     fix: write apiUrl: https://cloudsmith.acme.example in place of apiHost: cloudsmith.acme.example"
    );
    // What the API server kept is what ESO reads: check names the API ESO would call.
    let stored_file = dir.path().join("stored.json");
    std::fs::write(&stored_file, stored.to_string()).unwrap();
    let out = check(&stored_file).await;
    assert!(
        out.stdout.starts_with("ok   manifest: document=CloudsmithAccessToken/my-cloudsmith-token, api=https://api.cloudsmith.io,"),
        "{}",
        out.stdout
    );

    // With apiUrl the API server keeps it, and check says nothing of it.
    let fixed = manifest
        .replace(
            &format!("  apiHost: \"{HOST}\""),
            &format!("  apiUrl: \"https://{HOST}\""),
        )
        .replace("my-cloudsmith-token", "fixed");
    assert!(
        fixed.contains("apiUrl: \"https://cloudsmith.acme.example\""),
        "{fixed}"
    );
    let created = cluster.kubectl_stdin(&["create", "-f", "-"], fixed.as_bytes());
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let kept = cluster.kubectl_ok(&[
        "get",
        "cloudsmithaccesstoken",
        "fixed",
        "-n",
        &namespace,
        "-o",
        "jsonpath={.spec.apiUrl}",
    ]);
    assert_eq!(kept, "https://cloudsmith.acme.example");
    let fixed_file = dir.path().join("fixed.yaml");
    std::fs::write(&fixed_file, &fixed).unwrap();
    let out = check(&fixed_file).await;
    assert!(out.stdout.starts_with("ok   manifest:"), "{}", out.stdout);

    // generate: one warning line on stderr, and the credentials on stdout.
    let cloudsmith = StandIn::start(StandInConfig::default()).await.unwrap();
    let authority = cloudsmith.authority();
    let generate = |text: String| {
        let (token, dir, authority) = (token.clone(), dir.path().to_path_buf(), authority.clone());
        async move {
            let file = dir.join("generate.yaml");
            std::fs::write(&file, text).unwrap();
            let file = file.display().to_string();
            run(
                &[
                    "generate",
                    "--manifest",
                    &file,
                    "--oidc-token-file",
                    &token,
                    "--allow-host",
                    &authority,
                    "--allow-http",
                ],
                &dir,
            )
            .await
        }
    };
    let url = cloudsmith.url();
    let out = generate(seed(&url, "default")).await;
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout_json()["auth"].is_string());
    assert_eq!(
        out.stderr_lines(),
        [format!(
            "warning: spec.apiHost is not a field of ESO's CloudsmithAccessToken CRD (it has spec.apiUrl): an API \
             server with that CRD drops apiHost, and ESO calls https://api.cloudsmith.io, not {url}; write apiUrl: \
             {url} in place of apiHost: {url}"
        )]
    );
    let out = generate(seed(&url, "default").replace("apiHost:", "apiUrl:")).await;
    assert!(out.success() && out.stderr.is_empty(), "{}", out.stderr);
}
