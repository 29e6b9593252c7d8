//! What a registry serves: manifests and blobs, built the way the tools that publish
//! Wasm components build them.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::digest_of;

/// An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (`application/vnd.oci.image.index.v1+json`).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The config media type of a Wasm OCI artifact (CNCF TAG Runtime "Wasm OCI Artifact"
/// layout; `oci-wasm`'s `WASM_MANIFEST_CONFIG_MEDIA_TYPE`).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The one layer's media type in a Wasm OCI artifact (`oci-wasm`'s `WASM_LAYER_MEDIA_TYPE`).
pub const WASM_LAYER: &str = "application/wasm";
/// A container image's config (`application/vnd.oci.image.config.v1+json`).
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A container image's gzip-compressed tar layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The `created` time testkit artifacts carry unless told otherwise: fixed, so an
/// artifact's digests are the same in every run.
pub const CREATED: &str = "2025-01-01T00:00:00Z";

/// A manifest and the blobs it names, as a registry stores them: what a push uploads and
/// a pull fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    manifest: Bytes,
    media_type: String,
    digest: String,
    blobs: BTreeMap<String, Bytes>,
}

impl Artifact {
    /// Any manifest (its bytes exactly, and the media type a registry serves it with) and
    /// the blobs it refers to. Nothing is checked: a test can build content no tool would.
    pub fn new(
        manifest: impl Into<Bytes>,
        media_type: &str,
        blobs: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Artifact {
        let manifest = manifest.into();
        Artifact {
            digest: digest_of(&manifest),
            manifest,
            media_type: media_type.to_string(),
            blobs: blobs
                .into_iter()
                .map(|b| {
                    let b = b.into();
                    (digest_of(&b), b)
                })
                .collect(),
        }
    }

    /// The standard Wasm OCI artifact of `component` ([`WasmArtifact::new`] with its
    /// defaults).
    pub fn wasm(component: impl Into<Bytes>) -> Artifact {
        WasmArtifact::new(component).build()
    }

    /// A small, valid container image (not Wasm): an OCI manifest whose config is
    /// [`OCI_IMAGE_CONFIG`] (`linux`/`amd64`) and whose one layer is a real
    /// [`OCI_LAYER_TAR_GZIP`] holding `hello.txt`.
    pub fn container_image() -> Artifact {
        let tar = tar_one_file("hello.txt", b"not a Wasm component\n");
        let layer = gzip_stored(&tar);
        #[derive(Serialize)]
        struct RootFs {
            #[serde(rename = "type")]
            kind: &'static str,
            diff_ids: Vec<String>,
        }
        #[derive(Serialize)]
        struct ImageConfig {
            created: &'static str,
            architecture: &'static str,
            os: &'static str,
            config: BTreeMap<String, String>,
            rootfs: RootFs,
        }
        let config = serde_json::to_vec(&ImageConfig {
            created: CREATED,
            architecture: "amd64",
            os: "linux",
            config: BTreeMap::new(),
            rootfs: RootFs {
                kind: "layers",
                diff_ids: vec![digest_of(&tar)],
            },
        })
        .expect("config serializes");
        let manifest = image_manifest(
            Descriptor::of(OCI_IMAGE_CONFIG, &config),
            vec![Descriptor::of(OCI_LAYER_TAR_GZIP, &layer)],
            BTreeMap::new(),
        );
        Artifact::new(manifest, OCI_MANIFEST, [config, layer])
    }

    /// The manifest's bytes, exactly as served.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The manifest parsed as JSON (`Null` if it is not JSON).
    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.manifest).unwrap_or_default()
    }

    /// The media type the manifest is served with (`Content-Type`).
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The manifest's digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest of the blob the manifest names as its config, if it names one.
    pub fn config_digest(&self) -> Option<String> {
        self.manifest_json()["config"]["digest"]
            .as_str()
            .map(str::to_string)
    }

    /// The digests of the manifest's layers, in order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.manifest_json()["layers"]
            .as_array()
            .map(|layers| {
                layers
                    .iter()
                    .filter_map(|l| l["digest"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A blob by digest.
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        self.blobs.get(digest).map(|b| &b[..])
    }

    /// Every blob, by digest.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.blobs.iter().map(|(d, b)| (d.as_str(), &b[..]))
    }

    /// `oci://AUTHORITY/REPOSITORY@DIGEST`: how a door names this artifact in a registry.
    pub fn oci_reference(&self, authority: &str, repository: &str) -> String {
        format!("oci://{authority}/{repository}@{}", self.digest)
    }

    /// Writes the artifact as an OCI image layout at `dir` (`oci-layout`, `index.json`
    /// naming the manifest `tag` through `org.opencontainers.image.ref.name`, and
    /// `blobs/sha256/…`): what `skopeo copy oci:DIR:TAG docker://…` reads.
    pub fn write_oci_layout(&self, dir: &std::path::Path, tag: &str) -> anyhow::Result<()> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        let write = |digest: &str, bytes: &[u8]| -> anyhow::Result<()> {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| anyhow::anyhow!("not a sha256 digest: {digest}"))?;
            Ok(std::fs::write(blobs.join(hex), bytes)?)
        };
        write(&self.digest, &self.manifest)?;
        for (digest, bytes) in &self.blobs {
            write(digest, bytes)?;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": self.media_type,
                "digest": self.digest,
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(dir.join("index.json"), index.to_string())?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(())
    }

    pub(crate) fn manifest_bytes(&self) -> Bytes {
        self.manifest.clone()
    }

    pub(crate) fn blob_bytes(&self) -> impl Iterator<Item = (&String, &Bytes)> {
        self.blobs.iter()
    }
}

/// Builds the standard Wasm OCI artifact of a component: the manifest, config and layer
/// that `wkg oci push` / `oci-wasm` (0.3, `WasmConfig::from_raw_component` and
/// `oci_client::manifest::OciImageManifest::build`) publish.
///
/// The config is, field for field and in `oci-wasm`'s serde order:
/// `{"created","author":null,"architecture":"wasm","os":"wasip2","layerDigests":[<layer>],
/// "component":{"exports":[..],"imports":[..],"target":null}}`; the manifest is
/// `{"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":{..},"layers":[{"mediaType":
/// "application/wasm",..}]}` (plus `annotations` when some are set).
#[derive(Debug, Clone)]
pub struct WasmArtifact {
    component: Bytes,
    created: String,
    author: Option<String>,
    exports: Vec<String>,
    imports: Vec<String>,
    declared_layer_size: Option<u64>,
    annotations: BTreeMap<String, String>,
}

impl WasmArtifact {
    /// The artifact of `component` with [`CREATED`], no author, and empty export and
    /// import lists.
    pub fn new(component: impl Into<Bytes>) -> WasmArtifact {
        WasmArtifact {
            component: component.into(),
            created: CREATED.to_string(),
            author: None,
            exports: Vec::new(),
            imports: Vec::new(),
            declared_layer_size: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Sets the config's `created` (RFC 3339, e.g. `2025-01-01T00:00:00Z`).
    pub fn created(mut self, rfc3339: &str) -> WasmArtifact {
        self.created = rfc3339.to_string();
        self
    }

    /// Sets the config's `author`.
    pub fn author(mut self, author: &str) -> WasmArtifact {
        self.author = Some(author.to_string());
        self
    }

    /// Sets the config's `component.exports` and `component.imports` (names like
    /// `wasi:http/incoming-handler@0.2.0`).
    pub fn world(mut self, exports: &[&str], imports: &[&str]) -> WasmArtifact {
        self.exports = exports.iter().map(|s| s.to_string()).collect();
        self.imports = imports.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Makes the layer descriptor declare `size` instead of the component's length (the
    /// blob itself is unchanged): the over-the-bound case, for a host that must refuse
    /// before fetching.
    pub fn declared_layer_size(mut self, size: u64) -> WasmArtifact {
        self.declared_layer_size = Some(size);
        self
    }

    /// Adds a manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> WasmArtifact {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// The config blob's bytes.
    pub fn config_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Component<'a> {
            exports: &'a [String],
            imports: &'a [String],
            target: Option<&'a str>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct WasmConfig<'a> {
            created: &'a str,
            author: Option<&'a str>,
            architecture: &'a str,
            os: &'a str,
            layer_digests: Vec<String>,
            component: Option<Component<'a>>,
        }
        serde_json::to_vec(&WasmConfig {
            created: &self.created,
            author: self.author.as_deref(),
            architecture: "wasm",
            os: "wasip2",
            layer_digests: vec![digest_of(&self.component)],
            component: Some(Component {
                exports: &self.exports,
                imports: &self.imports,
                target: None,
            }),
        })
        .expect("config serializes")
    }

    /// The manifest, config and layer.
    pub fn build(&self) -> Artifact {
        let config = self.config_bytes();
        let mut layer = Descriptor::of(WASM_LAYER, &self.component);
        if let Some(size) = self.declared_layer_size {
            layer.size = size;
        }
        let manifest = image_manifest(
            Descriptor::of(WASM_CONFIG, &config),
            vec![layer],
            self.annotations.clone(),
        );
        Artifact::new(
            manifest,
            OCI_MANIFEST,
            [Bytes::from(config), self.component.clone()],
        )
    }
}

/// An OCI descriptor, in `oci-client`'s field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// An OCI image manifest as `oci_client::manifest::OciImageManifest` serializes it.
fn image_manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        schema_version: u8,
        media_type: &'static str,
        config: Descriptor,
        layers: Vec<Descriptor>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: BTreeMap<String, String>,
    }
    serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config,
        layers,
        annotations,
    })
    .expect("manifest serializes")
}

/// A POSIX (ustar) archive of one regular file.
fn tar_one_file(name: &str, contents: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let field = |header: &mut [u8; 512], at: usize, value: &[u8]| {
        header[at..at + value.len()].copy_from_slice(value);
    };
    field(&mut header, 0, name.as_bytes());
    field(&mut header, 100, b"0000644\0");
    field(&mut header, 108, b"0000000\0");
    field(&mut header, 116, b"0000000\0");
    field(&mut header, 124, format!("{:011o}\0", contents.len()).as_bytes());
    field(&mut header, 136, b"00000000000\0");
    field(&mut header, 148, b"        ");
    header[156] = b'0';
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(contents);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// `bytes` in a gzip member of stored (uncompressed) deflate blocks: valid gzip without
/// a compressor.
fn gzip_stored(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(65_535).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(bytes).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3), as gzip's trailer needs.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn wasm_config_has_oci_wasm_shape_in_its_order() {
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let config = WasmArtifact::new(component.clone())
            .world(&["e:x/y@1.0.0"], &["wasi:io/streams@0.2.0"])
            .config_bytes();
        assert_eq!(
            String::from_utf8(config).unwrap(),
            format!(
                "{{\"created\":\"2025-01-01T00:00:00Z\",\"author\":null,\"architecture\":\"wasm\",\
                 \"os\":\"wasip2\",\"layerDigests\":[\"{}\"],\"component\":{{\"exports\":[\"e:x/y@1.0.0\"],\
                 \"imports\":[\"wasi:io/streams@0.2.0\"],\"target\":null}}}}",
                digest_of(&component)
            )
        );
    }
}
