//! The doors of `cloudsmith-gen` besides `generate`: the kubelet image credential
//! provider, the Docker credential helper, installing the helper, and the HTTP service
//! for ESO's Webhook generator (`serve`). Each reads its
//! protocol's input, asks [`mint`] for credentials, and writes its protocol's output.
//!
//! [`mint`] is the path every door shares: token cache first (a hit runs no Wasm and
//! makes no network call), else the generator through `commands::load`, then the cache
//! is filled.

pub mod docker;
pub mod install;
pub mod kubelet;
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use host_example::spec::GeneratorSpec;
use host_example::token_cache::{CacheKey, CachedToken, Lookup, TokenCache};
use host_example::{Credentials, NamespacePolicy, TokenSource};
use serde_json::Value;

use crate::commands::{finish, load, note};
use crate::{Failure, RuntimeArgs};

/// One request for credentials, as a door puts it.
pub struct MintRequest {
    /// The generator manifest (JSON).
    pub manifest: String,
    /// The target namespace.
    pub namespace: String,
    /// Where the OIDC token comes from.
    pub tokens: Arc<dyn TokenSource>,
    /// The token source's identity for the cache key; `None` disables caching for
    /// this request (the identity could not be established without a secret or a
    /// network call).
    pub identity: Option<String>,
    /// Whether a `serviceAccountRef.namespace` other than the target is honoured.
    pub namespaces: NamespacePolicy,
}

/// What [`mint`] returns: the credentials and the access token inside them.
pub struct Minted {
    /// ESO's outputs.
    pub credentials: Credentials,
    /// The access token and its expiry, when `auth` is `token:<access token>` as
    /// the Cloudsmith generator writes it. Another generator (`--component`) may
    /// write other outputs: `generate` prints them as they are; the doors that hand
    /// out the access token itself need this.
    pub token: Option<CachedToken>,
}

impl Minted {
    /// The access token, for the doors that hand it out.
    pub fn access_token(&self) -> Result<&CachedToken, Failure> {
        self.token.as_ref().ok_or_else(|| {
            Failure::Other(anyhow::anyhow!(
                "the generator's auth is not base64 of token:<access token>"
            ))
        })
    }
}

/// Credentials for `request`: from `cache` when it holds a usable token, else from the
/// generator (which then fills the cache).
pub async fn mint(
    request: MintRequest,
    runtime: &RuntimeArgs,
    cache: Option<&TokenCache>,
    verbose: bool,
) -> Result<Minted, Failure> {
    let key = cache.and_then(|_| cache_key(&request.manifest, request.identity.as_deref()?));
    if let (Some(cache), Some(key)) = (cache, &key) {
        match cache.get(key) {
            Lookup::Hit(token) => {
                if verbose {
                    note(&format!(
                        "token cache: hit {} (expiry {})",
                        cache.entry_path(key).display(),
                        token.expiry
                    ));
                }
                return Ok(Minted {
                    credentials: token.credentials(),
                    token: Some(token),
                });
            }
            Lookup::Miss if verbose => note("token cache: miss"),
            Lookup::Unusable(why) if verbose => note(&format!("token cache: entry ignored ({why})")),
            _ => {}
        }
    } else if verbose {
        note(match cache {
            None => "token cache: off",
            Some(_) => "token cache: not used (no identity for this token source)",
        });
    }
    let generator = load(runtime, request.tokens, request.namespaces, verbose)?;
    let traced = generator
        .generate_traced(&request.manifest, &request.namespace)
        .await;
    let credentials = finish(traced, verbose)?;
    let token = CachedToken::from_credentials(&credentials);
    if let (Some(cache), Some(key), Some(token)) = (cache, &key, &token) {
        // A cache that cannot be written costs the next call an exchange, nothing more.
        match cache.put(key, token) {
            Ok(path) if verbose => note(&format!("token cache: stored {}", path.display())),
            Err(e) if verbose => note(&format!("token cache: not stored ({e:#})")),
            _ => {}
        }
    }
    Ok(Minted { credentials, token })
}

/// The cache key for a manifest and identity: the API fields as written, org and
/// service. `None` when the manifest lacks them (the generator then reports the error).
fn cache_key(manifest: &str, identity: &str) -> Option<CacheKey> {
    let spec = GeneratorSpec::of_json(manifest)?;
    Some(CacheKey::new(
        spec.api_url.as_deref().unwrap_or(""),
        spec.api_host.as_deref().unwrap_or(""),
        spec.org_slug.as_deref()?,
        spec.service_slug.as_deref()?,
        identity,
    ))
}

/// The token cache a door uses: `None` when turned off by flag or environment, or when
/// there is no cache directory.
pub fn token_cache(enabled: bool, dir: Option<&Path>) -> Option<TokenCache> {
    if !enabled || TokenCache::disabled_by_env() {
        return None;
    }
    dir.map(Path::to_path_buf)
        .or_else(TokenCache::default_dir)
        .map(TokenCache::new)
}

/// The identity of an OIDC token for the cache key: its issuer, subject and audiences
/// (never the token). `None` when it is not a JWT with those claims.
pub fn token_identity(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    let sub = claims.get("sub")?.as_str()?;
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => a.clone(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    Some(format!("iss={iss}|sub={sub}|aud={aud}"))
}

/// The identity of a token file: its path and the identity of the token it holds now
/// (read locally, so a rotated token for the same account keys the same entry, and a
/// file now holding another account's token keys another).
pub fn file_identity(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 64 * 1024 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Some(format!(
        "file {}|{}",
        path.display(),
        token_identity(text.trim())?
    ))
}

/// The identity of a token in an environment variable.
pub fn env_identity(var: &str) -> Option<String> {
    let value = std::env::var(var).ok()?;
    Some(format!("env {var}|{}", token_identity(value.trim())?))
}

/// The identity of the Kubernetes TokenRequest source: the cluster and user of the
/// kubeconfig's current context (or the in-cluster API), and the service account and
/// audiences the manifest names in `namespace`. Read from local files only.
pub fn kubernetes_identity(kubeconfig: Option<&PathBuf>, manifest: &str, namespace: &str) -> Option<String> {
    use kube::config::Kubeconfig;
    let account = GeneratorSpec::of_json(manifest)?.service_account_ref?;
    let account = serde_json::to_string(&account).ok()?;
    let cluster = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).ok(),
        None => Kubeconfig::read().ok(),
    };
    let cluster = match cluster {
        Some(config) => {
            let name = config.current_context.clone()?;
            let context = config.contexts.iter().find(|c| c.name == name)?.context.clone()?;
            let server = config
                .clusters
                .iter()
                .find(|c| c.name == context.cluster)
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())?;
            format!(
                "kubeconfig server={server}|user={}",
                context.user.unwrap_or_default()
            )
        }
        None if kubeconfig.is_none() => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            format!("in-cluster {host}")
        }
        None => return None,
    };
    Some(format!(
        "kubernetes {cluster}|namespace={namespace}|account={account}"
    ))
}

/// Cloudsmith's registry, always one of ours.
pub const DEFAULT_REGISTRY: &str = host_example::output::DEFAULT_REGISTRY;

/// The registries the doors answer for, matched on host (case-insensitive) and port
/// (443, the registry default, is the same as no port).
#[derive(Debug, Clone)]
pub struct Registries {
    entries: Vec<(String, Option<u16>, String)>,
}

impl Registries {
    /// [`DEFAULT_REGISTRY`] plus `extra` (each `host[:port]`, a scheme or path tolerated).
    pub fn with_default<'a>(extra: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for raw in std::iter::once(DEFAULT_REGISTRY).chain(extra) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let (host, port) =
                host_port(raw).ok_or_else(|| format!("registry {raw:?} is not HOST[:PORT]"))?;
            let shown = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            entries.push((host, port, shown));
        }
        Ok(Registries { entries })
    }

    /// The registry (as `host[:port]`) that `server` (a server URL or image registry in
    /// any form a client sends) names, if it is one of ours.
    pub fn matching(&self, server: &str) -> Option<&str> {
        let (host, port) = host_port(server)?;
        self.entries
            .iter()
            .find(|(h, p, _)| *h == host && *p == port)
            .map(|(_, _, shown)| shown.as_str())
    }

    /// Every registry, as `host[:port]`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, _, shown)| shown.as_str())
    }
}

/// The host (lowercased) and port of `host[:port]`, `scheme://host[:port][/path]` or
/// `host[:port]/path`; port 443 counts as none. `None` when there is no sensible host.
pub fn host_port(server: &str) -> Option<(String, Option<u16>)> {
    let s = server.trim();
    let s = s
        .split_once("://")
        .map(|(scheme, rest)| {
            if scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                rest
            } else {
                s
            }
        })
        .unwrap_or(s);
    let authority = s.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return None;
    }
    let parsed: host_example::Authority = authority.parse().ok()?;
    // Authority parsing defaults the port to 443, which is also the registry default.
    let port = (parsed.port() != 443).then_some(parsed.port());
    Some((parsed.host().to_string(), port))
}

/// A Go `time.Duration` string for whole seconds, as `Duration.String()` prints it
/// (`0s`, `45s`, `5m0s`, `1h25m0s`): what the kubelet's `metav1.Duration` parses.
pub fn go_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// A value from untrusted input, made safe to quote in a one-line error: anything shaped
/// like a JWT redacted, control characters removed, cut to 80 characters.
pub fn shown(value: &str) -> String {
    let clean: String = host_example::secret::redact(value, &[])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > 80 {
        format!("{}…", clean.chars().take(80).collect::<String>())
    } else {
        clean
    }
}

/// Writes a door's answer (one line) to stdout.
pub fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("writing to stdout")))
}

/// The token source identity of `generate`'s flags; `None` (no caching) when a
/// component or WASI grants are given, because a composed component's plug reads a
/// token this host never sees.
pub fn generate_identity(args: &crate::GenerateArgs, manifest: &str) -> Option<String> {
    let r = &args.runtime;
    if r.component.is_some() || !r.wasi_dirs.is_empty() || !r.wasi_env.is_empty() {
        return None;
    }
    let t = &args.tokens;
    if let Some(path) = &t.oidc_token_file {
        file_identity(path)
    } else if let Some(var) = &t.oidc_token_env {
        env_identity(var)
    } else {
        kubernetes_identity(t.kubeconfig.as_ref(), manifest, &args.namespace)
            .map(|id| format!("{id}|cross-namespace={}", t.allow_cross_namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_in_every_form_match_on_host_and_port() {
        let r = Registries::with_default(["registry.acme.com", "127.0.0.1:5000"]).unwrap();
        for (server, expected) in [
            ("docker.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("DOCKER.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("https://docker.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("https://docker.cloudsmith.io/v1/", Some("docker.cloudsmith.io")),
            ("docker.cloudsmith.io:443", Some("docker.cloudsmith.io")),
            ("docker.cloudsmith.io/org/repo", Some("docker.cloudsmith.io")),
            ("registry.acme.com", Some("registry.acme.com")),
            ("127.0.0.1:5000", Some("127.0.0.1:5000")),
            ("http://127.0.0.1:5000/v2/", Some("127.0.0.1:5000")),
            ("127.0.0.1", None),
            ("127.0.0.1:5001", None),
            ("docker.cloudsmith.io:5000", None),
            ("index.docker.io", None),
            ("https://index.docker.io/v1/", None),
            ("evil.com/docker.cloudsmith.io", None),
            ("docker.cloudsmith.io.evil.com", None),
            ("user@docker.cloudsmith.io", None),
            ("", None),
        ] {
            assert_eq!(r.matching(server), expected, "{server:?}");
        }
    }

    #[test]
    fn a_bad_registry_is_named() {
        let err = Registries::with_default(["bad host"]).unwrap_err();
        assert_eq!(err, "registry \"bad host\" is not HOST[:PORT]");
    }

    #[test]
    fn go_durations() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m0s"),
            (300, "5m0s"),
            (3599, "59m59s"),
            (3600, "1h0m0s"),
            (5100, "1h25m0s"),
            (90000, "25h0m0s"),
        ] {
            assert_eq!(go_duration(secs), text);
        }
    }

    #[test]
    fn token_identity_is_claims_never_the_token() {
        let token = testkit::oidc::token(
            "system:serviceaccount:apps:puller",
            &["https://api.cloudsmith.io"],
        );
        let id = token_identity(&token).unwrap();
        assert_eq!(
            id,
            "iss=https://kubernetes.default.svc.cluster.local|sub=system:serviceaccount:apps:puller|aud=https://api.cloudsmith.io"
        );
        assert!(!id.contains(token.split('.').nth(2).unwrap()));
        assert_eq!(token_identity("not-a-jwt"), None);
    }
}
