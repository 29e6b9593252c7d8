//! The command line: clap's types for every subcommand and their conversion into the
//! plain configurations of the layers below (`TryFrom`, which validates: a CA file that
//! does not parse, a `--wasi-dir` that is not a directory). The top layer: nothing
//! below imports it, so no door knows clap.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use cloudsmith_gen::oci::ComponentRef;
use cloudsmith_gen::policy::TimeoutCaps;
use cloudsmith_gen::{Authority, Limits, NamespacePolicy, OutboundPolicy, WasiGrants};
use cloudsmith_gen_core::authority::AuthorityError;

use crate::doors::check::{CheckConfig, ReportFormat};
use crate::doors::generate::{Format, GenerateConfig, OutputConfig};
use crate::doors::install::{HelperInstall, KubeletInstall};
use crate::doors::kubelet::KubeletConfig;
use crate::doors::publish::PushConfig;
use crate::doors::serve::ServeConfig;
use crate::doors::Registries;
use crate::failure::{Failure, EXIT_CODES};
use crate::mint::TokenChoice;
use crate::setup::{registry_options, CompileCache, ComponentSource, RuntimeConfig};

/// Mint short-lived Cloudsmith registry credentials (ESO's CloudsmithAccessToken
/// generator, run as a sandboxed WebAssembly component).
#[derive(Debug, Parser)]
#[command(name = "cloudsmith-gen", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Print details to stderr: timings, requests, token source, guest output (never a secret).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exchange a service account token for Cloudsmith credentials.
    // Boxed: generate's flags outweigh the other commands' by far (clippy's
    // large_enum_variant); the box costs one allocation per process.
    #[command(after_help = EXIT_CODES)]
    Generate(Box<GenerateArgs>),
    /// Walk generate's path step by step and report each (manifest, token source and
    /// its claims, outbound policy, exchange, registry), with the fix for a failed one.
    #[command(after_help = CHECK_HELP)]
    Check(Box<CheckArgs>),
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
    /// The component as an OCI artifact (the Wasm OCI Artifact layout wkg reads).
    #[command(subcommand)]
    Component(ComponentCommand),
}

/// `component`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum ComponentCommand {
    /// Push the embedded generator (or --component FILE) to REGISTRY/REPOSITORY[:TAG]
    /// and print the manifest digest (sha256:...) on stdout.
    #[command(after_help = PUSH_HELP)]
    Push(PushArgs),
}

const PUSH_HELP: &str = "\
The artifact: an OCI image manifest whose config is application/vnd.wasm.config.v0+json
(architecture wasm, os wasip2, layerDigests, the component's imports and exports) and whose
one layer is the component (application/wasm), annotated with title, version, revision,
source, licenses and created. Pushing one build twice gives one digest: `created` is
SOURCE_DATE_EPOCH, else the build's commit time, else 1970-01-01.
Credentials as Docker reads them: credHelpers, credsStore and auths in $DOCKER_CONFIG/config.json
(or ~/.docker/config.json); Basic and token (Bearer) auth. TLS trusts the public roots,
SSL_CERT_FILE and --ca-file.
Run a pushed component with --component oci://REGISTRY/REPOSITORY@sha256:DIGEST
(CLOUDSMITH_GENERATOR_COMPONENT for the Docker helper).";

/// `component push`'s arguments.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Where to push: REGISTRY/REPOSITORY[:TAG] (no scheme; the tag defaults to this
    /// binary's version).
    #[arg(value_name = "REF", value_parser = ComponentRef::parse)]
    pub reference: ComponentRef,

    /// Push this component file instead of the embedded generator (a composed component,
    /// a plug).
    #[arg(long, value_name = "FILE")]
    pub component: Option<PathBuf>,

    /// Also trust the CA certificates in this PEM file (besides the public roots and
    /// SSL_CERT_FILE).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Speak plain HTTP to the registry (a registry on loopback): never the default.
    #[arg(long)]
    pub plain_http: bool,

    /// Set a manifest annotation (replacing a default one); repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,

    /// Bound on connecting and on each wait for the registry, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,
}

impl TryFrom<&PushArgs> for PushConfig {
    type Error = Failure;

    fn try_from(args: &PushArgs) -> Result<Self, Failure> {
        if let Some(digest) = args.reference.digest() {
            return Err(Failure::usage(format!(
                "{}: push to a tag, not a digest ({digest} is what the push prints)",
                args.reference
            )));
        }
        let target = match args.reference.tag() {
            Some(_) => args.reference.clone(),
            None => args.reference.with_tag(env!("CARGO_PKG_VERSION")),
        };
        Ok(PushConfig {
            target,
            component: args.component.clone(),
            registry: registry_options(args.ca_file.as_deref(), args.plain_http, args.timeout)?,
            annotations: args.annotations.clone(),
        })
    }
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

const SERVE_HELP: &str = "\
Callers send `Authorization: Bearer <service account token>`, verified with TokenReview.
A caller may ask for its own namespace; another namespace needs a SubjectAccessReview
allowing verb `create` on `cloudsmithaccesstokens/generate` in group
`generators.external-secrets.io` (resource name: the generator) in that namespace.
Errors answer {\"error\": {\"case\", \"message\"}}: 400 bad request, 401 unauthenticated,
403 forbidden, 405, 413 body too large, 422 unknown generator, invalid spec or refused by
policy (never 404: ESO reads 404 as \"no secret\"), 429 caller rate limit, 502 Cloudsmith
or TokenRequest refused, 503 rate-limited, upstream failing or busy (with Retry-After),
500 sandbox failure.
Also: GET /healthz, /readyz, /metrics (Prometheus). JSON logs on stderr. SIGTERM stops
accepting, lets calls in flight finish (up to --shutdown-timeout), then exits 0.";

const CHECK_HELP: &str = "\
Each step prints one line (ok, WARN, FAIL or skip) with what it found; a step that did not
pass prints its problem and the fix, naming the documentation's troubleshooting item.
The token step shows the token's iss and sub: the values to enter in the Cloudsmith OIDC
service. Exit 0 only when every step that ran passed; 1 otherwise; 2 for bad arguments.";

/// `check`'s arguments: `generate`'s, and what to check the registry against.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub call: CallArgs,

    /// A registry your images are pulled from (a custom domain); repeatable. Checked
    /// against the registry the credentials are for.
    #[arg(long = "registry", value_name = "HOST")]
    pub registries: Vec<String>,

    /// Docker's config.json, whose auths and credHelpers must name that registry.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,

    /// Stop before the exchange with Cloudsmith.
    #[arg(long)]
    pub no_exchange: bool,

    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportArg::Text)]
    pub output: ReportArg,
}

/// `check --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportArg {
    /// One line per step.
    Text,
    /// The same report as JSON, for scripts.
    Json,
}

/// `serve`'s arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Generator manifests (YAML or JSON, multi-document); repeatable. Every generator
    /// document is served under its metadata.name; metadata.namespace is ignored. The
    /// files are read again when they change.
    #[arg(long = "manifest", value_name = "FILE", required = true)]
    pub manifests: Vec<PathBuf>,

    /// How often to check the manifests for changes, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub reload_interval: Duration,

    /// Kubeconfig for TokenRequest, TokenReview and SubjectAccessReview (default:
    /// KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Audience callers' tokens must carry (TokenReview spec.audiences); repeatable.
    /// Default: the API server's own audience (what a kubernetes.io/service-account-token
    /// Secret's token carries).
    #[arg(long = "audience", value_name = "AUD")]
    pub audiences: Vec<String>,

    /// Calls that may run in the sandbox at once (the pooled engine's slots).
    #[arg(long, value_name = "N", default_value = "16", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_calls: u32,

    /// Calls that may wait for a slot; beyond this, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value = "256")]
    pub max_queued_calls: usize,

    /// Largest request body accepted, in bytes (ESO sends the Webhook's `body`).
    #[arg(long, value_name = "BYTES", default_value = "65536")]
    pub max_body_bytes: usize,

    /// Bound on a TLS handshake, on a request's headers and on its body, in seconds;
    /// also how long an idle keep-alive connection stays open. A body still arriving
    /// then is answered 408.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub read_timeout: Duration,

    /// Connections open at once; further ones are answered 503 `busy` (closed, with
    /// TLS) as they arrive.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Bound on each Kubernetes call (TokenReview, SubjectAccessReview, TokenRequest), in
    /// seconds; past it the call is answered 503 `unavailable` with Retry-After.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub kube_timeout: Duration,

    /// TokenReviews and SubjectAccessReviews that may be in flight at once, in each of
    /// two pools: tokens never seen to authenticate, and callers already let in (a known
    /// token's renewed review, SubjectAccessReviews); beyond this, 503 `busy`. Apart from
    /// the sandbox's slots and queue, so a flood of unknown tokens can take neither the
    /// places of callers already reviewed nor the sandbox's.
    #[arg(long, value_name = "N", default_value = "64", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_pending_reviews: u32,

    /// How long a TokenReview that authenticates (and a SubjectAccessReview that
    /// allows) is reused, in seconds; never past the token's exp. As kube-apiserver's
    /// --authentication-token-webhook-cache-ttl.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds)]
    pub review_cache_ttl: Duration,

    /// Requests per second each caller (service account) may make, on average: 0 turns
    /// the limit off, else 0.001 to 1000000.
    #[arg(long, value_name = "N", default_value = "5", value_parser = parse_rate)]
    pub rate_limit: f64,

    /// Requests a caller may make at once before --rate-limit applies.
    #[arg(long, value_name = "N", default_value = "50")]
    pub rate_burst: u32,

    /// How long calls in flight may take to finish after SIGTERM, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// What `install` installs.
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
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
pub struct InstallKubeletArgs {
    /// The kubelet's --image-credential-provider-bin-dir.
    #[arg(long, value_name = "DIR", default_value = crate::doors::install::KUBELET_BIN_DIR)]
    pub bin_dir: PathBuf,

    /// The kubelet's --image-credential-provider-config file.
    #[arg(long, value_name = "FILE", default_value = crate::doors::install::KUBELET_CONFIG)]
    pub config: PathBuf,

    /// The generator manifest the provider reads (--manifest in the config's args).
    #[arg(long, value_name = "FILE", default_value = crate::doors::install::KUBELET_MANIFEST)]
    pub manifest: PathBuf,

    /// Replace an existing config and manifest that differ from the shipped ones.
    #[arg(long, visible_alias = "force")]
    pub overwrite_config: bool,
}

/// `install docker-credential-helper`'s arguments.
#[derive(Debug, Args)]
pub struct InstallHelperArgs {
    /// Where to create the docker-credential-cloudsmith link (default: beside this binary).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Also route this registry (a custom domain) to the helper; repeatable. Adds to
    /// docker.cloudsmith.io and CLOUDSMITH_REGISTRIES.
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    pub registries: Vec<String>,
}

/// `docker-credential-helper`'s arguments.
#[derive(Debug, Args)]
pub struct HelperArgs {
    /// The protocol action: get, store, erase, list or version.
    pub action: String,
}

/// `kubelet-credential-provider`'s arguments.
#[derive(Debug, Args)]
pub struct KubeletArgs {
    /// The CloudsmithAccessToken manifest (YAML or JSON). With the request's service
    /// account token its serviceAccountRef may be omitted.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,

    /// Which generator document of a multi-document --manifest to use (its metadata.name).
    #[arg(long, value_name = "NAME")]
    pub generator: Option<String>,

    /// A registry (custom domain) to answer for besides docker.cloudsmith.io; repeatable.
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    pub registries: Vec<String>,

    /// The namespace for the fallback token sources (without a service account token).
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,

    /// Fallback token sources, used when the request carries no service account token.
    #[command(flatten)]
    pub tokens: TokenArgs,

    /// Bound on the whole call, from process start (compile, exchange, retries,
    /// Retry-After waits), in seconds: the kubelet kills its provider after 1 minute and
    /// then logs only "context deadline exceeded".
    #[arg(long = "deadline", value_name = "SECS", default_value = "50", value_parser = parse_seconds)]
    pub bound: Duration,

    #[command(flatten)]
    pub cache: DoorCacheArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The token cache of the doors (on by default).
#[derive(Debug, Args)]
pub struct DoorCacheArgs {
    /// Do not reuse or store access tokens (also: CLOUDSMITH_NO_TOKEN_CACHE=1).
    #[arg(long)]
    pub no_token_cache: bool,

    /// Token cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen/tokens or
    /// ~/.cache/cloudsmith-gen/tokens).
    #[arg(long, value_name = "DIR")]
    pub token_cache_dir: Option<PathBuf>,
}

/// `generate`'s token cache (off by default: ESO-style callers expect a fresh token).
#[derive(Debug, Args)]
pub struct GenerateCacheArgs {
    /// Reuse an access token until shortly before it expires, from a private cache on
    /// disk (CLOUDSMITH_NO_TOKEN_CACHE=1 overrides).
    #[arg(long)]
    pub token_cache: bool,

    /// Token cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen/tokens or
    /// ~/.cache/cloudsmith-gen/tokens).
    #[arg(long, value_name = "DIR", requires = "token_cache")]
    pub token_cache_dir: Option<PathBuf>,
}

/// What a call is made of: the manifest, the target namespace, the token source and the
/// runtime (`generate`'s and `check`'s).
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The CloudsmithAccessToken manifest (YAML or JSON; `-` for stdin). A file of
    /// several YAML documents (e.g. the generator and its ExternalSecret) is read for
    /// its one generator document: a CloudsmithAccessToken or a ClusterGenerator of
    /// that kind.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,

    /// Use the generator document whose metadata.name is NAME (needed when the
    /// manifest holds more than one).
    #[arg(long, value_name = "NAME")]
    pub generator: Option<String>,

    /// The target namespace (the ExternalSecret's): tokens are minted there.
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `generate`'s arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub call: CallArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub cache: GenerateCacheArgs,
}

/// Where the service account token comes from. Without a file or variable, the
/// Kubernetes TokenRequest API is used.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Read the token from FILE at each call (e.g. a projected service account token).
    #[arg(long, value_name = "FILE", group = "token_source")]
    pub oidc_token_file: Option<PathBuf>,

    /// Read the token from this environment variable.
    #[arg(long, value_name = "VAR", group = "token_source")]
    pub oidc_token_env: Option<String>,

    /// Kubeconfig for the TokenRequest API (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", group = "token_source")]
    pub kubeconfig: Option<PathBuf>,

    /// Honour a serviceAccountRef.namespace other than --namespace (refused by default:
    /// minting a token for another namespace's service account is privilege escalation).
    #[arg(long)]
    pub allow_cross_namespace: bool,
}

/// The component, the cache, the sandbox and the outbound policy.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Run this component instead of the embedded one: a file (e.g. a composed
    /// component), or one in an OCI registry pinned by digest,
    /// oci://REGISTRY/REPOSITORY@sha256:DIGEST (verified, and kept in the cache
    /// directory by digest; registry credentials as in Docker's config.json).
    #[arg(long, value_name = "FILE|oci://REF@DIGEST", value_parser = ComponentSource::parse)]
    pub component: Option<ComponentSource>,

    /// Also allow HOST[:PORT] (port 443 by default); repeatable. Adds to the default
    /// allowlist, which is api.cloudsmith.io:443 only.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]", value_parser = parse_authority)]
    pub allow_hosts: Vec<Authority>,

    /// Also trust the CA certificates in this PEM file (besides the public roots).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Allow plain http (refused by default). With HOST[:PORT] (port 80 by default):
    /// to that host only, which it also allows as --allow-host does. Bare: to allowed
    /// hosts on loopback (localhost, 127.0.0.0/8, ::1). Repeatable. Never to
    /// api.cloudsmith.io, on any port.
    #[arg(
        long = "allow-http",
        value_name = "HOST[:PORT]",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_plain_http
    )]
    pub allow_http: Vec<PlainHttp>,

    /// Overall deadline for one call, in seconds; under `serve` it counts from the
    /// call's arrival, so the wait for a sandbox slot is inside it.
    #[arg(long = "timeout", value_name = "SECS", default_value = "90", value_parser = parse_seconds)]
    pub deadline: Duration,

    /// Cap on connecting (TCP + TLS), in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,

    /// Cap on waiting for an answer's first byte, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub first_byte_timeout: Duration,

    /// Guest memory limit, in MiB.
    #[arg(long, value_name = "MIB", default_value = "64", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub memory_limit: u32,

    /// Grant the guest read-only access to HOST_DIR as GUEST_DIR; repeatable.
    #[arg(long = "wasi-dir", value_name = "HOST_DIR::GUEST_DIR", value_parser = parse_wasi_dir)]
    pub wasi_dirs: Vec<(PathBuf, String)>,

    /// Give the guest the environment variable NAME=VALUE; repeatable.
    #[arg(long = "wasi-env", value_name = "NAME=VALUE", value_parser = parse_wasi_env)]
    pub wasi_env: Vec<(String, String)>,

    /// Do not use the compiled-component cache (nor keep fetched components).
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// Compiled-component cache directory (default: $XDG_CACHE_HOME/cloudsmith-gen or
    /// ~/.cache/cloudsmith-gen).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// How to print the credentials.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,

    /// The Secret's name (with --output secret).
    #[arg(long, value_name = "NAME", default_value = cloudsmith_gen::output::DEFAULT_SECRET_NAME)]
    pub secret_name: String,

    /// The registry the credentials are for (with --output secret or dockerconfigjson).
    #[arg(long, value_name = "HOST", default_value = cloudsmith_gen::output::DEFAULT_REGISTRY)]
    pub registry: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// ESO's outputs: {"auth": "...", "expiry": "..."}.
    Json,
    /// A kubernetes.io/dockerconfigjson Secret manifest for `kubectl apply -f -`.
    Secret,
    /// The Docker config file: {"auths": {"<registry>": {"auth": "..."}}}.
    Dockerconfigjson,
}

/// `info`'s arguments.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `demo`'s arguments.
#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The target namespace.
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,

    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_authority(s: &str) -> Result<Authority, String> {
    s.parse().map_err(|e: AuthorityError| e.to_string())
}

/// Where `--allow-http` allows plain http.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainHttp {
    /// Bare `--allow-http`: allowlisted hosts on loopback.
    Loopback,
    /// `--allow-http HOST[:PORT]`: that authority.
    To(Authority),
}

fn parse_plain_http(s: &str) -> Result<PlainHttp, String> {
    if s.trim().is_empty() {
        return Ok(PlainHttp::Loopback);
    }
    let authority: Authority = parse_authority(s)?;
    // `Authority` defaults to 443; plain http's port is 80.
    let explicit_port = s.trim().rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':')
    });
    let authority = if explicit_port {
        authority
    } else {
        Authority::new(authority.host(), 80)
    };
    if cloudsmith_gen::policy::is_default_host(authority.host()) {
        return Err(format!(
            "plain http to {authority} is never allowed: the exchange would carry the OIDC token in clear"
        ));
    }
    Ok(PlainHttp::To(authority))
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

/// A rate limit: 0 (off), or from one request in 1000 s to a million a second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if rate == 0.0 || (0.001..=1_000_000.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "{s} is out of range (0 turns the limit off; else 0.001 to 1000000 requests per second)"
        ))
    }
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

impl TryFrom<&RuntimeArgs> for RuntimeConfig {
    type Error = Failure;

    fn try_from(args: &RuntimeArgs) -> Result<Self, Failure> {
        let mut policy = OutboundPolicy::default()
            .allow_http(args.allow_http.contains(&PlainHttp::Loopback))
            .timeouts(TimeoutCaps {
                connect: args.connect_timeout,
                first_byte: args.first_byte_timeout,
                between_bytes: args.first_byte_timeout,
            });
        for authority in &args.allow_hosts {
            policy = policy.allow(authority.clone());
        }
        for plain in &args.allow_http {
            if let PlainHttp::To(authority) = plain {
                policy = policy
                    .allow_http_to(authority.clone())
                    .map_err(|e| Failure::Usage(e.context("--allow-http")))?;
            }
        }
        if let Some(ca) = &args.ca_file {
            policy = policy.extra_ca_file(ca).map_err(Failure::Usage)?;
        }
        for (host, _) in &args.wasi_dirs {
            if !host.is_dir() {
                return Err(Failure::usage(format!(
                    "--wasi-dir {}: not a directory",
                    host.display()
                )));
            }
        }
        Ok(RuntimeConfig {
            component: args.component.clone(),
            compile_cache: match (&args.cache_dir, args.no_cache) {
                (_, true) => CompileCache::Off,
                (Some(dir), false) => CompileCache::Dir(dir.clone()),
                (None, false) => CompileCache::Default,
            },
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
        })
    }
}

impl TokenArgs {
    /// The token source the flags name: a file, a variable, else TokenRequest through
    /// `--kubeconfig` (or the inferred configuration).
    pub fn choice(&self) -> TokenChoice {
        self.explicit()
            .unwrap_or_else(|| TokenChoice::Kubernetes(self.kubeconfig.clone()))
    }

    /// The token source the flags name explicitly (the kubelet provider's fallback:
    /// it never infers a cluster configuration).
    fn explicit(&self) -> Option<TokenChoice> {
        if let Some(path) = &self.oidc_token_file {
            Some(TokenChoice::File(path.clone()))
        } else if let Some(var) = &self.oidc_token_env {
            Some(TokenChoice::Env(var.clone()))
        } else {
            self.kubeconfig.clone().map(|k| TokenChoice::Kubernetes(Some(k)))
        }
    }

    /// The namespace rule the flags set.
    pub fn namespaces(&self) -> NamespacePolicy {
        if self.allow_cross_namespace {
            NamespacePolicy::AllowCrossNamespace
        } else {
            NamespacePolicy::TargetOnly
        }
    }
}

impl From<&OutputArgs> for OutputConfig {
    fn from(args: &OutputArgs) -> Self {
        OutputConfig {
            format: match args.output {
                OutputFormat::Json => Format::Json,
                OutputFormat::Secret => Format::Secret,
                OutputFormat::Dockerconfigjson => Format::Dockerconfigjson,
            },
            secret_name: args.secret_name.clone(),
            registry: args.registry.clone(),
        }
    }
}

impl From<&GenerateArgs> for GenerateConfig {
    fn from(args: &GenerateArgs) -> Self {
        GenerateConfig {
            namespace: args.call.namespace.clone(),
            tokens: args.call.tokens.choice(),
            namespaces: args.call.tokens.namespaces(),
            output: (&args.output).into(),
        }
    }
}

impl KubeletArgs {
    /// The provider's configuration; `started` is when the process started, from which
    /// `--deadline` counts.
    pub fn config(&self, started: Instant, verbose: bool) -> Result<KubeletConfig, Failure> {
        Ok(KubeletConfig {
            manifest: self.manifest.clone(),
            generator: self.generator.clone(),
            registries: Registries::with_default(self.registries.iter().map(String::as_str))
                .map_err(Failure::usage)?,
            namespace: self.namespace.clone(),
            fallback: self.tokens.explicit().map(|t| (t, self.tokens.namespaces())),
            deadline: started + self.bound,
            bound: self.bound,
            verbose,
        })
    }
}

impl TryFrom<&ServeArgs> for ServeConfig {
    type Error = Failure;

    fn try_from(args: &ServeArgs) -> Result<Self, Failure> {
        Ok(ServeConfig {
            listen: args.listen,
            tls: args.tls_cert.clone().zip(args.tls_key.clone()),
            manifests: args.manifests.clone(),
            reload_interval: args.reload_interval,
            kubeconfig: args.kubeconfig.clone(),
            audiences: args.audiences.clone(),
            max_concurrent_calls: args.max_concurrent_calls,
            max_queued_calls: args.max_queued_calls,
            max_body_bytes: args.max_body_bytes,
            read_timeout: args.read_timeout,
            max_connections: args.max_connections as usize,
            review_cache_ttl: args.review_cache_ttl,
            kube_timeout: args.kube_timeout,
            max_pending_reviews: args.max_pending_reviews as usize,
            rate_limit: args.rate_limit,
            rate_burst: args.rate_burst,
            shutdown_timeout: args.shutdown_timeout,
            runtime: (&args.runtime).try_into()?,
        })
    }
}

impl TryFrom<&CheckArgs> for CheckConfig {
    type Error = Failure;

    fn try_from(args: &CheckArgs) -> Result<Self, Failure> {
        Ok(CheckConfig {
            manifest: args.call.manifest.display().to_string(),
            namespace: args.call.namespace.clone(),
            tokens: args.call.tokens.choice(),
            namespaces: args.call.tokens.namespaces(),
            runtime: (&args.call.runtime).try_into()?,
            registries: args.registries.clone(),
            docker_config: args.docker_config.clone(),
            no_exchange: args.no_exchange,
            format: match args.output {
                ReportArg::Text => ReportFormat::Text,
                ReportArg::Json => ReportFormat::Json,
            },
        })
    }
}

impl From<&InstallHelperArgs> for HelperInstall {
    fn from(args: &InstallHelperArgs) -> Self {
        HelperInstall {
            dir: args.dir.clone(),
            registries: args.registries.clone(),
        }
    }
}

impl From<&InstallKubeletArgs> for KubeletInstall {
    fn from(args: &InstallKubeletArgs) -> Self {
        KubeletInstall {
            bin_dir: args.bin_dir.clone(),
            config: args.config.clone(),
            manifest: args.manifest.clone(),
            overwrite_config: args.overwrite_config,
        }
    }
}

/// clap's error as one line: its first line names the cause; help and version are not
/// errors. The exit code is 2, or 0 for help and version.
pub fn usage_error(e: clap::Error) -> (Option<String>, u8) {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return (None, 0);
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return (None, 2);
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
    (Some(format!("{first} (see --help)")), 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Runtime {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    #[test]
    fn the_flags_defaults_are_the_plain_defaults() {
        let args = Runtime::try_parse_from(["x"]).unwrap().runtime;
        let from_flags = RuntimeConfig::try_from(&args).unwrap();
        let default = RuntimeConfig::default();
        assert_eq!(format!("{from_flags:?}"), format!("{default:?}"));
    }

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Every `serve` flag a process test no longer sets reaches the configuration the
    /// pipeline's tables run with (src/doors/serve/pipeline/tests.rs).
    #[test]
    fn the_serve_flags_reach_its_config() {
        let args = Serve::try_parse_from([
            "x",
            "--manifest",
            "m.yaml",
            "--audience",
            "https://cloudsmith-gen.example",
            "--read-timeout",
            "1",
            "--rate-limit",
            "0.001",
            "--rate-burst",
            "2",
            "--max-body-bytes",
            "1024",
        ])
        .unwrap()
        .serve;
        let config = ServeConfig::try_from(&args).unwrap();
        assert_eq!(config.audiences, ["https://cloudsmith-gen.example"]);
        assert_eq!(config.read_timeout, Duration::from_secs(1));
        assert_eq!((config.rate_limit, config.rate_burst), (0.001, 2));
        assert_eq!(config.max_body_bytes, 1024);
    }

    #[test]
    fn rate_limits_are_off_or_in_range() {
        for ok in ["0", "0.001", "5", "1000000"] {
            assert!(parse_rate(ok).is_ok(), "{ok}");
        }
        for bad in ["1e-300", "0.0009", "-1", "NaN", "inf", "1e7", "x"] {
            let err = parse_rate(bad).unwrap_err();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn allow_http_names_hosts_or_loopback_and_never_cloudsmith() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend_from_slice(args);
            Runtime::try_parse_from(argv).map(|r| r.runtime.allow_http)
        };
        assert_eq!(parse(&[]).unwrap(), vec![]);
        assert_eq!(parse(&["--allow-http"]).unwrap(), vec![PlainHttp::Loopback]);
        // Bare before another flag, as every existing command line writes it.
        assert_eq!(
            parse(&["--allow-http", "--allow-host", "127.0.0.1:9"]).unwrap(),
            vec![PlainHttp::Loopback]
        );
        assert_eq!(
            parse(&[
                "--allow-http",
                "cloudsmith.internal",
                "--allow-http",
                "[::1]:8080"
            ])
            .unwrap(),
            vec![
                PlainHttp::To(Authority::new("cloudsmith.internal", 80)),
                PlainHttp::To(Authority::new("::1", 8080)),
            ]
        );
        for never in [
            "api.cloudsmith.io",
            "api.cloudsmith.io:443",
            "API.CLOUDSMITH.IO:8080",
        ] {
            let err = parse(&["--allow-http", never]).unwrap_err().to_string();
            assert!(err.contains("is never allowed"), "{never}: {err}");
        }
        assert!(parse(&["--allow-http", "http://x"]).is_err());
        // The named host is allowed (plain http only), loopback stays https-only.
        let args = Runtime::try_parse_from(["x", "--allow-http", "cloudsmith.internal:8080"])
            .unwrap()
            .runtime;
        let policy = RuntimeConfig::try_from(&args).unwrap().policy;
        let decide = |url: &str| {
            let uri: http::Uri = url.parse().unwrap();
            policy.decide(uri.scheme(), uri.authority()).is_ok()
        };
        assert!(decide("http://cloudsmith.internal:8080/"));
        assert!(!decide("http://127.0.0.1:8080/"));
        assert!(!decide("http://api.cloudsmith.io:443/"));
    }

    #[test]
    fn the_conversion_validates() {
        let args = Runtime::try_parse_from(["x", "--wasi-dir", "/nonexistent::/d"])
            .unwrap()
            .runtime;
        let err = RuntimeConfig::try_from(&args).unwrap_err();
        assert_eq!(err.message(), "--wasi-dir /nonexistent: not a directory");
        let args = Runtime::try_parse_from(["x", "--ca-file", "/nonexistent.pem"])
            .unwrap()
            .runtime;
        assert_eq!(RuntimeConfig::try_from(&args).unwrap_err().exit_code(), 2);
    }
}
