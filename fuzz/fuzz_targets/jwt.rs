//! `jwt::expiry` and `output::outputs` on arbitrary tokens, payloads and
//! `exp` literals: the expiry must be what Go's float formatting of the
//! same claim gives, `auth` must decode to `token:` + the token, and no
//! error may quote the token.
#![no_main]

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use cloudsmith_access_token::jwt::{expiry, JwtError};
use cloudsmith_access_token::output::outputs;
use cloudsmith_access_token::secret::Secret;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::*;

/// Go's `base64.RawURLEncoding` as ESO uses it: no padding required, and
/// (not being in strict mode) unused trailing bits ignored.
const GO_RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    // Three ways in, so the fuzzer reaches the exp formatting without first
    // having to invent base64 by chance.
    let token = match mode % 3 {
        0 => rest.into_owned(),
        1 => format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.{ACCESS_SIG}",
            URL_SAFE_NO_PAD.encode(rest.as_bytes())
        ),
        _ => format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.{ACCESS_SIG}",
            URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{rest}}}"))
        ),
    };
    check(&token);
});

fn check(token: &str) {
    let got = expiry(token);
    match &got {
        Ok(exp) => {
            assert!(!exp.is_empty());
            assert!(exp.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{exp}");
            assert!(exp.matches('.').count() <= 1, "{exp}");
            assert!(!exp.ends_with('.'), "{exp}");
            if exp.contains('.') {
                assert!(!exp.ends_with('0'), "trailing zero: {exp}");
            }
            assert!(
                !(exp.starts_with('0') && !exp.starts_with("0.")),
                "leading zero: {exp}"
            );
            let serde_refuses_big_numbers = matches!(
                reference_claims(token),
                Some(Err(e)) if e.to_string().starts_with("number out of range")
            );
            if !serde_refuses_big_numbers {
                assert_eq!(Some(exp.clone()), reference_expiry(token), "{token}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert_one_line("jwt error", &msg);
            if token.contains('.') && token.len() >= 8 {
                assert_no_secret("jwt error", &msg, token);
            }
            match e {
                JwtError::NotThreeParts(n) => assert_eq!(*n, token.split('.').count()),
                JwtError::MissingExp => {
                    if let Some(Ok(claims)) = reference_claims(token) {
                        assert!(claims.get("exp").is_none_or(|v| v.is_null()), "{claims}");
                    }
                }
                _ => {}
            }
        }
    }

    let secret = Secret::new(token.to_string());
    match outputs(&secret) {
        Ok(out) => {
            let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["auth", "expiry"]);
            let auth = STANDARD
                .decode(&out[0].1)
                .expect("auth is padded standard base64");
            assert_eq!(auth, format!("token:{token}").into_bytes());
            assert_eq!(Ok(String::from_utf8(out[1].1.clone()).unwrap()), got);
        }
        Err(e) => assert_eq!(Err(e), got.map(|_| ())),
    }
}

/// The claims as ESO reads them: Go's decoder, then an ordinary JSON parser.
fn reference_claims(token: &str) -> Option<Result<serde_json::Value, serde_json::Error>> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let payload = GO_RAW_URL.decode(parts[1].trim_end_matches('=')).ok()?;
    Some(serde_json::from_slice(&payload))
}

/// ESO's expiry: the float64 `exp`, printed as `FormatFloat(f, 'f', -1, 64)`,
/// whose digits are the shortest that round-trip, as Rust's `Display` gives.
fn reference_expiry(token: &str) -> Option<String> {
    let claims = reference_claims(token)?.ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0).then(|| format!("{exp}"))
}
