//! The mint port: every door asks it for credentials, the same way.
//!
//! A [`Minter`] holds the token cache and the verbosity, and answers [`Mint::mint`]: the
//! token cache first (a hit runs no Wasm and makes no network call), else an
//! [`Exchange`] (the sandboxed [`Generator`]), whose answer then fills the cache. It
//! builds its exchange once, on the first miss ([`Load`]), and keeps it: a long-lived
//! door (`serve`) is handed one [`Minter::pooled`] and so one pooled engine for all its
//! calls. Each request brings its own token source ([`CallTokens`]), so one generator
//! serves them all.
//!
//! Two seams, each with a fake for tests: doors take `&impl Mint`, so their tests drive
//! the real door with a fake mint; the minter runs over `Exchange`, so its tests drive
//! the real cache, single flight and fill with a fake exchange.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsmith_gen::token_source::{EnvTokenSource, FileTokenSource, KubernetesTokenSource};
use cloudsmith_gen::{
    CallTokens, Credentials, Error, Generator, GeneratorInfo, NamespacePolicy, Secret, TokenRequest,
    TokenSource, TokenSourceError, Traced,
};
use cloudsmith_gen_core::flight::{Flight, FlightLock};
use cloudsmith_gen_core::identity;
use cloudsmith_gen_core::spec::GeneratorSpec;
use cloudsmith_gen_core::token_cache::{now_unix, CacheKey, CachedToken, Lookup, TokenCache, DEFAULT_MARGIN};

use crate::failure::Failure;
use crate::setup::{self, note, Component, RuntimeConfig};

/// Where a request's OIDC token comes from.
#[derive(Clone)]
pub enum TokenChoice {
    /// Read from this file at each call (a projected service account token).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
    /// The Kubernetes TokenRequest API, for the manifest's `serviceAccountRef`
    /// (kubeconfig: this file, else KUBECONFIG, `~/.kube/config`, in-cluster).
    Kubernetes(Option<PathBuf>),
    /// A source the door already holds (the kubelet's pod token, serve's client, the
    /// demo issuer), with its identity for the token cache when it has one.
    Given {
        /// The source.
        source: Arc<dyn TokenSource>,
        /// Its identity for the cache key; `None`: not cached.
        identity: Option<String>,
    },
}

impl TokenChoice {
    /// The pod's service account token the kubelet passed: the token itself is the
    /// source, and its claims are its identity.
    pub fn kubelet_token(token: Secret) -> TokenChoice {
        let identity = identity::kubelet_token(token.expose());
        TokenChoice::Given {
            source: Arc::new(cloudsmith_gen::token_source::StaticTokenSource::new(token)),
            identity,
        }
    }
}

/// One request for credentials, as a door puts it.
pub struct MintRequest {
    /// The generator manifest (JSON).
    pub manifest: String,
    /// The target namespace.
    pub namespace: String,
    /// Where the OIDC token comes from.
    pub tokens: TokenChoice,
    /// Whether a `serviceAccountRef.namespace` other than the target is honoured.
    pub namespaces: NamespacePolicy,
    /// When the caller gives up (the kubelet provider's `--deadline`); `None`: the
    /// call's deadline from now. Waiting for another process's exchange of the same
    /// token takes at most half the time left, so the caller's own exchange fits too.
    pub deadline: Option<Instant>,
}

/// What [`Mint::mint`] returns.
#[derive(Debug)]
pub struct Minted {
    /// ESO's outputs.
    pub credentials: Credentials,
    /// The access token, when `auth` is `token:<access token>` as the Cloudsmith
    /// generator writes it. Another generator (`--component`) may write other outputs:
    /// `generate` prints them as they are; the doors that hand out the access token
    /// itself need this.
    pub token: Option<CachedToken>,
    /// How much longer the token may be handed out: to its `exp` less the token cache's
    /// margin, so a client never caches a token about to expire.
    pub usable_for: Duration,
}

impl Minted {
    /// The access token, for the doors that hand it out.
    pub fn access_token(&self) -> Result<&CachedToken, Failure> {
        self.token.as_ref().ok_or_else(|| {
            Failure::Other(anyhow::anyhow!(
                "the generator's auth is not base64 of token:<access token>"
            ))
        })
    }
}

/// Something that mints credentials: the [`Minter`], or a test's fake.
pub trait Mint: Sync {
    /// Credentials for `request`.
    fn mint(&self, request: MintRequest) -> impl Future<Output = Result<Minted, Failure>> + Send;

    /// Credentials for `request` from a cache alone, synchronously and without an async
    /// runtime (a door's fast path); `None`: ask [`Mint::mint`].
    fn cached(&self, _request: &MintRequest) -> Option<Minted> {
        None
    }

    /// The service account token `request`'s token source gives for `wanted`: what the
    /// generator would be handed (`check` looks at it before any exchange).
    fn token(
        &self,
        request: &MintRequest,
        wanted: &TokenRequest,
    ) -> impl Future<Output = SourcedToken> + Send;

    /// Loads the generator now, so that a long-lived door fails at start on a bad
    /// component rather than at its first call.
    fn ready(&self) -> impl Future<Output = Result<(), Failure>> + Send {
        async { Ok(()) }
    }

    /// What the generator says about itself (`info`).
    fn info(&self) -> impl Future<Output = Result<GeneratorInfo, Failure>> + Send;
}

/// A token as a token source gave it ([`Mint::token`]).
pub struct SourcedToken {
    /// The source, in words (`token file /var/run/...`), never a secret.
    pub source: String,
    /// The token, or why the source gave none.
    pub token: Result<Secret, TokenSourceError>,
}

/// The sandboxed call under the mint port: what a [`Minter`] runs on a cache miss. The
/// [`Generator`] is the one implementation; the mint port's tests use a fake.
pub trait Exchange: Send + Sync {
    /// Runs the generator for `manifest` in `namespace` with the call's own token source.
    fn exchange(
        &self,
        manifest: &str,
        namespace: &str,
        tokens: &CallTokens,
    ) -> impl Future<Output = Traced<Credentials>> + Send;

    /// What the generator says about itself.
    fn info(&self) -> impl Future<Output = Result<GeneratorInfo, Error>> + Send;
}

impl Exchange for Generator {
    async fn exchange(&self, manifest: &str, namespace: &str, tokens: &CallTokens) -> Traced<Credentials> {
        self.generate_traced_with(manifest, namespace, Some(tokens)).await
    }

    async fn info(&self) -> Result<GeneratorInfo, Error> {
        Generator::info(self).await
    }
}

/// How a [`Minter`] gets its [`Exchange`]: built on the first call that needs it, then
/// kept, so a cache hit loads no component ([`crate::setup::Component`]).
pub trait Load: Send + Sync {
    /// What it builds.
    type Exchange: Exchange;

    /// Builds it (loads and links the component).
    fn load(&self) -> impl Future<Output = Result<Self::Exchange, Failure>> + Send;
}

/// An exchange already built, for a minter over a fake.
#[cfg(test)]
pub struct Ready<E>(pub E);

#[cfg(test)]
impl<E: Exchange + Clone> Load for Ready<E> {
    type Exchange = E;

    async fn load(&self) -> Result<E, Failure> {
        Ok(self.0.clone())
    }
}

/// What a process does after a cache miss ([`Minter::lead`]).
enum Lead {
    /// Another process exchanged while this one waited: its entry.
    Filled(CachedToken),
    /// Exchange, holding the single-flight lock when it could be taken (dropped once
    /// the entry is stored).
    Exchange(Option<FlightLock>),
}

/// How long a process waits for another's exchange of the same token: half the time
/// left before `deadline`, so that its own exchange still fits in the other half.
pub fn wait_until(now: Instant, deadline: Instant) -> Instant {
    now + deadline.saturating_duration_since(now) / 2
}

/// A [`Minter`]'s settings besides what it loads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The token cache; `None`: every call exchanges.
    pub cache: Option<TokenCache>,
    /// Whether every token a call uses passes through this host
    /// ([`RuntimeConfig::host_sees_tokens`]): otherwise the cache cannot key an answer.
    pub host_sees_tokens: bool,
    /// A call's deadline, for a request that names none.
    pub deadline: Duration,
    /// `-v`: notes on stderr.
    pub verbose: bool,
}

/// The mint port's one implementation: token cache, then the sandboxed generator.
pub struct Minter<L: Load = Component> {
    load: L,
    /// Built by `load` on the first call that needs it, then reused.
    exchange: tokio::sync::OnceCell<L::Exchange>,
    settings: Settings,
    /// Whether the one warning about an unusable token cache has been printed.
    warned: AtomicBool,
}

impl Minter {
    /// A minter for a one-shot door.
    pub fn new(config: RuntimeConfig, cache: Option<TokenCache>, verbose: bool) -> Self {
        Minter::component(config, None, cache, verbose)
    }

    /// A minter for a long-lived door: no token cache (each caller gets a fresh token,
    /// as ESO expects of a generator), one pooled engine with `slots` call slots.
    /// [`Mint::ready`] builds it up front.
    pub fn pooled(config: RuntimeConfig, slots: u32, verbose: bool) -> Self {
        Minter::component(config, Some(slots), None, verbose)
    }

    fn component(
        config: RuntimeConfig,
        slots: Option<u32>,
        cache: Option<TokenCache>,
        verbose: bool,
    ) -> Self {
        let settings = Settings {
            cache,
            host_sees_tokens: config.host_sees_tokens(),
            deadline: config.limits.deadline,
            verbose,
        };
        Minter::over(
            Component {
                config,
                slots,
                verbose,
            },
            settings,
        )
    }
}

impl<L: Load> Minter<L> {
    /// A minter over what `load` builds.
    pub fn over(load: L, settings: Settings) -> Self {
        Minter {
            load,
            exchange: tokio::sync::OnceCell::new(),
            settings,
            warned: AtomicBool::new(false),
        }
    }

    /// The exchange, built on first use.
    async fn exchange(&self) -> Result<&L::Exchange, Failure> {
        self.exchange.get_or_try_init(|| self.load.load()).await
    }

    fn note(&self, line: impl FnOnce() -> String) {
        if self.settings.verbose {
            note(&line());
        }
    }

    /// The cache key of `request`, when the request may use the cache.
    fn cache_key(&self, request: &MintRequest, identity: Option<&str>) -> Option<CacheKey> {
        self.settings.cache.as_ref()?;
        if !self.settings.host_sees_tokens {
            return None;
        }
        let cross = request.namespaces == NamespacePolicy::AllowCrossNamespace;
        CacheKey::for_call(&request.manifest, identity?, cross)
    }

    /// A cache that cannot be used costs an exchange, never the call: one line says so.
    fn warn_cache(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: token cache: {}; minting without it",
                cloudsmith_gen::secret::one_line(why, 300)
            );
        }
    }

    /// After a miss: waits for another process exchanging for `key`, and either finds
    /// its entry or goes ahead (holding the lock when it could take it).
    fn lead(&self, cache: &TokenCache, key: &CacheKey, deadline: Instant) -> Lead {
        // A blocking wait: one-shot doors run one call on their thread, nothing else.
        match cache.lock(key, wait_until(Instant::now(), deadline)) {
            Flight::Leader(lock) => match cache.get(key) {
                Lookup::Hit(token) => {
                    self.note(|| "token cache: filled by another process while this one waited".into());
                    Lead::Filled(token)
                }
                _ => Lead::Exchange(Some(lock)),
            },
            Flight::TimedOut => {
                self.note(|| "token cache: another process is still exchanging; exchanging too".into());
                Lead::Exchange(None)
            }
            Flight::Alone(why) => {
                self.warn_cache(&why);
                Lead::Exchange(None)
            }
        }
    }

    fn margin(&self) -> Duration {
        self.settings
            .cache
            .as_ref()
            .map_or(DEFAULT_MARGIN, TokenCache::margin)
    }

    fn minted(&self, credentials: Credentials, token: Option<CachedToken>) -> Minted {
        let usable_for = token.as_ref().map_or(Duration::ZERO, |t| {
            Duration::from_secs(
                t.exp
                    .saturating_sub(now_unix())
                    .saturating_sub(self.margin().as_secs()),
            )
        });
        Minted {
            credentials,
            token,
            usable_for,
        }
    }

    /// The request's token source, its cache key (when it may be cached) and the cache's
    /// answer (on a hit).
    fn lookup(&self, request: &MintRequest) -> (Arc<dyn TokenSource>, Option<CacheKey>, Option<Minted>) {
        let (source, identity) = request.tokens.resolve(&request.manifest, &request.namespace);
        let key = self.cache_key(request, identity.as_deref());
        let (Some(cache), Some(found)) = (&self.settings.cache, &key) else {
            self.note(|| {
                match &self.settings.cache {
                    None => "token cache: off",
                    Some(_) => "token cache: not used (no identity for this token source)",
                }
                .into()
            });
            return (source, key, None);
        };
        let hit = match cache.get(found) {
            Lookup::Hit(token) => {
                self.note(|| {
                    format!(
                        "token cache: hit {} (expiry {})",
                        cache.entry_path(found).display(),
                        token.expiry
                    )
                });
                Some(self.minted(token.credentials(), Some(token)))
            }
            Lookup::Miss => {
                self.note(|| "token cache: miss".into());
                None
            }
            Lookup::Unusable(why) => {
                self.note(|| format!("token cache: entry ignored ({why})"));
                None
            }
        };
        (source, key, hit)
    }
}

impl<L: Load> Mint for Minter<L> {
    fn cached(&self, request: &MintRequest) -> Option<Minted> {
        self.lookup(request).2
    }

    async fn mint(&self, request: MintRequest) -> Result<Minted, Failure> {
        let (source, key, hit) = self.lookup(&request);
        if let Some(minted) = hit {
            return Ok(minted);
        }
        let _flight = match (&self.settings.cache, &key) {
            (Some(cache), Some(key)) => {
                let deadline = request
                    .deadline
                    .unwrap_or_else(|| Instant::now() + self.settings.deadline);
                match self.lead(cache, key, deadline) {
                    Lead::Filled(token) => return Ok(self.minted(token.credentials(), Some(token))),
                    Lead::Exchange(lock) => lock,
                }
            }
            _ => None,
        };
        self.note(|| format!("token source: {}", source.describe()));
        let exchange = self.exchange().await?;
        let tokens = CallTokens {
            source,
            namespaces: request.namespaces,
        };
        let traced = exchange
            .exchange(&request.manifest, &request.namespace, &tokens)
            .await;
        let credentials = setup::settle(traced, self.settings.verbose)?;
        let token = CachedToken::from_credentials(&credentials);
        if let (Some(cache), Some(key), Some(token)) = (&self.settings.cache, &key, &token) {
            // A cache that cannot be written costs the next call an exchange, nothing more.
            match cache.put(key, token) {
                Ok(path) => self.note(|| format!("token cache: stored {}", path.display())),
                Err(e) => self.warn_cache(&format!("not stored: {e:#}")),
            }
        }
        Ok(self.minted(credentials, token))
    }

    async fn token(&self, request: &MintRequest, wanted: &TokenRequest) -> SourcedToken {
        let (source, _) = request.tokens.resolve(&request.manifest, &request.namespace);
        SourcedToken {
            source: source.describe(),
            token: source.token(wanted).await,
        }
    }

    async fn ready(&self) -> Result<(), Failure> {
        self.exchange().await.map(|_| ())
    }

    async fn info(&self) -> Result<GeneratorInfo, Failure> {
        self.exchange().await?.info().await.map_err(Failure::Call)
    }
}

impl TokenChoice {
    /// The token source this choice names.
    pub fn source(&self) -> Arc<dyn TokenSource> {
        match self {
            TokenChoice::File(path) => Arc::new(FileTokenSource::new(path)),
            TokenChoice::Env(var) => Arc::new(EnvTokenSource::new(var)),
            // Built lazily: a composed component that never asks needs no kubeconfig.
            TokenChoice::Kubernetes(kubeconfig) => Arc::new(KubernetesTokenSource::new(kubeconfig.clone())),
            TokenChoice::Given { source, .. } => source.clone(),
        }
    }

    /// The token source this choice names, and its identity for the token cache: the
    /// claims of the token it holds now (read locally, never sent anywhere), or for
    /// Kubernetes the cluster, user and service account. `None` when it cannot be told
    /// without a secret or a network call (the request is then not cached).
    pub fn resolve(&self, manifest: &str, namespace: &str) -> (Arc<dyn TokenSource>, Option<String>) {
        let identity = match self {
            TokenChoice::File(path) => identity::file(path),
            TokenChoice::Env(var) => identity::env(var),
            TokenChoice::Kubernetes(kubeconfig) => {
                kubernetes_identity(kubeconfig.as_deref(), manifest, namespace)
            }
            TokenChoice::Given { identity, .. } => identity.clone(),
        };
        (self.source(), identity)
    }
}

/// The identity of the TokenRequest source: the cluster and user of the kubeconfig's
/// current context (or the in-cluster API), and the service account and audiences the
/// manifest names. Read from local files only.
fn kubernetes_identity(kubeconfig: Option<&Path>, manifest: &str, namespace: &str) -> Option<String> {
    use kube::config::Kubeconfig;
    let account = GeneratorSpec::of_json(manifest)?.service_account_ref?;
    let cluster = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).ok(),
        None => Kubeconfig::read().ok(),
    };
    let cluster = match cluster {
        Some(config) => {
            let name = config.current_context.clone()?;
            let context = config.contexts.iter().find(|c| c.name == name)?.context.clone()?;
            let server = config
                .clusters
                .iter()
                .find(|c| c.name == context.cluster)
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())?;
            format!(
                "kubeconfig server={server}|user={}",
                context.user.unwrap_or_default()
            )
        }
        None if kubeconfig.is_none() => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            format!("in-cluster {host}")
        }
        None => return None,
    };
    Some(format!(
        "kubernetes {cluster}|namespace={namespace}|account={}/{}/{}",
        account.name.unwrap_or_default(),
        account.namespace.unwrap_or_default(),
        account.audiences.join(",")
    ))
}

#[cfg(test)]
pub mod fake {
    //! A [`Mint`] for door tests: a fixed access token (or a failure), a fixed OIDC
    //! token for [`Mint::token`], and a record of the requests.

    use std::sync::Mutex;

    use super::*;

    /// What [`FakeMint::mint`] answers for a request: `None` the access token, else
    /// this failure.
    pub type Outcome = Box<dyn Fn(&MintRequest) -> Option<Failure> + Send + Sync>;

    /// Answers every request with `token`, usable for `usable_for`.
    pub struct FakeMint {
        /// The access token handed out.
        pub token: &'static str,
        /// `Minted::usable_for`.
        pub usable_for: Duration,
        /// The requests seen: manifest, namespace, the token source's description.
        pub seen: Mutex<Vec<(String, String, String)>>,
        /// Whether [`Mint::cached`] answers (a warm cache), or says ask `mint`.
        pub warm: bool,
        /// Failures in place of the token, by request.
        pub outcome: Outcome,
        /// What [`Mint::token`] answers: the OIDC token, or the source's error.
        pub oidc: Result<String, String>,
        /// Whether `mint` never answers (a call that outlives its bound).
        pub stalls: bool,
    }

    impl FakeMint {
        /// A fake handing out `token`, usable for `seconds`.
        pub fn new(token: &'static str, seconds: u64) -> Self {
            FakeMint {
                token,
                usable_for: Duration::from_secs(seconds),
                seen: Mutex::new(Vec::new()),
                warm: false,
                outcome: Box::new(|_| None),
                oidc: Err("no OIDC token in this fake".into()),
                stalls: false,
            }
        }

        /// The same fake, failing as `outcome` says.
        pub fn failing(
            self,
            outcome: impl Fn(&MintRequest) -> Option<Failure> + Send + Sync + 'static,
        ) -> Self {
            FakeMint {
                outcome: Box::new(outcome),
                ..self
            }
        }

        /// The number of `mint` calls so far.
        pub fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }

        fn answer(&self) -> Minted {
            let token = CachedToken {
                access_token: Secret::new(self.token),
                expiry: "1700000000".into(),
                exp: 1_700_000_000,
            };
            Minted {
                credentials: token.credentials(),
                token: Some(token),
                usable_for: self.usable_for,
            }
        }
    }

    impl Mint for FakeMint {
        async fn mint(&self, request: MintRequest) -> Result<Minted, Failure> {
            let (source, _) = request.tokens.resolve(&request.manifest, &request.namespace);
            let failed = (self.outcome)(&request);
            self.seen
                .lock()
                .unwrap()
                .push((request.manifest, request.namespace, source.describe()));
            if self.stalls {
                std::future::pending::<()>().await;
            }
            match failed {
                Some(failure) => Err(failure),
                None => Ok(self.answer()),
            }
        }

        fn cached(&self, _request: &MintRequest) -> Option<Minted> {
            self.warm.then(|| self.answer())
        }

        async fn token(&self, request: &MintRequest, _wanted: &TokenRequest) -> SourcedToken {
            let (source, _) = request.tokens.resolve(&request.manifest, &request.namespace);
            SourcedToken {
                source: source.describe(),
                token: self.oidc.clone().map(Secret::new).map_err(TokenSourceError::new),
            }
        }

        async fn info(&self) -> Result<GeneratorInfo, Failure> {
            Ok(GeneratorInfo {
                kind: "CloudsmithAccessToken".into(),
                api_version: "generators.external-secrets.io/v1alpha1".into(),
                output_keys: vec!["auth".into(), "expiry".into()],
                version: "0.0.0-fake".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
