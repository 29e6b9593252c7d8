//! `cloudsmith-gen serve` (issue 11) under load, against a native baseline behind the
//! same HTTP interface.
//!
//! Both servers answer `POST /v1/namespaces/{ns}/generators/{name}` with ESO's
//! `{"auth", "expiry"}`, and both do the same work per request, in the same order:
//! TokenReview of the caller's bearer token, the own-namespace check, a TokenRequest for
//! the manifest's service account, then the exchange with Cloudsmith. The stand-ins
//! (Kubernetes API and Cloudsmith) run on threads of their own in the bench process.
//!
//! - **serve**: the binary as a process (`CLOUDSMITH_GEN`), per-caller rate limit off,
//!   64 sandbox slots, with its kube client (keep-alive pool to the API server).
//! - **native**: a plain hyper 1 server on its own 2-worker tokio runtime, the same
//!   shape as serve's; it calls the Kubernetes API with plain hyper (a fresh connection
//!   per call, as [`crate::transport`] does) and exchanges with the bench's
//!   [`NativeClient`]. No sandbox, no metrics, no logs, no limits.
//!
//! Clients keep their connections alive (one per concurrent task, as ESO's HTTP client
//! keeps them), and every answer must be a 200 carrying the `auth` the stand-ins imply.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, PRODUCTION_AUDIENCE};
use testkit::kubernetes;
use testkit::process::Listening;
use tokio::net::TcpListener;

use crate::load::{self, LoadRun};
use crate::native::NativeClient;
use crate::report::{human, Report};
use crate::standin::{ServiceThread, StandInThread};
use crate::{ORG, SERVICE};

const NAMESPACE: &str = "bench";
/// The generator's service account, minted for by TokenRequest.
const ACCOUNT: &str = "bench";
/// The caller: ESO's service account token, from a Secret in the same namespace.
const CALLER: &str = "system:serviceaccount:bench:eso";
const GENERATOR: &str = "bench";
const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// A request body is ESO's Webhook `body`; the bench sends none.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How many calls per level and round.
pub struct Counts {
    /// Recorded calls per server, level and round.
    pub calls: usize,
    /// Rounds per level (order alternated between rounds).
    pub rounds: usize,
    /// Unrecorded calls per server and level before the first round.
    pub warmup: usize,
}

/// Runs both servers at every concurrency level and records the rows (and the
/// points, under `serve_load`, apart from the plot's).
pub fn measure(
    cloudsmith_gen: &Path,
    standin: &StandInThread,
    counts: &Counts,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Why the Kubernetes stand-in: the benchmark compares two servers' own cost per
    // call; a real API server on the same two cores would add its own time, varying
    // with its load, to every review and TokenRequest being compared.
    let kube = ServiceThread::start("kubernetes stand-in", || {
        kubernetes::StandIn::start(
            kubernetes::StandInConfig::default().with_service_account(NAMESPACE, ACCOUNT),
        )
    })?;
    let work = std::env::temp_dir().join(format!("cloudsmith-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = measure_in(cloudsmith_gen, standin, kube.service(), &work, counts, report);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure_in(
    cloudsmith_gen: &Path,
    standin: &StandInThread,
    kube: &kubernetes::StandIn,
    work: &Path,
    counts: &Counts,
    report: &mut Report,
) -> anyhow::Result<()> {
    let manifest = crate::manifest(GENERATOR, &standin.url, ACCOUNT, Some(&[PRODUCTION_AUDIENCE]));
    let exp = standin.service().config().token_exp;
    let expected = auth_for(&access_token_for(
        &format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}"),
        ORG,
        SERVICE,
        exp,
    ));
    let caller_token = testkit::oidc::token(CALLER, &[testkit::oidc::ISSUER]);

    let served = ServeProcess::start(cloudsmith_gen, standin, kube, &manifest, work)?;
    let native = NativeServer::start(kube, &manifest)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let path = format!("/v1/namespaces/{NAMESPACE}/generators/{GENERATOR}");
    let clients = [
        (
            "native hyper server",
            Client::new(native.addr, &path, &caller_token),
        ),
        (
            "cloudsmith-gen serve",
            Client::new(served.addr(), &path, &caller_token),
        ),
    ];
    runtime.block_on(async {
        for (name, client) in &clients {
            let auth = client
                .call()
                .await
                .with_context(|| format!("{name}: first call"))?;
            ensure!(auth == expected, "{name}: wrong auth");
        }
        for concurrency in CONCURRENCY {
            let mut runs: Vec<Option<LoadRun>> = vec![None, None];
            for round in 0..counts.rounds {
                let mut order = [0, 1];
                if round % 2 == 1 {
                    order.reverse();
                }
                for i in order {
                    let client = clients[i].1.clone();
                    let op = move || {
                        let client = client.clone();
                        async move { client.call().await.map(drop) }
                    };
                    if round == 0 && counts.warmup > 0 {
                        load::run(standin, concurrency, counts.warmup, op.clone()).await?;
                    }
                    let run = load::run(standin, concurrency, counts.calls, op).await?;
                    runs[i] = Some(match runs[i].take() {
                        Some(so_far) => so_far.merge(run),
                        None => run,
                    });
                }
            }
            let [Some(native_run), Some(serve_run)] = [runs[0].take(), runs[1].take()] else {
                bail!("a server did not run");
            };
            record(report, &native_run, &serve_run);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(runtime);
    served.check_alive()?;
    Ok(())
}

fn record(report: &mut Report, native: &LoadRun, serve: &LoadRun) {
    let section = format!(
        "serve (ESO Webhook) vs native server, concurrency {}",
        native.concurrency
    );
    for (name, run) in [("native hyper server", native), ("cloudsmith-gen serve", serve)] {
        report.serve_load(name, run);
        report.row(
            &section,
            &format!("{name}: p50 / p99"),
            format!("{} / {}", human(run.quantile(0.5)), human(run.quantile(0.99))),
            "",
        );
        report.row(
            &section,
            &format!("{name}: throughput ({} calls)", run.latencies.len()),
            format!("{:.0} /s", run.throughput()),
            "",
        );
    }
    let ratio = |f: &dyn Fn(&LoadRun) -> f64| f(serve) / f(native);
    report.row(
        &section,
        "serve / native: p50",
        format!("{:.2}×", ratio(&|r| r.quantile(0.5).as_secs_f64())),
        "",
    );
    report.row(
        &section,
        "serve / native: p99",
        format!("{:.2}×", ratio(&|r| r.quantile(0.99).as_secs_f64())),
        "",
    );
    report.row(
        &section,
        "serve / native: throughput",
        format!("{:.2}×", ratio(&|r| r.throughput())),
        "",
    );
}

/// A keep-alive HTTP/1.1 client: a pool of open connections, one per task in flight.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    path: Arc<str>,
    authorization: Arc<str>,
    pool: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Client {
    fn new(addr: SocketAddr, path: &str, token: &str) -> Client {
        Client {
            addr,
            path: path.into(),
            authorization: format!("Bearer {token}").into(),
            pool: Arc::default(),
        }
    }

    /// One POST, as ESO's Webhook generator sends it; returns the answer's `auth`.
    async fn call(&self) -> anyhow::Result<String> {
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => crate::transport::connect(&self.addr.to_string()).await?,
        };
        sender.ready().await?;
        let request = Request::post(&*self.path)
            .header("host", self.addr.to_string())
            .header("authorization", &*self.authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(
            status == StatusCode::OK,
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        );
        self.pool.lock().expect("pool lock").push(sender);
        let answer: Value = serde_json::from_slice(&body)?;
        answer["auth"]
            .as_str()
            .map(str::to_string)
            .context("no auth in the answer")
    }
}

/// `cloudsmith-gen serve` as a child process; killed on drop.
struct ServeProcess(Listening);

impl ServeProcess {
    fn start(
        bin: &Path,
        standin: &StandInThread,
        kube: &kubernetes::StandIn,
        manifest: &str,
        work: &Path,
    ) -> anyhow::Result<ServeProcess> {
        let manifest_file = work.join("generators.json");
        std::fs::write(&manifest_file, manifest)?;
        let kubeconfig = kube.write_kubeconfig(work)?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--manifest"])
            .arg(&manifest_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--allow-host",
                &format!("127.0.0.1:{}", standin.port),
                "--allow-http",
            ])
            .arg("--cache-dir")
            .arg(work.join("compiled"))
            // The per-caller limit would throttle the load itself (one caller here).
            .args(["--rate-limit", "0", "--max-concurrent-calls", "64"])
            .env_remove("RUST_LOG");
        let server = Listening::try_start(command, Duration::from_secs(120))
            .with_context(|| format!("starting {} serve", bin.display()))?;
        // The per-request log lines are read (the server never blocks on a full pipe),
        // not kept.
        server.forget_log();
        Ok(ServeProcess(server))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Fails if the server exited during the run (a crash would void the figures).
    fn check_alive(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.0.exited() {
            bail!("cloudsmith-gen serve exited during the run: {status}");
        }
        Ok(())
    }
}

/// The native baseline server, on its own 2-worker runtime (serve's shape on 2 cores).
struct NativeServer {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

/// What the native server's handler needs.
struct Native {
    kube_authority: String,
    kube_bearer: String,
    manifest: String,
}

impl NativeServer {
    fn start(kube: &kubernetes::StandIn, manifest: &str) -> anyhow::Result<NativeServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("native-server")
            .enable_all()
            .build()?;
        let native = Arc::new(Native {
            kube_authority: kube.url().trim_start_matches("http://").to_string(),
            kube_bearer: kube.bearer_token().to_string(),
            manifest: manifest.to_string(),
        });
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let native = native.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let native = native.clone();
                        async move { Ok::<_, Infallible>(native.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(NativeServer {
            addr,
            _runtime: runtime,
        })
    }
}

impl Native {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.generate(request).await {
            Ok(body) => answer(StatusCode::OK, body),
            Err((status, message)) => answer(status, json!({"error": {"message": message}})),
        }
    }

    /// The same steps as serve, in the same order.
    async fn generate(&self, request: Request<Incoming>) -> Result<Value, (StatusCode, String)> {
        let internal = |e: anyhow::Error| (StatusCode::BAD_GATEWAY, format!("{e:#}"));
        let path = request.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["v1", "namespaces", namespace, "generators", GENERATOR] = parts.as_slice() else {
            return Err((StatusCode::NOT_FOUND, "unknown path or generator".into()));
        };
        let namespace = namespace.to_string();
        let token = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
            .ok_or((StatusCode::UNAUTHORIZED, "no bearer token".into()))?;
        Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
        let review = self
            .kube(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}),
            )
            .await
            .map_err(internal)?;
        let user = review["status"]["user"]["username"].as_str().unwrap_or_default();
        if review["status"]["authenticated"] != json!(true) {
            return Err((StatusCode::UNAUTHORIZED, "not authenticated".into()));
        }
        if user.split(':').nth(2) != Some(namespace.as_str()) {
            return Err((StatusCode::FORBIDDEN, "another namespace".into()));
        }
        let minted = self
            .kube(
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{ACCOUNT}/token"),
                json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": [PRODUCTION_AUDIENCE], "expirationSeconds": 600},
                }),
            )
            .await
            .map_err(internal)?;
        let oidc_token = minted["status"]["token"]
            .as_str()
            .ok_or_else(|| internal(anyhow!("no token in the TokenRequest answer")))?;
        let outputs = NativeClient::new(&self.manifest, &namespace, oidc_token)
            .generate()
            .await
            .map_err(internal)?;
        let mut body = serde_json::Map::new();
        for (key, value) in outputs {
            body.insert(key, Value::String(String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(Value::Object(body))
    }

    /// A POST to the Kubernetes API stand-in; its JSON answer (2xx only).
    async fn kube(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let request = Request::post(path)
            .header("host", &self.kube_authority)
            .header("authorization", format!("Bearer {}", self.kube_bearer))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = crate::transport::send(&self.kube_authority, request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        ensure!(status.is_success(), "{path}: {status}");
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Where `cloudsmith-gen` is: `CLOUDSMITH_GEN`, else the release build.
pub fn cloudsmith_gen_path() -> PathBuf {
    std::env::var_os("CLOUDSMITH_GEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::workspace_root().join("target/release/cloudsmith-gen"))
}
