//! `cloudsmith-gen`: mint Cloudsmith registry credentials from a `CloudsmithAccessToken`
//! manifest, by running the generator component in a sandbox.
//!
//! The binary's layers, each importing only those below it:
//! - `main` (this file): the process. It alone reads stdin and writes stdout, builds the
//!   async runtime, and turns a [`failure::Failure`] into the exit code;
//! - [`cli`]: clap's types, converted into the plain configurations below;
//! - [`doors`]: protocol adapters, `handle(input, &impl Mint, config)`;
//! - [`mint`]: the mint port (token cache, then the sandboxed generator);
//! - [`setup`]: loading the component and manifests, `-v` reports;
//! - [`failure`]: why a command failed, and its exit code.
//!
//! The library (`cloudsmith_gen`) is what any embedder of the component needs: the
//! generator, its policy and sandbox, token sources, the caches, the output formats, the
//! typed spec. The layers above stay in the binary because they are this program's
//! choices (flags, the doors' protocols, exit codes, stderr notes), not an embedder's.
//!
//! # Exit codes
//!
//! One per class of failure: [`failure::EXIT_CODES`] (what `--help` prints) and
//! [`failure::Failure::exit_code`]; docs/cli.md's table is tested against both.
//!
//! On failure stderr holds exactly one line, `error: <cause>` (more with `-v`).

mod cli;
mod doors;
mod failure;
mod mint;
mod setup;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser as _;
use cloudsmith_gen_core::token_cache::TokenCache;

use crate::cli::{Cli, Command, ComponentCommand, InstallCommand};
use crate::doors::docker::{self, DockerConfig};
use crate::doors::publish::{self, PushConfig};
use crate::doors::{check, generate, install, kubelet, serve, Reply};
use crate::failure::Failure;
use crate::mint::Minter;
use crate::setup::MAX_MANIFEST_BYTES;
use crate::setup::{read_bounded, RuntimeConfig};

/// Set while this process speaks the Docker credential helper protocol, whose failures
/// are reported on stdout too ([`fail`]).
static HELPER: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    // The kubelet's deadline counts from its exec.
    let started = Instant::now();
    // A panic must still end in one `error:` line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        fail(&format!(
            "internal error: {}",
            cloudsmith_gen::secret::one_line(&what, 300)
        ));
    }));
    // Invoked through a `docker-credential-cloudsmith` link or copy: the helper protocol,
    // `docker-credential-cloudsmith <action>`, with no other arguments.
    let result = if invoked_as_helper() {
        HELPER.store(true, Ordering::Relaxed);
        docker_helper()
    } else {
        match Cli::try_parse() {
            Ok(cli) => {
                if matches!(cli.command, Command::DockerCredentialHelper(_)) {
                    HELPER.store(true, Ordering::Relaxed);
                }
                command(cli, started)
            }
            Err(e) => {
                let (line, code) = cli::usage_error(e);
                if let Some(line) = line {
                    eprintln!("error: {line}");
                }
                return ExitCode::from(code);
            }
        }
    };
    match result.and_then(write) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            fail(&failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// The one `error:` line on stderr; as the Docker helper, the reason on stdout as well,
/// the one stream Docker's helper client reads ([`cloudsmith_gen_core::docker::report_failure`]).
fn fail(message: &str) {
    if HELPER.load(Ordering::Relaxed) {
        cloudsmith_gen_core::docker::report_failure(
            message,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        );
    } else {
        eprintln!("error: {message}");
    }
}

fn command(cli: Cli, started: Instant) -> Result<Reply, Failure> {
    let verbose = cli.verbose;
    match cli.command {
        Command::Generate(args) => {
            let runtime = RuntimeConfig::try_from(&args.call.runtime)?;
            let manifest = read_manifest(&args.call)?;
            let warning = generate::warning(&manifest);
            let cache = TokenCache::configured(args.cache.token_cache, args.cache.token_cache_dir.as_deref());
            let minter = Minter::new(runtime, cache, verbose);
            let config = (&*args).into();
            let reply = block_on(generate::handle(manifest, &minter, &config))?;
            // After a success only, when the user would take the manifest to work in ESO
            // too; a failure keeps its one `error:` line.
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            Ok(reply)
        }
        Command::Check(args) => {
            let config = check::CheckConfig::try_from(&*args)?;
            // A manifest that cannot be read is the report's first failed step.
            let manifest = read_manifest(&args.call);
            // No token cache: check asks Cloudsmith itself.
            let minter = Minter::new(config.runtime.clone(), None, verbose);
            block_on(check::handle(manifest, &minter, &config))
        }
        Command::Info(args) => {
            let runtime = RuntimeConfig::try_from(&args.runtime)?;
            block_on(generate::info(&Minter::new(runtime, None, verbose)))
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(async {
            let demo = doors::demo::Demo::start(&args.namespace, verbose).await?;
            let minter = Minter::new(demo.runtime()?, None, verbose);
            demo.handle(&minter, (&args.output).into()).await
        }),
        Command::KubeletCredentialProvider(args) => {
            let config = args.config(started, verbose)?;
            let runtime = RuntimeConfig::try_from(&args.runtime)?;
            let cache =
                TokenCache::configured(!args.cache.no_token_cache, args.cache.token_cache_dir.as_deref());
            let minter = Minter::new(runtime, cache, verbose);
            let request = read_bounded(
                std::io::stdin(),
                kubelet::MAX_REQUEST_BYTES,
                "the CredentialProviderRequest on stdin",
            )?;
            block_on(kubelet::handle(&request, &minter, &config))
        }
        Command::DockerCredentialHelper(args) => docker_action(&args.action, verbose),
        Command::Serve(args) => {
            let config = serve::ServeConfig::try_from(&*args)?;
            // One pooled engine for every caller.
            let minter = Minter::pooled(config.runtime.clone(), config.max_concurrent_calls, verbose);
            // Many callers at once: a worker per core.
            run_on(tokio::runtime::Builder::new_multi_thread(), async {
                serve::run(config, minter).await.map(|()| Reply::ok(""))
            })
        }
        Command::Install(InstallCommand::DockerCredentialHelper(args)) => {
            install::docker_credential_helper(&(&args).into(), &docker_env())
        }
        Command::Install(InstallCommand::KubeletCredentialProvider(args)) => {
            install::kubelet_credential_provider(&(&args).into())
        }
        Command::Component(ComponentCommand::Push(args)) => {
            let config = PushConfig::try_from(&args)?;
            let epoch = std::env::var(publish::SOURCE_DATE_EPOCH).ok();
            block_on(publish::push(&config, epoch.as_deref(), setup::registry_login))
        }
    }
}

/// The manifest of `--manifest` (a file, or `-`: stdin) as the guest's JSON.
fn read_manifest(args: &cli::CallArgs) -> Result<String, Failure> {
    let generator = args.generator.as_deref();
    if args.manifest == Path::new("-") {
        let bytes = read_bounded(std::io::stdin(), MAX_MANIFEST_BYTES, "the manifest on stdin")?;
        setup::manifest_json("manifest stdin", bytes, generator)
    } else {
        setup::read_manifest(&args.manifest, generator)
    }
}

/// The helper's own entry point (no clap: its protocol is one positional action).
fn docker_helper() -> Result<Reply, Failure> {
    let mut args = std::env::args().skip(1);
    match (args.next(), args.next()) {
        (Some(action), None) => docker_action(&action, false),
        _ => Err(Failure::usage(format!(
            "usage: {} <get|store|erase|list|version>",
            docker::HELPER_NAME
        ))),
    }
}

fn docker_action(action: &str, verbose: bool) -> Result<Reply, Failure> {
    let config = docker_env();
    // Read for every action, so a client writing its input never sees a broken pipe.
    let input = match action {
        "get" | "store" | "erase" => read_bounded(std::io::stdin(), docker::MAX_INPUT_BYTES, "stdin")?,
        _ => Vec::new(),
    };
    // The warm path: no runtime, no component, no CA file parsed, for a cache hit or
    // another registry. The cache key does not depend on the runtime's policy.
    if action == "get" {
        let lookup = Minter::new(
            RuntimeConfig::default(),
            TokenCache::configured(true, None),
            verbose,
        );
        if let Some(reply) = docker::get_cached(&input, &lookup, &config) {
            return Ok(reply);
        }
    }
    // A misconfigured runtime is reported by `get` itself (DockerConfig::request).
    let runtime = config.runtime().unwrap_or_default();
    let minter = Minter::new(runtime, TokenCache::configured(true, None), verbose);
    block_on(docker::handle(action, &input, &minter, &config))
}

fn docker_env() -> DockerConfig {
    DockerConfig::from_env(|name| std::env::var(name).ok())
}

/// Runs a one-shot door on a single-threaded runtime: one call per process needs no
/// worker threads, and not starting them is most of a runtime's start-up cost.
fn block_on(door: impl Future<Output = Result<Reply, Failure>>) -> Result<Reply, Failure> {
    run_on(tokio::runtime::Builder::new_current_thread(), door)
}

fn run_on(
    mut builder: tokio::runtime::Builder,
    door: impl Future<Output = Result<Reply, Failure>>,
) -> Result<Reply, Failure> {
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("starting the async runtime")))?;
    let result = runtime.block_on(door);
    // Do not wait for lingering tasks (a stand-in's connections, a stuck resolver).
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Writes the reply's stdout (when it has any) and returns its exit code.
fn write(reply: Reply) -> Result<u8, Failure> {
    if !reply.stdout.is_empty() {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", reply.stdout)
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::Other(anyhow::Error::new(e).context("writing to stdout")))?;
    }
    Ok(reply.exit)
}

/// Whether argv[0] names the Docker credential helper.
fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_os_string()))
        .is_some_and(|stem| stem == docker::HELPER_NAME)
}
