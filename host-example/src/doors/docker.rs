//! The Docker credential helper (`docker-credential-cloudsmith`, or
//! `cloudsmith-gen docker-credential-helper <action>`), speaking the protocol of
//! `docker/docker-credential-helpers`, which docker, skopeo, podman, buildah and crane
//! run for registries listed under `credHelpers` in Docker's `config.json`.
//!
//! - `get`: a server URL on stdin (`host[:port]`, with a scheme, or with a path); for a
//!   configured Cloudsmith registry, `{"ServerURL","Username":"token","Secret"}` on
//!   stdout; for any other, the sentinel `credentials not found in native keychain` on
//!   stdout and exit 1, so the client falls back to an anonymous pull.
//! - a failure: its one line on stdout, where Docker's helper client reads it, and
//!   `error: <line>` on stderr (`cloudsmith_gen_core::docker::report_failure`, written by `main`).
//! - `store` and `erase` read their input and do nothing (credentials are minted, not
//!   stored); `list` prints `{}`; `version` prints the version.
//!
//! Configuration comes from the environment, with the official Cloudsmith CLI's names:
//! `CLOUDSMITH_ORG`, `CLOUDSMITH_SERVICE_SLUG`, `CLOUDSMITH_API_HOST`, the OIDC token
//! in `CLOUDSMITH_OIDC_TOKEN` or the file `CLOUDSMITH_OIDC_TOKEN_FILE`, or a generator
//! manifest `CLOUDSMITH_GENERATOR_MANIFEST` (whose fields the variables override; with
//! neither token variable its `serviceAccountRef` is minted through the Kubernetes
//! TokenRequest API). Registries: `docker.cloudsmith.io` plus `CLOUDSMITH_REGISTRIES`
//! (comma-separated).
//!
//! The outbound policy comes from the environment, never from the manifest (as every
//! door's comes from its flags or environment): the default allowlist plus the
//! authority of `CLOUDSMITH_API_HOST`, plain http only when that variable is written
//! `http://HOST[:PORT]` (and never to api.cloudsmith.io); extra CA roots from
//! `SSL_CERT_FILE`. A manifest's `apiUrl` or `apiHost` is what the guest calls, and
//! is refused unless the environment allows it.

use cloudsmith_gen::secret::shown;
use cloudsmith_gen::NamespacePolicy;
use cloudsmith_gen_core::docker::{self, env, ConfigError, HelperCall, HelperEnv, TokenOrigin};

use super::{api_authority, Registries, Reply};
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, TokenChoice};
use crate::setup::{ComponentSource, RuntimeConfig};

pub use cloudsmith_gen_core::docker::{CRED_HELPER, HELPER_NAME, MAX_INPUT_BYTES};

/// The helper's configuration: its environment ([`HelperEnv`]) and the runtime that
/// environment configures.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    env: HelperEnv,
    /// Worked out once: a `get` that misses asks for it from several places, and each
    /// would read the CA file. Its errors are usage errors, kept as their one line.
    runtime: std::sync::OnceLock<Result<RuntimeConfig, String>>,
}

impl DockerConfig {
    /// The variables of [`env`], read with `var` (`std::env::var` in `main`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> DockerConfig {
        DockerConfig {
            env: HelperEnv::from_env(var),
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// docker.cloudsmith.io and `CLOUDSMITH_REGISTRIES`.
    pub fn registries(&self) -> Result<Registries, Failure> {
        self.env.registries().map_err(Failure::usage)
    }

    /// The runtime: the default, also allowing `CLOUDSMITH_API_HOST` (plain http only
    /// when written `http://`), with `SSL_CERT_FILE`'s roots besides the public ones.
    pub fn runtime(&self) -> Result<RuntimeConfig, Failure> {
        self.runtime
            .get_or_init(|| self.read_runtime().map_err(|f| f.message()))
            .clone()
            .map_err(Failure::usage)
    }

    fn read_runtime(&self) -> Result<RuntimeConfig, Failure> {
        let mut config = RuntimeConfig::default();
        // The operator's variable, not the manifest's apiUrl: a manifest is input, and
        // the policy is what stops input from sending the OIDC token elsewhere.
        if let Some(api) = self.env.var(env::API_HOST) {
            let usage = |why: String| Failure::usage(format!("{}: {why}", env::API_HOST));
            let (authority, plain) = api_authority(api).map_err(|e| usage(e.to_string()))?;
            config.policy = if plain {
                config
                    .policy
                    .allow_http_to(authority)
                    .map_err(|e| usage(e.to_string()))?
            } else {
                config.policy.allow(authority)
            };
        }
        if let Some(component) = self.env.var(env::COMPONENT) {
            config.component = Some(
                ComponentSource::parse(component)
                    .map_err(|why| Failure::usage(format!("{}: {why}", env::COMPONENT)))?,
            );
        }
        if let Some(ca) = self.env.var(env::SSL_CERT_FILE) {
            config.policy = config
                .policy
                .extra_ca_file(std::path::Path::new(ca))
                .map_err(|e| Failure::Usage(e.context(env::SSL_CERT_FILE)))?;
        }
        Ok(config)
    }

    /// The request `get` mints with, checked (the runtime too, whose errors would
    /// otherwise only show as a policy refusal).
    pub fn request(&self) -> Result<MintRequest, Failure> {
        self.runtime()?;
        let call = self.env.call().map_err(|e| match e {
            ConfigError::Usage(m) => Failure::usage(m),
            ConfigError::NoTokenSource(m) => Failure::no_token_source(m),
        })?;
        Ok(request(call))
    }
}

/// The mint port's request for a helper call.
fn request(call: HelperCall) -> MintRequest {
    MintRequest {
        manifest: call.manifest,
        namespace: call.namespace,
        tokens: match call.tokens {
            TokenOrigin::Env(var) => TokenChoice::Env(var),
            TokenOrigin::File(path) => TokenChoice::File(path),
            TokenOrigin::Kubernetes => TokenChoice::Kubernetes(None),
        },
        namespaces: NamespacePolicy::TargetOnly,
        deadline: None,
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
    let server = docker::server(input).map_err(Failure::usage)?;
    if config.registries()?.matching(server).is_none() {
        return Ok(docker::not_found());
    }
    let minted = mint.mint(config.request()?).await?;
    Ok(docker::credentials(server, minted.access_token()?))
}

/// `get` answered without an async runtime, the component or the network
/// ([`docker::warm_get`] over [`Mint::cached`]); `None`: run the full `get`.
pub fn get_cached(input: &[u8], mint: &impl Mint, config: &DockerConfig) -> Option<Reply> {
    docker::warm_get(input, &config.env, |call| {
        mint.cached(&request(call.clone()))?.token
    })
}

#[cfg(test)]
mod tests {
    //! The protocol of docker-credential-helpers (`credentials/credentials.go`,
    //! `HandleCommand`), row by row through the real `handle` with a fake mint.

    use super::*;
    use crate::mint::fake::FakeMint;
    use cloudsmith_gen_core::docker::NOT_FOUND;

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
            ("get", "", Err("no credentials server URL"), false),
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

    #[test]
    fn the_policy_comes_from_the_environment_never_from_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("generator.yaml");
        std::fs::write(
            &manifest,
            "kind: CloudsmithAccessToken\nspec:\n  apiUrl: http://127.0.0.1:9\n  orgSlug: acme\n  \
             serviceSlug: puller\n  serviceAccountRef:\n    name: default\n",
        )
        .unwrap();
        let manifest = manifest.to_str().unwrap();
        let decide = |vars: &[(&str, &str)], url: &str| {
            let policy = config(vars).runtime().map(|r| r.policy);
            let uri: http::Uri = url.parse().unwrap();
            policy.map(|p| p.decide(uri.scheme(), uri.authority()).is_ok())
        };
        // The manifest's apiUrl alone allows nothing (it did, plain http included).
        assert_eq!(
            decide(&[(env::MANIFEST, manifest)], "http://127.0.0.1:9/").ok(),
            Some(false)
        );
        // The variable does, over the manifest.
        let both = [(env::MANIFEST, manifest), (env::API_HOST, "http://127.0.0.1:9")];
        assert_eq!(decide(&both, "http://127.0.0.1:9/").ok(), Some(true));
        assert_eq!(decide(&both, "http://127.0.0.1:10/").ok(), Some(false));
        // An https API host allows https only.
        let https = [(env::API_HOST, "https://cloudsmith.internal:8443")];
        assert_eq!(
            decide(&https, "https://cloudsmith.internal:8443/").ok(),
            Some(true)
        );
        assert_eq!(
            decide(&https, "http://cloudsmith.internal:8443/").ok(),
            Some(false)
        );
        // Plain http to Cloudsmith itself is refused when the helper starts.
        let err = config(&[(env::API_HOST, "http://api.cloudsmith.io")])
            .runtime()
            .unwrap_err();
        assert!(err.message().contains("never allowed"), "{}", err.message());
        assert_eq!(err.exit_code(), 2);
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
        assert_eq!(get_cached(b"ghcr.io", &cold, &config), Some(docker::not_found()));
        assert!(cold.seen.lock().unwrap().is_empty(), "the warm path never mints");
    }
}
