//! A model of what External Secrets Operator does with an `ExternalSecret` whose
//! `dataFrom` names a `Webhook` generator, written from ESO's source (the mirror's
//! HEAD, which v0.16 and later share on every rule below). Each rule names the ESO file
//! and function it comes from; anything the model does not implement is refused with
//! an error starting `model:`, never guessed.
//!
//! Input: the rendered objects (`kubectl kustomize deploy/`, see [`kustomize`]), a
//! [`Cluster`] (Secrets and ConfigMaps as the API server holds them, and where each
//! Service host name resolves), and the ExternalSecret. Output: the target Secret ESO
//! writes, [`Synced::Deleted`], or ESO's error message as its Ready condition shows it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// Renders `dir` with `kubectl kustomize` into its objects.
pub fn kustomize(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let out = std::process::Command::new(crate::tools::kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)?)
}

/// What the API server holds for the model, and the cluster's DNS.
#[derive(Default, Clone)]
pub struct Cluster {
    /// Secrets and ConfigMaps, as Kubernetes objects (`data` base64 for Secrets).
    pub objects: Vec<Value>,
    /// `host:port` of a URL → where it connects (a Service's DNS name → loopback).
    pub dns: BTreeMap<String, SocketAddr>,
}

impl Cluster {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<&Value, String> {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind && o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name
            })
            // The API server's NotFound, as client-go prints it.
            .ok_or_else(|| format!("{}s \"{name}\" not found", kind.to_lowercase()))
    }
}

/// What ESO does to the target Secret after a successful reconcile.
#[derive(Debug, PartialEq)]
pub enum Synced {
    /// The Secret written: its `type` and `data`.
    Secret {
        /// `spec.target.template.type` (`Opaque` without one).
        type_: String,
        /// The Secret's keys and values.
        data: BTreeMap<String, Vec<u8>>,
    },
    /// No data and `deletionPolicy: Delete`: the target Secret is deleted.
    Deleted,
}

/// The ExternalSecret `namespace/name` reconciled once against `cluster`: the Secret
/// ESO writes, or its error (the Ready condition's message; the Secret is kept).
pub async fn reconcile(
    objects: &[Value],
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Synced, String> {
    let es = objects
        .iter()
        .find(|o| {
            o["kind"] == "ExternalSecret"
                && o["metadata"]["namespace"] == namespace
                && o["metadata"]["name"] == name
        })
        .ok_or_else(|| format!("model: no ExternalSecret {namespace}/{name}"))?;
    if es["apiVersion"] != "external-secrets.io/v1" {
        return Err(format!(
            "model: apiVersion {} (v0.16+ serves external-secrets.io/v1)",
            es["apiVersion"]
        ));
    }
    let spec = &es["spec"];
    if spec.get("data").is_some() || spec.get("secretStoreRef").is_some() {
        return Err("model: only spec.dataFrom[].sourceRef.generatorRef is modelled".into());
    }
    // pkg/controllers/externalsecret/externalsecret_controller_secret.go,
    // GetProviderSecretData: each dataFrom entry; NoSecretErr is skipped unless
    // deletionPolicy is Retain (the default), any other error fails the reconcile.
    let deletion = spec["target"]["deletionPolicy"].as_str().unwrap_or("Retain");
    let mut data = BTreeMap::new();
    for (i, from) in spec["dataFrom"].as_array().into_iter().flatten().enumerate() {
        let generator_ref = &from["sourceRef"]["generatorRef"];
        let found = match generate(objects, cluster, namespace, generator_ref).await {
            Ok(found) => found,
            Err(Failure::NoSecret) if deletion != "Retain" => continue,
            Err(e) => {
                return Err(format!(
                "error processing spec.dataFrom[{i}].sourceRef.generatorRef, err: error using generator: {}",
                e.message()
            ))
            }
        };
        data.extend(found);
    }
    // externalsecret_controller.go, Reconcile: no data and deletionPolicy Delete
    // deletes the target Secret.
    if data.is_empty() && deletion == "Delete" {
        return Ok(Synced::Deleted);
    }
    // The target template (runtime/template/v2): with template.data and the default
    // mergePolicy Replace, the Secret holds only the template's keys.
    let template = &spec["target"]["template"];
    let type_ = template["type"].as_str().unwrap_or("Opaque").to_string();
    let Some(keys) = template["data"].as_object() else {
        return Ok(Synced::Secret { type_, data });
    };
    let values: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut out = BTreeMap::new();
    for (key, text) in keys {
        let text = text.as_str().ok_or("model: non-string template")?;
        let rendered = render(text, &|path| match path {
            [k] => Some(values.get(*k).cloned().unwrap_or_else(|| NO_VALUE.into())),
            _ => None,
        })
        .map_err(|e| format!("unable to execute template at key {key}: {e}"))?;
        out.insert(key.clone(), rendered.into_bytes());
    }
    Ok(Synced::Secret { type_, data: out })
}

enum Failure {
    /// esv1.NoSecretError (apis/externalsecrets/v1/provider.go).
    NoSecret,
    /// esv1.NotModifiedError: an error like any other for a generator.
    NotModified,
    Other(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::NoSecret => "Secret does not exist".into(),
            Failure::NotModified => "not modified".into(),
            Failure::Other(m) => m.clone(),
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Other(m)
    }
}

/// What Go's text/template prints for a missing map key (exec.go, evalField).
const NO_VALUE: &str = "<no value>";

/// The Webhook generator's Generate (generators/v1/webhook/webhook.go): the namespaced
/// Webhook in the ExternalSecret's namespace, EnforceLabels = true, ClusterScoped = false,
/// Namespace = the ExternalSecret's, StoreKind unset.
async fn generate(
    objects: &[Value],
    cluster: &Cluster,
    namespace: &str,
    generator_ref: &Value,
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    if generator_ref["kind"] != "Webhook"
        || generator_ref["apiVersion"] != "generators.external-secrets.io/v1alpha1"
    {
        return Err(Failure::Other(format!(
            "model: only namespaced Webhook generators, not {generator_ref}"
        )));
    }
    let name = generator_ref["name"].as_str().unwrap_or_default();
    // runtime/resolvers (GeneratorRef): the generator object is looked up in the
    // ExternalSecret's namespace.
    let webhook = objects
        .iter()
        .find(|o| {
            o["kind"] == "Webhook" && o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name
        })
        .ok_or_else(|| format!("model: Webhook {namespace}/{name} not rendered"))?;
    let spec = &webhook["spec"];
    if spec.get("auth").is_some() || spec.get("caBundle").is_some() {
        return Err(Failure::Other("model: auth and caBundle are not modelled".into()));
    }

    // providers/v1/webhook/pkg/webhook/webhook.go, GetHTTPClient: Timeout from
    // spec.timeout (a metav1.Duration), the CA pool from caProvider.
    let timeout = match spec["timeout"].as_str() {
        Some(t) => Some(
            go_duration(t)
                .ok_or_else(|| format!("model: timeout {t:?} is not a Go duration this model reads"))?,
        ),
        None => None,
    };
    let roots = match spec.get("caProvider") {
        Some(ca) => Some(
            ca_pool(cluster, namespace, ca)
                .map_err(|e| format!("failed to prepare provider http client: {e}"))?,
        ),
        None => None,
    };

    // webhook.go, GetTemplateData / getTemplatedSecrets: every key of each Secret,
    // under the secret's template name.
    let mut data: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in spec["secrets"].as_array().into_iter().flatten() {
        let entry = data
            .entry(s["name"].as_str().unwrap_or_default().to_string())
            .or_default();
        let secret = store_secret(cluster, namespace, &s["secretRef"])?;
        for (k, v) in secret["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| format!("model: Secret data {k} is not base64: {e}"))?;
            entry.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let lookup = |path: &[&str]| match path {
        [s, k] => Some(
            data.get(*s)
                .and_then(|m| m.get(*k))
                .cloned()
                .unwrap_or_else(|| NO_VALUE.into()),
        ),
        [s] if !data.contains_key(*s) => Some(NO_VALUE.into()),
        _ => None,
    };
    // webhook.go, GetWebhookData: method (GET by default), url, body templated.
    let method = spec["method"].as_str().unwrap_or("GET").to_string();
    let url = render(spec["url"].as_str().unwrap_or_default(), &lookup)
        .map_err(|e| format!("failed to parse url: {e}"))?;
    let body = render(spec["body"].as_str().unwrap_or_default(), &lookup)
        .map_err(|e| format!("failed to parse body: {e}"))?;
    // webhook.go, ReqAddHeaders.
    let mut headers = Vec::new();
    for (k, v) in spec["headers"].as_object().into_iter().flatten() {
        let value = render(v.as_str().unwrap_or_default(), &lookup)
            .map_err(|e| format!("failed to parse header {k}: {e}"))?;
        headers.push((k.clone(), value));
    }

    // webhook.go, executeRequest: the status rules.
    let (status, answer) = call(cluster, &method, &url, &headers, body, roots, timeout)
        .await
        .map_err(|e| format!("failed to call endpoint: {} \"{url}\": {e}", go_method(&method)))?;
    match status.as_u16() {
        404 => return Err(Failure::NoSecret),
        304 => return Err(Failure::NotModified),
        200..=299 => {}
        // resp.Status: only the status line; the body and Retry-After are dropped.
        _ => {
            return Err(Failure::Other(format!(
                "endpoint gave error {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )))
        }
    }
    secret_map(spec["result"]["jsonPath"].as_str().unwrap_or(""), &answer).map_err(Failure::Other)
}

/// webhook.go, getStoreSecret: the Secret in the generator's namespace (ClusterScoped
/// is false: secretRef.namespace is not read), with EnforceLabels' label check.
fn store_secret<'a>(cluster: &'a Cluster, namespace: &str, reference: &Value) -> Result<&'a Value, String> {
    let name = reference["name"].as_str().unwrap_or_default();
    let secret = cluster
        .get("Secret", namespace, name)
        .map_err(|e| format!("failed to get clustersecretstore webhook secret {name}: {e}"))?;
    match secret["metadata"]["labels"]["external-secrets.io/type"].as_str() {
        None => Err(
            "secret does not contain needed label 'external-secrets.io/type: webhook'. Update secret label to use it with webhook"
                .into(),
        ),
        Some("webhook") => Ok(secret),
        Some(_) => Err("secret type is not 'webhook'".into()),
    }
}

/// runtime/esutils/utils.go, FetchCACertFromSource and getCertFromConfigMap (StoreKind
/// is not ClusterSecretStore): a caProvider.namespace other than the generator's is
/// refused, and the ConfigMap is always read from the generator's namespace.
fn ca_pool(cluster: &Cluster, namespace: &str, ca: &Value) -> Result<rustls::RootCertStore, String> {
    if let Some(other) = ca["namespace"].as_str() {
        if other != namespace {
            // errNamespaceNotAllowed.
            return Err(
                "namespace should either be empty or match the namespace of the SecretStore for a namespaced SecretStore"
                    .into(),
            );
        }
    }
    let name = ca["name"].as_str().unwrap_or_default();
    let key = ca["key"].as_str().unwrap_or_default();
    let pem = match ca["type"].as_str() {
        Some("ConfigMap") => {
            let map = cluster.get("ConfigMap", namespace, name).map_err(|e| {
                format!("failed to get cert from configmap: failed to get caProvider secret {name}: {e}")
            })?;
            map["data"][key]
                .as_str()
                .ok_or_else(|| format!("failed to get cert from configmap: failed to get caProvider configMap {name} -> {key}"))?
                .to_string()
        }
        Some("Secret") => return Err("model: caProvider type Secret is not modelled".into()),
        other => return Err(format!("unsupported CA provider type: {}", other.unwrap_or(""))),
    };
    // webhook.go, GetCACertPool: AppendCertsFromPEM must take at least one.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("failed to append cabundle".into());
    }
    Ok(roots)
}

/// One request the way Go's http.Client with a TLS transport makes it: the URL's host
/// is the name the certificate must hold; `Client.Timeout` bounds the whole call.
async fn call(
    cluster: &Cluster,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: String,
    roots: Option<rustls::RootCertStore>,
    timeout: Option<Duration>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("model: only https URLs are modelled, not {url:?}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let addr = *cluster
        .dns
        .get(&authority)
        .ok_or_else(|| format!("dial tcp: lookup {host}: no such host"))?;
    let roots = roots.ok_or("model: the system roots are not modelled (give caProvider)")?;
    let exchange = async {
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(if path.is_empty() { "/" } else { path })
            .header("host", authority.as_str())
            .header("user-agent", "Go-http-client/1.1")
            .header("content-length", body.len().to_string())
            .header("accept-encoding", "gzip");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, bytes))
    };
    // No spec.timeout: Go's client waits forever; the model stops at 5 minutes so a
    // test cannot hang (not an ESO rule).
    let bound = timeout.unwrap_or(Duration::from_secs(300));
    tokio::time::timeout(bound, exchange).await.map_err(|_| {
        "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".to_string()
    })?
}

/// webhook.go, GetSecretMap, for `result.jsonPath` "" or "$" (PaesslerAG/jsonpath's
/// root); esutils.GetByteValue for each value: strings as they are, other values
/// JSON-encoded (numbers in Go's shortest form, which serde_json's matches for these).
fn secret_map(json_path: &str, answer: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut value: Value =
        serde_json::from_slice(answer).map_err(|e| format!("failed to parse response json: {e}"))?;
    if !matches!(json_path, "" | "$") {
        return Err(format!(
            "model: jsonPath {json_path:?} is not modelled (only \"$\")"
        ));
    }
    if let Value::String(s) = &value {
        value = serde_json::from_str(s)
            .map_err(|e| format!("failed to parse response json from jsonpath: {e}"))?;
    }
    let Value::Object(map) = value else {
        return Err(format!(
            "failed to get response (wrong type: {})",
            go_type(&value)
        ));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                Value::Null => Vec::new(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect())
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "[]interface {}",
        Value::Number(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Null => "<nil>",
        _ => "string",
    }
}

/// net/http's urlErrorOp: "POST" → "Post".
fn go_method(method: &str) -> String {
    let lower = method.to_lowercase();
    let mut chars = lower.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// metav1.Duration's Go form for the units a manifest uses: "30s", "2m", "1m30s", "500ms".
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = [
            ("ms", 2, 1u64),
            ("h", 1, 3_600_000),
            ("m", 1, 60_000),
            ("s", 1, 1000),
        ]
        .into_iter()
        .find(|(u, _, _)| rest.starts_with(u))
        .map(|(_, len, ms)| (ms, len))?;
        total += Duration::from_millis(n * unit);
        rest = &rest[len..];
    }
    (!text.is_empty()).then_some(total)
}

/// Go text/template for the one action the manifests use, `{{ .a.b }}` (spaces
/// optional); any other action is refused so a template the model cannot render fails.
fn render(template: &str, lookup: &dyn Fn(&[&str]) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("template: unclosed action")?;
        let action = after[..end].trim();
        let path: Vec<&str> = action
            .strip_prefix('.')
            .filter(|p| {
                !p.is_empty()
                    && p.split('.')
                        .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'))
            })
            .map(|p| p.split('.').collect())
            .ok_or_else(|| format!("model: template action {{{{{}}}}} is not modelled", &after[..end]))?;
        out.push_str(
            &lookup(&path)
                .ok_or_else(|| format!("model: template field .{} is not modelled", path.join(".")))?,
        );
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("30"), None);
        assert_eq!(go_method("POST"), "Post");
        let lookup = |p: &[&str]| (p == ["a", "b"]).then(|| "v".to_string());
        assert_eq!(render("x {{ .a.b }} {{.a.b}}", &lookup).unwrap(), "x v v");
        assert!(render("{{ .a.b | upper }}", &lookup)
            .unwrap_err()
            .starts_with("model:"));
        assert!(render("{{- .a.b }}", &lookup).is_err());
    }

    #[test]
    fn json_path_root() {
        let m = secret_map("$", br#"{"auth":"x","n":1.5,"o":{"a":1}}"#).unwrap();
        assert_eq!(m["auth"], b"x");
        assert_eq!(m["n"], b"1.5");
        assert_eq!(m["o"], br#"{"a":1}"#);
        assert_eq!(
            secret_map("$", b"[1]").unwrap_err(),
            "failed to get response (wrong type: []interface {})"
        );
    }
}
