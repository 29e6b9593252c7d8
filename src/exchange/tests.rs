//! The exchange as data: the request built, what every kind of answer means,
//! and the retry arithmetic, each case with its exact result.

use super::*;
use crate::spec::parse_manifest;

const OIDC: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLW9mLXRoZS1vaWRjLXRva2Vu";
const URL: &str = "https://api.cloudsmith.io/openid/my-org/";

fn spec(api_url: Option<&str>) -> Spec {
    let api = api_url.map(|u| format!(r#""apiUrl":"{u}","#)).unwrap_or_default();
    let manifest = format!(
        r#"{{{api}"orgSlug":"my-org","serviceSlug":"my-svc","serviceAccountRef":{{"name":"default"}}}}"#
    );
    parse_manifest(&manifest).unwrap()
}

/// The body's members in document order (the exact bytes are checked
/// separately where they are predictable). serde_json's map is sorted by key,
/// so the order comes from where each key sits in the raw text.
fn body_members(r: &Request) -> Vec<(String, String)> {
    let text = core::str::from_utf8(&r.body).expect("body is UTF-8");
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => {
            let mut members: Vec<(usize, String, String)> = map
                .into_iter()
                .map(|(k, v)| {
                    let at = text.find(&format!("\"{k}\":")).expect("key in body");
                    (at, k, v.as_str().expect("string member").to_string())
                })
                .collect();
            members.sort();
            members.into_iter().map(|(_, k, v)| (k, v)).collect()
        }
        other => panic!("body is not a JSON object: {other:?}"),
    }
}

fn members(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        retry_after: None,
        body: body.as_bytes().to_vec(),
        oversized: false,
    }
}

fn with_retry_after(mut a: Answer, v: &str) -> Answer {
    a.retry_after = Some(v.to_string());
    a
}

fn verdict(a: &Answer) -> Verdict {
    interpret(a, None, &[OIDC])
}

fn fail(e: GenerateError) -> Verdict {
    Verdict::Fail(e)
}

fn status(status: u16, detail: &str) -> UpstreamStatus {
    UpstreamStatus {
        status,
        detail: detail.to_string(),
    }
}

fn upstream(status: Option<u16>, detail: &str) -> GenerateError {
    GenerateError::Upstream(UpstreamFailure {
        status,
        detail: detail.to_string(),
        attempts: 1,
    })
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------- build_request

#[test]
fn request_is_a_post_to_openid_org_with_the_json_body() {
    let token = Secret::new(OIDC);
    for (api_url, scheme, authority, path) in [
        (None, Scheme::Https, "api.cloudsmith.io", "/openid/my-org/"),
        (
            Some("https://api.cloudsmith.io/v1/"),
            Scheme::Https,
            "api.cloudsmith.io",
            "/v1/openid/my-org/",
        ),
        (
            Some("http://localhost:8080/proxy"),
            Scheme::Http,
            "localhost:8080",
            "/proxy/openid/my-org/",
        ),
    ] {
        let r = build_request(&spec(api_url), &token);
        assert_eq!(r.scheme, scheme);
        assert_eq!(r.authority, authority);
        assert_eq!(r.path, path);
        assert_eq!(r.url(), format!("{}://{authority}{path}", scheme.as_str()));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!(r#"{{"oidc_token":"{OIDC}","service_slug":"my-svc"}}"#)
        );
    }
}

#[test]
fn request_headers() {
    let r = build_request(&spec(None), &Secret::new(OIDC));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "accept"), Some("application/json"));
    // Gateways compare it with the bytes sent: it must be exact.
    assert_eq!(
        header(&r, "content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(header(&r, "user-agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("cloudsmith-access-token-wasm/"));
    let mut names: Vec<&str> = r.headers.iter().map(|(n, _)| *n).collect();
    assert!(names.iter().all(|n| *n == n.to_ascii_lowercase()), "{names:?}");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), r.headers.len(), "duplicate header");
    // No credential travels in a header: the token is in the body only.
    assert!(r.headers.iter().all(|(_, v)| !v.contains(OIDC)));
}

#[test]
fn request_body_escapes_any_token_text() {
    // Tokens come from a host; whatever they hold, the body must stay JSON.
    for odd in [
        "a\"b\\c",
        "line\nbreak",
        "tab\tcr\r",
        "\u{1}\u{1f}",
        "ünï©ødé",
        "</script>",
    ] {
        let r = build_request(&spec(None), &Secret::new(odd));
        assert_eq!(
            body_members(&r),
            members(&[("oidc_token", odd), ("service_slug", "my-svc")]),
            "{odd:?}"
        );
        assert_eq!(
            header(&r, "content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
}

#[test]
fn request_debug_never_shows_the_token() {
    let r = build_request(&spec(None), &Secret::new(OIDC));
    let debug = format!("{r:?}");
    assert!(!debug.contains(OIDC), "{debug}");
    assert!(!debug.contains("c2lnbmF0dXJl"), "{debug}");
    assert!(debug.contains("api.cloudsmith.io"), "{debug}");
    assert!(debug.contains(&format!("{} bytes", r.body.len())), "{debug}");
}

// ---------------------------------------------------------------- interpret: success

#[test]
fn success_statuses_give_the_token() {
    for s in [200, 201] {
        assert_eq!(
            verdict(&answer(s, r#"{"token":"eyJ.access.tok"}"#)),
            Verdict::Token(Secret::new("eyJ.access.tok")),
            "{s}"
        );
    }
    // Extra fields (Cloudsmith may add some) do not matter.
    assert_eq!(
        verdict(&answer(201, r#"{"token":"t","expires_in":3600}"#)),
        Verdict::Token(Secret::new("t"))
    );
}

#[test]
fn success_without_a_usable_token_is_invalid_token() {
    let not_found = "token not found in response";
    let not_json = "answer is not a JSON object";
    let cases: [(&str, &str); 10] = [
        (r#"{"token":""}"#, not_found),
        (r#"{}"#, not_found),
        (r#"{"token":null}"#, not_found),
        (r#"{"access":"t"}"#, not_found),
        (r#"{"token":5}"#, "token in response is not a string"),
        (r#"{"token":["t"]}"#, "token in response is not a string"),
        ("token=abc", not_json),
        (r#"["t"]"#, not_json),
        ("", not_json),
        (r#"{"token":"t""#, not_json),
    ];
    for s in [200, 201] {
        for (body, why) in cases {
            assert_eq!(
                verdict(&answer(s, body)),
                fail(GenerateError::InvalidToken(why.into())),
                "{s} {body}"
            );
        }
    }
}

/// ESO reads the answer with Go's encoding/json into `Token string \`json:"token"\``
/// (tests/eso_parity.rs runs ESO's generator on the same bodies).
#[test]
fn token_is_read_as_gos_decoder_fills_esos_field() {
    let token = |t: &str| Verdict::Token(Secret::new(t));
    let cases: [(&str, Verdict); 9] = [
        // Names match case-insensitively, the Kelvin sign for k too.
        (r#"{"Token":"a"}"#, token("a")),
        (r#"{"TOKEN":"a"}"#, token("a")),
        ("{\"to\u{212A}en\":\"a\"}", token("a")),
        // A later member replaces an earlier one; null leaves it alone.
        (r#"{"token":"a","token":"b"}"#, token("b")),
        (r#"{"TOKEN":"a","token":"b"}"#, token("b")),
        (r#"{"token":"a","token":null}"#, token("a")),
        // A member of another type fails the whole decode, wherever it is.
        (
            r#"{"token":5,"token":"b"}"#,
            fail(GenerateError::InvalidToken(
                "token in response is not a string".into(),
            )),
        ),
        (
            r#"{"token":"a","Token":[1]}"#,
            fail(GenerateError::InvalidToken(
                "token in response is not a string".into(),
            )),
        ),
        // Not the same name under Go's folding.
        (
            r#"{"tokens":"a","to_ken":"b"}"#,
            fail(GenerateError::InvalidToken("token not found in response".into())),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(verdict(&answer(201, body)), want, "{body}");
    }
}

/// `detail` given twice names no one explanation: the body is quoted.
#[test]
fn a_detail_given_twice_quotes_the_body() {
    let body = r#"{"detail":"a","detail":"b"}"#;
    assert_eq!(
        verdict(&answer(400, body)),
        fail(GenerateError::Rejected(status(400, body)))
    );
}

#[test]
fn oversized_success_is_refused_even_if_its_prefix_parses() {
    let mut a = answer(201, r#"{"token":"eyJ.access.tok"}"#);
    a.oversized = true;
    assert_eq!(
        verdict(&a),
        fail(GenerateError::InvalidToken(format!(
            "answer is larger than {MAX_ANSWER_BYTES} bytes"
        )))
    );
    assert_eq!(MAX_ANSWER_BYTES, 65536);
}

#[test]
fn oversized_error_answer_still_reports_a_bounded_detail() {
    let mut a = answer(500, &"e".repeat(MAX_ANSWER_BYTES));
    a.oversized = true;
    let Verdict::Retry { error, .. } = verdict(&a) else {
        panic!("500 is retried")
    };
    assert_eq!(error, upstream(Some(500), &format!("{}…", "e".repeat(200))));
}

// ---------------------------------------------------------------- interpret: refusals

#[test]
fn client_errors_are_final_and_carry_cloudsmith_detail() {
    let body = r#"{"detail":"OIDC token cannot be authenticated"}"#;
    let detail = "OIDC token cannot be authenticated";
    for s in [401, 403] {
        assert_eq!(
            verdict(&answer(s, body)),
            fail(GenerateError::Unauthorized(status(s, detail))),
            "{s}"
        );
    }
    for s in [400, 404, 405, 409, 410, 413, 418, 422, 451, 499] {
        assert_eq!(
            verdict(&answer(s, body)),
            fail(GenerateError::Rejected(status(s, detail))),
            "{s}"
        );
    }
}

#[test]
fn detail_extraction() {
    let long = "x".repeat(500);
    let cut = format!("{}…", "x".repeat(200));
    let exactly_200 = "y".repeat(200);
    let cases: Vec<(String, String)> = vec![
        (
            r#"{"detail":"Missing or invalid parameters"}"#.into(),
            "Missing or invalid parameters".into(),
        ),
        (r#"{"error":"invalid_grant"}"#.into(), "invalid_grant".into()),
        (r#"{"detail":"d","error":"e"}"#.into(), "d".into()),
        // A non-string detail falls back to error...
        (r#"{"detail":5,"error":"e"}"#.into(), "e".into()),
        (r#"{"detail":null,"error":"e"}"#.into(), "e".into()),
        // ...and a structured detail is shown as the body that holds it.
        (
            r#"{"detail":{"service_slug":["required"]}}"#.into(),
            r#"{"detail":{"service_slug":["required"]}}"#.into(),
        ),
        (r#"{"detail":["a","b"]}"#.into(), r#"{"detail":["a","b"]}"#.into()),
        // JSON without either field: the body itself.
        (r#"{"message":"nope"}"#.into(), r#"{"message":"nope"}"#.into()),
        (r#"{"detail":5}"#.into(), r#"{"detail":5}"#.into()),
        // Non-JSON: a one-line prefix of at most 200 characters.
        (
            "<html>\n<body>Bad\tRequest</body>\r\n</html>\n".into(),
            "<html> <body>Bad Request</body> </html>".into(),
        ),
        (long.clone(), cut.clone()),
        (exactly_200.clone(), exactly_200),
        (format!("{{\"detail\":\"{long}\"}}"), cut),
        (
            "line1\u{0}\u{1b}[31mred\u{7}end".into(),
            "line1 [31mred end".into(),
        ),
        ("   ".into(), "".into()),
        (String::new(), "(empty body)".into()),
        (
            r#"{"detail":"multi\nline\u2028detail"}"#.into(),
            "multi line detail".into(),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            verdict(&answer(400, &body)),
            fail(GenerateError::Rejected(status(400, &want))),
            "{body:?}"
        );
    }
}

#[test]
fn non_utf8_error_body_is_quoted_lossily() {
    let a = Answer {
        status: 400,
        retry_after: None,
        body: vec![b'o', b'k', 0xff, 0xfe, b'!'],
        oversized: false,
    };
    assert_eq!(
        verdict(&a),
        fail(GenerateError::Rejected(status(400, "ok\u{fffd}\u{fffd}!")))
    );
}

#[test]
fn bodies_echoing_the_oidc_token_are_redacted() {
    let near_cut = format!("{}{OIDC}", "x".repeat(195));
    let cases = [
        (
            format!(r#"{{"detail":"token {OIDC} is not trusted"}}"#),
            "token [redacted] is not trusted".to_string(),
        ),
        (
            format!(r#"{{"detail":{{"oidc_token":"{OIDC}"}}}}"#),
            r#"{"detail":{"oidc_token":"[redacted]"}}"#.to_string(),
        ),
        (
            format!(r#"{{"oidc_token": "{OIDC}", "service_slug": "my-svc"}}"#),
            r#"{"oidc_token": "[redacted]", "service_slug": "my-svc"}"#.to_string(),
        ),
        (
            format!("bad token: {OIDC}\n{OIDC}"),
            "bad token: [redacted] [redacted]".to_string(),
        ),
        // Redaction comes before the cut, so no fragment survives it.
        (near_cut, format!("{}[reda…", "x".repeat(195))),
    ];
    for (s, kind) in [
        (400, "rejected"),
        (401, "unauthorized"),
        (429, "rate"),
        (503, "upstream"),
    ] {
        for (body, want) in &cases {
            let v = verdict(&answer(s, body));
            let shown = format!("{v:?}");
            assert!(!shown.contains(OIDC), "{kind}: {shown}");
            assert!(!shown.contains("c2lnbmF0dXJl"), "fragment left: {shown}");
            let got = match v {
                Verdict::Fail(GenerateError::Rejected(u) | GenerateError::Unauthorized(u)) => u.detail,
                Verdict::Retry {
                    error: GenerateError::RateLimited { detail, .. },
                    ..
                } => detail,
                Verdict::Retry {
                    error: GenerateError::Upstream(u),
                    ..
                } => u.detail,
                other => panic!("{s}: {other:?}"),
            };
            assert_eq!(&got, want, "{s} {body}");
        }
    }
}

// ---------------------------------------------------------------- interpret: retryable

#[test]
fn rate_limit_reads_retry_after() {
    let now = 1_700_000_000;
    let in_90s = "Tue, 14 Nov 2023 22:14:50 GMT"; // now + 90
    let cases: [(Option<&str>, Option<u64>); 7] = [
        (Some("2"), Some(2)),
        (Some("0"), Some(0)),
        (Some(in_90s), Some(90)),
        (Some("Tue, 14 Nov 2023 22:00:00 GMT"), Some(0)),
        (None, None),
        (Some("soon"), None),
        (Some("-5"), None),
    ];
    for (header, want) in cases {
        let mut a = answer(429, r#"{"detail":"Request was throttled."}"#);
        a.retry_after = header.map(str::to_string);
        assert_eq!(
            interpret(&a, Some(now), &[OIDC]),
            Verdict::Retry {
                retry_after: want.map(Duration::from_secs),
                error: GenerateError::RateLimited {
                    retry_after_seconds: want.map(|s| s as u32),
                    detail: "Request was throttled.".into(),
                },
            },
            "{header:?}"
        );
    }
}

#[test]
fn rate_limit_with_an_http_date_and_no_clock_has_no_wait() {
    let a = with_retry_after(answer(429, ""), "Tue, 14 Nov 2023 22:14:50 GMT");
    assert_eq!(
        interpret(&a, None, &[]),
        Verdict::Retry {
            retry_after: None,
            error: GenerateError::RateLimited {
                retry_after_seconds: None,
                detail: "(empty body)".into(),
            },
        }
    );
}

#[test]
fn rate_limit_seconds_saturate_at_u32() {
    let a = with_retry_after(answer(429, ""), "99999999999");
    let Verdict::Retry { retry_after, error } = verdict(&a) else {
        panic!("429 is retried")
    };
    assert_eq!(retry_after, Some(Duration::from_secs(99_999_999_999)));
    assert_eq!(
        error,
        GenerateError::RateLimited {
            retry_after_seconds: Some(u32::MAX),
            detail: "(empty body)".into()
        }
    );
}

#[test]
fn server_errors_are_retried_as_upstream() {
    for s in [500, 502, 503, 504, 599] {
        assert_eq!(
            verdict(&answer(s, "<h1>Service Unavailable</h1>")),
            Verdict::Retry {
                retry_after: None,
                error: upstream(Some(s), "<h1>Service Unavailable</h1>"),
            },
            "{s}"
        );
    }
    // A 503 may say when to come back.
    assert_eq!(
        verdict(&with_retry_after(answer(503, ""), "7")),
        Verdict::Retry {
            retry_after: Some(Duration::from_secs(7)),
            error: upstream(Some(503), "(empty body)"),
        }
    );
}

#[test]
fn redirects_are_not_followed() {
    for s in [300, 301, 302, 303, 307, 308] {
        let mut a = answer(s, "");
        a.retry_after = Some("1".into());
        assert_eq!(
            verdict(&a),
            fail(upstream(
                Some(s),
                "unexpected redirect (redirects are not followed)"
            )),
            "{s}"
        );
    }
}

#[test]
fn other_statuses_are_unexpected_and_final() {
    for s in [0, 100, 101, 102, 103, 202, 203, 204, 206, 299, 600, 999, u16::MAX] {
        assert_eq!(
            verdict(&answer(s, r#"{"token":"t"}"#)),
            fail(upstream(Some(s), "unexpected status")),
            "{s}"
        );
    }
}

// ---------------------------------------------------------------- transport

#[test]
fn transport_errors() {
    assert_eq!(
        transport_verdict(&TransportError::Denied("host not allowed".into()), URL, &[]),
        fail(GenerateError::PolicyDenied(format!(
            "request to {URL} refused: host not allowed"
        )))
    );
    for err in [
        TransportError::Timeout("first byte\ntimeout".into()),
        TransportError::Failed("first byte\ntimeout".into()),
    ] {
        assert_eq!(
            transport_verdict(&err, URL, &[]),
            Verdict::Retry {
                retry_after: None,
                error: upstream(None, &format!("request to {URL} failed: first byte timeout")),
            },
            "{err:?}"
        );
    }
    let long = TransportError::Failed("z".repeat(1000));
    let Verdict::Retry { error, .. } = transport_verdict(&long, URL, &[]) else {
        panic!("failures are retried")
    };
    assert_eq!(
        error,
        upstream(None, &format!("request to {URL} failed: {}…", "z".repeat(200)))
    );
}

// ---------------------------------------------------------------- Retry-After

#[test]
fn parse_retry_after_cases() {
    let secs = |s| Some(Duration::from_secs(s));
    let fixdate = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    let cases: Vec<(&str, Option<u64>, Option<Duration>)> = vec![
        ("0", None, secs(0)),
        ("120", None, secs(120)),
        (" 7 ", None, secs(7)),
        ("18446744073709551615", None, secs(u64::MAX)),
        ("18446744073709551616", None, None),
        ("", None, None),
        ("-1", None, None),
        ("+5", None, None),
        ("1.5", None, None),
        ("1e3", None, None),
        ("120 seconds", None, None),
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(fixdate - 10), secs(10)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(fixdate), secs(0)),
        // A date in the past means "now", not a negative or huge wait.
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(fixdate + 3600), secs(0)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", None, None),
        (
            "Wed, 21 Oct 2015 07:28:00 GMT",
            Some(1_445_412_480 - 60),
            secs(60),
        ),
        ("Thu, 29 Feb 2024 12:00:00 GMT", Some(1_709_208_000 - 1), secs(1)),
        ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0), secs(0)),
        ("Sun, 06 Foo 1994 08:49:37 GMT", Some(0), None),
        ("Sun, 06 nov 1994 08:49:37 GMT", Some(0), None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", Some(0), None),
        ("Sun, 32 Nov 1994 08:49:37 GMT", Some(0), None),
        ("Sun, 00 Nov 1994 08:49:37 GMT", Some(0), None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", Some(0), None),
        ("Sun, 06 Nov 1994 08:60:00 GMT", Some(0), None),
        ("Sun, 06 Nov 1994 08:49 GMT", Some(0), None),
        ("Sun, 06 Nov 1994 08:49:37", Some(0), None),
        ("Sun, 06 Nov 1994", Some(0), None),
        ("Sunday, 06-Nov-94 08:49:37 GMT", Some(0), None),
        ("Sun Nov  6 08:49:37 1994", Some(0), None),
        ("Sun, 06 Nov -1994 08:49:37 GMT", Some(0), None),
        ("é", Some(0), None),
    ];
    for (value, now, want) in cases {
        assert_eq!(parse_retry_after(value, now), want, "{value:?} at {now:?}");
    }
}

#[test]
fn parse_retry_after_never_panics_on_extreme_years() {
    // Years this large overflow the day-count arithmetic: a panic in debug
    // builds (and the fuzz build), a wrapped, meaningless wait in release.
    // A date that far out is no wait we could honour; it must be refused.
    for value in [
        "Sun, 06 Nov 1000000000000000 08:49:37 GMT",
        "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
        "Sun, 06 Jan -9223372036854775808 08:49:37 GMT",
    ] {
        let got = std::panic::catch_unwind(|| parse_retry_after(value, Some(0)));
        assert!(got.is_ok(), "panicked on {value:?}");
    }
}

// ---------------------------------------------------------------- RetryPolicy

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn default_policy_values() {
    assert_eq!(
        RetryPolicy::default(),
        RetryPolicy {
            max_attempts: 4,
            base_delay: ms(250),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
            deadline: Duration::from_secs(60),
        }
    );
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy {
        max_attempts: 100,
        ..RetryPolicy::default()
    };
    let got: Vec<Option<Duration>> = (1..=7).map(|n| p.next_delay(n, None, Duration::ZERO)).collect();
    let want = [250, 500, 1000, 2000, 4000, 4000, 4000].map(|n| Some(ms(n)));
    assert_eq!(got, want);
    // Far past the cap the shift must neither overflow nor undercut the cap.
    for n in [17, 18, 33, 64, 99] {
        assert_eq!(p.next_delay(n, None, Duration::ZERO), Some(ms(4000)), "{n}");
    }
    let no_cap = RetryPolicy {
        max_attempts: u32::MAX,
        max_delay: Duration::MAX,
        deadline: Duration::MAX,
        ..RetryPolicy::default()
    };
    assert_eq!(
        no_cap.next_delay(u32::MAX - 1, None, Duration::ZERO),
        Some(ms(250 * 65536))
    );
}

#[test]
fn max_attempts_ends_retrying() {
    let p = RetryPolicy::default();
    assert_eq!(p.next_delay(3, None, Duration::ZERO), Some(ms(1000)));
    assert_eq!(p.next_delay(4, None, Duration::ZERO), None);
    assert_eq!(p.next_delay(5, None, Duration::ZERO), None);
    assert_eq!(p.next_delay(4, Some(ms(1)), Duration::ZERO), None);
    let once = RetryPolicy { max_attempts: 1, ..p };
    assert_eq!(once.next_delay(1, None, Duration::ZERO), None);
}

#[test]
fn retry_after_replaces_backoff_up_to_its_cap() {
    let p = RetryPolicy::default();
    let s = Duration::from_secs;
    assert_eq!(p.next_delay(1, Some(s(2)), Duration::ZERO), Some(s(2)));
    assert_eq!(p.next_delay(3, Some(ms(10)), Duration::ZERO), Some(ms(10)));
    assert_eq!(
        p.next_delay(1, Some(Duration::ZERO), Duration::ZERO),
        Some(Duration::ZERO)
    );
    assert_eq!(p.next_delay(1, Some(s(30)), Duration::ZERO), Some(s(30)));
    // Longer than we are willing to wait: stop now and let the caller report it.
    assert_eq!(p.next_delay(1, Some(s(31)), Duration::ZERO), None);
    assert_eq!(p.next_delay(1, Some(s(3600)), Duration::ZERO), None);
    assert_eq!(p.next_delay(1, Some(Duration::MAX), Duration::ZERO), None);
}

#[test]
fn deadline_ends_retrying() {
    let p = RetryPolicy::default();
    let s = Duration::from_secs;
    assert_eq!(p.next_delay(1, None, ms(59_700)), Some(ms(250)));
    // The retry would start at or after the deadline: no point waiting.
    assert_eq!(p.next_delay(1, None, ms(59_750)), None);
    assert_eq!(p.next_delay(1, None, ms(59_800)), None);
    assert_eq!(p.next_delay(1, Some(s(20)), s(39)), Some(s(20)));
    assert_eq!(p.next_delay(1, Some(s(20)), s(45)), None);
    assert_eq!(p.next_delay(1, None, s(3600)), None);
    assert_eq!(p.next_delay(1, None, Duration::MAX), None);
}

#[test]
fn timeouts_never_outlast_the_deadline() {
    let p = RetryPolicy::default();
    let s = Duration::from_secs;
    let t = |connect, first_byte, between_bytes| Timeouts {
        connect,
        first_byte,
        between_bytes,
    };
    assert_eq!(p.timeouts(Duration::ZERO), t(s(10), s(30), s(30)));
    assert_eq!(p.timeouts(s(30)), t(s(10), s(30), s(30)));
    assert_eq!(p.timeouts(s(45)), t(s(10), s(15), s(15)));
    assert_eq!(p.timeouts(ms(55_500)), t(ms(4500), ms(4500), ms(4500)));
    assert_eq!(
        p.timeouts(s(60)),
        t(Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
    assert_eq!(
        p.timeouts(s(600)),
        t(Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
}
