//! `cloudsmith-gen serve`: the door for ESO's Webhook generator.
//!
//! ESO's `Webhook` generator POSTs to a URL with headers templated from Secrets and
//! turns the keys of the JSON answer into the keys of the target Secret. This door
//! answers `POST /v1/namespaces/{namespace}/generators/{name}` with ESO's
//! `{"auth", "expiry"}`, so an ExternalSecret keeps the seed's dockerconfigjson
//! template while the generator runs sandboxed here.
//!
//! A request goes through [`pipeline`]: path and method (400/405), TokenReview (401),
//! the namespace rule or a SubjectAccessReview (403), the caller's rate limit (429), the
//! body (413), the generator by name (422), a place in the queue for the sandbox (503),
//! then the mint port: the binary hands `serve` its pooled [`crate::mint::Minter`], as it
//! does every door. The module's parts:
//! - this file: the lifecycle (start, wiring, stop on SIGTERM or SIGINT);
//! - [`connections`]: accepting, admitting, TLS, HTTP/1.1, the graceful stop;
//! - [`pipeline`]: one request's way, over a [`crate::mint::Mint`] and an
//!   [`access::Reviewer`] (the two seams its tests fake);
//! - [`classify`]: statuses, cases and Retry-After; [`log`]: the JSON log;
//! - [`access`], [`reviews`], [`rate`]: who may ask, and how often;
//! - [`catalog`], [`reload`], [`tls`]: what is read from files, and read again;
//! - [`metrics`]: the Prometheus exposition.
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
mod classify;
mod connections;
mod log;
mod metrics;
mod pipeline;
mod rate;
mod reload;
mod reviews;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::net::TcpListener;

use cloudsmith_gen::token_source::KubernetesTokenSource;
use cloudsmith_gen::TokenSource;

use self::catalog::Catalog;
use self::log::log;
use self::pipeline::Server;
use self::tls::Tls;
use crate::failure::Failure;
use crate::mint::Mint;
use crate::setup::RuntimeConfig;

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

/// Runs the server until SIGTERM or SIGINT, minting through `minter` (the binary's
/// pooled [`crate::mint::Minter`]).
pub async fn run<M: Mint + Send + 'static>(args: ServeConfig, minter: M) -> Result<(), Failure> {
    // Every line on stderr is a JSON log line: serve's, the loader's warnings, kube's
    // and hyper's events.
    log::init();
    crate::setup::warn_as_json();
    let catalog = Catalog::load(args.manifests.clone()).map_err(Failure::Usage)?;
    let client = kube_client(args.kubeconfig.as_deref())
        .await
        .map_err(Failure::Usage)?;
    let tokens: Arc<dyn TokenSource> =
        Arc::new(KubernetesTokenSource::with_client(client.clone()).with_timeout(args.kube_timeout));
    // A bad component fails the start, not the first call.
    minter.ready().await?;
    let tls = match &args.tls {
        Some((cert, key)) => Some(Tls::load(cert, key).map_err(Failure::Usage)?),
        None => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))
        .map_err(Failure::Usage)?;
    let addr = listener.local_addr().map_err(|e| Failure::Other(e.into()))?;

    let server = Arc::new(Server::new(&args, minter, tokens, catalog, client, tls));
    let mut names: Vec<String> = server.catalog.generators().keys().cloned().collect();
    names.sort();
    log(
        "info",
        "listening",
        json!({"address": addr.to_string(), "tls": server.tls.is_some(), "generators": names,
               "slots": args.max_concurrent_calls}),
    );

    let reloader = tokio::spawn(reload::reload_loop(server.clone(), args.reload_interval));
    let stop = shutdown_signal().map_err(Failure::Other)?;
    connections::serve(listener, server.clone(), stop, args.shutdown_timeout).await;
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
