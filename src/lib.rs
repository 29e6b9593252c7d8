//! ESO's `CloudsmithAccessToken` generator as a WASI 0.2 component.
//!
//! [`generate`] reads like the data's way through: parse the spec, ask the
//! token source, exchange with Cloudsmith (retrying what may pass), and encode
//! ESO's outputs. Everything it needs from the outside world goes through
//! [`Platform`], so the whole flow runs natively under `cargo test`; the
//! component implements `Platform` with `wasi:http` in `component` and `http`.

#![deny(missing_docs)]
// The component carries no std runtime (see `runtime`); native builds, which
// run the unit tests and fuzz targets, keep std.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod de;
pub mod error;
pub mod exchange;
pub mod jwt;
pub mod output;
pub mod sanitize;
pub mod secret;
pub mod spec;

#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod runtime;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

pub use error::GenerateError;
use exchange::{Answer, Request, RetryPolicy, Timeouts, TransportError, Verdict};
use sanitize::one_line;
use secret::Secret;
use spec::ServiceAccountRef;

/// What the generator needs from its host.
pub trait Platform {
    /// Gets a service account token for `account` in the target `namespace`.
    fn service_account_token(
        &mut self,
        account: &ServiceAccountRef,
        namespace: &str,
    ) -> Result<Secret, String>;
    /// Sends `request`, reading at most [`exchange::MAX_ANSWER_BYTES`] of the body.
    fn send(&mut self, request: &Request, timeouts: Timeouts) -> Result<Answer, TransportError>;
    /// Waits `duration` (between attempts).
    fn sleep(&mut self, duration: Duration);
    /// Time since the call began, from a monotonic clock.
    fn elapsed(&self) -> Duration;
    /// Wall-clock UNIX seconds, if known (for HTTP-date `Retry-After`).
    fn now_unix(&self) -> Option<u64>;
}

/// The output map: exactly ESO's keys, `auth` then `expiry`.
pub type Outputs = Vec<(String, Vec<u8>)>;

/// Runs the generator: `manifest` is the generator resource or its spec (JSON),
/// `namespace` the target namespace.
pub fn generate(
    platform: &mut impl Platform,
    manifest: &str,
    namespace: &str,
) -> Result<Outputs, GenerateError> {
    generate_with(platform, manifest, namespace, &RetryPolicy::default())
}

/// [`generate`] with an explicit retry policy.
pub fn generate_with(
    platform: &mut impl Platform,
    manifest: &str,
    namespace: &str,
    policy: &RetryPolicy,
) -> Result<Outputs, GenerateError> {
    let spec = spec::parse_manifest(manifest).map_err(|e| GenerateError::InvalidSpec(e.0))?;
    spec::validate_namespace(namespace, "target namespace").map_err(|e| GenerateError::InvalidSpec(e.0))?;

    let oidc_token = platform
        .service_account_token(&spec.service_account, namespace)
        .map_err(|why| GenerateError::TokenSource(one_line(&why, 300)))?;
    let oidc_token = Secret::new(oidc_token.expose().trim());
    if oidc_token.expose().is_empty() {
        return Err(GenerateError::TokenSource(format!(
            "empty token for service account {}",
            spec.service_account.name
        )));
    }

    let request = exchange::build_request(&spec, &oidc_token);
    let access_token = exchange_with_retries(platform, &request, &oidc_token, policy)?;
    output::outputs(&access_token).map_err(|e| GenerateError::InvalidToken(e.to_string()))
}

/// Sends `request` until it gives a token, a final failure, or the policy
/// says stop.
fn exchange_with_retries(
    platform: &mut impl Platform,
    request: &Request,
    oidc_token: &Secret,
    policy: &RetryPolicy,
) -> Result<Secret, GenerateError> {
    let url = request.url();
    let mut attempts = 0;
    loop {
        let timeouts = policy.timeouts(platform.elapsed());
        attempts += 1;
        let secrets = [oidc_token.expose()];
        let verdict = match platform.send(request, timeouts) {
            Ok(answer) => exchange::interpret(&answer, platform.now_unix(), &secrets),
            Err(err) => exchange::transport_verdict(&err, &url, &secrets),
        };
        let (retry_after, error) = match verdict {
            Verdict::Token(token) => return Ok(token),
            Verdict::Fail(error) => return Err(with_attempts(error, attempts)),
            Verdict::Retry { retry_after, error } => (retry_after, error),
        };
        match policy.next_delay(attempts, retry_after, platform.elapsed()) {
            Some(delay) => platform.sleep(delay),
            None => return Err(with_attempts(error, attempts)),
        }
    }
}

/// Answers describe one attempt; the error reports them all.
fn with_attempts(error: GenerateError, attempts: u32) -> GenerateError {
    match error {
        GenerateError::Upstream(mut u) => {
            u.attempts = attempts;
            GenerateError::Upstream(u)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
