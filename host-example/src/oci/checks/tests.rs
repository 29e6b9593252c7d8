//! The checks of what a registry serves, and the classification of oci-client's errors,
//! as tables.

use oci_client::errors::{OciEnvelope, OciError as RegistryErrorEntry};
use serde_json::json;

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A Wasm component manifest with `change` applied to it.
fn manifest(change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MEDIA_TYPE,
        "config": {"mediaType": WASM_MANIFEST_CONFIG_MEDIA_TYPE, "digest": DIGEST, "size": 10},
        "layers": [{"mediaType": WASM_LAYER_MEDIA_TYPE, "digest": DIGEST, "size": 150000}],
    });
    change(&mut m);
    serde_json::to_vec(&m).unwrap()
}

#[test]
fn the_one_wasm_layer_is_found_and_every_other_manifest_refused() {
    // (case, manifest, the error's words; empty: the layer is found)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a Wasm component", manifest(|_| {}), ""),
        (
            "not JSON",
            b"<html>".to_vec(),
            "the registry served no OCI image manifest",
        ),
        (
            "another media type",
            manifest(|m| m["mediaType"] = json!("application/vnd.oci.image.index.v1+json")),
            "the manifest's media type is application/vnd.oci.image.index.v1+json",
        ),
        (
            "no media type",
            manifest(|m| {
                m.as_object_mut().unwrap().remove("mediaType");
            }),
            "the manifest's media type is none",
        ),
        (
            "a container image",
            manifest(|m| m["config"]["mediaType"] = json!("application/vnd.oci.image.config.v1+json")),
            "it is a container image (config application/vnd.oci.image.config.v1+json)",
        ),
        (
            "another kind of artifact",
            manifest(|m| m["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json")),
            "it is an artifact of another kind",
        ),
        (
            "two layers",
            manifest(|m| {
                let layer = m["layers"][0].clone();
                m["layers"] = json!([layer.clone(), layer]);
            }),
            "a Wasm component has one layer; this manifest has 2",
        ),
        (
            "no layer",
            manifest(|m| m["layers"] = json!([])),
            "this manifest has 0",
        ),
        (
            "a layer of another type",
            manifest(|m| m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip")),
            "its layer is application/vnd.oci.image.layer.v1.tar+gzip, not application/wasm",
        ),
        (
            "a layer over the bound",
            manifest(|m| m["layers"][0]["size"] = json!(MAX_COMPONENT_BYTES + 1)),
            "over the bound",
        ),
        (
            "a negative size",
            manifest(|m| m["layers"][0]["size"] = json!(-1)),
            "its layer of -1 bytes",
        ),
        (
            "a digest that is none",
            manifest(|m| m["layers"][0]["digest"] = json!("md5:abc")),
            "md5:abc",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, bytes, words) in cases {
        match (wasm_layer(&bytes), words) {
            (Ok(layer), "") if layer.digest == DIGEST && layer.size == 150000 => {}
            (Err(e), words) if !words.is_empty() && e.message().contains(words) => {}
            (got, _) => wrong.push(format!("{case}: {got:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn manifests_and_components_are_told_apart() {
    assert!(is_manifest(&manifest(|_| {})));
    assert!(!is_manifest(b"{\"layers\": []}"));
    assert!(!is_manifest(b"not json"));
    // The preambles: a core module (version 1, layer 0), a component (version 0xd, layer 1).
    let core = b"\0asm\x01\0\0\0";
    let component = b"\0asm\x0d\0\x01\0";
    assert!(not_a_component(core).starts_with("it is a core Wasm module"));
    assert_eq!(not_a_component(b"MZ"), "it is not a Wasm component");
    assert!(wasmparser::Parser::is_component(component));
    let served = not_a_manifest("fetching x", b"<html></html>", "text/html");
    assert_eq!(
        served,
        OciError::Invalid("fetching x: the registry served no manifest, but 13 bytes of text/html".into())
    );
}

#[test]
fn each_registry_failure_is_classified_for_its_exit_and_named() {
    use OciDistributionError as E;
    let envelope = |code: OciErrorCode| E::RegistryError {
        envelope: OciEnvelope {
            errors: vec![RegistryErrorEntry {
                code,
                message: "no".into(),
                detail: json!(null),
            }],
        },
        url: "https://r/v2/x".into(),
    };
    let server = |code: u16| E::ServerError {
        code,
        url: "https://r/v2/x".into(),
        message: "down".into(),
    };
    let kind = |e: &OciError| match e {
        OciError::Refused(_) => "refused",
        OciError::NotFound(_) => "not found",
        OciError::Invalid(_) => "invalid",
        OciError::Unreachable(_) => "unreachable",
    };
    // (case, error, credentials sent, kind, words)
    let cases: Vec<(&str, E, bool, &str, &str)> = vec![
        (
            "token flow refused",
            E::AuthenticationFailure("bad".into()),
            true,
            "refused",
            "refused the credentials (bad)",
        ),
        (
            "401 with credentials",
            E::UnauthorizedError { url: "u".into() },
            true,
            "refused",
            "refused the credentials Docker's config.json gives",
        ),
        (
            "401 without",
            E::UnauthorizedError { url: "u".into() },
            false,
            "refused",
            "gives none for it",
        ),
        (
            "DENIED",
            envelope(OciErrorCode::Denied),
            true,
            "refused",
            "the registry refused: Denied: no",
        ),
        (
            "MANIFEST_UNKNOWN",
            envelope(OciErrorCode::ManifestUnknown),
            false,
            "not found",
            "not found in the registry",
        ),
        (
            "NAME_UNKNOWN",
            envelope(OciErrorCode::NameUnknown),
            false,
            "not found",
            "NameUnknown",
        ),
        (
            "another code",
            envelope(OciErrorCode::Unsupported),
            false,
            "invalid",
            "answered an error",
        ),
        (
            "no manifest",
            E::ImageManifestNotFoundError("x".into()),
            false,
            "not found",
            "not found",
        ),
        ("403", server(403), true, "refused", "answered 403: down"),
        ("404", server(404), false, "not found", "(404)"),
        ("503", server(503), false, "unreachable", "answered 503: down"),
        (
            "not a manifest",
            E::ManifestParsingError("eof".into()),
            false,
            "invalid",
            "served no OCI manifest (eof)",
        ),
        (
            "another media type",
            E::UnsupportedMediaTypeError("text/html".into()),
            false,
            "invalid",
            "media type text/html",
        ),
        (
            "a spec violation",
            E::SpecViolationError("no".into()),
            false,
            "invalid",
            "broke the OCI distribution spec",
        ),
        (
            "anything else",
            E::GenericError(Some("odd".into())),
            false,
            "unreachable",
            "odd",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, error, sent, want, words) in cases {
        let got = classify("fetching x", error, sent);
        let text = got.to_string();
        if kind(&got) != want || !text.starts_with("fetching x: ") || !text.contains(words) {
            wrong.push(format!("{case}: {} {text:?}", kind(&got)));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_cause_chain_is_one_line_without_documentation_links() {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let e = Outer(std::io::Error::other(
        "invalid peer certificate: UnknownIssuer: https://docs.rs/rustls",
    ));
    assert_eq!(
        cause(&e),
        "error sending request: invalid peer certificate: UnknownIssuer"
    );
}
