//! `cloudsmith-gen`: mint Cloudsmith registry credentials from a `CloudsmithAccessToken`
//! manifest, by running the generator component in a sandbox.
//!
//! This file is argument parsing and exit codes only; the commands live in
//! `commands.rs` and `demo.rs`.
//!
//! # Exit codes
//!
//! | code | meaning                                                                  |
//! |------|--------------------------------------------------------------------------|
//! | 0    | success                                                                  |
//! | 1    | any other failure (writing the output, starting the runtime...)          |
//! | 2    | usage or invalid input: arguments, manifest, spec, component file        |
//! | 3    | the token source failed (file, variable, Kubernetes TokenRequest)        |
//! | 4    | refused by the outbound policy (host not allowed, plain http)            |
//! | 5    | Cloudsmith refused the exchange (401/403 credentials, other 4xx request) |
//! | 6    | Cloudsmith rate limit (429)                                              |
//! | 7    | upstream or transport failure after retries (5xx, connect, TLS, timeout) |
//! | 8    | Cloudsmith answered success without a usable token                       |
//! | 9    | sandbox limit or crash: deadline, memory limit, trap, bad outputs        |
//!
//! On failure stderr holds exactly one line, `error: <cause>` (more with `-v`).

mod check;
mod commands;
// The stand-in and its test key stay out of release images (`--no-default-features`).
#[cfg(feature = "demo")]
mod demo;
mod doors;
mod manifest;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use host_example::{Authority, Error, GenerateError, HostError};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure (writing output, runtime)
  2  usage or invalid input (arguments, manifest, spec, component file)
  3  token source failed (file, variable, Kubernetes TokenRequest)
  4  refused by the outbound policy (host not allowed, plain http)
  5  Cloudsmith refused the exchange (401/403 credentials, other 4xx)
  6  Cloudsmith rate limit (429)
  7  upstream or transport failure after retries (5xx, connect, TLS, timeout)
  8  Cloudsmith answered success without a usable token
  9  sandbox limit or crash (deadline, memory limit, trap, bad outputs)
On failure stderr holds one line: `error: <cause>`.";

/// Mint short-lived Cloudsmith registry credentials (ESO's CloudsmithAccessToken
/// generator, run as a sandboxed WebAssembly component).
#[derive(Debug, Parser)]
#[command(name = "cloudsmith-gen", version, after_help = EXIT_CODES)]
struct Cli {
    /// Print details to stderr: timings, requests, token source, guest output (never a secret).
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exchange a service account token for Cloudsmith credentials.
    // Boxed: generate's flags outweigh the other commands' by far (clippy's
    // large_enum_variant); the box costs one allocation per process.
    #[command(after_help = EXIT_CODES)]
    Generate(Box<GenerateArgs>),
    /// Print the generator's description (JSON).
    #[command(after_help = EXIT_CODES)]
    Info(InfoArgs),
    /// Run the whole path against a local stand-in for Cloudsmith (no account needed).
    #[cfg(feature = "demo")]
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// Kubelet image credential provider: CredentialProviderRequest (v1) on stdin,
    /// CredentialProviderResponse on stdout.
    #[command(after_help = EXIT_CODES)]
    KubeletCredentialProvider(Box<KubeletArgs>),
    /// Docker credential helper (also run as `docker-credential-cloudsmith`); configured
    /// by CLOUDSMITH_* environment variables.
    #[command(after_help = EXIT_CODES)]
    DockerCredentialHelper(HelperArgs),
    /// HTTP(S) service for ESO's Webhook generator: POST
    /// /v1/namespaces/{namespace}/generators/{name} answers {"auth", "expiry"}.
    #[command(after_help = SERVE_HELP)]
    Serve(Box<ServeArgs>),
    /// Install a door.
    #[command(subcommand)]
    Install(InstallCommand),
}

const SERVE_HELP: &str = "\
Callers send `Authorization: Bearer <service account token>`, verified with TokenReview.
A caller may ask for its own namespace; another namespace needs a SubjectAccessReview
allowing verb `create` on `cloudsmithaccesstokens/generate` in group
`generators.external-secrets.io` (resource name: the generator) in that namespace.
Errors answer {\"error\": {\"case\", \"message\"}}: 400 bad request, 401 unauthenticated,
403 forbidden, 404 unknown generator, 405, 413 body too large, 422 invalid spec or refused
by policy, 429 caller rate limit, 502 Cloudsmith or TokenRequest refused, 503 rate-limited
or upstream failing (with Retry-After), 500 sandbox failure.
Also: GET /healthz, /readyz, /metrics (Prometheus). JSON logs on stderr. SIGTERM stops
accepting, lets calls in flight finish (up to --shutdown-timeout), then exits 0.";

/// `serve`'s arguments.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Generator manifests (YAML or JSON, multi-document); repeatable. Every generator
    /// document is served under its metadata.name; metadata.namespace is ignored. The
    /// files are read again when they change.
    #[arg(long = "manifest", value_name = "FILE", required = true)]
    manifests: Vec<PathBuf>,

    /// How often to check the manifests for changes, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    reload_interval: Duration,

    /// Kubeconfig for TokenRequest, TokenReview and SubjectAccessReview (default:
    /// KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// Audience callers' tokens must carry (TokenReview spec.audiences); repeatable.
    /// Default: the API server's own audience (what a kubernetes.io/service-account-token
    /// Secret's token carries).
    #[arg(long = "audience", value_name = "AUD")]
    audiences: Vec<String>,

    /// Calls that may run in the sandbox at once (the pooled engine's slots).
    #[arg(long, value_name = "N", default_value = "16", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_concurrent_calls: u32,

    /// Calls that may wait for a slot; beyond this, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value = "256")]
    max_queued_calls: usize,

    /// Largest request body accepted, in bytes (ESO sends the Webhook's `body`).
    #[arg(long, value_name = "BYTES", default_value = "65536")]
    max_body_bytes: usize,

    /// Requests per second each caller (service account) may make, on average; 0 turns
    /// the limit off.
    #[arg(long, value_name = "N", default_value = "5")]
    rate_limit: f64,

    /// Requests a caller may make at once before --rate-limit applies.
    #[arg(long, value_name = "N", default_value = "50")]
    rate_burst: u32,

    /// How long calls in flight may take to finish after SIGTERM, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    shutdown_timeout: Duration,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// What `install` installs.
#[derive(Debug, Subcommand)]
enum InstallCommand {
    /// Link docker-credential-cloudsmith to this binary and add credHelpers entries to
    /// Docker's config.json ($DOCKER_CONFIG or ~/.docker).
    DockerCredentialHelper(InstallHelperArgs),
    /// Install this binary as a kubelet image credential provider on this node (or under
    /// host paths mounted at the same place): BIN_DIR/cloudsmith-gen, the kubelet's
    /// CredentialProviderConfig and the generator manifest. Never deletes anything and
    /// never restarts the kubelet; a second run changes nothing.
    #[command(after_help = KUBELET_INSTALL_HELP)]
    KubeletCredentialProvider(InstallKubeletArgs),
}

const KUBELET_INSTALL_HELP: &str = "\
The binary is copied through a temporary file in BIN_DIR and renamed into place (mode 0755),
and replaced only when its content differs. The config and the manifest are written only
where none exists (or, with --overwrite-config, where they differ). One line per action on
stdout. Then start the kubelet with
  --image-credential-provider-config=CONFIG --image-credential-provider-bin-dir=BIN_DIR
and edit MANIFEST (orgSlug, serviceSlug).";

/// `install kubelet-credential-provider`'s arguments; the defaults are the paths in
/// deploy/kubelet/credential-provider-config.yaml.
#[derive(Debug, Args)]
struct InstallKubeletArgs {
    /// The kubelet's --image-credential-provider-bin-dir.
    #[arg(long, value_name = "DIR", default_value = doors::install::KUBELET_BIN_DIR)]
    bin_dir: PathBuf,

    /// The kubelet's --image-credential-provider-config file.
    #[arg(long, value_name = "FILE", default_value = doors::install::KUBELET_CONFIG)]
    config: PathBuf,

    /// The generator manifest the provider reads (--manifest in the config's args).
    #[arg(long, value_name = "FILE", default_value = doors::install::KUBELET_MANIFEST)]
    manifest: PathBuf,

    /// Replace an existing config and manifest that differ from the shipped ones.
    #[arg(long, visible_alias = "force")]
    overwrite_config: bool,
}

/// `install docker-credential-helper`'s arguments.
#[derive(Debug, Args)]
struct InstallHelperArgs {
    /// Where to create the docker-credential-cloudsmith link (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Also route this registry (a custom domain) to the helper; repeatable. Adds to
    /// docker.cloudsmith.io and CLOUDSMITH_REGISTRIES.
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    registries: Vec<String>,
}

/// `docker-credential-helper`'s arguments.
#[derive(Debug, Args)]
struct HelperArgs {
    /// The protocol action: get, store, erase, list or version.
    action: String,
}

/// `kubelet-credential-provider`'s arguments.
#[derive(Debug, Args)]
struct KubeletArgs {
    /// The CloudsmithAccessToken manifest (YAML or JSON). With the request's service
    /// account token its serviceAccountRef may be omitted.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,

    /// Which generator document of a multi-document --manifest to use (its metadata.name).
    #[arg(long, value_name = "NAME")]
    generator: Option<String>,

    /// A registry (custom domain) to answer for besides docker.cloudsmith.io; repeatable.
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    registries: Vec<String>,

    /// The namespace for the fallback token sources (without a service account token).
    #[arg(long, value_name = "NS", default_value = "default")]
    namespace: String,

    /// Fallback token sources, used when the request carries no service account token.
    #[command(flatten)]
    tokens: TokenArgs,

    /// Bound on the whole call, from process start (compile, exchange, retries,
    /// Retry-After waits), in seconds: the kubelet kills its provider after 1 minute and
    /// then logs only "context deadline exceeded".
    #[arg(long = "deadline", value_name = "SECS", default_value = "50", value_parser = parse_seconds)]
    bound: Duration,

    #[command(flatten)]
    cache: DoorCacheArgs,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// The token cache of the doors (on by default).
#[derive(Debug, Args)]
struct DoorCacheArgs {
    /// Do not reuse or store access tokens (also: CLOUDSMITH_NO_TOKEN_CACHE=1).
    #[arg(long)]
    no_token_cache: bool,

    /// Token cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen/tokens or
    /// ~/.cache/cloudsmith-gen/tokens).
    #[arg(long, value_name = "DIR")]
    token_cache_dir: Option<PathBuf>,
}

/// `generate`'s token cache (off by default: ESO-style callers expect a fresh token).
#[derive(Debug, Args)]
struct GenerateCacheArgs {
    /// Reuse an access token until shortly before it expires, from a private cache on
    /// disk (CLOUDSMITH_NO_TOKEN_CACHE=1 overrides).
    #[arg(long)]
    token_cache: bool,

    /// Token cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen/tokens or
    /// ~/.cache/cloudsmith-gen/tokens).
    #[arg(long, value_name = "DIR", requires = "token_cache")]
    token_cache_dir: Option<PathBuf>,
}

/// `generate`'s arguments.
#[derive(Debug, Args)]
struct GenerateArgs {
    /// The CloudsmithAccessToken manifest (YAML or JSON; `-` for stdin). A file of
    /// several YAML documents (e.g. the generator and its ExternalSecret) is read for
    /// its one generator document: a CloudsmithAccessToken or a ClusterGenerator of
    /// that kind.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,

    /// Use the generator document whose metadata.name is NAME (needed when the
    /// manifest holds more than one).
    #[arg(long, value_name = "NAME")]
    generator: Option<String>,

    /// The target namespace (the ExternalSecret's): tokens are minted there.
    #[arg(long, value_name = "NS", default_value = "default")]
    namespace: String,

    #[command(flatten)]
    tokens: TokenArgs,

    #[command(flatten)]
    runtime: RuntimeArgs,

    #[command(flatten)]
    output: OutputArgs,

    #[command(flatten)]
    cache: GenerateCacheArgs,
}

/// Where the service account token comes from. Without a file or variable, the
/// Kubernetes TokenRequest API is used.
#[derive(Debug, Args)]
struct TokenArgs {
    /// Read the token from FILE at each call (e.g. a projected service account token).
    #[arg(long, value_name = "FILE", group = "token_source")]
    oidc_token_file: Option<PathBuf>,

    /// Read the token from this environment variable.
    #[arg(long, value_name = "VAR", group = "token_source")]
    oidc_token_env: Option<String>,

    /// Kubeconfig for the TokenRequest API (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", group = "token_source")]
    kubeconfig: Option<PathBuf>,

    /// Honour a serviceAccountRef.namespace other than --namespace (refused by default:
    /// minting a token for another namespace's service account is privilege escalation).
    #[arg(long)]
    allow_cross_namespace: bool,
}

/// The component, the cache, the sandbox and the outbound policy.
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Run this component instead of the embedded one (e.g. a composed component).
    #[arg(long, value_name = "FILE")]
    component: Option<PathBuf>,

    /// Also allow HOST[:PORT] (port 443 by default); repeatable. Adds to the default
    /// allowlist, which is api.cloudsmith.io:443 only.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]", value_parser = parse_authority)]
    allow_hosts: Vec<Authority>,

    /// Also trust the CA certificates in this PEM file (besides the public roots).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,

    /// Allow plain http to allowed hosts (refused by default).
    #[arg(long)]
    allow_http: bool,

    /// Overall deadline for one call, in seconds; under `serve` it counts from the
    /// call's arrival, so the wait for a sandbox slot is inside it.
    #[arg(long = "timeout", value_name = "SECS", default_value = "90", value_parser = parse_seconds)]
    deadline: Duration,

    /// Cap on connecting (TCP + TLS), in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    connect_timeout: Duration,

    /// Cap on waiting for an answer's first byte, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    first_byte_timeout: Duration,

    /// Guest memory limit, in MiB.
    #[arg(long, value_name = "MIB", default_value = "64", value_parser = clap::value_parser!(u32).range(1..=4096))]
    memory_limit: u32,

    /// Grant the guest read-only access to HOST_DIR as GUEST_DIR; repeatable.
    #[arg(long = "wasi-dir", value_name = "HOST_DIR::GUEST_DIR", value_parser = parse_wasi_dir)]
    wasi_dirs: Vec<(PathBuf, String)>,

    /// Give the guest the environment variable NAME=VALUE; repeatable.
    #[arg(long = "wasi-env", value_name = "NAME=VALUE", value_parser = parse_wasi_env)]
    wasi_env: Vec<(String, String)>,

    /// Do not use the compiled-component cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    /// Compiled-component cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen or
    /// ~/.cache/cloudsmith-gen).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// How to print the credentials.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    output: OutputFormat,

    /// The Secret's name (with --output secret).
    #[arg(long, value_name = "NAME", default_value = host_example::output::DEFAULT_SECRET_NAME)]
    secret_name: String,

    /// The registry the credentials are for (with --output secret or dockerconfigjson).
    #[arg(long, value_name = "HOST", default_value = host_example::output::DEFAULT_REGISTRY)]
    registry: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// ESO's outputs: {"auth": "...", "expiry": "..."}.
    Json,
    /// A kubernetes.io/dockerconfigjson Secret manifest for `kubectl apply -f -`.
    Secret,
    /// The Docker config file: {"auths": {"<registry>": {"auth": "..."}}}.
    Dockerconfigjson,
}

/// `info`'s arguments.
#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// `demo`'s arguments.
#[cfg(feature = "demo")]
#[derive(Debug, Args)]
struct DemoArgs {
    /// The target namespace.
    #[arg(long, value_name = "NS", default_value = "default")]
    namespace: String,

    #[command(flatten)]
    output: OutputArgs,
}

fn parse_authority(s: &str) -> Result<Authority, String> {
    s.parse()
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{s} is out of range (more than 0, at most 86400 seconds)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_wasi_dir(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once("::") {
        Some((host, guest)) if !host.is_empty() && !guest.is_empty() => Ok((host.into(), guest.into())),
        _ => Err(format!("{s:?} is not HOST_DIR::GUEST_DIR")),
    }
}

fn parse_wasi_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Why a command failed, classified for the exit code.
#[derive(Debug)]
enum Failure {
    /// Bad arguments, manifest or component file.
    Usage(anyhow::Error),
    /// The call failed.
    Call(Error),
    /// Anything else.
    Other(anyhow::Error),
    /// The whole call ran past a door's bound (the kubelet provider's `--deadline`).
    OutOfTime(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Other(_) => 1,
            Failure::OutOfTime(_) => 9,
            Failure::Call(Error::Generate(e)) => match e {
                GenerateError::InvalidSpec(_) => 2,
                GenerateError::TokenSource(_) => 3,
                GenerateError::PolicyDenied { .. } => 4,
                GenerateError::Unauthorized(_) | GenerateError::Rejected(_) => 5,
                GenerateError::RateLimited { .. } => 6,
                GenerateError::Upstream { .. } => 7,
                GenerateError::InvalidToken(_) => 8,
            },
            Failure::Call(Error::Host(e)) => match e {
                HostError::DeadlineExceeded { .. }
                | HostError::MemoryLimitExceeded { .. }
                | HostError::Trap(_)
                | HostError::Instantiate(_)
                | HostError::InvalidOutput(_) => 9,
            },
        }
    }

    /// The one-line message (anyhow's chain joined with `: `, newlines removed).
    fn message(&self) -> String {
        let text = match self {
            Failure::Usage(e) | Failure::Other(e) => format!("{e:#}"),
            Failure::Call(e) => e.to_string(),
            Failure::OutOfTime(m) => m.clone(),
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// When this process started: the kubelet's deadline counts from its exec.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// When this process started (as near as `main` can tell).
fn started() -> std::time::Instant {
    *STARTED.get_or_init(std::time::Instant::now)
}

fn main() -> ExitCode {
    started();
    // A panic must still end in one `error:` line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        eprintln!(
            "error: internal error: {}",
            what.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }));

    // Invoked through a `docker-credential-cloudsmith` link or copy: the helper protocol,
    // `docker-credential-cloudsmith <action>`, with no other arguments.
    if invoked_as_helper() {
        return docker_helper(std::env::args().nth(1), std::env::args().count() > 2);
    }

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(Failure::Other(
                anyhow::Error::new(e).context("starting the async runtime"),
            ))
        }
    };
    let verbose = cli.verbose;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Generate(args) => commands::generate(*args, verbose).await,
            Command::Info(args) => commands::info(args, verbose).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args, verbose).await,
            Command::KubeletCredentialProvider(args) => doors::kubelet::run(*args, verbose).await,
            Command::DockerCredentialHelper(args) => {
                return doors::docker::run(&args.action, verbose).await.map(Some);
            }
            Command::Serve(args) => doors::serve::run(*args, verbose).await,
            Command::Install(InstallCommand::DockerCredentialHelper(args)) => {
                doors::install::docker_credential_helper(args)
            }
            Command::Install(InstallCommand::KubeletCredentialProvider(args)) => {
                doors::install::kubelet_credential_provider(args)
            }
        }
        .map(|()| None)
    });
    // Do not wait for lingering tasks (a stand-in's connections, a stuck resolver).
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(None | Some(doors::docker::Answer::Done)) => ExitCode::SUCCESS,
        Ok(Some(doors::docker::Answer::NotFound)) => ExitCode::from(1),
        Err(failure) => fail(failure),
    }
}

/// Whether argv[0] names the Docker credential helper.
fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_os_string()))
        .is_some_and(|stem| stem == doors::docker::HELPER_NAME)
}

/// The helper's own entry point (no clap: its protocol is one positional action).
fn docker_helper(action: Option<String>, extra_arguments: bool) -> ExitCode {
    let Some(action) = action.filter(|_| !extra_arguments) else {
        eprintln!(
            "error: usage: {} <get|store|erase|list|version>",
            doors::docker::HELPER_NAME
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(Failure::Other(
                anyhow::Error::new(e).context("starting the async runtime"),
            ))
        }
    };
    let result = runtime.block_on(doors::docker::run(&action, false));
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(doors::docker::Answer::Done) => ExitCode::SUCCESS,
        Ok(doors::docker::Answer::NotFound) => ExitCode::from(1),
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    eprintln!("error: {}", failure.message());
    ExitCode::from(failure.exit_code())
}

/// clap's errors are several lines (usage, tips); keep the first, which names the cause.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let rendered = e.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" names them on the next line.
    let first = match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!("{first} {next}"),
        _ => first.to_string(),
    };
    eprintln!("error: {first} (see --help)");
    ExitCode::from(2)
}
