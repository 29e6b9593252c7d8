//! `deploy/` renders with `kubectl kustomize` (the machine's kubectl, 1.27 or newer), the
//! rendered objects hold what docs/eso-in-cluster.md and SECURITY.md promise (a locked-down
//! Deployment with only its own short-lived token, least-privilege RBAC that matches the
//! generators it serves, a NetworkPolicy, and ESO objects that point at the service and
//! at each other), and a real API server with ESO's CRDs accepts every one of them as
//! written.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every object `kubectl kustomize deploy/` prints.
fn rendered() -> Vec<Value> {
    rendered_at("deploy")
}

/// Every object `kubectl kustomize <dir>` prints (`dir` relative to the workspace).
fn rendered_at(dir: &str) -> Vec<Value> {
    testkit::eso::kustomize(&testkit::workspace_root().join(dir)).expect("kubectl kustomize")
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn kustomize_renders_the_service_and_the_eso_objects() {
    let objects = rendered();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "Namespace/cloudsmith-gen",
        "ServiceAccount/cloudsmith-gen",
        "Deployment/cloudsmith-gen",
        "Service/cloudsmith-gen",
        "PodDisruptionBudget/cloudsmith-gen",
        "NetworkPolicy/cloudsmith-gen",
        "ClusterRole/cloudsmith-gen-reviewer",
        "ClusterRoleBinding/cloudsmith-gen-reviewer",
        "ClusterRole/cloudsmith-gen-token-minter",
        "RoleBinding/cloudsmith-gen-token-minter",
        "ConfigMap/cloudsmith-gen-generators",
        "Webhook/cloudsmith-access-token",
        "Secret/eso-cloudsmith-caller-token",
        "ExternalSecret/cloudsmith-credentials",
    ] {
        assert!(kinds.contains(expected), "{expected} missing from {kinds:?}");
    }

    // The Deployment: non-root, read-only root, no automounted token, only the
    // projected one for the API server.
    let deployment = find(&objects, "Deployment", "cloudsmith-gen");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "cloudsmith-gen");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let volumes = pod["volumes"].as_array().unwrap();
    let tokens = volumes
        .iter()
        .flat_map(|v| v["projected"]["sources"].as_array().cloned().unwrap_or_default())
        .filter(|s| s.get("serviceAccountToken").is_some())
        .count();
    assert!(
        volumes
            .iter()
            .all(|v| v["secret"]["secretName"] != "cloudsmith-gen-token"),
        "no legacy token Secret"
    );
    assert_eq!(tokens, 1, "exactly one service account token is mounted");
    let args = strings(&container["args"]);
    assert_eq!(args[0], "serve");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let manifest_arg = args
        .iter()
        .find_map(|a| a.strip_prefix("--manifest="))
        .expect("--manifest");
    let generators_volume = volumes.iter().find(|v| v["name"] == "generators").unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "generators")
        .unwrap();
    let config_map = find(
        &objects,
        "ConfigMap",
        generators_volume["configMap"]["name"].as_str().unwrap(),
    );
    let key = manifest_arg
        .strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap()))
        .expect("--manifest is in the generators mount");
    let generators_text = config_map["data"][key].as_str().expect("the mounted key exists");

    // RBAC: create only, no wildcards, and token minting only for the accounts the
    // generators name.
    let generators: Vec<Value> = serde_saphyr::from_multiple(generators_text).unwrap();
    let accounts: BTreeSet<&str> = generators
        .iter()
        .map(|g| g["spec"]["serviceAccountRef"]["name"].as_str().unwrap())
        .collect();
    let minter = find(&objects, "ClusterRole", "cloudsmith-gen-token-minter");
    assert_eq!(minter["rules"].as_array().unwrap().len(), 1);
    let rule = &minter["rules"][0];
    assert_eq!(strings(&rule["resources"]), ["serviceaccounts/token"]);
    assert_eq!(strings(&rule["verbs"]), ["create"]);
    assert_eq!(
        strings(&rule["resourceNames"])
            .into_iter()
            .collect::<BTreeSet<_>>(),
        accounts
    );
    let reviewer = find(&objects, "ClusterRole", "cloudsmith-gen-reviewer");
    let mut granted = BTreeSet::new();
    for rule in reviewer["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["verbs"]), ["create"]);
        for r in strings(&rule["resources"]) {
            granted.insert(r);
        }
    }
    assert_eq!(granted, BTreeSet::from(["subjectaccessreviews", "tokenreviews"]));
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        assert!(!role.to_string().contains("\"*\""), "a wildcard in {role}");
    }
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "cloudsmith-gen", "namespace": "cloudsmith-gen"}])
        );
    }

    // NetworkPolicy: both directions restricted; egress to DNS and HTTPS only.
    let policy = find(&objects, "NetworkPolicy", "cloudsmith-gen");
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let mut ports = BTreeSet::new();
    for rule in policy["spec"]["egress"].as_array().unwrap() {
        for port in rule["ports"].as_array().unwrap() {
            ports.insert(port["port"].as_u64().unwrap());
        }
    }
    assert_eq!(ports, BTreeSet::from([53, 443, 6443]));

    // The Service and the PDB select the Deployment's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (kind, selector) in [
        (
            "Service",
            &find(&objects, "Service", "cloudsmith-gen")["spec"]["selector"],
        ),
        (
            "PodDisruptionBudget",
            &find(&objects, "PodDisruptionBudget", "cloudsmith-gen")["spec"]["selector"]["matchLabels"],
        ),
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{kind} selects the pods");
        }
    }

    // ESO: the Webhook calls the Service for its own namespace and a served generator,
    // with the caller Secret's token; the ExternalSecret uses the Webhook.
    let webhook = find(&objects, "Webhook", "cloudsmith-access-token");
    let namespace = webhook["metadata"]["namespace"].as_str().unwrap();
    let url = webhook["spec"]["url"].as_str().unwrap();
    let served: Vec<&str> = generators
        .iter()
        .map(|g| g["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        served.iter().any(|g| url
            == format!(
                "https://cloudsmith-gen.cloudsmith-gen.svc:8443/v1/namespaces/{namespace}/generators/{g}"
            )),
        "{url}"
    );
    assert_eq!(webhook["spec"]["method"], "POST");
    // What ESO's code accepts (the Secret's label, caProvider's namespace, the
    // statuses, the timeout) is proven by running these objects through testkit::eso
    // against the binary: serve.rs, eso_runs_the_deploy_objects.
    let secret = find(&objects, "Secret", "eso-cloudsmith-caller-token");
    assert_eq!(secret["metadata"]["namespace"], namespace);
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    let account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        .as_str()
        .unwrap();
    assert_eq!(
        find(&objects, "ServiceAccount", account)["metadata"]["namespace"],
        namespace
    );
    assert_eq!(
        webhook["spec"]["secrets"][0]["secretRef"]["name"],
        "eso-cloudsmith-caller-token"
    );
    let external = find(&objects, "ExternalSecret", "cloudsmith-credentials");
    assert_eq!(external["metadata"]["namespace"], namespace);
    let generator_ref = &external["spec"]["dataFrom"][0]["sourceRef"]["generatorRef"];
    assert_eq!(
        (generator_ref["kind"].as_str(), generator_ref["name"].as_str()),
        (Some("Webhook"), Some("cloudsmith-access-token"))
    );
    assert_eq!(
        external["spec"]["target"]["template"]["type"],
        "kubernetes.io/dockerconfigjson"
    );
    let minter_binding = find(&objects, "RoleBinding", "cloudsmith-gen-token-minter");
    assert_eq!(
        minter_binding["metadata"]["namespace"], namespace,
        "the namespace opts in to token minting"
    );
}

#[test]
fn the_kubelet_rbac_grants_nodes_the_configured_audience_and_the_daemonset_installs_its_paths() {
    let objects = rendered_at("deploy/kubelet");
    let config = std::fs::read_to_string(
        testkit::workspace_root().join("deploy/kubelet/credential-provider-config.yaml"),
    )
    .unwrap();
    let audience = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("serviceAccountTokenAudience:"))
        .map(str::trim)
        .expect("the config names an audience");
    // NodeRestriction's check: verb request-serviceaccounts-token-audience, apiGroup "",
    // the audience as the resource.
    let role = find(&objects, "ClusterRole", "cloudsmith-gen-kubelet-audience");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        strings(&rules[0]["verbs"]),
        ["request-serviceaccounts-token-audience"]
    );
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strings(&rules[0]["resources"]), [audience]);
    let binding = find(&objects, "ClusterRoleBinding", "cloudsmith-gen-kubelet-audience");
    assert_eq!(binding["roleRef"]["name"], "cloudsmith-gen-kubelet-audience");
    assert_eq!(binding["subjects"][0]["kind"], "Group");
    assert_eq!(binding["subjects"][0]["name"], "system:nodes");

    let ds = find(&objects, "DaemonSet", "cloudsmith-gen-kubelet-provider");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "amd64");
    assert_eq!(pod["tolerations"], serde_json::json!([{"operator": "Exists"}]));
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], "cloudsmith-gen:0.1.0");
    let args = strings(&init["args"]);
    assert_eq!(args[..2], ["install", "kubelet-credential-provider"]);
    // Each path the install writes is a hostPath mounted at the same place, and the
    // config the install writes names the manifest path the DaemonSet passes.
    let mounts: Vec<&str> = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["hostPath"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, host_paths);
    for flag in ["--bin-dir=", "--config=", "--manifest="] {
        let value = args
            .iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        let dir = if flag == "--bin-dir=" {
            value
        } else {
            value.rsplit_once('/').unwrap().0
        };
        assert!(mounts.contains(&dir), "{value} is not under a mount {mounts:?}");
        assert!(
            config.contains(value),
            "credential-provider-config.yaml does not name {value}"
        );
    }
}

/// `kubectl kustomize <dir>` as YAML text.
fn rendered_yaml(dir: &str) -> String {
    let out = std::process::Command::new(testkit::tools::kubectl())
        .arg("kustomize")
        .arg(testkit::workspace_root().join(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Where `sent` and `kept` differ: every field of `sent` must be in `kept` with the same
/// value (the server may add defaults and status, never drop or change what was sent).
fn changed(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (key, value) in sent {
                match kept.get(key) {
                    Some(k) => changed(value, k, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key} was dropped")),
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) if sent.len() == kept.len() => {
            for (i, (s, k)) in sent.iter().zip(kept).enumerate() {
                changed(s, k, &format!("{path}[{i}]"), out);
            }
        }
        _ if sent == kept => {}
        _ => out.push(format!("{path}: sent {sent}, kept {kept}")),
    }
}

/// Every object of `deploy/` (the service, its RBAC, `eso/`) and `deploy/kubelet/`,
/// applied as the README says (namespaces first, then `kubectl apply -k`) to a real
/// kube-apiserver that has ESO's CRDs: each is accepted by its schema with strict field
/// validation, and kept as written. Then the cluster does what the objects ask: the token
/// controller fills the caller's token Secret, and the RBAC, exactly as shipped, lets the
/// service account do what `serve` needs and nothing else.
#[test]
fn a_real_api_server_accepts_every_object_as_written() {
    use testkit::cluster::Cluster;
    let cluster = Cluster::shared();
    cluster.install_eso_crds();
    // README, "End to end in a cluster", step 3.
    for namespace in ["cloudsmith-gen", "apps"] {
        cluster.kubectl_ok(&["create", "namespace", namespace]);
    }
    for dir in ["deploy", "deploy/kubelet"] {
        cluster.apply(&rendered_yaml(dir));
        for object in rendered_at(dir) {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            let group = object["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map_or("", |(g, _)| g);
            let resource = if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            };
            let mut args = vec!["get", &resource, name, "-o", "json"];
            let namespace = object["metadata"]["namespace"].as_str();
            if let Some(ns) = namespace {
                args.extend(["-n", ns]);
            }
            let kept: Value = serde_json::from_str(&cluster.kubectl_ok(&args)).unwrap();
            let mut differences = Vec::new();
            changed(&object, &kept, &format!("{kind}/{name}"), &mut differences);
            assert!(differences.is_empty(), "{differences:#?}");
        }
    }

    // The token controller (kube-controller-manager) fills the caller's token Secret.
    let mut token = String::new();
    for _ in 0..300 {
        token = cluster.kubectl_ok(&[
            "get",
            "secret",
            "eso-cloudsmith-caller-token",
            "-n",
            "apps",
            "-o",
            "jsonpath={.data.token}",
        ]);
        if !token.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!token.is_empty(), "the caller's token Secret was never filled");

    // The RBAC as applied, asked of the API server's authorizer for the service account.
    let service = "system:serviceaccount:cloudsmith-gen:cloudsmith-gen";
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", service];
        all.extend_from_slice(args);
        let out = cluster.kubectl(&all);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("kubectl {all:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    };
    let token_for = |account: &str, namespace: &str| {
        can(&[
            "create",
            &format!("serviceaccounts/{account}"),
            "--subresource=token",
            "-n",
            namespace,
        ])
    };
    assert!(
        token_for("cloudsmith-oidc", "apps"),
        "serve mints for cloudsmith-oidc in apps"
    );
    assert!(
        !token_for("eso-cloudsmith-caller", "apps"),
        "only the accounts the generators name"
    );
    assert!(
        !token_for("cloudsmith-oidc", "default"),
        "only where a namespace opted in"
    );
    assert!(can(&["create", "tokenreviews.authentication.k8s.io"]));
    assert!(can(&["create", "subjectaccessreviews.authorization.k8s.io"]));
    for denied in [
        ["get", "secrets", "-n", "apps"],
        ["list", "serviceaccounts", "-n", "apps"],
        ["create", "pods", "-n", "cloudsmith-gen"],
    ] {
        assert!(!can(&denied), "{denied:?} is allowed");
    }
}
