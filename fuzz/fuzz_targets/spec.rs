//! `parse_manifest` and `validate_namespace` on arbitrary text: whatever is
//! accepted must be safe to put in a URL and a TokenRequest; whatever is
//! refused must say so on one bounded line.
#![no_main]

use cloudsmith_access_token::exchange::build_request;
use cloudsmith_access_token::secret::Secret;
use cloudsmith_access_token::spec::{parse_manifest, validate_namespace, ApiBase, Spec};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::*;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_manifest(text) {
        Ok(spec) => check_spec(&spec, text),
        Err(e) => {
            let msg = e.to_string();
            assert_one_line("spec error", &msg);
            // Quoted values are cut at 100 characters; the rest is fixed text.
            assert!(msg.chars().count() <= 300, "unbounded message: {msg}");
        }
    }
    match validate_namespace(text, "target namespace") {
        Ok(()) => assert!(is_dns_label(text), "accepted namespace {text:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert_one_line("namespace error", &msg);
            assert!(msg.starts_with("target namespace "), "{msg}");
            assert!(!is_dns_label(text), "refused namespace {text:?}");
        }
    }
});

fn is_slug(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_spec(spec: &Spec, text: &str) {
    // Whatever we accept, an ordinary JSON parser must accept too.
    assert!(
        serde_json::from_str::<serde_json::Value>(text).is_ok(),
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

    let request = build_request(spec, &Secret::new(OIDC.into()));
    assert_eq!(request.path, format!("{}/openid/{}/", api.path, spec.org_slug));
    assert!(!request.path.contains(['?', '#']) && !request.path.contains("/../"));
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("request body is JSON");
    assert_eq!(body["oidc_token"], OIDC);
    assert_eq!(body["service_slug"], spec.service_slug.as_str());
    assert_no_secret("request debug", &format!("{request:?}"), OIDC);
}
