//! Suite docker_client: `docker-credential-cloudsmith` driven by Docker's own helper
//! client and go-containerregistry's keychains, the code docker, skopeo, podman, buildah
//! and crane run, not by a reading of the protocol.
//!
//! The driver, `harness/cmd/docker-helper-client` (Go module `harness/`), calls
//! docker-credential-helpers v0.9.13 `client.Get(client.NewShellProgramFunc(...))`, and
//! go-containerregistry v0.22.1's `authn.NewKeychainFromHelper` over it and
//! `authn.DefaultKeychain` (crane's own: `credHelpers` in Docker's `config.json`, run by
//! docker/cli's `nativeStore`), and prints what each returned. The helper is installed as
//! a user installs it (`cloudsmith-gen install docker-credential-helper`: the lean helper
//! linked on `PATH`, `cloudsmith-gen` beside it, `credHelpers` written). Cloudsmith is the
//! stand-in: the real API cannot be asked to refuse on demand. The registry is Debian's
//! distribution 2.8 with token auth whose token service accepts the stand-in's access
//! tokens (`testkit::registry::TokenServer::trusting_cloudsmith`).
//!
//! | test | what it proves |
//! |---|---|
//! | [`a_cloudsmith_registry_gets_credentials_and_crane_pulls_with_them`] | `client.Get` returns user `token` and the access token; both keychains resolve to them; crane's path pulls the image from the real registry with them |
//! | [`another_registry_is_not_found_so_the_client_pulls_anonymously`] | `client.Get` returns `ErrCredentialsNotFound`; both keychains resolve to `Anonymous`; crane's path pulls from an open registry; no exchange |
//! | [`a_refusal_reaches_the_client_with_its_reason`] | Cloudsmith's 401 and 403: the error `client.Get` returns, and crane's pull fails with, carries our one line with the status and `detail`, never a token; `NewKeychainFromHelper` drops it |
//! | [`a_get_without_a_server_url_is_the_protocols_error`] | blank stdin: the message of `ErrCredentialsMissingServerURL`, as `credentials.Serve` answers, which `client.Get` recognizes |

use std::path::PathBuf;
use std::time::Duration;

use e2e_tests::{cloudsmith_registry, now};
use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, Scenario, StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::process::{find_secret, Output};
use testkit::registry::{Artifact, Distribution};

const ORG: &str = "my-organization";
const SERVICE: &str = "my-oidc-service";
const SUBJECT: &str = "system:serviceaccount:apps:puller";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// docker-credential-helpers v0.9.13 `credentials/error.go` `errCredentialsNotFoundMessage`.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// The stand-in, a scratch directory with the helper installed as a user installs it,
/// and an OIDC token file.
struct World {
    cloudsmith: StandIn,
    dir: tempfile::TempDir,
    oidc_token: String,
    exp: u64,
}

impl World {
    /// The stand-in issuing tokens valid 6 hours; the helper installed for `registries`
    /// besides docker.cloudsmith.io (which `install` writes into `credHelpers`).
    async fn new(registries: &[&str]) -> World {
        let exp = now() + 6 * 3600;
        let cloudsmith = StandIn::start(StandInConfig {
            token_exp: exp,
            ..Default::default()
        })
        .await
        .expect("stand-in");
        let dir = tempfile::tempdir().expect("tempdir");
        let oidc_token = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
        std::fs::write(dir.path().join("oidc-token"), &oidc_token).unwrap();
        for sub in ["bin", "docker", "xdg", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let w = World {
            cloudsmith,
            dir,
            oidc_token,
            exp,
        };
        let mut install = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
        install
            .args(["install", "docker-credential-helper", "--dir"])
            .arg(w.path("bin"));
        for registry in registries {
            install.args(["--registry", registry]);
        }
        w.environment(&mut install, ORG);
        let out = testkit::process::run(install, None, RUN_TIMEOUT).await.unwrap();
        assert!(out.success(), "install: {}", out.stderr);
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The helper's environment for `org`, and a `HOME`, Docker config, `PATH` and cache
    /// of the world's own; nothing of the user's leaks in.
    fn environment(&self, command: &mut tokio::process::Command, org: &str) {
        for (name, _) in std::env::vars() {
            if name.starts_with("CLOUDSMITH_")
                || ["DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "SSL_CERT_FILE"].contains(&name.as_str())
            {
                command.env_remove(name);
            }
        }
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .env("HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("xdg"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env("XDG_RUNTIME_DIR", self.path("home/run"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("PATH", path)
            .env("CLOUDSMITH_ORG", org)
            .env("CLOUDSMITH_SERVICE_SLUG", SERVICE)
            .env("CLOUDSMITH_API_HOST", self.cloudsmith.url())
            .env("CLOUDSMITH_OIDC_TOKEN_FILE", self.path("oidc-token"));
    }

    /// The registries routed to the helper in Docker's config.json, as `install` wrote them.
    fn cred_helpers(&self) -> Value {
        let text = std::fs::read_to_string(self.path("docker/config.json")).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["credHelpers"].clone()
    }

    /// Runs the driver: `client.Get` for `server`, the keychains for `registry` (default:
    /// `server`), and crane's pull of `pull`; the helper runs as `org`'s, with
    /// `registries` configured (CLOUDSMITH_REGISTRIES).
    async fn client(&self, org: &str, registries: &str, server: &str, pull: Option<&str>) -> (Value, Output) {
        let mut command = tokio::process::Command::new(testkit::tools::harness_bin("docker-helper-client"));
        // A name on PATH, as docker/cli's nativeStore names it ("docker-credential-" + the
        // credHelpers value).
        command.args(["--helper", "docker-credential-cloudsmith", "--server", server]);
        if let Some(reference) = pull {
            command.args(["--pull", reference]);
        }
        self.environment(&mut command, org);
        command.env("CLOUDSMITH_REGISTRIES", registries);
        let out = testkit::process::run(command, None, RUN_TIMEOUT).await.unwrap();
        assert!(out.success(), "driver: {}\n{}", out.stderr, out.stdout);
        (out.stdout_json(), out)
    }

    fn access_token(&self, org: &str) -> String {
        access_token_for(SUBJECT, org, SERVICE, self.exp)
    }

    /// Everything no output may show: the OIDC token (each part) and the access tokens.
    fn secrets(&self, orgs: &[&str]) -> Vec<String> {
        let mut secrets: Vec<String> = self.oidc_token.split('.').map(str::to_string).collect();
        secrets.extend(orgs.iter().map(|org| self.access_token(org)));
        secrets
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloudsmith_registry_gets_credentials_and_crane_pulls_with_them() {
    let repository = format!("{ORG}/app");
    let (tokens, registry, image) = cloudsmith_registry(&repository).await;
    let authority = registry.authority();
    let w = World::new(&[&authority]).await;
    assert_eq!(
        w.cred_helpers(),
        json!({"docker.cloudsmith.io": "cloudsmith", authority.clone(): "cloudsmith"})
    );
    let secret = w.access_token(ORG);

    let reference = format!("{authority}/{repository}:1");
    let (report, out) = w.client(ORG, &authority, &authority, Some(&reference)).await;
    // client/client.go Get: the helper's stdout decoded into credentials.Credentials.
    assert_eq!(
        report["client_get"],
        json!({"server_url": authority, "username": "token", "secret": secret, "not_found": false, "missing_server_url": false}),
        "{}",
        out.stderr
    );
    // pkg/authn/keychain.go: NewKeychainFromHelper's wrapper and DefaultKeychain (docker/cli
    // config.json credHelpers, nativeStore.Get) resolve to the same Basic credentials.
    for keychain in ["helper_keychain", "default_keychain"] {
        assert_eq!(
            report[keychain],
            json!({"anonymous": false, "username": "token", "password": secret}),
            "{keychain}"
        );
    }
    // crane's pull (pkg/v1/remote with DefaultKeychain) through the registry's token realm.
    assert_eq!(
        report["pull"],
        json!({"digest": image.digest(), "layers": image.layer_digests(),
               "bytes": report["pull"]["bytes"]}),
        "{}",
        registry.log()
    );
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.user.as_deref() == Some("token") && r.granted.is_some()));
    assert_eq!(
        w.cloudsmith.request_count(),
        1,
        "one exchange, then the token cache"
    );

    // docker.cloudsmith.io, the default registry, as a URL the way docker/cli writes it.
    let (report, _) = w
        .client(ORG, &authority, "https://docker.cloudsmith.io/v1/", None)
        .await;
    assert_eq!(report["client_get"]["secret"], json!(secret));
    assert_eq!(
        report["client_get"]["server_url"],
        "https://docker.cloudsmith.io/v1/"
    );
    let (report, _) = w.client(ORG, &authority, "docker.cloudsmith.io", None).await;
    assert_eq!(
        report["default_keychain"],
        json!({"anonymous": false, "username": "token", "password": secret})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_registry_is_not_found_so_the_client_pulls_anonymously() {
    let open = Distribution::open().await;
    let image = Artifact::container_image();
    open.push("library/app", "1", &image, None)
        .await
        .unwrap_or_else(|e| panic!("push: {e:#}\n{}", open.log()));
    let other = open.authority();
    // The user routed this registry to the helper too, but it is not one of the helper's
    // Cloudsmith registries (CLOUDSMITH_REGISTRIES): the helper says "not found".
    let w = World::new(&[&other]).await;
    let reference = format!("{other}/library/app:1");
    let (report, out) = w
        .client(ORG, "registry.acme.example", &other, Some(&reference))
        .await;
    // client/client.go Get: IsErrCredentialsNotFoundMessage(stdout) -> NewErrCredentialsNotFound.
    assert_eq!(
        report["client_get"],
        json!({"error": NOT_FOUND, "not_found": true, "missing_server_url": false})
    );
    // docker/cli nativeStore.Get turns it into empty credentials, which DefaultKeychain
    // answers as Anonymous; NewKeychainFromHelper answers Anonymous for any error.
    assert_eq!(report["default_keychain"], json!({"anonymous": true}));
    assert_eq!(
        report["helper_keychain"],
        json!({"anonymous": true, "helper_error": NOT_FOUND})
    );
    assert_eq!(
        (report["pull"]["digest"].as_str(), report["pull"].get("error")),
        (Some(image.digest()), None),
        "crane pulled anonymously: {}",
        report["pull"]
    );
    assert_eq!(
        w.cloudsmith.request_count(),
        0,
        "no exchange for another registry"
    );
    assert!(
        out.stderr.is_empty(),
        "the helper said nothing on stderr: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_reaches_the_client_with_its_reason() {
    let repository = format!("{ORG}/app");
    let (_tokens, registry, _) = cloudsmith_registry(&repository).await;
    let authority = registry.authority();
    let w = World::new(&[&authority]).await;
    let reference = format!("{authority}/{repository}:1");
    for scenario in [Scenario::Fail401, Scenario::Fail403] {
        let (status, detail) = (scenario.status().unwrap(), scenario.detail().unwrap());
        let org = scenario.org();
        let (report, out) = w.client(org, &authority, &authority, Some(&reference)).await;
        let error = report["client_get"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // client/client.go Get: fmt.Errorf("error getting credentials - err: %v, out: `%s`",
        // err, strings.TrimSpace(string(out))) with out the helper's stdout: our line.
        let prefix = "error getting credentials - err: exit status 5, out: `";
        let reason = error
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('`'))
            .unwrap_or_else(|| panic!("{org}: {error}"));
        assert!(
            reason.starts_with(&format!(
                "Cloudsmith rejected the credentials ({status}): {detail}"
            )),
            "{org}: {reason}"
        );
        assert!(reason.contains(&format!("sub={SUBJECT}")), "{reason}");
        assert_eq!(
            (
                report["client_get"]["not_found"].as_bool(),
                report["client_get"]["missing_server_url"].as_bool()
            ),
            (Some(false), Some(false))
        );
        // The helper's stderr reached the client's stderr, as `error: <reason>`.
        assert!(out.stderr.contains(&format!("error: {reason}")), "{}", out.stderr);
        // crane's path: DefaultKeychain returns nativeStore's error, and the pull fails with it.
        assert_eq!(report["default_keychain"]["error"], json!(error));
        let pull = report["pull"]["error"].as_str().unwrap_or_default();
        assert!(pull.contains(reason), "{org}: the pull's error {pull}");
        // pkg/authn/keychain.go wrapper.ResolveContext: any helper error becomes Anonymous;
        // only the helper's stderr, on a terminal, shows the reason then.
        assert_eq!(report["helper_keychain"]["anonymous"], json!(true));
        assert_eq!(report["helper_keychain"]["helper_error"], json!(error));
        let secrets = w.secrets(&[org, ORG]);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_eq!(find_secret(&[&out.stdout, &out.stderr], &secrets), None, "{org}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_without_a_server_url_is_the_protocols_error() {
    let w = World::new(&[]).await;
    let (report, _) = w.client(ORG, "", "", None).await;
    // credentials/credentials.go Get answers blank stdin with
    // NewErrCredentialsMissingServerURL; client/client.go Get recognizes that message on
    // stdout (isValidCredsMessage) and names it as the error, in place of the exit status
    // (formatted with %v: the type itself does not survive).
    assert_eq!(
        report["client_get"],
        json!({"error": "error getting credentials - err: no credentials server URL, out: `no credentials server URL`",
               "not_found": false, "missing_server_url": false})
    );
}
