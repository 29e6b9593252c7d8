//! The OIDC exchange as data: the request to send, what an answer means, and
//! when to try again. Nothing here does I/O, so all of it is unit-tested.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;

use crate::de::{Field, Object};

use crate::error::{GenerateError, UpstreamFailure, UpstreamStatus};
use crate::sanitize::{one_line, redact};
use crate::secret::Secret;
use crate::spec::{Scheme, Spec};

/// A token answer is a few hundred bytes; anything past this is refused
/// rather than buffered.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How many characters of a non-JSON error body an error may quote (the
/// official CLI quotes 200).
const BODY_PREFIX_CHARS: usize = 200;

/// Sent so Cloudsmith's logs can tell this client apart.
pub const USER_AGENT: &str = concat!("cloudsmith-access-token-wasm/", env!("CARGO_PKG_VERSION"));

/// An outgoing HTTP request, described as data for the transport to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// `https` or `http`.
    pub scheme: Scheme,
    /// Host and optional port.
    pub authority: String,
    /// Absolute path (no query).
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body; holds the OIDC token.
    pub body: Vec<u8>,
}

impl core::fmt::Debug for Request {
    // The body carries the OIDC token: never print it.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Request")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .field("body", &format_args!("[redacted, {} bytes]", self.body.len()))
            .finish()
    }
}

impl Request {
    /// `scheme://authority/path`, for messages (no secret in it).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme.as_str(), self.authority, self.path)
    }
}

/// The body of Cloudsmith's `openid_create` operation.
#[derive(Serialize)]
struct ExchangeBody<'a> {
    oidc_token: &'a str,
    service_slug: &'a str,
}

/// Cloudsmith's answer: `{"token": "<JWT>"}` on success; on failure an
/// explanation in `detail` (other gateways use `error`). One type for both,
/// typed after parsing, so that a token of the wrong type is told apart from a
/// missing one.
///
/// `token` is read as ESO reads it: `json.Unmarshal` into a struct with one
/// field tagged `json:"token"` (v0.20.4 pkg/generator/cloudsmith/cloudsmith.go,
/// OIDCResponse). Go's decoder matches a member to that field case-insensitively
/// (`Token`, `TOKEN`; encoding/json/fold.go), lets a later member replace an
/// earlier one, leaves the field alone for `null`, and fails the whole answer
/// if any such member is not a string.
struct AnswerBody {
    token: TokenMember,
    detail: Once,
    error: Once,
}

/// What the `token` members left in Go's string field.
enum TokenMember {
    /// None, or only `null`s: the empty string.
    Absent,
    /// The last string.
    Str(String),
    /// One of them is neither a string nor `null`: Go's decode error.
    NotString,
}

/// A member of our own reading (`detail`, `error`): given once, or not usable.
enum Once {
    Absent,
    One(Field),
    /// Given twice: which one is meant is unclear, so the body is shown instead.
    Many,
}

impl Once {
    fn field(self) -> Option<Field> {
        match self {
            Once::One(f) => Some(f),
            Once::Absent | Once::Many => None,
        }
    }
}

impl<'de> Deserialize<'de> for AnswerBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnswerVisitor)
    }
}

struct AnswerVisitor;

impl<'de> Visitor<'de> for AnswerVisitor {
    type Value = AnswerBody;

    fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnswerBody, A::Error> {
        let mut body = AnswerBody {
            token: TokenMember::Absent,
            detail: Once::Absent,
            error: Once::Absent,
        };
        let once = |slot: &mut Once, value: Field| {
            *slot = match slot {
                Once::Absent => Once::One(value),
                Once::One(_) | Once::Many => Once::Many,
            }
        };
        while let Some(key) = map.next_key::<AnswerKey>()? {
            match key {
                AnswerKey::Token => match map.next_value::<Option<Field>>()? {
                    None => {}
                    // Once another type was seen, the member stays refused (a string
                    // after it does not make it good again).
                    Some(Field::Str(t)) if !matches!(body.token, TokenMember::NotString) => {
                        body.token = TokenMember::Str(t);
                    }
                    Some(_) => body.token = TokenMember::NotString,
                },
                AnswerKey::Detail => once(&mut body.detail, map.next_value()?),
                AnswerKey::Error => once(&mut body.error, map.next_value()?),
                AnswerKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(body)
    }
}

/// A member's name, classified without keeping its text.
enum AnswerKey {
    Token,
    Detail,
    Error,
    Other,
}

impl<'de> Deserialize<'de> for AnswerKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(AnswerKeyVisitor)
    }
}

struct AnswerKeyVisitor;

impl Visitor<'_> for AnswerKeyVisitor {
    type Value = AnswerKey;

    fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<AnswerKey, E> {
        Ok(match v {
            "detail" => AnswerKey::Detail,
            "error" => AnswerKey::Error,
            _ if folds_to_token(v) => AnswerKey::Token,
            _ => AnswerKey::Other,
        })
    }
}

/// Whether Go's encoding/json matches member `name` to a field named `token`:
/// equal under its case folding (foldName: ASCII letters upper-cased, any
/// other rune to the smallest of its Unicode simple-fold orbit, which for
/// these letters adds only U+212A KELVIN SIGN, folding to `K`).
fn folds_to_token(name: &str) -> bool {
    let mut folded = name.chars().map(|c| match c {
        '\u{212A}' => 'K',
        c => c.to_ascii_uppercase(),
    });
    "TOKEN".chars().all(|t| folded.next() == Some(t)) && folded.next().is_none()
}

/// Builds `POST {base}/openid/{org}/` with the JSON body Cloudsmith's
/// `openid_create` operation takes.
pub fn build_request(spec: &Spec, oidc_token: &Secret) -> Request {
    let body = serde_json::to_vec(&ExchangeBody {
        oidc_token: oidc_token.expose(),
        service_slug: &spec.service_slug,
    })
    // Serializing two strings into a Vec cannot fail.
    .unwrap_or_default();
    Request {
        scheme: spec.api.scheme,
        authority: spec.api.authority.clone(),
        path: format!("{}/openid/{}/", spec.api.path, spec.org_slug),
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("accept", "application/json".to_string()),
            // The size is known: some gateways refuse chunked POSTs.
            ("content-length", body.len().to_string()),
            ("user-agent", USER_AGENT.to_string()),
        ],
        body,
    }
}

/// What came back from one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// At most [`MAX_ANSWER_BYTES`] of the body.
    pub body: Vec<u8>,
    /// True when the body was longer than [`MAX_ANSWER_BYTES`] (or declared so).
    pub oversized: bool,
}

/// Why an attempt got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The host's policy refused the request; retrying cannot help.
    Denied(String),
    /// A timeout (connect, first byte, between bytes).
    Timeout(String),
    /// Any other network or protocol failure.
    Failed(String),
}

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: the access token.
    Token(Secret),
    /// Worth another attempt: after `retry_after` if the server said so; this
    /// error stands if no attempt is left.
    Retry {
        /// The server's requested wait.
        retry_after: Option<Duration>,
        /// The failure to report when retries run out.
        error: GenerateError,
    },
    /// Final failure.
    Fail(GenerateError),
}

/// Interprets an answer. `now_unix` lets an HTTP-date `Retry-After` be read;
/// `secrets` are scrubbed from any body text quoted in an error.
pub fn interpret(answer: &Answer, now_unix: Option<u64>, secrets: &[&str]) -> Verdict {
    let status = answer.status;
    match status {
        200 | 201 => token_from(answer),
        429 => {
            let wait = answer
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_unix));
            Verdict::Retry {
                retry_after: wait,
                error: GenerateError::RateLimited {
                    retry_after_seconds: wait.map(|d| d.as_secs().min(u32::MAX as u64) as u32),
                    detail: detail(answer, secrets),
                },
            }
        }
        401 | 403 => Verdict::Fail(GenerateError::Unauthorized(UpstreamStatus {
            status,
            detail: detail(answer, secrets),
        })),
        400..=499 => Verdict::Fail(GenerateError::Rejected(UpstreamStatus {
            status,
            detail: detail(answer, secrets),
        })),
        500..=599 => Verdict::Retry {
            retry_after: answer
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_unix)),
            error: GenerateError::Upstream(UpstreamFailure {
                status: Some(status),
                detail: detail(answer, secrets),
                attempts: 1,
            }),
        },
        300..=399 => Verdict::Fail(GenerateError::Upstream(UpstreamFailure {
            status: Some(status),
            detail: "unexpected redirect (redirects are not followed)".to_string(),
            attempts: 1,
        })),
        _ => Verdict::Fail(GenerateError::Upstream(UpstreamFailure {
            status: Some(status),
            detail: "unexpected status".to_string(),
            attempts: 1,
        })),
    }
}

/// Classifies a transport failure: policy refusals are final, the rest may
/// pass. `secrets` are scrubbed from the host's message before it is cut, so
/// a cut cannot leave part of a secret behind.
pub fn transport_verdict(err: &TransportError, url: &str, secrets: &[&str]) -> Verdict {
    let clean = |why: &str| one_line(&redact(why, secrets), 200);
    match err {
        TransportError::Denied(why) => Verdict::Fail(GenerateError::PolicyDenied(format!(
            "request to {url} refused: {}",
            clean(why)
        ))),
        TransportError::Timeout(why) | TransportError::Failed(why) => Verdict::Retry {
            retry_after: None,
            error: GenerateError::Upstream(UpstreamFailure {
                status: None,
                detail: format!("request to {url} failed: {}", clean(why)),
                attempts: 1,
            }),
        },
    }
}

fn token_from(answer: &Answer) -> Verdict {
    let invalid = |m: &str| Verdict::Fail(GenerateError::InvalidToken(m.to_string()));
    if answer.oversized {
        return Verdict::Fail(GenerateError::InvalidToken(format!(
            "answer is larger than {MAX_ANSWER_BYTES} bytes"
        )));
    }
    let Ok(Object::Is(parsed)) = serde_json::from_slice::<Object<AnswerBody>>(&answer.body) else {
        return invalid("answer is not a JSON object");
    };
    match parsed.token {
        TokenMember::Str(t) if !t.is_empty() => Verdict::Token(Secret::new(t)),
        TokenMember::Str(_) | TokenMember::Absent => invalid("token not found in response"),
        TokenMember::NotString => invalid("token in response is not a string"),
    }
}

/// Cloudsmith's `detail` (or `error`) field, else a sanitized prefix of the body.
fn detail(answer: &Answer, secrets: &[&str]) -> String {
    // A structured detail (a list of field errors, say) is best shown as the
    // body itself, which the fallback below quotes.
    let explain = |v: Option<Field>| match v {
        Some(Field::Str(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    let from_json = match serde_json::from_slice::<Object<AnswerBody>>(&answer.body) {
        Ok(Object::Is(e)) => explain(e.detail.field()).or_else(|| explain(e.error.field())),
        _ => None,
    };
    let text = match from_json {
        Some(s) => s,
        None if answer.body.is_empty() => return "(empty body)".to_string(),
        None => String::from_utf8_lossy(&answer.body).into_owned(),
    };
    // Scrub before cutting, so a cut cannot leave half a secret behind.
    one_line(&redact(&text, secrets), BODY_PREFIX_CHARS)
}

/// Parses `Retry-After`: delta-seconds, or an IMF-fixdate when the current
/// time is known.
pub fn parse_retry_after(value: &str, now_unix: Option<u64>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_imf_fixdate(value)?;
    Some(Duration::from_secs(at.saturating_sub(now_unix?)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` to UNIX seconds.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let rest = s.get(5..)?; // skip "Sun, "
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // HTTP dates are four-digit years; bounding the year also keeps the
    // arithmetic below far from overflow.
    if it.next()? != "GMT"
        || !(1970..=9999).contains(&year)
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// Bounds on retrying, and on the whole call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Cap on the doubled wait.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this ends the call instead of waiting.
    pub max_retry_after: Duration,
    /// The whole call, attempts and waits together, ends by then.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
            deadline: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before the next attempt, or `None` to stop now.
    /// `attempts` is how many were made; `elapsed` is time since the call began.
    pub fn next_delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        elapsed: Duration,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = match retry_after {
            Some(wait) if wait > self.max_retry_after => return None,
            Some(wait) => wait,
            None => {
                let doubled = self
                    .base_delay
                    .saturating_mul(1u32 << (attempts.saturating_sub(1)).min(16));
                doubled.min(self.max_delay)
            }
        };
        if elapsed.saturating_add(delay) >= self.deadline {
            return None;
        }
        Some(delay)
    }

    /// Per-attempt timeouts: each at most its usual value and never past the
    /// call's deadline.
    pub fn timeouts(&self, elapsed: Duration) -> Timeouts {
        let left = self.deadline.saturating_sub(elapsed);
        Timeouts {
            connect: left.min(Duration::from_secs(10)),
            first_byte: left.min(Duration::from_secs(30)),
            between_bytes: left.min(Duration::from_secs(30)),
        }
    }
}

/// Timeouts for one attempt, passed to `wasi:http` as request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the connection.
    pub connect: Duration,
    /// From sending the request to the first byte of the answer.
    pub first_byte: Duration,
    /// Between body chunks.
    pub between_bytes: Duration,
}

#[cfg(test)]
mod tests;
