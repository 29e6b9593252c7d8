//! A bare registry client: one request per fresh connection (plain or TLS), and the
//! push flow of the distribution API with Basic or token auth. For readiness checks,
//! [`super::Distribution::push`] and the self-tests.

use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{parse_query, query_escape, Artifact};

/// What came back.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    /// `host:port`.
    pub(crate) authority: String,
    /// The CAs trusted for HTTPS.
    pub(crate) roots: Vec<CertificateDer<'static>>,
}

impl Endpoint {
    /// The endpoint of an absolute `http(s)://host:port/...` URL, and its path and query.
    pub(crate) fn of_url(
        url: &str,
        roots: Vec<CertificateDer<'static>>,
    ) -> anyhow::Result<(Endpoint, String)> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("not an http(s) URL: {url}"),
        };
        let authority = uri.authority().context("URL without a host")?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:{}", authority.host(), if https { 443 } else { 80 }),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok((
            Endpoint {
                https,
                authority,
                roots,
            },
            path,
        ))
    }

    /// `method path` with `headers` and `body` on a fresh connection.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-length", body.len().to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body))?;
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {}", self.authority))?;
        if !self.https {
            return exchange(stream, request).await;
        }
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            roots.add(root.clone())?;
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        let name = ServerName::try_from(host.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS with {}", self.authority))?;
        exchange(stream, request).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<Reply> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let answer = sender.send_request(request).await?;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// The parameters of a `WWW-Authenticate` challenge: its scheme and `key="value"` pairs.
pub(crate) fn challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.push((key.trim().to_lowercase(), value));
    }
    (scheme.to_string(), params)
}

/// A client session with one registry: answers 401 challenges (Basic, or Bearer through
/// the token realm) with the credentials it was given.
pub(crate) struct Session {
    pub(crate) registry: Endpoint,
    /// The CAs trusted by the token realm, when it is HTTPS.
    pub(crate) realm_roots: Vec<CertificateDer<'static>>,
    pub(crate) credentials: Option<(String, String)>,
    authorization: Option<String>,
}

impl Session {
    pub(crate) fn new(
        registry: Endpoint,
        realm_roots: Vec<CertificateDer<'static>>,
        credentials: Option<(String, String)>,
    ) -> Session {
        Session {
            registry,
            realm_roots,
            credentials,
            authorization: None,
        }
    }

    /// Sends a request; on a 401, answers the challenge and sends it once more.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let reply = self.once(method, path, headers, body.clone()).await?;
        if reply.status != 401 {
            return Ok(reply);
        }
        let header = reply
            .header("www-authenticate")
            .context("401 without WWW-Authenticate")?
            .to_string();
        self.authorization = Some(self.answer(&header).await?);
        self.once(method, path, headers, body).await
    }

    async fn once(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &self.authorization {
            all.push(("authorization", auth));
        }
        self.registry.send(method, path, &all, body).await
    }

    async fn answer(&self, header: &str) -> anyhow::Result<String> {
        let (user, password) = self
            .credentials
            .as_ref()
            .with_context(|| format!("the registry wants credentials ({header}) and none were given"))?;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let (scheme, params) = challenge(header);
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(basic);
        }
        anyhow::ensure!(
            scheme.eq_ignore_ascii_case("bearer"),
            "unknown challenge: {header}"
        );
        let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let realm = param("realm").context("Bearer challenge without a realm")?;
        let mut query = Vec::new();
        if let Some(service) = param("service") {
            query.push(format!("service={}", query_escape(service)));
        }
        if let Some(scope) = param("scope") {
            for scope in scope.split(' ') {
                query.push(format!("scope={}", query_escape(scope)));
            }
        }
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}?{}", query.join("&"))
        };
        let (endpoint, path) = Endpoint::of_url(&url, self.realm_roots.clone())?;
        let reply = endpoint
            .send("GET", &path, &[("authorization", &basic)], Bytes::new())
            .await?;
        anyhow::ensure!(
            reply.status == 200,
            "token realm answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let answer: serde_json::Value = serde_json::from_slice(&reply.body)?;
        let token = answer["token"]
            .as_str()
            .or(answer["access_token"].as_str())
            .context("token answer without a token")?;
        Ok(format!("Bearer {token}"))
    }
}

/// Uploads `artifact` to `repository` (monolithic blob uploads, then the manifest under
/// `reference`: a tag, or the manifest's digest).
pub(crate) async fn push(
    session: &mut Session,
    repository: &str,
    reference: &str,
    artifact: &Artifact,
) -> anyhow::Result<()> {
    for (digest, bytes) in artifact.blob_bytes() {
        let blob = format!("/v2/{repository}/blobs/{digest}");
        if session.send("HEAD", &blob, &[], Bytes::new()).await?.status == 200 {
            continue;
        }
        let start = session
            .send(
                "POST",
                &format!("/v2/{repository}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await?;
        anyhow::ensure!(start.status == 202, "starting an upload: {}", describe(&start));
        let location = start.header("location").context("upload without a Location")?;
        let location: hyper::Uri = location.parse()?;
        let mut path = location.path_and_query().map_or("/", |p| p.as_str()).to_string();
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&format!("digest={}", query_escape(digest)));
        let put = session
            .send(
                "PUT",
                &path,
                &[("content-type", "application/octet-stream")],
                bytes.clone(),
            )
            .await?;
        anyhow::ensure!(put.status == 201, "uploading {digest}: {}", describe(&put));
    }
    let put = session
        .send(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("content-type", artifact.media_type())],
            artifact.manifest_bytes(),
        )
        .await?;
    anyhow::ensure!(put.status == 201, "putting the manifest: {}", describe(&put));
    let digest = put.header("docker-content-digest").unwrap_or_default();
    anyhow::ensure!(
        digest == artifact.digest(),
        "the registry stored the manifest as {digest}, not {}",
        artifact.digest()
    );
    Ok(())
}

fn describe(reply: &Reply) -> String {
    format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))
}

/// The `scope` values of a token request's query, each split on spaces.
pub(crate) fn scopes_of(query: &str) -> Vec<String> {
    parse_query(query)
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, params) = challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push",error="invalid_token""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            [
                ("realm".to_string(), "http://127.0.0.1:1/token".to_string()),
                ("service".to_string(), "reg".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
                ("error".to_string(), "invalid_token".to_string()),
            ]
        );
        assert_eq!(
            challenge(r#"Basic realm="x""#).1,
            [("realm".to_string(), "x".to_string())]
        );
    }
}
