//! What can go wrong in a call, split by who decided it: the generator (the guest's
//! `generate-error`, mirrored case for case) or the host (sandbox limits, traps,
//! instantiation). Every `Display` is one line that names the cause and never a secret.

use std::fmt;
use std::time::Duration;

/// An HTTP status and Cloudsmith's explanation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The HTTP status code.
    pub status: u16,
    /// Cloudsmith's `detail`, or a short sanitized prefix of a non-JSON body.
    pub detail: String,
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

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::InvalidSpec(m) => write!(f, "invalid spec: {m}"),
            GenerateError::TokenSource(m) => write!(f, "token source failed: {m}"),
            GenerateError::PolicyDenied { message, host_reason } => {
                write!(f, "refused by host policy: {message}")?;
                if let Some(reason) = host_reason {
                    write!(f, "; {reason}")?;
                }
                Ok(())
            }
            GenerateError::Unauthorized(s) => write!(
                f,
                "Cloudsmith rejected the credentials ({}): {}",
                s.status, s.detail
            ),
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
            GenerateError::Upstream {
                status,
                detail,
                attempts,
                host_note,
            } => {
                write!(f, "Cloudsmith exchange failed after {attempts} attempt(s)")?;
                if let Some(s) = status {
                    write!(f, " ({s})")?;
                }
                write!(f, ": {detail}")?;
                if let Some(note) = host_note {
                    write!(f, "; {note}")?;
                }
                Ok(())
            }
            GenerateError::InvalidToken(m) => write!(f, "invalid token answer: {m}"),
        }
    }
}

impl std::error::Error for GenerateError {}

/// A failure the host detected or imposed, outside the generator's own logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The call ran past its overall deadline (epoch interruption, or a host call that
    /// did not return in time).
    DeadlineExceeded {
        /// The deadline that was exceeded.
        deadline: Duration,
    },
    /// The guest tried to grow its memory past the limit.
    MemoryLimitExceeded {
        /// The limit, in bytes.
        limit_bytes: usize,
    },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap(String),
    /// The component could not be linked or instantiated (it imports something this host
    /// does not provide, or the instance pool is exhausted).
    Instantiate(String),
    /// The generator succeeded but its outputs are not ESO's `auth` and `expiry`.
    InvalidOutput(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::DeadlineExceeded { deadline } => write!(
                f,
                "the generator did not finish within its {}s deadline",
                deadline.as_secs_f64()
            ),
            HostError::MemoryLimitExceeded { limit_bytes } => write!(
                f,
                "the generator exceeded its memory limit of {} MiB",
                limit_bytes / (1024 * 1024)
            ),
            HostError::Trap(m) => write!(f, "the generator crashed (wasm trap): {m}"),
            HostError::Instantiate(m) => write!(f, "could not instantiate the component: {m}"),
            HostError::InvalidOutput(m) => write!(f, "the generator returned unusable outputs: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

/// Why a call failed: the generator said so, or the host stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The generator's own failure.
    Generate(GenerateError),
    /// A host-side failure.
    Host(HostError),
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Generate(e) => e.fmt(f),
            Error::Host(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Generate(e) => Some(e),
            Error::Host(e) => Some(e),
        }
    }
}

impl From<GenerateError> for Error {
    fn from(e: GenerateError) -> Self {
        Error::Generate(e)
    }
}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        Error::Host(e)
    }
}
