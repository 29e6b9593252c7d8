//! `interpret` and `parse_retry_after` on structured answers: every status
//! lands in its class, the token and the detail read are what a reference
//! reading of the same JSON gives (duplicates counted, which
//! `serde_json::Value` would hide), and no error quotes the OIDC token,
//! spans lines or runs long.
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
            assert_eq!(expected_token(&answer.body).as_deref(), Some(token.expose()));
        }
        Verdict::Fail(error) => {
            match (status, error) {
                (200 | 201, GenerateError::InvalidToken(m)) => {
                    if input.oversized {
                        assert!(m.starts_with("answer is larger than"), "{m}");
                    } else {
                        assert_eq!(expected_token(&answer.body), None, "refused {m}");
                        assert!(
                            [
                                "answer is not a JSON object",
                                "token not found in response",
                                "token in response is not a string"
                            ]
                            .contains(&m.as_str()),
                            "{m}"
                        );
                    }
                }
                (401 | 403, GenerateError::Unauthorized(u)) | (400..=499, GenerateError::Rejected(u)) => {
                    assert_eq!(u.status, status);
                    assert!(status != 429);
                    check_detail(&u.detail, &answer.body);
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
                    retry_after_seconds,
                    detail,
                } => {
                    assert_eq!(status, 429);
                    assert_eq!(
                        *retry_after_seconds,
                        wait.map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                    );
                    check_detail(detail, &answer.body);
                }
                GenerateError::Upstream(u) => {
                    assert_eq!(u.status, Some(status));
                    check_detail(&u.detail, &answer.body);
                }
                e => panic!("retry with {e:?}"),
            }
            check_error(error);
        }
    }

    // The body as a host's transport message (which may quote anything,
    // the OIDC token included).
    let why = String::from_utf8_lossy(&answer.body).into_owned();
    let err = match input.transport % 3 {
        0 => TransportError::Denied(why),
        1 => TransportError::Timeout(why),
        _ => TransportError::Failed(why),
    };
    let (Verdict::Fail(e) | Verdict::Retry { error: e, .. }) = transport_verdict(&err, URL, &[OIDC]) else {
        panic!("a transport error gave a token");
    };
    let msg = e.to_string();
    assert_one_line("transport error", &msg);
    assert_no_secret("transport error", &msg, OIDC);
    assert!(msg.contains(URL), "{msg}");
    // Fixed text, the URL and 200 characters of the host's message, at most.
    let bound = 100 + URL.len() + 201;
    assert!(
        msg.chars().count() <= bound,
        "{} chars: {msg}",
        msg.chars().count()
    );
});

/// The token a success answer holds, as Go's encoding/json fills ESO's
/// `Token string \`json:"token"\`` field: every top-level member whose name
/// lower-cases to `token` (Go matches names case-insensitively, the Kelvin
/// sign for `k` included), in order; `null` leaves the field alone, a later
/// string replaces an earlier one, any other value fails the decode. An empty
/// result is no token.
fn expected_token(body: &[u8]) -> Option<String> {
    let members = token_members(body).ok()??;
    let mut token = String::new();
    for value in members {
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(t) => token = t,
            _ => return None,
        }
    }
    (!token.is_empty()).then_some(token)
}

/// The values of the top-level members named like `token` (see above), in order;
/// `Ok(None)` for a document that is not an object.
fn token_members(body: &[u8]) -> Result<Option<Vec<serde_json::Value>>, serde_json::Error> {
    let members = members_where::<serde_json::Value>(body, &|k| k.to_lowercase() == "token")?;
    Ok(members.map(|m| m.into_iter().filter_map(|(_, v)| v).collect()))
}

/// The text an error answer's detail quotes: a non-blank string `detail`,
/// else a non-blank string `error`, else the body itself (a structured
/// detail, a list of field errors say, included); `None` for an empty body.
fn expected_detail_text(body: &[u8]) -> Option<String> {
    let text = |v: &[&serde_json::Value]| match v {
        [serde_json::Value::String(s)] if s.chars().any(|c| !c.is_whitespace()) => Some(s.clone()),
        _ => None,
    };
    if let Ok(Some(m)) = members::<serde_json::Value>(body, &["detail", "error"]) {
        let (detail, error) = (all(&m, "detail"), all(&m, "error"));
        // A field given twice makes the answer unreadable: the body it is.
        if detail.len() <= 1 && error.len() <= 1 {
            if let Some(s) = text(&detail).or_else(|| text(&error)) {
                return Some(s);
            }
        }
    }
    (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

/// Text that quoting leaves alone: short, no secret, single spaces only.
fn quoted_verbatim(s: &str) -> bool {
    s.chars().count() <= 200
        && !s.contains(OIDC)
        && !s.contains("  ")
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && s.chars()
            .all(|c| c == ' ' || !(c.is_whitespace() || c.is_control()))
}

fn check_detail(detail: &str, body: &[u8]) {
    match expected_detail_text(body) {
        None => assert_eq!(detail, "(empty body)"),
        Some(text) if quoted_verbatim(&text) => assert_eq!(detail, text),
        Some(_) => {}
    }
}

fn check_error(error: &GenerateError) {
    let shown = error.to_string();
    assert_one_line("error", &shown);
    assert!(
        shown.chars().count() <= 300,
        "{} chars: {shown}",
        shown.chars().count()
    );
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
