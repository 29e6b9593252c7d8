//! Why a command failed, classified for its exit code.
//!
//! The bottom layer of the binary: setup, the mint port and every door return a
//! [`Failure`], and only `main` turns one into the process's exit (one `error:` line
//! and [`Failure::exit_code`]). `serve` maps the same classification to HTTP statuses.

use host_example::oci::OciError;
use host_example::{Error, GenerateError, HostError};

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure (writing output, runtime)
  2  usage or invalid input (arguments, manifest, spec, component file)
  3  token source failed (file, variable, Kubernetes TokenRequest)
  4  refused by the outbound policy (host not allowed, plain http)
  5  Cloudsmith refused the exchange (401/403 credentials, other 4xx)
  6  Cloudsmith rate limit (429)
  7  upstream or transport failure after retries (5xx, connect, TLS, timeout)
  8  Cloudsmith answered success without a usable token
  9  sandbox limit or crash (deadline, memory limit, trap, bad outputs)
 10  the component's registry failed: refused, not found, unreachable, or an artifact
     that is not the pinned Wasm component (digest, media type, size, core module)
On failure stderr holds one line: `error: <cause>`.";

/// Longest `error:` line kept: enough for a path and a cause, short of a flood.
const MAX_MESSAGE_CHARS: usize = 600;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments, configuration, manifest, component file or protocol input.
    Usage(anyhow::Error),
    /// The call failed.
    Call(Error),
    /// Anything else: writing the output, starting the runtime.
    Other(anyhow::Error),
    /// The whole call ran past a door's bound (the kubelet provider's `--deadline`).
    OutOfTime(String),
    /// Fetching the component from its registry (or pushing it) failed.
    Registry(OciError),
}

impl Failure {
    /// A usage failure with this message.
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure::Usage(anyhow::anyhow!("{message}"))
    }

    /// A token-source failure with this message (exit 3), for a door that finds no
    /// token source before any call.
    pub fn no_token_source(message: impl Into<String>) -> Self {
        Failure::Call(Error::Generate(GenerateError::TokenSource(message.into())))
    }

    /// The process's exit code (see [`EXIT_CODES`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Other(_) => 1,
            Failure::OutOfTime(_) => 9,
            Failure::Registry(_) => 10,
            Failure::Call(Error::Generate(e)) => match e {
                GenerateError::InvalidSpec(_) => 2,
                GenerateError::TokenSource(_) => 3,
                GenerateError::PolicyDenied { .. } => 4,
                GenerateError::Unauthorized(_) | GenerateError::Rejected(_) => 5,
                GenerateError::RateLimited { .. } => 6,
                GenerateError::Upstream { .. } => 7,
                GenerateError::InvalidToken(_) => 8,
            },
            Failure::Call(Error::Host(e)) => match e {
                HostError::TokenSourceUnavailable(_) => 3,
                HostError::DeadlineExceeded { .. }
                | HostError::MemoryLimitExceeded { .. }
                | HostError::SandboxLimitExceeded(_)
                | HostError::Trap(_)
                | HostError::Instantiate(_)
                | HostError::InvalidOutput(_) => 9,
            },
        }
    }

    /// The one-line message: anyhow's chain joined with `: `, folded onto one line,
    /// anything shaped like a token redacted.
    pub fn message(&self) -> String {
        let text = match self {
            Failure::Usage(e) | Failure::Other(e) => format!("{e:#}"),
            Failure::Call(e) => e.to_string(),
            Failure::OutOfTime(m) => m.clone(),
            Failure::Registry(e) => e.message().to_string(),
        };
        host_example::secret::one_line(&text, MAX_MESSAGE_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_without_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let f = Failure::Usage(anyhow::anyhow!("inner\n{jwt}").context("outer"));
        assert_eq!(f.message(), "outer: inner [redacted]");
        assert_eq!(f.exit_code(), 2);
        assert_eq!(Failure::no_token_source("none").exit_code(), 3);
        assert_eq!(Failure::OutOfTime("late".into()).exit_code(), 9);
    }
}
