//! The Kubernetes stand-in (kept for a stalled TokenRequest, the soak and the benchmark)
//! answers as an API server does, and kube-rs (the host's client) talks to it.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use testkit::kubernetes::{StandIn, StandInConfig};
use testkit::oidc;

/// A kube-rs client built from `yaml`, as the host builds one from a kubeconfig.
async fn client(yaml: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    kube::Client::try_from(config).expect("client builds")
}

fn token_request(audiences: &[&str], expiration_seconds: Option<i64>) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds,
            bound_object_ref: None,
        },
        ..Default::default()
    }
}

async fn mint(yaml: &str, ns: &str, name: &str, request: &TokenRequest) -> kube::Result<TokenRequest> {
    let api: Api<ServiceAccount> = Api::namespaced(client(yaml).await, ns);
    api.create_token_request(name, &PostParams::default(), request)
        .await
}

fn api_error(result: kube::Result<TokenRequest>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_rs_mints_a_token() {
    let s = StandIn::start(StandInConfig::default()).await.unwrap();
    assert!(s.url().starts_with("http://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let path = s.write_kubeconfig(dir.path()).unwrap();
    let yaml = std::fs::read_to_string(path).unwrap();
    assert_eq!(yaml, s.kubeconfig_yaml());
    let answer = mint(
        &yaml,
        "default",
        "default",
        &token_request(&["https://api.cloudsmith.io"], Some(600)),
    )
    .await
    .expect("TokenRequest succeeds");
    let status = answer.status.expect("a status");
    let claims = oidc::verify(&status.token).expect("the token verifies");
    assert_eq!(claims.sub, "system:serviceaccount:default:default");
    assert_eq!(claims.aud, ["https://api.cloudsmith.io"]);
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(status.expiration_timestamp.0.as_second() as u64, claims.exp);
    assert_eq!(
        s.requests()[0],
        testkit::kubernetes::TokenRequestRecord {
            namespace: "default".into(),
            name: "default".into()
        }
    );
    // No audiences, no expiration: the API server's own, one hour.
    let answer = mint(&yaml, "default", "default", &token_request(&[], None))
        .await
        .unwrap();
    assert_eq!(answer.spec.expiration_seconds, Some(3600));
    assert_eq!(
        oidc::verify(&answer.status.unwrap().token).unwrap().aud,
        [oidc::ISSUER]
    );
}

#[tokio::test]
async fn refusals_are_kubernetes_status_objects() {
    let s = StandIn::start(StandInConfig::default().with_service_account("team-a", "builder"))
        .await
        .unwrap();
    let yaml = s.kubeconfig_yaml();
    for (ns, name, exp, code, reason, message) in [
        (
            "default",
            "missing",
            None,
            404,
            "NotFound",
            "serviceaccounts \"missing\" not found",
        ),
        (
            "team-a",
            "default",
            None,
            404,
            "NotFound",
            "serviceaccounts \"default\" not found",
        ),
        (
            "default",
            "default",
            Some(60),
            422,
            "Invalid",
            "may not specify a duration less than 10 minutes",
        ),
    ] {
        let (got_code, got_reason, got_message) =
            api_error(mint(&yaml, ns, name, &token_request(&["a"], exp)).await);
        assert_eq!((got_code, got_reason.as_str()), (code, reason), "{ns}/{name}");
        assert!(got_message.contains(message), "{ns}/{name}: {got_message}");
    }
    let wrong = yaml.replace(s.bearer_token(), "wrong-token");
    let (code, reason, _) = api_error(mint(&wrong, "team-a", "builder", &token_request(&["a"], None)).await);
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
}

/// A held TokenRequest is held; the reviews still answer meanwhile.
#[tokio::test]
async fn a_delayed_token_request_is_held_while_reviews_answer() {
    let s = StandIn::start(StandInConfig {
        token_request_delay: std::time::Duration::from_secs(600),
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let yaml = s.kubeconfig_yaml();
    let held = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        mint(&yaml, "default", "default", &token_request(&[], None)),
    )
    .await;
    assert!(held.is_err(), "the TokenRequest was answered: {held:?}");
    let token = oidc::token("system:serviceaccount:a:b", &[oidc::ISSUER]);
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let url = s.url();
    let authority = url.trim_start_matches("http://");
    let auth = format!("Bearer {}", s.bearer_token());
    let (status, _, answer) = testkit::client::request(
        authority.parse().unwrap(),
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"]["authenticated"], true);
    assert_eq!(answer["status"]["user"]["username"], "system:serviceaccount:a:b");
    let review = serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:a:b", "resourceAttributes": {"verb": "create"}}});
    let (status, _, answer) = testkit::client::request(
        authority.parse().unwrap(),
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &[("authorization", &auth), ("content-type", "application/json")],
        review.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["status"]["allowed"],
        false
    );
}
