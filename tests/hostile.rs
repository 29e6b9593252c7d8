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
//! | `resources` (a flood of `wasi:http` fields) | memory-limit error: the resource table's capacity is part of the call's budget |
//! | `no-audiences`          | refused before the token source is asked                         |
//! | `evil-host` with `user:secret@` in the URL | refused, and the secret is in no journal line |
//! | `hoard`, composed with itself (two core instances, two memories) | memory-limit error: one budget for every memory of the call |
//! | core modules ([`hostile::wat`]): 4 memories of 12 MiB, 16 memories, 64 tables, one table grown without end | memory-limit or sandbox-limit error |
//!
//! The CLI, run as a process with `--component hostile.wasm`, turns a few of
//! these into one error line and a non-zero exit, without a panic; run so on
//! every way past the budget, its peak RSS (the kernel's, from `wait4`) stays
//! within the budget.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cloudsmith_gen::token_source::StaticTokenSource;
use cloudsmith_gen::wasmtime::component::Component;
use cloudsmith_gen::wasmtime::Engine;
use cloudsmith_gen::{
    sandbox, Authority, Credentials, EngineOptions, Error, GenerateError, Generator, GeneratorOptions,
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
                let (good, hostile) = e2e_tests::generator_and_hostile(&engine);
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

/// What one call may pass to the host at once (a result, a string, a list):
/// `sandbox::HOST_CALL_BYTES`.
const PASSED_AT_ONCE: &str =
    "the generator exceeded its sandbox limits: it passed more than 16 KiB to the host at once";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_outputs_and_huge_errors_are_refused_in_one_line() {
    let s = Setup::new().await;

    let r = s
        .hostile(serde_json::json!({"hostile": "many-outputs", "count": 100_000}))
        .await;
    match &r.result {
        Err(e @ Error::Host(HostError::SandboxLimitExceeded(_))) => assert_eq!(e.to_string(), PASSED_AT_ONCE),
        other => panic!(
            "100,000 outputs must be refused, got {:?}",
            other.as_ref().map(|c| c.outputs().len())
        ),
    }
    s.assert_good_call_works("many-outputs").await;

    // An error the host would take whole: still one short line.
    let r = s
        .hostile(serde_json::json!({"hostile": "huge-error", "bytes": 8 * 1024}))
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

    // A 4 MiB error is more than the host takes from a call at once.
    let r = s
        .hostile(serde_json::json!({"hostile": "huge-error", "bytes": 4 * 1024 * 1024}))
        .await;
    assert_eq!(r.result.unwrap_err().to_string(), PASSED_AT_ONCE);
    s.assert_good_call_works("huge-error 4 MiB").await;
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
        // More than the host takes from a call at once: refused while it is copied.
        Err(e @ Error::Host(HostError::SandboxLimitExceeded(_))) => assert_eq!(e.to_string(), PASSED_AT_ONCE),
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

/// A flood of `wasi:http` resources fills the call's resource table, whose capacity is
/// part of its memory budget. (Before, the table took a million entries: 100,000 fields
/// of 1 KiB, some 150 MiB of host memory, came back as a report.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_flood_runs_into_the_memory_budget() {
    let s = Setup::new().await;
    let r = s
        .hostile(serde_json::json!({"hostile": "resources", "count": 100_000, "value-bytes": 1024}))
        .await;
    assert_memory_limit("resources", &r.result);
    s.assert_good_call_works("a resource flood").await;
}

/// A token with no audience is the API server's own: refused before the token source
/// is asked. (Before, the host minted it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_with_no_audience_is_refused() {
    let s = Setup::new().await;
    let r = s.hostile(serde_json::json!({"hostile": "no-audiences"})).await;
    let credentials = r.result.expect("the plugin reports what it saw");
    let seen = seen(&credentials, "token-source");
    assert!(
        seen.starts_with("refused: ") && seen.contains("no audience"),
        "{seen}"
    );
    assert_eq!(r.report.token_requests.len(), 1, "{:?}", r.report.token_requests);
    assert!(
        r.report.token_requests[0].starts_with("token request refused: "),
        "{:?}",
        r.report.token_requests
    );
}

/// Userinfo in a URL is refused, even to an allowed host, and shown nowhere. (Before,
/// the request went to the allowed host with the credentials in it, and the journal,
/// which `-v` prints, quoted them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_with_userinfo_is_refused_and_never_shown() {
    let s = Setup::new().await;
    let target = format!(
        "http://planted-user:PLANTEDSECRET@{}/openid/acme/",
        s.stand_in.authority()
    );
    let r = s
        .hostile(serde_json::json!({"hostile": "evil-host", "targets": [target]}))
        .await;
    let credentials = r.result.expect("the plugin reports what it saw");
    assert_eq!(seen(&credentials, &target), "error: ErrorCode::HttpRequestDenied");
    assert!(s.stand_in.requests().is_empty(), "nothing reached the stand-in");
    let journal = format!("{:?}", r.report.journal);
    assert!(!journal.contains("PLANTEDSECRET"), "{journal}");
    assert!(journal.contains("[redacted]@"), "{journal}");
    assert_eq!(r.report.journal.denials.len(), 1);
    assert!(
        r.report.journal.denials[0]
            .to_string()
            .contains("carries userinfo"),
        "{}",
        r.report.journal.denials[0]
    );
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

/// The call's budget in the process runs below.
const BUDGET_MIB: u64 = 32;

/// A child's exit code, stderr and peak resident memory, as the kernel counted it.
struct Measured {
    code: Option<i32>,
    stderr: String,
    peak_rss: u64,
}

/// Runs `cloudsmith-gen` with `args` and waits for it with `wait4`, whose rusage holds
/// the child's own peak RSS (`ru_maxrss`, in KiB on Linux): a figure no sampling can
/// miss. Killed after two minutes.
fn run_measured(args: &[std::ffi::OsString]) -> Measured {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(testkit::tools::cloudsmith_gen())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cloudsmith-gen starts");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..1200 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for the kernel to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is this process's child, not yet reaped; the pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    // Reaped here: the Child must not be waited for again.
    std::mem::forget(child);
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr: reader.join().expect("stderr reader"),
        peak_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// Runs `tool args`, panicking with its output if it fails.
fn tool(what: &str, program: PathBuf, args: &[&std::ffi::OsStr]) {
    let mut command = std::process::Command::new(program);
    command.args(args);
    testkit::process::expect_success(what, command, Duration::from_secs(300));
}

/// A generator component made of `wat`, a core module of [`hostile::wat`].
fn wat_component(dir: &std::path::Path, name: &str, wat: &str) -> PathBuf {
    let core = dir.join(format!("{name}.wat"));
    let embedded = dir.join(format!("{name}.embedded.wasm"));
    let component = dir.join(format!("{name}.wasm"));
    std::fs::write(&core, wat).expect("write the core module");
    let wit = testkit::workspace_root().join("wit");
    tool(
        &format!("wasm-tools component embed ({name})"),
        testkit::tools::wasm_tools(),
        &[
            "component".as_ref(),
            "embed".as_ref(),
            "--world".as_ref(),
            "cloudsmith-access-token".as_ref(),
            wit.as_os_str(),
            core.as_os_str(),
            "-o".as_ref(),
            embedded.as_os_str(),
        ],
    );
    tool(
        &format!("wasm-tools component new ({name})"),
        testkit::tools::wasm_tools(),
        &[
            "component".as_ref(),
            "new".as_ref(),
            embedded.as_os_str(),
            "-o".as_ref(),
            component.as_os_str(),
        ],
    );
    component
}

/// Every way past the budget, each in a process of its own: the call traps with one
/// sandbox-limit line (exit 9), and the host's peak RSS grows by no more than the
/// budget over a call that does nothing.
///
/// Before the budget, each limit was per memory only: the composed plug kept 20 MiB in
/// each of its two memories and returned; four memories of 12 MiB came to 48 MiB;
/// sixteen memories and 64 tables were instantiated; a table grew to 100,000 elements
/// and the guest carried on; 100,000 fields of 1 KiB filled the host's resource table.
#[test]
fn every_way_past_the_budget_traps_and_the_host_stays_within_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = testkit::oidc::token(SUBJECT, &["https://api.cloudsmith.io"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let cache = dir.path().join("cache");
    let hostile = hostile_wasm();
    // Two instances of the plug, each with its own memory: one serves the other's
    // token-source import.
    let composed = dir.path().join("composed.wasm");
    tool(
        "wac plug (hostile into itself)",
        testkit::tools::wac(),
        &[
            "plug".as_ref(),
            "--plug".as_ref(),
            hostile.as_os_str(),
            hostile.as_os_str(),
            "-o".as_ref(),
            composed.as_os_str(),
        ],
    );
    let four_memories = wat_component(dir.path(), "four-memories", &hostile::wat::memories(4, 12));
    let many_memories = wat_component(dir.path(), "sixteen-memories", &hostile::wat::memories(16, 12));
    let many_tables = wat_component(dir.path(), "many-tables", &hostile::wat::tables(64, 10_000));
    let one_table = wat_component(dir.path(), "one-table", &hostile::wat::tables(1, 1_000));

    const MEMORY: &str = "error: the generator exceeded its memory limit of 32 MiB";
    let cases: Vec<(&str, &PathBuf, serde_json::Value, &str)> =
        vec![
        (
            "two memories (composed), 20 MiB each",
            &composed,
            serde_json::json!({"hostile": "hoard", "bytes": 20 << 20}),
            MEMORY,
        ),
        ("four memories, 12 MiB each", &four_memories, serde_json::json!({}), MEMORY),
        (
            "sixteen memories",
            &many_memories,
            serde_json::json!({}),
            "error: the generator exceeded its sandbox limits: a call may create at most 4 linear memories",
        ),
        (
            "64 tables",
            &many_tables,
            serde_json::json!({}),
            "error: the generator exceeded its sandbox limits: a call may create at most 8 tables",
        ),
        (
            "a table grown without end",
            &one_table,
            serde_json::json!({}),
            "error: the generator exceeded its sandbox limits: a table may have at most 20000 elements",
        ),
        (
            "100,000 wasi:http fields of 1 KiB",
            &hostile,
            serde_json::json!({"hostile": "resources", "count": 100_000, "value-bytes": 1024}),
            MEMORY,
        ),
    ];
    let run = |component: &PathBuf, manifest: &serde_json::Value| {
        let mut manifest = manifest.clone();
        manifest["serviceAccountRef"] = serde_json::json!({"name": "default"});
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, manifest.to_string()).expect("manifest");
        let args: Vec<std::ffi::OsString> = vec![
            "generate".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--timeout".into(),
            "20".into(),
            "--memory-limit".into(),
            BUDGET_MIB.to_string().into(),
            "--manifest".into(),
            path.into(),
            "--oidc-token-file".into(),
            token_file.clone().into(),
            "--component".into(),
            component.clone().into(),
            "--cache-dir".into(),
            cache.clone().into(),
        ];
        // Once to fill the compile cache (Cranelift's own peak is not the call's), then
        // measured.
        let _ = run_measured(&args);
        run_measured(&args)
    };
    // A call that does nothing: what the host needs whatever the guest does.
    let baseline = run(&hostile, &serde_json::json!({"hostile": "env"}));
    assert_eq!(
        baseline.code,
        Some(0),
        "the baseline call works: {}",
        baseline.stderr
    );
    let budget = BUDGET_MIB << 20;
    let mut wrong = Vec::new();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "hostile: baseline peak RSS {:.1} MiB; budget {BUDGET_MIB} MiB",
        mib(baseline.peak_rss)
    );
    for (case, component, manifest, line) in cases {
        let m = run(component, &manifest);
        let growth = m.peak_rss.saturating_sub(baseline.peak_rss);
        eprintln!(
            "hostile: {case}: exit {:?}, peak RSS {:.1} MiB (+{:.1} MiB), {}",
            m.code,
            mib(m.peak_rss),
            mib(growth),
            m.stderr.trim()
        );
        let lines: Vec<&str> = m.stderr.lines().collect();
        if m.code != Some(9) || lines.len() != 1 || !lines[0].starts_with(line) {
            wrong.push(format!(
                "{case}: exit {:?}, stderr {:?}; want exit 9 and {line:?}",
                m.code, m.stderr
            ));
        }
        if growth > budget {
            wrong.push(format!(
                "{case}: the host's peak RSS grew {:.1} MiB, past the {BUDGET_MIB} MiB budget",
                mib(growth)
            ));
        }
        assert!(!m.stderr.contains(&token), "{case}: the token in stderr");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
