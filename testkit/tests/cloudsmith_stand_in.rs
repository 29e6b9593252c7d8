//! The Cloudsmith stand-in checks what it claims to check and answers each
//! scenario as documented. Requests go through a bare hyper client (or raw
//! bytes on a socket), so the tests see exactly what is on the wire.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use serde_json::{json, Value};
use testkit::cloudsmith::{
    access_token_for, jwt_payload, Scenario, StandIn, StandInConfig, Trusted, UNAUTHENTICATED,
};
use testkit::oidc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBJECT: &str = "system:serviceaccount:default:default";

/// What came back.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .expect("a string detail")
            .to_string()
    }
}

/// A request body of unknown length: hyper sends it chunked.
struct Chunked(Option<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Sends one request on a fresh connection; `Err` when the connection ends
/// without an answer.
async fn send<B>(stand_in: &StandIn, request: hyper::Request<B>) -> Result<Reply, hyper::Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(stand_in.authority()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A well-formed exchange request, with `edit` applied to its builder.
fn exchange(path: &str, body: &Value) -> hyper::Request<Full<Bytes>> {
    let body = Bytes::from(body.to_string());
    hyper::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("content-length", body.len())
        .body(Full::new(body))
        .unwrap()
}

fn good_body(stand_in: &StandIn, subject: &str) -> Value {
    json!({"oidc_token": oidc::token(subject, &[&stand_in.origin()]), "service_slug": "my-oidc-service"})
}

async fn post(stand_in: &StandIn, org: &str, subject: &str) -> Result<Reply, hyper::Error> {
    send(
        stand_in,
        exchange(&format!("/openid/{org}/"), &good_body(stand_in, subject)),
    )
    .await
}

async fn start() -> StandIn {
    StandIn::start(StandInConfig::default())
        .await
        .expect("stand-in starts")
}

#[tokio::test]
async fn a_good_request_gets_201_and_the_exact_token() {
    let s = start().await;
    let reply = post(&s, "my-organization", SUBJECT).await.unwrap();
    assert_eq!(reply.status, 201);
    let token = reply.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        token,
        access_token_for(SUBJECT, "my-organization", "my-oidc-service", 1_700_000_000)
    );
    let payload = jwt_payload(&token).unwrap();
    assert_eq!(payload["sub"], SUBJECT);
    assert_eq!(payload["exp"], 1_700_000_000u64);

    let recorded = s.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/openid/my-organization/");
    assert_eq!(recorded[0].org(), Some("my-organization"));
    assert_eq!(recorded[0].header("Content-Type"), Some("application/json"));
    assert_eq!(recorded[0].json().unwrap()["service_slug"], "my-oidc-service");
}

#[tokio::test]
async fn the_documented_audience_and_the_v1_prefix_are_accepted() {
    let s = start().await;
    let body =
        json!({"oidc_token": oidc::token(SUBJECT, &["https://api.cloudsmith.io"]), "service_slug": "svc"});
    assert_eq!(
        send(&s, exchange("/v1/openid/org/", &body)).await.unwrap().status,
        201
    );
}

#[tokio::test]
async fn refusals_have_the_right_status_and_detail() {
    let s = start().await;
    let good = good_body(&s, SUBJECT);
    let good_len = good.to_string().len();
    let with = |method: &str, path: &str, headers: &[(&str, String)], body: String| {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        for (n, v) in headers {
            b = b.header(*n, v);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let json_headers = |len: usize| {
        vec![
            ("content-type", "application/json".to_string()),
            ("content-length", len.to_string()),
        ]
    };
    let field_body = |v: Value| (json_headers(v.to_string().len()), v.to_string());
    let untrusted =
        json!({"oidc_token": oidc::token(SUBJECT, &["https://elsewhere.example"]), "service_slug": "s"});
    let forged = {
        let t = oidc::token(SUBJECT, &[&s.origin()]);
        json!({"oidc_token": format!("{}x", t), "service_slug": "s"})
    };

    struct Case {
        name: &'static str,
        request: hyper::Request<Full<Bytes>>,
        status: u16,
        detail: &'static str,
    }
    let cases = vec![
        Case {
            name: "unknown path",
            request: with("POST", "/openid/", &json_headers(good_len), good.to_string()),
            status: 404,
            detail: "Not found.",
        },
        Case {
            name: "slug with a dot",
            request: with("POST", "/openid/a.b/", &json_headers(good_len), good.to_string()),
            status: 404,
            detail: "Not found.",
        },
        Case {
            name: "no trailing slash",
            request: with("POST", "/openid/org", &json_headers(good_len), good.to_string()),
            status: 404,
            detail: "Not found.",
        },
        Case {
            name: "GET",
            request: with("GET", "/openid/org/", &[], String::new()),
            status: 405,
            detail: "Method \"GET\" not allowed.",
        },
        Case {
            name: "PUT",
            request: with("PUT", "/openid/org/", &json_headers(good_len), good.to_string()),
            status: 405,
            detail: "Method \"PUT\" not allowed.",
        },
        Case {
            name: "text/plain",
            request: with(
                "POST",
                "/openid/org/",
                &[
                    ("content-type", "text/plain".into()),
                    ("content-length", good_len.to_string()),
                ],
                good.to_string(),
            ),
            status: 415,
            detail: "Unsupported media type \"text/plain\" in request.",
        },
        Case {
            name: "no content type",
            request: with(
                "POST",
                "/openid/org/",
                &[("content-length", good_len.to_string())],
                good.to_string(),
            ),
            status: 415,
            detail: "Unsupported media type \"\" in request.",
        },
        Case {
            name: "accept xml only",
            request: with(
                "POST",
                "/openid/org/",
                &[
                    ("content-type", "application/json".into()),
                    ("accept", "application/xml".into()),
                    ("content-length", good_len.to_string()),
                ],
                good.to_string(),
            ),
            status: 406,
            detail: "Could not satisfy the request Accept header.",
        },
        Case {
            name: "not JSON",
            request: with("POST", "/openid/org/", &json_headers(5), "hello".into()),
            status: 400,
            detail: "JSON parse error - expected value at line 1 column 1",
        },
        Case {
            name: "a JSON list",
            request: {
                let (h, b) = field_body(json!([1]));
                with("POST", "/openid/org/", &h, b)
            },
            status: 400,
            detail: "Missing or invalid parameters (see detail): Invalid data. Expected a dictionary.",
        },
        Case {
            name: "no oidc_token",
            request: {
                let (h, b) = field_body(json!({"service_slug": "s"}));
                with("POST", "/openid/org/", &h, b)
            },
            status: 400,
            detail: "Missing or invalid parameters (see detail): oidc_token: This field is required.",
        },
        Case {
            name: "blank oidc_token",
            request: {
                let (h, b) = field_body(json!({"oidc_token": "", "service_slug": "s"}));
                with("POST", "/openid/org/", &h, b)
            },
            status: 400,
            detail: "Missing or invalid parameters (see detail): oidc_token: This field may not be blank.",
        },
        Case {
            name: "no service_slug",
            request: {
                let (h, b) = field_body(json!({"oidc_token": "x"}));
                with("POST", "/openid/org/", &h, b)
            },
            status: 400,
            detail: "Missing or invalid parameters (see detail): service_slug: This field is required.",
        },
        Case {
            name: "numeric service_slug",
            request: {
                let (h, b) = field_body(json!({"oidc_token": "x", "service_slug": 7}));
                with("POST", "/openid/org/", &h, b)
            },
            status: 400,
            detail: "Missing or invalid parameters (see detail): service_slug: Not a valid string.",
        },
        Case {
            name: "not a JWT",
            request: {
                let (h, b) = field_body(json!({"oidc_token": "abc", "service_slug": "s"}));
                with("POST", "/openid/org/", &h, b)
            },
            status: 401,
            detail: "OIDC token cannot be authenticated",
        },
        Case {
            name: "bad signature",
            request: {
                let (h, b) = field_body(forged);
                with("POST", "/openid/org/", &h, b)
            },
            status: 401,
            detail: "OIDC token cannot be authenticated",
        },
        Case {
            name: "other audience",
            request: {
                let (h, b) = field_body(untrusted);
                with("POST", "/openid/org/", &h, b)
            },
            status: 401,
            detail: "OIDC token cannot be authenticated",
        },
    ];
    for case in cases {
        let reply = send(&s, case.request).await.unwrap();
        assert_eq!(reply.status, case.status, "{}: {:?}", case.name, reply.body);
        assert_eq!(reply.detail(), case.detail, "{}", case.name);
        if case.status == 405 {
            assert_eq!(reply.headers["allow"], "POST, OPTIONS", "{}", case.name);
        }
    }
}

#[tokio::test]
async fn a_chunked_body_is_refused_with_411() {
    let s = start().await;
    let body = Bytes::from(good_body(&s, SUBJECT).to_string());
    let request = hyper::Request::post("/openid/org/")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Chunked(Some(body)))
        .unwrap();
    let reply = send(&s, request).await.unwrap();
    assert_eq!(reply.status, 411);
    assert!(
        reply.detail().starts_with("Length Required"),
        "{}",
        reply.detail()
    );
    assert_eq!(s.requests()[0].header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn an_oversized_request_body_is_refused_with_413() {
    let s = start().await;
    let big = json!({"oidc_token": "x".repeat(70 * 1024), "service_slug": "s"});
    let reply = send(&s, exchange("/openid/org/", &big)).await.unwrap();
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn fixed_failure_scenarios_answer_their_status_and_detail() {
    let s = start().await;
    for scenario in [
        Scenario::Fail400,
        Scenario::Fail401,
        Scenario::Fail403,
        Scenario::Fail404,
        Scenario::Fail422,
        Scenario::Fail500,
        Scenario::Fail503,
        Scenario::RateLimited,
        Scenario::RateLimitedLong,
    ] {
        for _ in 0..3 {
            let reply = post(&s, scenario.org(), SUBJECT).await.unwrap();
            assert_eq!(Some(reply.status), scenario.status(), "{scenario:?}");
            assert_eq!(Some(reply.detail().as_str()), scenario.detail(), "{scenario:?}");
        }
    }
    for (org, retry_after) in [("rate-limited", "1"), ("rate-limited-long", "3600")] {
        let reply = post(&s, org, SUBJECT).await.unwrap();
        assert_eq!(reply.headers["retry-after"], retry_after, "{org}");
    }
}

#[tokio::test]
async fn burst_scenarios_fail_first_then_succeed_per_subject() {
    let s = start().await;
    let statuses = |org: &'static str, subject: &'static str| {
        let s = &s;
        async move {
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(post(s, org, subject).await.unwrap().status);
            }
            out
        }
    };
    assert_eq!(
        statuses("burst-503", "system:serviceaccount:a:one").await,
        [503, 503, 201, 201]
    );
    // Another subject has its own count.
    assert_eq!(
        statuses("burst-503", "system:serviceaccount:a:two").await,
        [503, 503, 201, 201]
    );
    assert_eq!(
        statuses("burst-429", "system:serviceaccount:a:one").await,
        [429, 201, 201, 201]
    );
    let last = post(&s, "burst-429", "system:serviceaccount:a:one")
        .await
        .unwrap();
    assert_eq!(
        last.json()["token"],
        access_token_for(
            "system:serviceaccount:a:one",
            "burst-429",
            "my-oidc-service",
            1_700_000_000
        )
    );
}

#[tokio::test]
async fn bad_token_scenarios_answer_201_with_unusable_tokens() {
    let s = start().await;
    let s = &s;
    let body = |org| async move { post(s, org, SUBJECT).await.unwrap() };

    let malformed = body("malformed-json").await;
    assert_eq!(malformed.status, 201);
    assert!(serde_json::from_slice::<Value>(&malformed.body).is_err());

    assert_eq!(body("empty-token").await.json(), json!({"token": ""}));
    assert_eq!(body("not-jwt").await.json(), json!({"token": "not-a-jwt"}));

    let no_exp = body("no-exp").await;
    let payload = jwt_payload(no_exp.json()["token"].as_str().unwrap()).unwrap();
    assert_eq!(payload["sub"], SUBJECT);
    assert!(payload.get("exp").is_none());
}

#[tokio::test]
async fn oversized_scenarios_send_more_than_a_mebibyte() {
    let s = start().await;
    let chunked = post(&s, "oversized", SUBJECT).await.unwrap();
    assert_eq!(chunked.status, 201);
    assert!(chunked.headers.get("content-length").is_none());
    assert_eq!(chunked.headers["transfer-encoding"], "chunked");
    assert!(chunked.body.len() > 1024 * 1024);

    let declared = post(&s, "oversized-declared", SUBJECT).await.unwrap();
    assert_eq!(declared.headers["content-length"], (10 * 1024 * 1024).to_string());
    assert_eq!(declared.body.len(), 10 * 1024 * 1024);
}

#[tokio::test]
async fn html_500_is_a_long_html_page() {
    let s = start().await;
    let reply = post(&s, "html-500", SUBJECT).await.unwrap();
    assert_eq!(reply.status, 500);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(reply.body.len() > 2000);
    assert!(reply.body.starts_with(b"<!DOCTYPE html>"));
}

#[tokio::test]
async fn echo_401_quotes_the_oidc_token() {
    let s = start().await;
    let body = good_body(&s, SUBJECT);
    let reply = send(&s, exchange("/openid/echo-401/", &body)).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.detail().contains(body["oidc_token"].as_str().unwrap()));
}

#[tokio::test]
async fn redirect_points_at_the_configured_location() {
    let s = start().await;
    let reply = post(&s, "redirect", SUBJECT).await.unwrap();
    assert_eq!(reply.status, 302);
    assert_eq!(reply.headers["location"], "http://evil.example/openid/x/");
}

#[tokio::test]
async fn reset_closes_the_connection_without_an_answer() {
    let s = start().await;
    let err = post(&s, "reset", SUBJECT).await.unwrap_err();
    assert!(err.is_incomplete_message() || err.is_closed(), "{err:?}");
    // On the wire: not a single byte of answer.
    let mut stream = TcpStream::connect(s.authority()).await.unwrap();
    let body = good_body(&s, SUBJECT).to_string();
    let raw = format!(
        "POST /openid/reset/ HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn slow_answers_after_the_delay_and_stops_with_the_stand_in() {
    let s = StandIn::start(StandInConfig {
        slow_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(post(&s, "slow", SUBJECT).await.unwrap().status, 201);

    // With the default 10 s delay, dropping the stand-in ends the waiting
    // connection: the client sees it close, not an answer 10 s later.
    let s = start().await;
    let body = good_body(&s, SUBJECT);
    let stream = TcpStream::connect(s.authority()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let pending = tokio::spawn(async move { sender.send_request(exchange("/openid/slow/", &body)).await });
    // Wait until the stand-in holds the request, then drop it.
    while s.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the connection ends when the stand-in is dropped")
        .unwrap();
    assert!(outcome.is_err(), "no answer after the drop: {outcome:?}");
}

#[tokio::test]
async fn every_scenario_is_named_and_round_trips() {
    for scenario in Scenario::ALL {
        assert_eq!(Scenario::from_org(scenario.org()), Some(scenario));
    }
    assert_eq!(Scenario::from_org("my-organization"), None);
}

#[tokio::test]
async fn concurrent_callers_each_get_their_own_token() {
    let s = std::sync::Arc::new(start().await);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let subject = format!("system:serviceaccount:ns:sa-{i}");
            let reply = post(&s, "org", &subject).await.unwrap();
            (subject, reply.json()["token"].as_str().unwrap().to_string())
        }));
    }
    for task in tasks {
        let (subject, token) = task.await.unwrap();
        assert_eq!(
            token,
            access_token_for(&subject, "org", "my-oidc-service", 1_700_000_000)
        );
    }
    assert_eq!(s.requests().len(), 16);
}

#[tokio::test]
async fn tls_stand_in_is_trusted_with_its_ca_only() {
    let s = common::https_stand_in!(StandIn, StandInConfig);
    let pem = s.ca_pem().expect("a CA with TLS");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let ca = s.ca().unwrap();

    let connector = tokio_rustls::TlsConnector::from(ca.client_config().unwrap());
    let tcp = TcpStream::connect(s.authority()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("trusted with the test CA");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = json!({"oidc_token": oidc::token(SUBJECT, &[&s.origin()]), "service_slug": "svc"});
    let reply = sender
        .send_request(exchange("/openid/org/", &body))
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);

    // A client trusting another CA is refused during the handshake.
    let other = testkit::tls::TestCa::new();
    let connector = tokio_rustls::TlsConnector::from(other.client_config().unwrap());
    let tcp = TcpStream::connect(s.authority()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
}

#[tokio::test]
async fn no_server_outlives_its_stand_in() {
    let s = start().await;
    let authority = s.authority();
    drop(s);
    // Give the runtime a moment to run the abort, then nothing listens.
    for _ in 0..50 {
        if TcpStream::connect(&authority).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{authority} still accepts connections after the stand-in was dropped");
}

#[tokio::test]
async fn only_trusted_issuers_and_subjects_are_authenticated() {
    let s = StandIn::start(StandInConfig {
        trusted: vec![Trusted::new(oidc::ISSUER, "system:serviceaccount:apps:*")],
        ..StandInConfig::default()
    })
    .await
    .expect("stand-in starts");
    let ask = |token: String| {
        let s = &s;
        async move {
            let body = json!({"oidc_token": token, "service_slug": "svc"});
            send(s, exchange("/openid/org/", &body)).await.unwrap()
        }
    };
    let trusted = ask(oidc::token("system:serviceaccount:apps:puller", &[&s.origin()])).await;
    assert_eq!(trusted.status, 201, "{:?}", trusted.body);
    for (case, token) in [
        (
            "subject outside the trusted prefix",
            oidc::token("system:serviceaccount:other:puller", &[&s.origin()]),
        ),
        (
            "untrusted issuer, same key",
            oidc::token_from_issuer(
                "https://other-cluster.example",
                "system:serviceaccount:apps:puller",
                &[&s.origin()],
            ),
        ),
    ] {
        let reply = ask(token).await;
        assert_eq!(
            (reply.status, reply.detail().as_str()),
            (401, UNAUTHENTICATED),
            "{case}"
        );
    }
    // The default trusts the testkit issuer with any subject.
    let default = start().await;
    let reply = post(&default, "org", "alice@example.com").await.unwrap();
    assert_eq!(reply.status, 201);
}
