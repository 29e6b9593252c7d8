//! The core of `cloudsmith-gen check`: the report of each step `generate` takes
//! (manifest, token source, outbound policy, exchange, registry), each step's analysis
//! as a function of plain inputs, the report's text and JSON renderings and the exit
//! rule. Every failed step names the fix and, where one applies, the documentation's
//! troubleshooting item ("Token Exchange Fails", "Invalid Audience", "Network Issues",
//! "Registry Domain Issues", "Permissions").
//!
//! [`handle`] walks the path `generate` takes, step by step, with the same token source
//! and the same mint port, and reports instead of stopping at the first failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use host_core::registry_auth::DockerConfigFile;
use host_example::jwt::Claims;
use host_example::spec::GeneratorSpec;
use host_example::token_source::StaticTokenSource;
use host_example::token_source::TOKEN_SOURCE_FIX;
use host_example::{Error, GenerateError, HostError, OutboundPolicy, PresentedToken};
use host_example::{NamespacePolicy, TokenRequest};
use serde::Serialize;

use super::{Reply, DEFAULT_REGISTRY};
use crate::failure::Failure;
use crate::mint::{self as mint_port, Mint, MintRequest, TokenChoice};
use crate::setup::RuntimeConfig;

/// The API when the spec names none.
pub const DEFAULT_API: &str = "https://api.cloudsmith.io";

/// The documentation's troubleshooting items, by their titles.
pub mod item {
    /// The OIDC service does not trust the cluster's issuer (or subject).
    pub const TOKEN_EXCHANGE_FAILS: &str = "Token Exchange Fails";
    /// The service account token lacks the audience Cloudsmith expects.
    pub const INVALID_AUDIENCE: &str = "Invalid Audience";
    /// The Cloudsmith API host is out of reach.
    pub const NETWORK_ISSUES: &str = "Network Issues";
    /// Images or Docker configuration name another registry than the credentials'.
    pub const REGISTRY_DOMAIN_ISSUES: &str = "Registry Domain Issues";
    /// The OIDC service lacks permissions on the repositories.
    pub const PERMISSIONS: &str = "Permissions";
}

/// The steps, in the order `generate` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    /// The generator document and its spec.
    Manifest,
    /// The service account token.
    TokenSource,
    /// Whether the API host may be reached.
    OutboundPolicy,
    /// Cloudsmith's OIDC exchange.
    Exchange,
    /// The registry the credentials are for.
    Registry,
}

impl StepName {
    /// The step as the text report names it.
    pub fn label(self) -> &'static str {
        match self {
            StepName::Manifest => "manifest",
            StepName::TokenSource => "token source",
            StepName::OutboundPolicy => "outbound policy",
            StepName::Exchange => "exchange",
            StepName::Registry => "registry",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to fix.
    Pass,
    /// It works now but will not for long (a token about to expire).
    Warn,
    /// `generate` would fail here.
    Fail,
    /// Not run: asked not to (`--no-exchange`) or an earlier step failed.
    Skipped,
}

impl Status {
    /// The text report's mark.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        }
    }
}

/// One fact a step found (`iss`, `https://...`). Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Which step.
    pub step: StepName,
    /// How it ended.
    pub status: Status,
    /// What it found, in order.
    pub facts: Vec<Fact>,
    /// What is wrong (a failure or warning), one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The documentation's troubleshooting item this is, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<&'static str>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    fn new(step: StepName, status: Status, facts: Vec<Fact>) -> Step {
        Step {
            step,
            status,
            facts,
            problem: None,
            item: None,
            fix: None,
        }
    }

    fn failed(step: StepName, facts: Vec<Fact>, problem: impl Into<String>, fix: impl Into<String>) -> Step {
        Step {
            problem: Some(problem.into()),
            fix: Some(fix.into()),
            ..Step::new(step, Status::Fail, facts)
        }
    }

    fn item(mut self, item: &'static str) -> Step {
        self.item = Some(item);
        self
    }

    /// A step not run, and why (`--no-exchange`, or the step it needs failed).
    pub fn skipped(step: StepName, why: &str) -> Step {
        Step {
            problem: Some(why.to_string()),
            ..Step::new(step, Status::Skipped, Vec::new())
        }
    }
}

fn fact(name: &str, value: impl Into<String>) -> Fact {
    Fact {
        name: name.to_string(),
        value: value.into(),
    }
}

/// The whole report, in step order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether `check` exits 0 ([`Report::passed`]).
    pub ok: bool,
    /// Each step.
    pub steps: Vec<Step>,
}

impl Report {
    /// A report of `steps`.
    pub fn new(steps: Vec<Step>) -> Report {
        let ok = steps
            .iter()
            .all(|s| matches!(s.status, Status::Pass | Status::Skipped));
        Report { ok, steps }
    }

    /// The exit rule: every step that ran passed. A step skipped on request
    /// (`--no-exchange`) does not count against it; a warning does, since the next
    /// call may fail.
    pub fn passed(&self) -> bool {
        self.ok
    }

    /// The exit code: 0 when [`Report::passed`], else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed())
    }

    /// One line per step (`ok manifest: ...`), then, for a step that did not pass, its
    /// problem and fix on the next lines, indented.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            let facts: Vec<String> = step
                .facts
                .iter()
                .map(|f| format!("{}={}", f.name, f.value))
                .collect();
            out.push_str(&format!("{:<4} {}", step.status.mark(), step.step.label()));
            if !facts.is_empty() {
                out.push_str(&format!(": {}", facts.join(", ")));
            }
            out.push('\n');
            if let Some(problem) = &step.problem {
                out.push_str(&format!("     {problem}\n"));
            }
            if let Some(fix) = &step.fix {
                match step.item {
                    Some(item) => out.push_str(&format!("     fix ({item}): {fix}\n")),
                    None => out.push_str(&format!("     fix: {fix}\n")),
                }
            }
        }
        out
    }

    /// The report as JSON (`--output json`): `{"ok": bool, "steps": [...]}`.
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }
}

/// The API a spec names, as the component reads it: `apiUrl`, else `apiHost` (a bare
/// host is https), else [`DEFAULT_API`]; without a trailing slash.
pub fn effective_api(spec: &GeneratorSpec) -> String {
    let api = spec.api().unwrap_or(DEFAULT_API);
    let api = if api.contains("://") {
        api.to_string()
    } else {
        format!("https://{api}")
    };
    api.trim_end_matches('/').to_string()
}

/// `scheme://authority` of an API URL: the audience Cloudsmith expects by default.
pub fn origin(api: &str) -> String {
    let (scheme, rest) = api.split_once("://").unwrap_or(("https", api));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// The audiences the token must carry: the spec's, else the API's origin.
pub fn wanted_audiences(spec: &GeneratorSpec) -> Vec<String> {
    match spec.service_account_ref.as_ref().map(|r| &r.audiences) {
        Some(audiences) if !audiences.is_empty() => audiences.clone(),
        _ => vec![origin(&effective_api(spec))],
    }
}

/// The manifest step: the generator document chosen (`document`, e.g.
/// `CloudsmithAccessToken/my-cloudsmith-token`) and its effective API, org, service and
/// audiences; fails on a missing slug or service account; warns of an `apiHost` ESO
/// would never see ([`GeneratorSpec::api_host_eso_drops`]).
pub fn manifest_step(document: &str, spec: &GeneratorSpec) -> Step {
    let mut facts = vec![fact("document", document), fact("api", effective_api(spec))];
    let mut missing = Vec::new();
    for (name, field, value) in [
        ("org", "spec.orgSlug", spec.org_slug.as_deref()),
        ("service", "spec.serviceSlug", spec.service_slug.as_deref()),
        (
            "service account",
            "spec.serviceAccountRef.name",
            spec.service_account_ref.as_ref().and_then(|r| r.name.as_deref()),
        ),
    ] {
        match value.filter(|v| !v.trim().is_empty()) {
            Some(v) => facts.push(fact(name, v)),
            None => missing.push(field),
        }
    }
    facts.push(fact("audiences", wanted_audiences(spec).join(",")));
    if missing.is_empty() {
        // generate works with it, but the same manifest in ESO would not: WARN.
        if let Some(dropped) = spec.api_host_eso_drops() {
            return Step {
                problem: Some(dropped.problem()),
                fix: Some(dropped.fix()),
                ..Step::new(StepName::Manifest, Status::Warn, facts)
            };
        }
        return Step::new(StepName::Manifest, Status::Pass, facts);
    }
    Step::failed(
        StepName::Manifest,
        facts,
        format!("the spec has no {}", missing.join(", ")),
        format!("set {} in the generator document", missing.join(" and ")),
    )
}

/// The token source step when no token came: `source` is the source's description,
/// `error` its one-line error.
pub fn token_source_failed(source: &str, error: &str) -> Step {
    Step::failed(
        StepName::TokenSource,
        vec![fact("source", source)],
        error,
        TOKEN_SOURCE_FIX,
    )
}

/// The token step: the claims of the token `source` gave (`None`: not a JWT), checked
/// against the audiences the spec asks for (`wanted`) and the call's bound (the token
/// must outlive it); `now` in UNIX seconds. The facts are what to enter in Cloudsmith's
/// OIDC service (issuer, subject).
pub fn token_step(
    source: &str,
    claims: Option<&Claims>,
    wanted: &[String],
    bound: Duration,
    now: u64,
) -> Step {
    let mut facts = vec![fact("source", source)];
    let Some(claims) = claims else {
        return Step::failed(
            StepName::TokenSource,
            facts,
            "the token is not a JWT, so Cloudsmith cannot verify it",
            "give a Kubernetes service account token: a projected token file, or --kubeconfig for a TokenRequest",
        )
        .item(item::TOKEN_EXCHANGE_FAILS);
    };
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    facts.push(fact("iss", shown(&claims.iss)));
    facts.push(fact("sub", shown(&claims.sub)));
    facts.push(fact("aud", claims.aud.join(",")));
    if let Some(exp) = claims.exp {
        facts.push(fact("exp", exp.to_string()));
    }
    if claims.iss.is_none() || claims.sub.is_none() {
        return Step::failed(
            StepName::TokenSource,
            facts,
            "the token names no issuer or no subject, which the OIDC service needs to trust it",
            "give a Kubernetes service account token (it carries iss and sub)",
        )
        .item(item::TOKEN_EXCHANGE_FAILS);
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|w| !claims.aud.contains(w))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Step::failed(
            StepName::TokenSource,
            facts,
            format!("the token lacks the audience {} that the spec asks for", missing.join(",")),
            format!(
                "mint the token with audience {} (spec.serviceAccountRef.audiences; for a projected token, its audience)",
                missing.join(",")
            ),
        )
        .item(item::INVALID_AUDIENCE);
    }
    let Some(exp) = claims.exp else {
        return Step::new(StepName::TokenSource, Status::Pass, facts);
    };
    if exp <= now {
        return Step::failed(
            StepName::TokenSource,
            facts,
            format!("the token expired {}s ago", now - exp),
            "give a fresh token (a projected token is renewed by the kubelet; a TokenRequest is minted per call)",
        );
    }
    let left = exp - now;
    facts.push(fact("expires in", format!("{left}s")));
    if left <= bound.as_secs() {
        return Step {
            problem: Some(format!(
                "the token expires in {left}s, within the call's bound of {}s",
                bound.as_secs()
            )),
            fix: Some("give a token that lives longer than --timeout, or a shorter --timeout".into()),
            ..Step::new(StepName::TokenSource, Status::Warn, facts)
        };
    }
    Step::new(StepName::TokenSource, Status::Pass, facts)
}

/// `host:port` of an API URL, the port from the scheme when it has none.
fn authority_with_port(api: &str) -> String {
    super::api_authority(api).map_or_else(|_| origin(api), |(authority, _)| authority.to_string())
}

/// The outbound policy step: whether `policy` lets the guest reach `api`, and the flag
/// that would if it does not.
pub fn policy_step(api: &str, policy: &OutboundPolicy) -> Step {
    let facts = vec![fact("api", api)];
    let uri: http::Uri = match api.parse() {
        Ok(uri) => uri,
        Err(e) => {
            return Step::failed(
                StepName::OutboundPolicy,
                facts,
                format!("the API URL does not parse: {e}"),
                "set spec.apiHost to a host name, or spec.apiUrl to an https URL",
            )
        }
    };
    match policy.decide(uri.scheme(), uri.authority()) {
        Ok(target) => Step::new(
            StepName::OutboundPolicy,
            Status::Pass,
            vec![fact("api", api), fact("allowed", target.authority.to_string())],
        ),
        Err(denial) => {
            use host_example::policy::Rule;
            let fix = match denial.rule {
                // Plain http is allowed per host (and to loopback), never to Cloudsmith.
                Rule::PlainHttp => format!(
                    "give --allow-http {}, if this is the Cloudsmith API you mean",
                    authority_with_port(api)
                ),
                Rule::PlainHttpToCloudsmith => {
                    "write spec.apiUrl with https://: Cloudsmith's API speaks only HTTPS".to_string()
                }
                Rule::Userinfo => "remove the user:password@ part of spec.apiUrl".to_string(),
                _ => format!(
                    "give --allow-host {}, if this is the Cloudsmith API you mean",
                    authority_with_port(api)
                ),
            };
            Step::failed(StepName::OutboundPolicy, facts, denial.to_string(), fix)
        }
    }
}

/// The exchange step when Cloudsmith answered with credentials expiring at `expiry`.
pub fn exchange_passed(expiry: &str) -> Step {
    Step::new(StepName::Exchange, Status::Pass, vec![fact("expiry", expiry)])
}

/// The exchange step for a failed `generate`: `error` mapped to the documentation's
/// troubleshooting item and its fix; `spec` for the API, slugs and audiences it names.
pub fn exchange_failed(error: &Error, spec: &GeneratorSpec) -> Step {
    let api = effective_api(spec);
    let org = spec.org_slug.as_deref().unwrap_or("(none)");
    let service = spec.service_slug.as_deref().unwrap_or("(none)");
    let facts = vec![
        fact("api", api.clone()),
        fact("org", org),
        fact("service", service),
    ];
    let fail = |fix: String| Step::failed(StepName::Exchange, facts.clone(), error.to_string(), fix);
    let network = || {
        fail(format!(
            "check that this machine (or the cluster) can reach {api}: DNS, proxy, firewall"
        ))
        .item(item::NETWORK_ISSUES)
    };
    let e = match error {
        Error::Generate(e) => e,
        Error::Host(HostError::DeadlineExceeded { .. }) => return network(),
        Error::Host(_) => return fail("run with -v and report the host error".into()),
    };
    match e {
        GenerateError::Unauthorized(s) => {
            let (iss, sub, aud) = match &s.token {
                Some(PresentedToken::Claims { iss, sub, aud }) => (
                    iss.clone().unwrap_or_else(|| "(none)".into()),
                    sub.clone().unwrap_or_else(|| "(none)".into()),
                    Some(aud.clone()),
                ),
                _ => ("the token's issuer".into(), "subject".into(), None),
            };
            let wanted = wanted_audiences(spec);
            if let Some(aud) = aud.filter(|aud| wanted.iter().any(|w| !aud.contains(w))) {
                return fail(format!(
                    "mint the token with audience {} (it has {})",
                    wanted.join(","),
                    aud.join(",")
                ))
                .item(item::INVALID_AUDIENCE);
            }
            if s.status == 403 {
                fail(format!(
                    "give the OIDC service {service} of {org} permission on the repositories, and check that it trusts issuer {iss} and subject {sub}"
                ))
                .item(item::PERMISSIONS)
            } else {
                fail(format!(
                    "in Cloudsmith's OIDC service {service} of {org}, trust issuer {iss} and subject {sub}"
                ))
                .item(item::TOKEN_EXCHANGE_FAILS)
            }
        }
        GenerateError::Rejected(s) if matches!(s.status, 404 | 422) => fail(format!(
            "check spec.orgSlug ({org}) and spec.serviceSlug ({service}): Cloudsmith must know an OIDC service {service} in {org}"
        ))
        .item(item::TOKEN_EXCHANGE_FAILS),
        GenerateError::Rejected(_) => fail("check the spec against the documentation".into()),
        GenerateError::Upstream { .. } | GenerateError::RateLimited { .. } => network(),
        GenerateError::InvalidToken(_) => {
            fail(format!("check that {api} is the Cloudsmith API (spec.apiHost)")).item(item::NETWORK_ISSUES)
        }
        GenerateError::PolicyDenied { .. } => fail(format!(
            "give --allow-host {}, if this is the Cloudsmith API you mean",
            authority_with_port(&api)
        )),
        GenerateError::InvalidSpec(_) => fail("fix the field the error names".into()),
        GenerateError::TokenSource(_) => fail(TOKEN_SOURCE_FIX.into()),
    }
}

/// A registry name as Docker compares it: no scheme, no path, lower case
/// (`https://Docker.Cloudsmith.io/v1/` is `docker.cloudsmith.io`).
pub fn registry_host(name: &str) -> String {
    match super::host_port(name) {
        Some((host, Some(port))) => format!("{host}:{port}"),
        Some((host, None)) => host,
        None => name.trim().to_ascii_lowercase(),
    }
}

/// The registry step: the host the credentials are for (`registry`), the registries the
/// pulls use (`flags`, `--registry`; else `registry`), and whether the Docker config's
/// registries (`docker_config`, from [`DockerConfigFile::registries`], when a config
/// was given) name each of those. A `--registry` other than `registry` is a warning, not a
/// failure: it is right only for a custom domain of the Cloudsmith organization, which
/// this host cannot tell.
pub fn registry_step(registry: &str, flags: &[String], docker_config: Option<&[String]>) -> Step {
    let want = registry_host(registry);
    let mut facts = vec![fact("credentials for", want.clone())];
    if !flags.is_empty() {
        facts.push(fact("--registry", flags.join(",")));
    }
    let pulls: Vec<String> = if flags.is_empty() {
        vec![want.clone()]
    } else {
        flags.iter().map(|f| registry_host(f)).collect()
    };
    if let Some(names) = docker_config {
        facts.push(fact("docker config", names.join(",")));
        let named: Vec<String> = names.iter().map(|n| registry_host(n)).collect();
        let missing: Vec<&String> = pulls.iter().filter(|p| !named.contains(p)).collect();
        if !missing.is_empty() {
            let missing = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Step::failed(
                StepName::Registry,
                facts,
                format!("the Docker config's auths and credHelpers do not name {missing}"),
                format!(
                    "name {missing} in .dockerconfigjson's auths (the ExternalSecret's template), \
                     or in credHelpers (install docker-credential-helper --registry)"
                ),
            )
            .item(item::REGISTRY_DOMAIN_ISSUES);
        }
    }
    let others: Vec<&String> = pulls.iter().filter(|p| **p != want).collect();
    if !others.is_empty() {
        let others = others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        return Step {
            problem: Some(format!(
                "{others} is not {want}, the registry the credentials are for: it works only if it is a \
                 custom domain of your Cloudsmith organization"
            )),
            fix: Some(format!(
                "pull images as {want}/ORG/REPO/IMAGE:TAG (or HOST/... for a custom domain), and give \
                 --registry for each custom domain"
            )),
            item: Some(item::REGISTRY_DOMAIN_ISSUES),
            ..Step::new(StepName::Registry, Status::Warn, facts)
        };
    }
    Step::new(StepName::Registry, Status::Pass, facts)
}

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

    let (source, _) = mint_port::token_source(&config.tokens, &manifest, &config.namespace);
    let described = source.describe();
    let token = match token_request(&spec, &config.namespace, config.namespaces) {
        Ok(request) => source.token(&request).await.map_err(|e| e.to_string()),
        Err(why) => Err(why),
    };
    let token = match token {
        Ok(token) => {
            let claims = Claims::read(token.expose());
            steps.push(token_step(
                &described,
                claims.as_ref(),
                &wanted_audiences(&spec),
                config.runtime.limits.deadline,
                host_example::token_cache::now_unix(),
            ));
            Some(token)
        }
        Err(why) => {
            steps.push(token_source_failed(&described, &why));
            None
        }
    };

    let api = effective_api(&spec);
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
                    why,
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
        audiences: wanted_audiences(spec),
    })
}

/// The registries Docker's `config.json` at `path` names, read by the same reader that
/// finds registry credentials, so `check` and a pull agree on what the file says.
fn read_docker_config(path: &std::path::Path) -> Result<Vec<String>, String> {
    let config = DockerConfigFile::load(path)?;
    Ok(config.registries().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_example::policy::DEFAULT_AUTHORITY;
    use host_example::{Authority, UpstreamStatus};

    fn names_in(config_json: &str) -> Vec<String> {
        let config = DockerConfigFile::from_json(config_json).unwrap();
        config.registries().map(str::to_string).collect()
    }

    const NOW: u64 = 1_700_000_000;
    const BOUND: Duration = Duration::from_secs(90);

    fn spec(json: serde_json::Value) -> GeneratorSpec {
        GeneratorSpec::of(&json).expect("a spec")
    }

    fn documented() -> GeneratorSpec {
        spec(
            serde_json::json!({"spec": {"apiHost": "api.cloudsmith.io", "orgSlug": "my-organization",
            "serviceSlug": "my-oidc-service", "serviceAccountRef": {"name": "default",
            "audiences": ["https://api.cloudsmith.io"]}}}),
        )
    }

    fn claims(aud: &[&str], exp: Option<u64>) -> Claims {
        Claims {
            iss: Some("https://k8s.example".into()),
            sub: Some("system:serviceaccount:apps:puller".into()),
            aud: aud.iter().map(|a| a.to_string()).collect(),
            exp,
            kubernetes: None,
        }
    }

    fn has(step: &Step, name: &str, value: &str) -> bool {
        step.facts.iter().any(|f| f.name == name && f.value == value)
    }

    #[test]
    fn the_manifest_step_names_the_effective_spec() {
        let step = manifest_step("CloudsmithAccessToken/my-cloudsmith-token", &documented());
        assert_eq!(step.status, Status::Pass);
        for (name, value) in [
            ("api", "https://api.cloudsmith.io"),
            ("org", "my-organization"),
            ("service", "my-oidc-service"),
            ("audiences", "https://api.cloudsmith.io"),
        ] {
            assert!(has(&step, name, value), "{name}={value} not in {:?}", step.facts);
        }
        // Defaults: no apiHost, no audiences: the API's origin.
        let bare = spec(
            serde_json::json!({"orgSlug": "o", "serviceAccountRef": {"name": "a"},
            "apiHost": "http://127.0.0.1:8080/"}),
        );
        let step = manifest_step("spec", &bare);
        assert_eq!(step.status, Status::Fail);
        assert!(has(&step, "audiences", "http://127.0.0.1:8080"));
        assert_eq!(
            step.fix.as_deref(),
            Some("set spec.serviceSlug in the generator document")
        );
    }

    #[test]
    fn an_api_host_eso_would_drop_is_a_warning_naming_the_fix() {
        let ours = spec(serde_json::json!({"orgSlug": "o", "serviceSlug": "s",
            "serviceAccountRef": {"name": "a"}, "apiHost": "cloudsmith.acme.example"}));
        let step = manifest_step("CloudsmithAccessToken/t", &ours);
        assert_eq!(step.status, Status::Warn, "{step:?}");
        assert!(has(&step, "api", "https://cloudsmith.acme.example"));
        assert_eq!(
            step.fix.as_deref(),
            Some(
                "write apiUrl: https://cloudsmith.acme.example in place of apiHost: cloudsmith.acme.example"
            )
        );
        let text = Report::new(vec![step]).render_text();
        assert!(
            text.lines().next().unwrap().starts_with("WARN manifest:")
                && text.contains("     spec.apiHost is not a field of ESO's CloudsmithAccessToken CRD"),
            "{text}"
        );
        // The documentation's own apiHost is ESO's default: nothing is lost.
        assert_eq!(
            manifest_step("CloudsmithAccessToken/t", &documented()).status,
            Status::Pass
        );
    }

    #[test]
    fn the_token_step_passes_a_good_token_and_shows_its_claims() {
        let wanted = vec!["https://api.cloudsmith.io".to_string()];
        let c = claims(&["https://api.cloudsmith.io"], Some(NOW + 3600));
        let step = token_step("token file /t", Some(&c), &wanted, BOUND, NOW);
        assert_eq!(step.status, Status::Pass, "{step:?}");
        assert!(has(&step, "iss", "https://k8s.example"));
        assert!(has(&step, "sub", "system:serviceaccount:apps:puller"));
        assert!(has(&step, "expires in", "3600s"));
    }

    #[test]
    fn the_token_step_flags_audience_expiry_and_non_jwts() {
        let wanted = vec!["https://api.cloudsmith.io".to_string()];
        let other = claims(&["https://other.example"], Some(NOW + 3600));
        let step = token_step("t", Some(&other), &wanted, BOUND, NOW);
        assert_eq!(
            (step.status, step.item),
            (Status::Fail, Some(item::INVALID_AUDIENCE))
        );
        assert!(step.fix.unwrap().contains("audience https://api.cloudsmith.io"));

        let soon = claims(&["https://api.cloudsmith.io"], Some(NOW + 30));
        let step = token_step("t", Some(&soon), &wanted, BOUND, NOW);
        assert_eq!(step.status, Status::Warn);
        assert!(step
            .problem
            .unwrap()
            .contains("expires in 30s, within the call's bound of 90s"));

        let expired = claims(&["https://api.cloudsmith.io"], Some(NOW - 5));
        assert_eq!(
            token_step("t", Some(&expired), &wanted, BOUND, NOW).status,
            Status::Fail
        );

        let step = token_step("t", None, &wanted, BOUND, NOW);
        assert_eq!(
            (step.status, step.item),
            (Status::Fail, Some(item::TOKEN_EXCHANGE_FAILS))
        );

        let anonymous = Claims {
            sub: None,
            ..claims(&["https://api.cloudsmith.io"], None)
        };
        assert_eq!(
            token_step("t", Some(&anonymous), &wanted, BOUND, NOW).status,
            Status::Fail
        );

        let failed = token_source_failed("Kubernetes TokenRequest", "no Kubernetes configuration found");
        assert_eq!(failed.fix.as_deref(), Some(TOKEN_SOURCE_FIX));
    }

    #[test]
    fn the_policy_step_names_the_flag_that_would_allow_the_api() {
        let default = OutboundPolicy::default();
        assert_eq!(
            policy_step("https://api.cloudsmith.io", &default).status,
            Status::Pass
        );
        let step = policy_step("https://cloudsmith.internal:8443", &default);
        assert_eq!(step.status, Status::Fail);
        assert_eq!(
            step.fix.as_deref(),
            Some("give --allow-host cloudsmith.internal:8443, if this is the Cloudsmith API you mean")
        );
        let allowed = OutboundPolicy::default().allow(Authority::new("127.0.0.1", 8080));
        let step = policy_step("http://127.0.0.1:8080", &allowed);
        assert_eq!(
            step.fix.as_deref(),
            Some("give --allow-http 127.0.0.1:8080, if this is the Cloudsmith API you mean")
        );
        let step = policy_step("http://api.cloudsmith.io", &allowed.clone().allow_http(true));
        assert!(step.fix.unwrap().starts_with("write spec.apiUrl with https://"));
        let both = allowed.allow_http(true);
        assert_eq!(policy_step("http://127.0.0.1:8080", &both).status, Status::Pass);
        assert_eq!(authority_with_port("https://[::1]"), "[::1]:443");
        assert_eq!(DEFAULT_AUTHORITY, authority_with_port(DEFAULT_API));
    }

    fn refused(status: u16, aud: &[&str]) -> Error {
        GenerateError::Unauthorized(UpstreamStatus {
            status,
            detail: "OIDC token cannot be authenticated".into(),
            token: Some(PresentedToken::Claims {
                iss: Some("https://k8s.example".into()),
                sub: Some("system:serviceaccount:apps:puller".into()),
                aud: aud.iter().map(|a| a.to_string()).collect(),
            }),
        })
        .into()
    }

    #[test]
    fn exchange_failures_map_to_the_documentations_items() {
        let spec = documented();
        let good_aud = ["https://api.cloudsmith.io"];
        let rejected = |status| -> Error {
            GenerateError::Rejected(UpstreamStatus {
                status,
                detail: "Not found.".into(),
                token: None,
            })
            .into()
        };
        let upstream: Error = GenerateError::Upstream {
            status: None,
            detail: "connection refused".into(),
            attempts: 3,
            host_note: None,
        }
        .into();
        let denied: Error = GenerateError::PolicyDenied {
            message: "refused".into(),
            host_reason: None,
        }
        .into();
        let deadline: Error = HostError::DeadlineExceeded {
            deadline: Duration::from_secs(90),
        }
        .into();
        // (case, error, item, words the fix must hold)
        let table: Vec<(&str, Error, Option<&str>, &str)> = vec![
            (
                "401",
                refused(401, &good_aud),
                Some(item::TOKEN_EXCHANGE_FAILS),
                "trust issuer https://k8s.example and subject system:serviceaccount:apps:puller",
            ),
            (
                "403",
                refused(403, &good_aud),
                Some(item::PERMISSIONS),
                "permission on the repositories",
            ),
            (
                "401, wrong audience",
                refused(401, &["https://other.example"]),
                Some(item::INVALID_AUDIENCE),
                "audience https://api.cloudsmith.io (it has https://other.example)",
            ),
            (
                "404",
                rejected(404),
                Some(item::TOKEN_EXCHANGE_FAILS),
                "spec.orgSlug (my-organization)",
            ),
            (
                "422",
                rejected(422),
                Some(item::TOKEN_EXCHANGE_FAILS),
                "spec.serviceSlug (my-oidc-service)",
            ),
            (
                "transport",
                upstream,
                Some(item::NETWORK_ISSUES),
                "can reach https://api.cloudsmith.io",
            ),
            ("deadline", deadline, Some(item::NETWORK_ISSUES), "can reach"),
            ("policy", denied, None, "--allow-host api.cloudsmith.io:443"),
        ];
        let wrong: Vec<String> = table
            .into_iter()
            .filter_map(|(case, error, want_item, words)| {
                let step = exchange_failed(&error, &spec);
                let fix = step.fix.clone().unwrap_or_default();
                let right = step.status == Status::Fail
                    && step.item == want_item
                    && fix.contains(words)
                    && step.problem.as_deref() == Some(error.to_string().as_str());
                (!right).then(|| format!("{case}: {step:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert_eq!(exchange_passed("1700000000").status, Status::Pass);
    }

    #[test]
    fn the_registry_step_compares_host_names() {
        let registry = DEFAULT_REGISTRY;
        assert_eq!(registry_host("https://Docker.Cloudsmith.io/v1/"), registry);
        assert_eq!(registry_step(registry, &[], None).status, Status::Pass);
        assert_eq!(
            registry_step(registry, &[registry.into()], None).status,
            Status::Pass
        );
        // Another host may be a custom domain: a warning that says so.
        let step = registry_step(registry, &["docker.io".into()], None);
        assert_eq!(
            (step.status, step.item),
            (Status::Warn, Some(item::REGISTRY_DOMAIN_ISSUES))
        );
        assert!(step.problem.unwrap().contains("custom domain"));
        assert_eq!(registry_host("docker.cloudsmith.io:443"), registry);
        assert_eq!(
            registry_host("registry.acme.com:5000/x"),
            "registry.acme.com:5000"
        );
        // A custom domain the Docker config does not name fails.
        let names = names_in(r#"{"credHelpers": {"docker.cloudsmith.io": "c"}}"#);
        let step = registry_step(registry, &["registry.acme.com".into()], Some(&names));
        assert_eq!(step.status, Status::Fail);
        assert!(step.problem.unwrap().contains("registry.acme.com"));

        let names = names_in(
            r#"{"credHelpers": {"docker.cloudsmith.io": "cloudsmith-gen"},
                "auths": {"https://index.docker.io/v1/": {}}}"#,
        );
        assert_eq!(names, ["https://index.docker.io/v1/", "docker.cloudsmith.io"]);
        assert_eq!(registry_step(registry, &[], Some(&names)).status, Status::Pass);
        let other = names_in(r#"{"auths": {"ghcr.io": {}}}"#);
        let step = registry_step(registry, &[], Some(&other));
        assert_eq!(
            (step.status, step.item),
            (Status::Fail, Some(item::REGISTRY_DOMAIN_ISSUES))
        );
    }

    #[test]
    fn the_report_renders_text_and_json_and_exits_0_only_when_all_passed() {
        let spec = documented();
        let passing = Report::new(vec![
            manifest_step("CloudsmithAccessToken/t", &spec),
            Step::skipped(StepName::Exchange, "--no-exchange"),
        ]);
        assert_eq!((passing.passed(), passing.exit_code()), (true, 0));

        let failing = Report::new(vec![
            manifest_step("CloudsmithAccessToken/t", &spec),
            exchange_failed(&refused(401, &["https://api.cloudsmith.io"]), &spec),
        ]);
        assert_eq!(failing.exit_code(), 1);
        let text = failing.render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("ok   manifest: document=CloudsmithAccessToken/t, api="));
        assert!(lines[1].starts_with("FAIL exchange: api=https://api.cloudsmith.io"));
        assert!(lines[2].starts_with("     Cloudsmith rejected the credentials (401)"));
        assert!(lines[3].starts_with("     fix (Token Exchange Fails): in Cloudsmith's OIDC service"));

        let json: serde_json::Value = serde_json::from_str(&failing.render_json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["steps"][1]["step"], "exchange");
        assert_eq!(json["steps"][1]["status"], "fail");
        assert_eq!(json["steps"][1]["item"], "Token Exchange Fails");
        assert_eq!(
            json["steps"][0]["facts"][0],
            serde_json::json!({"name": "document", "value": "CloudsmithAccessToken/t"})
        );
        assert!(json["steps"][0].get("fix").is_none());

        let warned = Report::new(vec![token_step(
            "t",
            Some(&claims(&["https://api.cloudsmith.io"], Some(NOW + 10))),
            &wanted_audiences(&spec),
            BOUND,
            NOW,
        )]);
        assert_eq!(warned.exit_code(), 1, "a warning fails the check");
        assert!(warned.render_text().starts_with("WARN token source"));
        assert_eq!(StepName::OutboundPolicy.label(), "outbound policy");
        assert_eq!(Status::Skipped.mark(), "skip");
    }
}
