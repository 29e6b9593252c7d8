//! The registry helpers do what they claim, against the real tools: Debian's
//! `docker-registry` (distribution 2.8) in each auth mode, the token server proven by the
//! real registry and the real `skopeo`, and the faulty stand-in compared answer by
//! answer with the real registry, then made to fail in each of its ways on the wire.
//! A missing tool fails these tests (see `testkit::tools`).

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use testkit::client::{send_to, Reply};
use testkit::registry::{
    digest_of, Artifact, Auth, Content, Distribution, DistributionConfig, Fault, FaultyRegistry,
    FaultyRegistryConfig, ResourceActions, Signing, TokenServer, TokenServerConfig, WasmArtifact,
    HTPASSWD_REALM, OCI_IMAGE_CONFIG, OCI_LAYER_TAR_GZIP, OCI_MANIFEST, WASM_CONFIG, WASM_LAYER,
};
use testkit::tls::TestCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const REPO: &str = "acme/app";
const SERVICE: &str = "testkit-registry-service";

/// Something shaped like a component: the magic and version of a component binary and
/// 4 KiB of content, so halves are big enough to see.
fn component() -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend((0..4096u32).map(|i| (i * 7 % 251) as u8));
    bytes
}

async fn get(authority: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_to(authority, None, "GET", path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

const ACCEPT_OCI: (&str, &str) = ("accept", OCI_MANIFEST);

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

#[test]
fn wasm_artifacts_have_the_cncf_layout() {
    let component = component();
    let artifact = WasmArtifact::new(component.clone())
        .world(
            &["secretgen:generator/generator@0.1.0"],
            &["wasi:http/outgoing-handler@0.2.12"],
        )
        .build();
    let manifest = artifact.manifest_json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(artifact.media_type(), OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], WASM_LAYER);
    assert_eq!(layers[0]["digest"], digest_of(&component));
    assert_eq!(layers[0]["size"], component.len());
    assert_eq!(artifact.digest(), digest_of(artifact.manifest()));
    assert_eq!(artifact.layer_digests(), [digest_of(&component)]);
    let config: Value =
        serde_json::from_slice(artifact.blob(&artifact.config_digest().unwrap()).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({
            "created": "2025-01-01T00:00:00Z",
            "author": null,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [digest_of(&component)],
            "component": {
                "exports": ["secretgen:generator/generator@0.1.0"],
                "imports": ["wasi:http/outgoing-handler@0.2.12"],
                "target": null,
            },
        })
    );
    assert_eq!(artifact.blob(&digest_of(&component)), Some(&component[..]));
    assert_eq!(artifact.blobs().count(), 2);
    // Fixed `created`: the same bytes give the same digest in every run.
    assert_eq!(
        Artifact::wasm(component.clone()).digest(),
        Artifact::wasm(component).digest()
    );
    assert_eq!(
        artifact.oci_reference("127.0.0.1:5000", REPO),
        format!("oci://127.0.0.1:5000/acme/app@{}", artifact.digest())
    );
}

#[test]
fn an_oversized_declaration_changes_only_the_descriptor() {
    let component = component();
    let huge = WasmArtifact::new(component.clone())
        .declared_layer_size(64 << 30)
        .build();
    assert_eq!(huge.manifest_json()["layers"][0]["size"], 64u64 << 30);
    assert_eq!(huge.blob(&digest_of(&component)), Some(&component[..]));
    assert_ne!(huge.digest(), Artifact::wasm(component).digest());
}

#[test]
fn container_images_are_real_gzip_tar_images() {
    let image = Artifact::container_image();
    let manifest = image.manifest_json();
    assert_eq!(manifest["config"]["mediaType"], OCI_IMAGE_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], OCI_LAYER_TAR_GZIP);
    let layer = image.blob(&image.layer_digests()[0]).unwrap().to_vec();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layer.tar.gz"), &layer).unwrap();
    let list = std::process::Command::new("tar")
        .args(["-tzf", "layer.tar.gz"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert_eq!(String::from_utf8_lossy(&list.stdout), "hello.txt\n");
    let gunzip = std::process::Command::new("gzip")
        .args(["-dc", "layer.tar.gz"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(gunzip.status.success());
    let config: Value = serde_json::from_slice(image.blob(&image.config_digest().unwrap()).unwrap()).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], digest_of(&gunzip.stdout));
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
}

// ---------------------------------------------------------------------------------------
// Distribution
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_and_open_registries_share_their_data() {
    let data = tempfile::tempdir().unwrap();
    let guarded = Distribution::start(DistributionConfig {
        auth: Auth::htpasswd("ci", "s3cret"),
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let open = Distribution::start(DistributionConfig {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    assert_ne!(guarded.port(), open.port());
    assert_eq!(guarded.data_dir(), open.data_dir());
    assert_eq!(guarded.url(), format!("http://{}", guarded.authority()));
    assert!(
        guarded.log().contains("listening on 127.0.0.1:"),
        "{}",
        guarded.log()
    );

    let artifact = Artifact::wasm(component());
    let anonymous = guarded.push(REPO, "1.0", &artifact, None).await.unwrap_err();
    assert!(
        anonymous.to_string().contains("wants credentials"),
        "{anonymous:#}"
    );
    let wrong = guarded
        .push(REPO, "1.0", &artifact, Some(("ci", "wrong")))
        .await
        .unwrap_err();
    assert!(format!("{wrong:#}").contains("401"), "{wrong:#}");
    guarded
        .push(REPO, "1.0", &artifact, Some(("ci", "s3cret")))
        .await
        .expect("push with the right password");

    let challenge = get(&guarded.authority(), "/v2/", &[]).await;
    assert_eq!(challenge.status, 401);
    assert_eq!(
        challenge.header("www-authenticate").as_deref(),
        Some(format!("Basic realm=\"{HTPASSWD_REALM}\"").as_str())
    );
    // What the guarded one stored, the open one serves.
    let manifest = get(
        &open.authority(),
        &format!("/v2/{REPO}/manifests/1.0"),
        &[ACCEPT_OCI],
    )
    .await;
    assert_eq!(manifest.status, 200);
    assert_eq!(&manifest.body[..], artifact.manifest());
    assert_eq!(
        manifest.header("docker-content-digest").as_deref(),
        Some(artifact.digest())
    );
    let layer = &artifact.layer_digests()[0];
    let blob = get(&open.authority(), &format!("/v2/{REPO}/blobs/{layer}"), &[]).await;
    assert_eq!(blob.status, 200);
    assert_eq!(digest_of(&blob.body), *layer);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_registry_serves_clients_that_trust_its_ca() {
    let registry = Distribution::start(DistributionConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    let ca = registry.ca().expect("a CA with TLS");
    let cert_dir = registry.cert_dir().expect("a cert dir with TLS");
    assert_eq!(
        std::fs::read_to_string(cert_dir.join("ca.crt")).unwrap(),
        ca.ca_pem()
    );
    let artifact = Artifact::wasm(component());
    registry
        .push(REPO, artifact.digest(), &artifact, None)
        .await
        .unwrap();
    let reply = send_to(
        &registry.authority(),
        Some(ca),
        "GET",
        &format!("/v2/{REPO}/manifests/{}", artifact.digest()),
        &[ACCEPT_OCI],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], artifact.manifest());
    // A client trusting another CA is refused in the handshake.
    let other = TestCa::new();
    assert!(send_to(&registry.authority(), Some(&other), "GET", "/v2/", &[])
        .await
        .is_err());
    // Plain HTTP gets no registry answer.
    let plain = send_to(&registry.authority(), None, "GET", "/v2/", &[]).await;
    assert!(
        plain.map_or(true, |r| r.status == 400),
        "a TLS port answers plain HTTP with 400 at most"
    );
}

// ---------------------------------------------------------------------------------------
// Token server
// ---------------------------------------------------------------------------------------

fn claims_of(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
    };
    (part(0), part(1))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn the_token_server_answers_as_the_spec_says() {
    let server = TokenServer::start("ci", "pa55").await.unwrap();
    let realm = server.realm();
    let authority = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let path = format!(
        "/token?service={SERVICE}&scope=repository%3Aacme%2Fapp%3Apull%2Cpush%2Cdelete&scope=repository(plugin):x/y:pull&account=ci"
    );
    for auth in [None, Some(basic("ci", "wrong")), Some(basic("other", "pa55"))] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let refused = get(&authority, &path, &headers).await;
        assert_eq!(refused.status, 401, "{auth:?}");
        assert_eq!(
            refused.header("www-authenticate").as_deref(),
            Some("Basic realm=\"testkit token server\"")
        );
        assert!(refused.json().get("token").is_none());
    }
    let auth = basic("ci", "pa55");
    let reply = get(&authority, &path, &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200);
    let answer = reply.json();
    let token = answer["token"].as_str().unwrap();
    assert_eq!(answer["access_token"], token);
    assert_eq!(answer["expires_in"], 300);
    let issued_at = answer["issued_at"].as_str().unwrap();
    assert!(issued_at.ends_with('Z') && issued_at.len() == 20, "{issued_at}");
    let (header, claims) = claims_of(token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(header["kid"].as_str().unwrap().split(':').count(), 12);
    assert_eq!(claims["iss"], server.issuer());
    assert_eq!(claims["sub"], "ci");
    assert_eq!(claims["aud"], SERVICE);
    let (iat, nbf, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!((nbf, exp), (iat, iat + 300));
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    // `delete` is not held, so not granted; the plugin class is kept.
    assert_eq!(
        claims["access"],
        json!([
            {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]},
            {"type": "repository", "class": "plugin", "name": "x/y", "actions": ["pull"]},
        ])
    );
    assert_eq!(
        get(
            &authority,
            "/token?scope=repository:a:pull",
            &[("authorization", &auth)]
        )
        .await
        .status,
        400,
        "no service"
    );
    assert_eq!(
        get(
            &authority,
            &format!("/token?service={SERVICE}&scope=bad"),
            &[("authorization", &auth)]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        get(&authority, "/elsewhere", &[("authorization", &auth)])
            .await
            .status,
        404
    );
    assert_eq!(server.token_requests(), 7);
    assert_eq!(server.tokens_issued(), 1);
    let requests = server.requests();
    assert_eq!(requests[0].user, None);
    assert_eq!(requests[1].user.as_deref(), Some("ci"));
    assert_eq!(requests[3].service.as_deref(), Some(SERVICE));
    assert_eq!(
        requests[3].scopes,
        [
            "repository:acme/app:pull,push,delete",
            "repository(plugin):x/y:pull"
        ]
    );
    assert_eq!(requests[3].status, 200);
    assert!(requests[0].granted.is_none());
    assert!(server.root_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(server.root_cert_bundle()).unwrap(),
        server.root_cert_pem()
    );
}

async fn skopeo(args: &[String], home: &Path) -> testkit::process::Output {
    let mut command = testkit::tools::skopeo_in(home);
    command.args(args);
    testkit::process::run(command, None, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("skopeo {args:?}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pushes_and_pulls_through_the_real_registry_with_our_tokens() {
    let tokens = TokenServer::start("ci", "pa55").await.unwrap();
    let registry = Distribution::start(DistributionConfig {
        auth: tokens.auth(SERVICE),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("run")).unwrap();
    let layout = dir.path().join("layout");
    let image = Artifact::container_image();
    image.write_oci_layout(&layout, "1").unwrap();
    let target = format!("docker://{}/{REPO}:1", registry.authority());

    let push = |creds: &str| {
        strings(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            &format!("oci:{}:1", layout.display()),
            &target,
        ])
    };
    let out = skopeo(&push("ci:pa55"), &home).await;
    assert!(
        out.success(),
        "push: {}\nregistry log:\n{}",
        out.stderr,
        registry.log()
    );
    let issued = tokens.tokens_issued();
    assert!(issued >= 1, "skopeo got its tokens from the token server");
    let scopes: Vec<String> = tokens.requests().into_iter().flat_map(|r| r.scopes).collect();
    assert!(
        scopes.iter().any(|s| s == "repository:acme/app:pull,push"),
        "{scopes:?}"
    );

    let inspect = |creds: Option<&str>| {
        let mut args = strings(&["inspect", "--tls-verify=false"]);
        if let Some(creds) = creds {
            args.extend(strings(&["--creds", creds]));
        }
        args.push(target.clone());
        args
    };
    let out = skopeo(&inspect(Some("ci:pa55")), &home).await;
    assert!(out.success(), "inspect: {}", out.stderr);
    let inspected = out.stdout_json();
    assert_eq!(inspected["Layers"], json!(image.layer_digests()), "{inspected}");
    assert_eq!(
        inspected["Digest"],
        image.digest(),
        "skopeo copied the manifest unchanged"
    );

    // A wrong password gets no token, so no access.
    let issued = tokens.tokens_issued();
    let before = tokens.token_requests();
    let out = skopeo(&inspect(Some("ci:wrong")), &home).await;
    assert!(
        !out.success(),
        "inspect with a wrong password must fail: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("401")
            || out.stderr.contains("unauthorized")
            || out.stderr.contains("authentication required"),
        "{}",
        out.stderr
    );
    let out = skopeo(&push("ci:wrong"), &home).await;
    assert!(!out.success(), "push with a wrong password must fail");
    let refused: Vec<_> = tokens.requests().into_iter().skip(before).collect();
    assert!(
        !refused.is_empty() && refused.iter().all(|r| r.status == 401),
        "{refused:?}"
    );
    assert_eq!(tokens.tokens_issued(), issued);
    // Anonymous: refused too.
    let out = skopeo(&inspect(None), &home).await;
    assert!(!out.success(), "anonymous inspect must fail");

    // The registry does check what it accepts: the audience, the signer, the scope.
    let path = format!("/v2/{REPO}/manifests/1");
    let pull = ResourceActions::parse("repository:acme/app:pull").unwrap();
    let bearer = |t: &str| format!("Bearer {t}");
    let good = tokens.mint("ci", SERVICE, std::slice::from_ref(&pull));
    let reply = get(
        &registry.authority(),
        &path,
        &[ACCEPT_OCI, ("authorization", &bearer(&good))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let other_audience = tokens.mint("ci", "another-service", std::slice::from_ref(&pull));
    let stranger = TokenServer::start("ci", "pa55").await.unwrap();
    let other_signer = stranger.mint("ci", SERVICE, std::slice::from_ref(&pull));
    for token in [other_audience, other_signer] {
        let reply = get(
            &registry.authority(),
            &path,
            &[ACCEPT_OCI, ("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{:?}",
            reply.header("www-authenticate")
        );
    }
    let push_only = ResourceActions::parse("repository:acme/app:push").unwrap();
    let wrong_scope = tokens.mint("ci", SERVICE, &[push_only]);
    let reply = get(
        &registry.authority(),
        &path,
        &[ACCEPT_OCI, ("authorization", &bearer(&wrong_scope))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_trusts_the_cloudsmith_stand_ins_access_tokens_for_their_org() {
    use testkit::cloudsmith::access_token_for;
    let tokens = TokenServer::trusting_cloudsmith().await.unwrap();
    let registry = Distribution::start(DistributionConfig {
        auth: tokens.auth(SERVICE),
        ..Default::default()
    })
    .await;
    let image = Artifact::container_image();
    registry
        .push(REPO, "1", &image, Some(("testkit", "testkit-password")))
        .await
        .unwrap_or_else(|e| panic!("push: {e:#}\n{}", registry.log()));
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("run")).unwrap();
    let inspect = |token: &str| {
        strings(&[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("token:{token}"),
            &format!("docker://{}/{REPO}:1", registry.authority()),
        ])
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let subject = "system:serviceaccount:apps:puller";

    // The real skopeo logs in as Docker's helper output says: user token, the access token.
    let acme = access_token_for(subject, "acme", "svc", now + 600);
    let out = skopeo(&inspect(&acme), &home).await;
    assert!(out.success(), "inspect: {}\n{}", out.stderr, registry.log());
    assert_eq!(out.stdout_json()["Digest"], image.digest());
    let login = tokens
        .requests()
        .into_iter()
        .find(|r| r.user.as_deref() == Some(testkit::registry::CLOUDSMITH_USER))
        .unwrap();
    assert_eq!(login.status, 200);
    assert_eq!(
        login.granted.unwrap(),
        [ResourceActions::parse("repository:acme/app:pull").unwrap()]
    );

    // Another organisation's token gets a token without the action; an expired one, or
    // one no stand-in signed, gets none.
    let before = tokens.token_requests();
    let other = access_token_for(subject, "other", "svc", now + 600);
    let expired = access_token_for(subject, "acme", "svc", now - 10);
    let forged = format!("{}x", &acme[..acme.len() - 1]);
    for (token, what) in [(&other, "other org"), (&expired, "expired"), (&forged, "forged")] {
        let out = skopeo(&inspect(token), &home).await;
        assert!(!out.success(), "{what}: {}", out.stdout);
    }
    let refused: Vec<_> = tokens.requests().into_iter().skip(before).collect();
    assert!(
        refused.iter().any(|r| r
            .granted
            .as_ref()
            .is_some_and(|g| g.iter().all(|a| a.actions.is_empty()))),
        "{refused:?}"
    );
    let refusals: Vec<String> = refused.iter().filter_map(|r| r.refusal.clone()).collect();
    assert!(
        refusals.iter().any(|r| r.contains("expired"))
            && refusals.iter().any(|r| r.contains("not an access token")),
        "{refusals:?}"
    );
    for token in [&acme, &other, &expired] {
        assert!(
            !registry.log().contains(token.as_str()),
            "the registry logs no access token"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_id_tokens_over_https_are_accepted_too() {
    let tokens = TokenServer::start_with(TokenServerConfig {
        signing: Signing::KeyId,
        tls: true,
        ..TokenServerConfig::default()
    })
    .await
    .unwrap();
    assert!(tokens.realm().starts_with("https://"));
    let registry = Distribution::start(DistributionConfig {
        auth: tokens.auth(SERVICE),
        tls: true,
        ..Default::default()
    })
    .await;
    let artifact = Artifact::wasm(component());
    registry
        .push(REPO, "1.0", &artifact, Some(("testkit", "testkit-password")))
        .await
        .unwrap_or_else(|e| panic!("push: {e:#}\n{}", registry.log()));
    assert!(tokens.tokens_issued() >= 1);
    let token = tokens.mint(
        "testkit",
        SERVICE,
        &[ResourceActions::parse("repository:acme/app:pull").unwrap()],
    );
    let (header, _) = claims_of(&token);
    assert!(header.get("x5c").is_none(), "{header}");
    let reply = send_to(
        &registry.authority(),
        registry.ca(),
        "GET",
        &format!("/v2/{REPO}/manifests/1.0"),
        &[ACCEPT_OCI, ("authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], artifact.manifest());
}

// ---------------------------------------------------------------------------------------
// FaultyRegistry against the real registry
// ---------------------------------------------------------------------------------------

/// The headers a registry client may read.
const COMPARED: [&str; 12] = [
    "content-type",
    "content-length",
    "content-range",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "cache-control",
    "accept-ranges",
    "www-authenticate",
    "location",
    "x-content-type-options",
    "allow",
];

/// Connects to `authority` and writes `method path` with `headers` as raw HTTP/1.1.
async fn raw_request(authority: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(authority).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// `method path` with `Connection: close` on a raw socket: the status, the headers
/// (lower-case names) and every body byte before the server closed the connection (so a
/// response that declares more than it sends is seen as it is).
async fn raw_exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let close = [("Connection", "close")];
    let mut stream = raw_request(authority, method, path, &[&close, headers].concat()).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes within 10 s")
        .ok();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, answer[end + 4..].to_vec())
}

/// A request to replay: method, path, headers.
type Replay<'a> = (&'a str, String, Vec<(&'a str, String)>);

async fn assert_same_answers(real: &str, stand_in: &str, requests: &[Replay<'_>]) {
    for (method, path, headers) in requests {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let what = format!("{method} {path} {headers:?}");
        let (a_status, a_headers, a_body) = raw_exchange(real, method, path, &headers).await;
        let (b_status, b_headers, b_body) = raw_exchange(stand_in, method, path, &headers).await;
        assert_eq!(a_status, b_status, "{what}: status");
        assert_eq!(
            String::from_utf8_lossy(&a_body),
            String::from_utf8_lossy(&b_body),
            "{what}: body"
        );
        let pick = |all: &[(String, String)], name: &str| -> Vec<String> {
            all.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        for name in COMPARED {
            assert_eq!(
                pick(&a_headers, name),
                pick(&b_headers, name),
                "{what}: header {name}"
            );
        }
        // Nothing else a client could read, beyond the connection's own headers.
        let uncompared = |all: &[(String, String)]| -> Vec<String> {
            all.iter()
                .map(|(n, _)| n.clone())
                .filter(|n| {
                    !COMPARED.contains(&n.as_str())
                        && !["date", "connection", "transfer-encoding"].contains(&n.as_str())
                })
                .collect()
        };
        let extra = uncompared(&b_headers);
        assert!(extra.is_empty(), "{what}: the stand-in sent {extra:?}");
        let missing = uncompared(&a_headers);
        assert!(
            missing.is_empty(),
            "{what}: the real registry sent {missing:?}, not compared"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_faithful_stand_in_answers_like_the_real_registry() {
    let artifact = Artifact::wasm(component());
    let image = Artifact::container_image();
    let writer = Distribution::open().await;
    writer.push(REPO, "1.0", &artifact, None).await.unwrap();
    writer.push("acme/image", "latest", &image, None).await.unwrap();
    // A layer shorter than Go's range error text.
    let tiny = Artifact::wasm(&b"\0asm\x0d\0\x01\0"[..]);
    writer.push("acme/tiny", "1", &tiny, None).await.unwrap();
    // The stand-in is a read-only registry: compare with one, on the same data.
    let real = Distribution::start(DistributionConfig {
        data_dir: Some(writer.data_dir().to_path_buf()),
        read_only: true,
        ..Default::default()
    })
    .await;
    let stand_in = FaultyRegistry::start(
        Content::tagged(REPO, "1.0", &artifact)
            .artifact("acme/image", &image)
            .tag("acme/image", "latest", image.digest())
            .artifact("acme/tiny", &tiny),
        Fault::None,
    )
    .await
    .unwrap();

    let layer = artifact.layer_digests()[0].clone();
    let tiny_layer = format!("/v2/acme/tiny/blobs/{}", tiny.layer_digests()[0]);
    let config = artifact.config_digest().unwrap();
    let zero = format!("sha256:{}", "0".repeat(64));
    let oci = || vec![("accept", OCI_MANIFEST.to_string())];
    let none = Vec::new;
    let manifest = |r: &str| format!("/v2/{REPO}/manifests/{r}");
    let blob = |d: &str| format!("/v2/{REPO}/blobs/{d}");
    let requests = vec![
        ("GET", "/v2/".to_string(), none()),
        ("HEAD", "/v2/".to_string(), none()),
        ("GET", manifest("1.0"), none()),
        ("GET", manifest("1.0"), oci()),
        (
            "GET",
            manifest("1.0"),
            vec![("accept", format!("application/json, {OCI_MANIFEST}; q=0.9"))],
        ),
        ("HEAD", manifest("1.0"), oci()),
        ("GET", manifest(artifact.digest()), oci()),
        ("GET", manifest(artifact.digest()), none()),
        ("GET", manifest("2.0"), oci()),
        ("HEAD", manifest("2.0"), oci()),
        ("GET", manifest(&zero), oci()),
        ("GET", manifest("sha256:00"), oci()),
        (
            "GET",
            manifest("1.0"),
            vec![
                ("accept", OCI_MANIFEST.into()),
                ("if-none-match", format!("\"{}\"", artifact.digest())),
            ],
        ),
        (
            "GET",
            manifest("1.0"),
            vec![
                ("accept", OCI_MANIFEST.into()),
                ("if-none-match", artifact.digest().to_string()),
            ],
        ),
        ("GET", "/v2/acme/image/manifests/latest".to_string(), oci()),
        ("GET", "/v2/acme/other/manifests/1.0".to_string(), oci()),
        ("GET", "/v2/Acme/app/manifests/1.0".to_string(), oci()),
        ("GET", "/v2/acme/app/manifests/.bad".to_string(), oci()),
        ("GET", "/elsewhere".to_string(), none()),
        ("GET", blob(&layer), none()),
        ("HEAD", blob(&layer), none()),
        ("GET", blob(&config), none()),
        ("GET", blob(&layer), vec![("range", "bytes=2-".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=0-3".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=-3".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=100000-".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=-0".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=-100000".into())]),
        ("GET", blob(&layer), vec![("range", "bytes=5-2".into())]),
        ("GET", blob(&layer), vec![("range", "garbage".into())]),
        (
            "GET",
            blob(&layer),
            vec![("range", "bytes=0-1,100000-200000".into())],
        ),
        ("GET", blob(&layer), vec![("range", "bytes=0-4999,0-4999".into())]),
        ("GET", tiny_layer.clone(), vec![("range", "bytes=100-".into())]),
        ("GET", tiny_layer.clone(), vec![("range", "garbage".into())]),
        ("GET", tiny_layer, vec![("range", "bytes=1-2".into())]),
        ("GET", format!("/v2/acme/tiny/manifests/{}", tiny.digest()), oci()),
        (
            "GET",
            blob(&layer),
            vec![("if-none-match", format!("\"{layer}\""))],
        ),
        ("GET", blob(&zero), none()),
        ("HEAD", blob(&zero), none()),
        ("GET", blob("sha256:00"), none()),
        ("GET", blob("nothex"), none()),
        ("GET", format!("/v2/acme/other/blobs/{layer}"), none()),
        ("PUT", manifest("2.0"), none()),
        ("DELETE", blob(&layer), none()),
        ("OPTIONS", manifest("1.0"), none()),
        ("POST", "/v2/".to_string(), none()),
    ];
    assert_same_answers(&real.authority(), &stand_in.authority(), &requests).await;
    assert_eq!(stand_in.request_count(), requests.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unauthorized_stand_in_answers_like_an_htpasswd_registry() {
    let artifact = Artifact::wasm(component());
    let real = Distribution::start(DistributionConfig {
        auth: Auth::htpasswd("ci", "s3cret"),
        ..Default::default()
    })
    .await;
    let stand_in = FaultyRegistry::start(Content::tagged(REPO, "1.0", &artifact), Fault::Unauthorized)
        .await
        .unwrap();
    let layer = artifact.layer_digests()[0].clone();
    let wrong = vec![("authorization", basic("ci", "wrong"))];
    let requests = vec![
        ("GET", "/v2/".to_string(), vec![]),
        (
            "GET",
            format!("/v2/{REPO}/manifests/1.0"),
            vec![("accept", OCI_MANIFEST.to_string())],
        ),
        ("GET", format!("/v2/{REPO}/manifests/1.0"), wrong.clone()),
        ("HEAD", format!("/v2/{REPO}/blobs/{layer}"), vec![]),
        ("GET", format!("/v2/{REPO}/blobs/{layer}"), wrong),
        ("PUT", format!("/v2/{REPO}/manifests/2.0"), vec![]),
        ("DELETE", format!("/v2/{REPO}/blobs/{layer}"), vec![]),
        ("OPTIONS", format!("/v2/{REPO}/manifests/1.0"), vec![]),
        ("GET", "/v2/acme/app/blobs/nothex".to_string(), vec![]),
    ];
    assert_same_answers(&real.authority(), &stand_in.authority(), &requests).await;
}

// ---------------------------------------------------------------------------------------
// FaultyRegistry faults on the wire
// ---------------------------------------------------------------------------------------

async fn stand_in(fault: Fault) -> (FaultyRegistry, Artifact) {
    let artifact = Artifact::wasm(component());
    let registry = FaultyRegistry::start(Content::tagged(REPO, "1.0", &artifact), fault)
        .await
        .unwrap();
    (registry, artifact)
}

/// `GET` of the manifest `reference` of [`REPO`], accepting OCI manifests.
async fn manifest(registry: &FaultyRegistry, reference: &str) -> Reply {
    get(
        &registry.authority(),
        &FaultyRegistry::manifest_path(REPO, reference),
        &[ACCEPT_OCI],
    )
    .await
}

/// `GET` of the blob `digest` of [`REPO`].
async fn blob(registry: &FaultyRegistry, digest: &str) -> Reply {
    get(
        &registry.authority(),
        &FaultyRegistry::blob_path(REPO, digest),
        &[],
    )
    .await
}

#[tokio::test]
async fn faithful_content_hashes_to_its_digests() {
    let (registry, artifact) = stand_in(Fault::None).await;
    let by_tag = get(
        &registry.authority(),
        &format!("/v2/{REPO}/manifests/1.0"),
        &[ACCEPT_OCI],
    )
    .await;
    assert_eq!(by_tag.status, 200);
    assert_eq!(digest_of(&by_tag.body), artifact.digest());
    assert_eq!(by_tag.header("content-type").as_deref(), Some(OCI_MANIFEST));
    for digest in [
        artifact.config_digest().unwrap(),
        artifact.layer_digests()[0].clone(),
    ] {
        let blob = blob(&registry, &digest).await;
        assert_eq!(blob.status, 200);
        assert_eq!(digest_of(&blob.body), digest);
    }
    // Every request is recorded, with its headers.
    let requests = registry.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, FaultyRegistry::manifest_path(REPO, "1.0"));
    assert_eq!(requests[0].header("Accept"), Some(OCI_MANIFEST));
    assert_eq!(
        registry.count(
            "GET",
            &FaultyRegistry::blob_path(REPO, &artifact.layer_digests()[0])
        ),
        1
    );
    assert_eq!(
        registry.count("HEAD", &FaultyRegistry::manifest_path(REPO, "1.0")),
        0
    );
    assert_eq!(registry.fault(), Fault::None);
}

/// A stand-in with `fault`, and its answers for the manifest by tag and by digest, each
/// a 200.
async fn manifests_by_tag_and_digest(fault: Fault) -> (FaultyRegistry, Artifact, Vec<Reply>) {
    let (registry, artifact) = stand_in(fault).await;
    let mut replies = Vec::new();
    for reference in ["1.0", artifact.digest()] {
        let reply = manifest(&registry, reference).await;
        assert_eq!(reply.status, 200, "{reference}");
        replies.push(reply);
    }
    (registry, artifact, replies)
}

#[tokio::test]
async fn wrong_manifest_bytes_do_not_hash_to_the_digest() {
    let (registry, artifact, replies) = manifests_by_tag_and_digest(Fault::WrongManifestBytes).await;
    for reply in replies {
        assert_eq!(
            reply.header("docker-content-digest").as_deref(),
            Some(artifact.digest())
        );
        assert_ne!(digest_of(&reply.body), artifact.digest());
        assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string()));
        // Still a manifest naming the same blobs: only a digest check catches it.
        assert_eq!(reply.json()["layers"], artifact.manifest_json()["layers"]);
    }
    // Blobs are served faithfully.
    let layer = &artifact.layer_digests()[0];
    let blob = blob(&registry, layer).await;
    assert_eq!(digest_of(&blob.body), *layer);
}

#[tokio::test]
async fn wrong_blob_bytes_keep_the_length_and_miss_the_digest() {
    let (registry, artifact) = stand_in(Fault::WrongBlobBytes).await;
    let layer = artifact.layer_digests()[0].clone();
    let reply = blob(&registry, &layer).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("docker-content-digest"), Some(layer.clone()));
    assert_eq!(reply.body.len(), artifact.blob(&layer).unwrap().len());
    assert_ne!(digest_of(&reply.body), layer);
    // The config (not a layer) is right, and so is the manifest.
    let config = artifact.config_digest().unwrap();
    let reply = blob(&registry, &config).await;
    assert_eq!(digest_of(&reply.body), config);
    let manifest = manifest(&registry, "1.0").await;
    assert_eq!(digest_of(&manifest.body), artifact.digest());

    // Chosen blobs instead: the config wrong, the layer right.
    let chosen = FaultyRegistry::start_with(FaultyRegistryConfig {
        content: Content::tagged(REPO, "1.0", &artifact),
        fault: Fault::WrongBlobBytes,
        faulty_blobs: Some(vec![config.clone()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let reply = blob(&chosen, &config).await;
    assert_ne!(digest_of(&reply.body), config);
    let reply = blob(&chosen, &layer).await;
    assert_eq!(digest_of(&reply.body), layer);
}

/// Sends `GET path` on a raw socket and reads the head of the answer: the status line
/// and headers, and whatever body bytes came with them.
async fn raw_get(authority: &str, path: &str, headers: &[(&str, &str)]) -> (TcpStream, String, Vec<u8>) {
    let mut stream = raw_request(authority, "GET", path, headers).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the head within 10 s")
            .unwrap();
        assert!(n > 0, "closed before the head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (stream, head, buf[end + 4..].to_vec());
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length")
}

/// A raw `GET` of the artifact's layer, whose head must be a 200 with the layer's whole
/// length: the layer's digest, its size, the stream, and the body bytes read so far.
async fn raw_layer(registry: &FaultyRegistry, artifact: &Artifact) -> (String, usize, TcpStream, Vec<u8>) {
    let layer = artifact.layer_digests()[0].clone();
    let size = artifact.blob(&layer).unwrap().len();
    let (stream, head, body) = raw_get(
        &registry.authority(),
        &FaultyRegistry::blob_path(REPO, &layer),
        &[],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(content_length(&head), size);
    (layer, size, stream, body)
}

#[tokio::test]
async fn a_cut_blob_sends_half_then_closes() {
    let (registry, artifact) = stand_in(Fault::CutBlob).await;
    let (layer, size, mut stream, mut body) = raw_layer(&registry, &artifact).await;
    // Read to the end: the connection closes after half the bytes.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body))
        .await
        .expect("closed within 10 s")
        .ok();
    assert_eq!(body.len(), size / 2);
    assert_eq!(body, artifact.blob(&layer).unwrap()[..size / 2]);
    // Through a client: the body fails.
    let failed = send_to(
        &registry.authority(),
        None,
        "GET",
        &FaultyRegistry::blob_path(REPO, &layer),
        &[],
    )
    .await;
    assert!(failed.is_err(), "{failed:?}");
    // HEAD is untouched.
    let head = send_to(
        &registry.authority(),
        None,
        "HEAD",
        &FaultyRegistry::blob_path(REPO, &layer),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(head.header("content-length"), Some(size.to_string()));
}

#[tokio::test]
async fn a_stalled_blob_sends_half_then_nothing_until_dropped() {
    let (registry, artifact) = stand_in(Fault::StallBlob).await;
    let (layer, size, mut stream, mut body) = raw_layer(&registry, &artifact).await;
    let mut chunk = [0u8; 8192];
    while body.len() < size / 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the first half within 10 s")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body, artifact.blob(&layer).unwrap()[..size / 2]);
    // Then nothing: neither bytes nor the end.
    let more = tokio::time::timeout(Duration::from_millis(700), stream.read(&mut chunk)).await;
    assert!(more.is_err(), "expected a stall, got {more:?}");
    // Dropping the stand-in ends the connection.
    drop(registry);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
        .await
        .expect("the connection ends once the stand-in is dropped");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn unauthorized_refuses_everything_with_a_basic_challenge() {
    let (registry, artifact) = stand_in(Fault::Unauthorized).await;
    let layer = artifact.layer_digests()[0].clone();
    let auth = basic("ci", "anything");
    for path in [
        "/v2/".to_string(),
        FaultyRegistry::manifest_path(REPO, "1.0"),
        FaultyRegistry::blob_path(REPO, &layer),
    ] {
        for headers in [vec![], vec![("authorization", auth.as_str())]] {
            let reply = get(&registry.authority(), &path, &headers).await;
            assert_eq!(reply.status, 401, "{path}");
            assert_eq!(
                reply.header("www-authenticate").as_deref(),
                Some("Basic realm=\"testkit-registry\"")
            );
            assert_eq!(reply.json()["errors"][0]["code"], "UNAUTHORIZED");
        }
    }
    assert_eq!(
        registry.requests()[1].header("authorization"),
        Some(auth.as_str())
    );
}

#[tokio::test]
async fn not_found_answers_manifest_unknown() {
    let (registry, artifact) = stand_in(Fault::NotFound).await;
    let by_tag = manifest(&registry, "1.0").await;
    assert_eq!(by_tag.status, 404);
    assert_eq!(
        by_tag.json(),
        json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "1.0"}}]})
    );
    let by_digest = get(
        &registry.authority(),
        &FaultyRegistry::manifest_path(REPO, artifact.digest()),
        &[ACCEPT_OCI],
    )
    .await;
    assert_eq!(by_digest.status, 404);
    assert_eq!(
        by_digest.json()["errors"][0]["detail"]["Revision"],
        artifact.digest()
    );
    // Blobs are still there.
    let layer = &artifact.layer_digests()[0];
    assert_eq!(blob(&registry, layer).await.status, 200);
}

#[tokio::test]
async fn garbage_is_html_with_a_200() {
    let (_registry, _, replies) = manifests_by_tag_and_digest(Fault::Garbage).await;
    for reply in replies {
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert!(reply.header("docker-content-digest").is_none());
        assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
        assert!(String::from_utf8_lossy(&reply.body).contains("<html>"));
    }
}

#[tokio::test]
async fn a_huge_manifest_is_chunked_and_does_not_end() {
    let (registry, artifact) = stand_in(Fault::HugeManifest).await;
    let (mut stream, head, mut body) = raw_get(
        &registry.authority(),
        &FaultyRegistry::manifest_path(REPO, artifact.digest()),
        &[ACCEPT_OCI],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let head = head.to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(
        head.contains(&format!("docker-content-digest: {}", artifact.digest())),
        "{head}"
    );
    // Far past any manifest bound (distribution's is 4 MiB), it still sends.
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < 8 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("bytes within 10 s")
            .unwrap();
        assert!(n > 0, "ended after {} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    // Chunk sizes and JSON whitespace only.
    assert!(
        body.iter().all(|b| b" \r\n0123456789abcdef".contains(b)),
        "not whitespace"
    );
    // Unknown manifests are still 404.
    let unknown = manifest(&registry, "2.0").await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn an_https_stand_in_serves_clients_that_trust_its_ca() {
    let artifact = Artifact::wasm(component());
    let registry = FaultyRegistry::start_tls(Content::tagged(REPO, "1.0", &artifact), Fault::None)
        .await
        .unwrap();
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    let reply = send_to(
        &registry.authority(),
        registry.ca(),
        "GET",
        &FaultyRegistry::manifest_path(REPO, "1.0"),
        &[ACCEPT_OCI],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], artifact.manifest());
    assert!(
        send_to(&registry.authority(), Some(&TestCa::new()), "GET", "/v2/", &[])
            .await
            .is_err()
    );
}
