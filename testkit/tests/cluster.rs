//! The real control plane (`testkit::cluster`) and the Cloudsmith stand-in as an OIDC
//! relying party of it: what the suites built on them rely on.

use testkit::cloudsmith::{StandIn, StandInConfig, PRODUCTION_AUDIENCE, UNAUTHENTICATED};
use testkit::cluster::Cluster;
use testkit::relying_party::RelyingParty;

/// `kubectl auth whoami -o json` with `kubeconfig`: the user the API server sees.
fn whoami(kubeconfig: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(testkit::tools::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["status"]["userInfo"].clone()
}

fn service_account(cluster: &Cluster, namespace: &str, name: &str) {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    ));
}

#[test]
fn identities_are_what_the_api_server_sees() {
    let cluster = Cluster::shared();
    assert!(
        cluster.server().starts_with("https://127.0.0.1:"),
        "{}",
        cluster.server()
    );
    assert_eq!(cluster.issuer(), cluster.server());
    let ns = cluster.namespace("identities");
    assert_ne!(ns, cluster.namespace("identities"), "a namespace per call");
    service_account(cluster, &ns, "builder");

    let sa = whoami(&cluster.service_account_kubeconfig(&ns, "builder"));
    assert_eq!(sa["username"], format!("system:serviceaccount:{ns}:builder"));
    let node = whoami(&cluster.node_kubeconfig("node-a"));
    assert_eq!(node["username"], "system:node:node-a");
    assert!(
        node["groups"]
            .as_array()
            .unwrap()
            .contains(&"system:nodes".into()),
        "{node}"
    );
    // RBAC holds: the service account may do nothing it was not granted.
    let out = std::process::Command::new(testkit::tools::kubectl())
        .arg("--kubeconfig")
        .arg(cluster.service_account_kubeconfig(&ns, "builder"))
        .args(["get", "secrets", "-n", &ns])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot list resource \"secrets\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The token controller of kube-controller-manager fills a legacy token Secret.
#[test]
fn the_token_controller_fills_a_service_account_token_secret() {
    let cluster = Cluster::shared();
    let ns = cluster.namespace("token-secret");
    service_account(cluster, &ns, "caller");
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: caller-token\n  namespace: {ns}\n  annotations:\n    \
         kubernetes.io/service-account.name: caller\ntype: kubernetes.io/service-account-token\n"
    ));
    let mut token = String::new();
    for _ in 0..300 {
        token = cluster.kubectl_ok(&[
            "get",
            "secret",
            "caller-token",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.token}",
        ]);
        if !token.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!token.is_empty(), "the token controller did not fill the Secret");
}

#[test]
fn request_count_is_the_api_servers() {
    let cluster = Cluster::shared();
    let before = cluster.request_count("namespaces", "POST");
    cluster.namespace("count");
    cluster.namespace("count");
    // Other tests of this process create namespaces too: at least these two.
    assert!(cluster.request_count("namespaces", "post") >= before + 2);
}

#[test]
#[should_panic(expected = "kubectl apply refused")]
fn apply_panics_with_the_servers_reason() {
    Cluster::shared()
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Name\n  namespace: default\n");
}

/// A real token verifies as Cloudsmith verifies it: discovery and keys fetched from the
/// API server without credentials, RS256; a token altered, or for another audience, or
/// signed by another key, is refused with Cloudsmith's detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudsmith_trusts_the_clusters_issuer_as_a_relying_party() {
    let cluster = Cluster::shared();
    let ns = cluster.namespace("relying-party");
    service_account(cluster, &ns, "puller");
    let token = cluster.token(&ns, "puller", &[PRODUCTION_AUDIENCE]);
    let party = RelyingParty::of(cluster).unwrap();
    let claims = party.verify(&token).await.expect("a real token verifies");
    assert_eq!(claims.iss, cluster.issuer());
    assert_eq!(claims.sub, format!("system:serviceaccount:{ns}:puller"));
    assert_eq!(claims.aud, [PRODUCTION_AUDIENCE]);
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256", "kube-apiserver signs with the RSA key");

    let stand_in = StandIn::start(StandInConfig::trusting(
        cluster,
        &format!("system:serviceaccount:{ns}:*"),
    ))
    .await
    .unwrap();
    let exchange = |oidc: String| {
        let authority = stand_in.authority();
        async move {
            let body = serde_json::json!({"oidc_token": oidc, "service_slug": "svc"}).to_string();
            testkit::client::request(
                authority.parse().unwrap(),
                "POST",
                "/openid/my-org/",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
    };
    let (status, _, body) = exchange(token.clone()).await;
    assert_eq!(status, 201, "{body}");

    let tampered = testkit::oidc::tampered(&token);
    let other_audience = cluster.token(&ns, "puller", &["https://elsewhere.example"]);
    let other_namespace = cluster.namespace("relying-party-other");
    service_account(cluster, &other_namespace, "puller");
    let untrusted_subject = cluster.token(&other_namespace, "puller", &[PRODUCTION_AUDIENCE]);
    let test_key = testkit::oidc::token_from_issuer(
        cluster.issuer(),
        &format!("system:serviceaccount:{ns}:puller"),
        &[PRODUCTION_AUDIENCE],
    );
    for (token, reason) in [
        (tampered, "signature does not verify"),
        (
            other_audience,
            "audience [\"https://elsewhere.example\"] not accepted",
        ),
        (untrusted_subject, "not trusted"),
        (test_key, "algorithm \"HS256\""),
    ] {
        let (status, _, body) = exchange(token).await;
        assert_eq!(
            (status, body.as_str()),
            (401, format!("{{\"detail\":\"{UNAUTHENTICATED}\"}}").as_str())
        );
        let rejections = stand_in.rejections();
        assert!(
            rejections.last().unwrap().contains(reason),
            "{reason}: {rejections:?}"
        );
    }
}

/// A control plane of its own stops when its handle goes (its stdin closes): its
/// directory is deleted and its port closed.
#[test]
fn a_control_plane_stops_when_its_stdin_closes() {
    let own = Cluster::start().unwrap();
    let dir = own.admin_kubeconfig().parent().unwrap().to_path_buf();
    let addr = own.server().trim_start_matches("https://").to_string();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    drop(own);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(std::net::TcpStream::connect(&addr).is_err(), "still listening");
}
