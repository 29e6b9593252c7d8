//! `file-token-source`: a plug that gives the Cloudsmith generator its service
//! account token from a file, typically a Kubernetes projected service account
//! token that the kubelet keeps fresh.
//!
//! It exports `secretgen:generator/token-source` (world
//! `secretgen:generator/token-provider`), so `wac plug` can compose it into the
//! generator and the result needs only standard WASI imports.
//!
//! # Which file
//!
//! The path comes from the `TOKEN_PATH_TEMPLATE` environment variable (wasi:cli
//! environment, e.g. `wasmtime run --env`), default
//! [`DEFAULT_TEMPLATE`] = `/var/run/secrets/tokens/{name}`:
//!
//! - `{name}` becomes the service account's name (`spec.serviceAccountRef.name`),
//! - `{namespace}` becomes the target namespace,
//! - a template without placeholders is one fixed file for every account
//!   (e.g. `TOKEN_PATH_TEMPLATE=/var/run/secrets/tokens/cloudsmith`).
//!
//! The directory must be preopened by the host (`wasmtime run --dir
//! HOST::/var/run/secrets/tokens`); WASI has no ambient filesystem.
//!
//! Names are checked before they reach the path: a service account name must
//! be a Kubernetes DNS subdomain and a namespace a DNS label, so neither can
//! contain `/` or be `..`, and a manifest cannot steer the plug to another file.
//!
//! # What it does not do
//!
//! A projected token's audience is fixed in the Pod spec, so the audiences the
//! generator asks for are not checked here: project the token with the
//! Cloudsmith API's origin as audience (the generator's default). The spec's
//! `serviceAccountRef.namespace` is ignored, as ESO does for namespaced
//! generators.
//!
//! # Errors
//!
//! One line, naming the path and the reason; the token never appears in them.

#![deny(missing_docs)]

use std::io;
use std::path::Path;

/// The path template used when `TOKEN_PATH_TEMPLATE` is unset or empty: one
/// projected token file per service account, named after it.
pub const DEFAULT_TEMPLATE: &str = "/var/run/secrets/tokens/{name}";

/// The environment variable that overrides [`DEFAULT_TEMPLATE`].
pub const TEMPLATE_VAR: &str = "TOKEN_PATH_TEMPLATE";

/// Upper bound on a token file's size. A service account JWT is a few KiB; a
/// larger file is a misconfiguration (a wrong path), and reading it whole
/// would only waste the guest's memory.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Resolves the token file for service account `name` in `namespace` from
/// `template` (see the crate docs for the placeholders).
///
/// Fails with a one-line reason when a name that would be substituted is not
/// a valid Kubernetes name: that check is what keeps `..` and `/` out of the
/// path.
pub fn token_path(template: &str, name: &str, namespace: &str) -> Result<String, String> {
    if template.contains("{name}") && !is_dns_subdomain(name) {
        return Err(format!(
            "service account name {name:?} is not a valid Kubernetes name; refusing to build a token file path from it"
        ));
    }
    if template.contains("{namespace}") && !is_dns_label(namespace) {
        return Err(format!(
            "namespace {namespace:?} is not a valid Kubernetes namespace; refusing to build a token file path from it"
        ));
    }
    Ok(template.replace("{name}", name).replace("{namespace}", namespace))
}

/// Reads the token at `path`: bounded in size, surrounding whitespace trimmed
/// (the kubelet writes no newline, but hand-made files usually end in one).
///
/// The error names the path and the I/O reason, never the file's content.
pub fn read_token(path: &str) -> Result<String, String> {
    use std::io::Read;

    let fail = |why: &dyn std::fmt::Display| format!("cannot read service account token file {path}: {why}");
    let file = std::fs::File::open(Path::new(path)).map_err(|e| fail(&reason(&e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&reason(&e)))?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(fail(&format_args!("larger than {MAX_TOKEN_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(&"the file is empty"));
    }
    Ok(token.to_owned())
}

/// The plug's whole job: choose the path from the environment and read it.
///
/// `env` looks up an environment variable; taking it as a function keeps the
/// logic testable without touching the test process's environment.
pub fn service_account_token(
    env: impl Fn(&str) -> Option<String>,
    name: &str,
    namespace: &str,
) -> Result<String, String> {
    let template = env(TEMPLATE_VAR).filter(|t| !t.trim().is_empty());
    let template = template.as_deref().unwrap_or(DEFAULT_TEMPLATE).trim();
    read_token(&token_path(template, name, namespace)?)
}

/// A short reason for an I/O error. `NotFound` is the common misconfiguration
/// (directory not preopened, wrong name): say so in words that point at the fix.
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file (is its directory preopened?)".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// A Kubernetes DNS subdomain name (RFC 1123): what service account names are.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Kubernetes DNS label (RFC 1123): what namespaces are, and each
/// dot-separated part of a subdomain.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

#[cfg(target_arch = "wasm32")]
mod component {
    mod bindings {
        // The ordinary way: bindings for the `token-provider` world, nothing
        // else. That world includes WASI 0.2.12's CLI imports, so the linker
        // raises the WASI imports of Rust's std (0.2.6) to 0.2.12, the
        // version the generator uses, and the two compose with `wac plug`
        // and `wasm-tools compose` alike.
        wit_bindgen::generate!({
            world: "secretgen:generator/token-provider",
            path: "../../wit",
            generate_all,
        });
    }

    use bindings::exports::secretgen::generator::token_source::{Guest, ServiceAccountRef};

    struct Plug;

    impl Guest for Plug {
        fn service_account_token(account: ServiceAccountRef, namespace: String) -> Result<String, String> {
            super::service_account_token(|k| std::env::var(k).ok(), &account.name, &namespace)
        }
    }

    bindings::export!(Plug with_types_in bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn default_template_names_the_file_after_the_account() {
        assert_eq!(
            token_path(DEFAULT_TEMPLATE, "eso-cloudsmith", "apps").unwrap(),
            "/var/run/secrets/tokens/eso-cloudsmith"
        );
    }

    #[test]
    fn template_substitutes_name_and_namespace() {
        assert_eq!(
            token_path("/t/{namespace}/{name}.jwt", "sa.one", "team-a").unwrap(),
            "/t/team-a/sa.one.jwt"
        );
    }

    #[test]
    fn fixed_template_ignores_the_names() {
        assert_eq!(token_path("/t/token", "../x", "..").unwrap(), "/t/token");
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["..", ".", "a/b", "../etc/passwd", "", "A", "a..b", "-a", "a-"] {
            let err = token_path(DEFAULT_TEMPLATE, bad, "ns").unwrap_err();
            assert!(err.contains("not a valid Kubernetes name"), "{bad}: {err}");
        }
        let err = token_path("/t/{namespace}", "sa", "a.b").unwrap_err();
        assert!(err.contains("namespace \"a.b\""), "{err}");
    }

    #[test]
    fn reads_and_trims_the_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sa"), "  header.payload.sig\n").unwrap();
        let template = format!("{}/{{name}}", dir.path().display());
        let vars = [(TEMPLATE_VAR, template.as_str())];
        assert_eq!(
            service_account_token(env(&vars), "sa", "ns").unwrap(),
            "header.payload.sig"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = service_account_token(env(&[]), "nobody", "ns").unwrap_err();
        assert_eq!(
            err,
            "cannot read service account token file /var/run/secrets/tokens/nobody: \
             no such file (is its directory preopened?)"
        );
    }

    #[test]
    fn empty_and_oversized_files_are_errors_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let err = read_token(empty.to_str().unwrap()).unwrap_err();
        assert!(err.ends_with("the file is empty"), "{err}");

        let big = dir.path().join("big");
        std::fs::write(&big, "secret-".repeat(20_000)).unwrap();
        let err = read_token(big.to_str().unwrap()).unwrap_err();
        assert!(err.contains("larger than") && !err.contains("secret-"), "{err}");
        assert!(!err.contains('\n'));
    }
}
