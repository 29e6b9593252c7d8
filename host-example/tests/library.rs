//! Suite library: the embedding API (`cloudsmith_gen`) in-process, where results and
//! errors are typed values: output rendering, the artifact cache, and the generator
//! against the stand-in Cloudsmith and a real Kubernetes API server (`testkit::cluster`).
//!
//! | test                                   | what it proves                                                         |
//! |----------------------------------------|------------------------------------------------------------------------|
//! | [`documented_manifest`]                | ESO's example manifest (as JSON) gives exact credentials over HTTP and HTTPS (extra CA) |
//! | [`failures_are_typed`]                 | each stand-in scenario and each local refusal maps to its `GenerateError` case, with status and Cloudsmith's detail; no error, `Debug` form or call report holds the token |
//! | [`concurrent_generates_are_isolated`]  | 32 concurrent calls through one `Generator`, each with its own service account (tokens minted by a real API server, verified by Cloudsmith as a relying party), each get exactly their own token |
//! | the rest                               | outputs, the compile cache, policy, limits, pooled engines, the guest's memory and stack |

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cloudsmith_gen::cache::{ArtifactCache, CacheOutcome};
use cloudsmith_gen::sandbox::{self, EngineOptions};
use cloudsmith_gen::token_source::{
    FileTokenSource, KubernetesTokenSource, TokenRequest, TokenSource, TokenSourceError,
};
use cloudsmith_gen::{
    cache, output, Credentials, Error, GenerateError, Generator, GeneratorOptions, HostError, PresentedToken,
    Secret, TimeoutCaps, UpstreamStatus, COMPONENT,
};
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, Scenario, StandIn, StandInConfig};
use testkit::process::assert_no_secret;
use tokio::sync::OnceCell;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The smallest valid component: just the preamble. Compiles in microseconds.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

fn credentials() -> Credentials {
    Credentials::from_outputs(vec![
        ("auth".into(), b"dG9rZW46YWJj".to_vec()),
        ("expiry".into(), b"1700000000".to_vec()),
    ])
    .unwrap()
}

#[test]
fn eso_json_has_exactly_esos_keys() {
    let json: serde_json::Value = serde_json::from_str(&output::eso_json(&credentials())).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"auth": "dG9rZW46YWJj", "expiry": "1700000000"})
    );
}

#[test]
fn docker_config_json_shape() {
    let json: serde_json::Value = serde_json::from_str(&output::docker_config_json(
        &credentials(),
        "docker.cloudsmith.io",
    ))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"auths": {"docker.cloudsmith.io": {"auth": "dG9rZW46YWJj"}}})
    );
}

#[test]
fn secret_manifest_shape() {
    let text = output::secret_manifest(
        &credentials(),
        "cloudsmith-credentials",
        "team-a",
        "registry.example",
    );
    let secret: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(secret["metadata"]["name"], "cloudsmith-credentials");
    assert_eq!(secret["metadata"]["namespace"], "team-a");
    let data = secret["data"].as_object().unwrap();
    assert_eq!(data.len(), 1);
    let config = base64::engine::general_purpose::STANDARD
        .decode(data[".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"auths": {"registry.example": {"auth": "dG9rZW46YWJj"}}})
    );
}

#[test]
fn cache_keys_follow_bytes_and_engine() {
    let engine = sandbox::engine(&EngineOptions {
        pooling: false,
        ..Default::default()
    })
    .unwrap();
    let key = ArtifactCache::key(&engine, EMPTY_COMPONENT);
    assert_eq!(key, ArtifactCache::key(&engine, EMPTY_COMPONENT), "stable");
    assert_eq!(key.len(), 64);
    assert_ne!(key, ArtifactCache::key(&engine, b"\0asm\x0d\x00\x01\x00\x00"));
    // Different tunables (no epoch interruption) make code that is not interchangeable.
    assert_ne!(key, ArtifactCache::key(&Engine::default(), EMPTY_COMPONENT));
}

#[test]
fn cache_stores_hits_and_recovers_from_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(dir.path().join("nested"));
    let engine = sandbox::engine(&EngineOptions {
        pooling: false,
        ..Default::default()
    })
    .unwrap();
    let path = cache.entry_path(&engine, EMPTY_COMPONENT);

    let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
    assert_eq!(outcome, CacheOutcome::Stored(path.clone()));
    let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit(path.clone()));

    // A flipped byte in the payload, a truncated file, garbage: recompiled, then a hit.
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    for broken in [flipped, good[..20].to_vec(), b"garbage".to_vec(), Vec::new()] {
        std::fs::write(&path, broken).unwrap();
        let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
        assert!(matches!(outcome, CacheOutcome::Recovered(_)), "{outcome:?}");
        let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit(path.clone()));
    }
}

#[test]
fn cache_that_cannot_be_written_still_compiles() {
    let file = tempfile::NamedTempFile::new().unwrap();
    // A cache "directory" that is a file.
    let cache = ArtifactCache::new(file.path());
    let engine = sandbox::engine(&EngineOptions {
        pooling: false,
        ..Default::default()
    })
    .unwrap();
    // Compiled all the same; the cache is not used, and the outcome says why.
    let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
    assert!(
        matches!(&outcome, CacheOutcome::Untrusted(why) if why.contains("Not a directory")),
        "{outcome:?}"
    );
}

#[test]
fn generator_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Generator>();
}

/// The embedded component, compiled once per test process.
async fn component(engine: &Engine) -> Component {
    static COMPILED: OnceCell<Component> = OnceCell::const_new();
    COMPILED
        .get_or_init(|| async { cloudsmith_gen::cache::compile(engine, cloudsmith_gen::COMPONENT).unwrap() })
        .await
        .clone()
}

fn engine() -> Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| sandbox::engine(&EngineOptions::default()).unwrap())
        .clone()
}

/// Mints testkit tokens for the requested subject and audiences.
struct TestTokens;

#[async_trait::async_trait]
impl TokenSource for TestTokens {
    async fn token(&self, r: &TokenRequest) -> Result<Secret, TokenSourceError> {
        let subject = format!("system:serviceaccount:{}:{}", r.namespace, r.service_account);
        let audiences: Vec<&str> = r.audiences.iter().map(String::as_str).collect();
        Ok(Secret::new(testkit::oidc::token(&subject, &audiences)))
    }

    fn describe(&self) -> String {
        "test tokens".into()
    }
}

async fn generator_for(
    stand_in: &testkit::cloudsmith::StandIn,
    tweak: impl FnOnce(&mut GeneratorOptions),
) -> Generator {
    let engine = engine();
    let mut options = GeneratorOptions::default();
    options.policy = options
        .policy
        .clone()
        .allow(stand_in.authority().parse().unwrap())
        .allow_http(true);
    tweak(&mut options);
    Generator::new(&engine, &component(&engine).await, Arc::new(TestTokens), options).unwrap()
}

fn manifest(url: &str, org: &str) -> String {
    serde_json::json!({"spec": {"apiHost": url, "orgSlug": org, "serviceSlug": "svc",
        "serviceAccountRef": {"name": "builder"}}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_token() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    let generator = generator_for(&stand_in, |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let generator = generator.clone();
        let m = manifest(&stand_in.url(), "my-org");
        tasks.push(tokio::spawn(async move {
            let ns = format!("team-{i}");
            (ns.clone(), generator.generate(&m, &ns).await)
        }));
    }
    for task in tasks {
        let (ns, result) = task.await.unwrap();
        let credentials = result.unwrap();
        let expected = testkit::cloudsmith::auth_for(&testkit::cloudsmith::access_token_for(
            &format!("system:serviceaccount:{ns}:builder"),
            "my-org",
            "svc",
            1_700_000_000,
        ));
        assert_eq!(credentials.auth().expose(), expected);
        assert_eq!(credentials.expiry(), "1700000000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denial_carries_the_hosts_reason() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    // The stand-in's host allowed, but not plain http to it.
    let generator = generator_for(&stand_in, |o| {
        o.policy = Default::default();
        o.policy = o.policy.clone().allow(stand_in.authority().parse().unwrap());
    })
    .await;
    let err = generator
        .generate(&manifest(&stand_in.url(), "my-org"), "default")
        .await
        .unwrap_err();
    let reason = match &err {
        Error::Generate(GenerateError::PolicyDenied { host_reason, .. }) => host_reason.as_deref(),
        _ => None,
    };
    assert!(reason.is_some_and(|r| r.contains("plain http")), "{err:?}");
    assert!(stand_in.requests().is_empty(), "nothing reached the stand-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_stops_a_slow_exchange() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    let generator = generator_for(&stand_in, |o| o.limits.deadline = Duration::from_millis(800)).await;
    let started = std::time::Instant::now();
    let err = generator
        .generate(&manifest(&stand_in.url(), "slow"), "default")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Host(HostError::DeadlineExceeded { .. })),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("deadline"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_named() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    let generator = generator_for(&stand_in, |o| o.limits.memory_bytes = 64 * 1024).await;
    let err = generator
        .generate(&manifest(&stand_in.url(), "my-org"), "default")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Host(HostError::MemoryLimitExceeded { .. })),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_call_never_grows_the_guests_memory() {
    // The component starts with 6 pages (stack, data, heap: the root build.rs)
    // and its allocator uses them first; a call that grew memory would pay an
    // mprotect, and one more when the pool shrinks the slot back. With the limit
    // at exactly the initial size, any growth fails the call.
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    // The budget covers the host resources reserved up front too; what is left for
    // memories and tables is the 6 pages and 32 KiB for the component's tables, less
    // than the one page a growth would take.
    let reserved = cloudsmith_gen::sandbox::Budget::new(8 << 20).reserved();
    assert_eq!(
        reserved,
        cloudsmith_gen::sandbox::Budget::new(reserved + (6 << 16)).reserved()
    );
    let generator = generator_for(&stand_in, |o| {
        o.limits.memory_bytes = reserved + 6 * 64 * 1024 + 32 * 1024
    })
    .await;
    for round in 0..3 {
        let credentials = generator
            .generate(&manifest(&stand_in.url(), "my-org"), "default")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(credentials.expiry(), "1700000000");
    }
}

/// Without the extra CA the stand-in's certificate is refused, and the error says so (the
/// success with it: [`documented_manifest`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_extra_ca_is_a_tls_error() {
    let config = testkit::cloudsmith::StandInConfig {
        tls: true,
        ..Default::default()
    };
    let stand_in = testkit::cloudsmith::StandIn::start(config).await.unwrap();
    let m = manifest(&stand_in.url(), "my-org");
    let public_roots_only = generator_for(&stand_in, |o| o.policy = o.policy.clone().allow_http(false)).await;
    let err = public_roots_only.generate(&m, "default").await.unwrap_err();
    let note = match &err {
        Error::Generate(GenerateError::Upstream { host_note, .. }) => host_note.as_deref(),
        _ => None,
    };
    assert!(
        note.is_some_and(|n| n.contains("TLS handshake with 127.0.0.1")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generators_sharing_a_pooled_engine_wait_for_its_slots() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    // Two pool slots, two generators that each think they may run 16 calls:
    // without engine-wide slots, the third concurrent call finds the pool full.
    let engine = sandbox::engine(&EngineOptions {
        pooling: true,
        max_concurrent_calls: 2,
        ..Default::default()
    })
    .unwrap();
    let component = cloudsmith_gen::cache::compile(&engine, cloudsmith_gen::COMPONENT).unwrap();
    let make = || {
        let mut options = GeneratorOptions::default();
        options.policy = options
            .policy
            .clone()
            .allow(stand_in.authority().parse().unwrap())
            .allow_http(true);
        options.max_concurrent_calls = 16;
        Generator::new(&engine, &component, Arc::new(TestTokens), options).unwrap()
    };
    let generators = [make(), make()];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let generator = generators[i % 2].clone();
        let m = manifest(&stand_in.url(), "my-org");
        tasks.push(tokio::spawn(async move {
            generator.generate(&m, &format!("pool-{i}")).await
        }));
    }
    for task in tasks {
        let credentials = task
            .await
            .unwrap()
            .expect("every call waits for a slot, none fails");
        assert_eq!(credentials.expiry(), "1700000000");
    }
}

// The guest's deepest calls fit its stack.
//
// The component reserves a small stack in linear memory (the root `build.rs`
// sets `-zstack-size`; Rust's default is 1 MiB, which every call would
// otherwise map and reset). Its deepest recursion is serde_json's, bounded by
// serde_json's nesting limit, through each of the guest's own types: the
// manifest's struct (which nests into itself), lenient fields and skipped
// values, in the manifest, in Cloudsmith's answer and in the JWT payload.
//
// Each case is built at the deepest nesting serde_json accepts, and one level
// deeper. At the limit the guest must give its ordinary answer; one level
// deeper, an ordinary error. A stack too small for either traps (the stack is
// placed first in memory, so an overflow runs off address 0 instead of into
// the guest's data), and a trap fails the test.

/// How deep the skipped-value cases nest.
const SKIPPED_DEPTH: usize = 10_000;

/// How deep the skipped value in the access token's payload nests: the token comes back
/// in `auth`, and a call may pass at most `sandbox::HOST_CALL_BYTES` (16 KiB) to the host
/// at once; 4,000 levels make an `auth` of about 14 KiB.
const PAYLOAD_SKIPPED_DEPTH: usize = 4_000;

/// `depth` levels of JSON nesting in all: `outer` levels are already open
/// around the hole (`{}`), the rest are arrays.
fn nested(template: &str, outer: usize, depth: usize) -> String {
    let arrays = depth - outer;
    template.replace("{}", &format!("{}{}", "[".repeat(arrays), "]".repeat(arrays)))
}

/// The deepest `depth` for which `build(depth)` still parses into a recursive
/// type; the generator parses with the same serde_json and the same limit.
/// (Skipped values are not recursive: serde_json skips them in a loop, at any
/// depth, which the table checks too.)
fn deepest(build: &dyn Fn(usize) -> String) -> usize {
    let parses = |d: usize| serde_json::from_str::<serde_json::Value>(&build(d)).is_ok();
    let mut depth = 10;
    while parses(depth + 1) {
        depth += 1;
    }
    assert!(
        depth > 100,
        "serde_json's nesting limit should be 128, found {depth}"
    );
    depth
}

/// The outcome of a call, as a short name for the table.
fn outcome(result: &Result<Credentials, Error>) -> String {
    match result {
        Ok(c) => format!("ok {}", c.expiry()),
        Err(Error::Generate(GenerateError::InvalidSpec(_))) => "invalid spec".into(),
        Err(Error::Generate(GenerateError::InvalidToken(_))) => "invalid token".into(),
        Err(Error::Generate(GenerateError::Upstream { .. })) => "upstream".into(),
        Err(Error::Generate(GenerateError::TokenSource(_))) => "token refused".into(),
        Err(e) => format!("other: {e}"),
    }
}

/// A JWT whose payload is `payload` verbatim (the guest reads, never verifies).
fn jwt(payload: &str) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// Where the deep value goes.
enum Place {
    Manifest(Box<dyn Fn(usize) -> String>),
    Answer(Box<dyn Fn(usize) -> String>),
    Payload(Box<dyn Fn(usize) -> String>),
}

/// The manifest: `template` (`SPEC` for the flat spec) with `outer` levels open around
/// its hole.
fn in_manifest(template: &'static str, outer: usize) -> Place {
    Place::Manifest(Box::new(move |d| nested(template, outer, d)))
}

/// Cloudsmith's answer: `template` with its hole nested `depth` levels in all.
fn answer(template: String) -> Place {
    Place::Answer(Box::new(move |d| nested(&template, 1, d)))
}

/// One call with the deep value in `place`, nested `depth` levels in all.
async fn deep_call(place: &Place, depth: usize) -> String {
    let mut config = testkit::cloudsmith::StandInConfig::default();
    match place {
        Place::Answer(build) => config.issued_body = Some(build(depth)),
        Place::Payload(build) => config.issued_token = Some(jwt(&build(depth))),
        Place::Manifest(_) => {}
    }
    let stand_in = testkit::cloudsmith::StandIn::start(config).await.unwrap();
    // Flat, so that it adds no nesting where it is placed.
    let spec = format!(
        r#""apiUrl": "{}", "orgSlug": "my-org", "serviceSlug": "svc""#,
        stand_in.url()
    );
    let manifest = match place {
        Place::Manifest(build) => build(depth).replace("SPEC", &spec),
        _ => format!(r#"{{"spec": {{{spec}, "serviceAccountRef": {{"name": "builder"}}}}}}"#),
    };
    let generator = generator_for(&stand_in, |_| {}).await;
    outcome(&generator.generate(&manifest, "default").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_inputs_fit_the_guest_stack() {
    let valid_token = testkit::cloudsmith::access_token_for(
        "system:serviceaccount:default:builder",
        "my-org",
        "svc",
        1_700_000_000,
    );
    // (case, where, outcome at the deepest accepted nesting (or at SKIPPED_DEPTH
    // for skipped values), one level deeper)
    let table: Vec<(&str, Place, &str, &str)> = vec![
        (
            // The guest skips it at any depth, but the host reads the manifest
            // too (for the service account it may hand a token for), within
            // serde_json's limit, and refuses what it cannot read.
            "manifest: an unknown field",
            in_manifest(
                r#"{"spec": {SPEC, "serviceAccountRef": {"name": "builder"}, "future": {}}}"#,
                2,
            ),
            "ok 1700000000",
            "token refused",
        ),
        (
            "manifest: spec inside spec (the manifest struct)",
            Place::Manifest(Box::new(|d| {
                format!("{}{{SPEC}}{}", r#"{"spec": "#.repeat(d - 1), "}".repeat(d - 1))
            })),
            "invalid spec",
            "invalid spec",
        ),
        (
            "manifest: audiences (lenient field)",
            in_manifest(
                r#"{"spec": {SPEC, "serviceAccountRef": {"name": "builder", "audiences": {}}}}"#,
                3,
            ),
            "invalid spec",
            "invalid spec",
        ),
        (
            "answer: detail beside the token (lenient field)",
            answer(format!(r#"{{"token": "{valid_token}", "detail": {{}}}}"#)),
            "ok 1700000000",
            "invalid token",
        ),
        (
            "answer: an unknown field (skipped value)",
            answer(format!(r#"{{"token": "{valid_token}", "x": {{}}}}"#)),
            "ok 1700000000",
            "ok 1700000000",
        ),
        (
            "answer: token (lenient field)",
            answer(r#"{"token": {}}"#.into()),
            "invalid token",
            "invalid token",
        ),
        (
            "JWT payload: an unknown claim (skipped value)",
            Place::Payload(Box::new(|d| nested(r#"{"exp": 1700000000, "x": {}}"#, 1, d))),
            "ok 1700000000",
            "ok 1700000000",
        ),
        (
            "JWT payload: exp (lenient field)",
            Place::Payload(Box::new(|d| nested(r#"{"exp": {}}"#, 1, d))),
            "invalid token",
            "invalid token",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, place, at_limit, beyond) in &table {
        let build: &dyn Fn(usize) -> String = match place {
            Place::Manifest(b) | Place::Answer(b) | Place::Payload(b) => b.as_ref(),
        };
        // A manifest's hole is filled after the depth is found; `SPEC` is flat.
        let depth = if case.contains("skipped") {
            if matches!(place, Place::Payload(_)) {
                PAYLOAD_SKIPPED_DEPTH
            } else {
                SKIPPED_DEPTH
            }
        } else {
            deepest(&|d| build(d).replace("SPEC", r#""a": 1"#))
        };
        for (depth, want) in [(depth, at_limit), (depth + 1, beyond)] {
            let got = deep_call(place, depth).await;
            if got != *want {
                wrong.push(format!("{case}, nesting {depth}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

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
fn generator_with_tokens(stand_in: &StandIn, tokens: Arc<dyn TokenSource>, ca: Option<&Path>) -> Generator {
    generator_on(stand_in, tokens, ca, EngineChoice::Shared)
}

/// [`generator_with_tokens`] on a chosen engine.
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
        let generator = generator_with_tokens(stand_in, tokens, ca);
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
    let generator = generator_with_tokens(&stand_in, tokens, None);
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
    // A scenario of the stand-in: its org slug names the row.
    let scenario = |s: Scenario, want: Want| (s.org().to_string(), manifest(s.org(), &url), want);
    let refusal = |s: Scenario| scenario(s, Want::Exactly(GenerateError::Unauthorized(refused(s))));
    let rejection = |s: Scenario| scenario(s, Want::Exactly(GenerateError::Rejected(status(s))));
    let cases: Vec<(String, String, Want)> = vec![
        refusal(Scenario::Fail401),
        refusal(Scenario::Fail403),
        rejection(Scenario::Fail404),
        rejection(Scenario::Fail422),
        scenario(
            Scenario::RateLimitedLong,
            Want::Exactly(GenerateError::RateLimited {
                retry_after_seconds: Some(3600),
                detail: Scenario::RateLimitedLong.detail().unwrap().into(),
            }),
        ),
        scenario(
            Scenario::Echo401,
            Want::Exactly(GenerateError::Unauthorized(UpstreamStatus {
                status: 401,
                detail: format!(r#"{{"oidc_token":"[redacted]","service_slug":"{SERVICE}"}}"#),
                token: presented.clone(),
            })),
        ),
        scenario(
            Scenario::Fail503,
            Want::Matches("Upstream 503, retried", |e| {
                matches!(e, GenerateError::Upstream { status: Some(503), attempts, detail, .. }
                    if *attempts > 1 && detail == Scenario::Fail503.detail().unwrap())
            }),
        ),
        scenario(
            Scenario::Slow,
            Want::Matches(
                "Upstream without status (timeout)",
                |e| matches!(e, GenerateError::Upstream { status: None, detail, .. } if detail.contains("timed out")),
            ),
        ),
        scenario(
            Scenario::NoExp,
            Want::Matches(
                "InvalidToken naming exp",
                |e| matches!(e, GenerateError::InvalidToken(m) if m.contains("exp")),
            ),
        ),
        scenario(
            Scenario::Oversized,
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
        let traced = generator.generate_traced(&manifest, "default").await;
        // Nor does the call's report.
        assert_no_secret(&[&format!("{:?}", traced.report)], &[&oidc_token]);
        let error = match traced.result {
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
    let result = generator_with_tokens(&stand_in, missing, None)
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
