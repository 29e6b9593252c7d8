//! The container image (scripts/image.sh) as deploy/ runs it: loaded into podman, a
//! read-only root, every capability dropped, user 65532, against a real API server
//! (`testkit::cluster`) and the stand-in Cloudsmith on loopback (`--network host`),
//! Cloudsmith reached by a host name (`--add-host`), so the static binary's resolver is
//! exercised without libc or NSS in the image.
//!
//! The static binary is built once by scripts/test.sh and passed as
//! `CLOUDSMITH_GEN_STATIC`; every test here packages and runs that one file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use testkit::cloudsmith::{self, access_token_for, auth_for};
use testkit::process::Listening;

const STATIC_ENV: &str = "CLOUDSMITH_GEN_STATIC";
const NAME: &str = "localhost/cloudsmith-gen:test";
const CLOUDSMITH_HOST: &str = "cloudsmith.test";

/// The static binary scripts/test.sh built.
fn static_binary() -> PathBuf {
    let path = std::env::var_os(STATIC_ENV).unwrap_or_else(|| {
        panic!("{STATIC_ENV} is not set: run `bash scripts/test.sh`, which builds the static binary")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{STATIC_ENV}={} is not a file", path.display());
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// scripts/image.sh on the static binary into `dir`; the digest it printed.
fn package(dir: &Path) -> String {
    let out = run(Command::new("bash")
        .arg(testkit::workspace_root().join("scripts/image.sh"))
        .arg("--binary")
        .arg(static_binary())
        .arg(dir));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one stdout line: {stdout}");
    assert!(
        lines[0].starts_with("sha256:") && lines[0].len() == 71,
        "{stdout}"
    );
    lines[0].to_string()
}

/// The image, built once per test process and loaded into a private podman store.
struct Image {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    digest: String,
    store: PathBuf,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = dir.path().join("layout");
        let digest = package(&layout);
        let store = dir.path().join("store");
        let version = env!("CARGO_PKG_VERSION");
        run(Command::new("skopeo")
            .arg("copy")
            .arg("-q")
            .arg(format!("oci:{}:{version}", layout.display()))
            .arg(format!(
                "containers-storage:[vfs@{}+{}]{NAME}",
                store.join("root").display(),
                store.join("run").display()
            )));
        Image {
            _dir: dir,
            layout,
            digest,
            store,
        }
    })
}

/// `podman run` of the image as deploy/serve/deployment.yaml runs it, with `mounts`
/// (host dir, container dir; read-only) and the image's entrypoint given `args`.
fn podman(mounts: &[(&Path, &str)], args: &[String]) -> Command {
    let mounts: Vec<(&Path, &str, &str)> = mounts.iter().map(|(h, c)| (*h, *c, "ro")).collect();
    podman_as("65532:65532", &mounts, args)
}

/// `podman run` as `user`, with `mounts` (host dir, container dir, `ro` or `rw`); the
/// same read-only root, dropped capabilities and host network as [`podman`].
fn podman_as(user: &str, mounts: &[(&Path, &str, &str)], args: &[String]) -> Command {
    let store = &image().store;
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .args([
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .args([
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--user",
            user,
        ])
        .args(["--security-opt", "no-new-privileges"])
        .arg(format!("--add-host={CLOUDSMITH_HOST}:127.0.0.1"));
    for (host, container, mode) in mounts {
        cmd.arg("-v")
            .arg(format!("{}:{container}:{mode}", host.display()));
    }
    cmd.arg(NAME).args(args);
    cmd
}

/// A directory the container's user (65532) can read: tempfile's are 0700 root.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    set_mode(dir.path(), 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn one_binary_packaged_twice_gives_one_digest() {
    let again = tempfile::tempdir().expect("temp dir");
    let digest = package(&again.path().join("layout"));
    assert_eq!(digest, image().digest);
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(image().layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], image().digest.as_str());
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn the_image_holds_no_stand_in_and_no_test_key() {
    let bytes = std::fs::read(static_binary()).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for marker in [
        // testkit::oidc's signing key, and doors/demo/'s strings: the image has no demo.
        &b"testkit service account issuer key"[..],
        b"trusted only by the demo Cloudsmith",
        b"starting the demo Cloudsmith",
    ] {
        assert!(
            !contains(marker),
            "the image's binary holds {:?}",
            String::from_utf8_lossy(marker)
        );
    }
    let out = run(&mut podman(&[], &["--help".into()]));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("serve"), "{help}");
    assert!(!help.contains("demo"), "{help}");
}

/// `serve` in the container: /healthz, then ESO's call for the deploy/ generator, with
/// Cloudsmith reached as http://cloudsmith.test:PORT.
#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_eso_by_host_name() {
    // A real API server on the host's loopback, which the container shares: serve as
    // deploy/'s service account, a namespace opted in, a caller's token from it.
    let cluster = testkit::cluster::Cluster::shared();
    let ns = cluster.namespace("image");
    cluster.opt_in(&ns, true);
    let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig::trusting(
        cluster,
        &format!("system:serviceaccount:{ns}:cloudsmith-oidc"),
    ))
    .await
    .expect("Cloudsmith stand-in");
    let port = cloudsmith
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let by_name = format!("http://{CLOUDSMITH_HOST}:{port}");

    let dir = shared_dir();
    let generators = std::fs::read_to_string(testkit::workspace_root().join("deploy/serve/generators.yaml"))
        .unwrap()
        .replace(
            "apiUrl: \"https://api.cloudsmith.io\"",
            &format!("apiUrl: \"{by_name}\""),
        );
    assert!(
        generators.contains(&by_name),
        "deploy/serve/generators.yaml changed shape"
    );
    std::fs::write(dir.path().join("generators.yaml"), generators).unwrap();
    let kubeconfig = dir.path().join("cloudsmith-gen.kubeconfig");
    std::fs::copy(cluster.deployed_service(), &kubeconfig).expect("the service's kubeconfig");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        set_mode(&entry.unwrap().path(), 0o644);
    }
    let kubeconfig_name = kubeconfig.file_name().unwrap().to_string_lossy();
    let args: Vec<String> = [
        "serve",
        "--listen=127.0.0.1:0",
        &format!("--kubeconfig=/etc/cloudsmith-gen/{kubeconfig_name}"),
        // Plain http to the stand-in's name, which is no loopback name.
        &format!("--allow-http={CLOUDSMITH_HOST}:{port}"),
        "--manifest=/etc/cloudsmith-gen/generators.yaml",
        "--cache-dir=/tmp/cache",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // SIGTERM to podman is forwarded to the container (--sig-proxy); a SIGKILL would
    // leave the container running.
    let mut container = Listening::try_start(
        podman(&[(dir.path(), "/etc/cloudsmith-gen")], &args),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("serve did not start in the container: {e}"))
    .terminate_on_drop();

    let health = http(container.addr(), "GET", "/healthz", None).await;
    assert_eq!(health.0, 200, "{}", health.1);

    let caller = cluster.token(&ns, "default", &[]);
    let (status, body) = http(
        container.addr(),
        "POST",
        &format!("/v1/namespaces/{ns}/generators/cloudsmith-access-token"),
        Some(&caller),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["auth", "expiry"], "{body}");
    let token = access_token_for(
        &format!("system:serviceaccount:{ns}:cloudsmith-oidc"),
        "my-organization",
        "my-oidc-service",
        1_700_000_000,
    );
    assert_eq!(v["auth"], auth_for(&token));
    container.stop("TERM");
}

/// deploy/kubelet/daemonset.yaml's install step, run in the image as the DaemonSet runs
/// it (user 0, no capabilities, read-only root, the node's directories mounted at their
/// own paths), with temporary directories standing for the node. The binary it installs
/// answers a kubelet request, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_install_step_installs_a_provider_that_answers() {
    let daemonset: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(testkit::workspace_root().join("deploy/kubelet/daemonset.yaml")).unwrap(),
    )
    .expect("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    let install = &pod["initContainers"][0];
    let args: Vec<String> = install["args"]
        .as_array()
        .expect("the install step's args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[..2], ["install", "kubelet-credential-provider"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("the install step has no --{name}=: {args:?}"))
            .to_string()
    };
    let (bin_dir, config, manifest) = (flag("bin-dir"), flag("config"), flag("manifest"));
    let user = format!(
        "{}:{}",
        pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    );
    assert_eq!(user, "0:0", "the node's directories are root's");

    // The node: every mounted path of the DaemonSet, as a temporary directory.
    let node = tempfile::tempdir().expect("temp dir");
    let mounts: Vec<(PathBuf, String)> = install["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let path = m["mountPath"].as_str().unwrap().to_string();
            let host = node.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&host).unwrap();
            (host, path)
        })
        .collect();
    let on_node = |container: &str| -> PathBuf {
        let (host, path) = mounts
            .iter()
            .find(|(_, p)| Path::new(container).starts_with(p))
            .unwrap_or_else(|| panic!("{container} is on no mounted volume"));
        host.join(Path::new(container).strip_prefix(path).unwrap())
    };
    let rw: Vec<(&Path, &str, &str)> = mounts
        .iter()
        .map(|(h, c)| (h.as_path(), c.as_str(), "rw"))
        .collect();
    let installed = format!("{bin_dir}/cloudsmith-gen");
    let expected = |verb: &str, manifest_verb: &str| {
        vec![
            format!("{verb} {installed}"),
            format!("{verb} {config}"),
            format!("{manifest_verb} {manifest}"),
        ]
    };

    let first = run(&mut podman_as(&user, &rw, &args));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).lines().collect::<Vec<_>>(),
        expected("installed", "installed"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let installed_on_node = on_node(&installed);
    assert_eq!(
        std::fs::read(&installed_on_node).unwrap(),
        std::fs::read(static_binary()).unwrap(),
        "the installed binary is the image's"
    );
    let config_text = std::fs::read_to_string(on_node(&config)).unwrap();
    assert!(
        config_text.contains(&format!("- {manifest}")),
        "the config names the node's manifest path: {config_text}"
    );

    // The installed binary, for a kubelet request, against the stand-in Cloudsmith (the
    // shipped manifest names api.cloudsmith.io: the node's operator points it here).
    let cloudsmith = cloudsmith::StandIn::start(cloudsmith::StandInConfig::default())
        .await
        .expect("Cloudsmith stand-in");
    let url = cloudsmith.url().trim_end_matches('/').to_string();
    let authority = url.trim_start_matches("http://").to_string();
    let scratch = tempfile::tempdir().expect("temp dir");
    let local_manifest = scratch.path().join("generator.yaml");
    let shipped = std::fs::read_to_string(on_node(&manifest)).unwrap();
    std::fs::write(
        &local_manifest,
        shipped.replace("spec:\n", &format!("spec:\n  apiUrl: \"{url}\"\n")),
    )
    .unwrap();
    let subject = "system:serviceaccount:apps:default";
    let sa_token = testkit::oidc::token(subject, &["https://api.cloudsmith.io"]);
    let request = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": "docker.cloudsmith.io/my-organization/prod/app",
        "serviceAccountToken": sa_token,
    })
    .to_string();
    let mut provider = tokio::process::Command::new(&installed_on_node)
        .arg("kubelet-credential-provider")
        .arg("--manifest")
        .arg(&local_manifest)
        .arg("--no-token-cache")
        .arg("--cache-dir")
        .arg(scratch.path().join("cache"))
        .args(["--allow-host", &authority, "--allow-http"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the installed provider runs");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = provider.stdin.take().unwrap();
        stdin.write_all(request.as_bytes()).await.unwrap();
    }
    let answer = provider.wait_with_output().await.unwrap();
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let response: Value = serde_json::from_slice(&answer.stdout).expect("a CredentialProviderResponse");
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert_eq!(
        response["auth"]["docker.cloudsmith.io"]["password"],
        access_token_for(subject, "my-organization", "my-oidc-service", 1_700_000_000)
    );

    // Again: nothing changes on the node, and it says so.
    let snapshot = || -> Vec<(PathBuf, std::time::SystemTime, Vec<u8>)> {
        let mut files = Vec::new();
        for (host, _) in &mounts {
            for entry in std::fs::read_dir(host).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::metadata(&path).unwrap();
                files.push((
                    path.clone(),
                    meta.modified().unwrap(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
        files.sort();
        files
    };
    let before = snapshot();
    let second = run(&mut podman_as(&user, &rw, &args));
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .lines()
            .collect::<Vec<_>>(),
        expected("unchanged", "unchanged"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(snapshot(), before, "a second run changed the node");
}

/// One plain-HTTP request; (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let auth = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) = testkit::client::request(addr, method, path, &headers, b"").await;
    (status, body)
}
