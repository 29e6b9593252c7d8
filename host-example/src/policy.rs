//! Outbound policy: which authorities the guest may reach, over what, and how long the
//! host waits. Implemented as wasmtime-wasi-http's `send_request` hook, so every
//! `wasi:http` request the guest makes passes through [`OutboundPolicy::decide`].
//!
//! A refused request fails with `ErrorCode::HttpRequestDenied` (the guest reports
//! `policy-denied`), and the host records why in the call's [`Journal`], so the embedder
//! can say which authority was refused by which rule. Redirects are never followed: a
//! 3xx goes back to the guest like any other answer.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
pub use cloudsmith_gen_core::authority::Authority;
use http::uri::Scheme;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The only authority allowed by default: Cloudsmith's API.
pub const DEFAULT_AUTHORITY: &str = "api.cloudsmith.io:443";

/// A request's authority, its port defaulted from the scheme.
fn request_authority(authority: &http::uri::Authority, default_port: u16) -> Authority {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Authority::new(host, authority.port_u16().unwrap_or(default_port))
}

/// The certificates of the PEM file `path` (a CA bundle); none is an error, and so is
/// one that TLS could not use as a root (checked here, so the error names the file).
pub fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("CA file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("CA file {}: invalid PEM", path.display()))?;
    if certs.is_empty() {
        bail!("CA file {}: no certificate found", path.display());
    }
    for (n, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .with_context(|| {
                format!(
                    "CA file {}: certificate {} is not a CA certificate TLS can use",
                    path.display(),
                    n + 1
                )
            })?;
    }
    Ok(certs)
}

/// Upper bounds on the guest's request timeouts. The host uses the smaller of the
/// guest's request option and its cap, so a guest can shorten a wait but never extend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutCaps {
    /// TCP connect, TLS handshake and HTTP/1 handshake together.
    pub connect: Duration,
    /// From sending the request to the answer's headers.
    pub first_byte: Duration,
    /// Between body frames.
    pub between_bytes: Duration,
}

impl Default for TimeoutCaps {
    fn default() -> Self {
        TimeoutCaps {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(30),
            between_bytes: Duration::from_secs(30),
        }
    }
}

/// The host of [`DEFAULT_AUTHORITY`]: plain http to it is never allowed, whatever the
/// operator allows, since the exchange would carry the OIDC token in clear.
pub const DEFAULT_HOST: &str = "api.cloudsmith.io";

/// Which outbound requests the guest may make.
///
/// Defaults: only `api.cloudsmith.io:443`, HTTPS only, the public webpki roots, the
/// [`TimeoutCaps`] defaults.
#[derive(Clone)]
pub struct OutboundPolicy {
    allowed: Vec<Authority>,
    /// Plain http to allowlisted loopback authorities ([`OutboundPolicy::allow_http`]).
    http_loopback: bool,
    /// Plain http to exactly these ([`OutboundPolicy::allow_http_to`]).
    http_to: Vec<Authority>,
    extra_roots: Vec<CertificateDer<'static>>,
    caps: TimeoutCaps,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy {
            allowed: vec![DEFAULT_AUTHORITY.parse().expect("the default authority parses")],
            http_loopback: false,
            http_to: Vec::new(),
            extra_roots: Vec::new(),
            caps: TimeoutCaps::default(),
        }
    }
}

impl fmt::Debug for OutboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundPolicy")
            .field("allowed", &self.allowed_list())
            .field("http_loopback", &self.http_loopback)
            .field(
                "http_to",
                &self.http_to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .field("extra_roots", &self.extra_roots.len())
            .field("caps", &self.caps)
            .finish()
    }
}

/// Whether `host` names this machine: `localhost` (and its subdomains, RFC 6761), an
/// address in 127.0.0.0/8, or `::1`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` is Cloudsmith's default API host, to which plain http is never allowed.
pub fn is_default_host(host: &str) -> bool {
    host.trim_end_matches('.').eq_ignore_ascii_case(DEFAULT_HOST)
}

impl OutboundPolicy {
    /// Adds `authority` to the allowlist.
    pub fn allow(mut self, authority: Authority) -> Self {
        if !self.allowed.contains(&authority) {
            self.allowed.push(authority);
        }
        self
    }

    /// Replaces the allowlist (the default authority included) with `authorities`.
    pub fn allow_only(mut self, authorities: impl IntoIterator<Item = Authority>) -> Self {
        self.allowed = authorities.into_iter().collect();
        self
    }

    /// Allows plain `http` to allowlisted loopback authorities (`localhost`,
    /// 127.0.0.0/8, `::1`): a stand-in or a proxy on this machine. Refused by default;
    /// other hosts need [`OutboundPolicy::allow_http_to`].
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.http_loopback = allow;
        self
    }

    /// Allows plain `http` to `authority`, and adds it to the allowlist. Never to the
    /// default Cloudsmith host, on any port: the exchange carries the OIDC token, and
    /// Cloudsmith speaks only HTTPS (an error, so the operator learns it at start).
    pub fn allow_http_to(mut self, authority: Authority) -> anyhow::Result<Self> {
        if is_default_host(authority.host()) {
            bail!(
                "plain http to {authority} is never allowed: the exchange would carry the OIDC token in clear"
            );
        }
        if !self.http_to.contains(&authority) {
            self.http_to.push(authority.clone());
        }
        Ok(self.allow(authority))
    }

    /// Whether plain http to `target` (an allowlisted authority) is allowed.
    pub fn plain_http_allowed(&self, target: &Authority) -> bool {
        !is_default_host(target.host())
            && (self.http_to.contains(target) || (self.http_loopback && is_loopback(target.host())))
    }

    /// Trusts the CA certificates in the PEM file `path` in addition to the public roots.
    pub fn extra_ca_file(mut self, path: &Path) -> anyhow::Result<Self> {
        self.extra_roots.extend(read_ca_file(path)?);
        Ok(self)
    }

    /// Trusts `cert` (DER) in addition to the public roots.
    pub fn extra_root(mut self, cert: CertificateDer<'static>) -> Self {
        self.extra_roots.push(cert);
        self
    }

    /// Sets the timeout caps.
    pub fn timeouts(mut self, caps: TimeoutCaps) -> Self {
        self.caps = caps;
        self
    }

    /// The timeout caps.
    pub fn timeout_caps(&self) -> TimeoutCaps {
        self.caps
    }

    /// The allowlist.
    pub fn allowed(&self) -> &[Authority] {
        &self.allowed
    }

    fn allowed_list(&self) -> String {
        match self.allowed.as_slice() {
            [] => "none".into(),
            list => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Decides whether a request to `scheme://authority` may go out, and to where.
    pub fn decide(
        &self,
        scheme: Option<&Scheme>,
        authority: Option<&http::uri::Authority>,
    ) -> Result<Target, Denial> {
        let shown = authority.map(shown_authority).unwrap_or_default();
        let deny = |rule| {
            Err(Denial {
                authority: shown.clone(),
                rule,
            })
        };
        let tls = match scheme.map(Scheme::as_str) {
            Some("https") => true,
            Some("http") => false,
            other => return deny(Rule::UnsupportedScheme(other.unwrap_or("none").to_string())),
        };
        let Some(authority) = authority else {
            return deny(Rule::NoAuthority);
        };
        // Credentials belong in no URL: a request naming some would send them (or a
        // token put there) to whoever the host is, and print them wherever the URL goes.
        if authority.as_str().contains('@') {
            return deny(Rule::Userinfo);
        }
        let target = request_authority(authority, if tls { 443 } else { 80 });
        if !tls && is_default_host(target.host()) {
            return Err(Denial {
                authority: target.to_string(),
                rule: Rule::PlainHttpToCloudsmith,
            });
        }
        if !self.allowed.contains(&target) {
            return Err(Denial {
                authority: target.to_string(),
                rule: Rule::NotAllowlisted {
                    allowed: self.allowed_list(),
                },
            });
        }
        if !tls && !self.plain_http_allowed(&target) {
            return Err(Denial {
                authority: target.to_string(),
                rule: Rule::PlainHttp,
            });
        }
        Ok(Target {
            authority: target,
            tls,
        })
    }

    /// Builds the TLS client configuration (public roots plus any extra CAs).
    pub(crate) fn tls_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &self.extra_roots {
            roots
                .add(cert.clone())
                .context("adding an extra CA certificate")?;
        }
        // An explicit provider: kube-rs also uses rustls, and a process-wide default
        // provider may not be installed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The guest's request options capped by the host's.
    fn effective_timeouts(&self, options: Option<RequestOptions>) -> TimeoutCaps {
        let cap = |guest: Option<Duration>, cap: Duration| guest.map_or(cap, |g| g.min(cap));
        let o = options.unwrap_or_default();
        TimeoutCaps {
            connect: cap(o.connect_timeout, self.caps.connect),
            first_byte: cap(o.first_byte_timeout, self.caps.first_byte),
            between_bytes: cap(o.between_bytes_timeout, self.caps.between_bytes),
        }
    }
}

/// Where an allowed request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The authority, port filled in.
    pub authority: Authority,
    /// Whether to speak TLS.
    pub tls: bool,
}

/// A refused request: which authority, by which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The authority the guest asked for.
    pub authority: String,
    /// The rule that refused it.
    pub rule: Rule,
}

/// The rule behind a [`Denial`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The authority is not in the allowlist.
    NotAllowlisted {
        /// The allowlist, for the message.
        allowed: String,
    },
    /// Plain `http` to an authority the operator did not allow it for.
    PlainHttp,
    /// Plain `http` to the default Cloudsmith host: never allowed.
    PlainHttpToCloudsmith,
    /// The authority carries userinfo (`user:password@`).
    Userinfo,
    /// A scheme other than `http`/`https`.
    UnsupportedScheme(String),
    /// The request named no authority.
    NoAuthority,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.authority;
        match &self.rule {
            Rule::NotAllowlisted { allowed } => {
                write!(
                    f,
                    "host {a} is not in the outbound allowlist (allowed: {allowed})"
                )
            }
            Rule::PlainHttp => write!(
                f,
                "plain http to {a} is not allowed: only https, unless the operator allows plain http \
                 to that host (--allow-http {a}) or to loopback (--allow-http)"
            ),
            Rule::PlainHttpToCloudsmith => write!(
                f,
                "plain http to {a} is never allowed: the exchange would carry the OIDC token in clear"
            ),
            Rule::Userinfo => write!(
                f,
                "a request to {a} carries userinfo (user:password@host), which is never sent"
            ),
            Rule::UnsupportedScheme(s) => write!(f, "scheme {s:?} to {a} is not allowed (only https)"),
            Rule::NoAuthority => write!(f, "a request without a host is not allowed"),
        }
    }
}

/// What happened to one outbound request, for diagnostics. Holds no secret: the URL is
/// `scheme://authority/path` (the guest sends no query) and no header or body is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `METHOD scheme://authority/path`.
    pub request: String,
    /// `200`, or the reason there was no answer.
    pub outcome: Result<u16, String>,
    /// Time to the answer's headers (or to the failure).
    pub elapsed: Duration,
}

/// Everything the policy saw during one call.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// Each request, in order.
    pub requests: Vec<RequestRecord>,
    /// Each refusal, in order.
    pub denials: Vec<Denial>,
}

impl Journal {
    /// The most recent transport failure's description, if the last request failed.
    pub fn last_transport_failure(&self) -> Option<&str> {
        match self.requests.last()?.outcome {
            Err(ref why) => Some(why),
            Ok(_) => None,
        }
    }
}

/// The per-call `WasiHttpHooks`: decides, connects, and records.
pub(crate) struct PolicyHooks {
    policy: Arc<OutboundPolicy>,
    tls: Arc<rustls::ClientConfig>,
    journal: Arc<Mutex<Journal>>,
}

impl PolicyHooks {
    pub(crate) fn new(
        policy: Arc<OutboundPolicy>,
        tls: Arc<rustls::ClientConfig>,
        journal: Arc<Mutex<Journal>>,
    ) -> Self {
        PolicyHooks { policy, tls, journal }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for PolicyHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let shown = shown_request(request.method(), request.uri());
        let decision = self
            .policy
            .decide(request.uri().scheme(), request.uri().authority());
        let target = match decision {
            Ok(target) => target,
            Err(denial) => {
                let mut journal = lock(&self.journal);
                journal.requests.push(RequestRecord {
                    request: shown,
                    outcome: Err(format!("refused: {denial}")),
                    elapsed: Duration::ZERO,
                });
                journal.denials.push(denial);
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let timeouts = self.policy.effective_timeouts(options);
        let tls = self.tls.clone();
        let journal = self.journal.clone();
        Box::new(async move {
            let started = Instant::now();
            let result = send(request, &target, timeouts, tls).await;
            let outcome = match &result {
                Ok(Sent { response, .. }) => Ok(response.status().as_u16()),
                Err(failure) => Err(failure.description.clone()),
            };
            lock(&journal).requests.push(RequestRecord {
                request: shown,
                outcome,
                elapsed: started.elapsed(),
            });
            result
                .map(|sent| (sent.response, sent.connection))
                .map_err(|failure| failure.error)
        })
    }

    /// One chunk waits in the channel while the next is in hand: an unsent body holds
    /// at most two, within what the call's budget counts per resource.
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        crate::sandbox::BODY_CHUNK_BYTES
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        match err.kind() {
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::ConnectionRefused,
        }
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        let certificate = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
        if certificate {
            ErrorCode::TlsCertificateError
        } else {
            ErrorCode::TlsProtocolError
        }
    }
}

/// An authority as a journal or an error shows it: any userinfo replaced by
/// `[redacted]`, so that credentials a guest put in a URL are never printed.
fn shown_authority(authority: &http::uri::Authority) -> String {
    match authority.as_str().rsplit_once('@') {
        Some((_, host)) => format!("[redacted]@{host}"),
        None => authority.to_string(),
    }
}

/// `METHOD scheme://authority/path` for the journal, userinfo redacted and without the
/// query (the generator sends none; a query may hold a secret all the same).
fn shown_request(method: &http::Method, uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().map(|s| format!("{s}://")).unwrap_or_default();
    let authority = uri.authority().map(shown_authority).unwrap_or_default();
    let query = if uri.query().is_some() { "?[redacted]" } else { "" };
    format!("{method} {scheme}{authority}{}{query}", uri.path())
}

/// A journal is diagnostics: a panic elsewhere must not make it unusable.
fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Sent {
    response: http::Response<WasiBody>,
    connection: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
}

/// A failed send: the error for the guest and a description for the journal.
struct SendFailure {
    error: HttpError,
    description: String,
}

impl SendFailure {
    fn new(error: HttpError, description: String) -> Self {
        SendFailure { error, description }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// Connects to `target` and sends `request` over HTTP/1.1, as wasmtime's default
/// `send_request` does, with the policy's TLS roots and the capped timeouts.
async fn send(
    mut request: http::Request<WasiBody>,
    target: &Target,
    timeouts: TimeoutCaps,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Sent, SendFailure> {
    let authority = &target.authority;
    let connecting = async {
        let stream = connect(target, tls).await?;
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                SendFailure::new(
                    HttpError::Hyper(e),
                    format!("HTTP handshake with {authority} failed"),
                )
            })
    };
    let (mut sender, connection) = tokio::time::timeout(timeouts.connect, connecting)
        .await
        .map_err(|_| {
            SendFailure::new(
                HttpError::ConnectionTimeout,
                format!("connecting to {authority} timed out after {:?}", timeouts.connect),
            )
        })??;

    // The request line carries only the path: scheme and authority are for proxies.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| SendFailure::new(HttpError::HttpRequestUriInvalid, "invalid request path".into()))?;

    let mut connection = Box::pin(connection);
    let mut connection_done = false;
    let sending = tokio::time::timeout(timeouts.first_byte, sender.send_request(request));
    tokio::pin!(sending);
    // Drive the connection while waiting for the answer; a connection that ends first
    // with an error is the failure to report.
    let response = loop {
        tokio::select! {
            biased;
            answer = &mut sending => break answer,
            done = &mut connection, if !connection_done => {
                connection_done = true;
                if let Err(e) = done {
                    return Err(SendFailure::new(
                        HttpError::Hyper(e),
                        format!("connection to {authority} failed before an answer"),
                    ));
                }
            }
        }
    };
    let response = response
        .map_err(|_| {
            SendFailure::new(
                HttpError::ConnectionReadTimeout,
                format!("no answer from {authority} within {:?}", timeouts.first_byte),
            )
        })?
        .map_err(|e| SendFailure::new(HttpError::Hyper(e), format!("request to {authority} failed")))?;

    let between = timeouts.between_bytes;
    let response = response.map(|body| TimedBody::new(body, between).boxed_unsync());
    let connection: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async move {
        if connection_done {
            return Ok(());
        }
        connection.await.map_err(HttpError::Hyper)
    });
    Ok(Sent { response, connection })
}

/// TCP (and TLS when the target needs it).
async fn connect(target: &Target, tls: Arc<rustls::ClientConfig>) -> Result<Box<dyn Stream>, SendFailure> {
    let authority = &target.authority;
    let tcp = TcpStream::connect((authority.host(), authority.port()))
        .await
        .map_err(|e| {
            let why = format!("connecting to {authority} failed: {e}");
            SendFailure::new(HttpError::Connect(e), why)
        })?;
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = match authority.host().parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(authority.host().to_string()).map_err(|_| {
            SendFailure::new(
                HttpError::HttpRequestUriInvalid,
                format!("{} is not a valid TLS server name", authority.host()),
            )
        })?,
    };
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let why = format!("TLS handshake with {authority} failed: {e}");
            SendFailure::new(HttpError::Tls(e), why)
        })?;
    Ok(Box::new(stream))
}

/// The answer's body, failing when a frame takes longer than the between-bytes timeout.
struct TimedBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    fn decide(policy: &OutboundPolicy, url: &str) -> Result<Target, Denial> {
        let u = uri(url);
        policy.decide(u.scheme(), u.authority())
    }

    #[test]
    fn default_policy_allows_only_cloudsmith_over_https() {
        let p = OutboundPolicy::default();
        let t = decide(&p, "https://api.cloudsmith.io/openid/org/").unwrap();
        assert!(t.tls);
        assert_eq!(t.authority.to_string(), "api.cloudsmith.io:443");
        assert!(decide(&p, "https://API.CLOUDSMITH.IO:443/").is_ok());

        let d = decide(&p, "https://127.0.0.1:9/").unwrap_err();
        assert_eq!(
            d.to_string(),
            "host 127.0.0.1:9 is not in the outbound allowlist (allowed: api.cloudsmith.io:443)"
        );
        let d = decide(&p, "https://api.cloudsmith.io:8443/").unwrap_err();
        assert!(matches!(d.rule, Rule::NotAllowlisted { .. }));
        let d = decide(&p, "http://api.cloudsmith.io/").unwrap_err();
        assert_eq!(d.rule, Rule::PlainHttpToCloudsmith);
    }

    #[test]
    fn http_needs_opt_in_and_defaults_to_port_80() {
        let p = OutboundPolicy::default()
            .allow("127.0.0.1:8080".parse().unwrap())
            .allow_http(true);
        let t = decide(&p, "http://127.0.0.1:8080/x").unwrap();
        assert!(!t.tls);
        // Port 80 is implied by http and is not in the list.
        assert!(decide(&p, "http://127.0.0.1/x").is_err());
        let only = OutboundPolicy::default()
            .allow_only(["localhost:80".parse().unwrap()])
            .allow_http(true);
        assert!(decide(&only, "http://localhost/").is_ok());
        assert!(decide(&only, "https://api.cloudsmith.io/").is_err());
    }

    #[test]
    fn plain_http_goes_only_where_it_was_allowed_and_never_to_cloudsmith() {
        // (policy, URL, allowed?) - each row failed before plain http became per host:
        // `--allow-http` allowed it to every allowlisted authority, Cloudsmith's included.
        let cloudsmith_443: Authority = "api.cloudsmith.io:443".parse().unwrap();
        let registry: Authority = Authority::new("cloudsmith.internal", 80);
        let global = OutboundPolicy::default()
            .allow(cloudsmith_443.clone())
            .allow(registry.clone())
            .allow("127.0.0.1:8080".parse().unwrap())
            .allow_http(true);
        let named = OutboundPolicy::default().allow_http_to(registry.clone()).unwrap();
        let not_allowed = Rule::NotAllowlisted {
            allowed: "api.cloudsmith.io:443, cloudsmith.internal:80".into(),
        };
        let rows: Vec<(&OutboundPolicy, &str, Result<(), Rule>)> = vec![
            (
                &global,
                "http://api.cloudsmith.io:443/openid/acme/",
                Err(Rule::PlainHttpToCloudsmith),
            ),
            (
                &global,
                "http://API.Cloudsmith.IO./",
                Err(Rule::PlainHttpToCloudsmith),
            ),
            (&global, "http://cloudsmith.internal/", Err(Rule::PlainHttp)),
            (&global, "http://127.0.0.1:8080/", Ok(())),
            (&global, "https://api.cloudsmith.io/", Ok(())),
            (&named, "http://cloudsmith.internal/", Ok(())),
            (
                &named,
                "http://cloudsmith.internal:8080/",
                Err(not_allowed.clone()),
            ),
            (&named, "http://127.0.0.1:8080/", Err(not_allowed.clone())),
            (
                &named,
                "http://api.cloudsmith.io/",
                Err(Rule::PlainHttpToCloudsmith),
            ),
        ];
        let wrong: Vec<String> = rows
            .iter()
            .filter_map(|(policy, url, want)| {
                let got = decide(policy, url).map(|_| ()).map_err(|d| d.rule);
                (got != *want).then(|| format!("{url}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Naming the Cloudsmith host for plain http is refused outright.
        for port in [80, 443, 8080] {
            let err = OutboundPolicy::default()
                .allow_http_to(Authority::new("api.cloudsmith.io", port))
                .unwrap_err();
            assert!(err.to_string().contains("never allowed"), "{err}");
        }
        assert!(is_loopback("localhost") && is_loopback("127.1.2.3") && is_loopback("[::1]"));
        assert!(!is_loopback("127.0.0.1.example") && !is_loopback("10.0.0.1"));
    }

    #[test]
    fn userinfo_is_refused_and_never_shown() {
        let p = OutboundPolicy::default()
            .allow("127.0.0.1:8080".parse().unwrap())
            .allow_http(true);
        for url in [
            "https://SECRETTOKEN@api.cloudsmith.io/openid/acme/",
            "https://user:SECRETTOKEN@api.cloudsmith.io:443/",
            "http://SECRETTOKEN@127.0.0.1:8080/",
        ] {
            let denial = decide(&p, url).unwrap_err();
            assert_eq!(denial.rule, Rule::Userinfo, "{url}");
            assert!(!denial.to_string().contains("SECRETTOKEN"), "{denial}");
            assert!(denial.to_string().contains("[redacted]@"), "{denial}");
            let shown = shown_request(&http::Method::POST, &uri(url));
            assert!(
                !shown.contains("SECRETTOKEN") && shown.contains("[redacted]@"),
                "{shown}"
            );
        }
        let shown = shown_request(
            &http::Method::GET,
            &uri("https://api.cloudsmith.io/x?token=SECRET"),
        );
        assert_eq!(shown, "GET https://api.cloudsmith.io/x?[redacted]");
    }

    #[test]
    fn guest_timeouts_are_capped() {
        let p = OutboundPolicy::default();
        let t = p.effective_timeouts(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(3600)),
            between_bytes_timeout: None,
        }));
        assert_eq!(t.connect, Duration::from_secs(1));
        assert_eq!(t.first_byte, TimeoutCaps::default().first_byte);
        assert_eq!(t.between_bytes, TimeoutCaps::default().between_bytes);
    }
}
