//! Spec parsing, table-driven: every accepted shape with its exact result,
//! every rejection with its exact message (which must name the field).

use super::*;
use alloc::vec;

/// A JSON value for building test manifests. The tests keep their own writer
/// so that a fault in the crate's JSON code cannot hide itself.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Num(i64),
    Str(String),
    Arr(Vec<Value>),
    Obj(Vec<(String, Value)>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Str(s.clone())
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Num(n)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl core::fmt::Display for Value {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            Value::Arr(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Obj(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{v}", Value::Str(k.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}

impl Value {
    fn member_mut(&mut self, key: &str) -> &mut Value {
        let Value::Obj(members) = self else {
            panic!("not an object: {self}")
        };
        if let Some(i) = members.iter().position(|(k, _)| k == key) {
            return &mut members[i].1;
        }
        members.push((key.to_string(), Value::Null));
        &mut members.last_mut().unwrap().1
    }
}

impl core::ops::Index<&str> for Value {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        match self {
            Value::Obj(members) => &members.iter().find(|(k, _)| k == key).expect("member exists").1,
            _ => panic!("not an object: {self}"),
        }
    }
}

impl core::ops::IndexMut<&str> for Value {
    fn index_mut(&mut self, key: &str) -> &mut Value {
        self.member_mut(key)
    }
}

/// `json!`-like literals: `json!({"a": [1, null]})`. Object values must be
/// single tokens: parenthesise expressions.
macro_rules! json {
    (null) => { Value::Null };
    ([ $($e:tt),* $(,)? ]) => { Value::Arr(vec![$(json!($e)),*]) };
    ({ $($k:literal : $v:tt),* $(,)? }) => { Value::Obj(vec![$(($k.to_string(), json!($v))),*]) };
    ($e:expr) => { Value::from($e) };
}

/// The smallest valid spec; each case changes one thing in it.
fn minimal_spec() -> Value {
    json!({
        "orgSlug": "my-org",
        "serviceSlug": "my-svc",
        "serviceAccountRef": { "name": "default" },
    })
}

/// `minimal_spec` with `path` (dot-separated keys) set to `value`.
fn spec_with(path: &str, value: Value) -> Value {
    let mut spec = minimal_spec();
    set(&mut spec, path, Some(value));
    spec
}

/// `minimal_spec` with `path` removed.
fn spec_without(path: &str) -> Value {
    let mut spec = minimal_spec();
    set(&mut spec, path, None);
    spec
}

fn set(root: &mut Value, path: &str, value: Option<Value>) {
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (p.split('.').collect::<Vec<_>>(), l),
        None => (vec![], path),
    };
    let mut node = root;
    for key in parents {
        node = node.member_mut(key);
    }
    match value {
        Some(v) => *node.member_mut(last) = v,
        None => {
            let Value::Obj(members) = node else {
                panic!("not an object")
            };
            members.retain(|(k, _)| k != last);
        }
    }
}

fn parse(v: &Value) -> Result<Spec, SpecError> {
    parse_manifest(&v.to_string())
}

fn parse_err(v: &Value) -> String {
    match parse(v) {
        Ok(spec) => panic!("expected an error for {v}, got {spec:?}"),
        Err(e) => {
            // Display and the payload are the same text: hosts show either.
            assert_eq!(e.to_string(), e.0);
            e.0
        }
    }
}

fn wrap(spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": { "name": "x", "namespace": "default" },
        "spec": (spec),
    })
}

fn api(scheme: Scheme, authority: &str, path: &str) -> ApiBase {
    ApiBase {
        scheme,
        authority: authority.to_string(),
        path: path.to_string(),
    }
}

fn expected_minimal() -> Spec {
    Spec {
        api: api(Scheme::Https, "api.cloudsmith.io", ""),
        org_slug: "my-org".into(),
        service_slug: "my-svc".into(),
        service_account: ServiceAccountRef {
            name: "default".into(),
            namespace: None,
            audiences: vec!["https://api.cloudsmith.io".into()],
        },
    }
}

const SLUG_RULE: &str = "is invalid: must match ^[-a-zA-Z0-9_]+$ (at most 128 characters)";
const SA_NAME_RULE: &str = "is not a valid service account name (lower-case letters, digits, '-' and '.')";
const NS_RULE: &str = "is not a valid namespace name (lower-case letters, digits and '-', at most 63)";

// ---------------------------------------------------------------- manifest shape

#[test]
fn bare_spec_and_whole_manifest_give_the_same_spec() {
    assert_eq!(parse(&minimal_spec()), Ok(expected_minimal()));
    assert_eq!(parse(&wrap(minimal_spec())), Ok(expected_minimal()));
}

#[test]
fn seed_documentation_example_manifest_parses() {
    // The YAML example from ESO's CloudsmithAccessToken page, as JSON.
    let manifest = r#"{
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "CloudsmithAccessToken",
        "metadata": { "name": "my-cloudsmith-token", "namespace": "default" },
        "spec": {
            "apiHost": "api.cloudsmith.io",
            "orgSlug": "my-organization",
            "serviceSlug": "my-oidc-service",
            "serviceAccountRef": {
                "name": "default",
                "namespace": "default",
                "audiences": ["https://api.cloudsmith.io"]
            }
        }
    }"#;
    assert_eq!(
        parse_manifest(manifest),
        Ok(Spec {
            api: api(Scheme::Https, "api.cloudsmith.io", ""),
            org_slug: "my-organization".into(),
            service_slug: "my-oidc-service".into(),
            service_account: ServiceAccountRef {
                name: "default".into(),
                namespace: Some("default".into()),
                audiences: vec!["https://api.cloudsmith.io".into()],
            },
        })
    );
}

/// ESO's ClusterGenerator form: the same spec under
/// `spec.generator.cloudsmithAccessTokenSpec`, with `spec.kind` naming it.
fn cluster(inner: Value) -> Value {
    json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "ClusterGenerator",
        "metadata": { "name": "cloudsmith" },
        "spec": {
            "kind": "CloudsmithAccessToken",
            "generator": { "cloudsmithAccessTokenSpec": (inner) }
        }
    })
}

#[test]
fn cluster_generator_gives_the_same_spec() {
    assert_eq!(parse(&cluster(minimal_spec())), Ok(expected_minimal()));
    // Other generators' specs beside ours are ignored, as ESO ignores them.
    let mut m = cluster(minimal_spec());
    m["spec"]["generator"]["passwordSpec"] = json!({ "length": 12 });
    assert_eq!(parse(&m), Ok(expected_minimal()));
}

#[test]
fn cluster_generator_rejections_name_the_field() {
    const INNER: &str = "spec.generator.cloudsmithAccessTokenSpec";
    let mut other_kind = cluster(minimal_spec());
    other_kind["spec"]["kind"] = json!("Password");
    let mut no_kind = cluster(minimal_spec());
    no_kind["spec"]["kind"] = Value::Null;
    let mut kind_number = cluster(minimal_spec());
    kind_number["spec"]["kind"] = json!(3);
    let mut no_inner = cluster(minimal_spec());
    no_inner["spec"]["generator"] = json!({ "passwordSpec": {} });
    let mut inner_list = cluster(minimal_spec());
    inner_list["spec"]["generator"]["cloudsmithAccessTokenSpec"] = json!([]);
    let mut generator_string = cluster(minimal_spec());
    generator_string["spec"]["generator"] = json!("x");
    let cases = [
        (
            other_kind,
            "spec.kind \"Password\" is not CloudsmithAccessToken".to_string(),
        ),
        (
            no_kind,
            "spec.kind is required (it must be CloudsmithAccessToken)".to_string(),
        ),
        (kind_number, "spec.kind must be a string".to_string()),
        (no_inner, format!("{INNER} is required")),
        (inner_list, format!("{INNER} must be an object")),
        (generator_string, "spec.generator must be an object".to_string()),
        (
            cluster(spec_without("orgSlug")),
            format!("{INNER}.orgSlug is required"),
        ),
        (
            cluster(spec_with("serviceAccountRef.audiences", json!([1]))),
            format!("{INNER}.serviceAccountRef.audiences[0] must be a string"),
        ),
        (
            cluster(spec_with("apiHost", json!("a b"))),
            format!("{INNER}.apiHost \"a b\": must not contain whitespace"),
        ),
    ];
    for (manifest, want) in cases {
        assert_eq!(parse_err(&manifest), want, "{manifest}");
    }
}

#[test]
fn a_key_given_twice_is_refused_not_guessed() {
    // Go's encoding/json keeps the last; a manifest that says two things is
    // more likely a merge gone wrong than a choice.
    let err =
        parse_manifest(r#"{"orgSlug":"a","orgSlug":"b","serviceSlug":"s","serviceAccountRef":{"name":"d"}}"#)
            .unwrap_err()
            .0;
    assert!(
        err.starts_with("manifest is ambiguous: duplicate field `orgSlug`"),
        "{err}"
    );
}

#[test]
fn crd_style_manifest_with_api_url_parses() {
    let mut spec = spec_with("apiUrl", json!("https://api.cloudsmith.io/v1/"));
    set(&mut spec, "serviceAccountRef.namespace", Some(json!("team-a")));
    let got = parse(&wrap(spec)).unwrap();
    assert_eq!(got.api, api(Scheme::Https, "api.cloudsmith.io", "/v1"));
    assert_eq!(got.service_account.namespace.as_deref(), Some("team-a"));
}

#[test]
fn any_version_of_the_generators_group_is_accepted() {
    for version in [
        "generators.external-secrets.io/v1alpha1",
        "generators.external-secrets.io/v1",
    ] {
        let mut m = wrap(minimal_spec());
        m["apiVersion"] = json!(version);
        assert_eq!(parse(&m), Ok(expected_minimal()), "{version}");
    }
}

#[test]
fn manifest_with_only_spec_or_only_kind_is_treated_as_a_resource() {
    // Any one header key makes it a resource, so its spec is the one read.
    assert_eq!(
        parse(&json!({ "spec": (minimal_spec()) })),
        Ok(expected_minimal())
    );
    let mut kind_only = minimal_spec();
    kind_only["kind"] = json!(KIND);
    assert_eq!(parse_err(&kind_only), "spec is required");
}

#[test]
fn manifest_shape_rejections() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("array", json!([]), "manifest must be a JSON object"),
        ("string", json!("spec"), "manifest must be a JSON object"),
        ("null", Value::Null, "manifest must be a JSON object"),
        (
            "wrong kind",
            json!({ "kind": "Password", "spec": (minimal_spec()) }),
            "kind \"Password\" is not CloudsmithAccessToken or ClusterGenerator",
        ),
        (
            "kind not a string",
            json!({ "kind": 5, "spec": (minimal_spec()) }),
            "kind must be a string",
        ),
        (
            "apiVersion of another group",
            json!({ "apiVersion": "external-secrets.io/v1", "kind": KIND, "spec": (minimal_spec()) }),
            "apiVersion \"external-secrets.io/v1\" is not in the generators.external-secrets.io group",
        ),
        (
            "apiVersion without a version",
            json!({ "apiVersion": "generators.external-secrets.io", "spec": (minimal_spec()) }),
            "apiVersion \"generators.external-secrets.io\" is not in the generators.external-secrets.io group",
        ),
        (
            "apiVersion not a string",
            json!({ "apiVersion": ["v1"], "spec": (minimal_spec()) }),
            "apiVersion must be a string",
        ),
        (
            "spec missing",
            json!({ "apiVersion": API_VERSION, "kind": KIND }),
            "spec is required",
        ),
        (
            "spec a string",
            json!({ "kind": KIND, "spec": "orgSlug: x" }),
            "spec must be an object",
        ),
        (
            "spec a list",
            json!({ "kind": KIND, "spec": [] }),
            "spec must be an object",
        ),
        (
            // null is unset, here as for every field.
            "spec null",
            json!({ "kind": KIND, "spec": null }),
            "spec is required",
        ),
    ];
    for (name, manifest, want) in cases {
        assert_eq!(parse_err(&manifest), want, "{name}");
    }
}

#[test]
fn invalid_json_is_reported_as_such() {
    for text in [
        "",
        "{",
        "kind: CloudsmithAccessToken",
        "{\"orgSlug\": }",
        "\u{feff}{}",
    ] {
        let err = parse_manifest(text).unwrap_err().0;
        assert!(err.starts_with("manifest is not valid JSON: "), "{text:?}: {err}");
        assert!(!err.contains('\n'), "{text:?}: {err}");
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let mut spec = minimal_spec();
    spec["futureField"] = json!({ "nested": [1, 2] });
    spec["serviceAccountRef"]["expirationSeconds"] = json!(3600);
    let mut manifest = wrap(spec);
    manifest["status"] = json!({ "observed": true });
    manifest["metadata"]["labels"] = json!({ "a": "b" });
    assert_eq!(parse(&manifest), Ok(expected_minimal()));
}

#[test]
fn null_and_empty_optional_fields_are_unset() {
    for (path, value) in [
        ("apiUrl", Value::Null),
        ("apiUrl", json!("")),
        ("apiHost", Value::Null),
        ("apiHost", json!("")),
        ("serviceAccountRef.namespace", Value::Null),
        ("serviceAccountRef.namespace", json!("")),
        ("serviceAccountRef.audiences", Value::Null),
        ("serviceAccountRef.audiences", json!([])),
    ] {
        assert_eq!(
            parse(&spec_with(path, value.clone())),
            Ok(expected_minimal()),
            "{path} = {value}"
        );
    }
}

// ---------------------------------------------------------------- apiHost / apiUrl

#[test]
fn api_host_and_url_forms_normalise() {
    use Scheme::{Http, Https};
    // (input, scheme, authority, path, origin, authority_with_port)
    let cases = [
        (
            "api.cloudsmith.io",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "API.Cloudsmith.IO",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "api.cloudsmith.io:8443",
            Https,
            "api.cloudsmith.io:8443",
            "",
            "https://api.cloudsmith.io:8443",
            "api.cloudsmith.io:8443",
        ),
        (
            "api.cloudsmith.io:443",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "api.cloudsmith.io/",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "https://api.cloudsmith.io",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "HTTPS://api.cloudsmith.io:443/",
            Https,
            "api.cloudsmith.io",
            "",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "https://api.cloudsmith.io/v1/",
            Https,
            "api.cloudsmith.io",
            "/v1",
            "https://api.cloudsmith.io",
            "api.cloudsmith.io:443",
        ),
        (
            "https://proxy.example.com/cloudsmith/api//",
            Https,
            "proxy.example.com",
            "/cloudsmith/api",
            "https://proxy.example.com",
            "proxy.example.com:443",
        ),
        (
            "https://proxy.example.com/a-b_c.d~e/v2",
            Https,
            "proxy.example.com",
            "/a-b_c.d~e/v2",
            "https://proxy.example.com",
            "proxy.example.com:443",
        ),
        (
            "http://localhost:8080",
            Http,
            "localhost:8080",
            "",
            "http://localhost:8080",
            "localhost:8080",
        ),
        (
            "http://localhost:80/",
            Http,
            "localhost",
            "",
            "http://localhost",
            "localhost:80",
        ),
        // 443 is only the default for https: on http it is kept.
        (
            "http://localhost:443",
            Http,
            "localhost:443",
            "",
            "http://localhost:443",
            "localhost:443",
        ),
        (
            "https://127.0.0.1:9443",
            Https,
            "127.0.0.1:9443",
            "",
            "https://127.0.0.1:9443",
            "127.0.0.1:9443",
        ),
        (
            "[::1]:8443",
            Https,
            "[::1]:8443",
            "",
            "https://[::1]:8443",
            "[::1]:8443",
        ),
        ("https://[::1]", Https, "[::1]", "", "https://[::1]", "[::1]:443"),
        (
            "https://[FE80::1]:443/api",
            Https,
            "[fe80::1]",
            "/api",
            "https://[fe80::1]",
            "[fe80::1]:443",
        ),
        (
            "http://[::ffff:127.0.0.1]:80",
            Http,
            "[::ffff:127.0.0.1]",
            "",
            "http://[::ffff:127.0.0.1]",
            "[::ffff:127.0.0.1]:80",
        ),
    ];
    for (raw, scheme, authority, path, origin, with_port) in cases {
        for field in ["apiHost", "apiUrl"] {
            let got = parse(&spec_with(field, json!(raw)))
                .unwrap_or_else(|e| panic!("{field} {raw}: {e}"))
                .api;
            assert_eq!(got, api(scheme, authority, path), "{field} {raw}");
            assert_eq!(got.origin(), origin, "{raw}");
            assert_eq!(got.authority_with_port(), with_port, "{raw}");
        }
    }
}

#[test]
fn default_api_is_cloudsmith() {
    assert_eq!(DEFAULT_API, "https://api.cloudsmith.io");
    let got = parse(&minimal_spec()).unwrap();
    assert_eq!(got.api, api(Scheme::Https, "api.cloudsmith.io", ""));
    assert_eq!(ApiBase::parse(DEFAULT_API, "x"), Ok(got.api));
}

#[test]
fn api_url_wins_over_api_host() {
    let mut spec = spec_with("apiUrl", json!("https://url.example.com"));
    spec["apiHost"] = json!("host.example.com");
    assert_eq!(parse(&spec).unwrap().api.authority, "url.example.com");

    // The loser is not even validated as a URL...
    spec["apiHost"] = json!("ftp://bad host");
    assert_eq!(parse(&spec).unwrap().api.authority, "url.example.com");

    // ...but an invalid winner is reported under its own name.
    let mut spec = spec_with("apiUrl", json!("ftp://url.example.com"));
    spec["apiHost"] = json!("host.example.com");
    assert_eq!(
        parse_err(&spec),
        "spec.apiUrl \"ftp://url.example.com\": scheme must be https (or http, written explicitly)"
    );
}

#[test]
fn api_fields_must_be_strings() {
    for (field, value) in [
        ("apiUrl", json!(443)),
        ("apiHost", json!(true)),
        ("apiHost", json!(["api.cloudsmith.io"])),
        ("apiUrl", json!({ "host": "api.cloudsmith.io" })),
    ] {
        assert_eq!(
            parse_err(&spec_with(field, value)),
            format!("spec.{field} must be a string")
        );
    }
}

#[test]
fn api_host_rejections_name_the_field_and_the_value() {
    const SCHEME: &str = "scheme must be https (or http, written explicitly)";
    const USERINFO: &str = "must not contain userinfo (credentials belong in no URL)";
    const QUERY: &str = "must not have a query";
    const FRAGMENT: &str = "must not have a fragment";
    const SPACE: &str = "must not contain whitespace";
    const EMPTY: &str = "host is empty";
    const PORT: &str = "port must be a number from 1 to 65535";
    const PATH: &str = "path has characters outside [A-Za-z0-9-._~/]";
    const DOTS: &str = "path must not contain . or .. segments";
    const HOST: &str = "host is not a valid DNS name or IP address";
    let long_label = format!("{}.example.com", "a".repeat(64));
    let long_host = ["abcdefghi"; 26].join(".");
    assert!(long_host.len() > 253);
    // (raw value, how the message quotes it, why)
    let cases: Vec<(String, String, &str)> = [
        ("ftp://api.cloudsmith.io", SCHEME),
        ("file:///etc/passwd", SCHEME),
        ("://api.cloudsmith.io", SCHEME),
        ("https://api.cloudsmith.io/?x=1", QUERY),
        ("api.cloudsmith.io?", QUERY),
        ("https://api.cloudsmith.io/#top", FRAGMENT),
        ("api.cloudsmith .io", SPACE),
        ("https://", EMPTY),
        ("https:///v1", EMPTY),
        (":8443", EMPTY),
        ("api.cloudsmith.io:0", PORT),
        ("api.cloudsmith.io:65536", PORT),
        ("api.cloudsmith.io:abc", PORT),
        ("api.cloudsmith.io:", PORT),
        ("api.cloudsmith.io:+443", PORT),
        ("api.cloudsmith.io:80:80", PORT),
        ("[::1]:0", PORT),
        ("https://api.cloudsmith.io/v1%2F", PATH),
        ("https://api.cloudsmith.io/a@b", PATH),
        ("https://api.cloudsmith.io/v1;x", PATH),
        ("https://api.cloudsmith.io/é", PATH),
        ("https://api.cloudsmith.io/v1/../admin", DOTS),
        ("https://api.cloudsmith.io/./v1", DOTS),
        ("https://api.cloudsmith.io/..", DOTS),
        ("https://api.cloudsmith.io/v1/./", DOTS),
        ("api_cloudsmith.io", HOST),
        ("-api.cloudsmith.io", HOST),
        ("api-.cloudsmith.io", HOST),
        ("api..cloudsmith.io", HOST),
        (".", HOST),
        ("[::1", "IPv6 host is missing its closing ]"),
        ("[]", "IPv6 host is not valid"),
        ("[zz::1]", "IPv6 host is not valid"),
        ("[fe80::1%25eth0]", "IPv6 host is not valid"),
        ("[::1]x", "unexpected characters after the IPv6 host"),
    ]
    .into_iter()
    .map(|(raw, why)| (raw.to_string(), raw.to_string(), why))
    .chain([
        // Userinfo may be a password: the message quotes the value without it.
        (
            "user:pass@api.cloudsmith.io".into(),
            "[redacted]@api.cloudsmith.io".into(),
            USERINFO,
        ),
        (
            "https://user@api.cloudsmith.io".into(),
            "https://[redacted]@api.cloudsmith.io".into(),
            USERINFO,
        ),
        (
            "https://api.cloudsmith.io@evil.example.com/".into(),
            "https://[redacted]@evil.example.com/".into(),
            USERINFO,
        ),
        (long_label.clone(), long_label, HOST),
        (long_host.clone(), format!("{}…", &long_host[..100]), HOST),
        // Quoted values are folded onto one line and trimmed.
        (" api.cloudsmith.io".into(), "api.cloudsmith.io".into(), SPACE),
        ("api.cloudsmith.io\t".into(), "api.cloudsmith.io".into(), SPACE),
        ("api\n.cloudsmith.io".into(), "api .cloudsmith.io".into(), SPACE),
        ("api\u{7f}.io".into(), "api .io".into(), SPACE),
    ])
    .collect();
    for (raw, shown, why) in cases {
        for field in ["apiHost", "apiUrl"] {
            assert_eq!(
                parse_err(&spec_with(field, json!(&raw))),
                format!("spec.{field} \"{shown}\": {why}"),
                "{field} = {raw:?}"
            );
        }
    }
}

#[test]
fn host_length_limits_are_inclusive() {
    let label63 = "a".repeat(63);
    assert!(ApiBase::parse(&format!("{label63}.io"), "f").is_ok());
    let host253 = format!("{}.{}", ["abcdefghi"; 24].join("."), "a".repeat(13));
    assert_eq!(host253.len(), 253);
    assert!(ApiBase::parse(&host253, "f").is_ok());
    assert!(ApiBase::parse("api.cloudsmith.io:65535", "f").is_ok());
    assert!(ApiBase::parse("api.cloudsmith.io:1", "f").is_ok());
}

// ---------------------------------------------------------------- slugs

#[test]
fn slugs_accept_cloudsmith_slug_characters() {
    for slug in ["a", "my-org", "My_Org-1", "0", "-", "_"] {
        for field in ["orgSlug", "serviceSlug"] {
            assert!(parse(&spec_with(field, json!(slug))).is_ok(), "{field} {slug}");
        }
    }
    let longest = "a".repeat(128);
    let spec = parse(&spec_with("orgSlug", json!(&longest))).unwrap();
    assert_eq!(spec.org_slug, longest);
}

#[test]
fn slug_rejections_name_the_field() {
    for field in ["orgSlug", "serviceSlug"] {
        let required = format!("spec.{field} is required");
        assert_eq!(parse_err(&spec_without(field)), required);
        assert_eq!(parse_err(&spec_with(field, json!(""))), required);
        assert_eq!(parse_err(&spec_with(field, Value::Null)), required);
        for non_string in [json!(42), json!(["a"]), json!({}), json!(false)] {
            assert_eq!(
                parse_err(&spec_with(field, non_string)),
                format!("spec.{field} must be a string")
            );
        }
        let too_long = "a".repeat(129);
        let shown_long = format!("{}…", "a".repeat(100));
        // Each of these would change the request path if pasted into the URL.
        for (raw, shown) in [
            ("a/b", "a/b"),
            ("..", ".."),
            ("a?b", "a?b"),
            ("a#b", "a#b"),
            ("a b", "a b"),
            ("a.b", "a.b"),
            ("a%2Fb", "a%2Fb"),
            ("é", "é"),
            ("org\n", "org"),
            (too_long.as_str(), shown_long.as_str()),
        ] {
            assert_eq!(
                parse_err(&spec_with(field, json!(raw))),
                format!("spec.{field} \"{shown}\" {SLUG_RULE}"),
                "{field} = {raw:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- serviceAccountRef

#[test]
fn service_account_ref_must_be_an_object() {
    assert_eq!(
        parse_err(&spec_without("serviceAccountRef")),
        "spec.serviceAccountRef is required"
    );
    assert_eq!(
        parse_err(&spec_with("serviceAccountRef", Value::Null)),
        "spec.serviceAccountRef is required"
    );
    // An array is refused even when its items could fill the fields by
    // position, as a plain serde derive would do.
    for value in [json!("default"), json!([]), json!(["default"]), json!(1)] {
        assert_eq!(
            parse_err(&spec_with("serviceAccountRef", value)),
            "spec.serviceAccountRef must be an object"
        );
    }
}

#[test]
fn service_account_name_rules() {
    const FIELD: &str = "spec.serviceAccountRef.name";
    assert_eq!(
        parse_err(&spec_without("serviceAccountRef.name")),
        format!("{FIELD} is required")
    );
    assert_eq!(
        parse_err(&spec_with("serviceAccountRef.name", json!(""))),
        format!("{FIELD} is required")
    );
    assert_eq!(
        parse_err(&spec_with("serviceAccountRef.name", json!(7))),
        format!("{FIELD} must be a string")
    );
    let too_long = vec!["a".repeat(63); 3].join(".") + "." + &"a".repeat(62);
    assert_eq!(too_long.len(), 254);
    let shown_long = format!("{}…", &too_long[..100]);
    for (raw, shown) in [
        ("Default", "Default"),
        ("a/b", "a/b"),
        ("../x", "../x"),
        ("a..b", "a..b"),
        (".a", ".a"),
        ("-a", "-a"),
        ("a-", "a-"),
        ("a_b", "a_b"),
        ("a b", "a b"),
        (too_long.as_str(), shown_long.as_str()),
    ] {
        assert_eq!(
            parse_err(&spec_with("serviceAccountRef.name", json!(raw))),
            format!("{FIELD} \"{shown}\" {SA_NAME_RULE}"),
            "{raw:?}"
        );
    }
    let longest = vec!["a".repeat(63); 3].join(".") + "." + &"a".repeat(61);
    assert_eq!(longest.len(), 253);
    for ok in ["default", "my.sa-1", "0", longest.as_str()] {
        let spec = parse(&spec_with("serviceAccountRef.name", json!(ok))).unwrap();
        assert_eq!(spec.service_account.name, ok);
    }
}

#[test]
fn service_account_namespace_rules() {
    const FIELD: &str = "spec.serviceAccountRef.namespace";
    assert_eq!(
        parse_err(&spec_with("serviceAccountRef.namespace", json!(1))),
        format!("{FIELD} must be a string")
    );
    let too_long = "a".repeat(64);
    for raw in ["Default", "a.b", "-ns", "ns-", "a/b", "ns_1", too_long.as_str()] {
        assert_eq!(
            parse_err(&spec_with("serviceAccountRef.namespace", json!(raw))),
            format!("{FIELD} \"{raw}\" {NS_RULE}"),
            "{raw:?}"
        );
    }
    let longest = "a".repeat(63);
    for ok in ["default", "kube-system", "0", longest.as_str()] {
        let spec = parse(&spec_with("serviceAccountRef.namespace", json!(ok))).unwrap();
        assert_eq!(spec.service_account.namespace.as_deref(), Some(ok));
    }
}

#[test]
fn audiences_rules() {
    const FIELD: &str = "spec.serviceAccountRef.audiences";
    let cases = [
        (
            json!("https://api.cloudsmith.io"),
            format!("{FIELD} must be a list of strings"),
        ),
        (json!({ "0": "a" }), format!("{FIELD} must be a list of strings")),
        (json!(5), format!("{FIELD} must be a list of strings")),
        (json!([1]), format!("{FIELD}[0] must be a string")),
        (json!(["a", null]), format!("{FIELD}[1] must be a string")),
        (json!(["a", ["b"]]), format!("{FIELD}[1] must be a string")),
        (
            json!(["a", "b", ""]),
            format!("{FIELD}[2] must be a non-empty single-line string"),
        ),
        (
            json!([" "]),
            format!("{FIELD}[0] must be a non-empty single-line string"),
        ),
        (
            json!(["a\nb"]),
            format!("{FIELD}[0] must be a non-empty single-line string"),
        ),
        (
            json!(["a\u{0}"]),
            format!("{FIELD}[0] must be a non-empty single-line string"),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(
            parse_err(&spec_with("serviceAccountRef.audiences", value.clone())),
            want,
            "{value}"
        );
    }
}

#[test]
fn audiences_are_kept_in_order_or_default_to_the_api_origin() {
    let given = parse(&spec_with(
        "serviceAccountRef.audiences",
        json!(["https://api.cloudsmith.io", "cluster"]),
    ))
    .unwrap();
    assert_eq!(
        given.service_account.audiences,
        vec!["https://api.cloudsmith.io".to_string(), "cluster".to_string()]
    );

    // (api field, value, default audience): the origin, never the path prefix.
    for (field, raw, want) in [
        (
            "apiHost",
            "cloudsmith.internal:8443",
            "https://cloudsmith.internal:8443",
        ),
        (
            "apiHost",
            "Cloudsmith.Internal/api/v1",
            "https://cloudsmith.internal",
        ),
        ("apiUrl", "http://localhost:8080/", "http://localhost:8080"),
        (
            "apiUrl",
            "https://api.cloudsmith.io:443/v1",
            "https://api.cloudsmith.io",
        ),
        ("apiUrl", "https://[::1]:9443", "https://[::1]:9443"),
    ] {
        for empty in [json!([]), Value::Null] {
            let mut spec = spec_with(field, json!(raw));
            set(&mut spec, "serviceAccountRef.audiences", Some(empty));
            let got = parse(&spec).unwrap();
            assert_eq!(got.service_account.audiences, vec![want.to_string()], "{raw}");
        }
    }
}

// ---------------------------------------------------------------- namespaces

#[test]
fn validate_namespace_names_the_given_field() {
    assert_eq!(
        validate_namespace("", "target namespace"),
        Err(SpecError("target namespace is empty".into()))
    );
    let too_long = "n".repeat(64);
    for bad in ["Default", "a.b", "-a", "a-", "a b", "a/b", "é", too_long.as_str()] {
        assert_eq!(
            validate_namespace(bad, "target namespace"),
            Err(SpecError(format!("target namespace \"{bad}\" {NS_RULE}"))),
            "{bad:?}"
        );
    }
    let longest = "n".repeat(63);
    for good in ["default", "a", "0", "team-a1", longest.as_str()] {
        assert_eq!(validate_namespace(good, "target namespace"), Ok(()), "{good}");
    }
}

#[test]
fn error_messages_are_one_bounded_line() {
    // A hostile manifest must not be able to forge extra log lines.
    let nasty = format!("x\ny\r\u{2028}{}", "z".repeat(5000));
    let mut with_kind = minimal_spec();
    with_kind["kind"] = json!(&nasty);
    for manifest in [
        with_kind,
        spec_with("orgSlug", json!(&nasty)),
        spec_with("apiHost", json!(&nasty)),
        spec_with("serviceAccountRef.name", json!(&nasty)),
        spec_with("serviceAccountRef.namespace", json!(&nasty)),
    ] {
        let err = parse_err(&manifest);
        assert!(!err.contains(['\n', '\r', '\u{2028}']), "{err}");
        assert!(err.chars().count() < 300, "{}", err.len());
    }
}
