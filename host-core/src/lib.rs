//! What the lean `docker-credential-cloudsmith` helper needs, and so links no wasmtime:
//! values that redact themselves, the typed spec, manifests, JWT claims, the token cache
//! and its single flight, and the Docker credential helper's configuration.
//!
//! `cloudsmith-gen` (the wasmtime host) builds on this crate. The two live apart so that
//! a program can answer from the token cache without linking wasmtime: the lean helper
//! starts about as fast as `cat`, which a 25 MB binary with a JIT cannot (BENCHMARKS.md).
//!
//! # Index
//!
//! | module | what it holds |
//! |---|---|
//! | [`secret`] | [`secret::Secret`], [`secret::Credentials`]: values that redact themselves; one-line messages |
//! | [`spec`] | the typed view of the generator spec, where the component finds it |
//! | [`manifest`] | reading a manifest file (YAML, several documents) to the generator's JSON |
//! | [`jwt`] | the claims of a JWT, read unverified, to describe a token |
//! | [`identity`] | who a token source speaks for, for the token cache's key |
//! | [`token_cache`] | access tokens on disk, for the pull-time doors |
//! | [`flight`] | single flight across processes (`flock`) |
//! | [`dirs`] | the cache directory, created private |
//! | [`files`] | writing a file whole or not at all, with its mode |
//! | [`authority`] | `host:port`, as the outbound policy reads it |
//! | [`registries`] | which registries a door answers for; reading a server URL |
//! | [`docker`] | the Docker credential helper's environment and warm path |

#![deny(missing_docs)]

pub mod authority;
pub mod dirs;
pub mod docker;
pub mod files;
pub mod flight;
pub mod identity;
pub mod jwt;
mod lenient;
pub mod manifest;
pub mod registries;
pub mod secret;
pub mod spec;
pub mod token_cache;

use std::io::Read;

/// Why [`read_bounded`] read nothing; the message names what was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading failed.
    // The cause is in the one line, not a `source`: `{:#}` would print it twice.
    #[error("reading {what}: {error}")]
    Io {
        /// What was read (a file's path, "stdin").
        what: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// There was more than the bound.
    #[error("{what} is larger than {max} bytes")]
    TooLarge {
        /// What was read.
        what: String,
        /// The bound, in bytes.
        max: u64,
    },
}

/// Reads at most `max` bytes of `input`; more is an error naming `what`. The one bounded
/// reader: stdin of every door, and manifest files.
pub fn read_bounded(input: impl Read, max: u64, what: &str) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    input
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| ReadError::Io {
            what: what.to_string(),
            error,
        })?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            what: what.to_string(),
            max,
        });
    }
    Ok(bytes)
}

/// What a door answers: its stdout and the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Written to stdout, with a newline.
    pub stdout: String,
    /// The exit code: 0, or 1 for the Docker helper's "not found".
    pub exit: u8,
}

impl Reply {
    /// `stdout`, exit 0.
    pub fn ok(stdout: impl Into<String>) -> Reply {
        Reply {
            stdout: stdout.into(),
            exit: 0,
        }
    }
}
