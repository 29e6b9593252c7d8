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
use host_example::cache::{self, ArtifactCache, CacheOutcome};
use host_example::sandbox::{self, EngineOptions};
use host_example::{
    CallReport, Credentials, Generator, GeneratorOptions, Limits, NamespacePolicy, OutboundPolicy,
    TokenSource, Traced, WasiGrants, COMPONENT,
};

use crate::failure::Failure;
use crate::manifest;

/// A manifest is a few hundred bytes; refuse to buffer a runaway file or stdin.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

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

/// What runs a call: the component, its compile cache, the outbound policy, the
/// sandbox's limits and grants. [`Default`] is what `generate` runs with no flags.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// A component file in place of the embedded generator (a composed component).
    pub component: Option<PathBuf>,
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

/// Builds the engine (pooled with `slots` call slots for a long-lived server, else one
/// call per process), loads the component through the compile cache, and links the
/// generator.
pub fn load(
    config: &RuntimeConfig,
    tokens: Arc<dyn TokenSource>,
    namespaces: NamespacePolicy,
    slots: Option<u32>,
    verbose: bool,
) -> Result<Generator, Failure> {
    let options = GeneratorOptions {
        policy: config.policy.clone(),
        limits: config.limits.clone(),
        wasi: config.wasi.clone(),
        namespaces,
        max_concurrent_calls: 1,
    };
    let engine = sandbox::engine(&EngineOptions {
        pooling: slots.is_some(),
        max_concurrent_calls: slots.unwrap_or(1),
        max_memory_bytes: options.limits.memory_bytes,
        ..Default::default()
    })
    .map_err(Failure::Other)?;

    let (bytes, origin) = match &config.component {
        Some(path) => (
            std::fs::read(path)
                .with_context(|| format!("component {}", path.display()))
                .map_err(Failure::Usage)?,
            path.display().to_string(),
        ),
        None => (COMPONENT.to_vec(), "embedded".to_string()),
    };
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
    if verbose {
        note(&format!(
            "component: {origin} ({} bytes), {} in {:?}",
            bytes.len(),
            describe_cache(&outcome),
            started.elapsed()
        ));
    }
    let generator = Generator::new(&engine, &component, tokens, options)
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

fn describe_cache(outcome: &CacheOutcome) -> String {
    match outcome {
        CacheOutcome::Disabled => "compiled (cache off)".into(),
        CacheOutcome::Hit(p) => format!("loaded from cache {}", p.display()),
        CacheOutcome::Stored(p) => format!("compiled and cached at {}", p.display()),
        CacheOutcome::NotStored(why) => format!("compiled (not cached: {why})"),
        CacheOutcome::Recovered(why) => format!("compiled (cache entry replaced: {why})"),
    }
}

/// Reads at most `max` bytes of `input`; more is a usage failure naming `what`. The one
/// bounded reader: stdin of every door, and manifest files.
pub fn read_bounded(input: impl Read, max: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    input
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::usage(format!("reading {what}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(Failure::usage(format!("{what} is larger than {max} bytes")));
    }
    Ok(bytes)
}

/// Reads a manifest file (YAML or JSON, one document or several) and converts its
/// generator document (`generator`: `--generator NAME`) to the JSON the guest takes.
pub fn read_manifest(path: &Path, generator: Option<&str>) -> Result<String, Failure> {
    let bytes = read_manifest_file(path).map_err(Failure::Usage)?;
    manifest_json(&format!("manifest {}", path.display()), bytes, generator)
}

/// The bytes of a manifest file: a regular file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_manifest_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = format!("manifest {}", path.display());
    let meta = std::fs::metadata(path).with_context(|| name.clone())?;
    if !meta.is_file() {
        anyhow::bail!("{name}: not a regular file");
    }
    let file = std::fs::File::open(path).with_context(|| name.clone())?;
    read_bounded(file, MAX_MANIFEST_BYTES, &name).map_err(|f| anyhow::anyhow!(f.message()))
}

/// [`read_manifest`] of bytes already read (`name` says where from, for errors).
pub fn manifest_json(name: &str, bytes: Vec<u8>, generator: Option<&str>) -> Result<String, Failure> {
    let text = String::from_utf8(bytes).map_err(|_| Failure::usage(format!("{name}: not UTF-8")))?;
    manifest::to_json(&text, generator)
        .with_context(|| name.to_string())
        .map_err(Failure::Usage)
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
