//! A wasmtime host for the Cloudsmith access token component (ESO's
//! `CloudsmithAccessToken` generator as a WASI 0.2 component).
//!
//! The component is compiled once ([`cache`] keeps the compiled artifact on disk) and
//! pre-linked once ([`Generator::new`]); every [`Generator::generate`] then runs in a
//! fresh [`wasmtime::Store`], so calls are isolated from each other and run concurrently
//! from many tokio tasks (the generator is cheap to clone, `Send` and `Sync`).
//!
//! What a call may do is the embedder's decision:
//! - tokens come from a [`TokenSource`] (a file, a variable, Kubernetes TokenRequest);
//! - outbound HTTP passes an [`OutboundPolicy`] (allowlist, TLS roots, timeout caps);
//! - the guest runs under [`Limits`] (memory, an overall deadline) with an empty WASI
//!   context unless [`WasiGrants`] add read-only directories or variables.
//!
//! Failures are an [`Error`]: the generator's own (a mirror of the WIT `generate-error`)
//! or the host's (deadline, memory, trap, instantiation). Nothing here prints or logs a
//! token: [`Secret`] and [`Credentials`] redact themselves.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use cloudsmith_gen::{cache, sandbox, Generator, GeneratorOptions, OutboundPolicy, COMPONENT};
//! use cloudsmith_gen::token_source::FileTokenSource;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let engine = sandbox::engine(&sandbox::EngineOptions::default())?;
//! let component = cache::compile(&engine, COMPONENT)?;
//! let tokens = Arc::new(FileTokenSource::new("/var/run/secrets/tokens/cloudsmith"));
//! let options = GeneratorOptions {
//!     policy: OutboundPolicy::default(), // api.cloudsmith.io:443 only
//!     ..Default::default()
//! };
//! let generator = Generator::new(&engine, &component, tokens, options)?;
//!
//! let manifest = r#"{"spec": {"orgSlug": "my-org", "serviceSlug": "my-svc",
//!                    "serviceAccountRef": {"name": "default"}}}"#;
//! match generator.generate(manifest, "default").await {
//!     Ok(credentials) => println!("expires at {}", credentials.expiry()),
//!     Err(e) => eprintln!("error: {e}"),
//! }
//! # Ok(())
//! # }
//! ```

//!
//! # Index
//!
//! | module | what it holds |
//! |---|---|
//! | `generator` (re-exported) | [`Generator`]: the pre-linked component, a store per call, [`CallTokens`] |
//! | [`policy`] | [`OutboundPolicy`]: the guest's `wasi:http` allowlist, TLS roots, timeout caps |
//! | [`sandbox`] | the engine, [`Limits`] (memory, deadline), [`WasiGrants`] |
//! | [`token_source`] | [`TokenSource`]: a file, a variable, Kubernetes TokenRequest, a fixed token |
//! | [`cache`] | compiled components on disk |
//! | [`error`] | [`Error`]: the generator's failures (the WIT `generate-error`) and the host's |
//! | [`secret`] | [`Secret`], [`Credentials`]: values that redact themselves; one-line messages |
//! | [`output`] | ESO's JSON, a Docker config, a dockerconfigjson Secret |
//! | [`oci`] | the component as an OCI artifact: push, fetch by digest (verified), the component store |
//! | [`registry_auth`] | registry credentials as Docker clients read them (`config.json`, credential helpers), for [`oci`] |

#![deny(missing_docs)]

pub mod cache;
pub mod error;
mod generator;
mod host;
pub mod oci;
pub mod output;
pub mod policy;
pub mod registry_auth;
pub mod sandbox;
pub mod token_source;

// The Wasm-free modules, kept in cloudsmith-gen-core (host-core/) so that the lean Docker helper links no wasmtime.
// Only `secret` is part of this library's interface; the others serve its insides (and
// the CLI reaches them in cloudsmith-gen-core directly).
pub use cloudsmith_gen_core::secret;
use cloudsmith_gen_core::{flight, jwt, spec};

pub use error::{Error, GenerateError, HostError, PresentedToken, UpstreamStatus};
pub use generator::{CallReport, CallTokens, Generator, GeneratorInfo, GeneratorOptions, Traced};
pub use policy::{Authority, Journal, OutboundPolicy, RequestRecord, TimeoutCaps};
pub use sandbox::{EngineOptions, Limits, WasiGrants};
pub use secret::{Credentials, Secret};
pub use token_source::{NamespacePolicy, TokenRequest, TokenSource, TokenSourceError};
/// The wasmtime this host embeds, so embedders and tests name the same types.
pub use wasmtime;

/// The generator component, built from this workspace by `build.rs`.
pub const COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cloudsmith_access_token.wasm"));
