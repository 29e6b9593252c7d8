//! An OIDC relying party of a Kubernetes service-account issuer: how Cloudsmith (or any
//! OIDC service) decides to trust a cluster's tokens, here for the Cloudsmith stand-in.
//!
//! It trusts one issuer. For a token it reads the issuer's discovery document,
//! `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0, §4), whose
//! `issuer` must be that issuer, then the JSON Web Key Set at its `jwks_uri`, over HTTPS
//! trusting only the CA it was given; both are fetched on first use and the key set
//! again when a token names a key it does not hold (a rotation). The token must then:
//!
//! | check                                                        | rejection reason           |
//! |--------------------------------------------------------------|----------------------------|
//! | be a JWS of three base64url parts with JSON header and claims | `not a JWT`               |
//! | have `alg` RS256 or ES256 (never `none` or HMAC)             | `algorithm`                |
//! | have `iss` equal to the trusted issuer                       | `issuer`                   |
//! | be signed by the key its `kid` names (the only key if none)  | `no key` / `signature`     |
//! | be valid now: `nbf` (if any) and `exp`, 60 s of clock skew   | `not yet valid` / `expired`|
//! | name an accepted audience in `aud` (checked by the caller)   |                            |
//!
//! RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3, what kube-apiserver signs
//! with an RSA `--service-account-signing-key-file`), ES256 is ECDSA P-256 with SHA-256
//! and the signature as `r || s` (RFC 7518 §3.4, with an ECDSA key); both verified with
//! ring.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

/// How long one fetch of the discovery document or the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Allowed clock skew between the issuer and the relying party, in seconds.
const LEEWAY: u64 = 60;

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: String,
    /// `aud`, a list even when the token has one string.
    pub aud: Vec<String>,
    /// `exp`, UNIX seconds.
    pub exp: u64,
}

/// A relying party of one issuer (see the module documentation).
pub struct RelyingParty {
    issuer: String,
    tls: Arc<rustls::ClientConfig>,
    keys: tokio::sync::Mutex<Option<Vec<Jwk>>>,
    fetches: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// One key of a JWKS (RFC 7517), the fields this relying party reads.
#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    // RSA
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    // EC
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl RelyingParty {
    /// A relying party trusting `issuer` (an `https://` URL), fetching from it over TLS
    /// with only the CA certificates in `ca_pem` as roots.
    pub fn new(issuer: &str, ca_pem: &str) -> anyhow::Result<RelyingParty> {
        use rustls::pki_types::pem::PemObject as _;
        anyhow::ensure!(issuer.starts_with("https://"), "issuer {issuer} is not https");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "no CA certificate given for {issuer}");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RelyingParty {
            issuer: issuer.trim_end_matches('/').to_string(),
            tls: Arc::new(tls),
            keys: tokio::sync::Mutex::new(None),
            fetches: Default::default(),
        })
    }

    /// A relying party of `cluster`'s issuer.
    pub fn of(cluster: &crate::cluster::Cluster) -> anyhow::Result<RelyingParty> {
        RelyingParty::new(cluster.issuer(), &cluster.ca_pem())
    }

    /// The trusted issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many times the key set was fetched.
    pub fn key_set_fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Verifies `token` (everything but the audience); its claims, or why not.
    pub async fn verify(&self, token: &str) -> Result<Claims, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err("not a JWT".into());
        };
        let decode = |part: &str| -> Result<Value, String> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| "not a JWT".to_string())?;
            serde_json::from_slice(&bytes).map_err(|_| "not a JWT".to_string())
        };
        let header = decode(header)?;
        let claims = decode(payload)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "not a JWT".to_string())?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "RS256" && alg != "ES256" {
            return Err(format!("algorithm {alg:?} is not RS256 or ES256"));
        }
        let iss = claims["iss"].as_str().unwrap_or_default();
        if iss != self.issuer {
            return Err(format!("issuer {iss:?} is not the trusted {}", self.issuer));
        }
        let kid = header["kid"].as_str();
        let key = self.key(kid).await?;
        let signed = &token[..header_len(token)];
        verify_signature(&key, alg, signed.as_bytes(), &signature)?;

        let now = crate::oidc::now_unix();
        let exp = claims["exp"].as_u64().ok_or("no exp")?;
        if now >= exp + LEEWAY {
            return Err("expired".into());
        }
        if let Some(nbf) = claims["nbf"].as_u64() {
            if nbf > now + LEEWAY {
                return Err("not yet valid".into());
            }
        }
        let aud = match &claims["aud"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Claims {
            iss: iss.to_string(),
            sub: claims["sub"].as_str().unwrap_or_default().to_string(),
            aud,
            exp,
        })
    }

    /// The key `kid` names (the only key, for a token without `kid`), fetching the key
    /// set when it is not held yet or lacks that key.
    async fn key(&self, kid: Option<&str>) -> Result<Jwk, String> {
        let mut keys = self.keys.lock().await;
        for attempt in 0..2 {
            if keys.is_none() || attempt == 1 {
                *keys = Some(self.fetch_keys().await?);
            }
            let held = keys.as_deref().unwrap_or_default();
            let found = match kid {
                Some(kid) => held.iter().find(|k| k.kid.as_deref() == Some(kid)),
                None if held.len() == 1 => held.first(),
                None => None,
            };
            if let Some(key) = found {
                return Ok(key.clone());
            }
        }
        Err(format!("no key {kid:?} in the issuer's key set"))
    }

    async fn fetch_keys(&self) -> Result<Vec<Jwk>, String> {
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc = self.get_json(&discovery, "application/json").await?;
        if doc["issuer"].as_str() != Some(self.issuer.as_str()) {
            return Err(format!("{discovery} names issuer {}", doc["issuer"]));
        }
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .filter(|u| u.starts_with("https://"))
            .ok_or_else(|| format!("{discovery} has no https jwks_uri"))?;
        // The key set's own media type (RFC 7517 §8.5.1): kube-apiserver serves it as
        // that alone and answers 406 to `Accept: application/json`
        // (pkg/routes/openidmetadata.go, OpenIDMetadataServer.Install, v1.34.4).
        let set = self.get_json(jwks_uri, "application/jwk-set+json").await?;
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keys: Vec<Jwk> = serde_json::from_value(set["keys"].clone())
            .map_err(|e| format!("{jwks_uri}: not a JWKS: {e}"))?;
        Ok(keys)
    }

    /// GET `url` over HTTPS (no credentials) accepting `media_type`, as JSON.
    async fn get_json(&self, url: &str, media_type: &str) -> Result<Value, String> {
        let fail = |e: &dyn std::fmt::Display| format!("GET {url}: {e}");
        let uri: hyper::Uri = url.parse().map_err(|e| fail(&e))?;
        let host = uri.host().ok_or_else(|| fail(&"no host"))?.to_string();
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(443));
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| fail(&e))?;
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(&e))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| fail(&e))?;
            crate::client::send(stream, &authority, "GET", &path, &[("accept", media_type)], b"")
                .await
                .map_err(|e| fail(&e))
        };
        let reply = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(&"timed out"))??;
        if reply.status != 200 {
            return Err(fail(&format!("status {}", reply.status)));
        }
        serde_json::from_slice(&reply.body).map_err(|e| fail(&e))
    }
}

/// The length of `header.payload`, the signed part of a JWS.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn verify_signature(key: &Jwk, alg: &str, signed: &[u8], signature: &[u8]) -> Result<(), String> {
    use ring::signature;
    if key.alg.as_deref().is_some_and(|a| a != alg) || key.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!("key {:?} is not for {alg} signatures", key.kid));
    }
    let b64 = |field: &Option<String>| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(field.as_deref().unwrap_or_default())
            .map_err(|_| format!("key {:?} is malformed", key.kid))
    };
    let verified = match (alg, key.kty.as_str()) {
        ("RS256", "RSA") => {
            let (n, e) = (b64(&key.n)?, b64(&key.e)?);
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, signature)
                .is_ok()
        }
        ("ES256", "EC") if key.crv.as_deref() == Some("P-256") => {
            let mut point = vec![0x04];
            point.extend(b64(&key.x)?);
            point.extend(b64(&key.y)?);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, signature)
                .is_ok()
        }
        _ => return Err(format!("key {:?} ({}) cannot verify {alg}", key.kid, key.kty)),
    };
    if verified {
        Ok(())
    } else {
        Err("signature does not verify".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// An ES256 issuer served by the testkit's HTTPS plumbing: discovery and JWKS.
    struct Issuer {
        key: EcdsaKeyPair,
        url: String,
        ca: crate::tls::TestCa,
        _running: crate::server::Running,
    }

    impl Issuer {
        async fn start() -> Issuer {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            let public = key.public_key().as_ref().to_vec();
            let ca = crate::tls::TestCa::new();
            let url_slot: Arc<std::sync::OnceLock<String>> = Arc::default();
            let slot = url_slot.clone();
            let handler: crate::server::Handler = Arc::new(move |req| {
                let url = slot.get().cloned().unwrap_or_default();
                let public = public.clone();
                Box::pin(async move {
                    let body = match req.uri().path() {
                        "/.well-known/openid-configuration" => {
                            serde_json::json!({"issuer": url, "jwks_uri": format!("{url}/openid/v1/jwks")})
                        }
                        // As kube-apiserver: the key set only for its own media type.
                        "/openid/v1/jwks"
                            if req
                                .headers()
                                .get("accept")
                                .is_some_and(|a| a.as_bytes() != b"application/jwk-set+json") =>
                        {
                            return Ok(crate::server::json(406, &serde_json::json!({}), &[]));
                        }
                        "/openid/v1/jwks" => serde_json::json!({"keys": [{
                            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
                            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                            "y": URL_SAFE_NO_PAD.encode(&public[33..]),
                        }]}),
                        _ => return Ok(crate::server::json(404, &serde_json::json!({}), &[])),
                    };
                    Ok(crate::server::json(200, &body, &[]))
                })
            });
            let running = crate::server::serve(Some(ca.server_config().unwrap()), handler)
                .await
                .unwrap();
            let url = format!("https://127.0.0.1:{}", running.addr.port());
            url_slot.set(url.clone()).unwrap();
            Issuer {
                key,
                url,
                ca,
                _running: running,
            }
        }

        fn sign(&self, header: Value, claims: Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self
                .key
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        fn token(&self, claims: Value) -> String {
            self.sign(serde_json::json!({"alg": "ES256", "kid": "k1"}), claims)
        }
    }

    fn claims(iss: &str, exp_in: i64) -> Value {
        let now = crate::oidc::now_unix() as i64;
        serde_json::json!({"iss": iss, "sub": "system:serviceaccount:a:b", "aud": "x",
                           "iat": now, "nbf": now, "exp": now + exp_in})
    }

    #[tokio::test]
    async fn an_es256_token_of_the_issuer_verifies_and_forgeries_do_not() {
        let issuer = Issuer::start().await;
        let rp = RelyingParty::new(&issuer.url, issuer.ca.ca_pem()).unwrap();
        let good = issuer.token(claims(&issuer.url, 600));
        let verified = rp.verify(&good).await.unwrap();
        assert_eq!(verified.sub, "system:serviceaccount:a:b");
        assert_eq!(verified.aud, ["x"], "one audience string reads as a list");
        assert_eq!(rp.key_set_fetches(), 1);
        rp.verify(&good).await.unwrap();
        assert_eq!(rp.key_set_fetches(), 1, "the key set is kept");

        let (head, _) = good.rsplit_once('.').unwrap();
        let other = issuer.token(claims(&issuer.url, 700));
        let forged = format!("{head}.{}", other.rsplit_once('.').unwrap().1);
        let hs256 = crate::oidc::sign(&serde_json::json!({"alg": "HS256"}), &claims(&issuer.url, 600));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims(&issuer.url, 600).to_string())
        );
        for (token, reason) in [
            (forged, "signature does not verify"),
            (hs256, "algorithm \"HS256\""),
            (none, "algorithm \"none\""),
            (issuer.token(claims("https://other.example", 600)), "issuer"),
            (issuer.token(claims(&issuer.url, -120)), "expired"),
            (
                issuer.sign(
                    serde_json::json!({"alg": "ES256", "kid": "k2"}),
                    claims(&issuer.url, 600),
                ),
                "no key Some(\"k2\")",
            ),
            ("a.b".to_string(), "not a JWT"),
        ] {
            let err = rp.verify(&token).await.unwrap_err();
            assert!(err.contains(reason), "{reason}: {err}");
        }
        // An unknown kid fetched the key set again (a rotation), once.
        assert_eq!(rp.key_set_fetches(), 2);
    }

    #[tokio::test]
    async fn an_issuer_the_ca_does_not_vouch_for_is_not_fetched() {
        let issuer = Issuer::start().await;
        let rp = RelyingParty::new(&issuer.url, crate::tls::TestCa::new().ca_pem()).unwrap();
        let err = rp
            .verify(&issuer.token(claims(&issuer.url, 600)))
            .await
            .unwrap_err();
        assert!(err.contains("/.well-known/openid-configuration"), "{err}");
        assert!(RelyingParty::new("http://x", issuer.ca.ca_pem()).is_err());
    }
}
