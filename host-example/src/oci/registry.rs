//! The registry client: oci-client for authentication and blobs, and the host's own
//! bounded read of a manifest.

use std::time::Duration;

use crate::registry_auth::Login;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use rustls::pki_types::CertificateDer;

use super::checks::{cause, classify};
use super::{OciError, MAX_MANIFEST_BYTES};

/// How much of an error answer is read, for its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Why a registry client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A CA certificate given that TLS cannot use.
    #[error("a CA certificate (SSL_CERT_FILE, --ca-file) that TLS cannot use: {0}")]
    Certificate(String),
    /// The HTTP client could not be built.
    #[error("setting up the registry client: {0}")]
    Setup(String),
}

/// How the host reaches registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// CA certificates trusted besides the public roots (`SSL_CERT_FILE`, `--ca-file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Plain HTTP, for a registry on loopback or a lab network; never the default.
    pub plain_http: bool,
    /// Bound on connecting, and on each wait for bytes.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            extra_roots: Vec::new(),
            plain_http: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A client for OCI registries.
pub struct Registry {
    pub(super) client: oci_client::Client,
    /// The same TLS, timeouts and user agent as `client`'s, for the manifest reads the
    /// host bounds itself.
    http: reqwest::Client,
    scheme: &'static str,
}

impl Registry {
    /// A client with these options; fails when TLS cannot use a CA certificate given.
    pub fn new(options: &RegistryOptions) -> Result<Registry, ClientError> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(options.timeout)
            .read_timeout(options.timeout)
            .user_agent(USER_AGENT);
        for der in &options.extra_roots {
            let certificate =
                reqwest::Certificate::from_der(der).map_err(|e| ClientError::Certificate(cause(&e)))?;
            http = http.add_root_certificate(certificate);
        }
        let http = http.build().map_err(|e| ClientError::Setup(cause(&e)))?;
        let config = ClientConfig {
            protocol: if options.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: options
                .extra_roots
                .iter()
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.to_vec(),
                })
                .collect(),
            connect_timeout: Some(options.timeout),
            read_timeout: Some(options.timeout),
            user_agent: USER_AGENT,
            // The components are small, and a registry that takes one upload at a time
            // is simpler to reason about.
            max_concurrent_upload: 1,
            ..ClientConfig::default()
        };
        // `try_from`, not `new`: `new` falls back to a client without the CA files.
        let client = oci_client::Client::try_from(config).map_err(|e| ClientError::Setup(cause(&e)))?;
        Ok(Registry {
            client,
            http,
            scheme: if options.plain_http { "http" } else { "https" },
        })
    }

    /// GETs the manifest `image` names, reading at most [`MAX_MANIFEST_BYTES`] of it.
    /// Authentication is oci-client's (Basic, or its token flow, whose token it keeps for
    /// the blob that follows); the request and the bounded read are the host's. Returns
    /// the bytes and the answer's `Content-Type`.
    pub(super) async fn manifest(
        &self,
        image: &oci_client::Reference,
        auth: &RegistryAuth,
        what: &str,
    ) -> Result<(Vec<u8>, String), OciError> {
        use OciDistributionError as E;
        let sent = *auth != RegistryAuth::Anonymous;
        let token = self
            .client
            .auth(image, auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| classify(what, e, sent))?;
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            image.resolve_registry(),
            image.repository(),
            image.digest().or(image.tag()).unwrap_or("latest")
        );
        let request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, OCI_IMAGE_MEDIA_TYPE);
        // As oci-client sends it: its token when the registry runs the token flow, else
        // the Basic credentials.
        let request = match (token, auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(username, password)) => request.basic_auth(username, Some(password)),
            _ => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| classify(what, E::RequestError(e), sent))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        if status != reqwest::StatusCode::OK {
            let body = read_at_most(&mut response, MAX_ERROR_BYTES)
                .await
                .unwrap_or_else(|(partial, _)| partial);
            return Err(classify(what, answer_error(status, &body, url), sent));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(manifest_over_bound(what));
        }
        match read_at_most(&mut response, MAX_MANIFEST_BYTES).await {
            Ok(body) => Ok((body, content_type)),
            Err((_, None)) => Err(manifest_over_bound(what)),
            Err((_, Some(e))) => Err(classify(what, E::RequestError(e), sent)),
        }
    }
}

const USER_AGENT: &str = concat!("cloudsmith-gen/", env!("CARGO_PKG_VERSION"));

fn manifest_over_bound(what: &str) -> OciError {
    OciError::Invalid(format!(
        "{what}: the registry sent a manifest over the bound of {MAX_MANIFEST_BYTES} bytes"
    ))
}

/// The body, up to `max` bytes. Beyond them: what was read and no error; on a transport
/// error: what was read and the error.
async fn read_at_most(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, (Vec<u8>, Option<reqwest::Error>)> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > max => {
                body.extend_from_slice(&chunk[..max - body.len()]);
                return Err((body, None));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(e) => return Err((body, Some(e))),
        }
    }
}

/// A registry's answer other than 200, as oci-client reads one (client.rs
/// `validate_registry_response`), so that [`classify`] names it as it names oci-client's.
fn answer_error(status: reqwest::StatusCode, body: &[u8], url: String) -> OciDistributionError {
    use OciDistributionError as E;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return E::UnauthorizedError { url };
    }
    if status.is_success() {
        return E::SpecViolationError(format!("expected HTTP status 200, got {status}"));
    }
    if status.is_client_error() {
        if let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body) {
            return E::RegistryError { envelope, url };
        }
    }
    E::ServerError {
        code: status.as_u16(),
        url,
        message: String::from_utf8_lossy(body).into_owned(),
    }
}

/// The login as oci-client takes it. oci-client runs the token flow with Basic
/// credentials only: a Docker identity token (an OAuth2 refresh token) it cannot use.
pub(super) fn auth(login: &Login, registry: &str) -> Result<RegistryAuth, OciError> {
    match login {
        Login::Anonymous => Ok(RegistryAuth::Anonymous),
        Login::Basic { username, password } => Ok(RegistryAuth::Basic(
            username.clone(),
            password.expose().to_string(),
        )),
        Login::RegistryToken(token) => Ok(RegistryAuth::Bearer(token.expose().to_string())),
        Login::IdentityToken(_) => Err(OciError::Refused(format!(
            "Docker's config gives an identity token (an OAuth2 refresh token) for {registry}, which this \
             host cannot use: give a user name and password (auths) or a credential helper"
        ))),
    }
}
