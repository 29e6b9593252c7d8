//! A stand-in for Cloudsmith's OIDC exchange (`openid_create`).
//!
//! It answers `POST /openid/{owner}/` (and the explicit `/v1/openid/{owner}/`)
//! and checks each request as strictly as the real API does, so a client that
//! passes against it sends what Cloudsmith accepts:
//!
//! | check, in order                                         | refusal                                  |
//! |---------------------------------------------------------|------------------------------------------|
//! | path is `/openid/{owner}/`, owner a slug                | 404 `{"detail":"Not found."}`            |
//! | method is `POST`                                        | 405 `Method "GET" not allowed.`          |
//! | `Accept`, if sent, allows JSON                          | 406 `Could not satisfy the request Accept header.` |
//! | `Content-Type: application/json`                        | 415 `Unsupported media type "…" in request.` |
//! | a `Content-Length` (chunked bodies refused, as some gateways in front of APIs do) | 411 `Length Required …` |
//! | body at most 64 KiB                                     | 413                                      |
//! | body is JSON                                            | 400 `JSON parse error - …`               |
//! | `oidc_token`, `service_slug`: non-empty strings         | 400 `Missing or invalid parameters (see detail): <field>: …` |
//! | OIDC token verifies (the cluster's issuer as an OIDC relying party for a token it issued, [`StandInConfig::relying_parties`]; else the testkit's key) and its `aud` holds the stand-in's origin or one of [`StandInConfig::audiences`] | 401 `OIDC token cannot be authenticated` |
//! | its (`iss`, `sub`) matches one of [`StandInConfig::trusted`], as an OIDC service trusts an issuer and subjects | 401 `OIDC token cannot be authenticated` |
//!
//! A request that passes gets `201 {"token": "<JWT>"}`, the JWT being
//! [`access_token_for`]`(subject, owner, service_slug, config.token_exp)`, so
//! a test knows the exact token, hence the exact `auth`, and concurrent
//! callers can each check they got their own.
//!
//! # Scenarios
//!
//! Failures are chosen by the organisation slug, so tests run concurrently on
//! one stand-in and CLI processes need no control channel. A scenario applies
//! only to a request that passed every check above.
//!
//! | org slug             | answer                                                                  |
//! |----------------------|-------------------------------------------------------------------------|
//! | `fail-400`           | 400 `{"detail":"Missing or invalid parameters (see detail)"}`           |
//! | `fail-401`           | 401 `{"detail":"OIDC token cannot be authenticated"}`                   |
//! | `fail-403`           | 403 `{"detail":"You do not have permission to perform this action."}`   |
//! | `fail-404`           | 404 `{"detail":"Not found."}`                                           |
//! | `fail-422`           | 422 `{"detail":"The JWT cannot be created"}`                            |
//! | `rate-limited`       | always 429, `Retry-After: 1`, `{"detail":"Request was throttled. Expected available in 1 second."}` |
//! | `rate-limited-long`  | 429, `Retry-After: 3600`                                                |
//! | `fail-500`           | always 500 `{"detail":"A server error occurred."}`                      |
//! | `fail-502`           | always 502, a gateway's HTML page                                       |
//! | `fail-503`           | always 503 `{"detail":"Service temporarily unavailable, try again later."}` |
//! | `burst-503`          | 503 for the first 2 requests of each OIDC subject, then success         |
//! | `burst-429`          | 429 (`Retry-After: 1`) for the first request of each subject, then success |
//! | `malformed-json`     | 201 with a truncated JSON body                                          |
//! | `empty-token`        | 201 `{"token":""}`                                                      |
//! | `not-jwt`            | 201 `{"token":"not-a-jwt"}`                                             |
//! | `no-exp`             | 201 with a JWT whose payload has no `exp`                               |
//! | `oversized`          | 201 with a 2 MiB body, streamed chunked (no `Content-Length`)           |
//! | `oversized-declared` | 201 with `Content-Length` 10 MiB (and the bytes, if the client reads)   |
//! | `slow`               | waits [`StandInConfig::slow_delay`] (10 s) before a success             |
//! | `reset`              | closes the connection without answering                                 |
//! | `redirect`           | 302, `Location:` [`StandInConfig::redirect_location`] (`http://evil.example/openid/x/`) |
//! | `html-500`           | always 500 with a long HTML page (for sanitized-prefix checks)          |
//! | `echo-401`           | 401 whose `detail` is the whole request body, OIDC token included: the client must redact it |
//! | `faults` ([`FAULTS_ORG`]) | per request, by a hash of its number for this org: a share of 5xx, resets and stalls ([`Faults`]), the rest success |
//! | anything else        | success                                                                 |
//!
//! `faults` is not in [`Scenario::ALL`]: its answer changes from one request to
//! the next and one of its stalls never ends, which the table-driven tests over
//! `ALL` do not expect. With the default [`Faults`], of every 100 requests:
//!
//! | share | answer                                                                          |
//! |-------|---------------------------------------------------------------------------------|
//! | 4     | 500 `{"detail":"A server error occurred."}`                                     |
//! | 3     | 502, a gateway's HTML page                                                      |
//! | 3     | 503 `{"detail":"Service temporarily unavailable, try again later."}`            |
//! | 5     | the connection closed without an answer (as `reset`)                            |
//! | 2     | a success after [`Faults::stall`] (5 s: longer than the bound a soak gives `serve`) |
//! | 1     | no answer ever (until the client or the stand-in goes away)                     |
//! | 82    | success                                                                         |
//!
//! The n-th request (counted from 0, per stand-in) gets the answer chosen by
//! `splitmix64(n) % 100`, so a run's sequence of faults is the same every time;
//! which caller gets which depends only on the order requests arrive in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

pub use crate::server::RecordedRequest;
use crate::server::{self, Body, Hangup};

/// The largest request body the stand-in reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The audience Cloudsmith's documentation tells users to request, accepted
/// by default so the documentation's example manifest works unchanged.
pub const PRODUCTION_AUDIENCE: &str = "https://api.cloudsmith.io";

/// Cloudsmith's `detail` for an OIDC token it does not accept (bad signature,
/// audience, issuer or subject): it does not say which.
pub const UNAUTHENTICATED: &str = "OIDC token cannot be authenticated";

/// The registry host Cloudsmith's Docker credentials are for.
pub const REGISTRY: &str = "docker.cloudsmith.io";

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// Serve HTTPS with a fresh [`crate::tls::TestCa`] (see [`StandIn::ca_pem`]).
    pub tls: bool,
    /// The `exp` of every access token issued. Fixed (default `1700000000`,
    /// ESO's test vector) so results are exact.
    pub token_exp: u64,
    /// Audiences accepted besides the stand-in's own origins
    /// (`http(s)://127.0.0.1:PORT`, `http(s)://localhost:PORT`). Default:
    /// [`PRODUCTION_AUDIENCE`].
    pub audiences: Vec<String>,
    /// Where the `redirect` scenario points. Point it at a second stand-in to
    /// prove a client does not follow it.
    pub redirect_location: String,
    /// How long the `slow` scenario waits before answering.
    pub slow_delay: Duration,
    /// Issue exactly this access token on every success instead of one
    /// minted per request (e.g. ESO's own unit-test vector, [`ESO_TOKEN`]).
    pub issued_token: Option<String>,
    /// Answer every success with exactly this JSON text instead of
    /// `{"token": ...}` (e.g. one nested as deep as a parser allows). The real
    /// API may add fields to its answer; a client must read what it needs.
    pub issued_body: Option<String>,
    /// Keep per-request history (the default): every request for
    /// [`StandIn::requests`], and each caller's count in the burst scenarios,
    /// which then fail a caller's first requests and succeed ever after. A
    /// soak turns it off, since that history grows with every call in the
    /// test's own process, which is what a soak measures: requests are then
    /// only counted, and a burst starts over for a caller once it has passed.
    pub keep_history: bool,
    /// The (issuer, subject) pairs the stand-in's OIDC service trusts, as a
    /// Cloudsmith OIDC service is configured with a cluster's issuer and the
    /// subjects it accepts. A token matching none gets a 401. Default: the
    /// testkit's [`crate::oidc::ISSUER`] with any subject, so every token
    /// [`crate::oidc::token`] mints is trusted.
    pub trusted: Vec<Trusted>,
    /// The shares of the `faults` scenario ([`FAULTS_ORG`]).
    pub faults: Faults,
    /// The issuers whose tokens are verified as an OIDC relying party does (discovery
    /// document and key set fetched from the issuer, RS256/ES256 signature, validity:
    /// [`crate::relying_party`]): a token whose `iss` is one of these. Every other token
    /// is verified with the testkit's own HS256 key ([`crate::oidc::verify_any_issuer`]),
    /// for tokens a test mints itself. Empty by default.
    #[cfg(feature = "tls")]
    pub relying_parties: Vec<std::sync::Arc<crate::relying_party::RelyingParty>>,
}

#[cfg(feature = "tls")]
impl StandInConfig {
    /// A configuration trusting only `cluster`'s issuer, as an OIDC relying party, for
    /// the subjects `subject` matches (exact, or a prefix ending in `*`, as [`Trusted`]).
    pub fn trusting(cluster: &crate::cluster::Cluster, subject: &str) -> StandInConfig {
        StandInConfig {
            trusted: Vec::new(),
            ..StandInConfig::default()
        }
        .also_trusting(cluster, subject)
    }

    /// This configuration, also trusting `cluster`'s issuer as an OIDC relying party for
    /// the subjects `subject` matches.
    pub fn also_trusting(mut self, cluster: &crate::cluster::Cluster, subject: &str) -> StandInConfig {
        let party = crate::relying_party::RelyingParty::of(cluster).expect("a relying party of the cluster");
        self.trusted.push(Trusted::new(cluster.issuer(), subject));
        self.relying_parties.push(std::sync::Arc::new(party));
        self
    }
}

/// The organisation slug of the `faults` scenario.
pub const FAULTS_ORG: &str = "faults";

/// The shares, in percent of requests, of each fault the `faults` scenario
/// answers with; what is left of 100 succeeds. Their sum must be at most 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// 500 with Cloudsmith's JSON `detail`.
    pub error_500: u8,
    /// 502 with a gateway's HTML page.
    pub error_502: u8,
    /// 503 with Cloudsmith's JSON `detail`.
    pub error_503: u8,
    /// The connection closed without an answer.
    pub reset: u8,
    /// A success, after [`Faults::stall`].
    pub stall: u8,
    /// No answer at all: the request is held until the client hangs up.
    pub stall_forever: u8,
    /// How long a `stall` waits before its success.
    pub stall_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_500: 4,
            error_502: 3,
            error_503: 3,
            reset: 5,
            stall: 2,
            stall_forever: 1,
            stall_delay: Duration::from_secs(5),
        }
    }
}

/// What the `faults` scenario answers one request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 500, JSON `detail`.
    Error500,
    /// 502, HTML.
    Error502,
    /// 503, JSON `detail`.
    Error503,
    /// The connection closed, no answer.
    Reset,
    /// A success after [`Faults::stall_delay`].
    Stall,
    /// No answer, ever.
    StallForever,
    /// A success, at once.
    None,
}

impl Faults {
    /// The answer to the `n`-th request (from 0): deterministic in `n`.
    pub fn for_request(&self, n: u64) -> Fault {
        // splitmix64: consecutive request numbers spread evenly over 0..100, so
        // faults do not come in runs a retrying client would always lose to.
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let mut roll = ((z ^ (z >> 31)) % 100) as u8;
        for (share, fault) in [
            (self.error_500, Fault::Error500),
            (self.error_502, Fault::Error502),
            (self.error_503, Fault::Error503),
            (self.reset, Fault::Reset),
            (self.stall, Fault::Stall),
            (self.stall_forever, Fault::StallForever),
        ] {
            if roll < share {
                return fault;
            }
            roll -= share;
        }
        Fault::None
    }
}

/// One (issuer, subject) an OIDC service trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// The issuer, compared exactly (`iss`).
    pub issuer: String,
    /// The subject: exact, or a prefix when it ends in `*`
    /// (`system:serviceaccount:apps:*` trusts every account of namespace
    /// `apps`; `*` alone trusts any subject of the issuer).
    pub subject: String,
}

impl Trusted {
    /// Trusts `subject` (exact, or a prefix ending in `*`) from `issuer`.
    pub fn new(issuer: &str, subject: &str) -> Trusted {
        Trusted {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
        }
    }

    /// Whether a token from `issuer` for `subject` is trusted by this entry.
    pub fn matches(&self, issuer: &str, subject: &str) -> bool {
        issuer == self.issuer
            && match self.subject.strip_suffix('*') {
                Some(prefix) => subject.starts_with(prefix),
                None => subject == self.subject,
            }
    }
}

/// The access token of ESO's own unit test: `exp` 1700000000, `sub`
/// 1234567890, `name` John Doe, signature `signature`.
pub const ESO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjoxNzAwMDAwMDAwfQ.signature";

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            tls: false,
            token_exp: 1_700_000_000,
            audiences: vec![PRODUCTION_AUDIENCE.to_string()],
            redirect_location: "http://evil.example/openid/x/".to_string(),
            slow_delay: Duration::from_secs(10),
            issued_token: None,
            issued_body: None,
            keep_history: true,
            trusted: vec![Trusted::new(crate::oidc::ISSUER, "*")],
            faults: Faults::default(),
            #[cfg(feature = "tls")]
            relying_parties: Vec::new(),
        }
    }
}

impl RecordedRequest {
    /// The organisation slug, for a Cloudsmith `/openid/{owner}/` path.
    pub fn org(&self) -> Option<&str> {
        owner_of(&self.path)
    }
}

/// The failure scenarios, selected by organisation slug (see the module
/// documentation for what each answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // Each variant is its org slug; the table above says what it does.
pub enum Scenario {
    Fail400,
    Fail401,
    Fail403,
    Fail404,
    Fail422,
    RateLimited,
    RateLimitedLong,
    Fail500,
    Fail502,
    Fail503,
    Burst503,
    Burst429,
    MalformedJson,
    EmptyToken,
    NotJwt,
    NoExp,
    Oversized,
    OversizedDeclared,
    Slow,
    Reset,
    Redirect,
    Html500,
    Echo401,
}

impl Scenario {
    /// Every scenario, for table-driven tests.
    pub const ALL: [Scenario; 23] = [
        Scenario::Fail400,
        Scenario::Fail401,
        Scenario::Fail403,
        Scenario::Fail404,
        Scenario::Fail422,
        Scenario::RateLimited,
        Scenario::RateLimitedLong,
        Scenario::Fail500,
        Scenario::Fail502,
        Scenario::Fail503,
        Scenario::Burst503,
        Scenario::Burst429,
        Scenario::MalformedJson,
        Scenario::EmptyToken,
        Scenario::NotJwt,
        Scenario::NoExp,
        Scenario::Oversized,
        Scenario::OversizedDeclared,
        Scenario::Slow,
        Scenario::Reset,
        Scenario::Redirect,
        Scenario::Html500,
        Scenario::Echo401,
    ];

    /// The organisation slug that selects this scenario.
    pub fn org(self) -> &'static str {
        match self {
            Scenario::Fail400 => "fail-400",
            Scenario::Fail401 => "fail-401",
            Scenario::Fail403 => "fail-403",
            Scenario::Fail404 => "fail-404",
            Scenario::Fail422 => "fail-422",
            Scenario::RateLimited => "rate-limited",
            Scenario::RateLimitedLong => "rate-limited-long",
            Scenario::Fail500 => "fail-500",
            Scenario::Fail502 => "fail-502",
            Scenario::Fail503 => "fail-503",
            Scenario::Burst503 => "burst-503",
            Scenario::Burst429 => "burst-429",
            Scenario::MalformedJson => "malformed-json",
            Scenario::EmptyToken => "empty-token",
            Scenario::NotJwt => "not-jwt",
            Scenario::NoExp => "no-exp",
            Scenario::Oversized => "oversized",
            Scenario::OversizedDeclared => "oversized-declared",
            Scenario::Slow => "slow",
            Scenario::Reset => "reset",
            Scenario::Redirect => "redirect",
            Scenario::Html500 => "html-500",
            Scenario::Echo401 => "echo-401",
        }
    }

    /// The scenario an organisation slug selects, if any.
    pub fn from_org(org: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.org() == org)
    }

    /// The `detail` the scenario's answer carries, when it is a fixed JSON
    /// `detail` (so tests assert the exact text a client must report).
    pub fn detail(self) -> Option<&'static str> {
        Some(match self {
            Scenario::Fail400 => "Missing or invalid parameters (see detail)",
            Scenario::Fail401 => "OIDC token cannot be authenticated",
            Scenario::Fail403 => "You do not have permission to perform this action.",
            Scenario::Fail404 => "Not found.",
            Scenario::Fail422 => "The JWT cannot be created",
            Scenario::RateLimited | Scenario::Burst429 => {
                "Request was throttled. Expected available in 1 second."
            }
            Scenario::RateLimitedLong => "Request was throttled. Expected available in 3600 seconds.",
            Scenario::Fail500 => "A server error occurred.",
            Scenario::Fail503 | Scenario::Burst503 => "Service temporarily unavailable, try again later.",
            _ => return None,
        })
    }

    /// The HTTP status the scenario answers with (its last answer, for the
    /// burst scenarios), or `None` for `reset` (no answer).
    pub fn status(self) -> Option<u16> {
        Some(match self {
            Scenario::Fail400 => 400,
            Scenario::Fail401 | Scenario::Echo401 => 401,
            Scenario::Fail403 => 403,
            Scenario::Fail404 => 404,
            Scenario::Fail422 => 422,
            Scenario::RateLimited | Scenario::RateLimitedLong => 429,
            Scenario::Fail500 | Scenario::Html500 => 500,
            Scenario::Fail502 => 502,
            Scenario::Fail503 => 503,
            Scenario::Redirect => 302,
            Scenario::Reset => return None,
            Scenario::Burst503
            | Scenario::Burst429
            | Scenario::MalformedJson
            | Scenario::EmptyToken
            | Scenario::NotJwt
            | Scenario::NoExp
            | Scenario::Oversized
            | Scenario::OversizedDeclared
            | Scenario::Slow => 201,
        })
    }
}

/// The access token the stand-in issues for an OIDC `subject` exchanged with
/// `org` and `service`: a deterministic HS256 JWT whose payload is
/// `{"exp", "iss", "org", "service", "sub"}`.
pub fn access_token_for(subject: &str, org: &str, service: &str, exp: u64) -> String {
    crate::oidc::sign(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"exp": exp, "iss": PRODUCTION_AUDIENCE, "org": org, "service": service, "sub": subject}),
    )
}

/// ESO's `auth` output for an access token: base64 of `token:<access token>`.
pub fn auth_for(access_token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("token:{access_token}"))
}

/// What a Cloudsmith registry reads of an access token this stand-in issued
/// ([`access_token_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The organisation the token was exchanged for (`org`).
    pub org: String,
    /// The OIDC service (`service`).
    pub service: String,
    /// The OIDC subject it was exchanged for (`sub`).
    pub subject: String,
    /// Expiry, UNIX seconds (`exp`).
    pub exp: u64,
}

/// Verifies `token` as an access token this stand-in issued, as a registry in front of
/// Cloudsmith would: the stand-in's signature, its issuer ([`PRODUCTION_AUDIENCE`]), and
/// not expired. Why not, when it is refused.
pub fn verify_access_token(token: &str) -> Result<AccessClaims, String> {
    let payload = crate::oidc::signed_payload(token).ok_or("not an access token this stand-in signed")?;
    let text = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_string);
    if text("iss").as_deref() != Some(PRODUCTION_AUDIENCE) {
        return Err(format!("issuer {:?} is not {PRODUCTION_AUDIENCE}", text("iss")));
    }
    let exp = payload.get("exp").and_then(Value::as_u64).ok_or("no exp")?;
    let now = crate::oidc::now_unix();
    if exp <= now {
        return Err(format!("expired {}s ago", now - exp));
    }
    Ok(AccessClaims {
        org: text("org").ok_or("no org")?,
        service: text("service").unwrap_or_default(),
        subject: text("sub").unwrap_or_default(),
        exp,
    })
}

/// The example manifest from ESO's Cloudsmith generator documentation,
/// verbatim except `apiHost`, which is set to `api_host` (e.g. the stand-in's
/// [`StandIn::url`]).
pub fn documented_manifest(api_host: &str) -> String {
    DOCUMENTED_MANIFEST.replace("\"api.cloudsmith.io\"  #", &format!("\"{api_host}\"  #"))
}

/// The documentation's example, byte for byte (`examples/generator.yaml`, which the CLI's
/// `demo` runs too).
pub const DOCUMENTED_MANIFEST: &str = include_str!("../../examples/generator.yaml");

/// A running stand-in. Dropping it stops the server and every connection.
#[derive(Debug)]
pub struct StandIn {
    running: server::Running,
    scheme: &'static str,
    state: Arc<State>,
    #[cfg(feature = "tls")]
    ca: Option<crate::tls::TestCa>,
}

#[derive(Debug)]
struct State {
    config: StandInConfig,
    /// Audiences accepted: the configured ones and the stand-in's origins.
    accepted_audiences: Vec<String>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests received per organisation slug ("" when the path has none).
    counts: Mutex<HashMap<String, usize>>,
    /// Requests seen per (org, OIDC subject), for the burst scenarios.
    seen: Mutex<HashMap<(String, String), u32>>,
    /// Requests of the `faults` scenario that passed every check, and how many
    /// got each fault.
    faults: Mutex<(u64, HashMap<Fault, u64>)>,
    /// Why each refused OIDC token was refused (Cloudsmith says only
    /// [`UNAUTHENTICATED`]; a test wants the reason).
    rejections: Mutex<Vec<String>>,
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` (a free port) on the current tokio
    /// runtime.
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        // The port is known only after binding, and the accepted audiences
        // need it: bind first, then hand the state to the handler.
        let slot: Arc<std::sync::OnceLock<Arc<State>>> = Arc::default();
        let handler_slot = slot.clone();
        let handler: server::Handler = Arc::new(move |req| {
            let state = handler_slot.get().cloned();
            Box::pin(async move {
                match state {
                    Some(state) => handle(&state, req).await,
                    None => Err(Hangup),
                }
            })
        });
        let scheme = if config.tls { "https" } else { "http" };
        #[cfg(feature = "tls")]
        let (ca, tls) = crate::tls::optional(config.tls)?;
        #[cfg(not(feature = "tls"))]
        let tls = if config.tls {
            anyhow::bail!("testkit was built without the `tls` feature")
        } else {
            None
        };
        let running = server::serve(tls, handler).await?;
        let port = running.addr.port();
        let mut accepted_audiences = config.audiences.clone();
        accepted_audiences.push(format!("{scheme}://127.0.0.1:{port}"));
        accepted_audiences.push(format!("{scheme}://localhost:{port}"));
        let state = Arc::new(State {
            config,
            accepted_audiences,
            requests: Mutex::default(),
            counts: Mutex::default(),
            seen: Mutex::default(),
            faults: Mutex::default(),
            rejections: Mutex::default(),
        });
        slot.set(state.clone()).expect("set once");
        Ok(StandIn {
            running,
            scheme,
            state,
            #[cfg(feature = "tls")]
            ca,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS (the
    /// certificate also names `localhost`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority())
    }

    /// `127.0.0.1:PORT`: what a host allowlist names.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.running.addr.port())
    }

    /// The origin (`scheme://127.0.0.1:PORT`): the audience a client asks
    /// for by default when it talks to this stand-in.
    pub fn origin(&self) -> String {
        self.url()
    }

    /// A stand-in issuing ESO's own test-vector token ([`ESO_TOKEN`]) on every
    /// success, served from a runtime thread of its own, for tests that block on
    /// external processes (the runtime must outlive the stand-in: keep both).
    pub fn eso_vector_blocking() -> (tokio::runtime::Runtime, StandIn) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the stand-in");
        let stand_in = runtime
            .block_on(StandIn::start(StandInConfig {
                issued_token: Some(ESO_TOKEN.to_string()),
                ..StandInConfig::default()
            }))
            .expect("stand-in");
        (runtime, stand_in)
    }

    /// The port the stand-in listens on.
    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// How many requests were received for organisation `org`, whether or not
    /// they are recorded ([`StandInConfig::keep_history`]).
    pub fn request_count_for(&self, org: &str) -> usize {
        let counts = self.state.counts.lock().expect("counts lock");
        counts.get(org).copied().unwrap_or(0)
    }

    /// How many requests were received in all.
    pub fn request_count(&self) -> usize {
        self.state.counts.lock().expect("counts lock").values().sum()
    }

    /// The requests received for organisation `org`.
    pub fn requests_for(&self, org: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.org() == Some(org))
            .collect()
    }

    /// How many requests of the `faults` scenario ([`FAULTS_ORG`]) got each
    /// fault ([`Fault::None`]: a success at once).
    pub fn fault_counts(&self) -> HashMap<Fault, u64> {
        self.state.faults.lock().expect("faults lock").1.clone()
    }

    /// Why each OIDC token refused with [`UNAUTHENTICATED`] was refused, in order
    /// (e.g. `expired`, `audience ["x"] not accepted`, `signature does not verify`).
    pub fn rejections(&self) -> Vec<String> {
        self.state.rejections.lock().expect("rejections lock").clone()
    }

    /// The configuration the stand-in runs with.
    pub fn config(&self) -> &StandInConfig {
        &self.state.config
    }

    /// The CA certificate (PEM) that signed the server certificate, when
    /// serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        #[cfg(feature = "tls")]
        {
            self.ca.as_ref().map(|ca| ca.ca_pem())
        }
        #[cfg(not(feature = "tls"))]
        {
            None
        }
    }

    /// The test CA, when serving TLS (for in-process clients).
    #[cfg(feature = "tls")]
    pub fn ca(&self) -> Option<&crate::tls::TestCa> {
        self.ca.as_ref()
    }
}

/// `{owner}` of `[/v1]/openid/{owner}/`, when it is a Cloudsmith slug.
fn owner_of(path: &str) -> Option<&str> {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let owner = path.strip_prefix("/openid/")?.strip_suffix('/')?;
    let is_slug = !owner.is_empty()
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    is_slug.then_some(owner)
}

fn detail(status: u16, detail: &str) -> Response<Body> {
    server::json(status, &json!({ "detail": detail }), &[])
}

fn invalid(field: &str, why: &str) -> Response<Body> {
    detail(
        400,
        &format!("Missing or invalid parameters (see detail): {field}: {why}"),
    )
}

async fn handle(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Hangup> {
    let (parts, body) = req.into_parts();
    let (body, too_large) = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => (collected.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let recorded = RecordedRequest::new(&parts, body.to_vec());
    *state
        .counts
        .lock()
        .expect("counts lock")
        .entry(recorded.org().unwrap_or_default().to_string())
        .or_default() += 1;
    if state.config.keep_history {
        state
            .requests
            .lock()
            .expect("requests lock")
            .push(recorded.clone());
    }

    let Some(org) = recorded.org() else {
        return Ok(detail(404, "Not found."));
    };
    if recorded.method != "POST" {
        let mut response = detail(405, &format!("Method \"{}\" not allowed.", recorded.method));
        response
            .headers_mut()
            .insert("allow", hyper::header::HeaderValue::from_static("POST, OPTIONS"));
        return Ok(response);
    }
    if let Some(accept) = recorded.header("accept") {
        let ok = accept.split(',').any(|range| {
            let range = range.split(';').next().unwrap_or("").trim();
            ["application/json", "application/*", "*/*"].contains(&range)
        });
        if !ok {
            return Ok(detail(406, "Could not satisfy the request Accept header."));
        }
    }
    let content_type = recorded.header("content-type").unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Ok(detail(
            415,
            &format!("Unsupported media type \"{content_type}\" in request."),
        ));
    }
    if recorded.header("content-length").is_none() || recorded.header("transfer-encoding").is_some() {
        // Documented gateway behaviour: some fronting proxies refuse chunked
        // request bodies. A client knows its body's size, so it must say it.
        return Ok(detail(
            411,
            "Length Required: send the body with a Content-Length header.",
        ));
    }
    if too_large {
        return Ok(detail(413, "Request body too large."));
    }
    let body: Value = match serde_json::from_slice(&recorded.body) {
        Ok(v) => v,
        Err(e) => return Ok(detail(400, &format!("JSON parse error - {e}"))),
    };
    let Value::Object(fields) = body else {
        return Ok(detail(
            400,
            "Missing or invalid parameters (see detail): Invalid data. Expected a dictionary.",
        ));
    };
    let mut strings = Vec::new();
    for field in ["oidc_token", "service_slug"] {
        match fields.get(field) {
            None | Some(Value::Null) => return Ok(invalid(field, "This field is required.")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Ok(invalid(field, "This field may not be blank."))
            }
            Some(Value::String(s)) => strings.push(s.clone()),
            Some(_) => return Ok(invalid(field, "Not a valid string.")),
        }
    }
    let (oidc_token, service) = (&strings[0], &strings[1]);
    let subject = match authenticate(state, oidc_token).await {
        Ok(subject) => subject,
        Err(why) => {
            state.rejections.lock().expect("rejections lock").push(why);
            return Ok(detail(401, UNAUTHENTICATED));
        }
    };

    let exp = state.config.token_exp;
    let success = || {
        if let Some(body) = &state.config.issued_body {
            return server::raw(201, "application/json", body.clone(), &[]);
        }
        server::json(
            201,
            &json!({ "token": state.config.issued_token.clone().unwrap_or_else(|| access_token_for(&subject, org, service, exp)) }),
            &[],
        )
    };
    if org == FAULTS_ORG {
        let fault = {
            let mut faults = state.faults.lock().expect("faults lock");
            let fault = state.config.faults.for_request(faults.0);
            faults.0 += 1;
            *faults.1.entry(fault).or_default() += 1;
            fault
        };
        return Ok(match fault {
            Fault::Error500 => detail(500, Scenario::Fail500.detail().unwrap_or_default()),
            Fault::Error502 => gateway_502(),
            Fault::Error503 => detail(503, Scenario::Fail503.detail().unwrap_or_default()),
            Fault::Reset => return Err(Hangup),
            Fault::Stall => {
                tokio::time::sleep(state.config.faults.stall_delay).await;
                success()
            }
            // Held until the client closes the connection (hyper then drops this
            // future) or the stand-in is dropped.
            Fault::StallForever => std::future::pending().await,
            Fault::None => success(),
        });
    }
    let Some(scenario) = Scenario::from_org(org) else {
        return Ok(success());
    };
    let fixed = |status: u16| detail(status, scenario.detail().unwrap_or_default());
    // How many requests this caller made to a burst scenario before this one.
    // Without history the entry is dropped once the burst has passed, so a
    // long soak through the stand-in does not grow it with every caller.
    let earlier = |burst: u32| {
        let mut seen = state.seen.lock().expect("seen lock");
        let key = (org.to_string(), subject.clone());
        let count = seen.entry(key.clone()).or_insert(0);
        let before = *count;
        *count = count.saturating_add(1);
        if before >= burst && !state.config.keep_history {
            seen.remove(&key);
        }
        before
    };
    Ok(match scenario {
        Scenario::Fail400 => fixed(400),
        Scenario::Fail401 => fixed(401),
        Scenario::Fail403 => fixed(403),
        Scenario::Fail404 => fixed(404),
        Scenario::Fail422 => fixed(422),
        Scenario::Fail500 => fixed(500),
        Scenario::Fail503 => fixed(503),
        Scenario::RateLimited => throttled(scenario, "1"),
        Scenario::RateLimitedLong => throttled(scenario, "3600"),
        Scenario::Burst429 if earlier(1) < 1 => throttled(scenario, "1"),
        Scenario::Burst503 if earlier(2) < 2 => fixed(503),
        Scenario::Burst429 | Scenario::Burst503 => success(),
        Scenario::Fail502 => gateway_502(),
        Scenario::MalformedJson => server::raw(201, "application/json", "{\"token\": \"eyJhbGciOi", &[]),
        Scenario::EmptyToken => server::json(201, &json!({"token": ""}), &[]),
        Scenario::NotJwt => server::json(201, &json!({"token": "not-a-jwt"}), &[]),
        Scenario::NoExp => {
            let token = crate::oidc::sign(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &json!({"org": org, "service": service, "sub": subject}),
            );
            server::json(201, &json!({ "token": token }), &[])
        }
        Scenario::Oversized => streamed(2 * 1024 * 1024, false),
        Scenario::OversizedDeclared => streamed(10 * 1024 * 1024, true),
        Scenario::Slow => {
            // Ends early if the stand-in is dropped: the connection task is
            // aborted with the server.
            tokio::time::sleep(state.config.slow_delay).await;
            success()
        }
        Scenario::Reset => return Err(Hangup),
        Scenario::Redirect => server::json(
            302,
            &json!({"detail": "Found"}),
            &[("location", state.config.redirect_location.as_str())],
        ),
        Scenario::Html500 => server::raw(500, "text/html; charset=utf-8", html_500(), &[]),
        Scenario::Echo401 => detail(401, &String::from_utf8_lossy(&recorded.body)),
    })
}

/// The subject of `token` when the stand-in trusts it: verified by the relying party of
/// the issuer it names ([`StandInConfig::relying_parties`]) or else by the test key, for
/// an accepted audience, from a trusted (issuer, subject); else why not.
async fn authenticate(state: &State, token: &str) -> Result<String, String> {
    #[cfg(feature = "tls")]
    {
        // The issuer the token names (unverified) picks the verifier, as a relying
        // party trusting several issuers picks the keys to check it with.
        let named = jwt_payload(token).and_then(|p| p["iss"].as_str().map(str::to_string));
        if let Some(party) = state
            .config
            .relying_parties
            .iter()
            .find(|p| named.as_deref() == Some(p.issuer()))
        {
            let claims = party.verify(token).await?;
            return judge(state, &claims.iss, &claims.sub, &claims.aud);
        }
    }
    let claims = crate::oidc::verify_any_issuer(token).ok_or("does not verify with the test key")?;
    judge(state, &claims.iss, &claims.sub, &claims.aud)
}

/// The subject of a verified token, when its audience is accepted and its (issuer,
/// subject) trusted; else why not.
fn judge(state: &State, iss: &str, sub: &str, aud: &[String]) -> Result<String, String> {
    if !aud.iter().any(|a| state.accepted_audiences.contains(a)) {
        return Err(format!("audience {aud:?} not accepted"));
    }
    if !state.config.trusted.iter().any(|t| t.matches(iss, sub)) {
        return Err(format!("({iss}, {sub}) not trusted"));
    }
    Ok(sub.to_string())
}

fn gateway_502() -> Response<Body> {
    server::raw(
        502,
        "text/html",
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
         <center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        &[],
    )
}

fn throttled(scenario: Scenario, retry_after: &str) -> Response<Body> {
    server::json(
        429,
        &json!({"detail": scenario.detail().unwrap_or_default()}),
        &[("retry-after", retry_after)],
    )
}

/// A success status with a body far past any sane token answer.
fn streamed(len: u64, declared: bool) -> Response<Body> {
    Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .body(Body::Repeat {
            chunk: Bytes::from(vec![b'A'; 16 * 1024]),
            remaining: len,
            declared,
        })
        .expect("valid response parts")
}

/// A proxy-style error page, several KiB long, with markup and line breaks a
/// client must not copy whole into a one-line error.
fn html_500() -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html>\n<head><title>500 Internal Server Error</title></head>\n<body>\n\
         <h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable \
         to complete your request.</p>\n",
    );
    for i in 0..100 {
        page.push_str(&format!(
            "<p class=\"trace\">frame {i}: at handler (app.py:{i})</p>\n"
        ));
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// Decodes a JWT's payload (no verification): for tests that inspect tokens.
pub fn jwt_payload(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_manifest_changes_only_api_host() {
        let manifest = documented_manifest("http://127.0.0.1:8080");
        let changed: Vec<(&str, &str)> = DOCUMENTED_MANIFEST
            .lines()
            .zip(manifest.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [(
                "  apiHost: \"api.cloudsmith.io\"  # Optional, defaults to api.cloudsmith.io",
                "  apiHost: \"http://127.0.0.1:8080\"  # Optional, defaults to api.cloudsmith.io"
            )]
        );
        assert_eq!(manifest.lines().count(), DOCUMENTED_MANIFEST.lines().count());
    }

    #[test]
    fn access_tokens_are_deterministic_jwts_with_the_given_claims() {
        let token = access_token_for("sub-1", "org", "svc", 1_700_000_000);
        assert_eq!(token, access_token_for("sub-1", "org", "svc", 1_700_000_000));
        assert_ne!(token, access_token_for("sub-2", "org", "svc", 1_700_000_000));
        let payload = jwt_payload(&token).unwrap();
        assert_eq!(
            payload,
            json!({"exp": 1_700_000_000u64, "iss": PRODUCTION_AUDIENCE, "org": "org", "service": "svc", "sub": "sub-1"})
        );
        assert_eq!(
            auth_for("abc"),
            base64::engine::general_purpose::STANDARD.encode("token:abc")
        );
    }

    #[test]
    fn access_tokens_verify_as_issued_and_only_then() {
        let now = crate::oidc::now_unix();
        let token = access_token_for("sub-1", "acme", "svc", now + 600);
        assert_eq!(
            verify_access_token(&token),
            Ok(AccessClaims {
                org: "acme".into(),
                service: "svc".into(),
                subject: "sub-1".into(),
                exp: now + 600
            })
        );
        let expired = access_token_for("sub-1", "acme", "svc", now - 1);
        assert!(verify_access_token(&expired).unwrap_err().starts_with("expired"));
        // Another signature, or a payload changed after signing.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            json!({"exp": now + 600, "iss": PRODUCTION_AUDIENCE, "org": "other", "sub": "x"}).to_string(),
        );
        assert!(verify_access_token(&parts.join(".")).is_err());
        assert!(verify_access_token(ESO_TOKEN).is_err());
        // An OIDC token of the testkit is signed alike, but is no access token.
        let oidc = crate::oidc::token("system:serviceaccount:a:b", &[PRODUCTION_AUDIENCE]);
        assert!(verify_access_token(&oidc).unwrap_err().starts_with("issuer"));
    }

    #[test]
    fn trusted_subjects_are_exact_or_a_prefix() {
        let apps = Trusted::new("https://k8s", "system:serviceaccount:apps:*");
        assert!(apps.matches("https://k8s", "system:serviceaccount:apps:puller"));
        assert!(!apps.matches("https://k8s", "system:serviceaccount:other:puller"));
        assert!(!apps.matches("https://other", "system:serviceaccount:apps:puller"));
        let one = Trusted::new("https://k8s", "system:serviceaccount:apps:puller");
        assert!(one.matches("https://k8s", "system:serviceaccount:apps:puller"));
        assert!(!one.matches("https://k8s", "system:serviceaccount:apps:puller2"));
        assert!(Trusted::new("https://k8s", "*").matches("https://k8s", "anyone"));
    }

    #[test]
    fn faults_are_deterministic_and_in_their_shares() {
        let faults = Faults::default();
        let mut counts: HashMap<Fault, u64> = HashMap::new();
        for n in 0..100_000 {
            assert_eq!(faults.for_request(n), faults.for_request(n));
            *counts.entry(faults.for_request(n)).or_default() += 1;
        }
        // Within 10 % of each share over 100,000 requests.
        for (fault, share) in [
            (Fault::Error500, faults.error_500),
            (Fault::Error502, faults.error_502),
            (Fault::Error503, faults.error_503),
            (Fault::Reset, faults.reset),
            (Fault::Stall, faults.stall),
            (Fault::StallForever, faults.stall_forever),
            (Fault::None, 82),
        ] {
            let want = f64::from(share) * 1000.0;
            let got = counts.get(&fault).copied().unwrap_or(0) as f64;
            assert!(
                (got - want).abs() < want / 10.0,
                "{fault:?}: {got} of 100000, want about {want}"
            );
        }
        let none = Faults {
            error_500: 0,
            error_502: 0,
            error_503: 0,
            reset: 0,
            stall: 0,
            stall_forever: 0,
            ..faults
        };
        assert!((0..1000).all(|n| none.for_request(n) == Fault::None));
    }

    #[test]
    fn owners_are_cloudsmith_slugs() {
        assert_eq!(owner_of("/openid/my-org_1/"), Some("my-org_1"));
        assert_eq!(owner_of("/v1/openid/org/"), Some("org"));
        for path in [
            "/openid//",
            "/openid/a.b/",
            "/openid/a/b/",
            "/openid/org",
            "/v2/openid/org/",
        ] {
            assert_eq!(owner_of(path), None, "{path}");
        }
    }
}
