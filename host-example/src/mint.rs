//! The mint port: every door asks it for credentials, the same way.
//!
//! A [`Minter`] holds the runtime configuration, the token cache and the verbosity, and
//! answers [`Mint::mint`]: the token cache first (a hit runs no Wasm and makes no network
//! call), else the sandboxed generator, whose answer then fills the cache. It builds its
//! [`Generator`] once, on the first miss, and keeps it: a long-lived door (`serve`) makes
//! one [`Minter::pooled`] and so one pooled engine for all its calls. Each request brings
//! its own token source ([`CallTokens`]), so one generator serves them all.
//!
//! Doors take `&impl Mint`, so their tests drive the real door with a fake.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_example::flight::{Flight, FlightLock};
use host_example::identity;
use host_example::spec::GeneratorSpec;
use host_example::token_cache::{now_unix, CacheKey, CachedToken, Lookup, TokenCache, DEFAULT_MARGIN};
use host_example::token_source::{EnvTokenSource, FileTokenSource, KubernetesTokenSource};
use host_example::{CallTokens, Credentials, Generator, NamespacePolicy, Secret, TokenSource};

use crate::failure::Failure;
use crate::setup::{self, note, RuntimeConfig};

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
            source: Arc::new(host_example::token_source::StaticTokenSource::new(token)),
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
}

/// What a process does after a cache miss ([`Minter::lead`]).
enum Lead {
    /// Another process exchanged while this one waited: its entry.
    Filled(CachedToken),
    /// Exchange, holding the single-flight lock when it could be taken (dropped once
    /// the entry is stored).
    Exchange(Option<FlightLock>),
}

/// The mint port's one implementation: token cache, then the sandboxed generator.
pub struct Minter {
    config: RuntimeConfig,
    cache: Option<TokenCache>,
    verbose: bool,
    /// A pooled engine with this many slots (a long-lived server), else one call.
    slots: Option<u32>,
    /// Built on the first miss, then reused.
    generator: Mutex<Option<Generator>>,
    /// Whether the one warning about an unusable token cache has been printed.
    warned: AtomicBool,
}

impl Minter {
    /// A minter for a one-shot door.
    pub fn new(config: RuntimeConfig, cache: Option<TokenCache>, verbose: bool) -> Self {
        Minter {
            config,
            cache,
            verbose,
            slots: None,
            generator: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// A minter for a long-lived door: no token cache (each caller gets a fresh token,
    /// as ESO expects of a generator), one pooled engine with `slots` call slots.
    /// [`Minter::prepare`] builds it up front.
    pub fn pooled(config: RuntimeConfig, slots: u32, verbose: bool) -> Self {
        Minter {
            slots: Some(slots),
            ..Minter::new(config, None, verbose)
        }
    }

    /// Loads the component and links the generator now, so the first call does not pay
    /// for it and a bad component fails at start; `tokens` is the source of calls that
    /// bring none.
    pub async fn prepare(&self, tokens: Arc<dyn TokenSource>) -> Result<Generator, Failure> {
        if let Some(generator) = &*self.generator.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(generator.clone());
        }
        // Not held across the load: the one caller that races another (none today: serve
        // prepares once at start, one-shot doors call once) would only build twice.
        let generator = setup::load(
            &self.config,
            tokens,
            NamespacePolicy::TargetOnly,
            self.slots,
            self.verbose,
        )
        .await?;
        *self.generator.lock().unwrap_or_else(|p| p.into_inner()) = Some(generator.clone());
        Ok(generator)
    }

    /// The cache key of `request`, when the request may use the cache.
    fn cache_key(&self, request: &MintRequest, identity: Option<&str>) -> Option<CacheKey> {
        self.cache.as_ref()?;
        if !self.config.host_sees_tokens() {
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
                host_example::secret::one_line(why, 300)
            );
        }
    }

    /// After a miss: waits for another process exchanging for `key`, and either finds
    /// its entry or goes ahead (holding the lock when it could take it).
    fn lead(&self, cache: &TokenCache, key: &CacheKey, deadline: Instant) -> Lead {
        let now = Instant::now();
        let until = now + deadline.saturating_duration_since(now) / 2;
        // A blocking wait: one-shot doors run one call on their thread, nothing else.
        match cache.lock(key, until) {
            Flight::Leader(lock) => match cache.get(key) {
                Lookup::Hit(token) => {
                    if self.verbose {
                        note("token cache: filled by another process while this one waited");
                    }
                    Lead::Filled(token)
                }
                _ => Lead::Exchange(Some(lock)),
            },
            Flight::TimedOut => {
                if self.verbose {
                    note("token cache: another process is still exchanging; exchanging too");
                }
                Lead::Exchange(None)
            }
            Flight::Alone(why) => {
                self.warn_cache(&why);
                Lead::Exchange(None)
            }
        }
    }

    fn margin(&self) -> Duration {
        self.cache.as_ref().map_or(DEFAULT_MARGIN, TokenCache::margin)
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
}

impl Minter {
    /// The request's token source, its cache key (when it may be cached) and the cache's
    /// answer (on a hit).
    fn lookup(&self, request: &MintRequest) -> (Arc<dyn TokenSource>, Option<CacheKey>, Option<Minted>) {
        let (source, identity) = token_source(&request.tokens, &request.manifest, &request.namespace);
        let key = self.cache_key(request, identity.as_deref());
        let (Some(cache), Some(found)) = (&self.cache, &key) else {
            if self.verbose {
                note(match &self.cache {
                    None => "token cache: off",
                    Some(_) => "token cache: not used (no identity for this token source)",
                });
            }
            return (source, key, None);
        };
        let hit = match cache.get(found) {
            Lookup::Hit(token) => {
                if self.verbose {
                    note(&format!(
                        "token cache: hit {} (expiry {})",
                        cache.entry_path(found).display(),
                        token.expiry
                    ));
                }
                Some(self.minted(token.credentials(), Some(token)))
            }
            Lookup::Miss => {
                if self.verbose {
                    note("token cache: miss");
                }
                None
            }
            Lookup::Unusable(why) => {
                if self.verbose {
                    note(&format!("token cache: entry ignored ({why})"));
                }
                None
            }
        };
        (source, key, hit)
    }
}

impl Mint for Minter {
    fn cached(&self, request: &MintRequest) -> Option<Minted> {
        self.lookup(request).2
    }

    async fn mint(&self, request: MintRequest) -> Result<Minted, Failure> {
        let (source, key, hit) = self.lookup(&request);
        if let Some(minted) = hit {
            return Ok(minted);
        }
        let _flight = match (&self.cache, &key) {
            (Some(cache), Some(key)) => {
                let deadline = request
                    .deadline
                    .unwrap_or_else(|| Instant::now() + self.config.limits.deadline);
                match self.lead(cache, key, deadline) {
                    Lead::Filled(token) => return Ok(self.minted(token.credentials(), Some(token))),
                    Lead::Exchange(lock) => lock,
                }
            }
            _ => None,
        };
        if self.verbose {
            note(&format!("token source: {}", source.describe()));
        }
        let generator = self.prepare(source.clone()).await?;
        let tokens = CallTokens {
            source,
            namespaces: request.namespaces,
        };
        let traced = generator
            .generate_traced_with(&request.manifest, &request.namespace, Some(&tokens))
            .await;
        let credentials = setup::settle(traced, self.verbose)?;
        let token = CachedToken::from_credentials(&credentials);
        if let (Some(cache), Some(key), Some(token)) = (&self.cache, &key, &token) {
            // A cache that cannot be written costs the next call an exchange, nothing more.
            match cache.put(key, token) {
                Ok(path) if self.verbose => note(&format!("token cache: stored {}", path.display())),
                Ok(_) => {}
                Err(e) => self.warn_cache(&format!("not stored: {e:#}")),
            }
        }
        Ok(self.minted(credentials, token))
    }
}

/// The token source a choice names, and its identity for the token cache: the claims of
/// the token it holds now (read locally, never sent anywhere), or for Kubernetes the
/// cluster, user and service account. `None` when it cannot be told without a secret
/// or a network call (the request is then not cached).
pub fn token_source(
    choice: &TokenChoice,
    manifest: &str,
    namespace: &str,
) -> (Arc<dyn TokenSource>, Option<String>) {
    match choice {
        TokenChoice::File(path) => (Arc::new(FileTokenSource::new(path)), identity::file(path)),
        TokenChoice::Env(var) => (Arc::new(EnvTokenSource::new(var)), identity::env(var)),
        // Built lazily: a composed component that never asks needs no kubeconfig.
        TokenChoice::Kubernetes(kubeconfig) => (
            Arc::new(KubernetesTokenSource::new(kubeconfig.clone())),
            kubernetes_identity(kubeconfig.as_deref(), manifest, namespace),
        ),
        TokenChoice::Given { source, identity } => (source.clone(), identity.clone()),
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
    //! A [`Mint`] for door tests: a fixed access token, and a record of the requests.

    use super::*;

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
    }

    impl FakeMint {
        /// A fake handing out `token`, usable for `seconds`.
        pub fn new(token: &'static str, seconds: u64) -> Self {
            FakeMint {
                token,
                usable_for: Duration::from_secs(seconds),
                seen: Mutex::new(Vec::new()),
                warm: false,
            }
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
            let (source, _) = token_source(&request.tokens, &request.manifest, &request.namespace);
            self.seen
                .lock()
                .unwrap()
                .push((request.manifest, request.namespace, source.describe()));
            Ok(self.answer())
        }

        fn cached(&self, _request: &MintRequest) -> Option<Minted> {
            self.warm.then(|| self.answer())
        }
    }
}
