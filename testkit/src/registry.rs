//! OCI registries for the `oci://` component source and `component push`.
//!
//! - [`Distribution`]: Debian's real `docker-registry` (the CNCF distribution registry
//!   2.8) as a child process on `127.0.0.1`, open, with htpasswd, or with token auth;
//!   plain HTTP or TLS (a [`crate::tls::TestCa`] certificate). Several may share one
//!   data directory ([`DistributionConfig::data_dir`]). [`Distribution::push`] uploads an
//!   [`Artifact`] through the registry's own API.
//! - [`TokenServer`]: a stand-in for the token service distribution's `token` auth
//!   trusts, written from distribution 2.8's `registry/auth/token` and its token
//!   specification: HTTP Basic credentials in, an ES256 JWT the real registry accepts out.
//! - [`FaultyRegistry`]: an in-process stand-in of the distribution pull API (`/v2/`,
//!   manifests and blobs, `GET` and `HEAD`), answering as distribution 2.8 does, with one
//!   chosen [`Fault`] for a host's bad-input tests, and a log of every request.
//! - [`Artifact`], [`WasmArtifact`], [`Content`]: the manifests and blobs they serve:
//!   the standard Wasm OCI artifact, a container image (the "not Wasm" case), an
//!   artifact whose layer declares a huge size, or anything a test writes by hand.
//!
//! Every rule a stand-in enforces names the distribution file and function it comes
//! from (tag `v2.8.2`, what Debian ships). Servers listen on `127.0.0.1` only, on a port
//! the OS picks, and stop when their handle is dropped.

mod client;
mod content;
mod distribution;
mod faulty;
mod token;

pub use content::{
    Artifact, WasmArtifact, CREATED, OCI_IMAGE_CONFIG, OCI_INDEX, OCI_LAYER_TAR_GZIP, OCI_MANIFEST,
    WASM_CONFIG, WASM_LAYER,
};
pub use distribution::{Auth, Distribution, DistributionConfig, TokenAuth, HTPASSWD_REALM};
pub use faulty::{Content, Fault, FaultyRegistry, FaultyRegistryConfig, RecordedRequest};
pub use token::{ResourceActions, Signing, TokenRequest, TokenServer, TokenServerConfig, CLOUDSMITH_USER};

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`: an OCI content digest.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of distribution's error envelope.
struct ApiError<'a> {
    code: &'a str,
    message: &'a str,
    /// Raw JSON, or `None` for no `detail` key.
    detail: Option<String>,
}

/// registry/api/errcode/errors.go, `Errors.MarshalJSON`, written by handler.go `ServeJSON`
/// through a `json.Encoder` (hence the final newline): `{"errors":[{"code","message",
/// "detail"}]}` in that order, `detail` left out when nil.
fn errors_body(errors: &[ApiError<'_>]) -> String {
    let entries: Vec<String> = errors
        .iter()
        .map(|e| {
            let mut entry = format!(
                "{{\"code\":{},\"message\":{}",
                json_string(e.code),
                json_string(e.message)
            );
            if let Some(detail) = &e.detail {
                entry.push_str(",\"detail\":");
                entry.push_str(detail);
            }
            entry.push('}');
            entry
        })
        .collect();
    format!("{{\"errors\":[{}]}}\n", entries.join(","))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// reference/regexp.go `NameRegexp`: an optional domain, then path components.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().all(|p| name_component(p)) {
        return true;
    }
    parts.len() > 1 && domain(parts[0]) && parts[1..].iter().all(|p| name_component(p))
}

/// reference/regexp.go `nameComponentRegexp`: `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
fn name_component(part: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// reference/regexp.go `DomainRegexp`: dot-separated host components, an optional port.
fn domain(part: &str) -> bool {
    let (host, port) = match part.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (part, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(|c| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    })
}

/// reference/regexp.go `TagRegexp`: `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// go-digest's `DigestRegexp` (what registry/api/v2/descriptors.go routes on):
/// `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`.
fn digest_shaped(s: &str) -> bool {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = !algorithm.is_empty()
        && algorithm
            .split(['.', '+', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    alg_ok
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
}

/// go-digest `Parse` / `Digest.Validate`: a known algorithm and lower-case hex of its length.
fn valid_digest(s: &str) -> bool {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    encoded.len() == len
        && encoded
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters are kept).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Go's `url.ParseQuery`: `&`-separated `key=value` pairs, `+` is a space, `%XX` decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 UTC time (`2025-01-01T00:00:00Z`) of UNIX seconds.
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_grammar() {
        for ok in [
            "acme/app",
            "a",
            "a-b/c__d/e.f",
            "a---b",
            "localhost:5000/x",
            "Host.example/x",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Acme", "a//b", "a/", "-a", "a_-b", "a..b", "acme/App", "x:y"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(valid_tag("1.0-rc_1"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(digest_shaped("sha256:00"));
        assert!(!digest_shaped("nothex"));
        assert!(valid_digest(&digest_of(b"")));
        assert!(!valid_digest("sha256:00"));
        assert!(!valid_digest(
            &digest_of(b"").to_uppercase().replace("SHA256", "sha256")
        ));
    }

    #[test]
    fn queries_round_trip() {
        let scope = "repository:acme/app:pull,push";
        let q = format!(
            "service={}&scope={}&x=a+b",
            query_escape("reg istry"),
            query_escape(scope)
        );
        assert_eq!(
            parse_query(&q),
            [
                ("service".to_string(), "reg istry".to_string()),
                ("scope".to_string(), scope.to_string()),
                ("x".to_string(), "a b".to_string())
            ]
        );
        assert_eq!(unescape("100%"), "100%");
    }

    #[test]
    fn rfc3339_of_known_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_661), "2000-02-29T12:01:01Z");
    }

    #[test]
    fn error_envelope_is_byte_exact() {
        assert_eq!(
            errors_body(&[ApiError {
                code: "MANIFEST_UNKNOWN",
                message: "manifest unknown",
                detail: Some("{\"Tag\":\"1\"}".into()),
            }]),
            "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\",\"detail\":{\"Tag\":\"1\"}}]}\n"
        );
    }
}
