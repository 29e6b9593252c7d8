//! Suite kubelet_code: the kubelet's own image credential provider code runs our provider.
//!
//! `harness/cmd/kubelet-keyring` (Go module `harness/`) calls k8s.io/kubernetes v1.34.4
//! `pkg/credentialprovider/plugin`: `RegisterCredentialProviderPlugins`, then
//! `NewExternalCredentialProviderDockerKeyring(namespace, pod, podUID, serviceAccount)
//! .Lookup(image)` per pull, with the token manager and service account getter the
//! kubelet builds (`pkg/kubelet/kubelet.go` `NewMainKubelet`: `token.NewManager` of
//! `pkg/kubelet/token`), over a client that is the node `system:node:NAME` (client
//! certificate in `system:nodes`) of the real control plane ([`testkit::cluster`]: RBAC,
//! the Node authorizer, NodeRestriction). Pods and service accounts exist there; the Pod
//! is bound to the node (`spec.nodeName`), as the kubelet only pulls for its own Pods.
//!
//! The node is a mount namespace of the driver's own (`unshare`): `/etc` is an overlay and
//! `/var/cache` a tmpfs, so `cloudsmith-gen install kubelet-credential-provider` runs with
//! the config's and manifest's default paths (`/etc/cloudsmith/...`, as the DaemonSet runs
//! it), its bin dir a scratch directory, and the provider runs with the shipped args
//! (`/etc/cloudsmith/generator.yaml`, `/var/cache/cloudsmith-gen`) without touching the
//! machine. The installed config is `deploy/kubelet/credential-provider-config.yaml` byte
//! for byte. The operator's edits are what a node with another API than
//! api.cloudsmith.io needs: the generator manifest names the API (`apiUrl`), and the
//! provider's args allow it (`--allow-host 127.0.0.1:PORT --allow-http`; the shipped
//! policy allows api.cloudsmith.io:443 only, with the public roots only, which no test
//! server can be). [`the_shipped_config_runs_the_provider_whose_policy_allows_only_cloudsmith`]
//! runs the installed config unedited.
//!
//! Cloudsmith is the stand-in, trusting the cluster's issuer as an OIDC relying party (the
//! real API is not on loopback, and cannot stall on demand); the registry is Debian's
//! distribution 2.8 with token auth that accepts the stand-in's access tokens.
//!
//! | test | what it proves |
//! |---|---|
//! | [`without_the_shipped_rbac_the_node_may_not_request_the_token`] | before `deploy/kubelet/rbac.yaml`, NodeRestriction refuses the node's TokenRequest for the Cloudsmith audience, and the kubelet never runs the provider |
//! | [`the_kubelet_gets_credentials_that_pull_the_image`] | under the RBAC: a TokenRequest bound to the Pod, for the audience; the provider's answer passes the kubelet's strict decoder; the credentials pull the image from the real registry with go-containerregistry |
//! | [`cache_key_type_and_duration_as_the_kubelets_cache_reads_them`] | `Registry` and `cacheType: ServiceAccount`: one run for every image of the registry and every pod of the account, another for another account; `cacheDuration` `0s` is never cached |
//! | [`an_image_on_another_registry_never_runs_the_provider`] | no token request, no run, no credentials |
//! | [`a_stalled_cloudsmith_is_answered_inside_the_kubelets_minute`] | our `--deadline 50` ends the run with our own error line, which the kubelet logs, before its 1-minute exec timeout |
//! | [`one_unknown_field_and_the_kubelets_decoder_refuses_the_response`] | the same response with one field more: the kubelet's decoder refuses it, so ours passing is a real check |
//! | [`the_shipped_config_runs_the_provider_whose_policy_allows_only_cloudsmith`] | the installed config unedited: the kubelet runs the provider with the shipped args, which refuses any API but api.cloudsmith.io, and the kubelet logs why |

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::now;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, Faults, StandIn, StandInConfig, FAULTS_ORG};
use testkit::cluster::Cluster;
use testkit::registry::{Artifact, Distribution, TokenServer};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::OnceCell;

const NODE: &str = "node-a";
const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
const AUDIENCE: &str = "https://api.cloudsmith.io";
const PROVIDER: &str = "cloudsmith-gen";
const IMAGE: &str = "docker.cloudsmith.io/my-organization/app:1";
const SHIPPED_CONFIG: &str = include_str!("../deploy/kubelet/credential-provider-config.yaml");
const SHIPPED_MANIFEST: &str = include_str!("../deploy/kubelet/generator.yaml");
const SHIPPED_RBAC: &str = include_str!("../deploy/kubelet/rbac.yaml");
/// A Lookup that runs the provider against a stalled Cloudsmith takes the provider's
/// 50 s; the kubelet's own bound is 1 minute.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A Pod bound to [`NODE`] and its ServiceAccount, in the real API server.
#[derive(Debug, Clone)]
struct Pod {
    namespace: String,
    name: String,
    uid: String,
    account: String,
}

impl Pod {
    /// Creates `account` (if new) and a Pod `name` of it on [`NODE`], and waits until the
    /// Node authorizer lets the node read the account (its graph follows Pods).
    fn create(cluster: &Cluster, namespace: &str, name: &str, account: &str) -> Pod {
        cluster.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {namespace}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  nodeName: {NODE}\n  serviceAccountName: {account}\n  automountServiceAccountToken: false\n  \
             containers: [{{name: app, image: \"{IMAGE}\"}}]\n"
        ));
        let uid = cluster.kubectl_ok(&[
            "get",
            "pod",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        for _ in 0..100 {
            let can = cluster.kubectl(&[
                "auth",
                "can-i",
                "get",
                &format!("serviceaccount/{account}"),
                "-n",
                namespace,
                "--as",
                &format!("system:node:{NODE}"),
                "--as-group",
                "system:nodes",
            ]);
            if String::from_utf8_lossy(&can.stdout).trim() == "yes" {
                return Pod {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    uid: uid.trim().to_string(),
                    account: account.to_string(),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Node authorizer never let {NODE} read {namespace}/{account}");
    }

    /// The Lookup of `image` for this Pod, as the kubelet's image manager makes it
    /// (pkg/kubelet/images/image_manager.go EnsureImageExists); `pull` is then pulled with
    /// the credentials returned.
    fn lookup(&self, image: &str, pull: Option<&str>) -> Value {
        let mut request = json!({
            "namespace": self.namespace, "pod": self.name, "pod_uid": self.uid,
            "service_account": self.account, "image": image,
        });
        if let Some(reference) = pull {
            request["pull"] = json!(reference);
        }
        request
    }
}

/// What the provider's config says beyond the shipped file.
#[derive(Debug, Clone, Default)]
struct Edits {
    /// Allow this API (`--allow-host`, `--allow-http`): the stand-in's.
    allow: Option<String>,
    /// Also register a provider `cloudsmith-gen-extra-field` for `extra.cloudsmith.test`,
    /// whose output is ours with one field more.
    extra_field_provider: bool,
}

/// The shipped config with the stand-in's API allowed: two args after `--deadline 50`.
fn allowing(config: &str, authority: &str) -> String {
    let anchor = "      - \"50\"\n";
    assert_eq!(
        config.matches(anchor).count(),
        1,
        "the shipped args changed: {config}"
    );
    config.replace(
        anchor,
        &format!("{anchor}      - --allow-host\n      - {authority}\n      - --allow-http\n"),
    )
}

/// A node: the kubelet's credential provider code in a mount namespace of its own, with
/// the provider installed there, reading Lookups on stdin.
struct Node {
    dir: tempfile::TempDir,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

/// The node's set-up, in its mount namespace (`$D`: the node's directory): `/etc` an
/// overlay, `/var/cache` a tmpfs, the provider installed with the defaults of
/// `install kubelet-credential-provider` but the bin dir, the operator's manifest, the
/// installed config kept for the test to read (and replaced by the edited one, if any).
const SETUP: &str = r#"set -e
D="$1"; shift
mount -t tmpfs tmpfs "$D/overlay"
mkdir "$D/overlay/upper" "$D/overlay/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/overlay/upper,workdir=$D/overlay/work" /etc
mount -t tmpfs tmpfs /var/cache
"$CLOUDSMITH_GEN" install kubelet-credential-provider --bin-dir "$D/bin" > "$D/install.txt"
cp /etc/cloudsmith/credential-provider.yaml "$D/installed.yaml"
cp "$D/generator.yaml" /etc/cloudsmith/generator.yaml
if [ -f "$D/edited.yaml" ]; then cp "$D/edited.yaml" /etc/cloudsmith/credential-provider.yaml; fi
exec "$@"
"#;

impl Node {
    /// Starts the node with the operator's `manifest` and the config's `edits`; returns
    /// once the kubelet's code has registered the providers.
    async fn start(cluster: &Cluster, manifest: &str, edits: &Edits) -> Node {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let d = dir.path();
        for sub in ["overlay", "bin", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("generator.yaml"), manifest).unwrap();
        let mut driver = vec![
            testkit::tools::harness_bin("kubelet-keyring")
                .display()
                .to_string(),
            "--config".into(),
            "/etc/cloudsmith/credential-provider.yaml".into(),
        ];
        if let Some(authority) = &edits.allow {
            std::fs::write(d.join("edited.yaml"), allowing(SHIPPED_CONFIG, authority)).unwrap();
        }
        if edits.extra_field_provider {
            let authority = edits
                .allow
                .as_deref()
                .expect("the extra provider reaches the stand-in");
            let config = allowing(SHIPPED_CONFIG, authority)
                .replace(
                    "  - name: cloudsmith-gen\n",
                    "  - name: cloudsmith-gen-extra-field\n",
                )
                .replace(
                    "      - \"docker.cloudsmith.io\"\n",
                    "      - \"extra.cloudsmith.test\"\n",
                )
                .replace(
                    "      - --allow-http\n",
                    "      - --allow-http\n      - --registry\n      - extra.cloudsmith.test\n",
                );
            std::fs::write(d.join("extra.yaml"), config).unwrap();
            // Our provider's output with one field the API does not have, inserted first.
            let wrapper = "#!/bin/sh\nout=$(\"$(dirname \"$0\")/cloudsmith-gen\" \"$@\") || exit $?\n\
                           printf '%s\\n' \"$out\" | sed 's/^{/{\"unexpectedField\":true,/'\n";
            let path = d.join("bin/cloudsmith-gen-extra-field");
            std::fs::write(&path, wrapper).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            driver.extend(["--config".into(), d.join("extra.yaml").display().to_string()]);
        }
        driver.extend([
            "--bin-dir".into(),
            d.join("bin").display().to_string(),
            "--kubeconfig".into(),
            cluster.node_kubeconfig(NODE).display().to_string(),
        ]);
        let mut command = tokio::process::Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c", SETUP, "sh"])
            .arg(d)
            .args(&driver)
            .env("CLOUDSMITH_GEN", testkit::tools::cloudsmith_gen())
            .env("HOME", d.join("home"))
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("CLOUDSMITH_") && name != "CLOUDSMITH_GEN" {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("start unshare");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let ready = tokio::time::timeout(LOOKUP_TIMEOUT, lines.next_line()).await;
        let node = Node {
            dir,
            child,
            stdin,
            lines,
            stderr,
        };
        match ready {
            Ok(Ok(Some(line))) if line == r#"{"ready":true}"# => node,
            other => panic!("the node did not start ({other:?}): {}", node.stderr()),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One Lookup: writes `request`, reads the kubelet code's answer.
    async fn lookup(&mut self, request: &Value) -> Value {
        let line = format!("{request}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(answer))) => serde_json::from_str(&answer).unwrap(),
            other => panic!("no answer to {request} ({other:?}): {}", self.stderr()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The operator's manifest: the shipped template with the org and the API filled in.
fn manifest(api: &str, org: &str) -> String {
    let template = "  orgSlug: \"my-organization\"\n";
    assert!(SHIPPED_MANIFEST.contains(template), "{SHIPPED_MANIFEST}");
    SHIPPED_MANIFEST.replace(template, &format!("  apiUrl: \"{api}\"\n  orgSlug: \"{org}\"\n"))
}

/// A test's world: its namespace, a stand-in trusting the cluster's tokens for it, a
/// registry that accepts the stand-in's tokens, holding `my-organization/app:1`.
struct World {
    cluster: &'static Cluster,
    namespace: String,
    cloudsmith: StandIn,
    registry: Distribution,
    _tokens: TokenServer,
    image: Artifact,
}

impl World {
    async fn new(prefix: &str, configure: impl FnOnce(&mut StandInConfig)) -> World {
        let cluster = Cluster::shared();
        let namespace = cluster.namespace(prefix);
        let mut config = StandInConfig::trusting(cluster, &format!("system:serviceaccount:{namespace}:*"));
        config.token_exp = now() + 6 * 3600;
        configure(&mut config);
        let cloudsmith = StandIn::start(config).await.expect("stand-in");
        let (tokens, registry, image) = e2e_tests::cloudsmith_registry(&format!("{ORG}/app")).await;
        World {
            cluster,
            namespace,
            cloudsmith,
            registry,
            _tokens: tokens,
            image,
        }
    }

    fn pod(&self, name: &str, account: &str) -> Pod {
        Pod::create(self.cluster, &self.namespace, name, account)
    }

    /// A node whose provider mints from this world's stand-in as `org`.
    async fn node(&self, org: &str, extra_field_provider: bool) -> Node {
        Node::start(
            self.cluster,
            &manifest(&self.cloudsmith.url(), org),
            &Edits {
                allow: Some(self.cloudsmith.authority()),
                extra_field_provider,
            },
        )
        .await
    }

    fn reference(&self) -> String {
        format!("{}/{ORG}/app:1", self.registry.authority())
    }
}

fn execs(answer: &Value, provider: &str) -> i64 {
    answer["execs"][provider].as_i64().unwrap_or(0)
}

fn exec_errors(answer: &Value, provider: &str) -> i64 {
    answer["exec_errors"][provider].as_i64().unwrap_or(0)
}

/// The kubelet's log lines of an answer, joined.
fn logs(answer: &Value) -> String {
    answer["logs"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// What NodeRestriction answered the node before the shipped RBAC was applied.
static RBAC: OnceCell<Value> = OnceCell::const_new();

/// Applies `deploy/kubelet/rbac.yaml`, once per process, after first recording what a
/// Lookup gets without it (every other test of this suite needs it applied; this one
/// order keeps them apart).
async fn shipped_rbac() -> &'static Value {
    RBAC.get_or_init(|| async {
        let w = World::new("no-rbac", |_| {}).await;
        let pod = w.pod("app", "puller");
        let mut node = w.node(ORG, false).await;
        let refused = node.lookup(&pod.lookup(IMAGE, None)).await;
        assert_eq!(w.cloudsmith.request_count(), 0);
        let cluster = w.cluster;
        cluster.apply(SHIPPED_RBAC);
        // Until the authorizer has seen the binding, the node may not.
        let review = format!(
            "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: system:node:{NODE}\n  \
             groups: [system:nodes, system:authenticated]\n  resourceAttributes: {{group: \"\", resource: \"{AUDIENCE}\", \
             verb: request-serviceaccounts-token-audience}}\n"
        );
        for _ in 0..100 {
            let out = cluster.kubectl_stdin(&["create", "-o", "jsonpath={.status.allowed}", "-f", "-"], review.as_bytes());
            if String::from_utf8_lossy(&out.stdout).trim() == "true" {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the shipped RBAC never allowed the audience");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_shipped_rbac_the_node_may_not_request_the_token() {
    let refused = shipped_rbac().await;
    // plugin.go provide: getServiceAccountToken failed, so no credentials and no run.
    assert_eq!(
        (refused["found"].as_bool(), &refused["credentials"]),
        (Some(false), &json!([]))
    );
    assert_eq!(execs(refused, PROVIDER), 0, "{refused}");
    let requests = refused["token_requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{refused}");
    assert_eq!(requests[0]["audiences"], json!([AUDIENCE]));
    let error = requests[0]["error"].as_str().unwrap_or_default();
    // NodeRestriction (plugin/pkg/admission/noderestriction admission.go,
    // admitServiceAccount): the audience is in no volume of a Pod on the node, and the
    // node may not request-serviceaccounts-token-audience it.
    assert!(
        error.contains("forbidden") && error.contains(AUDIENCE),
        "the refusal names the audience: {error}"
    );
    assert!(
        logs(refused).contains("Error getting service account token"),
        "{}",
        logs(refused)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_gets_credentials_that_pull_the_image() {
    shipped_rbac().await;
    let w = World::new("credentials", |_| {}).await;
    let pod = w.pod("app", "puller");
    let mut node = w.node(ORG, false).await;
    let installed = std::fs::read_to_string(node.path("installed.yaml")).unwrap();
    assert_eq!(installed, SHIPPED_CONFIG, "install wrote the shipped config");

    let answer = node.lookup(&pod.lookup(IMAGE, Some(&w.reference()))).await;
    let subject = format!("system:serviceaccount:{}:puller", w.namespace);
    let access_token = access_token_for(&subject, ORG, SERVICE, w.cloudsmith.config().token_exp);
    assert_eq!(
        answer["credentials"],
        json!([{"username": "token", "password": access_token}]),
        "{}\n{}",
        logs(&answer),
        node.stderr()
    );
    assert_eq!((execs(&answer, PROVIDER), exec_errors(&answer, PROVIDER)), (1, 0));
    // The token the kubelet asked for (plugin.go getServiceAccountToken): the audience,
    // bound to the Pod; the API server issued it for the account and the Pod.
    let requests = answer["token_requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{answer}");
    let request = &requests[0];
    assert_eq!(
        (
            &request["audiences"],
            &request["bound_kind"],
            &request["bound_name"]
        ),
        (&json!([AUDIENCE]), &json!("Pod"), &json!("app"))
    );
    let claims = &request["claims"];
    assert_eq!(claims["sub"], json!(subject));
    assert_eq!(claims["aud"], json!([AUDIENCE]));
    assert_eq!(claims["iss"], json!(w.cluster.issuer()));
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        json!({"name": "app", "uid": pod.uid})
    );
    assert_eq!(claims["kubernetes.io"]["node"]["name"], json!(NODE));
    assert_eq!(w.cloudsmith.request_count(), 1);
    // go-containerregistry pulled manifest, config and layers with those credentials,
    // through the registry's token realm.
    assert_eq!(
        (
            &answer["pull"]["digest"],
            &answer["pull"]["layers"],
            answer["pull"].get("error")
        ),
        (&json!(w.image.digest()), &json!(w.image.layer_digests()), None),
        "{}",
        w.registry.log()
    );
    // No token in the kubelet's log.
    let secrets = [access_token.as_str()];
    assert_eq!(
        testkit::process::find_secret(&[&logs(&answer), &node.stderr()], &secrets),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_key_type_and_duration_as_the_kubelets_cache_reads_them() {
    shipped_rbac().await;
    let w = World::new("cache", |_| {}).await;
    let (app, web, builder) = (
        w.pod("app", "puller"),
        w.pod("web", "puller"),
        w.pod("build", "builder"),
    );
    let mut node = w.node(ORG, false).await;
    let first = node.lookup(&app.lookup(IMAGE, None)).await;
    assert_eq!(execs(&first, PROVIDER), 1, "{first}");
    // cacheKeyType Registry: another image of the registry is served from the cache;
    // cacheType ServiceAccount: so is another Pod of the account (plugin.go
    // generateServiceAccountCacheKey leaves the Pod and the token out of the key).
    for (pod, image) in [
        (&app, "docker.cloudsmith.io/my-organization/other/tool:2"),
        (&web, IMAGE),
    ] {
        let answer = node.lookup(&pod.lookup(image, None)).await;
        assert_eq!(
            answer["credentials"][0], first["credentials"][0],
            "{image} for {}",
            pod.name
        );
        assert_eq!(execs(&answer, PROVIDER), 1, "{image} for {}: {answer}", pod.name);
    }
    // Another account: a run of its own, and its own credentials.
    let other = node.lookup(&builder.lookup(IMAGE, None)).await;
    assert_eq!(execs(&other, PROVIDER), 2, "{other}");
    let subject = format!("system:serviceaccount:{}:builder", w.namespace);
    assert_eq!(
        other["credentials"][0]["password"],
        json!(access_token_for(
            &subject,
            ORG,
            SERVICE,
            w.cloudsmith.config().token_exp
        ))
    );
    // A token with less life than the provider's margin (5 minutes): cacheDuration 0s,
    // which the kubelet never caches (plugin.go provide: "cache duration was explicitly
    // 0"): every Lookup runs the provider.
    let short = World::new("cache-short", |c| c.token_exp = now() + 200).await;
    let pod = short.pod("app", "puller");
    let mut node = short.node(ORG, false).await;
    for n in 1..=2 {
        let answer = node.lookup(&pod.lookup(IMAGE, None)).await;
        assert_eq!(
            answer["credentials"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
        assert_eq!(execs(&answer, PROVIDER), n, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_on_another_registry_never_runs_the_provider() {
    shipped_rbac().await;
    let w = World::new("other-registry", |_| {}).await;
    let pod = w.pod("app", "puller");
    let mut node = w.node(ORG, false).await;
    for image in [
        "ghcr.io/acme/app:1",
        "nginx",
        "docker.cloudsmith.io.example.com/acme/app",
    ] {
        let answer = node.lookup(&pod.lookup(image, None)).await;
        // plugin.go provide: isImageAllowed (matchImages) comes before any token request.
        assert_eq!(
            (
                &answer["found"],
                &answer["credentials"],
                &answer["token_requests"],
                execs(&answer, PROVIDER)
            ),
            (&json!(false), &json!([]), &json!([]), 0),
            "{image}"
        );
    }
    assert_eq!(w.cloudsmith.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_cloudsmith_is_answered_inside_the_kubelets_minute() {
    shipped_rbac().await;
    // A stand-in: the real API cannot be made to hold a request unanswered.
    let w = World::new("stall", |c| {
        c.faults = Faults {
            error_500: 0,
            error_502: 0,
            error_503: 0,
            reset: 0,
            stall: 0,
            stall_forever: 100,
            ..Faults::default()
        }
    })
    .await;
    let pod = w.pod("app", "puller");
    let mut node = w.node(FAULTS_ORG, false).await;
    let answer = node.lookup(&pod.lookup(IMAGE, None)).await;
    assert_eq!(answer["credentials"], json!([]));
    assert_eq!((execs(&answer, PROVIDER), exec_errors(&answer, PROVIDER)), (1, 1));
    let log = logs(&answer);
    // plugin.go ExecPlugin: the run's error with its stderr. Our line, from our own
    // deadline; not the kubelet's context.WithTimeout(1 minute) killing the provider.
    assert!(
        log.contains("exit status 9") && log.contains("error: no credentials within 50s of starting"),
        "{log}"
    );
    assert!(!log.contains("context deadline exceeded"), "{log}");
    assert!(w.cloudsmith.request_count_for(FAULTS_ORG) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_unknown_field_and_the_kubelets_decoder_refuses_the_response() {
    shipped_rbac().await;
    let w = World::new("strict", |_| {}).await;
    let pod = w.pod("app", "puller");
    let mut node = w.node(ORG, true).await;
    // Ours passes the decoder (plugin.go decodeResponse: codecs built with
    // serializer.EnableStrict) ...
    let ours = node.lookup(&pod.lookup(IMAGE, None)).await;
    assert_eq!(ours["credentials"].as_array().map(Vec::len), Some(1), "{ours}");
    // ... and the same answer with one field more does not.
    let extra = node
        .lookup(&pod.lookup("extra.cloudsmith.test/my-organization/app:1", None))
        .await;
    assert_eq!(extra["credentials"], json!([]), "{extra}");
    assert_eq!(execs(&extra, "cloudsmith-gen-extra-field"), 1, "{extra}");
    assert!(
        logs(&extra).contains("error decoding credential provider plugin response from stdout"),
        "{}",
        logs(&extra)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_config_runs_the_provider_whose_policy_allows_only_cloudsmith() {
    shipped_rbac().await;
    let w = World::new("shipped", |_| {}).await;
    let pod = w.pod("app", "puller");
    let mut node = Node::start(w.cluster, &manifest(&w.cloudsmith.url(), ORG), &Edits::default()).await;
    let install = std::fs::read_to_string(node.path("install.txt")).unwrap();
    assert_eq!(
        install.lines().collect::<Vec<_>>(),
        [
            format!("installed {}", node.path("bin/cloudsmith-gen").display()),
            "installed /etc/cloudsmith/credential-provider.yaml".to_string(),
            "installed /etc/cloudsmith/generator.yaml".to_string(),
        ]
    );
    let answer = node.lookup(&pod.lookup(IMAGE, None)).await;
    assert_eq!(
        (execs(&answer, PROVIDER), exec_errors(&answer, PROVIDER)),
        (1, 1),
        "{answer}"
    );
    // The provider ran with the shipped args (the manifest and cache paths), read the
    // operator's manifest, and refused its API before any exchange.
    let log = logs(&answer);
    assert!(
        log.contains("exit status 4") && log.contains("error: refused by host policy"),
        "{log}"
    );
    assert_eq!(w.cloudsmith.request_count(), 0);
}
