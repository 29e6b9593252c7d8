//! The Kubernetes TokenRequest API, through kube-rs.

use std::path::PathBuf;

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
}

impl KubernetesTokenSource {
    /// Uses the kubeconfig at `kubeconfig`, or, when `None`, the usual discovery
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        KubernetesTokenSource {
            kubeconfig,
            client: OnceCell::new(),
        }
    }

    /// A source using an existing client (for embedders that already have one).
    pub fn with_client(client: Client) -> Self {
        KubernetesTokenSource {
            kubeconfig: None,
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> Result<&Client, TokenSourceError> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Client, TokenSourceError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let fail = |e: &dyn std::fmt::Display| {
                    TokenSourceError::new(format!("kubeconfig {}: {e}", path.display()))
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(&e))?
            }
            None => Config::infer().await.map_err(|e| {
                TokenSourceError::new(format!(
                    "no Kubernetes configuration found ({e}); give a kubeconfig, or a token file or variable"
                ))
            })?,
        };
        Client::try_from(config)
            .map_err(|e| TokenSourceError::new(format!("building the Kubernetes client: {e}")))
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
        let answer = api
            .create_token_request(&request.service_account, &PostParams::default(), &body)
            .await
            .map_err(|e| {
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
        other => other.to_string(),
    }
}
