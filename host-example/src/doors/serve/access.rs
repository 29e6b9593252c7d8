//! Who may ask: the caller's bearer token is checked with the TokenReview API, and a
//! caller asking for a namespace other than its own needs a SubjectAccessReview.
//!
//! # The permission
//!
//! A service account may always ask for its own namespace (the ExternalSecret's). Any
//! other request is allowed only when a SubjectAccessReview for the caller allows:
//!
//! | attribute   | value                              |
//! |-------------|------------------------------------|
//! | group       | `generators.external-secrets.io`   |
//! | resource    | `cloudsmithaccesstokens`           |
//! | subresource | `generate`                         |
//! | verb        | `create`                           |
//! | namespace   | the URL's namespace                |
//! | name        | the URL's generator name           |
//!
//! A subresource, as `serviceaccounts/token` is for tokens: granting `create` on
//! `cloudsmithaccesstokens/generate` lets a subject mint credentials without letting it
//! create or edit ESO's `CloudsmithAccessToken` objects, and the reverse.
//!
//! # Audiences
//!
//! With `--audience`, a TokenReview must say which of them the token was authenticated
//! for (`status.audiences`), and one must be among them; the API server's own webhook
//! client makes the same check (k8s.io/apiserver v0.34.4,
//! `plugin/pkg/authenticator/token/webhook/webhook.go`, `AuthenticateToken`: the wanted
//! audiences intersected with `status.audiences`, no intersection is unauthenticated).
//! An authenticator that ignored `spec.audiences` would otherwise let in a token minted
//! for any audience.
//!
//! # Bounds
//!
//! Each review call has a deadline (`--kube-timeout`): kube's client has no read timeout,
//! and a hung API server must cost a caller a 503, not a connection held forever. The
//! reviews in flight have bounds of their own (`--max-pending-reviews`), apart from the
//! sandbox's slots and queue, in two pools: one for tokens never seen to authenticate
//! (each needs a review, and anyone who reaches the port can send them), one for the
//! callers already let in (a token that authenticated before, when its cached review
//! runs out, and every SubjectAccessReview, which only an authenticated caller
//! reaches). A flood of unknown tokens fills the first pool only, so it cannot take the
//! places of callers already authenticated.
//!
//! # Cache
//!
//! A TokenReview that authenticates is reused for `--review-cache-ttl` (60 s by
//! default), never past the token's `exp`; a SubjectAccessReview decision likewise, for
//! the same caller and request. A refusal is reused for 5 s, in a store of its own, so
//! refusals never evict the answers of callers let in. An API server that did not answer
//! is never cached. Keys are digests ([`reviews::key`]): the cache holds no token.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::Semaphore;

use super::reviews::{self, Kept, Reuse, Reviews};

/// How long a refusal is reused.
pub const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Answers kept, of each kind; a caller is a few hundred bytes.
const CACHED_REVIEWS: usize = 10_000;

/// The permission's API group.
pub const GROUP: &str = "generators.external-secrets.io";
/// The permission's resource.
pub const RESOURCE: &str = "cloudsmithaccesstokens";
/// The permission's subresource.
pub const SUBRESOURCE: &str = "generate";
/// The permission's verb.
pub const VERB: &str = "create";

/// An authenticated caller, as TokenReview described it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `system:serviceaccount:<ns>:<name>` for a service account.
    pub username: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// How long what was decided about this caller may be reused: to the token's `exp`,
    /// at most [`ALLOWED_FOR`].
    reuse_for: Duration,
}

impl Caller {
    /// The namespace of a service account caller.
    pub fn namespace(&self) -> Option<&str> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty()).then_some(ns)
    }
}

/// Why a caller is turned away.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The token is not valid (401).
    Unauthenticated(String),
    /// The caller may not ask for this (403).
    Forbidden(String),
    /// The Kubernetes API could not answer, or not in time (503).
    Unavailable(String),
    /// Too many reviews in flight (503).
    Busy(String),
}

impl Refusal {
    /// How long this refusal may be reused: a decision of the API server's for a few
    /// seconds; its failure to answer, not at all.
    fn reuse(&self) -> Reuse {
        match self {
            Refusal::Unauthenticated(_) | Refusal::Forbidden(_) => (REFUSED_FOR, Kept::Refused),
            Refusal::Unavailable(_) | Refusal::Busy(_) => (Duration::ZERO, Kept::Refused),
        }
    }
}

/// The Kubernetes API's two review endpoints, under [`Access`]: kube's [`Client`], or a
/// test's fake. Each answers the review it is sent (its `status` filled in), or fails as
/// kube's client does.
pub trait Reviewer: Send + Sync {
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    fn token_review(
        &self,
        review: &TokenReview,
    ) -> impl Future<Output = Result<TokenReview, kube::Error>> + Send;

    /// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
    fn access_review(
        &self,
        review: &SubjectAccessReview,
    ) -> impl Future<Output = Result<SubjectAccessReview, kube::Error>> + Send;
}

impl Reviewer for Client {
    async fn token_review(&self, review: &TokenReview) -> Result<TokenReview, kube::Error> {
        let api: Api<TokenReview> = Api::all(self.clone());
        api.create(&PostParams::default(), review).await
    }

    async fn access_review(&self, review: &SubjectAccessReview) -> Result<SubjectAccessReview, kube::Error> {
        let api: Api<SubjectAccessReview> = Api::all(self.clone());
        api.create(&PostParams::default(), review).await
    }
}

/// Which pool of review places a review takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// A token never seen to authenticate.
    Unknown,
    /// A caller already let in: a known token's renewal, or a SubjectAccessReview.
    Known,
}

/// The TokenReview and SubjectAccessReview client.
pub struct Access<R> {
    reviewer: R,
    audiences: Vec<String>,
    timeout: Duration,
    /// How long an authenticating review is reused, at most.
    allowed_for: Duration,
    /// Places for reviews of unknown tokens.
    pending: Arc<Semaphore>,
    /// Places for the reviews of callers already let in.
    pending_known: Arc<Semaphore>,
    max_pending: usize,
    tokens: Reviews<Result<Caller, Refusal>>,
    decisions: Reviews<Result<(), Refusal>>,
    /// Digests of tokens that authenticated, until their `exp` (at most an hour): their
    /// renewals take the known callers' pool.
    known: std::sync::Mutex<std::collections::HashMap<reviews::Key, std::time::Instant>>,
}

/// How long a token is remembered as known when its `exp` cannot be read.
const KNOWN_FOR: Duration = Duration::from_secs(3600);

impl<R: Reviewer> Access<R> {
    /// Reviews with `reviewer`, each within `timeout`, at most `max_pending` at once in
    /// each pool; tokens must carry one of `audiences` (empty: the API server's own);
    /// an authenticating review is reused for `allowed_for` at most.
    pub fn new(
        reviewer: R,
        audiences: Vec<String>,
        timeout: Duration,
        max_pending: usize,
        allowed_for: Duration,
    ) -> Self {
        Access {
            reviewer,
            audiences,
            timeout,
            allowed_for,
            pending: Arc::new(Semaphore::new(max_pending)),
            pending_known: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            tokens: Reviews::new(CACHED_REVIEWS),
            decisions: Reviews::new(CACHED_REVIEWS),
            known: std::sync::Mutex::default(),
        }
    }

    /// Reviews in flight now, both pools.
    pub fn pending(&self) -> usize {
        2 * self.max_pending - self.pending.available_permits() - self.pending_known.available_permits()
    }

    /// Reviews under way or waited for, by key (single flight): back to zero when no
    /// caller is in a review, whether callers were answered or hung up.
    pub fn in_progress(&self) -> usize {
        self.tokens.in_flight() + self.decisions.in_flight()
    }

    /// The review gauges, for the metrics.
    pub fn gauges(&self) -> super::metrics::Reviews {
        super::metrics::Reviews {
            in_flight: self.pending(),
            in_progress: self.in_progress(),
            cached: self.tokens.len() + self.decisions.len(),
        }
    }

    /// Who `token` belongs to: a cached review, else a TokenReview.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        let key = reviews::key(&[b"token", token.as_bytes()]);
        let pool = if self.is_known(&key) {
            Pool::Known
        } else {
            Pool::Unknown
        };
        let (answer, cached) = self
            .tokens
            .get_or_review(key, || async {
                let answer = self.token_review(token, pool).await;
                let reuse = match &answer {
                    Ok(caller) => (caller.reuse_for, Kept::Allowed),
                    Err(refusal) => refusal.reuse(),
                };
                (answer, reuse)
            })
            .await;
        if let (Ok(_), false) = (&answer, cached) {
            self.remember(key, token);
        }
        answer
    }

    fn is_known(&self, key: &reviews::Key) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(key)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Remembers a token that authenticated, until its `exp`.
    fn remember(&self, key: reviews::Key, token: &str) {
        let now = std::time::Instant::now();
        let for_ = match cloudsmith_gen_core::jwt::Claims::read(token).and_then(|c| c.exp) {
            Some(exp) => KNOWN_FOR.min(Duration::from_secs(
                exp.saturating_sub(cloudsmith_gen_core::token_cache::now_unix()),
            )),
            None => KNOWN_FOR,
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= CACHED_REVIEWS {
            known.retain(|_, until| *until > now);
        }
        // Only authenticated tokens get here; past the bound, the oldest renewals take
        // the unknown pool again rather than the table growing.
        if known.len() < CACHED_REVIEWS {
            known.insert(key, now + for_);
        }
    }

    /// Runs `call` (a review) within a place of `pool` and the deadline.
    async fn bounded<T>(
        &self,
        what: &str,
        pool: Pool,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Refusal> {
        let places = match pool {
            Pool::Unknown => &self.pending,
            Pool::Known => &self.pending_known,
        };
        // Held until the review is answered or abandoned (dropped with its caller).
        let _place = places.clone().try_acquire_owned().map_err(|_| {
            Refusal::Busy(format!(
                "{} {what}s in flight, the most this server waits for: retry later",
                self.max_pending
            ))
        })?;
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => {
                answer.map_err(|e| Refusal::Unavailable(format!("{what} failed: {}", describe(&e))))
            }
            Err(_) => Err(Refusal::Unavailable(format!(
                "{what}: the Kubernetes API did not answer within {}s",
                self.timeout.as_secs_f64()
            ))),
        }
    }

    async fn token_review(&self, token: &str, pool: Pool) -> Result<Caller, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                token: Some(token.to_string()),
            },
            ..Default::default()
        };
        let answer = self
            .bounded("TokenReview", pool, self.reviewer.token_review(&review))
            .await?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let expected = || {
            if self.audiences.is_empty() {
                "the API server's audience".to_string()
            } else {
                self.audiences.join(", ")
            }
        };
        if status.authenticated != Some(true) || username.is_empty() {
            return Err(Refusal::Unauthenticated(format!(
                "the bearer token was not authenticated by TokenReview (expected audience: {})",
                expected()
            )));
        }
        // Authenticated for which audiences: one of ours must be among them (see the
        // module's doc). With no --audience, the API server's own is asked for, and any
        // token it authenticates is for it.
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(Refusal::Unauthenticated(format!(
                    "TokenReview authenticated the bearer token for audiences [{}], none of them {}",
                    granted
                        .iter()
                        .map(|a| cloudsmith_gen::secret::one_line(a, 100))
                        .collect::<Vec<_>>()
                        .join(", "),
                    expected()
                )));
            }
        }
        // Never past the token's own expiry (unknown: a short reuse only).
        let now = cloudsmith_gen_core::token_cache::now_unix();
        let reuse_for = match cloudsmith_gen_core::jwt::Claims::read(token).and_then(|c| c.exp) {
            Some(exp) => self.allowed_for.min(Duration::from_secs(exp.saturating_sub(now))),
            None => REFUSED_FOR.min(self.allowed_for),
        };
        Ok(Caller {
            username,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra,
            reuse_for,
        })
    }

    /// Whether `caller` may run generator `name` for `namespace`: its own namespace, or
    /// a (cached) SubjectAccessReview.
    pub async fn authorize(&self, caller: &Caller, namespace: &str, name: &str) -> Result<(), Refusal> {
        if caller.namespace() == Some(namespace) {
            return Ok(());
        }
        let extra = serde_json::to_vec(&caller.extra).unwrap_or_default();
        let groups = caller.groups.join("\n");
        let key = reviews::key(&[
            b"access",
            caller.username.as_bytes(),
            caller.uid.as_deref().unwrap_or("").as_bytes(),
            groups.as_bytes(),
            &extra,
            namespace.as_bytes(),
            name.as_bytes(),
        ]);
        let (answer, _) = self
            .decisions
            .get_or_review(key, || async {
                let answer = self.access_review(caller, namespace, name).await;
                let reuse = match &answer {
                    Ok(()) => (caller.reuse_for, Kept::Allowed),
                    Err(refusal) => refusal.reuse(),
                };
                (answer, reuse)
            })
            .await;
        answer
    }

    async fn access_review(&self, caller: &Caller, namespace: &str, name: &str) -> Result<(), Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: caller.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    subresource: Some(SUBRESOURCE.into()),
                    verb: Some(VERB.into()),
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            },
            ..Default::default()
        };
        // Only an authenticated caller gets here: the known callers' pool.
        let answer = self
            .bounded(
                "SubjectAccessReview",
                Pool::Known,
                self.reviewer.access_review(&review),
            )
            .await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        Err(Refusal::Forbidden(format!(
            "{} may not ask for namespace {namespace:?}: only its own namespace, unless allowed to \
             {VERB} {RESOURCE}/{SUBRESOURCE} (group {GROUP}) named {name:?} there",
            caller.username
        )))
    }
}

/// The part of a kube error a person needs.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => other.to_string(),
    }
}
