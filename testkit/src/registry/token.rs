//! A stand-in for the token service of distribution's `token` auth.
//!
//! Written from distribution v2.8.2: `docs/spec/auth/token.md` (the request and the
//! answer), `docs/spec/auth/jwt.md` and `docs/spec/auth/scope.md` (the JWT and the scope
//! grammar), and what `registry/auth/token/token.go` really verifies:
//!
//! | registry check (token.go)                                  | what this server issues                         |
//! |------------------------------------------------------------|-------------------------------------------------|
//! | `NewToken`: three dot-separated base64url parts, header and claims JSON | `header.claims.signature`, unpadded base64url |
//! | `Verify`: `iss` is the configured `issuer`                 | `iss` = [`TokenServerConfig::issuer`]            |
//! | `Verify`: `aud` (a single string in 2.8's `ClaimSet`) equals the registry's `service` | `aud` = the request's `service`, a string |
//! | `Verify`: now ≤ `exp` + 60 s and now ≥ `nbf` − 60 s (`Leeway`) | `nbf` = `iat` = now, `exp` = now + lifetime |
//! | `VerifySigningKey`: `x5c` first (`parseAndVerifyCertChain`: the leaf verifies up to `rootcertbundle`, any key usage), else `jwk`, else `kid` looked up in the bundle's keys by libtrust fingerprint | [`Signing::X5c`]: `x5c` = [the signing certificate], signed by the CA in the bundle; [`Signing::KeyId`]: `kid` only, the signing key's own certificate in the bundle |
//! | `signingKey.Verify` (libtrust, ES256): `r‖s`, 64 bytes     | ECDSA P-256 SHA-256, fixed-width signature (ring) |
//! | accesscontroller.go `Authorized`: `accessSet().contains` each (type, name, action) | `access` = the requested scopes, each action kept when it is in [`TokenServerConfig::actions`] (token.md: the intersection, never an error) |
//!
//! With [`TokenServerConfig::cloudsmith_tokens`] it also stands for Cloudsmith's registry
//! login, which takes the Docker credentials the official Cloudsmith CLI, ESO's
//! generator and `cloudsmith-gen` hand out: user `token`, the access token as the
//! password. Such a login passes when the access token verifies as the Cloudsmith
//! stand-in issued it ([`crate::cloudsmith::verify_access_token`]: its signature and
//! issuer, not expired), and is granted the repositories of the token's organisation
//! (`<org>/...`, as docker.cloudsmith.io names them) only: a scope on another
//! organisation's repository gets no action.
//!
//! The answer is token.md's: `200 {"token","access_token","expires_in","issued_at"}`. A
//! request without the right HTTP Basic credentials gets a 401 with a Basic challenge
//! (token.md: "the token server should return a 401 Unauthorized response indicating
//! that the provided credentials are invalid"), and no token. Left open by the spec,
//! and answered 400 here: a request without `service`, or with a scope outside
//! scope.md's grammar. Only `GET` is served (oauth.md's `POST` form is not modelled).

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::distribution::TokenAuth;
use super::{client, hex, parse_query, rfc3339, Auth};
use crate::server::{self, Body, Hangup};

/// The path of the realm (`http://127.0.0.1:PORT/token`).
const REALM_PATH: &str = "/token";

/// The user name of a Cloudsmith registry login: the access token is the password.
pub const CLOUDSMITH_USER: &str = "token";

/// How the registry finds the key that signed a token (token.go `VerifySigningKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signing {
    /// An `x5c` header holding the signing certificate, which a CA in the root bundle
    /// signed (`parseAndVerifyCertChain`). The header also carries the `kid` the spec
    /// asks for; 2.8 looks at `x5c` first.
    #[default]
    X5c,
    /// Only a `kid` header: the libtrust fingerprint of the signing key, whose own
    /// certificate is the root bundle (`newAccessController`'s `trustedKeys`).
    KeyId,
}

/// How a [`TokenServer`] behaves.
#[derive(Debug, Clone)]
pub struct TokenServerConfig {
    /// The one user name accepted.
    pub user: String,
    /// Its password.
    pub password: String,
    /// `iss` of every token: the registry's `auth.token.issuer` must equal it.
    pub issuer: String,
    /// `expires_in`, and `exp` − `iat`, in seconds.
    pub lifetime_seconds: u64,
    /// The actions the user holds on every repository; a token grants the requested
    /// actions that are among these. Default: `pull`, `push`.
    pub actions: Vec<String>,
    /// How tokens name their signing key.
    pub signing: Signing,
    /// Serve the realm over HTTPS with a fresh [`crate::tls::TestCa`].
    pub tls: bool,
    /// Also accept [`CLOUDSMITH_USER`] with an access token the Cloudsmith stand-in
    /// issued as the password, for its organisation's repositories (see the module
    /// documentation). `user` and `password` still work (to push, say).
    pub cloudsmith_tokens: bool,
    /// The host the realm names: `127.0.0.1` (the default), or `localhost`, which the
    /// server answers on too. go-containerregistry (v0.22.1
    /// `pkg/v1/remote/transport/bearer.go` `validateRealmURL`) refuses a realm that is a
    /// private or loopback IP literal on another host:port than the registry's, as this
    /// server's is; a host name passes.
    pub realm_host: String,
}

impl Default for TokenServerConfig {
    fn default() -> Self {
        TokenServerConfig {
            user: "testkit".to_string(),
            password: "testkit-password".to_string(),
            issuer: "testkit-token-issuer".to_string(),
            lifetime_seconds: 300,
            actions: vec!["pull".to_string(), "push".to_string()],
            signing: Signing::X5c,
            tls: false,
            cloudsmith_tokens: false,
            realm_host: "127.0.0.1".to_string(),
        }
    }
}

/// One entry of a token's `access` claim (token.go `ResourceActions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    /// The resource type, e.g. `repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource class (`repository(plugin)` → `plugin`), usually empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub class: String,
    /// The resource name, e.g. `acme/app`.
    pub name: String,
    /// The actions granted, e.g. `pull`, `push`.
    pub actions: Vec<String>,
}

impl ResourceActions {
    /// Parses one resource scope (scope.md grammar: `type[(class)]:name:action[,action]*`;
    /// the name may itself hold `:`, as in `host:5000/repo`).
    pub fn parse(scope: &str) -> Option<ResourceActions> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let (kind, class) = match kind.split_once('(') {
            Some((k, c)) => (k, c.strip_suffix(')')?),
            None => (kind, ""),
        };
        let lower =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !lower(kind) || !(class.is_empty() || lower(class)) || name.is_empty() {
            return None;
        }
        let mut list: Vec<String> = Vec::new();
        for action in actions.split(',') {
            if !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'*') {
                return None;
            }
            if !action.is_empty() && !list.iter().any(|a| a == action) {
                list.push(action.to_string());
            }
        }
        Some(ResourceActions {
            kind: kind.to_string(),
            class: class.to_string(),
            name: name.to_string(),
            actions: list,
        })
    }
}

/// One request the token server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The HTTP method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The HTTP Basic user name sent, right or wrong.
    pub user: Option<String>,
    /// The `service` query parameter.
    pub service: Option<String>,
    /// The `scope` query parameters, each split on spaces.
    pub scopes: Vec<String>,
    /// The status answered.
    pub status: u16,
    /// The `access` of the token issued (`None`: no token).
    pub granted: Option<Vec<ResourceActions>>,
    /// Why a Cloudsmith login was refused (`None`: not refused, or not one).
    pub refusal: Option<String>,
}

/// A running token server. Dropping it stops the server and every connection.
#[derive(Debug)]
pub struct TokenServer {
    running: server::Running,
    scheme: &'static str,
    state: Arc<State>,
    dir: tempfile::TempDir,
    root_pem: String,
    ca: Option<crate::tls::TestCa>,
}

struct State {
    config: TokenServerConfig,
    signer: Signer,
    requests: Mutex<Vec<TokenRequest>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    x5c: Option<Vec<String>>,
}

impl TokenServer {
    /// Starts a token server on `127.0.0.1` (a free port) on the current tokio runtime,
    /// accepting `user` / `password`, with the other defaults of [`TokenServerConfig`].
    pub async fn start(user: &str, password: &str) -> anyhow::Result<TokenServer> {
        Self::start_with(TokenServerConfig {
            user: user.to_string(),
            password: password.to_string(),
            ..TokenServerConfig::default()
        })
        .await
    }

    /// Starts a token server that trusts the Cloudsmith stand-in's access tokens
    /// ([`TokenServerConfig::cloudsmith_tokens`]), besides the default user and password,
    /// with its realm named `localhost`, so that go-containerregistry reaches it too
    /// ([`TokenServerConfig::realm_host`]).
    pub async fn trusting_cloudsmith() -> anyhow::Result<TokenServer> {
        Self::start_with(TokenServerConfig {
            cloudsmith_tokens: true,
            realm_host: "localhost".to_string(),
            ..TokenServerConfig::default()
        })
        .await
    }

    /// Starts a token server with `config`.
    pub async fn start_with(config: TokenServerConfig) -> anyhow::Result<TokenServer> {
        let (signer, root_pem) = make_signer(config.signing)?;
        let dir = tempfile::Builder::new().prefix("testkit-token-").tempdir()?;
        std::fs::write(dir.path().join("root-cert-bundle.pem"), &root_pem)?;
        let (ca, tls) = crate::tls::optional(config.tls)?;
        let state = Arc::new(State {
            config,
            signer,
            requests: Mutex::default(),
        });
        let handler_state = state.clone();
        let handler: server::Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req) })
        });
        let running = server::serve(tls, handler).await?;
        Ok(TokenServer {
            running,
            scheme: if ca.is_some() { "https" } else { "http" },
            state,
            dir,
            root_pem,
            ca,
        })
    }

    /// The realm: `http://127.0.0.1:PORT/token` (`https` with TLS; the host is
    /// [`TokenServerConfig::realm_host`]).
    pub fn realm(&self) -> String {
        format!(
            "{}://{}:{}{REALM_PATH}",
            self.scheme,
            self.state.config.realm_host,
            self.running.addr.port()
        )
    }

    /// The issuer its tokens name.
    pub fn issuer(&self) -> &str {
        &self.state.config.issuer
    }

    /// The PEM file a registry's `auth.token.rootcertbundle` names.
    pub fn root_cert_bundle(&self) -> std::path::PathBuf {
        self.dir.path().join("root-cert-bundle.pem")
    }

    /// The root bundle's PEM text.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// The CA of the realm's certificate, with TLS.
    pub fn ca(&self) -> Option<&crate::tls::TestCa> {
        self.ca.as_ref()
    }

    /// The `auth` of a registry that trusts this server's tokens for `service`.
    pub fn auth(&self, service: &str) -> Auth {
        Auth::Token(TokenAuth {
            realm: self.realm(),
            service: service.to_string(),
            issuer: self.issuer().to_string(),
            root_cert_bundle: self.root_cert_bundle(),
            realm_ca: self.ca.as_ref().map(|ca| ca.ca_der().clone()),
        })
    }

    /// How many requests reached the server (issued or refused).
    pub fn token_requests(&self) -> usize {
        self.state.requests.lock().expect("requests lock").len()
    }

    /// How many tokens it issued.
    pub fn tokens_issued(&self) -> usize {
        self.requests().iter().filter(|r| r.granted.is_some()).count()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// Signs a token for `subject` with audience `service` and `access`, valid from now
    /// for the configured lifetime: what the realm would answer, without a request.
    pub fn mint(&self, subject: &str, service: &str, access: &[ResourceActions]) -> String {
        mint(&self.state, subject, service, access, crate::oidc::now_unix())
    }
}

/// A fresh ES256 key, how tokens name it, and the root bundle that trusts it.
fn make_signer(signing: Signing) -> anyhow::Result<(Signer, String)> {
    let rng = SystemRandom::new();
    let signing_key = KeyPair::generate()?;
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        signing_key.serialized_der(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("loading the signing key: {e}"))?;
    let kid = libtrust_key_id(&signing_key.subject_public_key_info());
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "testkit registry token signer");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(match signing {
        Signing::X5c => {
            let mut ca = CertificateParams::new(Vec::<String>::new())?;
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, "testkit registry token CA");
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca.self_signed(&ca_key)?;
            let issuer = Issuer::new(ca, ca_key);
            leaf.use_authority_key_identifier_extension = true;
            let cert = leaf.signed_by(&signing_key, &issuer)?;
            (
                Signer {
                    key,
                    rng,
                    kid,
                    x5c: Some(vec![STANDARD.encode(cert.der())]),
                },
                ca_cert.pem(),
            )
        }
        Signing::KeyId => {
            let cert = leaf.self_signed(&signing_key)?;
            (
                Signer {
                    key,
                    rng,
                    kid,
                    x5c: None,
                },
                cert.pem(),
            )
        }
    })
}

/// libtrust `keyIDFromCryptoKey` (util.go): SHA-256 of the DER SubjectPublicKeyInfo,
/// truncated to 240 bits, base32 (RFC 4648), in 12 groups of 4 joined by `:`. The `kid`
/// form jwt.md describes.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let mut bits = 0u32;
    let mut held = 0u32;
    let mut encoded = String::new();
    for byte in &hash[..30] {
        bits = (bits << 8) | u32::from(*byte);
        held += 8;
        while held >= 5 {
            held -= 5;
            encoded.push(ALPHABET[((bits >> held) & 31) as usize] as char);
        }
    }
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mint(state: &State, subject: &str, service: &str, access: &[ResourceActions], now: u64) -> String {
    #[derive(Serialize)]
    struct Header<'a> {
        typ: &'a str,
        alg: &'a str,
        kid: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        x5c: Option<&'a [String]>,
    }
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        exp: u64,
        nbf: u64,
        iat: u64,
        jti: String,
        access: &'a [ResourceActions],
    }
    let signer = &state.signer;
    let mut jti = [0u8; 16];
    signer.rng.fill(&mut jti).expect("system randomness");
    let header = serde_json::to_vec(&Header {
        typ: "JWT",
        alg: "ES256",
        kid: &signer.kid,
        x5c: signer.x5c.as_deref(),
    })
    .expect("header serializes");
    let claims = serde_json::to_vec(&Claims {
        iss: &state.config.issuer,
        sub: subject,
        aud: service,
        exp: now + state.config.lifetime_seconds,
        nbf: now,
        iat: now,
        jti: hex(&jti),
        access,
    })
    .expect("claims serialize");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = signer
        .key
        .sign(&signer.rng, input.as_bytes())
        .expect("ECDSA signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fn details(status: u16, text: &str, headers: &[(&str, &str)]) -> Response<Body> {
    server::json(status, &serde_json::json!({ "details": text }), headers)
}

fn handle(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Hangup> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let query = req.uri().query().unwrap_or("").to_string();
    let credentials = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(value.trim())
        })
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
    let service = parse_query(&query)
        .into_iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v);
    let mut record = TokenRequest {
        method,
        path,
        user: credentials.as_ref().map(|(u, _)| u.clone()),
        service: service.clone(),
        scopes: client::scopes_of(&query),
        status: 0,
        granted: None,
        refusal: None,
    };
    let response = answer(state, &mut record, req.uri().path(), credentials);
    record.status = response.status().as_u16();
    state.requests.lock().expect("requests lock").push(record);
    Ok(response)
}

fn answer(
    state: &State,
    record: &mut TokenRequest,
    path: &str,
    credentials: Option<(String, String)>,
) -> Response<Body> {
    if path != REALM_PATH {
        return server::raw(404, "text/plain; charset=utf-8", "404 page not found\n", &[]);
    }
    if record.method != "GET" {
        // token.md's endpoint is a GET; the OAuth2 POST form (oauth.md) is not modelled.
        return details(405, "only GET is supported", &[("allow", "GET")]);
    }
    let config = &state.config;
    let challenge = [("www-authenticate", "Basic realm=\"testkit token server\"")];
    // Who logged in, and the organisation a Cloudsmith login is limited to.
    let (subject, org) = match &credentials {
        Some((u, p)) if *u == config.user && *p == config.password => (config.user.clone(), None),
        Some((u, p)) if config.cloudsmith_tokens && u == CLOUDSMITH_USER => {
            match crate::cloudsmith::verify_access_token(p) {
                Ok(claims) => (claims.subject, Some(claims.org)),
                Err(why) => {
                    let refusal = format!("the Cloudsmith access token is refused: {why}");
                    record.refusal = Some(refusal.clone());
                    return details(401, &refusal, &challenge);
                }
            }
        }
        _ => return details(401, "incorrect username or password", &challenge),
    };
    let Some(service) = record.service.clone() else {
        return details(400, "missing the service parameter", &[]);
    };
    let mut granted = Vec::new();
    for scope in &record.scopes {
        let Some(mut resource) = ResourceActions::parse(scope) else {
            return details(400, &format!("invalid scope: {scope:?}"), &[]);
        };
        let ours = org
            .as_ref()
            .is_none_or(|org| resource.kind == "repository" && resource.name.starts_with(&format!("{org}/")));
        resource.actions.retain(|a| ours && config.actions.contains(a));
        granted.push(resource);
    }
    let now = crate::oidc::now_unix();
    let token = mint(state, &subject, &service, &granted, now);
    record.granted = Some(granted);
    server::json(
        200,
        &serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": config.lifetime_seconds,
            "issued_at": rfc3339(now),
        }),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_grammar() {
        assert_eq!(
            ResourceActions::parse("repository:acme/app:pull,push,pull"),
            Some(ResourceActions {
                kind: "repository".into(),
                class: String::new(),
                name: "acme/app".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        let plugin = ResourceActions::parse("repository(plugin):localhost:5000/x:pull").unwrap();
        assert_eq!(
            (plugin.class.as_str(), plugin.name.as_str()),
            ("plugin", "localhost:5000/x")
        );
        assert_eq!(
            ResourceActions::parse("registry:catalog:*").unwrap().actions,
            ["*"]
        );
        for bad in [
            "repository",
            "repository:acme",
            "Repository:a:pull",
            "repository::pull",
            "r:a:PULL",
        ] {
            assert_eq!(ResourceActions::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_ids_have_the_libtrust_shape() {
        let id = libtrust_key_id(b"any key");
        assert_eq!(id.len(), 12 * 4 + 11);
        assert!(id.split(':').all(|g| g.len() == 4
            && g.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))));
    }

    #[test]
    fn tokens_verify_with_the_signing_key() {
        let (signer, _) = make_signer(Signing::X5c).unwrap();
        let public = ring::signature::KeyPair::public_key(&signer.key)
            .as_ref()
            .to_vec();
        let state = State {
            config: TokenServerConfig::default(),
            signer,
            requests: Mutex::default(),
        };
        let access = [ResourceActions::parse("repository:a/b:pull").unwrap()];
        let token = mint(&state, "me", "svc", &access, 1000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64, "ES256 is r||s");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("verifies");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "svc");
        assert_eq!(claims["exp"], 1300);
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "a/b", "actions": ["pull"]}])
        );
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    }
}
