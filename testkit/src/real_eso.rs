//! External Secrets Operator's own code, run by the tests: ESO v0.20.4 (the newest
//! release the Go module proxy serves whole, docs/eso-webhook.md#compatibility), built
//! from its module in `harness/`.
//!
//! - [`generate`]: one generator (`Webhook`, `CloudsmithAccessToken`) run the way ESO's
//!   ExternalSecret controller runs a `dataFrom[].sourceRef.generatorRef`
//!   (`harness/cmd/eso-generate`): ESO's resolver reads the generator object, ESO's
//!   `Generate` answers. Its objects come from a real API server (a kubeconfig) or from
//!   controller-runtime's fake client (files of objects).
//! - [`Controller`]: ESO's controller process (`harness/cmd/eso-controller`: ESO's own
//!   main, with this process's DNS answering for a Service name).
//!
//! What ESO versions that cannot run here do differently is in [`crate::eso`].

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

/// The ESO release the harness builds (harness/go.mod).
pub const VERSION: &str = "v0.20.4";

/// The API group and version of ESO's generators.
pub const GENERATORS_API: &str = "generators.external-secrets.io/v1alpha1";

/// Where a generator's objects (the generator, its Secrets and ConfigMaps) are read.
#[derive(Debug, Clone)]
pub enum Objects {
    /// A real API server, through this kubeconfig (the identity ESO's controller has).
    Cluster(PathBuf),
    /// controller-runtime's fake client, holding the objects of these YAML or JSON files.
    Fake(Vec<PathBuf>),
}

/// One run of a generator.
#[derive(Debug, Clone)]
pub struct Generate {
    /// The ExternalSecret's namespace.
    pub namespace: String,
    /// The generator's kind (`Webhook`, `CloudsmithAccessToken`).
    pub kind: String,
    /// The generator's name.
    pub name: String,
    /// Where the objects are.
    pub objects: Objects,
    /// DNS answers for the driver process (a Service name → a loopback address).
    pub resolve: Vec<(String, IpAddr)>,
    /// More environment for the driver (`SSL_CERT_FILE`: the roots Go's
    /// `http.Client` trusts, which the Cloudsmith generator uses as they are).
    pub env: Vec<(String, PathBuf)>,
}

impl Generate {
    /// The generator `kind`/`name` for an ExternalSecret in `namespace`, objects in `objects`.
    pub fn new(namespace: &str, kind: &str, name: &str, objects: Objects) -> Generate {
        Generate {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
            objects,
            resolve: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// What ESO's `Generate` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    /// The keys and values, byte for byte.
    Data(BTreeMap<String, Vec<u8>>),
    /// The error, as `err.Error()` prints it (the ExternalSecret's Ready condition shows
    /// it after `error processing spec.dataFrom[i].sourceRef.generatorRef, err: error
    /// using generator: `).
    Error {
        /// The message.
        message: String,
        /// `errors.Is(err, esv1.NoSecretErr)`: with `deletionPolicy: Delete` the
        /// controller drops this data (and deletes a Secret left without any).
        no_secret: bool,
        /// `errors.Is(err, esv1.NotModifiedErr)`.
        not_modified: bool,
    },
}

impl Generated {
    /// The value of `key` as text; panics with what was generated otherwise.
    pub fn text(&self, key: &str) -> String {
        match self {
            Generated::Data(data) if data.contains_key(key) => String::from_utf8(data[key].clone())
                .unwrap_or_else(|_| panic!("ESO's {key} is not UTF-8: {self:?}")),
            other => panic!("ESO generated no {key}: {other:?}"),
        }
    }

    /// The error message; panics if ESO generated data.
    pub fn error(&self) -> &str {
        match self {
            Generated::Error { message, .. } => message,
            Generated::Data(_) => panic!("ESO generated data, not an error: {self:?}"),
        }
    }
}

/// Runs `run` through ESO's code (`harness/cmd/eso-generate`); panics if the driver
/// itself fails (bad objects, no harness build), with its `error:` line.
pub async fn generate(run: &Generate) -> Generated {
    let mut cmd = tokio::process::Command::new(crate::tools::harness_bin("eso-generate"));
    cmd.args(["--namespace", &run.namespace])
        .args(["--generator", &format!("{}/{}", run.kind, run.name)]);
    match &run.objects {
        Objects::Cluster(kubeconfig) => {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        Objects::Fake(files) => {
            // No API server may be reached by accident: the fake client only.
            cmd.env_remove("KUBECONFIG");
            for f in files {
                cmd.arg("--objects").arg(f);
            }
        }
    }
    for (name, ip) in &run.resolve {
        cmd.arg("--resolve").arg(format!("{name}={ip}"));
    }
    for (k, v) in &run.env {
        cmd.env(k, v);
    }
    let out = crate::process::run(cmd, None, Duration::from_secs(360))
        .await
        .unwrap_or_else(|e| panic!("eso-generate: {e}"));
    assert!(
        out.success(),
        "eso-generate failed ({:?}): {}",
        out.code,
        out.stderr
    );
    parse(&out.stdout)
}

fn parse(stdout: &str) -> Generated {
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("eso-generate printed no JSON ({e}): {stdout}"));
    if let Some(message) = v["error"].as_str() {
        return Generated::Error {
            message: message.into(),
            no_secret: v["noSecret"] == true,
            not_modified: v["notModified"] == true,
        };
    }
    let data = v["data"]
        .as_object()
        .unwrap_or_else(|| panic!("eso-generate printed neither data nor error: {stdout}"));
    Generated::Data(
        data.iter()
            .map(|(k, b64)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("eso-generate's {k} is not base64: {e}"));
                (k.clone(), bytes)
            })
            .collect(),
    )
}

/// ESO installed in `cluster` as its Helm chart installs it, without what a test cannot
/// have: ESO's CRDs ([`crate::cluster::Cluster::install_eso_crds`]), then namespace
/// `external-secrets` with the chart's ServiceAccount, RBAC and Deployment (env
/// `ESO_INSTALL`, rendered by scripts/harness.sh with `webhook.create=false` and
/// `certController.create=false`; the Deployment never runs: no kubelet). Once per
/// control plane. Returns a kubeconfig of ESO's service account, the identity its
/// controller has in a cluster.
pub fn install(cluster: &crate::cluster::Cluster) -> PathBuf {
    static DONE: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, kubeconfig)) = done.iter().find(|(server, _)| server == cluster.server()) {
        return kubeconfig.clone();
    }
    cluster.install_eso_crds();
    let path = std::env::var_os("ESO_INSTALL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/harness/eso-install.yaml"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "ESO's chart, rendered ({}): {e}: run `bash scripts/test.sh`, which renders it \
             (or `source scripts/harness.sh` alone)",
            path.display()
        )
    });
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: external-secrets\n");
    cluster.apply(&yaml);
    let kubeconfig = cluster.service_account_kubeconfig("external-secrets", "external-secrets");
    done.push((cluster.server().to_string(), kubeconfig.clone()));
    kubeconfig
}

/// Writes `objects` (Kubernetes objects as JSON values) as one multi-document file.
pub fn write_objects(path: &Path, objects: &[Value]) -> anyhow::Result<()> {
    let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
    std::fs::write(path, docs.join("\n---\n"))?;
    Ok(())
}

/// ESO's controller, running against an API server until dropped (then killed).
pub struct Controller {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    /// Starts ESO's controller with `kubeconfig` (ESO's identity, [`install`]) and the
    /// arguments of the chart's Deployment (`--concurrent=1 --loglevel=info`), with ESO's
    /// own flags for what differs in a test: `--namespace` (only that namespace's
    /// ExternalSecrets: the control plane is shared by the tests of a process), its
    /// metrics and health endpoints off (`0`: controller-runtime binds none, where the
    /// chart binds `:8080` and `:8082` on every interface), and debug logs. Its
    /// admission webhook and cert controller are subcommands of the same binary
    /// (`webhook`, `certcontroller`) and are not started. `resolve` is what this
    /// process's DNS answers (a Service's name → a loopback address).
    pub fn start(kubeconfig: &Path, namespace: &str, resolve: &[(String, IpAddr)]) -> Controller {
        let table: Vec<String> = resolve.iter().map(|(n, ip)| format!("{n}={ip}")).collect();
        let mut child = Command::new(crate::tools::harness_bin("eso-controller"))
            .args([
                "--concurrent=1",
                "--loglevel=debug",
                "--zap-time-encoding=iso8601",
                "--metrics-addr=0",
                "--live-addr=0",
                "--namespace",
                namespace,
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("HARNESS_RESOLVE", table.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eso-controller (harness/cmd/eso-controller)");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Controller { child, log }
    }

    /// Everything the controller logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_answers() {
        assert_eq!(
            parse(r#"{"data":{"auth":"YQ==","expiry":"MQ=="}}"#),
            Generated::Data([("auth".into(), b"a".to_vec()), ("expiry".into(), b"1".to_vec())].into())
        );
        assert_eq!(
            parse(r#"{"error":"x","noSecret":true}"#),
            Generated::Error {
                message: "x".into(),
                no_secret: true,
                not_modified: false
            }
        );
    }
}
