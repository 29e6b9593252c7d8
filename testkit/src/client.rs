//! A bare HTTP/1.1 client for tests that call a server under test: one request on a
//! fresh loopback connection, with exactly the headers given (no `Host` added but the
//! one written here, no pooling, no redirects), so a test sees what the server answers
//! to that request alone.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

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
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-length", body.len().to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let answer = sender.send_request(req).await.expect("an answer");
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
