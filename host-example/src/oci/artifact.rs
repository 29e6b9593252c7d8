//! What `component push` sends: a component as a Wasm OCI artifact.

use std::collections::BTreeMap;

use cloudsmith_gen_core::secret::one_line;
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_wasm::{ToConfig as _, WasmConfig};

use super::checks::not_a_component;
use super::{sha256, OciError};

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
    pub(super) manifest: Vec<u8>,
    pub(super) config: Config,
    pub(super) layer: ImageLayer,
}

impl Artifact {
    /// The artifact of `component`; refused when it is not a component (a core module,
    /// not Wasm) or its WIT cannot be read ([`OciError::Invalid`]).
    pub fn of(component: &[u8], publication: &Publication) -> Result<Artifact, OciError> {
        let invalid = OciError::Invalid;
        if !wasmparser::Parser::is_component(component) {
            return Err(invalid(not_a_component(component)));
        }
        let (mut config, layer) = WasmConfig::from_raw_component(component.to_vec(), None).map_err(|e| {
            invalid(format!(
                "reading the component's WIT: {}",
                one_line(&format!("{e:#}"), 200)
            ))
        })?;
        config.created = chrono::DateTime::from_timestamp(publication.created, 0)
            .ok_or_else(|| invalid(format!("created time {} is out of range", publication.created)))?;
        let config = config
            .to_config()
            .map_err(|e| invalid(format!("writing the config: {e}")))?;
        let mut manifest = OciImageManifest::build(
            std::slice::from_ref(&layer),
            &config,
            Some(publication.annotations.clone()),
        );
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        let manifest =
            serde_json::to_vec(&manifest).map_err(|e| invalid(format!("writing the manifest: {e}")))?;
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
