//! The `demo` command of the `cloudsmith-gen` binary: the whole path (manifest, token
//! source, sandboxed component, outbound policy, outputs) against a demo Cloudsmith in
//! this process, so it runs without a Cloudsmith account or a cluster.
//!
//! The demo is part of the product, not test code: its Cloudsmith and its token issuer
//! ([`cloudsmith`]) trust one key drawn at random for the run, and the manifest is the
//! documentation's example (`examples/generator.yaml`) with `apiHost` pointed at the demo.

mod cloudsmith;

use std::sync::Arc;
use std::time::Duration;

use host_example::policy::TimeoutCaps;
use host_example::token_source::{TokenRequest, TokenSource, TokenSourceError};
use host_example::{Limits, NamespacePolicy, OutboundPolicy, Secret};

use self::cloudsmith::{service_account_claims, DemoCloudsmith, DemoKey};
use super::generate::{self, GenerateConfig, OutputConfig};
use super::Reply;
use crate::failure::Failure;
use crate::mint::{Minter, TokenChoice};
use crate::setup::{note, RuntimeConfig};
use host_example::manifest;

/// The documentation's example generator, byte for byte.
pub const DOCUMENTED_MANIFEST: &str = include_str!("../../../../examples/generator.yaml");

/// The line of [`DOCUMENTED_MANIFEST`] that names the API host.
const API_HOST_LINE: &str = "  apiHost: \"api.cloudsmith.io\"  #";

/// How long a demo service account token lives (a TokenRequest's minimum).
const SERVICE_ACCOUNT_TOKEN_SECONDS: u64 = 600;

/// Mints service account tokens the way a TokenRequest would (subject
/// `system:serviceaccount:<ns>:<name>`, the requested audiences), signed with the run's
/// key, which only the demo Cloudsmith trusts.
struct DemoTokens(DemoKey);

#[async_trait::async_trait]
impl TokenSource for DemoTokens {
    async fn token(&self, request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        let claims = service_account_claims(
            &request.namespace,
            &request.service_account,
            &request.audiences,
            SERVICE_ACCOUNT_TOKEN_SECONDS,
        );
        Ok(Secret::new(self.0.sign(&claims)))
    }

    fn describe(&self) -> String {
        "demo token issuer (this run's key, trusted only by the demo Cloudsmith)".into()
    }
}

/// [`DOCUMENTED_MANIFEST`] with `apiHost` set to `api` and its namespaces to `namespace`.
fn demo_manifest(api: &str, namespace: &str) -> String {
    let quoted = serde_json::Value::from(namespace).to_string();
    DOCUMENTED_MANIFEST
        .replace(API_HOST_LINE, &format!("  apiHost: \"{api}\"  #"))
        .replace("namespace: \"default\"", &format!("namespace: {quoted}"))
        .replace("namespace: default", &format!("namespace: {quoted}"))
}

/// Runs `generate` against a demo Cloudsmith started here, for `namespace`.
pub async fn run(namespace: &str, output: OutputConfig, verbose: bool) -> Result<Reply, Failure> {
    let key = DemoKey::generate().map_err(Failure::Other)?;
    let cloudsmith = DemoCloudsmith::start(key.clone())
        .await
        .map_err(|e| Failure::Other(e.context("starting the demo Cloudsmith")))?;
    eprintln!(
        "demo: Cloudsmith is played by a demo stand-in at {} (not the real service; no account needed); \
         the service account token comes from a demo issuer",
        cloudsmith.url()
    );
    let manifest =
        manifest::to_json(&demo_manifest(&cloudsmith.url(), namespace), None).map_err(Failure::Other)?;
    if verbose {
        note(&format!("manifest: {manifest}"));
    }
    let demo_authority = cloudsmith
        .authority()
        .parse()
        .map_err(|e: String| Failure::Other(anyhow::anyhow!(e)))?;
    let runtime = RuntimeConfig {
        policy: OutboundPolicy::default()
            .allow(demo_authority)
            .allow_http(true)
            .timeouts(TimeoutCaps {
                connect: Duration::from_secs(5),
                first_byte: Duration::from_secs(10),
                between_bytes: Duration::from_secs(10),
            }),
        limits: Limits {
            deadline: Duration::from_secs(30),
            ..Limits::default()
        },
        ..RuntimeConfig::default()
    };
    let config = GenerateConfig {
        namespace: namespace.to_string(),
        tokens: TokenChoice::Given {
            source: Arc::new(DemoTokens(key)),
            identity: None,
        },
        namespaces: NamespacePolicy::TargetOnly,
        output,
    };
    generate::handle(manifest, &Minter::new(runtime, None, verbose), &config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(yaml: &str) -> serde_json::Value {
        serde_saphyr::from_str(yaml).expect("YAML")
    }

    #[test]
    fn the_demo_changes_only_the_api_host_of_the_documented_manifest() {
        let mut documented = parsed(DOCUMENTED_MANIFEST);
        let demo = parsed(&demo_manifest("http://127.0.0.1:8080", "default"));
        assert_eq!(demo["spec"]["apiHost"], "http://127.0.0.1:8080");
        documented["spec"]["apiHost"] = "http://127.0.0.1:8080".into();
        assert_eq!(demo, documented);
    }

    #[test]
    fn the_demo_namespace_replaces_both_of_the_examples() {
        let manifest = demo_manifest("http://127.0.0.1:8080", "team-a");
        assert_eq!(manifest.matches("namespace: \"team-a\"").count(), 2, "{manifest}");
        assert!(!manifest.contains("namespace: default"), "{manifest}");
        assert!(!manifest.contains("namespace: \"default\""), "{manifest}");
    }
}
