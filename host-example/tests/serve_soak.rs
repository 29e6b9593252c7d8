//! The server soak: many calls through `cloudsmith-gen serve` (a separate process), with
//! the server's resident memory sampled from `/proc/<pid>/status`, so the stand-ins'
//! own memory (in this test process) is never counted.
//!
//! Not part of the default test run (it is `#[ignore]`d); run it with its own command,
//! in the release profile (the server as shipped):
//!
//! ```text
//! SOAK_CALLS=50000 cargo test --release -p cloudsmith-gen --test serve_soak -- --ignored --nocapture
//! ```
//!
//! or, with a release `cloudsmith-gen` already built (the server is what is measured;
//! the driving test's own profile does not matter), without rebuilding the test in
//! release:
//!
//! ```text
//! cargo build --release -p cloudsmith-gen --bin cloudsmith-gen
//! CLOUDSMITH_GEN=target/release/cloudsmith-gen SOAK_CALLS=50000 \
//!     cargo test -p cloudsmith-gen --test serve_soak -- --ignored --nocapture
//! ```
//!
//! 64 client tasks, each on one keep-alive connection (as Go's client reuses them),
//! across four namespaces; one call in eight is refused (another namespace's caller:
//! 403) or fails at Cloudsmith (401 → 502). Every answer is checked against its
//! request. The test fails if the server's RSS grows by 1 MiB or more between 50 % and
//! 100 % of the calls.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::{kubernetes, oidc};

const BIN: &str = env!("CARGO_BIN_EXE_cloudsmith-gen");

/// The server binary: `CLOUDSMITH_GEN` when set (e.g. a release build), else the one
/// cargo built with this test.
fn server_binary() -> String {
    std::env::var("CLOUDSMITH_GEN").unwrap_or_else(|_| BIN.to_string())
}
const CONCURRENCY: usize = 64;
const NAMESPACES: [&str; 4] = ["apps", "team-b", "team-c", "team-d"];
const MAX_GROWTH_BYTES: u64 = 1024 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak: SOAK_CALLS=50000 cargo test --release -p cloudsmith-gen --test serve_soak -- --ignored --nocapture"]
async fn soak() {
    let calls: usize = std::env::var("SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig::default())
        .await
        .unwrap();
    // Why the Kubernetes stand-in: every call brings a caller token never seen before,
    // so serve's review cache never hits and its bound is what is soaked; a real API
    // server would have to mint and review 50,000 tokens on this test's two cores.
    let mut config = kubernetes::StandInConfig::default();
    for ns in NAMESPACES {
        config = config.with_service_account(ns, "cloudsmith-oidc");
    }
    let kube = kubernetes::StandIn::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path()).unwrap();
    let generator = |name: &str, org: &str| {
        format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\nmetadata:\n  name: {name}\n\
             spec:\n  apiHost: \"{}\"\n  orgSlug: {org}\n  serviceSlug: svc\n  serviceAccountRef:\n    name: cloudsmith-oidc\n",
            cloudsmith.url()
        )
    };
    let manifest = dir.path().join("generators.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}",
            generator("ok", "acme"),
            generator("refused", "fail-401")
        ),
    )
    .unwrap();

    let binary = server_binary();
    println!("serve soak: server {binary}");
    let mut child = Command::new(&binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--allow-http",
            "--no-cache",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--allow-host")
        .arg(cloudsmith.authority())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let child = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read every log line (the server must never block on a full pipe).
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["msg"] == "listening" {
                    let _ = tx.send(v["address"].as_str().unwrap().to_string());
                }
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("serve listens")
        .parse()
        .unwrap();

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, done) = (next.clone(), done.clone());
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return;
                }
                let ns = NAMESPACES[i % NAMESPACES.len()];
                // One call in eight: a caller from another namespace (403); one in eight
                // a generator Cloudsmith refuses (502); the rest succeed.
                let (caller_ns, generator, want) = match i % 8 {
                    3 => (NAMESPACES[(i + 1) % NAMESPACES.len()], "ok", 403),
                    5 => (ns, "refused", 502),
                    _ => (ns, "ok", 200),
                };
                let token = oidc::token(&format!("system:serviceaccount:{caller_ns}:eso"), &[oidc::ISSUER]);
                let req = hyper::Request::post(format!("/v1/namespaces/{ns}/generators/{generator}"))
                    .header("host", addr.to_string())
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-length", "0")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                sender.ready().await.expect("connection usable");
                let answer = sender.send_request(req).await.expect("an answer");
                let status = answer.status().as_u16();
                let body = answer.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(status, want, "call {i}: {}", String::from_utf8_lossy(&body));
                if status == 200 {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let subject = format!("system:serviceaccount:{ns}:cloudsmith-oidc");
                    assert_eq!(
                        v["auth"],
                        auth_for(&access_token_for(&subject, "acme", "svc", 1_700_000_000))
                    );
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut samples = Vec::new();
    let mut marks = vec![calls / 10, calls / 2, calls];
    marks.reverse();
    while let Some(mark) = marks.last().copied() {
        if done.load(Ordering::Relaxed) >= mark || tasks.is_empty() {
            let rss = rss_bytes(pid);
            println!(
                "serve soak: after {:>6} calls ({:>6.1}s): server RSS {:>6.1} MiB",
                done.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64(),
                rss as f64 / 1048576.0
            );
            samples.push(rss);
            marks.pop();
            continue;
        }
        tokio::select! {
            joined = tasks.join_next() => { if let Some(r) = joined { r.expect("client task") } }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    assert_eq!(done.load(Ordering::Relaxed), calls, "every call answered");
    let growth = samples[2].saturating_sub(samples[1]);
    println!(
        "serve soak: {calls} calls, {:.0} calls/s, server RSS growth 50%->100%: {:.1} KiB ({:.1} bytes/call)",
        calls as f64 / started.elapsed().as_secs_f64(),
        growth as f64 / 1024.0,
        growth as f64 / (calls - calls / 2) as f64
    );
    drop(child);
    assert!(
        growth < MAX_GROWTH_BYTES,
        "server RSS grew {growth} bytes over the second half"
    );
}
