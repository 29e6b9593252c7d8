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
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloudsmith_gen::secret::shown;
use cloudsmith_gen::{NamespacePolicy, Secret};
use cloudsmith_gen_core::jwt::Claims;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{go_duration, Registries, Reply};
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, TokenChoice};
use crate::setup::{self, note};

/// The API version of the requests this provider answers (and of its responses).
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
/// The request's kind.
pub const REQUEST_KIND: &str = "CredentialProviderRequest";
/// The response's kind.
pub const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// A request is a few KiB (an image name and a token); refuse to buffer more.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

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

/// Why stdin is not a request this provider answers. One line, never the token.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// Not JSON, or a field of the wrong type (serde's message quotes no input, only
    /// positions and expectations).
    #[error("CredentialProviderRequest on stdin is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// Another `apiVersion` (shown redacted).
    #[error("CredentialProviderRequest apiVersion {0:?} is not {API_VERSION}")]
    ApiVersion(String),
    /// No `apiVersion`.
    #[error("CredentialProviderRequest has no apiVersion (expected {API_VERSION})")]
    NoApiVersion,
    /// Another `kind` (shown redacted).
    #[error("kind {0:?} is not {REQUEST_KIND}")]
    Kind(String),
    /// No `kind`.
    #[error("request has no kind (expected {REQUEST_KIND})")]
    NoKind,
    /// No image, or a blank one.
    #[error("CredentialProviderRequest has no image")]
    NoImage,
}

/// Parses and checks a request.
pub fn parse_request(bytes: &[u8]) -> Result<ProviderRequest, BadRequest> {
    let raw: RawRequest = serde_json::from_slice(bytes).map_err(BadRequest::NotJson)?;
    match raw.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => return Err(BadRequest::ApiVersion(shown(other))),
        None => return Err(BadRequest::NoApiVersion),
    }
    match raw.kind.as_deref() {
        Some(REQUEST_KIND) => {}
        Some(other) => return Err(BadRequest::Kind(shown(other))),
        None => return Err(BadRequest::NoKind),
    }
    let image = raw.image.map(|i| i.trim().to_string()).unwrap_or_default();
    if image.is_empty() {
        return Err(BadRequest::NoImage);
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

/// The provider's configuration (its flags).
#[derive(Clone)]
pub struct KubeletConfig {
    /// The generator manifest file.
    pub manifest: PathBuf,
    /// Which generator document of the manifest (its `metadata.name`).
    pub generator: Option<String>,
    /// The registries to answer for.
    pub registries: Registries,
    /// The namespace for the fallback token source.
    pub namespace: String,
    /// The token source when the request carries no service account token, and its
    /// namespace rule.
    pub fallback: Option<(TokenChoice, NamespacePolicy)>,
    /// When the whole call must be over (`--deadline` from process start).
    pub deadline: Instant,
    /// How long `--deadline` is, for the message when it passes.
    pub bound: Duration,
    /// Print `-v` notes.
    pub verbose: bool,
}

/// Answers one `CredentialProviderRequest` (`request`, the bytes of stdin).
pub async fn handle(request: &[u8], mint: &impl Mint, config: &KubeletConfig) -> Result<Reply, Failure> {
    let request = parse_request(request).map_err(Failure::usage)?;
    // The image's own `host[:port]`, not the configured spelling: the kubelet matches an
    // auth key's port exactly (`urlsMatch`, pkg/credentialprovider/keyring.go), so
    // `registry.acme.com:443/app` needs the key `registry.acme.com:443`.
    let Some(registry) = image_registry(&request.image).filter(|r| config.registries.matching(r).is_some())
    else {
        // Not ours: the kubelet pulls it with other credentials (or none).
        if config.verbose {
            note("image is not on a configured Cloudsmith registry: empty auth");
        }
        return Ok(Reply::ok(response(None, 0)));
    };
    let answering = async {
        let minted = mint
            .mint(mint_request(request.service_account_token, config)?)
            .await?;
        let token = minted.access_token()?;
        Ok(Reply::ok(response(
            Some((registry, &token.access_token)),
            minted.usable_for.as_secs(),
        )))
    };
    match tokio::time::timeout_at(config.deadline.into(), answering).await {
        Ok(reply) => reply,
        Err(_) => Err(Failure::OutOfTime(format!(
            "no credentials within {}s of starting (--deadline; the kubelet kills a provider after 1 minute): \
             the exchange with Cloudsmith did not finish (no answer, or still retrying)",
            config.bound.as_secs_f64()
        ))),
    }
}

/// The mint request for an image on one of our registries: with the pod's token when
/// the kubelet passed one, else with the fallback source.
fn mint_request(pod_token: Option<Secret>, config: &KubeletConfig) -> Result<MintRequest, Failure> {
    let manifest = setup::read_manifest(&config.manifest, config.generator.as_deref())?;
    Ok(match pod_token {
        Some(token) => {
            let claims = Claims::read(token.expose()).unwrap_or_default();
            let (namespace, account) = claims.service_account();
            MintRequest {
                manifest: with_service_account(&manifest, account.unwrap_or("default")),
                namespace: namespace.unwrap_or(&config.namespace).to_string(),
                tokens: TokenChoice::kubelet_token(token),
                // The kubelet chose the account; there is no namespace for this host to guard.
                namespaces: NamespacePolicy::AllowCrossNamespace,
                deadline: Some(config.deadline),
            }
        }
        None => {
            let Some((tokens, namespaces)) = config.fallback.clone() else {
                return Err(Failure::no_token_source(
                    "no service account token: the request has none (set tokenAttributes in the kubelet's \
                     CredentialProviderConfig) and no --oidc-token-file, --oidc-token-env or --kubeconfig was given",
                ));
            };
            MintRequest {
                manifest,
                namespace: config.namespace.clone(),
                tokens,
                namespaces,
                deadline: Some(config.deadline),
            }
        }
    })
}

/// The manifest with a `serviceAccountRef` when it has none: the generator requires one,
/// but with the kubelet's token it only names the account.
fn with_service_account(manifest: &str, account: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(manifest) else {
        return manifest.to_string();
    };
    cloudsmith_gen_core::spec::default_account(&mut value, account);
    value.to_string()
}

#[cfg(test)]
mod tests {
    //! Golden request/response pairs in the shapes of the Kubernetes API reference
    //! ("Kubelet CredentialProvider (v1)"), fed to the real `handle` with a fake mint and
    //! compared byte for byte (as cloud-provider-aws tests its ECR provider).
    //! `tests/kubelet.rs` runs the same through the binary against the stand-in Cloudsmith.

    use super::*;
    use crate::mint::fake::FakeMint;

    struct Golden {
        name: &'static str,
        request: &'static str,
        response: &'static str,
    }

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl";

    /// The provider's configuration for the golden rows: a manifest on disk, two custom
    /// domains, a fallback token source.
    fn config(manifest: &std::path::Path) -> KubeletConfig {
        KubeletConfig {
            manifest: manifest.to_path_buf(),
            generator: None,
            registries: Registries::with_default(["registry.acme.com:5000", "registry.acme.com"]).unwrap(),
            namespace: "default".into(),
            fallback: Some((TokenChoice::Env("UNUSED".into()), NamespacePolicy::TargetOnly)),
            deadline: Instant::now() + Duration::from_secs(60),
            bound: Duration::from_secs(60),
            verbose: false,
        }
    }

    fn manifest_file() -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"apiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\n\
              metadata: {name: g}\nspec: {orgSlug: o, serviceSlug: s}\n",
        )
        .unwrap();
        file
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

    /// The real `handle`, driven with a fake mint whose token is usable for 5100 s.
    #[tokio::test]
    async fn golden_pairs() {
        let manifest = manifest_file();
        let config = config(manifest.path());
        let mut failures = Vec::new();
        for g in GOLDEN {
            let mint = FakeMint::new(TOKEN, 5100);
            match handle(g.request.as_bytes(), &mint, &config).await {
                Ok(reply) if reply == Reply::ok(g.response) => {}
                other => failures.push(format!("{}:\n  got  {other:?}\n  want {}", g.name, g.response)),
            }
            let minted = !mint.seen.lock().unwrap().is_empty();
            if minted != g.response.contains(TOKEN) {
                failures.push(format!("{}: minted {minted}", g.name));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn the_pod_token_names_the_account_and_namespace() {
        use base64::Engine as _;
        let payload = r#"{"iss":"i","sub":"system:serviceaccount:apps:puller","kubernetes.io":{"namespace":"apps","serviceaccount":{"name":"puller"}}}"#;
        let pod = format!(
            "e30.{}.c2ln",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
        );
        let request = format!(
            r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/o/r/app","serviceAccountToken":"{pod}"}}"#
        );
        let manifest = manifest_file();
        let mint = FakeMint::new(TOKEN, 5100);
        handle(request.as_bytes(), &mint, &config(manifest.path()))
            .await
            .unwrap();
        let seen = mint.seen.lock().unwrap();
        let (manifest, namespace, source) = &seen[0];
        assert_eq!(namespace, "apps");
        assert!(
            manifest.contains(r#""serviceAccountRef":{"name":"puller"}"#),
            "{manifest}"
        );
        assert_eq!(source, "a fixed token");
    }

    #[tokio::test]
    async fn without_a_pod_token_or_fallback_the_error_says_what_to_set() {
        let manifest = manifest_file();
        let mut config = config(manifest.path());
        config.fallback = None;
        let request = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/o/r/app"}"#;
        let err = handle(request.as_bytes(), &FakeMint::new(TOKEN, 1), &config)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.message().contains("set tokenAttributes"), "{}", err.message());
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
            let err = parse_request(request.as_bytes()).unwrap_err().to_string();
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
