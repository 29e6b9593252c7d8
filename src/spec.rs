//! The generator manifest: parsing, defaults and validation.
//!
//! Every check runs before any network call, and every failure names the
//! field at fault, so a user can fix a manifest from the error alone.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::Deserialize;
use serde_json::error::Category;

use crate::de::{Field, Object};

use crate::sanitize::one_line;

/// The generator kind this crate implements.
pub const KIND: &str = "CloudsmithAccessToken";
/// The API group of ESO generators; any version of it is accepted.
pub const API_GROUP: &str = "generators.external-secrets.io";
/// The API version ESO serves this generator under.
pub const API_VERSION: &str = "generators.external-secrets.io/v1alpha1";
/// Where the exchange goes when the spec names no API.
pub const DEFAULT_API: &str = "https://api.cloudsmith.io";

/// A validated generator spec, ready to drive an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The Cloudsmith API to exchange with.
    pub api: ApiBase,
    /// The Cloudsmith organisation (workspace) slug.
    pub org_slug: String,
    /// The OIDC service slug configured in Cloudsmith.
    pub service_slug: String,
    /// The service account whose token is exchanged, audiences filled in.
    pub service_account: ServiceAccountRef,
}

/// `spec.serviceAccountRef`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// The service account's name.
    pub name: String,
    /// The namespace the spec names, if any.
    pub namespace: Option<String>,
    /// Never empty: defaults to the API's origin.
    pub audiences: Vec<String>,
}

/// URL scheme of the Cloudsmith API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// TLS, the default.
    Https,
    /// Plain HTTP: only when the spec writes `http://` explicitly.
    Http,
}

impl Scheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
}

/// A validated API base URL: scheme, authority and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBase {
    /// `https` or `http`.
    pub scheme: Scheme,
    /// Lower-cased host, with the port only when it is not the scheme's default.
    pub authority: String,
    /// Path prefix without a trailing slash (empty, or starting with `/`).
    pub path: String,
}

impl ApiBase {
    /// Parses `apiHost`/`apiUrl`: a bare host (`api.cloudsmith.io`,
    /// `host:8443`) means https; a URL keeps its scheme. `field` names the
    /// spec field in errors.
    pub fn parse(raw: &str, field: &str) -> Result<ApiBase, SpecError> {
        // Userinfo may hold a password: errors quote the value without it.
        let shown = without_userinfo(raw);
        let bad = |why: &str| SpecError::new(format!("{field} {}: {why}", quoted(&shown)));
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain whitespace"));
        }
        if raw.contains('?') {
            return Err(bad("must not have a query"));
        }
        if raw.contains('#') {
            return Err(bad("must not have a fragment"));
        }
        let (scheme, rest) = match raw.find("://") {
            Some(i) => {
                let scheme = match raw[..i].to_ascii_lowercase().as_str() {
                    "https" => Scheme::Https,
                    "http" => Scheme::Http,
                    _ => return Err(bad("scheme must be https (or http, written explicitly)")),
                };
                (scheme, &raw[i + 3..])
            }
            None => (Scheme::Https, raw),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("must not contain userinfo (credentials belong in no URL)"));
        }
        let authority = parse_authority(authority, scheme).map_err(|why| bad(&why))?;
        let path = path.trim_end_matches('/');
        if !path.bytes().all(is_path_byte) {
            return Err(bad("path has characters outside [A-Za-z0-9-._~/]"));
        }
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(bad("path must not contain . or .. segments"));
        }
        Ok(ApiBase {
            scheme,
            authority,
            path: path.to_string(),
        })
    }

    /// `scheme://authority`: the audience Cloudsmith expects by default.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority)
    }

    /// `scheme://authority/path`: the API as the exchange calls it.
    pub fn url(&self) -> String {
        format!("{}{}", self.origin(), self.path)
    }

    /// The authority with its port always present, as host allowlists write it.
    pub fn authority_with_port(&self) -> String {
        if has_port(&self.authority) {
            self.authority.clone()
        } else {
            format!("{}:{}", self.authority, self.scheme.default_port())
        }
    }
}

/// `raw` with anything between `://` (or the start) and an `@` in the
/// authority replaced by `[redacted]`.
fn without_userinfo(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |i| i + 3);
    let end = raw[start..]
        .find(['/', '?', '#'])
        .map_or(raw.len(), |i| start + i);
    match raw[start..end].rfind('@') {
        Some(at) => format!("{}[redacted]{}", &raw[..start], &raw[start + at..]),
        None => raw.to_string(),
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    }
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

fn parse_authority(authority: &str, scheme: Scheme) -> Result<String, String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or("IPv6 host is missing its closing ]")?;
        let host = &rest[..end];
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("IPv6 host is not valid".into());
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("unexpected characters after the IPv6 host".into()),
        };
        (format!("[{}]", host.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err("host is empty".into());
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
            return Err("host is not a valid DNS name or IP address".into());
        }
        (host.to_ascii_lowercase(), port)
    };
    match port {
        None => Ok(host),
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("port must be a number from 1 to 65535")?;
            if n == scheme.default_port() {
                Ok(host)
            } else {
                Ok(format!("{host}:{n}"))
            }
        }
    }
}

/// A manifest or spec that cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl SpecError {
    fn new(msg: String) -> Self {
        SpecError(msg)
    }
}

impl core::fmt::Display for SpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes a user-supplied value for an error message: one line, bounded.
fn quoted(raw: &str) -> String {
    format!("\"{}\"", one_line(raw, 100))
}

/// Every key the generator reads, at any level of the manifest: the
/// resource's header, the spec, ESO's ClusterGenerator wrapping
/// (`spec.kind`, `spec.generator.cloudsmithAccessTokenSpec`) and
/// `serviceAccountRef`. Each object is read as this one type and only the keys
/// that belong at its level are looked at, so a key out of place is ignored
/// like any unknown key. One type rather than one per level: each derived type
/// costs the component a kilobyte or two of its size budget.
///
/// Values are typed after parsing, so each error names its field. Nulls read
/// as unset, as in ESO's Go structs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    // The resource.
    api_version: Option<Field>,
    kind: Option<Field>,
    spec: Option<Object<Box<Fields>>>,
    // A ClusterGenerator's spec (with `kind`): ESO's union of generator specs.
    generator: Option<Object<Box<Fields>>>,
    cloudsmith_access_token_spec: Option<Object<Box<Fields>>>,
    // The CloudsmithAccessToken spec.
    api_url: Option<Field>,
    api_host: Option<Field>,
    org_slug: Option<Field>,
    service_slug: Option<Field>,
    service_account_ref: Option<Object<Box<Fields>>>,
    // Its serviceAccountRef.
    name: Option<Field>,
    namespace: Option<Field>,
    audiences: Option<Field>,
}

/// The kind ESO gives generators that serve every namespace.
pub const CLUSTER_GENERATOR_KIND: &str = "ClusterGenerator";

/// Where a manifest keeps its spec: the rule every reader of a manifest follows (this
/// crate's parser, and a host's own view of the same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// No `apiVersion`, `kind` or `spec`: the manifest is the spec itself.
    Bare,
    /// A resource: the spec is under `spec`.
    Resource,
    /// ESO's ClusterGenerator: the spec is under `spec.generator.cloudsmithAccessTokenSpec`.
    ClusterGenerator,
}

impl Form {
    /// The form of a manifest whose top level sets (not null) `apiVersion`, `kind` or
    /// `spec` (`resource`), with `kind`'s text.
    pub fn of(resource: bool, kind: Option<&str>) -> Form {
        match (resource, kind) {
            (false, _) => Form::Bare,
            (true, Some(CLUSTER_GENERATOR_KIND)) => Form::ClusterGenerator,
            (true, _) => Form::Resource,
        }
    }

    /// The keys from the manifest down to its spec object.
    pub fn path(self) -> &'static [&'static str] {
        match self {
            Form::Bare => &[],
            Form::Resource => &["spec"],
            Form::ClusterGenerator => &["spec", "generator", "cloudsmithAccessTokenSpec"],
        }
    }
}

/// The API a spec names: `apiUrl` (the field ESO's controller reads, so it wins), else
/// `apiHost`, else [`DEFAULT_API`]. An empty field is an unset one. `at` is where the
/// spec is (`spec`), for errors.
pub fn choose_api(api_url: Option<&str>, api_host: Option<&str>, at: &str) -> Result<ApiBase, SpecError> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.is_empty())
    }
    match (set(api_url), set(api_host)) {
        (Some(url), _) => ApiBase::parse(url, &format!("{at}.apiUrl")),
        (None, Some(host)) => ApiBase::parse(host, &format!("{at}.apiHost")),
        (None, None) => ApiBase::parse(DEFAULT_API, "default API"),
    }
}

/// The audiences a service account token is requested with: the spec's, else the
/// API's origin (Cloudsmith rejects the cluster's default audience, the API server, so
/// an empty list asks for the audience Cloudsmith does accept).
pub fn audiences_or_default(audiences: Vec<String>, api: &ApiBase) -> Vec<String> {
    if audiences.is_empty() {
        vec![api.origin()]
    } else {
        audiences
    }
}

/// Parses `manifest` (JSON: a `CloudsmithAccessToken` resource, a
/// `ClusterGenerator` wrapping one, or just the spec) into a validated [`Spec`].
pub fn parse_manifest(manifest: &str) -> Result<Spec, SpecError> {
    // serde_json bounds nesting (128 levels), so hostile input cannot exhaust
    // the stack. Bytes, not `str`: every document the component reads then
    // goes through one instance of serde_json's parser, not two.
    let top = match serde_json::from_slice::<Object<Box<Fields>>>(manifest.as_bytes()) {
        Ok(Object::Is(top)) => *top,
        Ok(Object::Not) => return Err(SpecError::new("manifest must be a JSON object".into())),
        Err(e) => return Err(manifest_error(&e)),
    };
    let is_resource = top.api_version.is_some() || top.kind.is_some() || top.spec.is_some();
    if !is_resource {
        return parse_spec(top, "spec");
    }
    check_api_version(top.api_version)?;
    let kind = string(top.kind, "kind")?;
    let spec = match top.spec {
        Some(Object::Is(spec)) => *spec,
        Some(Object::Not) => return Err(SpecError::new("spec must be an object".into())),
        None => return Err(SpecError::new("spec is required".into())),
    };
    match (Form::of(true, kind.as_deref()), kind.as_deref()) {
        (Form::ClusterGenerator, _) => parse_cluster_generator(spec),
        (_, None | Some(KIND)) => parse_spec(spec, "spec"),
        (_, Some(other)) => Err(SpecError::new(format!(
            "kind {} is not {KIND} or {CLUSTER_GENERATOR_KIND}",
            quoted(other)
        ))),
    }
}

/// A serde_json error as one bounded line. Type errors cannot happen (every
/// value is typed after parsing): what is left is bad syntax, or a key given
/// twice, which ESO would silently resolve to the last one.
fn manifest_error(e: &serde_json::Error) -> SpecError {
    let why = one_line(&e.to_string(), 200);
    match e.classify() {
        Category::Data => SpecError::new(format!("manifest is ambiguous: {why}")),
        _ => SpecError::new(format!("manifest is not valid JSON: {why}")),
    }
}

/// Unwraps `spec.generator.cloudsmithAccessTokenSpec` from a ClusterGenerator
/// whose `spec.kind` is ours.
fn parse_cluster_generator(spec: Fields) -> Result<Spec, SpecError> {
    const FIELD: &str = "spec.generator.cloudsmithAccessTokenSpec";
    match string(spec.kind, "spec.kind")?.as_deref() {
        Some(KIND) => {}
        Some(other) => {
            return Err(SpecError::new(format!(
                "spec.kind {} is not {KIND}",
                quoted(other)
            )))
        }
        None => {
            return Err(SpecError::new(format!(
                "spec.kind is required (it must be {KIND})"
            )))
        }
    }
    let generator = match spec.generator {
        Some(Object::Is(generator)) => generator,
        Some(Object::Not) => return Err(SpecError::new("spec.generator must be an object".into())),
        None => return Err(SpecError::new(format!("{FIELD} is required"))),
    };
    match generator.cloudsmith_access_token_spec {
        Some(Object::Is(inner)) => parse_spec(*inner, FIELD),
        Some(Object::Not) => Err(SpecError::new(format!("{FIELD} must be an object"))),
        None => Err(SpecError::new(format!("{FIELD} is required"))),
    }
}

fn check_api_version(version: Option<Field>) -> Result<(), SpecError> {
    match string(version, "apiVersion")? {
        None => Ok(()),
        Some(v) if v.split_once('/').map(|(g, _)| g) == Some(API_GROUP) => Ok(()),
        Some(other) => Err(SpecError::new(format!(
            "apiVersion {} is not in the {API_GROUP} group",
            quoted(&other)
        ))),
    }
}

/// A string field that may be absent, null or empty (all meaning "unset"):
/// ESO's Go structs read `""` and a missing field alike.
fn string(value: Option<Field>, field: &str) -> Result<Option<String>, SpecError> {
    match value {
        None => Ok(None),
        Some(Field::Str(s)) if s.is_empty() => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s)),
        Some(_) => Err(SpecError::new(format!("{field} must be a string"))),
    }
}

/// Validates the spec found at `field` in the manifest.
fn parse_spec(raw: Fields, field: &str) -> Result<Spec, SpecError> {
    let at = |name: &str| format!("{field}.{name}");
    // apiUrl is the field ESO's controller reads, so it wins: a manifest then
    // behaves the same here as in ESO.
    let api_url = string(raw.api_url, &at("apiUrl"))?;
    let api_host = string(raw.api_host, &at("apiHost"))?;
    let api = choose_api(api_url.as_deref(), api_host.as_deref(), field)?;
    let org_slug = slug(raw.org_slug, &at("orgSlug"))?;
    let service_slug = slug(raw.service_slug, &at("serviceSlug"))?;
    let service_account = match raw.service_account_ref {
        Some(Object::Is(r)) => service_account_ref(*r, &api, &at("serviceAccountRef"))?,
        Some(Object::Not) => {
            return Err(SpecError::new(format!(
                "{} must be an object",
                at("serviceAccountRef")
            )))
        }
        None => return Err(SpecError::new(format!("{} is required", at("serviceAccountRef")))),
    };
    Ok(Spec {
        api,
        org_slug,
        service_slug,
        service_account,
    })
}

fn service_account_ref(r: Fields, api: &ApiBase, field: &str) -> Result<ServiceAccountRef, SpecError> {
    let name_field = format!("{field}.name");
    let name =
        string(r.name, &name_field)?.ok_or_else(|| SpecError::new(format!("{name_field} is required")))?;
    validate_dns_subdomain(&name, &name_field)?;
    let namespace_field = format!("{field}.namespace");
    let namespace = string(r.namespace, &namespace_field)?;
    if let Some(ns) = &namespace {
        validate_namespace(ns, &namespace_field)?;
    }
    let audiences = audiences_or_default(audiences(r.audiences, &format!("{field}.audiences"))?, api);
    Ok(ServiceAccountRef {
        name,
        namespace,
        audiences,
    })
}

fn audiences(value: Option<Field>, field: &str) -> Result<Vec<String>, SpecError> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Field::List(items)) => items,
        Some(_) => return Err(SpecError::new(format!("{field} must be a list of strings"))),
    };
    let mut audiences = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Field::Str(a) if !a.trim().is_empty() && !a.chars().any(char::is_control) => audiences.push(a),
            Field::Str(_) => {
                return Err(SpecError::new(format!(
                    "{field}[{i}] must be a non-empty single-line string"
                )))
            }
            _ => return Err(SpecError::new(format!("{field}[{i}] must be a string"))),
        }
    }
    Ok(audiences)
}

/// A required Cloudsmith slug. The pattern is Cloudsmith's own, and it also
/// keeps `/`, `..`, `?` and `#` out of the request path.
fn slug(value: Option<Field>, field: &str) -> Result<String, SpecError> {
    let value = string(value, field)?.ok_or_else(|| SpecError::new(format!("{field} is required")))?;
    if value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SpecError::new(format!(
            "{field} {} is invalid: must match ^[-a-zA-Z0-9_]+$ (at most 128 characters)",
            quoted(&value)
        )));
    }
    Ok(value)
}

/// Checks a Kubernetes namespace name (an RFC 1123 label). `field` names the
/// input in errors.
pub fn validate_namespace(ns: &str, field: &str) -> Result<(), SpecError> {
    if ns.is_empty() {
        return Err(SpecError::new(format!("{field} is empty")));
    }
    if !is_dns_label(ns) {
        return Err(SpecError::new(format!(
            "{field} {} is not a valid namespace name (lower-case letters, digits and '-', at most 63)",
            quoted(ns)
        )));
    }
    Ok(())
}

/// Service account names are RFC 1123 subdomains; checking here keeps path
/// characters out of the TokenRequest URL a host builds from them.
fn validate_dns_subdomain(name: &str, field: &str) -> Result<(), SpecError> {
    if name.len() > 253 || !name.split('.').all(is_dns_label) {
        return Err(SpecError::new(format!(
            "{field} {} is not a valid service account name (lower-case letters, digits, '-' and '.')",
            quoted(name)
        )));
    }
    Ok(())
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

#[cfg(test)]
mod tests;
