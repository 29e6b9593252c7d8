//! Which registries a door answers for, and the one reading of a server URL that the
//! doors share (a client sends `host`, `host:port`, `https://host/v1/` or an image name).

use crate::authority::Server;

/// Cloudsmith's registry, always one of ours.
pub const DEFAULT_REGISTRY: &str = "docker.cloudsmith.io";

/// A registry given to [`Registries::with_default`] that is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry {0:?} is not HOST[:PORT]")]
pub struct NotARegistry(pub String);

/// The registries the doors answer for, matched on host (case-insensitive) and port
/// (443, the registry default, is the same as no port).
#[derive(Debug, Clone)]
pub struct Registries {
    entries: Vec<(String, Option<u16>, String)>,
}

impl Registries {
    /// [`DEFAULT_REGISTRY`] plus `extra` (each `host[:port]`, a scheme or path tolerated).
    pub fn with_default<'a>(extra: impl IntoIterator<Item = &'a str>) -> Result<Self, NotARegistry> {
        let mut entries = Vec::new();
        for raw in std::iter::once(DEFAULT_REGISTRY).chain(extra) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let (host, port) = host_port(raw).ok_or_else(|| NotARegistry(raw.to_string()))?;
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

/// The host (lowercased) and port of a server URL or registry, in any form a client
/// sends ([`Server::parse`]); port 443, the registry default, counts as none.
pub fn host_port(server: &str) -> Option<(String, Option<u16>)> {
    let server = Server::parse(server).ok()?;
    Some((server.host, server.port.filter(|p| *p != 443)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(err.to_string(), "registry \"bad host\" is not HOST[:PORT]");
    }
}
