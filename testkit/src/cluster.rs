//! The real Kubernetes control plane of a test process: etcd, kube-apiserver and
//! kube-controller-manager built from their Go modules (`harness/go.mod`) and started by
//! `harness/cmd/control-plane` (docs/real-clients.md says how).
//!
//! One control plane per test process, started on first use (about 10 s on a quiet
//! machine) and shared by every test in the process; each test works in its own
//! [`Cluster::namespace`]. It listens on 127.0.0.1 only and stops when the process exits:
//! the control plane watches its stdin, a pipe this process holds until it dies, and
//! its children die with it.
//!
//! What it is, as a real cluster is: RBAC and the Node authorizer, the NodeRestriction
//! admission plugin, an https service-account issuer (the API server itself) whose OIDC
//! discovery document and keys anyone may read, the TokenRequest, TokenReview and
//! SubjectAccessReview APIs, and the service-account, token and root-CA controllers.
//! There is no kubelet, scheduler or network: Pods are objects, never run.
//!
//! Set-up goes through the machine's `kubectl` as the admin ([`Cluster::apply`],
//! [`Cluster::kubectl`]); the identities under test are service accounts and nodes, with
//! the permissions the objects applied give them and nothing else.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// How long the control plane may take to become ready: a cold start on a loaded
/// 2-core machine (three Go programs, certificates, RBAC bootstrap) takes up to a
/// minute; this is the bound before a test fails.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The control plane's lifetime bound (`-ttl`), beyond any one test process's run: it
/// normally stops long before, when this process exits.
const TTL: &str = "3h";

/// A running control plane (see the module documentation).
pub struct Cluster {
    ready: Ready,
    /// Held, never written: its closing (this process's exit, or the drop of a
    /// [`Cluster::start`]ed cluster) stops the control plane.
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
    /// What the control plane wrote on stderr (the reason, if it stops early).
    stderr: Arc<Mutex<String>>,
    counter: AtomicU64,
    eso_crds: OnceLock<()>,
    service: OnceLock<PathBuf>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.ready.server)
            .field("dir", &self.ready.dir)
            .finish_non_exhaustive()
    }
}

/// The control plane's one line on stdout.
#[derive(Debug, Clone, Deserialize)]
struct Ready {
    server: String,
    issuer: String,
    ca_file: PathBuf,
    admin_kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    /// The control plane of this test process, started on first use, shared by every
    /// test in the process, stopped when the process exits. Panics, with the control
    /// plane's error, when it cannot start.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            Cluster::start().unwrap_or_else(|e| panic!("the control plane did not start: {e:#}"))
        })
    }

    /// Starts a control plane of its own, stopped when the handle is dropped (most tests
    /// want [`Cluster::shared`]).
    pub fn start() -> anyhow::Result<Cluster> {
        let binary = crate::tools::harness_bin("control-plane");
        let mut child = Command::new(&binary)
            .args(["-ttl", TTL])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", binary.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                // The stderr thread reads until the pipe closes: give it a moment.
                std::thread::sleep(Duration::from_millis(200));
                let why = if other.is_err() {
                    format!("not ready within {}s", START_TIMEOUT.as_secs())
                } else {
                    "exited".to_string()
                };
                anyhow::bail!("{} {why}: {}", binary.display(), stderr.lock().unwrap().trim());
            }
        };
        let ready: Ready = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("control-plane printed {line:?}: {e}"))?;
        std::fs::create_dir_all(ready.dir.join("testkit"))?;
        Ok(Cluster {
            ready,
            stdin: Mutex::new(Some(stdin)),
            child: Mutex::new(child),
            stderr,
            counter: AtomicU64::new(0),
            eso_crds: OnceLock::new(),
            service: OnceLock::new(),
        })
    }

    /// The API server, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.ready.server
    }

    /// The API server's serving CA (PEM), which also signs client certificates.
    pub fn ca_file(&self) -> &Path {
        &self.ready.ca_file
    }

    /// The CA of [`Cluster::ca_file`], as PEM text.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("the control plane's CA file")
    }

    /// A kubeconfig in `system:masters`: for setting up a test, never the identity
    /// under test.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.ready.admin_kubeconfig
    }

    /// The service-account issuer, an https URL (the API server itself): the `iss` of
    /// every token it mints, where `/.well-known/openid-configuration` is served.
    pub fn issuer(&self) -> &str {
        &self.ready.issuer
    }

    /// What the control plane said on stderr so far (empty while it runs well).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A file name in the control plane's directory, deleted with it.
    fn scratch(&self, stem: &str, extension: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.ready
            .dir
            .join("testkit")
            .join(format!("{stem}-{n}.{extension}"))
    }

    /// A fresh namespace for one test: `prefix` (made a DNS label) and a number unique
    /// in this control plane.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = self.fresh_name(prefix);
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }

    /// A name [`Cluster::namespace`] would give, without creating anything (for a test
    /// that applies many objects at once).
    pub fn fresh_name(&self, prefix: &str) -> String {
        namespace_name(prefix, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// `kubectl apply --server-side --validate=strict -f -` of `yaml` as the admin: each
    /// object checked by the API server against its schema (a field it does not know is
    /// an error, not dropped). Panics with kubectl's stderr when any object is refused.
    pub fn apply(&self, yaml: &str) {
        // A JSON object is a YAML document, but kubectl reads a stream that starts with
        // `{` as JSON alone, and then fails at the first `---`: begin with one.
        let yaml = if yaml.trim_start().starts_with('{') {
            format!("---\n{yaml}")
        } else {
            yaml.to_string()
        };
        let out = self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--validate=strict",
                "--field-manager=testkit",
                "-f",
                "-",
            ],
            yaml.as_bytes(),
        );
        assert!(
            out.status.success(),
            "kubectl apply refused:\n{}\nof:\n{}",
            String::from_utf8_lossy(&out.stderr),
            yaml.chars().take(4000).collect::<String>()
        );
    }

    /// ESO's CustomResourceDefinitions, from the external-secrets module harness/go.mod
    /// pins (its `deploy/crds/bundle.yaml`, which scripts/harness.sh copies to env
    /// `ESO_CRDS`, else `target/harness/eso-crds.yaml`), applied once per control plane
    /// and waited for until Established: from then on, ESO's objects are checked against
    /// their real schemas.
    pub fn install_eso_crds(&self) {
        self.eso_crds.get_or_init(|| {
            let path = std::env::var_os("ESO_CRDS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join("target/harness/eso-crds.yaml"));
            let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "ESO's CRDs ({}): {e}: run `bash scripts/test.sh`, which copies them from the \
                     external-secrets module (or `source scripts/harness.sh` alone)",
                    path.display()
                )
            });
            self.apply(&yaml);
            self.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "--timeout=120s",
                "crd",
                "--all",
            ]);
        });
    }

    /// `serve`'s identity exactly as `deploy/` ships it, applied once per control plane:
    /// namespace `cloudsmith-gen`, its ServiceAccount `cloudsmith-gen`, and
    /// `deploy/serve/rbac.yaml` (TokenReview and SubjectAccessReview cluster-wide, the
    /// token-minter ClusterRole a namespace binds to opt in). Returns a kubeconfig of that
    /// service account ([`Cluster::service_account_kubeconfig`]).
    pub fn deployed_service(&self) -> &Path {
        self.service.get_or_init(|| {
            for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
                let path = crate::workspace_root().join("deploy/serve").join(file);
                self.apply(
                    &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
                );
            }
            self.service_account_kubeconfig("cloudsmith-gen", "cloudsmith-gen")
        })
    }

    /// `namespace` opts in as `deploy/eso/apps.yaml` shows for `apps`: the
    /// ServiceAccount `cloudsmith-oidc` (the identity Cloudsmith trusts) and the
    /// RoleBinding that lets `serve` mint its tokens, both taken from that file with only
    /// the namespace changed. With `account: false`, only the RoleBinding (a namespace
    /// where the account is missing).
    pub fn opt_in(&self, namespace: &str, account: bool) {
        self.apply(&self.opt_in_yaml(namespace, account));
    }

    /// The objects of [`Cluster::opt_in`], as YAML to apply.
    pub fn opt_in_yaml(&self, namespace: &str, account: bool) -> String {
        let path = crate::workspace_root().join("deploy/eso/apps.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let objects: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut picked = Vec::new();
        for mut object in objects {
            let wanted = match (object["kind"].as_str(), object["metadata"]["name"].as_str()) {
                (Some("ServiceAccount"), Some("cloudsmith-oidc")) => account,
                (Some("RoleBinding"), Some("cloudsmith-gen-token-minter")) => true,
                _ => false,
            };
            if wanted {
                object["metadata"]["namespace"] = namespace.into();
                picked.push(object);
            }
        }
        assert_eq!(
            picked.len(),
            1 + usize::from(account),
            "deploy/eso/apps.yaml no longer has the objects a namespace opts in with"
        );
        // A List: kubectl reads input that starts with `{` as JSON, where `---` is no
        // separator.
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": picked}).to_string()
    }

    /// `kubectl <args>` as the admin (the machine's kubectl, [`crate::tools::kubectl`]).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, b"")
    }

    /// [`Cluster::kubectl`] with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(
            Command::new(crate::tools::kubectl())
                .arg("--kubeconfig")
                .arg(self.admin_kubeconfig())
                .args(args),
            stdin,
        )
    }

    /// [`Cluster::kubectl`], panicking with kubectl's stderr when it fails; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }

    /// A token for service account `namespace/name` from the TokenRequest API (as the
    /// admin asks for it: `kubectl create token`), for `audiences` (none: the API
    /// server's own, the issuer).
    pub fn token(&self, namespace: &str, name: &str, audiences: &[&str]) -> String {
        let mut args = vec!["create", "token", name, "-n", namespace];
        for audience in audiences {
            args.extend(["--audience", audience]);
        }
        self.kubectl_ok(&args).trim().to_string()
    }

    /// A bootstrap token (`<id>.<secret>`, a Secret of type `bootstrap.kubernetes.io/token`
    /// in `kube-system` allowed for authentication): a bearer token the API server
    /// authenticates as `system:bootstrap:<id>` in `system:bootstrappers`, a user that is
    /// no service account. A new one per call.
    pub fn bootstrap_token(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Both parts are [a-z0-9], 6 and 16 long (the bootstrap token format).
        let id = format!("t{:05}", n % 100_000);
        let secret = format!(
            "{:016x}",
            crate::oidc::now_unix().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n
        );
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\n\
             type: bootstrap.kubernetes.io/token\nstringData:\n  token-id: {id}\n  token-secret: \"{secret}\"\n  \
             usage-bootstrap-authentication: \"true\"\n"
        ));
        format!("{id}.{secret}")
    }

    /// A kubeconfig that authenticates as service account `namespace/name` with a token
    /// from the TokenRequest API for the API server's audience: what a Pod of that
    /// account holds.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.token(namespace, name, &[]);
        let path = self.scratch(&format!("sa-{namespace}-{name}"), "kubeconfig");
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            // The CA inline: the file works wherever it is copied (into a container, say).
            "clusters": [{"name": "control-plane", "cluster": {
                "server": self.server(),
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(self.ca_pem()),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "control-plane", "context": {
                "cluster": "control-plane", "user": user, "namespace": namespace,
            }}],
            "current-context": "control-plane",
        });
        std::fs::write(&path, config.to_string()).expect("write a kubeconfig");
        path
    }

    /// A kubeconfig whose client certificate, signed by the cluster's client CA, is
    /// `system:node:<node>` in group `system:nodes`: a kubelet's identity, which the
    /// Node authorizer and NodeRestriction judge.
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        let path = self.scratch(&format!("node-{node}"), "kubeconfig");
        let user = format!("system:node:{node}");
        let out = Command::new(crate::tools::harness_bin("control-plane"))
            .arg("kubeconfig")
            .arg("-dir")
            .arg(&self.ready.dir)
            .args(["-user", &user, "-group", "system:nodes", "-out"])
            .arg(&path)
            .output()
            .expect("run control-plane kubeconfig");
        assert!(
            out.status.success(),
            "control-plane kubeconfig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// The API server's own count of the requests it has served for `resource` (or
    /// `resource/subresource`, e.g. `serviceaccounts/token`) with `verb`, all codes and
    /// groups together: the sum of `apiserver_request_total`'s series with those labels
    /// in its `/metrics` (`verb` as the metric spells it, e.g. `POST` for a create,
    /// compared without regard to case). Every client of this control plane counts, so a
    /// test comparing two counts must be the only one making such requests in its
    /// process.
    pub fn request_count(&self, resource: &str, verb: &str) -> u64 {
        let metrics = self.kubectl_ok(&["get", "--raw", "/metrics"]);
        sum_request_total(&metrics, resource, verb)
    }
}

impl Drop for Cluster {
    /// Closes the control plane's stdin, which stops it (and deletes its directory), and
    /// waits for it to exit.
    fn drop(&mut self) {
        if let Ok(mut stdin) = self.stdin.lock() {
            drop(stdin.take());
        }
        if let Ok(mut child) = self.child.lock() {
            let _ = child.wait();
        }
    }
}

/// `prefix` made a DNS-1123 label with `-{n}` appended.
fn namespace_name(prefix: &str, n: u64) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let suffix = format!("-{n}");
    name.truncate(63 - suffix.len());
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "test" } else { name };
    format!("{name}{suffix}")
}

/// The sum of the `apiserver_request_total` series whose `resource` and `verb` labels
/// are these, in Prometheus text format.
fn sum_request_total(metrics: &str, resource: &str, verb: &str) -> u64 {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| {
            label(labels, "resource") == Some(resource)
                && label(labels, "subresource").unwrap_or_default() == subresource
                && label(labels, "verb").is_some_and(|v| v.eq_ignore_ascii_case(verb))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The value of `name` in a Prometheus label set `a="x",b="y"` (values hold no `"`).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

fn run_with_stdin(command: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for kubectl");
    let _ = writer.join();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        assert_eq!(namespace_name("serve", 3), "serve-3");
        assert_eq!(namespace_name("Token_Sources!", 12), "token-sources-12");
        assert_eq!(namespace_name("--", 0), "test-0");
        let long = namespace_name(&"a".repeat(100), 123);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("a-123"));
    }

    #[test]
    fn request_totals_are_summed_by_resource_and_verb() {
        let metrics = "\
# HELP apiserver_request_total x
apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"authentication.k8s.io\",resource=\"tokenreviews\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 3
apiserver_request_total{code=\"400\",component=\"apiserver\",dry_run=\"\",group=\"authentication.k8s.io\",resource=\"tokenreviews\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 2
apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"tokenreviews\",scope=\"resource\",subresource=\"\",verb=\"GET\",version=\"v1\"} 7
apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"authorization.k8s.io\",resource=\"subjectaccessreviews\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 11
apiserver_request_total_other{resource=\"tokenreviews\",verb=\"POST\"} 100
";
        assert_eq!(sum_request_total(metrics, "tokenreviews", "post"), 5);
        assert_eq!(sum_request_total(metrics, "tokenreviews", "GET"), 7);
        assert_eq!(sum_request_total(metrics, "subjectaccessreviews", "POST"), 11);
        assert_eq!(sum_request_total(metrics, "secrets", "POST"), 0);
        let tokens = "apiserver_request_total{code=\"201\",resource=\"serviceaccounts\",subresource=\"token\",verb=\"POST\"} 4\n\
                      apiserver_request_total{code=\"201\",resource=\"serviceaccounts\",subresource=\"\",verb=\"POST\"} 1\n";
        assert_eq!(sum_request_total(tokens, "serviceaccounts/token", "POST"), 4);
        assert_eq!(sum_request_total(tokens, "serviceaccounts", "POST"), 1);
    }
}
