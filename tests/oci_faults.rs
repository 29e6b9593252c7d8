//! Suite oci_faults: `cloudsmith-gen generate --component oci://REGISTRY/REPOSITORY@DIGEST`
//! as a process, against registries that serve what they must not.
//!
//! Registries are Debian's real `docker-registry` ([`Distribution`], TLS) and testkit's
//! [`FaultyRegistry`] (TLS), a stand-in of distribution 2.8's pull API that fails on
//! demand and logs every request. Each run trusts the registry's CA through
//! `SSL_CERT_FILE`, reads registry credentials from `$DOCKER_CONFIG/config.json` (a
//! scratch one: never the developer's), has HOME and XDG_CACHE_HOME in a scratch
//! directory, and keeps its component store in a cache dir of its own (`--cache-dir`).
//!
//! A refused component means: exit 10 (2 for a usage error), exactly one `error:` line
//! naming the problem, nothing on stdout, no secret (registry password, OIDC token,
//! access token) in either stream, and no entry nor temporary file under
//! `<cache-dir>/oci/manifests` or `<cache-dir>/oci/blobs` (empty lock files and empty
//! directories may stay).
//!
//! | test                                              | what it proves                                                        |
//! |---------------------------------------------------|-----------------------------------------------------------------------|
//! | [`each_registry_fault_is_refused`]                | a table of the stand-in's faults, each refused with exit 10 within 15 s, with the layer GETs the row names (none after a bad manifest, one otherwise): a manifest whose bytes do not hash to the pinned digest (`Fault::WrongManifestBytes`), the line naming the manifest and the digest served; a layer whose bytes do not hash to its digest (`Fault::WrongBlobBytes`), naming both digests; an HTML page for the manifest (`Fault::Garbage`), saying the registry served no manifest but `text/html`, and not that it served another manifest; a manifest answered chunked and without end (`Fault::HugeManifest`, 1 GiB), refused at `MAX_MANIFEST_BYTES`; the layer's connection closed half-way (`Fault::CutBlob`), naming how far it got; the layer stalling half-way (`Fault::StallBlob`) under `--timeout 3`, saying it gave up waiting; a manifest declaring a layer of `MAX_COMPONENT_BYTES + 1`, refused naming the bound before any GET of the layer |
//! | [`a_container_image_is_not_a_component`]          | a real registry serving a container image pinned by digest: refused as a container image |
//! | [`a_core_module_pushed_by_wkg_is_not_a_component`] | a core module pushed by the real `wkg` (a Wasm artifact in every media type): refused as a core module |
//! | [`a_registry_that_answers_401`]                   | a real htpasswd registry, with no credentials and with wrong ones (which the registry saw): refused as 401, and wrong ones are not answered with "give credentials"; the right ones fetch it and the store keeps it (the control) |
//! | [`a_digest_the_registry_does_not_have`]           | a real registry, an unknown digest and an unknown repository: not found |
//! | [`a_tag_is_refused_naming_its_digest`]            | `oci://REG/REPO:1.0` on a real registry: exit 2, naming `oci://REG/REPO@<the tag's digest>` |
//! | [`malformed_references_are_usage_errors`]         | malformed `oci://` references: exit 2, one line, no request to the registry named |
//! | [`a_burst_fetches_once_then_the_store_serves_offline`] | 8 concurrent first runs on an empty cache dir (TLS stand-in, the real generator): 8 exact ESO outputs, one GET of the layer, the store holding exactly the manifest and the layer as served; a 9th run with the registry stopped succeeds from the store |

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::process::{find_secret, Output};
use testkit::registry::{
    digest_of, Artifact, Auth, Content, Distribution, DistributionConfig, Fault, FaultyRegistry, WasmArtifact,
};
use testkit::tls::TestCa;

/// What the documented manifest names.
const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
const SUBJECT: &str = "system:serviceaccount:apps:puller";
/// The stand-in's default token expiry (ESO's test vector).
const EXP: u64 = 1_700_000_000;
/// Where the artifacts live in every registry.
const REPO: &str = "acme/plugins/generator";
/// The htpasswd registry's user and password (distinctive, so a leak is found).
const USER: &str = "puller";
const PASSWORD: &str = "registry-pass-4c1e9b7f2a";
const WRONG_PASSWORD: &str = "wrong-pass-8d3f6a0c5e";
/// The bound of one process run (the stalled one must end far sooner).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The stand-in Cloudsmith, a scratch directory (HOME, caches, configs), the OIDC token
/// file and the documented manifest pointing at the stand-in.
struct World {
    cloudsmith: StandIn,
    dir: tempfile::TempDir,
    oidc_token: String,
    token_file: PathBuf,
    manifest: PathBuf,
    /// Runs that succeeded: each made one exchange with the stand-in.
    generated: AtomicUsize,
}

/// How one run reaches its registry: the CA it trusts and its Docker config directory.
#[derive(Debug, Clone)]
struct Access {
    /// `SSL_CERT_FILE`.
    ca_file: PathBuf,
    /// `DOCKER_CONFIG`: a directory holding `config.json`.
    docker_config: PathBuf,
}

impl World {
    async fn new() -> World {
        let cloudsmith = StandIn::start(StandInConfig::default()).await.expect("stand-in");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let oidc_token = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
        let token_file = dir.path().join("oidc-token");
        std::fs::write(&token_file, &oidc_token).unwrap();
        let manifest = dir.path().join("generator.yaml");
        std::fs::write(
            &manifest,
            // apiUrl, the field ESO's CRD has: generate is then silent on stderr.
            testkit::cloudsmith::documented_manifest(&cloudsmith.url()).replace("  apiHost:", "  apiUrl:"),
        )
        .unwrap();
        World {
            cloudsmith,
            dir,
            oidc_token,
            token_file,
            manifest,
            generated: AtomicUsize::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// A fresh, empty cache dir for one case.
    fn cache(&self, name: &str) -> PathBuf {
        let dir = self.path(&format!("cache-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Trust `ca`, and log in to registries with `auths` (authority, user, password).
    fn access(&self, name: &str, ca: &TestCa, auths: &[(&str, &str, &str)]) -> Access {
        let ca_file = self.path(&format!("ca-{name}.pem"));
        std::fs::write(&ca_file, ca.ca_pem()).unwrap();
        let docker_config = self.path(&format!("docker-{name}"));
        std::fs::create_dir_all(&docker_config).unwrap();
        let auths: serde_json::Map<String, Value> = auths
            .iter()
            .map(|(authority, user, password)| {
                (authority.to_string(), json!({"auth": basic(user, password)}))
            })
            .collect();
        std::fs::write(
            docker_config.join("config.json"),
            json!({"auths": auths}).to_string(),
        )
        .unwrap();
        Access {
            ca_file,
            docker_config,
        }
    }

    fn access_token(&self) -> String {
        access_token_for(SUBJECT, ORG, SERVICE, EXP)
    }

    /// ESO's outputs for the stand-in's token.
    fn expected(&self) -> Value {
        json!({"auth": auth_for(&self.access_token()), "expiry": EXP.to_string()})
    }

    /// What no output may hold: the registry passwords (and their Basic encodings), the
    /// OIDC token, the access token (and ESO's `auth`, which only stdout may hold).
    fn secrets(&self) -> Vec<String> {
        vec![
            PASSWORD.into(),
            WRONG_PASSWORD.into(),
            basic(USER, PASSWORD),
            basic(USER, WRONG_PASSWORD),
            self.oidc_token.clone(),
            self.access_token(),
            auth_for(&self.access_token()),
        ]
    }

    /// `generate` with `component`, its store in `cache`, plus `extra` flags.
    fn args(&self, component: &str, cache: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "generate".into(),
            "--manifest".into(),
            self.manifest.display().to_string(),
            "--oidc-token-file".into(),
            self.token_file.display().to_string(),
            "--allow-host".into(),
            self.cloudsmith.authority(),
            "--allow-http".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
            "--component".into(),
            component.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn generate(&self, component: &str, cache: &Path, access: &Access, extra: &[&str]) -> Output {
        run(
            &testkit::tools::cloudsmith_gen(),
            &self.args(component, cache, extra),
            &access.env(),
            &self.home(),
        )
        .await
    }

    /// A run that must succeed: exit 0, ESO's exact outputs, nothing on stderr, no
    /// secret but the `auth` output itself.
    fn assert_generated(&self, out: &Output, what: &str) {
        assert!(
            out.success(),
            "{what}: exit {:?}, stderr {}",
            out.code,
            out.stderr
        );
        assert_eq!(out.stdout_json(), self.expected(), "{what}");
        assert!(out.stderr.is_empty(), "{what}: stderr {}", out.stderr);
        let secrets = self.secrets();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let auth = auth_for(&self.access_token());
        let stdout = out.stdout.replace(&auth, "");
        assert_eq!(find_secret(&[&stdout, &out.stderr], &secrets), None, "{what}");
        self.generated.fetch_add(1, Ordering::SeqCst);
    }

    /// A refusal: exit `code`, one `error:` line holding every needle, empty stdout, no
    /// secret, and nothing kept in the component store under `cache`.
    /// The wording is checked last, so a refusal that only words its cause badly has
    /// already shown that everything else holds.
    fn assert_refused(&self, out: &Output, code: i32, needles: &[&str], cache: &Path, what: &str) {
        assert_eq!(out.code, Some(code), "{what}: stderr {}", out.stderr);
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{what}: one stderr line: {}", out.stderr);
        assert!(lines[0].starts_with("error: "), "{what}: {}", lines[0]);
        // Shown with --nocapture: what each refusal says.
        eprintln!("{what}: {}", lines[0]);
        assert!(out.stdout.is_empty(), "{what}: stdout {}", out.stdout);
        let secrets = self.secrets();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_eq!(find_secret(&[&out.stdout, &out.stderr], &secrets), None, "{what}");
        assert_eq!(
            store_files(cache),
            Vec::<PathBuf>::new(),
            "{what}: the store keeps nothing"
        );
        assert_eq!(
            self.cloudsmith.request_count(),
            self.generated.load(Ordering::SeqCst),
            "{what}: a refused component never ran (no exchange but the successful runs')"
        );
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "{what}: {needle:?} not in {}",
                lines[0]
            );
        }
    }
}

impl Access {
    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("SSL_CERT_FILE", self.ca_file.clone().into()),
            ("DOCKER_CONFIG", self.docker_config.clone().into()),
        ]
    }
}

/// `base64(user:password)`: Docker's `auth` field.
fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The real generator component, built for wasm32-wasip2.
fn generator() -> Vec<u8> {
    std::fs::read(testkit::artifacts::wasm("cloudsmith-access-token")).expect("the generator's .wasm")
}

/// Whether the variable must not reach a child: the user's Cloudsmith, Docker, registry,
/// TLS and proxy settings.
fn foreign(name: &str) -> bool {
    name.starts_with("CLOUDSMITH_")
        || name.starts_with("DOCKER_")
        || name.starts_with("WKG_")
        || name.starts_with("REGISTRY_")
        || matches!(name, "SSL_CERT_FILE" | "SSL_CERT_DIR")
        || name.to_ascii_lowercase().ends_with("_proxy")
}

/// Runs `program args` with `env`, HOME and the XDG dirs in `home`, and none of the
/// user's settings ([`foreign`]).
async fn run(program: &Path, args: &[String], env: &[(&'static str, OsString)], home: &Path) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if foreign(&name.to_string_lossy()) {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("xdg-cache"))
        .env("XDG_CONFIG_HOME", home.join("xdg-config"));
    for (name, value) in env {
        command.env(name, value);
    }
    testkit::process::run(command, None, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{program:?} {args:?}: {e}"))
}

/// Every file under `<cache>/oci/manifests` and `<cache>/oci/blobs` but empty lock
/// files: entries, and any temporary file a write left behind.
fn store_files(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(&path, found);
            } else if !(path.extension().is_some_and(|e| e == "lock") && meta.len() == 0) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for kind in ["manifests", "blobs"] {
        walk(&cache.join("oci").join(kind), &mut found);
    }
    found.sort();
    found
}

/// Where the store keeps `digest`'s content of `kind` (`manifests`, `blobs`).
fn store_path(cache: &Path, kind: &str, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    cache.join("oci").join(kind).join("sha256").join(hex)
}

/// The one layer's digest of a Wasm artifact.
fn layer_of(artifact: &Artifact) -> String {
    let layers = artifact.layer_digests();
    assert_eq!(layers.len(), 1, "a Wasm artifact has one layer");
    layers[0].clone()
}

/// `artifact` served by a TLS [`FaultyRegistry`] with `fault`, in [`REPO`].
async fn faulty(fault: Fault, artifact: &Artifact) -> FaultyRegistry {
    FaultyRegistry::start_tls(Content::new().artifact(REPO, artifact), fault)
        .await
        .expect("faulty registry")
}

/// A real TLS registry, open to all, holding `artifact` in [`REPO`] under `reference`
/// (a tag, or the artifact's digest).
async fn distribution_with(artifact: &Artifact, reference: &str) -> Distribution {
    let registry = Distribution::start(DistributionConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    registry
        .push(REPO, reference, artifact, None)
        .await
        .expect("push to the registry");
    registry
}

/// The CA a TLS stand-in registry's certificate comes from.
fn ca_of(registry: &FaultyRegistry) -> &TestCa {
    registry.ca().expect("a TLS registry")
}

/// The CA a TLS real registry's certificate comes from.
fn ca_of_real(registry: &Distribution) -> &TestCa {
    registry.ca().expect("a TLS registry")
}

/// One fault of the stand-in registry, and how `generate` must refuse it.
struct FaultRow {
    fault: Fault,
    /// The artifact the registry holds, around the component's bytes.
    artifact: fn(Vec<u8>) -> Artifact,
    /// The row's name in failures, and its cache and access names.
    name: &'static str,
    /// Flags beyond [`World::args`].
    extra: &'static [&'static str],
    /// What the one error line must say, given what was pinned.
    needles: fn(&Pinned) -> Vec<String>,
    /// What it must not say.
    never: &'static [&'static str],
    /// GETs of the layer the refusal makes: none when the manifest is already wrong.
    layer_gets: usize,
}

/// What a row pins: the reference, the artifact, and the component it wraps.
struct Pinned {
    reference: String,
    artifact: Artifact,
    component: Vec<u8>,
}

fn registry_faults() -> Vec<FaultRow> {
    vec![
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::WrongManifestBytes,
            name: "wrong manifest bytes",
            extra: &[],
            // The stand-in serves the stored manifest with one more annotation: the digest
            // of that is what the registry served. The line names what mismatched (the
            // manifest, not the layer) and both digests.
            needles: |p| {
                let mut tampered = p.artifact.manifest_json();
                tampered["annotations"]["org.opencontainers.image.description"] =
                    json!("tampered by testkit");
                let served = digest_of(&serde_json::to_vec(&tampered).unwrap());
                vec!["manifest".into(), served, p.reference.clone()]
            },
            never: &[],
            layer_gets: 0,
        },
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::WrongBlobBytes,
            name: "wrong layer bytes",
            extra: &[],
            // The stand-in inverts the layer's last byte.
            needles: |p| {
                let mut served = p.component.clone();
                *served.last_mut().unwrap() ^= 0xff;
                vec![format!(
                    "the registry served a component whose digest is {}, not {}",
                    digest_of(&served),
                    layer_of(&p.artifact)
                )]
            },
            never: &[],
            layer_gets: 1,
        },
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::Garbage,
            name: "garbage",
            extra: &[],
            needles: |p| vec![p.reference.clone(), "no manifest".into(), "text/html".into()],
            // A page from a captive portal or a misrouted proxy is no manifest: the line
            // must not call it another manifest.
            never: &["digest is"],
            layer_gets: 0,
        },
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::HugeManifest,
            name: "a manifest without end",
            extra: &[],
            // Read whole, the 1 GiB would end in a digest mismatch; the line names the bound.
            needles: |p| {
                vec![
                    p.reference.clone(),
                    "manifest over the bound".into(),
                    cloudsmith_gen::oci::MAX_MANIFEST_BYTES.to_string(),
                ]
            },
            never: &["digest is"],
            layer_gets: 0,
        },
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::CutBlob,
            name: "cut blob",
            extra: &[],
            needles: |p| {
                vec![
                    "the registry stopped sending the component after".into(),
                    format!("of {} bytes", p.component.len()),
                ]
            },
            never: &[],
            layer_gets: 1,
        },
        FaultRow {
            artifact: Artifact::wasm,
            fault: Fault::StallBlob,
            name: "stalled blob",
            extra: &["--timeout", "3"],
            needles: |p| vec!["no answer within 3s".into(), p.reference.clone()],
            never: &[],
            layer_gets: 1,
        },
        FaultRow {
            // No fault but the manifest's: it declares a layer one byte over the bound.
            artifact: |component| {
                WasmArtifact::new(component)
                    .declared_layer_size(cloudsmith_gen::oci::MAX_COMPONENT_BYTES + 1)
                    .build()
            },
            fault: Fault::None,
            name: "layer over the bound",
            extra: &[],
            needles: |_| {
                let max = cloudsmith_gen::oci::MAX_COMPONENT_BYTES;
                vec![format!(
                    "its layer of {} bytes is over the bound of {max} bytes",
                    max + 1
                )]
            },
            never: &[],
            layer_gets: 0,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_registry_fault_is_refused() {
    let w = World::new().await;
    let generator = generator();
    for row in registry_faults() {
        let component = generator.clone();
        let artifact = (row.artifact)(component.clone());
        let registry = faulty(row.fault, &artifact).await;
        let cache = w.cache(row.name);
        let pinned = Pinned {
            reference: artifact.oci_reference(&registry.authority(), REPO),
            artifact,
            component,
        };
        let access = w.access(row.name, ca_of(&registry), &[]);
        let started = Instant::now();
        let out = w.generate(&pinned.reference, &cache, &access, row.extra).await;
        let took = started.elapsed();
        let needles = (row.needles)(&pinned);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        w.assert_refused(&out, 10, &needles, &cache, row.name);
        let line = out.stderr_lines()[0].to_ascii_lowercase();
        for never in row.never {
            assert!(!line.contains(never), "{}: {never:?} in {line}", row.name);
        }
        assert_eq!(
            registry.count(
                "GET",
                &FaultyRegistry::blob_path(REPO, &layer_of(&pinned.artifact))
            ),
            row.layer_gets,
            "{}: GETs of the layer among {:?}",
            row.name,
            registry.requests()
        );
        // A refusal is prompt; the stalled row's bound is its --timeout 3.
        assert!(
            took < Duration::from_secs(15),
            "{}: ended after {took:?}",
            row.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_image_is_not_a_component() {
    let w = World::new().await;
    let image = Artifact::container_image();
    let registry = distribution_with(&image, "1.0").await;
    let cache = w.cache("image");
    let out = w
        .generate(
            &image.oci_reference(&registry.authority(), REPO),
            &cache,
            &w.access("image", ca_of_real(&registry), &[]),
            &[],
        )
        .await;
    w.assert_refused(
        &out,
        10,
        &["it is a container image (config application/vnd.oci.image.config.v1+json), not a Wasm component"],
        &cache,
        "container image",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_core_module_pushed_by_wkg_is_not_a_component() {
    let w = World::new().await;
    let registry = Distribution::start(DistributionConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let access = w.access("core", ca_of_real(&registry), &[]);

    // A real core module (the version-1 preamble, not a component's).
    let wat = w.path("core.wat");
    std::fs::write(&wat, "(module (func (export \"generate\")))").unwrap();
    let module = w.path("core.wasm");
    let parsed = run(
        &testkit::tools::wasm_tools(),
        &[
            "parse".into(),
            wat.display().to_string(),
            "-o".into(),
            module.display().to_string(),
        ],
        &[],
        &w.home(),
    )
    .await;
    assert!(parsed.success(), "wasm-tools parse: {}", parsed.stderr);
    assert_eq!(
        std::fs::read(&module).unwrap()[..8],
        *b"\0asm\x01\0\0\0",
        "a core module"
    );

    // wkg (0.16) publishes it as it would a component (config
    // application/vnd.wasm.config.v0+json with os wasip2, one application/wasm layer), so
    // only the host's look at the bytes can refuse it; it prints the digest it pushed.
    let target = format!("{}/{REPO}:core", registry.authority());
    let pushed = run(
        &testkit::tools::wkg(),
        &["oci".into(), "push".into(), target, module.display().to_string()],
        &access.env(),
        &w.home(),
    )
    .await;
    assert!(
        pushed.success(),
        "wkg oci push: {}{}",
        pushed.stdout,
        pushed.stderr
    );
    let digest = pushed
        .stdout
        .lines()
        .chain(pushed.stderr.lines())
        .find_map(|l| l.trim().strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("wkg printed no digest: {}{}", pushed.stdout, pushed.stderr))
        .to_string();

    let cache = w.cache("core");
    let out = w
        .generate(
            &format!("oci://{}/{REPO}@{digest}", registry.authority()),
            &cache,
            &access,
            &[],
        )
        .await;
    w.assert_refused(
        &out,
        10,
        &["it is a core Wasm module, not a component"],
        &cache,
        "core module",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_answers_401() {
    let w = World::new().await;
    let artifact = Artifact::wasm(generator());
    let registry = Distribution::start(DistributionConfig {
        tls: true,
        auth: Auth::htpasswd(USER, PASSWORD),
        ..Default::default()
    })
    .await;
    registry
        .push(REPO, artifact.digest(), &artifact, Some((USER, PASSWORD)))
        .await
        .expect("push with the right credentials");
    let authority = registry.authority();
    let ca = ca_of_real(&registry);
    let reference = artifact.oci_reference(&authority, REPO);

    // The control first: the right credentials fetch it, and the store keeps it.
    let cache = w.cache("right-credentials");
    let access = w.access("right-credentials", ca, &[(&authority, USER, PASSWORD)]);
    let out = w.generate(&reference, &cache, &access, &[]).await;
    w.assert_generated(&out, "right credentials");
    assert_eq!(
        store_files(&cache),
        [
            store_path(&cache, "blobs", &layer_of(&artifact)),
            store_path(&cache, "manifests", artifact.digest()),
        ]
    );

    for (name, auths) in [
        ("no-credentials", vec![]),
        (
            "wrong-credentials",
            vec![(authority.as_str(), USER, WRONG_PASSWORD)],
        ),
    ] {
        let cache = w.cache(name);
        let out = w
            .generate(&reference, &cache, &w.access(name, ca, &auths), &[])
            .await;
        w.assert_refused(&out, 10, &["401 Unauthorized", &reference], &cache, name);
        if !auths.is_empty() {
            // The host sent what the config gives (the registry says so), and the line
            // must not ask for credentials as if none had been given.
            assert!(
                registry
                    .log()
                    .contains(&format!(r#"error authenticating user \"{USER}\""#)),
                "{name}: the registry saw no wrong password:\n{}",
                registry.log()
            );
            assert!(
                !out.stderr.contains("give credentials"),
                "{name}: credentials were given (and refused), yet the line asks for them: {}",
                out.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_the_registry_does_not_have() {
    let w = World::new().await;
    let artifact = Artifact::wasm(generator());
    let registry = distribution_with(&artifact, artifact.digest()).await;
    let access = w.access("missing", ca_of_real(&registry), &[]);
    let absent = digest_of(b"never pushed");
    for (name, repository) in [
        ("unknown-digest", REPO),
        ("unknown-repository", "acme/nothing-here"),
    ] {
        let cache = w.cache(name);
        let reference = format!("oci://{}/{repository}@{absent}", registry.authority());
        let out = w.generate(&reference, &cache, &access, &[]).await;
        w.assert_refused(&out, 10, &["not found in the registry", &reference], &cache, name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_is_refused_naming_its_digest() {
    let w = World::new().await;
    let artifact = Artifact::wasm(generator());
    let registry = distribution_with(&artifact, "1.0").await;
    let cache = w.cache("tag");
    let out = w
        .generate(
            &format!("oci://{}/{REPO}:1.0", registry.authority()),
            &cache,
            &w.access("tag", ca_of_real(&registry), &[]),
            &[],
        )
        .await;
    w.assert_refused(
        &out,
        2,
        &[
            "names a tag",
            &format!(
                "--component {}",
                artifact.oci_reference(&registry.authority(), REPO)
            ),
        ],
        &cache,
        "tag",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_references_are_usage_errors() {
    let w = World::new().await;
    // A live registry the references name (where a registry is named at all): it must
    // get no request.
    let artifact = Artifact::wasm(&b"\0asm\x0d\0\x01\0"[..]);
    let registry = faulty(Fault::None, &artifact).await;
    let access = w.access("malformed", ca_of(&registry), &[]);
    let authority = registry.authority();
    let valid = artifact.digest();
    for (i, (reference, problem)) in [
        (
            "oci://noregistry/x@sha256:abc".to_string(),
            "\"noregistry/x@sha256:abc\" is not REGISTRY/REPOSITORY",
        ),
        (
            format!("oci://{authority}/x@sha256:abc"),
            "digest \"sha256:abc\" is not sha256:<64 hex digits>",
        ),
        (
            format!("oci://noregistry/x@{valid}"),
            "\"noregistry\" is not a registry host",
        ),
        (format!("oci://{authority}/Upper@{valid}"), "lower-case"),
        (format!("oci://{authority}@{valid}"), "no repository"),
    ]
    .into_iter()
    .enumerate()
    {
        let cache = w.cache(&format!("malformed-{i}"));
        let out = w.generate(&reference, &cache, &access, &[]).await;
        w.assert_refused(&out, 2, &["--component", problem], &cache, &reference);
    }
    assert_eq!(registry.request_count(), 0, "{:?}", registry.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_fetches_once_then_the_store_serves_offline() {
    let w = World::new().await;
    let artifact = Artifact::wasm(generator());
    let registry = faulty(Fault::None, &artifact).await;
    let cache = w.cache("burst");
    let access = w.access("burst", ca_of(&registry), &[]);
    let reference = artifact.oci_reference(&registry.authority(), REPO);
    let args = w.args(&reference, &cache, &[]);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (args, env, home) = (args.clone(), access.env(), w.home());
        set.spawn(async move {
            (
                i,
                run(&testkit::tools::cloudsmith_gen(), &args, &env, &home).await,
            )
        });
    }
    let mut outputs = set.join_all().await;
    outputs.sort_by_key(|(i, _)| *i);
    for (i, out) in &outputs {
        w.assert_generated(out, &format!("burst run {i}"));
    }
    let layer = layer_of(&artifact);
    assert_eq!(
        registry.count("GET", &FaultyRegistry::blob_path(REPO, &layer)),
        1,
        "one GET of the layer for the whole burst: {:?}",
        registry.requests()
    );
    assert_eq!(
        store_files(&cache),
        [
            store_path(&cache, "blobs", &layer),
            store_path(&cache, "manifests", artifact.digest()),
        ]
    );
    assert_eq!(
        std::fs::read(store_path(&cache, "manifests", artifact.digest())).unwrap(),
        artifact.manifest()
    );
    assert_eq!(
        std::fs::read(store_path(&cache, "blobs", &layer)).unwrap(),
        artifact.blob(&layer).unwrap()
    );

    drop(registry);
    let offline = w.generate(&reference, &cache, &access, &[]).await;
    w.assert_generated(&offline, "9th run, registry stopped");
}
