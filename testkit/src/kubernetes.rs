//! A stand-in Kubernetes API server for the TokenRequest API.
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
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenRequestStatus};
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
}

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            bearer_token: "testkit-kube-bearer-0123456789abcdef".to_string(),
            service_accounts: vec![("default".to_string(), "default".to_string())],
            forbidden_namespaces: vec!["forbidden".to_string()],
            tls: false,
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
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` (a free port) on the current tokio
    /// runtime.
    pub async fn start(config: StandInConfig) -> anyhow::Result<StandIn> {
        let scheme = if config.tls { "https" } else { "http" };
        #[cfg(feature = "tls")]
        let (ca_pem, tls) = if config.tls {
            let ca = crate::tls::TestCa::try_new()?;
            (Some(ca.ca_pem().to_string()), Some(ca.server_config()?))
        } else {
            (None, None)
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
    let route = route(parts.uri.path());
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
