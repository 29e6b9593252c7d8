//! What can go wrong in a call, split by who decided it: the generator (the guest's
//! `generate-error`, mirrored case for case) or the host (sandbox limits, traps,
//! instantiation). Every `Display` is one line that names the cause and never a secret.

use std::fmt;
use std::time::Duration;

use cloudsmith_access_token::error as guest;

/// An HTTP status and Cloudsmith's explanation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The HTTP status code.
    pub status: u16,
    /// Cloudsmith's `detail`, or a short sanitized prefix of a non-JSON body.
    pub detail: String,
    /// For a refusal of the credentials ([`GenerateError::Unauthorized`]): what the host
    /// knows of the service account token the exchange carried, so that the error names
    /// the issuer and subject Cloudsmith's OIDC service must trust. `None` elsewhere.
    pub token: Option<PresentedToken>,
}

/// The service account token behind a refused exchange, as the host saw it: its claims,
/// never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentedToken {
    /// The claims of the token the host handed to the guest (the last one, when it
    /// handed out more than one). Each is one line and bounded.
    Claims {
        /// `iss`, when the token has a string one.
        iss: Option<String>,
        /// `sub`, when the token has a string one.
        sub: Option<String>,
        /// `aud`.
        aud: Vec<String>,
    },
    /// The host handed out a token that is not a JWT, so it has no claims to read.
    NotJwt,
    /// The host handed out no token: a composed component reads its own.
    NotHandedOut,
}

/// Longest claim value an error repeats; claims come from the token, whose issuer
/// could make them arbitrarily long.
const MAX_CLAIM_CHARS: usize = 200;

impl PresentedToken {
    /// What the host knows of `token`, the one it handed to the guest (`None`: none).
    pub fn of(token: Option<&str>) -> PresentedToken {
        let Some(token) = token else {
            return PresentedToken::NotHandedOut;
        };
        match crate::jwt::Claims::read(token) {
            None => PresentedToken::NotJwt,
            Some(claims) => {
                let clean = |s: &str| crate::secret::one_line(s, MAX_CLAIM_CHARS);
                PresentedToken::Claims {
                    iss: claims.iss.as_deref().map(clean),
                    sub: claims.sub.as_deref().map(clean),
                    aud: claims.aud.iter().map(|a| clean(a)).collect(),
                }
            }
        }
    }
}

impl fmt::Display for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresentedToken::Claims { iss, sub, aud } => {
                let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
                let aud = if aud.is_empty() {
                    "(none)".to_string()
                } else {
                    aud.join(",")
                };
                write!(
                    f,
                    "the token's iss={}, sub={}, aud={aud}",
                    or_none(iss),
                    or_none(sub)
                )
            }
            PresentedToken::NotJwt => write!(
                f,
                "the token the host handed out is not a JWT, so it names no issuer or subject"
            ),
            PresentedToken::NotHandedOut => write!(
                f,
                "the token's claims are unknown: the component read the token itself"
            ),
        }
    }
}

/// The guest's `generate-error`, mirrored from the WIT variant.
///
/// The strings come from the guest: the host makes them one line, bounds their length and
/// scrubs the service account token it handed out before they get here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerateError {
    /// The manifest or spec is invalid; the message names the field.
    InvalidSpec(String),
    /// The token source could not supply a service account token.
    TokenSource(String),
    /// The host's outbound policy refused the request.
    PolicyDenied {
        /// What the guest reported.
        message: String,
        /// Why the host refused it (which authority, which rule), when the host saw it.
        host_reason: Option<String>,
    },
    /// Cloudsmith refused the credentials (401 or 403).
    Unauthorized(UpstreamStatus),
    /// Cloudsmith refused the request itself (another 4xx).
    Rejected(UpstreamStatus),
    /// Cloudsmith rate-limited the exchange (429) beyond what retries could absorb.
    RateLimited {
        /// The wait Cloudsmith asked for, in seconds, when known.
        retry_after_seconds: Option<u32>,
        /// Cloudsmith's explanation, if it gave one.
        detail: String,
    },
    /// A server error or transport failure persisted after retries.
    Upstream {
        /// The last HTTP status, or `None` when the last attempt got no answer.
        status: Option<u16>,
        /// What went wrong on the last attempt, as the guest saw it.
        detail: String,
        /// How many attempts the guest made.
        attempts: u32,
        /// The host's account of the last transport failure (connect, TLS, timeout),
        /// which is more precise than the error code the guest receives.
        host_note: Option<String>,
    },
    /// Cloudsmith answered with success but not with a usable token.
    InvalidToken(String),
}

impl GenerateError {
    /// Whether trying again later may succeed without changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GenerateError::RateLimited { .. } | GenerateError::Upstream { .. }
        )
    }
}

impl GenerateError {
    /// The component's own error for this one: the same case, with the words the
    /// component writes, without what only the host knows.
    fn guest(&self) -> guest::GenerateError {
        let status = |s: &UpstreamStatus| guest::UpstreamStatus {
            status: s.status,
            detail: s.detail.clone(),
        };
        match self {
            GenerateError::InvalidSpec(m) => guest::GenerateError::InvalidSpec(m.clone()),
            GenerateError::TokenSource(m) => guest::GenerateError::TokenSource(m.clone()),
            GenerateError::PolicyDenied { message, .. } => {
                guest::GenerateError::PolicyDenied(message.clone())
            }
            GenerateError::Unauthorized(s) => guest::GenerateError::Unauthorized(status(s)),
            GenerateError::Rejected(s) => guest::GenerateError::Rejected(status(s)),
            GenerateError::RateLimited {
                retry_after_seconds,
                detail,
            } => guest::GenerateError::RateLimited {
                retry_after_seconds: *retry_after_seconds,
                detail: detail.clone(),
            },
            GenerateError::Upstream {
                status,
                detail,
                attempts,
                ..
            } => guest::GenerateError::Upstream(guest::UpstreamFailure {
                status: *status,
                detail: detail.clone(),
                attempts: *attempts,
            }),
            GenerateError::InvalidToken(m) => guest::GenerateError::InvalidToken(m.clone()),
        }
    }
}

/// The component's words ([`cloudsmith_access_token::error`]), then what the host adds.
impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.guest())?;
        match self {
            GenerateError::PolicyDenied {
                host_reason: Some(reason),
                ..
            } => write!(f, "; {reason}"),
            GenerateError::Unauthorized(UpstreamStatus {
                status,
                token: Some(token @ PresentedToken::Claims { .. }),
                ..
            }) => {
                write!(
                    f,
                    "; {token}: the Cloudsmith OIDC service must trust this issuer and subject"
                )?;
                if *status == 403 {
                    write!(f, ", and have permission on the repositories")?;
                }
                Ok(())
            }
            GenerateError::Unauthorized(UpstreamStatus {
                token: Some(token), ..
            }) => write!(f, "; {token}"),
            GenerateError::Upstream {
                host_note: Some(note),
                ..
            } => write!(f, "; {note}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for GenerateError {}

/// A failure the host detected or imposed, outside the generator's own logic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The call ran past its overall deadline (epoch interruption, or a host call that
    /// did not return in time).
    #[error("the generator did not finish within its {}s deadline", deadline.as_secs_f64())]
    DeadlineExceeded {
        /// The deadline that was exceeded.
        deadline: Duration,
    },
    /// The guest ran over the call's memory budget: its linear memories and tables
    /// together, or the host resources it holds (see `sandbox::Budget`).
    #[error("the generator exceeded its memory limit of {} MiB", limit_bytes / (1024 * 1024))]
    MemoryLimitExceeded {
        /// The limit, in bytes.
        limit_bytes: usize,
    },
    /// The guest went past one of the sandbox's counts or bounds: more core instances,
    /// linear memories or tables than a call may create, or too much data passed to the
    /// host at once. The text names which.
    #[error("the generator exceeded its sandbox limits: {0}")]
    SandboxLimitExceeded(String),
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    #[error("the generator crashed (wasm trap): {0}")]
    Trap(String),
    /// The component could not be linked or instantiated (it imports something this host
    /// does not provide, or the instance pool is exhausted).
    #[error("could not instantiate the component: {0}")]
    Instantiate(String),
    /// The generator succeeded but its outputs are not ESO's `auth` and `expiry`.
    #[error("the generator returned unusable outputs: {0}")]
    InvalidOutput(String),
    /// The host's token source did not answer in time (a hung Kubernetes API server);
    /// the guest reported it as a token-source failure. Worth a retry.
    #[error("token source unavailable: {0}")]
    TokenSourceUnavailable(String),
}

/// Why a call failed: the generator said so, or the host stopped it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The generator's own failure.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A host-side failure.
    #[error(transparent)]
    Host(#[from] HostError),
}

impl Error {
    /// Whether trying again later may succeed without changing anything (rate limits,
    /// upstream failures, deadlines).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Generate(e) => e.is_transient(),
            Error::Host(e) => matches!(e, HostError::DeadlineExceeded { .. }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256"}"#),
            b64(payload),
            b64("signature")
        )
    }

    fn refused(token: Option<&str>) -> String {
        GenerateError::Unauthorized(UpstreamStatus {
            status: 401,
            detail: "OIDC token cannot be authenticated".into(),
            token: Some(PresentedToken::of(token)),
        })
        .to_string()
    }

    #[test]
    fn a_refusal_names_the_claims_of_the_token_and_never_the_token() {
        let token = jwt(
            r#"{"iss":"https://k8s.example","sub":"system:serviceaccount:apps:puller","aud":["https://api.cloudsmith.io","x"],"exp":1}"#,
        );
        let line = refused(Some(&token));
        assert_eq!(
            line,
            "Cloudsmith rejected the credentials (401): OIDC token cannot be authenticated; \
             the token's iss=https://k8s.example, sub=system:serviceaccount:apps:puller, \
             aud=https://api.cloudsmith.io,x: the Cloudsmith OIDC service must trust this issuer and subject"
        );
        for part in token.split('.') {
            assert!(!line.contains(part), "{part} in {line}");
        }
    }

    #[test]
    fn a_refusal_says_what_the_host_could_not_know() {
        assert!(refused(None).ends_with(
            "OIDC token cannot be authenticated; the token's claims are unknown: the component read the token itself"
        ));
        assert!(refused(Some("opaque-token")).contains("is not a JWT"));
        assert!(!refused(Some("opaque-token")).contains("opaque-token"));
        // Missing claims, and a claim that would break the line.
        let odd = refused(Some(&jwt(r#"{"sub":"a\nb"}"#)));
        assert!(odd.contains("iss=(none), sub=a b, aud=(none)"), "{odd}");
        let forbidden = GenerateError::Unauthorized(UpstreamStatus {
            status: 403,
            detail: "no".into(),
            token: Some(PresentedToken::of(Some(&jwt(
                r#"{"iss":"i","sub":"s","aud":"a"}"#,
            )))),
        });
        assert_eq!(
            forbidden.to_string(),
            "Cloudsmith rejected the credentials (403): no; the token's iss=i, sub=s, aud=a: \
             the Cloudsmith OIDC service must trust this issuer and subject, and have permission on the repositories"
        );
        // Without what the host saw (a status built elsewhere), the line is Cloudsmith's.
        let bare = GenerateError::Unauthorized(UpstreamStatus {
            status: 403,
            detail: "no".into(),
            token: None,
        });
        assert_eq!(bare.to_string(), "Cloudsmith rejected the credentials (403): no");
    }
}
