//! Registry credentials, read as Docker clients read them: for `component push` and for
//! fetching an `oci://` component, so that whoever can `docker pull` from a registry can
//! use it here with nothing more to set up.
//!
//! Docker reads `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`) and, for a
//! registry (`host[:port]` as an image reference names it):
//!
//! 1. takes its *key*: `docker.io` and `index.docker.io` are `https://index.docker.io/v1/`,
//!    any other registry is itself, exactly as written ([`auth_key`]);
//! 2. answers from `DOCKER_AUTH_CONFIG`'s entry for exactly that key, when the variable
//!    has one ([`DockerConfigFile::apply_auth_config_env`]);
//! 3. else runs the helper `credHelpers[key]`, else `credsStore`
//!    ([`DockerConfigFile::helper_for`]). The helper's answer is the whole answer: its
//!    "credentials not found" is anonymous, whatever `auths` holds;
//! 4. else reads `auths[key]`, else the first entry whose key names that host
//!    (`https://ghcr.io/v2/` for `ghcr.io`, [`convert_to_hostname`]); none is anonymous;
//! 5. and its registry client makes a [`Login`] of what it found.
//!
//! Each rule names the file and function it comes from: docker/cli (read at 28f7560),
//! docker-credential-helpers (594c023), and for step 5 the registry client in
//! distribution/distribution and moby/moby. Where this module departs from them it says
//! so. The departures a user can see: a config file that cannot be read is an error
//! (Docker warns and goes on without it), and a helper that does not answer within
//! [`DEFAULT_HELPER_TIMEOUT`] is killed (Docker waits for ever). A helper that fails is
//! an error, as it fails `docker pull` (cli/command/registry.go
//! `RetrieveAuthTokenFromImage`), never a silent anonymous pull.

//!
//! The module's parts: [`go_url`], Go's `url.Parse` rebuilt for the keys it reads;
//! `config`, the model of `config.json` and `DOCKER_AUTH_CONFIG`; `exec`, running the
//! credential helpers.

mod config;
mod exec;
pub mod go_url;

use std::fmt;
use std::time::Duration;

use crate::secret::{shown, Secret};

pub use config::DockerConfigFile;
pub use exec::ExecHelpers;
pub use go_url::convert_to_hostname;

/// The key Docker Hub's credentials are stored under, in `auths` and `credHelpers` alike
/// (configfile/file.go `authConfigKey`): `credHelpers: {"docker.io": ...}` is never read.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// The directory of `config.json`, when set and not empty (config/config.go `Dir`).
pub const CONFIG_DIR_ENV: &str = "DOCKER_CONFIG";
/// Credentials as JSON, consulted before any helper or file (configfile/file.go
/// `DockerEnvConfigKey`).
pub const AUTH_CONFIG_ENV: &str = "DOCKER_AUTH_CONFIG";
/// A helper's program is this and the `credsStore` or `credHelpers` value
/// (credentials/native_store.go `remoteCredentialsPrefix`).
pub const HELPER_PREFIX: &str = "docker-credential-";
/// The user name with which a helper answers an identity token rather than a password
/// (credentials/native_store.go `tokenUsername`).
pub const TOKEN_USERNAME: &str = "<token>";
/// A `config.json` is a few kilobytes; refuse to buffer a runaway file.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// A helper's answer is one small JSON object (a cloud token is a few kilobytes).
pub const MAX_HELPER_OUTPUT_BYTES: u64 = 1024 * 1024;
/// How long [`ExecHelpers`] waits for a helper. Docker has no limit; this one is long
/// enough for a helper that calls its cloud (`ecr-login`, `gcloud`) or waits for a
/// keychain to be unlocked, and ends one that would hang a push for ever.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// How to authenticate to a registry: what Docker's registry client makes of the
/// credentials it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// No credentials (none configured, or the helper has none): pull anonymously.
    Anonymous,
    /// A user name and password (or access token), for HTTP basic authentication and the
    /// token server's basic-authenticated `GET`. Both are non-empty.
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's user [`TOKEN_USERNAME`]):
    /// exchanged at the token server's realm by `POST` with `grant_type=refresh_token`
    /// for an access token, never sent as a password (distribution's
    /// registry/client/auth/session.go `fetchTokenWithOAuth`).
    IdentityToken(Secret),
    /// A bearer token (`registrytoken`), sent as it is wherever the registry asks for a
    /// bearer token, with no exchange (moby distribution/registry.go `newRepository`).
    RegistryToken(Secret),
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Login::Anonymous => f.write_str("anonymous"),
            Login::Basic { username, .. } => write!(f, "user {}", shown(username)),
            Login::IdentityToken(_) => f.write_str("an identity token"),
            Login::RegistryToken(_) => f.write_str("a registry token"),
        }
    }
}

/// Why the credentials for a registry could not be read. Each is one line that names the
/// file, variable or helper, and holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A `config.json` or `DOCKER_AUTH_CONFIG` cannot be read or is not what Docker
    /// reads (`config/config.go` `load` fails on it too).
    #[error("{0}")]
    Config(String),
    /// A credential helper failed, as it fails `docker pull`.
    #[error("{0}")]
    Helper(String),
    /// No registry was named.
    #[error("no registry to find credentials for")]
    NoRegistry,
}

/// Runs a credential helper's `get` for a server; a trait so that the host can answer
/// for its own helper (`docker-credential-cloudsmith`) in-process, and tests can fake it.
pub trait CredentialHelpers {
    /// The user name and secret that `docker-credential-<helper> get` answers for
    /// `server` (the key, [`auth_key`]); `None` for the protocol's "credentials not
    /// found". The error ([`AuthError::Helper`]) is one line that names the helper and the
    /// server and holds no secret.
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, AuthError>;
}

/// The key Docker stores and looks up `registry`'s credentials under: `docker.io` and
/// `index.docker.io` are [`DOCKER_HUB_KEY`], anything else is unchanged (configfile/file.go
/// `getAuthConfigKey`, which `GetAuthConfig` applies). Nothing is lowercased or parsed:
/// `GHCR.io` and `ghcr.io:443` are other keys than `ghcr.io`, as in Docker.
pub fn auth_key(registry: &str) -> &str {
    if registry == "docker.io" || registry == "index.docker.io" {
        DOCKER_HUB_KEY
    } else {
        registry
    }
}

#[cfg(test)]
mod tests;
