//! Server plumbing shared by the stand-ins: a loopback listener (plain or
//! TLS), one task per connection, and a response body that can be a fixed
//! buffer or a long stream.
//!
//! All tasks of a server live in one `JoinSet` owned by the accept task, so
//! aborting that task (when the stand-in's handle is dropped) ends every
//! connection too, including a handler sleeping in a `slow` scenario.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

/// One request as a stand-in received it (the Cloudsmith stand-in, the faulty registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: String,
    /// The path (and query, if any).
    pub path: String,
    /// Header names (lower case) and values, in arrival order; a value that is not UTF-8
    /// is read lossily.
    pub headers: Vec<(String, String)>,
    /// The body as far as the stand-in read it: the Cloudsmith stand-in keeps up to its
    /// bound, the registry none (it serves reads only).
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub(crate) fn new(parts: &hyper::http::request::Parts, body: Vec<u8>) -> Self {
        let uri = &parts.uri;
        RecordedRequest {
            method: parts.method.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What a handler returns: an answer, or [`Hangup`] to close the connection
/// without one.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Hangup>> + Send>>;

/// A request handler shared by all connections of a server.
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

/// Returned by a handler to drop the connection without answering: hyper
/// closes the connection when its service fails, writing nothing.
#[derive(Debug)]
pub(crate) struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stand-in hung up on purpose")
    }
}

impl std::error::Error for Hangup {}

/// A running server; dropping it stops the server and all its connections.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    accept: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// TLS settings for [`serve`], when the feature is on.
#[cfg(feature = "tls")]
pub(crate) type Tls = Option<Arc<rustls::ServerConfig>>;
/// Without the `tls` feature there is nothing to configure.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = Option<Arc<Infallible>>;

/// Binds `127.0.0.1:0` and serves `handler` on the current tokio runtime.
pub(crate) async fn serve(tls: Tls, handler: Handler) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, tls.clone(), handler.clone()));
                }
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
    .abort_handle();
    Ok(Running { addr, accept })
}

async fn connection(stream: tokio::net::TcpStream, tls: Tls, handler: Handler) {
    match tls {
        #[cfg(feature = "tls")]
        Some(config) => {
            // A failed handshake (a client that does not trust the test CA)
            // just ends the connection, as a real server's would.
            if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                http(stream, handler).await;
            }
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match *never {},
        None => http(stream, handler).await,
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, handler: Handler) {
    let service = service_fn(move |req| handler(req));
    // Errors here are clients going away or deliberate hang-ups.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A response body: a buffer (sent with `Content-Length`), or a repeated
/// chunk streamed either with a declared length or chunked (no length).
#[derive(Debug)]
pub(crate) enum Body {
    /// A complete body; its length is declared.
    Full(Option<Bytes>),
    /// `chunk` repeated until `remaining` bytes are sent.
    Repeat {
        /// The piece sent each time.
        chunk: Bytes,
        /// Bytes still to send.
        remaining: u64,
        /// Whether the total length is declared up front (`Content-Length`)
        /// or the body is chunked.
        declared: bool,
    },
    /// The first bytes of a body whose declared length is larger, then
    /// either the end (hyper, short of the declared `Content-Length`, closes
    /// the connection) or nothing ever (the connection is held open until the
    /// client or the server goes away). Only the registry stand-in (feature
    /// `tls`) sends one.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Partial {
        /// The bytes sent before the cut.
        bytes: Option<Bytes>,
        /// The length the response declares.
        declared: u64,
        /// Stall after `bytes` instead of ending.
        stall: bool,
        /// Before ending, a pause: hyper flushes what it holds while the body
        /// is pending, and would drop it unsent if the body ended at once.
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl Body {
    /// A complete body.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Repeat { chunk, remaining, .. } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(chunk.len() as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
            Body::Partial {
                bytes, stall, pause, ..
            } => {
                if let Some(b) = bytes.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if *stall {
                    // Never woken: the connection task waits until it is dropped.
                    return Poll::Pending;
                }
                if let Some(sleep) = pause {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *pause = None;
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Repeat { remaining, .. } => *remaining == 0,
            Body::Partial { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Repeat {
                remaining, declared, ..
            } if *declared => SizeHint::with_exact(*remaining),
            // Unknown length: hyper sends it chunked.
            Body::Repeat { .. } => SizeHint::default(),
            Body::Partial { declared, .. } => SizeHint::with_exact(*declared),
        }
    }
}

/// A JSON response with the given status and extra headers.
pub(crate) fn json(status: u16, value: &serde_json::Value, headers: &[(&str, &str)]) -> Response<Body> {
    raw(status, "application/json", value.to_string(), headers)
}

/// A response with a given content type and body.
pub(crate) fn raw(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::full(body)).expect("valid response parts")
}
