//! `parse_manifest` and `validate_namespace` on arbitrary text: whatever is
//! accepted must be safe to put in a URL and a TokenRequest, and must read
//! the same as a bare spec, a `CloudsmithAccessToken` resource and a
//! `ClusterGenerator`; whatever is refused must say so on one bounded line,
//! and the same way in every form.
#![no_main]

use cloudsmith_access_token::exchange::build_request;
use cloudsmith_access_token::secret::Secret;
use cloudsmith_access_token::spec::{parse_manifest, validate_namespace, ApiBase, Spec, SpecError};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

#[path = "common.rs"]
mod common;
use common::*;

/// Where a ClusterGenerator keeps the spec; errors name fields under it.
const CG_FIELD: &str = "spec.generator.cloudsmithAccessTokenSpec";

/// A token with everything JSON must escape.
const AWKWARD_TOKEN: &str = "a\"b\\c/d\u{0}\u{1f}\u{7f}\u{2028}é😀\t\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let result = parse_manifest(text);
    match &result {
        Ok(spec) => {
            check_spec(spec, text);
            check_same_from_every_form(spec, text);
        }
        Err(e) => check_error(e, text),
    }
    check_wrapped(text, &result);

    match validate_namespace(text, "target namespace") {
        Ok(()) => assert!(is_dns_label(text), "accepted namespace {text:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert_one_line("namespace error", &msg);
            assert!(msg.starts_with("target namespace "), "{msg}");
            assert!(msg.chars().count() <= 300, "unbounded message: {msg}");
            assert!(!is_dns_label(text), "refused namespace {text:?}");
        }
    }
});

fn check_error(e: &SpecError, text: &str) {
    let msg = e.to_string();
    assert_one_line("spec error", &msg);
    // Quoted values are cut at 100 characters, serde_json's text at 200;
    // the rest is fixed text and field names.
    assert!(msg.chars().count() <= 300, "unbounded message: {msg}");
    assert!(
        ["manifest ", "apiVersion ", "kind ", "spec ", "spec."]
            .iter()
            .any(|p| msg.starts_with(p)),
        "message names no field: {msg}"
    );
    let syntax_ok = serde_json::from_str::<IgnoredAny>(text).is_ok();
    if msg.starts_with("manifest is not valid JSON: ") {
        // What serde_json checks only in a value it reads, not in one it
        // skips: numbers beyond f64 and lone UTF-16 surrogates in escapes
        // (which Go would read as U+FFFD).
        let read_only = [
            "number out of range",
            "surrogate",
            "hex escape",
            "unicode code point",
        ];
        assert!(
            !syntax_ok || read_only.iter().any(|m| msg.contains(m)),
            "{msg}: {text:?}"
        );
    } else if msg.starts_with("manifest is ambiguous: ") {
        // Reading stops at the duplicate: a syntax error may follow it.
        assert!(msg.contains("duplicate field"), "{msg}");
    } else {
        assert!(syntax_ok, "{msg}: {text:?}");
    }
}

fn is_slug(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_spec(spec: &Spec, text: &str) {
    // Whatever we accept is one well-formed JSON value.
    assert!(
        serde_json::from_str::<IgnoredAny>(text).is_ok(),
        "accepted a manifest that is not JSON: {text:?}"
    );
    assert!(is_slug(&spec.org_slug), "{:?}", spec.org_slug);
    assert!(is_slug(&spec.service_slug), "{:?}", spec.service_slug);

    let api = &spec.api;
    assert!(!api.authority.is_empty());
    assert!(
        !api.authority.contains(['/', '@', '?', '#', ' ']) && !api.authority.chars().any(char::is_control),
        "{api:?}"
    );
    assert_eq!(api.authority, api.authority.to_ascii_lowercase());
    assert!(
        api.path.is_empty() || (api.path.starts_with('/') && !api.path.ends_with('/')),
        "{api:?}"
    );
    assert!(
        api.path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b)),
        "{api:?}"
    );
    assert!(!api.path.split('/').any(|s| s == "." || s == ".."), "{api:?}");
    // Normalisation is idempotent: the normal form parses to itself.
    let normal = format!("{}{}", api.origin(), api.path);
    assert_eq!(ApiBase::parse(&normal, "f").as_ref(), Ok(api), "{normal}");

    let sa = &spec.service_account;
    assert!(
        sa.name.len() <= 253 && sa.name.split('.').all(is_dns_label),
        "{:?}",
        sa.name
    );
    if let Some(ns) = &sa.namespace {
        assert!(is_dns_label(ns), "{ns:?}");
    }
    assert!(!sa.audiences.is_empty());
    for a in &sa.audiences {
        assert!(!a.trim().is_empty() && !a.chars().any(char::is_control), "{a:?}");
    }

    // The request body, for tokens that need escaping too: exactly the two
    // members, each reading back as what went in.
    let head: String = text.chars().take(64).collect();
    for token in [OIDC, AWKWARD_TOKEN, head.as_str()] {
        let request = build_request(spec, &Secret::new(token));
        assert_eq!(request.path, format!("{}/openid/{}/", api.path, spec.org_slug));
        assert!(!request.path.contains(['?', '#']) && !request.path.contains("/../"));
        let body = members::<serde_json::Value>(&request.body, &["oidc_token", "service_slug"])
            .expect("request body is JSON")
            .expect("request body is an object");
        let keys: Vec<&str> = body.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["oidc_token", "service_slug"]);
        assert_eq!(body[0].1.as_ref().and_then(|v| v.as_str()), Some(token));
        assert_eq!(
            body[1].1.as_ref().and_then(|v| v.as_str()),
            Some(spec.service_slug.as_str())
        );
        let length = request.headers.iter().find(|(h, _)| *h == "content-length");
        assert_eq!(
            length.map(|(_, v)| v.as_str()),
            Some(request.body.len().to_string().as_str())
        );
        if token.len() >= 8 {
            assert_no_secret("request debug", &format!("{request:?}"), token);
        }
    }
}

/// The keys that make a document a resource rather than a bare spec.
fn resource_keys(members: &[(String, Option<Option<IgnoredAny>>)]) -> bool {
    members
        .iter()
        .any(|(k, v)| matches!(v, Some(Some(_))) && ["apiVersion", "kind", "spec"].contains(&k.as_str()))
}

/// An accepted manifest, reduced to its spec (via serde_json::Value) and
/// put back in each form, gives the same Spec.
fn check_same_from_every_form(spec: &Spec, text: &str) {
    // Value refuses what the crate may skip (a lone surrogate or a number
    // beyond f64 in an unknown field): nothing to compare then.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let present = |v: &serde_json::Value, k: &str| v.get(k).is_some_and(|x| !x.is_null());
    let is_resource = ["apiVersion", "kind", "spec"].iter().any(|k| present(&value, k));
    let bare = if !is_resource {
        &value
    } else if value["kind"] == "ClusterGenerator" {
        &value["spec"]["generator"]["cloudsmithAccessTokenSpec"]
    } else {
        &value["spec"]
    };
    assert!(bare.is_object(), "accepted without a spec object: {text:?}");
    let bare_text = bare.to_string();
    let want = Ok(spec.clone());
    assert_eq!(
        parse_manifest(&resource(&bare_text)),
        want,
        "resource of {bare_text}"
    );
    assert_eq!(
        parse_manifest(&cluster_generator(&bare_text)),
        want,
        "ClusterGenerator of {bare_text}"
    );
    if !["apiVersion", "kind", "spec"].iter().any(|k| present(bare, k)) {
        assert_eq!(parse_manifest(&bare_text), want, "bare {bare_text}");
    }
}

/// The input itself as the spec of a resource and of a ClusterGenerator:
/// both give the same Spec, or the same error at the matching field; and as
/// a bare spec (when it has no key that makes it a resource) the same too.
fn check_wrapped(text: &str, as_is: &Result<Spec, SpecError>) {
    // Wrapping text that is not one JSON value could splice new members in.
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return;
    }
    let in_resource = parse_manifest(&resource(text));
    let in_cluster = parse_manifest(&cluster_generator(text));
    match (&in_resource, &in_cluster) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
        (Err(a), Err(b)) => {
            let (a, b) = (&a.0, &b.0);
            if let Some(rest) = a.strip_prefix("spec.") {
                assert_eq!(*b, format!("{CG_FIELD}.{rest}"), "{text}");
            } else if let Some(why) = a.strip_prefix("spec ") {
                // "must be an object", or "is required" for null (unset).
                assert_eq!(*b, format!("{CG_FIELD} {why}"), "{text}");
            } else {
                assert_eq!(syntax_class(a), syntax_class(b), "{a} / {b}: {text}");
                assert!(syntax_class(a).is_some(), "{a}: {text}");
            }
        }
        // Three more levels of nesting can reach serde_json's limit (128).
        (Ok(_), Err(b)) if b.0.contains("recursion limit exceeded") => {}
        (a, b) => panic!("resource gives {a:?}, ClusterGenerator {b:?}: {text}"),
    }

    let top = match members::<Option<IgnoredAny>>(text.as_bytes(), &["apiVersion", "kind", "spec"]) {
        Ok(Some(top)) => top,
        // A top-level number beyond f64, say: compared above already.
        Err(_) => return,
        Ok(None) => {
            // Not an object: refused as a bare manifest and as a spec.
            assert_eq!(
                as_is.as_ref().map_err(|e| e.0.as_str()),
                Err("manifest must be a JSON object"),
                "{text}"
            );
            if !matches!(&in_resource, Err(e) if syntax_class(&e.0).is_some()) {
                // A null spec is an unset one, as in ESO's Go structs.
                let is_null = matches!(serde_json::from_str::<Option<IgnoredAny>>(text), Ok(None));
                assert_eq!(
                    in_resource.as_ref().map_err(|e| e.0.as_str()),
                    Err(if is_null {
                        "spec is required"
                    } else {
                        "spec must be an object"
                    }),
                    "{text}"
                );
            }
            return;
        }
    };
    if resource_keys(&top) {
        return;
    }
    match (as_is, &in_resource) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
        (Err(a), Err(b)) if syntax_class(&a.0).is_some() => {
            assert_eq!(syntax_class(&a.0), syntax_class(&b.0), "{a} / {b}: {text}")
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{text}"),
        (Ok(_), Err(b)) if b.0.contains("recursion limit exceeded") => {}
        (a, b) => panic!("bare gives {a:?}, resource {b:?}: {text}"),
    }
}

/// The class of a serde_json error message (its text names a column, which
/// moves when the text is wrapped).
fn syntax_class(msg: &str) -> Option<&'static str> {
    ["manifest is not valid JSON: ", "manifest is ambiguous: "]
        .into_iter()
        .find(|p| msg.starts_with(p))
}
