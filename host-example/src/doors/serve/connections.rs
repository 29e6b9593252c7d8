//! Connections: accepting them (pausing after a failed accept), admitting them within
//! `--max-connections`, the TLS handshake, HTTP/1.1 with its read timeouts, and the
//! graceful stop (hyper-util's [`GracefulShutdown`]: each connection finishes the
//! request in flight, then closes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::access::Reviewer;
use super::log::{log, one_log_line};
use super::pipeline::{handle, Server};
use super::tls::Tls;
use crate::mint::Mint;

/// The first pause after a failed accept, and the longest: Go's net/http waits 5 ms,
/// doubling to 1 s (go1.26 `src/net/http/server.go`, `(*Server).Serve`, `tempDelay`).
/// Accepting fails when the process is out of file descriptors, and retrying at once
/// only spins a core until one is freed.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The next pause after a failed accept, given the last (zero: none since a success).
fn accept_pause(last: Duration) -> Duration {
    if last.is_zero() {
        ACCEPT_PAUSE_MIN
    } else {
        (last * 2).min(ACCEPT_PAUSE_MAX)
    }
}

/// Accepts connections until `stop`, then lets each finish its request in flight (up to
/// `grace`) and returns.
pub async fn serve<M, R>(
    listener: TcpListener,
    server: Arc<Server<M, R>>,
    stop: impl std::future::Future<Output = ()>,
    grace: Duration,
) where
    M: Mint + Send + 'static,
    R: Reviewer + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    // After a failed accept, a pause before the next (see `accept_pause`).
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let (mut paused, mut last_pause) = (false, Duration::ZERO);
    loop {
        tokio::select! {
            accepted = listener.accept(), if !paused => match accepted {
                Ok((stream, peer)) => {
                    last_pause = Duration::ZERO;
                    admit(stream, peer, &server, &mut connections, &graceful);
                }
                Err(e) => {
                    server.metrics.accept_error();
                    last_pause = accept_pause(last_pause);
                    // One line per burst: the first failure, and each at the longest pause.
                    if last_pause == ACCEPT_PAUSE_MIN || last_pause == ACCEPT_PAUSE_MAX {
                        log(
                            "warn",
                            "accepting a connection failed: pausing",
                            json!({"error": one_log_line(&e.to_string()),
                                   "pause_ms": last_pause.as_millis() as u64}),
                        );
                    }
                    pause.as_mut().reset(tokio::time::Instant::now() + last_pause);
                    paused = true;
                }
            },
            () = &mut pause, if paused => paused = false,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    server.stopping.store(true, Ordering::SeqCst);
    log(
        "info",
        "stopping",
        json!({"connections": connections.len(), "calls_in_flight": server.metrics.in_flight_now(),
               "grace_seconds": grace.as_secs_f64()}),
    );
    // Every connection finishes the request in flight, answers it, then closes; those
    // still in their TLS handshake close once it ends.
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        log(
            "warn",
            "grace period over: abandoning connections",
            json!({"connections": connections.len()}),
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// A connection in, within `--max-connections`: served on a task of its own; past the
/// bound, answered 503 (plain HTTP) or closed (TLS) at once, without a task. Idle and
/// slow connections are closed by the read timeout, so the places come back.
fn admit<M, R>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    server: &Arc<Server<M, R>>,
    connections: &mut JoinSet<()>,
    graceful: &GracefulShutdown,
) where
    M: Mint + Send + 'static,
    R: Reviewer + 'static,
{
    let Ok(place) = server.connections.clone().try_acquire_owned() else {
        server.metrics.connection_refused();
        if server.tls.is_none() {
            // Never waits: a fresh socket's buffer takes these few bytes, or they are lost.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS.as_bytes());
        }
        return;
    };
    let _ = stream.set_nodelay(true);
    let server = server.clone();
    // Taken now, so the stop waits for a connection still in its TLS handshake too.
    let watcher = graceful.watcher();
    connections.spawn(async move {
        let _place = place;
        let _open = server.metrics.connection();
        connection(stream, peer, server.clone(), watcher).await;
    });
}

/// The answer to a connection past `--max-connections`.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
    content-length: 85\r\n\r\n\
    {\"error\":{\"case\":\"busy\",\"message\":\"too many connections open at once: retry later\"}}\n";

async fn connection<M, R>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    server: Arc<Server<M, R>>,
    watcher: Watcher,
) where
    M: Mint + Send + 'static,
    R: Reviewer + 'static,
{
    let Some(config) = server.tls.as_ref().map(Tls::config) else {
        return http(TokioIo::new(stream), peer, server, watcher).await;
    };
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    // A failed or stalled handshake is the client's problem (and not logged: a port
    // scan must not flood the log).
    if let Ok(Ok(stream)) = tokio::time::timeout(server.read_timeout, accepting).await {
        http(TokioIo::new(stream), peer, server, watcher).await;
    }
}

async fn http<I, M, R>(io: I, peer: SocketAddr, server: Arc<Server<M, R>>, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    M: Mint + Send + 'static,
    R: Reviewer + 'static,
{
    let read_timeout = server.read_timeout;
    let service = service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(handle(&server, req, peer).await) }
    });
    // hyper 1.12 starts the header timeout whenever it waits for a request's head, so
    // it also closes a keep-alive connection left idle (`proto/h1/conn.rs`,
    // `poll_read_head`).
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    let _ = watcher.watch(conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_pauses_double_from_5ms_to_1s_as_go_does() {
        let mut pause = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            pause = accept_pause(pause);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(TOO_MANY_CONNECTIONS.split("\r\n\r\n").nth(1).unwrap().len(), 85);
    }
}
