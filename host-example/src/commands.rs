//! The `generate` and `info` commands of the `cloudsmith-gen` binary: read inputs, set up
//! the generator from the flags, run it, print the result.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use host_example::cache::{self, ArtifactCache, CacheOutcome};
use host_example::sandbox::{self, EngineOptions, Limits, WasiGrants};
use host_example::token_source::{EnvTokenSource, FileTokenSource, KubernetesTokenSource};
use host_example::{
    output, CallReport, Credentials, Generator, GeneratorOptions, NamespacePolicy, OutboundPolicy,
    TimeoutCaps, TokenSource, Traced, COMPONENT,
};

use crate::{manifest, Failure, GenerateArgs, InfoArgs, OutputArgs, OutputFormat, RuntimeArgs, TokenArgs};

/// A manifest is a few hundred bytes; refuse to buffer a runaway stdin.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

pub async fn generate(args: GenerateArgs, verbose: bool) -> Result<(), Failure> {
    let manifest = read_manifest(&args.manifest, args.generator.as_deref()).map_err(Failure::Usage)?;
    let tokens = token_source(&args.tokens);
    let namespaces = if args.tokens.allow_cross_namespace {
        NamespacePolicy::AllowCrossNamespace
    } else {
        NamespacePolicy::TargetOnly
    };
    let cache = crate::doors::token_cache(args.cache.token_cache, args.cache.token_cache_dir.as_deref());
    let identity = cache
        .as_ref()
        .and_then(|_| crate::doors::generate_identity(&args, &manifest));
    let request = crate::doors::MintRequest {
        manifest,
        namespace: args.namespace.clone(),
        tokens,
        identity,
        namespaces,
    };
    let minted = crate::doors::mint(request, &args.runtime, cache.as_ref(), verbose).await?;
    print_credentials(&minted.credentials, &args.output, &args.namespace)
}

pub async fn info(args: InfoArgs, verbose: bool) -> Result<(), Failure> {
    // `info` never asks for a token (the host refuses outside `generate`), and this
    // source connects only when asked, so no kubeconfig is needed.
    let tokens: Arc<dyn TokenSource> = Arc::new(KubernetesTokenSource::new(None));
    let generator = load(&args.runtime, tokens, NamespacePolicy::TargetOnly, verbose)?;
    let info = generator.info().await.map_err(Failure::Call)?;
    let json = serde_json::to_string_pretty(&info).map_err(|e| Failure::Other(e.into()))?;
    print(&json)
}

/// Reads the manifest (YAML or JSON, one document or several) and converts its
/// generator document to the JSON the guest takes; `generator` is `--generator NAME`.
pub fn read_manifest(path: &Path, generator: Option<&str>) -> anyhow::Result<String> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .context("manifest from stdin: not readable as UTF-8 text")?;
        ("stdin".to_string(), text)
    } else {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).with_context(|| format!("manifest {name}"))?;
        if !meta.is_file() {
            bail!("manifest {name}: not a regular file");
        }
        let text = std::fs::read(path).with_context(|| format!("manifest {name}"))?;
        let text = String::from_utf8(text).map_err(|_| anyhow!("manifest {name}: not UTF-8"))?;
        (name, text)
    };
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        bail!("manifest {name}: larger than {MAX_MANIFEST_BYTES} bytes");
    }
    manifest::to_json(&text, generator).with_context(|| format!("manifest {name}"))
}

fn token_source(args: &TokenArgs) -> Arc<dyn TokenSource> {
    if let Some(path) = &args.oidc_token_file {
        Arc::new(FileTokenSource::new(path))
    } else if let Some(var) = &args.oidc_token_env {
        Arc::new(EnvTokenSource::new(var))
    } else {
        // Built lazily: a composed component that never asks needs no kubeconfig.
        Arc::new(KubernetesTokenSource::new(args.kubeconfig.clone()))
    }
}

/// Builds the engine (no pooling: one call per process), loads the component through
/// the cache, and links the generator with the policy and limits from the flags.
pub fn load(
    args: &RuntimeArgs,
    tokens: Arc<dyn TokenSource>,
    namespaces: NamespacePolicy,
    verbose: bool,
) -> Result<Generator, Failure> {
    load_with(args, tokens, namespaces, verbose, None)
}

/// [`load`], on a pooled engine with `pool` call slots when given (a long-lived server:
/// instantiation from preallocated slots, and calls beyond the slots wait).
pub fn load_with(
    args: &RuntimeArgs,
    tokens: Arc<dyn TokenSource>,
    namespaces: NamespacePolicy,
    verbose: bool,
    pool: Option<u32>,
) -> Result<Generator, Failure> {
    let options = options(args, namespaces).map_err(Failure::Usage)?;
    let memory = options.limits.memory_bytes;
    let engine = sandbox::engine(&EngineOptions {
        pooling: pool.is_some(),
        max_concurrent_calls: pool.unwrap_or(1),
        max_memory_bytes: memory,
        ..Default::default()
    })
    .map_err(Failure::Other)?;

    let (bytes, origin) = match &args.component {
        Some(path) => (
            std::fs::read(path)
                .with_context(|| format!("component {}", path.display()))
                .map_err(Failure::Usage)?,
            path.display().to_string(),
        ),
        None => (COMPONENT.to_vec(), "embedded".to_string()),
    };
    let started = Instant::now();
    let (component, outcome) = match cache_for(args) {
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
        note(&format!("token source: {}", generator.token_source()));
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

pub(crate) fn options(args: &RuntimeArgs, namespaces: NamespacePolicy) -> anyhow::Result<GeneratorOptions> {
    let mut policy = OutboundPolicy::default()
        .allow_http(args.allow_http)
        .timeouts(TimeoutCaps {
            connect: args.connect_timeout,
            first_byte: args.first_byte_timeout,
            between_bytes: args.first_byte_timeout,
        });
    for authority in &args.allow_hosts {
        policy = policy.allow(authority.clone());
    }
    if let Some(ca) = &args.ca_file {
        policy = policy.extra_ca_file(ca)?;
    }
    for (host, _) in &args.wasi_dirs {
        if !host.is_dir() {
            bail!("--wasi-dir {}: not a directory", host.display());
        }
    }
    Ok(GeneratorOptions {
        policy,
        limits: Limits {
            memory_bytes: args.memory_limit as usize * 1024 * 1024,
            deadline: args.deadline,
            ..Limits::default()
        },
        wasi: WasiGrants {
            dirs: args.wasi_dirs.clone(),
            env: args.wasi_env.clone(),
        },
        namespaces,
        max_concurrent_calls: 1,
    })
}

fn cache_for(args: &RuntimeArgs) -> Option<ArtifactCache> {
    if args.no_cache {
        return None;
    }
    args.cache_dir
        .clone()
        .or_else(ArtifactCache::default_dir)
        .map(ArtifactCache::new)
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

/// Prints the report when verbose, then turns the result into the command's.
pub fn finish(traced: Traced<Credentials>, verbose: bool) -> Result<Credentials, Failure> {
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

/// Guest output must not drive the terminal.
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

pub fn print_credentials(
    credentials: &Credentials,
    args: &OutputArgs,
    namespace: &str,
) -> Result<(), Failure> {
    let text = match args.output {
        OutputFormat::Json => output::eso_json(credentials),
        OutputFormat::Dockerconfigjson => output::docker_config_json(credentials, &args.registry),
        OutputFormat::Secret => {
            output::secret_manifest(credentials, &args.secret_name, namespace, &args.registry)
        }
    };
    print(&text)
}

fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(Failure::Other)
}

/// A `-v` line on stderr.
pub fn note(line: &str) {
    eprintln!("cloudsmith-gen: {line}");
}
