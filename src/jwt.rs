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
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::de::{Field, Object};

/// JWTs omit padding, but some encoders add it; both decode the same. Bits
/// after the last whole byte are ignored, as Go's decoders (not in strict
/// mode) ignore them: ESO reads the payload with `base64.RawURLEncoding`
/// (v0.20.4 pkg/esutils/utils.go, ParseJWTClaims).
const PAYLOAD_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The range of `exp` accepted. Outside it a token is broken, and the decimal
/// form ESO would print runs to hundreds of digits.
const EXP_RANGE: core::ops::RangeInclusive<f64> = 1e-30..=1e30;

/// The one claim the generator reads, typed after parsing so that a
/// present-but-wrong `exp` is told apart from a missing one. A claim given
/// twice counts once, the last time: ESO decodes the payload into a Go map
/// (`json.Unmarshal` into `map[string]interface{}`), where a later member
/// replaces an earlier one.
struct Claims {
    exp: Option<Field>,
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

struct ClaimsVisitor;

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = Claims;

    fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut exp = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // `null` reads as no claim (Go's map holds nil: not a float64).
                Key::Exp => exp = map.next_value::<Option<Field>>()?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Claims { exp })
    }
}

/// A claim's name: `exp` or another, without keeping the other's text.
enum Key {
    Exp,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(if v == "exp" { Key::Exp } else { Key::Other })
    }
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
/// ESO (v0.20.4 pkg/esutils/utils.go, ExtractJWTExpiration) decodes the
/// claim into a Go `float64` and prints it with
/// `strconv.FormatFloat(exp, 'f', -1, 64)`. serde_json (with
/// `float_roundtrip`) rounds the literal to the nearest `f64` exactly as Go's
/// parser does; [`go_format_float`] prints it as Go does.
pub fn expiry(token: &str) -> Result<String, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotThreeParts(token.split('.').count()));
    };
    // Go's base64 decoders skip line breaks anywhere in their input.
    let payload: String = payload.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
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
    Ok(go_format_float(exp))
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)` for a finite `v > 0`: the
/// shortest decimal that reads back as `v`, and of two such decimals equally
/// near `v`, the one with the even last digit (strconv/ftoaryu.go,
/// ryuFtoaShortest). Rust's `Display` gives the same shortest digits but
/// rounds such an exact tie up; this finds the tie and takes the even one.
/// (Integer arithmetic only: parsing or exponent formatting would cost the
/// component kilobytes of its size budget.)
fn go_format_float(v: f64) -> String {
    let mut text = format!("{v}");
    // The last significant digit (a shortest decimal never ends in 0; trailing
    // zeros of an integer are padding).
    let Some(at) = text.rfind(|c: char| matches!(c, '1'..='9')) else {
        return text;
    };
    let last = text.as_bytes()[at];
    // Only an odd digit can be the upper of a tie whose lower is as short.
    if matches!(last, b'3' | b'5' | b'7' | b'9') && is_exact_tie_below(v, &text, at) {
        let mut bytes = text.into_bytes();
        bytes[at] = last - 1;
        text = String::from_utf8(bytes).unwrap_or_default();
    }
    text
}

/// Whether `v` is exactly the midpoint between `text` (Rust's shortest
/// decimal of `v`) and the decimal one unit lower at position `at`. Then the
/// lower reads back as `v` too, by symmetry, unless `v` is a power of two
/// (its lower rounding interval is half as wide): left alone.
fn is_exact_tie_below(v: f64, text: &str, at: usize) -> bool {
    if v.to_bits() & ((1u64 << 52) - 1) == 0 {
        return false;
    }
    // The significant digits up to `at`, the lower's last digit, then a 5: the
    // midpoint as M × 10^q.
    let point = text.find('.').unwrap_or(text.len());
    let mut m: u64 = 0;
    for (i, c) in text.bytes().enumerate().take(at + 1) {
        if c == b'.' {
            continue;
        }
        let digit = u64::from(c - b'0') - u64::from(i == at);
        let Some(next) = m.checked_mul(10).and_then(|m| m.checked_add(digit)) else {
            return false;
        };
        m = next;
    }
    let Some(m) = m.checked_mul(10).and_then(|m| m.checked_add(5)) else {
        return false;
    };
    // Position of the 5: one place right of `at`.
    let q: i32 = if at < point {
        point as i32 - at as i32 - 2
    } else {
        -((at - point) as i32) - 1
    };
    // v = M × 10^q, M ending in 5 (odd). With q ≥ 0, v = (M × 5^q) × 2^q
    // would need its odd part below 2^53, so v < 2^(53+q) and its ulp below
    // 2^(q+1); a tie needs the ulp to span 10^(q+1), more than that: there
    // are no integer ties. With q < 0, v = (M / 5^k) / 2^k (k = -q) is exact
    // only if 5^k divides M and that odd quotient is below 2^53, and then v
    // is it exactly when v × 2^k (exact: a power of two) equals it.
    let Some(k) = u32::try_from(-q).ok().filter(|k| (1..64).contains(k)) else {
        return false;
    };
    let Some(p5) = 5u64.checked_pow(k).filter(|p| m % p == 0) else {
        return false;
    };
    let target = m / p5;
    target < 1 << 53 && v * (1u64 << k) as f64 == target as f64
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

    /// Found by the `jwt` fuzz target, and confirmed against ESO's own
    /// generator (tests/eso_parity.rs, rows `tie` and `tie-2`): when the float
    /// lies exactly halfway between the two shortest decimals that read back
    /// as it, Go's FormatFloat takes the even one (strconv/ftoaryu.go), where
    /// Rust's formatting rounds up. Expected strings are what ESO v0.20.4
    /// printed.
    #[test]
    fn exp_halfway_between_two_shortest_decimals_rounds_to_even_like_go() {
        for (literal, go) in [
            // 1700000000 + 1/256: 1700000000.0039062 and ...63 both read back.
            ("1700000000.00390625", "1700000000.0039062"),
            ("990071992554740.19340", "990071992554740.2"),
            // Checked against Go 1.26's FormatFloat, as 99,941 other ties were.
            ("101.237091064453125", "101.23709106445312"),
            ("1092576.01904296875", "1092576.0190429688"),
            // Ties whose upper neighbour is already even stay as they are.
            ("1700000000.01171875", "1700000000.0117188"),
        ] {
            let got = expiry(&token_with(&format!(r#"{{"exp":{literal}}}"#))).unwrap();
            assert_eq!(got, go, "{literal}");
        }
    }

    /// What Go's base64 decoder does that a strict one would not: ESO reads
    /// these payloads, so the component does too.
    #[test]
    fn payload_is_decoded_as_go_decodes_it() {
        let segment = URL_SAFE_NO_PAD.encode(r#"{"exp":12}"#);
        assert!(segment.ends_with('Q'), "{segment}");
        // Non-zero bits after the last byte ('R' instead of 'Q').
        let loose = format!("{}R", &segment[..segment.len() - 1]);
        assert_eq!(expiry(&format!("e30.{loose}.sig")).unwrap(), "12");
        // Line breaks inside the segment are skipped.
        let wrapped = format!("{}\r\n{}", &segment[..4], &segment[4..]);
        assert_eq!(expiry(&format!("e30.{wrapped}.sig")).unwrap(), "12");
    }

    /// A Go map keeps the last of two members with one name.
    #[test]
    fn the_last_exp_counts() {
        assert_eq!(
            expiry(&token_with(r#"{"exp":1,"exp":1700000000}"#)).unwrap(),
            "1700000000"
        );
        assert_eq!(
            expiry(&token_with(r#"{"exp":1700000000,"exp":"x"}"#)),
            Err(JwtError::ExpNotNumeric)
        );
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
