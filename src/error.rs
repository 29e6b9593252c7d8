//! The generator's failures, one case per thing a host may want to act on.
//! Mirrors the WIT `generate-error` variant case for case.

use alloc::string::String;
use core::fmt;

/// An HTTP status and Cloudsmith's explanation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The HTTP status code.
    pub status: u16,
    /// Cloudsmith's `detail`, or a sanitized prefix of a non-JSON body.
    pub detail: String,
}

/// A server error or transport failure that persisted after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The last status, if the last attempt got an answer.
    pub status: Option<u16>,
    /// What went wrong on the last attempt.
    pub detail: String,
    /// How many attempts were made.
    pub attempts: u32,
}

/// Why `generate` failed. No variant ever holds a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerateError {
    /// The manifest is unusable; the message names the field.
    InvalidSpec(String),
    /// The token source failed.
    TokenSource(String),
    /// The host's outbound policy refused the request.
    PolicyDenied(String),
    /// Cloudsmith answered 401 or 403.
    Unauthorized(UpstreamStatus),
    /// Cloudsmith answered another 4xx.
    Rejected(UpstreamStatus),
    /// Cloudsmith answered 429 beyond what retries could absorb.
    RateLimited {
        /// The wait Cloudsmith asked for, in seconds.
        retry_after_seconds: Option<u32>,
        /// Cloudsmith's explanation.
        detail: String,
    },
    /// Server errors or transport failures persisted.
    Upstream(UpstreamFailure),
    /// A success answer without a usable token.
    InvalidToken(String),
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::InvalidSpec(m) => write!(f, "invalid spec: {m}"),
            GenerateError::TokenSource(m) => write!(f, "token source failed: {m}"),
            GenerateError::PolicyDenied(m) => write!(f, "refused by host policy: {m}"),
            GenerateError::Unauthorized(s) => {
                write!(
                    f,
                    "Cloudsmith rejected the credentials ({}): {}",
                    s.status, s.detail
                )
            }
            GenerateError::Rejected(s) => {
                write!(f, "Cloudsmith rejected the request ({}): {}", s.status, s.detail)
            }
            GenerateError::RateLimited {
                retry_after_seconds,
                detail,
            } => {
                write!(f, "Cloudsmith rate limit (429)")?;
                if let Some(s) = retry_after_seconds {
                    write!(f, ", retry after {s}s")?;
                }
                if !detail.is_empty() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
            GenerateError::Upstream(u) => {
                write!(f, "Cloudsmith exchange failed after {} attempt(s)", u.attempts)?;
                if let Some(s) = u.status {
                    write!(f, " ({s})")?;
                }
                write!(f, ": {}", u.detail)
            }
            GenerateError::InvalidToken(m) => write!(f, "invalid token answer: {m}"),
        }
    }
}
