//! The Helm chart `charts/cloudsmith-gen`, driven by the real helm (built from
//! `helm.sh/helm/v4` at the version `harness/go.mod` pins): it lints, it renders what the
//! kustomize bases render (object by object, with the differences docs/helm.md names),
//! it refuses bad values in one line naming the value, and the real helm installs,
//! upgrades and uninstalls it on the real API server (`testkit::cluster`), where every
//! object is checked against its real schema, ESO's CRDs included.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use testkit::cluster::Cluster;

fn chart() -> PathBuf {
    testkit::workspace_root().join("charts/cloudsmith-gen")
}

/// The real helm, with its configuration and cache in a directory of its own, so no
/// file of the user's (repositories, registries, plugins) takes part.
fn helm(args: &[&str]) -> Output {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("temp dir")).path();
    Command::new(testkit::tools::harness_bin("helm"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// The Kubernetes version `helm template` renders for: the control plane's.
const KUBE_VERSION: &str = "1.34.4";

/// `helm template RELEASE chart -n NAMESPACE` with `sets`, as objects.
fn template(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let yaml = helm_ok(&args);
    serde_saphyr::from_multiple::<Value>(&yaml)
        .expect("helm template prints YAML")
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// The labels helm adds that kustomize does not: who manages the object, and which
/// release and chart version made it.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// `object` with every label of [`HELM_LABELS`] removed, wherever labels are (metadata,
/// selectors, pod templates), and the generators file parsed (kustomize copies the file
/// with its comments; the chart holds the documents).
fn normalized(mut object: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if matches!(key.as_str(), "labels" | "matchLabels" | "selector") {
                        if let Value::Object(labels) = child {
                            for label in HELM_LABELS {
                                labels.remove(label);
                            }
                        }
                    }
                    strip(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut object);
    if object["kind"] == "ConfigMap" {
        if let Some(text) = object["data"]["generators.yaml"].as_str() {
            let documents: Vec<Value> = serde_saphyr::from_multiple(text).expect("generators.yaml is YAML");
            object["data"]["generators.yaml"] = Value::Array(documents);
        }
    }
    object
}

fn key(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects.into_iter().map(|o| (key(&o), normalized(o))).collect()
}

/// The chart with the values that reproduce `deploy/` (release `cloudsmith-gen` in
/// namespace `cloudsmith-gen`, the seed's namespace `apps` as a consumer, the kubelet
/// provider on) renders the objects of `kubectl kustomize deploy/` and
/// `kubectl kustomize deploy/kubelet`, but for the differences docs/helm.md names: the
/// Namespace objects (helm installs into `--namespace`, with `--create-namespace`) and
/// helm's own labels.
#[test]
fn the_chart_renders_what_the_kustomize_bases_render() {
    let chart = by_key(template(
        "cloudsmith-gen",
        "cloudsmith-gen",
        &["consumers[0].namespace=apps", "kubeletProvider.enabled=true"],
    ));
    let mut kustomize = by_key(
        testkit::eso::kustomize(&testkit::workspace_root().join("deploy")).expect("kustomize deploy/"),
    );
    kustomize.extend(by_key(
        testkit::eso::kustomize(&testkit::workspace_root().join("deploy/kubelet"))
            .expect("kustomize deploy/kubelet"),
    ));
    let namespaces: Vec<String> = kustomize
        .keys()
        .filter(|k| k.starts_with("Namespace/"))
        .cloned()
        .collect();
    assert_eq!(
        namespaces,
        ["Namespace//cloudsmith-gen"],
        "the one documented difference"
    );
    for namespace in namespaces {
        kustomize.remove(&namespace);
    }
    let only_chart: Vec<&String> = chart.keys().filter(|k| !kustomize.contains_key(*k)).collect();
    let only_kustomize: Vec<&String> = kustomize.keys().filter(|k| !chart.contains_key(*k)).collect();
    assert!(
        only_chart.is_empty() && only_kustomize.is_empty(),
        "objects only the chart renders: {only_chart:?}; only kustomize: {only_kustomize:?}"
    );
    for (key, object) in &kustomize {
        assert_eq!(
            &chart[key],
            object,
            "{key} differs between the chart and kustomize\nchart: {}\nkustomize: {}",
            serde_json::to_string_pretty(&chart[key]).unwrap(),
            serde_json::to_string_pretty(object).unwrap()
        );
    }
}

#[test]
fn the_chart_lints_with_its_defaults_and_its_variants() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for sets in [
        &[][..],
        &[
            "consumers[0].namespace=apps",
            "consumers[1].namespace=team-b",
            "caBundle=PEM",
        ],
        &["kubeletProvider.enabled=true"],
        &["image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000"],
        &[
            "serve.networkPolicy.enabled=false",
            "serve.podDisruptionBudget.enabled=false",
        ],
    ] {
        let mut args = vec!["lint", "--strict", chart, "--kube-version", KUBE_VERSION];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = helm_ok(&args);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{sets:?}: {out}"
        );
    }
}

#[test]
fn the_common_variants_render_what_they_promise() {
    // The image by digest: the tag is ignored.
    let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let objects = template(
        "cloudsmith-gen",
        "cloudsmith-gen",
        &[
            "image.repository=registry.example.com/cloudsmith-gen",
            &format!("image.digest={digest}"),
            "image.tag=ignored",
        ],
    );
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.example.com/cloudsmith-gen@{digest}")
    );
    // No kubelet provider, PDB or NetworkPolicy unless asked; no consumer objects by default.
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for absent in ["DaemonSet", "Webhook", "ExternalSecret"] {
        assert!(
            !kinds.contains(&absent),
            "{absent} rendered by default: {kinds:?}"
        );
    }
    let off = template(
        "x",
        "tools",
        &[
            "serve.networkPolicy.enabled=false",
            "serve.podDisruptionBudget.enabled=false",
        ],
    );
    let kinds: Vec<&str> = off.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(
        !kinds.contains(&"NetworkPolicy") && !kinds.contains(&"PodDisruptionBudget"),
        "{kinds:?}"
    );

    // Two consumers and a CA: each namespace gets its own Webhook, pointed at this
    // release's Service, and its own CA ConfigMap; the names follow the release.
    let objects = template(
        "team",
        "tools",
        &[
            "consumers[0].namespace=a",
            "consumers[1].namespace=b",
            "consumers[1].registry=registry.acme.example",
            "caBundle=-----BEGIN CERTIFICATE-----",
        ],
    );
    for (ns, registry) in [("a", "docker.cloudsmith.io"), ("b", "registry.acme.example")] {
        let webhook = objects
            .iter()
            .find(|o| o["kind"] == "Webhook" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Webhook in {ns}"));
        assert_eq!(
            webhook["spec"]["url"],
            format!("https://team-cloudsmith-gen.tools.svc:8443/v1/namespaces/{ns}/generators/cloudsmith-access-token")
        );
        assert_eq!(webhook["spec"]["caProvider"]["name"], "team-cloudsmith-gen-ca");
        let ca = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no CA ConfigMap in {ns}"));
        assert_eq!(ca["data"]["ca.crt"], "-----BEGIN CERTIFICATE-----");
        let external_secret = objects
            .iter()
            .find(|o| o["kind"] == "ExternalSecret" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no ExternalSecret in {ns}"));
        let template = external_secret["spec"]["target"]["template"]["data"][".dockerconfigjson"]
            .as_str()
            .unwrap();
        let template: Value = serde_json::from_str(template).expect("the template is JSON");
        assert_eq!(template["auths"][registry]["auth"], "{{ .auth }}");
    }
}

/// Every bad value is refused before anything is rendered, in a line that names it.
#[test]
fn bad_values_are_refused_naming_the_value() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (sets, needle) in [
        (&["image.digest=latest"][..], "image.digest"),
        (&["consumers[0].registry=x"], "namespace"),
        (&["consumers[0].namespace=Not_A_Namespace"], "namespace"),
        (&["serve.replica=2"], "replica"),
        (&["serve.timeout=0"], "timeout"),
        (&["serve.extraArgs[0]=serve"], "extraArgs"),
        (&["kubeletProvider.binDir=relative/dir"], "binDir"),
        (
            &["consumers[0].namespace=a", "consumers[0].webhookTimeout=30"],
            "webhookTimeout",
        ),
    ] {
        let mut args = vec!["template", "x", chart, "--kube-version", KUBE_VERSION];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = helm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(out.stdout.is_empty(), "{sets:?}: something rendered");
        assert!(stderr.contains(needle), "{sets:?}: {needle:?} not in {stderr}");
    }
    // The kubelet provider refuses a cluster older than 1.34, naming what it needs.
    let out = helm(&[
        "template",
        "x",
        chart,
        "--kube-version",
        "1.33.5",
        "--set",
        "kubeletProvider.enabled=true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Kubernetes 1.34 or later"), "{stderr}");
}

/// The real helm installs the chart on the real API server, where every object (ESO's
/// Webhook and ExternalSecret against ESO's CRDs) passes its schema and admission, then
/// upgrades it with the kubelet provider and uninstalls it, leaving nothing behind.
#[test]
fn helm_installs_upgrades_and_uninstalls_on_the_real_api_server() {
    let cluster = Cluster::shared();
    cluster.install_eso_crds();
    let namespace = cluster.fresh_name("chart");
    let consumer = cluster.namespace("chart-consumer");
    let kubeconfig = cluster.admin_kubeconfig().to_str().unwrap().to_string();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // A release name of its own: the chart's cluster-scoped objects (ClusterRoles) are
    // named after the release, apart from those deploy/ applies in other tests.
    let release = format!("{namespace}-release");
    let consumer_set = format!("consumers[0].namespace={consumer}");
    let common = [
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        &namespace,
        "--set",
        &consumer_set,
        "--set",
        "caBundle=-----BEGIN CERTIFICATE-----",
    ];

    let mut install = vec!["install", &release, chart, "--create-namespace"];
    install.extend(common);
    helm_ok(&install);
    let fullname = format!("{release}-cloudsmith-gen");
    for (kind, ns, name) in [
        ("deployment", namespace.as_str(), fullname.clone()),
        ("clusterrole", "", format!("{fullname}-reviewer")),
        (
            "webhooks.generators.external-secrets.io",
            consumer.as_str(),
            "cloudsmith-access-token".into(),
        ),
        (
            "externalsecrets.external-secrets.io",
            consumer.as_str(),
            "cloudsmith-credentials".into(),
        ),
        ("configmap", consumer.as_str(), format!("{fullname}-ca")),
    ] {
        let mut args = vec!["get", kind, &name, "-o", "name"];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        cluster.kubectl_ok(&args);
    }
    // The caller's token Secret is filled in by the token controller, as in a real cluster.
    let secret = "secret/eso-cloudsmith-caller-token";
    let mut filled = false;
    for _ in 0..100 {
        let out = cluster.kubectl(&["get", secret, "-n", &consumer, "-o", "jsonpath={.data.token}"]);
        if out.status.success() && !out.stdout.is_empty() {
            filled = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(filled, "the token controller did not fill {secret} in {consumer}");

    let mut upgrade = vec![
        "upgrade",
        &release,
        chart,
        "--set",
        "kubeletProvider.enabled=true",
    ];
    upgrade.extend(common);
    helm_ok(&upgrade);
    cluster.kubectl_ok(&[
        "get",
        "daemonset",
        &format!("{fullname}-kubelet-provider"),
        "-n",
        "kube-system",
    ]);
    let status = helm_ok(&[
        "status",
        &release,
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        &namespace,
    ]);
    assert!(status.contains("REVISION: 2"), "{status}");

    helm_ok(&[
        "uninstall",
        &release,
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        &namespace,
        "--wait",
    ]);
    for (kind, ns) in [
        (
            "deployments,services,configmaps,serviceaccounts",
            namespace.as_str(),
        ),
        (
            "webhooks.generators.external-secrets.io,externalsecrets.external-secrets.io,rolebindings",
            consumer.as_str(),
        ),
    ] {
        let left = cluster.kubectl_ok(&[
            "get",
            kind,
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        assert!(left.trim().is_empty(), "left behind in {ns}: {left}");
    }
    let left = cluster.kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]);
    assert!(
        left.trim().is_empty(),
        "cluster-scoped objects left behind: {left}"
    );
}
