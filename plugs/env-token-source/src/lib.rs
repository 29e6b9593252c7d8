//! `env-token-source`: a plug that gives the Cloudsmith generator its service
//! account token from an environment variable (wasi:cli environment), the way
//! CI systems hand out OIDC tokens.
//!
//! It exports `secretgen:generator/token-source` (world
//! `secretgen:generator/token-provider`), so `wac plug` can compose it into the
//! generator and the result needs only standard WASI imports.
//!
//! # Which variable
//!
//! [`DEFAULT_VAR`] = `OIDC_TOKEN`, unless `TOKEN_ENV_VAR` names another one
//! (e.g. `TOKEN_ENV_VAR=CLOUDSMITH_OIDC_TOKEN`, the variable the official
//! Cloudsmith CLI reads). One token serves every service account: the
//! account's name, namespace and audiences are not consulted, since a variable
//! carries whatever token its setter chose.
//!
//! # Errors
//!
//! One line, naming the variable; the token never appears in them.

#![deny(missing_docs)]

/// The variable read when `TOKEN_ENV_VAR` is unset or empty.
pub const DEFAULT_VAR: &str = "OIDC_TOKEN";

/// The variable that names the variable holding the token.
pub const SELECTOR_VAR: &str = "TOKEN_ENV_VAR";

/// The plug's whole job: pick the variable, read it, trim it.
///
/// `env` looks up an environment variable; taking it as a function keeps the
/// logic testable without touching the test process's environment.
pub fn service_account_token(env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let name = env(SELECTOR_VAR).filter(|n| !n.trim().is_empty());
    let name = name.as_deref().map(str::trim).unwrap_or(DEFAULT_VAR);
    let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
    let token = value.trim();
    if token.is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(token.to_owned())
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
        fn service_account_token(_account: ServiceAccountRef, _namespace: String) -> Result<String, String> {
            // A non-UTF-8 value reads as unset: `var` cannot return it anyway.
            super::service_account_token(|k| std::env::var(k).ok())
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
    fn reads_oidc_token_by_default_and_trims_it() {
        assert_eq!(
            service_account_token(env(&[("OIDC_TOKEN", " a.b.c\n")])).unwrap(),
            "a.b.c"
        );
    }

    #[test]
    fn token_env_var_selects_another_variable() {
        let vars = [
            ("TOKEN_ENV_VAR", "CLOUDSMITH_OIDC_TOKEN"),
            ("CLOUDSMITH_OIDC_TOKEN", "x.y.z"),
        ];
        assert_eq!(service_account_token(env(&vars)).unwrap(), "x.y.z");
    }

    #[test]
    fn unset_and_empty_are_errors_naming_the_variable() {
        assert_eq!(
            service_account_token(env(&[])).unwrap_err(),
            "environment variable OIDC_TOKEN is not set"
        );
        assert_eq!(
            service_account_token(env(&[("OIDC_TOKEN", "  ")])).unwrap_err(),
            "environment variable OIDC_TOKEN is empty"
        );
    }
}
