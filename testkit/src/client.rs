//! A bare HTTP/1.1 client for tests that call a server under test: one request on a
//! fresh loopback connection, with exactly the headers given (no `Host` added but the
//! one written here, no pooling, no redirects), so a test sees what the server answers
//! to that request alone.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An answer: status, headers, and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, as sent.
    pub headers: hyper::HeaderMap,
    /// The body, as sent.
    pub body: Bytes,
}

impl Reply {
    /// The value of header `name`, lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The body as JSON; panics, showing the body, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `method path` over `stream` with `Host: authority`, `headers` and `body`, nothing else.
pub async fn send<S>(
    stream: S,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::copy_from_slice(body)))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (parts, body) = sender.send_request(request).await?.into_parts();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// [`send`] on a fresh connection to `authority` (`host:port`), over TLS trusting only
/// `ca` when it is given; the server's name is checked as `127.0.0.1`, the loopback
/// address every test server here listens on.
#[cfg(feature = "tls")]
pub async fn send_to(
    authority: &str,
    ca: Option<&crate::tls::TestCa>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(authority).await?;
    match ca {
        None => send(stream, authority, method, path, headers, b"").await,
        Some(ca) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
            let stream = tokio_rustls::TlsConnector::from(ca.client_config()?)
                .connect(name, stream)
                .await?;
            send(stream, authority, method, path, headers, b"").await
        }
    }
}

/// `method path` to `addr` with `headers` and `body` (plus `Host` and `Content-Length`);
/// the answer's status, headers and body (lossy UTF-8). Panics on a transport error:
/// it is for tests, where that is the failure.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, hyper::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let length = body.len().to_string();
    let mut all = vec![("content-length", length.as_str())];
    all.extend_from_slice(headers);
    let reply = send(stream, &addr.to_string(), method, path, &all, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    (
        reply.status,
        reply.headers,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}
