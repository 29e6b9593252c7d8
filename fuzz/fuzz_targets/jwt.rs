//! `jwt::expiry` and `output::outputs` on arbitrary tokens, payloads and
//! `exp` literals: the result (expiry or error) must be the reference's, the
//! expiry being Go's `FormatFloat(exp, 'f', -1, 64)` of the float64 nearest
//! the literal, computed here without the crate's JSON number parser or
//! `Display`; `auth` must decode to `token:` + the token, and no error may
//! quote the token.
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

/// Base64url, padding optional, bits after the last byte ignored and line
/// breaks skipped: what Go's `base64.RawURLEncoding` reads (it is not in
/// strict mode), plus padding, which the crate allows on purpose.
const PAYLOAD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    // Three ways in, so the fuzzer reaches the exp formatting without first
    // having to invent base64 by chance.
    let (token, literal) = match mode % 3 {
        0 => (rest.into_owned(), None),
        1 => (
            format!(
                "eyJhbGciOiJIUzI1NiJ9.{}.{ACCESS_SIG}",
                URL_SAFE_NO_PAD.encode(rest.as_bytes())
            ),
            None,
        ),
        _ => {
            let literal = rest.trim_matches(is_json_space);
            (
                format!(
                    "eyJhbGciOiJIUzI1NiJ9.{}.{ACCESS_SIG}",
                    URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{rest}}}"))
                ),
                is_json_number(literal).then(|| literal.to_string()),
            )
        }
    };
    check(&token, literal.as_deref());
});

/// What `expiry` must give: from the literal when the claim is a bare
/// number we wrote, else from the payload.
fn expected(token: &str, literal: Option<&str>) -> Result<String, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::NotThreeParts(parts.len()));
    }
    let segment: String = parts[1].chars().filter(|c| *c != '\n' && *c != '\r').collect();
    let Ok(payload) = PAYLOAD.decode(segment) else {
        return Err(JwtError::PayloadNotBase64);
    };
    match literal {
        Some(literal) => expect_exp_literal(literal),
        None => expect_payload(&payload),
    }
}

fn check(token: &str, literal: Option<&str>) {
    let got = expiry(token);
    let want = expected(token, literal);
    assert!(
        expiry_matches(&got, &want),
        "{token} (exp literal {literal:?}): got {got:?}, want {want:?}"
    );
    match &got {
        Ok(exp) => {
            // The digits of `exp`: no exponent, sign, leading or trailing zero.
            assert!(exp.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{exp}");
            assert!(exp.matches('.').count() <= 1 && !exp.ends_with('.'), "{exp}");
            assert!(!(exp.contains('.') && exp.ends_with('0')), "trailing zero: {exp}");
            assert!(
                !exp.starts_with('0') || exp.starts_with("0."),
                "leading zero: {exp}"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert_one_line("jwt error", &msg);
            assert!(msg.len() <= 100, "{msg}");
            // A token, not text the fuzzer copied from our messages.
            if token.len() >= 8 && token.matches('.').count() == 2 {
                assert_no_secret("jwt error", &msg, token);
                assert_no_secret("jwt error debug", &format!("{e:?}"), token);
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
