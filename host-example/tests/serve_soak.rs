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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::process::Listening;
use testkit::{kubernetes, oidc};

const CONCURRENCY: usize = 64;
const NAMESPACES: [&str; 4] = ["apps", "team-b", "team-c", "team-d"];
const MAX_GROWTH_BYTES: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak: SOAK_CALLS=50000 cargo test --release -p cloudsmith-gen --test serve_soak -- --ignored --nocapture"]
async fn soak() {
    let calls = testkit::process::soak_calls(50_000);
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

    let server = Listening::soak_serve(&kubeconfig, &manifest, &cloudsmith.authority(), &[]);
    let addr = server.addr();

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
    let samples = server
        .rss_at_marks(&mut tasks, &done, &[calls / 10, calls / 2, calls], "serve soak")
        .await;
    assert_eq!(done.load(Ordering::Relaxed), calls, "every call answered");
    let growth = samples[2].saturating_sub(samples[1]);
    println!(
        "serve soak: {calls} calls, {:.0} calls/s, server RSS growth 50%->100%: {:.1} KiB ({:.1} bytes/call)",
        calls as f64 / started.elapsed().as_secs_f64(),
        growth as f64 / 1024.0,
        growth as f64 / (calls - calls / 2) as f64
    );
    drop(server);
    assert!(
        growth < MAX_GROWTH_BYTES,
        "server RSS grew {growth} bytes over the second half"
    );
}
