//! Invariants shared by the targets.
#![allow(dead_code)]

/// The service account token the fake token source hands out. Long and
/// distinctive, so finding it in a message cannot be a coincidence.
pub const OIDC: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZnV6eiJ9.b2lkYy1zZWNyZXQtc2lnbmF0dXJlLWZ1eno";

/// Signature part of every access token the fake Cloudsmith hands out.
pub const ACCESS_SIG: &str = "YWNjZXNzLXNlY3JldC1zaWduYXR1cmUtZnV6eg";

/// A message a host logs must stay on one line, or it could forge log lines.
pub fn assert_one_line(what: &str, msg: &str) {
    assert!(
        !msg.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']),
        "{what} is not one line: {msg:?}"
    );
}

pub fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} shows a secret: {text:?}");
}

/// Splices `secret` into `bytes` at a position chosen by the input, so bodies
/// and messages that echo the request get exercised.
pub fn splice(bytes: &[u8], at: u16, secret: &str) -> Vec<u8> {
    let at = at as usize % (bytes.len() + 1);
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(secret.as_bytes());
    out.extend_from_slice(&bytes[at..]);
    out
}

/// Kubernetes' RFC 1123 label, written independently of the crate.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
