//! Setting a call up from plain configuration: the component (embedded, or a file)
//! through the compiled-component cache, the generator's options, the manifest, and the
//! `-v` notes and call reports on stderr.
//!
//! Nothing here knows clap: `cli` converts flags into a [`RuntimeConfig`], and the
//! Docker helper builds one from its environment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cloudsmith_gen::cache::{self, ArtifactCache, CacheOutcome};
use cloudsmith_gen::oci::{self, ComponentRef, ComponentStore, OciError, Registry, RegistryOptions};
use cloudsmith_gen::policy::read_ca_file;
use cloudsmith_gen::registry_auth::{AuthError, DockerConfigFile, ExecHelpers, Login};
use cloudsmith_gen::sandbox::{self, EngineOptions};
use cloudsmith_gen::{
    CallReport, Credentials, Generator, GeneratorOptions, Limits, NamespacePolicy, OutboundPolicy, Secret,
    TokenRequest, TokenSource, TokenSourceError, Traced, WasiGrants, COMPONENT,
};
use cloudsmith_gen_core::docker::{env::COMPONENT as COMPONENT_VAR, CRED_HELPER};

use crate::failure::Failure;

pub use cloudsmith_gen_core::manifest::{self, read_file as read_manifest_file, MAX_MANIFEST_BYTES};

/// Where compiled components are kept between processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CompileCache {
    /// `$XDG_CACHE_HOME/cloudsmith-gen` or `~/.cache/cloudsmith-gen`.
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Compile on every run.
    Off,
}

/// A component in place of the embedded generator: `--component`, or the Docker
/// helper's `CLOUDSMITH_GENERATOR_COMPONENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// A file (a composed component, a plug).
    File(PathBuf),
    /// A registry's, pinned by digest (`oci://REGISTRY/REPOSITORY@sha256:DIGEST`).
    Oci(ComponentRef),
}

/// A `--component` value that names no component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadComponentSource {
    /// `oci://` and not a reference.
    #[error(transparent)]
    Reference(#[from] oci::BadReference),
    /// Nothing.
    #[error("an empty component path")]
    Empty,
}

impl ComponentSource {
    /// `oci://…` is a registry reference; anything else a file.
    pub fn parse(text: &str) -> Result<ComponentSource, BadComponentSource> {
        match ComponentRef::parse_uri(text) {
            Some(reference) => Ok(ComponentSource::Oci(reference?)),
            None if text.is_empty() => Err(BadComponentSource::Empty),
            None => Ok(ComponentSource::File(text.into())),
        }
    }
}

impl std::fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentSource::File(path) => write!(f, "{}", path.display()),
            ComponentSource::Oci(reference) => write!(f, "{}{reference}", oci::SCHEME),
        }
    }
}

/// What runs a call: the component, its compile cache, the outbound policy, the
/// sandbox's limits and grants. [`Default`] is what `generate` runs with no flags.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// A component in place of the embedded generator (a composed component).
    pub component: Option<ComponentSource>,
    /// The compiled-component cache.
    pub compile_cache: CompileCache,
    /// Which outbound requests the guest may make.
    pub policy: OutboundPolicy,
    /// Memory and deadline per call.
    pub limits: Limits,
    /// Read-only directories and variables granted to the guest.
    pub wasi: WasiGrants,
}

impl RuntimeConfig {
    /// Whether every token the call uses passes through this host. Not so with a
    /// component file or WASI grants: a composed component's plug may read a token
    /// the host never sees, so the token cache cannot key its answer.
    pub fn host_sees_tokens(&self) -> bool {
        self.component.is_none() && self.wasi.dirs.is_empty() && self.wasi.env.is_empty()
    }
}

/// The component a [`crate::mint::Minter`] runs: loaded and linked on its first miss,
/// then kept.
pub struct Component {
    /// What runs a call.
    pub config: RuntimeConfig,
    /// A pooled engine with this many call slots (a long-lived server), else one call.
    pub slots: Option<u32>,
    /// `-v`: the load's notes.
    pub verbose: bool,
}

impl crate::mint::Load for Component {
    type Exchange = Generator;

    async fn load(&self) -> Result<Generator, Failure> {
        load(&self.config, self.slots, self.verbose).await
    }
}

/// The generator's own token source: none. Every call through the mint port brings its
/// own ([`cloudsmith_gen::CallTokens`]), and `info` asks for none.
struct CallsBringTheirOwn;

#[async_trait::async_trait]
impl TokenSource for CallsBringTheirOwn {
    async fn token(&self, _request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        Err(TokenSourceError::new("this call brought no token source"))
    }

    fn describe(&self) -> String {
        "none (each call brings its own)".into()
    }
}

/// Builds the engine (pooled with `slots` call slots for a long-lived server, else one
/// call per process), loads the component through the compile cache, and links the
/// generator.
async fn load(config: &RuntimeConfig, slots: Option<u32>, verbose: bool) -> Result<Generator, Failure> {
    let options = GeneratorOptions {
        policy: config.policy.clone(),
        limits: config.limits.clone(),
        wasi: config.wasi.clone(),
        namespaces: NamespacePolicy::TargetOnly,
        max_concurrent_calls: 1,
    };
    let engine = sandbox::engine(&EngineOptions {
        pooling: slots.is_some(),
        max_concurrent_calls: slots.unwrap_or(1),
        max_memory_bytes: options.limits.memory_bytes,
        ..Default::default()
    })
    .map_err(Failure::Other)?;

    let (bytes, origin) = component_bytes(config, verbose).await?;
    let started = Instant::now();
    let cache = match &config.compile_cache {
        CompileCache::Off => None,
        CompileCache::Dir(dir) => Some(ArtifactCache::new(dir.clone())),
        CompileCache::Default => ArtifactCache::default_dir().map(ArtifactCache::new),
    };
    let (component, outcome) = match cache {
        Some(cache) => cache.load(&engine, &bytes),
        None => cache::compile(&engine, &bytes).map(|c| (c, CacheOutcome::Disabled)),
    }
    .with_context(|| format!("component {origin}"))
    .map_err(Failure::Usage)?;
    if let Some(warning) = outcome.warning() {
        warn(&warning);
    }
    if verbose {
        note(&format!(
            "component: {origin} ({} bytes), {} in {:?}",
            bytes.len(),
            describe_cache(&outcome),
            started.elapsed()
        ));
    }
    let generator = Generator::new(&engine, &component, Arc::new(CallsBringTheirOwn), options)
        .with_context(|| format!("component {origin}"))
        .map_err(Failure::Usage)?;
    if verbose {
        let o = generator.options();
        note(&format!("policy: {:?}", o.policy));
        note(&format!(
            "limits: memory {} MiB, deadline {:?}, wasi dirs {}, wasi env {}",
            o.limits.memory_bytes / (1024 * 1024),
            o.limits.deadline,
            o.wasi.dirs.len(),
            o.wasi.env.len()
        ));
    }
    Ok(generator)
}

/// The component's bytes and where they came from: embedded, a file, or a registry
/// (through the component store).
async fn component_bytes(config: &RuntimeConfig, verbose: bool) -> Result<(Vec<u8>, String), Failure> {
    match &config.component {
        None => Ok((COMPONENT.to_vec(), "embedded".to_string())),
        Some(ComponentSource::File(path)) => Ok((
            std::fs::read(path)
                .with_context(|| format!("component {}", path.display()))
                .map_err(Failure::Usage)?,
            path.display().to_string(),
        )),
        Some(ComponentSource::Oci(reference)) => {
            let started = Instant::now();
            let fetched = fetch(config, reference).await?;
            if verbose {
                note(&format!(
                    "component: {}{reference}: {} in {:?}",
                    oci::SCHEME,
                    if fetched.from_store {
                        "from the component store"
                    } else {
                        "fetched and verified"
                    },
                    started.elapsed()
                ));
            }
            Ok((fetched.bytes, format!("{}{reference}", oci::SCHEME)))
        }
    }
}

/// Fetches a pinned component, within the call's deadline. A tag is refused, naming the
/// digest it resolves to now: a sandboxed plugin that mints credentials must be the
/// bytes its operator reviewed, and a tag can be moved under every node at once.
async fn fetch(config: &RuntimeConfig, reference: &ComponentRef) -> Result<oci::Fetched, Failure> {
    let bound = config.limits.deadline;
    let registry = Registry::new(&registry_options(None, false, bound)?).map_err(Failure::usage)?;
    let within = |what: String| {
        move |_| {
            Failure::Registry(OciError::Unreachable(format!(
                "{what}: no answer within {bound:?}"
            )))
        }
    };
    // A credential helper is a process the host waits for: off the async threads, so
    // the deadline below still holds while it runs.
    let login = async || {
        let registry = reference.registry().to_string();
        tokio::task::spawn_blocking(move || registry_login(&registry))
            .await
            .unwrap_or_else(|e| {
                Err(AuthError::Helper(format!(
                    "asking for the registry's credentials: {e}"
                )))
            })
    };
    if reference.digest().is_none() {
        let resolve = async {
            let login = login().await?;
            oci::resolve(&registry, reference, &login).await
        };
        let resolved = tokio::time::timeout(bound, resolve)
            .await
            .map_err(within(format!("resolving {}{reference}", oci::SCHEME)))?
            .map_err(Failure::Registry)?;
        return Err(Failure::usage(format!(
            "--component {}{reference} names a tag, which can be moved: pin the component by digest, \
             --component {}{} (what the tag names now)",
            oci::SCHEME,
            oci::SCHEME,
            reference.pinned(&resolved)
        )));
    }
    let store = component_store(&config.compile_cache);
    let fetch = oci::fetch(
        &registry,
        reference,
        login,
        store.as_ref(),
        Instant::now() + bound / 2,
    );
    tokio::time::timeout(bound, fetch)
        .await
        .map_err(within(format!("fetching {}{reference}", oci::SCHEME)))?
        .map_err(Failure::Registry)
}

/// Where fetched components are kept: `oci/` in the compile cache's directory; none
/// with the compile cache off.
pub fn component_store(cache: &CompileCache) -> Option<ComponentStore> {
    let dir = match cache {
        CompileCache::Off => return None,
        CompileCache::Dir(dir) => dir.clone(),
        CompileCache::Default => cloudsmith_gen_core::dirs::cache_dir()?,
    };
    Some(ComponentStore::new(dir.join("oci")))
}

/// How the host reaches registries: the public roots, `SSL_CERT_FILE`'s and `ca_file`'s,
/// HTTPS unless `plain_http`, each wait bounded by `timeout` (at most 30 s).
pub fn registry_options(
    ca_file: Option<&Path>,
    plain_http: bool,
    timeout: std::time::Duration,
) -> Result<RegistryOptions, Failure> {
    let mut extra_roots = Vec::new();
    let ssl_cert_file = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    for (path, what) in [
        (ssl_cert_file.as_deref().map(Path::new), "SSL_CERT_FILE"),
        (ca_file, "--ca-file"),
    ] {
        if let Some(path) = path {
            extra_roots.extend(read_ca_file(path).map_err(|e| Failure::Usage(e.context(what)))?);
        }
    }
    Ok(RegistryOptions {
        extra_roots,
        plain_http,
        timeout: timeout.min(std::time::Duration::from_secs(30)),
    })
}

/// The login Docker would use for `registry` (Docker's config.json: `credHelpers`,
/// `credsStore`, `auths`); anonymous without a config. Our own helper is run without
/// `CLOUDSMITH_GENERATOR_COMPONENT`, so it mints with the embedded generator: the
/// credentials to fetch a component never come from that component.
pub fn registry_login(registry: &str) -> Result<Login, AuthError> {
    let helpers = ExecHelpers::from_process().without_env_for(CRED_HELPER, COMPONENT_VAR);
    let (_, config) = DockerConfigFile::from_environment(&helpers)?;
    config.login_for(registry, &helpers)
}

fn describe_cache(outcome: &CacheOutcome) -> String {
    match outcome {
        CacheOutcome::Disabled => "compiled (cache off)".into(),
        CacheOutcome::Hit(p) => format!("loaded from cache {}", p.display()),
        CacheOutcome::Stored(p) => format!("compiled and cached at {}", p.display()),
        CacheOutcome::NotStored(why) => format!("compiled (not cached: {why})"),
        CacheOutcome::Recovered(why) => format!("compiled (cache entry replaced: {why})"),
        CacheOutcome::Untrusted(why) => format!("compiled (cache not used: {why})"),
    }
}

/// [`cloudsmith_gen_core::read_bounded`], failing as a usage error: stdin of every door.
pub fn read_bounded(input: impl Read, max: u64, what: &str) -> Result<Vec<u8>, Failure> {
    cloudsmith_gen_core::read_bounded(input, max, what).map_err(Failure::usage)
}

/// [`manifest::read_to_json`], failing as a usage error.
pub fn read_manifest(path: &Path, generator: Option<&str>) -> Result<String, Failure> {
    manifest::read_to_json(path, generator).map_err(Failure::Usage)
}

/// [`manifest::bytes_to_json`], failing as a usage error.
pub fn manifest_json(name: &str, bytes: Vec<u8>, generator: Option<&str>) -> Result<String, Failure> {
    manifest::bytes_to_json(name, bytes, generator).map_err(Failure::Usage)
}

/// Prints the call's report when verbose, then turns its result into a command's.
pub fn settle(traced: Traced<Credentials>, verbose: bool) -> Result<Credentials, Failure> {
    if verbose {
        print_report(&traced.report);
        if let Ok(credentials) = &traced.result {
            note(&format!("result: {credentials}"));
        }
    }
    traced.result.map_err(Failure::Call)
}

fn print_report(report: &CallReport) {
    note(&format!(
        "instantiate {:?}, call {:?}",
        report.instantiate, report.call
    ));
    for line in &report.token_requests {
        note(line);
    }
    for r in &report.journal.requests {
        let outcome = match &r.outcome {
            Ok(status) => status.to_string(),
            Err(why) => why.clone(),
        };
        note(&format!("request: {} -> {outcome} in {:?}", r.request, r.elapsed));
    }
    for (name, text) in [("stdout", &report.guest_stdout), ("stderr", &report.guest_stderr)] {
        if text.trim().is_empty() {
            continue;
        }
        note(&format!("guest {name}:"));
        for line in text.lines() {
            note(&format!("  | {}", escape_controls(line)));
        }
    }
}

/// Guest output must not drive the terminal; unlike a one-line message, its spacing is
/// kept, so it is escaped rather than folded.
fn escape_controls(line: &str) -> String {
    line.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A `-v` line on stderr.
pub fn note(line: &str) {
    eprintln!("cloudsmith-gen: {line}");
}

/// Whether warnings are `tracing` events (`serve` logs every event as a JSON line)
/// rather than text.
static JSON_WARNINGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`warn`] a `tracing` event, which `serve`'s log writes as a JSON line.
pub fn warn_as_json() {
    JSON_WARNINGS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A warning on stderr, with or without `-v`: something did not work as configured, and
/// the command carried on without it. One line, nothing shaped like a token.
pub fn warn(line: &str) {
    let line = cloudsmith_gen::secret::one_line(line, 1000);
    if JSON_WARNINGS.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!(target: "cloudsmith_gen", "{line}");
    } else {
        eprintln!("cloudsmith-gen: warning: {line}");
    }
}
