//! The doors: protocol adapters over the mint port.
//!
//! Each door turns its protocol's input into one [`crate::mint::MintRequest`], asks a
//! [`Mint`](crate::mint::Mint) for credentials, and turns the answer into its protocol's
//! output: `handle(input, &impl Mint, config) -> Result<Reply, Failure>`. Only `main`
//! reads stdin and writes stdout; no door knows clap, and their tests drive the real
//! `handle` with a fake mint.
//!
//! - [`generate`]: the `generate` and `info` commands (ESO's outputs, a Secret, a Docker
//!   config);
//! - [`kubelet`]: the kubelet's image credential provider (exec plugin);
//! - [`docker`]: the Docker credential helper (`docker-credential-cloudsmith`);
//! - [`serve`]: the HTTP(S) service for ESO's Webhook generator;
//! - [`install`]: putting the kubelet provider and the Docker helper in place;
//! - [`publish`]: `component push`, the component as a Wasm OCI artifact;
//! - `demo`: `generate` against a stand-in Cloudsmith.

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod docker;
pub mod generate;
pub mod install;
pub mod kubelet;
pub mod publish;
pub mod serve;

use cloudsmith_gen::secret::shown;
use cloudsmith_gen::Authority;
use cloudsmith_gen_core::authority::Server;

pub use cloudsmith_gen_core::registries::{host_port, Registries, DEFAULT_REGISTRY};
pub use cloudsmith_gen_core::Reply;

/// An API host or URL that names no authority (shown redacted).
#[derive(Debug, thiserror::Error)]
pub enum BadApi {
    /// Not a host, `host:port` or URL.
    #[error("API host {0:?}: {1}")]
    NotHost(String, cloudsmith_gen_core::authority::AuthorityError),
    /// A URL of another scheme than http or https.
    #[error("{0:?} is not an http(s) URL or a host")]
    Scheme(String),
}

/// The authority the policy must allow for an API host or URL, and whether it is plain
/// http (allowed only when the user wrote `http://`, as the generator requires).
pub fn api_authority(api: &str) -> Result<(Authority, bool), BadApi> {
    let server = Server::parse(api).map_err(|e| BadApi::NotHost(shown(api), e))?;
    let plain = match server.scheme.as_deref() {
        Some("http") => true,
        Some("https") | None => false,
        Some(_) => return Err(BadApi::Scheme(shown(api))),
    };
    let port = server.port.unwrap_or(if plain { 80 } else { 443 });
    Ok((Authority::new(&server.host, port), plain))
}

/// A Go `time.Duration` string for whole seconds, as `Duration.String()` prints it
/// (`0s`, `45s`, `5m0s`, `1h25m0s`): what the kubelet's `metav1.Duration` parses.
pub fn go_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_authorities() {
        let a = |api: &str| api_authority(api).map(|(a, plain)| (a.to_string(), plain));
        assert_eq!(
            a("api.cloudsmith.io").unwrap(),
            ("api.cloudsmith.io:443".into(), false)
        );
        assert_eq!(
            a("https://api.cloudsmith.io/v1/").unwrap(),
            ("api.cloudsmith.io:443".into(), false)
        );
        assert_eq!(
            a("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1:8080".into(), true)
        );
        assert_eq!(a("http://localhost").unwrap(), ("localhost:80".into(), true));
        assert!(a("ftp://x").is_err());
        assert!(a("bad host").is_err());
    }

    #[test]
    fn go_durations() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m0s"),
            (300, "5m0s"),
            (3599, "59m59s"),
            (3600, "1h0m0s"),
            (5100, "1h25m0s"),
            (90000, "25h0m0s"),
        ] {
            assert_eq!(go_duration(secs), text);
        }
    }
}
