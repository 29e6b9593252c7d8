//! The Kubernetes token source against a real kube-apiserver (`testkit::cluster`), as
//! `serve`'s service account under the RBAC `deploy/` ships: what it asks for (read back
//! from the token the server signed), and how the server's refusals read.

use cloudsmith_gen::token_source::{KubernetesTokenSource, TokenRequest, TokenSource};
use testkit::cluster::Cluster;
use testkit::relying_party::RelyingParty;

const AUDIENCE: &str = "https://api.cloudsmith.io";

fn request(namespace: &str, name: &str) -> TokenRequest {
    TokenRequest {
        service_account: name.into(),
        namespace: namespace.into(),
        audiences: vec![AUDIENCE.into()],
    }
}

/// The service's token source, and a namespace that opted in (deploy/eso/apps.yaml).
fn world(prefix: &str) -> (&'static Cluster, KubernetesTokenSource, String) {
    let cluster = Cluster::shared();
    let kubeconfig = cluster.deployed_service().to_path_buf();
    let ns = cluster.namespace(prefix);
    cluster.opt_in(&ns, true);
    (cluster, KubernetesTokenSource::new(Some(kubeconfig)), ns)
}

#[tokio::test]
async fn the_token_is_for_the_audiences_asked_and_lives_600_seconds() {
    let (cluster, source, ns) = world("token-request");
    let token = source.token(&request(&ns, "cloudsmith-oidc")).await.unwrap();
    // What the server put in the token it signed: the request's audiences and
    // expirationSeconds, for the account asked.
    let claims = RelyingParty::of(cluster)
        .unwrap()
        .verify(token.expose())
        .await
        .expect("signed by the cluster's issuer");
    assert_eq!(claims.sub, format!("system:serviceaccount:{ns}:cloudsmith-oidc"));
    assert_eq!(claims.aud, [AUDIENCE]);
    let payload = testkit::cloudsmith::jwt_payload(token.expose()).unwrap();
    assert_eq!(
        payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(),
        600
    );
}

/// The API server's refusals, each in one line naming the account, with the server's
/// reason: a missing account (404), an account the RBAC does not cover (403), a
/// namespace that did not opt in (403), a kubeconfig whose token the server does not
/// accept (401). No token in any of them.
#[tokio::test]
async fn refusals_name_the_account_and_the_servers_reason() {
    let (cluster, source, ns) = world("refusals");
    let bare = cluster.namespace("refusals-no-opt-in");
    let missing = cluster.namespace("refusals-no-account");
    cluster.opt_in(&missing, false);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.deployed_service()).unwrap()).unwrap();
    let token = config["users"][0]["user"]["token"].as_str().unwrap().to_string();
    let cases = [
        (
            request(&missing, "cloudsmith-oidc"),
            format!("service account {missing}/cloudsmith-oidc"),
            "404".to_string(),
            "serviceaccounts \"cloudsmith-oidc\" not found".to_string(),
        ),
        (
            request(&ns, "default"),
            format!("service account {ns}/default"),
            "403".to_string(),
            format!(
                "serviceaccounts \"default\" is forbidden: User \"system:serviceaccount:cloudsmith-gen:cloudsmith-gen\" \
                 cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{ns}\""
            ),
        ),
        (
            request(&bare, "cloudsmith-oidc"),
            format!("service account {bare}/cloudsmith-oidc"),
            "403".to_string(),
            format!("in the namespace \"{bare}\""),
        ),
    ];
    for (request, who, status, reason) in cases {
        let err = source.token(&request).await.unwrap_err().to_string();
        for needle in [&who, &status, &reason] {
            assert!(err.contains(needle.as_str()), "{needle:?} not in {err}");
        }
        assert!(!err.contains('\n'), "{err}");
        assert!(!err.contains(&token), "{err}");
    }

    // A token the server does not accept: 401.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.kubeconfig");
    let mut tampered = config.clone();
    tampered["users"][0]["user"]["token"] = testkit::oidc::tampered(&token).into();
    std::fs::write(&path, tampered.to_string()).unwrap();
    let err = KubernetesTokenSource::new(Some(path))
        .token(&request(&ns, "cloudsmith-oidc"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("Unauthorized"), "{err}");
    for part in token.split('.') {
        assert!(!err.contains(part), "{err}");
    }
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
