//! The guest's deepest calls fit its stack.
//!
//! The component reserves a small stack in linear memory (the root `build.rs`
//! sets `-zstack-size`; Rust's default is 1 MiB, which every call would
//! otherwise map and reset). Its deepest recursion is serde_json's, bounded by
//! serde_json's nesting limit, through each of the guest's own types: the
//! manifest's struct (which nests into itself), lenient fields and skipped
//! values, in the manifest, in Cloudsmith's answer and in the JWT payload.
//!
//! Each case is built at the deepest nesting serde_json accepts, and one level
//! deeper. At the limit the guest must give its ordinary answer; one level
//! deeper, an ordinary error. A stack too small for either traps (the stack is
//! placed first in memory, so an overflow runs off address 0 instead of into
//! the guest's data), and a trap fails the test.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use host_example::sandbox::{self, EngineOptions};
use host_example::token_source::{TokenRequest, TokenSource, TokenSourceError};
use host_example::{Error, GenerateError, Generator, GeneratorOptions, Secret};
use testkit::cloudsmith::{StandIn, StandInConfig};
use tokio::sync::OnceCell;
use wasmtime::component::Component;
use wasmtime::Engine;

/// How deep the skipped-value cases nest.
const SKIPPED_DEPTH: usize = 10_000;

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
fn outcome(result: &Result<host_example::Credentials, Error>) -> String {
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

/// The embedded component, compiled once per test process.
async fn compiled() -> &'static (Engine, Component) {
    static COMPILED: OnceCell<(Engine, Component)> = OnceCell::const_new();
    COMPILED
        .get_or_init(|| async {
            let engine = sandbox::engine(&EngineOptions::default()).unwrap();
            let component = host_example::cache::compile(&engine, host_example::COMPONENT).unwrap();
            (engine, component)
        })
        .await
}

async fn run(place: &Place, depth: usize) -> String {
    let mut config = StandInConfig::default();
    match place {
        Place::Answer(build) => config.issued_body = Some(build(depth)),
        Place::Payload(build) => config.issued_token = Some(jwt(&build(depth))),
        Place::Manifest(_) => {}
    }
    let stand_in = StandIn::start(config).await.unwrap();
    // Flat, so that it adds no nesting where it is placed.
    let spec = format!(
        r#""apiUrl": "{}", "orgSlug": "my-org", "serviceSlug": "svc""#,
        stand_in.url()
    );
    let manifest = match place {
        Place::Manifest(build) => build(depth).replace("SPEC", &spec),
        _ => format!(r#"{{"spec": {{{spec}, "serviceAccountRef": {{"name": "builder"}}}}}}"#),
    };
    let (engine, component) = compiled().await;
    let mut options = GeneratorOptions::default();
    options.policy = options
        .policy
        .clone()
        .allow(stand_in.authority().parse().unwrap())
        .allow_http(true);
    let generator = Generator::new(engine, component, Arc::new(TestTokens), options).unwrap();
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
            Place::Manifest(Box::new(|d| {
                nested(
                    r#"{"spec": {SPEC, "serviceAccountRef": {"name": "builder"}, "future": {}}}"#,
                    2,
                    d,
                )
            })),
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
            Place::Manifest(Box::new(|d| {
                nested(
                    r#"{"spec": {SPEC, "serviceAccountRef": {"name": "builder", "audiences": {}}}}"#,
                    3,
                    d,
                )
            })),
            "invalid spec",
            "invalid spec",
        ),
        (
            "answer: detail beside the token (lenient field)",
            Place::Answer(Box::new({
                let valid_token = valid_token.clone();
                move |d| nested(&format!(r#"{{"token": "{valid_token}", "detail": {{}}}}"#), 1, d)
            })),
            "ok 1700000000",
            "invalid token",
        ),
        (
            "answer: an unknown field (skipped value)",
            Place::Answer(Box::new({
                let valid_token = valid_token.clone();
                move |d| nested(&format!(r#"{{"token": "{valid_token}", "x": {{}}}}"#), 1, d)
            })),
            "ok 1700000000",
            "ok 1700000000",
        ),
        (
            "answer: token (lenient field)",
            Place::Answer(Box::new(|d| nested(r#"{"token": {}}"#, 1, d))),
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
            SKIPPED_DEPTH
        } else {
            deepest(&|d| build(d).replace("SPEC", r#""a": 1"#))
        };
        for (depth, want) in [(depth, at_limit), (depth + 1, beyond)] {
            let got = run(place, depth).await;
            if got != *want {
                wrong.push(format!("{case}, nesting {depth}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
