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

impl FromStr for Authority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty host".into());
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?} is a URL; give HOST[:PORT], e.g. api.cloudsmith.io:443"
            ));
        }
        if s.contains(['/', '@', '?', '#']) || s.contains(char::is_whitespace) {
            return Err(format!("{s:?} is not HOST[:PORT]"));
        }
        let (host, port) = split_host_port(s)?;
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("port {p:?} in {s:?} is not a port number (1-65535)")),
                Ok(p) => p,
            },
        };
        let valid_name = host
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !(valid_name || host.parse::<std::net::IpAddr>().is_ok()) {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
        Ok(Authority::new(host, port))
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| format!("{s:?} is not [IPV6]:PORT")),
        };
    }
    match s.split_once(':') {
        // A bare IPv6 address (several colons) without a port.
        Some(_) if s.matches(':').count() > 1 => Ok((s, None)),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
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
}
