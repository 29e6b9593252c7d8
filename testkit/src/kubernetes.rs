//! A stand-in Kubernetes API server, kept for what the real one (`crate::cluster`)
//! cannot do on demand:
//!
//! - hold a TokenRequest ([`StandInConfig::token_request_delay`]) while the reviews still
//!   answer: `serve`'s bound on a stalled TokenRequest (host-example/tests/serve.rs);
//! - review tens of thousands of never-repeating caller tokens on a shared two-core
//!   machine: `serve`'s soak (host-example/tests/serve_soak.rs);
//! - answer in microseconds, the same every time: the `serve` benchmark
//!   (bench/src/serve.rs), which compares two servers' own cost per call.
//!
//! It answers, with `k8s-openapi`'s own types and kube-apiserver's words:
//!
//! | request | answer |
//! |---------|--------|
//! | any, without `Authorization: Bearer <config.bearer_token>` | 401 `Status` `Unauthorized` |
//! | `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` for an account not in [`StandInConfig::service_accounts`] | 404 `serviceaccounts "x" not found` |
//! | the same with `expirationSeconds` below 600 | 422 `Invalid` (pkg/apis/authentication/validation/validation.go, ValidateTokenRequest, v1.34.4) |
//! | the same, otherwise | 201 `TokenRequest`, `status.token` = [`crate::oidc::token_with_lifetime`] for `system:serviceaccount:<ns>:<name>` and the audiences asked (none: the API server's own, [`crate::oidc::ISSUER`]; no `expirationSeconds`: one hour) |
//! | `POST /apis/authentication.k8s.io/v1/tokenreviews` | `authenticated` when the token verifies ([`crate::oidc::verify`]) for one of `spec.audiences` (none: the API server's own), with a service account's groups |
//! | `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` | never `allowed`: no RBAC grants anything here |
//! | another path or method | 404 / 405 `Status` |

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenRequestStatus, TokenReview, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status, StatusDetails, Time};

use crate::server::{self, Body, Hangup};

/// The default lifetime of a minted token (the API server's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// The bearer token clients must present.
    pub bearer_token: String,
    /// Known service accounts, as `(namespace, name)`.
    pub service_accounts: Vec<(String, String)>,
    /// Hold every TokenRequest this long before answering (a hung API server for the
    /// TokenRequest API alone; the reviews still answer at once).
    pub token_request_delay: std::time::Duration,
}

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            bearer_token: "testkit-kube-bearer-0123456789abcdef".to_string(),
            service_accounts: vec![("default".to_string(), "default".to_string())],
            token_request_delay: std::time::Duration::ZERO,
        }
    }
}

impl StandInConfig {
    /// Adds a known service account.
    pub fn with_service_account(mut self, namespace: &str, name: &str) -> Self {
        self.service_accounts
            .push((namespace.to_string(), name.to_string()));
        self
    }
}

/// A TokenRequest as the stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// The namespace in the path.
    pub namespace: String,
    /// The service account name in the path.
    pub name: String,
}

/// A running stand-in. Dropping it stops the server and every connection.
#[derive(Debug)]
pub struct StandIn {
    running: server::Running,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    config: StandInConfig,
    requests: Mutex<Vec<TokenRequestRecord>>,
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` (a free port, plain HTTP) on the current tokio
    /// runtime.
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        let state = Arc::new(State {
            config,
            requests: Mutex::default(),
        });
        let handler_state = state.clone();
        let handler: server::Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let running = server::serve(None, handler).await?;
        Ok(StandIn { running, state })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.running.addr.port())
    }

    /// The bearer token clients must present.
    pub fn bearer_token(&self) -> &str {
        &self.state.config.bearer_token
    }

    /// Every TokenRequest received so far, in order (whatever the answer).
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// A kubeconfig whose current context points at this stand-in with the right bearer
    /// token; default namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: testkit
  cluster:
    server: {url}
contexts:
- name: testkit
  context:
    cluster: testkit
    user: testkit
    namespace: default
current-context: testkit
users:
- name: testkit
  user:
    token: {token}
preferences: {{}}
",
            url = self.url(),
            token = self.state.config.bearer_token,
        )
    }

    /// Writes [`StandIn::kubeconfig_yaml`] to `dir/kubeconfig` and returns the path.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml())?;
        Ok(path)
    }
}

/// A Kubernetes `Status` failure answer.
fn status(code: u16, reason: &str, message: &str, details: Option<StatusDetails>) -> Response<Body> {
    let status = Status {
        code: Some(code as i32),
        details,
        message: Some(message.to_string()),
        metadata: Default::default(),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
    };
    let mut value = serde_json::to_value(&status).expect("Status serializes");
    // k8s-openapi's Status does not carry the type meta; API servers send it.
    value["kind"] = "Status".into();
    value["apiVersion"] = "v1".into();
    server::json(code, &value, &[])
}

fn account_details(name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        kind: Some("serviceaccounts".to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    })
}

/// `(namespace, name)` of `/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let (ns, kind, name, sub) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none()
        && kind == "serviceaccounts"
        && sub == "token"
        && !ns.is_empty()
        && !name.is_empty())
    .then_some((ns, name))
}

async fn handle(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Hangup> {
    let (parts, body) = req.into_parts();
    let authorization = parts
        .headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = match Limited::new(body, 1024 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(status(
                413,
                "RequestEntityTooLarge",
                "request entity too large",
                None,
            ))
        }
    };
    match parts.uri.path() {
        TOKEN_REVIEWS => {
            return Ok(token_review(
                state,
                &parts.method,
                authorization.as_deref(),
                &body,
            ))
        }
        ACCESS_REVIEWS => {
            return Ok(access_review(
                state,
                &parts.method,
                authorization.as_deref(),
                &body,
            ))
        }
        _ => {}
    }
    let route = route(parts.uri.path());
    // Recorded on arrival, whatever the answer: a test sees a request it holds.
    if let Some((ns, name)) = route {
        state
            .requests
            .lock()
            .expect("requests lock")
            .push(TokenRequestRecord {
                namespace: ns.to_string(),
                name: name.to_string(),
            });
    }
    if !state.config.token_request_delay.is_zero() {
        tokio::time::sleep(state.config.token_request_delay).await;
    }
    let parsed: Option<TokenRequest> = serde_json::from_slice(&body).ok();
    Ok(answer(
        state,
        &parts.method,
        authorization.as_deref(),
        route,
        parsed,
    ))
}

/// The answer to a TokenRequest.
fn answer(
    state: &State,
    method: &hyper::Method,
    authorization: Option<&str>,
    route: Option<(&str, &str)>,
    parsed: Option<TokenRequest>,
) -> Response<Body> {
    // An API server authenticates before anything else.
    if authorization != Some(&format!("Bearer {}", state.config.bearer_token)) {
        return status(401, "Unauthorized", "Unauthorized", None);
    }
    let Some((ns, name)) = route else {
        let message = "the server could not find the requested resource";
        return status(404, "NotFound", message, None);
    };
    if method != hyper::Method::POST {
        let message = format!("the server does not allow this method on the requested resource ({method})");
        return status(405, "MethodNotAllowed", &message, None);
    }
    let Some(request) = parsed else {
        let message = "the body of the request was in an unknown format - accepted media types include: \
                       application/json, application/yaml, application/vnd.kubernetes.protobuf";
        return status(400, "BadRequest", message, None);
    };
    let known = state
        .config
        .service_accounts
        .iter()
        .any(|(n, a)| n == ns && a == name);
    if !known {
        let message = format!("serviceaccounts \"{name}\" not found");
        return status(404, "NotFound", &message, account_details(name));
    }
    let expiration = request
        .spec
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if expiration < 600 {
        let message = format!(
            "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: \
             Invalid value: {expiration}: may not specify a duration less than 10 minutes"
        );
        return status(422, "Invalid", &message, account_details(name));
    }
    let audiences = if request.spec.audiences.is_empty() {
        vec![crate::oidc::ISSUER.to_string()]
    } else {
        request.spec.audiences.clone()
    };
    let audience_refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let subject = format!("system:serviceaccount:{ns}:{name}");
    let token = crate::oidc::token_with_lifetime(&subject, &audience_refs, expiration as u64);
    let expires = crate::oidc::now_unix() as i64 + expiration;
    let answer = TokenRequest {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        spec: TokenRequestSpec {
            audiences,
            bound_object_ref: request.spec.bound_object_ref,
            expiration_seconds: Some(expiration),
        },
        status: Some(TokenRequestStatus {
            expiration_timestamp: Time(
                k8s_openapi::jiff::Timestamp::from_second(expires).expect("a valid timestamp"),
            ),
            token,
        }),
    };
    // k8s-openapi's Serialize for a resource writes apiVersion and kind.
    let value = serde_json::to_value(&answer).expect("TokenRequest serializes");
    server::json(201, &value, &[])
}

/// The TokenReview collection's path.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The SubjectAccessReview collection's path.
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// The checks every review API makes first: the caller's bearer token, POST, a body of
/// the right type.
fn review_request<T: serde::de::DeserializeOwned>(
    state: &State,
    method: &hyper::Method,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<T, Box<Response<Body>>> {
    if authorization != Some(&format!("Bearer {}", state.config.bearer_token)) {
        return Err(Box::new(status(401, "Unauthorized", "Unauthorized", None)));
    }
    if method != hyper::Method::POST {
        let message = format!("the server does not allow this method on the requested resource ({method})");
        return Err(Box::new(status(405, "MethodNotAllowed", &message, None)));
    }
    serde_json::from_slice(body).map_err(|_| {
        Box::new(status(
            400,
            "BadRequest",
            "the body of the request was in an unknown format",
            None,
        ))
    })
}

fn token_review(
    state: &State,
    method: &hyper::Method,
    authorization: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    let review: TokenReview = match review_request(state, method, authorization, body) {
        Ok(review) => review,
        Err(response) => return *response,
    };
    let wanted = review.spec.audiences.clone().unwrap_or_default();
    let claims = review.spec.token.as_deref().and_then(crate::oidc::verify);
    // No audiences asked: the API server's own, as a real server defaults them.
    let effective = if wanted.is_empty() {
        vec![crate::oidc::ISSUER.to_string()]
    } else {
        wanted.clone()
    };
    let audiences: Vec<String> = match &claims {
        Some(c) => effective.iter().filter(|a| c.aud.contains(a)).cloned().collect(),
        None => Vec::new(),
    };
    let authenticated = claims.is_some() && !audiences.is_empty();
    let user = claims.filter(|_| authenticated).map(|c| {
        let mut groups = Vec::new();
        if let Some((ns, _)) = crate::oidc::service_account_of(&c.sub) {
            groups.push("system:serviceaccounts".to_string());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
        groups.push("system:authenticated".to_string());
        UserInfo {
            username: Some(c.sub.clone()),
            groups: Some(groups),
            uid: Some(format!("uid-{}", c.sub.len())),
            extra: None,
        }
    });
    let answer = TokenReview {
        metadata: Default::default(),
        spec: k8s_openapi::api::authentication::v1::TokenReviewSpec {
            audiences: review.spec.audiences,
            token: None,
        },
        status: Some(TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: authenticated.then_some(audiences),
            // A real API server says nothing more about a bad token.
            error: (!authenticated).then(|| "[invalid bearer token]".to_string()),
            user,
        }),
    };
    let value = serde_json::to_value(&answer).expect("TokenReview serializes");
    server::json(201, &value, &[])
}

fn access_review(
    state: &State,
    method: &hyper::Method,
    authorization: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    let review: SubjectAccessReview = match review_request(state, method, authorization, body) {
        Ok(review) => review,
        Err(response) => return *response,
    };
    // No RBAC here grants anything. A real denial without a matching rule has no reason
    // either: RBACAuthorizer.Authorize gives one only for rules it could not resolve
    // (plugin/pkg/auth/authorizer/rbac/rbac.go, v1.34.4).
    let answer = SubjectAccessReview {
        metadata: Default::default(),
        spec: review.spec,
        status: Some(SubjectAccessReviewStatus {
            allowed: false,
            denied: None,
            evaluation_error: None,
            reason: None,
        }),
    };
    let value = serde_json::to_value(&answer).expect("SubjectAccessReview serializes");
    server::json(201, &value, &[])
}
