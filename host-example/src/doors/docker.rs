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

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use clap::Parser as _;
use host_example::spec::{self, Field, GeneratorSpec};
use host_example::token_source::{EnvTokenSource, FileTokenSource, KubernetesTokenSource};
use host_example::{NamespacePolicy, TokenSource};
use serde_json::{json, Value};

use super::{env_identity, file_identity, kubernetes_identity, mint, print, shown, MintRequest, Registries};
use crate::commands::read_manifest;
use crate::{Failure, RuntimeArgs};

/// The name the binary answers to as a helper (`credHelpers` value `cloudsmith`).
pub const HELPER_NAME: &str = "docker-credential-cloudsmith";
/// The `credHelpers` value that selects this helper.
pub const CRED_HELPER: &str = "cloudsmith";
/// The protocol's "none here" answer.
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// A server URL or a `store` payload is small.
const MAX_INPUT_BYTES: u64 = 64 * 1024;

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

/// What the process should exit with after a successful protocol exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Exit 0.
    Done,
    /// The sentinel was printed: exit 1.
    NotFound,
}

/// Runs one helper action.
pub async fn run(action: &str, verbose: bool) -> Result<Answer, Failure> {
    match action {
        "get" => get(verbose).await,
        "store" | "erase" => {
            // Read the input so a client writing it never sees a broken pipe.
            read_stdin()?;
            Ok(Answer::Done)
        }
        "list" => print("{}").map(|()| Answer::Done),
        "version" => print(&format!(
            "{HELPER_NAME} (cloudsmith-gen) {}",
            env!("CARGO_PKG_VERSION")
        ))
        .map(|()| Answer::Done),
        other => Err(Failure::Usage(anyhow!(
            "unknown action {:?}: expected get, store, erase, list or version",
            shown(other)
        ))),
    }
}

/// The registries from the environment.
pub fn registries() -> Result<Registries, Failure> {
    let extra = std::env::var(env::REGISTRIES).unwrap_or_default();
    Registries::with_default(extra.split(','))
        .map_err(|m| Failure::Usage(anyhow!("{}: {m}", env::REGISTRIES)))
}

async fn get(verbose: bool) -> Result<Answer, Failure> {
    let input = read_stdin()?;
    let server = String::from_utf8(input)
        .map_err(|_| Failure::Usage(anyhow!("the server URL on stdin is not UTF-8")))?;
    let server = server.trim();
    if server.is_empty() {
        return Err(Failure::Usage(anyhow!("no server URL on stdin")));
    }
    let registries = registries()?;
    if registries.matching(server).is_none() {
        print(NOT_FOUND)?;
        return Ok(Answer::NotFound);
    }
    let config = Config::from_env()?;
    let cache = super::token_cache(true, None);
    let minted = mint(config.request, &config.runtime, cache.as_ref(), verbose).await?;
    let answer = json!({
        "ServerURL": server,
        "Username": "token",
        "Secret": minted.access_token()?.access_token.expose(),
    });
    print(&answer.to_string())?;
    Ok(Answer::Done)
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut input)
        .map_err(|e| Failure::Usage(anyhow!("reading stdin: {e}")))?;
    if input.len() as u64 > MAX_INPUT_BYTES {
        return Err(Failure::Usage(anyhow!(
            "stdin is larger than {MAX_INPUT_BYTES} bytes"
        )));
    }
    Ok(input)
}

/// The helper's configuration, read from the environment.
struct Config {
    request: MintRequest,
    runtime: RuntimeArgs,
}

/// `RuntimeArgs` with every default of `generate`'s flags, plus these.
#[derive(clap::Parser)]
struct Runtime {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

impl Config {
    fn from_env() -> Result<Config, Failure> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let usage = |m: String| Failure::Usage(anyhow!(m));
        let manifest_path = var(env::MANIFEST);
        let mut manifest: Value = match &manifest_path {
            Some(path) => {
                let text = read_manifest(&PathBuf::from(path), None)
                    .map_err(|e| Failure::Usage(e.context(env::MANIFEST)))?;
                serde_json::from_str(&text).map_err(|e| usage(format!("{}: {e}", env::MANIFEST)))?
            }
            None => json!({}),
        };
        let metadata_namespace = manifest
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        for (variable, field) in [
            (env::ORG, Field::OrgSlug),
            (env::SERVICE, Field::ServiceSlug),
            (env::API_HOST, Field::ApiHost),
        ] {
            if let Some(value) = var(variable) {
                if !spec::set(&mut manifest, field, Some(Value::String(value.trim().into()))) {
                    return Err(usage(format!(
                        "{}: the manifest has no spec object",
                        env::MANIFEST
                    )));
                }
                if field == Field::ApiHost {
                    // The variable is the user's latest word on the API: it beats apiUrl.
                    spec::set(&mut manifest, Field::ApiUrl, None);
                }
            }
        }
        let Some(view) = GeneratorSpec::of(&manifest) else {
            return Err(usage(format!(
                "{}: the manifest has no spec object",
                env::MANIFEST
            )));
        };
        for (field, variable, value) in [
            (Field::OrgSlug, env::ORG, &view.org_slug),
            (Field::ServiceSlug, env::SERVICE, &view.service_slug),
        ] {
            if value.is_none() {
                return Err(usage(format!(
                    "{variable} is not set (or {} with spec.{})",
                    env::MANIFEST,
                    field.name()
                )));
            }
        }
        let api = view.api().map(str::to_string);
        let namespace = view
            .service_account_ref
            .as_ref()
            .and_then(|r| r.namespace.clone())
            .or(metadata_namespace)
            .unwrap_or_else(|| "default".to_string());

        let (tokens, kubernetes): (Arc<dyn TokenSource>, bool) = if var(env::OIDC_TOKEN).is_some() {
            (Arc::new(EnvTokenSource::new(env::OIDC_TOKEN)), false)
        } else if let Some(path) = var(env::OIDC_TOKEN_FILE) {
            (Arc::new(FileTokenSource::new(path)), false)
        } else if manifest_path.is_some() {
            (Arc::new(KubernetesTokenSource::new(None)), true)
        } else {
            return Err(Failure::Call(host_example::Error::Generate(
                host_example::GenerateError::TokenSource(format!(
                    "no OIDC token: set {}, {} or {}",
                    env::OIDC_TOKEN,
                    env::OIDC_TOKEN_FILE,
                    env::MANIFEST
                )),
            )));
        };
        if !kubernetes {
            // The generator requires a serviceAccountRef; a file or variable token ignores it.
            spec::default_account(&mut manifest, "default");
        }
        let manifest = manifest.to_string();
        let identity = if kubernetes {
            kubernetes_identity(None, &manifest, &namespace)
        } else if var(env::OIDC_TOKEN).is_some() {
            env_identity(env::OIDC_TOKEN)
        } else {
            var(env::OIDC_TOKEN_FILE).and_then(|p| file_identity(&PathBuf::from(p)))
        };

        let mut flags = vec!["runtime".to_string()];
        if let Some(api) = &api {
            let (authority, plain) = api_authority(api).map_err(usage)?;
            flags.extend(["--allow-host".into(), authority]);
            if plain {
                flags.push("--allow-http".into());
            }
        }
        if let Some(ca) = var(env::SSL_CERT_FILE) {
            flags.extend(["--ca-file".into(), ca]);
        }
        let runtime = Runtime::try_parse_from(&flags)
            .map_err(|e| usage(format!("configuration: {}", e.kind())))?
            .runtime;
        Ok(Config {
            request: MintRequest {
                manifest,
                namespace,
                tokens,
                identity,
                namespaces: NamespacePolicy::TargetOnly,
            },
            runtime,
        })
    }
}

/// The `host:port` the policy must allow for an API host or URL, and whether it is plain
/// http (allowed only when the user wrote `http://`, as the generator requires).
fn api_authority(api: &str) -> Result<(String, bool), String> {
    let api = api.trim();
    let (plain, rest) = match api.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some(_) => {
            return Err(format!(
                "{}: {:?} is not an http(s) URL or a host",
                env::API_HOST,
                shown(api)
            ))
        }
        None => (false, api),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let parsed: host_example::Authority = authority
        .parse()
        .map_err(|e: String| format!("API host {:?}: {e}", shown(api)))?;
    let explicit_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()));
    let port = match (explicit_port, plain) {
        (true, _) => parsed.port(),
        (false, true) => 80,
        (false, false) => 443,
    };
    Ok((
        host_example::Authority::new(parsed.host(), port).to_string(),
        plain,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_authorities() {
        assert_eq!(
            api_authority("api.cloudsmith.io").unwrap(),
            ("api.cloudsmith.io:443".into(), false)
        );
        assert_eq!(
            api_authority("https://api.cloudsmith.io/v1/").unwrap(),
            ("api.cloudsmith.io:443".into(), false)
        );
        assert_eq!(
            api_authority("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1:8080".into(), true)
        );
        assert_eq!(
            api_authority("http://localhost").unwrap(),
            ("localhost:80".into(), true)
        );
        assert!(api_authority("ftp://x").is_err());
        assert!(api_authority("bad host").is_err());
    }
}
