//! The `demo` command of the `cloudsmith-gen` binary: the whole path (manifest, token
//! source, sandboxed component, outbound policy, outputs) against a local stand-in for
//! Cloudsmith, so it runs without a Cloudsmith account or a cluster.

use std::sync::Arc;
use std::time::Duration;

use host_example::token_source::{TokenRequest, TokenSource, TokenSourceError};
use host_example::{NamespacePolicy, Secret};
use testkit::cloudsmith::{documented_manifest, StandIn, StandInConfig};

use crate::commands::{finish, load, note, print_credentials};
use crate::manifest;
use crate::{DemoArgs, Failure, RuntimeArgs};

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

pub async fn run(args: DemoArgs, verbose: bool) -> Result<(), Failure> {
    let stand_in = StandIn::start(StandInConfig::default())
        .await
        .map_err(|e| Failure::Other(e.context("starting the Cloudsmith stand-in")))?;
    eprintln!(
        "demo: Cloudsmith is played by a local stand-in at {} (not the real service; no account needed); \
         the service account token is a demo token",
        stand_in.url()
    );
    // The documentation's example manifest, with apiHost pointed at the stand-in (and
    // its namespaces at --namespace, which the example names as `default`).
    let manifest = documented_manifest(&stand_in.url()).replace(
        "namespace: \"default\"",
        &format!("namespace: {}", serde_json::Value::from(args.namespace.as_str())),
    );
    let manifest = manifest.replace(
        "namespace: default",
        &format!("namespace: {}", serde_json::Value::from(args.namespace.as_str())),
    );
    let manifest = manifest::to_json(&manifest, None).map_err(Failure::Other)?;
    let runtime = RuntimeArgs {
        component: None,
        allow_hosts: vec![stand_in
            .authority()
            .parse()
            .map_err(|e: String| Failure::Other(anyhow::anyhow!(e)))?],
        ca_file: None,
        allow_http: true,
        deadline: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(10),
        memory_limit: 64,
        wasi_dirs: Vec::new(),
        wasi_env: Vec::new(),
        no_cache: false,
        cache_dir: None,
    };
    let generator = load(
        &runtime,
        Arc::new(DemoTokens),
        NamespacePolicy::TargetOnly,
        verbose,
    )?;
    if verbose {
        note(&format!("manifest: {manifest}"));
    }
    let traced = generator.generate_traced(&manifest, &args.namespace).await;
    let credentials = finish(traced, verbose)?;
    print_credentials(&credentials, &args.output, &args.namespace)
}
