//! An in-process stand-in of the distribution pull API, with one chosen fault.
//!
//! Faithful ([`Fault::None`]) answers, each from distribution v2.8.2, and each checked
//! byte for byte (status, body, every header but `Date`) against a real read-only
//! `docker-registry` by `testkit/tests/registry.rs`:
//!
//! | request                                   | answer, and where it comes from                                      |
//! |-------------------------------------------|----------------------------------------------------------------------|
//! | any                                       | `Docker-Distribution-API-Version: registry/2.0` (registry/handlers/app.go, `App.ServeHTTP`) |
//! | a path no route matches (bad name, tag or digest shape) | 404 `text/plain` `404 page not found` (gorilla/mux's default, routes of registry/api/v2/descriptors.go with reference/regexp.go `NameRegexp`, `TagRegexp` and go-digest's `DigestRegexp`) |
//! | a method other than `GET`/`HEAD` on a manifest or blob | 405 `Method not allowed`, `Allow: GET, HEAD` (`OPTIONS`: a bare 200): a read-only registry, `storage.maintenance.readonly` (handlers/manifests.go `manifestDispatcher` and blob.go `blobDispatcher` with `readOnly`, gorilla/handlers `MethodHandler`) |
//! | `/v2/`                                    | 200 `{}`, `application/json; charset=utf-8` (app.go `apiBase`)        |
//! | a manifest by unknown tag                 | 404 `MANIFEST_UNKNOWN`, `detail: {"Tag": …}` (manifests.go `GetManifest`, `distribution.ErrTagUnknown`) |
//! | a manifest by unknown digest              | 404 `MANIFEST_UNKNOWN`, `detail: {"Name": …, "Revision": …}` (`ErrManifestUnknownRevision`) |
//! | `If-None-Match` naming its digest         | 304 (manifests.go `etagMatch`)                                        |
//! | an OCI manifest (index) without `Accept` of its media type | 404 `MANIFEST_UNKNOWN` "OCI manifest found, but accept header does not support OCI manifests" ("OCI index found, …") (manifests.go `GetManifest`) |
//! | a manifest                                | 200, `Content-Type` its media type, `Content-Length`, `Docker-Content-Digest`, `Etag: "<digest>"`; `HEAD`: the same headers, no body (manifests.go `GetManifest`) |
//! | a manifest by a digest go-digest refuses (`sha256:00`) | 500 `UNKNOWN`, `detail: {"Path": …, "DriverName": "filesystem"}`: looked up as a tag whose storage path the filesystem driver refuses (storage/driver/base/base.go `GetContent`) |
//! | a blob by a digest go-digest refuses (`sha256:00`) | 400 `DIGEST_INVALID`, `detail: {}` (blob.go `blobDispatcher`)  |
//! | an unknown blob (blobs belong to a repository) | 404 `BLOB_UNKNOWN`, `detail: "<digest>"` (blob.go `GetBlob`)     |
//! | a blob                                    | 200 `application/octet-stream`, `Content-Length`, `Docker-Content-Digest`, `Etag`, `Cache-Control: max-age=31536000`, `Accept-Ranges: bytes` (registry/storage/blobserver.go `ServeBlob`; blobstore.go `Stat`'s media type) |
//! | a blob with `If-None-Match` naming its `Etag` | 304 with `Etag`, `Cache-Control`, `Docker-Content-Digest` (Go's `http.ServeContent`) |
//! | a blob with one `Range` (Go's `parseRange` grammar) | 206, `Content-Range: bytes a-b/size` (`http.ServeContent`); several ranges: the whole blob, 200 (Go answers `multipart/byteranges`: not modelled) |
//! | a blob with a `Range` that is invalid or misses the blob | 416 declaring `Content-Length: <blob size>`, sending `invalid range[: failed to overlap]` only if it fits, then closing; `Content-Range: bytes */size` when it misses (`http.ServeContent`'s `Error` after blobserver.go set the length: Go 1.19 keeps it) |
//!
//! Error bodies are distribution's envelope, byte for byte: `{"errors":[{"code":…,
//! "message":…,"detail":…}]}` and a newline (registry/api/errcode/errors.go
//! `Errors.MarshalJSON`, handler.go `ServeJSON`; codes from registry/api/v2/errors.go).
//! Not modelled: Docker schema 1 rewriting (2.8 turns a schema 2 manifest fetched by tag
//! without `Accept` of it into schema 1; this serves it as stored), the catalog, tag
//! lists, uploads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{
    digest_shaped, errors_body, json_string, valid_digest, valid_name, valid_tag, ApiError, Artifact,
    HTPASSWD_REALM, OCI_INDEX, OCI_MANIFEST,
};
pub use crate::server::RecordedRequest;
use crate::server::{self, Body, Hangup};

/// What the stand-in does wrong, chosen when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fault {
    /// Nothing: it answers as distribution does.
    #[default]
    None,
    /// Manifests (`GET`, by tag or digest) come with bytes that do not hash to their
    /// digest: the stored manifest with an extra annotation
    /// (`org.opencontainers.image.description: tampered by testkit`), still valid JSON
    /// naming the same blobs; `Docker-Content-Digest` still names the stored digest.
    WrongManifestBytes,
    /// Faulty blobs (see [`FaultyRegistryConfig::faulty_blobs`]) come with their headers
    /// unchanged and the same length, their last byte inverted.
    WrongBlobBytes,
    /// Faulty blobs come with their headers (the full `Content-Length`), the first half
    /// of their bytes, then the connection closes.
    CutBlob,
    /// Faulty blobs come with their headers and the first half of their bytes, then
    /// nothing: the connection stays open until the client or the stand-in goes away.
    StallBlob,
    /// Everything under `/v2/` gets 401 `UNAUTHORIZED` with `WWW-Authenticate: Basic
    /// realm="…"` (distribution's htpasswd answer: auth/htpasswd/access.go
    /// `challenge.SetHeaders`, app.go `App.authorized`), whatever credentials are sent.
    Unauthorized,
    /// Every manifest is 404 `MANIFEST_UNKNOWN` (as for an unknown tag or digest).
    NotFound,
    /// Every manifest is 200 `text/html` with a page that is not JSON, and none of the
    /// registry's headers: what a captive portal or a misrouted proxy answers.
    Garbage,
    /// Every stored manifest is 200 with its media type and the registry's headers, but
    /// chunked (no `Content-Length`) and without end: 1 GiB of JSON whitespace. What a
    /// hostile or broken registry can send a client that reads a manifest whole.
    HugeManifest,
}

impl Fault {
    /// Every fault, for table-driven tests.
    pub const ALL: [Fault; 9] = [
        Fault::None,
        Fault::WrongManifestBytes,
        Fault::WrongBlobBytes,
        Fault::CutBlob,
        Fault::StallBlob,
        Fault::Unauthorized,
        Fault::NotFound,
        Fault::Garbage,
        Fault::HugeManifest,
    ];

    fn hits_blobs(self) -> bool {
        matches!(self, Fault::WrongBlobBytes | Fault::CutBlob | Fault::StallBlob)
    }
}

/// The repositories a [`FaultyRegistry`] serves.
#[derive(Debug, Clone, Default)]
pub struct Content {
    repositories: BTreeMap<String, Repository>,
}

#[derive(Debug, Clone, Default)]
struct Repository {
    /// Digest → (bytes, media type).
    manifests: BTreeMap<String, (Bytes, String)>,
    blobs: BTreeMap<String, Bytes>,
    tags: BTreeMap<String, String>,
    /// The blobs some manifest lists as a layer.
    layers: BTreeSet<String>,
}

impl Content {
    /// No repositories.
    pub fn new() -> Content {
        Content::default()
    }

    /// `artifact` in `repository`, tagged `tag`.
    pub fn tagged(repository: &str, tag: &str, artifact: &Artifact) -> Content {
        Content::new()
            .artifact(repository, artifact)
            .tag(repository, tag, artifact.digest())
    }

    /// Adds `artifact`'s manifest (by its digest) and blobs to `repository`.
    pub fn artifact(mut self, repository: &str, artifact: &Artifact) -> Content {
        let repo = self.repositories.entry(repository.to_string()).or_default();
        repo.manifests.insert(
            artifact.digest().to_string(),
            (artifact.manifest_bytes(), artifact.media_type().to_string()),
        );
        for (digest, bytes) in artifact.blob_bytes() {
            repo.blobs.insert(digest.clone(), bytes.clone());
        }
        repo.layers.extend(artifact.layer_digests());
        self
    }

    /// Points `tag` of `repository` at the manifest `digest`.
    pub fn tag(mut self, repository: &str, tag: &str, digest: &str) -> Content {
        self.repositories
            .entry(repository.to_string())
            .or_default()
            .tags
            .insert(tag.to_string(), digest.to_string());
        self
    }
}

/// How a [`FaultyRegistry`] behaves.
#[derive(Debug, Clone, Default)]
pub struct FaultyRegistryConfig {
    /// What it serves.
    pub content: Content,
    /// What it does wrong.
    pub fault: Fault,
    /// Serve HTTPS with a fresh [`crate::tls::TestCa`].
    pub tls: bool,
    /// The blobs [`Fault::WrongBlobBytes`], [`Fault::CutBlob`] and [`Fault::StallBlob`]
    /// hit, by digest; `None`: every blob a stored manifest lists as a layer (configs
    /// are served faithfully, so a client that checks only the config is caught).
    pub faulty_blobs: Option<Vec<String>>,
    /// The realm of [`Fault::Unauthorized`]'s challenge; `None`: [`HTPASSWD_REALM`],
    /// what an htpasswd [`super::Distribution`] names.
    pub realm: Option<String>,
}

/// A running stand-in registry. Dropping it stops the server and every connection
/// (stalled ones too).
#[derive(Debug)]
pub struct FaultyRegistry {
    running: server::Running,
    scheme: &'static str,
    state: Arc<State>,
    ca: Option<crate::tls::TestCa>,
}

#[derive(Debug)]
struct State {
    content: Content,
    fault: Fault,
    faulty_blobs: Option<BTreeSet<String>>,
    realm: String,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl FaultyRegistry {
    /// Serves `content` over plain HTTP on `127.0.0.1` (a free port), with `fault`.
    pub async fn start(content: Content, fault: Fault) -> anyhow::Result<FaultyRegistry> {
        Self::start_with(FaultyRegistryConfig {
            content,
            fault,
            ..FaultyRegistryConfig::default()
        })
        .await
    }

    /// [`FaultyRegistry::start`] over HTTPS (see [`FaultyRegistry::ca`]).
    pub async fn start_tls(content: Content, fault: Fault) -> anyhow::Result<FaultyRegistry> {
        Self::start_with(FaultyRegistryConfig {
            content,
            fault,
            tls: true,
            ..FaultyRegistryConfig::default()
        })
        .await
    }

    /// Starts with every option.
    pub async fn start_with(config: FaultyRegistryConfig) -> anyhow::Result<FaultyRegistry> {
        let (ca, tls) = crate::tls::optional(config.tls)?;
        let state = Arc::new(State {
            content: config.content,
            fault: config.fault,
            faulty_blobs: config.faulty_blobs.map(|d| d.into_iter().collect()),
            realm: config.realm.unwrap_or_else(|| HTPASSWD_REALM.to_string()),
            requests: Mutex::default(),
        });
        let handler_state = state.clone();
        let handler: server::Handler = Arc::new(move |req| {
            let state = handler_state.clone();
            Box::pin(async move { handle(&state, req) })
        });
        let running = server::serve(tls, handler).await?;
        Ok(FaultyRegistry {
            running,
            scheme: if ca.is_some() { "https" } else { "http" },
            state,
            ca,
        })
    }

    /// `127.0.0.1:PORT`: the registry part of an `oci://` reference.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.running.addr.port())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority())
    }

    /// The CA of its certificate, with TLS.
    pub fn ca(&self) -> Option<&crate::tls::TestCa> {
        self.ca.as_ref()
    }

    /// The fault it runs with.
    pub fn fault(&self) -> Fault {
        self.state.fault
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// How many requests so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("requests lock").len()
    }

    /// How many `method path` requests so far (the path without its query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.split('?').next() == Some(path))
            .count()
    }

    /// `/v2/<repository>/manifests/<reference>`.
    pub fn manifest_path(repository: &str, reference: &str) -> String {
        format!("/v2/{repository}/manifests/{reference}")
    }

    /// `/v2/<repository>/blobs/<digest>`.
    pub fn blob_path(repository: &str, digest: &str) -> String {
        format!("/v2/{repository}/blobs/{digest}")
    }
}

/// The parsed route (registry/api/v2/descriptors.go).
enum Route<'a> {
    Base,
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/v2/" {
        return Some(Route::Base);
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some(at) = rest.rfind("/manifests/") {
        let (name, reference) = (&rest[..at], &rest[at + "/manifests/".len()..]);
        let ok = valid_name(name) && (valid_tag(reference) || digest_shaped(reference));
        return ok.then_some(Route::Manifest { name, reference });
    }
    if let Some(at) = rest.rfind("/blobs/") {
        let (name, digest) = (&rest[..at], &rest[at + "/blobs/".len()..]);
        return (valid_name(name) && digest_shaped(digest)).then_some(Route::Blob { name, digest });
    }
    None
}

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

fn handle(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Hangup> {
    let (parts, _body) = req.into_parts();
    let recorded = RecordedRequest::new(&parts, Vec::new());
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(recorded.clone());
    Ok(answer(state, &recorded, parts.uri.path()))
}

fn header_values<'a>(req: &'a RecordedRequest, name: &'a str) -> impl Iterator<Item = &'a str> {
    req.headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An errcode envelope answer (handler.go `ServeJSON`).
fn api_error(status: u16, code: &str, message: &str, detail: Option<String>) -> Response<Body> {
    server::raw(
        status,
        "application/json; charset=utf-8",
        errors_body(&[ApiError {
            code,
            message,
            detail,
        }]),
        &[API_VERSION],
    )
}

fn answer(state: &State, req: &RecordedRequest, path: &str) -> Response<Body> {
    let head = req.method == "HEAD";
    let Some(route) = route(path) else {
        // Go's http.NotFound, which gorilla/mux answers for an unmatched path.
        return server::raw(
            404,
            "text/plain; charset=utf-8",
            "404 page not found\n",
            &[API_VERSION, ("x-content-type-options", "nosniff")],
        );
    };
    if state.fault == Fault::Unauthorized {
        // app.go `App.authorized`, before any handler: the challenge, and as the detail
        // the access the request needed (`appendAccessRecords`), `null` for none.
        let detail = match &route {
            Route::Manifest { name, .. } | Route::Blob { name, .. } => {
                let actions: &[&str] = match req.method.as_str() {
                    "GET" | "HEAD" => &["pull"],
                    "POST" | "PUT" | "PATCH" => &["pull", "push"],
                    "DELETE" => &["delete"],
                    _ => &[],
                };
                let records: Vec<String> = actions
                    .iter()
                    .map(|action| {
                        format!(
                            "{{\"Type\":\"repository\",\"Class\":\"\",\"Name\":{},\"Action\":\"{action}\"}}",
                            json_string(name)
                        )
                    })
                    .collect();
                if records.is_empty() {
                    "null".to_string()
                } else {
                    format!("[{}]", records.join(","))
                }
            }
            Route::Base => "null".to_string(),
        };
        let mut response = api_error(401, "UNAUTHORIZED", "authentication required", Some(detail));
        let challenge = format!("Basic realm={}", json_string(&state.realm));
        response.headers_mut().insert(
            "www-authenticate",
            challenge.parse().expect("a valid header value"),
        );
        return response;
    }
    if !matches!(route, Route::Base) && !matches!(req.method.as_str(), "GET" | "HEAD") {
        // gorilla/handlers `MethodHandler`: OPTIONS gets a bare 200.
        if req.method == "OPTIONS" {
            return empty(200, &[API_VERSION, ("allow", "GET, HEAD")]);
        }
        return server::raw(
            405,
            "text/plain; charset=utf-8",
            "Method not allowed\n",
            &[
                API_VERSION,
                ("allow", "GET, HEAD"),
                ("x-content-type-options", "nosniff"),
            ],
        );
    }
    match route {
        Route::Base => with_length(
            server::raw(200, "application/json; charset=utf-8", "{}", &[API_VERSION]),
            head,
        ),
        Route::Manifest { name, reference } => manifest(state, req, name, reference, head),
        Route::Blob { name, digest } => blob(state, req, name, digest, head),
    }
}

/// A response with its `Content-Length` declared, and no body for `HEAD` (Go's server
/// keeps the length a handler set and drops what it writes).
fn with_length(response: Response<Body>, head: bool) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let bytes = match body {
        Body::Full(bytes) => bytes.unwrap_or_default(),
        other => return Response::from_parts(parts, other),
    };
    parts.headers.insert("content-length", bytes.len().into());
    Response::from_parts(parts, Body::Full((!head).then_some(bytes)))
}

fn manifest(state: &State, req: &RecordedRequest, name: &str, reference: &str, head: bool) -> Response<Body> {
    if state.fault == Fault::Garbage {
        return with_length(
            server::raw(
                200,
                "text/html; charset=utf-8",
                "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n\
                 <body><p>Sign in to the network to continue.</p></body></html>\n",
                &[],
            ),
            head,
        );
    }
    let repo = state.content.repositories.get(name);
    let by_digest = valid_digest(reference);
    let unknown = || {
        // manifests.go GetManifest: ErrTagUnknown{Tag} by tag, ErrManifestUnknownRevision
        // {Name, Revision} by digest.
        let detail = if by_digest {
            format!(
                "{{\"Name\":{},\"Revision\":{}}}",
                json_string(name),
                json_string(reference)
            )
        } else {
            format!("{{\"Tag\":{}}}", json_string(reference))
        };
        with_length(
            api_error(404, "MANIFEST_UNKNOWN", "manifest unknown", Some(detail)),
            head,
        )
    };
    if state.fault == Fault::NotFound {
        return unknown();
    }
    let digest = if by_digest {
        reference.to_string()
    } else if reference.contains(':') {
        // Digest-shaped but refused by go-digest, so looked up as a tag, whose storage
        // path the filesystem driver refuses (registry/storage/driver/base/base.go
        // `GetContent`: `PathRegexp` has no `:`): `InvalidPathError`, which
        // manifests.go `GetManifest` reports as 500 UNKNOWN.
        let detail = format!(
            "{{\"Path\":{},\"DriverName\":\"filesystem\"}}",
            json_string(&format!(
                "/docker/registry/v2/repositories/{name}/_manifests/tags/{reference}/current/link"
            ))
        );
        return with_length(api_error(500, "UNKNOWN", "unknown error", Some(detail)), head);
    } else {
        match repo.and_then(|r| r.tags.get(reference)) {
            Some(d) => d.clone(),
            None => return unknown(),
        }
    };
    // manifests.go etagMatch: quoted or not, before the manifest is read.
    let quoted = format!("\"{digest}\"");
    if header_values(req, "if-none-match").any(|v| v == digest || v == quoted) {
        return empty(304, &[API_VERSION]);
    }
    let Some((bytes, media_type)) = repo.and_then(|r| r.manifests.get(&digest)) else {
        return unknown();
    };
    // manifests.go GetManifest: split each Accept on commas, drop parameters, trim.
    let accepted: Vec<&str> = header_values(req, "accept")
        .flat_map(|v| v.split(','))
        .map(|m| m.split(';').next().unwrap_or("").trim())
        .collect();
    for (kind, message) in [
        (
            OCI_MANIFEST,
            "OCI manifest found, but accept header does not support OCI manifests",
        ),
        (
            OCI_INDEX,
            "OCI index found, but accept header does not support OCI indexes",
        ),
    ] {
        if media_type == kind && !accepted.contains(&kind) {
            return with_length(api_error(404, "MANIFEST_UNKNOWN", message, None), head);
        }
    }
    if state.fault == Fault::HugeManifest {
        let mut builder = Response::builder().status(200).header("content-type", media_type);
        for (name, value) in [API_VERSION, ("docker-content-digest", &digest), ("etag", &quoted)] {
            builder = builder.header(name, value);
        }
        let body = if head {
            Body::Full(None)
        } else {
            Body::Repeat {
                chunk: Bytes::from(vec![b' '; 64 * 1024]),
                remaining: 1 << 30,
                declared: false,
            }
        };
        return builder.body(body).expect("valid response parts");
    }
    let body = if state.fault == Fault::WrongManifestBytes {
        tamper_manifest(bytes)
    } else {
        bytes.clone()
    };
    with_length(
        server::raw(
            200,
            media_type,
            body,
            &[API_VERSION, ("docker-content-digest", &digest), ("etag", &quoted)],
        ),
        head,
    )
}

/// The manifest with one more annotation: valid JSON, the same blobs, another digest.
fn tamper_manifest(bytes: &Bytes) -> Bytes {
    let mut out = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(mut manifest)) => {
            let annotations = manifest
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(map) = annotations.as_object_mut() {
                map.insert(
                    "org.opencontainers.image.description".to_string(),
                    "tampered by testkit".into(),
                );
            }
            serde_json::to_vec(&manifest).expect("JSON serializes")
        }
        _ => bytes.to_vec(),
    };
    if out == bytes[..] {
        out.push(b' ');
    }
    Bytes::from(out)
}

fn empty(status: u16, headers: &[(&str, &str)]) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::Full(None)).expect("valid response parts")
}

fn blob(state: &State, req: &RecordedRequest, name: &str, digest: &str, head: bool) -> Response<Body> {
    if !valid_digest(digest) {
        // blob.go blobDispatcher: digest.Parse failed; the error marshals as {}.
        return with_length(
            api_error(
                400,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                Some("{}".into()),
            ),
            head,
        );
    }
    let repo = state.content.repositories.get(name);
    let Some(bytes) = repo.and_then(|r| r.blobs.get(digest)) else {
        return with_length(
            api_error(
                404,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
                Some(json_string(digest)),
            ),
            head,
        );
    };
    let etag = format!("\"{digest}\"");
    let common = [
        API_VERSION,
        ("etag", etag.as_str()),
        ("cache-control", "max-age=31536000"),
        ("docker-content-digest", digest),
    ];
    // http.ServeContent checkIfNoneMatch: a list of (possibly weak) tags, or `*`.
    let none_match = header_values(req, "if-none-match")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    if none_match {
        return empty(304, &common);
    }
    let size = bytes.len() as u64;
    let ranges = match header_values(req, "range").next() {
        None => Ok(Vec::new()),
        Some(header) => parse_ranges(header, size),
    };
    let ranges = match ranges {
        Ok(ranges) => ranges,
        Err(no_overlap) => {
            // http.ServeContent answers `Error(w, "invalid range[: failed to overlap]",
            // 416)`, but blobserver.go `ServeBlob` has already set `Content-Length` to
            // the blob's size, which Go 1.19 keeps: the text is sent if it fits in that
            // length (else refused whole), and the connection closes short of it.
            let mut builder = Response::builder()
                .status(416)
                .header("content-type", "text/plain; charset=utf-8")
                .header("x-content-type-options", "nosniff")
                .header("content-length", size);
            for (name, value) in common {
                builder = builder.header(name, value);
            }
            if no_overlap {
                builder = builder.header("content-range", format!("bytes */{size}"));
            }
            let body = if head {
                Body::Full(None)
            } else {
                let text = if no_overlap {
                    "invalid range: failed to overlap\n"
                } else {
                    "invalid range\n"
                };
                Body::Partial {
                    bytes: (text.len() as u64 <= size).then(|| Bytes::from_static(text.as_bytes())),
                    declared: size,
                    stall: false,
                    pause: Some(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
                        100,
                    )))),
                }
            };
            return builder.body(body).expect("valid response parts");
        }
    };
    // http.ServeContent: ranges adding up to more than the blob are ignored; one range
    // is a 206; several would be a multipart/byteranges 206, not modelled: the whole blob.
    let (status, range) = match ranges.as_slice() {
        [one] => (206, one.clone()),
        _ => (200, 0..size),
    };
    let content_range = format!("bytes {}-{}/{size}", range.start, i128::from(range.end) - 1);
    let body = bytes.slice(range.start as usize..range.end as usize);
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .header("accept-ranges", "bytes")
        .header("content-length", body.len());
    for (name, value) in common {
        builder = builder.header(name, value);
    }
    if status == 206 {
        builder = builder.header("content-range", content_range);
    }
    let faulty = state.fault.hits_blobs()
        && match &state.faulty_blobs {
            Some(set) => set.contains(digest),
            None => repo.is_some_and(|r| r.layers.contains(digest)),
        };
    let body = if head {
        Body::Full(None)
    } else if !faulty {
        Body::full(body)
    } else {
        match state.fault {
            Fault::WrongBlobBytes => {
                let mut wrong = body.to_vec();
                if let Some(last) = wrong.last_mut() {
                    *last = !*last;
                }
                Body::full(wrong)
            }
            fault => Body::Partial {
                declared: body.len() as u64,
                bytes: Some(body.slice(..body.len() / 2)),
                stall: fault == Fault::StallBlob,
                pause: Some(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
                    100,
                )))),
            },
        }
    };
    builder.body(body).expect("valid response parts")
}

/// Go 1.19 net/http `parseRange` (fs.go), for http.ServeContent: the ranges of a
/// `Range` header within `size`, or `Err(true)` when none overlaps the blob
/// (`errNoOverlap`), `Err(false)` when the header is invalid.
fn parse_ranges(header: &str, size: u64) -> Result<Vec<std::ops::Range<u64>>, bool> {
    let Some(spec) = header.strip_prefix("bytes=") else {
        return Err(false);
    };
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (start, end) = part.split_once('-').ok_or(false)?;
        let (start, end) = (start.trim(), end.trim());
        let number = |s: &str| -> Result<u64, bool> {
            // strconv.ParseInt: an optional sign, digits.
            let digits = s.strip_prefix('+').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(false);
            }
            digits.parse().map_err(|_| false)
        };
        if start.is_empty() {
            if end.is_empty() || end.starts_with('-') {
                return Err(false);
            }
            let n = number(end)?.min(size);
            ranges.push(size - n..size);
        } else {
            let start = number(start)?;
            if start >= size {
                no_overlap = true;
                continue;
            }
            let end = if end.is_empty() {
                size
            } else {
                let end = number(end)?;
                if start > end {
                    return Err(false);
                }
                end.min(size - 1) + 1
            };
            ranges.push(start..end);
        }
    }
    if no_overlap && ranges.is_empty() {
        return Err(true);
    }
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    if total > size {
        ranges.clear();
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let parse = |header: &str| {
            parse_ranges(header, 8).map(|v| v.into_iter().map(|r| (r.start, r.end)).collect::<Vec<_>>())
        };
        assert_eq!(parse("bytes=2-"), Ok(vec![(2, 8)]));
        assert_eq!(parse("bytes=0-3"), Ok(vec![(0, 4)]));
        assert_eq!(parse("bytes=5-100"), Ok(vec![(5, 8)]));
        assert_eq!(parse("bytes=-3"), Ok(vec![(5, 8)]));
        assert_eq!(parse("bytes=-0"), Ok(vec![(8, 8)]));
        assert_eq!(parse("bytes=-100"), Ok(vec![(0, 8)]));
        assert_eq!(parse("bytes=8-"), Err(true));
        assert_eq!(parse("bytes=0-1,100-200"), Ok(vec![(0, 2)]));
        assert_eq!(parse("bytes=0-1,3-4"), Ok(vec![(0, 2), (3, 5)]));
        assert_eq!(parse("bytes=0-7,0-7"), Ok(vec![]));
        assert_eq!(parse("bytes=5-2"), Err(false));
        assert_eq!(parse("items=0-1"), Err(false));
    }

    #[test]
    fn routes_follow_distribution() {
        assert!(matches!(route("/v2/"), Some(Route::Base)));
        assert!(matches!(
            route("/v2/acme/app/manifests/1.0"),
            Some(Route::Manifest {
                name: "acme/app",
                reference: "1.0"
            })
        ));
        assert!(matches!(
            route("/v2/acme/app/blobs/sha256:00"),
            Some(Route::Blob {
                name: "acme/app",
                digest: "sha256:00"
            })
        ));
        for none in [
            "/v2",
            "/v2/acme/app/blobs/nothex",
            "/v2/acme/App/manifests/1",
            "/v2/a/manifests/.x",
            "/x",
        ] {
            assert!(route(none).is_none(), "{none}");
        }
    }

    #[test]
    fn tampered_manifests_are_json_with_another_digest() {
        let artifact = Artifact::wasm(&b"\0asm\x0d\0\x01\0"[..]);
        let tampered = tamper_manifest(&artifact.manifest_bytes());
        assert_ne!(super::super::digest_of(&tampered), artifact.digest());
        let json: serde_json::Value = serde_json::from_slice(&tampered).unwrap();
        assert_eq!(json["layers"], artifact.manifest_json()["layers"]);
    }
}
