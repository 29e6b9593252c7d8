//! ESO's own code against `cloudsmith-gen serve`, with the real control plane
//! (testkit::cluster) holding the objects of `deploy/` and `deploy/eso/`:
//!
//! - ESO v0.20.4's Webhook generator (`harness/cmd/eso-generate`: ESO's resolver and
//!   `Generate`, as its ExternalSecret controller runs a `generatorRef`) reads the
//!   Webhook, the caller's token Secret (filled by kube-controller-manager's token
//!   controller) and the CA ConfigMap from the API server, and calls serve over HTTPS
//!   with serve's real certificate; serve reviews the caller with the real TokenReview
//!   and SubjectAccessReview APIs and mints with the real TokenRequest API, as its
//!   ServiceAccount with deploy/serve/rbac.yaml's permissions. Every answer checked is
//!   what ESO's code returned, as ESO reports it.
//! - ESO v0.20.4's controller (`harness/cmd/eso-controller`), with the identity and RBAC
//!   its Helm chart gives it, reconciles deploy/eso/apps.yaml's ExternalSecret into the
//!   Secret, whose `auth` the real registry (Debian's docker-registry, token auth
//!   trusting the Cloudsmith stand-in's tokens) accepts.
//!
//! The Webhook's URL stays `https://cloudsmith-gen.cloudsmith-gen.svc:8443/...`: serve
//! listens on port 8443 of a loopback address of its own, and ESO's process answers the
//! Service's name with it (harness/internal/testdns), as a cluster's DNS would.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Value};
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::cluster::Cluster;
use testkit::process::Listening;
use testkit::real_eso::{self, Generate, Generated, Objects};

const BIN: &str = env!("CARGO_BIN_EXE_cloudsmith-gen");

/// The Service's DNS name and port, as deploy/serve/service.yaml and the Webhook's URL name them.
const SERVICE_HOST: &str = "cloudsmith-gen.cloudsmith-gen.svc";
const SERVICE_PORT: u16 = 8443;
/// The Webhook generator's name in deploy/eso/apps.yaml.
const WEBHOOK: &str = "cloudsmith-access-token";
/// The caller's token Secret in deploy/eso/apps.yaml.
const CALLER_SECRET: &str = "eso-cloudsmith-caller-token";
/// The stand-in's fixed access token expiry (ESO's own unit-test vector): the `expiry` ESO
/// must generate, byte for byte.
const EXP: u64 = 1_700_000_000;

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `kubectl kustomize deploy/`'s objects.
fn rendered() -> Vec<Value> {
    testkit::eso::kustomize(&testkit::workspace_root().join("deploy")).expect("kubectl kustomize deploy/")
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// `objects` as one document kubectl applies (a `List`: kubectl reads a stream that
/// starts with `{` as JSON, where `---` is no separator).
fn to_yaml(objects: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

/// deploy/'s objects for namespace `apps`, moved to `namespace` the way the README tells
/// a user to copy them (their namespace, and the Webhook URL's path), without the
/// ExternalSecret (no controller runs in these tests but the one of
/// `the_controller_reconciles_deploy`, which owns `apps`).
fn apps_objects(namespace: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for mut o in rendered() {
        if o["metadata"]["namespace"] != "apps" || o["kind"] == "ExternalSecret" {
            continue;
        }
        o["metadata"]["namespace"] = namespace.into();
        if o["kind"] == "Webhook" {
            let url = o["spec"]["url"]
                .as_str()
                .unwrap()
                .replace("/namespaces/apps/", &format!("/namespaces/{namespace}/"));
            o["spec"]["url"] = url.into();
        }
        out.push(o);
    }
    out
}

/// `cloudsmith-gen serve` on port 8443 of a loopback address of its own; killed on drop.
struct Serve {
    server: Listening,
    args: Vec<String>,
    /// The log of the servers this one restarted from.
    earlier: String,
}

impl Serve {
    /// serve with `args` on `ip:8443`.
    fn command(ip: Ipv4Addr, args: &[String]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:{SERVICE_PORT}"))
            .args(args);
        command
    }

    fn start(args: &[String]) -> Serve {
        Serve {
            server: Listening::start_on_own_loopback(|ip| Serve::command(ip, args)),
            args: args.to_vec(),
            earlier: String::new(),
        }
    }

    fn ip(&self) -> IpAddr {
        self.server.addr().ip()
    }

    /// Stops this serve with `signal` and starts it again on the same address, keeping
    /// what it logged.
    fn restart(&mut self, signal: &str) {
        self.server.stop(signal);
        self.earlier = self.logs();
        // The address is free again once the process is gone.
        let IpAddr::V4(ip) = self.ip() else {
            unreachable!("an IPv4 loopback address")
        };
        self.server = Listening::start(Serve::command(ip, &self.args));
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.earlier, self.server.logs())
    }

    /// The DNS answer ESO's process needs for the Service's name.
    fn resolve(&self) -> Vec<(String, IpAddr)> {
        vec![(SERVICE_HOST.to_string(), self.ip())]
    }
}

/// One namespace holding deploy/eso's objects, a Cloudsmith stand-in that trusts the
/// cluster's tokens for its `cloudsmith-oidc`, serve's certificate and manifest.
struct World {
    cluster: &'static Cluster,
    namespace: String,
    cloudsmith: cloudsmith::StandIn,
    dir: tempfile::TempDir,
    manifest: PathBuf,
    /// The CA of serve's certificate (for SERVICE_HOST).
    ca: testkit::tls::TestCa,
    cert: PathBuf,
    key: PathBuf,
    /// ESO's identity (its chart's ServiceAccount and RBAC).
    eso: PathBuf,
}

impl World {
    /// deploy/ in `namespace` (`None`: a fresh one) with the stand-in's `exp`.
    async fn new(namespace: Option<&str>, token_exp: u64) -> World {
        let cluster = Cluster::shared();
        let eso = real_eso::install(cluster);
        let namespace = match namespace {
            Some(ns) => {
                cluster.apply(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
                ));
                ns.to_string()
            }
            None => cluster.namespace("eso"),
        };
        let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig {
            slow_delay: Duration::from_secs(10),
            token_exp,
            ..cloudsmith::StandInConfig::trusting(
                cluster,
                &format!("system:serviceaccount:{namespace}:cloudsmith-oidc"),
            )
        })
        .await
        .expect("Cloudsmith stand-in");
        let dir = tempfile::tempdir().expect("temp dir");
        // deploy/'s generators, pointed at the stand-in, and one that answers slowly.
        let generators =
            std::fs::read_to_string(testkit::workspace_root().join("deploy/serve/generators.yaml"))
                .unwrap()
                .replace(
                    "apiUrl: \"https://api.cloudsmith.io\"",
                    &format!("apiUrl: \"{}\"", cloudsmith.url()),
                );
        assert!(
            generators.contains(&cloudsmith.url()),
            "deploy/serve/generators.yaml changed shape"
        );
        let slow = generators
            .replace("name: cloudsmith-access-token", "name: slow")
            .replace("\"my-organization\"", "slow");
        let manifest = dir.path().join("generators.yaml");
        std::fs::write(&manifest, format!("{generators}\n---\n{slow}")).unwrap();
        let ca = testkit::tls::TestCa::for_names(&[SERVICE_HOST]);
        let (cert, key) = ca.write_server_pem(dir.path()).unwrap();

        // serve's namespace, ServiceAccount and RBAC, deploy/serve as rendered.
        let all = rendered();
        let serve_side: Vec<Value> = all
            .iter()
            .filter(|o| o["metadata"]["namespace"] != "apps")
            .cloned()
            .collect();
        cluster.apply(&to_yaml(&serve_side));
        // deploy/eso's objects, and the CA ConfigMap the README has the user create.
        let mut objects = apps_objects(&namespace);
        objects.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cloudsmith-gen-ca", "namespace": namespace},
            "data": {"ca.crt": ca.ca_pem()}
        }));
        cluster.apply(&to_yaml(&objects));
        let world = World {
            cluster,
            namespace,
            cloudsmith,
            dir,
            manifest,
            ca,
            cert,
            key,
            eso,
        };
        world.caller_token();
        world
    }

    /// The caller's token, once the token controller has put it in the Secret.
    fn caller_token(&self) -> String {
        for _ in 0..600 {
            let out = self.cluster.kubectl_ok(&[
                "get",
                "secret",
                CALLER_SECRET,
                "-n",
                &self.namespace,
                "-o",
                "jsonpath={.data.token}",
            ]);
            if !out.is_empty() {
                return String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(out.trim())
                        .unwrap(),
                )
                .unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the token controller did not fill {}/{CALLER_SECRET}",
            self.namespace
        );
    }

    /// serve as deploy/serve/deployment.yaml runs it (its ServiceAccount's identity),
    /// with `extra` flags.
    fn serve(&self, extra: &[&str]) -> Serve {
        let mut args: Vec<String> = [
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
            "--manifest",
            self.manifest.to_str().unwrap(),
            "--kubeconfig",
            self.cluster.deployed_service().to_str().unwrap(),
            "--allow-host",
            &self.cloudsmith.authority(),
            "--allow-http",
            "--cache-dir",
            self.dir.path().join("cache").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Serve::start(&args)
    }

    /// ESO's Webhook generator `name` of this namespace, run against `serve`.
    async fn eso(&self, serve: &Serve, name: &str) -> Generated {
        let mut run = Generate::new(
            &self.namespace,
            "Webhook",
            name,
            Objects::Cluster(self.eso.clone()),
        );
        run.resolve = serve.resolve();
        real_eso::generate(&run).await
    }

    /// A Webhook `name`: deploy/eso's, changed by `change`, applied to the API server.
    fn webhook(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let mut webhook = object(&apps_objects(&self.namespace), "Webhook", WEBHOOK).clone();
        webhook["metadata"]["name"] = name.into();
        change(&mut webhook["spec"]);
        self.cluster.apply(&webhook.to_string());
    }

    /// A Secret `name` labelled as deploy/eso's caller Secret, holding `token`.
    fn secret(&self, name: &str, labels: Value, token: &str) {
        self.cluster.apply(
            &json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                    "data": {"token": b64(token)}})
            .to_string(),
        );
    }

    fn url(&self, path: &str) -> String {
        format!("https://{SERVICE_HOST}:{SERVICE_PORT}{path}")
    }

    /// The `auth` the stand-in's token for this namespace's `cloudsmith-oidc` gives.
    fn auth(&self, org: &str) -> String {
        auth_for(&access_token_for(
            &format!("system:serviceaccount:{}:cloudsmith-oidc", self.namespace),
            org,
            "my-oidc-service",
            self.cloudsmith.config().token_exp,
        ))
    }
}

fn assert_error(got: &Generated, want: &str, what: &str) {
    match got {
        Generated::Error {
            message, no_secret, ..
        } => {
            assert!(!no_secret, "{what}: ESO read NoSecretError: {message}");
            assert_eq!(message, want, "{what}");
        }
        Generated::Data(_) => panic!("{what}: ESO generated data: {got:?}"),
    }
}

/// deploy/ as ESO v0.20.4 runs it: the seed's `auth` and `expiry`, byte for byte; and
/// what v0.20.4 does with a Secret without the label and with a caProvider naming
/// another namespace (v1.3.2 and v2.4.0 refuse them: testkit::eso).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_generates_the_seed_outputs_from_deploy() {
    let world = World::new(None, EXP).await;
    let serve = world.serve(&[]);
    let got = world.eso(&serve, WEBHOOK).await;
    let auth = world.auth("my-organization");
    assert_eq!(
        got,
        Generated::Data(
            [
                ("auth".into(), auth.clone().into_bytes()),
                ("expiry".into(), EXP.to_string().into_bytes())
            ]
            .into()
        ),
        "{}",
        serve.logs()
    );
    // The exchange was for the namespace's cloudsmith-oidc, with a token the real
    // TokenRequest API minted, verified against the cluster's issuer.
    let requests = world.cloudsmith.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        world.cloudsmith.rejections().is_empty(),
        "{:?}",
        world.cloudsmith.rejections()
    );

    // v0.20.4 resets EnforceLabels before reading the Secret (pkg/generator/webhook/
    // webhook.go, Generate): a Secret without the label is read all the same.
    let token = world.caller_token();
    world.secret(
        "unlabelled",
        json!({"generators.external-secrets.io/type": "webhook"}),
        &token,
    );
    world.webhook("unlabelled", |spec| {
        spec["secrets"][0]["secretRef"]["name"] = "unlabelled".into()
    });
    assert_eq!(
        world.eso(&serve, "unlabelled").await.text("auth"),
        auth,
        "no label"
    );

    // v0.20.4 reads a caProvider ConfigMap from the namespace it names
    // (pkg/esutils/utils.go, getCertFromConfigMap).
    world.cluster.apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cloudsmith-gen-ca", "namespace": "cloudsmith-gen"},
                "data": {"ca.crt": world.ca.ca_pem()}})
        .to_string(),
    );
    world.webhook("foreign-ca", |spec| {
        spec["caProvider"]["namespace"] = "cloudsmith-gen".into()
    });
    assert_eq!(
        world.eso(&serve, "foreign-ca").await.text("auth"),
        auth,
        "foreign caProvider namespace"
    );
    testkit::process::assert_no_secret(&[&serve.logs()], &[&token, &auth]);
}

/// Every refusal through ESO's code, as the ExternalSecret would show it: none is
/// NoSecretError (which, with `deletionPolicy: Delete`, deletes the pull Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_reports_each_refusal() {
    let world = World::new(None, EXP).await;
    let serve = world.serve(&["--timeout", "2"]);
    let ns = world.namespace.clone();
    let call = |path: &str| format!("failed to call endpoint: Post \"{}\": ", world.url(path));

    // An unknown generator, an unknown path.
    for (name, path, status) in [
        (
            "unknown-generator",
            format!("/v1/namespaces/{ns}/generators/nope"),
            "422 Unprocessable Entity",
        ),
        (
            "unknown-path",
            format!("/v1/namespace/{ns}/generators/{WEBHOOK}"),
            "400 Bad Request",
        ),
    ] {
        world.webhook(name, |spec| spec["url"] = world.url(&path).into());
        assert_error(
            &world.eso(&serve, name).await,
            &format!("endpoint gave error {status}"),
            name,
        );
    }

    // The real TokenReview refuses a token for another audience; the real
    // SubjectAccessReview refuses another namespace's account (no RBAC grants it).
    let label = json!({"external-secrets.io/type": "webhook"});
    let wrong_audience = world
        .cluster
        .token(&ns, "eso-cloudsmith-caller", &["https://api.cloudsmith.io"]);
    world.secret("wrong-audience", label.clone(), &wrong_audience);
    world.webhook("wrong-audience", |spec| {
        spec["secrets"][0]["secretRef"]["name"] = "wrong-audience".into()
    });
    assert_error(
        &world.eso(&serve, "wrong-audience").await,
        "endpoint gave error 401 Unauthorized",
        "TokenReview refusal",
    );
    let other = world.cluster.namespace("eso-other");
    world.cluster.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: eso\n  namespace: {other}\n"
    ));
    let foreign = world.cluster.token(&other, "eso", &[]);
    world.secret("other-namespace", label, &foreign);
    world.webhook("other-namespace", |spec| {
        spec["secrets"][0]["secretRef"]["name"] = "other-namespace".into()
    });
    assert_error(
        &world.eso(&serve, "other-namespace").await,
        "endpoint gave error 403 Forbidden",
        "SubjectAccessReview refusal",
    );

    // A Cloudsmith slower than both bounds: serve's (2 s) first gives its 503; ESO's
    // `timeout` first, only Go's client error.
    let slow = format!("/v1/namespaces/{ns}/generators/slow");
    world.webhook("slow-8s", |spec| {
        spec["url"] = world.url(&slow).into();
        spec["timeout"] = "8s".into();
    });
    assert_error(
        &world.eso(&serve, "slow-8s").await,
        "endpoint gave error 503 Service Unavailable",
        "serve's deadline first",
    );
    assert!(
        serve.logs().contains("\"case\":\"deadline-exceeded\""),
        "{}",
        serve.logs()
    );
    world.webhook("slow-1s", |spec| {
        spec["url"] = world.url(&slow).into();
        spec["timeout"] = "1s".into();
    });
    assert_error(
        &world.eso(&serve, "slow-1s").await,
        &format!(
            "{}context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            call(&slow)
        ),
        "ESO's timeout first",
    );

    // The CA ConfigMap holds another CA: Go's TLS refuses serve's certificate.
    world.cluster.apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wrong-ca", "namespace": ns},
                "data": {"ca.crt": testkit::tls::TestCa::for_names(&[SERVICE_HOST]).ca_pem()}})
        .to_string(),
    );
    world.webhook("wrong-ca", |spec| spec["caProvider"]["name"] = "wrong-ca".into());
    assert_error(
        &world.eso(&serve, "wrong-ca").await,
        &format!(
            "{}tls: failed to verify certificate: x509: certificate signed by unknown authority \
             (possibly because of \"x509: ECDSA verification failure\" while trying to verify \
             candidate authority certificate \"testkit throw-away CA\")",
            call(&format!("/v1/namespaces/{ns}/generators/{WEBHOOK}"))
        ),
        "wrong CA",
    );
    // No CA ConfigMap of that name in the generator's namespace.
    world.webhook("missing-ca", |spec| {
        spec["caProvider"]["name"] = "missing-ca".into()
    });
    assert_error(
        &world.eso(&serve, "missing-ca").await,
        "failed to prepare provider http client: failed to get cert from configmap: \
         failed to get caProvider secret missing-ca: configmaps \"missing-ca\" not found",
        "no CA ConfigMap",
    );
    testkit::process::assert_no_secret(
        &[&serve.logs()],
        &[&world.caller_token(), &wrong_audience, &foreign],
    );
}

/// serve's only slot is taken and nothing may queue: ESO's second call is told 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_reports_busy() {
    let world = World::new(None, EXP).await;
    let serve = world.serve(&[
        "--max-concurrent-calls",
        "1",
        "--max-queued-calls",
        "0",
        "--timeout",
        "60",
    ]);
    let slow = world.url(&format!("/v1/namespaces/{}/generators/slow", world.namespace));
    world.webhook("slow", |spec| spec["url"] = slow.into());
    let first = world.eso(&serve, "slow");
    let second = async {
        // The slow call holds the slot once Cloudsmith has it.
        while world.cloudsmith.request_count_for("slow") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        world.eso(&serve, WEBHOOK).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_error(&second, "endpoint gave error 503 Service Unavailable", "busy");
    assert!(serve.logs().contains("\"case\":\"busy\""), "{}", serve.logs());
    assert_eq!(first.text("auth"), world.auth("slow"), "the slow call, answered");
}

/// The rules ESO added after v0.20.4 (testkit::eso: v1.3.2's Secret label, v2.4.0's
/// caProvider namespace) accept deploy/ as it is, so it works with every release.
#[test]
fn deploy_meets_the_rules_of_later_releases() {
    assert_eq!(
        testkit::eso::later_releases_refuse(&rendered()),
        Vec::<String>::new()
    );
}

/// `kubectl get KIND NAME -n NS -o json`, or `None` when it does not exist.
fn get(cluster: &Cluster, kind: &str, name: &str, namespace: &str) -> Option<Value> {
    let out = cluster.kubectl(&["get", kind, name, "-n", namespace, "-o", "json"]);
    if out.status.success() {
        return Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NotFound") || stderr.contains("not found"),
        "kubectl get {kind}/{name}: {stderr}"
    );
    None
}

/// Waits (bounded) until `check` gives a value; panics with `what` and ESO's log.
fn wait_for<T>(what: &str, controller: &real_eso::Controller, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(240) {
        if let Some(v) = check() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{what}: not within 240 s\nESO's controller:\n{}",
        controller.logs()
    );
}

/// The `auth` of the dockerconfigjson Secret ESO wrote, once it holds `want` (or any,
/// with `None`).
fn synced_auth(cluster: &Cluster, controller: &real_eso::Controller, want: Option<&str>) -> String {
    wait_for("the Secret cloudsmith-credentials", controller, || {
        let secret = get(cluster, "secret", "cloudsmith-credentials", "apps")?;
        assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson", "{secret}");
        let config = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][".dockerconfigjson"].as_str()?)
            .ok()?;
        let config: Value = serde_json::from_slice(&config).expect("dockerconfigjson is JSON");
        let auth = config["auths"]["docker.cloudsmith.io"]["auth"]
            .as_str()?
            .to_string();
        want.is_none_or(|w| w == auth).then_some(auth)
    })
}

/// The ExternalSecret's Ready condition: (status, reason, message).
fn ready(cluster: &Cluster) -> (String, String, String) {
    let es = get(cluster, "externalsecret", "cloudsmith-credentials", "apps").expect("the ExternalSecret");
    let condition = es["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    let text = |k: &str| condition[k].as_str().unwrap_or_default().to_string();
    (text("status"), text("reason"), text("message"))
}

/// The messages of the ExternalSecret's Warning events (where ESO puts a failure's error).
fn warnings(cluster: &Cluster) -> Vec<String> {
    let out = cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "apps",
        "--field-selector",
        "involvedObject.kind=ExternalSecret,involvedObject.name=cloudsmith-credentials,type=Warning",
        "-o",
        "json",
    ]);
    let events: Value = serde_json::from_str(&out).unwrap();
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// ESO v0.20.4's controller, with its chart's identity, reconciles deploy/eso/apps.yaml's
/// ExternalSecret, as applied, into the dockerconfigjson Secret, with nothing of ours in
/// between but serve; the real registry accepts the Secret's `auth`. Then, through the
/// controller: a refresh; serve killed while a refresh is in flight and started again
/// (ESO reports the failure, keeps the Secret, and syncs once serve is back); and the
/// ExternalSecret's deletion, which takes the Secret with it (its owner reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reconciles_deploy() {
    use testkit::registry::{Artifact, Distribution, DistributionConfig, TokenServer};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A live exp: the registry refuses an expired access token.
    let world = World::new(Some("apps"), now + 3600).await;
    let cluster = world.cluster;
    let mut serve = world.serve(&["--reload-interval", "1"]);
    let controller = real_eso::Controller::start(&world.eso, "apps", &serve.resolve());
    // deploy/'s ExternalSecret, exactly as rendered.
    let es = object(&rendered(), "ExternalSecret", "cloudsmith-credentials").clone();
    cluster.apply(&es.to_string());

    let auth = synced_auth(cluster, &controller, None);
    assert_eq!(auth, world.auth("my-organization"), "the seed's auth");
    assert_eq!(ready(cluster).0, "True", "{:?}", ready(cluster));

    // The real registry, token auth trusting the stand-in's tokens for their org's
    // repositories, takes the Secret's auth as it is (under the registry's own host).
    let tokens = TokenServer::trusting_cloudsmith().await.unwrap();
    let registry = Distribution::start(DistributionConfig {
        auth: tokens.auth("eso-registry"),
        ..Default::default()
    })
    .await;
    let image = Artifact::container_image();
    registry
        .push(
            "my-organization/app",
            "1",
            &image,
            Some(("testkit", "testkit-password")),
        )
        .await
        .unwrap_or_else(|e| panic!("push: {e:#}\n{}", registry.log()));
    let home = world.dir.path().join("home");
    std::fs::create_dir_all(home.join("run")).unwrap();
    let authfile = world.dir.path().join("auth.json");
    std::fs::write(
        &authfile,
        json!({"auths": {registry.authority(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let mut inspect = testkit::tools::skopeo_in(&home);
    inspect
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&authfile)
        .arg(format!("docker://{}/my-organization/app:1", registry.authority()));
    let out = testkit::process::run(inspect, None, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        out.success(),
        "the registry refused ESO's Secret: {}\n{}",
        out.stderr,
        registry.log()
    );
    assert_eq!(out.stdout_json()["Digest"], image.digest());

    // A refresh (ESO's force-sync: a changed annotation is a changed object to it).
    let exchanges = world.cloudsmith.request_count_for("my-organization");
    cluster.kubectl_ok(&[
        "annotate",
        "externalsecret",
        "cloudsmith-credentials",
        "-n",
        "apps",
        "force-sync=1",
    ]);
    wait_for("a refresh's exchange", &controller, || {
        (world.cloudsmith.request_count_for("my-organization") > exchanges).then_some(())
    });

    // serve killed while a refresh is in flight. Its generators now name the stand-in's
    // slow organisation (serve reloads the file), so the next call waits at Cloudsmith.
    let manifest = std::fs::read_to_string(&world.manifest).unwrap();
    std::fs::write(
        &world.manifest,
        manifest.replacen("orgSlug: \"my-organization\"", "orgSlug: \"slow\"", 1),
    )
    .unwrap();
    wait_for("serve's reload", &controller, || {
        serve.logs().contains("manifests reloaded").then_some(())
    });
    cluster.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "externalsecret",
        "cloudsmith-credentials",
        "-n",
        "apps",
        "force-sync=2",
    ]);
    wait_for("the refresh at Cloudsmith", &controller, || {
        (world.cloudsmith.request_count_for("slow") > 0).then_some(())
    });
    serve.restart("KILL");
    // ESO reports the failure on the ExternalSecret and keeps the Secret it wrote...
    let failure = wait_for("ESO's warning event", &controller, || {
        warnings(cluster)
            .into_iter()
            .find(|m| m.contains("failed to call endpoint"))
    });
    assert!(failure.starts_with("error processing spec.dataFrom[0].sourceRef.generatorRef, err: error using generator: failed to call endpoint: Post \"https://cloudsmith-gen.cloudsmith-gen.svc:8443/v1/namespaces/apps/generators/cloudsmith-access-token\""), "{failure}");
    // ...and syncs again by itself once serve is back: the slow organisation's token.
    let refreshed = synced_auth(cluster, &controller, Some(&world.auth("slow")));
    assert_ne!(refreshed, auth);
    assert_eq!(ready(cluster).0, "True", "{:?}", ready(cluster));

    // Deleting the ExternalSecret deletes the Secret it owns.
    let secret = get(cluster, "secret", "cloudsmith-credentials", "apps").unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"], "ExternalSecret",
        "{secret}"
    );
    cluster.kubectl_ok(&[
        "delete",
        "externalsecret",
        "cloudsmith-credentials",
        "-n",
        "apps",
        "--wait=true",
    ]);
    wait_for("the Secret's deletion", &controller, || {
        get(cluster, "secret", "cloudsmith-credentials", "apps")
            .is_none()
            .then_some(())
    });
    testkit::process::assert_no_secret(&[&serve.logs(), &controller.logs()], &[&auth, &refreshed]);
}
