//! Suite cli: the `cloudsmith-gen` binary as a process, against the stand-in Cloudsmith
//! (plain HTTP and HTTPS) and a real Kubernetes API server (`testkit::cluster`), over
//! loopback. Every failure is one `error:` line, its documented exit code, nothing on
//! stdout and no token in any output.
//!
//! | test                    | what it proves                                                                  |
//! |-------------------------|---------------------------------------------------------------------------------|
//! | [`documented_manifest`] | ESO's documented example manifest, verbatim but for `apiHost`, gives the exact `auth` and `expiry` over HTTP, HTTPS (`--ca-file`) and with a Kubernetes token from a real API server under `deploy/`'s RBAC, each with one warning that ESO's CRD would drop that `apiHost`; HTTPS without the CA fails, with its one `error:` line only |
//! | [`cloudsmith_scenarios`] | every stand-in failure scenario: its exit code, one `error:` line naming the status and Cloudsmith's detail (or the cause), no token in any output; burst scenarios succeed; `slow` times out; `redirect` is not followed |
//! | [`token_sources`]       | file, environment variable and Kubernetes TokenRequest (what was asked for, read back from the real token), and each one's failures with the API server's reason |
//! | [`output_formats`]      | `--output secret` and `dockerconfigjson` have the shape kubectl and docker accept |
//! | [`bad_inputs`]          | flags, manifest and spec errors, the host allowlist and the plain-http refusal, each named in the error |
//! | [`multi_document_manifests`] | the generator document found among others, `--generator`, every wrong file |
//! | the rest                | `demo`, `info`, `component push`'s refusals, CA files, the outbound policy of every door, the compile cache, `install` |
//!
//! A table runs its cases concurrently (a few processes at a time) and reports every
//! mismatch, by case name, before failing. The binary is the one cargo built for this
//! test, or `CLOUDSMITH_GEN`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, Scenario, StandIn, StandInConfig, REGISTRY};
use testkit::cluster::Cluster;
use testkit::process::{find_secret, Output as ProcessOutput};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
    run_env(args, stdin.unwrap_or(""), &[])
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

/// The documented manifest's organisation and service.
const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
/// The service account the documented manifest names, in the target namespace.
const SUBJECT: &str = "system:serviceaccount:default:default";
/// The stand-in's fixed access token expiry (ESO's test vector).
const EXP: u64 = 1_700_000_000;
/// No CLI run may take longer than this; a hang fails the test instead.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Concurrent CLI processes per table (the machine has two cores).
const PARALLEL: usize = 4;

/// Everything a table's cases share: the stand-ins, a scratch directory, an
/// OIDC token file.
struct World {
    cloudsmith: StandIn,
    /// Where the `redirect` scenario points: allowed by the policy, so only
    /// not following redirects keeps it uncontacted.
    evil: StandIn,
    dir: tempfile::TempDir,
    /// The OIDC token the token file holds (for `SUBJECT`, audience the stand-in).
    oidc_token: String,
    token_file: PathBuf,
}

impl World {
    async fn new(tls: bool) -> Arc<World> {
        World::start(tls, None).await
    }

    /// A world whose Cloudsmith also trusts `cluster`'s issuer, as an OIDC relying party,
    /// for every service account.
    async fn with_cluster(tls: bool, cluster: &Cluster) -> Arc<World> {
        World::start(tls, Some(cluster)).await
    }

    async fn start(tls: bool, cluster: Option<&Cluster>) -> Arc<World> {
        let evil = StandIn::start(StandInConfig::default())
            .await
            .expect("evil stand-in");
        let mut config = StandInConfig {
            tls,
            redirect_location: format!("{}/openid/evil/", evil.url()),
            ..Default::default()
        };
        if let Some(cluster) = cluster {
            config = config.also_trusting(cluster, "system:serviceaccount:*");
        }
        let cloudsmith = StandIn::start(config).await.expect("stand-in");
        let dir = tempfile::tempdir().expect("tempdir");
        let oidc_token = testkit::oidc::token(SUBJECT, &[&cloudsmith.origin()]);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &oidc_token).expect("write token");
        Arc::new(World {
            cloudsmith,
            evil,
            dir,
            oidc_token,
            token_file,
        })
    }

    /// Writes `text` to a file in the scratch directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A manifest for `org` at the stand-in, written to a file named after it.
    fn manifest_for(&self, org: &str) -> PathBuf {
        let yaml = format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\n\
             kind: CloudsmithAccessToken\n\
             metadata:\n  name: t\n\
             spec:\n  apiUrl: \"{}\"\n  orgSlug: \"{org}\"\n  serviceSlug: \"{SERVICE}\"\n  \
             serviceAccountRef:\n    name: default\n",
            self.cloudsmith.url()
        );
        self.file(&format!("manifest-{org}.yaml"), &yaml)
    }

    /// `generate` with `manifest`, the token file, the stand-in allowed (and
    /// plain http, unless TLS), and a test-local compile cache.
    fn args(&self, manifest: &Path) -> Vec<String> {
        let mut args = vec![
            "generate".to_string(),
            "--manifest".into(),
            manifest.display().to_string(),
            "--namespace".into(),
            "default".into(),
            "--oidc-token-file".into(),
            self.token_file.display().to_string(),
            "--allow-host".into(),
            self.cloudsmith.authority(),
            "--allow-host".into(),
            self.evil.authority(),
        ];
        args.extend(cache_args());
        if self.cloudsmith.url().starts_with("http://") {
            args.push("--allow-http".into());
        }
        args
    }

    /// The exact `auth` the stand-in's token for `subject` and `org` gives.
    fn auth(subject: &str, org: &str) -> String {
        auth_for(&access_token_for(subject, org, SERVICE, EXP))
    }

    /// Every secret a run could leak: the OIDC token and the access tokens
    /// the stand-in would issue for it.
    fn secrets(&self, org: &str) -> Vec<String> {
        vec![
            self.oidc_token.clone(),
            access_token_for(SUBJECT, org, SERVICE, EXP),
            Self::auth(SUBJECT, org),
        ]
    }
}

/// `deploy/serve/generators.yaml`, the generator `deploy/` ships (the documented manifest
/// for the account `cloudsmith-oidc`), pointed at `api`.
fn shipped_generator(api: &str) -> String {
    let text =
        std::fs::read_to_string(testkit::workspace_root().join("deploy/serve/generators.yaml")).unwrap();
    let pointed = text.replace(
        "apiUrl: \"https://api.cloudsmith.io\"",
        &format!("apiUrl: \"{api}\""),
    );
    assert_ne!(pointed, text, "deploy/serve/generators.yaml changed shape");
    pointed
}

/// The bearer token of a kubeconfig [`Cluster::service_account_kubeconfig`] wrote.
fn kubeconfig_token(path: &Path) -> String {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["users"][0]["user"]["token"].as_str().unwrap().to_string()
}

/// The claims of a JWT (unverified: Cloudsmith's stand-in verified it).
fn claims(token: &str) -> Value {
    testkit::cloudsmith::jwt_payload(token).expect("a JWT")
}

/// A shared compiled-component cache under `target/`, so each process loads
/// the component instead of compiling it, and nothing is left in `$HOME`.
fn cache_args() -> Vec<String> {
    let dir = testkit::workspace_root().join("target").join("e2e-cli-cache");
    vec!["--cache-dir".into(), dir.display().to_string()]
}

/// How a run should end.
#[derive(Clone, Debug)]
enum Expect {
    /// Exit 0 and exactly ESO's outputs for this `auth`.
    Success { auth: String },
    /// This exit code and one `error:` line containing every needle.
    Failure { code: i32, needles: Vec<String> },
}

fn fail(code: i32, needles: &[&str]) -> Expect {
    Expect::Failure {
        code,
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

fn success(subject: &str, org: &str) -> Expect {
    Expect::Success {
        auth: World::auth(subject, org),
    }
}

/// One CLI invocation and what it must give.
struct Case {
    name: String,
    args: Vec<String>,
    /// Environment changes: set (`Some`) or removed (`None`).
    env: Vec<(String, Option<String>)>,
    stdin: Option<Vec<u8>>,
    expect: Expect,
    /// Strings that must not appear in stdout or stderr.
    secrets: Vec<String>,
    /// A success warns that ESO would never see the manifest's `apiHost` (ESO's
    /// documented example with another API than ESO's default).
    warns: bool,
}

/// The start of `generate`'s warning of an `apiHost` that ESO's CRD drops.
const API_HOST_WARNING: &str = "warning: spec.apiHost is not a field of ESO's CloudsmithAccessToken CRD";

impl Case {
    fn new(name: impl Into<String>, args: Vec<String>, expect: Expect, secrets: Vec<String>) -> Case {
        Case {
            name: name.into(),
            args,
            env: Vec::new(),
            stdin: None,
            expect,
            secrets,
            warns: false,
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A case that needs no stand-in: `args` as given, with this test's compile cache.
fn plain(name: &str, args: &[&str], stdin: Option<&str>, expect: Expect) -> Case {
    let mut case = Case::new(
        name,
        args.iter().map(|a| a.to_string()).collect(),
        expect,
        Vec::new(),
    );
    case.env = vec![("XDG_CACHE_HOME".into(), Some(cache_dir().display().to_string()))];
    case.stdin = stdin.map(|s| s.as_bytes().to_vec());
    case
}

/// Runs the CLI with `args`, `env` changes and `stdin`.
async fn run_cli(args: &[String], env: &[(String, Option<String>)], stdin: Option<Vec<u8>>) -> ProcessOutput {
    let mut command = tokio::process::Command::new(bin());
    command.args(args);
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    testkit::process::run(command, stdin, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("cloudsmith-gen {args:?}: {e}"))
}

/// Checks `out` against `case`; returns what is wrong, if anything.
fn check(case: &Case, out: &ProcessOutput) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    match &case.expect {
        Expect::Success { auth } => {
            want(out.success(), format!("exit {:?}, want 0", out.code));
            let parsed: Option<Value> = serde_json::from_str(&out.stdout).ok();
            let want_json = json!({"auth": auth, "expiry": EXP.to_string()});
            want(
                parsed.as_ref() == Some(&want_json),
                format!("stdout {:?}, want {want_json}", out.stdout),
            );
            // `-v` explains on stderr; otherwise a success is silent there, but for the
            // warning of an apiHost ESO would not see.
            let verbose = case.args.iter().any(|a| a == "-v");
            let lines = out.stderr_lines();
            let warned = lines.iter().filter(|l| l.starts_with(API_HOST_WARNING)).count();
            want(
                warned == usize::from(case.warns),
                format!(
                    "{warned} apiHost warning(s), want {}: {:?}",
                    u8::from(case.warns),
                    out.stderr
                ),
            );
            want(
                verbose || lines.len() == warned,
                format!("stderr not empty: {:?}", out.stderr),
            );
        }
        Expect::Failure { code, needles } => {
            want(
                out.code == Some(*code),
                format!("exit {:?}, want {code}", out.code),
            );
            want(
                out.stdout.is_empty(),
                format!("stdout not empty: {:?}", out.stdout),
            );
            let lines = out.stderr_lines();
            want(
                lines.len() == 1 && lines[0].starts_with("error: "),
                format!("stderr is not one `error:` line: {:?}", out.stderr),
            );
            for needle in needles {
                want(
                    out.stderr.contains(needle.as_str()),
                    format!("stderr lacks {needle:?}: {:?}", out.stderr),
                );
            }
        }
    }
    // A success prints `auth` on stdout, by design; nothing else may show.
    let printed = match &case.expect {
        Expect::Success { auth } => auth.as_str(),
        Expect::Failure { .. } => "",
    };
    let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
    let stdout_secrets: Vec<&str> = secrets.iter().copied().filter(|s| *s != printed).collect();
    let leaks = [
        find_secret(&[&out.stdout], &stdout_secrets),
        find_secret(&[&out.stderr], &secrets),
    ];
    wrong.extend(leaks.into_iter().flatten());
    wrong
}

/// Runs every case (a few at a time) and fails listing every mismatch.
async fn run_table(cases: Vec<Case>) -> Vec<(String, ProcessOutput)> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut set = JoinSet::new();
    for (i, case) in cases.into_iter().enumerate() {
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let out = run_cli(&case.args, &case.env, case.stdin.clone()).await;
            let wrong = check(&case, &out);
            if std::env::var_os("CLI_SHOW").is_some() {
                // For reading what users see: CLI_SHOW=1 cargo test ... -- --nocapture
                eprintln!(
                    "--- {}: exit {:?}\n{}{}",
                    case.name, out.code, out.stdout, out.stderr
                );
            }
            (i, case.name, out, wrong)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        results.push(joined.expect("case task"));
    }
    results.sort_by_key(|r| r.0);
    let report: Vec<String> = results
        .iter()
        .filter(|r| !r.3.is_empty())
        .map(|(_, name, _, wrong)| format!("{name}:\n  {}", wrong.join("\n  ")))
        .collect();
    assert!(
        report.is_empty(),
        "{} case(s) wrong:\n{}",
        report.len(),
        report.join("\n")
    );
    results.into_iter().map(|(_, name, out, _)| (name, out)).collect()
}

/// ESO's documentation example, verbatim but for `apiHost`, through each
/// transport and token source; with a Kubernetes token, as `deploy/` ships it: minted by
/// a real API server for the service's account under its RBAC, trusted by Cloudsmith as
/// an OIDC relying party of the cluster's issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_manifest() {
    let cluster = Cluster::shared();
    let http = World::with_cluster(false, cluster).await;
    let https = World::new(true).await;
    let kubeconfig = cluster.deployed_service().to_path_buf();
    let ns = cluster.namespace("documented");
    cluster.opt_in(&ns, true);
    let minted_subject = format!("system:serviceaccount:{ns}:cloudsmith-oidc");
    let shipped = http.file("shipped.yaml", &shipped_generator(&http.cloudsmith.url()));

    // HTTP: the URL with its scheme; HTTPS: a bare host, as the docs write it.
    let http_manifest = http.file(
        "documented.yaml",
        &testkit::cloudsmith::documented_manifest(&http.cloudsmith.url()),
    );
    let https_manifest = https.file(
        "documented.yaml",
        &testkit::cloudsmith::documented_manifest(&https.cloudsmith.authority()),
    );
    let ca_file = https.file("ca.pem", https.cloudsmith.ca_pem().unwrap());
    // The documented manifest with its namespaces set to the test's: the account
    // `default` there, which deploy/'s RBAC does not let the service mint for.
    let in_ns = http.file(
        "documented-in-ns.yaml",
        &testkit::cloudsmith::documented_manifest(&http.cloudsmith.url())
            .replace("namespace: default", &format!("namespace: {ns}"))
            .replace("namespace: \"default\"", &format!("namespace: \"{ns}\"")),
    );

    let mut with_ca = https.args(&https_manifest);
    with_ca.extend(["--ca-file".into(), ca_file.display().to_string()]);
    // The manifest's `serviceAccountRef` and audiences go to Kubernetes, in the
    // namespace asked for.
    let kube_args = |manifest: &Path| {
        let mut args = http.args(manifest);
        replace_token_source(&mut args, &["--kubeconfig", &kubeconfig.display().to_string()]);
        let at = args.iter().position(|a| a == "--namespace").unwrap();
        args[at + 1] = ns.clone();
        args
    };
    let mut from_stdin = http.args(Path::new("-"));
    from_stdin.push("-v".into());

    let mut stdin_case = Case::new(
        "http, manifest on stdin",
        from_stdin,
        success(SUBJECT, ORG),
        http.secrets(ORG),
    );
    stdin_case.stdin = Some(testkit::cloudsmith::documented_manifest(&http.cloudsmith.url()).into_bytes());
    let mut kube_secrets = http.secrets(ORG);
    kube_secrets.push(kubeconfig_token(&kubeconfig));
    kube_secrets.push(access_token_for(&minted_subject, ORG, SERVICE, EXP));

    let mut cases = vec![
        Case::new(
            "http",
            http.args(&http_manifest),
            success(SUBJECT, ORG),
            http.secrets(ORG),
        ),
        Case::new(
            "https with --ca-file",
            with_ca,
            success(SUBJECT, ORG),
            https.secrets(ORG),
        ),
        Case::new(
            "https without the CA",
            https.args(&https_manifest),
            fail(7, &[&https.cloudsmith.authority()]),
            https.secrets(ORG),
        ),
        Case::new(
            "http, Kubernetes token, deploy/'s generator",
            kube_args(&shipped),
            success(&minted_subject, ORG),
            kube_secrets.clone(),
        ),
        // The documentation's account (`default`) is not one deploy/'s RBAC lets the
        // service mint for: the API server's reason, exit 3.
        Case::new(
            "http, Kubernetes token, the documented account",
            kube_args(&in_ns),
            fail(
                3,
                &[
                    "403",
                    &format!(
                        "serviceaccounts \"default\" is forbidden: User \"system:serviceaccount:cloudsmith-gen:cloudsmith-gen\" \
                         cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{ns}\""
                    ),
                ],
            ),
            kube_secrets,
        ),
        stdin_case,
    ];
    // Each names the stand-in as `apiHost`, which ESO's CRD does not have, but for
    // deploy/'s generator, which names it `apiUrl`.
    for case in &mut cases {
        case.warns =
            matches!(case.expect, Expect::Success { .. }) && !case.name.contains("deploy/'s generator");
    }
    let results = run_table(cases).await;

    // `-v` explained something on stderr (and the table checked it holds no token).
    let verbose = &results
        .iter()
        .find(|(n, _)| n.starts_with("http, manifest"))
        .unwrap()
        .1;
    assert!(!verbose.stderr.is_empty(), "-v printed nothing");

    // What reached Cloudsmith: the documented org and service, the token as
    // read from the file, with the headers the API requires.
    let requests = http.cloudsmith.requests_for(ORG);
    assert_eq!(requests.len(), 3, "http, stdin and Kubernetes runs");
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/openid/{ORG}/"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(
            request.header("content-length"),
            Some(request.body.len().to_string().as_str())
        );
        assert!(request.header("user-agent").is_some_and(|ua| !ua.is_empty()));
        assert_eq!(request.json().unwrap()["service_slug"], SERVICE);
    }
    let tokens: Vec<String> = requests
        .iter()
        .map(|r| r.json().unwrap()["oidc_token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.iter().filter(|t| **t == http.oidc_token).count(), 2);
    // The token the API server minted: the generator's account in the namespace asked
    // for, the documented audience, the cluster's issuer (Cloudsmith verified it).
    let minted: Vec<Value> = tokens
        .iter()
        .map(|t| claims(t))
        .filter(|c| c["sub"] == minted_subject.as_str())
        .collect();
    assert_eq!(minted.len(), 1, "{tokens:?}");
    assert_eq!(minted[0]["aud"], json!(["https://api.cloudsmith.io"]));
    assert_eq!(minted[0]["iss"], cluster.issuer());
    assert!(
        http.cloudsmith.rejections().is_empty(),
        "{:?}",
        http.cloudsmith.rejections()
    );
    // Over TLS only the trusted run got through.
    assert_eq!(https.cloudsmith.requests_for(ORG).len(), 1);
}

/// Swaps `--oidc-token-file F` for `with`.
fn replace_token_source(args: &mut Vec<String>, with: &[&str]) {
    let at = args
        .iter()
        .position(|a| a == "--oidc-token-file")
        .expect("a token file");
    args.splice(at..at + 2, with.iter().map(|s| s.to_string()));
}

/// Every failure scenario of the stand-in, through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudsmith_scenarios() {
    let world = World::new(false).await;
    let detail = |s: Scenario| s.detail().expect("a fixed detail");
    let expectations: Vec<(Scenario, Expect)> = vec![
        (Scenario::Fail400, fail(5, &["400", detail(Scenario::Fail400)])),
        (Scenario::Fail401, fail(5, &["401", detail(Scenario::Fail401)])),
        (Scenario::Fail403, fail(5, &["403", detail(Scenario::Fail403)])),
        (Scenario::Fail404, fail(5, &["404", detail(Scenario::Fail404)])),
        (Scenario::Fail422, fail(5, &["422", detail(Scenario::Fail422)])),
        (
            Scenario::RateLimited,
            fail(6, &["429", detail(Scenario::RateLimited)]),
        ),
        (
            Scenario::RateLimitedLong,
            fail(6, &["429", "3600", detail(Scenario::RateLimitedLong)]),
        ),
        (Scenario::Fail500, fail(7, &["500", detail(Scenario::Fail500)])),
        (Scenario::Fail502, fail(7, &["502", "502 Bad Gateway"])),
        (Scenario::Fail503, fail(7, &["503", detail(Scenario::Fail503)])),
        (Scenario::Burst503, success(SUBJECT, "burst-503")),
        (Scenario::Burst429, success(SUBJECT, "burst-429")),
        (Scenario::MalformedJson, fail(8, &["JSON"])),
        (Scenario::EmptyToken, fail(8, &["token not found"])),
        (Scenario::NotJwt, fail(8, &["JWT"])),
        (Scenario::NoExp, fail(8, &["exp"])),
        (Scenario::Oversized, fail(8, &["larger than"])),
        (Scenario::OversizedDeclared, fail(8, &["larger than"])),
        (Scenario::Slow, fail(7, &["timed out", "within 1s"])),
        (Scenario::Reset, fail(7, &[&world.cloudsmith.authority()])),
        (Scenario::Redirect, fail(7, &["302", "redirect"])),
        (Scenario::Html500, fail(7, &["500", "Internal Server Error"])),
        (Scenario::Echo401, fail(5, &["401"])),
    ];
    assert_eq!(
        expectations.len(),
        Scenario::ALL.len(),
        "every scenario has a case"
    );

    let cases = expectations
        .into_iter()
        .map(|(scenario, expect)| {
            let mut args = world.args(&world.manifest_for(scenario.org()));
            // Well below the stand-in's 10 s: `slow` must end in a timeout.
            args.extend(["--first-byte-timeout".into(), "1".into()]);
            Case::new(scenario.org(), args, expect, world.secrets(scenario.org()))
        })
        .collect();
    let results = run_table(cases).await;

    // The HTML page is quoted as a short one-line prefix, not whole.
    let html = &results.iter().find(|(n, _)| n == "html-500").unwrap().1;
    assert!(html.stderr.len() < 1000, "{}", html.stderr);
    assert!(!html.stderr.contains("frame 99"), "{}", html.stderr);
    // Refusals are final (one request), server errors and throttling retried.
    for (scenario, at_least) in [
        (Scenario::Fail400, 1),
        (Scenario::Fail401, 1),
        (Scenario::Echo401, 1),
        (Scenario::RateLimitedLong, 1),
        (Scenario::Redirect, 1),
        (Scenario::Fail503, 2),
        (Scenario::Html500, 2),
        (Scenario::Reset, 2),
        (Scenario::Slow, 2),
        (Scenario::RateLimited, 2),
        (Scenario::Burst503, 3),
        (Scenario::Burst429, 2),
    ] {
        let n = world.cloudsmith.requests_for(scenario.org()).len();
        let final_answer = matches!(
            scenario,
            Scenario::Fail400
                | Scenario::Fail401
                | Scenario::Echo401
                | Scenario::RateLimitedLong
                | Scenario::Redirect
        );
        if final_answer {
            assert_eq!(n, at_least, "{scenario:?} is not retried");
        } else {
            assert!(
                n >= at_least,
                "{scenario:?}: {n} request(s), want at least {at_least}"
            );
        }
    }
    // The redirect's target was allowed, reachable, and never contacted.
    assert!(world.evil.requests().is_empty(), "the redirect was followed");
}

/// Where the OIDC token comes from: a file, a variable, Kubernetes (a real API server,
/// with `serve`'s service account kubeconfig under `deploy/`'s RBAC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sources() {
    let cluster = Cluster::shared();
    let world = World::with_cluster(false, cluster).await;
    let kubeconfig = cluster.deployed_service().to_path_buf();
    let service_token = kubeconfig_token(&kubeconfig);
    let mut tampered: Value = serde_json::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    tampered["users"][0]["user"]["token"] = testkit::oidc::tampered(&service_token).into();
    let wrong_bearer = world.file("kubeconfig-wrong", &tampered.to_string());
    // A namespace that opted in, one without the account, one that did not opt in.
    let team = cluster.namespace("token-sources");
    cluster.opt_in(&team, true);
    let no_account = cluster.namespace("token-sources-no-account");
    cluster.opt_in(&no_account, false);
    let not_opted_in = cluster.namespace("token-sources-not-opted-in");
    let manifest = world.manifest_for(ORG);
    let oidc_manifest = world.file(
        "cloudsmith-oidc.yaml",
        &std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("name: default", "name: cloudsmith-oidc"),
    );
    let missing_file = world.dir.path().join("no-such-token");
    let var = "CLOUDSMITH_GEN_E2E_OIDC_TOKEN";

    let with_source = |manifest: &Path, namespace: &str, source: &[&str]| {
        let mut args = world.args(manifest);
        replace_token_source(&mut args, source);
        let at = args.iter().position(|a| a == "--namespace").unwrap();
        args[at + 1] = namespace.to_string();
        args
    };
    let kube_args = |manifest: &Path, namespace: &str, config: &Path| {
        with_source(
            manifest,
            namespace,
            &["--kubeconfig", &config.display().to_string()],
        )
    };
    let minted_subject = format!("system:serviceaccount:{team}:cloudsmith-oidc");
    let mut secrets = world.secrets(ORG);
    secrets.push(service_token.clone());
    secrets.push(access_token_for(&minted_subject, ORG, SERVICE, EXP));

    let mut env_case = Case::new(
        "variable",
        with_source(&manifest, "default", &["--oidc-token-env", var]),
        success(SUBJECT, ORG),
        secrets.clone(),
    );
    env_case.env = vec![(var.to_string(), Some(world.oidc_token.clone()))];
    let mut unset_case = Case::new(
        "variable unset",
        with_source(&manifest, "default", &["--oidc-token-env", var]),
        fail(3, &[&format!("environment variable {var} is not set")]),
        secrets.clone(),
    );
    unset_case.env = vec![(var.to_string(), None)];

    let cases = vec![
        Case::new(
            "file",
            world.args(&manifest),
            success(SUBJECT, ORG),
            secrets.clone(),
        ),
        Case::new(
            "file missing",
            with_source(
                &manifest,
                "default",
                &["--oidc-token-file", &missing_file.display().to_string()],
            ),
            fail(3, &[&missing_file.display().to_string()]),
            secrets.clone(),
        ),
        env_case,
        unset_case,
        Case::new(
            "kubernetes",
            kube_args(&oidc_manifest, &team, &kubeconfig),
            success(&minted_subject, ORG),
            secrets.clone(),
        ),
        Case::new(
            "kubernetes, no such account",
            kube_args(&oidc_manifest, &no_account, &kubeconfig),
            fail(
                3,
                &[
                    &format!("service account {no_account}/cloudsmith-oidc"),
                    "404",
                    "serviceaccounts \"cloudsmith-oidc\" not found",
                ],
            ),
            secrets.clone(),
        ),
        Case::new(
            "kubernetes, a namespace that did not opt in",
            kube_args(&oidc_manifest, &not_opted_in, &kubeconfig),
            fail(
                3,
                &[
                    "403",
                    // The API server's reason, as far as the one-line error keeps it
                    // (it is cut before the namespace).
                    &format!(
                        "TokenRequest for service account {not_opted_in}/cloudsmith-oidc failed: 403 Forbidden: \
                         serviceaccounts \"cloudsmith-oidc\" is forbidden: User \
                         \"system:serviceaccount:cloudsmith-gen:cloudsmith-gen\" cannot create resource \
                         \"serviceaccounts/token\""
                    ),
                ],
            ),
            secrets.clone(),
        ),
        Case::new(
            "kubernetes, an account deploy/'s RBAC does not name",
            kube_args(&manifest, &team, &kubeconfig),
            fail(3, &["403", "serviceaccounts \"default\" is forbidden"]),
            secrets.clone(),
        ),
        Case::new(
            "kubernetes, a token the API server does not accept",
            kube_args(&oidc_manifest, &team, &wrong_bearer),
            fail(3, &["401", "Unauthorized"]),
            secrets.clone(),
        ),
    ];
    let results = run_table(cases).await;

    // The TokenRequest, read back from the token the API server signed and Cloudsmith
    // verified: the manifest's account in the target namespace, the API's origin as
    // audience (the spec names none), 600 s. (The refusals above name the kubeconfig's
    // identity.)
    let minted: Vec<Value> = world
        .cloudsmith
        .requests_for(ORG)
        .iter()
        .map(|r| claims(r.json().unwrap()["oidc_token"].as_str().unwrap()))
        .filter(|c| c["iss"] == cluster.issuer())
        .collect();
    assert_eq!(minted.len(), 1, "{minted:?}");
    assert_eq!(minted[0]["sub"], minted_subject.as_str());
    assert_eq!(minted[0]["aud"], json!([world.cloudsmith.origin()]));
    assert_eq!(
        minted[0]["exp"].as_u64().unwrap() - minted[0]["iat"].as_u64().unwrap(),
        600
    );
    // The token the API server minted is in no output either.
    let sent: Vec<String> = world
        .cloudsmith
        .requests_for(ORG)
        .iter()
        .map(|r| r.json().unwrap()["oidc_token"].as_str().unwrap().to_string())
        .collect();
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    for (name, out) in &results {
        assert_eq!(find_secret(&[&out.stdout, &out.stderr], &sent), None, "{name}");
    }
}

/// `--output secret` and `--output dockerconfigjson`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats() {
    let world = World::new(false).await;
    let manifest = world.manifest_for(ORG);
    let with = |extra: &[&str]| {
        let mut args = world.args(&manifest);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let cases = [
        ("secret", with(&["--output", "secret"])),
        (
            "secret, named, other namespace registry",
            with(&[
                "--output",
                "secret",
                "--secret-name",
                "pull",
                "--registry",
                "registry.example:5000",
            ]),
        ),
        ("dockerconfigjson", with(&["--output", "dockerconfigjson"])),
    ];
    let auth = World::auth(SUBJECT, ORG);
    for (name, args) in cases {
        let out = run_cli(&args, &[], None).await;
        assert!(out.success(), "{name}: {out:?}");
        let docker_config =
            |text: &[u8]| -> Value { serde_json::from_slice(text).expect("docker config JSON") };
        match name {
            "dockerconfigjson" => {
                let config = docker_config(out.stdout.as_bytes());
                assert_eq!(config, json!({"auths": {REGISTRY: {"auth": auth}}}), "{name}");
                // What docker does with it: decode `auth` to user:password.
                let decoded = STANDARD
                    .decode(config["auths"][REGISTRY]["auth"].as_str().unwrap())
                    .unwrap();
                let access_token = access_token_for(SUBJECT, ORG, SERVICE, EXP);
                assert_eq!(
                    String::from_utf8(decoded).unwrap(),
                    format!("token:{access_token}")
                );
            }
            _ => {
                let (secret_name, registry) = if name == "secret" {
                    ("cloudsmith-credentials", REGISTRY)
                } else {
                    ("pull", "registry.example:5000")
                };
                let raw: Value = serde_json::from_str(&out.stdout).expect("Secret JSON");
                assert_eq!(raw["apiVersion"], "v1", "{name}");
                assert_eq!(raw["kind"], "Secret", "{name}");
                // k8s-openapi (what kube-rs and kubectl's schema agree on) reads it.
                let secret: K8sSecret = serde_json::from_value(raw).expect("a v1 Secret");
                assert_eq!(secret.metadata.name.as_deref(), Some(secret_name));
                assert_eq!(secret.metadata.namespace.as_deref(), Some("default"));
                assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
                let data = secret.data.expect("data");
                assert_eq!(data.keys().collect::<Vec<_>>(), [".dockerconfigjson"]);
                let config = docker_config(&data[".dockerconfigjson"].0);
                assert_eq!(config, json!({"auths": {registry: {"auth": auth}}}), "{name}");
            }
        }
    }
}

/// A row of [`bad_inputs`]' flag table: case, arguments, stdin, exit code, needle.
type FlagRow<'a> = (&'a str, Vec<&'a str>, Option<&'a str>, i32, &'a str);

/// Flag, manifest and spec errors, and the outbound policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs() {
    let world = World::new(false).await;
    let url = world.cloudsmith.url();
    let spec_manifest = |spec: Value| {
        json!({
            "apiVersion": "generators.external-secrets.io/v1alpha1",
            "kind": "CloudsmithAccessToken",
            "metadata": {"name": "t"},
            "spec": spec,
        })
        .to_string()
    };
    let good_spec = || {
        json!({"apiHost": url, "orgSlug": ORG, "serviceSlug": SERVICE,
               "serviceAccountRef": {"name": "default"}})
    };
    let with_field = |field: &str, value: Value| {
        let mut spec = good_spec();
        spec[field] = value;
        spec_manifest(spec)
    };
    let missing = world.dir.path().join("missing.yaml");
    let missing_path = missing.display().to_string();
    let wrong_kind = spec_manifest(good_spec()).replace("CloudsmithAccessToken", "ECRAuthorizationToken");
    let no_spec = json!({"kind": "CloudsmithAccessToken"}).to_string();
    let userinfo = url.replace("http://", "http://user:hunter2-e2e@");
    let (query, scheme) = (format!("{url}/?x=1"), url.replace("http://", "ftp://"));
    let field = |name: &str, value: &str| Some(with_field(name, json!(value)));
    // (name, manifest text or None for a missing file, exit code, needles)
    let table: Vec<(&str, Option<String>, i32, Vec<&str>)> = vec![
        ("manifest missing", None, 2, vec![&missing_path]),
        ("invalid YAML", Some("spec: [unclosed\n".into()), 2, vec!["YAML"]),
        ("not a mapping", Some("- a\n- b\n".into()), 2, vec!["mapping"]),
        (
            "wrong kind",
            Some(wrong_kind),
            2,
            vec!["kind", "ECRAuthorizationToken"],
        ),
        ("no spec", Some(no_spec), 2, vec!["spec"]),
        ("org slug with /", field("orgSlug", "my/org"), 2, vec!["orgSlug"]),
        ("org slug with ..", field("orgSlug", ".."), 2, vec!["orgSlug"]),
        (
            "service slug with ?",
            field("serviceSlug", "svc?x=1"),
            2,
            vec!["serviceSlug"],
        ),
        (
            "empty service slug",
            field("serviceSlug", ""),
            2,
            vec!["serviceSlug"],
        ),
        (
            "no service account",
            Some(with_field("serviceAccountRef", Value::Null)),
            2,
            vec!["serviceAccountRef"],
        ),
        (
            "apiHost with a query",
            field("apiHost", &query),
            2,
            vec!["apiHost", "query"],
        ),
        (
            "apiHost with userinfo",
            field("apiHost", &userinfo),
            2,
            vec!["apiHost", "userinfo"],
        ),
        (
            "apiHost with another scheme",
            field("apiHost", &scheme),
            2,
            vec!["apiHost", "scheme"],
        ),
        (
            "host not in the allowlist",
            field("apiHost", "http://127.0.0.1:9"),
            4,
            vec!["127.0.0.1:9"],
        ),
    ];
    let mut cases = Vec::new();
    for (i, (name, text, code, needles)) in table.into_iter().enumerate() {
        let path = match text {
            Some(text) => world.file(&format!("bad-{i}.yaml"), &text),
            None => missing.clone(),
        };
        let mut secrets = world.secrets(ORG);
        secrets.push("hunter2-e2e".into());
        cases.push(Case::new(name, world.args(&path), fail(code, &needles), secrets));
    }
    // Plain http refused without --allow-http, even to an allowed host.
    let mut no_allow_http = world.args(&world.manifest_for(ORG));
    no_allow_http.retain(|a| a != "--allow-http");
    cases.push(Case::new(
        "plain http without --allow-http",
        no_allow_http,
        fail(4, &[&format!("plain http to {}", world.cloudsmith.authority())]),
        world.secrets(ORG),
    ));
    // Flags, manifests on stdin, and what fails before any request without a stand-in.
    let m = local_manifest("m-num.yaml", "api.cloudsmith.io");
    let deny = local_manifest("m-deny.yaml", "https://127.0.0.1:9");
    let cross = write(
        "m-cross.yaml",
        &SEED.replace("namespace: \"default\"", "namespace: \"kube-system\""),
    );
    let t = token_file();
    let (m, deny, cross, t) = (
        m.to_str().unwrap(),
        deny.to_str().unwrap(),
        cross.to_str().unwrap(),
        t.to_str().unwrap(),
    );
    let stdin = || vec!["generate", "--manifest", "-"];
    let allow_host = |value| vec!["generate", "--manifest", "-", "--allow-host", value];
    let with_m = |flag, value| vec!["generate", "--manifest", m, flag, value];
    // (case, arguments, stdin, exit code, what the one `error:` line names)
    let table: Vec<FlagRow> = vec![
        (
            "invalid YAML on stdin",
            stdin(),
            Some("spec: [1,\n"),
            2,
            "invalid YAML",
        ),
        (
            "not a mapping, on stdin",
            stdin(),
            Some("- a\n- b\n"),
            2,
            "not a mapping",
        ),
        (
            "--allow-host a URL",
            allow_host("https://x.io"),
            None,
            2,
            "is a URL",
        ),
        (
            "--allow-host port 0",
            allow_host("x.io:0"),
            None,
            2,
            "not a port number",
        ),
        (
            "--allow-host not a host",
            allow_host("bad_host"),
            None,
            2,
            "not a host name",
        ),
        ("an unknown flag", vec!["generate", "--bogus"], None, 2, "--bogus"),
        ("--timeout 0", with_m("--timeout", "0"), None, 2, "out of range"),
        (
            "--memory-limit x",
            with_m("--memory-limit", "x"),
            None,
            2,
            "memory-limit",
        ),
        (
            "--wasi-dir without ::",
            with_m("--wasi-dir", "nodoublecolon"),
            None,
            2,
            "HOST_DIR::GUEST_DIR",
        ),
        (
            "a token file and a token variable",
            vec![
                "generate",
                "--manifest",
                m,
                "--oidc-token-file",
                t,
                "--oidc-token-env",
                "X",
            ],
            None,
            2,
            "cannot be used with",
        ),
        (
            "no serviceSlug, on stdin",
            vec!["generate", "--manifest", "-", "--oidc-token-file", t],
            Some("spec: {orgSlug: my-org, serviceAccountRef: {name: default}}\n"),
            2,
            "serviceSlug",
        ),
        (
            "a host off the default allowlist",
            vec!["generate", "--manifest", deny, "--oidc-token-file", t],
            None,
            4,
            "host 127.0.0.1:9 is not in the outbound allowlist (allowed: api.cloudsmith.io:443)",
        ),
        (
            "a token file for another namespace",
            vec!["generate", "--manifest", cross, "--oidc-token-file", t],
            None,
            3,
            "kube-system/default",
        ),
    ];
    for (name, args, stdin, code, needle) in table {
        cases.push(plain(name, &args, stdin, fail(code, &[needle])));
    }
    run_table(cases).await;
    // None of these reached Cloudsmith.
    assert!(
        world.cloudsmith.requests().is_empty(),
        "{:?}",
        world.cloudsmith.requests()
    );
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
    let stand_in = common::stand_in_trusting_apps().await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_push_refuses_bad_input_before_the_registry() {
    let core = scratch().join("core.wasm");
    // The preamble of a core module (version 1, layer 0), as `wasm-tools parse "(module)"` writes it.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = write("not-wasm.wasm", "hello");
    let (core, text) = (core.to_str().unwrap(), text.to_str().unwrap());
    let digest_target = format!("127.0.0.1:9/x@sha256:{}", "a".repeat(64));
    let push = |component| vec!["component", "push", "127.0.0.1:9/x:1", "--component", component];
    // (case, arguments, what the one `error:` line names)
    let table: [(&str, Vec<&str>, &str); 6] = [
        (
            "a core module",
            push(core),
            "is a core Wasm module, not a component",
        ),
        ("not Wasm", push(text), "is not a Wasm component"),
        ("a missing file", push("/nonexistent.wasm"), "/nonexistent.wasm"),
        (
            "no registry host",
            vec!["component", "push", "plugins/x:1"],
            "is not a registry host",
        ),
        (
            "to a digest",
            vec!["component", "push", &digest_target],
            "push to a tag, not a digest",
        ),
        (
            "generate from a short digest",
            vec![
                "generate",
                "--manifest",
                "-",
                "--component",
                "oci://127.0.0.1:9/x@sha256:12",
            ],
            "64 hex digits",
        ),
    ];
    let cases = table
        .into_iter()
        .map(|(name, args, needle)| plain(name, &args, Some(""), fail(2, &[needle])))
        .collect();
    run_table(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_files_that_tls_cannot_use_are_named() {
    // PEM that parses, around DER that is no certificate: rustls refuses it as a root.
    let bad = write(
        "bad-ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
    );
    let empty = write("empty-ca.pem", "");
    let m = local_manifest("m-ca.yaml", "https://127.0.0.1:9");
    let t = token_file();
    let (m, t) = (m.to_str().unwrap(), t.to_str().unwrap());
    let mut cases = Vec::new();
    for (what, ca, needle) in [
        (
            "not a CA",
            &bad,
            "certificate 1 is not a CA certificate TLS can use",
        ),
        ("empty", &empty, "no certificate found"),
    ] {
        let ca = ca.to_str().unwrap();
        let generate = [
            "generate",
            "--manifest",
            m,
            "--oidc-token-file",
            t,
            "--ca-file",
            ca,
        ];
        let push = ["component", "push", "127.0.0.1:9/x:1", "--ca-file", ca];
        for (command, args) in [("generate", &generate[..]), ("component push", &push[..])] {
            let name = format!("{command}, a CA file {what}");
            cases.push(plain(&name, args, None, fail(2, &[needle, ca])));
        }
    }
    run_table(cases).await;
}

/// Runs the binary with `env` set, nothing else inherited that the Docker helper reads,
/// `stdin` written and this test's compile cache.
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_per_host_and_never_to_cloudsmith() {
    let t = token_file();
    let t = t.to_str().unwrap();
    let to_cloudsmith = local_manifest("m-plain-cloudsmith.yaml", "http://api.cloudsmith.io:443");
    // To a named host: allowed by name, and only there (no other port).
    let to_named = local_manifest("m-plain-named.yaml", "http://127.0.0.1:9");
    let generate = |manifest: &Path, flags: &[&str]| {
        let mut args = vec![
            "generate",
            "--manifest",
            manifest.to_str().unwrap(),
            "--oidc-token-file",
            t,
        ];
        args.extend(flags);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let flag_only = |flag: &str| generate(Path::new("-"), &[flag]);
    let (named, host_only) = (
        flag_only("--allow-http=api.cloudsmith.io"),
        flag_only("--allow-http=api.cloudsmith.io:443"),
    );
    let forced = generate(
        &to_cloudsmith,
        &["--allow-http", "--allow-host", "api.cloudsmith.io:443"],
    );
    let other_port = generate(&to_named, &["--allow-http", "127.0.0.1:10"]);
    let cases = vec![
        plain(
            "--allow-http=api.cloudsmith.io",
            &strs(&named),
            Some(SEED),
            fail(2, &["is never allowed"]),
        ),
        plain(
            "--allow-http=api.cloudsmith.io:443",
            &strs(&host_only),
            Some(SEED),
            fail(2, &["is never allowed"]),
        ),
        plain(
            "http://api.cloudsmith.io:443 with --allow-http",
            &strs(&forced),
            None,
            fail(4, &["plain http to api.cloudsmith.io:443 is never allowed"]),
        ),
        plain(
            "--allow-http for another port",
            &strs(&other_port),
            None,
            fail(4, &["host 127.0.0.1:9 is not in the outbound allowlist"]),
        ),
    ];
    run_table(cases).await;
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
