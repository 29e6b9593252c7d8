//! The Kubernetes token source against the stand-in API server: what it sends, and how
//! its failures read.

use host_example::token_source::{KubernetesTokenSource, TokenRequest, TokenSource};
use testkit::kubernetes::{StandIn, StandInConfig};

fn request(namespace: &str, name: &str) -> TokenRequest {
    TokenRequest {
        service_account: name.into(),
        namespace: namespace.into(),
        audiences: vec!["https://api.cloudsmith.io".into()],
    }
}

#[tokio::test]
async fn token_request_carries_audiences_and_short_expiry() {
    let api = StandIn::start(StandInConfig::default().with_service_account("team-a", "builder"))
        .await
        .unwrap();
    let kubeconfig = api.kubeconfig_tempfile().unwrap();
    let source = KubernetesTokenSource::new(Some(kubeconfig.path().to_path_buf()));

    let token = source.token(&request("team-a", "builder")).await.unwrap();
    let sent = api.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].namespace, "team-a");
    assert_eq!(sent[0].name, "builder");
    assert_eq!(sent[0].audiences, vec!["https://api.cloudsmith.io".to_string()]);
    assert_eq!(sent[0].expiration_seconds, Some(600));
    assert_eq!(sent[0].token.as_deref(), Some(token.expose()));
}

#[tokio::test]
async fn failures_name_the_service_account_and_hold_no_token() {
    let api = StandIn::start(StandInConfig::default()).await.unwrap();
    let kubeconfig = api.kubeconfig_tempfile().unwrap();
    let source = KubernetesTokenSource::new(Some(kubeconfig.path().to_path_buf()));

    let err = source
        .token(&request("default", "ghost"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("service account default/ghost"), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(!err.contains('\n'));

    let err = source
        .token(&request("forbidden", "default"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403"), "{err}");
    assert!(!err.contains(api.bearer_token()), "{err}");
}

#[tokio::test]
async fn client_is_built_lazily() {
    // A missing kubeconfig is only an error when a token is asked for.
    let source = KubernetesTokenSource::new(Some("/nonexistent/kubeconfig".into()));
    assert!(source.describe().contains("/nonexistent/kubeconfig"));
    let err = source
        .token(&request("default", "default"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("kubeconfig /nonexistent/kubeconfig"), "{err}");
}
