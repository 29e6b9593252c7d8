//! The one HTTP/1.1 client stack every in-process runner uses: a fresh tokio
//! `TcpStream` per request, a hyper 1 handshake, one request.
//!
//! A fresh connection per call is deliberate: each `generate` of the component
//! is independent (a fresh `Store`, and wasi:http has no connection pool), so
//! the native baseline pays the same connect cost and the comparison measures
//! the plugin, not connection reuse.

use anyhow::Context as _;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Opens a connection to `authority` (`host:port`) and returns a sender for one
/// request; the connection is driven by a spawned task until either side closes.
pub async fn connect<B>(authority: &str) -> anyhow::Result<SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    // No TCP_NODELAY: host-example's outbound hook does not set it either, and
    // hyper writes a request with a known-length body in one go.
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the response is read and the sender dropped;
        // an error here is the peer closing, which the request already reported.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends `request` (whose URI is the path: origin form, as on the wire) on a
/// fresh connection to `authority`.
pub async fn send<B>(authority: &str, request: Request<B>) -> anyhow::Result<Response<Incoming>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = connect(authority).await?;
    Ok(sender.send_request(request).await?)
}
