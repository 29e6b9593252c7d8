//! The smallest useful token-source plug: the service account token comes
//! from the `OIDC_TOKEN` environment variable (a CI system's OIDC token, say).

wit_bindgen::generate!({
    world: "secretgen:generator/token-provider",
    path: "../../wit",
    generate_all,
});

use exports::secretgen::generator::token_source::{Guest, ServiceAccountRef};

struct Plug;

impl Guest for Plug {
    fn service_account_token(_account: ServiceAccountRef, _namespace: String) -> Result<String, String> {
        match std::env::var("OIDC_TOKEN") {
            Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
            _ => Err("environment variable OIDC_TOKEN is not set".to_string()),
        }
    }
}

export!(Plug);
