//! What more than one suite of this folder shares (`mod common;`).

use testkit::cloudsmith::{StandIn, StandInConfig, Trusted};

/// The stand-in Cloudsmith trusting testkit's issuer for the service accounts of
/// namespace `apps` only.
pub async fn stand_in_trusting_apps() -> StandIn {
    StandIn::start(StandInConfig {
        trusted: vec![Trusted::new(
            testkit::oidc::ISSUER,
            "system:serviceaccount:apps:*",
        )],
        ..StandInConfig::default()
    })
    .await
    .expect("stand-in")
}
