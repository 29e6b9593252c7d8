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
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::cluster::Cluster;

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
        World::start(slow_delay, ApiGuard::Shared(API.read().await)).await
    }

    /// A world of a test that compares counts of requests on the API server: no other
    /// test of this process runs meanwhile.
    async fn exclusive(slow_delay: Duration) -> World {
        World::start(slow_delay, ApiGuard::Exclusive(API.write().await)).await
    }

    async fn start(slow_delay: Duration, api: ApiGuard) -> World {
        let cluster = Cluster::shared();
        let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig {
            slow_delay,
            ..cloudsmith::StandInConfig::trusting(cluster, "system:serviceaccount:*")
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
        let generators = repo_file("deploy/serve/generators.yaml")
            .replace("\"api.cloudsmith.io\"", &format!("\"{}\"", cloudsmith.url()));
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
        Server::start(&serve_args(self, extra))
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

/// A running `cloudsmith-gen serve`; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[String]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// [`Server::start`] with these variables set for the server.
    fn start_with_env(args: &[String], env: &[(&str, &Path)]) -> Server {
        // CLOUDSMITH_GEN runs another build (a figure for an older server, say).
        let bin = std::env::var("CLOUDSMITH_GEN").unwrap_or_else(|_| BIN.to_string());
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cloudsmith-gen serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["msg"] == "listening" {
                        let _ = tx.send(v["address"].as_str().unwrap_or_default().to_string());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start: {}", log.lock().unwrap().join("\n"));
            }
        };
        Server { child, addr, log }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Log lines as JSON (every line must be JSON).
    fn log_json(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
            .collect()
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("serve exits")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// `kubectl kustomize deploy/`'s object of `kind` named `name`.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn object_mut<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// `deploy/` as ESO runs it: the rendered objects through `testkit::eso` (a model of
/// ESO's Webhook generator from ESO's source) against the binary over HTTPS with a
/// certificate for the Service's DNS name. The documented objects give the
/// dockerconfigjson; the old label, a foreign caProvider namespace, an unknown
/// generator and a timeout each give ESO's error (and never delete the Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_runs_the_deploy_objects() {
    use testkit::eso::{reconcile, Cluster, Synced};
    let world = World::exclusive(Duration::from_secs(10)).await;
    let objects = testkit::eso::kustomize(&testkit::workspace_root().join("deploy"))
        .expect("kubectl kustomize deploy/");
    let service = object(&objects, "Service", "cloudsmith-gen");
    let host = format!(
        "{}.{}.svc",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let ca = testkit::tls::TestCa::for_names(&[&host]);
    // A short bound for one call, so the timeout cases take seconds.
    let server = world.serve_https(&ca, &["--timeout", "2", "--max-concurrent-calls", "1"]);

    // deploy/'s bound for one call is below the Webhook's timeout.
    let webhook = object(&objects, "Webhook", "cloudsmith-access-token");
    let namespace = webhook["metadata"]["namespace"].as_str().unwrap().to_string();
    let args = &object(&objects, "Deployment", "cloudsmith-gen")["spec"]["template"]["spec"]["containers"][0]
        ["args"];
    let serve_timeout: u64 = args
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--timeout="))
        .expect("--timeout in deploy/serve/deployment.yaml")
        .parse()
        .unwrap();
    let eso_timeout: u64 = webhook["spec"]["timeout"]
        .as_str()
        .unwrap()
        .strip_suffix('s')
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        serve_timeout < eso_timeout,
        "--timeout={serve_timeout} must be below the Webhook's {eso_timeout}s"
    );

    // The cluster: the namespace (README, step 3) and deploy/'s objects in it that the
    // API server itself acts on, as rendered: the accounts, the caller's token Secret,
    // which kube-controller-manager's token controller fills, and the RoleBinding that
    // lets the service mint. The CA ConfigMap is the model's (README, step 3).
    let real = world.cluster;
    real.kubectl_ok(&["create", "namespace", &namespace]);
    let in_namespace: Vec<String> = objects
        .iter()
        .filter(|o| {
            o["metadata"]["namespace"] == namespace.as_str()
                && ["ServiceAccount", "Secret", "RoleBinding"]
                    .contains(&o["kind"].as_str().unwrap_or_default())
        })
        .map(Value::to_string)
        .collect();
    assert_eq!(in_namespace.len(), 4, "{in_namespace:?}");
    real.apply(&in_namespace.join("\n---\n"));
    let secret = object(&objects, "Secret", "eso-cloudsmith-caller-token");
    let mut filled = Value::Null;
    for _ in 0..300 {
        filled = serde_json::from_str(&real.kubectl_ok(&[
            "get",
            "secret",
            "eso-cloudsmith-caller-token",
            "-n",
            &namespace,
            "-o",
            "json",
        ]))
        .unwrap();
        if filled["data"]["token"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            filled["data"]["token"]
                .as_str()
                .expect("the token controller filled the Secret"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(filled["metadata"]["labels"], secret["metadata"]["labels"]);
    let reviews_before = real.request_count("subjectaccessreviews", "POST");
    let cluster = Cluster {
        objects: vec![
            filled,
            serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "cloudsmith-gen-ca", "namespace": namespace},
                               "data": {"ca.crt": ca.ca_pem()}}),
        ],
        dns: [(format!("{host}:{port}"), server.addr)].into(),
    };
    let run = |objects: Vec<Value>, cluster: Cluster| {
        let namespace = namespace.clone();
        async move { reconcile(&objects, &cluster, &namespace, "cloudsmith-credentials").await }
    };

    match run(objects.clone(), cluster.clone()).await {
        Ok(Synced::Secret { type_, data }) => {
            assert_eq!(type_, "kubernetes.io/dockerconfigjson");
            let config: Value =
                serde_json::from_slice(&data[".dockerconfigjson"]).expect("dockerconfigjson is JSON");
            assert_eq!(
                config["auths"]["docker.cloudsmith.io"]["auth"],
                expected_auth(&namespace)
            );
        }
        other => panic!("ESO would not sync deploy/: {other:?}"),
    }
    let minted = world.cloudsmith.requests();
    assert_eq!(minted.len(), 1);
    let claims = cloudsmith::jwt_payload(minted[0].json().unwrap()["oidc_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{namespace}:cloudsmith-oidc")
    );
    assert_eq!(
        real.request_count("subjectaccessreviews", "POST"),
        reviews_before,
        "own namespace needs no SubjectAccessReview"
    );

    let expect_error = |result: Result<Synced, String>, needle: &str, what: &str| match result {
        Err(e) => assert!(e.contains(needle), "{what}: {e}"),
        Ok(synced) => panic!("{what}: ESO would have synced {synced:?}"),
    };
    // The label deploy/ used to carry: ESO refuses the Secret before any call.
    let mut old = cluster.clone();
    old.objects[0]["metadata"]["labels"] =
        serde_json::json!({"generators.external-secrets.io/type": "webhook"});
    expect_error(
        run(objects.clone(), old).await,
        "secret does not contain needed label 'external-secrets.io/type: webhook'",
        "old label",
    );
    // caProvider.namespace naming another namespace (the CA ConfigMap is there too).
    let mut foreign = objects.clone();
    object_mut(&mut foreign, "Webhook", "cloudsmith-access-token")["spec"]["caProvider"]["namespace"] =
        "cloudsmith-gen".into();
    let mut there = cluster.clone();
    let mut copy = there.objects[1].clone();
    copy["metadata"]["namespace"] = "cloudsmith-gen".into();
    there.objects.push(copy);
    expect_error(
        run(foreign, there).await,
        "failed to prepare provider http client: namespace should either be empty or match the namespace",
        "foreign caProvider namespace",
    );
    // No CA ConfigMap in the generator's namespace.
    let mut no_ca = cluster.clone();
    no_ca.objects.truncate(1);
    expect_error(
        run(objects.clone(), no_ca).await,
        "configmaps \"cloudsmith-gen-ca\" not found",
        "no CA ConfigMap",
    );

    let with_url = |path: &str, timeout: &str, deletion: Option<&str>| {
        let mut changed = objects.clone();
        let spec = &mut object_mut(&mut changed, "Webhook", "cloudsmith-access-token")["spec"];
        spec["url"] = format!("https://{host}:{port}{path}").into();
        spec["timeout"] = timeout.into();
        if let Some(policy) = deletion {
            object_mut(&mut changed, "ExternalSecret", "cloudsmith-credentials")["spec"]["target"]
                ["deletionPolicy"] = policy.into();
        }
        changed
    };
    // A mistyped generator or path fails the sync: with deletionPolicy Delete a 404
    // would have deleted the pull Secret.
    for (path, status) in [
        (
            format!("/v1/namespaces/{namespace}/generators/nope"),
            "422 Unprocessable Entity",
        ),
        (
            format!("/v1/namespace/{namespace}/generators/cloudsmith-access-token"),
            "400 Bad Request",
        ),
    ] {
        expect_error(
            run(with_url(&path, "30s", Some("Delete")), cluster.clone()).await,
            &format!("error using generator: endpoint gave error {status}"),
            &path,
        );
    }
    // Cloudsmith slower than both bounds: with the service's bound below ESO's, ESO
    // sees the service's 503 (its case in the log); the other way round, only ESO's
    // client timeout.
    let slow = format!("/v1/namespaces/{namespace}/generators/slow");
    expect_error(
        run(with_url(&slow, "8s", None), cluster.clone()).await,
        "endpoint gave error 503 Service Unavailable",
        "service bound first",
    );
    assert!(
        server.logs().contains("\"case\":\"deadline-exceeded\""),
        "{}",
        server.logs()
    );
    // Two at once on the only slot: the second waits for it, and is still answered
    // by the service within its bound (the wait counts), before ESO's 3 s.
    let (first, second) = tokio::join!(
        run(with_url(&slow, "3s", None), cluster.clone()),
        run(with_url(&slow, "3s", None), cluster.clone())
    );
    for result in [first, second] {
        expect_error(
            result,
            "endpoint gave error 503 Service Unavailable",
            "queued call",
        );
    }
    expect_error(
        run(with_url(&slow, "1s", None), cluster.clone()).await,
        &format!(
            "failed to call endpoint: Post \"https://{host}:{port}{slow}\": \
             context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ),
        "ESO's bound first",
    );
    assert_logs_clean(&server, &world, &[&token]);
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
            server.addr,
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
    let reply = request(server.addr, "POST", &world.path("apps", "nope"), &[], b"").await;
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
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").await.body;
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
        let reply = world.ask(server.addr, ns, generator, token).await;
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
    let reply = world.ask(server.addr, "apps", "nope", &team_b).await;
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
        .ask(server.addr, "team-b", "cloudsmith-access-token", &platform)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["auth"], expected_auth(&team_b_ns));
    assert_eq!(
        world.cluster.request_count("subjectaccessreviews", "POST") - reviews_before,
        6
    );
    // Own namespace: allowed without a review.
    let reply = world
        .ask(server.addr, "team-b", "cloudsmith-access-token", &team_b)
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
    let server = world.serve(&["--max-body-bytes", "1024"]);
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
        let reply = world.ask(server.addr, ns, generator, &token).await;
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
    // Requests that are not the contract's.
    let auth = format!("Bearer {token}");
    let path = world.path("apps", "cloudsmith-access-token");
    let path = path.as_str();
    let big = vec![b'x'; 2048];
    for (method, path, body, status, case) in [
        ("GET", path, &b""[..], 405, "method-not-allowed"),
        ("POST", path, &big[..], 413, "payload-too-large"),
        (
            "POST",
            "/v1/namespaces/Apps/generators/x",
            &b""[..],
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/namespaces/apps/generators/a%2Fb",
            &b""[..],
            400,
            "bad-request",
        ),
        ("POST", "/v2/anything", &b""[..], 400, "unknown-path"),
        ("POST", "/healthz", &b""[..], 405, "method-not-allowed"),
    ] {
        let reply = request(server.addr, method, path, &[("authorization", &auth)], body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert_eq!(reply.case(), case, "{method} {path}");
    }
    // echo-401 quotes the whole exchange request, OIDC token included: redacted.
    let echo = world.ask(server.addr, "apps", "echo", &token).await;
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
        let addr = server.addr;
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
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").await.body;
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

/// The per-caller rate limit: a burst, then 429 with Retry-After, for that caller only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_has_a_rate_limit() {
    let world = World::new(Duration::from_secs(10)).await;
    let server = world.serve(&["--rate-limit", "0.001", "--rate-burst", "2"]);
    let busy = world.caller("apps", "busy");
    for _ in 0..2 {
        assert_eq!(
            world
                .ask(server.addr, "apps", "cloudsmith-access-token", &busy)
                .await
                .status,
            200
        );
    }
    let reply = world
        .ask(server.addr, "apps", "cloudsmith-access-token", &busy)
        .await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.case(), "too-many-requests");
    assert!(
        reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        world.cloudsmith.requests().len(),
        2,
        "the refused call made no exchange"
    );
    let other = world.caller("apps", "other");
    assert_eq!(
        world
            .ask(server.addr, "apps", "cloudsmith-access-token", &other)
            .await
            .status,
        200
    );
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
    let addr = server.addr;
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
        let status = server.terminate();
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
    assert_eq!(world.ask(server.addr, "apps", "added", &token).await.status, 422);
    let added = repo_file("deploy/serve/generators.yaml")
        .replace(
            "\"api.cloudsmith.io\"",
            &format!("\"{}\"", world.cloudsmith.url()),
        )
        .replace("name: cloudsmith-access-token", "name: added");
    let path = &world.manifests[1];
    let previous = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{previous}---\n{added}")).unwrap();
    wait_until(|| async { world.ask(server.addr, "apps", "added", &token).await.status == 200 }).await;

    std::fs::write(path, "kind: [unclosed").unwrap();
    wait_until(|| async { server.logs().contains("manifests not reloaded") }).await;
    assert_eq!(
        world.ask(server.addr, "apps", "added", &token).await.status,
        200,
        "previous set kept"
    );
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").await.body;
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
    let mut sender = tls_client(server.addr, &ca)
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
    let plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
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
    wait_until(|| async { tls_client(server.addr, &renewed).await.is_some() }).await;
    assert!(
        tls_client(server.addr, &ca).await.is_none(),
        "the old certificate is no longer served"
    );
    // A broken renewal keeps the working pair.
    std::fs::write(&key, "not a key").unwrap();
    wait_until(|| async { server.logs().contains("TLS certificate not reloaded") }).await;
    assert!(tls_client(server.addr, &renewed).await.is_some());
}

/// When the Kubernetes API cannot review the caller, the answer is 503 with
/// Retry-After (ESO retries), never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_unavailable_is_503() {
    let world = World::new(Duration::from_secs(10)).await;
    // A kubeconfig for a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    world.redirect_kubeconfig(&format!("https://{closed}"));
    let server = world.serve(&[]);
    let reply = world
        .ask(
            server.addr,
            "apps",
            "cloudsmith-access-token",
            &world.caller("apps", "eso"),
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.case(), "unavailable");
    assert!(reply.headers.contains_key("retry-after"));
    assert!(world.cloudsmith.requests().is_empty());
}

/// Bad flags and bad manifests stop the server before it listens, with one error line.
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
    for (args, needle) in [
        (
            vec!["serve", "--manifest", bad.to_str().unwrap()],
            "no generator document",
        ),
        (
            vec!["serve", "--manifest", dup.to_str().unwrap()],
            "names must be unique",
        ),
        (
            vec!["serve", "--manifest", "/nonexistent.yaml"],
            "/nonexistent.yaml",
        ),
        (
            vec![
                "serve",
                "--manifest",
                bad.to_str().unwrap(),
                "--tls-cert",
                "x.pem",
            ],
            "--tls-key",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{needle:?} not in {stderr}"
        );
    }
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
    let addr = server.addr;
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
    let addr = server.addr;
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
    let reply = ask(server.addr, "apps", "cloudsmith-access-token", &caller).await;
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
    assert_eq!(stalling.requests().len(), 1, "the TokenRequest was sent");
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
    let addr = server.addr;
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

    let server = Server::start_with_env(&serve_args(&world, &["--component", &pinned]), &env);
    let token = world.caller("apps", "eso");
    let reply = world
        .ask(server.addr, "apps", "cloudsmith-access-token", &token)
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
