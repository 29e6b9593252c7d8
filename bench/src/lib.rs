//! Benchmarks for the Cloudsmith access token component: what the plugin
//! costs a host compared with a native client doing the same exchange.
//!
//! The `generate` bench (`benches/generate.rs`, run by `scripts/bench.sh`)
//! measures everything in one process, against the stand-in Cloudsmith on
//! loopback, and prints one table; ratios are only compared within a run.
//! The pieces:
//!
//! - [`native`]: the baseline, the guest crate's pure steps run natively over
//!   the same hyper stack ([`transport`]);
//! - [`embed`]: a minimal wasmtime embedding that records the guest's memory
//!   peak (host-example's API does not report it);
//! - [`load`]: a closed-loop driver for latency percentiles and throughput at
//!   a given concurrency, with the clients' CPU time;
//! - [`standin`]: the stand-in on its own thread (its CPU is not the clients');
//! - [`cli`]: whole CLI processes, wall time and peak RSS via `wait4`;
//! - [`doors`]: the pull-time doors (Docker credential helper, kubelet provider) as
//!   processes, warm and cold token cache, against the official CLI's helper;
//! - [`serve`]: `cloudsmith-gen serve` under keep-alive load against a native server;
//! - [`report`]: the table and the JSON the plot is drawn from.

pub mod cli;
pub mod doors;
pub mod embed;
pub mod load;
pub mod native;
pub mod report;
pub mod serve;
pub mod standin;
pub mod transport;

/// The organisation every benchmark mints for.
pub const ORG: &str = "bench-org";
/// The service account slug every benchmark mints for.
pub const SERVICE: &str = "bench-service";

/// The generator manifest every benchmark runs, as ESO's example writes it: named `name`,
/// pointed at `api_url`, for the account `account` with `audiences` (`None`: the
/// component's default audience).
pub fn manifest(name: &str, api_url: &str, account: &str, audiences: Option<&[&str]>) -> String {
    let mut account_ref = serde_json::json!({ "name": account });
    if let Some(audiences) = audiences {
        account_ref["audiences"] = serde_json::json!(audiences);
    }
    serde_json::json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "CloudsmithAccessToken",
        "metadata": {"name": name},
        "spec": {
            "apiUrl": api_url,
            "orgSlug": ORG,
            "serviceSlug": SERVICE,
            "serviceAccountRef": account_ref,
        },
    })
    .to_string()
}
