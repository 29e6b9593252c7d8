//! Suite host_cli: the `cloudsmith-gen` CLI run as a process against the
//! stand-in Cloudsmith (plain HTTP and HTTPS) and a real Kubernetes API server
//! (`testkit::cluster`), over loopback.
//!
//! | table                   | what it proves                                                                  |
//! |-------------------------|---------------------------------------------------------------------------------|
//! | [`documented_manifest`] | ESO's documented example manifest, verbatim but for `apiHost`, gives the exact `auth` and `expiry` over HTTP, HTTPS (`--ca-file`) and with a Kubernetes token from a real API server under `deploy/`'s RBAC, each with one warning that ESO's CRD would drop that `apiHost`; HTTPS without the CA fails, with its one `error:` line only |
//! | [`cloudsmith_scenarios`] | every stand-in failure scenario: its exit code, one `error:` line naming the status and Cloudsmith's detail (or the cause), no token in any output; burst scenarios succeed; `slow` times out; `redirect` is not followed |
//! | [`token_sources`]       | file, environment variable and Kubernetes TokenRequest (what was asked for, read back from the real token), and each one's failures with the API server's reason |
//! | [`output_formats`]      | `--output secret` and `dockerconfigjson` have the shape kubectl and docker accept |
//! | [`bad_inputs`]          | manifest and spec errors, the host allowlist and the plain-http refusal, each named in the error |
//!
//! Each table runs its cases concurrently (a few processes at a time) and
//! reports every mismatch before failing. The CLI comes from
//! `testkit::tools::cloudsmith_gen()`: the `cloudsmith-gen` cargo built beside
//! this test, or `CLOUDSMITH_GEN`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, Scenario, StandIn, StandInConfig, REGISTRY};
use testkit::cluster::Cluster;
use testkit::process::{find_secret, Output};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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

/// Runs the CLI with `args`, `env` changes and `stdin`.
async fn run_cli(args: &[String], env: &[(String, Option<String>)], stdin: Option<Vec<u8>>) -> Output {
    let mut command = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
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
fn check(case: &Case, out: &Output) -> Vec<String> {
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
async fn run_table(cases: Vec<Case>) -> Vec<(String, Output)> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut set = JoinSet::new();
    for (i, case) in cases.into_iter().enumerate() {
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let out = run_cli(&case.args, &case.env, case.stdin.clone()).await;
            let wrong = check(&case, &out);
            if std::env::var_os("HOST_CLI_SHOW").is_some() {
                // For reading what users see: HOST_CLI_SHOW=1 cargo test ... -- --nocapture
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
            kube_args(&http_manifest),
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
        fail(3, &[var]),
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
                    &format!(
                        "User \"system:serviceaccount:cloudsmith-gen:cloudsmith-gen\" cannot create resource \
                         \"serviceaccounts/token\" in API group \"\" in the namespace \"{not_opted_in}\""
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

/// Manifest and spec errors, and the outbound policy.
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
    // (name, manifest text or None for a missing file, exit code, needles)
    let table: Vec<(&str, Option<String>, i32, Vec<String>)> = vec![
        ("manifest missing", None, 2, vec![missing.display().to_string()]),
        (
            "invalid YAML",
            Some("spec: [unclosed\n".into()),
            2,
            vec!["YAML".into()],
        ),
        (
            "not a mapping",
            Some("- a\n- b\n".into()),
            2,
            vec!["mapping".into()],
        ),
        (
            "wrong kind",
            Some(spec_manifest(good_spec()).replace("CloudsmithAccessToken", "ECRAuthorizationToken")),
            2,
            vec!["kind".into(), "ECRAuthorizationToken".into()],
        ),
        (
            "no spec",
            Some(json!({"kind": "CloudsmithAccessToken"}).to_string()),
            2,
            vec!["spec".into()],
        ),
        (
            "org slug with /",
            Some(with_field("orgSlug", json!("my/org"))),
            2,
            vec!["orgSlug".into()],
        ),
        (
            "org slug with ..",
            Some(with_field("orgSlug", json!(".."))),
            2,
            vec!["orgSlug".into()],
        ),
        (
            "service slug with ?",
            Some(with_field("serviceSlug", json!("svc?x=1"))),
            2,
            vec!["serviceSlug".into()],
        ),
        (
            "empty service slug",
            Some(with_field("serviceSlug", json!(""))),
            2,
            vec!["serviceSlug".into()],
        ),
        (
            "no service account",
            Some(with_field("serviceAccountRef", Value::Null)),
            2,
            vec!["serviceAccountRef".into()],
        ),
        (
            "apiHost with a query",
            Some(with_field("apiHost", json!(format!("{url}/?x=1")))),
            2,
            vec!["apiHost".into(), "query".into()],
        ),
        (
            "apiHost with userinfo",
            Some(with_field(
                "apiHost",
                json!(url.replace("http://", "http://user:hunter2-e2e@")),
            )),
            2,
            vec!["apiHost".into(), "userinfo".into()],
        ),
        (
            "apiHost with another scheme",
            Some(with_field("apiHost", json!(url.replace("http://", "ftp://")))),
            2,
            vec!["apiHost".into(), "scheme".into()],
        ),
        (
            "host not in the allowlist",
            Some(with_field("apiHost", json!("http://127.0.0.1:9"))),
            4,
            vec!["127.0.0.1:9".into()],
        ),
    ];
    let mut cases = Vec::new();
    for (i, (name, text, code, needles)) in table.into_iter().enumerate() {
        let path = match text {
            Some(text) => world.file(&format!("bad-{i}.yaml"), &text),
            None => missing.clone(),
        };
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
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
        fail(4, &["http", &world.cloudsmith.authority()]),
        world.secrets(ORG),
    ));
    run_table(cases).await;
    // None of these reached Cloudsmith.
    assert!(
        world.cloudsmith.requests().is_empty(),
        "{:?}",
        world.cloudsmith.requests()
    );
}
