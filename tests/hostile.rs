//! A hostile plugin (`plugs/hostile`) against the host's sandbox.
//!
//! The hostile component exports the same `generator` interface as the real
//! one; its manifest picks the misbehaviour. Each case shows that the host
//! stops it with a clear error within its limits, stays up, and serves the
//! real generator correctly right after, in the same process and on the same
//! engine:
//!
//! | hostile mode            | what the host must do                                            |
//! |-------------------------|------------------------------------------------------------------|
//! | `loop` (pure compute)   | deadline error (epoch interruption)                              |
//! | `sleep` (in a host call)| deadline error (timeout around the call)                         |
//! | `alloc` without bound   | memory-limit error                                               |
//! | `huge-output` 256 MiB   | memory-limit error (the guest cannot even build it)              |
//! | `huge-output` 8 MiB     | refused as an unusable output, never rendered                    |
//! | `many-outputs` 100,000  | refused as an unusable output                                    |
//! | `huge-error` 4 MiB      | the error is cut to one short line                               |
//! | `trap`, `panic`         | trap error                                                       |
//! | `stdout-flood`          | deadline error; captured stdout/stderr stay at their bound       |
//! | `evil-host`             | the guest sees `ErrorCode::HttpRequestDenied`; the host records each refused authority; nothing reaches the network |
//! | `files`                 | every file operation fails: no preopened directory               |
//! | `env`                   | no variable, no argument                                          |
//! | `echo-token`            | the token is scrubbed from the error and from captured output    |
//!
//! The CLI, run as a process with `--component hostile.wasm`, turns a few of
//! these into one error line and a non-zero exit, without a panic.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use host_example::token_source::StaticTokenSource;
use host_example::wasmtime::component::Component;
use host_example::wasmtime::Engine;
use host_example::{
    cache, sandbox, Authority, Credentials, EngineOptions, Error, GenerateError, Generator, GeneratorOptions,
    HostError, Limits, OutboundPolicy, Secret, Traced,
};
use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig};

/// The hostile plugin's limits: tight, so each case ends quickly.
const MEMORY_LIMIT: usize = 32 * 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(2);
const CAPTURE: usize = 4096;

const NAMESPACE: &str = "apps";
const SUBJECT: &str = "system:serviceaccount:apps:default";
const ORG: &str = "acme";
const SERVICE: &str = "eso";

fn hostile_wasm() -> PathBuf {
    testkit::artifacts::wasm("hostile")
}

/// Everything a test needs: the stand-in, the good and the hostile generator
/// (same engine, same policy: only the stand-in, plain HTTP allowed).
struct Setup {
    stand_in: StandIn,
    oidc_token: String,
    good: Generator,
    hostile: Generator,
}

impl Setup {
    async fn new() -> Setup {
        // One engine for every call in this process, as an embedder would have,
        // with the real generator and the hostile plugin compiled once.
        let (engine, good_component, hostile_component) = {
            static COMPILED: OnceLock<(Engine, Component, Component)> = OnceLock::new();
            COMPILED.get_or_init(|| {
                let engine = sandbox::engine(&EngineOptions {
                    pooling: true,
                    max_concurrent_calls: 8,
                    max_memory_bytes: 64 * 1024 * 1024,
                    // As shipped: slots keep their pages between calls (reset in place).
                    ..Default::default()
                })
                .expect("engine");
                let good = cache::compile(&engine, host_example::COMPONENT).expect("compile the generator");
                let bytes = std::fs::read(hostile_wasm()).expect("read hostile.wasm");
                let hostile = cache::compile(&engine, &bytes).expect("compile hostile.wasm");
                (engine, good, hostile)
            })
        };
        let stand_in = StandIn::start(StandInConfig::default()).await.expect("stand-in");
        let oidc_token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
        let policy = OutboundPolicy::default()
            .allow_only([stand_in.authority().parse::<Authority>().expect("authority")])
            .allow_http(true);
        let tokens = Arc::new(StaticTokenSource::new(Secret::new(oidc_token.clone())));
        let good = Generator::new(
            engine,
            good_component,
            tokens.clone(),
            GeneratorOptions {
                policy: policy.clone(),
                max_concurrent_calls: 4,
                ..Default::default()
            },
        )
        .expect("good generator");
        let hostile = Generator::new(
            engine,
            hostile_component,
            tokens,
            GeneratorOptions {
                policy,
                limits: Limits {
                    memory_bytes: MEMORY_LIMIT,
                    deadline: DEADLINE,
                    output_capture_bytes: CAPTURE,
                },
                max_concurrent_calls: 4,
                ..Default::default()
            },
        )
        .expect("hostile generator");
        Setup {
            stand_in,
            oidc_token,
            good,
            hostile,
        }
    }

    fn manifest(&self) -> String {
        serde_json::json!({"spec": {
            "apiUrl": self.stand_in.url(),
            "orgSlug": ORG,
            "serviceSlug": SERVICE,
            "serviceAccountRef": {"name": "default"},
        }})
        .to_string()
    }

    /// The real generator still works, and gives exactly the stand-in's token.
    async fn assert_good_call_works(&self, after: &str) {
        let credentials = self
            .good
            .generate(&self.manifest(), NAMESPACE)
            .await
            .unwrap_or_else(|e| panic!("good call after {after} failed: {e}"));
        let expected = auth_for(&access_token_for(SUBJECT, ORG, SERVICE, 1_700_000_000));
        assert_eq!(credentials.auth().expose(), expected, "good call after {after}");
        assert_eq!(credentials.expiry(), "1700000000", "good call after {after}");
    }

    /// Runs the hostile plugin on `manifest`, which names the service account the
    /// plugin asks a token for, as a real manifest would (the host checks it).
    async fn hostile(&self, mut manifest: serde_json::Value) -> Traced<Credentials> {
        if manifest.get("serviceAccountRef").is_none() {
            manifest["serviceAccountRef"] = serde_json::json!({"name": "default"});
        }
        self.hostile
            .generate_traced(&manifest.to_string(), NAMESPACE)
            .await
    }
}

/// The value of report key `key` in a hostile plugin's outputs.
fn seen(credentials: &Credentials, key: &str) -> String {
    credentials
        .outputs()
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.expose().to_string())
        .unwrap_or_else(|| panic!("no output {key:?} in {credentials:?}"))
}

fn assert_deadline(mode: &str, result: &Result<Credentials, Error>) {
    match result {
        Err(Error::Host(HostError::DeadlineExceeded { deadline })) => {
            assert_eq!(*deadline, DEADLINE, "{mode}")
        }
        other => panic!("{mode}: expected a deadline error, got {other:?}"),
    }
    let shown = result.as_ref().unwrap_err().to_string();
    assert_eq!(
        shown, "the generator did not finish within its 2s deadline",
        "{mode}"
    );
}

fn assert_memory_limit(mode: &str, result: &Result<Credentials, Error>) {
    match result {
        Err(Error::Host(HostError::MemoryLimitExceeded { limit_bytes })) => {
            assert_eq!(*limit_bytes, MEMORY_LIMIT, "{mode}")
        }
        other => panic!("{mode}: expected a memory-limit error, got {other:?}"),
    }
    let shown = result.as_ref().unwrap_err().to_string();
    assert_eq!(
        shown, "the generator exceeded its memory limit of 32 MiB",
        "{mode}"
    );
}

fn assert_trap(mode: &str, result: &Result<Credentials, Error>) -> String {
    match result {
        Err(Error::Host(HostError::Trap(message))) => {
            assert!(
                !message.contains('\n'),
                "{mode}: trap message is one line: {message}"
            );
            message.clone()
        }
        other => panic!("{mode}: expected a trap error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runaway_plugins_hit_their_limits_and_the_host_serves_the_next_call() {
    let s = Setup::new().await;
    s.assert_good_call_works("start").await;

    let r = s.hostile(serde_json::json!({"hostile": "loop"})).await;
    assert_deadline("loop", &r.result);
    s.assert_good_call_works("loop").await;

    let r = s.hostile(serde_json::json!({"hostile": "sleep"})).await;
    assert_deadline("sleep", &r.result);
    s.assert_good_call_works("sleep").await;

    let r = s.hostile(serde_json::json!({"hostile": "alloc"})).await;
    assert_memory_limit("alloc", &r.result);
    s.assert_good_call_works("alloc").await;

    let r = s.hostile(serde_json::json!({"hostile": "huge-output"})).await;
    assert_memory_limit("huge-output 256 MiB", &r.result);
    s.assert_good_call_works("huge-output").await;

    let r = s.hostile(serde_json::json!({"hostile": "trap"})).await;
    let message = assert_trap("trap", &r.result);
    assert!(message.contains("unreachable"), "trap names the cause: {message}");
    s.assert_good_call_works("trap").await;

    let r = s.hostile(serde_json::json!({"hostile": "panic"})).await;
    assert_trap("panic", &r.result);
    assert!(
        r.report.guest_stderr.contains("hostile plugin panics on purpose"),
        "the panic message is captured: {:?}",
        r.report.guest_stderr
    );
    s.assert_good_call_works("panic").await;

    // Nothing ever reached the stand-in but the good calls.
    let requests = s.stand_in.requests();
    assert_eq!(requests.len(), 7, "only the 7 good calls reached the stand-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_outputs_and_huge_errors_are_refused_in_one_line() {
    let s = Setup::new().await;

    let r = s
        .hostile(serde_json::json!({"hostile": "many-outputs", "count": 100_000}))
        .await;
    match &r.result {
        Err(Error::Host(HostError::InvalidOutput(m))) => assert!(m.len() < 400, "one short line: {m}"),
        Err(Error::Host(HostError::MemoryLimitExceeded { .. })) => {}
        other => panic!(
            "100,000 outputs must be refused, got {:?}",
            other.as_ref().map(|c| c.outputs().len())
        ),
    }
    s.assert_good_call_works("many-outputs").await;

    let r = s
        .hostile(serde_json::json!({"hostile": "huge-error", "bytes": 4 * 1024 * 1024}))
        .await;
    match &r.result {
        Err(Error::Generate(GenerateError::InvalidSpec(m))) => {
            assert!(
                m.starts_with("hostile multi-line") && m.contains(" error AAAA"),
                "folded onto one line: {m:.80}"
            );
            assert!(!m.chars().any(char::is_control), "no control characters");
            assert!(m.chars().count() <= 401, "cut short: {} chars", m.chars().count());
            assert!(!m.contains(['\n', '\r']));
        }
        other => panic!("huge-error: expected invalid-spec, got {other:?}"),
    }
    s.assert_good_call_works("huge-error").await;
}

/// An `auth` of 8 MiB fits the guest's memory, so only an output bound in the
/// host can refuse it; without one the CLI prints it and a controller would
/// try to store it (Kubernetes refuses Secrets over 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_auth_is_refused_in_one_line() {
    let s = Setup::new().await;
    let r = s
        .hostile(serde_json::json!({"hostile": "huge-output", "bytes": 8 * 1024 * 1024}))
        .await;
    match &r.result {
        Err(Error::Host(HostError::InvalidOutput(m))) => {
            assert!(m.len() < 400 && !m.contains('\n'), "one short line: {m}")
        }
        other => panic!(
            "an 8 MiB auth must be refused as an unusable output, got {}",
            match other {
                Ok(c) => format!("Ok with an auth of {} bytes", c.auth().expose().len()),
                Err(e) => format!("{e:?}"),
            }
        ),
    }
    s.assert_good_call_works("huge-output 8 MiB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stdout_flood_is_bounded_and_ends_at_the_deadline() {
    let s = Setup::new().await;
    let r = s.hostile(serde_json::json!({"hostile": "stdout-flood"})).await;
    assert_deadline("stdout-flood", &r.result);
    assert_eq!(
        r.report.guest_stdout.len(),
        CAPTURE,
        "stdout kept up to its bound"
    );
    assert_eq!(
        r.report.guest_stderr.len(),
        CAPTURE,
        "stderr kept up to its bound"
    );
    assert!(r.report.guest_stdout.bytes().all(|b| b == b'#'));
    s.assert_good_call_works("stdout-flood").await;

    // A bounded flood finishes: the guest's writes never fail, they are dropped.
    let r = s
        .hostile(serde_json::json!({"hostile": "stdout-flood", "bytes": 1024 * 1024}))
        .await;
    let credentials = r.result.expect("a bounded flood finishes");
    assert_eq!(seen(&credentials, "written"), (1024 * 1024).to_string());
    assert_eq!(seen(&credentials, "stopped"), "limit reached");
    assert_eq!(r.report.guest_stdout.len(), CAPTURE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_off_the_allowlist_are_denied_and_recorded() {
    let s = Setup::new().await;
    // A real server on loopback, off the allowlist: had the policy let a
    // request through, it would have recorded it.
    let evil = StandIn::start(StandInConfig::default())
        .await
        .expect("evil stand-in");
    let evil_url = format!("{}/openid/stolen/", evil.url());
    let targets = [
        "https://evil.example:443/steal",
        "http://127.0.0.1:9/steal",
        "https://169.254.169.254/latest/meta-data/",
        "http://evil.example/steal",
        // The stand-in's own host on another port: ports count.
        evil_url.as_str(),
    ];
    let r = s
        .hostile(serde_json::json!({"hostile": "evil-host", "targets": targets}))
        .await;
    let credentials = r.result.expect("the plugin reports what it saw");
    assert_eq!(
        seen(&credentials, "token-source"),
        format!("got a token ({} bytes)", s.oidc_token.len())
    );
    for target in targets {
        assert_eq!(
            seen(&credentials, target),
            "error: ErrorCode::HttpRequestDenied",
            "{target}"
        );
    }
    let refused: Vec<String> = r
        .report
        .journal
        .denials
        .iter()
        .map(|d| d.authority.clone())
        .collect();
    assert_eq!(
        refused,
        [
            "evil.example:443".to_string(),
            "127.0.0.1:9".to_string(),
            "169.254.169.254:443".to_string(),
            "evil.example:80".to_string(),
            evil.authority(),
        ]
    );
    // The journal lists each attempt, every one refused before connecting.
    assert_eq!(r.report.journal.requests.len(), targets.len());
    for record in &r.report.journal.requests {
        let outcome = record.outcome.as_ref().expect_err("refused, not answered");
        assert!(outcome.starts_with("refused: host "), "{outcome}");
    }
    assert!(
        evil.requests().is_empty(),
        "nothing reached the server off the allowlist"
    );
    for denial in &r.report.journal.denials {
        let shown = denial.to_string();
        assert!(shown.contains("is not in the outbound allowlist"), "{shown}");
        assert!(!shown.contains(&s.oidc_token));
    }
    assert!(s.stand_in.requests().is_empty(), "nothing reached the stand-in");
    s.assert_good_call_works("evil-host").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_see_no_files_and_no_environment() {
    // This process has variables (cargo sets several): none may reach the guest.
    assert!(std::env::vars_os().count() > 0);
    let s = Setup::new().await;

    let r = s.hostile(serde_json::json!({"hostile": "files"})).await;
    let credentials = r.result.expect("the plugin reports what it saw");
    for key in [
        "read /etc/passwd",
        "list /",
        "list .",
        "read /var/run/secrets/kubernetes.io/serviceaccount/token",
        "write /tmp/hostile-was-here",
    ] {
        let what = seen(&credentials, key);
        assert!(what.starts_with("error: "), "{key}: {what}");
    }
    assert!(!std::path::Path::new("/tmp/hostile-was-here").exists());

    let r = s.hostile(serde_json::json!({"hostile": "env"})).await;
    let credentials = r.result.expect("the plugin reports what it saw");
    assert_eq!(seen(&credentials, "env-count"), "0");
    assert_eq!(seen(&credentials, "env"), "");
    assert_eq!(seen(&credentials, "args"), "");
    s.assert_good_call_works("files and env").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_gets_no_token_for_an_account_the_manifest_does_not_name() {
    let s = Setup::new().await;
    // The plugin always asks for "default"; this manifest names "builder".
    let r = s
        .hostile(serde_json::json!({"hostile": "echo-token", "serviceAccountRef": {"name": "builder"}}))
        .await;
    assert!(r.result.is_err(), "{:?}", r.result);
    assert_eq!(
        r.report.token_requests,
        [
            "token request refused: the generator asked for a token for service account \"default\" \
          but the manifest names \"builder\""
        ]
    );
    s.assert_good_call_works("a refused token request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_echoing_the_token_has_it_scrubbed() {
    let s = Setup::new().await;
    let r = s.hostile(serde_json::json!({"hostile": "echo-token"})).await;
    let err = r.result.expect_err("echo-token fails");
    assert_eq!(
        err,
        Error::Generate(GenerateError::InvalidSpec(
            "hostile error: the token is [redacted]".into()
        ))
    );
    assert_eq!(r.report.guest_stdout, "hostile stdout: the token is [redacted]\n");
    assert_eq!(r.report.guest_stderr, "hostile stderr: the token is [redacted]\n");
    testkit::process::assert_no_secret(
        &[&err.to_string(), &format!("{err:?}"), &format!("{:?}", r.report)],
        &[&s.oidc_token],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_a_call_leaves_in_memory_reaches_the_next_call() {
    // The pool keeps a slot's pages mapped between calls and resets them in place
    // (EngineOptions::keep_resident_bytes); the next call must still start from
    // the module's initial memory, whatever the last one wrote.
    let setup = Setup::new().await;
    for round in 0..4 {
        let traced = setup.hostile(serde_json::json!({"hostile": "leftovers"})).await;
        let credentials = traced
            .result
            .unwrap_or_else(|e| panic!("leftovers, round {round}: {e}"));
        assert_eq!(seen(&credentials, "calls-before"), "0", "round {round}");
        assert_eq!(seen(&credentials, "marker-found"), "false", "round {round}");
        setup.assert_good_call_works("a leftovers call").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_good_calls_run_side_by_side() {
    let s = Setup::new().await;
    let (spin, hog, good) = tokio::join!(
        s.hostile(serde_json::json!({"hostile": "loop"})),
        s.hostile(serde_json::json!({"hostile": "alloc"})),
        async {
            // Several good calls while the hostile ones run.
            for i in 0..5 {
                s.assert_good_call_works(&format!("concurrent #{i}")).await;
            }
        },
    );
    let () = good;
    assert_deadline("loop (concurrent)", &spin.result);
    assert_memory_limit("alloc (concurrent)", &hog.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_mode_is_an_ordinary_error() {
    let s = Setup::new().await;
    let r = s.hostile(serde_json::json!({"hostile": "nothing-bad"})).await;
    assert_eq!(
        r.result.unwrap_err().to_string(),
        "invalid spec: hostile plugin: unknown mode \"nothing-bad\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_a_hostile_plugin_in_one_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = testkit::oidc::token(SUBJECT, &["https://api.cloudsmith.io"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let component = hostile_wasm();
    let cases = [
        (
            "loop",
            9,
            "error: the generator did not finish within its 2s deadline",
        ),
        (
            "alloc",
            9,
            "error: the generator exceeded its memory limit of 32 MiB",
        ),
        ("trap", 9, "error: the generator crashed (wasm trap): "),
        ("panic", 9, "error: the generator crashed (wasm trap): "),
        (
            "echo-token",
            2,
            "error: invalid spec: hostile error: the token is [redacted]",
        ),
    ];
    for (mode, code, line) in cases {
        let manifest = dir.path().join(format!("{mode}.json"));
        let body = serde_json::json!({"hostile": mode, "serviceAccountRef": {"name": "default"}});
        std::fs::write(&manifest, body.to_string()).expect("manifest");
        let mut command = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
        command
            .args([
                "generate",
                "--namespace",
                NAMESPACE,
                "--timeout",
                "2",
                "--memory-limit",
                "32",
            ])
            .arg("--manifest")
            .arg(&manifest)
            .arg("--oidc-token-file")
            .arg(&token_file)
            .arg("--component")
            .arg(&component)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"));
        let out = testkit::process::run(command, None, Duration::from_secs(120))
            .await
            .expect("cloudsmith-gen runs");
        assert_eq!(out.code, Some(code), "{mode}: exit code; stderr: {}", out.stderr);
        assert_eq!(out.stdout, "", "{mode}: nothing on stdout");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{mode}: one line: {:?}", out.stderr);
        assert!(lines[0].starts_with(line), "{mode}: {:?}", lines[0]);
        assert!(!out.stderr.contains("panicked"), "{mode}: the host did not panic");
        testkit::process::assert_no_secret(&[&out.stdout, &out.stderr], &[&token]);
    }
}
