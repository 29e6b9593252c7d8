//! The rules of External Secrets Operator releases that cannot run here, written from
//! their source. ESO v0.20.4, the newest release the Go module proxy serves whole, runs
//! for real ([`crate::real_eso`]); from v1.0.0 on, ESO's generators are nested modules
//! the proxy refuses (docs/eso-webhook.md#compatibility), so what those releases added
//! on the Webhook generator's way is kept here, each rule with its release, file and
//! line (in the mirror of github.com/external-secrets/external-secrets). Everything else
//! the Webhook generator does, it does the same in v0.20.4 and v2.9.0 (the diff of
//! `pkg/common/webhook/webhook.go` v0.20.4 against
//! `providers/v1/webhook/pkg/webhook/webhook.go` v2.9.0 is import paths only), and is
//! tested with v0.20.4's own code.
//!
//! Input: objects as rendered by `kubectl kustomize` ([`kustomize`]). Output: the error a
//! later release would report, with its text as that release prints it after
//! `error using generator: `.

use std::path::Path;

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

/// The release that first enforces the Webhook generator's Secret label.
pub const LABEL_RULE_SINCE: &str = "v1.3.2";

/// The release that first refuses a namespaced generator's `caProvider.namespace`
/// naming another namespace.
pub const CA_NAMESPACE_RULE_SINCE: &str = "v2.4.0";

/// ESO v1.3.2 and later: a Webhook generator reads only Secrets labelled
/// `external-secrets.io/type: webhook`.
///
/// generators/v1/webhook/webhook.go:40-41 (v1.3.2, unchanged in v2.9.0) sets
/// `EnforceLabels` after resetting the Webhook (PR #5901, "fix: webhook initialization
/// order"); providers/v1/webhook/pkg/webhook/webhook.go:71-77, getStoreSecret, refuses
/// a Secret without the label or with another value. Up to v1.3.1 the reset came after
/// setting it, so the label was never checked: v0.20.4 reads an unlabelled Secret
/// (host-example/tests/eso.rs shows it with v0.20.4's code).
pub fn webhook_secret_label(secret: &Value) -> Result<(), String> {
    match secret["metadata"]["labels"]["external-secrets.io/type"].as_str() {
        None => Err(
            "secret does not contain needed label 'external-secrets.io/type: webhook'. Update secret label to use it with webhook"
                .into(),
        ),
        Some("webhook") => Ok(()),
        Some(_) => Err("secret type is not 'webhook'".into()),
    }
}

/// ESO v2.4.0 and later: a namespaced Webhook generator refuses a `caProvider.namespace`
/// other than its own, and reads the CA ConfigMap or Secret only from its own namespace.
///
/// runtime/esutils/utils.go:685-690 (v2.4.0; 661-666 in v2.9.0), FetchCACertFromSource,
/// returns errNamespaceNotAllowed when the store kind is not ClusterSecretStore (a
/// generator has none) and the namespace differs; getCertFromConfigMap (:826 in v2.4.0)
/// reads `caProvider.namespace` only for a ClusterSecretStore (PR #6246, "fix:
/// CAProvider cm access"). The Webhook generator wraps the error as
/// generators/v1/webhook/webhook.go does: `failed to prepare provider http client: `.
/// v0.20.4 reads the ConfigMap from the namespace named (shown with its code).
pub fn ca_provider_namespace(webhook: &Value) -> Result<(), String> {
    let own = webhook["metadata"]["namespace"].as_str().unwrap_or_default();
    match webhook["spec"]["caProvider"]["namespace"].as_str() {
        Some(other) if other != own => Err(
            "failed to prepare provider http client: namespace should either be empty or match the namespace of the SecretStore for a namespaced SecretStore"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Every rule above, applied to each Webhook generator in `objects` and the Secrets
/// its `secrets` name (in its namespace): the errors, each prefixed with the release
/// that reports it and the Webhook's name.
pub fn later_releases_refuse(objects: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    for webhook in objects.iter().filter(|o| o["kind"] == "Webhook") {
        let namespace = webhook["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = webhook["metadata"]["name"].as_str().unwrap_or_default();
        if let Err(e) = ca_provider_namespace(webhook) {
            errors.push(format!(
                "{CA_NAMESPACE_RULE_SINCE}: Webhook {namespace}/{name}: {e}"
            ));
        }
        for s in webhook["spec"]["secrets"].as_array().into_iter().flatten() {
            let secret_name = s["secretRef"]["name"].as_str().unwrap_or_default();
            let secret = objects.iter().find(|o| {
                o["kind"] == "Secret"
                    && o["metadata"]["namespace"] == namespace
                    && o["metadata"]["name"] == secret_name
            });
            match secret {
                Some(secret) => {
                    if let Err(e) = webhook_secret_label(secret) {
                        errors.push(format!("{LABEL_RULE_SINCE}: Webhook {namespace}/{name}: {e}"));
                    }
                }
                None => errors.push(format!(
                    "Webhook {namespace}/{name}: no Secret {namespace}/{secret_name} among the objects"
                )),
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects(label: Option<&str>, ca_namespace: Option<&str>) -> Vec<Value> {
        let mut webhook = json!({"kind": "Webhook", "metadata": {"name": "w", "namespace": "apps"},
            "spec": {"secrets": [{"name": "caller", "secretRef": {"name": "s", "key": "token"}}],
                     "caProvider": {"type": "ConfigMap", "name": "ca", "key": "ca.crt"}}});
        if let Some(ns) = ca_namespace {
            webhook["spec"]["caProvider"]["namespace"] = ns.into();
        }
        let mut secret = json!({"kind": "Secret", "metadata": {"name": "s", "namespace": "apps"}});
        if let Some(l) = label {
            secret["metadata"]["labels"] = json!({"external-secrets.io/type": l});
        }
        vec![webhook, secret]
    }

    #[test]
    fn each_rule_refuses_what_its_release_refuses() {
        assert!(later_releases_refuse(&objects(Some("webhook"), None)).is_empty());
        assert!(later_releases_refuse(&objects(Some("webhook"), Some("apps"))).is_empty());
        assert_eq!(
            later_releases_refuse(&objects(None, None)),
            ["v1.3.2: Webhook apps/w: secret does not contain needed label 'external-secrets.io/type: webhook'. Update secret label to use it with webhook"]
        );
        assert_eq!(
            later_releases_refuse(&objects(Some("generator"), None)),
            ["v1.3.2: Webhook apps/w: secret type is not 'webhook'"]
        );
        assert_eq!(
            later_releases_refuse(&objects(Some("webhook"), Some("cloudsmith-gen"))),
            ["v2.4.0: Webhook apps/w: failed to prepare provider http client: namespace should either be empty or match the namespace of the SecretStore for a namespaced SecretStore"]
        );
    }
}
