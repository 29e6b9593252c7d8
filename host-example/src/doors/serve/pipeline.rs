//! A request's way through `serve`, in order (each step's refusal costs less than the
//! next step's):
//! 1. path and method (400/405; health and metrics paths need no token);
//! 2. `Authorization: Bearer` checked with TokenReview (401), then the namespace rule or a
//!    SubjectAccessReview (403): see [`super::access`]; nothing is minted before this;
//! 3. the caller's rate limit (429), then the request body's size (413) and time (408);
//! 4. the generator by name (422), a place among the calls in the sandbox or queued for
//!    it (503), then the mint port, within the call's bound.
//!
//! Every answer is `no-store`; an error is `{"error": {"case", "message"}}` with the
//! status and Retry-After of [`super::classify`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use cloudsmith_gen::secret::shown;
use cloudsmith_gen::{Error, HostError, NamespacePolicy, TokenSource};

use super::access::{Access, Reviewer};
use super::catalog::Catalog;
use super::classify::{self, RETRY_UPSTREAM_SECONDS};
use super::log::{log, one_log_line};
use super::metrics::{self, Metrics};
use super::rate::RateLimiter;
use super::tls::Tls;
use super::ServeConfig;
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, TokenChoice};

/// Everything a request handler shares.
pub struct Server<M, R> {
    pub(super) minter: M,
    /// Mints tokens for the manifests' service accounts, with this server's client.
    pub(super) tokens: Arc<dyn TokenSource>,
    pub(super) catalog: Catalog,
    pub(super) access: Access<R>,
    pub(super) limiter: RateLimiter,
    pub(super) metrics: Metrics,
    pub(super) max_body_bytes: usize,
    /// `--read-timeout`.
    pub(super) read_timeout: Duration,
    /// Places for open connections.
    pub(super) connections: Arc<tokio::sync::Semaphore>,
    /// Places for calls waiting for or holding a sandbox slot: the slots and the
    /// queue. A place is a permit, given back when the call ends or is dropped.
    pub(super) places: Arc<tokio::sync::Semaphore>,
    /// `--timeout`: one call's bound, the wait for a sandbox slot included.
    pub(super) call_bound: Duration,
    pub(super) stopping: AtomicBool,
    /// HTTPS settings, re-read with the manifests; `None` serves plain HTTP.
    pub(super) tls: Option<Tls>,
}

impl<M: Mint, R: Reviewer> Server<M, R> {
    /// A server for `config`, minting through `minter` with `tokens` for the manifests'
    /// service accounts, and reviewing callers with `reviewer`.
    pub fn new(
        config: &ServeConfig,
        minter: M,
        tokens: Arc<dyn TokenSource>,
        catalog: Catalog,
        reviewer: R,
        tls: Option<Tls>,
    ) -> Self {
        let metrics = Metrics::default();
        metrics.reload(Some(catalog.generators().len()));
        Server {
            minter,
            tokens,
            catalog,
            access: Access::new(
                reviewer,
                config.audiences.clone(),
                config.kube_timeout,
                config.max_pending_reviews,
                config.review_cache_ttl,
            ),
            limiter: RateLimiter::new(config.rate_limit, config.rate_burst),
            metrics,
            max_body_bytes: config.max_body_bytes,
            read_timeout: config.read_timeout,
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
            places: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_calls as usize + config.max_queued_calls,
            )),
            call_bound: config.runtime.limits.deadline,
            stopping: AtomicBool::new(false),
            tls,
        }
    }
}

/// An answer.
pub type HttpResponse = Response<Full<Bytes>>;

/// A request's route.
enum Route {
    Health,
    Ready,
    Metrics,
    Generate { namespace: String, name: String },
}

fn route(path: &str) -> Result<Route, (StatusCode, &'static str, String)> {
    match path {
        "/healthz" | "/livez" => return Ok(Route::Health),
        "/readyz" => return Ok(Route::Ready),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    // 400, not 404: a mistyped Webhook URL must fail ESO's sync, not delete a Secret.
    let not_found = || {
        (
            StatusCode::BAD_REQUEST,
            "unknown-path",
            "no such path: POST /v1/namespaces/{namespace}/generators/{name}".to_string(),
        )
    };
    let rest = path.strip_prefix("/v1/namespaces/").ok_or_else(not_found)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, "generators", name] = parts[..] else {
        return Err(not_found());
    };
    if !is_dns_label(namespace) {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "namespace {:?} is not a Kubernetes namespace name",
                shown(namespace)
            ),
        ));
    }
    if !is_dns_subdomain(name) {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("generator {:?} is not a Kubernetes object name", shown(name)),
        ));
    }
    Ok(Route::Generate {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// RFC 1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what an object name is.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Answers one request: health, readiness and metrics from memory; a generate call
/// through the refusals in order, then the mint port.
pub async fn handle<M, R, B>(server: &Server<M, R>, req: Request<B>, peer: SocketAddr) -> HttpResponse
where
    M: Mint,
    R: Reviewer,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let route = match route(req.uri().path()) {
        Ok(route) => route,
        Err((status, case, message)) => {
            server.metrics.refused(case);
            return error(status, case, &message);
        }
    };
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match route {
        Route::Health | Route::Ready | Route::Metrics if !read_only => {
            server.metrics.refused("method-not-allowed");
            with_header(
                error(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "use GET"),
                "allow",
                "GET, HEAD",
            )
        }
        Route::Health => text(StatusCode::OK, "text/plain", "ok\n".into()),
        Route::Ready => {
            if server.stopping.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n".into())
            } else {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        Route::Metrics => text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            server.metrics.render(server.access.gauges()),
        ),
        Route::Generate { namespace, name } => {
            if req.method() != Method::POST {
                server.metrics.refused("method-not-allowed");
                return with_header(
                    error(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "use POST"),
                    "allow",
                    "POST",
                );
            }
            let _in_flight = server.metrics.arrived();
            let mut pending = Pending {
                metrics: &server.metrics,
                namespace: &namespace,
                name: &name,
                peer,
                started,
                answered: false,
            };
            let (answer, caller, case) = generate(server, req, &namespace, &name).await;
            pending.answered = true;
            let status = answer.status().as_u16();
            // The message the caller was sent: ESO shows only the status, so the log
            // says why (for a refused exchange, the token's claims; never a token).
            let message = answer.extensions().get::<ErrorMessage>().map(|m| m.0.clone());
            log(
                if status < 400 { "info" } else { "warn" },
                "call",
                json!({"namespace": namespace, "generator": name, "caller": caller, "peer": peer.to_string(),
                       "status": status, "case": case, "message": message,
                       "ms": started.elapsed().as_millis() as u64}),
            );
            answer
        }
    }
}

/// A generate call not yet answered. Dropped unanswered (hyper drops the call when its
/// caller hangs up), it leaves a `call` log line with the case `caller-gone` and a count
/// in `cloudsmith_gen_calls_abandoned_total`, so an ESO that gives up is visible.
struct Pending<'a> {
    metrics: &'a Metrics,
    namespace: &'a str,
    name: &'a str,
    peer: SocketAddr,
    started: Instant,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.metrics.abandoned();
        log(
            "warn",
            "call",
            json!({"namespace": self.namespace, "generator": self.name, "peer": self.peer.to_string(),
                   "case": "caller-gone", "ms": self.started.elapsed().as_millis() as u64}),
        );
    }
}

/// The generate route after its method check: the answer, the caller (for the log)
/// and the result case.
async fn generate<M, R, B>(
    server: &Server<M, R>,
    req: Request<B>,
    namespace: &str,
    name: &str,
) -> (HttpResponse, Option<String>, String)
where
    M: Mint,
    R: Reviewer,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let refused = |status, case: &'static str, message: &str, caller: Option<String>| {
        server.metrics.refused(case);
        (error(status, case, message), caller, case.to_string())
    };
    let (parts, body) = req.into_parts();
    let Some(token) = bearer(parts.headers.get(AUTHORIZATION)) else {
        let (answer, caller, case) = refused(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing credentials: send Authorization: Bearer <service account token>",
            None,
        );
        return (with_header(answer, "www-authenticate", "Bearer"), caller, case);
    };
    let caller = match server.access.authenticate(token).await {
        Ok(caller) => caller,
        Err(refusal) => {
            let (status, case, message) = classify::refusal(refusal);
            let (answer, caller, case) = refused(status, case, &message, None);
            let answer = if status == StatusCode::UNAUTHORIZED {
                with_header(answer, "www-authenticate", "Bearer")
            } else {
                with_header(answer, RETRY_AFTER.as_str(), &RETRY_UPSTREAM_SECONDS.to_string())
            };
            return (answer, caller, case);
        }
    };
    let who = Some(caller.username.clone());
    if let Err(refusal) = server.access.authorize(&caller, namespace, name).await {
        let (status, case, message) = classify::refusal(refusal);
        let (answer, who, case) = refused(status, case, &message, who);
        let answer = if status == StatusCode::SERVICE_UNAVAILABLE {
            with_header(answer, RETRY_AFTER.as_str(), &RETRY_UPSTREAM_SECONDS.to_string())
        } else {
            answer
        };
        return (answer, who, case);
    }
    if let Err(wait) = server.limiter.check(&caller.username) {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let (answer, who, case) = refused(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            &format!("rate limit for {}: retry after {seconds}s", caller.username),
            who,
        );
        return (
            with_header(answer, RETRY_AFTER.as_str(), &seconds.to_string()),
            who,
            case,
        );
    }
    // ESO sends the Webhook's templated body; this API reads nothing from it, but it is
    // read (bounded in size and time) so the connection can be reused.
    let reading = Limited::new(body, server.max_body_bytes).collect();
    let Ok(read) = tokio::time::timeout(server.read_timeout, reading).await else {
        return refused(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            &format!(
                "the request body did not arrive within {}s",
                server.read_timeout.as_secs_f64()
            ),
            who,
        );
    };
    if let Err(e) = read {
        let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
        return if too_large {
            refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                &format!("request body larger than {} bytes", server.max_body_bytes),
                who,
            )
        } else {
            refused(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "could not read the request body",
                who,
            )
        };
    }
    // 422, not 404: ESO reads 404 as "no secret" and, with deletionPolicy Delete, would
    // delete the pull Secret because a generator was renamed or mistyped.
    let Some(manifest) = server.catalog.get(name) else {
        return refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-generator",
            &format!("no generator named {name:?} in this server's manifests"),
            who,
        );
    };
    // Held to the end of this function, or dropped with it when the caller hangs up:
    // either way the place is given back.
    let Ok(_place) = server.places.clone().try_acquire_owned() else {
        let (answer, who, case) = refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many calls waiting for the sandbox: retry later",
            who,
        );
        return (
            with_header(answer, RETRY_AFTER.as_str(), &RETRY_UPSTREAM_SECONDS.to_string()),
            who,
            case,
        );
    };

    let started = Instant::now();
    // The guest's deadline starts when it has a slot; ESO's spec.timeout counts the wait
    // too, so the whole call is bounded here, and a queued call is answered 503 (with
    // its case in the log) before ESO hangs up with only "context deadline exceeded".
    let request = MintRequest {
        manifest: manifest.to_string(),
        namespace: namespace.to_string(),
        tokens: TokenChoice::Given {
            source: server.tokens.clone(),
            identity: None,
        },
        namespaces: NamespacePolicy::TargetOnly,
        // No token cache here: nothing to wait for.
        deadline: None,
    };
    let result = tokio::time::timeout(server.call_bound, server.minter.mint(request))
        .await
        .unwrap_or(Err(Failure::Call(Error::Host(HostError::DeadlineExceeded {
            deadline: server.call_bound,
        }))));
    server.metrics.exchange(started.elapsed());
    let (answer, case) = match result {
        Ok(minted) => {
            let body = cloudsmith_gen::output::eso_json(&minted.credentials);
            (text(StatusCode::OK, "application/json", body), "ok".to_string())
        }
        Err(failure) => {
            let (status, case, retry) = classify::failure(&failure);
            let answer = error(status, case, &failure.message());
            let answer = match retry {
                Some(seconds) => with_header(answer, RETRY_AFTER.as_str(), &seconds.to_string()),
                None => answer,
            };
            (answer, case.to_string())
        }
    };
    server.metrics.call(name, namespace, &case);
    (answer, who, case)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// An error answer's message, kept beside it for the `call` log line (extensions are
/// not sent).
#[derive(Clone)]
struct ErrorMessage(String);

/// `{"error": {"case", "message"}}` with `status`.
fn error(status: StatusCode, case: &str, message: &str) -> HttpResponse {
    let message = one_log_line(message);
    let body = json!({"error": {"case": case, "message": message}});
    let mut answer = text(status, "application/json", body.to_string());
    answer.extensions_mut().insert(ErrorMessage(message));
    answer
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Credentials must not land in a shared cache.
    answer
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    answer
}

fn with_header(mut answer: HttpResponse, name: &'static str, value: &str) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(value) {
        answer.headers_mut().insert(name, value);
    }
    answer
}

#[cfg(test)]
mod tests;
