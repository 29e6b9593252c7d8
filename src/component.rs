//! The component's export: binds the WIT world to [`crate::generate`].
//!
//! Clocks are `wasi:clocks` (through the `wasip2` crate); the token source is
//! the imported WIT interface; HTTP lives in [`crate::http`].

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use wasip2::clocks::{monotonic_clock, wall_clock};

use crate::error::GenerateError;
use crate::exchange::{Answer, Request, Timeouts, TransportError};
use crate::secret::Secret;
use crate::spec::ServiceAccountRef;
use crate::Platform;

pub(crate) mod bindings {
    // Every WASI interface the world names is mapped onto the `wasip2` crate's
    // bindings instead of being generated again: one copy of each WASI type,
    // and a world interface nobody mapped is a build error, not silent code.
    wit_bindgen::generate!({
        world: "cloudsmith-access-token",
        path: "wit",
        with: {
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
            "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        },
    });
}

use bindings::exports::secretgen::generator::generator as wit;
use bindings::secretgen::generator::token_source;

struct Component;

impl wit::Guest for Component {
    fn info() -> wit::GeneratorInfo {
        wit::GeneratorInfo {
            kind: crate::spec::KIND.into(),
            api_version: crate::spec::API_VERSION.into(),
            output_keys: crate::output::OUTPUT_KEYS
                .iter()
                .map(|k| String::from(*k))
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn generate(manifest: String, namespace: String) -> Result<Vec<(String, Vec<u8>)>, wit::GenerateError> {
        let mut platform = WasiPlatform {
            start: monotonic_clock::now(),
        };
        crate::generate(&mut platform, &manifest, &namespace).map_err(to_wit)
    }
}

bindings::export!(Component with_types_in bindings);

/// The generator's [`Platform`] inside a WASI host.
struct WasiPlatform {
    /// `wasi:clocks/monotonic-clock` nanoseconds when the call began.
    start: monotonic_clock::Instant,
}

impl Platform for WasiPlatform {
    fn service_account_token(
        &mut self,
        account: &ServiceAccountRef,
        namespace: &str,
    ) -> Result<Secret, String> {
        let account = token_source::ServiceAccountRef {
            name: account.name.clone(),
            namespace: account.namespace.clone(),
            audiences: account.audiences.clone(),
        };
        token_source::service_account_token(&account, namespace).map(Secret::new)
    }

    fn send(&mut self, request: &Request, timeouts: Timeouts) -> Result<Answer, TransportError> {
        crate::http::send(request, timeouts)
    }

    fn sleep(&mut self, duration: Duration) {
        let nanos = duration.as_nanos().min(u64::MAX as u128) as u64;
        monotonic_clock::subscribe_duration(nanos).block();
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(monotonic_clock::now().saturating_sub(self.start))
    }

    fn now_unix(&self) -> Option<u64> {
        Some(wall_clock::now().seconds)
    }
}

fn to_wit(e: GenerateError) -> wit::GenerateError {
    let status = |s: crate::error::UpstreamStatus| wit::UpstreamStatus {
        status: s.status,
        detail: s.detail,
    };
    match e {
        GenerateError::InvalidSpec(m) => wit::GenerateError::InvalidSpec(m),
        GenerateError::TokenSource(m) => wit::GenerateError::TokenSource(m),
        GenerateError::PolicyDenied(m) => wit::GenerateError::PolicyDenied(m),
        GenerateError::Unauthorized(s) => wit::GenerateError::Unauthorized(status(s)),
        GenerateError::Rejected(s) => wit::GenerateError::Rejected(status(s)),
        GenerateError::RateLimited {
            retry_after_seconds,
            detail,
        } => wit::GenerateError::RateLimited(wit::RateLimit {
            retry_after_seconds,
            detail,
        }),
        GenerateError::Upstream(u) => wit::GenerateError::Upstream(wit::UpstreamFailure {
            status: u.status,
            detail: u.detail,
            attempts: u.attempts,
        }),
        GenerateError::InvalidToken(m) => wit::GenerateError::InvalidToken(m),
    }
}
