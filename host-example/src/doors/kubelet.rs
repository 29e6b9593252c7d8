//! `cloudsmith-gen kubelet-credential-provider`: a kubelet image credential provider
//! (exec plugin, `credentialprovider.kubelet.k8s.io/v1`).
//!
//! The kubelet writes a `CredentialProviderRequest` on stdin and reads a
//! `CredentialProviderResponse` from stdout. With KEP-4412 (beta, on by default since
//! Kubernetes 1.34) the request carries the pod's service account token for the
//! audience in the provider config's `tokenAttributes`: exactly the token the
//! generator exchanges, so the manifest's `serviceAccountRef` is then not needed.
//!
//! # Cache key type
//!
//! `Registry`, whatever the token source: a Cloudsmith access token is valid for every
//! image on the registry (its scope is the Cloudsmith service, not the image), so `Image`
//! would only multiply exchanges. With a service account token the kubelet adds the
//! account (`cacheType: ServiceAccount`) or the token (`cacheType: Token`) to its cache
//! key on top of this, so one pod's credentials are never served to another account.
//!
//! # Cache duration
//!
//! The access token's `exp` minus the token cache's margin (5 minutes), so the kubelet
//! never hands out a token about to expire; `0s` (do not cache) when less is left. An
//! image on a registry that is not ours gets an empty `auth` map and `0s`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;

use host_example::token_cache::{now_unix, TokenCache, DEFAULT_MARGIN};
use host_example::token_source::StaticTokenSource;
use host_example::{NamespacePolicy, Secret, TokenSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    env_identity, file_identity, go_duration, kubernetes_identity, mint, token_identity, MintRequest,
    Registries,
};
use crate::commands::read_manifest;
use crate::{Failure, KubeletArgs};

/// The API version of the requests this provider answers (and of its responses).
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
/// The request's kind.
pub const REQUEST_KIND: &str = "CredentialProviderRequest";
/// The response's kind.
pub const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// A request is a few KiB (an image name and a token); refuse to buffer more.
const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// A `CredentialProviderRequest`, checked.
#[derive(Debug)]
pub struct ProviderRequest {
    /// The image being pulled.
    pub image: String,
    /// The pod's service account token (KEP-4412), when the provider config asks for one.
    pub service_account_token: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    api_version: Option<String>,
    kind: Option<String>,
    image: Option<String>,
    service_account_token: Option<String>,
}

/// Parses and checks a request; the error is one line and never holds the token.
pub fn parse_request(bytes: &[u8]) -> Result<ProviderRequest, String> {
    let raw: RawRequest = serde_json::from_slice(bytes).map_err(|e| {
        // serde's message quotes no input, only positions and expectations.
        format!("CredentialProviderRequest on stdin is not valid JSON: {e}")
    })?;
    match raw.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "CredentialProviderRequest apiVersion {:?} is not {API_VERSION}",
                crate::doors::shown(other)
            ))
        }
        None => {
            return Err(format!(
                "CredentialProviderRequest has no apiVersion (expected {API_VERSION})"
            ))
        }
    }
    match raw.kind.as_deref() {
        Some(REQUEST_KIND) => {}
        Some(other) => {
            return Err(format!(
                "kind {:?} is not {REQUEST_KIND}",
                crate::doors::shown(other)
            ))
        }
        None => return Err(format!("request has no kind (expected {REQUEST_KIND})")),
    }
    let image = raw.image.map(|i| i.trim().to_string()).unwrap_or_default();
    if image.is_empty() {
        return Err("CredentialProviderRequest has no image".into());
    }
    Ok(ProviderRequest {
        image,
        service_account_token: raw
            .service_account_token
            .filter(|t| !t.trim().is_empty())
            .map(|t| Secret::new(t.trim())),
    })
}

/// The registry part of an image reference (`host[:port]`), when it has one; an image
/// without one (`nginx`, `library/nginx`) is on Docker Hub, never ours.
pub fn image_registry(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    // Go's encoding of the type: TypeMeta (kind, apiVersion) first.
    kind: &'static str,
    api_version: &'static str,
    cache_key_type: &'static str,
    cache_duration: String,
    auth: BTreeMap<&'a str, AuthConfig<'a>>,
}

#[derive(Serialize)]
struct AuthConfig<'a> {
    username: &'static str,
    password: &'a str,
}

/// The response: credentials for `registry` (the key of the `auth` map) when given, an
/// empty map otherwise; `cache_seconds` as a Go duration.
pub fn response(credentials: Option<(&str, &Secret)>, cache_seconds: u64) -> String {
    let auth = credentials
        .into_iter()
        .map(|(registry, token)| {
            (
                registry,
                AuthConfig {
                    username: "token",
                    password: token.expose(),
                },
            )
        })
        .collect();
    let response = Response {
        kind: RESPONSE_KIND,
        api_version: API_VERSION,
        cache_key_type: "Registry",
        cache_duration: go_duration(cache_seconds),
        auth,
    };
    serde_json::to_string(&response).expect("plain strings serialize")
}

/// Runs the provider: request from stdin, response on stdout.
pub async fn run(args: KubeletArgs, verbose: bool) -> Result<(), Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut input)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("reading the request from stdin: {e}")))?;
    if input.len() as u64 > MAX_REQUEST_BYTES {
        return Err(Failure::Usage(anyhow::anyhow!(
            "CredentialProviderRequest on stdin is larger than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let request = parse_request(&input).map_err(|m| Failure::Usage(anyhow::anyhow!(m)))?;
    let registries = Registries::with_default(args.registries.iter().map(String::as_str))
        .map_err(|m| Failure::Usage(anyhow::anyhow!(m)))?;
    // The image's own `host[:port]`, not the configured spelling: the kubelet matches an
    // auth key's port exactly (`urlsMatch`, pkg/credentialprovider/keyring.go), so
    // `registry.acme.com:443/app` needs the key `registry.acme.com:443`.
    let Some(registry) = image_registry(&request.image)
        .filter(|r| registries.matching(r).is_some())
        .map(str::to_string)
    else {
        // Not ours: the kubelet pulls it with other credentials (or none).
        if verbose {
            crate::commands::note("image is not on a configured Cloudsmith registry: empty auth");
        }
        return super::print(&response(None, 0));
    };

    let bound = args.bound;
    let at = crate::started() + bound;
    match tokio::time::timeout_at(at.into(), credentials(args, request, &registry, verbose)).await {
        Ok(answer) => answer,
        Err(_) => Err(Failure::OutOfTime(format!(
            "no credentials within {}s of starting (--deadline; the kubelet kills a provider after 1 minute): \
             the exchange with Cloudsmith did not finish (no answer, or still retrying)",
            bound.as_secs_f64()
        ))),
    }
}

/// The response for an image on one of our registries: `registry` is its auth key.
async fn credentials(
    args: KubeletArgs,
    request: ProviderRequest,
    registry: &str,
    verbose: bool,
) -> Result<(), Failure> {
    let manifest = read_manifest(&args.manifest, args.generator.as_deref()).map_err(Failure::Usage)?;
    let (manifest, namespace, tokens, identity, namespaces) = match &request.service_account_token {
        Some(token) => {
            let claims = claims(token.expose());
            let account = claims
                .as_ref()
                .and_then(|c| c.pointer("/kubernetes.io/serviceaccount/name"))
                .and_then(Value::as_str);
            let namespace = claims
                .as_ref()
                .and_then(|c| c.pointer("/kubernetes.io/namespace"))
                .and_then(Value::as_str);
            let manifest = with_service_account(&manifest, account.unwrap_or("default"));
            let tokens: Arc<dyn TokenSource> = Arc::new(StaticTokenSource::new(token.clone()));
            let identity =
                token_identity(token.expose()).map(|id| format!("kubelet service account token|{id}"));
            // The kubelet chose the account; there is no namespace for this host to guard.
            let ns = namespace.unwrap_or(&args.namespace).to_string();
            (
                manifest,
                ns,
                tokens,
                identity,
                NamespacePolicy::AllowCrossNamespace,
            )
        }
        None => {
            let t = &args.tokens;
            let (tokens, identity): (Arc<dyn TokenSource>, _) = if let Some(path) = &t.oidc_token_file {
                (
                    Arc::new(host_example::token_source::FileTokenSource::new(path)),
                    file_identity(path),
                )
            } else if let Some(var) = &t.oidc_token_env {
                (
                    Arc::new(host_example::token_source::EnvTokenSource::new(var)),
                    env_identity(var),
                )
            } else if t.kubeconfig.is_some() {
                (
                    Arc::new(host_example::token_source::KubernetesTokenSource::new(
                        t.kubeconfig.clone(),
                    )),
                    kubernetes_identity(t.kubeconfig.as_ref(), &manifest, &args.namespace),
                )
            } else {
                return Err(Failure::Call(host_example::Error::Generate(host_example::GenerateError::TokenSource(
                    "no service account token: the request has none (set tokenAttributes in the kubelet's \
                     CredentialProviderConfig) and no --oidc-token-file, --oidc-token-env or --kubeconfig was given"
                        .into(),
                ))));
            };
            let namespaces = if t.allow_cross_namespace {
                NamespacePolicy::AllowCrossNamespace
            } else {
                NamespacePolicy::TargetOnly
            };
            (manifest, args.namespace.clone(), tokens, identity, namespaces)
        }
    };
    let cache = super::token_cache(!args.cache.no_token_cache, args.cache.token_cache_dir.as_deref());
    let margin = cache.as_ref().map_or(DEFAULT_MARGIN, TokenCache::margin);
    let minted = mint(
        MintRequest {
            manifest,
            namespace,
            tokens,
            identity,
            namespaces,
        },
        &args.runtime,
        cache.as_ref(),
        verbose,
    )
    .await?;
    let token = minted.access_token()?;
    let left = token
        .exp
        .saturating_sub(now_unix())
        .saturating_sub(margin.as_secs());
    super::print(&response(Some((registry, &token.access_token)), left))
}

/// The (unverified) claims of a JWT: the kubelet is trusted to pass the pod's own token.
fn claims(token: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The manifest with a `serviceAccountRef` when it has none: the generator requires one,
/// but with the kubelet's token it only names the account.
fn with_service_account(manifest: &str, account: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(manifest) else {
        return manifest.to_string();
    };
    host_example::spec::default_account(&mut value, account);
    value.to_string()
}

#[cfg(test)]
mod tests {
    //! Golden request/response pairs in the shapes of the Kubernetes API reference
    //! ("Kubelet CredentialProvider (v1)"), fed to the provider's parsing and response
    //! code and compared byte for byte (as cloud-provider-aws tests its ECR provider).
    //! `tests/kubelet.rs` runs the same through the binary against the stand-in Cloudsmith.

    use super::*;

    struct Golden {
        name: &'static str,
        request: &'static str,
        response: &'static str,
    }

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl";

    /// Answers as `run` does, with a fixed access token and cache duration.
    fn answer(request: &str, registries: &Registries, seconds: u64) -> Result<String, String> {
        let request = parse_request(request.as_bytes())?;
        let token = Secret::new(TOKEN);
        Ok(
            match image_registry(&request.image).filter(|r| registries.matching(r).is_some()) {
                Some(registry) => response(Some((registry, &token)), seconds),
                None => response(None, 0),
            },
        )
    }

    /// The kubelet's `image` is `repoToPull`: `parsers.ParseImageName(image)` in
    /// pkg/kubelet/images/image_manager.go (`EnsureImageExists`), the normalized name
    /// without tag or digest, passed through `keyring.Lookup` to the plugin's `Provide`
    /// (pkg/credentialprovider/plugin/plugin.go). The `kubelet-shaped` rows are such
    /// names; the others are what other callers (and older kubelets' tests) send.
    const GOLDEN: &[Golden] = &[
        Golden {
            name: "kubelet-shaped: Docker Hub's normalized name is not ours",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.io/library/nginx"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{}}"#,
        },
        Golden {
            name: "kubelet-shaped: the repository to pull, without tag or digest",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/org/repo/app"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"docker.cloudsmith.io":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "kubelet-shaped: a custom domain written with :443 gets the key with :443 (urlsMatch compares ports)",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.acme.com:443/app"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"registry.acme.com:443":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "kubelet-shaped: a custom domain without a port",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.acme.com/team/app"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"registry.acme.com":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "kubelet-shaped: docker.cloudsmith.io:443 keeps its port in the key",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io:443/org/repo/app"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"docker.cloudsmith.io:443":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "image on docker.cloudsmith.io",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/acme/prod/app:1.2.3"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"docker.cloudsmith.io":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "KEP-4412 request with a service account token and annotations, image by digest",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/acme/prod/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","serviceAccountToken":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwczpkZWZhdWx0In0.c2ln","serviceAccountAnnotations":{"cloudsmith.io/service":"prod-puller"}}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"docker.cloudsmith.io":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "custom domain with a port",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.acme.com:5000/team/app:latest"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"1h25m0s","auth":{"registry.acme.com:5000":{"username":"token","password":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"}}}"#,
        },
        Golden {
            name: "an image on another registry gets an empty auth map",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{}}"#,
        },
        Golden {
            name: "a Docker Hub short name is not ours",
            request: r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"nginx:1.27"}"#,
            response: r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{}}"#,
        },
    ];

    #[test]
    fn golden_pairs() {
        let registries = Registries::with_default(["registry.acme.com:5000", "registry.acme.com"]).unwrap();
        let mut failures = Vec::new();
        for g in GOLDEN {
            match answer(g.request, &registries, 5100) {
                Ok(got) if got == g.response => {}
                other => failures.push(format!("{}:\n  got  {other:?}\n  want {}", g.name, g.response)),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn bad_requests_are_one_line_errors_without_the_token() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2VjcmV0LXNpZ25hdHVyZQ";
        for (request, needle) in [
            ("not json".to_string(), "not valid JSON"),
            ("".to_string(), "not valid JSON"),
            ("[]".to_string(), "not valid JSON"),
            (
                format!(
                    r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/a/b/c","serviceAccountToken":"{secret}"}}"#
                ),
                "apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\"",
            ),
            (
                format!(
                    r#"{{"kind":"CredentialProviderRequest","image":"x/y","serviceAccountToken":"{secret}"}}"#
                ),
                "no apiVersion",
            ),
            (
                format!(
                    r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","image":"x/y","serviceAccountToken":"{secret}"}}"#
                ),
                "kind \"CredentialProviderResponse\"",
            ),
            (
                format!(
                    r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","serviceAccountToken":"{secret}"}}"#
                ),
                "no image",
            ),
            (
                format!(
                    r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"  ","serviceAccountToken":"{secret}"}}"#
                ),
                "no image",
            ),
            (
                format!(
                    r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":7,"serviceAccountToken":"{secret}"}}"#
                ),
                "not valid JSON",
            ),
        ] {
            let err = parse_request(request.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{err} vs {needle}");
            assert!(!err.contains('\n'), "{err}");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn image_registries() {
        for (image, registry) in [
            ("docker.cloudsmith.io/a/b/c:1", Some("docker.cloudsmith.io")),
            ("localhost/app", Some("localhost")),
            ("127.0.0.1:5000/app", Some("127.0.0.1:5000")),
            ("library/nginx", None),
            ("nginx", None),
        ] {
            assert_eq!(image_registry(image), registry, "{image}");
        }
    }

    #[test]
    fn a_service_account_ref_is_added_only_when_missing() {
        let m = with_service_account(r#"{"spec":{"orgSlug":"o","serviceSlug":"s"}}"#, "puller");
        assert_eq!(
            m,
            r#"{"spec":{"orgSlug":"o","serviceAccountRef":{"name":"puller"},"serviceSlug":"s"}}"#
        );
        let kept = with_service_account(r#"{"orgSlug":"o","serviceAccountRef":{"name":"x"}}"#, "puller");
        assert_eq!(kept, r#"{"orgSlug":"o","serviceAccountRef":{"name":"x"}}"#);
        // A ClusterGenerator keeps its spec one level down: the account goes there.
        let cluster = with_service_account(
            r#"{"kind":"ClusterGenerator","spec":{"generator":{"cloudsmithAccessTokenSpec":{"orgSlug":"o"}},"kind":"CloudsmithAccessToken"}}"#,
            "puller",
        );
        assert_eq!(
            cluster,
            r#"{"kind":"ClusterGenerator","spec":{"generator":{"cloudsmithAccessTokenSpec":{"orgSlug":"o","serviceAccountRef":{"name":"puller"}}},"kind":"CloudsmithAccessToken"}}"#
        );
    }
}
