//! Suite skopeo: the Docker credential helper with real clients.
//!
//! Debian's `docker-registry` (the CNCF distribution registry 2.8) runs on 127.0.0.1
//! with htpasswd auth: user `token`, password the access token the stand-in Cloudsmith
//! issues. The test pushes an image it builds itself (an OCI layout), then `skopeo
//! inspect` and `skopeo copy` succeed with an `--authfile` whose `credHelpers` points at
//! `cloudsmith` (a `docker-credential-cloudsmith` symlink on `PATH` to the lean helper,
//! with `cloudsmith-gen` beside it), and fail without
//! it. skopeo runs the helper with `host:port` on stdin, as docker does.
//!
//! htpasswd's bcrypt compares only a password's first 72 bytes, so the registry proves
//! the client sent a token starting like ours; the stand-in's request log proves the
//! helper minted it. The tools are installed by `scripts/test.sh`; a missing one fails
//! the test, never skips it.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testkit::cloudsmith::{access_token_for, StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::process::Output;
use testkit::registry::{Auth, Distribution, DistributionConfig};

// Short names keep the access token under htpasswd's 256-byte password limit.
const ORG: &str = "acme";
const SERVICE: &str = "puller";
const SUBJECT: &str = "system:serviceaccount:ci:builder";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a one-layer OCI image layout at `dir` (tag `1`) and returns the layer's digest.
fn oci_layout(dir: &Path, scratch: &Path) -> String {
    let rootfs = scratch.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(
        rootfs.join("hello.txt"),
        "pulled with a minted Cloudsmith token\n",
    )
    .unwrap();
    let layer_path = scratch.join("layer.tar");
    let tar = std::process::Command::new("tar")
        .args([
            "-cf",
            &layer_path.display().to_string(),
            "-C",
            &rootfs.display().to_string(),
            "hello.txt",
        ])
        .status()
        .expect("run tar");
    assert!(tar.success());
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer, layer_size) = put(&std::fs::read(&layer_path).unwrap());
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layer
}

async fn skopeo(args: &[String], env: &[(&str, String)], home: &Path) -> Output {
    let mut command = testkit::tools::skopeo_in(home);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLOUDSMITH_") {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    testkit::process::run(command, None, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("skopeo {args:?}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_with_the_credential_helper() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let exp = now.as_secs() + 7200;
    let cloudsmith = StandIn::start(StandInConfig {
        token_exp: exp,
        ..Default::default()
    })
    .await
    .expect("stand-in");
    let access_token = access_token_for(SUBJECT, ORG, SERVICE, exp);
    assert!(
        access_token.len() <= 256,
        "htpasswd takes at most 256 bytes: {}",
        access_token.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("run")).unwrap();
    let registry = Distribution::start(DistributionConfig {
        auth: Auth::htpasswd("token", &access_token),
        ..Default::default()
    })
    .await;
    let authority = registry.authority();

    // Push an image of our own, with the credentials given directly.
    let layout = dir.path().join("layout");
    let tar_digest = oci_layout(&layout, dir.path());
    let image = format!("docker://{authority}/acme/app:1");
    let push = skopeo(
        &[
            "copy".to_string(),
            "--dest-tls-verify=false".into(),
            "--dest-creds".into(),
            format!("token:{access_token}"),
            format!("oci:{}:1", layout.display()),
            image.clone(),
        ],
        &[],
        &home,
    )
    .await;
    assert!(push.success(), "push: {}", push.stderr);

    // The helper on PATH, configured the way the official CLI is, for this registry.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        testkit::tools::docker_credential_cloudsmith(),
        bin.join("docker-credential-cloudsmith"),
    )
    .unwrap();
    let oidc_file = dir.path().join("oidc-token");
    std::fs::write(&oidc_file, testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE])).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let env = vec![
        ("PATH", path),
        ("CLOUDSMITH_ORG", ORG.to_string()),
        ("CLOUDSMITH_SERVICE_SLUG", SERVICE.to_string()),
        ("CLOUDSMITH_API_HOST", cloudsmith.url()),
        ("CLOUDSMITH_OIDC_TOKEN_FILE", oidc_file.display().to_string()),
        ("CLOUDSMITH_REGISTRIES", authority.clone()),
    ];
    let with_helper = dir.path().join("auth-helper.json");
    std::fs::write(
        &with_helper,
        json!({"credHelpers": {&authority: "cloudsmith"}}).to_string(),
    )
    .unwrap();
    let without = dir.path().join("auth-empty.json");
    std::fs::write(&without, "{}").unwrap();

    let inspect = |authfile: &Path| {
        strings(&[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            &authfile.display().to_string(),
            &image,
        ])
    };
    let copy = |authfile: &Path, to: &Path| {
        strings(&[
            "copy",
            "--src-tls-verify=false",
            "--src-authfile",
            &authfile.display().to_string(),
            &image,
            &format!("oci:{}:1", to.display()),
        ])
    };

    let out = skopeo(&inspect(&with_helper), &env, &home).await;
    assert!(out.success(), "inspect with the helper: {}", out.stderr);
    let inspected: Value = out.stdout_json();
    // skopeo compressed the layer on push: one layer, a different digest than the tar's.
    let layers = inspected["Layers"].as_array().expect("Layers").clone();
    assert_eq!(layers.len(), 1, "{inspected}");
    let layer = layers[0].as_str().unwrap().to_string();
    assert_ne!(layer, tar_digest);
    let pulled = dir.path().join("pulled");
    let out = skopeo(&copy(&with_helper, &pulled), &env, &home).await;
    assert!(out.success(), "copy with the helper: {}", out.stderr);
    assert!(pulled
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"))
        .is_file());
    // The helper minted the token (the stand-in saw the exchanges; the cache may serve
    // the second call).
    assert!(!cloudsmith.requests_for(ORG).is_empty());

    // Without the helper entry: anonymous, refused.
    let out = skopeo(&inspect(&without), &env, &home).await;
    assert!(
        !out.success(),
        "inspect without the helper must fail: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("unauthorized") || out.stderr.contains("authentication required"),
        "{}",
        out.stderr
    );
    let out = skopeo(&copy(&without, &dir.path().join("refused")), &env, &home).await;
    assert!(!out.success(), "copy without the helper must fail");
    testkit::process::assert_no_secret(&[&out.stdout, &out.stderr], &[&access_token]);
    drop(registry);
}
