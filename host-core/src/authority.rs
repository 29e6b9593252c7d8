//! `host:port` as the outbound policy and the doors read it.

use std::fmt;
use std::str::FromStr;

/// A `host:port` the guest may reach. Parsed from `HOST[:PORT]` (port 443 when omitted;
/// IPv6 in brackets); the host is compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    host: String,
    port: u16,
}

impl Authority {
    /// An authority from parts; the host is lowercased.
    pub fn new(host: &str, port: u16) -> Self {
        Authority {
            host: host.to_ascii_lowercase(),
            port,
        }
    }

    /// The host (without brackets for IPv6).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a text is not a host and port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Nothing was given.
    #[error("empty host")]
    Empty,
    /// A URL where `HOST[:PORT]` was wanted.
    #[error("{0:?} is a URL; give HOST[:PORT], e.g. api.cloudsmith.io:443")]
    Url(String),
    /// Not `HOST[:PORT]` at all (user information, spaces, a path where none belongs).
    #[error("{0:?} is not HOST[:PORT]")]
    NotHostPort(String),
    /// A port that is not 1 to 65535.
    #[error("port {port:?} in {text:?} is not a port number (1-65535)")]
    Port {
        /// The port as written.
        port: String,
        /// The whole text.
        text: String,
    },
    /// A host that is neither a DNS name nor an IP address.
    #[error("{0:?} is not a host name or IP address")]
    Host(String),
    /// `[` without its `]`.
    #[error("{0:?}: missing ']'")]
    Bracket(String),
}

impl FromStr for Authority {
    type Err = AuthorityError;

    /// `HOST[:PORT]`, port 443 when omitted.
    fn from_str(s: &str) -> Result<Self, AuthorityError> {
        let s = s.trim();
        if s.contains("://") {
            return Err(AuthorityError::Url(s.into()));
        }
        if s.contains(['/', '?', '#']) {
            return Err(AuthorityError::NotHostPort(s.into()));
        }
        let server = Server::parse(s)?;
        Ok(Authority::new(&server.host, server.port.unwrap_or(443)))
    }
}

/// A server as users and clients name one: `host`, `host:port`, `[v6]:port`, a URL
/// (`scheme://host[:port][/path]`) or an image name (`host[:port]/path`). The one
/// reading of a host and port that the policy and every door share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The scheme, lower-cased, when there is one.
    pub scheme: Option<String>,
    /// The host, lower-cased; an IPv6 address without its brackets.
    pub host: String,
    /// The port, when one is written.
    pub port: Option<u16>,
}

impl Server {
    /// Reads `text`; the error names what is wrong with it, in one line.
    pub fn parse(text: &str) -> Result<Server, AuthorityError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(AuthorityError::Empty);
        }
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest))
                if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                (Some(scheme.to_ascii_lowercase()), rest)
            }
            _ => (None, s),
        };
        let written = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let not = || AuthorityError::NotHostPort(s.into());
        if written.is_empty() || written.contains(['@', ' ', '\t', '\n', '\r']) {
            return Err(not());
        }
        if written.starts_with('[') && !written.contains(']') {
            return Err(AuthorityError::Bracket(s.into()));
        }
        // `host:` or `[v6]:` has an empty port (a bare IPv6 address may end in `::`).
        let bare_v6 = !written.starts_with('[') && written.matches(':').count() > 1;
        if written.ends_with(':') && !bare_v6 {
            return Err(AuthorityError::Port {
                port: String::new(),
                text: s.into(),
            });
        }
        // A bare IPv6 address (several colons, no brackets) has no port.
        let bracketed;
        let written = if bare_v6 {
            bracketed = format!("[{written}]");
            bracketed.as_str()
        } else {
            written
        };
        let authority: http::uri::Authority = written.parse().map_err(|_| not())?;
        // The port as written: `Authority::port` is `None` for one that is no u16.
        let written_port = authority.as_str()[authority.host().len()..].strip_prefix(':');
        let port = match written_port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(AuthorityError::Port {
                        port: p.into(),
                        text: s.into(),
                    })
                }
                Ok(p) => Some(p),
            },
        };
        let host = authority.host();
        let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }),
        };
        if !valid {
            return Err(AuthorityError::Host(host.into()));
        }
        Ok(Server {
            scheme,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_authorities() {
        let a: Authority = "API.Cloudsmith.io".parse().unwrap();
        assert_eq!(a.to_string(), "api.cloudsmith.io:443");
        assert_eq!("127.0.0.1:8080".parse::<Authority>().unwrap().port(), 8080);
        assert_eq!(
            "[::1]:8443".parse::<Authority>().unwrap().to_string(),
            "[::1]:8443"
        );
        assert_eq!("::1".parse::<Authority>().unwrap().to_string(), "[::1]:443");
        for bad in [
            "",
            "x.io:",
            "https://x.io",
            "x.io:0",
            "x.io:99999",
            "x.io:abc",
            "a/b",
            "user@x.io",
            "bad_host",
            "a..b",
        ] {
            assert!(bad.parse::<Authority>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn each_error_names_what_is_wrong() {
        for (bad, message) in [
            ("", "empty host"),
            (
                "https://x.io",
                "\"https://x.io\" is a URL; give HOST[:PORT], e.g. api.cloudsmith.io:443",
            ),
            ("a/b", "\"a/b\" is not HOST[:PORT]"),
            ("user@x.io", "\"user@x.io\" is not HOST[:PORT]"),
            ("x.io:", "port \"\" in \"x.io:\" is not a port number (1-65535)"),
            (
                "x.io:99999",
                "port \"99999\" in \"x.io:99999\" is not a port number (1-65535)",
            ),
            (
                "x.io:abc",
                "port \"abc\" in \"x.io:abc\" is not a port number (1-65535)",
            ),
            ("[::1", "\"[::1\": missing ']'"),
            ("bad_host", "\"bad_host\" is not a host name or IP address"),
        ] {
            let got = bad
                .parse::<Authority>()
                .map(|a| a.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(got, Err(message.to_string()), "{bad:?}");
        }
    }

    #[test]
    fn servers_in_every_form() {
        let read = |s: &str| Server::parse(s).map(|v| (v.scheme, v.host, v.port));
        let some = |s: Option<&str>, h: &str, p: Option<u16>| Ok((s.map(str::to_string), h.to_string(), p));
        for (text, want) in [
            ("Docker.Cloudsmith.io", some(None, "docker.cloudsmith.io", None)),
            (
                "HTTPS://docker.cloudsmith.io/v1/",
                some(Some("https"), "docker.cloudsmith.io", None),
            ),
            (
                "docker.cloudsmith.io:443/org/repo",
                some(None, "docker.cloudsmith.io", Some(443)),
            ),
            ("http://[::1]:5000/v2/", some(Some("http"), "::1", Some(5000))),
            ("::1", some(None, "::1", None)),
            ("fe80::", some(None, "fe80::", None)),
            ("127.0.0.1:8080?x#y", some(None, "127.0.0.1", Some(8080))),
        ] {
            assert_eq!(read(text), want, "{text:?}");
        }
        for bad in [
            "",
            "user@x.io",
            "bad host",
            "x.io:0",
            "x.io:65536",
            "[zz]:1",
            "a_b.io",
            "://x",
            "x.io:",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
