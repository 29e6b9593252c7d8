//! The `demo` command of the `cloudsmith-gen` binary: the whole path (manifest, token
//! source, sandboxed component, outbound policy, outputs) against a local stand-in for
//! Cloudsmith, so it runs without a Cloudsmith account or a cluster.

use std::sync::Arc;
use std::time::Duration;

use host_example::policy::TimeoutCaps;
use host_example::token_source::{TokenRequest, TokenSource, TokenSourceError};
use host_example::{Limits, NamespacePolicy, OutboundPolicy, Secret};
use testkit::cloudsmith::{documented_manifest, StandIn, StandInConfig};

use super::generate::{self, GenerateConfig, OutputConfig};
use super::Reply;
use crate::failure::Failure;
use crate::mint::{Minter, TokenChoice};
use crate::setup::{note, RuntimeConfig};
use host_example::manifest;

/// Mints demo service account tokens the way a TokenRequest would (subject
/// `system:serviceaccount:<ns>:<name>`, the requested audiences), signed with the
/// testkit's demo key, which the stand-in trusts.
struct DemoTokens;

#[async_trait::async_trait]
impl TokenSource for DemoTokens {
    async fn token(&self, request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        let subject = format!(
            "system:serviceaccount:{}:{}",
            request.namespace, request.service_account
        );
        let audiences: Vec<&str> = request.audiences.iter().map(String::as_str).collect();
        Ok(Secret::new(testkit::oidc::token(&subject, &audiences)))
    }

    fn describe(&self) -> String {
        "demo token issuer (testkit, trusted only by the stand-in)".into()
    }
}

/// Runs `generate` against a stand-in started here, for `namespace`.
pub async fn run(namespace: &str, output: OutputConfig, verbose: bool) -> Result<Reply, Failure> {
    let stand_in = StandIn::start(StandInConfig::default())
        .await
        .map_err(|e| Failure::Other(e.context("starting the Cloudsmith stand-in")))?;
    eprintln!(
        "demo: Cloudsmith is played by a local stand-in at {} (not the real service; no account needed); \
         the service account token is a demo token",
        stand_in.url()
    );
    // The documentation's example manifest, with apiHost pointed at the stand-in (and
    // its namespaces at the target, which the example names as `default`).
    let quoted = serde_json::Value::from(namespace).to_string();
    let manifest = documented_manifest(&stand_in.url())
        .replace("namespace: \"default\"", &format!("namespace: {quoted}"))
        .replace("namespace: default", &format!("namespace: {quoted}"));
    let manifest = manifest::to_json(&manifest, None).map_err(Failure::Other)?;
    if verbose {
        note(&format!("manifest: {manifest}"));
    }
    let stand_in_authority = stand_in
        .authority()
        .parse()
        .map_err(|e: String| Failure::Other(anyhow::anyhow!(e)))?;
    let runtime = RuntimeConfig {
        policy: OutboundPolicy::default()
            .allow(stand_in_authority)
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
            source: Arc::new(DemoTokens),
            identity: None,
        },
        namespaces: NamespacePolicy::TargetOnly,
        output,
    };
    generate::handle(manifest, &Minter::new(runtime, None, verbose), &config).await
}
