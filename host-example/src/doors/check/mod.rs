//! `cloudsmith-gen check`: the report of each step `generate` takes (manifest, token
//! source, outbound policy, exchange, registry): [`report`] holds the report and its
//! renderings, [`steps`] each step's analysis as a function of plain inputs, and this
//! file the walk. Every failed step names the fix and, where one applies, the documentation's
//! troubleshooting item ("Token Exchange Fails", "Invalid Audience", "Network Issues",
//! "Registry Domain Issues", "Permissions").
//!
//! [`handle`] walks the path `generate` takes, step by step, with the same token source
//! and the same mint port, and reports instead of stopping at the first failure.

pub mod report;
pub mod steps;

use std::path::PathBuf;
use std::sync::Arc;

use cloudsmith_gen::registry_auth::{AuthError, DockerConfigFile};
use cloudsmith_gen::token_source::StaticTokenSource;
use cloudsmith_gen::{NamespacePolicy, TokenRequest};
use cloudsmith_gen_core::jwt::Claims;
use cloudsmith_gen_core::spec::GeneratorSpec;

use self::report::fact;
pub use self::report::{Report, Status, Step, StepName};
pub use self::steps::*;
use super::{Reply, DEFAULT_REGISTRY};
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, TokenChoice};
use crate::setup::RuntimeConfig;

/// How `check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// One line per step, the fix under a failed one.
    Text,
    /// [`Report::render_json`].
    Json,
}

/// `check`'s configuration (its flags).
#[derive(Clone)]
pub struct CheckConfig {
    /// Where the manifest came from (a path, or `-`), for the report.
    pub manifest: String,
    /// The target namespace.
    pub namespace: String,
    /// The token source, as `generate` would use it.
    pub tokens: TokenChoice,
    /// The namespace rule.
    pub namespaces: NamespacePolicy,
    /// The runtime `generate` would run with (its policy is checked, its deadline is
    /// the bound a token must outlive).
    pub runtime: RuntimeConfig,
    /// `--registry` values: registries the pulls use.
    pub registries: Vec<String>,
    /// A Docker `config.json` to check for the registry.
    pub docker_config: Option<PathBuf>,
    /// Stop before the exchange.
    pub no_exchange: bool,
    /// How to print the report.
    pub format: ReportFormat,
}

/// Runs every step and renders the report; the exit code is the report's (0 only when
/// every step passed). Only a manifest that cannot be read at all is an error: every
/// later failure is a step of the report.
pub async fn handle(
    manifest: Result<String, Failure>,
    mint: &impl Mint,
    config: &CheckConfig,
) -> Result<Reply, Failure> {
    let mut steps = Vec::new();
    let manifest = match manifest {
        Ok(manifest) => manifest,
        Err(failure) => {
            steps.push(Step::failed(
                StepName::Manifest,
                vec![fact("file", config.manifest.clone())],
                failure.message(),
                "give the CloudsmithAccessToken manifest (YAML or JSON); with several generator documents, --generator NAME",
            ));
            return Ok(reply(Report::new(steps), config.format));
        }
    };
    let spec = GeneratorSpec::of_json(&manifest).unwrap_or_default();
    steps.push(manifest_step(&document_name(&manifest), &spec));

    // The token the generator would be handed, from the same token source, through the
    // mint port.
    let asked = MintRequest {
        manifest: manifest.clone(),
        namespace: config.namespace.clone(),
        tokens: config.tokens.clone(),
        namespaces: config.namespaces,
        deadline: None,
    };
    let token = match token_request(&spec, &config.namespace, config.namespaces) {
        Ok(wanted) => {
            let sourced = mint.token(&asked, &wanted).await;
            (sourced.source, sourced.token.map_err(|e| e.to_string()))
        }
        Err(why) => (asked.tokens.source().describe(), Err(why)),
    };
    let token = match token {
        (described, Ok(token)) => {
            let claims = Claims::read(token.expose());
            steps.push(token_step(
                &described,
                claims.as_ref(),
                &spec.audiences(),
                config.runtime.limits.deadline,
                cloudsmith_gen_core::token_cache::now_unix(),
            ));
            Some(token)
        }
        (described, Err(why)) => {
            steps.push(token_source_failed(&described, &why));
            None
        }
    };

    let api = spec.effective_api();
    let policy = policy_step(&api, &config.runtime.policy);
    let policy_passed = policy.status == Status::Pass;
    steps.push(policy);

    steps.push(match (&token, config.no_exchange) {
        (_, true) => Step::skipped(StepName::Exchange, "not run (--no-exchange)"),
        (None, false) => Step::skipped(StepName::Exchange, "not run: no token"),
        (Some(_), false) if !policy_passed => {
            Step::skipped(StepName::Exchange, "not run: the policy refuses the API host")
        }
        (Some(token), false) => {
            let request = MintRequest {
                manifest,
                namespace: config.namespace.clone(),
                // The token already read: one TokenRequest per check, not two.
                tokens: TokenChoice::Given {
                    source: Arc::new(StaticTokenSource::new(token.clone())),
                    identity: None,
                },
                namespaces: NamespacePolicy::AllowCrossNamespace,
                deadline: None,
            };
            match mint.mint(request).await {
                Ok(minted) => exchange_passed(minted.credentials.expiry()),
                Err(Failure::Call(e)) => exchange_failed(&e, &spec),
                Err(other) => Step::failed(
                    StepName::Exchange,
                    Vec::new(),
                    other.message(),
                    "see the message; run with -v for the call's report",
                ),
            }
        }
    });

    let docker = match &config.docker_config {
        None => None,
        Some(path) => match read_docker_config(path) {
            Ok(names) => Some(names),
            Err(why) => {
                steps.push(Step::failed(
                    StepName::Registry,
                    vec![fact("docker config", path.display().to_string())],
                    why.to_string(),
                    "give Docker's config.json (JSON with auths or credHelpers)",
                ));
                return Ok(reply(Report::new(steps), config.format));
            }
        },
    };
    steps.push(registry_step(
        DEFAULT_REGISTRY,
        &config.registries,
        docker.as_deref(),
    ));
    Ok(reply(Report::new(steps), config.format))
}

fn reply(report: Report, format: ReportFormat) -> Reply {
    Reply {
        stdout: match format {
            ReportFormat::Text => report.render_text().trim_end().to_string(),
            ReportFormat::Json => report.render_json(),
        },
        exit: report.exit_code(),
    }
}

/// `Kind/name` of the generator document (JSON).
fn document_name(manifest: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(manifest).unwrap_or_default();
    let text = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_str);
    match (text("/kind"), text("/metadata/name")) {
        (Some(kind), Some(name)) => format!("{kind}/{name}"),
        (Some(kind), None) => kind.to_string(),
        _ => "a bare spec".to_string(),
    }
}

/// The TokenRequest `generate` would make for the spec's service account.
fn token_request(
    spec: &GeneratorSpec,
    target: &str,
    namespaces: NamespacePolicy,
) -> Result<TokenRequest, String> {
    let account = spec.service_account_ref.clone().unwrap_or_default();
    let name = account
        .name
        .ok_or("the manifest names no spec.serviceAccountRef.name")?;
    let namespace = namespaces
        .resolve(&name, account.namespace.as_deref(), target)
        .map_err(|e| e.to_string())?;
    Ok(TokenRequest {
        service_account: name,
        namespace,
        audiences: spec.audiences(),
    })
}

/// The registries Docker's `config.json` at `path` names, read by the same reader that
/// finds registry credentials, so `check` and a pull agree on what the file says.
fn read_docker_config(path: &std::path::Path) -> Result<Vec<String>, AuthError> {
    let config = DockerConfigFile::load(path)?;
    Ok(config.registries().map(str::to_string).collect())
}

#[cfg(test)]
mod tests;
