//! What a refusal or a failed call is in HTTP: its status, its case (the word in the
//! answer's `error.case`, the log's `case` and the metrics' `case` label) and, for what
//! may pass on its own, `Retry-After`.

use hyper::StatusCode;

use cloudsmith_gen::{Error, GenerateError, HostError};

use super::access::Refusal;
use crate::failure::Failure;

/// Retry-After for an upstream failure or a full queue, in seconds.
pub const RETRY_UPSTREAM_SECONDS: u64 = 10;
/// Retry-After for a Cloudsmith rate limit that named no wait, in seconds.
pub const RETRY_RATE_LIMITED_SECONDS: u64 = 60;

/// The status, case and message of a caller turned away by [`super::access`].
pub fn refusal(refusal: Refusal) -> (StatusCode, &'static str, String) {
    match refusal {
        Refusal::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
        Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
        Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        Refusal::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, "busy", m),
    }
}

/// The status, case and Retry-After of a failed call, by the classification every door
/// shares ([`Failure`]). The cases are the WIT `generate-error` cases; host failures have
/// their own names.
pub fn failure(failure: &Failure) -> (StatusCode, &'static str, Option<u64>) {
    let e = match failure {
        Failure::Call(e) => e,
        Failure::OutOfTime(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline-exceeded",
                Some(RETRY_UPSTREAM_SECONDS),
            )
        }
        // The component or the configuration: the operator's to fix, not the caller's.
        // (serve fetches a registry's component at start, so a call never meets Registry.)
        Failure::Usage(_) | Failure::Other(_) | Failure::Registry(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
        }
    };
    match e {
        Error::Generate(g) => match g {
            GenerateError::InvalidSpec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", None),
            // The spec names a host or scheme this server will not reach: fix the manifest.
            GenerateError::PolicyDenied { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy-denied", None),
            // The TokenRequest for the manifest's service account failed (no such
            // account in the namespace, or this server may not mint for it).
            GenerateError::TokenSource(_) => (StatusCode::BAD_GATEWAY, "token-source", None),
            GenerateError::Unauthorized(_) => (StatusCode::BAD_GATEWAY, "unauthorized", None),
            GenerateError::Rejected(_) => (StatusCode::BAD_GATEWAY, "rejected", None),
            GenerateError::InvalidToken(_) => (StatusCode::BAD_GATEWAY, "invalid-token", None),
            GenerateError::RateLimited {
                retry_after_seconds, ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limited",
                Some(
                    retry_after_seconds
                        .map_or(RETRY_RATE_LIMITED_SECONDS, u64::from)
                        .max(1),
                ),
            ),
            GenerateError::Upstream { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
        },
        Error::Host(h) => match h {
            // The Kubernetes API did not answer the TokenRequest in time (--kube-timeout).
            HostError::TokenSourceUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
            HostError::DeadlineExceeded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline-exceeded",
                Some(RETRY_UPSTREAM_SECONDS),
            ),
            HostError::MemoryLimitExceeded { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "memory-limit-exceeded", None)
            }
            HostError::SandboxLimitExceeded(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "sandbox-limit-exceeded", None)
            }
            HostError::Trap(_) => (StatusCode::INTERNAL_SERVER_ERROR, "trap", None),
            HostError::Instantiate(_) => (StatusCode::INTERNAL_SERVER_ERROR, "instantiate", None),
            HostError::InvalidOutput(_) => (StatusCode::INTERNAL_SERVER_ERROR, "invalid-output", None),
        },
    }
}
