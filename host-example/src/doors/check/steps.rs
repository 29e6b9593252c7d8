//! `check`'s steps, each an analysis of plain inputs: the manifest, the token, the
//! outbound policy, the exchange's answer and the registry. Every failed step names the
//! fix and, where one applies, the documentation's troubleshooting item.

use std::time::Duration;

use cloudsmith_gen::token_source::TOKEN_SOURCE_FIX;
use cloudsmith_gen::{Error, GenerateError, HostError, OutboundPolicy, PresentedToken};
use cloudsmith_gen_core::jwt::Claims;
use cloudsmith_gen_core::spec::GeneratorSpec;

use super::report::{fact, item, Status, Step, StepName};

/// The manifest step: the generator document chosen (`document`, e.g.
/// `CloudsmithAccessToken/my-cloudsmith-token`) and its effective API, org, service and
/// audiences; fails on a missing slug or service account; warns of an `apiHost` ESO
/// would never see ([`GeneratorSpec::api_host_eso_drops`]).
pub fn manifest_step(document: &str, spec: &GeneratorSpec) -> Step {
    let mut facts = vec![fact("document", document), fact("api", spec.effective_api())];
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
    facts.push(fact("audiences", spec.audiences().join(",")));
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
    super::super::api_authority(api).map_or_else(|_| api.to_string(), |(authority, _)| authority.to_string())
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
            use cloudsmith_gen::policy::Rule;
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
    let api = spec.effective_api();
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
            let wanted = spec.audiences();
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
    match super::super::host_port(name) {
        Some((host, Some(port))) => format!("{host}:{port}"),
        Some((host, None)) => host,
        None => name.trim().to_ascii_lowercase(),
    }
}

/// The registry step: the host the credentials are for (`registry`), the registries the
/// pulls use (`flags`, `--registry`; else `registry`), and whether the Docker config's
/// registries (`docker_config`, from [`cloudsmith_gen::registry_auth::DockerConfigFile::registries`], when a config
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

#[cfg(test)]
mod tests {
    use super::super::report::Report;
    use super::*;
    use crate::doors::DEFAULT_REGISTRY;
    use cloudsmith_gen::policy::DEFAULT_AUTHORITY;
    use cloudsmith_gen::registry_auth::DockerConfigFile;
    use cloudsmith_gen::{Authority, UpstreamStatus};
    use cloudsmith_gen_core::spec::ESO_DEFAULT_API as DEFAULT_API;

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
            &spec.audiences(),
            BOUND,
            NOW,
        )]);
        assert_eq!(warned.exit_code(), 1, "a warning fails the check");
        assert!(warned.render_text().starts_with("WARN token source"));
        assert_eq!(StepName::OutboundPolicy.label(), "outbound policy");
        assert_eq!(Status::Skipped.mark(), "skip");
    }
}
