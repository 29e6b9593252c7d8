//! Components as OCI artifacts, in the layout of the CNCF TAG Runtime's "Wasm OCI
//! Artifact": a manifest whose config has media type `application/vnd.wasm.config.v0+json`
//! (`architecture: wasm`, `os: wasip2`, `layerDigests`, and `component` listing the
//! imports and exports of the component's world) and whose one layer, `application/wasm`,
//! holds the component. `wkg oci push/pull`, wasmCloud and runwasi read and write it.
//!
//! - [`push`] publishes a component, reproducibly: one build pushed twice gives one
//!   manifest digest (the config's `created` is the caller's, not the clock's).
//! - [`fetch`] gets a component pinned by digest, and trusts nothing it did not check:
//!   the manifest's digest, its media types, one layer under a size bound, the layer's
//!   digest, that it is a component and not a core module. A [`ComponentStore`] keeps it
//!   by digest, so a second run makes no registry call, and a burst of first runs
//!   fetches once.
//! - [`resolve`] tells what a tag names now, for an error that says how to pin it.
//!
//! The registry client is oci-client (with oci-wasm's config types, so the config is the
//! one wkg writes), on rustls with ring: no OpenSSL, so the static image still builds.
//! Manifests are the one read the host makes itself, with oci-client's authentication:
//! oci-client reads a manifest whole, and the host bounds it ([`MAX_MANIFEST_BYTES`]).
//! These fetches are the host's own: the guest's outbound policy does not see them and
//! is not widened by them.

mod reference;
mod store;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use host_core::registry_auth::Login;
use host_core::secret::one_line;
use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer,
};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_wasm::{ToConfig as _, WasmConfig, WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE};
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

pub use reference::{parse_digest, ComponentRef, SCHEME};
pub use store::{sha256, ComponentStore};

/// The largest component fetched: far above any generator or composition of plugs
/// (ours is about 150 KiB), far below what a bad registry could make us buffer.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// The largest manifest read. It is distribution's own: the registry stores none bigger
/// (registry/handlers/manifests.go, `maxManifestBodySize = 4 << 20`), and
/// containers/image, skopeo's library, reads none bigger (internal/iolimits
/// `MaxManifestBodySize`). A Wasm component's manifest is under 2 KiB.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// How much of an error answer is read, for its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The OCI annotations a pushed manifest carries.
pub mod annotation {
    /// The component's name.
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// Its version.
    pub const VERSION: &str = "org.opencontainers.image.version";
    /// The source revision it was built from.
    pub const REVISION: &str = "org.opencontainers.image.revision";
    /// Where its source is.
    pub const SOURCE: &str = "org.opencontainers.image.source";
    /// Its licenses (SPDX).
    pub const LICENSES: &str = "org.opencontainers.image.licenses";
    /// When it was built (RFC 3339), the same time as the config's `created`.
    pub const CREATED: &str = "org.opencontainers.image.created";
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciError {
    /// The registry refused the credentials, or gave none (401, 403).
    Refused(String),
    /// No such repository, tag or digest (404).
    NotFound(String),
    /// The artifact is not the component it must be: a digest that does not match,
    /// another media type, a layer over the bound, a core module, not a manifest.
    Invalid(String),
    /// The registry could not be reached or stopped answering (connect, TLS, timeout,
    /// a connection cut mid-blob, 5xx).
    Unreachable(String),
}

impl OciError {
    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            OciError::Refused(m)
            | OciError::NotFound(m)
            | OciError::Invalid(m)
            | OciError::Unreachable(m) => m,
        }
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for OciError {}

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
    client: oci_client::Client,
    /// The same TLS, timeouts and user agent as `client`'s, for the manifest reads the
    /// host bounds itself.
    http: reqwest::Client,
    scheme: &'static str,
}

impl Registry {
    /// A client with these options; fails when TLS cannot use a CA certificate given.
    pub fn new(options: &RegistryOptions) -> Result<Registry, String> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(options.timeout)
            .read_timeout(options.timeout)
            .user_agent(USER_AGENT);
        for der in &options.extra_roots {
            let certificate = reqwest::Certificate::from_der(der).map_err(|e| {
                format!(
                    "a CA certificate (SSL_CERT_FILE, --ca-file) that TLS cannot use: {}",
                    cause(&e)
                )
            })?;
            http = http.add_root_certificate(certificate);
        }
        let http = http
            .build()
            .map_err(|e| format!("setting up the registry client: {}", cause(&e)))?;
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
        let client = oci_client::Client::try_from(config)
            .map_err(|e| format!("setting up the registry client: {}", cause(&e)))?;
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
    async fn manifest(
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
fn auth(login: &Login, registry: &str) -> Result<RegistryAuth, OciError> {
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

/// What a component's publication says about it (the manifest's annotations) and when it
/// was made (the config's `created`, which decides the digest).
#[derive(Debug, Clone)]
pub struct Publication {
    /// OCI annotations for the manifest.
    pub annotations: BTreeMap<String, String>,
    /// The config's `created`, in UNIX seconds (`SOURCE_DATE_EPOCH`, or the commit's).
    pub created: i64,
}

/// What [`push`] sends: the manifest (its bytes are what the digest is taken over), the
/// config and the layer.
#[derive(Clone)]
pub struct Artifact {
    manifest: Vec<u8>,
    config: Config,
    layer: ImageLayer,
}

impl Artifact {
    /// The artifact of `component`; refused when it is not a component (a core module,
    /// not Wasm) or its WIT cannot be read.
    pub fn of(component: &[u8], publication: &Publication) -> Result<Artifact, String> {
        if !wasmparser::Parser::is_component(component) {
            return Err(not_a_component(component));
        }
        let (mut config, layer) = WasmConfig::from_raw_component(component.to_vec(), None).map_err(|e| {
            format!(
                "reading the component's WIT: {}",
                one_line(&format!("{e:#}"), 200)
            )
        })?;
        config.created = chrono::DateTime::from_timestamp(publication.created, 0)
            .ok_or_else(|| format!("created time {} is out of range", publication.created))?;
        let config = config
            .to_config()
            .map_err(|e| format!("writing the config: {e}"))?;
        let mut manifest = OciImageManifest::build(
            std::slice::from_ref(&layer),
            &config,
            Some(publication.annotations.clone()),
        );
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        let manifest = serde_json::to_vec(&manifest).map_err(|e| format!("writing the manifest: {e}"))?;
        Ok(Artifact {
            manifest,
            config,
            layer,
        })
    }

    /// The manifest's digest, `sha256:<hex>`: what a pull pins.
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("digest", &self.digest())
            .field("layer_bytes", &self.layer.data.len())
            .finish()
    }
}

/// Pushes `artifact` to `target` (which has a tag) and returns the manifest's digest.
pub async fn push(
    registry: &Registry,
    target: &ComponentRef,
    artifact: &Artifact,
    login: &Login,
) -> Result<String, OciError> {
    let image = target.to_oci();
    let auth = auth(login, target.registry())?;
    let sent = auth != RegistryAuth::Anonymous;
    let what = format!("pushing to {target}");
    // oci-client authenticates for push once; the blob and manifest uploads reuse it.
    registry
        .client
        .auth(&image, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| classify(&what, e, sent))?;
    for data in [&artifact.config.data, &artifact.layer.data] {
        registry
            .client
            .push_blob(&image, data, &sha256(data))
            .await
            .map_err(|e| classify(&what, e, sent))?;
    }
    registry
        .client
        .push_manifest_raw(
            &image,
            artifact.manifest.clone(),
            OCI_IMAGE_MEDIA_TYPE.parse().expect("a valid header value"),
        )
        .await
        .map_err(|e| classify(&what, e, sent))?;
    Ok(artifact.digest())
}

/// The digest a tag names now (one manifest request).
pub async fn resolve(
    registry: &Registry,
    reference: &ComponentRef,
    login: &Login,
) -> Result<String, OciError> {
    let what = format!("resolving {SCHEME}{reference}");
    let auth = auth(login, reference.registry())?;
    let (manifest, content_type) = registry.manifest(&reference.to_oci(), &auth, &what).await?;
    if !is_manifest(&manifest) {
        return Err(not_a_manifest(&what, &manifest, &content_type));
    }
    Ok(sha256(&manifest))
}

/// The component `reference` pins (it must have a digest), from `store` when it holds
/// it, else from the registry, verified, then kept in `store`. `login` is asked for only
/// when the registry must be called.
pub async fn fetch(
    registry: &Registry,
    reference: &ComponentRef,
    login: impl AsyncFnOnce() -> Result<Login, String>,
    store: Option<&ComponentStore>,
    wait_until: std::time::Instant,
) -> Result<Fetched, OciError> {
    let digest = reference
        .digest()
        .ok_or_else(|| OciError::Invalid(format!("{SCHEME}{reference} has no digest")))?;
    if let Some(bytes) = store.and_then(|s| s.get(digest)) {
        return Ok(Fetched {
            bytes,
            from_store: true,
        });
    }
    // Another process may be fetching the same digest: wait for it (a blocking wait, off
    // the async threads), then look again.
    let _flight = match store {
        Some(store) => {
            let (owned, digest_owned) = (store.clone(), digest.to_string());
            let flight = tokio::task::spawn_blocking(move || owned.lock(&digest_owned, wait_until))
                .await
                .ok();
            if let Some(bytes) = store.get(digest) {
                return Ok(Fetched {
                    bytes,
                    from_store: true,
                });
            }
            match flight {
                Some(host_core::flight::Flight::Leader(lock)) => Some(lock),
                _ => None,
            }
        }
        None => None,
    };
    let login = login().await.map_err(OciError::Refused)?;
    let (manifest, layer, bytes) =
        download(registry, reference, digest, &auth(&login, reference.registry())?).await?;
    if let Some(store) = store {
        // A store that cannot be written costs the next run a fetch, not this one.
        let _ = store.put(digest, &manifest, &layer.digest, &bytes);
    }
    Ok(Fetched {
        bytes,
        from_store: false,
    })
}

/// A fetched component.
#[derive(Debug)]
pub struct Fetched {
    /// Its bytes, verified.
    pub bytes: Vec<u8>,
    /// Whether the store had it (no registry call).
    pub from_store: bool,
}

async fn download(
    registry: &Registry,
    reference: &ComponentRef,
    digest: &str,
    auth: &RegistryAuth,
) -> Result<(Vec<u8>, OciDescriptor, Vec<u8>), OciError> {
    let what = format!("fetching {SCHEME}{reference}");
    let sent = *auth != RegistryAuth::Anonymous;
    let image = reference.pinned(digest).to_oci();
    let (manifest, content_type) = registry.manifest(&image, auth, &what).await?;
    let served = sha256(&manifest);
    if served != digest {
        if !is_manifest(&manifest) {
            return Err(not_a_manifest(&what, &manifest, &content_type));
        }
        return Err(OciError::Invalid(format!(
            "{what}: the registry served a manifest whose digest is {served}, not the pinned {digest}"
        )));
    }
    let layer = wasm_layer(&manifest).map_err(|why| OciError::Invalid(format!("{what}: {why}")))?;
    let mut stream = registry
        .client
        .pull_blob_stream(&image, &layer)
        .await
        .map_err(|e| classify(&what, e, sent))?;
    let declared = layer.size as u64;
    let mut bytes = Vec::with_capacity(declared as usize);
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client hashes the stream too, and ends it with this error on a mismatch.
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => {
                return Err(OciError::Invalid(format!(
                    "{what}: the registry served a component whose digest is {}, not {}",
                    store::digest_of_hash(hasher.finalize().as_slice()),
                    layer.digest
                )));
            }
            Err(e) => {
                return Err(OciError::Unreachable(format!(
                    "{what}: the registry stopped sending the component after {} of {declared} bytes: {}",
                    bytes.len(),
                    cause(&e)
                )))
            }
        };
        if (bytes.len() + chunk.len()) as u64 > declared {
            return Err(OciError::Invalid(format!(
                "{what}: the registry sent more than the {declared} bytes the manifest declares"
            )));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != declared {
        return Err(OciError::Unreachable(format!(
            "{what}: the registry stopped sending the component after {} of {declared} bytes",
            bytes.len()
        )));
    }
    let got = store::digest_of_hash(hasher.finalize().as_slice());
    if got != layer.digest {
        return Err(OciError::Invalid(format!(
            "{what}: the registry served a component whose digest is {got}, not {}",
            layer.digest
        )));
    }
    if !wasmparser::Parser::is_component(&bytes) {
        return Err(OciError::Invalid(format!("{what}: {}", not_a_component(&bytes))));
    }
    Ok((manifest, layer, bytes))
}

/// The one `application/wasm` layer of a Wasm component manifest, checked: media types,
/// one layer, a size within [`MAX_COMPONENT_BYTES`].
pub fn wasm_layer(manifest: &[u8]) -> Result<OciDescriptor, String> {
    let manifest: OciImageManifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the registry served no OCI image manifest ({e})"))?;
    let media_type = manifest.media_type.as_deref().unwrap_or("none");
    if media_type != OCI_IMAGE_MEDIA_TYPE {
        return Err(format!(
            "the manifest's media type is {media_type}, not {OCI_IMAGE_MEDIA_TYPE}"
        ));
    }
    let config = manifest.config.media_type.as_str();
    if config != WASM_MANIFEST_CONFIG_MEDIA_TYPE {
        let what = if config.starts_with("application/vnd.oci.image.config.")
            || config.starts_with("application/vnd.docker.container.image.")
        {
            "a container image"
        } else {
            "an artifact of another kind"
        };
        return Err(format!(
            "it is {what} (config {config}), not a Wasm component ({WASM_MANIFEST_CONFIG_MEDIA_TYPE})"
        ));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(format!(
            "a Wasm component has one layer; this manifest has {}",
            manifest.layers.len()
        ));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE {
        return Err(format!(
            "its layer is {}, not {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        ));
    }
    if layer.size < 0 || layer.size as u64 > MAX_COMPONENT_BYTES {
        return Err(format!(
            "its layer of {} bytes is over the bound of {MAX_COMPONENT_BYTES} bytes",
            layer.size
        ));
    }
    parse_digest(&layer.digest)?;
    Ok(layer.clone())
}

/// Whether `bytes` are a manifest of some kind: what oci-client's own check reads
/// (client.rs `validate_image_manifest`), a JSON object with a `schemaVersion`.
fn is_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<oci_client::manifest::Versioned>(bytes).is_ok()
}

fn not_a_manifest(what: &str, bytes: &[u8], content_type: &str) -> OciError {
    OciError::Invalid(format!(
        "{what}: the registry served no manifest, but {} bytes of {}",
        bytes.len(),
        one_line(content_type, 80)
    ))
}

fn not_a_component(bytes: &[u8]) -> String {
    if wasmparser::Parser::is_core_wasm(bytes) {
        "it is a core Wasm module, not a component (build it for wasm32-wasip2, or wrap it with wasm-tools component new)".into()
    } else {
        "it is not a Wasm component".into()
    }
}

/// oci-client's error, as one of ours, for `what` the host was doing; `sent` says
/// whether credentials went with the request (a 401 then means they were refused).
fn classify(what: &str, e: OciDistributionError, sent: bool) -> OciError {
    use OciDistributionError as E;
    match e {
        E::AuthenticationFailure(m) => OciError::Refused(format!(
            "{what}: the registry refused the credentials ({}); give them in Docker's config.json (auths or credHelpers)",
            one_line(&m, 200)
        )),
        E::UnauthorizedError { .. } if sent => OciError::Refused(format!(
            "{what}: the registry refused the credentials Docker's config.json gives for it (401 Unauthorized)"
        )),
        E::UnauthorizedError { .. } => OciError::Refused(format!(
            "{what}: the registry asks for credentials (401 Unauthorized) and Docker's config.json gives none \
             for it: add them (auths or credHelpers)"
        )),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let text = one_line(&text, 200);
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                OciError::Refused(format!("{what}: the registry refused: {text}"))
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown
                )
            }) {
                OciError::NotFound(format!("{what}: not found in the registry ({text})"))
            } else {
                OciError::Invalid(format!("{what}: the registry answered an error: {text}"))
            }
        }
        E::ImageManifestNotFoundError(_) => OciError::NotFound(format!("{what}: not found in the registry")),
        E::ServerError { code, message, .. } => {
            let text = one_line(&message, 120);
            match code {
                401 | 403 => OciError::Refused(format!("{what}: the registry answered {code}: {text}")),
                404 => OciError::NotFound(format!("{what}: not found in the registry (404)")),
                _ => OciError::Unreachable(format!("{what}: the registry answered {code}: {text}")),
            }
        }
        E::DigestError(d) => OciError::Invalid(format!("{what}: digest mismatch: {}", one_line(&d.to_string(), 200))),
        E::ManifestParsingError(m) | E::VersionedParsingError(m) => OciError::Invalid(format!(
            "{what}: the registry served no OCI manifest ({})",
            one_line(&m, 120)
        )),
        E::UnsupportedMediaTypeError(m) => {
            OciError::Invalid(format!("{what}: the registry served a manifest of media type {m}"))
        }
        E::RequestError(e) => OciError::Unreachable(format!("{what}: {}", cause(&e))),
        E::SpecViolationError(m) => OciError::Invalid(format!("{what}: the registry broke the OCI distribution spec: {m}")),
        other => OciError::Unreachable(format!("{what}: {}", one_line(&other.to_string(), 200))),
    }
}

/// A transport error with its causes (reqwest's own text is "error sending request").
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    // rustls appends a link to its documentation to some errors: not for a one-line error.
    if let Some(at) = text.find(": https://") {
        text.truncate(at);
    }
    one_line(&text, 300)
}
