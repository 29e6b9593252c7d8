//! No token ever leaks: the whole failure battery, through the library and
//! the CLI, with every error (`Display` and `Debug`), every call report,
//! every captured guest stream and every process output scanned for the OIDC
//! token, the Kubernetes bearer token and the access tokens.
//!
//! | battery                | cases                                                               |
//! |------------------------|---------------------------------------------------------------------|
//! | bad specs              | not JSON, missing fields, bad slugs, bad URLs, plain http refused, host off the allowlist, bad namespace |
//! | Cloudsmith stand-in    | every failure scenario ([`Scenario::ALL`]), including one that echoes the request (OIDC token) in its error |
//! | token sources          | missing / empty / oversized / directory token file, unset / empty variable, Kubernetes (a real API server, `deploy/`'s RBAC): unknown account, forbidden namespace, wrong bearer token, unreachable API server; a token Cloudsmith refuses |
//! | hostile plugin         | echoes the token to stdout, stderr and its error; sends it off the allowlist; traps; loops |
//!
//! Types that hold tokens redact themselves in `Debug` and `Display`: the
//! host's `Secret` and `Credentials`, the guest crate's `Secret` and
//! `exchange::Request`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cloudsmith_gen::token_source::{
    EnvTokenSource, FileTokenSource, KubernetesTokenSource, StaticTokenSource,
};
use cloudsmith_gen::wasmtime::component::Component;
use cloudsmith_gen::wasmtime::Engine;
use cloudsmith_gen::{
    sandbox, Authority, CallReport, Credentials, EngineOptions, Error, Generator, GeneratorOptions, Limits,
    OutboundPolicy, Secret, TimeoutCaps, TokenSource,
};
use testkit::cloudsmith::{access_token_for, auth_for, Scenario, StandIn, StandInConfig};
use testkit::process::assert_no_secret;

const NAMESPACE: &str = "apps";
const ACCOUNT: &str = "default";
const SUBJECT: &str = "system:serviceaccount:apps:default";
const SERVICE: &str = "eso";
const EXP: u64 = 1_700_000_000;

/// One call's every visible trace.
struct Seen {
    label: String,
    /// The error's `Display`, or `(success)`.
    shown: String,
    texts: Vec<String>,
}

impl Seen {
    fn of(label: impl Into<String>, result: &Result<Credentials, Error>, report: &CallReport) -> Seen {
        let label = label.into();
        let mut texts = vec![
            format!("{report:?}"),
            report.guest_stdout.clone(),
            report.guest_stderr.clone(),
        ];
        let shown = match result {
            Ok(_) => "(success)".to_string(),
            Err(e) => e.to_string(),
        };
        match result {
            Ok(credentials) => {
                texts.push(format!("{credentials:?}"));
                texts.push(format!("{credentials}"));
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(!shown.contains('\n'), "{label}: error is one line: {shown}");
                texts.push(shown);
                texts.push(format!("{e:?}"));
            }
        }
        Seen { label, shown, texts }
    }
}

/// Everything the battery may not show.
struct Secrets(Vec<String>);

impl Secrets {
    /// The battery's secrets: the token handed to the host, the service account's own
    /// token, every token the API server minted for the battery, and the access token
    /// and auth of every org the stand-in answers for.
    fn of_battery(oidc_token: &str, kube: &Kube, stand_in: &StandIn) -> Secrets {
        let mut secrets = vec![oidc_token.to_string(), kube.service_token()];
        let minted = kube.minted(stand_in);
        assert!(!minted.is_empty(), "the API server minted tokens");
        secrets.extend(minted);
        for org in Scenario::ALL.iter().map(|s| s.org()).chain(["acme"]) {
            let access = access_token_for(SUBJECT, org, SERVICE, EXP);
            secrets.push(auth_for(&access));
            secrets.push(access);
        }
        Secrets(secrets)
    }

    fn assert_absent_from(&self, seen: &[Seen]) {
        let secrets: Vec<&str> = self.0.iter().map(String::as_str).collect();
        for s in seen {
            let texts: Vec<&str> = s.texts.iter().map(String::as_str).collect();
            // assert_no_secret panics naming the output; add which case it was.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                assert_no_secret(&texts, &secrets)
            }));
            if outcome.is_err() {
                panic!("case {:?} leaked a secret (see the message above)", s.label);
            }
        }
    }
}

fn manifest(api: &str, org: &str) -> String {
    serde_json::json!({"spec": {
        "apiUrl": api,
        "orgSlug": org,
        "serviceSlug": SERVICE,
        "serviceAccountRef": {"name": ACCOUNT},
    }})
    .to_string()
}

/// [`manifest`] for the account the service's RBAC lets it mint for.
fn kube_manifest(api: &str, org: &str) -> String {
    manifest(api, org).replace(&format!("\"{ACCOUNT}\""), "\"cloudsmith-oidc\"")
}

/// A real API server (`testkit::cluster`) with `serve`'s service account under
/// `deploy/`'s RBAC, and three namespaces: one that opted in, one whose account is
/// missing, one that did not opt in.
struct Kube {
    cluster: &'static testkit::cluster::Cluster,
    kubeconfig: std::path::PathBuf,
    opted_in: String,
    no_account: String,
    not_opted_in: String,
}

impl Kube {
    /// The stand-in Cloudsmith, trusting this cluster's service accounts; `slow` answers
    /// after 5 s.
    async fn cloudsmith(&self) -> StandIn {
        StandIn::start(
            StandInConfig {
                slow_delay: Duration::from_secs(5),
                ..Default::default()
            }
            .also_trusting(self.cluster, "system:serviceaccount:*"),
        )
        .await
        .expect("cloudsmith stand-in")
    }

    fn new() -> Kube {
        let cluster = testkit::cluster::Cluster::shared();
        let kubeconfig = cluster.deployed_service().to_path_buf();
        let opted_in = cluster.namespace("leaks");
        cluster.opt_in(&opted_in, true);
        let no_account = cluster.namespace("leaks-no-account");
        cluster.opt_in(&no_account, false);
        let not_opted_in = cluster.namespace("leaks-not-opted-in");
        Kube {
            cluster,
            kubeconfig,
            opted_in,
            no_account,
            not_opted_in,
        }
    }

    fn config(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig")).expect("JSON")
    }

    /// The service account's token, which the kubeconfig holds.
    fn service_token(&self) -> String {
        self.config()["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The kubeconfig with its token's signature changed.
    fn wrong_bearer(&self) -> String {
        let mut config = self.config();
        config["users"][0]["user"]["token"] = testkit::oidc::tampered(&self.service_token()).into();
        config.to_string()
    }

    /// The kubeconfig pointing at a port nothing listens on.
    fn unreachable(&self) -> String {
        self.config()
            .to_string()
            .replace(self.cluster.server(), "https://127.0.0.1:1")
    }

    /// The tokens the API server minted that reached `cloudsmith`.
    fn minted(&self, cloudsmith: &StandIn) -> Vec<String> {
        cloudsmith
            .requests()
            .iter()
            .filter_map(|r| r.json()?["oidc_token"].as_str().map(str::to_string))
            .filter(|t| {
                testkit::cloudsmith::jwt_payload(t).is_some_and(|p| p["iss"] == self.cluster.issuer())
            })
            .collect()
    }
}

fn hostile_wasm() -> std::path::PathBuf {
    testkit::artifacts::wasm("hostile")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_token_leaks_from_the_library_on_any_failure() {
    let (engine, good, hostile) = {
        static COMPILED: OnceLock<(Engine, Component, Component)> = OnceLock::new();
        COMPILED.get_or_init(|| {
            let engine = sandbox::engine(&EngineOptions {
                pooling: false,
                ..Default::default()
            })
            .expect("engine");
            let (good, hostile) = e2e_tests::generator_and_hostile(&engine);
            (engine, good, hostile)
        })
    };
    let kube = Kube::new();
    let stand_in = kube.cloudsmith().await;
    let api = stand_in.url();
    let oidc_token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
    let policy = OutboundPolicy::default()
        .allow_only([stand_in.authority().parse::<Authority>().expect("authority")])
        .allow_http(true)
        // `slow` answers after 5 s: the first-byte cap turns it into a timeout.
        .timeouts(TimeoutCaps {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(2),
            between_bytes: Duration::from_secs(2),
        });
    let options = |limits: Limits| GeneratorOptions {
        policy: policy.clone(),
        limits,
        max_concurrent_calls: 32,
        ..Default::default()
    };
    let make = |source: Arc<dyn TokenSource>| {
        Generator::new(engine, good, source, options(Limits::default())).expect("generator")
    };
    let static_source: Arc<dyn TokenSource> =
        Arc::new(StaticTokenSource::new(Secret::new(oidc_token.clone())));
    let generator = make(static_source.clone());
    let mut seen = Vec::new();

    // Bad specs: refused before or at the network, with the token already
    // fetched in the policy cases.
    let bad_specs = [
        ("not JSON", "{not json".to_string()),
        ("no spec", r#"{"kind": "CloudsmithAccessToken"}"#.to_string()),
        (
            "missing orgSlug",
            r#"{"spec": {"serviceSlug": "s", "serviceAccountRef": {"name": "default"}}}"#.to_string(),
        ),
        ("path in slug", manifest(&api, "acme/../admin")),
        ("query in slug", manifest(&api, "acme?x=1")),
        (
            "userinfo in URL",
            manifest(&format!("http://user:pw@{}", stand_in.authority()), "acme"),
        ),
        ("ftp scheme", manifest("ftp://127.0.0.1/", "acme")),
        ("host off the allowlist", manifest("https://evil.example", "acme")),
        (
            "plain http to the default API",
            manifest("http://api.cloudsmith.io", "acme"),
        ),
        (
            "wrong kind",
            r#"{"kind": "ECRAuthorizationToken", "spec": {}}"#.to_string(),
        ),
    ];
    for (label, m) in &bad_specs {
        let r = generator.generate_traced(m, NAMESPACE).await;
        assert!(r.result.is_err(), "bad spec {label} must fail");
        seen.push(Seen::of(format!("spec: {label}"), &r.result, &r.report));
    }
    let r = generator
        .generate_traced(&manifest(&api, "acme"), "Not_A_Namespace")
        .await;
    assert!(r.result.is_err(), "a bad namespace must fail");
    seen.push(Seen::of("spec: bad namespace", &r.result, &r.report));

    // Every Cloudsmith stand-in scenario, concurrently.
    let calls = Scenario::ALL.iter().map(|scenario| {
        let generator = generator.clone();
        let m = manifest(&api, scenario.org());
        async move { (*scenario, generator.generate_traced(&m, NAMESPACE).await) }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for call in calls {
        tasks.spawn(call);
    }
    let mut scenarios = 0;
    while let Some(joined) = tasks.join_next().await {
        let (scenario, r) = joined.expect("scenario task");
        scenarios += 1;
        // Only the two burst scenarios end in success.
        let succeeds = matches!(scenario, Scenario::Burst503 | Scenario::Burst429);
        assert_eq!(r.result.is_ok(), succeeds, "{scenario:?}: {:?}", r.result);
        if scenario == Scenario::Echo401 {
            let shown = r.result.as_ref().unwrap_err().to_string();
            assert!(
                shown.contains("[redacted]"),
                "the echoed token is redacted: {shown}"
            );
        }
        seen.push(Seen::of(
            format!("stand-in: {}", scenario.org()),
            &r.result,
            &r.report,
        ));
    }
    assert_eq!(scenarios, Scenario::ALL.len());

    // Token sources that fail.
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    };
    let empty = write("empty", "  \n");
    let huge = write("huge", &oidc_token.repeat(2_000));
    std::env::set_var("LEAKS_EMPTY_TOKEN", "");
    std::env::remove_var("LEAKS_UNSET_TOKEN");
    let wrong_bearer = write("kubeconfig-wrong-bearer", &kube.wrong_bearer());
    let kubeconfig = kube.kubeconfig.clone();
    let unreachable = write("kubeconfig-unreachable", &kube.unreachable());
    let sources: Vec<(&str, Arc<dyn TokenSource>, String, &str)> = vec![
        (
            "missing file",
            Arc::new(FileTokenSource::new(dir.path().join("nope"))),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "empty file",
            Arc::new(FileTokenSource::new(&empty)),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "oversized file holding tokens",
            Arc::new(FileTokenSource::new(&huge)),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "directory",
            Arc::new(FileTokenSource::new(dir.path())),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "unset variable",
            Arc::new(EnvTokenSource::new("LEAKS_UNSET_TOKEN")),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "empty variable",
            Arc::new(EnvTokenSource::new("LEAKS_EMPTY_TOKEN")),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "kubernetes: unknown account",
            Arc::new(KubernetesTokenSource::new(Some(kubeconfig.clone()))),
            kube_manifest(&api, "acme"),
            &kube.no_account,
        ),
        (
            "kubernetes: forbidden namespace",
            Arc::new(KubernetesTokenSource::new(Some(kubeconfig.clone()))),
            kube_manifest(&api, "acme"),
            &kube.not_opted_in,
        ),
        (
            "kubernetes: wrong bearer token",
            Arc::new(KubernetesTokenSource::new(Some(wrong_bearer))),
            kube_manifest(&api, "acme"),
            &kube.opted_in,
        ),
        (
            "kubernetes: unreachable",
            Arc::new(KubernetesTokenSource::new(Some(unreachable))),
            kube_manifest(&api, "acme"),
            &kube.opted_in,
        ),
        (
            "a token Cloudsmith refuses",
            Arc::new(StaticTokenSource::new(Secret::new(testkit::oidc::token(
                SUBJECT,
                &["https://other.example"],
            )))),
            manifest(&api, "acme"),
            NAMESPACE,
        ),
        (
            "serviceAccountRef in another namespace",
            static_source.clone(),
            manifest(&api, "acme").replace(
                r#"{"name":"default"}"#,
                r#"{"name":"default","namespace":"kube-system"}"#,
            ),
            NAMESPACE,
        ),
    ];
    for (label, source, m, namespace) in sources {
        let r = make(source).generate_traced(&m, namespace).await;
        assert!(
            r.result.is_err(),
            "token source {label} must fail: {:?}",
            r.result
        );
        seen.push(Seen::of(format!("token source: {label}"), &r.result, &r.report));
    }
    // The Kubernetes source does work (its tokens join the secrets below).
    let r = make(Arc::new(KubernetesTokenSource::new(Some(kubeconfig))))
        .generate_traced(&kube_manifest(&api, "echo-401"), &kube.opted_in)
        .await;
    assert!(r.result.is_err());
    seen.push(Seen::of(
        "kubernetes token echoed by the stand-in",
        &r.result,
        &r.report,
    ));

    // The hostile plugin, which holds the token and tries to show it.
    let hostile = Generator::new(
        engine,
        hostile,
        static_source,
        options(Limits {
            deadline: Duration::from_secs(2),
            memory_bytes: 32 * 1024 * 1024,
            output_capture_bytes: 64 * 1024,
        }),
    )
    .expect("hostile generator");
    for mode in [
        "echo-token",
        "evil-host",
        "trap",
        "panic",
        "loop",
        "alloc",
        "files",
        "env",
    ] {
        let m = serde_json::json!({"hostile": mode, "serviceAccountRef": {"name": "default"}}).to_string();
        let r = hostile.generate_traced(&m, NAMESPACE).await;
        seen.push(Seen::of(format!("hostile: {mode}"), &r.result, &r.report));
    }

    let secrets = Secrets::of_battery(&oidc_token, &kube, &stand_in);
    assert!(seen.len() >= 50, "the battery ran {} cases", seen.len());
    secrets.assert_absent_from(&seen);
    // What the user sees, for SECURITY.md's battery table (`--nocapture`).
    for s in &seen {
        println!("library | {} | {}", s.label, s.shown);
    }
}

#[test]
fn token_holding_types_redact_themselves() {
    let token = testkit::oidc::token(SUBJECT, &["https://api.cloudsmith.io"]);

    let host = Secret::new(token.clone());
    assert_eq!(format!("{host}"), "[redacted]");
    assert_eq!(format!("{host:?}"), "Secret([redacted])");
    assert_eq!(host.expose(), token);

    let access = access_token_for(SUBJECT, "acme", SERVICE, EXP);
    let auth = auth_for(&access);
    let credentials = Credentials::from_outputs(vec![
        ("auth".into(), auth.clone().into_bytes()),
        ("expiry".into(), b"1700000000".to_vec()),
    ])
    .expect("credentials");
    let shown = [format!("{credentials}"), format!("{credentials:?}")];
    assert_eq!(shown[0], "credentials (auth [redacted], expiry 1700000000)");
    assert!(
        shown[1].contains("[redacted]") && shown[1].contains("1700000000"),
        "{}",
        shown[1]
    );
    assert_no_secret(&[&shown[0], &shown[1]], &[&auth, &access]);

    let source = StaticTokenSource::new(Secret::new(token.clone()));
    assert_eq!(format!("{source:?}"), "StaticTokenSource([redacted])");
    assert_eq!(source.describe(), "a fixed token");

    let guest = cloudsmith_access_token::secret::Secret::new(token.clone());
    assert_eq!(format!("{guest}"), "[redacted]");
    assert_eq!(format!("{guest:?}"), "Secret([redacted])");

    // The request description carries the token in its body; Debug hides it.
    let spec = cloudsmith_access_token::spec::parse_manifest(&manifest("https://api.cloudsmith.io", "acme"))
        .expect("spec");
    let request = cloudsmith_access_token::exchange::build_request(&spec, &guest);
    assert!(
        String::from_utf8_lossy(&request.body).contains(&token),
        "the body does carry the token"
    );
    let shown = format!("{request:?}");
    assert!(shown.contains("[redacted, "), "{shown}");
    assert_no_secret(&[&shown], &[&token]);
}

/// One CLI run of the battery: its label, extra arguments, the manifest,
/// extra environment, and whether it must succeed.
struct CliCase {
    label: String,
    args: Vec<String>,
    manifest: String,
    env: Vec<(&'static str, String)>,
    succeeds: bool,
}

impl CliCase {
    fn new(label: impl Into<String>, manifest: String) -> CliCase {
        CliCase {
            label: label.into(),
            args: Vec::new(),
            manifest,
            env: Vec::new(),
            succeeds: false,
        }
    }

    fn args(mut self, args: &[&str]) -> CliCase {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_from_the_cli_on_any_failure() {
    let kube = Kube::new();
    let stand_in = kube.cloudsmith().await;
    // A TLS stand-in whose CA the CLI is not told about.
    let untrusted = StandIn::start(StandInConfig {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("TLS stand-in");
    let api = stand_in.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let oidc_token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
    std::fs::write(path("token"), &oidc_token).expect("token file");
    std::fs::write(path("empty-token"), "\n").expect("empty token file");
    std::fs::write(path("kubeconfig-wrong-bearer"), kube.wrong_bearer()).expect("kubeconfig");
    let hostile = hostile_wasm().display().to_string();
    let token_file = path("token");
    let kubeconfig = kube.kubeconfig.display().to_string();

    let mut cases = Vec::new();
    let ok = manifest(&api, "acme");
    let mut success = CliCase::new("success (verbose)", ok.clone());
    success.succeeds = true;
    cases.push(success);
    for scenario in Scenario::ALL {
        let mut case = CliCase::new(
            format!("stand-in: {}", scenario.org()),
            manifest(&api, scenario.org()),
        );
        case.succeeds = matches!(scenario, Scenario::Burst503 | Scenario::Burst429);
        cases.push(case);
    }
    for (label, m) in [
        ("spec: not JSON or YAML", "{not: [valid".to_string()),
        ("spec: path in slug", manifest(&api, "acme/../admin")),
        (
            "spec: off the allowlist",
            manifest("https://evil.example", "acme"),
        ),
        (
            "spec: userinfo in URL",
            manifest(&format!("http://u:p@{}", stand_in.authority()), "acme"),
        ),
    ] {
        cases.push(CliCase::new(label, m));
    }
    let mut bad_sources = vec![
        CliCase::new("token source: missing file", ok.clone()).args(&["--oidc-token-file", &path("nope")]),
        CliCase::new("token source: empty file", ok.clone())
            .args(&["--oidc-token-file", &path("empty-token")]),
        CliCase::new("token source: unset variable", ok.clone()).args(&["--oidc-token-env", "LEAKS_UNSET"]),
        CliCase::new("kubernetes: wrong bearer", kube_manifest(&api, "acme")).args(&[
            "--kubeconfig",
            &path("kubeconfig-wrong-bearer"),
            "--namespace",
            &kube.opted_in,
        ]),
        CliCase::new("kubernetes: forbidden namespace", kube_manifest(&api, "acme")).args(&[
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            &kube.not_opted_in,
        ]),
        CliCase::new(
            "kubernetes: token echoed by Cloudsmith",
            kube_manifest(&api, "echo-401"),
        )
        .args(&["--kubeconfig", &kubeconfig, "--namespace", &kube.opted_in]),
    ];
    let mut empty_env =
        CliCase::new("token source: empty variable", ok.clone()).args(&["--oidc-token-env", "LEAKS_EMPTY"]);
    empty_env.env.push(("LEAKS_EMPTY", String::new()));
    bad_sources.push(empty_env);
    let mut refused = CliCase::new("token source: token Cloudsmith refuses", ok.clone())
        .args(&["--oidc-token-env", "LEAKS_OTHER_AUDIENCE"]);
    refused.env.push((
        "LEAKS_OTHER_AUDIENCE",
        testkit::oidc::token(SUBJECT, &["https://other.example"]),
    ));
    bad_sources.push(refused);
    cases.extend(bad_sources);
    cases.push(
        CliCase::new(
            "network: TLS with an unknown CA",
            manifest(&untrusted.url(), "acme"),
        )
        .args(&["--allow-host", &untrusted.authority()]),
    );
    for mode in ["echo-token", "evil-host", "trap", "panic"] {
        let mut case = CliCase::new(
            format!("hostile: {mode}"),
            serde_json::json!({"hostile": mode, "serviceAccountRef": {"name": "default"}}).to_string(),
        )
        .args(&["--component", &hostile]);
        // The hostile report comes back as credentials.
        case.succeeds = mode == "evil-host";
        cases.push(case);
    }

    let run = |case: &CliCase| {
        let manifest_path = dir.path().join(format!(
            "manifest-{}.json",
            case.label.replace([' ', ':', '/'], "_")
        ));
        std::fs::write(&manifest_path, &case.manifest).expect("manifest");
        let mut command = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
        command
            .args([
                "-v",
                "generate",
                "--allow-host",
                &stand_in.authority(),
                "--allow-http",
            ])
            .args([
                "--timeout",
                "20",
                "--first-byte-timeout",
                "2",
                "--memory-limit",
                "32",
            ])
            .arg("--manifest")
            .arg(&manifest_path)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"));
        if !case
            .args
            .iter()
            .any(|a| a.starts_with("--oidc-token") || a == "--kubeconfig")
        {
            command.args(["--oidc-token-file", &token_file]);
        }
        if !case.args.iter().any(|a| a == "--namespace") {
            command.args(["--namespace", NAMESPACE]);
        }
        command.args(&case.args);
        command.env_remove("KUBECONFIG");
        for (name, value) in &case.env {
            command.env(name, value);
        }
        testkit::process::run(command, None, Duration::from_secs(120))
    };

    // The first run fills the compiled-component cache; the rest run at once.
    let first = run(&cases[0]).await.expect("cloudsmith-gen runs");
    assert!(first.success(), "the verbose success case: {}", first.stderr);
    let expected_auth = auth_for(&access_token_for(SUBJECT, "acme", SERVICE, EXP));
    assert_eq!(first.stdout_json()["auth"], expected_auth.as_str());
    let mut outputs = vec![(cases[0].label.clone(), true, first)];
    // The rest in batches of 8, to keep a shared machine responsive.
    let mut pending = cases[1..]
        .iter()
        .map(|case| async move { (case, run(case).await) });
    let mut results = Vec::new();
    loop {
        let batch: Vec<_> = pending.by_ref().take(8).collect();
        if batch.is_empty() {
            break;
        }
        for (case, out) in join_all(batch).await {
            results.push((
                case.label.clone(),
                case.succeeds,
                out.expect("cloudsmith-gen runs"),
            ));
        }
    }
    outputs.extend(results);

    let Secrets(secrets) = Secrets::of_battery(&oidc_token, &kube, &stand_in);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert!(outputs.len() >= 40, "the CLI battery ran {} cases", outputs.len());
    for (label, succeeds, out) in &outputs {
        assert_eq!(
            out.success(),
            *succeeds,
            "{label}: exit {:?}, stderr: {}",
            out.code,
            out.stderr
        );
        // The guest's own output (a hostile panic message) is quoted under
        // `cloudsmith-gen:   |` with -v; the host itself must never panic.
        let host_lines = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("cloudsmith-gen:   |"));
        assert!(
            host_lines.clone().all(|l| !l.contains("panicked")),
            "{label}: the host panicked: {}",
            out.stderr
        );
        // On success stdout legitimately holds the credentials; everything
        // else is scanned.
        let mut texts = vec![out.stderr.as_str()];
        if !succeeds {
            texts.push(out.stdout.as_str());
            let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
            assert_eq!(errors.len(), 1, "{label}: one error line: {}", out.stderr);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_no_secret(&texts, &secrets)
        }));
        if outcome.is_err() {
            panic!("CLI case {label:?} leaked a secret (see the message above)");
        }
        // What the user sees, for SECURITY.md's battery table (`--nocapture`).
        let shown = out
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or("(success)");
        println!("cli | {label} | exit {:?} | {shown}", out.code);
    }
}

/// Runs `futures` together and returns their outputs in order (this test
/// package has no `futures` crate).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
