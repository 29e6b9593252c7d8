//! Reading the `exp` claim of the access token Cloudsmith returns.
//!
//! The signature is not checked: the token is Cloudsmith's to verify, and we
//! only need its lifetime to tell the user when to refresh.

use alloc::format;
use alloc::string::{String, ToString};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// Why a token's expiry could not be read. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not `header.payload.signature`.
    NotThreeParts(usize),
    /// The payload is not base64url.
    PayloadNotBase64,
    /// The payload is not a JSON object.
    PayloadNotJson,
    /// No `exp` claim.
    MissingExp,
    /// `exp` is present but not a positive number.
    ExpNotNumeric,
}

impl core::fmt::Display for JwtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            JwtError::NotThreeParts(n) => {
                write!(
                    f,
                    "access token is not a JWT: it has {n} dot-separated parts, not 3"
                )
            }
            JwtError::PayloadNotBase64 => f.write_str("access token's JWT payload is not base64url"),
            JwtError::PayloadNotJson => f.write_str("access token's JWT payload is not a JSON object"),
            JwtError::MissingExp => f.write_str("access token's JWT has no exp claim"),
            JwtError::ExpNotNumeric => f.write_str("access token's JWT exp claim is not a positive number"),
        }
    }
}

/// Returns the token's `exp` as ESO prints it: decimal UNIX seconds, no
/// exponent, no trailing zeros (Go's `FormatFloat(exp, 'f', -1, 64)`).
pub fn expiry(token: &str) -> Result<String, JwtError> {
    let parts: alloc::vec::Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::NotThreeParts(parts.len()));
    }
    // JWTs omit padding, but some encoders add it; both decode the same.
    let payload = URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .map_err(|_| JwtError::PayloadNotBase64)?;
    let claims: Value = serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadNotJson)?;
    let Value::Object(claims) = claims else {
        return Err(JwtError::PayloadNotJson);
    };
    match claims.get("exp") {
        None | Some(Value::Null) => Err(JwtError::MissingExp),
        Some(Value::Number(n)) => format_exp(n),
        Some(_) => Err(JwtError::ExpNotNumeric),
    }
}

fn format_exp(n: &serde_json::Number) -> Result<String, JwtError> {
    if let Some(u) = n.as_u64() {
        return if u == 0 {
            Err(JwtError::ExpNotNumeric)
        } else {
            Ok(u.to_string())
        };
    }
    match n.as_f64() {
        // Rust's `Display` for f64 is the shortest round-tripping decimal with
        // no exponent: the same digits Go's 'f', -1 formatting gives.
        Some(f) if f.is_finite() && f > 0.0 => Ok(format!("{f}")),
        _ => Err(JwtError::ExpNotNumeric),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ESO's own unit-test vector.
    const ESO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjoxNzAwMDAwMDAwfQ.signature";

    fn token_with(payload: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn eso_vector_gives_1700000000() {
        assert_eq!(expiry(ESO_TOKEN).unwrap(), "1700000000");
    }

    #[test]
    fn padded_payload_is_accepted() {
        // {"exp":1} is 9 bytes: base64 needs padding.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":1}"#);
        assert!(padded.ends_with('='));
        assert_eq!(expiry(&format!("e30.{padded}.sig")).unwrap(), "1");
    }

    #[test]
    fn float_exp_is_formatted_like_go() {
        assert_eq!(
            expiry(&token_with(r#"{"exp":1700000000.5}"#)).unwrap(),
            "1700000000.5"
        );
        assert_eq!(
            expiry(&token_with(r#"{"exp":1700000000.0}"#)).unwrap(),
            "1700000000"
        );
        assert_eq!(expiry(&token_with(r#"{"exp":1.7e9}"#)).unwrap(), "1700000000");
        assert_eq!(
            expiry(&token_with(r#"{"exp":1e21}"#)).unwrap(),
            "1000000000000000000000"
        );
    }

    #[test]
    fn missing_exp_is_an_error() {
        assert_eq!(expiry(&token_with(r#"{"sub":"x"}"#)), Err(JwtError::MissingExp));
        assert_eq!(expiry(&token_with(r#"{"exp":null}"#)), Err(JwtError::MissingExp));
    }

    #[test]
    fn non_numeric_or_non_positive_exp_is_an_error() {
        for payload in [
            r#"{"exp":"1700000000"}"#,
            r#"{"exp":true}"#,
            r#"{"exp":-5}"#,
            r#"{"exp":0}"#,
        ] {
            assert_eq!(
                expiry(&token_with(payload)),
                Err(JwtError::ExpNotNumeric),
                "{payload}"
            );
        }
    }

    #[test]
    fn wrong_part_count_is_an_error() {
        assert_eq!(expiry("abc"), Err(JwtError::NotThreeParts(1)));
        assert_eq!(expiry("a.b"), Err(JwtError::NotThreeParts(2)));
        assert_eq!(expiry("a.b.c.d"), Err(JwtError::NotThreeParts(4)));
        assert_eq!(expiry(""), Err(JwtError::NotThreeParts(1)));
    }

    #[test]
    fn bad_payload_encoding_or_json_is_an_error() {
        assert_eq!(expiry("e30.!!!.sig"), Err(JwtError::PayloadNotBase64));
        assert_eq!(expiry(&token_with("not json")), Err(JwtError::PayloadNotJson));
        assert_eq!(expiry(&token_with("[1,2]")), Err(JwtError::PayloadNotJson));
    }

    #[test]
    fn errors_never_contain_the_token() {
        let secret = "e30.bm90IGpzb24.supersecretsignature";
        let msg = expiry(secret).unwrap_err().to_string();
        assert!(!msg.contains("supersecretsignature"));
    }
}
