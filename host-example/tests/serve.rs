//! `cloudsmith-gen serve` as ESO's Webhook generator sees it: the binary as a process,
//! real HTTP on loopback, a real Kubernetes API server (`testkit::cluster`: TokenReview,
//! SubjectAccessReview and TokenRequest, with `deploy/serve/rbac.yaml` as applied and
//! `serve` running as the `cloudsmith-gen` service account) and the stand-in Cloudsmith,
//! which trusts the cluster's issuer as an OIDC relying party.
//!
//! Each test has namespaces of its own (`World::ns("apps")` is this test's "apps").
//! Tests that count requests on the API server hold [`API`] exclusively; every other
//! test shares it, so no count is another test's.
//!
//! Every server started here listens on 127.0.0.1 with a port the OS picks and is
//! killed when its handle drops, so no test leaves one behind. Waits are bounded loops
//! over observable state, never assertions about time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::cluster::Cluster;
use testkit::kubernetes;
use testkit::process::Listening;

const BIN: &str = env!("CARGO_BIN_EXE_cloudsmith-gen");

/// The stand-in's fixed access token expiry.
const EXP: u64 = 1_700_000_000;

/// Held shared by every test, exclusively by a test that compares counts of requests on
/// the API server ([`Cluster::request_count`]) before and after.
static API: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// One compiled-component cache for every server this test binary starts.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(testkit::workspace_root().join(path)).expect("repository file")
}

/// The `auth` the server must answer for `namespace` with the deploy/ generator.
fn expected_auth(namespace: &str) -> String {
    let subject = format!("system:serviceaccount:{namespace}:cloudsmith-oidc");
    auth_for(&access_token_for(
        &subject,
        "my-organization",
        "my-oidc-service",
        EXP,
    ))
}

/// The namespaces every world has, each opted in as deploy/eso/apps.yaml shows (the
/// account `cloudsmith-oidc` and the token-minter RoleBinding).
const OPTED_IN: [&str; 4] = ["apps", "team-b", "team-c", "team-d"];

/// The cluster, the stand-in Cloudsmith and the server's manifests.
struct World {
    cluster: &'static Cluster,
    cloudsmith: cloudsmith::StandIn,
    dir: tempfile::TempDir,
    /// `serve`'s kubeconfig: the `cloudsmith-gen` service account's, copied here.
    kubeconfig: PathBuf,
    manifests: Vec<PathBuf>,
    /// This test's namespace for each name the test uses.
    namespaces: Mutex<HashMap<String, String>>,
    /// Callers' tokens, by (namespace name, account): one per caller, as a Secret holds.
    callers: Mutex<HashMap<(String, String), String>>,
    _api: ApiGuard,
}

enum ApiGuard {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// More generators, one per answer the contract names.
fn extra_generators(api: &str) -> String {
    let generator = |name: &str, org: &str| {
        format!(
            "---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\n\
             metadata:\n  name: {name}\n  namespace: ignored\nspec:\n  apiHost: \"{api}\"\n  orgSlug: {org}\n  \
             serviceSlug: my-oidc-service\n  serviceAccountRef:\n    name: cloudsmith-oidc\n"
        )
    };
    let mut text = testkit::cloudsmith::documented_manifest(api);
    for (name, org) in [
        ("refused", "fail-401"),
        ("throttled", "rate-limited-long"),
        ("garbled", "not-jwt"),
        ("echo", "echo-401"),
        ("slow", "slow"),
    ] {
        text.push_str(&generator(name, org));
    }
    text.push_str(
        "---\napiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\nmetadata:\n  \
         name: no-org\nspec:\n  serviceSlug: s\n  serviceAccountRef:\n    name: cloudsmith-oidc\n",
    );
    // Other kinds beside the generators are ignored, as in ESO's documentation.
    text.push_str(
        "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata:\n  name: x\nspec: {}\n",
    );
    text
}

impl World {
    async fn new(slow_delay: Duration) -> World {
        World::start(slow_delay, ApiGuard::Shared(API.read().await), false).await
    }

    /// A world of a test that compares counts of requests on the API server: no other
    /// test of this process runs meanwhile.
    async fn exclusive(slow_delay: Duration) -> World {
        World::start(slow_delay, ApiGuard::Exclusive(API.write().await), false).await
    }

    /// A world whose `serve` talks to a Kubernetes stand-in configured by `kube`, for
    /// what the real API server cannot do on demand (hold a TokenReview, ignore audiences).
    /// Its namespaces are the literal names ("apps", "team-b", "team-c"), each with the
    /// account `cloudsmith-oidc`; Cloudsmith also trusts the stand-in's issuer.
    async fn with_stand_in(
        slow_delay: Duration,
        kube: impl FnOnce(kubernetes::StandInConfig) -> kubernetes::StandInConfig,
    ) -> (World, kubernetes::StandIn) {
        let world = World::start(slow_delay, ApiGuard::Shared(API.read().await), true).await;
        let mut config = kube(kubernetes::StandInConfig::default());
        for ns in ["apps", "team-b", "team-c"] {
            config = config.with_service_account(ns, "cloudsmith-oidc");
        }
        let stand_in = kubernetes::StandIn::start(config)
            .await
            .expect("Kubernetes stand-in");
        std::fs::copy(
            stand_in.write_kubeconfig(world.dir.path()).expect("kubeconfig"),
            &world.kubeconfig,
        )
        .expect("the stand-in's kubeconfig");
        (world, stand_in)
    }

    async fn start(slow_delay: Duration, api: ApiGuard, trust_stand_in: bool) -> World {
        let cluster = Cluster::shared();
        let trusted = if trust_stand_in {
            cloudsmith::StandInConfig::default()
        } else {
            cloudsmith::StandInConfig {
                trusted: Vec::new(),
                ..cloudsmith::StandInConfig::default()
            }
        };
        let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig {
            slow_delay,
            ..trusted.also_trusting(cluster, "system:serviceaccount:*")
        })
        .await
        .expect("Cloudsmith stand-in");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("cloudsmith-gen.kubeconfig");
        std::fs::copy(cluster.deployed_service(), &kubeconfig).expect("copy the service's kubeconfig");
        // This test's namespaces, opted in, in one apply.
        let mut namespaces = HashMap::new();
        let mut objects = Vec::new();
        for name in OPTED_IN {
            let ns = cluster.fresh_name(name);
            objects
                .push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string());
            objects.push(cluster.opt_in_yaml(&ns, true));
            namespaces.insert(name.to_string(), ns);
        }
        cluster.apply(&objects.join("\n---\n"));
        // The deploy/ generator itself, pointed at the stand-in.
        let generators = repo_file("deploy/serve/generators.yaml").replace(
            "apiUrl: \"https://api.cloudsmith.io\"",
            &format!("apiUrl: \"{}\"", cloudsmith.url()),
        );
        assert!(
            generators.contains(&cloudsmith.url()),
            "deploy/serve/generators.yaml changed shape"
        );
        let first = dir.path().join("generators.yaml");
        std::fs::write(&first, generators).unwrap();
        let second = dir.path().join("more.yaml");
        std::fs::write(&second, extra_generators(&cloudsmith.url())).unwrap();
        World {
            cluster,
            cloudsmith,
            dir,
            kubeconfig,
            manifests: vec![first, second],
            namespaces: Mutex::new(namespaces),
            callers: Mutex::default(),
            _api: api,
        }
    }

    /// This test's namespace for `name`: one of [`OPTED_IN`], or a namespace created on
    /// first use that did not opt in.
    fn ns(&self, name: &str) -> String {
        let mut namespaces = self.namespaces.lock().unwrap();
        namespaces
            .entry(name.to_string())
            .or_insert_with(|| self.cluster.namespace(name))
            .clone()
    }

    /// A token of service account `name` of this test's namespace `namespace`, for the
    /// API server's audience: what a `kubernetes.io/service-account-token` Secret holds,
    /// here from the TokenRequest API. The account is created on first use.
    fn caller(&self, namespace: &str, name: &str) -> String {
        let ns = self.ns(namespace);
        let key = (ns.clone(), name.to_string());
        if let Some(token) = self.callers.lock().unwrap().get(&key) {
            return token.clone();
        }
        self.cluster.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
        ));
        let token = self.cluster.token(&ns, name, &[]);
        self.callers.lock().unwrap().insert(key, token.clone());
        token
    }

    /// The path of a call for `generator` in this test's namespace `namespace`.
    fn path(&self, namespace: &str, generator: &str) -> String {
        format!("/v1/namespaces/{}/generators/{generator}", self.ns(namespace))
    }

    /// ESO's request for `generator` in this test's namespace `namespace` with `token`.
    async fn ask(&self, addr: SocketAddr, namespace: &str, generator: &str, token: &str) -> Reply {
        ask(addr, &self.ns(namespace), generator, token).await
    }

    /// Starts `serve` with the world's settings and `extra` flags.
    fn serve(&self, extra: &[&str]) -> Server {
        start_serve(&serve_args(self, extra), &[])
    }

    /// `serve` over HTTPS with a certificate of `ca`, written into the world's dir
    /// (where a renewal writes the next one over it).
    fn serve_https(&self, ca: &testkit::tls::TestCa, extra: &[&str]) -> Server {
        let (cert, key) = ca.write_server_pem(self.dir.path()).unwrap();
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.serve(&args)
    }

    /// Points `serve`'s kubeconfig at `server` instead of the API server.
    fn redirect_kubeconfig(&self, server: &str) {
        let text = std::fs::read_to_string(&self.kubeconfig)
            .unwrap()
            .replace(self.cluster.server(), server);
        std::fs::write(&self.kubeconfig, text).unwrap();
    }

    /// Every token this world handed out or saw: the callers', the service's own, those
    /// the server minted (as they reached Cloudsmith), and the access tokens and `auth`
    /// values Cloudsmith answered for them.
    fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.callers.lock().unwrap().values().cloned().collect();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(self.cluster.deployed_service()).unwrap()).unwrap();
        secrets.push(config["users"][0]["user"]["token"].as_str().unwrap().to_string());
        for r in self.cloudsmith.requests() {
            let Some(token) = r
                .json()
                .and_then(|v| v["oidc_token"].as_str().map(str::to_string))
            else {
                continue;
            };
            if let Some(sub) =
                cloudsmith::jwt_payload(&token).and_then(|p| p["sub"].as_str().map(str::to_string))
            {
                let org = r.org().unwrap_or_default().to_string();
                let access = access_token_for(&sub, &org, "my-oidc-service", EXP);
                secrets.push(auth_for(&access));
                secrets.push(access);
            }
            secrets.push(token);
        }
        secrets
    }
}

/// A running `cloudsmith-gen serve` (its log kept); killed on drop.
type Server = Listening;

/// Starts `cloudsmith-gen serve` with `args` and the variables `env` set for it, and
/// waits for its listening line. The binary is `CLOUDSMITH_GEN` when set (a figure for
/// an older server, say), else this package's.
fn start_serve(args: &[String], env: &[(&str, &Path)]) -> Server {
    let mut command = Command::new(testkit::tools::cloudsmith_gen());
    command.args(args).envs(env.iter().copied());
    Listening::start(command)
}

/// An answer as a client sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    /// The error case, checking the error shape on the way.
    fn case(&self) -> String {
        let v = self.json();
        let error = v["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error object: {}", self.body));
        assert_eq!(error.len(), 2, "{}", self.body);
        let message = error["message"].as_str().expect("message");
        assert!(!message.is_empty() && !message.contains('\n'), "{}", self.body);
        error["case"].as_str().expect("case").to_string()
    }
}

/// One request on a fresh connection, with the headers Go's net/http sends for ESO
/// (`User-Agent: Go-http-client/1.1`, `Accept-Encoding: gzip`, a `Content-Length`).
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut all = vec![("user-agent", "Go-http-client/1.1"), ("accept-encoding", "gzip")];
    all.extend_from_slice(headers);
    let (status, headers, body) = testkit::client::request(addr, method, path, &all, body).await;
    Reply {
        status,
        headers,
        body,
    }
}

/// ESO's request for `generator` in `namespace` with `token`.
async fn ask(addr: SocketAddr, namespace: &str, generator: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "POST",
        &format!("/v1/namespaces/{namespace}/generators/{generator}"),
        &[("authorization", &auth), ("content-type", "application/json")],
        b"",
    )
    .await
}

/// Nothing secret in the server's logs: callers' tokens, the tokens it minted, the
/// access tokens and `auth` values it answered.
fn assert_logs_clean(server: &Server, world: &World, more: &[&str]) {
    let logs = server.logs();
    let mut secrets = world.secrets();
    secrets.extend(more.iter().map(|s| s.to_string()));
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    testkit::process::assert_no_secret(&[&logs], &secrets);
    // Nor any other JWT: every one starts with the base64 of `{"alg"`.
    assert!(!logs.contains("eyJhbGci"), "a JWT in the logs:\n{logs}");
    server.log_json();
}

/// Every unauthenticated request is 401 with `WWW-Authenticate: Bearer`, and none
/// reaches the TokenRequest API or Cloudsmith.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_are_401_and_mint_nothing() {
    let world = World::exclusive(Duration::from_secs(10)).await;
    let server = world.serve(&[]);
    let apps = world.ns("apps");
    let good = world.caller("apps", "eso-cloudsmith-caller");
    let tampered = testkit::oidc::tampered(&good);
    // Tokens the API server itself refuses: for Cloudsmith's audience, not its own; of an
    // account deleted since; signed by another key for the same issuer.
    let for_cloudsmith =
        world
            .cluster
            .token(&apps, "eso-cloudsmith-caller", &[cloudsmith::PRODUCTION_AUDIENCE]);
    let gone = world.caller("apps", "deleted-since");
    world
        .cluster
        .kubectl_ok(&["delete", "serviceaccount", "deleted-since", "-n", &apps]);
    let forged = testkit::oidc::token_from_issuer(
        world.cluster.issuer(),
        &format!("system:serviceaccount:{apps}:eso-cloudsmith-caller"),
        &[world.cluster.issuer()],
    );
    let basic = format!("Basic {}", base64_of("user:pass"));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Basic credentials", Some(basic)),
        ("empty bearer", Some("Bearer ".into())),
        ("bearer without a token", Some("Bearer".into())),
        ("not a JWT", Some("Bearer not-a-token".into())),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        (
            "token for another audience",
            Some(format!("Bearer {for_cloudsmith}")),
        ),
        ("token of a deleted account", Some(format!("Bearer {gone}"))),
        ("token signed by another key", Some(format!("Bearer {forged}"))),
    ];
    let minted_before = world.cluster.request_count("serviceaccounts/token", "POST");
    let access_before = world.cluster.request_count("subjectaccessreviews", "POST");
    for (what, header) in &cases {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(h) = header {
            headers.push(("authorization", h.as_str()));
        }
        let reply = request(
            server.addr(),
            "POST",
            &world.path("apps", "cloudsmith-access-token"),
            &headers,
            b"",
        )
        .await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert_eq!(reply.case(), "unauthenticated", "{what}");
        assert_eq!(reply.headers["www-authenticate"], "Bearer", "{what}");
        assert!(
            !reply.body.contains(&good) && !reply.body.contains(&tampered),
            "{what}"
        );
    }
    // An unknown generator is not revealed to an unauthenticated caller either.
    let reply = request(server.addr(), "POST", &world.path("apps", "nope"), &[], b"").await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        world.cluster.request_count("serviceaccounts/token", "POST"),
        minted_before,
        "no token minted"
    );
    assert!(world.cloudsmith.requests().is_empty(), "no exchange");
    assert_eq!(
        world.cluster.request_count("subjectaccessreviews", "POST"),
        access_before
    );
    // Counted without a namespace label (the path comes from an unauthenticated client).
    let metrics = request(server.addr(), "GET", "/metrics", &[], b"").await.body;
    let line = format!(
        "cloudsmith_gen_refused_total{{case=\"unauthenticated\"}} {}\n",
        cases.len() + 1
    );
    assert!(metrics.contains(&line), "{line} not in {metrics}");
    assert!(!metrics.contains(&format!("namespace=\"{apps}\"")), "{metrics}");
    assert_logs_clean(
        &server,
        &world,
        &[&good, &tampered, &for_cloudsmith, &gone, &forged],
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A caller may ask for its own namespace; any other needs a SubjectAccessReview that
/// allows `create` on `cloudsmithaccesstokens/generate` for that generator there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_need_a_subject_access_review() {
    let world = World::exclusive(Duration::from_secs(10)).await;
    let server = world.serve(&[]);
    let team_b = world.caller("team-b", "eso");
    let platform = world.caller("platform", "eso-all");
    let (team_b_ns, platform_ns) = (world.ns("team-b"), world.ns("platform"));
    // The grant the README gives a caller from another namespace, for one generator.
    world.cluster.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: generate\n  namespace: {team_b_ns}\n\
         rules:\n  - apiGroups: [\"generators.external-secrets.io\"]\n    resources: [\"cloudsmithaccesstokens/generate\"]\n    \
         resourceNames: [\"cloudsmith-access-token\"]\n    verbs: [\"create\"]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: generate\n  namespace: {team_b_ns}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: generate}}\n\
         subjects: [{{kind: ServiceAccount, name: eso-all, namespace: {platform_ns}}}]\n"
    ));
    // A user who is no service account: a bootstrap token (system:bootstrap:<id>), the
    // one kind of bearer token besides service accounts' that the API server's
    // TokenReview knows here (--enable-bootstrap-token-auth, as kubeadm runs it).
    let person = world.cluster.bootstrap_token();
    let tokens_before = world.cluster.request_count("tokenreviews", "POST");
    let reviews_before = world.cluster.request_count("subjectaccessreviews", "POST");
    let minted_before = world.cluster.request_count("serviceaccounts/token", "POST");
    let forbidden = [
        (
            "another namespace's account",
            "apps",
            "cloudsmith-access-token",
            &team_b,
        ),
        (
            "a grant for another namespace",
            "apps",
            "cloudsmith-access-token",
            &platform,
        ),
        (
            "a grant for another generator",
            "team-b",
            "my-cloudsmith-token",
            &platform,
        ),
        (
            "a user, not a service account",
            "apps",
            "cloudsmith-access-token",
            &person,
        ),
    ];
    for (what, ns, generator, token) in forbidden {
        let reply = world.ask(server.addr(), ns, generator, token).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.body);
        assert_eq!(reply.case(), "forbidden", "{what}");
    }
    assert_eq!(
        world.cluster.request_count("serviceaccounts/token", "POST"),
        minted_before,
        "no token minted before authorization"
    );
    assert!(world.cloudsmith.requests().is_empty());
    // Forbidden callers learn nothing about which generators exist.
    let reply = world.ask(server.addr(), "apps", "nope", &team_b).await;
    assert_eq!(reply.status, 403);
    // One SubjectAccessReview per refusal, one TokenReview per caller, on the API
    // server's own count. (What each review asked is shown by the answers: the grant
    // names one verb, group, resource, subresource, name and namespace, and only a review
    // of exactly those is allowed, below.)
    assert_eq!(
        world.cluster.request_count("subjectaccessreviews", "POST") - reviews_before,
        5
    );
    assert_eq!(
        world.cluster.request_count("tokenreviews", "POST") - tokens_before,
        3
    );

    // With the grant: the answer is for the URL's namespace, never the caller's.
    let reply = world
        .ask(server.addr(), "team-b", "cloudsmith-access-token", &platform)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["auth"], expected_auth(&team_b_ns));
    assert_eq!(
        world.cluster.request_count("subjectaccessreviews", "POST") - reviews_before,
        6
    );
    // Own namespace: allowed without a review.
    let reply = world
        .ask(server.addr(), "team-b", "cloudsmith-access-token", &team_b)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        world.cluster.request_count("subjectaccessreviews", "POST") - reviews_before,
        6
    );
    assert_logs_clean(&server, &world, &[&team_b, &platform, &person]);
}

/// Each failure has its status, its case (the WIT's generate-error case for the
/// generator's own) and, for the transient ones, `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_status_and_case() {
    let world = World::new(Duration::from_secs(10)).await;
    let server = world.serve(&[]);
    let token = world.caller("apps", "eso");
    let apps = world.ns("apps");
    let cases: [(&str, &str, u16, &str, Option<&str>); 8] = [
        ("apps", "nope", 422, "unknown-generator", None),
        ("apps", "no-org", 422, "invalid-spec", None),
        ("apps", "refused", 502, "unauthorized", None),
        ("apps", "echo", 502, "unauthorized", None),
        ("apps", "garbled", 502, "invalid-token", None),
        ("apps", "throttled", 503, "rate-limited", Some("3600")),
        // A namespace that did not opt in: the API server refuses the TokenRequest.
        ("empty", "cloudsmith-access-token", 502, "token-source", None),
        // The seed's own manifest (serviceAccountRef default/default): its namespace
        // is ignored, the account is apps/default, which deploy/'s RBAC does not let
        // the service mint for.
        ("apps", "my-cloudsmith-token", 502, "token-source", None),
    ];
    for (ns, generator, status, case, retry) in cases {
        let token = if ns == "apps" {
            token.clone()
        } else {
            world.caller(ns, "eso")
        };
        let reply = world.ask(server.addr(), ns, generator, &token).await;
        assert_eq!(reply.status, status, "{ns}/{generator}: {}", reply.body);
        if status != 200 {
            assert_eq!(reply.case(), case, "{ns}/{generator}");
        }
        if generator == "refused" {
            // The claims of the token the host minted for the call: what to trust.
            let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
            let claims = format!(
                "the token's iss={}, sub=system:serviceaccount:{apps}:cloudsmith-oidc, aud=",
                world.cluster.issuer()
            );
            assert!(message.contains(&claims), "{message}");
            // ESO shows only the status: the service's log says why, with the claims
            // (the line is written before the answer; its reader thread may lag).
            wait_until(|| async {
                server.log_json().into_iter().any(|l| {
                    l["generator"] == "refused" && l["message"].as_str().is_some_and(|m| m.contains(&claims))
                })
            })
            .await;
        }
        assert_eq!(
            reply.headers.get("retry-after").map(|v| v.to_str().unwrap()),
            retry,
            "{ns}/{generator}"
        );
        if case == "token-source" {
            // The API server's reason, as it gave it.
            let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.contains("403")
                    && message.contains("cannot create resource \"serviceaccounts/token\""),
                "{message}"
            );
        }
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
    // echo-401 quotes the whole exchange request, OIDC token included: redacted.
    let echo = world.ask(server.addr(), "apps", "echo", &token).await;
    let minted: Vec<String> = world
        .cloudsmith
        .requests_for("echo-401")
        .iter()
        .map(|r| r.json().unwrap()["oidc_token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(minted.len(), 2);
    for t in &minted {
        assert!(!echo.body.contains(t.as_str()), "minted token in an error answer");
    }
    assert_logs_clean(&server, &world, &[&token]);
}

/// 64 concurrent callers from four namespaces: every request answered, each with its
/// own namespace's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_at_concurrency_64() {
    let world = World::new(Duration::from_secs(10)).await;
    let server = world.serve(&["--rate-limit", "0", "--max-concurrent-calls", "8"]);
    let namespaces: Vec<(String, String)> = OPTED_IN
        .iter()
        .map(|name| (world.ns(name), world.caller(name, "eso")))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (ns, token) = namespaces[i % namespaces.len()].clone();
        let addr = server.addr();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..4 {
                let reply = ask(addr, &ns, "cloudsmith-access-token", &token).await;
                answers.push((reply.status, reply.body));
            }
            (ns, answers)
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (ns, answers) = done.expect("task");
        for (status, body) in answers {
            assert_eq!(status, 200, "{ns}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["auth"], expected_auth(&ns), "an answer for another namespace");
            answered += 1;
        }
    }
    assert_eq!(answered, 256);
    assert_eq!(world.cloudsmith.requests().len(), 256);
    let metrics = request(server.addr(), "GET", "/metrics", &[], b"").await.body;
    for (ns, _) in namespaces {
        let line = format!("cloudsmith_gen_calls_total{{generator=\"cloudsmith-access-token\",namespace=\"{ns}\",case=\"ok\"}} 64");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    assert!(
        metrics.contains("cloudsmith_gen_exchange_duration_seconds_count 256"),
        "{metrics}"
    );
    assert_logs_clean(&server, &world, &[]);
}

/// Health checks answer while the only sandbox slot waits on a slow Cloudsmith; SIGTERM
/// lets that call finish, answers it, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_while_busy_and_graceful_shutdown() {
    let world = World::new(Duration::from_secs(8)).await;
    let mut server = world.serve(&[
        "--max-concurrent-calls",
        "1",
        "--max-queued-calls",
        "0",
        "--shutdown-timeout",
        "120",
    ]);
    let addr = server.addr();
    let token = world.caller("apps", "eso");
    let slow = tokio::spawn({
        let (token, apps) = (token.clone(), world.ns("apps"));
        async move { ask(addr, &apps, "slow", &token).await }
    });
    wait_for_metric(addr, "cloudsmith_gen_calls_in_flight 1").await;
    for path in ["/healthz", "/readyz"] {
        let reply = request(addr, "GET", path, &[], b"").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"), "{path}");
    }
    // The only slot is taken and no call may queue: a second caller is told to retry.
    let busy = world.ask(addr, "apps", "cloudsmith-access-token", &token).await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.case(), "busy");
    assert!(busy.headers.contains_key("retry-after"));
    assert!(!slow.is_finished(), "the slow call is still in flight");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.stop("TERM");
        (status, server)
    });
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the call in flight finished: {}", reply.body);
    let (status, server) = status.await.unwrap();
    assert!(status.success(), "exit {status:?}: {}", server.logs());
    let messages: Vec<String> = server
        .log_json()
        .iter()
        .map(|l| l["msg"].as_str().unwrap().to_string())
        .collect();
    assert!(
        messages.iter().any(|m| m == "stopping") && messages.last().unwrap() == "stopped",
        "{messages:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    assert_logs_clean(&server, &world, &[&token]);
}

/// Polls /metrics until it holds `line` (bounded).
async fn wait_for_metric(addr: SocketAddr, line: &str) {
    for _ in 0..600 {
        if request(addr, "GET", "/metrics", &[], b"")
            .await
            .body
            .contains(line)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/metrics never showed {line}");
}

/// A changed manifest is served without a restart; a broken one is refused and the
/// previous generators stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_reloaded_when_they_change() {
    let world = World::new(Duration::from_secs(10)).await;
    let server = world.serve(&["--reload-interval", "0.1"]);
    let token = world.caller("apps", "eso");
    assert_eq!(
        world.ask(server.addr(), "apps", "added", &token).await.status,
        422
    );
    let added = repo_file("deploy/serve/generators.yaml")
        .replace(
            "apiUrl: \"https://api.cloudsmith.io\"",
            &format!("apiUrl: \"{}\"", world.cloudsmith.url()),
        )
        .replace("name: cloudsmith-access-token", "name: added");
    let path = &world.manifests[1];
    let previous = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{previous}---\n{added}")).unwrap();
    wait_until(|| async { world.ask(server.addr(), "apps", "added", &token).await.status == 200 }).await;

    std::fs::write(path, "kind: [unclosed").unwrap();
    wait_until(|| async { server.logs().contains("manifests not reloaded") }).await;
    assert_eq!(
        world.ask(server.addr(), "apps", "added", &token).await.status,
        200,
        "previous set kept"
    );
    let metrics = request(server.addr(), "GET", "/metrics", &[], b"").await.body;
    assert!(
        metrics.contains("cloudsmith_gen_manifest_reloads_total{result=\"failed\"}"),
        "{metrics}"
    );
    let _ = world.dir.path();
}

async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

/// A TLS connection to `addr` trusting only `ca`; `None` when the handshake fails.
async fn tls_client(
    addr: SocketAddr,
    ca: &testkit::tls::TestCa,
) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(ca.client_config().unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// With --tls-cert/--tls-key the contract is served over HTTPS, and a renewed
/// certificate (files replaced in place, as cert-manager does) is served without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_certificate_renewal() {
    let world = World::new(Duration::from_secs(10)).await;
    let ca = testkit::tls::TestCa::new();
    let server = world.serve_https(&ca, &["--reload-interval", "0.1"]);
    let mut sender = tls_client(server.addr(), &ca)
        .await
        .expect("TLS handshake with the test CA");
    let token = world.caller("apps", "eso");
    let req = hyper::Request::post(world.path("apps", "cloudsmith-access-token"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["auth"], expected_auth(&world.ns("apps")));

    // Plain HTTP to the TLS port gets no answer.
    let plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let handshake =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(plain)).await;
    if let Ok((mut sender, conn)) = handshake {
        tokio::spawn(conn);
        let req = hyper::Request::get("/healthz")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(sender.send_request(req).await.is_err());
    }

    // Renewal: a new CA's certificate written over the files.
    let renewed = testkit::tls::TestCa::new();
    // The same paths serve_https wrote the first pair to.
    let (_, key) = renewed.write_server_pem(world.dir.path()).unwrap();
    wait_until(|| async { tls_client(server.addr(), &renewed).await.is_some() }).await;
    assert!(
        tls_client(server.addr(), &ca).await.is_none(),
        "the old certificate is no longer served"
    );
    // A broken renewal keeps the working pair.
    std::fs::write(&key, "not a key").unwrap();
    wait_until(|| async { server.logs().contains("TLS certificate not reloaded") }).await;
    assert!(tls_client(server.addr(), &renewed).await.is_some());
}

/// The value of gauge `name` in /metrics.
async fn gauge(addr: SocketAddr, name: &str) -> Option<i64> {
    let body = request(addr, "GET", "/metrics", &[], b"").await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Callers that hang up while Cloudsmith is slow, more of them than slots and queue:
/// each gives back its place when hyper drops its call, so the gauge returns to 0 and
/// the next caller is answered, not told the server is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_hang_up_give_back_their_places() {
    use tokio::io::AsyncWriteExt as _;
    let world = World::new(Duration::from_secs(30)).await;
    let server = world.serve(&["--max-concurrent-calls", "1", "--max-queued-calls", "2"]);
    let addr = server.addr();
    let token = world.caller("apps", "eso");
    let mut hung_up = Vec::new();
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-length: 0\r\n\r\n",
            world.path("apps", "slow")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        hung_up.push(stream);
    }
    // Three hold a slot or a queue place; the others were told "busy" (and answered).
    // Both are awaited: a call still unread when the callers hang up would take a place
    // given back and count as a fourth abandoned call.
    wait_until(|| async {
        gauge(addr, "cloudsmith_gen_calls_in_flight").await == Some(3)
            && gauge(addr, "cloudsmith_gen_refused_total{case=\"busy\"}").await == Some(3)
    })
    .await;
    drop(hung_up);
    wait_until(|| async { gauge(addr, "cloudsmith_gen_calls_in_flight").await == Some(0) }).await;
    let reply = world.ask(addr, "apps", "cloudsmith-access-token", &token).await;
    assert_eq!(reply.status, 200, "the places came back: {}", reply.body);
    assert_eq!(
        reply.json()["auth"],
        Value::String(expected_auth(&world.ns("apps")))
    );
    // Each abandoned call is visible: a count, and a `call` line with its case.
    assert_eq!(gauge(addr, "cloudsmith_gen_calls_abandoned_total").await, Some(3));
    let gone = server
        .log_json()
        .iter()
        .filter(|l| l["case"] == "caller-gone")
        .count();
    assert_eq!(gone, 3, "{}", server.logs());
}

/// An API server that accepts connections and never answers: every review is bounded
/// by --kube-timeout (503 `unavailable`), the reviews in flight by
/// --max-pending-reviews (503 `busy` at once), and /healthz stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_server_is_503_and_bounded() {
    let world = World::new(Duration::from_secs(10)).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            held.push(stream);
        }
    });
    // Why not the real API server: it cannot be made to hang on demand; a listener that
    // accepts and never answers can (the TLS handshake itself never ends).
    world.redirect_kubeconfig(&format!("https://{hung_addr}"));
    let server = world.serve(&["--kube-timeout", "2", "--max-pending-reviews", "2"]);
    let addr = server.addr();
    let apps = world.ns("apps");
    let calls: Vec<_> = (0..6)
        .map(|i| {
            // Six callers, six tokens to review; never read by an API server, so the
            // testkit's own tokens do.
            let token = testkit::oidc::token(
                &format!("system:serviceaccount:{apps}:eso-{i}"),
                &[world.cluster.issuer()],
            );
            let apps = apps.clone();
            tokio::spawn(async move { ask(addr, &apps, "cloudsmith-access-token", &token).await })
        })
        .collect();
    wait_until(|| async { gauge(addr, "cloudsmith_gen_reviews_in_flight").await == Some(2) }).await;
    let health = request(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let mut cases = Vec::new();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.headers.contains_key("retry-after"), "{}", reply.body);
        cases.push(reply.case());
    }
    cases.sort();
    assert_eq!(
        cases,
        ["busy", "busy", "busy", "busy", "unavailable", "unavailable"],
        "two reviewed, four turned away"
    );
    assert_eq!(gauge(addr, "cloudsmith_gen_calls_in_flight").await, Some(0));
    assert_eq!(gauge(addr, "cloudsmith_gen_reviews_in_flight").await, Some(0));
    assert!(world.cloudsmith.requests().is_empty());
    holder.abort();
}

/// A TokenRequest the API server holds: bounded by --kube-timeout, 503 `unavailable`
/// with Retry-After (worth a retry), not 502 `token-source`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_token_request_is_503_unavailable() {
    // Why the stand-in: a real API server cannot be made to hold a TokenRequest on demand
    // while it still answers the reviews.
    use testkit::kubernetes::{StandIn, StandInConfig};
    let world = World::new(Duration::from_secs(10)).await;
    let stalling = StandIn::start(StandInConfig {
        token_request_delay: Duration::from_secs(60),
        ..StandInConfig::default().with_service_account("apps", "cloudsmith-oidc")
    })
    .await
    .unwrap();
    std::fs::copy(
        stalling.write_kubeconfig(world.dir.path()).unwrap(),
        &world.kubeconfig,
    )
    .unwrap();
    let server = world.serve(&["--kube-timeout", "1"]);
    let caller = testkit::oidc::token("system:serviceaccount:apps:eso", &[testkit::oidc::ISSUER]);
    let reply = ask(server.addr(), "apps", "cloudsmith-access-token", &caller).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.case(), "unavailable", "{}", reply.body);
    assert!(reply.headers.contains_key("retry-after"));
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s"),
        "{}",
        reply.body
    );
    // (The stand-in records a TokenRequest when it answers, a minute later: the message
    // above, from the bound on the TokenRequest, is what shows it was sent.)
    assert!(world.cloudsmith.requests().is_empty());
}

/// A reconcile wave: N ExternalSecrets of one namespace refresh at once with the
/// namespace's one token. The wave costs one TokenReview (and, for a caller from another
/// namespace, one SubjectAccessReview), not one per call; a refusal is reused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_wave_costs_one_review() {
    const N: usize = 20;
    let world = World::exclusive(Duration::from_secs(10)).await;
    let server = world.serve(&[]);
    let addr = server.addr();
    let wave = |namespace: String, token: String| {
        (0..N)
            .map(|_| {
                let (namespace, token) = (namespace.clone(), token.clone());
                tokio::spawn(async move { ask(addr, &namespace, "cloudsmith-access-token", &token).await })
            })
            .collect::<Vec<_>>()
    };
    let (apps, team_b) = (world.ns("apps"), world.ns("team-b"));
    let eso = world.caller("apps", "eso");
    let platform = world.caller("platform", "eso-all");
    world.cluster.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: generate\n  namespace: {team_b}\n\
         rules:\n  - apiGroups: [\"generators.external-secrets.io\"]\n    resources: [\"cloudsmithaccesstokens/generate\"]\n    \
         resourceNames: [\"cloudsmith-access-token\"]\n    verbs: [\"create\"]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: generate\n  namespace: {team_b}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: generate}}\n\
         subjects: [{{kind: ServiceAccount, name: eso-all, namespace: {}}}]\n",
        world.ns("platform")
    ));
    // The API server's own counts (this test runs alone in its process).
    let count = |resource: &str| world.cluster.request_count(resource, "POST");
    let (token_reviews, access_reviews) = (count("tokenreviews"), count("subjectaccessreviews"));

    for call in wave(apps.clone(), eso) {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reviews = count("tokenreviews") - token_reviews;
    eprintln!("reconcile wave of {N} calls, one namespace: {reviews} TokenReview(s) on the API server");
    assert_eq!(reviews, 1);
    assert_eq!(
        world.cloudsmith.requests().len(),
        N,
        "each call still mints its own token"
    );

    for call in wave(team_b, platform) {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let access = count("subjectaccessreviews") - access_reviews;
    eprintln!("reconcile wave of {N} calls for another namespace: {access} SubjectAccessReview(s) on the API server");
    assert_eq!((count("tokenreviews") - token_reviews, access), (2, 1));

    // A token the API server refuses (for another audience): the refusal is reused.
    let bad = world.cluster.token(&apps, "eso", &["https://wrong.example"]);
    let before = count("tokenreviews");
    for call in wave(apps, bad) {
        assert_eq!(call.await.unwrap().status, 401);
    }
    assert_eq!(
        count("tokenreviews"),
        before + 1,
        "a refusal is reused for a few seconds"
    );
}

/// `--component oci://…@sha256:…`: serve fetches the pinned component at start (from a
/// real registry over TLS, trusted through SSL_CERT_FILE) and answers ESO with it, as
/// with the embedded generator; a component that cannot be fetched fails the start in
/// one line.
#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_a_component_pinned_in_a_registry() {
    use testkit::registry::{Distribution, DistributionConfig};
    let world = World::new(Duration::from_secs(10)).await;
    let registry = Distribution::start(DistributionConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let ca = world.dir.path().join("registry-ca.pem");
    std::fs::write(&ca, registry.ca().unwrap().ca_pem()).unwrap();
    let home = world.dir.path().join("home");
    let env = [
        ("SSL_CERT_FILE", ca.as_path()),
        ("HOME", home.as_path()),
        ("DOCKER_CONFIG", home.as_path()),
    ];
    let reference = format!("{}/plugins/cloudsmith-gen:1.0", registry.authority());
    let push = Command::new(BIN)
        .args(["component", "push", &reference])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    let digest = String::from_utf8(push.stdout).unwrap().trim().to_string();
    let pinned = format!("oci://{}/plugins/cloudsmith-gen@{digest}", registry.authority());

    let server = start_serve(&serve_args(&world, &["--component", &pinned]), &env);
    let token = world.caller("apps", "eso");
    let reply = world
        .ask(server.addr(), "apps", "cloudsmith-access-token", &token)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["auth"],
        Value::String(expected_auth(&world.ns("apps")))
    );
    assert_logs_clean(&server, &world, &[]);

    // A digest the registry does not hold: the start fails, in one line, exit 10.
    let missing = format!(
        "oci://{}/plugins/cloudsmith-gen@sha256:{}",
        registry.authority(),
        "0".repeat(64)
    );
    let out = Command::new(BIN)
        .args(serve_args(&world, &["--component", &missing]))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("not found"),
        "{stderr}"
    );
}

/// `serve`'s arguments for `world`, as [`World::serve`] gives them, and `extra`.
fn serve_args(world: &World, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--kubeconfig".into(),
        world.kubeconfig.display().to_string(),
        "--allow-host".into(),
        world.cloudsmith.authority(),
        "--allow-http".into(),
        "--cache-dir".into(),
        cache_dir().display().to_string(),
    ];
    for m in &world.manifests {
        args.push("--manifest".into());
        args.push(m.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A caller's token for the Kubernetes stand-in: service account `eso` of `namespace`,
/// for the stand-in's own audience.
fn stand_in_caller(namespace: &str) -> String {
    testkit::oidc::token(
        &format!("system:serviceaccount:{namespace}:eso"),
        &[testkit::oidc::ISSUER],
    )
}

/// A raw connection that sends `request` and holds it open, reading nothing.
async fn send_raw(addr: SocketAddr, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// Reads what the server sends on `stream` until it closes, within `bound`.
async fn read_all(stream: &mut tokio::net::TcpStream, bound: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut text = Vec::new();
    let read = tokio::time::timeout(bound, stream.read_to_end(&mut text)).await;
    read.ok().map(|_| String::from_utf8_lossy(&text).into_owned())
}

/// A POST for `generator` in `namespace` with `token`, as raw HTTP/1.1.
fn raw_ask(namespace: &str, generator: &str, token: &str, extra: &str) -> String {
    format!(
        "POST /v1/namespaces/{namespace}/generators/{generator} HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n{extra}\r\n"
    )
}

/// 10,000 callers hang up while their TokenReview is under way (each with a token of its
/// own, so each is a review of its own): every single-flight entry goes with its caller,
/// and `cloudsmith_gen_reviews_in_progress` comes back to 0. (Before, an entry was
/// removed only when its review returned: each hang-up left one for good, and anyone
/// who could reach the port could grow the map without bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_hang_up_mid_review_leave_no_review_behind() {
    const WAVE: usize = 64;
    const WAVES: usize = 157;
    // Why the stand-in: a real API server cannot be made to hold TokenReviews on demand.
    let (world, kube) = World::with_stand_in(Duration::from_secs(10), |config| kubernetes::StandInConfig {
        token_review_delay: Duration::from_secs(600),
        ..config
    })
    .await;
    let server = world.serve(&["--max-pending-reviews", "100000"]);
    let mut sent = 0;
    for wave in 0..WAVES {
        let mut held = Vec::with_capacity(WAVE);
        for n in 0..WAVE {
            let token = format!("not-a-token-{wave}-{n}");
            held.push(
                send_raw(
                    server.addr(),
                    &raw_ask("apps", "cloudsmith-access-token", &token, "content-length: 0\r\n"),
                )
                .await,
            );
        }
        sent += WAVE;
        // Every review of this wave is under way at the API server, then every caller
        // hangs up.
        wait_until(|| async { kube.token_reviews_received() >= sent }).await;
        drop(held);
    }
    assert_eq!(sent, 10_048);
    wait_until(|| async { gauge(server.addr(), "cloudsmith_gen_reviews_in_progress").await == Some(0) })
        .await;
    assert_eq!(
        gauge(server.addr(), "cloudsmith_gen_reviews_in_flight").await,
        Some(0)
    );
    assert!(kube.token_reviews().is_empty(), "no review was answered");
    assert_logs_clean(&server, &world, &[]);
}

/// A flood of unknown tokens, each a TokenReview of its own, more at once than there
/// are places for reviews: callers already let in keep getting their credentials, each
/// within ESO's 10 s, even when their own cached review runs out (every second here,
/// `--review-cache-ttl 1`). Their renewals take the known callers' pool, which the flood
/// cannot fill. (Before, one pool: a renewal was refused `503 busy` while the flood held
/// every place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_does_not_starve_authenticated_callers() {
    const FLOODERS: usize = 48;
    // Why the stand-in: a real API server cannot be made to take 200 ms per TokenReview.
    let (world, kube) = World::with_stand_in(Duration::from_secs(10), |config| kubernetes::StandInConfig {
        token_review_delay: Duration::from_millis(200),
        ..config
    })
    .await;
    let server = world.serve(&[
        "--max-pending-reviews",
        "4",
        "--review-cache-ttl",
        "1",
        "--rate-limit",
        "0",
    ]);
    let addr = server.addr();
    let good: Vec<(&str, String)> = ["apps", "team-b", "team-c"]
        .into_iter()
        .map(|ns| (ns, stand_in_caller(ns)))
        .collect();
    for (ns, token) in &good {
        assert_eq!(
            ask(addr, ns, "cloudsmith-access-token", token).await.status,
            200,
            "{ns} before the flood"
        );
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..FLOODERS)
        .map(|f| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let token = format!("bad-{f}-{n}");
                    let reply = ask(addr, "apps", "cloudsmith-access-token", &token).await;
                    *statuses.entry(reply.status).or_default() += 1;
                    n += 1;
                }
                statuses
            })
        })
        .collect();
    // The flood holds every place of the unknown pool before the callers go on.
    wait_until(|| async { kube.token_reviews_received() >= 64 }).await;
    let mut answers = Vec::new();
    for round in 0..8 {
        for (ns, token) in &good {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                ask(addr, ns, "cloudsmith-access-token", token),
            )
            .await;
            answers.push((round, *ns, reply.map(|r| (r.status, r.body))));
        }
        // Past the cached review's second: the next call needs a review again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut flooded = std::collections::BTreeMap::<u16, u64>::new();
    for f in flood {
        for (status, n) in f.await.unwrap() {
            *flooded.entry(status).or_default() += n;
        }
    }
    eprintln!(
        "flood: {flooded:?}; TokenReviews received {}",
        kube.token_reviews_received()
    );
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, _, r)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        refused.is_empty(),
        "callers let in before were refused or late: {refused:?}"
    );
    assert!(
        flooded.get(&503).is_some_and(|n| *n > 0),
        "the flood met the bound: {flooded:?}"
    );
    assert!(!flooded.contains_key(&200), "{flooded:?}");
}

/// With `--audience`, the TokenReview must say the token was authenticated for one of
/// them. An authenticator that ignores `spec.audiences` (here, the stand-in told to)
/// would otherwise let in a token minted for any audience. (Before, `status.audiences`
/// was not read: the API server's token was let in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_audiences_are_checked() {
    // Why the stand-in: the real API server's authenticator always honours audiences.
    let (world, kube) = World::with_stand_in(Duration::from_secs(10), |config| kubernetes::StandInConfig {
        review_ignores_audiences: true,
        ..config
    })
    .await;
    let server = world.serve(&["--audience", "https://cloudsmith-gen.example"]);
    let api_server_token = stand_in_caller("apps");
    let reply = ask(
        server.addr(),
        "apps",
        "cloudsmith-access-token",
        &api_server_token,
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.case(), "unauthenticated");
    assert!(
        reply.body.contains("none of them https://cloudsmith-gen.example"),
        "{}",
        reply.body
    );
    assert!(kube.requests().is_empty(), "nothing minted");
    let ours = testkit::oidc::token(
        "system:serviceaccount:apps:eso",
        &["https://cloudsmith-gen.example"],
    );
    assert_eq!(
        ask(server.addr(), "apps", "cloudsmith-access-token", &ours)
            .await
            .status,
        200
    );
    assert_logs_clean(&server, &world, &[&api_server_token, &ours]);
}

/// Past `--max-connections`, a connection is answered 503 at once; the places come back
/// as connections close. (Before, connections had no bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once() {
    let world = World::new(Duration::from_secs(10)).await;
    let server = world.serve(&["--max-connections", "4", "--read-timeout", "60"]);
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let answer = read_all(&mut extra, Duration::from_secs(30))
        .await
        .expect("answered at once");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(idle);
    drop(extra);
    // The places come back as the server sees those connections close; until then a new
    // connection is itself answered 503 at once, so poll with a raw request that reads
    // whatever comes back.
    wait_until(|| async {
        let mut stream = send_raw(
            server.addr(),
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        read_all(&mut stream, Duration::from_secs(10))
            .await
            .is_some_and(|answer| {
                answer.starts_with("HTTP/1.1 200 ")
                    && answer.lines().any(|line| {
                        line.strip_prefix("cloudsmith_gen_connections_refused_total ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .is_some_and(|n| n >= 1)
                    })
            })
    })
    .await;
    let token = world.caller("apps", "eso");
    let apps = world.ns("apps");
    assert_eq!(
        ask(server.addr(), &apps, "cloudsmith-access-token", &token)
            .await
            .status,
        200
    );
    assert_logs_clean(&server, &world, &[&token]);
}

/// Out of file descriptors, accepting fails until one is freed: the server pauses
/// between tries (5 ms doubling to 1 s, as Go's net/http), logs the burst and serves
/// again once descriptors are back. (Before, it retried at once, a core spinning for as
/// long as the descriptors stayed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_pause_and_the_server_recovers() {
    let world = World::new(Duration::from_secs(10)).await;
    let args = serve_args(&world, &["--read-timeout", "60"]);
    // The server with few descriptors: its own shell sets the limit, then execs it.
    let mut shell = Command::new("bash");
    shell
        .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
        .arg(testkit::tools::cloudsmith_gen())
        .args(args);
    let mut server = Listening::start(shell);
    let addr = server.addr();
    // More connections than the server has descriptors for; the rest wait in the backlog
    // while every accept fails.
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    wait_until(|| async { server.logs().contains("accepting a connection failed: pausing") }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
    let mut errors = None;
    for _ in 0..600 {
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            gauge(addr, "cloudsmith_gen_accept_errors_total"),
        )
        .await;
        errors = read.ok().flatten();
        if errors.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = errors.expect("the server answers /metrics again, with cloudsmith_gen_accept_errors_total");
    // Three seconds and more of failing accepts, paused 5 ms doubling to 1 s: about a
    // dozen tries, where retrying at once makes hundreds of thousands.
    assert!((1..100).contains(&errors), "{errors} failed accepts");
    let token = world.caller("apps", "eso");
    let apps = world.ns("apps");
    assert_eq!(
        ask(addr, &apps, "cloudsmith-access-token", &token).await.status,
        200
    );
    server.log_json();
    let _ = server.stop("TERM");
}

/// A guest that computes forever gives its worker back at every epoch tick: with every
/// sandbox slot spinning, more slots than the server has worker threads, `/healthz` and
/// `/metrics` answer at once. (Before, a spinning guest held its tokio worker until its
/// deadline, and a few of them starved everything else the server does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_every_slot_spins() {
    let world = World::new(Duration::from_secs(10)).await;
    let slots = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinning = world.dir.path().join("spin.yaml");
    std::fs::write(
        &spinning,
        "apiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\nmetadata:\n  name: spin\n\
         hostile: loop\nspec:\n  orgSlug: o\n  serviceSlug: s\n  serviceAccountRef:\n    name: cloudsmith-oidc\n",
    )
    .unwrap();
    let component = testkit::artifacts::wasm("hostile");
    let server = start_serve(
        &[
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--kubeconfig".into(),
            world.kubeconfig.display().to_string(),
            "--manifest".into(),
            spinning.display().to_string(),
            "--component".into(),
            component.display().to_string(),
            "--cache-dir".into(),
            cache_dir().display().to_string(),
            "--max-concurrent-calls".into(),
            slots.to_string(),
            "--rate-limit".into(),
            "0".into(),
            "--timeout".into(),
            "60".into(),
        ],
        &[],
    );
    let addr = server.addr();
    let token = world.caller("apps", "eso");
    let apps = world.ns("apps");
    let calls: Vec<_> = (0..slots)
        .map(|_| {
            let token = token.clone();
            let apps = apps.clone();
            tokio::spawn(async move { ask(addr, &apps, "spin", &token).await.status })
        })
        .collect();
    let in_flight = format!("cloudsmith_gen_calls_in_flight {slots}");
    wait_for_metric(addr, &in_flight).await;
    // The guests are in their loops within milliseconds of their slot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = tokio::time::timeout(
        Duration::from_secs(20),
        request(addr, "GET", "/healthz", &[], b""),
    )
    .await;
    assert_eq!(
        health.map(|r| r.status).ok(),
        Some(200),
        "/healthz while {slots} guests spin"
    );
    let metrics = tokio::time::timeout(
        Duration::from_secs(20),
        request(addr, "GET", "/metrics", &[], b""),
    )
    .await
    .expect("/metrics while the guests spin");
    assert!(metrics.body.contains(&in_flight), "every call still spinning");
    // The callers give up before the server goes (it is killed with the test).
    for call in calls {
        call.abort();
    }
    assert_logs_clean(&server, &world, &[&token]);
}

/// The outbound policy comes from the flags, never from the manifest: a generator whose
/// spec names a host off the allowlist is refused before any request to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cannot_widen_the_outbound_policy() {
    let world = World::new(Duration::from_secs(10)).await;
    let elsewhere = testkit::cloudsmith::StandIn::start(Default::default())
        .await
        .unwrap();
    let manifest = world.dir.path().join("elsewhere.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\nmetadata:\n  \
             name: elsewhere\nspec:\n  apiUrl: \"{}\"\n  orgSlug: my-organization\n  serviceSlug: my-oidc-service\n  \
             serviceAccountRef:\n    name: cloudsmith-oidc\n",
            elsewhere.url()
        ),
    )
    .unwrap();
    let server = world.serve(&["--manifest", manifest.to_str().unwrap()]);
    let token = world.caller("apps", "eso");
    let apps = world.ns("apps");
    let reply = ask(server.addr(), &apps, "elsewhere", &token).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.case(), "policy-denied");
    assert!(
        elsewhere.requests().is_empty(),
        "nothing reached the host the manifest names"
    );
    assert_logs_clean(&server, &world, &[&token]);
}

/// Bad flags and bad manifests stop the server before it listens: exit 2, one error
/// line naming what is wrong, no panic. (A rate limit too small to compute a wait with
/// was once taken, and the first caller over its burst panicked the server's connection
/// task.)
#[test]
fn startup_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n").unwrap();
    let dup = dir.path().join("dup.yaml");
    std::fs::write(
        &dup,
        format!(
            "{}---\n{}",
            repo_file("deploy/serve/generators.yaml"),
            repo_file("deploy/serve/generators.yaml")
        ),
    )
    .unwrap();
    let (bad, dup) = (bad.to_str().unwrap(), dup.to_str().unwrap());
    let missing = "/nonexistent.yaml";
    // (row, flags after `serve`, what the error line names)
    let rows: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "a manifest without a generator",
            vec!["--manifest", bad],
            "no generator document",
        ),
        (
            "a generator named twice",
            vec!["--manifest", dup],
            "names must be unique",
        ),
        (
            "a manifest that is not there",
            vec!["--manifest", missing],
            missing,
        ),
        (
            "--tls-cert without --tls-key",
            vec!["--manifest", bad, "--tls-cert", "x.pem"],
            "--tls-key",
        ),
        (
            "a rate too small for a wait",
            vec!["--manifest", missing, "--rate-limit=1e-300"],
            "--rate-limit",
        ),
        (
            "a negative rate",
            vec!["--manifest", missing, "--rate-limit=-1"],
            "--rate-limit",
        ),
        (
            "a rate that is no number",
            vec!["--manifest", missing, "--rate-limit=NaN"],
            "--rate-limit",
        ),
    ];
    let bin = testkit::tools::cloudsmith_gen();
    for (row, flags, needle) in rows {
        let out = Command::new(&bin)
            .arg("serve")
            .args(&flags)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{row}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{row}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{row}: {needle:?} not in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{row}: {stderr}");
    }
}
