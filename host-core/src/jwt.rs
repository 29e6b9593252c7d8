//! The claims of a JWT, read without verifying it: the host's one JWT reader.
//!
//! The host never decides trust from these claims. It reads them to describe a token
//! (the token cache's key, the issuer and subject an error names so that a user knows
//! what to enter in Cloudsmith's OIDC service, the account the kubelet's token is for);
//! the API server and Cloudsmith verify signatures.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Deserialize;

use crate::lenient::{object, seconds, text, text_or_texts};

/// JWTs omit padding, but some encoders add it; both decode the same.
const PAYLOAD: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The claims the host reads. A claim of the wrong type reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// `iss`.
    #[serde(default, deserialize_with = "text")]
    pub iss: Option<String>,
    /// `sub`.
    #[serde(default, deserialize_with = "text")]
    pub sub: Option<String>,
    /// `aud`: a string or an array of strings, as RFC 7519 allows; always a list here.
    #[serde(default, deserialize_with = "text_or_texts")]
    pub aud: Vec<String>,
    /// `exp`, whole UNIX seconds (a fraction is dropped).
    #[serde(default, deserialize_with = "seconds")]
    pub exp: Option<u64>,
    /// The `kubernetes.io` claim of a service account token.
    #[serde(default, rename = "kubernetes.io", deserialize_with = "object")]
    pub kubernetes: Option<KubernetesClaims>,
}

/// The `kubernetes.io` claim of a service account token (the pod's namespace and
/// service account).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubernetesClaims {
    /// `kubernetes.io.namespace`.
    #[serde(default, deserialize_with = "text")]
    pub namespace: Option<String>,
    /// `kubernetes.io.serviceaccount`.
    #[serde(default, deserialize_with = "object")]
    pub serviceaccount: Option<NamedClaim>,
}

/// An object claim of which only `name` is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NamedClaim {
    /// `name`.
    #[serde(default, deserialize_with = "text")]
    pub name: Option<String>,
}

impl Claims {
    /// The claims of `token` (`header.payload.signature`); `None` when it is not a JWT
    /// whose payload is a JSON object.
    pub fn read(token: &str) -> Option<Claims> {
        let mut parts = token.trim().split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let bytes = PAYLOAD.decode(payload).ok()?;
        // serde would also read a struct from an array, position by position.
        match serde_json::from_slice(&bytes).ok()? {
            claims @ serde_json::Value::Object(_) => serde_json::from_value(claims).ok(),
            _ => None,
        }
    }

    /// The issuer, subject and audiences as one stable string (the token cache keys a
    /// token by it); `None` without an issuer and a subject.
    pub fn identity(&self) -> Option<String> {
        Some(format!(
            "iss={}|sub={}|aud={}",
            self.iss.as_deref()?,
            self.sub.as_deref()?,
            self.aud.join(",")
        ))
    }

    /// The service account's namespace and name, from a service account token.
    pub fn service_account(&self) -> (Option<&str>, Option<&str>) {
        let k = self.kubernetes.as_ref();
        (
            k.and_then(|k| k.namespace.as_deref()),
            k.and_then(|k| k.serviceaccount.as_ref()?.name.as_deref()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.c2ln",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn a_service_account_token() {
        let c = Claims::read(&jwt(
            r#"{"iss":"https://k8s","sub":"system:serviceaccount:apps:puller","aud":["a","b"],"exp":1700000000.5,
               "kubernetes.io":{"namespace":"apps","serviceaccount":{"name":"puller","uid":"u"}}}"#,
        ))
        .unwrap();
        assert_eq!(c.iss.as_deref(), Some("https://k8s"));
        assert_eq!(c.aud, ["a", "b"]);
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.service_account(), (Some("apps"), Some("puller")));
        assert_eq!(
            c.identity().unwrap(),
            "iss=https://k8s|sub=system:serviceaccount:apps:puller|aud=a,b"
        );
    }

    #[test]
    fn odd_claims_read_as_absent_and_non_jwts_as_none() {
        let c = Claims::read(&jwt(r#"{"iss":7,"sub":"s","aud":"one","exp":"soon"}"#)).unwrap();
        assert_eq!((c.iss, c.aud, c.exp), (None, vec!["one".to_string()], None));
        assert_eq!(Claims::read(&jwt(r#"{"iss":"i"}"#)).unwrap().identity(), None);
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c", &jwt("[1]"), &jwt("not json")] {
            assert_eq!(Claims::read(bad), None, "{bad}");
        }
        // Padding, which some encoders add, reads the same.
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"sub":"x"}"#)
        );
        assert_eq!(Claims::read(&padded).unwrap().sub.as_deref(), Some("x"));
    }
}
