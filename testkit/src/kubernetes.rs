//! A stand-in Kubernetes API server, kept for what the real one (`crate::cluster`)
//! cannot do on demand: hold a TokenRequest or a TokenReview while the rest answers
//! (`serve`'s bounds, host-example/tests/serve.rs), authenticate without audiences,
//! review tens of thousands of never-repeating caller tokens on a two-core machine (the
//! soak, host-example/tests/serve_soak.rs), and answer in microseconds, the same every
//! time (the `serve` benchmark, bench/src/serve.rs). Every other test runs against the
//! real control plane.
//!
//!
//! It answers `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`
//! the way an API server does, using `k8s-openapi`'s own types for the
//! request and the answer, so a client that works here sends and reads what
//! a real cluster does:
//!
//! | condition                                          | answer                                              |
//! |----------------------------------------------------|-----------------------------------------------------|
//! | no `Authorization: Bearer <config.bearer_token>`   | 401 `Status` `Unauthorized`                         |
//! | another path                                       | 404 `Status` `the server could not find the requested resource` |
//! | another method                                     | 405 `Status` `MethodNotAllowed`                     |
//! | body is not a `TokenRequest`                       | 400 `Status` `BadRequest`                           |
//! | namespace in [`StandInConfig::forbidden_namespaces`] | 403 `Status` `serviceaccounts "x" is forbidden: …` |
//! | account not in [`StandInConfig::service_accounts`] | 404 `Status` `serviceaccounts "x" not found`        |
//! | `expirationSeconds` below 600                      | 422 `Status` `Invalid`                              |
//! | otherwise                                          | 201 `TokenRequest` with `status.token` = [`crate::oidc::token_with_lifetime`] for `system:serviceaccount:<ns>:<name>` and the requested audiences |
//!
//! It also answers the two review APIs a service uses to check its callers:
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: `status.authenticated` when
//!   the token verifies ([`crate::oidc::verify`]) and carries one of `spec.audiences`
//!   (by default the API server's own, [`crate::oidc::ISSUER`]); `status.user` is the token's subject with the groups a real
//!   server gives a service account (`system:serviceaccounts`,
//!   `system:serviceaccounts:<ns>`, `system:authenticated`).
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: `status.allowed` when a
//!   [`Grant`] in [`StandInConfig::grants`] matches the user and resource attributes.
//!
//! Both record what they were asked ([`StandIn::token_reviews`],
//! [`StandIn::access_reviews`]) and, like the TokenRequest API, refuse callers without
//! the configured bearer token.
//!
//! With no audiences, the token gets the API server's own
//! ([`crate::oidc::ISSUER`]), as a real server does; with no
//! `expirationSeconds`, one hour.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
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
    /// Namespaces where the caller may not create tokens (403).
    pub forbidden_namespaces: Vec<String>,
    /// Serve HTTPS with a fresh [`crate::tls::TestCa`]; the kubeconfig then
    /// carries its certificate as `certificate-authority-data`.
    pub tls: bool,
    /// What SubjectAccessReviews allow (nothing by default).
    pub grants: Vec<Grant>,
    /// Hold every TokenRequest this long before answering (a hung API server for the
    /// TokenRequest API alone; the reviews still answer at once).
    pub token_request_delay: std::time::Duration,
    /// Hold every TokenReview this long before answering (a slow API server, so that
    /// callers can hang up mid-review); counted on arrival ([`StandIn::token_reviews_received`]).
    pub token_review_delay: std::time::Duration,
    /// Authenticate a valid token whatever audiences the review asks for, and say it
    /// was for the token's own (`status.audiences`): an authenticator that does not
    /// support audiences, which a real API server does not have on demand.
    pub review_ignores_audiences: bool,
}

/// One permission the SubjectAccessReview stand-in grants: like an RBAC rule bound to
/// one user. `"*"` in any field matches every value; `name: None` matches every name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user (`system:serviceaccount:<ns>:<name>` for a service account).
    pub user: String,
    /// The namespace the permission holds in.
    pub namespace: String,
    /// The verb, e.g. `create`.
    pub verb: String,
    /// The API group.
    pub group: String,
    /// The resource.
    pub resource: String,
    /// The subresource (`""` for none).
    pub subresource: String,
    /// The one object name allowed (`resourceNames`), or every name.
    pub name: Option<String>,
}

/// A TokenReview as the stand-in received and answered it (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewRecord {
    /// `spec.audiences` as sent.
    pub audiences: Vec<String>,
    /// Whether the token was authenticated.
    pub authenticated: bool,
    /// The user it was authenticated as.
    pub username: Option<String>,
}

/// A SubjectAccessReview as the stand-in received and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessReviewRecord {
    /// `spec.user`.
    pub user: String,
    /// `spec.resourceAttributes` as `(namespace, verb, group, resource, subresource, name)`.
    pub attributes: (String, String, String, String, String, String),
    /// The answer.
    pub allowed: bool,
}

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            bearer_token: "testkit-kube-bearer-0123456789abcdef".to_string(),
            service_accounts: vec![("default".to_string(), "default".to_string())],
            forbidden_namespaces: vec!["forbidden".to_string()],
            tls: false,
            grants: Vec::new(),
            token_request_delay: std::time::Duration::ZERO,
            token_review_delay: std::time::Duration::ZERO,
            review_ignores_audiences: false,
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

    /// Adds a [`Grant`].
    pub fn with_grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
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
    /// `spec.audiences` as sent.
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds` as sent.
    pub expiration_seconds: Option<i64>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The token minted in answer, if one was.
    pub token: Option<String>,
}

/// A running stand-in. Dropping it stops the server and every connection.
#[derive(Debug)]
pub struct StandIn {
    running: server::Running,
    scheme: &'static str,
    state: Arc<State>,
    ca_pem: Option<String>,
}

#[derive(Debug)]
struct State {
    config: StandInConfig,
    requests: Mutex<Vec<TokenRequestRecord>>,
    token_reviews: Mutex<Vec<TokenReviewRecord>>,
    access_reviews: Mutex<Vec<AccessReviewRecord>>,
    token_reviews_received: std::sync::atomic::AtomicUsize,
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` (a free port) on the current tokio
    /// runtime.
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        let scheme = if config.tls { "https" } else { "http" };
        #[cfg(feature = "tls")]
        let (ca_pem, tls) = {
            let (ca, tls) = crate::tls::optional(config.tls)?;
            (ca.map(|ca| ca.ca_pem().to_string()), tls)
        };
        #[cfg(not(feature = "tls"))]
        let (ca_pem, tls) = if config.tls {
            anyhow::bail!("testkit was built without the `tls` feature")
        } else {
            (None, None)
        };
        let state = Arc::new(State {
            config,
            requests: Mutex::default(),
            token_reviews: Mutex::default(),
            access_reviews: Mutex::default(),
            token_reviews_received: Default::default(),
        });
        let handler_state = state.clone();
        let handler: server::Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req).await })
        });
        let running = server::serve(tls, handler).await?;
        Ok(StandIn {
            running,
            scheme,
            state,
            ca_pem,
        })
    }

    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.running.addr.port())
    }

    /// The bearer token clients must present.
    pub fn bearer_token(&self) -> &str {
        &self.state.config.bearer_token
    }

    /// The CA certificate (PEM), when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every TokenRequest received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// TokenReviews that arrived so far, answered or not (see
    /// [`StandInConfig::token_review_delay`]).
    pub fn token_reviews_received(&self) -> usize {
        self.state
            .token_reviews_received
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The tokens minted so far (every TokenRequest's answer), in order.
    pub fn minted_tokens(&self) -> Vec<String> {
        self.requests().into_iter().filter_map(|r| r.token).collect()
    }

    /// Every TokenReview received so far, in order.
    pub fn token_reviews(&self) -> Vec<TokenReviewRecord> {
        self.state.token_reviews.lock().expect("reviews lock").clone()
    }

    /// Every SubjectAccessReview received so far, in order.
    pub fn access_reviews(&self) -> Vec<AccessReviewRecord> {
        self.state.access_reviews.lock().expect("reviews lock").clone()
    }

    /// A kubeconfig whose current context points at this stand-in with the
    /// right bearer token (and CA, with TLS); default namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        let ca = self
            .ca_pem
            .as_ref()
            .map(|pem| format!("\n    certificate-authority-data: {}", STANDARD.encode(pem)))
            .unwrap_or_default();
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: testkit
  cluster:
    server: {url}{ca}
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

    /// Writes [`StandIn::kubeconfig_yaml`] to `dir/kubeconfig` and returns
    /// the path.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml())?;
        Ok(path)
    }

    /// Writes the kubeconfig to a temporary file, removed when the returned
    /// handle is dropped.
    pub fn kubeconfig_tempfile(&self) -> anyhow::Result<tempfile::NamedTempFile> {
        let mut file = tempfile::Builder::new()
            .prefix("testkit-kubeconfig-")
            .suffix(".yaml")
            .tempfile()?;
        std::io::Write::write_all(&mut file, self.kubeconfig_yaml().as_bytes())?;
        Ok(file)
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
            state
                .token_reviews_received
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if !state.config.token_review_delay.is_zero() {
                tokio::time::sleep(state.config.token_review_delay).await;
            }
            return Ok(token_review(
                state,
                &parts.method,
                authorization.as_deref(),
                &body,
            ));
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
    if !state.config.token_request_delay.is_zero() {
        tokio::time::sleep(state.config.token_request_delay).await;
    }
    let parsed: Option<TokenRequest> = serde_json::from_slice(&body).ok();
    let (response, token) = answer(
        state,
        &parts.method,
        authorization.as_deref(),
        route,
        parsed.clone(),
    );
    // Recorded whatever the answer, so tests can see what a refused client sent.
    if let (Some((ns, name)), Some(request)) = (route, parsed) {
        state
            .requests
            .lock()
            .expect("requests lock")
            .push(TokenRequestRecord {
                namespace: ns.to_string(),
                name: name.to_string(),
                audiences: request.spec.audiences,
                expiration_seconds: request.spec.expiration_seconds,
                authorization,
                token,
            });
    }
    Ok(response)
}

/// The answer to a request, and the token minted, if any.
fn answer(
    state: &State,
    method: &hyper::Method,
    authorization: Option<&str>,
    route: Option<(&str, &str)>,
    parsed: Option<TokenRequest>,
) -> (Response<Body>, Option<String>) {
    // An API server authenticates before anything else.
    if authorization != Some(&format!("Bearer {}", state.config.bearer_token)) {
        return (status(401, "Unauthorized", "Unauthorized", None), None);
    }
    let Some((ns, name)) = route else {
        let message = "the server could not find the requested resource";
        return (status(404, "NotFound", message, None), None);
    };
    if method != hyper::Method::POST {
        let message = format!("the server does not allow this method on the requested resource ({method})");
        return (status(405, "MethodNotAllowed", &message, None), None);
    }
    let Some(request) = parsed else {
        let message = "the body of the request was in an unknown format - accepted media types include: \
                       application/json, application/yaml, application/vnd.kubernetes.protobuf";
        return (status(400, "BadRequest", message, None), None);
    };
    if state.config.forbidden_namespaces.iter().any(|f| f == ns) {
        let message = format!(
            "serviceaccounts \"{name}\" is forbidden: User \"system:serviceaccount:testkit:generator\" \
             cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{ns}\""
        );
        return (status(403, "Forbidden", &message, account_details(name)), None);
    }
    let known = state
        .config
        .service_accounts
        .iter()
        .any(|(n, a)| n == ns && a == name);
    if !known {
        let message = format!("serviceaccounts \"{name}\" not found");
        return (status(404, "NotFound", &message, account_details(name)), None);
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
        return (status(422, "Invalid", &message, account_details(name)), None);
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
            token: token.clone(),
        }),
    };
    // k8s-openapi's Serialize for a resource writes apiVersion and kind.
    let value = serde_json::to_value(&answer).expect("TokenRequest serializes");
    (server::json(201, &value, &[]), Some(token))
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
        Some(c) if state.config.review_ignores_audiences => c.aud.clone(),
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
    state
        .token_reviews
        .lock()
        .expect("reviews lock")
        .push(TokenReviewRecord {
            audiences: wanted,
            authenticated,
            username: user.as_ref().and_then(|u| u.username.clone()),
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
    let user = review.spec.user.clone().unwrap_or_default();
    let r = review.spec.resource_attributes.clone().unwrap_or_default();
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    let attributes = (
        field(&r.namespace),
        field(&r.verb),
        field(&r.group),
        field(&r.resource),
        field(&r.subresource),
        field(&r.name),
    );
    let matches = |want: &str, have: &str| want == "*" || want == have;
    let allowed = review.spec.resource_attributes.is_some()
        && state.config.grants.iter().any(|g| {
            g.user == user
                && matches(&g.namespace, &attributes.0)
                && matches(&g.verb, &attributes.1)
                && matches(&g.group, &attributes.2)
                && matches(&g.resource, &attributes.3)
                && matches(&g.subresource, &attributes.4)
                && g.name.as_ref().is_none_or(|n| *n == attributes.5)
        });
    state
        .access_reviews
        .lock()
        .expect("reviews lock")
        .push(AccessReviewRecord {
            user,
            attributes,
            allowed,
        });
    let answer = SubjectAccessReview {
        metadata: Default::default(),
        spec: review.spec,
        status: Some(SubjectAccessReviewStatus {
            allowed,
            denied: None,
            evaluation_error: None,
            reason: Some(
                if allowed {
                    "a testkit grant matches"
                } else {
                    "no testkit grant matches"
                }
                .to_string(),
            ),
        }),
    };
    let value = serde_json::to_value(&answer).expect("SubjectAccessReview serializes");
    server::json(201, &value, &[])
}
