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
//! - `demo`: `generate` against a stand-in Cloudsmith.

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod docker;
pub mod generate;
pub mod install;
pub mod kubelet;
pub mod serve;

use host_example::secret::shown;
use host_example::Authority;

/// What a door answers: its stdout and the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Written to stdout, with a newline.
    pub stdout: String,
    /// The exit code: 0, or 1 for the Docker helper's "not found".
    pub exit: u8,
}

impl Reply {
    /// `stdout`, exit 0.
    pub fn ok(stdout: impl Into<String>) -> Reply {
        Reply {
            stdout: stdout.into(),
            exit: 0,
        }
    }
}

/// Cloudsmith's registry, always one of ours.
pub const DEFAULT_REGISTRY: &str = host_example::output::DEFAULT_REGISTRY;

/// The registries the doors answer for, matched on host (case-insensitive) and port
/// (443, the registry default, is the same as no port).
#[derive(Debug, Clone)]
pub struct Registries {
    entries: Vec<(String, Option<u16>, String)>,
}

impl Registries {
    /// [`DEFAULT_REGISTRY`] plus `extra` (each `host[:port]`, a scheme or path tolerated).
    pub fn with_default<'a>(extra: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for raw in std::iter::once(DEFAULT_REGISTRY).chain(extra) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let (host, port) =
                host_port(raw).ok_or_else(|| format!("registry {raw:?} is not HOST[:PORT]"))?;
            let shown = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            entries.push((host, port, shown));
        }
        Ok(Registries { entries })
    }

    /// The registry (as `host[:port]`) that `server` (a server URL or image registry in
    /// any form a client sends) names, if it is one of ours.
    pub fn matching(&self, server: &str) -> Option<&str> {
        let (host, port) = host_port(server)?;
        self.entries
            .iter()
            .find(|(h, p, _)| *h == host && *p == port)
            .map(|(_, _, shown)| shown.as_str())
    }

    /// Every registry, as `host[:port]`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, _, shown)| shown.as_str())
    }
}

/// The scheme (when there is one) and the authority of `host[:port]`,
/// `scheme://host[:port][/path]` or `host[:port]/path`: the one reading of a server URL,
/// registry or API host that the doors share. `None` when there is no sensible authority.
pub fn split_server(server: &str) -> Option<(Option<&str>, &str)> {
    let s = server.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
            (Some(scheme), rest)
        }
        _ => (None, s),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return None;
    }
    Some((scheme, authority))
}

/// The host (lowercased) and port of a server URL or registry ([`split_server`]); port
/// 443, the registry default, counts as none.
pub fn host_port(server: &str) -> Option<(String, Option<u16>)> {
    let (_, authority) = split_server(server)?;
    let parsed: host_example::Authority = authority.parse().ok()?;
    // Authority parsing defaults the port to 443, which is also the registry default.
    let port = (parsed.port() != 443).then_some(parsed.port());
    Some((parsed.host().to_string(), port))
}

/// The authority the policy must allow for an API host or URL, and whether it is plain
/// http (allowed only when the user wrote `http://`, as the generator requires).
pub fn api_authority(api: &str) -> Result<(Authority, bool), String> {
    let bad = || format!("{:?} is not an http(s) URL or a host", shown(api));
    let (scheme, authority) = split_server(api).ok_or_else(bad)?;
    let plain = match scheme {
        Some("http") => true,
        Some("https") | None => false,
        Some(_) => return Err(bad()),
    };
    let parsed: Authority = authority
        .parse()
        .map_err(|e: String| format!("API host {:?}: {e}", shown(api)))?;
    let explicit_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()));
    let port = match (explicit_port, plain) {
        (true, _) => parsed.port(),
        (false, true) => 80,
        (false, false) => 443,
    };
    Ok((Authority::new(parsed.host(), port), plain))
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
    fn server_urls_in_every_form_match_on_host_and_port() {
        let r = Registries::with_default(["registry.acme.com", "127.0.0.1:5000"]).unwrap();
        for (server, expected) in [
            ("docker.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("DOCKER.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("https://docker.cloudsmith.io", Some("docker.cloudsmith.io")),
            ("https://docker.cloudsmith.io/v1/", Some("docker.cloudsmith.io")),
            ("docker.cloudsmith.io:443", Some("docker.cloudsmith.io")),
            ("docker.cloudsmith.io/org/repo", Some("docker.cloudsmith.io")),
            ("registry.acme.com", Some("registry.acme.com")),
            ("127.0.0.1:5000", Some("127.0.0.1:5000")),
            ("http://127.0.0.1:5000/v2/", Some("127.0.0.1:5000")),
            ("127.0.0.1", None),
            ("127.0.0.1:5001", None),
            ("docker.cloudsmith.io:5000", None),
            ("index.docker.io", None),
            ("https://index.docker.io/v1/", None),
            ("evil.com/docker.cloudsmith.io", None),
            ("docker.cloudsmith.io.evil.com", None),
            ("user@docker.cloudsmith.io", None),
            ("", None),
        ] {
            assert_eq!(r.matching(server), expected, "{server:?}");
        }
    }

    #[test]
    fn a_bad_registry_is_named() {
        let err = Registries::with_default(["bad host"]).unwrap_err();
        assert_eq!(err, "registry \"bad host\" is not HOST[:PORT]");
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
