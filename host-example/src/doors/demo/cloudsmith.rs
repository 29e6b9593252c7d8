//! The demo's two stand-ins, in this process only: a token issuer playing the cluster,
//! and a Cloudsmith playing `POST /openid/{org}/` (Cloudsmith's `openid_create`).
//!
//! Both share one HMAC key drawn at random when the demo starts and dropped when it
//! ends, so the demo Cloudsmith trusts exactly the tokens this run's issuer minted, the
//! way a real Cloudsmith OIDC service trusts one cluster's issuer. Nothing here is a
//! fixed key or test code: no other process can mint a token it accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The issuer the demo's service account tokens name.
pub const DEMO_ISSUER: &str = "https://cloudsmith-gen.demo.invalid";

/// The audience a Cloudsmith OIDC service expects by default (the documentation's
/// example asks for it).
const CLOUDSMITH_AUDIENCE: &str = "https://api.cloudsmith.io";

/// How long a demo access token lives, as Cloudsmith's do: about an hour.
const ACCESS_TOKEN_SECONDS: u64 = 3600;

/// The bound on a request body: an exchange is a few kilobytes.
const MAX_BODY: usize = 64 * 1024;

/// One run's signing key, shared by the issuer and the demo Cloudsmith.
#[derive(Clone)]
pub struct DemoKey(Arc<hmac::Key>);

impl DemoKey {
    /// A fresh random key.
    pub fn generate() -> anyhow::Result<DemoKey> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no randomness for the demo's signing key"))?;
        Ok(DemoKey(Arc::new(key)))
    }

    /// A compact HS256 JWT of `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of a token this key signed, or `None` (altered, foreign, malformed).
    fn verify(&self, token: &str) -> Option<Value> {
        let (signed, tag) = token.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).ok()?;
        let (_, payload) = signed.split_once('.')?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

/// Seconds since the UNIX epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The claims a TokenRequest's token carries, for `namespace/account` and `audiences`.
pub fn service_account_claims(namespace: &str, account: &str, audiences: &[String], lifetime: u64) -> Value {
    let now = now_unix();
    json!({
        "iss": DEMO_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account}},
    })
}

/// The demo Cloudsmith, listening on 127.0.0.1 until dropped.
pub struct DemoCloudsmith {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DemoCloudsmith {
    /// Starts it on a port the OS picks.
    pub async fn start(key: DemoKey) -> anyhow::Result<DemoCloudsmith> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let key = key.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let key = key.clone();
                        async move { Ok::<_, Infallible>(answer(&key, req).await) }
                    });
                    // A connection that fails is the client's business: the demo's own
                    // client reports what it saw.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(DemoCloudsmith { addr, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for DemoCloudsmith {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What Cloudsmith's `openid_create` reads.
#[derive(Deserialize)]
struct Exchange {
    oidc_token: String,
    service_slug: String,
}

/// Cloudsmith's answer to one request: 201 with a token, or a status with `detail`.
async fn answer(key: &DemoKey, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match exchange(key, req).await {
        Ok(token) => reply(StatusCode::CREATED, json!({ "token": token })),
        Err((status, detail)) => reply(status, json!({ "detail": detail })),
    }
}

async fn exchange(key: &DemoKey, req: Request<Incoming>) -> Result<String, (StatusCode, &'static str)> {
    let not_found = (StatusCode::NOT_FOUND, "Not found.");
    let org = req
        .uri()
        .path()
        .strip_prefix("/openid/")
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|org| is_slug(org))
        .ok_or(not_found)?
        .to_string();
    if req.method() != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."));
    }
    let invalid = (
        StatusCode::BAD_REQUEST,
        "Missing or invalid parameters (see detail)",
    );
    let json_body = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(invalid);
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| invalid)?
        .to_bytes();
    let asked: Exchange = serde_json::from_slice(&body).map_err(|_| invalid)?;
    if asked.oidc_token.is_empty() || !is_slug(&asked.service_slug) {
        return Err(invalid);
    }
    let unauthenticated = (StatusCode::UNAUTHORIZED, "OIDC token cannot be authenticated");
    let claims = key.verify(&asked.oidc_token).ok_or(unauthenticated)?;
    let trusted = claims["iss"] == DEMO_ISSUER
        && claims["exp"].as_u64().is_some_and(|exp| exp > now_unix())
        && claims["aud"]
            .as_array()
            .is_some_and(|aud| aud.iter().any(|a| a == CLOUDSMITH_AUDIENCE));
    if !trusted {
        return Err(unauthenticated);
    }
    let now = now_unix();
    Ok(key.sign(&json!({
        "iss": "cloudsmith-gen demo",
        "sub": format!("{org}/{}", asked.service_slug),
        "iat": now,
        "exp": now + ACCESS_TOKEN_SECONDS,
    })))
}

/// Cloudsmith's slug rule: `^[-a-zA-Z0-9_]+$`.
fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_with(aud: &str, iss: &str, exp: u64) -> Value {
        json!({"iss": iss, "aud": [aud], "exp": exp, "sub": "system:serviceaccount:default:default"})
    }

    #[test]
    fn a_token_verifies_only_under_the_key_that_signed_it() {
        let key = DemoKey::generate().unwrap();
        let other = DemoKey::generate().unwrap();
        let token = key.sign(&claims_with(CLOUDSMITH_AUDIENCE, DEMO_ISSUER, now_unix() + 60));
        assert_eq!(key.verify(&token).unwrap()["iss"], DEMO_ISSUER);
        assert!(
            other.verify(&token).is_none(),
            "another run's key accepts the token"
        );
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(key.verify(&forged).is_none(), "a forged signature verifies");
        assert!(key.verify("not a jwt").is_none());
    }

    /// One request to `cloudsmith`: the status and the JSON body.
    async fn post(cloudsmith: &DemoCloudsmith, path: &str, content_type: &str, body: String) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(cloudsmith.authority())
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post(path)
            .header(hyper::header::HOST, cloudsmith.authority())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_demo_cloudsmith_trusts_only_this_runs_tokens_for_its_audience() {
        let key = DemoKey::generate().unwrap();
        let cloudsmith = DemoCloudsmith::start(key.clone()).await.unwrap();
        let now = now_unix();
        let body =
            |token: String| json!({"oidc_token": token, "service_slug": "my-oidc-service"}).to_string();
        let json = "application/json";
        let good = key.sign(&claims_with(CLOUDSMITH_AUDIENCE, DEMO_ISSUER, now + 60));

        let (status, answer) = post(&cloudsmith, "/openid/my-organization/", json, body(good.clone())).await;
        assert_eq!(status, 201, "{answer}");
        let access = answer["token"].as_str().unwrap();
        let claims = key.verify(access).unwrap();
        assert_eq!(claims["sub"], "my-organization/my-oidc-service");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            ACCESS_TOKEN_SECONDS
        );

        let refused = [
            (
                key.sign(&claims_with(
                    "https://kubernetes.default.svc",
                    DEMO_ISSUER,
                    now + 60,
                )),
                "another audience",
            ),
            (
                key.sign(&claims_with(
                    CLOUDSMITH_AUDIENCE,
                    "https://elsewhere.example",
                    now + 60,
                )),
                "another issuer",
            ),
            (
                key.sign(&claims_with(CLOUDSMITH_AUDIENCE, DEMO_ISSUER, now - 1)),
                "expired",
            ),
            (
                DemoKey::generate()
                    .unwrap()
                    .sign(&claims_with(CLOUDSMITH_AUDIENCE, DEMO_ISSUER, now + 60)),
                "another key",
            ),
        ];
        for (token, why) in refused {
            let (status, answer) = post(&cloudsmith, "/openid/my-organization/", json, body(token)).await;
            assert_eq!(
                (status, answer["detail"].as_str()),
                (401, Some("OIDC token cannot be authenticated")),
                "{why}"
            );
        }
        let (status, _) = post(&cloudsmith, "/openid/my/org/", json, body(good.clone())).await;
        assert_eq!(status, 404, "a slug with a slash");
        let (status, _) = post(
            &cloudsmith,
            "/openid/my-organization/",
            "text/plain",
            body(good.clone()),
        )
        .await;
        assert_eq!(status, 400, "not JSON");
        let (status, _) = post(&cloudsmith, "/openid/my-organization/", json, "{}".into()).await;
        assert_eq!(status, 400, "no fields");
    }

    #[test]
    fn slugs_are_cloudsmiths() {
        for good in ["my-organization", "a_b", "X9"] {
            assert!(is_slug(good), "{good}");
        }
        for bad in ["", "a/b", "..", "a?b", "a b", "é"] {
            assert!(!is_slug(bad), "{bad:?}");
        }
    }
}
