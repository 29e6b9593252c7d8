//! The pipeline in process, over a fake mint and a fake reviewer: every route, every
//! refusal in its order (a request that breaks several rules gets the first one's
//! answer), and every failure's status, case and Retry-After.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::StreamBody;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};

use cloudsmith_gen::token_source::StaticTokenSource;
use cloudsmith_gen::{GenerateError, Secret, UpstreamStatus};

use super::*;
use crate::mint::fake::FakeMint;
use crate::setup::RuntimeConfig;

/// The audience this server's callers' tokens must carry.
const AUDIENCE: &str = "cloudsmith-gen";

/// Answers reviews by token, as an API server with these accounts would.
struct FakeReviewer;

fn authenticated(username: &str, audiences: Vec<String>) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(audiences),
        user: Some(UserInfo {
            username: Some(username.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Reviewer for FakeReviewer {
    async fn token_review(&self, review: &TokenReview) -> Result<TokenReview, kube::Error> {
        let asked = review.spec.audiences.clone().unwrap_or_default();
        let status = match review.spec.token.as_deref().unwrap_or("") {
            "apps-eso" => authenticated("system:serviceaccount:apps:eso", asked),
            "other-eso" => authenticated("system:serviceaccount:other:eso", asked),
            // Not service accounts: only a SubjectAccessReview lets them in.
            "platform" => authenticated("platform-admin", asked),
            "person" => authenticated("jane", asked),
            // An authenticator that ignored the audiences asked for.
            "elsewhere" => authenticated(
                "system:serviceaccount:apps:eso",
                vec!["https://elsewhere.example".into()],
            ),
            "down" => {
                return Err(kube::Error::Api(
                    kube::core::Status {
                        code: 500,
                        reason: "InternalError".into(),
                        message: "etcd is down".into(),
                        ..Default::default()
                    }
                    .boxed(),
                ))
            }
            "hung" => std::future::pending().await,
            _ => TokenReviewStatus {
                authenticated: Some(false),
                ..Default::default()
            },
        };
        Ok(TokenReview {
            status: Some(status),
            ..review.clone()
        })
    }

    async fn access_review(&self, review: &SubjectAccessReview) -> Result<SubjectAccessReview, kube::Error> {
        let allowed = review.spec.user.as_deref() == Some("platform-admin");
        Ok(SubjectAccessReview {
            status: Some(SubjectAccessReviewStatus {
                allowed,
                ..Default::default()
            }),
            ..review.clone()
        })
    }
}

const MANIFEST: &str = r#"{"kind": "CloudsmithAccessToken", "metadata": {"name": "gen"},
    "spec": {"orgSlug": "org", "serviceSlug": "svc", "serviceAccountRef": {"name": "oidc"}}}"#;

fn config(manifest: std::path::PathBuf) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        manifests: vec![manifest],
        reload_interval: Duration::from_secs(10),
        kubeconfig: None,
        audiences: vec![AUDIENCE.into()],
        max_concurrent_calls: 2,
        max_queued_calls: 2,
        max_body_bytes: 1024,
        read_timeout: Duration::from_secs(5),
        max_connections: 8,
        review_cache_ttl: Duration::from_secs(60),
        kube_timeout: Duration::from_secs(2),
        max_pending_reviews: 8,
        // One request per caller, then a wait of 1000 s.
        rate_limit: 0.001,
        rate_burst: 1,
        shutdown_timeout: Duration::from_secs(1),
        // Its deadline bounds a call, the wait for a sandbox slot included.
        runtime: RuntimeConfig {
            limits: cloudsmith_gen::Limits {
                deadline: Duration::from_secs(30),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// A request body.
#[derive(Clone, Copy)]
enum Sent {
    /// This many bytes.
    Bytes(usize),
    /// Headers, then a body that never arrives.
    Stalled,
}

const BIG: Sent = Sent::Bytes(2048);
const NONE: Sent = Sent::Bytes(0);

/// What the mint port does with a call that gets that far.
#[derive(Clone, Copy)]
enum Minting {
    Answers,
    Fails(fn() -> Failure),
    Stalls,
}

struct Row {
    name: &'static str,
    method: Method,
    path: &'static str,
    token: Option<&'static str>,
    body: Sent,
    /// The server's configuration, changed.
    tweak: fn(&mut ServeConfig),
    /// Requests that pass, sent first by the same caller.
    earlier: usize,
    stopping: bool,
    minting: Minting,
    status: u16,
    /// `error.case` of the answer (empty for a success).
    case: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Calls that reached the mint port, `earlier` ones included.
    mints: usize,
}

const GEN: &str = "/v1/namespaces/apps/generators/gen";
const UNKNOWN: &str = "/v1/namespaces/apps/generators/nope";

fn same(_: &mut ServeConfig) {}

fn no_places(config: &mut ServeConfig) {
    config.max_concurrent_calls = 0;
    config.max_queued_calls = 0;
}

fn generate_error(e: GenerateError) -> Failure {
    Failure::Call(Error::Generate(e))
}

fn host_error(e: HostError) -> Failure {
    Failure::Call(Error::Host(e))
}

fn upstream(status: u16) -> UpstreamStatus {
    UpstreamStatus {
        status,
        detail: "no".into(),
        token: None,
    }
}

fn rows() -> Vec<Row> {
    let post = |name, path, token, body, status, case, mints| Row {
        name,
        method: Method::POST,
        path,
        token,
        body,
        tweak: same,
        earlier: 0,
        stopping: false,
        minting: Minting::Answers,
        status,
        case,
        headers: &[],
        mints,
    };
    let get = |name, path, status, case| Row {
        method: Method::GET,
        ..post(name, path, None, NONE, status, case, 0)
    };
    let fails = |name, failure: fn() -> Failure, status, case, headers| Row {
        minting: Minting::Fails(failure),
        headers,
        ..post(name, GEN, Some("apps-eso"), NONE, status, case, 1)
    };
    vec![
        // Routes that need no token.
        get("health", "/healthz", 200, ""),
        get("liveness", "/livez", 200, ""),
        get("readiness", "/readyz", 200, ""),
        Row {
            stopping: true,
            ..get("readiness while stopping", "/readyz", 503, "")
        },
        get("metrics", "/metrics", 200, ""),
        Row {
            headers: &[("allow", "GET, HEAD")],
            ..post(
                "health by POST",
                "/healthz",
                None,
                NONE,
                405,
                "method-not-allowed",
                0,
            )
        },
        Row {
            headers: &[("allow", "POST")],
            ..get("generate by GET", GEN, 405, "method-not-allowed")
        },
        // Never 404: ESO reads 404 as "no secret".
        post(
            "another path",
            "/v2/anything",
            Some("apps-eso"),
            NONE,
            400,
            "unknown-path",
            0,
        ),
        post(
            "a namespace that is no namespace name",
            "/v1/namespaces/Apps/generators/gen",
            Some("apps-eso"),
            NONE,
            400,
            "bad-request",
            0,
        ),
        // The refusals, each on a request that also breaks every later rule.
        Row {
            headers: &[("www-authenticate", "Bearer")],
            ..post("no bearer token", UNKNOWN, None, BIG, 401, "unauthenticated", 0)
        },
        Row {
            headers: &[("www-authenticate", "Bearer")],
            ..post(
                "a token TokenReview refuses",
                UNKNOWN,
                Some("forged"),
                BIG,
                401,
                "unauthenticated",
                0,
            )
        },
        Row {
            headers: &[("www-authenticate", "Bearer")],
            ..post(
                "a token for another audience",
                UNKNOWN,
                Some("elsewhere"),
                BIG,
                401,
                "unauthenticated",
                0,
            )
        },
        Row {
            headers: &[("retry-after", "10")],
            ..post(
                "TokenReview fails",
                UNKNOWN,
                Some("down"),
                BIG,
                503,
                "unavailable",
                0,
            )
        },
        Row {
            headers: &[("retry-after", "10")],
            ..post(
                "TokenReview never answers",
                UNKNOWN,
                Some("hung"),
                BIG,
                503,
                "unavailable",
                0,
            )
        },
        post(
            "a service account of another namespace",
            UNKNOWN,
            Some("other-eso"),
            BIG,
            403,
            "forbidden",
            0,
        ),
        post(
            "a person SubjectAccessReview refuses",
            GEN,
            Some("person"),
            NONE,
            403,
            "forbidden",
            0,
        ),
        post(
            "a person SubjectAccessReview allows",
            GEN,
            Some("platform"),
            NONE,
            200,
            "",
            1,
        ),
        Row {
            earlier: 1,
            headers: &[("retry-after", "1000")],
            ..post(
                "past the caller's rate",
                UNKNOWN,
                Some("apps-eso"),
                BIG,
                429,
                "too-many-requests",
                1,
            )
        },
        Row {
            tweak: no_places,
            ..post(
                "a body too large",
                UNKNOWN,
                Some("apps-eso"),
                BIG,
                413,
                "payload-too-large",
                0,
            )
        },
        Row {
            tweak: no_places,
            ..post(
                "a body that never arrives",
                UNKNOWN,
                Some("apps-eso"),
                Sent::Stalled,
                408,
                "request-timeout",
                0,
            )
        },
        Row {
            tweak: no_places,
            ..post(
                "an unknown generator",
                UNKNOWN,
                Some("apps-eso"),
                NONE,
                422,
                "unknown-generator",
                0,
            )
        },
        Row {
            tweak: no_places,
            headers: &[("retry-after", "10")],
            ..post(
                "no place in the queue",
                GEN,
                Some("apps-eso"),
                NONE,
                503,
                "busy",
                0,
            )
        },
        // The mint port's answers.
        post("minted", GEN, Some("apps-eso"), Sent::Bytes(100), 200, "", 1),
        fails(
            "invalid spec",
            || generate_error(GenerateError::InvalidSpec("spec.orgSlug is required".into())),
            422,
            "invalid-spec",
            &[],
        ),
        fails(
            "policy denied",
            || {
                generate_error(GenerateError::PolicyDenied {
                    message: "no".into(),
                    host_reason: None,
                })
            },
            422,
            "policy-denied",
            &[],
        ),
        fails(
            "token source",
            || generate_error(GenerateError::TokenSource("no account".into())),
            502,
            "token-source",
            &[],
        ),
        fails(
            "unauthorized",
            || generate_error(GenerateError::Unauthorized(upstream(401))),
            502,
            "unauthorized",
            &[],
        ),
        fails(
            "rejected",
            || generate_error(GenerateError::Rejected(upstream(404))),
            502,
            "rejected",
            &[],
        ),
        fails(
            "invalid token",
            || generate_error(GenerateError::InvalidToken("no token".into())),
            502,
            "invalid-token",
            &[],
        ),
        fails(
            "rate limited with a wait",
            || {
                generate_error(GenerateError::RateLimited {
                    retry_after_seconds: Some(7),
                    detail: String::new(),
                })
            },
            503,
            "rate-limited",
            &[("retry-after", "7")],
        ),
        fails(
            "rate limited without one",
            || {
                generate_error(GenerateError::RateLimited {
                    retry_after_seconds: None,
                    detail: String::new(),
                })
            },
            503,
            "rate-limited",
            &[("retry-after", "60")],
        ),
        fails(
            "upstream",
            || {
                generate_error(GenerateError::Upstream {
                    status: Some(502),
                    detail: "bad gateway".into(),
                    attempts: 3,
                    host_note: None,
                })
            },
            503,
            "upstream",
            &[("retry-after", "10")],
        ),
        fails(
            "the token source did not answer",
            || host_error(HostError::TokenSourceUnavailable("slow".into())),
            503,
            "unavailable",
            &[("retry-after", "10")],
        ),
        fails(
            "the sandbox's deadline",
            || {
                host_error(HostError::DeadlineExceeded {
                    deadline: Duration::from_secs(1),
                })
            },
            503,
            "deadline-exceeded",
            &[("retry-after", "10")],
        ),
        fails(
            "memory",
            || host_error(HostError::MemoryLimitExceeded { limit_bytes: 1 }),
            500,
            "memory-limit-exceeded",
            &[],
        ),
        fails(
            "sandbox limit",
            || host_error(HostError::SandboxLimitExceeded("tables".into())),
            500,
            "sandbox-limit-exceeded",
            &[],
        ),
        fails(
            "trap",
            || host_error(HostError::Trap("unreachable".into())),
            500,
            "trap",
            &[],
        ),
        fails(
            "instantiate",
            || host_error(HostError::Instantiate("pool".into())),
            500,
            "instantiate",
            &[],
        ),
        fails(
            "invalid output",
            || host_error(HostError::InvalidOutput("no auth".into())),
            500,
            "invalid-output",
            &[],
        ),
        fails(
            "the component",
            || Failure::usage("bad component"),
            500,
            "internal",
            &[],
        ),
        Row {
            minting: Minting::Stalls,
            headers: &[("retry-after", "10")],
            ..post(
                "a call past its bound",
                GEN,
                Some("apps-eso"),
                NONE,
                503,
                "deadline-exceeded",
                1,
            )
        },
    ]
}

type TestBody = BoxBody<Bytes, Infallible>;

fn body(sent: Sent) -> TestBody {
    match sent {
        Sent::Bytes(n) => Full::new(Bytes::from(vec![b'x'; n])).boxed(),
        Sent::Stalled => StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, Infallible>,
        >())
        .boxed(),
    }
}

fn request(row: &Row, path: &str, sent: Sent) -> Request<TestBody> {
    let mut builder = Request::builder().method(row.method.clone()).uri(path);
    if let Some(token) = row.token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(body(sent)).unwrap()
}

/// The row's answer, as `status case [headers]`, and the calls the mint port saw.
async fn run(row: &Row, manifest: &std::path::Path) -> (String, usize) {
    let mut config = config(manifest.to_path_buf());
    (row.tweak)(&mut config);
    let mut mint = FakeMint::new("eyJhbGciOiJub25lIn0.e30.c2ln", 600);
    mint.stalls = matches!(row.minting, Minting::Stalls);
    if let Minting::Fails(failure) = row.minting {
        mint = mint.failing(move |_| Some(failure()));
    }
    let tokens: Arc<dyn TokenSource> = Arc::new(StaticTokenSource::new(Secret::new("oidc")));
    let catalog = Catalog::load(config.manifests.clone()).unwrap();
    let server = Server::new(&config, mint, tokens, catalog, FakeReviewer, None);
    server.stopping.store(row.stopping, Ordering::SeqCst);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    for _ in 0..row.earlier {
        let answer = handle(&server, request(row, GEN, NONE), peer).await;
        assert_eq!(answer.status(), 200, "{}: an earlier request", row.name);
    }
    let answer = handle(&server, request(row, row.path, row.body), peer).await;
    let status = answer.status().as_u16();
    let mut shown = format!("{status}");
    let headers = answer.headers().clone();
    let bytes = answer.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(case) = json["error"]["case"].as_str() {
        shown.push_str(&format!(" {case}"));
    }
    if status == 200 && row.path == GEN {
        assert!(
            json["auth"].is_string() && json["expiry"].is_string(),
            "{}: {json}",
            row.name
        );
    }
    for (name, _) in row.headers {
        if let Some(value) = headers.get(*name) {
            shown.push_str(&format!(" [{name}: {}]", value.to_str().unwrap()));
        }
    }
    assert_eq!(headers["cache-control"], "no-store", "{}", row.name);
    let mints = server.minter.calls();
    (shown, mints)
}

#[tokio::test(start_paused = true)]
async fn every_request_gets_the_answer_of_the_first_rule_it_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("gen.json");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let mut wrong = Vec::new();
    for row in rows() {
        let (got, mints) = run(&row, &manifest).await;
        let mut want = format!("{}", row.status);
        if !row.case.is_empty() {
            want.push_str(&format!(" {}", row.case));
        }
        for (name, value) in row.headers {
            want.push_str(&format!(" [{name}: {value}]"));
        }
        if got != want || mints != row.mints {
            wrong.push(format!(
                "{}: got {got} after {mints} mint(s), want {want} after {}",
                row.name, row.mints
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
#[test]
fn routes() {
    assert!(matches!(route("/healthz"), Ok(Route::Health)));
    assert!(matches!(route("/readyz"), Ok(Route::Ready)));
    assert!(matches!(route("/metrics"), Ok(Route::Metrics)));
    match route("/v1/namespaces/apps/generators/my-gen.v1") {
        Ok(Route::Generate { namespace, name }) => {
            assert_eq!((&*namespace, &*name), ("apps", "my-gen.v1"))
        }
        _ => panic!("not a generate route"),
    }
    for (path, status) in [
        // Never 404 (ESO's "no secret"): see the module's doc.
        ("/", 400),
        ("/v1/namespaces/apps/generators", 400),
        ("/v1/namespaces/apps/generators/a/b", 400),
        ("/v1/namespaces/apps/secrets/a", 400),
        ("/v1/namespaces/Apps/generators/a", 400),
        ("/v1/namespaces/apps/generators/a_b", 400),
        // A percent-encoded slash is no separator, and no name character either.
        ("/v1/namespaces/apps/generators/a%2Fb", 400),
        ("/v1/namespaces/-a/generators/a", 400),
        ("/v1/namespaces//generators/a", 400),
    ] {
        match route(path) {
            Err((s, _, _)) => assert_eq!(s.as_u16(), status, "{path}"),
            Ok(_) => panic!("{path} routed"),
        }
    }
}

#[test]
fn bearer_tokens() {
    let h = |s: &str| HeaderValue::from_str(s).unwrap();
    assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
    assert_eq!(bearer(Some(&h("bearer abc"))), Some("abc"));
    assert_eq!(bearer(Some(&h("Basic abc"))), None);
    assert_eq!(bearer(Some(&h("Bearer "))), None);
    assert_eq!(bearer(Some(&h("Bearer a b"))), None);
    assert_eq!(bearer(None), None);
}
