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

mod artifact;
mod checks;
mod reference;
mod registry;
mod store;

use crate::registry_auth::{AuthError, Login};
use futures_util::StreamExt as _;
use oci_client::errors::DigestError;
use oci_client::manifest::{OciDescriptor, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};

pub use artifact::{Artifact, Publication};
pub use checks::wasm_layer;
pub use reference::{parse_digest, BadDigest, BadReference, ComponentRef, SCHEME};
pub use registry::{ClientError, Registry, RegistryOptions};
pub use store::{sha256, ComponentStore};

use checks::{cause, classify, is_manifest, not_a_component, not_a_manifest};
use registry::auth;

/// The largest component fetched: far above any generator or composition of plugs
/// (ours is about 150 KiB), far below what a bad registry could make us buffer.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// The largest manifest read. It is distribution's own: the registry stores none bigger
/// (registry/handlers/manifests.go, `maxManifestBodySize = 4 << 20`), and
/// containers/image, skopeo's library, reads none bigger (internal/iolimits
/// `MaxManifestBodySize`). A Wasm component's manifest is under 2 KiB.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    /// The registry refused the credentials, or gave none (401, 403).
    #[error("{0}")]
    Refused(String),
    /// No such repository, tag or digest (404).
    #[error("{0}")]
    NotFound(String),
    /// The artifact is not the component it must be: a digest that does not match,
    /// another media type, a layer over the bound, a core module, not a manifest.
    #[error("{0}")]
    Invalid(String),
    /// The registry could not be reached or stopped answering (connect, TLS, timeout,
    /// a connection cut mid-blob, 5xx).
    #[error("{0}")]
    Unreachable(String),
}

/// Credentials that cannot be read refuse the registry call, as `docker pull` fails.
impl From<AuthError> for OciError {
    fn from(e: AuthError) -> OciError {
        OciError::Refused(e.to_string())
    }
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
    login: impl AsyncFnOnce() -> Result<Login, AuthError>,
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
                Some(cloudsmith_gen_core::flight::Flight::Leader(lock)) => Some(lock),
                _ => None,
            }
        }
        None => None,
    };
    let login = login().await?;
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
