//! Renders [`Credentials`] as ESO's JSON, a Docker config, or a ready-to-apply
//! `kubernetes.io/dockerconfigjson` Secret. These strings hold the credential: they are
//! meant for stdout or a file, never a log.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde_json::json;

use crate::secret::Credentials;

pub use cloudsmith_gen_core::registries::DEFAULT_REGISTRY;
/// The Secret name the seed documentation's ExternalSecret uses.
pub const DEFAULT_SECRET_NAME: &str = "cloudsmith-credentials";
/// The Secret type kubelet reads image pull credentials from.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// ESO's outputs as JSON: `{"auth": "...", "expiry": "..."}`, the same keys and values.
pub fn eso_json(credentials: &Credentials) -> String {
    let map: serde_json::Map<String, serde_json::Value> = credentials
        .outputs()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_string())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The Docker config file content: `{"auths": {"<registry>": {"auth": "<auth>"}}}`.
pub fn docker_config_json(credentials: &Credentials, registry: &str) -> String {
    json!({ "auths": { registry: { "auth": credentials.auth().expose() } } }).to_string()
}

/// A `kubernetes.io/dockerconfigjson` Secret (JSON) holding [`docker_config_json`] under
/// `.dockerconfigjson`, ready for `kubectl apply -f -`.
pub fn secret_manifest(credentials: &Credentials, name: &str, namespace: &str, registry: &str) -> String {
    let config = docker_config_json(credentials, registry);
    let secret = K8sSecret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        type_: Some(DOCKER_CONFIG_JSON_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(config.into_bytes()),
        )])),
        ..Default::default()
    };
    // k8s-openapi's Serialize adds apiVersion and kind and base64-encodes `data`.
    serde_json::to_string(&secret).unwrap_or_else(|_| fallback_secret(credentials, name, namespace, registry))
}

/// The same document built by hand; only reached if serialization fails, which it
/// cannot for these types, but an output path must not panic.
fn fallback_secret(credentials: &Credentials, name: &str, namespace: &str, registry: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(docker_config_json(credentials, registry));
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": namespace },
        "type": DOCKER_CONFIG_JSON_TYPE,
        "data": { ".dockerconfigjson": data },
    })
    .to_string()
}
