//! ESO's output keys, encoded exactly as ESO encodes them.

use crate::jwt::{self, JwtError};
use crate::secret::Secret;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The keys `generate` returns, in order.
pub const OUTPUT_KEYS: [&str; 2] = ["auth", "expiry"];

/// `auth`: standard base64 (padded) of `token:<access token>`, the Docker
/// registry user name Cloudsmith expects; `expiry`: the token's `exp`.
pub fn outputs(access_token: &Secret) -> Result<Vec<(String, Vec<u8>)>, JwtError> {
    let expiry = jwt::expiry(access_token.expose())?;
    let auth = STANDARD.encode(format!("token:{}", access_token.expose()));
    Ok(alloc::vec![
        (OUTPUT_KEYS[0].into(), auth.into_bytes()),
        (OUTPUT_KEYS[1].into(), expiry.into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    const ESO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjoxNzAwMDAwMDAwfQ.signature";

    #[test]
    fn eso_vector_outputs() {
        let out = outputs(&Secret::new(ESO_TOKEN)).unwrap();
        assert_eq!(out[0].0, "auth");
        let decoded = STANDARD.decode(&out[0].1).unwrap();
        assert_eq!(decoded, format!("token:{ESO_TOKEN}").into_bytes());
        assert_eq!(out[1], ("expiry".into(), b"1700000000".to_vec()));
    }

    #[test]
    fn auth_is_padded_standard_base64() {
        // "token:" + 1 byte = 7 bytes: needs "=" padding, and '+'/'/' stay standard.
        let out = outputs(&Secret::new("a.eyJleHAiOjF9.c")).unwrap();
        let auth = String::from_utf8(out[0].1.clone()).unwrap();
        assert_eq!(STANDARD.decode(&auth).unwrap(), b"token:a.eyJleHAiOjF9.c");
        assert_eq!(auth.len() % 4, 0);
    }

    #[test]
    fn token_without_exp_gives_no_outputs() {
        assert_eq!(outputs(&Secret::new("a.e30.c")), Err(JwtError::MissingExp));
    }
}
