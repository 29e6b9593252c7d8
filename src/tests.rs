//! The whole flow through a scripted `Platform`: what is asked of the token
//! source, what is sent, how long it waits (on a fake clock), and what comes
//! out. Every run also checks that no error shows either token.

use super::*;
use crate::error::{UpstreamFailure, UpstreamStatus};
use alloc::collections::VecDeque;
use alloc::vec;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// ESO's own unit-test vector: exp 1700000000.
const ESO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjoxNzAwMDAwMDAwfQ.signature";
/// base64("token:" + ESO_TOKEN), computed independently of the crate.
const ESO_AUTH: &str = "dG9rZW46ZXlKaGJHY2lPaUpJVXpJMU5pSXNJblI1Y0NJNklrcFhWQ0o5LmV5SnpkV0lpT2lJeE1qTTBOVFkzT0Rrd0lpd2libUZ0WlNJNklrcHZhRzRnUkc5bElpd2laWGh3SWpveE56QXdNREF3TURBd2ZRLnNpZ25hdHVyZQ==";
const OIDC: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrOHMiLCJzdWIiOiJzeXN0ZW06c2EifQ.b2lkYy1zaWduYXR1cmUtc2VjcmV0";
const NS: &str = "team-a";
const URL: &str = "https://api.cloudsmith.io/openid/my-org/";

fn manifest() -> String {
    r#"{
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "CloudsmithAccessToken",
        "spec": {
            "orgSlug": "my-org",
            "serviceSlug": "my-svc",
            "serviceAccountRef": { "name": "default", "namespace": "default" }
        }
    }"#
    .to_string()
}

type Reply = Result<Answer, TransportError>;

/// A scripted host. Replies are used in order; the last one repeats forever,
/// so "500 forever" is one reply.
struct Fake {
    token: Result<String, String>,
    replies: VecDeque<Reply>,
    /// How long each `send` takes on the fake clock.
    send_cost: Duration,
    clock: Duration,
    wall_start: Option<u64>,
    token_calls: Vec<(ServiceAccountRef, String)>,
    sent: Vec<(Request, Timeouts)>,
    sleeps: Vec<Duration>,
}

impl Fake {
    fn new(replies: Vec<Reply>) -> Fake {
        Fake {
            token: Ok(OIDC.into()),
            replies: replies.into(),
            send_cost: Duration::ZERO,
            clock: Duration::ZERO,
            wall_start: Some(1_700_000_000),
            token_calls: vec![],
            sent: vec![],
            sleeps: vec![],
        }
    }

    fn with_token(mut self, token: Result<&str, &str>) -> Fake {
        self.token = token.map(str::to_string).map_err(str::to_string);
        self
    }
}

impl Platform for Fake {
    fn service_account_token(
        &mut self,
        account: &ServiceAccountRef,
        namespace: &str,
    ) -> Result<Secret, String> {
        self.token_calls.push((account.clone(), namespace.to_string()));
        self.token.clone().map(Secret::new)
    }

    fn send(&mut self, request: &Request, timeouts: Timeouts) -> Result<Answer, TransportError> {
        self.sent.push((request.clone(), timeouts));
        self.clock += self.send_cost;
        let reply = if self.replies.len() > 1 {
            self.replies.pop_front()
        } else {
            self.replies.front().cloned()
        };
        reply.expect("test scripted no reply")
    }

    fn sleep(&mut self, duration: Duration) {
        self.sleeps.push(duration);
        self.clock += duration;
    }

    fn elapsed(&self) -> Duration {
        self.clock
    }

    fn now_unix(&self) -> Option<u64> {
        self.wall_start.map(|t| t + self.clock.as_secs())
    }
}

fn reply(status: u16, body: &str) -> Reply {
    Ok(Answer {
        status,
        retry_after: None,
        body: body.as_bytes().to_vec(),
        oversized: false,
    })
}

fn reply_after(status: u16, retry_after: &str, body: &str) -> Reply {
    Ok(Answer {
        status,
        retry_after: Some(retry_after.into()),
        body: body.as_bytes().to_vec(),
        oversized: false,
    })
}

/// A 201 carrying `token` (which needs no JSON escaping in these tests).
fn token_reply(token: &str) -> Reply {
    reply(201, &token_body(token))
}

fn token_body(token: &str) -> String {
    assert!(!token.contains(['"', '\\']));
    format!(r#"{{"token":"{token}"}}"#)
}

/// Runs the generator with the default policy, then checks what must hold
/// for every run: no error shows a token, and every error is one line.
fn run(fake: &mut Fake) -> Result<Outputs, GenerateError> {
    run_with(fake, &manifest(), NS)
}

fn run_with(fake: &mut Fake, manifest: &str, namespace: &str) -> Result<Outputs, GenerateError> {
    let offered = offered_access_tokens(fake);
    let result = generate_with(fake, manifest, namespace, &RetryPolicy::default());
    if let Err(e) = &result {
        let mut secrets = vec![OIDC, fake.token.as_deref().unwrap_or("").trim()];
        secrets.extend(offered.iter().map(String::as_str));
        assert_no_leak(e, &secrets);
    }
    result
}

/// Every access token a success answer in the script hands over.
fn offered_access_tokens(fake: &Fake) -> Vec<String> {
    fake.replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|a| matches!(a.status, 200 | 201))
        .filter_map(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok())
        .filter_map(|v| v.get("token")?.as_str().map(str::to_string))
        .collect()
}

fn assert_no_leak(e: &GenerateError, secrets: &[&str]) {
    let shown = [e.to_string(), format!("{e:?}"), format!("{e:#?}")];
    for text in &shown {
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(!text.contains(secret), "error shows a token: {text}");
        }
    }
    assert!(
        !shown[0].contains(['\n', '\r']),
        "error is not one line: {}",
        shown[0]
    );
}

fn sent_body(fake: &Fake, i: usize) -> String {
    String::from_utf8(fake.sent[i].0.body.clone()).unwrap()
}

fn body_for(oidc: &str) -> String {
    format!(r#"{{"oidc_token":"{oidc}","service_slug":"my-svc"}}"#)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------- success

#[test]
fn eso_vector_gives_esos_outputs() {
    let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)]);
    let out = run(&mut fake).unwrap();
    assert_eq!(
        out,
        vec![
            ("auth".to_string(), ESO_AUTH.as_bytes().to_vec()),
            ("expiry".to_string(), b"1700000000".to_vec()),
        ]
    );
    assert_eq!(
        STANDARD.decode(&out[0].1).unwrap(),
        format!("token:{ESO_TOKEN}").into_bytes()
    );

    // The token source is asked for the spec's account in the *target* namespace.
    assert_eq!(
        fake.token_calls,
        vec![(
            ServiceAccountRef {
                name: "default".into(),
                namespace: Some("default".into()),
                audiences: vec!["https://api.cloudsmith.io".into()],
            },
            NS.to_string()
        )]
    );
    assert_eq!(fake.sent.len(), 1);
    let (request, timeouts) = &fake.sent[0];
    assert_eq!(request.url(), URL);
    assert_eq!(*timeouts, RetryPolicy::default().timeouts(Duration::ZERO));
    assert_eq!(sent_body(&fake, 0), body_for(OIDC));
    assert!(fake.sleeps.is_empty());
}

#[test]
fn status_200_is_accepted_like_the_cli() {
    let mut fake = Fake::new(vec![reply(200, &token_body(ESO_TOKEN))]);
    assert_eq!(run(&mut fake).unwrap()[1].1, b"1700000000");
}

#[test]
fn generate_uses_the_default_policy() {
    let mut fake = Fake::new(vec![
        reply(500, ""),
        reply(500, ""),
        reply(500, ""),
        reply(500, ""),
    ]);
    let err = generate(&mut fake, &manifest(), NS).unwrap_err();
    assert!(
        matches!(err, GenerateError::Upstream(UpstreamFailure { attempts: 4, .. })),
        "{err:?}"
    );
    assert_eq!(fake.sleeps, vec![ms(250), ms(500), ms(1000)]);
}

#[test]
fn oidc_token_is_trimmed_before_sending() {
    for raw in [" \n", "\t", "\r\n"] {
        let padded = format!("{raw}{OIDC}{raw}");
        let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)]).with_token(Ok(&padded));
        run(&mut fake).unwrap();
        assert_eq!(sent_body(&fake, 0), body_for(OIDC), "{raw:?}");
    }
}

// ---------------------------------------------------------------- before any request

#[test]
fn invalid_spec_or_namespace_stops_before_the_token_source() {
    let cases = [
        (manifest(), "", "invalid spec: target namespace is empty"),
        (
            manifest(),
            "Team_A",
            "invalid spec: target namespace \"Team_A\" is not a valid namespace name (lower-case letters, digits and '-', at most 63)",
        ),
        (
            r#"{"orgSlug":"a/b","serviceSlug":"s","serviceAccountRef":{"name":"x"}}"#.to_string(),
            NS,
            "invalid spec: spec.orgSlug \"a/b\" is invalid: must match ^[-a-zA-Z0-9_]+$ (at most 128 characters)",
        ),
        ("[]".to_string(), NS, "invalid spec: manifest must be a JSON object"),
    ];
    for (manifest, ns, want) in cases {
        let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)]);
        let err = run_with(&mut fake, &manifest, ns).unwrap_err();
        assert!(matches!(err, GenerateError::InvalidSpec(_)), "{err:?}");
        assert_eq!(err.to_string(), want);
        assert!(fake.token_calls.is_empty(), "{want}");
        assert!(fake.sent.is_empty(), "{want}");
    }
}

#[test]
fn token_source_failure_is_reported_on_one_line() {
    let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)])
        .with_token(Err("serviceaccounts \"default\" not found\n(forbidden)"));
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::TokenSource(
            "serviceaccounts \"default\" not found (forbidden)".into()
        ))
    );
    assert!(fake.sent.is_empty());
}

#[test]
fn long_token_source_failure_is_cut() {
    let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)]).with_token(Err(&"w".repeat(1000)));
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::TokenSource(format!("{}…", "w".repeat(300))))
    );
}

#[test]
fn empty_token_is_a_token_source_error() {
    for empty in ["", "   ", "\n\t"] {
        let mut fake = Fake::new(vec![token_reply(ESO_TOKEN)]).with_token(Ok(empty));
        assert_eq!(
            run(&mut fake),
            Err(GenerateError::TokenSource(
                "empty token for service account default".into()
            )),
            "{empty:?}"
        );
        assert!(fake.sent.is_empty());
    }
}

// ---------------------------------------------------------------- retries

#[test]
fn server_errors_then_success() {
    let mut fake = Fake::new(vec![reply(503, ""), reply(503, ""), token_reply(ESO_TOKEN)]);
    assert_eq!(run(&mut fake).unwrap()[1].1, b"1700000000");
    assert_eq!(fake.sent.len(), 3);
    assert_eq!(fake.sleeps, vec![ms(250), ms(500)]);
    // Every attempt sends the same request.
    assert!(fake.sent.iter().all(|(r, _)| *r == fake.sent[0].0));
}

#[test]
fn server_errors_forever_end_after_max_attempts() {
    let mut fake = Fake::new(vec![reply(500, r#"{"detail":"Internal error"}"#)]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::Upstream(UpstreamFailure {
            status: Some(500),
            detail: "Internal error".into(),
            attempts: 4,
        }))
    );
    assert_eq!(fake.sent.len(), 4);
    assert_eq!(fake.sleeps, vec![ms(250), ms(500), ms(1000)]);
}

#[test]
fn last_failure_is_the_one_reported() {
    let mut fake = Fake::new(vec![
        reply(502, "bad gateway"),
        Err(TransportError::Failed("connection reset".into())),
        reply(500, ""),
        reply(504, "gateway timeout"),
    ]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::Upstream(UpstreamFailure {
            status: Some(504),
            detail: "gateway timeout".into(),
            attempts: 4,
        }))
    );
}

#[test]
fn custom_policy_attempts_are_counted() {
    let policy = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let mut fake = Fake::new(vec![reply(503, "")]);
    let err = generate_with(&mut fake, &manifest(), NS, &policy).unwrap_err();
    assert_eq!(
        err,
        GenerateError::Upstream(UpstreamFailure {
            status: Some(503),
            detail: "(empty body)".into(),
            attempts: 2,
        })
    );
    assert_eq!(fake.sleeps, vec![ms(250)]);
}

#[test]
fn final_failure_after_retries_counts_every_attempt() {
    // Found by the `generate` fuzz target: a retried failure followed by a
    // final one (a redirect, an unexpected status) reported `attempts: 1`.
    for (first, status, detail) in [
        (
            reply(503, ""),
            302,
            "unexpected redirect (redirects are not followed)",
        ),
        (Err(TransportError::Failed(String::new())), 0, "unexpected status"),
    ] {
        let mut fake = Fake::new(vec![first, reply(status, ""), token_reply(ESO_TOKEN)]);
        assert_eq!(
            run(&mut fake),
            Err(GenerateError::Upstream(UpstreamFailure {
                status: Some(status),
                detail: detail.into(),
                attempts: 2,
            })),
            "{status}"
        );
        assert_eq!(fake.sent.len(), 2);
    }
}

#[test]
fn rate_limit_retry_after_is_honoured() {
    let mut fake = Fake::new(vec![reply_after(429, "2", ""), token_reply(ESO_TOKEN)]);
    run(&mut fake).unwrap();
    assert_eq!(fake.sleeps, vec![secs(2)]);
    assert_eq!(fake.sent.len(), 2);
}

#[test]
fn rate_limit_http_date_is_read_against_the_wall_clock() {
    // The fake wall clock starts at 1700000000 = Tue, 14 Nov 2023 22:13:20 GMT.
    let mut fake = Fake::new(vec![
        reply_after(429, "Tue, 14 Nov 2023 22:13:25 GMT", ""),
        token_reply(ESO_TOKEN),
    ]);
    run(&mut fake).unwrap();
    assert_eq!(fake.sleeps, vec![secs(5)]);
}

#[test]
fn rate_limit_beyond_the_cap_is_reported_at_once() {
    let mut fake = Fake::new(vec![
        reply_after(429, "3600", r#"{"detail":"Request was throttled."}"#),
        token_reply(ESO_TOKEN),
    ]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::RateLimited {
            retry_after_seconds: Some(3600),
            detail: "Request was throttled.".into(),
        })
    );
    assert_eq!(fake.sent.len(), 1);
    assert!(fake.sleeps.is_empty());
}

#[test]
fn rate_limit_without_retry_after_backs_off_then_gives_up() {
    let mut fake = Fake::new(vec![reply(429, "slow down")]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::RateLimited {
            retry_after_seconds: None,
            detail: "slow down".into(),
        })
    );
    assert_eq!(fake.sent.len(), 4);
    assert_eq!(fake.sleeps, vec![ms(250), ms(500), ms(1000)]);
}

#[test]
fn refusals_are_not_retried() {
    let body = r#"{"detail":"OIDC token cannot be authenticated"}"#;
    let detail = "OIDC token cannot be authenticated".to_string();
    let cases = [
        (
            401,
            GenerateError::Unauthorized(UpstreamStatus {
                status: 401,
                detail: detail.clone(),
            }),
        ),
        (
            403,
            GenerateError::Unauthorized(UpstreamStatus {
                status: 403,
                detail: detail.clone(),
            }),
        ),
        (
            404,
            GenerateError::Rejected(UpstreamStatus {
                status: 404,
                detail: detail.clone(),
            }),
        ),
        (
            422,
            GenerateError::Rejected(UpstreamStatus {
                status: 422,
                detail: detail.clone(),
            }),
        ),
        (
            302,
            GenerateError::Upstream(UpstreamFailure {
                status: Some(302),
                detail: "unexpected redirect (redirects are not followed)".into(),
                attempts: 1,
            }),
        ),
        (
            204,
            GenerateError::Upstream(UpstreamFailure {
                status: Some(204),
                detail: "unexpected status".into(),
                attempts: 1,
            }),
        ),
    ];
    for (status, want) in cases {
        let mut fake = Fake::new(vec![reply(status, body), token_reply(ESO_TOKEN)]);
        assert_eq!(run(&mut fake), Err(want), "{status}");
        assert_eq!(fake.sent.len(), 1, "{status}");
        assert!(fake.sleeps.is_empty(), "{status}");
    }
}

#[test]
fn policy_denial_is_not_retried() {
    let mut fake = Fake::new(vec![
        Err(TransportError::Denied(
            "api.cloudsmith.io:443 is not in allowed hosts".into(),
        )),
        token_reply(ESO_TOKEN),
    ]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::PolicyDenied(format!(
            "request to {URL} refused: api.cloudsmith.io:443 is not in allowed hosts"
        )))
    );
    assert_eq!(fake.sent.len(), 1);
}

#[test]
fn timeouts_are_retried() {
    let mut fake = Fake::new(vec![
        Err(TransportError::Timeout("first byte".into())),
        token_reply(ESO_TOKEN),
    ]);
    run(&mut fake).unwrap();
    assert_eq!(fake.sent.len(), 2);
    assert_eq!(fake.sleeps, vec![ms(250)]);
}

#[test]
fn transport_failures_forever_end_as_upstream_without_status() {
    let mut fake = Fake::new(vec![Err(TransportError::Failed("connection refused".into()))]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::Upstream(UpstreamFailure {
            status: None,
            detail: format!("request to {URL} failed: connection refused"),
            attempts: 4,
        }))
    );
}

#[test]
fn deadline_bounds_the_whole_call() {
    // Each attempt burns 20 s; the third ends past what a fourth could use.
    let mut fake = Fake::new(vec![Err(TransportError::Timeout("first byte".into()))]);
    fake.send_cost = secs(20);
    let err = run(&mut fake).unwrap_err();
    assert!(
        matches!(err, GenerateError::Upstream(UpstreamFailure { attempts: 3, .. })),
        "{err:?}"
    );
    assert_eq!(fake.sleeps, vec![ms(250), ms(500)]);
    // Later attempts get only what is left of the deadline.
    let started = [Duration::ZERO, ms(20_250), ms(40_750)];
    let policy = RetryPolicy::default();
    for (i, at) in started.iter().enumerate() {
        assert_eq!(fake.sent[i].1, policy.timeouts(*at), "attempt {}", i + 1);
    }
    assert_eq!(fake.sent[2].1.first_byte, ms(19_250));
}

#[test]
fn retry_after_that_would_pass_the_deadline_stops() {
    let mut fake = Fake::new(vec![reply_after(503, "25", ""), token_reply(ESO_TOKEN)]);
    fake.send_cost = secs(40);
    let err = run(&mut fake).unwrap_err();
    assert_eq!(
        err,
        GenerateError::Upstream(UpstreamFailure {
            status: Some(503),
            detail: "(empty body)".into(),
            attempts: 1,
        })
    );
}

// ---------------------------------------------------------------- bad tokens

#[test]
fn unusable_access_tokens_are_invalid_token() {
    let no_exp = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"; // {"sub":"x"}
    let cases = [
        (
            "not-a-jwt-access-token-secret",
            "invalid token answer: access token is not a JWT: it has 1 dot-separated parts, not 3",
        ),
        (
            no_exp,
            "invalid token answer: access token's JWT has no exp claim",
        ),
    ];
    for (token, want) in cases {
        let mut fake = Fake::new(vec![token_reply(token)]);
        let err = run(&mut fake).unwrap_err();
        assert!(matches!(err, GenerateError::InvalidToken(_)), "{err:?}");
        assert_eq!(err.to_string(), want);
        assert_no_leak(&err, &[token]);
        assert_eq!(fake.sent.len(), 1, "a bad token is not retried");
    }
}

#[test]
fn oversized_success_is_invalid_token() {
    let mut fake = Fake::new(vec![Ok(Answer {
        status: 201,
        retry_after: None,
        body: token_body(ESO_TOKEN).into_bytes(),
        oversized: true,
    })]);
    assert_eq!(
        run(&mut fake),
        Err(GenerateError::InvalidToken(
            "answer is larger than 65536 bytes".into()
        ))
    );
}

// ---------------------------------------------------------------- secrets

#[test]
fn transport_messages_quoting_the_oidc_token_are_scrubbed() {
    let quoting = format!("peer reset while sending {{\"oidc_token\":\"{OIDC}\"}}");
    for (err, want) in [
        (
            TransportError::Failed(quoting.clone()),
            GenerateError::Upstream(UpstreamFailure {
                status: None,
                detail: format!(
                    "request to {URL} failed: peer reset while sending {{\"oidc_token\":\"[redacted]\"}}"
                ),
                attempts: 4,
            }),
        ),
        (
            TransportError::Denied(quoting),
            GenerateError::PolicyDenied(format!(
                "request to {URL} refused: peer reset while sending {{\"oidc_token\":\"[redacted]\"}}"
            )),
        ),
    ] {
        let mut fake = Fake::new(vec![Err(err)]);
        assert_eq!(run(&mut fake), Err(want));
    }
}

#[test]
fn transport_message_cut_mid_token_leaves_no_fragment() {
    // A host message that quotes the token near the 200-character cut: the
    // cut must not leave the token's beginning behind, which a later
    // whole-token scrub can no longer recognise.
    let message = format!("{} {OIDC}", "x".repeat(180));
    for err in [
        TransportError::Failed(message.clone()),
        TransportError::Denied(message),
    ] {
        let mut fake = Fake::new(vec![Err(err.clone())]);
        let shown = run(&mut fake).unwrap_err().to_string();
        assert!(!shown.contains(&OIDC[..16]), "{err:?} left a fragment: {shown}");
    }
}

#[test]
fn answers_echoing_the_oidc_token_are_redacted() {
    let echo_json = format!(r#"{{"detail":"token {OIDC} rejected","oidc_token":"{OIDC}"}}"#);
    let echo_text = format!("Bad request:\n{{\"oidc_token\": \"{OIDC}\"}}");
    for status in [400, 401, 403, 404, 422, 429, 500, 503] {
        for body in [&echo_json, &echo_text] {
            let mut fake = Fake::new(vec![reply(status, body)]);
            let err = run(&mut fake).unwrap_err();
            assert!(err.to_string().contains("[redacted]"), "{status}: {err}");
        }
    }
}

#[test]
fn no_error_ever_shows_a_token() {
    // Scenarios chosen to put the tokens wherever a message could pick them
    // up; `run` checks Display and Debug of each error.
    let echo = format!("{{\"detail\":\"{OIDC}\",\"token\":\"{ESO_TOKEN}\"}}");
    let scripts: Vec<Vec<Reply>> = vec![
        vec![reply(400, &echo)],
        vec![reply(401, &echo)],
        vec![reply(429, &echo)],
        vec![reply_after(429, "3600", &echo)],
        vec![reply(500, &echo)],
        vec![reply(302, &echo)],
        vec![reply(204, &echo)],
        vec![reply(201, "{\"token\":\"not-a-jwt-but-a-long-access-token\"}")],
        vec![reply(201, "{\"token\":\"a.not-base64!.signature-secret-part\"}")],
        vec![reply(201, &format!("{{\"token\":{OIDC:?}}}"))],
        vec![reply(201, &format!("{OIDC} is not JSON"))],
        vec![Err(TransportError::Failed(OIDC.into()))],
        vec![Err(TransportError::Timeout(format!("{OIDC}\n{OIDC}")))],
        vec![Err(TransportError::Denied(OIDC.into()))],
    ];
    let mut failures = 0;
    let count = scripts.len();
    for script in scripts {
        let mut fake = Fake::new(script);
        if run(&mut fake).is_err() {
            failures += 1;
        }
    }
    // Each scenario must really fail, or it would check nothing.
    assert_eq!(failures, count);
}
