//! The embedding API: output rendering, the artifact cache, and the generator against
//! the stand-in Cloudsmith (concurrency, policy, limits).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use host_example::cache::{ArtifactCache, CacheOutcome};
use host_example::sandbox::{self, EngineOptions};
use host_example::token_source::{StaticTokenSource, TokenRequest, TokenSource, TokenSourceError};
use host_example::{
    output, Credentials, Error, GenerateError, Generator, GeneratorOptions, HostError, Secret,
};
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
    let (_, outcome) = cache.load(&engine, EMPTY_COMPONENT).unwrap();
    assert!(matches!(outcome, CacheOutcome::NotStored(_)), "{outcome:?}");
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
        .get_or_init(|| async { host_example::cache::compile(engine, host_example::COMPONENT).unwrap() })
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
    let generator = generator_for(&stand_in, |o| o.policy = Default::default()).await;
    let err = generator
        .generate(&manifest(&stand_in.url(), "my-org"), "default")
        .await
        .unwrap_err();
    match &err {
        Error::Generate(GenerateError::PolicyDenied {
            host_reason: Some(reason),
            ..
        }) => {
            assert!(reason.contains("plain http"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
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
    let generator = generator_for(&stand_in, |o| o.limits.memory_bytes = 6 * 64 * 1024).await;
    for round in 0..3 {
        let credentials = generator
            .generate(&manifest(&stand_in.url(), "my-org"), "default")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(credentials.expiry(), "1700000000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_the_oidc_token() {
    let stand_in = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    let token = testkit::oidc::token("system:serviceaccount:default:builder", &[&stand_in.origin()]);
    let engine = engine();
    let mut options = GeneratorOptions::default();
    options.policy = options
        .policy
        .clone()
        .allow(stand_in.authority().parse().unwrap())
        .allow_http(true);
    let source = Arc::new(StaticTokenSource::new(Secret::new(token.clone())));
    let generator = Generator::new(&engine, &component(&engine).await, source, options).unwrap();
    let traced = generator
        .generate_traced(&manifest(&stand_in.url(), "echo-401"), "default")
        .await;
    let err = traced.result.unwrap_err();
    assert!(
        matches!(err, Error::Generate(GenerateError::Unauthorized(_))),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {:?}", traced.report);
    assert!(!shown.contains(&token), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_an_extra_ca_and_without() {
    let config = testkit::cloudsmith::StandInConfig {
        tls: true,
        ..Default::default()
    };
    let stand_in = testkit::cloudsmith::StandIn::start(config).await.unwrap();
    let pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pem.path(), stand_in.ca_pem().unwrap()).unwrap();
    let m = manifest(&stand_in.url(), "my-org");

    let trusting = generator_for(&stand_in, |o| {
        o.policy = o
            .policy
            .clone()
            .allow_http(false)
            .extra_ca_file(pem.path())
            .unwrap()
    })
    .await;
    let credentials = trusting.generate(&m, "default").await.unwrap();
    assert_eq!(credentials.expiry(), "1700000000");

    let public_roots_only = generator_for(&stand_in, |o| o.policy = o.policy.clone().allow_http(false)).await;
    let err = public_roots_only.generate(&m, "default").await.unwrap_err();
    match &err {
        Error::Generate(GenerateError::Upstream {
            host_note: Some(note),
            ..
        }) => {
            assert!(note.contains("TLS handshake with 127.0.0.1"), "{note}")
        }
        other => panic!("unexpected {other:?}"),
    }
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
    let component = host_example::cache::compile(&engine, host_example::COMPONENT).unwrap();
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
