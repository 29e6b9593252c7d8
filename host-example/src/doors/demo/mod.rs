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

use cloudsmith_gen::policy::TimeoutCaps;
use cloudsmith_gen::token_source::{TokenRequest, TokenSource, TokenSourceError};
use cloudsmith_gen::{Limits, NamespacePolicy, OutboundPolicy, Secret};

use self::cloudsmith::{service_account_claims, DemoCloudsmith, DemoKey};
use super::generate::{self, GenerateConfig, OutputConfig};
use super::Reply;
use crate::failure::Failure;
use crate::mint::{Mint, TokenChoice};
use crate::setup::{note, RuntimeConfig};
use cloudsmith_gen_core::manifest;

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

/// A demo Cloudsmith started in this process, and the `generate` call to run against
/// it. The binary builds the minter from [`Demo::runtime`], as for every door.
pub struct Demo {
    cloudsmith: DemoCloudsmith,
    key: DemoKey,
    namespace: String,
    manifest: String,
}

impl Demo {
    /// Starts the demo Cloudsmith with a key drawn for this run, for `namespace`.
    pub async fn start(namespace: &str, verbose: bool) -> Result<Demo, Failure> {
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
        Ok(Demo {
            cloudsmith,
            key,
            namespace: namespace.to_string(),
            manifest,
        })
    }

    /// What a call to the demo runs with: the demo Cloudsmith allowed (plain http, on
    /// loopback), short timeouts.
    pub fn runtime(&self) -> Result<RuntimeConfig, Failure> {
        let demo_authority = self
            .cloudsmith
            .authority()
            .parse()
            .map_err(|e: cloudsmith_gen_core::authority::AuthorityError| Failure::Other(e.into()))?;
        Ok(RuntimeConfig {
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
        })
    }

    /// Runs `generate` through `mint`, with the demo issuer as the token source.
    pub async fn handle(&self, mint: &impl Mint, output: OutputConfig) -> Result<Reply, Failure> {
        let config = GenerateConfig {
            namespace: self.namespace.clone(),
            tokens: TokenChoice::Given {
                source: Arc::new(DemoTokens(self.key.clone())),
                identity: None,
            },
            namespaces: NamespacePolicy::TargetOnly,
            output,
        };
        generate::handle(self.manifest.clone(), mint, &config).await
    }
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

    #[tokio::test]
    async fn the_demo_mints_through_the_port_with_its_issuer_and_its_cloudsmith() {
        let demo = Demo::start("team-a", false).await.unwrap();
        let mint = crate::mint::fake::FakeMint::new("t", 1);
        demo.handle(&mint, OutputConfig::default()).await.unwrap();
        let seen = mint.seen.lock().unwrap();
        let (manifest, namespace, source) = &seen[0];
        assert_eq!(
            (namespace.as_str(), source.as_str()),
            ("team-a", DemoTokens(demo.key.clone()).describe().as_str())
        );
        let spec: serde_json::Value = serde_json::from_str(manifest).unwrap();
        assert_eq!(spec["spec"]["apiHost"], demo.cloudsmith.url());
        // The policy lets the call reach the demo Cloudsmith over plain http.
        let policy = demo.runtime().unwrap().policy;
        let url: http::Uri = demo.cloudsmith.url().parse().unwrap();
        assert_eq!(url.scheme_str(), Some("http"));
        assert!(policy.decide(url.scheme(), url.authority()).is_ok());
    }
}
