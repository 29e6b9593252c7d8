//! The component's export: binds the WIT world to [`crate::generate`].
//!
//! Clocks come from Rust's std (which maps them onto `wasi:clocks`); the
//! token source is the imported WIT interface; HTTP lives in [`crate::http`].

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::GenerateError;
use crate::exchange::{Answer, Request, Timeouts, TransportError};
use crate::secret::Secret;
use crate::spec::ServiceAccountRef;
use crate::Platform;

pub(crate) mod bindings {
    wit_bindgen::generate!({
        world: "cloudsmith-access-token",
        path: "wit",
        generate_all,
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
            start: Instant::now(),
        };
        crate::generate(&mut platform, &manifest, &namespace).map_err(to_wit)
    }
}

bindings::export!(Component with_types_in bindings);

/// The generator's [`Platform`] inside a WASI host.
struct WasiPlatform {
    start: Instant,
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
        std::thread::sleep(duration);
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn now_unix(&self) -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
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
