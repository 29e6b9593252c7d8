//! The Kubernetes TokenRequest API, through kube-rs.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest as K8sTokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use super::{TokenRequest, TokenSource, TokenSourceError};
use crate::secret::Secret;

/// The shortest lifetime the API server accepts: the token is used once, at once.
const EXPIRATION_SECONDS: i64 = 600;

/// Longest token-source error line. The generator cuts what it passes on at 300
/// characters, mid-word; staying under it keeps the cut here, at a word.
const MAX_LINE_CHARS: usize = 290;

/// The advice [`kube_config_error`] gives first when the token source finds no
/// Kubernetes configuration: the CLI's token source flags.
pub const TOKEN_SOURCE_FIX: &str = "give --kubeconfig, --oidc-token-file or --oidc-token-env";

/// The one-line error for a failed search for a Kubernetes configuration
/// ([`Config::infer`]: `KUBECONFIG`, `~/.kube/config`, then the in-cluster variables):
/// `no Kubernetes configuration found: {fix}; {causes}`.
///
/// What to do comes first; kube's chain of causes follows in one line (each cause once:
/// kube's messages repeat their sources), at most 290 characters in all, cut at a word
/// with `…`. `fix` is the caller's advice, e.g. [`TOKEN_SOURCE_FIX`], or for a server
/// `give --kubeconfig, or run in a cluster`.
pub fn kube_config_error(fix: &str, err: &(dyn Error + 'static)) -> String {
    let causes = causes(err);
    // kube says so before its causes; the line has said it already.
    let causes = causes.trim_start_matches("failed to infer config: ");
    // kube's `in-cluster: (A), kubeconfig: (B)`, as two causes; and its words for
    // "not in a pod", which name no variable. Text kube words otherwise stays as it is.
    let causes = match causes
        .strip_prefix("in-cluster: (")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once("), kubeconfig: ("))
    {
        Some((in_cluster, kubeconfig)) => format!(
            "in-cluster: {}; kubeconfig: {kubeconfig}",
            in_cluster.replace(
                "failed to read an incluster environment variable: environment variable not found",
                "KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set"
            )
        ),
        None => causes.to_string(),
    };
    crate::secret::one_line(
        &format!("no Kubernetes configuration found: {fix}; {causes}"),
        MAX_LINE_CHARS,
    )
}

/// `{what}: {causes}` in one line of at most `max` characters, cut at a word with `…`:
/// an error and its chain of sources, each cause once.
pub fn error_line(what: &str, err: &(dyn Error + 'static), max: usize) -> String {
    crate::secret::one_line(&format!("{what}: {}", causes(err)), max)
}

/// `err` and its sources, joined with `: `, leaving out a source whose text its parent
/// already quotes (thiserror's `#[error("...: {0}")]` with `#[source]`).
fn causes(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    // kube quotes a path with Debug inside its own quotes: '"/x"'.
    line.replace("'\"", "'").replace("\"'", "'")
}

/// Mints a short-lived token with `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`
/// (`authentication.k8s.io/v1` TokenRequest) carrying the requested audiences and
/// `expirationSeconds: 600`.
///
/// The namespace is the one the host resolved (the target namespace unless the embedder
/// allows cross-namespace use: see [`crate::token_source`]). The Kubernetes client is
/// built on first use, so a generator that never asks for a token (a composed
/// component) needs no kubeconfig; a failed build is retried on the next call.
pub struct KubernetesTokenSource {
    kubeconfig: Option<PathBuf>,
    client: OnceCell<Client>,
    /// Bound on one TokenRequest; `None`: the call's own deadline only.
    timeout: Option<Duration>,
}

impl KubernetesTokenSource {
    /// Uses the kubeconfig at `kubeconfig`, or, when `None`, the usual discovery
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        KubernetesTokenSource {
            kubeconfig,
            client: OnceCell::new(),
            timeout: None,
        }
    }

    /// Bounds each TokenRequest by `timeout`: past it, the error is
    /// [`TokenSourceError::unavailable`] (kube's client has no read timeout of its own,
    /// so a hung API server would otherwise hold the call until its deadline).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A source using an existing client (for embedders that already have one).
    pub fn with_client(client: Client) -> Self {
        KubernetesTokenSource {
            kubeconfig: None,
            client: OnceCell::new_with(Some(client)),
            timeout: None,
        }
    }

    async fn client(&self) -> Result<&Client, TokenSourceError> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Client, TokenSourceError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let fail = |e: &(dyn Error + 'static)| {
                    let what = format!("kubeconfig {}", path.display());
                    TokenSourceError::new(error_line(&what, e, MAX_LINE_CHARS))
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(&e))?
            }
            None => Config::infer()
                .await
                .map_err(|e| TokenSourceError::new(kube_config_error(TOKEN_SOURCE_FIX, &e)))?,
        };
        Client::try_from(config).map_err(|e| {
            TokenSourceError::new(error_line("building the Kubernetes client", &e, MAX_LINE_CHARS))
        })
    }
}

impl std::fmt::Debug for KubernetesTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTokenSource")
            .field("kubeconfig", &self.kubeconfig)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

#[async_trait::async_trait]
impl TokenSource for KubernetesTokenSource {
    async fn token(&self, request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        // With no audiences the API server mints a token for itself, good for the whole
        // cluster API as this service account: never minted here.
        if request.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err(TokenSourceError::new(format!(
                "TokenRequest for {request} refused: it names no audience, and the API server would \
                 mint a token for itself"
            )));
        }
        let client = self.client().await?.clone();
        let api: Api<ServiceAccount> = Api::namespaced(client, &request.namespace);
        let body = K8sTokenRequest {
            spec: TokenRequestSpec {
                audiences: request.audiences.clone(),
                expiration_seconds: Some(EXPIRATION_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let params = PostParams::default();
        let creating = api.create_token_request(&request.service_account, &params, &body);
        let answered = match self.timeout {
            Some(timeout) => tokio::time::timeout(timeout, creating).await.map_err(|_| {
                TokenSourceError::unavailable(format!(
                    "TokenRequest for {request}: the Kubernetes API did not answer within {}s",
                    timeout.as_secs_f64()
                ))
            })?,
            None => creating.await,
        };
        let answer = answered.map_err(|e| {
            TokenSourceError::new(format!("TokenRequest for {request} failed: {}", describe(&e)))
        })?;
        let token = answer.status.map(|s| s.token).unwrap_or_default();
        if token.trim().is_empty() {
            return Err(TokenSourceError::new(format!(
                "TokenRequest for {request} returned no token"
            )));
        }
        Ok(Secret::new(token))
    }

    fn describe(&self) -> String {
        match &self.kubeconfig {
            Some(path) => format!("Kubernetes TokenRequest (kubeconfig {})", path.display()),
            None => "Kubernetes TokenRequest (inferred configuration)".into(),
        }
    }
}

/// kube's `Display` for API errors repeats the whole status in Debug form; keep the part
/// a person needs.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => causes(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error like kube's: its message quotes its source's.
    #[derive(Debug)]
    struct Quoting(String, Option<Box<Quoting>>);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Quoting {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn chain(texts: &[&str]) -> Quoting {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Quoting(text.to_string(), source.map(Box::new)))
            })
            .expect("one error at least")
    }

    #[test]
    fn causes_are_joined_once_each() {
        let e = chain(&["reading the config: no such file", "no such file", "os error 2"]);
        assert_eq!(causes(&e), "reading the config: no such file: os error 2");
    }

    #[test]
    fn a_long_chain_is_cut_at_a_word() {
        let e = chain(&[
            "failed to infer config: first cause",
            &"several words ".repeat(40),
        ]);
        let line = kube_config_error(TOKEN_SOURCE_FIX, &e);
        assert!(line.chars().count() <= MAX_LINE_CHARS, "{line}");
        assert!(
            line.starts_with(
                "no Kubernetes configuration found: give --kubeconfig, --oidc-token-file or --oidc-token-env; first cause: several words"
            ),
            "{line}"
        );
        let kept = line.strip_suffix('…').expect("an ellipsis");
        let last = kept.rsplit(' ').next().unwrap();
        assert!(["several", "words"].contains(&last), "cut mid-word: {line}");
    }

    /// Without an audience the API server mints a token for itself: refused before any
    /// request (before, the TokenRequest went out and the token came back).
    #[tokio::test]
    async fn no_token_request_names_no_audience() {
        let kube = testkit::kubernetes::StandIn::start(
            testkit::kubernetes::StandInConfig::default().with_service_account("apps", "default"),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = KubernetesTokenSource::new(Some(kube.write_kubeconfig(dir.path()).unwrap()));
        let request = |audiences: &[&str]| TokenRequest {
            service_account: "default".into(),
            namespace: "apps".into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        };
        for audiences in [&[][..], &[""], &[" ", ""]] {
            let err = source.token(&request(audiences)).await.unwrap_err();
            assert!(err.to_string().contains("names no audience"), "{err}");
        }
        assert!(
            kube.requests().is_empty(),
            "no TokenRequest went out: {:?}",
            kube.requests()
        );
        source
            .token(&request(&["https://api.cloudsmith.io"]))
            .await
            .unwrap();
        assert_eq!(kube.requests().len(), 1);
    }

    /// kube-rs's own error for a missing `--kubeconfig`, as the token source words it.
    #[test]
    fn a_kubeconfig_error_names_the_file_and_its_cause() {
        let e = Kubeconfig::read_from("/nonexistent/kubeconfig").expect_err("no such file");
        let line = error_line("kubeconfig /nonexistent/kubeconfig", &e, MAX_LINE_CHARS);
        assert_eq!(
            line,
            "kubeconfig /nonexistent/kubeconfig: failed to read kubeconfig from '/nonexistent/kubeconfig': No such file or directory (os error 2)"
        );
    }
}
