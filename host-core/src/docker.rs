//! The Docker credential helper's configuration and its warm path, without Wasm.
//!
//! Both helpers read this: the lean `docker-credential-cloudsmith` binary, which answers
//! a cache hit (or another registry) and hands everything else to `cloudsmith-gen`, and
//! `cloudsmith-gen` itself. One reading of the environment, one cache key, one answer, so
//! the two cannot disagree.
//!
//! Configuration comes from the environment, with the official Cloudsmith CLI's names:
//! `CLOUDSMITH_ORG`, `CLOUDSMITH_SERVICE_SLUG`, `CLOUDSMITH_API_HOST`, the OIDC token in
//! `CLOUDSMITH_OIDC_TOKEN` or the file `CLOUDSMITH_OIDC_TOKEN_FILE`, or a generator
//! manifest `CLOUDSMITH_GENERATOR_MANIFEST` (whose fields the variables override; with
//! neither token variable its `serviceAccountRef` is minted through the Kubernetes
//! TokenRequest API). Registries: `docker.cloudsmith.io` plus `CLOUDSMITH_REGISTRIES`
//! (comma-separated).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::registries::Registries;
use crate::spec::{self, Field, GeneratorSpec};
use crate::token_cache::CachedToken;
use crate::Reply;

/// The name the binary answers to as a helper (`credHelpers` value `cloudsmith`).
pub const HELPER_NAME: &str = "docker-credential-cloudsmith";
/// The `credHelpers` value that selects this helper.
pub const CRED_HELPER: &str = "cloudsmith";
/// The protocol's "none here" answer: docker-credential-helpers v0.9.13
/// `credentials/error.go` `errCredentialsNotFoundMessage`, which `client.Get`
/// (`client/client.go`) compares with the helper's trimmed stdout
/// (`IsErrCredentialsNotFoundMessage`) to return `ErrCredentialsNotFound`.
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// The protocol's answer to a `get` without a server URL:
/// `errCredentialsMissingServerURLMessage` (`credentials/error.go`), which `credentials.Get`
/// returns for blank stdin and `client.Get` maps back to `ErrCredentialsMissingServerURL`.
pub const MISSING_SERVER_URL: &str = "no credentials server URL";
/// A server URL or a `store` payload is small.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// The environment variables the helper reads.
pub mod env {
    /// Organisation slug.
    pub const ORG: &str = "CLOUDSMITH_ORG";
    /// Service slug.
    pub const SERVICE: &str = "CLOUDSMITH_SERVICE_SLUG";
    /// API host or URL.
    pub const API_HOST: &str = "CLOUDSMITH_API_HOST";
    /// The OIDC token itself.
    pub const OIDC_TOKEN: &str = "CLOUDSMITH_OIDC_TOKEN";
    /// A file holding the OIDC token.
    pub const OIDC_TOKEN_FILE: &str = "CLOUDSMITH_OIDC_TOKEN_FILE";
    /// A generator manifest.
    pub const MANIFEST: &str = "CLOUDSMITH_GENERATOR_MANIFEST";
    /// Extra registries (custom domains), comma-separated.
    pub const REGISTRIES: &str = "CLOUDSMITH_REGISTRIES";
    /// Extra CA roots (PEM).
    pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
    /// The component to run instead of the embedded generator (a file, or
    /// `oci://REGISTRY/REPOSITORY@sha256:DIGEST`): the helper takes no flags.
    pub const COMPONENT: &str = "CLOUDSMITH_GENERATOR_COMPONENT";

    /// Every variable of this module.
    pub const ALL: [&str; 9] = [
        ORG,
        SERVICE,
        API_HOST,
        OIDC_TOKEN,
        OIDC_TOKEN_FILE,
        MANIFEST,
        REGISTRIES,
        SSL_CERT_FILE,
        COMPONENT,
    ];
}

/// Why the helper's configuration cannot serve a `get`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable, or the input, is missing or wrong (the usage exit).
    #[error("{0}")]
    Usage(String),
    /// No variable names an OIDC token (the token source exit).
    #[error("{0}")]
    NoTokenSource(String),
}

/// Where a helper call's OIDC token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// The variable [`env::OIDC_TOKEN`].
    Env(String),
    /// The file [`env::OIDC_TOKEN_FILE`] names.
    File(PathBuf),
    /// The Kubernetes TokenRequest API, for the manifest's `serviceAccountRef`.
    Kubernetes,
}

impl TokenOrigin {
    /// Who the token speaks for, for the token cache's key ([`crate::identity`]); `None`
    /// for Kubernetes, whose identity needs the kubeconfig (the full host reads it).
    pub fn identity(&self) -> Option<String> {
        match self {
            TokenOrigin::Env(var) => crate::identity::env(var),
            TokenOrigin::File(path) => crate::identity::file(path),
            TokenOrigin::Kubernetes => None,
        }
    }
}

/// What a `get` mints with: the generator manifest the variables make, the target
/// namespace, and the token's origin. The helper never honours another namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCall {
    /// The generator manifest (JSON).
    pub manifest: String,
    /// The target namespace.
    pub namespace: String,
    /// Where the OIDC token comes from.
    pub tokens: TokenOrigin,
}

/// The helper's environment: the variables of [`env`] as they were set (empty counts as
/// unset). Captured whole and checked only by the actions that use them, so that a
/// misconfigured `get` does not break `list` or `version`.
#[derive(Debug, Clone, Default)]
pub struct HelperEnv {
    vars: BTreeMap<&'static str, String>,
    /// The manifest and the API it names, worked out once (a `get` that misses asks
    /// for it from several places, and each would read the manifest file).
    manifest: OnceLock<Result<(Value, Option<String>), String>>,
}

impl HelperEnv {
    /// The variables of [`env`], read with `var` (`std::env::var` in a binary).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> HelperEnv {
        let vars = env::ALL
            .into_iter()
            .filter_map(|name| {
                Some((
                    name,
                    var(name).filter(|v| !v.trim().is_empty())?.trim().to_string(),
                ))
            })
            .collect();
        HelperEnv {
            vars,
            manifest: OnceLock::new(),
        }
    }

    /// The process's own environment.
    pub fn from_process() -> HelperEnv {
        HelperEnv::from_env(|name| std::env::var(name).ok())
    }

    /// A variable of [`env`], when set and not blank.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// docker.cloudsmith.io and `CLOUDSMITH_REGISTRIES`.
    pub fn registries(&self) -> Result<Registries, ConfigError> {
        let extra = self.var(env::REGISTRIES).unwrap_or_default();
        Registries::with_default(extra.split(','))
            .map_err(|e| ConfigError::Usage(format!("{}: {e}", env::REGISTRIES)))
    }

    /// The manifest (`CLOUDSMITH_GENERATOR_MANIFEST` with the variables' overrides, or
    /// the variables alone) and the API it names. Errors are usage errors.
    pub fn manifest(&self) -> Result<(Value, Option<String>), ConfigError> {
        let read = self.manifest.get_or_init(|| self.read_manifest());
        read.clone().map_err(ConfigError::Usage)
    }

    fn read_manifest(&self) -> Result<(Value, Option<String>), String> {
        let mut manifest: Value = match self.var(env::MANIFEST) {
            Some(path) => {
                let text = crate::manifest::read_to_json(Path::new(path), None)
                    .map_err(|e| format!("{}: {e:#}", env::MANIFEST))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", env::MANIFEST))?
            }
            None => json!({}),
        };
        let no_spec = || format!("{}: the manifest has no spec object", env::MANIFEST);
        for (variable, field) in [
            (env::ORG, Field::OrgSlug),
            (env::SERVICE, Field::ServiceSlug),
            (env::API_HOST, Field::ApiHost),
        ] {
            if let Some(value) = self.var(variable) {
                if !spec::set(&mut manifest, field, Some(Value::String(value.into()))) {
                    return Err(no_spec());
                }
                if field == Field::ApiHost {
                    // The variable is the user's latest word on the API: it beats apiUrl.
                    spec::set(&mut manifest, Field::ApiUrl, None);
                }
            }
        }
        let view = GeneratorSpec::of(&manifest).ok_or_else(no_spec)?;
        let api = view.api().map(str::to_string);
        Ok((manifest, api))
    }

    /// What a `get` mints with, from the variables (the runtime they also configure is
    /// the host's to check).
    pub fn call(&self) -> Result<HelperCall, ConfigError> {
        let (mut manifest, _) = self.manifest()?;
        let view = GeneratorSpec::of(&manifest).unwrap_or_default();
        for (field, variable, value) in [
            (Field::OrgSlug, env::ORG, &view.org_slug),
            (Field::ServiceSlug, env::SERVICE, &view.service_slug),
        ] {
            if value.is_none() {
                return Err(ConfigError::Usage(format!(
                    "{variable} is not set (or {} with spec.{})",
                    env::MANIFEST,
                    field.name()
                )));
            }
        }
        let metadata_namespace = manifest
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let namespace = view
            .service_account_ref
            .as_ref()
            .and_then(|r| r.namespace.clone())
            .or(metadata_namespace)
            .unwrap_or_else(|| "default".to_string());
        let tokens = if self.var(env::OIDC_TOKEN).is_some() {
            TokenOrigin::Env(env::OIDC_TOKEN.into())
        } else if let Some(path) = self.var(env::OIDC_TOKEN_FILE) {
            TokenOrigin::File(path.into())
        } else if self.var(env::MANIFEST).is_some() {
            TokenOrigin::Kubernetes
        } else {
            return Err(ConfigError::NoTokenSource(format!(
                "no OIDC token: set {}, {} or {}",
                env::OIDC_TOKEN,
                env::OIDC_TOKEN_FILE,
                env::MANIFEST
            )));
        };
        if tokens != TokenOrigin::Kubernetes {
            // The generator requires a serviceAccountRef; a file or variable token ignores it.
            spec::default_account(&mut manifest, "default");
        }
        Ok(HelperCall {
            manifest: manifest.to_string(),
            namespace,
            tokens,
        })
    }
}

/// The server URL on stdin, trimmed (blank: [`MISSING_SERVER_URL`], as
/// `credentials.Get` answers).
pub fn server(input: &[u8]) -> Result<&str, ConfigError> {
    let usage = |message: &str| ConfigError::Usage(message.to_string());
    let server = std::str::from_utf8(input).map_err(|_| usage("the server URL on stdin is not UTF-8"))?;
    let server = server.trim();
    if server.is_empty() {
        return Err(usage(MISSING_SERVER_URL));
    }
    Ok(server)
}

/// Reports a failed action: the one-line reason on `stdout`, and `error: <reason>` on
/// `stderr`.
///
/// Docker's helper client reads stdout alone: docker-credential-helpers v0.9.13
/// `client/client.go` `Get` runs the helper with `cmd.Output()` (stderr goes to the
/// client's own stderr, `client/command.go` `createProgramCmdRedirectErr`) and returns
/// ``error getting credentials - err: <exit status>, out: `<stdout, trimmed>` ``. A
/// program that pulls without a terminal (skopeo, podman, buildah, a CI job, crane) logs
/// that error and nothing else, so the reason must be on stdout, as `credentials.Serve`
/// (`credentials/credentials.go`) writes every error: `fmt.Fprintln(os.Stdout, err)`.
/// The stderr line is the one every other command of ours prints, for a terminal.
/// `reason` is already one line without secrets (the caller's [`crate::secret::one_line`]).
pub fn report_failure(reason: &str, stdout: &mut impl std::io::Write, stderr: &mut impl std::io::Write) {
    // Nothing is left to tell if a stream is gone: the exit code still says it failed.
    let _ = writeln!(stdout, "{reason}").and_then(|()| stdout.flush());
    let _ = writeln!(stderr, "error: {reason}");
}

/// The protocol's "none here", which makes the client fall back to anonymous pulls.
pub fn not_found() -> Reply {
    Reply {
        stdout: NOT_FOUND.into(),
        exit: 1,
    }
}

/// `get`'s answer for `server`: user `token`, the access token as the secret (what the
/// official CLI's helper answers).
pub fn credentials(server: &str, token: &CachedToken) -> Reply {
    let answer = json!({
        "ServerURL": server,
        "Username": "token",
        "Secret": token.access_token.expose(),
    });
    Reply::ok(answer.to_string())
}

/// `get` answered without minting: for a server that is not ours, or from a cache
/// (`cached`, given the call). `None` when a full `get` must run: a miss, or any
/// error, which that path reports. This is the warm path of every pull, so it does only
/// what the answer needs.
pub fn warm_get(
    input: &[u8],
    config: &HelperEnv,
    cached: impl FnOnce(&HelperCall) -> Option<CachedToken>,
) -> Option<Reply> {
    let server = server(input).ok()?;
    if config.registries().ok()?.matching(server).is_none() {
        return Some(not_found());
    }
    // A component in place of the embedded generator may read tokens the host never
    // sees: its answers are not cached (the mint port's rule too).
    if config.var(env::COMPONENT).is_some() {
        return None;
    }
    let token = cached(&config.call().ok()?)?;
    Some(credentials(server, &token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn config(vars: &[(&str, &str)]) -> HelperEnv {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HelperEnv::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn token() -> CachedToken {
        CachedToken {
            access_token: Secret::new("a.b.c"),
            expiry: "1700000000".into(),
            exp: 1_700_000_000,
        }
    }

    const CONFIGURED: &[(&str, &str)] = &[
        (env::ORG, "acme"),
        (env::SERVICE, "puller"),
        (env::OIDC_TOKEN, "x"),
        (env::REGISTRIES, "registry.acme.com"),
    ];

    #[test]
    fn the_warm_path_answers_hits_and_other_registries_and_defers_the_rest() {
        let env = config(CONFIGURED);
        let hit = warm_get(b"registry.acme.com\n", &env, |_| Some(token())).unwrap();
        assert_eq!(
            hit.stdout,
            r#"{"Secret":"a.b.c","ServerURL":"registry.acme.com","Username":"token"}"#
        );
        assert_eq!(hit.exit, 0);
        assert_eq!(
            warm_get(b"ghcr.io", &env, |_| panic!("not ours: no lookup")),
            Some(not_found())
        );
        assert_eq!(
            warm_get(b"registry.acme.com", &env, |_| None),
            None,
            "a miss defers"
        );
        assert_eq!(warm_get(b"", &env, |_| Some(token())), None, "an error defers");
        let broken = config(&[(env::REGISTRIES, "bad host")]);
        assert_eq!(
            warm_get(b"docker.cloudsmith.io", &broken, |_| Some(token())),
            None
        );
        let mut vars = CONFIGURED.to_vec();
        vars.push((env::COMPONENT, "/some/plug.wasm"));
        assert_eq!(
            warm_get(b"registry.acme.com", &config(&vars), |_| Some(token())),
            None,
            "a component of the user's is never answered from the cache"
        );
    }

    #[test]
    fn the_call_carries_the_variables() {
        let call = config(&[
            (env::ORG, "o"),
            (env::SERVICE, "s"),
            (env::OIDC_TOKEN_FILE, "/t"),
            (env::API_HOST, "http://127.0.0.1:9"),
        ])
        .call()
        .unwrap();
        let spec = GeneratorSpec::of_json(&call.manifest).unwrap();
        assert_eq!(
            (spec.org_slug.as_deref(), spec.service_slug.as_deref()),
            (Some("o"), Some("s"))
        );
        assert_eq!(spec.api_host.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(spec.service_account_ref.unwrap().name.as_deref(), Some("default"));
        assert_eq!(call.tokens, TokenOrigin::File("/t".into()));
        assert_eq!(call.namespace, "default");
    }

    #[test]
    fn a_failure_is_reported_on_stdout_as_serve_does_and_on_stderr() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        report_failure(
            "Cloudsmith rejected the credentials (401): no",
            &mut out,
            &mut err,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Cloudsmith rejected the credentials (401): no\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "error: Cloudsmith rejected the credentials (401): no\n"
        );
        assert_eq!(server(b" \n").unwrap_err().to_string(), MISSING_SERVER_URL);
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = config(&[(env::SERVICE, "s"), (env::OIDC_TOKEN, "x")])
            .call()
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Usage(m) if m.starts_with("CLOUDSMITH_ORG is not set")),
            "{err:?}"
        );
        let err = config(&[(env::ORG, "o"), (env::SERVICE, "s")])
            .call()
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoTokenSource(_)), "{err:?}");
    }
}
