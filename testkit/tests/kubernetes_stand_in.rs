//! The Kubernetes stand-in answers TokenRequests as an API server does, and
//! kube-rs (the host's client) talks to it over plain HTTP and over TLS.

mod common;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use testkit::kubernetes::{StandIn, StandInConfig};
use testkit::oidc;

/// A kube-rs client built from the stand-in's kubeconfig, as the host builds one.
async fn client(stand_in: &StandIn) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&stand_in.kubeconfig_yaml()).expect("kubeconfig parses");
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

async fn mint(
    stand_in: &StandIn,
    ns: &str,
    name: &str,
    request: &TokenRequest,
) -> kube::Result<TokenRequest> {
    let api: Api<ServiceAccount> = Api::namespaced(client(stand_in).await, ns);
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
async fn kube_rs_mints_a_token_over_plain_http() {
    let s = StandIn::start(StandInConfig::default()).await.unwrap();
    assert!(s.url().starts_with("http://127.0.0.1:"));
    let answer = mint(
        &s,
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

    let recorded = s.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].namespace, "default");
    assert_eq!(recorded[0].name, "default");
    assert_eq!(recorded[0].audiences, ["https://api.cloudsmith.io"]);
    assert_eq!(recorded[0].expiration_seconds, Some(600));
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some(&*format!("Bearer {}", s.bearer_token()))
    );
    assert_eq!(recorded[0].token.as_deref(), Some(status.token.as_str()));
}

#[tokio::test]
async fn kube_rs_mints_a_token_over_tls_with_the_kubeconfig_ca() {
    let s = common::https_stand_in!(StandIn, StandInConfig);
    assert!(s.kubeconfig_yaml().contains("certificate-authority-data: "));
    let answer = mint(&s, "default", "default", &token_request(&["aud"], None))
        .await
        .expect("over TLS");
    assert_eq!(answer.spec.expiration_seconds, Some(3600));
    assert!(oidc::verify(&answer.status.unwrap().token).is_some());
}

#[tokio::test]
async fn refusals_are_kubernetes_status_objects() {
    let s = StandIn::start(StandInConfig::default().with_service_account("team-a", "builder"))
        .await
        .unwrap();
    let ok = mint(&s, "team-a", "builder", &token_request(&[], None))
        .await
        .unwrap();
    // No audiences: the API server's own.
    assert_eq!(
        oidc::verify(&ok.status.unwrap().token).unwrap().aud,
        [oidc::ISSUER]
    );

    let cases = [
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
            "forbidden",
            "default",
            None,
            403,
            "Forbidden",
            "serviceaccounts \"default\" is forbidden: ",
        ),
        (
            "default",
            "default",
            Some(60),
            422,
            "Invalid",
            "may not specify a duration less than 10 minutes",
        ),
    ];
    for (ns, name, exp, code, reason, message) in cases {
        let (got_code, got_reason, got_message) =
            api_error(mint(&s, ns, name, &token_request(&["a"], exp)).await);
        assert_eq!((got_code, got_reason.as_str()), (code, reason), "{ns}/{name}");
        assert!(got_message.contains(message), "{ns}/{name}: {got_message}");
    }
}

#[tokio::test]
async fn a_wrong_bearer_token_gets_401() {
    let s = StandIn::start(StandInConfig::default()).await.unwrap();
    let yaml = s.kubeconfig_yaml().replace(s.bearer_token(), "wrong-token");
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&yaml).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let api: Api<ServiceAccount> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let result = api
        .create_token_request("default", &PostParams::default(), &token_request(&["a"], None))
        .await;
    let (code, reason, _) = api_error(result);
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    // Recorded anyway, with what was sent.
    assert_eq!(
        s.requests()[0].authorization.as_deref(),
        Some("Bearer wrong-token")
    );
    assert_eq!(s.requests()[0].token, None);
}

#[tokio::test]
async fn kubeconfig_files_are_written() {
    let s = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = s.write_kubeconfig(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), s.kubeconfig_yaml());
    let temp = s.kubeconfig_tempfile().unwrap();
    let parsed = Kubeconfig::read_from(temp.path()).unwrap();
    assert_eq!(parsed.current_context.as_deref(), Some("testkit"));
    assert_eq!(
        parsed.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
        Some(&*s.url())
    );
}
