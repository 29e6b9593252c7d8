//! Reading the `exp` claim of the access token Cloudsmith returns.
//!
//! The signature is not checked: the token is Cloudsmith's to verify, and we
//! only need its lifetime to tell the user when to refresh.

use alloc::format;
use alloc::string::String;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Deserialize;

use crate::de::{Field, Object};

/// JWTs omit padding, but some encoders add it; both decode the same.
const PAYLOAD_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The range of `exp` accepted. Outside it a token is broken, and the decimal
/// form ESO would print runs to hundreds of digits.
const EXP_RANGE: core::ops::RangeInclusive<f64> = 1e-30..=1e30;

/// The one claim the generator reads, typed after parsing so that a
/// present-but-wrong `exp` is told apart from a missing one.
#[derive(Deserialize)]
struct Claims {
    exp: Option<Field>,
}

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
            JwtError::ExpOutOfRange => f.write_str("access token's JWT exp claim is out of range"),
        }
    }
}

/// Returns the token's `exp` as ESO prints it: decimal UNIX seconds, no
/// exponent, no trailing zeros.
///
/// ESO decodes the claim into a Go `float64` and prints it with
/// `strconv.FormatFloat(exp, 'f', -1, 64)`: the shortest decimal that reads
/// back as the same float, never in exponent form. serde_json (with
/// `float_roundtrip`) rounds the literal to the nearest `f64` exactly as Go's
/// parser does, and Rust's `Display` for `f64` prints that same shortest
/// decimal without an exponent, so the bytes match.
pub fn expiry(token: &str) -> Result<String, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotThreeParts(token.split('.').count()));
    };
    let payload = PAYLOAD_ENGINE
        .decode(payload)
        .map_err(|_| JwtError::PayloadNotBase64)?;
    let Ok(Object::Is(claims)) = serde_json::from_slice::<Object<Claims>>(&payload) else {
        return Err(JwtError::PayloadNotJson);
    };
    let exp = match claims.exp {
        None => return Err(JwtError::MissingExp),
        Some(Field::Num(n)) => n,
        Some(_) => return Err(JwtError::ExpNotNumeric),
    };
    if exp.is_nan() || exp <= 0.0 {
        return Err(JwtError::ExpNotNumeric);
    }
    if !EXP_RANGE.contains(&exp) {
        return Err(JwtError::ExpOutOfRange);
    }
    Ok(format!("{exp}"))
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
    fn exp_is_the_shortest_decimal_of_the_nearest_float64_like_go() {
        // Expected strings are Go's strconv.FormatFloat(f, 'f', -1, 64) of the
        // float64 nearest each literal (shortest round-trip digits, no exponent).
        for (literal, go) in [
            ("1700000000.123456789", "1700000000.1234567"),
            ("1700000000.00000001", "1700000000"),
            ("17000000001234567890", "17000000001234567000"),
            ("9007199254740993", "9007199254740992"),
            ("1.5e-7", "0.00000015"),
            ("0.1", "0.1"),
        ] {
            let got = expiry(&token_with(&format!(r#"{{"exp":{literal}}}"#))).unwrap();
            assert_eq!(got, go, "{literal}");
        }
    }

    /// Found by the `jwt` fuzz target: without serde_json's `float_roundtrip`
    /// its number parser can land one float64 off the nearest (for about one
    /// fractional timestamp in eleven with 7 to 9 decimals), and the expiry
    /// then differs from ESO's. Expected strings are Python's `repr` of the
    /// float (the same shortest round-trip digits as Go's 'f', -1).
    #[test]
    fn exp_is_read_as_the_nearest_float64_not_one_off() {
        for (literal, go) in [
            ("1719135030.7809121", "1719135030.7809122"),
            ("59923762162191211621", "59923762162191210000"),
            ("10000014987979559923751621", "10000014987979560000000000"),
        ] {
            let got = expiry(&token_with(&format!(r#"{{"exp":{literal}}}"#))).unwrap();
            assert_eq!(got, go, "{literal}");
        }
    }

    /// Found by the `jwt` fuzz target, not fixed: when the float lies exactly
    /// halfway between the two shortest decimals that read back as it, Go's
    /// FormatFloat rounds half to even (strconv/ftoaryu.go, ryuDigits32) and
    /// Rust's `Display` rounds half up, so the last digit differs from ESO's.
    /// Expected strings are Python's `repr` (also half to even).
    #[test]
    #[ignore = "known divergence from Go on exact ties; see SECURITY.md, Fuzzing"]
    fn exp_halfway_between_two_shortest_decimals_rounds_to_even_like_go() {
        for (literal, go) in [
            // 1700000000 + 1/256: 1700000000.0039062 and ...63 both read back.
            ("1700000000.00390625", "1700000000.0039062"),
            ("990071992554740.19340", "990071992554740.2"),
        ] {
            let got = expiry(&token_with(&format!(r#"{{"exp":{literal}}}"#))).unwrap();
            assert_eq!(got, go, "{literal}");
        }
    }

    #[test]
    fn absurd_exp_is_out_of_range() {
        for literal in ["1e31", "1e300", "1e-31"] {
            assert_eq!(
                expiry(&token_with(&format!(r#"{{"exp":{literal}}}"#))),
                Err(JwtError::ExpOutOfRange),
                "{literal}"
            );
        }
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
