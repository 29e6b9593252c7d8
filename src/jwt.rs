//! Reading the `exp` claim of the access token Cloudsmith returns.
//!
//! The signature is not checked: the token is Cloudsmith's to verify, and we
//! only need its lifetime to tell the user when to refresh.

use alloc::string::String;

use crate::b64::decode_url_safe;
use crate::json::{self, Json};

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
    /// `exp` has more significant digits than a float64 keeps exactly.
    ExpTooPrecise,
    /// `exp` is a number, but absurdly far from any real time.
    ExpOutOfRange,
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
            JwtError::ExpTooPrecise => {
                f.write_str("access token's JWT exp claim has more than 15 significant digits")
            }
            JwtError::ExpOutOfRange => f.write_str("access token's JWT exp claim is out of range"),
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
    let payload = decode_url_safe(parts[1]).ok_or(JwtError::PayloadNotBase64)?;
    let claims = json::parse(&payload).map_err(|_| JwtError::PayloadNotJson)?;
    if !matches!(claims, Json::Object(_)) {
        return Err(JwtError::PayloadNotJson);
    }
    match claims.get("exp") {
        None | Some(Json::Null) => Err(JwtError::MissingExp),
        Some(Json::Number(n)) => format_exp(n),
        Some(_) => Err(JwtError::ExpNotNumeric),
    }
}

/// Formats a JSON number literal as Go's `FormatFloat(f, 'f', -1, 64)`
/// would format the float64 it denotes: plain decimal, no exponent, no
/// trailing zeros. Exact for up to 15 significant digits (every such decimal
/// survives a round trip through a float64); more precision than that in an
/// `exp` claim is refused rather than guessed at.
fn format_exp(literal: &str) -> Result<String, JwtError> {
    let bad = JwtError::ExpNotNumeric;
    if literal.starts_with('-') {
        return Err(bad);
    }
    let (mantissa, exponent) = match literal.find(['e', 'E']) {
        Some(i) => (
            &literal[..i],
            literal[i + 1..].parse::<i32>().map_err(|_| bad.clone())?,
        ),
        None => (literal, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Every integer up to 2^53 is a float64 exactly, so Go prints it as is.
    if frac_part.is_empty() && exponent == 0 {
        if let Some(n) = int_part.parse::<u64>().ok().filter(|n| (1..=1 << 53).contains(n)) {
            return Ok(alloc::format!("{n}"));
        }
    }
    let digits: String = [int_part, frac_part].concat();
    let point = int_part.len() as i64 + exponent as i64;
    let lead = digits.bytes().take_while(|b| *b == b'0').count();
    let significant = digits[lead..].trim_end_matches('0');
    if significant.is_empty() {
        return Err(bad);
    }
    if significant.len() > 15 {
        return Err(JwtError::ExpTooPrecise);
    }
    // Position of the decimal point relative to the first significant digit.
    let point = point - lead as i64;
    if !(-30..=30).contains(&point) {
        return Err(JwtError::ExpOutOfRange);
    }
    let mut out = String::new();
    if point <= 0 {
        out.push_str("0.");
        out.extend(core::iter::repeat_n('0', (-point) as usize));
        out.push_str(significant);
    } else if point as usize >= significant.len() {
        out.push_str(significant);
        out.extend(core::iter::repeat_n('0', point as usize - significant.len()));
    } else {
        let (whole, frac) = significant.split_at(point as usize);
        out.push_str(whole);
        out.push('.');
        out.push_str(frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

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
        // {"exp":12} is 10 bytes: its base64 ends in "==".
        let padded = base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":12}"#);
        assert!(padded.ends_with("=="));
        assert_eq!(expiry(&format!("e30.{padded}.sig")).unwrap(), "12");
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
