//! Where the generator's service account tokens come from.
//!
//! The guest imports `secretgen:generator/token-source`; the host answers it through a
//! [`TokenSource`] the embedder supplies. Three ship here: a projected token file
//! ([`FileTokenSource`]), an environment variable ([`EnvTokenSource`]) and the Kubernetes
//! TokenRequest API ([`KubernetesTokenSource`]); [`StaticTokenSource`] serves demos and tests.
//!
//! # Namespaces
//!
//! A token is always for the *target* namespace (the ExternalSecret's). ESO ignores
//! `serviceAccountRef.namespace` for namespaced generators; this host **refuses** a
//! reference that names another namespace instead of silently ignoring it, because
//! minting a token for another namespace's service account would let a manifest in one
//! namespace act as an identity of another (privilege escalation). An embedder that
//! really wants that sets [`NamespacePolicy::AllowCrossNamespace`]; the token is then
//! requested in the namespace the reference names.

mod env;
mod file;
mod kubernetes;

use std::fmt;

pub use env::EnvTokenSource;
pub use file::FileTokenSource;
pub use kubernetes::{error_line, kube_config_error, KubernetesTokenSource, TOKEN_SOURCE_FIX};

use crate::secret::Secret;

/// One request for a service account token, after the host's namespace check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The service account's name.
    pub service_account: String,
    /// The namespace to mint the token in (the target namespace unless cross-namespace
    /// use is allowed and the reference names another).
    pub namespace: String,
    /// Audiences the token must carry (never empty: the guest fills in the API's origin).
    pub audiences: Vec<String>,
}

impl fmt::Display for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service account {}/{}", self.namespace, self.service_account)
    }
}

/// Why a token source could not supply a token: one line that names the file, variable
/// or service account, and never contains a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSourceError {
    message: String,
    unavailable: bool,
}

impl TokenSourceError {
    /// A failure described by `message` (made one line).
    pub fn new(message: impl AsRef<str>) -> Self {
        TokenSourceError {
            message: crate::secret::one_line(message.as_ref(), 400),
            unavailable: false,
        }
    }

    /// A source that did not answer in time (a hung API server): worth a retry, unlike
    /// a refusal. The host reports it as [`crate::HostError::TokenSourceUnavailable`].
    pub fn unavailable(message: impl AsRef<str>) -> Self {
        TokenSourceError {
            unavailable: true,
            ..TokenSourceError::new(message)
        }
    }

    /// Whether the source did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl fmt::Display for TokenSourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenSourceError {}

/// Supplies service account tokens to the generator. Called from many concurrent
/// calls at once, so implementations are `Send + Sync` and hold no per-call state.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Returns a service account token (a JWT) for `request`.
    async fn token(&self, request: &TokenRequest) -> Result<Secret, TokenSourceError>;

    /// A short description for logs (`token file /var/run/...`), never a secret.
    fn describe(&self) -> String;
}

/// Whether a `serviceAccountRef.namespace` other than the target namespace is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamespacePolicy {
    /// Refuse a reference that names another namespace (the default; see the module docs).
    #[default]
    TargetOnly,
    /// Mint the token in the namespace the reference names.
    AllowCrossNamespace,
}

impl NamespacePolicy {
    /// Resolves the namespace to mint in, or explains the refusal (one line).
    pub fn resolve(
        self,
        service_account: &str,
        referenced: Option<&str>,
        target: &str,
    ) -> Result<String, TokenSourceError> {
        match referenced.filter(|ns| !ns.is_empty()) {
            None => Ok(target.to_string()),
            Some(ns) if ns == target => Ok(target.to_string()),
            Some(ns) if self == NamespacePolicy::AllowCrossNamespace => Ok(ns.to_string()),
            Some(ns) => Err(TokenSourceError::new(format!(
                "serviceAccountRef {ns}/{service_account} names namespace {ns:?} but the target \
                 namespace is {target:?}: minting a token in another namespace is refused \
                 (cross-namespace use is not allowed by this host)"
            ))),
        }
    }
}

/// Always answers the same token: for demos, tests and embedders that already hold one.
#[derive(Clone)]
pub struct StaticTokenSource {
    token: Secret,
}

impl StaticTokenSource {
    /// A source that answers `token` for every request.
    pub fn new(token: Secret) -> Self {
        StaticTokenSource { token }
    }
}

impl fmt::Debug for StaticTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticTokenSource([redacted])")
    }
}

#[async_trait::async_trait]
impl TokenSource for StaticTokenSource {
    async fn token(&self, _request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        Ok(self.token.clone())
    }

    fn describe(&self) -> String {
        "a fixed token".into()
    }
}

/// Trims a token read from a file or variable and refuses an empty one.
fn cleaned(raw: &str, what: impl FnOnce() -> String) -> Result<Secret, TokenSourceError> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(TokenSourceError::new(format!("{} is empty", what())));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_policy() {
        let p = NamespacePolicy::TargetOnly;
        assert_eq!(p.resolve("sa", None, "team").unwrap(), "team");
        assert_eq!(p.resolve("sa", Some(""), "team").unwrap(), "team");
        assert_eq!(p.resolve("sa", Some("team"), "team").unwrap(), "team");
        let err = p
            .resolve("sa", Some("kube-system"), "team")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kube-system/sa") && err.contains("\"team\""),
            "{err}"
        );
        let allowed = NamespacePolicy::AllowCrossNamespace;
        assert_eq!(allowed.resolve("sa", Some("other"), "team").unwrap(), "other");
    }

    #[test]
    fn token_source_errors_are_one_line() {
        assert_eq!(TokenSourceError::new("a\nb").to_string(), "a b");
    }
}
