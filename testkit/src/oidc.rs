//! Service-account-like OIDC tokens, signed and verified with a fixed test key.
//!
//! The tokens look like what a Kubernetes API server mints for a TokenRequest
//! (issuer, `system:serviceaccount:<ns>:<name>` subject, audiences, issue and
//! expiry times, the `kubernetes.io` claim), but are signed with HS256 and a
//! key only the testkit knows. The Cloudsmith stand-in calls [`verify`], just
//! as Cloudsmith checks a token against the cluster's issuer: a token that was
//! altered, or minted for another audience, is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The issuer every testkit token names (a real in-cluster issuer's form).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long a minted token is valid, in seconds (a TokenRequest's default).
pub const LIFETIME_SECONDS: u64 = 3600;

/// The signing key. Fixed, so a token minted in one process (a test) verifies
/// in another (a stand-in started by the CLI's `demo`).
const KEY: &[u8] = b"testkit service account issuer key: not a secret, never use outside tests";

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: [`ISSUER`], unless minted by [`token_from_issuer`].
    pub iss: String,
    /// Subject, e.g. `system:serviceaccount:default:default`.
    pub sub: String,
    /// Audiences the token was minted for.
    pub aud: Vec<String>,
    /// Issued at, UNIX seconds.
    pub iat: u64,
    /// Not before, UNIX seconds.
    pub nbf: u64,
    /// Expiry, UNIX seconds.
    pub exp: u64,
}

/// Mints a token for `subject` with the given audiences, valid from now for
/// [`LIFETIME_SECONDS`].
pub fn token(subject: &str, audiences: &[&str]) -> String {
    token_with_lifetime(subject, audiences, LIFETIME_SECONDS)
}

/// [`token`] with a chosen lifetime in seconds (a TokenRequest's
/// `expirationSeconds`).
pub fn token_with_lifetime(subject: &str, audiences: &[&str], lifetime_seconds: u64) -> String {
    token_from(ISSUER, subject, audiences, lifetime_seconds)
}

/// [`token`] as another cluster's issuer would mint it: signed with the same
/// test key, so only an issuer check tells it apart. [`verify`] refuses it;
/// [`verify_any_issuer`] accepts it, for a service that decides trust by
/// issuer itself (the Cloudsmith stand-in).
pub fn token_from_issuer(issuer: &str, subject: &str, audiences: &[&str]) -> String {
    token_from(issuer, subject, audiences, LIFETIME_SECONDS)
}

fn token_from(issuer: &str, subject: &str, audiences: &[&str], lifetime_seconds: u64) -> String {
    let now = now_unix();
    let claims = Claims {
        iss: issuer.to_string(),
        sub: subject.to_string(),
        aud: audiences.iter().map(|a| a.to_string()).collect(),
        iat: now,
        nbf: now,
        exp: now + lifetime_seconds,
    };
    let mut payload = serde_json::to_value(&claims).expect("claims serialize");
    // Real service account tokens carry the account in a `kubernetes.io`
    // claim; clients that inspect it should find it here too.
    if let Some((ns, name)) = service_account_of(subject) {
        payload["kubernetes.io"] = serde_json::json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": uid_for(subject)},
        });
    }
    sign(
        &serde_json::json!({"alg": "HS256", "kid": "testkit", "typ": "JWT"}),
        &payload,
    )
}

/// Checks a token's signature, issuer ([`ISSUER`]) and validity period;
/// returns its claims when all hold, else `None`.
pub fn verify(token: &str) -> Option<Claims> {
    verify_any_issuer(token).filter(|claims| claims.iss == ISSUER)
}

/// [`verify`] without the issuer check: the signature and validity period
/// only, for a verifier that decides which issuers it trusts.
pub fn verify_any_issuer(token: &str) -> Option<Claims> {
    let claims: Claims = serde_json::from_value(signed_payload(token)?).ok()?;
    let now = now_unix();
    (claims.nbf <= now + 60 && now < claims.exp).then_some(claims)
}

/// The payload of a JWT the testkit signed (HS256 with its key, [`sign`]), whatever its
/// claims; `None` for any other token. For verifiers of the testkit's own tokens that
/// check their claims themselves (the Cloudsmith stand-in's access tokens).
pub(crate) fn signed_payload(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        // Refuse `none` and anything else: the classic JWT downgrade.
        return None;
    }
    let expected = hmac_sha256(KEY, parts_prefix(token)?.as_bytes());
    let given = URL_SAFE_NO_PAD.decode(signature).ok()?;
    if given != expected {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// `token` with one character of its signature changed, in the middle: the last
/// character of a base64url signature may carry only padding bits, which decoders such as
/// Go's `base64.RawURLEncoding` ignore, so changing it may change nothing.
pub fn tampered(token: &str) -> String {
    let at = token
        .rfind('.')
        .map_or(token.len() / 2, |dot| dot + (token.len() - dot) / 2);
    let mut chars: Vec<char> = token.chars().collect();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// Splits `system:serviceaccount:<ns>:<name>` into namespace and name.
pub fn service_account_of(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// Encodes and signs a JWT with the testkit key (HS256). Used for both OIDC
/// tokens and the Cloudsmith stand-in's access tokens.
pub(crate) fn sign(header: &serde_json::Value, payload: &serde_json::Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(KEY, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// `header.payload` of a three-part token.
fn parts_prefix(token: &str) -> Option<&str> {
    token.rfind('.').map(|i| &token[..i])
}

/// A stable UUID-shaped id for a subject, like the service account's uid.
fn uid_for(subject: &str) -> String {
    let h = Sha256::digest(subject.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// HMAC-SHA256 (RFC 2104), small enough to write out rather than add a crate.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Wall-clock UNIX seconds.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_6_long_key() {
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn token_round_trips_with_its_claims() {
        let t = token(
            "system:serviceaccount:team-a:builder",
            &["https://api.cloudsmith.io", "x"],
        );
        assert_eq!(t.split('.').count(), 3);
        let claims = verify(&t).expect("own token verifies");
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.sub, "system:serviceaccount:team-a:builder");
        assert_eq!(claims.aud, ["https://api.cloudsmith.io", "x"]);
        assert_eq!(claims.exp - claims.iat, LIFETIME_SECONDS);
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["kubernetes.io"]["namespace"], "team-a");
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["name"], "builder");
    }

    #[test]
    fn tampered_or_foreign_tokens_do_not_verify() {
        let t = token("system:serviceaccount:a:b", &["aud"]);
        let parts: Vec<&str> = t.split('.').collect();
        // Another subject with the original signature.
        let forged_payload = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("system:serviceaccount:a:b", "system:serviceaccount:a:c"),
        );
        assert!(verify(&format!("{}.{}.{}", parts[0], forged_payload, parts[2])).is_none());
        // alg none, no signature.
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert!(verify(&format!("{none}.{}.", parts[1])).is_none());
        // Not a JWT at all.
        assert!(verify("not-a-jwt").is_none());
        assert!(verify(&format!("{t}.extra")).is_none());
        // Expired: sign a payload whose exp has passed.
        let expired = sign(
            &serde_json::json!({"alg": "HS256"}),
            &serde_json::json!({"iss": ISSUER, "sub": "s", "aud": ["a"], "iat": 1, "nbf": 1, "exp": 2}),
        );
        assert!(verify(&expired).is_none());
        // Another issuer: verified only by a verifier that checks issuers itself.
        let foreign = token_from_issuer("https://other.example", "system:serviceaccount:a:b", &["aud"]);
        assert!(verify(&foreign).is_none());
        assert_eq!(verify_any_issuer(&foreign).unwrap().iss, "https://other.example");
    }

    #[test]
    fn a_tampered_token_differs_in_its_signature_only() {
        let t = token("system:serviceaccount:a:b", &["aud"]);
        let changed = tampered(&t);
        assert_ne!(changed, t);
        let (head, sig) = t.rsplit_once('.').unwrap();
        let (changed_head, changed_sig) = changed.rsplit_once('.').unwrap();
        assert_eq!(head, changed_head);
        assert_ne!(
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
            URL_SAFE_NO_PAD.decode(changed_sig).unwrap()
        );
        assert!(verify(&changed).is_none());
    }

    #[test]
    fn service_account_subjects_split() {
        assert_eq!(
            service_account_of("system:serviceaccount:ns:name"),
            Some(("ns", "name"))
        );
        assert_eq!(service_account_of("system:serviceaccount:ns"), None);
        assert_eq!(service_account_of("user"), None);
    }
}
