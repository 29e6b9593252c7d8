//! Suite oci: the component as a Wasm OCI artifact, with real registries and real
//! clients on the other end: Debian's `docker-registry` (distribution 2.8) over TLS with
//! htpasswd or token auth, `skopeo inspect --raw`, wasm-pkg-tools' `wkg`, and
//! `wasm-tools component wit` for the world the config must list.
//!
//! | test | what it proves |
//! |---|---|
//! | [`push_is_reproducible_and_real_clients_read_it`] | `component push` prints one digest; the same build pushed twice (and under another tag) has one digest, `SOURCE_DATE_EPOCH` changes it; skopeo shows the standard layout (media types, one layer, the annotations) and the config's imports and exports are those `wasm-tools component wit` shows; `wkg oci pull` gets the component byte for byte |
//! | [`every_door_runs_a_component_pinned_by_digest`] | `generate`, `kubelet-credential-provider` and the Docker helper (`CLOUDSMITH_GENERATOR_COMPONENT`) run `oci://…@sha256:…` and answer exactly as with the embedded generator; a tag is refused with the digest it names; with the registry gone, a second run needs no registry |
//! | [`what_wkg_pushes_our_host_runs`] | a component pushed by `wkg oci push` runs by digest and gives ESO's outputs |
//! | [`a_composed_component_by_digest_gives_esos_outputs`] | the generator composed with a plug by `wac`, pushed with `--component`, then run by digest: ESO's outputs, the plug's token, no token-source import in the config |
//! | [`the_token_flow_and_our_own_helper_serve_the_registry`] | a registry with token (Bearer) auth; a registry whose credentials come from `credHelpers: cloudsmith`, our own helper, which mints them with the embedded generator while the helper itself runs the component from that registry (no recursion) |
//!
//! Bad inputs (digest mismatch, not Wasm, over the bound, core module, 401, 404,
//! garbage, a registry that stops mid-blob) are in `tests/oci_faults.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::process::{assert_no_secret, Output};
use testkit::registry::{Auth, Distribution, DistributionConfig, TokenServer};

// Short names keep the access token under htpasswd's 256-byte password limit.
const ORG: &str = "acme";
const SERVICE: &str = "puller";
const SUBJECT: &str = "system:serviceaccount:ci:builder";
const USER: &str = "publisher";
const PASSWORD: &str = "registry-pass-7Qx";
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The generator component, as `cloudsmith-gen` embeds it (the same build).
fn generator() -> Vec<u8> {
    std::fs::read(testkit::artifacts::wasm("cloudsmith-access-token")).unwrap()
}

/// A Cloudsmith stand-in, a registry, and a home for the processes: Docker's config
/// (credentials for the registry), the registry's CA as `SSL_CERT_FILE`, a manifest and
/// an OIDC token file.
struct World {
    cloudsmith: StandIn,
    registry: Option<Distribution>,
    dir: tempfile::TempDir,
    exp: u64,
    oidc_token: String,
}

impl World {
    async fn new(auth: Auth, credentials: Option<(&str, &str)>) -> World {
        World::with_exp(now() + 6 * 3600, auth, credentials).await
    }

    /// A world whose access tokens expire at `exp`.
    async fn with_exp(exp: u64, auth: Auth, credentials: Option<(&str, &str)>) -> World {
        let cloudsmith = StandIn::start(StandInConfig {
            token_exp: exp,
            ..Default::default()
        })
        .await
        .expect("stand-in");
        let registry = Distribution::start(DistributionConfig {
            auth,
            tls: true,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let oidc_token = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
        let w = World {
            cloudsmith,
            registry: Some(registry),
            dir,
            exp,
            oidc_token,
        };
        std::fs::create_dir_all(w.path("docker")).unwrap();
        std::fs::write(w.path("oidc-token"), &w.oidc_token).unwrap();
        std::fs::write(w.path("ca.pem"), w.registry().ca().unwrap().ca_pem()).unwrap();
        let manifest = json!({"spec": {"apiUrl": w.cloudsmith.url(), "orgSlug": ORG, "serviceSlug": SERVICE,
            "serviceAccountRef": {"name": "default"}}});
        std::fs::write(w.path("generator.json"), manifest.to_string()).unwrap();
        let auths = match credentials {
            Some((user, password)) => {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                json!({"auths": {w.authority(): {"auth": auth}}})
            }
            None => json!({}),
        };
        w.docker_config(&auths);
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn registry(&self) -> &Distribution {
        self.registry.as_ref().expect("the registry runs")
    }

    fn authority(&self) -> String {
        self.registry().authority()
    }

    fn docker_config(&self, config: &Value) {
        std::fs::write(self.path("docker/config.json"), config.to_string()).unwrap();
    }

    /// The environment of every process: nothing of the developer's.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("HOME", self.path("home")),
            ("XDG_CACHE_HOME", self.path("cache")),
            ("DOCKER_CONFIG", self.path("docker")),
            ("SSL_CERT_FILE", self.path("ca.pem")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
    }

    /// The flags that let the generator reach the stand-in.
    fn generate_args(&self, component: &str) -> Vec<String> {
        let mut args = strings(&["generate", "--manifest"]);
        args.push(self.path("generator.json").display().to_string());
        args.extend(strings(&["--oidc-token-file"]));
        args.push(self.path("oidc-token").display().to_string());
        args.extend(strings(&[
            "--allow-host",
            &self.cloudsmith.authority(),
            "--allow-http",
        ]));
        args.extend(strings(&["--component", component]));
        args
    }

    /// ESO's outputs for our subject.
    fn expected(&self) -> Value {
        let access = access_token_for(SUBJECT, ORG, SERVICE, self.exp);
        json!({"auth": auth_for(&access), "expiry": self.exp.to_string()})
    }

    fn secrets(&self) -> Vec<String> {
        let access = access_token_for(SUBJECT, ORG, SERVICE, self.exp);
        vec![
            self.oidc_token.clone(),
            auth_for(&access),
            access,
            PASSWORD.to_string(),
        ]
    }

    /// A directory on PATH with `docker-credential-cloudsmith` (the lean helper, with
    /// `cloudsmith-gen` beside its target), and the helper's configuration for the
    /// stand-in, as the official CLI's variables give it.
    fn helper(&self) -> (PathBuf, Vec<(&'static str, String)>) {
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("docker-credential-cloudsmith");
        if !link.exists() {
            std::os::unix::fs::symlink(testkit::tools::docker_credential_cloudsmith(), &link).unwrap();
        }
        let env = vec![
            (
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()),
            ),
            ("CLOUDSMITH_ORG", ORG.to_string()),
            ("CLOUDSMITH_SERVICE_SLUG", SERVICE.to_string()),
            ("CLOUDSMITH_API_HOST", self.cloudsmith.url()),
            (
                "CLOUDSMITH_OIDC_TOKEN_FILE",
                self.path("oidc-token").display().to_string(),
            ),
        ];
        (link, env)
    }

    /// Pushes with `component push` and returns the digest it printed.
    async fn push(&self, reference: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
        let mut args = strings(&["component", "push", reference]);
        args.extend(strings(extra));
        let out = run(&testkit::tools::cloudsmith_gen(), &args, &self.env(), env, "").await;
        assert!(out.success(), "push {reference}: {}", out.stderr);
        let digest = out.stdout.trim_end().to_string();
        assert!(
            out.stdout.lines().count() == 1
                && digest.len() == 71
                && digest.starts_with("sha256:")
                && digest[7..].chars().all(|c| c.is_ascii_hexdigit()),
            "one line, the manifest digest: {:?}",
            out.stdout
        );
        assert_no_secret(&[&out.stdout, &out.stderr], &[PASSWORD]);
        digest
    }

    /// The Docker helper `helper` asked for docker.cloudsmith.io's credentials with
    /// `env` (from [`World::helper`]), which must succeed.
    async fn helper_get(&self, helper: &Path, env: &[(&str, String)]) -> Output {
        let out = run(
            helper,
            &strings(&["get"]),
            &self.env(),
            &pairs(env),
            "docker.cloudsmith.io",
        )
        .await;
        assert!(out.success(), "{}", out.stderr);
        out
    }

    async fn generate(&self, component: &str) -> Output {
        let out = run(
            &testkit::tools::cloudsmith_gen(),
            &self.generate_args(component),
            &self.env(),
            &[],
            "",
        )
        .await;
        let secrets = self.secrets();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_no_secret(&[&out.stderr], &secrets);
        out
    }
}

/// Borrowed pairs of owned variables, as [`run`] takes them.
fn pairs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `program` with the world's environment and `extra`, no CLOUDSMITH_* of ours.
async fn run(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    extra: &[(&str, &str)],
    stdin: &str,
) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLOUDSMITH_") || name.starts_with("DOCKER_") || name == "SOURCE_DATE_EPOCH" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.envs(extra.iter().copied());
    testkit::process::run(command, Some(stdin.as_bytes().to_vec()), RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{program:?} {args:?}: {e}"))
}

/// skopeo, trusting the registry's CA and logging in as the publisher.
async fn skopeo(w: &World, args: &[&str]) -> Output {
    let cert_dir = w.registry().cert_dir().unwrap().display().to_string();
    let mut all = vec![
        "inspect".to_string(),
        "--cert-dir".into(),
        cert_dir,
        "--creds".into(),
    ];
    all.push(format!("{USER}:{PASSWORD}"));
    all.extend(strings(args));
    run(&testkit::tools::skopeo(), &all, &w.env(), &[], "").await
}

/// The imports and exports of `wasm`'s world, as `wasm-tools component wit` prints them.
fn world_of(wasm: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = std::process::Command::new(testkit::tools::wasm_tools())
        .args(["component", "wit"])
        .arg(wasm)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut world = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines().map(str::trim) {
        let item = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|l| l.strip_suffix(';'))
                .map(str::to_string)
        };
        if let Some(import) = item("import ") {
            world.0.insert(import);
        } else if let Some(export) = item("export ") {
            world.1.insert(export);
        }
    }
    assert!(!world.0.is_empty() && !world.1.is_empty(), "no world in:\n{text}");
    world
}

fn set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_is_reproducible_and_real_clients_read_it() {
    let w = World::new(Auth::htpasswd(USER, PASSWORD), Some((USER, PASSWORD))).await;
    let generator = generator();
    let repo = format!("{}/plugins/cloudsmith-gen", w.authority());
    let digest = w.push(&format!("{repo}:1.0"), &[], &[]).await;
    assert_eq!(
        w.push(&format!("{repo}:1.0"), &[], &[]).await,
        digest,
        "one build, one digest"
    );
    assert_eq!(
        w.push(&format!("{repo}:stable"), &[], &[]).await,
        digest,
        "another tag is the same artifact"
    );
    let dated = w
        .push(
            &format!("{repo}:dated"),
            &[],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        )
        .await;
    assert_ne!(dated, digest, "created is part of the digest");

    // The layout, as skopeo reads it.
    let out = skopeo(&w, &["--raw", &format!("docker://{repo}@{digest}")]).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        sha256(out.stdout.as_bytes()),
        digest,
        "the manifest skopeo got is the pinned one"
    );
    let manifest = out.stdout_json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(layers[0]["digest"], json!(sha256(&generator)));
    assert_eq!(layers[0]["size"], json!(generator.len()));
    let annotations = &manifest["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.title"],
        "cloudsmith-access-token"
    );
    assert_eq!(
        annotations["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(annotations["org.opencontainers.image.licenses"], "Apache-2.0");
    let revision = annotations["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{annotations}"
    );
    let out = skopeo(&w, &["--raw", "--config", &format!("docker://{repo}@{digest}")]).await;
    assert!(out.success(), "{}", out.stderr);
    let config = out.stdout_json();
    assert_eq!(
        (&config["architecture"], &config["os"]),
        (&json!("wasm"), &json!("wasip2"))
    );
    assert_eq!(config["layerDigests"], json!([sha256(&generator)]));
    assert_eq!(config["created"], annotations["org.opencontainers.image.created"]);
    let (imports, exports) = world_of(&testkit::artifacts::wasm("cloudsmith-access-token"));
    assert_eq!(set(&config["component"]["imports"]), imports);
    assert_eq!(set(&config["component"]["exports"]), exports);
    let out = skopeo(&w, &["--raw", "--config", &format!("docker://{repo}@{dated}")]).await;
    assert_eq!(out.stdout_json()["created"], "2023-11-14T22:13:20Z");

    // wkg, with Docker's config for the credentials and SSL_CERT_FILE for the CA.
    let pulled = w.path("pulled.wasm");
    let wkg = run(
        &testkit::tools::wkg(),
        &strings(&[
            "oci",
            "pull",
            &format!("{repo}@{digest}"),
            "-o",
            pulled.to_str().unwrap(),
        ]),
        &w.env(),
        &[],
        "",
    )
    .await;
    assert!(wkg.success(), "wkg oci pull: {}", wkg.stderr);
    assert!(
        std::fs::read(&pulled).unwrap() == generator,
        "wkg got the component byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_door_runs_a_component_pinned_by_digest() {
    let mut w = World::new(Auth::htpasswd(USER, PASSWORD), Some((USER, PASSWORD))).await;
    let repo = format!("{}/plugins/cloudsmith-gen", w.authority());
    let digest = w.push(&format!("{repo}:1.0"), &[], &[]).await;
    let pinned = format!("oci://{repo}@{digest}");

    // generate: ESO's outputs, fetched and verified on the first run.
    let mut args = w.generate_args(&pinned);
    args.push("-v".into());
    let out = run(&testkit::tools::cloudsmith_gen(), &args, &w.env(), &[], "").await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout_json(), w.expected());
    assert!(out.stderr.contains("fetched and verified"), "{}", out.stderr);
    assert_no_secret(&[&out.stdout, &out.stderr], &[PASSWORD]);
    // The store holds the manifest and the component under their digests.
    let store = w.path("cache/cloudsmith-gen/oci");
    let entry = store.join("manifests/sha256").join(&digest[7..]);
    assert_eq!(sha256(&std::fs::read(&entry).unwrap()), digest);

    // A tag alone is refused, naming the digest to pin.
    let out = w.generate(&format!("oci://{repo}:1.0")).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("{repo}@{digest}")), "{}", out.stderr);

    // The kubelet provider, with the pod's token in the request.
    let request = json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": "docker.cloudsmith.io/acme/prod/app:1.0",
        "serviceAccountToken": w.oidc_token,
    });
    let mut args = strings(&["kubelet-credential-provider", "--manifest"]);
    args.push(w.path("generator.json").display().to_string());
    args.extend(strings(&[
        "--no-token-cache",
        "--allow-host",
        &w.cloudsmith.authority(),
        "--allow-http",
        "--component",
        &pinned,
    ]));
    let out = run(
        &testkit::tools::cloudsmith_gen(),
        &args,
        &w.env(),
        &[],
        &request.to_string(),
    )
    .await;
    assert!(out.success(), "{}", out.stderr);
    let access = access_token_for(SUBJECT, ORG, SERVICE, w.exp);
    assert_eq!(
        out.stdout_json()["auth"]["docker.cloudsmith.io"],
        json!({"username": "token", "password": access})
    );

    // The Docker helper takes no flags: CLOUDSMITH_GENERATOR_COMPONENT.
    let (helper, mut helper_env) = w.helper();
    helper_env.push(("CLOUDSMITH_GENERATOR_COMPONENT", pinned.clone()));
    let out = w.helper_get(&helper, &helper_env).await;
    assert_eq!(
        out.stdout_json(),
        json!({"ServerURL": "docker.cloudsmith.io", "Username": "token", "Secret": access})
    );

    // The registry gone: the store serves the component, no registry needed.
    w.registry = None;
    let out = w.generate(&pinned).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout_json(), w.expected());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_wkg_pushes_our_host_runs() {
    let w = World::new(Auth::htpasswd(USER, PASSWORD), Some((USER, PASSWORD))).await;
    let reference = format!("{}/plugins/by-wkg:1.0", w.authority());
    let file = testkit::artifacts::wasm("cloudsmith-access-token");
    let out = run(
        &testkit::tools::wkg(),
        &strings(&["oci", "push", &reference, file.to_str().unwrap()]),
        &w.env(),
        &[],
        "",
    )
    .await;
    assert!(out.success(), "wkg oci push: {}", out.stderr);
    // The digest wkg pushed, as the registry serves it.
    let raw = skopeo(&w, &["--raw", &format!("docker://{reference}")]).await;
    assert!(raw.success(), "{}", raw.stderr);
    let digest = sha256(raw.stdout.as_bytes());
    let out = w
        .generate(&format!("oci://{}/plugins/by-wkg@{digest}", w.authority()))
        .await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout_json(), w.expected());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_composed_component_by_digest_gives_esos_outputs() {
    let w = World::new(Auth::htpasswd(USER, PASSWORD), Some((USER, PASSWORD))).await;
    // `wasm-tools compose -d` and wac name the plug's instance after the file.
    let plug = w.path("env-token-source.wasm");
    std::fs::copy(testkit::artifacts::wasm("env-token-source"), &plug).unwrap();
    let composed = w.path("composed.wasm");
    let out = std::process::Command::new(testkit::tools::wac())
        .arg("plug")
        .arg("--plug")
        .arg(&plug)
        .arg(testkit::artifacts::wasm("cloudsmith-access-token"))
        .arg("-o")
        .arg(&composed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wac plug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repo = format!("{}/plugins/composed", w.authority());
    let digest = w
        .push(
            &format!("{repo}:1.0"),
            &["--component", composed.to_str().unwrap()],
            &[],
        )
        .await;

    let out = skopeo(&w, &["--raw", "--config", &format!("docker://{repo}@{digest}")]).await;
    assert!(out.success(), "{}", out.stderr);
    let config = out.stdout_json();
    let (imports, exports) = world_of(&composed);
    assert_eq!(set(&config["component"]["imports"]), imports);
    assert_eq!(set(&config["component"]["exports"]), exports);
    assert!(
        !imports.iter().any(|i| i.contains("token-source")),
        "the plug satisfies token-source: {imports:?}"
    );

    // The plug reads the token from a variable the host grants it; the host's own token
    // flag is not given.
    let mut args = strings(&["generate", "--manifest"]);
    args.push(w.path("generator.json").display().to_string());
    args.extend(strings(&[
        "--allow-host",
        &w.cloudsmith.authority(),
        "--allow-http",
        "--component",
        &format!("oci://{repo}@{digest}"),
        "--wasi-env",
        &format!("OIDC_TOKEN={}", w.oidc_token),
    ]));
    let out = run(&testkit::tools::cloudsmith_gen(), &args, &w.env(), &[], "").await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout_json(), w.expected());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_flow_and_our_own_helper_serve_the_registry() {
    // Token (Bearer) auth: the registry sends clients to a token service that checks
    // the publisher's password.
    let tokens = TokenServer::start(USER, PASSWORD).await.expect("token server");
    let w = World::new(tokens.auth("testkit-registry"), Some((USER, PASSWORD))).await;
    let repo = format!("{}/plugins/cloudsmith-gen", w.authority());
    let digest = w.push(&format!("{repo}:1.0"), &[], &[]).await;
    let out = w.generate(&format!("oci://{repo}@{digest}")).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout_json(), w.expected());
    assert!(
        tokens.tokens_issued() >= 2,
        "push and pull went through the token service"
    );

    // Our own helper for a registry whose password is a Cloudsmith access token, as
    // Cloudsmith's own registry takes it: `credHelpers: {REGISTRY: "cloudsmith"}`.
    let exp = now() + 6 * 3600;
    let access = access_token_for(SUBJECT, ORG, SERVICE, exp);
    let w = World::with_exp(exp, Auth::htpasswd("token", &access), None).await;
    let authority = w.authority();
    w.docker_config(&json!({"credHelpers": {&authority: "cloudsmith"}}));
    let repo = format!("{}/plugins/cloudsmith-gen", w.authority());
    let (helper, mut helper_env) = w.helper();
    helper_env.push(("CLOUDSMITH_REGISTRIES", authority.clone()));
    let digest = w.push(&format!("{repo}:1.0"), &[], &pairs(&helper_env)).await;
    let pinned = format!("oci://{repo}@{digest}");
    // The helper runs the component from that very registry: to fetch it, it asks
    // itself for the registry's credentials, and that inner helper mints with the
    // embedded generator. A recursion would never end (RUN_TIMEOUT would fail it).
    helper_env.push(("CLOUDSMITH_GENERATOR_COMPONENT", pinned));
    let out = w.helper_get(&helper, &helper_env).await;
    assert_eq!(out.stdout_json()["Secret"], json!(access));
    assert_no_secret(&[&out.stderr], &[&access, &w.oidc_token]);
}
