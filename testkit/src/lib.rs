//! Shared test support for the Cloudsmith access token generator.
//!
//! Every end-to-end suite, the CLI's `demo` command and the benchmarks use the
//! same pieces, so what one proves holds for the others:
//!
//! - [`oidc`]: service-account-like JWTs signed with a fixed test key, and
//!   their verification, for tests that need no real cluster.
//! - [`cloudsmith`]: a stand-in for Cloudsmith's `openid_create` operation that
//!   checks requests as strictly as the real API and fails on demand, chosen by
//!   the organisation slug (so concurrent tests and CLI processes need no
//!   control channel).
//! - [`cluster`] (feature `tls`): the real control plane (etcd, kube-apiserver,
//!   kube-controller-manager built from their Go modules), one per test process.
//! - [`relying_party`] (feature `tls`): an OIDC relying party of the cluster's
//!   service-account issuer, how the Cloudsmith stand-in trusts the cluster's tokens.
//! - [`kubernetes`]: a stand-in Kubernetes API server, only for what the real one cannot
//!   do on demand (a stalled or hung API server).
//! - [`real_eso`] (feature `tls`): ESO's own Webhook and Cloudsmith generators and
//!   its controller (v0.20.4, built in `harness/`).
//! - [`eso`] (feature `tls`): the rules of ESO releases that cannot run here (v1.3.2's
//!   Secret label, v2.4.0's caProvider namespace), from their source.
//! - [`registry`] (feature `tls`): OCI registries for the `oci://` component source:
//!   Debian's real `docker-registry`, a stand-in token service it trusts, and an
//!   in-process pull API that fails on demand.
//! - [`tls`] (feature `tls`): a throw-away CA and a server certificate for
//!   `localhost` and `127.0.0.1`.
//! - [`tools`], [`artifacts`], [`process`]: finding external tools, building
//!   wasm artifacts once per process, running commands with a time bound, and
//!   starting a server (`cloudsmith-gen serve`) and waiting for its listening line
//!   ([`process::Listening`]).
//! - [`wave`]: reading what the wasmtime CLI prints for `--invoke`.
//!
//! Servers listen on `127.0.0.1` only, on a port the OS picks, and stop when
//! their handle is dropped: no test can leave one behind or reach off-host.

#![deny(missing_docs)]

pub mod artifacts;
pub mod client;
pub mod cloudsmith;
#[cfg(feature = "tls")]
pub mod cluster;
#[cfg(feature = "tls")]
pub mod eso;
pub mod kubernetes;
pub mod oidc;
pub mod process;
#[cfg(feature = "tls")]
pub mod real_eso;
#[cfg(feature = "tls")]
pub mod registry;
#[cfg(feature = "tls")]
pub mod relying_party;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod tools;
pub mod wave;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> std::path::PathBuf {
    // testkit lives at <workspace>/testkit; the path is fixed at compile time,
    // which is what tests run from a checkout want.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent directory")
        .to_path_buf()
}
