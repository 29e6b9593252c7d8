//! The pure checks of what a registry serves (is it a manifest, the one Wasm layer, a
//! component), and oci-client's errors classified as ours.

use cloudsmith_gen_core::secret::one_line;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE};

use super::{parse_digest, OciError, MAX_COMPONENT_BYTES};

/// The one `application/wasm` layer of a Wasm component manifest, checked: media types,
/// one layer, a size within [`MAX_COMPONENT_BYTES`]. Anything else is
/// [`OciError::Invalid`], saying what the artifact is instead.
pub fn wasm_layer(manifest: &[u8]) -> Result<OciDescriptor, OciError> {
    let invalid = OciError::Invalid;
    let manifest: OciImageManifest = serde_json::from_slice(manifest)
        .map_err(|e| invalid(format!("the registry served no OCI image manifest ({e})")))?;
    let media_type = manifest.media_type.as_deref().unwrap_or("none");
    if media_type != OCI_IMAGE_MEDIA_TYPE {
        return Err(invalid(format!(
            "the manifest's media type is {media_type}, not {OCI_IMAGE_MEDIA_TYPE}"
        )));
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
        return Err(invalid(format!(
            "it is {what} (config {config}), not a Wasm component ({WASM_MANIFEST_CONFIG_MEDIA_TYPE})"
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(invalid(format!(
            "a Wasm component has one layer; this manifest has {}",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE {
        return Err(invalid(format!(
            "its layer is {}, not {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        )));
    }
    if layer.size < 0 || layer.size as u64 > MAX_COMPONENT_BYTES {
        return Err(invalid(format!(
            "its layer of {} bytes is over the bound of {MAX_COMPONENT_BYTES} bytes",
            layer.size
        )));
    }
    parse_digest(&layer.digest).map_err(|e| invalid(e.to_string()))?;
    Ok(layer.clone())
}

/// Whether `bytes` are a manifest of some kind: what oci-client's own check reads
/// (client.rs `validate_image_manifest`), a JSON object with a `schemaVersion`.
pub(super) fn is_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<oci_client::manifest::Versioned>(bytes).is_ok()
}

pub(super) fn not_a_manifest(what: &str, bytes: &[u8], content_type: &str) -> OciError {
    OciError::Invalid(format!(
        "{what}: the registry served no manifest, but {} bytes of {}",
        bytes.len(),
        one_line(content_type, 80)
    ))
}

pub(super) fn not_a_component(bytes: &[u8]) -> String {
    if wasmparser::Parser::is_core_wasm(bytes) {
        "it is a core Wasm module, not a component (build it for wasm32-wasip2, or wrap it with wasm-tools component new)".into()
    } else {
        "it is not a Wasm component".into()
    }
}

/// oci-client's error, as one of ours, for `what` the host was doing; `sent` says
/// whether credentials went with the request (a 401 then means they were refused).
pub(super) fn classify(what: &str, e: OciDistributionError, sent: bool) -> OciError {
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
pub(super) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests;
