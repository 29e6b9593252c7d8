//! Suite pull_doors: credentials at pull time, through the `cloudsmith-gen` binary as a
//! process, against the stand-in Cloudsmith over loopback.
//!
//! | test                                  | what it proves                                                        |
//! |---------------------------------------|-----------------------------------------------------------------------|
//! | [`generate_token_cache`]              | `generate --token-cache` reuses the token with the stand-in stopped; off by default and with `CLOUDSMITH_NO_TOKEN_CACHE`; entries 0600 in a 0700 dir, without the OIDC token |
//! | [`kubelet_golden_end_to_end`]         | request JSON in, the exact response out, with the request's service account token; custom registry; another registry's image gets an empty map and no exchange |
//! | [`kubelet_cache_duration_and_cache`]  | `cacheDuration` is the token's life minus the margin; a second call is served from the cache with the stand-in stopped |
//! | [`kubelet_bad_input`]                 | bad stdin and a missing token source: one `error:` line, non-zero exit, nothing on stdout, no token anywhere |
//! | [`kubelet_stalled_cloudsmith`]        | a Cloudsmith that accepts and never answers: the provider ends by itself within `--deadline` (from process start), one `error:` line naming the bound, exit 9 |
//! | [`install_kubelet_credential_provider`] | the binary (0755), config and manifest under temporary host dirs; the installed binary answers a CredentialProviderRequest with the installed config's args; a second run changes nothing; an existing manifest is kept |
//! | [`docker_helper_protocol`]            | `docker-credential-cloudsmith` (a symlink to the lean helper, which hands misses to `cloudsmith-gen`) and `cloudsmith-gen docker-credential-helper`: get in every server URL form, the not-found sentinel, store/erase/list/version, each error (its reason on stdout too, where Docker's helper client reads it) |
//! | [`the_lean_helper_answers_hits_itself_and_hands_off_the_rest`] | the lean helper alone answers a hit (byte for byte cloudsmith-gen's answer) and another registry, names what it lacks on a miss, and links no wasmtime |
//! | [`install_docker_credential_helper`]  | the link and `credHelpers` entries under `DOCKER_CONFIG`, other entries kept |
//! | [`a_burst_of_helpers_exchanges_once`] | 16 concurrent `get`s with an empty token cache and a Cloudsmith taking 0.4 s: one exchange, 16 right answers |
//! | [`a_burst_of_kubelet_runs_exchanges_once`] | 16 concurrent provider runs (16 images, one pod token): one exchange; a cold compile cache compiles once |
//! | [`refused_credentials_name_the_claims`] | a Cloudsmith that does not trust the subject: the kubelet provider's and the helper's one `error:` line names iss, sub and aud, never a part of the token |
//! | [`a_broken_token_cache_never_fails_a_pull`] | cache dir under a regular file, read-only bind mount, full tmpfs: credentials all the same, at most one warning line |

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::now;
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig, Trusted, PRODUCTION_AUDIENCE};
use testkit::process::{find_secret, Output};

const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
const SUBJECT: &str = "system:serviceaccount:apps:puller";
/// The stand-in's default (past) expiry: a token that is never served from a cache.
const PAST_EXP: u64 = 1_700_000_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A stand-in, a scratch directory, an OIDC token (file) for `SUBJECT`.
/// The Docker helper's variables: mint for `org` at the stand-in `url` with the token in
/// `token_file`.
fn helper_env<'a>(org: &'a str, url: &'a str, token_file: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CLOUDSMITH_ORG", org),
        ("CLOUDSMITH_SERVICE_SLUG", SERVICE),
        ("CLOUDSMITH_API_HOST", url),
        ("CLOUDSMITH_OIDC_TOKEN_FILE", token_file),
    ]
}

struct World {
    cloudsmith: Option<StandIn>,
    url: String,
    authority: String,
    dir: tempfile::TempDir,
    oidc_token: String,
    token_file: PathBuf,
    exp: u64,
}

impl World {
    async fn new(exp: u64) -> World {
        World::with(StandInConfig {
            token_exp: exp,
            ..Default::default()
        })
        .await
    }

    async fn with(config: StandInConfig) -> World {
        let exp = config.token_exp;
        let cloudsmith = StandIn::start(config).await.expect("stand-in");
        let dir = tempfile::tempdir().expect("tempdir");
        let oidc_token = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
        let token_file = dir.path().join("oidc-token");
        std::fs::write(&token_file, &oidc_token).unwrap();
        World {
            url: cloudsmith.url(),
            authority: cloudsmith.authority(),
            cloudsmith: Some(cloudsmith),
            dir,
            oidc_token,
            token_file,
            exp,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn requests(&self) -> usize {
        self.cloudsmith.as_ref().expect("running").requests().len()
    }

    /// Stops the stand-in: from now on any exchange fails.
    fn stop_cloudsmith(&mut self) {
        self.cloudsmith = None;
    }

    fn access_token(&self, org: &str) -> String {
        access_token_for(SUBJECT, org, SERVICE, self.exp)
    }

    fn secrets(&self) -> Vec<String> {
        vec![
            self.oidc_token.clone(),
            self.access_token(ORG),
            auth_for(&self.access_token(ORG)),
        ]
    }

    /// Policy flags for the stand-in and a shared compiled-component cache.
    fn runtime_flags(&self) -> Vec<String> {
        let cache = testkit::workspace_root().join("target").join("e2e-cli-cache");
        vec![
            "--allow-host".into(),
            self.authority.clone(),
            "--allow-http".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ]
    }

    /// A spec-only manifest for `org` at the stand-in, without a serviceAccountRef.
    fn bare_manifest(&self, org: &str) -> PathBuf {
        let text = json!({"apiUrl": self.url, "orgSlug": org, "serviceSlug": SERVICE}).to_string();
        self.file(&format!("bare-{org}.json"), &text)
    }
}

/// Runs `program` with `args`, environment changes and stdin; HOME and XDG point into
/// `home` so nothing touches the user's files, and no CLOUDSMITH_* leaks in.
async fn run(program: &Path, args: &[String], env: &[(&str, &str)], stdin: &str, home: &Path) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLOUDSMITH_") || name == "DOCKER_CONFIG" || name == "SSL_CERT_FILE" {
            command.env_remove(name);
        }
    }
    command.env("HOME", home).env("XDG_CACHE_HOME", home.join("xdg"));
    for (name, value) in env {
        command.env(name, value);
    }
    testkit::process::run(command, Some(stdin.as_bytes().to_vec()), RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{program:?} {args:?}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A failure: this exit code, one `error:` line naming `needle`, empty stdout, no secret.
fn assert_fails(out: &Output, code: i32, needle: &str, secrets: &[String], what: &str) {
    assert_eq!(out.code, Some(code), "{what}: stderr {}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{what}: one stderr line: {}", out.stderr);
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{what}: {needle:?} not in {}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "{what}: stdout {}", out.stdout);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_eq!(find_secret(&[&out.stdout, &out.stderr], &secrets), None, "{what}");
}

/// A failure of the Docker helper: this exit code, one `error:` line naming `needle` on
/// stderr, and the same reason alone on stdout, the one stream Docker's helper client
/// reads (docker-credential-helpers v0.9.13 `client/client.go` `Get`; `credentials.Serve`
/// prints its errors there too). No secret in either.
fn assert_helper_fails(out: &Output, code: i32, needle: &str, secrets: &[String], what: &str) {
    assert_eq!(out.code, Some(code), "{what}: stderr {}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{what}: one stderr line: {}", out.stderr);
    let reason = lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("{what}: {}", lines[0]));
    assert!(reason.contains(needle), "{what}: {needle:?} not in {reason}");
    assert_eq!(out.stdout, format!("{reason}\n"), "{what}: stdout");
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_eq!(find_secret(&[&out.stdout, &out.stderr], &secrets), None, "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_token_cache() {
    let mut w = World::new(now() + 7200).await;
    let bin = testkit::tools::cloudsmith_gen();
    let manifest = w.file("m.yaml", &testkit::cloudsmith::documented_manifest(&w.url));
    let tokens = w.path("tokens");
    let mut args = strings(&["generate", "--manifest"]);
    args.push(manifest.display().to_string());
    args.extend(["--oidc-token-file".into(), w.token_file.display().to_string()]);
    args.extend(w.runtime_flags());
    let mut cached = args.clone();
    cached.extend([
        "--token-cache".into(),
        "--token-cache-dir".into(),
        tokens.display().to_string(),
    ]);
    let home = w.dir.path().to_path_buf();
    let expected = json!({"auth": auth_for(&w.access_token(ORG)), "expiry": w.exp.to_string()});

    let first = run(&bin, &cached, &[], "", &home).await;
    assert!(first.success(), "{}", first.stderr);
    assert_eq!(first.stdout_json(), expected);
    assert_eq!(w.requests(), 1);
    let second = run(&bin, &cached, &[], "", &home).await;
    assert_eq!(second.stdout_json(), expected, "{}", second.stderr);
    assert_eq!(w.requests(), 1, "a hit makes no request");

    // One entry, private, holding neither the OIDC token nor a trace of it in its name;
    // beside it only its single-flight lock file, empty.
    let (locks, entries): (Vec<PathBuf>, Vec<PathBuf>) = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .partition(|p| p.extension().is_some_and(|e| e == "lock"));
    assert_eq!(entries.len(), 1);
    assert_eq!(locks.len(), 1);
    assert_eq!(std::fs::metadata(&locks[0]).unwrap().len(), 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tokens), 0o700);
        assert_eq!(mode(&entries[0]), 0o600);
        assert_eq!(mode(&locks[0]), 0o600);
    }
    let entry = std::fs::read_to_string(&entries[0]).unwrap();
    assert_eq!(
        find_secret(&[&entry, &entries[0].display().to_string()], &[&w.oidc_token]),
        None
    );

    w.stop_cloudsmith();
    let offline = run(&bin, &cached, &[], "", &home).await;
    assert!(offline.success(), "a hit needs no Cloudsmith: {}", offline.stderr);
    assert_eq!(offline.stdout_json(), expected);
    // Off by default, and off with the variable: both now need the (stopped) stand-in.
    let default = run(&bin, &args, &[], "", &home).await;
    assert_fails(&default, 7, "", &w.secrets(), "generate without --token-cache");
    let disabled = run(&bin, &cached, &[("CLOUDSMITH_NO_TOKEN_CACHE", "1")], "", &home).await;
    assert_fails(&disabled, 7, "", &w.secrets(), "CLOUDSMITH_NO_TOKEN_CACHE=1");

    // A corrupt entry is ignored (and the exchange attempted).
    std::fs::write(&entries[0], "{corrupt").unwrap();
    let corrupt = run(&bin, &cached, &[], "", &home).await;
    assert_fails(&corrupt, 7, "", &w.secrets(), "corrupt entry");
}

fn kubelet_request(image: &str, sa_token: Option<&str>) -> String {
    let mut request = json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": image,
    });
    if let Some(token) = sa_token {
        request["serviceAccountToken"] = json!(token);
        request["serviceAccountAnnotations"] = json!({"cloudsmith.io/team": "apps"});
    }
    request.to_string()
}

/// `cloudsmith-gen kubelet-credential-provider` with `args`, asked for `image` with
/// `sa_token` as the kubelet would ask.
async fn kubelet(args: &[String], image: &str, sa_token: Option<&str>, home: &Path) -> Output {
    let request = kubelet_request(image, sa_token);
    run(&testkit::tools::cloudsmith_gen(), args, &[], &request, home).await
}

fn kubelet_args(w: &World, manifest: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["kubelet-credential-provider", "--manifest"]);
    args.push(manifest.display().to_string());
    args.extend([
        "--token-cache-dir".into(),
        w.path("kubelet-tokens").display().to_string(),
    ]);
    args.extend(strings(extra));
    args.extend(w.runtime_flags());
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_golden_end_to_end() {
    let w = World::new(PAST_EXP).await;
    let bin = testkit::tools::cloudsmith_gen();
    let manifest = w.bare_manifest(ORG);
    let args = kubelet_args(&w, &manifest, &["--registry", "registry.acme.test:5000"]);
    let password = w.access_token(ORG);
    let home = w.dir.path().to_path_buf();
    let pairs = [
        (
            kubelet_request("docker.cloudsmith.io/my-organization/prod/app:1.0", Some(&w.oidc_token)),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{{"docker.cloudsmith.io":{{"username":"token","password":"{password}"}}}}}}"#
            ),
        ),
        (
            kubelet_request("registry.acme.test:5000/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000", Some(&w.oidc_token)),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{{"registry.acme.test:5000":{{"username":"token","password":"{password}"}}}}}}"#
            ),
        ),
    ];
    for (i, (request, response)) in pairs.iter().enumerate() {
        let out = run(&bin, &args, &[], request, &home).await;
        assert!(out.success(), "pair {i}: {}", out.stderr);
        assert_eq!(out.stdout.trim_end(), response, "pair {i}");
        assert_eq!(
            w.requests(),
            i + 1,
            "pair {i}: the past-exp token is never served from the cache"
        );
    }
    // The exchange used the request's token: the manifest names no service account.
    let sent = w.cloudsmith.as_ref().unwrap().requests();
    assert_eq!(sent[0].json().unwrap()["oidc_token"], json!(w.oidc_token));

    let foreign = kubelet(&args, "ghcr.io/acme/app:1", Some(&w.oidc_token), &home).await;
    assert!(foreign.success(), "{}", foreign.stderr);
    assert_eq!(
        foreign.stdout.trim_end(),
        r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Registry","cacheDuration":"0s","auth":{}}"#
    );
    assert_eq!(w.requests(), 2, "no exchange for another registry's image");

    // Without a service account token, the fallback sources of `generate`.
    let with_file = kubelet_args(
        &w,
        &w.file("m.yaml", &testkit::cloudsmith::documented_manifest(&w.url)),
        &["--oidc-token-file", w.token_file.to_str().unwrap()],
    );
    let out = kubelet(&with_file, "docker.cloudsmith.io/a/b/c:1", None, &home).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout_json()["auth"]["docker.cloudsmith.io"]["password"],
        json!(password)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_cache_duration_and_cache() {
    let lifetime = 7200;
    let mut w = World::new(now() + lifetime).await;
    let bin = testkit::tools::cloudsmith_gen();
    let args = kubelet_args(&w, &w.bare_manifest(ORG), &[]);
    let request = kubelet_request(
        "docker.cloudsmith.io/my-organization/prod/app:1.0",
        Some(&w.oidc_token),
    );
    let home = w.dir.path().to_path_buf();
    let first = run(&bin, &args, &[], &request, &home).await;
    assert!(first.success(), "{}", first.stderr);
    let response = first.stdout_json();
    assert_eq!(
        response["auth"]["docker.cloudsmith.io"]["password"],
        json!(w.access_token(ORG))
    );
    // exp - now - 300 s, as a Go duration: at most 1h55m0s, and not far below.
    let duration = response["cacheDuration"].as_str().unwrap().to_string();
    let seconds = go_seconds(&duration).unwrap_or_else(|| panic!("not a Go duration: {duration}"));
    assert!(
        seconds <= lifetime - 300 && seconds > lifetime - 300 - 600,
        "{duration}"
    );

    w.stop_cloudsmith();
    let second = run(&bin, &args, &[], &request, &home).await;
    assert!(second.success(), "served from the token cache: {}", second.stderr);
    assert_eq!(second.stdout_json()["auth"], response["auth"]);
    let off = run(
        &bin,
        &args,
        &[("CLOUDSMITH_NO_TOKEN_CACHE", "true")],
        &request,
        &home,
    )
    .await;
    assert_fails(&off, 7, "", &w.secrets(), "cache off");
}

/// Parses Go's `1h2m3s` form.
fn go_seconds(text: &str) -> Option<u64> {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number.parse().ok()?;
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => return None,
        }
    }
    number.is_empty().then_some(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_bad_input() {
    let w = World::new(PAST_EXP).await;
    let bin = testkit::tools::cloudsmith_gen();
    let args = kubelet_args(&w, &w.bare_manifest(ORG), &[]);
    let token = &w.oidc_token;
    let home = w.dir.path().to_path_buf();
    let image = "docker.cloudsmith.io/a/b:1";
    // Cloudsmith refuses this manifest's exchange: exit 5 with its detail, no token.
    let refused = kubelet_args(&w, &w.bare_manifest("fail-401"), &[]);
    // Name, arguments, stdin, exit code, a needle of the error line.
    let cases: [(&str, &[String], String, i32, &str); 7] = [
        ("not JSON", &args, "not JSON".to_string(), 2, "not valid JSON"),
        (
            "v1alpha1",
            &args,
            format!(
                r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/a/b","serviceAccountToken":"{token}"}}"#
            ),
            2,
            "is not credentialprovider.kubelet.k8s.io/v1",
        ),
        (
            "kind Pod",
            &args,
            format!(
                r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Pod","image":"docker.cloudsmith.io/a/b","serviceAccountToken":"{token}"}}"#
            ),
            2,
            "kind \"Pod\"",
        ),
        (
            "no image",
            &args,
            format!(
                r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","serviceAccountToken":"{token}"}}"#
            ),
            2,
            "no image",
        ),
        // A token put where the apiVersion goes is not echoed.
        (
            "token as apiVersion",
            &args,
            format!(
                r#"{{"apiVersion":"{token}","kind":"CredentialProviderRequest","image":"docker.cloudsmith.io/a/b"}}"#
            ),
            2,
            "[redacted]",
        ),
        // No token in the request and no fallback source.
        (
            "no token source",
            &args,
            kubelet_request(image, None),
            3,
            "no service account token",
        ),
        (
            "401",
            &refused,
            kubelet_request(image, Some(token)),
            5,
            "OIDC token cannot be authenticated",
        ),
    ];
    for (name, args, stdin, code, needle) in &cases {
        let out = run(&bin, args, &[], stdin, &home).await;
        assert_fails(&out, *code, needle, &w.secrets(), name);
    }
    assert_eq!(w.requests(), 1, "only the 401 case reached Cloudsmith");
}

/// Arguments, environment, stdin, exit code, and a needle of the error line.
type ErrorCase<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str, i32, &'a str);

/// A directory with `docker-credential-cloudsmith` linked to the lean helper, as
/// `install docker-credential-helper` links it: it answers cache hits itself and hands
/// every other call to the `cloudsmith-gen` beside it.
fn helper_link(w: &World) -> PathBuf {
    let bin_dir = w.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let link = bin_dir.join("docker-credential-cloudsmith");
    #[cfg(unix)]
    std::os::unix::fs::symlink(testkit::tools::docker_credential_cloudsmith(), &link).unwrap();
    link
}

/// The lean helper on its own, with no `cloudsmith-gen` beside it: whatever it answers,
/// it answered itself. A hard link, not a copy: an executable written while other tests
/// fork cannot be run until their children exec (ETXTBSY).
fn lone_helper() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lone = dir.path().join("docker-credential-cloudsmith");
    std::fs::hard_link(testkit::tools::docker_credential_cloudsmith(), &lone).unwrap();
    (dir, lone)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lean_helper_answers_hits_itself_and_hands_off_the_rest() {
    let mut w = World::new(now() + 6 * 3600).await;
    let home = w.dir.path().to_path_buf();
    let (url, token_file) = (w.url.clone(), w.token_file.display().to_string());
    let mut env = helper_env(ORG, &url, &token_file);
    env.push(("CLOUDSMITH_REGISTRIES", "registry.acme.test:5000"));
    let (_lone_dir, lone) = lone_helper();
    let get = |program: PathBuf, server: &'static str| {
        let (env, home) = (env.clone(), home.clone());
        async move { run(&program, &strings(&["get"]), &env, server, &home).await }
    };

    // A miss: the lean helper alone cannot mint, and says what it needs.
    let out = get(lone.clone(), "registry.acme.test:5000").await;
    assert_helper_fails(
        &out,
        1,
        "cloudsmith-gen not found beside",
        &w.secrets(),
        "lone miss",
    );
    assert_eq!(w.requests(), 0);
    // Another registry needs nothing: the protocol's not-found, from the lean helper.
    let out = get(lone.clone(), "ghcr.io").await;
    assert_eq!(
        (out.code, out.stdout.trim_end()),
        (Some(1), "credentials not found in native keychain")
    );

    // The installed pair: the miss is handed to cloudsmith-gen, which mints and caches.
    let out = get(helper_link(&w), "registry.acme.test:5000").await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(w.requests(), 1);
    let full = out.stdout;

    // Now a hit: the lone helper answers it, byte for byte what cloudsmith-gen answered,
    // with Cloudsmith gone.
    w.stop_cloudsmith();
    let out = get(lone.clone(), "registry.acme.test:5000").await;
    assert!(out.success() && out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(out.stdout, full);

    // It links no wasmtime: a fraction of cloudsmith-gen's size, and none of its code.
    let lean = std::fs::read(&lone).unwrap();
    let gen_size = std::fs::metadata(testkit::tools::cloudsmith_gen()).unwrap().len();
    assert!(
        (lean.len() as u64) * 4 < gen_size,
        "lean helper {} bytes, cloudsmith-gen {gen_size}",
        lean.len()
    );
    assert!(
        !lean.windows(b"wasmtime".len()).any(|w| w == b"wasmtime"),
        "the lean helper links wasmtime"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_helper_protocol() {
    let w = World::new(PAST_EXP).await;
    let helper = helper_link(&w);
    let home = w.dir.path().to_path_buf();
    let token_file = w.token_file.display().to_string();
    let mut env = helper_env(ORG, &w.url, &token_file);
    env.push((
        "CLOUDSMITH_REGISTRIES",
        "registry.acme.test:5000, other.acme.test",
    ));
    let secret = w.access_token(ORG);
    for server in [
        "docker.cloudsmith.io",
        "https://docker.cloudsmith.io",
        "https://docker.cloudsmith.io/v2/",
        "docker.cloudsmith.io:443",
        "registry.acme.test:5000",
        "http://other.acme.test/v1/",
    ] {
        let out = run(&helper, &strings(&["get"]), &env, &format!("{server}\n"), &home).await;
        assert!(out.success(), "{server}: {}", out.stderr);
        assert_eq!(
            out.stdout_json(),
            json!({"ServerURL": server, "Username": "token", "Secret": secret}),
            "{server}"
        );
    }
    // The same through the subcommand.
    let bin = testkit::tools::cloudsmith_gen();
    let subcommand = strings(&["docker-credential-helper", "get"]);
    let out = run(&bin, &subcommand, &env, "docker.cloudsmith.io", &home).await;
    assert_eq!(out.stdout_json()["Secret"], json!(secret), "{}", out.stderr);
    let out = run(&bin, &subcommand, &env, "", &home).await;
    assert_helper_fails(
        &out,
        2,
        "no credentials server URL",
        &[],
        "the subcommand's failure",
    );

    let requests = w.requests();
    for server in [
        "index.docker.io",
        "https://index.docker.io/v1/",
        "registry.acme.test",
        "registry.acme.test:5001",
    ] {
        let out = run(&helper, &strings(&["get"]), &env, server, &home).await;
        assert_eq!(out.code, Some(1), "{server}");
        assert_eq!(
            out.stdout.trim_end(),
            "credentials not found in native keychain",
            "{server}"
        );
        assert!(out.stderr.is_empty(), "{server}: {}", out.stderr);
    }
    assert_eq!(w.requests(), requests, "no exchange for other registries");

    let store = json!({"ServerURL": "docker.cloudsmith.io", "Username": "u", "Secret": "s"}).to_string();
    for (action, stdin, stdout) in [
        ("store", store.as_str(), ""),
        ("erase", "docker.cloudsmith.io", ""),
        ("list", "", "{}\n"),
    ] {
        let out = run(&helper, &strings(&[action]), &env, stdin, &home).await;
        assert!(out.success(), "{action}: {}", out.stderr);
        assert_eq!(out.stdout, stdout, "{action}");
    }
    let version = run(&helper, &strings(&["version"]), &env, "", &home).await;
    assert!(
        version.success()
            && version
                .stdout
                .starts_with("docker-credential-cloudsmith (cloudsmith-gen) "),
        "{}",
        version.stdout
    );

    // Errors: one line, non-zero, no token.
    let without = |name: &str| {
        env.iter()
            .filter(|(n, _)| *n != name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut refused = without("CLOUDSMITH_ORG");
    refused.push(("CLOUDSMITH_ORG", "fail-401"));
    let missing_file = w.path("missing").display().to_string();
    let mut bad_file = without("CLOUDSMITH_OIDC_TOKEN_FILE");
    bad_file.push(("CLOUDSMITH_OIDC_TOKEN_FILE", &missing_file));
    let cases: Vec<ErrorCase> = vec![
        (
            strings(&["get"]),
            without("CLOUDSMITH_ORG"),
            "docker.cloudsmith.io",
            2,
            "CLOUDSMITH_ORG is not set",
        ),
        (
            strings(&["get"]),
            without("CLOUDSMITH_OIDC_TOKEN_FILE"),
            "docker.cloudsmith.io",
            3,
            "no OIDC token",
        ),
        (strings(&["get"]), bad_file, "docker.cloudsmith.io", 3, "missing"),
        (
            strings(&["get"]),
            refused,
            "docker.cloudsmith.io",
            5,
            "OIDC token cannot be authenticated",
        ),
        (strings(&["get"]), env.clone(), "", 2, "no credentials server URL"),
        (strings(&["frobnicate"]), env.clone(), "", 2, "unknown action"),
        (strings(&[]), env.clone(), "", 2, "usage"),
        (strings(&["get", "extra"]), env.clone(), "", 2, "usage"),
    ];
    let mut secrets = w.secrets();
    secrets.push(access_token_for(SUBJECT, "fail-401", SERVICE, PAST_EXP));
    for (args, env, stdin, code, needle) in &cases {
        let out = run(&helper, args, env, stdin, &home).await;
        assert_helper_fails(&out, *code, needle, &secrets, &format!("{args:?} {needle}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_docker_credential_helper() {
    let w = World::new(PAST_EXP).await;
    let home = w.dir.path().to_path_buf();
    let docker = w.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths": {"ghcr.io": {"auth": "eDp5"}}, "credHelpers": {"gcr.io": "gcloud"}, "currentContext": "default"}"#,
    )
    .unwrap();
    let bin_dir = w.path("bin");
    let args = vec![
        "install".to_string(),
        "docker-credential-helper".into(),
        "--dir".into(),
        bin_dir.display().to_string(),
        "--registry".into(),
        "registry.acme.test:5000".into(),
    ];
    let docker_env = docker.display().to_string();
    let out = run(
        &testkit::tools::cloudsmith_gen(),
        &args,
        &[("DOCKER_CONFIG", &docker_env)],
        "",
        &home,
    )
    .await;
    assert!(out.success(), "{}", out.stderr);
    let link = bin_dir.join("docker-credential-cloudsmith");
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(testkit::tools::docker_credential_cloudsmith()).unwrap(),
        "the link is to the lean helper beside cloudsmith-gen"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(docker.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({
            "auths": {"ghcr.io": {"auth": "eDp5"}},
            "credHelpers": {"gcr.io": "gcloud", "docker.cloudsmith.io": "cloudsmith", "registry.acme.test:5000": "cloudsmith"},
            "currentContext": "default",
        })
    );
    // The installed link speaks the protocol.
    let version = run(&link, &strings(&["version"]), &[], "", &home).await;
    assert!(version.success(), "{}", version.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_stalled_cloudsmith() {
    let w = World::new(PAST_EXP).await;
    // The `slow` scenario with a delay far past any bound: accepts, reads, never answers.
    let stalled = StandIn::start(StandInConfig {
        slow_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("stand-in");
    let manifest = w.file(
        "stalled.json",
        &json!({"apiHost": stalled.url(), "orgSlug": "slow", "serviceSlug": SERVICE}).to_string(),
    );
    let mut args = kubelet_args(&w, &manifest, &["--deadline", "4", "--no-token-cache"]);
    args.extend(["--allow-host".into(), stalled.authority()]);
    let request = kubelet_request("docker.cloudsmith.io/slow/repo/app", Some(&w.oidc_token));
    let bin = testkit::tools::cloudsmith_gen();
    let started = std::time::Instant::now();
    let out = run(&bin, &args, &[], &request, w.dir.path()).await;
    let took = started.elapsed();
    assert_fails(
        &out,
        9,
        "no credentials within 4s of starting (--deadline",
        &w.secrets(),
        "stalled",
    );
    assert!(
        stalled.request_count() >= 1,
        "the exchange was under way when the bound hit"
    );
    // The bound counts from process start; exiting takes a moment past it.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_millis(5500),
        "ended after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn install_kubelet_credential_provider() {
    let w = World::new(PAST_EXP).await;
    let bin = testkit::tools::cloudsmith_gen();
    let (bin_dir, config, manifest) = (
        w.path("host/bin"),
        w.path("host/etc/cp.yaml"),
        w.path("host/etc/gen.yaml"),
    );
    // The node's operator wrote the manifest first (pointing at the stand-in): it is kept.
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    let ours = json!({"apiHost": w.url, "orgSlug": ORG, "serviceSlug": SERVICE}).to_string();
    std::fs::write(&manifest, &ours).unwrap();
    let mut args = strings(&["install", "kubelet-credential-provider", "--bin-dir"]);
    args.push(bin_dir.display().to_string());
    args.extend(["--config".into(), config.display().to_string()]);
    args.extend(["--manifest".into(), manifest.display().to_string()]);
    let first = run(&bin, &args, &[], "", w.dir.path()).await;
    assert!(first.success(), "{}", first.stderr);
    let installed = bin_dir.join("cloudsmith-gen");
    // What install reports: the binary and the config with `verb`, the user's own
    // manifest kept.
    let report = |verb: &str| {
        [
            format!("{verb} {}", installed.display()),
            format!("{verb} {}", config.display()),
            format!(
                "kept {} (differs; --overwrite-config replaces it)",
                manifest.display()
            ),
        ]
    };
    assert_eq!(first.stdout.lines().collect::<Vec<_>>(), report("installed"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&bin).unwrap());
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), ours);

    // The installed binary, run as the installed config tells the kubelet to.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("  - name: cloudsmith-gen\n"),
        "the name is the executable's"
    );
    let mut provider_args = config_args(&text);
    assert_eq!(provider_args[0], "kubelet-credential-provider");
    assert!(
        provider_args.contains(&manifest.display().to_string()),
        "{provider_args:?}"
    );
    // The node's cache dirs are not ours to write: point them into the scratch dir.
    provider_args.retain(|a| !a.starts_with("/var/cache"));
    provider_args.retain(|a| a != "--cache-dir" && a != "--token-cache-dir");
    provider_args.push("--no-token-cache".into());
    provider_args.extend(w.runtime_flags());
    let request = kubelet_request(
        "docker.cloudsmith.io/my-organization/prod/app",
        Some(&w.oidc_token),
    );
    let answer = run(&installed, &provider_args, &[], &request, w.dir.path()).await;
    assert!(answer.success(), "{}", answer.stderr);
    assert_eq!(
        answer.stdout_json()["auth"]["docker.cloudsmith.io"]["password"],
        json!(w.access_token(ORG))
    );

    // Again: nothing changes, and it says so.
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.modified().unwrap(), std::fs::read(p).unwrap())
    };
    let before: Vec<_> = [&installed, &config, &manifest].map(|p| stat(p)).into();
    let second = run(&bin, &args, &[], "", w.dir.path()).await;
    assert!(second.success(), "{}", second.stderr);
    assert_eq!(second.stdout.lines().collect::<Vec<_>>(), report("unchanged"));
    let after: Vec<_> = [&installed, &config, &manifest].map(|p| stat(p)).into();
    assert_eq!(before, after);
    assert_eq!(
        std::fs::read_dir(&bin_dir).unwrap().count(),
        1,
        "no temporary file left"
    );

    // A bin dir that cannot be created: one error line, exit 1.
    let blocked = w.file("not-a-dir", "");
    let mut bad = strings(&["install", "kubelet-credential-provider", "--bin-dir"]);
    bad.push(blocked.join("bin").display().to_string());
    bad.extend(["--config".into(), config.display().to_string()]);
    bad.extend(["--manifest".into(), manifest.display().to_string()]);
    let failed = run(&bin, &bad, &[], "", w.dir.path()).await;
    assert_fails(
        &failed,
        1,
        "not-a-dir/bin/cloudsmith-gen: Not a directory",
        &[],
        "blocked bin dir",
    );
}

/// The provider's `args` list of a CredentialProviderConfig as shipped (block style,
/// one item a line; this crate has no YAML parser).
fn config_args(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim_end() != "    args:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|a| a.trim_matches('"').to_string())
        .collect()
}

/// A stand-in whose every exchange takes 0.4 s (the `slow` org), tokens valid 6 hours.
async fn slow_world() -> World {
    World::with(StandInConfig {
        token_exp: now() + 6 * 3600,
        slow_delay: Duration::from_millis(400),
        ..Default::default()
    })
    .await
}

/// Runs every `(args, stdin)` at once as `program`, and returns the outputs in order.
async fn burst(
    program: &Path,
    runs: Vec<(Vec<String>, String)>,
    env: &[(&str, &str)],
    home: &Path,
) -> Vec<Output> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (args, stdin)) in runs.into_iter().enumerate() {
        let (program, home) = (program.to_path_buf(), home.to_path_buf());
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        set.spawn(async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (i, run(&program, &args, &env, &stdin, &home).await)
        });
    }
    let mut outputs: Vec<(usize, Output)> = set.join_all().await;
    outputs.sort_by_key(|(i, _)| *i);
    outputs.into_iter().map(|(_, out)| out).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_helpers_exchanges_once() {
    let w = slow_world().await;
    let helper = helper_link(&w);
    let home = w.dir.path().to_path_buf();
    let token_file = w.token_file.display().to_string();
    let env = helper_env("slow", &w.url, &token_file);
    // Compile once up front (a warm node), so the burst measures the token cache alone.
    let warm = run(&helper, &strings(&["version"]), &env, "", &home).await;
    assert!(warm.success(), "{}", warm.stderr);
    let runs = (0..16)
        .map(|_| (strings(&["get"]), "docker.cloudsmith.io".to_string()))
        .collect();
    let outputs = burst(&helper, runs, &env, &home).await;
    let secret = w.access_token("slow");
    for (i, out) in outputs.iter().enumerate() {
        assert!(out.success(), "run {i}: {}", out.stderr);
        assert_eq!(out.stdout_json()["Secret"], json!(secret), "run {i}");
        assert!(out.stderr.is_empty(), "run {i}: {}", out.stderr);
    }
    assert_eq!(w.requests(), 1, "one exchange for the whole burst");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_kubelet_runs_exchanges_once() {
    let w = slow_world().await;
    let bin = testkit::tools::cloudsmith_gen();
    let manifest = w.bare_manifest("slow");
    let home = w.dir.path().to_path_buf();
    // A cold node: a compile cache of its own, empty.
    let mut args = kubelet_args(&w, &manifest, &[]);
    let at = args.iter().position(|a| a == "--cache-dir").unwrap();
    args[at + 1] = w.path("compile-cache").display().to_string();
    args.insert(1, "-v".into());
    let runs = (0..16)
        .map(|i| {
            let image = format!("docker.cloudsmith.io/slow/prod/app-{i}:1.0");
            (args.clone(), kubelet_request(&image, Some(&w.oidc_token)))
        })
        .collect();
    let outputs = burst(&bin, runs, &[], &home).await;
    let password = w.access_token("slow");
    let mut compiled = 0;
    for (i, out) in outputs.iter().enumerate() {
        assert!(out.success(), "run {i}: {}", out.stderr);
        let response: Value = out.stdout_json();
        assert_eq!(
            response["auth"]["docker.cloudsmith.io"]["password"],
            json!(password),
            "run {i}"
        );
        compiled += out.stderr.matches("compiled and cached").count();
        testkit::process::assert_no_secret(
            &[&out.stdout.replace(&password, ""), &out.stderr],
            &[&w.oidc_token, &password],
        );
    }
    assert_eq!(w.requests(), 1, "one exchange for the whole burst");
    assert_eq!(compiled, 1, "the cold compile cache compiled once");
}

/// Runs `program args` in a mount namespace of its own, after `setup` (shell, `$D` is
/// `dir`): mounts there vanish with the process.
async fn run_mounted(
    setup: &str,
    dir: &Path,
    program: &Path,
    args: &[String],
    stdin: &str,
    home: &Path,
) -> Output {
    let mut all = strings(&["--mount", "--propagation", "private", "sh", "-c"]);
    all.push(format!("set -e; D=\"$1\"; shift; {setup}; exec \"$@\""));
    all.push("sh".into());
    all.push(dir.display().to_string());
    all.push(program.display().to_string());
    all.extend(args.iter().cloned());
    run(Path::new("unshare"), &all, &[], stdin, home).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_token_cache_never_fails_a_pull() {
    let w = World::new(now() + 6 * 3600).await;
    let bin = testkit::tools::cloudsmith_gen();
    let manifest = w.bare_manifest(ORG);
    let home = w.dir.path().to_path_buf();
    let request = kubelet_request(
        "docker.cloudsmith.io/my-organization/prod/app:1.0",
        Some(&w.oidc_token),
    );
    let password = w.access_token(ORG);
    let args_with = |dir: &Path| {
        let mut args = kubelet_args(&w, &manifest, &[]);
        let at = args.iter().position(|a| a == "--token-cache-dir").unwrap();
        args[at + 1] = dir.display().to_string();
        args
    };
    let check = |what: &str, out: &Output| {
        assert!(out.success(), "{what}: {}", out.stderr);
        assert_eq!(
            out.stdout_json()["auth"]["docker.cloudsmith.io"]["password"],
            json!(password),
            "{what}"
        );
        let lines = out.stderr_lines();
        assert!(lines.len() <= 1, "{what}: {lines:?}");
        assert!(
            lines.iter().all(|l| l.starts_with("warning: token cache: ")),
            "{what}: {lines:?}"
        );
        testkit::process::assert_no_secret(&[&out.stderr], &[&w.oidc_token, &password]);
    };

    // A path under a regular file: nothing can be created there.
    let file = w.file("a-file", "x");
    let out = run(&bin, &args_with(&file.join("tokens")), &[], &request, &home).await;
    check("under a regular file", &out);
    assert_eq!(out.stderr_lines().len(), 1, "it says why once: {}", out.stderr);

    // Mounts private to one run: (case, directory, setup in the run's mount namespace).
    let table = [
        // Root ignores permission bits, not a read-only mount.
        (
            "read-only mount",
            "read-only",
            "mount --bind \"$D\" \"$D\"; mount -o remount,bind,ro \"$D\"",
        ),
        // The directory and lock file fit, the entry does not.
        (
            "full tmpfs",
            "full",
            "mount -t tmpfs -o size=12k tmpfs \"$D\"; mkdir -m 0700 \"$D/tokens\"; \
             head -c 1048576 /dev/zero > \"$D/fill\" 2>/dev/null || true",
        ),
    ];
    for (what, name, setup) in table {
        let dir = w.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let before = w.requests();
        let out = run_mounted(
            setup,
            &dir,
            &bin,
            &args_with(&dir.join("tokens")),
            &request,
            &home,
        )
        .await;
        check(what, &out);
        assert_eq!(w.requests(), before + 1, "{what}: it exchanged");
        assert!(
            !dir.join("fill").exists(),
            "{what}: the mount was private to the run"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_name_the_claims() {
    let w = World::with(StandInConfig {
        trusted: vec![Trusted::new(
            testkit::oidc::ISSUER,
            "system:serviceaccount:other:*",
        )],
        ..Default::default()
    })
    .await;
    let home = w.dir.path().to_path_buf();
    let claims = format!(
        "the token's iss={}, sub={SUBJECT}, aud={PRODUCTION_AUDIENCE}: the Cloudsmith OIDC service must trust this issuer and subject",
        testkit::oidc::ISSUER
    );
    let parts: Vec<String> = w.oidc_token.split('.').map(str::to_string).collect();

    let manifest = w.bare_manifest(ORG);
    let request = kubelet_request(
        "docker.cloudsmith.io/my-organization/prod/app:1.0",
        Some(&w.oidc_token),
    );
    let out = run(
        &testkit::tools::cloudsmith_gen(),
        &kubelet_args(&w, &manifest, &[]),
        &[],
        &request,
        &home,
    )
    .await;
    assert_fails(&out, 5, &claims, &parts, "kubelet provider");

    let token_file = w.token_file.display().to_string();
    let env = helper_env(ORG, &w.url, &token_file);
    let out = run(
        &helper_link(&w),
        &strings(&["get"]),
        &env,
        "docker.cloudsmith.io",
        &home,
    )
    .await;
    assert_helper_fails(&out, 5, &claims, &parts, "docker helper");
}
