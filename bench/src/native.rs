//! The native baseline: the same exchange as the component, done by Rust code
//! in the host process.
//!
//! It runs the guest crate's own pure steps natively (spec parsing and
//! validation, request building, answer interpretation, JWT `exp` and base64
//! output encoding) over [`crate::transport`], the same hyper stack the
//! minimal embedding's outbound hook uses. Only the sandbox is missing, which
//! is exactly what the comparison prices.

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use cloudsmith_access_token::exchange::{self, Answer, Verdict};
use cloudsmith_access_token::secret::Secret;
use cloudsmith_access_token::{output, spec, Outputs};
use http_body_util::{BodyExt, Full, Limited};

/// A native client for one manifest and one service account token.
#[derive(Clone)]
pub struct NativeClient {
    manifest: String,
    namespace: String,
    oidc_token: String,
}

impl NativeClient {
    /// A client that exchanges `oidc_token` for the generator resource `manifest` (JSON).
    pub fn new(manifest: &str, namespace: &str, oidc_token: &str) -> Self {
        NativeClient {
            manifest: manifest.to_string(),
            namespace: namespace.to_string(),
            oidc_token: oidc_token.to_string(),
        }
    }

    /// One `generate`: parse, exchange, encode ESO's outputs. The manifest is
    /// parsed on every call because the component parses it on every call.
    pub async fn generate(&self) -> anyhow::Result<Outputs> {
        let spec = spec::parse_manifest(&self.manifest).map_err(|e| anyhow!("invalid spec: {}", e.0))?;
        spec::validate_namespace(&self.namespace, "target namespace").map_err(|e| anyhow!("{}", e.0))?;
        let oidc_token = Secret::new(self.oidc_token.clone());
        let request = exchange::build_request(&spec, &oidc_token);
        let answer = send(&request).await?;
        match exchange::interpret(&answer, None, &[oidc_token.expose()]) {
            Verdict::Token(token) => output::outputs(&token).map_err(|e| anyhow!("invalid token: {e}")),
            Verdict::Retry { error, .. } | Verdict::Fail(error) => bail!("exchange failed: {error:?}"),
        }
    }
}

/// Sends the guest's request description with hyper and reads a bounded answer,
/// as the guest's wasi:http transport does.
async fn send(request: &exchange::Request) -> anyhow::Result<Answer> {
    let mut builder = hyper::Request::post(request.path.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    builder = builder.header("host", &request.authority);
    let hyper_request = builder.body(Full::new(Bytes::from(request.body.clone())))?;
    let response = crate::transport::send(&request.authority, hyper_request).await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(response.into_body(), exchange::MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer: {e}"))
        .context("answer body")?
        .to_bytes();
    Ok(Answer {
        status,
        retry_after,
        body: body.to_vec(),
        oversized: false,
    })
}
