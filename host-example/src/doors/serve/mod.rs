//! `cloudsmith-gen serve`: the door for ESO's Webhook generator.
//!
//! ESO's `Webhook` generator POSTs to a URL with headers templated from Secrets and
//! turns the keys of the JSON answer into the keys of the target Secret. This door
//! answers `POST /v1/namespaces/{namespace}/generators/{name}` with ESO's
//! `{"auth", "expiry"}`, so an ExternalSecret keeps the seed's dockerconfigjson
//! template while the generator runs sandboxed here.
//!
//! A request goes, in order (each step's refusal costs less than the next step):
//! 1. path and method (400/405; health and metrics paths need no token);
//! 2. `Authorization: Bearer` checked with TokenReview (401), then the namespace rule
//!    or a SubjectAccessReview (403): see [`access`]; nothing is minted before this;
//! 3. the caller's rate limit (429) and the request body's size (413);
//! 4. the generator by name (422), then the sandboxed call on the pooled engine, whose
//!    slots bound the calls at once; a bounded queue waits for them (503 when full).
//!
//! No answer is 404: ESO's Webhook generator reads 404 as "no secret"
//! (providers/v1/webhook/pkg/webhook/webhook.go, executeRequest), and an ExternalSecret
//! with `deletionPolicy: Delete` then deletes its Secret; a typo in a URL must fail the
//! sync instead (ESO reads every status but 2xx, 304 and 404 as an error).
//!
//! Health checks and metrics never wait for a slot or for Cloudsmith: they are answered
//! from memory on their own connection tasks.

mod access;
mod catalog;
mod metrics;
mod rate;
mod reviews;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use host_example::secret::{one_line, shown};
use host_example::token_source::KubernetesTokenSource;
use host_example::{Error, GenerateError, HostError, NamespacePolicy, TokenSource};

use self::access::{Access, Refusal};
use self::catalog::{Catalog, Reload};
use self::metrics::Metrics;
use self::rate::RateLimiter;
use self::tls::Tls;
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, Minter, TokenChoice};
use crate::setup::RuntimeConfig;

/// The first pause after a failed accept, and the longest: Go's net/http waits 5 ms,
/// doubling to 1 s (go1.26 `src/net/http/server.go`, `(*Server).Serve`, `tempDelay`).
/// Accepting fails when the process is out of file descriptors, and retrying at once
/// only spins a core until one is freed.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The next pause after a failed accept, given the last (zero: none since a success).
fn accept_pause(last: Duration) -> Duration {
    if last.is_zero() {
        ACCEPT_PAUSE_MIN
    } else {
        (last * 2).min(ACCEPT_PAUSE_MAX)
    }
}

/// Retry-After for an upstream failure or a full queue, in seconds.
const RETRY_UPSTREAM_SECONDS: u64 = 10;
/// Retry-After for a Cloudsmith rate limit that named no wait, in seconds.
const RETRY_RATE_LIMITED_SECONDS: u64 = 60;

/// `serve`'s configuration (its flags).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// HTTPS certificate chain and key (PEM); `None` serves plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The generator manifests.
    pub manifests: Vec<std::path::PathBuf>,
    /// How often to check the manifests (and TLS files) for changes.
    pub reload_interval: Duration,
    /// Kubeconfig for TokenRequest, TokenReview and SubjectAccessReview.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Audiences callers' tokens must carry; empty: the API server's own.
    pub audiences: Vec<String>,
    /// Sandbox slots (the pooled engine's).
    pub max_concurrent_calls: u32,
    /// Calls that may wait for a slot.
    pub max_queued_calls: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Bound on a TLS handshake, on a request's headers (and an idle keep-alive
    /// connection's next ones), and on its body.
    pub read_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long an authenticating TokenReview (and a SubjectAccessReview) is reused.
    pub review_cache_ttl: Duration,
    /// Bound on each TokenReview, SubjectAccessReview and TokenRequest.
    pub kube_timeout: Duration,
    /// Reviews that may be in flight at once.
    pub max_pending_reviews: usize,
    /// Requests per second per caller (0: off).
    pub rate_limit: f64,
    /// Requests a caller may make at once before the rate applies.
    pub rate_burst: u32,
    /// How long calls in flight may take after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The sandbox, policy and component; its deadline bounds each call from arrival.
    pub runtime: RuntimeConfig,
}

/// Everything a request handler shares.
struct Server<M> {
    minter: M,
    /// Mints tokens for the manifests' service accounts, with this server's client.
    tokens: Arc<dyn TokenSource>,
    catalog: Catalog,
    access: Access,
    limiter: RateLimiter,
    metrics: Metrics,
    max_body_bytes: usize,
    /// `--read-timeout`.
    read_timeout: Duration,
    /// Places for open connections.
    connections: Arc<tokio::sync::Semaphore>,
    /// Places for calls waiting for or holding a sandbox slot: the slots and the
    /// queue. A place is a permit, given back when the call ends or is dropped.
    places: Arc<tokio::sync::Semaphore>,
    /// `--timeout`: one call's bound, the wait for a sandbox slot included.
    call_bound: Duration,
    stopping: AtomicBool,
    /// HTTPS settings, re-read with the manifests; `None` serves plain HTTP.
    tls: Option<Tls>,
}

type HttpResponse = Response<Full<Bytes>>;

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServeConfig, verbose: bool) -> Result<(), Failure> {
    // Every line on stderr is a JSON log line, the loader's warnings included.
    crate::setup::warn_as_json();
    let catalog = Catalog::load(args.manifests.clone()).map_err(Failure::Usage)?;
    let client = kube_client(args.kubeconfig.as_deref())
        .await
        .map_err(Failure::Usage)?;
    let tokens: Arc<dyn TokenSource> =
        Arc::new(KubernetesTokenSource::with_client(client.clone()).with_timeout(args.kube_timeout));
    let minter = Minter::pooled(args.runtime.clone(), args.max_concurrent_calls, verbose);
    // A bad component fails the start, not the first call.
    minter.prepare(tokens.clone()).await?;
    let tls = match &args.tls {
        Some((cert, key)) => Some(Tls::load(cert, key).map_err(Failure::Usage)?),
        None => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))
        .map_err(Failure::Usage)?;
    let addr = listener.local_addr().map_err(|e| Failure::Other(e.into()))?;

    let metrics = Metrics::default();
    metrics.reload(Some(catalog.generators().len()));
    let server = Arc::new(Server {
        minter,
        tokens,
        catalog,
        access: Access::new(
            client,
            args.audiences.clone(),
            args.kube_timeout,
            args.max_pending_reviews,
            args.review_cache_ttl,
        ),
        limiter: RateLimiter::new(args.rate_limit, args.rate_burst),
        metrics,
        max_body_bytes: args.max_body_bytes,
        read_timeout: args.read_timeout,
        connections: Arc::new(tokio::sync::Semaphore::new(args.max_connections.max(1))),
        places: Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrent_calls as usize + args.max_queued_calls,
        )),
        call_bound: args.runtime.limits.deadline,
        stopping: AtomicBool::new(false),
        tls,
    });
    let mut names: Vec<String> = server.catalog.generators().keys().cloned().collect();
    names.sort();
    log(
        "info",
        "listening",
        json!({"address": addr.to_string(), "tls": server.tls.is_some(), "generators": names,
               "slots": args.max_concurrent_calls}),
    );

    let reloader = tokio::spawn(reload_loop(server.clone(), args.reload_interval));
    let stop = shutdown_signal().map_err(Failure::Other)?;
    serve(listener, server.clone(), stop, args.shutdown_timeout).await;
    reloader.abort();
    log("info", "stopped", json!({}));
    Ok(())
}

/// The Kubernetes client for reviews and token requests.
async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found (give --kubeconfig, or run in a cluster)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Accepts connections until `stop`, then lets each finish its request in flight (up to
/// `grace`) and returns.
async fn serve<M: Mint + Send + 'static>(
    listener: TcpListener,
    server: Arc<Server<M>>,
    stop: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    // After a failed accept, a pause before the next (see `accept_pause`).
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let (mut paused, mut last_pause) = (false, Duration::ZERO);
    loop {
        tokio::select! {
            accepted = listener.accept(), if !paused => match accepted {
                Ok((stream, peer)) => {
                    last_pause = Duration::ZERO;
                    admit(stream, peer, &server, &mut connections, &stopping_rx);
                }
                Err(e) => {
                    server.metrics.accept_error();
                    last_pause = accept_pause(last_pause);
                    // One line per burst: the first failure, and each at the longest pause.
                    if last_pause == ACCEPT_PAUSE_MIN || last_pause == ACCEPT_PAUSE_MAX {
                        log(
                            "warn",
                            "accepting a connection failed: pausing",
                            json!({"error": one_log_line(&e.to_string()),
                                   "pause_ms": last_pause.as_millis() as u64}),
                        );
                    }
                    pause.as_mut().reset(tokio::time::Instant::now() + last_pause);
                    paused = true;
                }
            },
            () = &mut pause, if paused => paused = false,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    server.stopping.store(true, Ordering::SeqCst);
    log(
        "info",
        "stopping",
        json!({"connections": connections.len(), "calls_in_flight": server.metrics.in_flight_now(),
               "grace_seconds": grace.as_secs_f64()}),
    );
    let _ = stopping_tx.send(true);
    let drained =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log(
            "warn",
            "grace period over: abandoning connections",
            json!({"connections": connections.len()}),
        );
        connections.abort_all();
    }
}

/// A connection in, within `--max-connections`: served on a task of its own; past the
/// bound, answered 503 (plain HTTP) or closed (TLS) at once, without a task. Idle and
/// slow connections are closed by the read timeout, so the places come back.
fn admit<M: Mint + Send + 'static>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    server: &Arc<Server<M>>,
    connections: &mut JoinSet<()>,
    stopping: &watch::Receiver<bool>,
) {
    let Ok(place) = server.connections.clone().try_acquire_owned() else {
        server.metrics.connection_refused();
        if server.tls.is_none() {
            // Never waits: a fresh socket's buffer takes these few bytes, or they are lost.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS.as_bytes());
        }
        return;
    };
    let _ = stream.set_nodelay(true);
    let server = server.clone();
    let stopping = stopping.clone();
    connections.spawn(async move {
        let _place = place;
        let _open = server.metrics.connection();
        connection(stream, peer, server.clone(), stopping).await;
    });
}

/// The answer to a connection past `--max-connections`.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
    content-length: 85\r\n\r\n\
    {\"error\":{\"case\":\"busy\",\"message\":\"too many connections open at once: retry later\"}}\n";

async fn connection<M: Mint + Send + 'static>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    server: Arc<Server<M>>,
    stopping: watch::Receiver<bool>,
) {
    let Some(config) = server.tls.as_ref().map(Tls::config) else {
        return http(TokioIo::new(stream), peer, server, stopping).await;
    };
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    // A failed or stalled handshake is the client's problem (and not logged: a port
    // scan must not flood the log).
    if let Ok(Ok(stream)) = tokio::time::timeout(server.read_timeout, accepting).await {
        http(TokioIo::new(stream), peer, server, stopping).await;
    }
}

async fn http<I, M>(io: I, peer: SocketAddr, server: Arc<Server<M>>, mut stopping: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    M: Mint + Send + 'static,
{
    let read_timeout = server.read_timeout;
    let service = service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(handle(&server, req, peer).await) }
    });
    // hyper 1.12 starts the header timeout whenever it waits for a request's head, so
    // it also closes a keep-alive connection left idle (`proto/h1/conn.rs`,
    // `poll_read_head`).
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let stop = async move {
        while !*stopping.borrow_and_update() {
            if stopping.changed().await.is_err() {
                // The server is gone without a stop: nothing to wait for.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop => {
            // Finish the request in flight, answer it, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

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

async fn handle<M: Mint>(server: &Server<M>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
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
            "text/plain; version=0.0.4",
            server.metrics.render() + &server.access.render_metrics(),
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
async fn generate<M: Mint>(
    server: &Server<M>,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> (HttpResponse, Option<String>, String) {
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
            let (status, case, message) = refusal_parts(refusal);
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
        let (status, case, message) = refusal_parts(refusal);
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
            let body = host_example::output::eso_json(&minted.credentials);
            (text(StatusCode::OK, "application/json", body), "ok".to_string())
        }
        Err(failure) => {
            let (status, case, retry) = classify(&failure);
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

fn refusal_parts(refusal: Refusal) -> (StatusCode, &'static str, String) {
    match refusal {
        Refusal::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
        Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
        Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        Refusal::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, "busy", m),
    }
}

/// The status, case and Retry-After of a failed call, by the classification every door
/// shares ([`Failure`]). The cases are the WIT `generate-error` cases; host failures have
/// their own names.
fn classify(failure: &Failure) -> (StatusCode, &'static str, Option<u64>) {
    let e = match failure {
        Failure::Call(e) => e,
        Failure::OutOfTime(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline-exceeded",
                Some(RETRY_UPSTREAM_SECONDS),
            )
        }
        // The component or the configuration: the operator's to fix, not the caller's.
        // (serve fetches a registry's component at start, so a call never meets Registry.)
        Failure::Usage(_) | Failure::Other(_) | Failure::Registry(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
        }
    };
    match e {
        Error::Generate(g) => match g {
            GenerateError::InvalidSpec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", None),
            // The spec names a host or scheme this server will not reach: fix the manifest.
            GenerateError::PolicyDenied { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy-denied", None),
            // The TokenRequest for the manifest's service account failed (no such
            // account in the namespace, or this server may not mint for it).
            GenerateError::TokenSource(_) => (StatusCode::BAD_GATEWAY, "token-source", None),
            GenerateError::Unauthorized(_) => (StatusCode::BAD_GATEWAY, "unauthorized", None),
            GenerateError::Rejected(_) => (StatusCode::BAD_GATEWAY, "rejected", None),
            GenerateError::InvalidToken(_) => (StatusCode::BAD_GATEWAY, "invalid-token", None),
            GenerateError::RateLimited {
                retry_after_seconds, ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limited",
                Some(
                    retry_after_seconds
                        .map_or(RETRY_RATE_LIMITED_SECONDS, u64::from)
                        .max(1),
                ),
            ),
            GenerateError::Upstream { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
        },
        Error::Host(h) => match h {
            // The Kubernetes API did not answer the TokenRequest in time (--kube-timeout).
            HostError::TokenSourceUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
            HostError::DeadlineExceeded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline-exceeded",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
            HostError::MemoryLimitExceeded { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "memory-limit-exceeded", None)
            }
            HostError::SandboxLimitExceeded(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "sandbox-limit-exceeded", None)
            }
            HostError::Trap(_) => (StatusCode::INTERNAL_SERVER_ERROR, "trap", None),
            HostError::Instantiate(_) => (StatusCode::INTERNAL_SERVER_ERROR, "instantiate", None),
            HostError::InvalidOutput(_) => (StatusCode::INTERNAL_SERVER_ERROR, "invalid-output", None),
        },
    }
}

/// Checks the manifests (and the TLS files) every `interval` and swaps in a changed,
/// valid set.
async fn reload_loop<M>(server: Arc<Server<M>>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match server.catalog.reload() {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Loaded(names)) => {
                server.metrics.reload(Some(names.len()));
                log("info", "manifests reloaded", json!({"generators": names}));
            }
            Err(e) => {
                server.metrics.reload(None);
                log(
                    "error",
                    "manifests not reloaded: keeping the previous generators",
                    json!({"error": one_log_line(&format!("{e:#}"))}),
                );
            }
        }
        match server.tls.as_ref().map(Tls::reload) {
            Some(Ok(true)) => log("info", "TLS certificate reloaded", json!({})),
            Some(Err(e)) => log(
                "error",
                "TLS certificate not reloaded: keeping the previous one",
                json!({"error": one_log_line(&format!("{e:#}"))}),
            ),
            _ => {}
        }
    }
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

/// A message or log field: one line, nothing shaped like a token, bounded.
fn one_log_line(text: &str) -> String {
    one_line(text, 1000)
}

/// One JSON log line on stderr: `ts` (UNIX seconds), `level`, `msg`, then `fields`.
/// Callers never pass a token; string fields are redacted all the same.
fn log(level: &str, msg: &str, fields: Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = json!({"ts": (ts * 1000.0).round() / 1000.0, "level": level, "msg": msg});
    if let (Value::Object(line), Value::Object(fields)) = (&mut line, fields) {
        for (k, v) in fields {
            let v = match v {
                Value::String(s) => Value::String(one_log_line(&s)),
                other => other,
            };
            line.insert(k, v);
        }
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn accept_pauses_double_from_5ms_to_1s_as_go_does() {
        let mut pause = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            pause = accept_pause(pause);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(TOO_MANY_CONNECTIONS.split("\r\n\r\n").nth(1).unwrap().len(), 85);
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

    #[test]
    fn statuses_follow_the_contract() {
        let status = |e: GenerateError| classify(&Failure::Call(Error::Generate(e))).0.as_u16();
        let upstream = host_example::UpstreamStatus {
            status: 401,
            detail: String::new(),
            token: None,
        };
        assert_eq!(status(GenerateError::InvalidSpec(String::new())), 422);
        assert_eq!(status(GenerateError::Unauthorized(upstream.clone())), 502);
        assert_eq!(status(GenerateError::Rejected(upstream)), 502);
        assert_eq!(status(GenerateError::InvalidToken(String::new())), 502);
        let limited = classify(&Failure::Call(Error::Generate(GenerateError::RateLimited {
            retry_after_seconds: Some(7),
            detail: String::new(),
        })));
        assert_eq!((limited.0.as_u16(), limited.2), (503, Some(7)));
        let failing = classify(&Failure::Call(Error::Generate(GenerateError::Upstream {
            status: None,
            detail: String::new(),
            attempts: 3,
            host_note: None,
        })));
        assert_eq!((failing.0.as_u16(), failing.1), (503, "upstream"));
        assert_eq!(classify(&Failure::usage("bad component")).0.as_u16(), 500);
    }
}
