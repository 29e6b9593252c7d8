//! The whole `generate_with` against a fake host scripted by the input:
//! manifests, token sources, answers, transport failures and clocks. Checks
//! what a host relies on: outputs are exactly ESO's (the token of the last
//! answer, its expiry as an independent reference computes it from the
//! `exp` literal), retries stay within the policy, the request body holds
//! exactly `oidc_token` and `service_slug`, and no error shows a token or
//! spans lines.
#![no_main]

use arbitrary::Arbitrary;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cloudsmith_access_token::exchange::{
    Answer, Request, RetryPolicy, Timeouts, TransportError, MAX_ANSWER_BYTES,
};
use cloudsmith_access_token::jwt::JwtError;
use cloudsmith_access_token::secret::Secret;
use cloudsmith_access_token::spec::{parse_manifest, ServiceAccountRef};
use cloudsmith_access_token::{generate_with, GenerateError, Platform};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::time::Duration;

#[path = "common.rs"]
mod common;
use common::*;

const MANIFESTS: [&str; 5] = [
    r#"{"apiVersion":"generators.external-secrets.io/v1alpha1","kind":"CloudsmithAccessToken","metadata":{"name":"t"},"spec":{"apiHost":"api.cloudsmith.io","orgSlug":"my-organization","serviceSlug":"my-oidc-service","serviceAccountRef":{"name":"default","namespace":"default","audiences":["https://api.cloudsmith.io"]}}}"#,
    r#"{"apiUrl":"https://api.cloudsmith.io/v1/","orgSlug":"org","serviceSlug":"svc","serviceAccountRef":{"name":"sa"}}"#,
    r#"{"apiHost":"http://localhost:8080","orgSlug":"o","serviceSlug":"s","serviceAccountRef":{"name":"a.b"}}"#,
    r#"{"apiUrl":"https://[::1]:9443/proxy","orgSlug":"O_1","serviceSlug":"S-2","serviceAccountRef":{"name":"x","audiences":[]}}"#,
    r#"{"apiVersion":"generators.external-secrets.io/v1alpha1","kind":"ClusterGenerator","metadata":{"name":"c"},"spec":{"kind":"CloudsmithAccessToken","generator":{"cloudsmithAccessTokenSpec":{"orgSlug":"org","serviceSlug":"svc","serviceAccountRef":{"name":"sa","namespace":"ci"}}}}}"#,
];

#[derive(Arbitrary, Debug)]
enum Manifest {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Token {
    /// The OIDC token, padded with whitespace the generator must trim.
    Good {
        lead: u8,
        trail: u8,
    },
    Blank(u8),
    Fails(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    /// `{"token": <access token with this exp literal>}`.
    Access(String),
    /// Raw bytes with the OIDC token spliced in, as a server echoing the request.
    Echo(Vec<u8>, u16),
}

#[derive(Arbitrary, Debug)]
enum Reply {
    Answer {
        status: u16,
        retry_after: Option<String>,
        body: Body,
    },
    Denied(String, Option<u16>),
    Timeout(String, Option<u16>),
    Failed(String, Option<u16>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    manifest: Manifest,
    namespace: Option<String>,
    token: Token,
    replies: Vec<Reply>,
    send_cost_ms: u16,
    now: Option<u32>,
    max_attempts: u8,
    deadline_s: u8,
}

struct Fake {
    token: Result<String, String>,
    replies: VecDeque<Result<Answer, TransportError>>,
    send_cost: Duration,
    clock: Duration,
    now: Option<u64>,
    sent: Vec<(Request, Timeouts)>,
    sleeps: Vec<Duration>,
}

impl Platform for Fake {
    fn service_account_token(&mut self, _: &ServiceAccountRef, _: &str) -> Result<Secret, String> {
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
        reply.unwrap_or_else(|| Err(TransportError::Failed("no route to host".into())))
    }

    fn sleep(&mut self, duration: Duration) {
        self.sleeps.push(duration);
        self.clock += duration;
    }

    fn elapsed(&self) -> Duration {
        self.clock
    }

    fn now_unix(&self) -> Option<u64> {
        self.now.map(|n| n + self.clock.as_secs())
    }
}

fn access_token(exp: &str) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!("{{\"sub\":\"fuzz\",\"exp\":{exp}}}"));
    format!("eyJhbGciOiJIUzI1NiJ9.{payload}.{ACCESS_SIG}")
}

/// What `expiry` must give for an access token with this `exp` text.
fn expected_expiry(exp: &str) -> Result<String, JwtError> {
    let literal = exp.trim_matches([' ', '\t', '\n', '\r']);
    if is_json_number(literal) {
        expect_exp_literal(literal)
    } else {
        expect_payload(format!("{{\"sub\":\"fuzz\",\"exp\":{exp}}}").as_bytes())
    }
}

/// An answer as the host hands it over: the body cut at the size bound.
fn answer(status: u16, retry_after: &Option<String>, body: Vec<u8>) -> Result<Answer, TransportError> {
    let oversized = body.len() > MAX_ANSWER_BYTES;
    Ok(Answer {
        status,
        retry_after: retry_after.clone(),
        body: body[..body.len().min(MAX_ANSWER_BYTES)].to_vec(),
        oversized,
    })
}

fn with_oidc(text: String, at: Option<u16>) -> String {
    match at {
        Some(at) => String::from_utf8_lossy(&splice(text.as_bytes(), at, OIDC)).into_owned(),
        None => text,
    }
}

fuzz_target!(|input: Input| {
    let manifest = match &input.manifest {
        Manifest::Known(i) => MANIFESTS[*i as usize % MANIFESTS.len()].to_string(),
        Manifest::Raw(s) => s.clone(),
    };
    let namespace = input.namespace.clone().unwrap_or_else(|| "team-a".into());
    let token = match &input.token {
        Token::Good { lead, trail } => Ok(format!(
            "{}{OIDC}{}",
            " \n\t".repeat(*lead as usize % 4),
            "\r\n ".repeat(*trail as usize % 4)
        )),
        Token::Blank(n) => Ok(" ".repeat(*n as usize % 4)),
        Token::Fails(why) => Err(why.clone()),
    };
    // Texts the fuzzer wrote itself may contain the access signature (it can
    // learn it from our own comparisons); only scripted tokens count.
    let mut fuzzer_texts: Vec<Vec<u8>> = vec![manifest.clone().into_bytes(), namespace.clone().into_bytes()];
    // Per scripted reply: the access token it offers and what `expiry` must
    // give for it, when it is a success answer of ours.
    let mut offered: Vec<Option<(String, Result<String, JwtError>)>> = Vec::new();
    let replies: VecDeque<_> = input
        .replies
        .iter()
        .take(8)
        .map(|r| {
            let mut offers = None;
            let reply = match r {
                Reply::Answer {
                    status,
                    retry_after,
                    body,
                } => {
                    let body = match body {
                        Body::Raw(b) => {
                            fuzzer_texts.push(b.clone());
                            b.clone()
                        }
                        Body::Access(exp) => {
                            let t = access_token(exp);
                            let body = serde_json::json!({ "token": t }).to_string().into_bytes();
                            if matches!(status, 200 | 201) && body.len() <= MAX_ANSWER_BYTES {
                                offers = Some((t, expected_expiry(exp)));
                            } else {
                                // Not a token we were given: an error body that
                                // happens to hold one is the server's to quote.
                                fuzzer_texts.push(body.clone());
                            }
                            body
                        }
                        Body::Echo(b, at) => {
                            fuzzer_texts.push(b.clone());
                            splice(b, *at, OIDC)
                        }
                    };
                    answer(*status, retry_after, body)
                }
                Reply::Denied(m, at) | Reply::Timeout(m, at) | Reply::Failed(m, at) => {
                    fuzzer_texts.push(m.clone().into_bytes());
                    let m = with_oidc(m.clone(), *at);
                    Err(match r {
                        Reply::Denied(..) => TransportError::Denied(m),
                        Reply::Timeout(..) => TransportError::Timeout(m),
                        _ => TransportError::Failed(m),
                    })
                }
            };
            offered.push(offers);
            reply
        })
        .collect();
    if let Err(why) = &token {
        fuzzer_texts.push(why.clone().into_bytes());
    }
    let policy = RetryPolicy {
        max_attempts: 1 + input.max_attempts as u32 % 6,
        deadline: Duration::from_secs(1 + input.deadline_s as u64 % 90),
        ..RetryPolicy::default()
    };
    let mut fake = Fake {
        token,
        replies,
        send_cost: Duration::from_millis(input.send_cost_ms as u64),
        clock: Duration::ZERO,
        now: input.now.map(u64::from),
        sent: vec![],
        sleeps: vec![],
    };

    let result = generate_with(&mut fake, &manifest, &namespace, &policy);

    let sends = fake.sent.len();
    assert!(sends as u32 <= policy.max_attempts, "{sends} sends");
    assert_eq!(fake.sleeps.len(), sends.saturating_sub(1).min(fake.sleeps.len()));
    assert!(fake.sleeps.len() + 1 >= sends, "sent without waiting");
    // A request went out only for an accepted manifest.
    let service_slug = match parse_manifest(&manifest) {
        Ok(spec) => Some(spec.service_slug),
        Err(_) => None,
    };
    for (request, _) in &fake.sent {
        assert_no_secret("request debug", &format!("{request:?}"), OIDC);
        let body = members::<serde_json::Value>(&request.body, &["oidc_token", "service_slug"])
            .expect("request body is JSON")
            .expect("request body is an object");
        let keys: Vec<&str> = body.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["oidc_token", "service_slug"]);
        // Trimmed before sending.
        assert_eq!(body[0].1.as_ref().and_then(|v| v.as_str()), Some(OIDC));
        assert_eq!(
            body[1].1.as_ref().and_then(|v| v.as_str()),
            service_slug.as_deref()
        );
    }
    // The reply the last send got: replies are served in order, the last
    // one repeating.
    let last = match (sends, offered.len()) {
        (0, _) | (_, 0) => None,
        (s, n) => offered[(s - 1).min(n - 1)].as_ref(),
    };
    for delay in &fake.sleeps {
        assert!(
            *delay <= policy.max_retry_after.max(policy.max_delay),
            "{delay:?}"
        );
    }

    match result {
        Ok(out) => {
            let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["auth", "expiry"]);
            let auth = String::from_utf8(STANDARD.decode(&out[0].1).unwrap()).unwrap();
            let token = auth.strip_prefix("token:").expect("auth starts with token:");
            let Some((offered, expected)) = last else {
                panic!("a result without a success answer of ours: {out:?}");
            };
            assert_eq!(token, offered, "auth holds another token than the last answer's");
            let expiry = std::str::from_utf8(&out[1].1).unwrap();
            assert!(
                expiry_matches(&Ok(expiry.to_string()), expected),
                "expiry {expiry}, want {expected:?}"
            );
            assert!(sends >= 1);
        }
        Err(e) => {
            let shown = e.to_string();
            let debug = format!("{e:?}");
            assert_one_line("error", &shown);
            // Fixed text, a cut quotation and, for failed attempts, the URL.
            let url = fake.sent.first().map_or(0, |(r, _)| r.url().chars().count());
            assert!(
                shown.chars().count() <= 400 + url,
                "{} chars: {shown}",
                shown.chars().count()
            );
            // A success answer of ours that failed failed on its token.
            if let Some((_, expected)) = last {
                match expected {
                    Ok(exp) => panic!("token with expiry {exp} refused: {e}"),
                    Err(why) => assert_eq!(e, GenerateError::InvalidToken(why.to_string())),
                }
            }
            let before_any_request =
                matches!(e, GenerateError::InvalidSpec(_) | GenerateError::TokenSource(_));
            if before_any_request {
                assert_eq!(sends, 0, "{e:?}");
            } else {
                // The manifest and the token source's reason are ours to quote
                // (they were written before any token existed); from here on
                // the OIDC token must never show.
                assert_no_secret("error", &shown, OIDC);
                assert_no_secret("error debug", &debug, OIDC);
                assert!(sends >= 1);
            }
            let fuzzer_wrote_sig = fuzzer_texts
                .iter()
                .any(|t| t.windows(ACCESS_SIG.len()).any(|w| w == ACCESS_SIG.as_bytes()));
            if !fuzzer_wrote_sig {
                assert_no_secret("error", &shown, ACCESS_SIG);
                assert_no_secret("error debug", &debug, ACCESS_SIG);
            }
            if let GenerateError::Upstream(u) = &e {
                assert_eq!(u.attempts as usize, sends);
            }
        }
    }
});
