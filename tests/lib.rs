//! End-to-end suites live in this package's test targets (see Cargo.toml); the stand-ins
//! are the `testkit` crate. What more than one suite here shares is below.

use cloudsmith_gen::cache;
use cloudsmith_gen::wasmtime::component::Component;
use cloudsmith_gen::wasmtime::Engine;
use testkit::registry::{Artifact, Distribution, DistributionConfig, TokenServer};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The real generator and the hostile plugin (`plugs/hostile`), compiled for `engine`.
pub fn generator_and_hostile(engine: &Engine) -> (Component, Component) {
    let good = cache::compile(engine, cloudsmith_gen::COMPONENT).expect("compile the generator");
    let bytes = std::fs::read(testkit::artifacts::wasm("hostile")).expect("read hostile.wasm");
    let hostile = cache::compile(engine, &bytes).expect("compile hostile.wasm");
    (good, hostile)
}

/// A registry (Debian's distribution, token auth) that accepts the stand-in Cloudsmith's
/// access tokens for their organisation's repositories, with `repository:1` pushed.
pub async fn cloudsmith_registry(repository: &str) -> (TokenServer, Distribution, Artifact) {
    let tokens = TokenServer::trusting_cloudsmith().await.expect("token server");
    let registry = Distribution::start(DistributionConfig {
        auth: tokens.auth("cloudsmith-test-registry"),
        ..Default::default()
    })
    .await;
    let image = Artifact::container_image();
    registry
        .push(repository, "1", &image, Some(("testkit", "testkit-password")))
        .await
        .unwrap_or_else(|e| panic!("push: {e:#}\n{}", registry.log()));
    (tokens, registry, image)
}
