//! `interpret` and `parse_retry_after` on structured answers: every status
//! lands in its class, the token read matches an independent JSON parser,
//! and no error quotes the OIDC token or spans lines.
#![no_main]

use arbitrary::Arbitrary;
use cloudsmith_access_token::exchange::{
    interpret, parse_retry_after, transport_verdict, Answer, TransportError, Verdict,
};
use cloudsmith_access_token::GenerateError;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::*;

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
    oversized: bool,
    now: Option<u64>,
    /// When set, the OIDC token is spliced into the body there.
    echo_at: Option<u16>,
    transport: u8,
}

const URL: &str = "https://api.cloudsmith.io/openid/org/";

fuzz_target!(|input: Input| {
    let body = match input.echo_at {
        Some(at) => splice(&input.body, at, OIDC),
        None => input.body.clone(),
    };
    let answer = Answer {
        status: input.status,
        retry_after: input.retry_after.clone(),
        body,
        oversized: input.oversized,
    };
    let wait = input
        .retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, input.now));
    check_retry_after(input.retry_after.as_deref(), input.now, wait);

    let verdict = interpret(&answer, input.now, &[OIDC]);
    let status = input.status;
    match &verdict {
        Verdict::Token(token) => {
            assert!(matches!(status, 200 | 201) && !input.oversized, "{status}");
            // The token must be what any JSON parser reads from the body.
            match serde_json::from_slice::<serde_json::Value>(&answer.body) {
                Ok(parsed) => assert_eq!(parsed["token"].as_str(), Some(token.expose())),
                // serde_json refuses numbers beyond f64; JSON itself does not.
                Err(e) if e.to_string().starts_with("number out of range") => {}
                Err(e) => panic!("a token came from a body serde_json refuses: {e}"),
            }
            assert!(!token.expose().is_empty());
        }
        Verdict::Fail(error) => {
            match (status, error) {
                (200 | 201, GenerateError::InvalidToken(_)) => {
                    if !input.oversized {
                        // Refused only if an ordinary parser finds no string token either.
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&answer.body) {
                            let t = v.get("token").and_then(|t| t.as_str());
                            assert!(
                                t.is_none_or(str::is_empty) || !v.is_object(),
                                "refused a token serde_json reads: {t:?}"
                            );
                        }
                    }
                }
                (401 | 403, GenerateError::Unauthorized(u)) | (400..=499, GenerateError::Rejected(u)) => {
                    assert_eq!(u.status, status);
                    assert!(status != 429);
                }
                (300..=399, GenerateError::Upstream(u)) => assert_eq!(u.status, Some(status)),
                (s, GenerateError::Upstream(u)) => {
                    assert!(!(200..=201).contains(&s) && !(300..=599).contains(&s), "{s}");
                    assert_eq!(u.status, Some(s));
                }
                (s, e) => panic!("status {s} gave {e:?}"),
            }
            check_error(error);
        }
        Verdict::Retry { retry_after, error } => {
            assert!(status == 429 || (500..=599).contains(&status), "{status} retried");
            assert_eq!(*retry_after, wait);
            match error {
                GenerateError::RateLimited {
                    retry_after_seconds, ..
                } => {
                    assert_eq!(status, 429);
                    assert_eq!(
                        *retry_after_seconds,
                        wait.map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                    );
                }
                GenerateError::Upstream(u) => assert_eq!(u.status, Some(status)),
                e => panic!("retry with {e:?}"),
            }
            check_error(error);
        }
    }

    // The body as a host's transport message (which may quote anything).
    let why = String::from_utf8_lossy(&answer.body).into_owned();
    let err = match input.transport % 3 {
        0 => TransportError::Denied(why),
        1 => TransportError::Timeout(why),
        _ => TransportError::Failed(why),
    };
    let (Verdict::Fail(e) | Verdict::Retry { error: e, .. }) = transport_verdict(&err, URL, &[]) else {
        panic!("a transport error gave a token");
    };
    let msg = e.to_string();
    assert_one_line("transport error", &msg);
    assert!(msg.contains(URL), "{msg}");
});

fn check_error(error: &GenerateError) {
    let shown = error.to_string();
    assert_one_line("error", &shown);
    assert_no_secret("error", &shown, OIDC);
    assert_no_secret("error debug", &format!("{error:?}"), OIDC);
    let detail = match error {
        GenerateError::Unauthorized(u) | GenerateError::Rejected(u) => &u.detail,
        GenerateError::RateLimited { detail, .. } => detail,
        GenerateError::Upstream(u) => &u.detail,
        _ => return,
    };
    // 200 characters and the cut mark, at most.
    assert!(detail.chars().count() <= 201, "{} chars", detail.chars().count());
}

fn check_retry_after(value: Option<&str>, now: Option<u64>, wait: Option<std::time::Duration>) {
    let Some(value) = value else { return };
    let t = value.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(wait.map(|d| d.as_secs()), t.parse::<u64>().ok(), "{value:?}");
    } else if now.is_none() {
        // A date means nothing without a clock.
        assert_eq!(wait, None, "{value:?}");
    } else if wait.is_some() {
        assert!(t.ends_with(" GMT") && t.len() >= 29, "accepted {value:?}");
    }
}
