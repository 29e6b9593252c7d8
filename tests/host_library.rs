//! Suite host_library: the core paths of `host_cli`, in-process through the
//! host-example library API, where results and errors are typed values.
//!
//! | test                                   | what it proves                                                         |
//! |----------------------------------------|------------------------------------------------------------------------|
//! | [`documented_manifest`]                | ESO's example manifest (as JSON) gives exact credentials over HTTP and HTTPS (extra CA) |
//! | [`failures_are_typed`]                 | each stand-in scenario and each local refusal maps to its `GenerateError` case, with status and Cloudsmith's detail |
//! | [`concurrent_generates_are_isolated`]  | 32 concurrent calls through one `Generator`, each with its own service account (tokens minted by a real API server, verified by Cloudsmith as a relying party), each get exactly their own token |

use std::path::Path;
use std::sync::{Arc, OnceLock};

use cloudsmith_gen::token_source::{FileTokenSource, KubernetesTokenSource};
use cloudsmith_gen::wasmtime::component::Component;
use cloudsmith_gen::wasmtime::Engine;
use cloudsmith_gen::{
    cache, sandbox, EngineOptions, Error, GenerateError, Generator, GeneratorOptions, PresentedToken,
    TimeoutCaps, TokenSource, UpstreamStatus, COMPONENT,
};
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, Scenario, StandIn, StandInConfig};
use testkit::process::assert_no_secret;

const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
const SUBJECT: &str = "system:serviceaccount:default:default";
const EXP: u64 = 1_700_000_000;

/// Which engine a generator is built on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EngineChoice {
    /// One engine and compiled component per test process: compiling is the
    /// slow part, and a generator is meant to be built once and reused.
    Shared,
    /// An engine of its own: its pooling allocator's slots are not shared
    /// with generators of concurrently running tests.
    Own,
}

/// A generator with `options` and `tokens` on the chosen engine (pooling, the
/// library's default). The component goes through the CLI suite's cache
/// directory, so whichever suite runs first compiles it.
fn generator_with(
    options: GeneratorOptions,
    tokens: Arc<dyn TokenSource>,
    choice: EngineChoice,
) -> Generator {
    let load = || {
        let engine = sandbox::engine(&EngineOptions::default()).expect("engine");
        let dir = testkit::workspace_root().join("target").join("e2e-cli-cache");
        let (component, _) = cache::ArtifactCache::new(dir)
            .load(&engine, COMPONENT)
            .or_else(|_| cache::compile(&engine, COMPONENT).map(|c| (c, cache::CacheOutcome::Disabled)))
            .expect("component compiles");
        (engine, component)
    };
    if choice == EngineChoice::Own {
        let (engine, component) = load();
        return Generator::new(&engine, &component, tokens, options).expect("generator links");
    }
    static SHARED: OnceLock<(Engine, Component)> = OnceLock::new();
    let (engine, component) = SHARED.get_or_init(load);
    Generator::new(engine, component, tokens, options).expect("generator links")
}

/// A generator allowing `stand_in` (and plain http), with `tokens`.
fn generator_for(stand_in: &StandIn, tokens: Arc<dyn TokenSource>, ca: Option<&Path>) -> Generator {
    generator_on(stand_in, tokens, ca, EngineChoice::Shared)
}

/// [`generator_for`] on a chosen engine.
fn generator_on(
    stand_in: &StandIn,
    tokens: Arc<dyn TokenSource>,
    ca: Option<&Path>,
    choice: EngineChoice,
) -> Generator {
    let mut policy = GeneratorOptions::default()
        .policy
        .allow(stand_in.authority().parse().expect("authority"))
        .allow_http(true)
        // `slow` must end in a first-byte timeout well before its 10 s.
        .timeouts(TimeoutCaps {
            first_byte: std::time::Duration::from_secs(1),
            ..TimeoutCaps::default()
        });
    if let Some(ca) = ca {
        policy = policy.extra_ca_file(ca).expect("CA file");
    }
    let options = GeneratorOptions {
        policy,
        ..GeneratorOptions::default()
    };
    generator_with(options, tokens, choice)
}

/// ESO's documented example manifest, as the JSON the library takes, with
/// `apiHost` at the stand-in.
fn documented(api_host: &str) -> Value {
    json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "CloudsmithAccessToken",
        "metadata": {"name": "my-cloudsmith-token", "namespace": "default"},
        "spec": {
            "apiHost": api_host,
            "orgSlug": ORG,
            "serviceSlug": SERVICE,
            "serviceAccountRef": {"name": "default", "namespace": "default", "audiences": ["https://api.cloudsmith.io"]},
        },
    })
}

/// A token file for `SUBJECT`, trusted by `stand_in`.
fn token_file(dir: &Path, stand_in: &StandIn) -> (String, Arc<dyn TokenSource>) {
    let token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
    let path = dir.join("token");
    std::fs::write(&path, &token).unwrap();
    (token, Arc::new(FileTokenSource::new(path)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let http = StandIn::start(StandInConfig::default()).await.unwrap();
    let https = StandIn::start(StandInConfig {
        tls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, https.ca_pem().unwrap()).unwrap();

    let expected_auth = auth_for(&access_token_for(SUBJECT, ORG, SERVICE, EXP));
    for (name, stand_in, api_host, ca) in [
        ("http", &http, http.url(), None),
        // A bare host, as the documentation writes it, means https.
        ("https", &https, https.authority(), Some(ca.as_path())),
    ] {
        let (_, tokens) = token_file(dir.path(), stand_in);
        let generator = generator_for(stand_in, tokens, ca);
        let credentials = generator
            .generate(&documented(&api_host).to_string(), "default")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(credentials.auth().expose(), expected_auth, "{name}");
        assert_eq!(credentials.expiry(), "1700000000", "{name}");
        assert_eq!(credentials.expiry_unix(), Some(EXP), "{name}");
        let keys: Vec<&str> = credentials.outputs().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["auth", "expiry"], "{name}");
        // Credentials never print their secret.
        assert_no_secret(
            &[&format!("{credentials}"), &format!("{credentials:?}")],
            &[&expected_auth],
        );
        assert_eq!(stand_in.requests_for(ORG).len(), 1, "{name}");
    }
}

/// The error a scenario must produce, or a predicate for the variable parts
/// (attempt counts, transport wording).
enum Want {
    Exactly(GenerateError),
    Matches(&'static str, fn(&GenerateError) -> bool),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = StandIn::start(StandInConfig::default()).await.unwrap();
    let (oidc_token, tokens) = token_file(dir.path(), &stand_in);
    let generator = generator_for(&stand_in, tokens, None);
    let status = |s: Scenario| UpstreamStatus {
        status: s.status().unwrap(),
        detail: s.detail().unwrap().to_string(),
        token: None,
    };
    // A refusal of the credentials names the claims of the token the host handed out.
    let presented = Some(PresentedToken::Claims {
        iss: Some(testkit::oidc::ISSUER.to_string()),
        sub: Some(SUBJECT.to_string()),
        aud: vec![stand_in.origin()],
    });
    let refused = |s: Scenario| UpstreamStatus {
        token: presented.clone(),
        ..status(s)
    };
    let manifest = |org: &str, api: &str| {
        json!({"spec": {"apiHost": api, "orgSlug": org, "serviceSlug": SERVICE,
                        "serviceAccountRef": {"name": "default"}}})
        .to_string()
    };

    let url = stand_in.url();
    let cases: Vec<(String, String, Want)> = vec![
        (
            "fail-401".into(),
            manifest("fail-401", &url),
            Want::Exactly(GenerateError::Unauthorized(refused(Scenario::Fail401))),
        ),
        (
            "fail-403".into(),
            manifest("fail-403", &url),
            Want::Exactly(GenerateError::Unauthorized(refused(Scenario::Fail403))),
        ),
        (
            "fail-404".into(),
            manifest("fail-404", &url),
            Want::Exactly(GenerateError::Rejected(status(Scenario::Fail404))),
        ),
        (
            "fail-422".into(),
            manifest("fail-422", &url),
            Want::Exactly(GenerateError::Rejected(status(Scenario::Fail422))),
        ),
        (
            "rate-limited-long".into(),
            manifest("rate-limited-long", &url),
            Want::Exactly(GenerateError::RateLimited {
                retry_after_seconds: Some(3600),
                detail: Scenario::RateLimitedLong.detail().unwrap().into(),
            }),
        ),
        (
            "echo-401".into(),
            manifest("echo-401", &url),
            Want::Exactly(GenerateError::Unauthorized(UpstreamStatus {
                status: 401,
                detail: format!(r#"{{"oidc_token":"[redacted]","service_slug":"{SERVICE}"}}"#),
                token: presented.clone(),
            })),
        ),
        (
            "fail-503".into(),
            manifest("fail-503", &url),
            Want::Matches("Upstream 503, retried", |e| {
                matches!(e, GenerateError::Upstream { status: Some(503), attempts, detail, .. }
                    if *attempts > 1 && detail == Scenario::Fail503.detail().unwrap())
            }),
        ),
        (
            "slow".into(),
            manifest("slow", &url),
            Want::Matches(
                "Upstream without status (timeout)",
                |e| matches!(e, GenerateError::Upstream { status: None, detail, .. } if detail.contains("timed out")),
            ),
        ),
        (
            "no-exp".into(),
            manifest("no-exp", &url),
            Want::Matches(
                "InvalidToken naming exp",
                |e| matches!(e, GenerateError::InvalidToken(m) if m.contains("exp")),
            ),
        ),
        (
            "oversized".into(),
            manifest("oversized", &url),
            Want::Matches("InvalidToken (too large)", |e| {
                matches!(e, GenerateError::InvalidToken(_))
            }),
        ),
        (
            "host off the allowlist".into(),
            manifest(ORG, "http://127.0.0.1:9"),
            Want::Matches(
                "PolicyDenied naming the host",
                |e| matches!(e, GenerateError::PolicyDenied { host_reason: Some(r), .. } if r.contains("127.0.0.1:9")),
            ),
        ),
        (
            "slug with /".into(),
            manifest("a/b", &url),
            Want::Matches(
                "InvalidSpec naming orgSlug",
                |e| matches!(e, GenerateError::InvalidSpec(m) if m.contains("orgSlug")),
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, manifest, want) in cases {
        let result = generator.generate(&manifest, "default").await;
        let error = match result {
            Err(Error::Generate(e)) => e,
            other => {
                wrong.push(format!("{name}: got {other:?}"));
                continue;
            }
        };
        let ok = match &want {
            Want::Exactly(expected) => *expected == error,
            Want::Matches(_, predicate) => predicate(&error),
        };
        if !ok {
            let wanted = match &want {
                Want::Exactly(e) => format!("{e:?}"),
                Want::Matches(what, _) => what.to_string(),
            };
            wrong.push(format!("{name}: got {error:?}, want {wanted}"));
        }
        // Neither the error nor its Debug form carries the token.
        assert_no_secret(&[&error.to_string(), &format!("{error:?}")], &[&oidc_token]);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A missing token file is the token source's failure, before any request.
    let before = stand_in.requests().len();
    let missing: Arc<dyn TokenSource> = Arc::new(FileTokenSource::new(dir.path().join("missing")));
    let result = generator_for(&stand_in, missing, None)
        .generate(&manifest(ORG, &url), "default")
        .await;
    assert!(
        matches!(&result, Err(Error::Generate(GenerateError::TokenSource(m))) if m.contains("missing")),
        "{result:?}"
    );
    assert_eq!(stand_in.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generates_are_isolated() {
    const CALLS: usize = 32;
    // A real API server, with `serve`'s service account under deploy/'s RBAC, which
    // mints for one account (cloudsmith-oidc) per namespace that opted in: one namespace
    // per call, set up in one apply.
    let cluster = testkit::cluster::Cluster::shared();
    let kubeconfig = cluster.deployed_service().to_path_buf();
    let namespaces: Vec<String> = (0..CALLS).map(|_| cluster.fresh_name("concurrent")).collect();
    let objects: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            [
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string(),
                cluster.opt_in_yaml(ns, true),
            ]
        })
        .collect();
    cluster.apply(&objects.join("\n---\n"));
    let stand_in = StandIn::start(StandInConfig::trusting(cluster, "system:serviceaccount:*"))
        .await
        .unwrap();
    let tokens: Arc<dyn TokenSource> = Arc::new(KubernetesTokenSource::new(Some(kubeconfig)));
    // Its own engine: the pool's instance slots are engine-wide, and the
    // other tests' generators on the shared engine would take some of them.
    let generator = generator_on(&stand_in, tokens, None, EngineChoice::Own);

    let mut tasks = tokio::task::JoinSet::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let generator = generator.clone();
        let manifest = json!({"spec": {"apiHost": stand_in.url(), "orgSlug": ORG, "serviceSlug": SERVICE,
                                       "serviceAccountRef": {"name": "cloudsmith-oidc"}}})
        .to_string();
        let ns = ns.clone();
        tasks.spawn(async move { (i, generator.generate(&manifest, &ns).await) });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.expect("task");
        let credentials = result.unwrap_or_else(|e| panic!("call {i}: {e}"));
        let subject = format!("system:serviceaccount:{}:cloudsmith-oidc", namespaces[i]);
        assert_eq!(
            credentials.auth().expose(),
            auth_for(&access_token_for(&subject, ORG, SERVICE, EXP)),
            "call {i} got another call's token"
        );
        done += 1;
    }
    assert_eq!(done, CALLS);
    // One token and one exchange per call, each for its own account: the subjects of
    // the tokens Cloudsmith verified.
    let mut subjects: Vec<String> = stand_in
        .requests_for(ORG)
        .iter()
        .map(|r| {
            let token = r.json().unwrap()["oidc_token"].as_str().unwrap().to_string();
            testkit::cloudsmith::jwt_payload(&token).unwrap()["sub"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("system:serviceaccount:{ns}:cloudsmith-oidc"))
        .collect();
    expected.sort();
    assert_eq!(subjects, expected);
}
