//! Debian's `docker-registry` (CNCF distribution 2.8) as a child process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::CertificateDer;

use super::client::{self, Endpoint, Session};
use super::Artifact;
use crate::tls::TestCa;

/// The realm of the htpasswd registries (`auth.htpasswd.realm`), which their
/// `WWW-Authenticate: Basic realm="..."` challenge names; also the default realm of
/// [`super::Fault::Unauthorized`].
pub const HTPASSWD_REALM: &str = "testkit-registry";

/// How long a registry may take to listen and answer `/v2/` before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How the registry authenticates clients (its `auth` section).
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No `auth` section: anyone may pull and push.
    #[default]
    None,
    /// `auth.htpasswd` with one user (bcrypt, from `htpasswd -B`), realm [`HTPASSWD_REALM`].
    Htpasswd {
        /// The user name.
        user: String,
        /// The password (bcrypt compares at most its first 72 bytes; `htpasswd` takes
        /// at most 255).
        password: String,
    },
    /// `auth.token`: Bearer tokens from a token service ([`super::TokenServer::auth`]).
    Token(TokenAuth),
}

impl Auth {
    /// [`Auth::Htpasswd`] for `user` and `password`.
    pub fn htpasswd(user: &str, password: &str) -> Auth {
        Auth::Htpasswd {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// The `auth.token` options of a registry (registry/auth/token/accesscontroller.go,
/// `checkOptions`: `realm`, `service`, `issuer`, `rootcertbundle`, all required).
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// Where clients get tokens (the challenge's `realm`).
    pub realm: String,
    /// The registry's name as a token audience (the challenge's `service`; a token's
    /// `aud` must equal it).
    pub service: String,
    /// The only `iss` the registry accepts.
    pub issuer: String,
    /// PEM certificates whose keys (or whose chains) sign valid tokens.
    pub root_cert_bundle: PathBuf,
    /// The CA of the realm's certificate, when the realm is HTTPS (for
    /// [`Distribution::push`]; the registry itself never calls the realm).
    pub realm_ca: Option<CertificateDer<'static>>,
}

/// How to start a [`Distribution`].
#[derive(Debug, Clone, Default)]
pub struct DistributionConfig {
    /// Who may pull and push.
    pub auth: Auth,
    /// Serve HTTPS with a fresh [`TestCa`] certificate for `127.0.0.1` and `localhost`
    /// (`http.tls.certificate` / `http.tls.key`).
    pub tls: bool,
    /// `storage.filesystem.rootdirectory`; `None`: a directory of the registry's own.
    /// Registries given the same directory serve the same repositories (e.g. an
    /// htpasswd one and an open one), and share `http.secret`, so an upload may even
    /// start on one and finish on another.
    pub data_dir: Option<PathBuf>,
    /// `storage.maintenance.readonly.enabled`: pulls only; pushes get 405 (what
    /// [`super::FaultyRegistry`] models).
    pub read_only: bool,
}

/// A running `docker-registry serve`, killed when dropped.
#[derive(Debug)]
pub struct Distribution {
    child: std::process::Child,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    port: u16,
    ca: Option<TestCa>,
    auth: Auth,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Distribution {
    /// Starts a registry on `127.0.0.1` (`http.addr: 127.0.0.1:0`: the OS picks the
    /// port, read back from the registry's `listening on` log line) and waits until
    /// `/v2/` answers (200, or 401 with auth on).
    ///
    /// Panics, with the registry's log, if it does not come up within 30 s: a test
    /// helper, where that is the failure.
    pub async fn start(config: DistributionConfig) -> Distribution {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("testkit: docker-registry did not start: {e:#}"))
    }

    /// [`Distribution::start`] without a configuration: open, plain HTTP, its own data.
    pub async fn open() -> Distribution {
        Self::start(DistributionConfig::default()).await
    }

    async fn try_start(config: DistributionConfig) -> anyhow::Result<Distribution> {
        let dir = tempfile::Builder::new().prefix("testkit-registry-").tempdir()?;
        let data_dir = match &config.data_dir {
            Some(d) => d.clone(),
            None => dir.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir)?;
        // YAML accepts JSON strings: paths are quoted whatever they hold.
        let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string");
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n\
             {read_only}\
             http:\n  addr: 127.0.0.1:0\n  secret: testkit-shared-http-secret\n",
            data = quote(&data_dir),
            read_only = if config.read_only {
                "  maintenance:\n    readonly:\n      enabled: true\n"
            } else {
                ""
            },
        );
        let ca = if config.tls {
            let ca = TestCa::try_new()?;
            let (cert, key) = ca.write_server_pem(dir.path())?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                quote(&cert),
                quote(&key)
            ));
            Some(ca)
        } else {
            None
        };
        match &config.auth {
            Auth::None => {}
            Auth::Htpasswd { user, password } => {
                let out = std::process::Command::new(crate::tools::htpasswd())
                    .args(["-Bbn", user, password])
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "htpasswd: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: {}\n    path: {}\n",
                    serde_json::to_string(HTPASSWD_REALM)?,
                    quote(&file)
                ));
            }
            Auth::Token(token) => yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                serde_json::to_string(&token.realm)?,
                serde_json::to_string(&token.service)?,
                serde_json::to_string(&token.issuer)?,
                quote(&token.root_cert_bundle),
            )),
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, yaml)?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = std::process::Command::new(crate::tools::docker_registry());
        command
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            // The access log goes to stdout, the rest to stderr: one file for both.
            .stdout(log.try_clone()?)
            .stderr(log);
        // The registry reads REGISTRY_* variables as configuration overrides.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn()?;
        let mut registry = Distribution {
            child,
            dir,
            data_dir,
            port: 0,
            ca,
            auth: config.auth,
        };
        let deadline = Instant::now() + READY_WITHIN;
        registry.port = loop {
            if let Some(port) = listening_port(&registry.log()) {
                break port;
            }
            if let Some(status) = registry.child.try_wait()? {
                anyhow::bail!("it exited ({status}):\n{}", registry.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no `listening on` line:\n{}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let endpoint = registry.endpoint();
        loop {
            let status = endpoint
                .send("GET", "/v2/", &[], Bytes::new())
                .await
                .map(|r| r.status);
            if let Ok(200 | 401) = status {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                anyhow::bail!("it exited ({status}):\n{}", registry.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "/v2/ never answered 200 or 401 (last: {status:?}):\n{}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The registry's log so far (its access log and application log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where the log is written.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The configuration file it runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// The CA of its certificate, with TLS.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// With TLS, a directory holding the CA as `ca.crt`: what `skopeo --cert-dir` (and
    /// containers' `certs.d/<host>`) reads.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        let ca = self.ca.as_ref()?;
        let dir = self.dir.path().join("certs.d");
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("ca.crt"), ca.ca_pem()).ok()?;
        Some(dir)
    }

    /// Uploads `artifact`'s blobs and then its manifest to `repository`, the manifest
    /// under `reference` (a tag, or the artifact's digest), through the registry API:
    /// what `component push` and `skopeo copy` do. `credentials` answer the registry's
    /// challenge (Basic, or Bearer through the token realm).
    pub async fn push(
        &self,
        repository: &str,
        reference: &str,
        artifact: &Artifact,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let realm_roots = match &self.auth {
            Auth::Token(TokenAuth {
                realm_ca: Some(ca), ..
            }) => vec![ca.clone()],
            _ => Vec::new(),
        };
        let mut session = Session::new(
            self.endpoint(),
            realm_roots,
            credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        );
        client::push(&mut session, repository, reference, artifact).await
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            https: self.ca.is_some(),
            authority: self.authority(),
            roots: self.ca.iter().map(|ca| ca.ca_der().clone()).collect(),
        }
    }
}

/// The port of registry/registry.go `ListenAndServe`'s `listening on 127.0.0.1:PORT`
/// (`, tls` follows with TLS).
fn listening_port(log: &str) -> Option<u16> {
    let rest = &log[log.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_listening_line() {
        let log = "time=\"x\" level=info msg=\"redis not configured\"\n\
                   time=\"x\" level=info msg=\"listening on 127.0.0.1:42023, tls\" go.version=go1.19.8\n";
        assert_eq!(listening_port(log), Some(42023));
        assert_eq!(listening_port("msg=\"listening on 127.0.0.1:80\""), Some(80));
        assert_eq!(listening_port("starting"), None);
    }
}
