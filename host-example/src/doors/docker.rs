//! The Docker credential helper (`docker-credential-cloudsmith`, or
//! `cloudsmith-gen docker-credential-helper <action>`), speaking the protocol of
//! `docker/docker-credential-helpers`, which docker, skopeo, podman, buildah and crane
//! run for registries listed under `credHelpers` in Docker's `config.json`.
//!
//! - `get`: a server URL on stdin (`host[:port]`, with a scheme, or with a path); for a
//!   configured Cloudsmith registry, `{"ServerURL","Username":"token","Secret"}` on
//!   stdout; for any other, the sentinel `credentials not found in native keychain` on
//!   stdout and exit 1, so the client falls back to an anonymous pull.
//! - `store` and `erase` read their input and do nothing (credentials are minted, not
//!   stored); `list` prints `{}`; `version` prints the version.
//!
//! Configuration comes from the environment, with the official Cloudsmith CLI's names:
//! `CLOUDSMITH_ORG`, `CLOUDSMITH_SERVICE_SLUG`, `CLOUDSMITH_API_HOST`, the OIDC token
//! in `CLOUDSMITH_OIDC_TOKEN` or the file `CLOUDSMITH_OIDC_TOKEN_FILE`, or a generator
//! manifest `CLOUDSMITH_GENERATOR_MANIFEST` (whose fields the variables override; with
//! neither token variable its `serviceAccountRef` is minted through the Kubernetes
//! TokenRequest API). Registries: `docker.cloudsmith.io` plus `CLOUDSMITH_REGISTRIES`
//! (comma-separated). The outbound policy allows the configured API host only; extra CA
//! roots come from `SSL_CERT_FILE`.

use host_example::secret::shown;
use host_example::spec::{self, Field, GeneratorSpec};
use host_example::NamespacePolicy;
use serde_json::{json, Value};

use super::{api_authority, Registries, Reply};
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, Minted, TokenChoice};
use crate::setup::{self, RuntimeConfig};

/// The name the binary answers to as a helper (`credHelpers` value `cloudsmith`).
pub const HELPER_NAME: &str = "docker-credential-cloudsmith";
/// The `credHelpers` value that selects this helper.
pub const CRED_HELPER: &str = "cloudsmith";
/// The protocol's "none here" answer.
pub const NOT_FOUND: &str = "credentials not found in native keychain";
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
}

/// The helper's configuration: the variables of [`env`] as they were set (empty counts
/// as unset). Captured whole and checked only by the actions that use them, so that a
/// misconfigured `get` does not break `list` or `version`.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    vars: std::collections::BTreeMap<&'static str, String>,
    /// [`DockerConfig::manifest`] and [`DockerConfig::runtime`], each worked out once:
    /// a `get` that misses asks for both from several places (the warm path, `main`,
    /// the door), and each reads the manifest file (and the CA file). Their errors are
    /// all usage errors, kept as their one-line message.
    manifest: std::sync::OnceLock<Result<(Value, Option<String>), String>>,
    runtime: std::sync::OnceLock<Result<RuntimeConfig, String>>,
}

impl DockerConfig {
    /// The variables of [`env`], read with `var` (`std::env::var` in `main`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> DockerConfig {
        let vars = [
            env::ORG,
            env::SERVICE,
            env::API_HOST,
            env::OIDC_TOKEN,
            env::OIDC_TOKEN_FILE,
            env::MANIFEST,
            env::REGISTRIES,
            env::SSL_CERT_FILE,
        ]
        .into_iter()
        .filter_map(|name| {
            Some((
                name,
                var(name).filter(|v| !v.trim().is_empty())?.trim().to_string(),
            ))
        })
        .collect();
        DockerConfig {
            vars,
            ..DockerConfig::default()
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// docker.cloudsmith.io and `CLOUDSMITH_REGISTRIES`.
    pub fn registries(&self) -> Result<Registries, Failure> {
        let extra = self.var(env::REGISTRIES).unwrap_or_default();
        Registries::with_default(extra.split(','))
            .map_err(|m| Failure::usage(format!("{}: {m}", env::REGISTRIES)))
    }

    /// The runtime: the default, allowing the configured API host only (plain http only
    /// when written `http://`), with `SSL_CERT_FILE`'s roots besides the public ones.
    pub fn runtime(&self) -> Result<RuntimeConfig, Failure> {
        self.runtime
            .get_or_init(|| self.read_runtime().map_err(|f| f.message()))
            .clone()
            .map_err(Failure::usage)
    }

    fn read_runtime(&self) -> Result<RuntimeConfig, Failure> {
        let mut config = RuntimeConfig::default();
        if let Some(api) = self.manifest()?.1 {
            let (authority, plain) =
                api_authority(&api).map_err(|why| Failure::usage(format!("{}: {why}", env::API_HOST)))?;
            config.policy = config.policy.allow(authority).allow_http(plain);
        }
        if let Some(ca) = self.var(env::SSL_CERT_FILE) {
            config.policy = config
                .policy
                .extra_ca_file(std::path::Path::new(ca))
                .map_err(|e| Failure::Usage(e.context(env::SSL_CERT_FILE)))?;
        }
        Ok(config)
    }

    /// The manifest (`CLOUDSMITH_GENERATOR_MANIFEST` with the variables' overrides, or
    /// the variables alone) and the API it names.
    fn manifest(&self) -> Result<(Value, Option<String>), Failure> {
        self.manifest
            .get_or_init(|| self.read_manifest().map_err(|f| f.message()))
            .clone()
            .map_err(Failure::usage)
    }

    fn read_manifest(&self) -> Result<(Value, Option<String>), Failure> {
        let mut manifest: Value = match self.var(env::MANIFEST) {
            Some(path) => {
                let text = setup::read_manifest(std::path::Path::new(path), None).map_err(|f| match f {
                    Failure::Usage(e) => Failure::Usage(e.context(env::MANIFEST)),
                    other => other,
                })?;
                serde_json::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", env::MANIFEST)))?
            }
            None => json!({}),
        };
        let no_spec = || Failure::usage(format!("{}: the manifest has no spec object", env::MANIFEST));
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

    /// The request `get` mints with, checked (the runtime too, whose errors would
    /// otherwise only show as a policy refusal).
    pub fn request(&self) -> Result<MintRequest, Failure> {
        self.runtime()?;
        self.mint_request()
    }

    /// [`DockerConfig::request`] without checking the runtime (its CA file): all a cache
    /// lookup needs.
    fn mint_request(&self) -> Result<MintRequest, Failure> {
        let (mut manifest, _) = self.manifest()?;
        let view = GeneratorSpec::of(&manifest).unwrap_or_default();
        for (field, variable, value) in [
            (Field::OrgSlug, env::ORG, &view.org_slug),
            (Field::ServiceSlug, env::SERVICE, &view.service_slug),
        ] {
            if value.is_none() {
                return Err(Failure::usage(format!(
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
            TokenChoice::Env(env::OIDC_TOKEN.into())
        } else if let Some(path) = self.var(env::OIDC_TOKEN_FILE) {
            TokenChoice::File(path.into())
        } else if self.var(env::MANIFEST).is_some() {
            TokenChoice::Kubernetes(None)
        } else {
            return Err(Failure::no_token_source(format!(
                "no OIDC token: set {}, {} or {}",
                env::OIDC_TOKEN,
                env::OIDC_TOKEN_FILE,
                env::MANIFEST
            )));
        };
        if !matches!(tokens, TokenChoice::Kubernetes(_)) {
            // The generator requires a serviceAccountRef; a file or variable token ignores it.
            spec::default_account(&mut manifest, "default");
        }
        Ok(MintRequest {
            manifest: manifest.to_string(),
            namespace,
            tokens,
            namespaces: NamespacePolicy::TargetOnly,
            deadline: None,
        })
    }
}

/// Runs one helper action on `input` (the bytes of stdin).
pub async fn handle(
    action: &str,
    input: &[u8],
    mint: &impl Mint,
    config: &DockerConfig,
) -> Result<Reply, Failure> {
    match action {
        "get" => get(input, mint, config).await,
        // Credentials are minted, not stored: nothing to store or erase. main has read
        // the input, so a client writing it never sees a broken pipe.
        "store" | "erase" => Ok(Reply::ok("")),
        "list" => Ok(Reply::ok("{}")),
        "version" => Ok(Reply::ok(format!(
            "{HELPER_NAME} (cloudsmith-gen) {}",
            env!("CARGO_PKG_VERSION")
        ))),
        other => Err(Failure::usage(format!(
            "unknown action {:?}: expected get, store, erase, list or version",
            shown(other)
        ))),
    }
}

async fn get(input: &[u8], mint: &impl Mint, config: &DockerConfig) -> Result<Reply, Failure> {
    let server = server(input)?;
    if config.registries()?.matching(server).is_none() {
        return Ok(not_found());
    }
    let minted = mint.mint(config.request()?).await?;
    answer(server, &minted)
}

/// `get` answered without an async runtime, the component or the network: for a server
/// that is not ours, or from the token cache ([`Mint::cached`]). `None` when the full
/// `get` must run: a miss, or any error, which that path reports. This is the warm
/// path of every pull, so it does only what the answer needs.
pub fn get_cached(input: &[u8], mint: &impl Mint, config: &DockerConfig) -> Option<Reply> {
    let server = server(input).ok()?;
    if config.registries().ok()?.matching(server).is_none() {
        return Some(not_found());
    }
    let minted = mint.cached(&config.mint_request().ok()?)?;
    answer(server, &minted).ok()
}

/// The server URL on stdin.
fn server(input: &[u8]) -> Result<&str, Failure> {
    let server =
        std::str::from_utf8(input).map_err(|_| Failure::usage("the server URL on stdin is not UTF-8"))?;
    let server = server.trim();
    if server.is_empty() {
        return Err(Failure::usage("no server URL on stdin"));
    }
    Ok(server)
}

/// The protocol's "none here", which makes the client fall back to anonymous pulls.
fn not_found() -> Reply {
    Reply {
        stdout: NOT_FOUND.into(),
        exit: 1,
    }
}

fn answer(server: &str, minted: &Minted) -> Result<Reply, Failure> {
    let answer = json!({
        "ServerURL": server,
        "Username": "token",
        "Secret": minted.access_token()?.access_token.expose(),
    });
    Ok(Reply::ok(answer.to_string()))
}

#[cfg(test)]
mod tests {
    //! The protocol of docker-credential-helpers (`credentials/credentials.go`,
    //! `HandleCommand`), row by row through the real `handle` with a fake mint.

    use super::*;
    use crate::mint::fake::FakeMint;

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl";

    fn config(vars: &[(&str, &str)]) -> DockerConfig {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DockerConfig::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    const CONFIGURED: &[(&str, &str)] = &[
        (env::ORG, "acme"),
        (env::SERVICE, "puller"),
        (env::OIDC_TOKEN, "x"),
        (env::REGISTRIES, "registry.acme.com, 127.0.0.1:5000"),
    ];

    #[tokio::test]
    async fn golden_rows() {
        let ok = |server: &str| {
            Ok(Reply::ok(format!(
                r#"{{"Secret":"{TOKEN}","ServerURL":"{server}","Username":"token"}}"#
            )))
        };
        let not_found = || {
            Ok(Reply {
                stdout: NOT_FOUND.into(),
                exit: 1,
            })
        };
        let rows: Vec<(&str, &str, Result<Reply, &str>, bool)> = vec![
            ("get", "docker.cloudsmith.io\n", ok("docker.cloudsmith.io"), true),
            (
                "get",
                "https://docker.cloudsmith.io/v1/",
                ok("https://docker.cloudsmith.io/v1/"),
                true,
            ),
            ("get", "registry.acme.com", ok("registry.acme.com"), true),
            ("get", "127.0.0.1:5000", ok("127.0.0.1:5000"), true),
            ("get", "index.docker.io", not_found(), false),
            ("get", "127.0.0.1:5001", not_found(), false),
            ("get", "", Err("no server URL on stdin"), false),
            ("get", "\u{fffd}", not_found(), false),
            ("list", "", Ok(Reply::ok("{}")), false),
            (
                "store",
                r#"{"ServerURL":"x","Username":"u","Secret":"s"}"#,
                Ok(Reply::ok("")),
                false,
            ),
            ("erase", "docker.cloudsmith.io", Ok(Reply::ok("")), false),
            (
                "version",
                "",
                Ok(Reply::ok(format!(
                    "{HELPER_NAME} (cloudsmith-gen) {}",
                    env!("CARGO_PKG_VERSION")
                ))),
                false,
            ),
            ("bogus", "", Err("unknown action \"bogus\""), false),
        ];
        let mut failures = Vec::new();
        for (action, input, want, mints) in rows {
            let mint = FakeMint::new(TOKEN, 600);
            let got = handle(action, input.as_bytes(), &mint, &config(CONFIGURED)).await;
            let matches = match (&got, &want) {
                (Ok(got), Ok(want)) => got == want,
                (Err(got), Err(needle)) => got.message().contains(needle) && got.exit_code() == 2,
                _ => false,
            };
            let minted = !mint.seen.lock().unwrap().is_empty();
            if !matches || minted != mints {
                failures.push(format!(
                    "{action} {input:?}: got {got:?}, want {want:?}, minted {minted}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn get_names_what_is_missing_but_other_actions_need_nothing() {
        let get = |vars: &'static [(&'static str, &'static str)]| async move {
            handle(
                "get",
                b"docker.cloudsmith.io",
                &FakeMint::new(TOKEN, 1),
                &config(vars),
            )
            .await
            .unwrap_err()
        };
        let err = get(&[(env::SERVICE, "s"), (env::OIDC_TOKEN, "x")]).await;
        assert!(
            err.message().starts_with("CLOUDSMITH_ORG is not set"),
            "{}",
            err.message()
        );
        let err = get(&[(env::ORG, "o"), (env::SERVICE, "s")]).await;
        assert_eq!(err.exit_code(), 3, "{}", err.message());
        let err = get(&[
            (env::ORG, "o"),
            (env::SERVICE, "s"),
            (env::OIDC_TOKEN, "x"),
            (env::API_HOST, "ftp://h"),
        ])
        .await;
        assert!(
            err.message().contains("is not an http(s) URL"),
            "{}",
            err.message()
        );
        let broken = config(&[(env::REGISTRIES, "bad host")]);
        let list = handle("list", b"", &FakeMint::new(TOKEN, 1), &broken)
            .await
            .unwrap();
        assert_eq!(list, Reply::ok("{}"));
        let err = handle("get", b"x", &FakeMint::new(TOKEN, 1), &broken)
            .await
            .unwrap_err();
        assert!(
            err.message()
                .starts_with("CLOUDSMITH_REGISTRIES: registry \"bad host\""),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn the_warm_path_answers_as_get_does_or_defers() {
        let config = config(CONFIGURED);
        let mut warm = FakeMint::new(TOKEN, 600);
        warm.warm = true;
        let full = handle("get", b"registry.acme.com", &warm, &config).await.unwrap();
        assert_eq!(get_cached(b"registry.acme.com", &warm, &config), Some(full));
        let cold = FakeMint::new(TOKEN, 600);
        assert_eq!(
            get_cached(b"registry.acme.com", &cold, &config),
            None,
            "a miss defers"
        );
        assert_eq!(
            get_cached(b"", &warm, &config),
            None,
            "an error defers, for get to report"
        );
        assert_eq!(get_cached(b"ghcr.io", &cold, &config), Some(not_found()));
        assert!(cold.seen.lock().unwrap().is_empty(), "the warm path never mints");
    }

    #[test]
    fn the_request_carries_the_variables() {
        let request = config(&[
            (env::ORG, "o"),
            (env::SERVICE, "s"),
            (env::OIDC_TOKEN_FILE, "/t"),
            (env::API_HOST, "http://127.0.0.1:9"),
        ])
        .request()
        .unwrap();
        let spec = GeneratorSpec::of_json(&request.manifest).unwrap();
        assert_eq!(
            (spec.org_slug.as_deref(), spec.service_slug.as_deref()),
            (Some("o"), Some("s"))
        );
        assert_eq!(spec.api_host.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(spec.service_account_ref.unwrap().name.as_deref(), Some("default"));
        assert!(matches!(request.tokens, TokenChoice::File(ref p) if p.as_os_str() == "/t"));
    }
}
