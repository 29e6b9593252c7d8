//! Go's `url.Parse`, rebuilt for what an `auths` key reaches: Docker reads legacy keys
//! (`https://ghcr.io/v2/`) through it, and a key must name the host Docker finds in it.

/// The `host[:port]` an `auths` key names: `https://ghcr.io/v2/` is `ghcr.io`,
/// `http://[::1]:5000` is `[::1]:5000`, `ghcr.io/x` is `ghcr.io` (credentials/file_store.go
/// `ConvertToHostname`, keys "in legacy configuration files"). Case is kept.
///
/// Go's `url.Parse` is rebuilt for what a key with `://` reaches: scheme, user
/// information, bracketed IPv6, port. One difference: a `%` in the host, which Go
/// decodes, is taken as a parse failure here (no registry key has one).
pub fn convert_to_hostname(maybe_url: &str) -> String {
    if maybe_url.contains("://") {
        if let Some(host) = url_host(maybe_url) {
            return host;
        }
        if let Some(host) = host_from_url_fallback(maybe_url) {
            return host;
        }
    }
    maybe_url.split('/').next().unwrap_or_default().to_string()
}

/// `u.Hostname()` and `u.Port()` of Go's `url.Parse(url)`, joined as `ConvertToHostname`
/// joins them; `None` where Go's parse fails or finds no host name.
fn url_host(url: &str) -> Option<String> {
    // url.Parse refuses ASCII control characters anywhere.
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    // getScheme: a letter, then letters, digits, `+`, `-`, `.`. Another character first
    // makes Go read the whole as a path whose first segment has a colon: an error.
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    // The fragment is cut first, then the query; the authority runs to the next `/`.
    let rest = rest.split('#').next()?.split('?').next()?;
    let authority = rest.split('/').next()?;
    // parseAuthority: user information runs to the last `@`.
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let valid = |c: char| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c);
            if !userinfo.chars().all(valid) {
                return None;
            }
            host
        }
        None => authority,
    };
    let (hostname, port) = parse_host(host)?;
    if hostname.is_empty() {
        return None;
    }
    Some(match port {
        "" => hostname.to_string(),
        // net.JoinHostPort brackets a host with a colon.
        port if hostname.contains(':') => format!("[{hostname}]:{port}"),
        port => format!("{hostname}:{port}"),
    })
}

/// Go's `parseHost` and `splitHostPort`: the host name (without brackets) and the port
/// (empty when none), or `None` where Go fails.
fn parse_host(host: &str) -> Option<(&str, &str)> {
    // validOptionalPort: nothing, or a colon and digits (maybe none).
    let optional_port = |s: &str| {
        s.is_empty()
            || s.strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    };
    // unescape(host, encodeHost): the characters Go's shouldEscape lets through in a host,
    // and any non-ASCII byte.
    let valid = |c: char| !c.is_ascii() || c.is_ascii_alphanumeric() || "-_.~!$&'()*+,;=:[]<>\"".contains(c);
    if !host.chars().all(valid) {
        return None;
    }
    if let Some(bracketed) = host.strip_prefix('[') {
        let end = bracketed.rfind(']')?;
        let after = &bracketed[end + 1..];
        if !optional_port(after) {
            return None;
        }
        return Some((&bracketed[..end], after.strip_prefix(':').unwrap_or("")));
    }
    match host.rfind(':') {
        None => Some((host, "")),
        // Go rejects an unbracketed IPv6 literal (more than one colon): the fallback reads it.
        Some(i) if host[..i].contains(':') => None,
        Some(i) if optional_port(&host[i..]) => Some((&host[..i], &host[i + 1..])),
        Some(_) => None,
    }
}

/// credentials/file_store.go `hostFromURLFallback`: the text between `://` and the next
/// `/`, with an unbracketed IPv6 literal and port bracketed; `None` when it is empty.
fn host_from_url_fallback(maybe_url: &str) -> Option<String> {
    let (_, rest) = maybe_url.split_once("://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    if host.matches(':').count() > 1 && !host.starts_with('[') {
        let (address, port) = host.rsplit_once(':')?;
        if !address.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("[{address}]:{port}"));
        }
    }
    Some(host.to_string())
}
