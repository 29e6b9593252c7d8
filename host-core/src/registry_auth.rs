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

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::docker::NOT_FOUND;
use crate::secret::{one_line, shown, Secret};

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

/// Runs a credential helper's `get` for a server; a trait so that the host can answer
/// for its own helper (`docker-credential-cloudsmith`) in-process, and tests can fake it.
pub trait CredentialHelpers {
    /// The user name and secret that `docker-credential-<helper> get` answers for
    /// `server` (the key, [`auth_key`]); `None` for the protocol's "credentials not
    /// found". The error is one line that names the helper and the server and holds no
    /// secret.
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, String>;
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

/// The `host[:port]` an `auths` key names: `https://ghcr.io/v2/` is `ghcr.io`,
/// `http://[::1]:5000` is `[::1]:5000`, `ghcr.io/x` is `ghcr.io` (credentials/file_store.go
/// `ConvertToHostname`, keys "in legacy configuration files"). Case is kept.
///
/// Go's `url.Parse` is rebuilt for what a key with `://` reaches: scheme, user
/// information, bracketed IPv6, port. One difference: a `%` in the host, which Go
/// decodes, is taken as a parse failure here (no registry key has one).
pub fn convert_to_hostname(maybe_url: &str) -> String {
    if maybe_url.contains("://") {
        if let Some(host) = url_host(maybe_url) {
            return host;
        }
        if let Some(host) = host_from_url_fallback(maybe_url) {
            return host;
        }
    }
    maybe_url.split('/').next().unwrap_or_default().to_string()
}

/// `u.Hostname()` and `u.Port()` of Go's `url.Parse(url)`, joined as `ConvertToHostname`
/// joins them; `None` where Go's parse fails or finds no host name.
fn url_host(url: &str) -> Option<String> {
    // url.Parse refuses ASCII control characters anywhere.
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    // getScheme: a letter, then letters, digits, `+`, `-`, `.`. Another character first
    // makes Go read the whole as a path whose first segment has a colon: an error.
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    // The fragment is cut first, then the query; the authority runs to the next `/`.
    let rest = rest.split('#').next()?.split('?').next()?;
    let authority = rest.split('/').next()?;
    // parseAuthority: user information runs to the last `@`.
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let valid = |c: char| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c);
            if !userinfo.chars().all(valid) {
                return None;
            }
            host
        }
        None => authority,
    };
    let (hostname, port) = parse_host(host)?;
    if hostname.is_empty() {
        return None;
    }
    Some(match port {
        "" => hostname.to_string(),
        // net.JoinHostPort brackets a host with a colon.
        port if hostname.contains(':') => format!("[{hostname}]:{port}"),
        port => format!("{hostname}:{port}"),
    })
}

/// Go's `parseHost` and `splitHostPort`: the host name (without brackets) and the port
/// (empty when none), or `None` where Go fails.
fn parse_host(host: &str) -> Option<(&str, &str)> {
    // validOptionalPort: nothing, or a colon and digits (maybe none).
    let optional_port = |s: &str| {
        s.is_empty()
            || s.strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    };
    // unescape(host, encodeHost): the characters Go's shouldEscape lets through in a host,
    // and any non-ASCII byte.
    let valid = |c: char| !c.is_ascii() || c.is_ascii_alphanumeric() || "-_.~!$&'()*+,;=:[]<>\"".contains(c);
    if !host.chars().all(valid) {
        return None;
    }
    if let Some(bracketed) = host.strip_prefix('[') {
        let end = bracketed.rfind(']')?;
        let after = &bracketed[end + 1..];
        if !optional_port(after) {
            return None;
        }
        return Some((&bracketed[..end], after.strip_prefix(':').unwrap_or("")));
    }
    match host.rfind(':') {
        None => Some((host, "")),
        // Go rejects an unbracketed IPv6 literal (more than one colon): the fallback reads it.
        Some(i) if host[..i].contains(':') => None,
        Some(i) if optional_port(&host[i..]) => Some((&host[..i], &host[i + 1..])),
        Some(_) => None,
    }
}

/// credentials/file_store.go `hostFromURLFallback`: the text between `://` and the next
/// `/`, with an unbracketed IPv6 literal and port bracketed; `None` when it is empty.
fn host_from_url_fallback(maybe_url: &str) -> Option<String> {
    let (_, rest) = maybe_url.split_once("://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    if host.matches(':').count() > 1 && !host.starts_with('[') {
        let (address, port) = host.rsplit_once(':')?;
        if !address.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Some(format!("[{address}]:{port}"));
        }
    }
    Some(host.to_string())
}

/// One `auths` entry (types/authconfig.go `AuthConfig`) once configfile/file.go
/// `LoadFromReader` has decoded its `auth`. `email` and `serveraddress` play no part in
/// a login.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuthConfig {
    username: String,
    password: Secret,
    identity_token: Secret,
    registry_token: Secret,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            username: String::new(),
            password: Secret::new(""),
            identity_token: Secret::new(""),
            registry_token: Secret::new(""),
        }
    }
}

impl AuthConfig {
    /// What Docker's registry client does with these credentials.
    fn login(&self) -> Login {
        // moby distribution/registry.go newRepository: a registry token is the only
        // authorizer; nothing else is looked at.
        if !self.registry_token.is_empty() {
            return Login::RegistryToken(self.registry_token.clone());
        }
        // distribution registry/client/auth/session.go tokenHandler.fetchToken: a refresh
        // token is exchanged by OAuth (fetchTokenWithOAuth), the user name unused.
        if !self.identity_token.is_empty() {
            return Login::IdentityToken(self.identity_token.clone());
        }
        // session.go basicHandler.AuthorizeRequest and fetchTokenWithBasicAuth send basic
        // credentials only when user and password are both non-empty.
        if !self.username.is_empty() && !self.password.is_empty() {
            return Login::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            };
        }
        Login::Anonymous
    }
}

/// What Docker reads from `config.json` for credentials: `auths`, `credHelpers`,
/// `credsStore`; and, once applied, `DOCKER_AUTH_CONFIG`. Every other setting is ignored,
/// whatever its type (Go would refuse a file with, say, a numeric `psFormat`).
#[derive(Debug, Clone, Default)]
pub struct DockerConfigFile {
    /// By key, in key order: Docker's fallback match over keys walks a Go map, in random
    /// order; this takes the first matching key in byte order, so the answer is stable.
    auths: BTreeMap<String, AuthConfig>,
    cred_helpers: BTreeMap<String, String>,
    /// Empty when unset, as in Go.
    creds_store: String,
    env_auths: BTreeMap<String, AuthConfig>,
}

impl DockerConfigFile {
    /// The file Docker reads: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`
    /// (config/config.go `Dir`, empty counting as unset). `None` with neither variable,
    /// where Docker would ask the user database for a home.
    pub fn default_path() -> Option<PathBuf> {
        config_path(|name| std::env::var_os(name))
    }

    /// The file at [`DockerConfigFile::default_path`], read; `Ok(None)` when there is none
    /// (config/config.go `load`: a missing file is no configuration, any other failure to
    /// open or parse it is an error).
    pub fn load_default() -> Result<Option<(PathBuf, Self)>, String> {
        let Some(path) = Self::default_path() else {
            return Ok(None);
        };
        Ok(Self::load_if_present(&path)?.map(|config| (path, config)))
    }

    /// All that Docker reads for credentials in this process's environment (config/config.go
    /// `LoadDefaultConfigFile`, configfile/file.go `GetCredentialsStore`): the default file
    /// (its path, when there is one), `DOCKER_AUTH_CONFIG`, and, when the file configures
    /// no credentials at all, the platform's default helper if `helpers` finds it
    /// ([`DockerConfigFile::detect_default_store`]). A `DOCKER_AUTH_CONFIG` that cannot be
    /// read is an error, where Docker warns and goes on without it: a typo in a CI secret
    /// should not turn into an anonymous push.
    pub fn from_environment(helpers: &ExecHelpers) -> Result<(Option<PathBuf>, Self), String> {
        let (path, mut config) = match Self::load_default()? {
            Some((path, config)) => (Some(path), config),
            None => (None, Self::default()),
        };
        if let Some(value) = std::env::var_os(AUTH_CONFIG_ENV) {
            let value = value
                .into_string()
                .map_err(|_| format!("{AUTH_CONFIG_ENV} is not UTF-8"))?;
            config.apply_auth_config_env(&value)?;
        }
        config.detect_default_store(helpers);
        Ok((path, config))
    }

    /// Reads `path`: at most [`MAX_CONFIG_BYTES`] of UTF-8 JSON. Errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::read(path, file)
    }

    fn load_if_present(path: &Path) -> Result<Option<Self>, String> {
        match File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
            Ok(file) => Self::read(path, file).map(Some),
        }
    }

    fn read(path: &Path, file: File) -> Result<Self, String> {
        let bytes = crate::read_bounded(file, MAX_CONFIG_BYTES, &path.display().to_string())?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a `config.json` as configfile/file.go `LoadFromReader` does:
    /// Go's `encoding/json` (field names matched ignoring case, `null` as absent, the
    /// first JSON value only, an empty text as an empty file), then each entry's `auth`
    /// decoded as `decodeAuth` decodes it, replacing its `username` and `password`. A
    /// bad entry fails the whole file, as in Go. Errors are one line without any value.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let object = match first_json_value(text).map_err(|e| format!("not JSON ({e})"))? {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err("not a JSON object".into()),
        };
        let mut config = Self::default();
        for (key, value) in object_member(&object, "auths")?.into_iter().flatten() {
            let entry = auth_entry(value).map_err(|e| format!("auths[{}]: {e}", quoted(key)))?;
            config.auths.insert(key.clone(), entry);
        }
        for (key, value) in object_member(&object, "credHelpers")?.into_iter().flatten() {
            let helper = go_string(Some(value))
                .ok_or_else(|| format!("credHelpers[{}] is not a string", quoted(key)))?;
            config.cred_helpers.insert(key.clone(), helper);
        }
        config.creds_store = text_member(&object, "credsStore")?;
        Ok(config)
    }

    /// Layers `DOCKER_AUTH_CONFIG` (its value) over the file: an entry for exactly a
    /// lookup's key answers before any helper or `auths` (configfile/file.go
    /// `GetCredentialsStore`, memorystore/store.go `Get`). An empty value is no variable.
    ///
    /// The value is read as `parseEnvConfig` reads it: one JSON object with nothing but
    /// `auths`, each entry nothing but a non-empty `auth`. On an error `self` is left as it
    /// was: Docker prints a warning and goes on without the variable; the caller chooses.
    pub fn apply_auth_config_env(&mut self, value: &str) -> Result<(), String> {
        if value.is_empty() {
            return Ok(());
        }
        self.env_auths = parse_env_config(value).map_err(|e| format!("{AUTH_CONFIG_ENV}: {e}"))?;
        Ok(())
    }

    /// The registries the file names, as written: the keys of `auths`, then of
    /// `credHelpers`, each in byte order. `DOCKER_AUTH_CONFIG` is not the file's, so its
    /// entries are not among them.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.auths
            .keys()
            .chain(self.cred_helpers.keys())
            .map(String::as_str)
    }

    /// Whether the file configures credentials at all: a `credsStore`, a `credHelpers`
    /// entry or an `auths` entry (configfile/file.go `ContainsAuth`).
    pub fn contains_auth(&self) -> bool {
        !self.creds_store.is_empty() || !self.cred_helpers.is_empty() || !self.auths.is_empty()
    }

    /// When [`DockerConfigFile::contains_auth`] is false, makes the platform's default
    /// helper the `credsStore` if its program is on `helpers`' search path, as the docker
    /// CLI does on every start (config/config.go `LoadDefaultConfigFile`,
    /// credentials/default_store.go `DetectDefaultStore`). So a user who never logged in
    /// but has `docker-credential-secretservice` installed gets what that helper answers,
    /// as with `docker pull`.
    pub fn detect_default_store(&mut self, helpers: &ExecHelpers) {
        if !self.contains_auth() {
            if let Some(store) = helpers.default_store() {
                self.creds_store = store.to_string();
            }
        }
    }

    /// The helper (the name after [`HELPER_PREFIX`]) Docker would run for `registry`:
    /// `credHelpers[key]`, else `credsStore` (configfile/file.go
    /// `getConfiguredCredentialStore`, with the key of [`auth_key`]). `None` for the file
    /// store, which includes a `credHelpers` entry whose value is empty: it overrides
    /// `credsStore` with the file (`GetCredentialsStore` runs no helper for "").
    pub fn helper_for(&self, registry: &str) -> Option<&str> {
        let key = auth_key(registry);
        let helper = match self.cred_helpers.get(key) {
            Some(helper) if !key.is_empty() => helper,
            _ => &self.creds_store,
        };
        (!helper.is_empty()).then_some(helper.as_str())
    }

    /// The login Docker would use for `registry` (`host[:port]` as in an image reference:
    /// `docker.io`, `ghcr.io`, `localhost:5000`), running a helper through `helpers` when
    /// one is configured (configfile/file.go `GetAuthConfig`). Errors are a helper's.
    pub fn login_for(&self, registry: &str, helpers: &dyn CredentialHelpers) -> Result<Login, String> {
        if registry.is_empty() {
            return Err("no registry to find credentials for".into());
        }
        let key = auth_key(registry);
        // memorystore/store.go Get: the variable's entry for exactly the key, else the store.
        if let Some(entry) = self.env_auths.get(key) {
            return Ok(entry.login());
        }
        let stored = self.stored(key).cloned().unwrap_or_default();
        let Some(helper) = self.helper_for(registry) else {
            return Ok(stored.login());
        };
        // credentials/native_store.go Get: the file's entry (for what a helper does not
        // store, such as a registry token) with the helper's user, password and identity
        // token over it, all three emptied when the helper has none (getCredentialsFromStore
        // returns an empty answer for "not found").
        let mut entry = stored;
        entry.username.clear();
        entry.password = Secret::new("");
        entry.identity_token = Secret::new("");
        if let Some((username, secret)) = helpers.get(helper, key)? {
            // getCredentialsFromStore: the user `<token>` marks an identity token.
            if username == TOKEN_USERNAME {
                entry.identity_token = secret;
            } else {
                entry.username = username;
                entry.password = secret;
            }
        }
        Ok(entry.login())
    }

    /// credentials/file_store.go `Get`: `auths[key]`, else the first entry whose key
    /// [`convert_to_hostname`] makes `key` (so never for Docker Hub's key, which is a URL).
    fn stored(&self, key: &str) -> Option<&AuthConfig> {
        self.auths.get(key).or_else(|| {
            self.auths
                .iter()
                .find(|(stored, _)| convert_to_hostname(stored) == key)
                .map(|(_, entry)| entry)
        })
    }
}

/// config/config.go `Dir` joined with `config.json`, from the variables `var` reads.
fn config_path(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |v: OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    let dir = var(CONFIG_DIR_ENV)
        .and_then(non_empty)
        .or_else(|| var("HOME").and_then(non_empty).map(|home| home.join(".docker")))?;
    Some(dir.join("config.json"))
}

/// Go's `json.NewDecoder(r).Decode(&v)`: the first JSON value, if any (an input that is
/// empty or blank is `io.EOF`, which callers here take as nothing); what follows the value
/// is never read.
fn first_json_value(text: &str) -> Result<Option<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()
        .transpose()
}

/// The member of `object` that Go's `encoding/json` decodes into the field `name`: the key
/// spelled exactly so, else one equal to it ignoring case. (Go assigns every such key in
/// document order, so the last wins; a file with both spellings is not one Docker writes.)
fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// A string, with absent and `null` as empty (a Go string field); `None` for another type.
fn go_string(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    }
}

/// The string member `name` ([`member`], [`go_string`]); another type is an error naming it.
fn text_member(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    go_string(member(object, name)).ok_or_else(|| format!("`{name}` is not a string"))
}

/// The object member `name` (a Go map field); absent and `null` are `None`.
fn object_member<'a>(
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match member(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(members)) => Ok(Some(members)),
        Some(_) => Err(format!("`{name}` is not an object")),
    }
}

/// A key as an error quotes it.
fn quoted(key: &str) -> String {
    format!("\"{}\"", shown(key))
}

/// One `auths` entry of a file (configfile/file.go `LoadFromReader`). A `null` entry is an
/// empty one, which still counts as present for the exact-key lookup.
fn auth_entry(value: &Value) -> Result<AuthConfig, String> {
    let object = match value {
        Value::Null => return Ok(AuthConfig::default()),
        Value::Object(object) => object,
        _ => return Err("is not an object".into()),
    };
    let mut entry = AuthConfig {
        username: text_member(object, "username")?,
        password: Secret::new(text_member(object, "password")?),
        identity_token: Secret::new(text_member(object, "identitytoken")?),
        registry_token: Secret::new(text_member(object, "registrytoken")?),
    };
    // Unused, but Go fails the file on its type all the same.
    text_member(object, "serveraddress")?;
    // LoadFromReader: a non-empty `auth` replaces `username` and `password`.
    let auth = text_member(object, "auth")?;
    if !auth.is_empty() {
        let (username, password) = decode_auth(&auth)?;
        entry.username = username;
        entry.password = password;
    }
    Ok(entry)
}

/// configfile/file.go `decodeAuth`: Go's `base64.StdEncoding` (standard alphabet, padding
/// required, `\r` and `\n` skipped, not strict: non-zero trailing bits are accepted) of
/// `USER:PASSWORD`, cut at the first colon; no colon or an empty user is an error. The
/// password is trimmed of NUL bytes at both ends (Go decodes into a buffer padded with
/// them). Text that is not UTF-8, which Go would carry as bytes, is an error here.
fn decode_auth(auth: &str) -> Result<(String, Secret), String> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    const GO_STD_ENCODING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let cleaned: String = auth.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let bytes = GO_STD_ENCODING
        .decode(cleaned)
        .map_err(|_| "`auth` is not base64".to_string())?;
    let decoded = String::from_utf8(bytes).map_err(|_| "`auth` is not base64 of UTF-8 text".to_string())?;
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Ok((user.to_string(), Secret::new(password.trim_matches('\0'))))
        }
        _ => Err("`auth` is not base64 of USER:PASSWORD".into()),
    }
}

/// configfile/file.go `parseEnvConfig`.
fn parse_env_config(value: &str) -> Result<BTreeMap<String, AuthConfig>, String> {
    let mut stream = serde_json::Deserializer::from_str(value).into_iter::<Value>();
    let first = stream.next().transpose().map_err(|e| format!("not JSON ({e})"))?;
    // decoder.More: another value follows unless the rest is blank or starts with `]`/`}`.
    let rest = value[stream.byte_offset()..].trim_start_matches([' ', '\t', '\n', '\r']);
    if !rest.is_empty() && !rest.starts_with([']', '}']) {
        return Err("more than one JSON object".into());
    }
    let object = match first {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err("not a JSON object".into()),
    };
    // DisallowUnknownFields, with Go's matching of names ignoring case.
    let only = |object: &Map<String, Value>, field: &str| match object
        .keys()
        .find(|key| !key.eq_ignore_ascii_case(field))
    {
        Some(key) => Err(format!("unknown field \"{}\"", shown(key))),
        None => Ok(()),
    };
    only(&object, "auths")?;
    let mut auths = BTreeMap::new();
    for (key, entry) in object_member(&object, "auths")?.into_iter().flatten() {
        let fail = |why: &str| format!("auths[{}]: {why}", quoted(key));
        let auth = match entry {
            Value::Null => String::new(),
            Value::Object(entry) => {
                only(entry, "auth").map_err(|e| fail(&e))?;
                text_member(entry, "auth").map_err(|e| fail(&e))?
            }
            _ => return Err(fail("is not an object")),
        };
        if auth.is_empty() {
            return Err(fail("has no `auth`"));
        }
        let (username, password) = decode_auth(&auth).map_err(|e| fail(&e))?;
        let entry = AuthConfig {
            username,
            password,
            ..AuthConfig::default()
        };
        auths.insert(key.clone(), entry);
    }
    Ok(auths)
}

/// Runs credential helper programs (`docker-credential-NAME get`) found on a search path,
/// as docker-credential-helpers' client/client.go `Get` does: the server on stdin, the
/// answer on stdout, stderr passed through to ours (a helper may print a login hint
/// there), the process's environment. Unlike Docker's client, it waits at most a timeout
/// (then kills the helper) and reads at most [`MAX_HELPER_OUTPUT_BYTES`].
#[derive(Debug, Clone)]
pub struct ExecHelpers {
    search_path: OsString,
    timeout: Duration,
    /// Variables removed from one helper's environment: (helper, variable).
    removed: Vec<(String, OsString)>,
}

impl ExecHelpers {
    /// Helpers found on `search_path` (`PATH`'s syntax), waited for at most
    /// [`DEFAULT_HELPER_TIMEOUT`].
    pub fn new(search_path: impl Into<OsString>) -> Self {
        ExecHelpers {
            search_path: search_path.into(),
            timeout: DEFAULT_HELPER_TIMEOUT,
            removed: Vec::new(),
        }
    }

    /// Helpers found on this process's `PATH` (none when it is unset, as in Go).
    pub fn from_process() -> Self {
        Self::new(std::env::var_os("PATH").unwrap_or_default())
    }

    /// Waits at most `timeout` for each helper.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `helper` without the variable `var`: the host runs its own helper without the
    /// variable that would make it fetch the component being fetched.
    pub fn without_env_for(mut self, helper: &str, var: &str) -> Self {
        self.removed.push((helper.to_string(), var.into()));
        self
    }

    /// The program of `helper` (`docker-credential-<helper>`) on the search path.
    pub fn find(&self, helper: &str) -> Option<PathBuf> {
        // A name with a path separator would make Go's exec run it relative to the working
        // directory; a config file's helper name is a name, not a path.
        if helper.is_empty() || helper.contains(['/', '\\', '\0']) {
            return None;
        }
        self.find_program(&format!("{HELPER_PREFIX}{helper}"))
    }

    /// Go's `exec.LookPath`: the first regular, executable file `name` in a directory of
    /// the search path. Relative directories (an empty entry is `.`) are skipped, where Go
    /// refuses the result (`exec.ErrDot`): never a helper from the working directory.
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.search_path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|path| is_executable(path))
    }

    /// The platform's default helper, when its program is on the search path
    /// (credentials/default_store.go `DetectDefaultStore` and `defaultCredentialsStore`:
    /// `pass` on Linux when the `pass` program is found, else `secretservice`;
    /// `osxkeychain` on macOS; `wincred` on Windows; none elsewhere).
    pub fn default_store(&self) -> Option<&'static str> {
        let store = if cfg!(target_os = "linux") {
            if self.find_program("pass").is_some() {
                "pass"
            } else {
                "secretservice"
            }
        } else if cfg!(target_os = "macos") {
            "osxkeychain"
        } else if cfg!(windows) {
            "wincred"
        } else {
            return None;
        };
        self.find(store).map(|_| store)
    }
}

impl CredentialHelpers for ExecHelpers {
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, String> {
        let name = format!("{HELPER_PREFIX}{helper}");
        let fail = |why: String| format!("credential helper {} for {}: {why}", shown(&name), shown(server));
        let program = self
            .find(helper)
            .ok_or_else(|| fail("not found on PATH".into()))?;
        let removed = self
            .removed
            .iter()
            .filter(|(h, _)| h == helper)
            .map(|(_, var)| var.as_os_str());
        let (status, stdout) = run_get(&program, &name, server, self.timeout, removed).map_err(fail)?;
        answer(status, &stdout).map_err(fail)
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// How often the exit status is polled once stdout has closed (the exit follows at once).
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(20);

/// Runs `program get` with `server` on stdin; its exit status and stdout, or why not (one
/// line, no output).
fn run_get<'a>(
    program: &Path,
    name: &str,
    server: &str,
    timeout: Duration,
    removed: impl Iterator<Item = &'a std::ffi::OsStr>,
) -> Result<(ExitStatus, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let mut command = Command::new(program);
    for var in removed {
        command.env_remove(var);
    }
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // client/command.go runs the name, not the path: argv[0] is `docker-credential-NAME`,
    // which a multi-call program (ours among them) dispatches on.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::arg0(&mut command, name);
    let mut child = command.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let timed_out = || format!("no answer within {}", seconds(timeout));

    // client/client.go Get: the server on stdin, with no newline, then end of input. From
    // a thread, so that a helper that never reads cannot block us past the deadline.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let server = server.to_string();
    thread::spawn(move || {
        // A helper that exits without reading breaks the pipe: its exit status tells why.
        let _ = stdin.write_all(server.as_bytes());
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(crate::read_bounded(stdout, MAX_HELPER_OUTPUT_BYTES, "its output"));
    });
    // Stdout closes when the helper exits. A process the helper started that keeps it open
    // outlives the deadline only in that thread, which ends when that process does.
    let stdout = match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            kill(&mut child);
            return Err(e);
        }
        Err(_) => {
            kill(&mut child);
            return Err(timed_out());
        }
    };
    let mut poll = FIRST_POLL;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status, stdout)),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(poll);
                poll = (poll * 2).min(MAX_POLL);
            }
            Ok(None) => {
                kill(&mut child);
                return Err(timed_out());
            }
            Err(e) => {
                kill(&mut child);
                return Err(format!("waiting for it: {e}"));
            }
        }
    }
}

/// Kills the helper and reaps it. What it started itself lives on: helpers run in our
/// process group, as Docker runs them, so that Ctrl-C reaches them with us and one that
/// asks something on the terminal can read it; a group of their own would let this kill
/// them whole, at the cost of both.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `1s`, `1.5s`.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// A finished `get`'s answer (client/client.go `Get`).
fn answer(status: ExitStatus, stdout: &[u8]) -> Result<Option<(String, Secret)>, String> {
    let text = String::from_utf8_lossy(stdout);
    if !status.success() {
        // credentials/error.go IsErrCredentialsNotFoundMessage: a failed `get` whose
        // stdout, trimmed, is exactly the not-found message has no credentials.
        if text.trim() == NOT_FOUND {
            return Ok(None);
        }
        // A helper prints its error on stdout (credentials/credentials.go Serve): a
        // message, shown cut and redacted; but never what looks like an answer.
        let message = one_line(&text, 200);
        return Err(if message.is_empty() {
            format!("failed ({status})")
        } else if message.starts_with('{') {
            format!("failed ({status}), printing JSON")
        } else {
            format!("failed ({status}): {message}")
        });
    }
    // The output of a successful `get` is credentials: no error below quotes any of it,
    // nor serde's messages, which would.
    let text = std::str::from_utf8(stdout).map_err(|_| "printed an answer that is not UTF-8".to_string())?;
    // json.NewDecoder(...).Decode into Credentials: the first JSON value, the fields
    // ServerURL, Username and Secret matched ignoring case, others ignored; `null` and
    // missing fields are empty. No output at all is Go's io.EOF, an error.
    let object = match first_json_value(text) {
        Ok(None) => return Err("printed nothing".into()),
        Err(_) => return Err("printed an answer that is not JSON".into()),
        Ok(Some(Value::Null)) => Map::new(),
        Ok(Some(Value::Object(object))) => object,
        Ok(Some(_)) => return Err("printed an answer that is not a JSON object".into()),
    };
    let field = |name: &str| {
        go_string(member(&object, name)).ok_or_else(|| format!("printed a `{name}` that is not a string"))
    };
    field("ServerURL")?;
    Ok(Some((field("Username")?, Secret::new(field("Secret")?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn basic(username: &str, password: &str) -> Login {
        Login::Basic {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// A file with one `auths` entry for `key`.
    fn with_key(key: &str, entry: &str) -> DockerConfigFile {
        let text = format!(
            r#"{{"auths": {{{}: {entry}}}}}"#,
            serde_json::to_string(key).unwrap()
        );
        DockerConfigFile::from_json(&text).unwrap()
    }

    /// Helpers that must not run.
    struct NoHelpers;
    impl CredentialHelpers for NoHelpers {
        fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, String> {
            panic!("helper {helper} ran for {server}")
        }
    }

    /// A fake helper's answer: user and secret, none, or an error.
    type FakeAnswer = Result<Option<(&'static str, &'static str)>, &'static str>;

    /// Answers from a table of (helper, server, answer), and records each call.
    #[derive(Default)]
    struct FakeHelpers {
        answers: Vec<(&'static str, &'static str, FakeAnswer)>,
        calls: RefCell<Vec<(String, String)>>,
    }
    impl CredentialHelpers for FakeHelpers {
        fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, String> {
            self.calls.borrow_mut().push((helper.into(), server.into()));
            let (_, _, answer) = self
                .answers
                .iter()
                .find(|(h, s, _)| *h == helper && *s == server)
                .unwrap_or_else(|| panic!("no answer for {helper} {server}"));
            answer
                .map(|found| found.map(|(u, s)| (u.to_string(), Secret::new(s))))
                .map_err(str::to_string)
        }
    }

    #[test]
    fn docker_hub_has_one_key() {
        for (registry, key) in [
            ("docker.io", DOCKER_HUB_KEY),
            ("index.docker.io", DOCKER_HUB_KEY),
            ("registry-1.docker.io", "registry-1.docker.io"),
            ("Docker.io", "Docker.io"),
            ("ghcr.io", "ghcr.io"),
            ("localhost:5000", "localhost:5000"),
        ] {
            assert_eq!(auth_key(registry), key, "{registry}");
        }
    }

    /// Every row is what docker/cli's ConvertToHostname answers (checked by running a copy
    /// of it).
    #[test]
    fn keys_convert_to_hosts_as_docker_converts_them() {
        for (key, host) in [
            ("https://index.docker.io/v1/", "index.docker.io"),
            ("https://ghcr.io", "ghcr.io"),
            ("https://ghcr.io/v2/", "ghcr.io"),
            ("http://localhost:5000", "localhost:5000"),
            ("http://localhost:5000/v2/", "localhost:5000"),
            ("https://Registry.Example.COM/", "Registry.Example.COM"),
            ("https://user:pw@host.example:8443/x", "host.example:8443"),
            ("https://host.example:443", "host.example:443"),
            ("https://host.example:/", "host.example"),
            ("https://host.example?x=1", "host.example"),
            ("https://host.example#frag", "host.example"),
            ("https://[::1]:5000/v2/", "[::1]:5000"),
            ("https://[::1]/v2/", "::1"),
            ("https://::1:5000/v2/", "[::1]:5000"),
            // Go brackets what it takes for an address and a port.
            ("https://::1/v2/", "[:]:1"),
            ("https://host.example:abc/", "host.example:abc"),
            ("https://bad host/", "bad host"),
            ("https:///v2/", "https:"),
            ("https://:5000/", ":5000"),
            ("1https://host.example/", "host.example"),
            ("ghcr.io", "ghcr.io"),
            ("ghcr.io/v2/", "ghcr.io"),
            ("localhost:5000/v2", "localhost:5000"),
            ("host.example?x", "host.example?x"),
            ("", ""),
        ] {
            assert_eq!(convert_to_hostname(key), host, "{key:?}");
        }
    }

    #[test]
    fn auths_keys_match_in_every_form_docker_accepts() {
        let entry = format!(r#"{{"auth": "{}"}}"#, b64("alice:pw"));
        let alice = basic("alice", "pw");
        for (key, registry, found) in [
            ("ghcr.io", "ghcr.io", true),
            ("https://ghcr.io", "ghcr.io", true),
            ("https://ghcr.io/v2/", "ghcr.io", true),
            ("http://ghcr.io/v1/", "ghcr.io", true),
            ("ghcr.io/v2/", "ghcr.io", true),
            ("https://someone@ghcr.io/", "ghcr.io", true),
            ("localhost:5000", "localhost:5000", true),
            ("http://localhost:5000/v2/", "localhost:5000", true),
            ("http://[::1]:5000/v2/", "[::1]:5000", true),
            ("https://index.docker.io/v1/", "docker.io", true),
            ("https://index.docker.io/v1/", "index.docker.io", true),
            // Hub's key is a URL: only that exact key matches it.
            ("docker.io", "docker.io", false),
            ("index.docker.io", "docker.io", false),
            ("https://index.docker.io/v2/", "docker.io", false),
            ("https://registry-1.docker.io/v2/", "docker.io", false),
            // Hosts are compared as written: no lowercasing, no default port.
            ("GHCR.io", "ghcr.io", false),
            ("ghcr.io:443", "ghcr.io", false),
            ("https://ghcr.io:443", "ghcr.io", false),
            ("localhost:5000", "localhost", false),
            ("localhost", "localhost:5000", false),
            ("ghcr.io.evil.example", "ghcr.io", false),
        ] {
            let login = with_key(key, &entry).login_for(registry, &NoHelpers).unwrap();
            let expected = if found { alice.clone() } else { Login::Anonymous };
            assert_eq!(login, expected, "key {key:?}, registry {registry:?}");
        }
    }

    #[test]
    fn the_exact_key_wins_then_the_first_converted_key() {
        let config = DockerConfigFile::from_json(&format!(
            r#"{{"auths": {{
                "https://ghcr.io/v2/": {{"auth": "{}"}},
                "http://ghcr.io": {{"auth": "{}"}},
                "ghcr.io": {{"auth": "{}"}},
                "https://quay.io/v2/": {{"auth": "{}"}},
                "http://quay.io": {{"auth": "{}"}},
                "https://empty.example": {{"auth": "{}"}},
                "empty.example": null
            }}}}"#,
            b64("converted:1"),
            b64("converted:2"),
            b64("exact:3"),
            b64("quay:4"),
            b64("quay:5"),
            b64("converted:6"),
        ))
        .unwrap();
        assert_eq!(
            config.login_for("ghcr.io", &NoHelpers).unwrap(),
            basic("exact", "3")
        );
        assert_eq!(
            config.login_for("quay.io", &NoHelpers).unwrap(),
            basic("quay", "5"),
            "the first in byte order: `http:` before `https:`"
        );
        assert_eq!(
            config.login_for("empty.example", &NoHelpers).unwrap(),
            Login::Anonymous,
            "an exact entry, even empty, hides the converted ones"
        );
    }

    #[test]
    fn auth_decodes_as_docker_decodes_it() {
        for (auth, expected) in [
            (b64("alice:pw"), Ok(basic("alice", "pw"))),
            (b64("alice:pa:ss"), Ok(basic("alice", "pa:ss"))),
            (b64("alice:pw\0\0"), Ok(basic("alice", "pw"))),
            (b64("alice:\0pw"), Ok(basic("alice", "pw"))),
            // Go skips newlines, and is not strict about the unused bits.
            (
                format!("{}\r\n{}", &b64("alice:pw")[..4], &b64("alice:pw")[4..]),
                Ok(basic("alice", "pw")),
            ),
            ("YWxpY2U6cGR=".into(), Ok(basic("alice", "pd"))),
            // An empty password is no basic login for Docker's registry client.
            (b64("alice:"), Ok(Login::Anonymous)),
            (b64(":pw"), Err("`auth` is not base64 of USER:PASSWORD")),
            (b64("alice"), Err("`auth` is not base64 of USER:PASSWORD")),
            ("YWxpY2U6cHc".into(), Err("`auth` is not base64")),
            ("!!!!".into(), Err("`auth` is not base64")),
            ("YWxpY2U6cHc=YQ==".into(), Err("`auth` is not base64")),
            ("_-__".into(), Err("`auth` is not base64")),
            ("/w==".into(), Err("`auth` is not base64 of UTF-8 text")),
        ] {
            let text = format!(
                r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
                auth.escape_default()
            );
            let result =
                DockerConfigFile::from_json(&text).map(|c| c.login_for("r.example", &NoHelpers).unwrap());
            let expected = expected.map_err(|e| format!("auths[\"r.example\"]: {e}"));
            assert_eq!(result, expected, "{auth:?}");
        }
    }

    #[test]
    fn auth_replaces_the_user_and_password_fields_which_serve_alone() {
        let both = format!(
            r#"{{"username": "u", "password": "p", "auth": "{}"}}"#,
            b64("alice:pw")
        );
        assert_eq!(
            with_key("r.example", &both)
                .login_for("r.example", &NoHelpers)
                .unwrap(),
            basic("alice", "pw")
        );
        let fields = r#"{"username": "u", "password": "p", "auth": ""}"#;
        assert_eq!(
            with_key("r.example", fields)
                .login_for("r.example", &NoHelpers)
                .unwrap(),
            basic("u", "p")
        );
        let no_password = r#"{"username": "u"}"#;
        assert_eq!(
            with_key("r.example", no_password)
                .login_for("r.example", &NoHelpers)
                .unwrap(),
            Login::Anonymous
        );
    }

    #[test]
    fn tokens_beat_a_password() {
        let acr = format!(
            r#"{{"auth": "{}", "identitytoken": "refresh-me"}}"#,
            b64("00000000-0000-0000-0000-000000000000:")
        );
        assert_eq!(
            with_key("acr.example", &acr)
                .login_for("acr.example", &NoHelpers)
                .unwrap(),
            Login::IdentityToken(Secret::new("refresh-me"))
        );
        let registry = format!(
            r#"{{"auth": "{}", "identitytoken": "x", "registrytoken": "bearer-me"}}"#,
            b64("u:p")
        );
        assert_eq!(
            with_key("r.example", &registry)
                .login_for("r.example", &NoHelpers)
                .unwrap(),
            Login::RegistryToken(Secret::new("bearer-me"))
        );
    }

    #[test]
    fn field_names_match_ignoring_case_as_in_go() {
        let text = format!(
            r#"{{"Auths": {{"r.example": {{"Auth": "{}"}}, "t.example": {{"IdentityToken": "t"}}}},
                "CredHelpers": {{"h.example": "h"}}}}"#,
            b64("alice:pw")
        );
        let config = DockerConfigFile::from_json(&text).unwrap();
        assert_eq!(
            config.login_for("r.example", &NoHelpers).unwrap(),
            basic("alice", "pw")
        );
        assert_eq!(
            config.login_for("t.example", &NoHelpers).unwrap(),
            Login::IdentityToken(Secret::new("t"))
        );
        assert_eq!(config.helper_for("h.example"), Some("h"));
    }

    #[test]
    fn files_parse_as_go_decodes_them() {
        for empty in [
            "",
            "  \n",
            "null",
            "{}",
            r#"{"auths": null, "credHelpers": null, "credsStore": null}"#,
        ] {
            let config = DockerConfigFile::from_json(empty).unwrap();
            assert!(!config.contains_auth(), "{empty:?}");
        }
        // Decode reads one value; what follows is never looked at.
        let config = DockerConfigFile::from_json(r#"{"credsStore": "pass"} trailing {"#).unwrap();
        assert_eq!(config.helper_for("ghcr.io"), Some("pass"));
        // Settings other than credentials are not read.
        assert!(DockerConfigFile::from_json(r#"{"psFormat": 5, "proxies": []}"#).is_ok());
        for (text, error) in [
            ("{", "not JSON (EOF while parsing an object at line 1 column 1)"),
            ("[]", "not a JSON object"),
            (r#"{"auths": []}"#, "`auths` is not an object"),
            (r#"{"auths": {"r": "x"}}"#, "auths[\"r\"]: is not an object"),
            (
                r#"{"auths": {"r": {"password": 5}}}"#,
                "auths[\"r\"]: `password` is not a string",
            ),
            (r#"{"credsStore": true}"#, "`credsStore` is not a string"),
            (
                r#"{"credHelpers": {"r": 1}}"#,
                "credHelpers[\"r\"] is not a string",
            ),
        ] {
            assert_eq!(DockerConfigFile::from_json(text).unwrap_err(), error, "{text}");
        }
    }

    #[test]
    fn cred_helpers_beat_creds_store_which_beats_auths() {
        let config = DockerConfigFile::from_json(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{a}"}}, "quay.io": {{"auth": "{a}"}},
                "file.example": {{"auth": "{a}"}}, "https://index.docker.io/v1/": {{"auth": "{a}"}}}},
                "credHelpers": {{"ghcr.io": "gh", "file.example": "", "docker.io": "never",
                                 "https://index.docker.io/v1/": "hub"}},
                "credsStore": "desktop"}}"#,
            a = b64("from:file")
        ))
        .unwrap();
        assert_eq!(config.helper_for("ghcr.io"), Some("gh"));
        assert_eq!(config.helper_for("quay.io"), Some("desktop"));
        assert_eq!(
            config.helper_for("file.example"),
            None,
            "an empty credHelpers value is the file"
        );
        assert_eq!(
            config.helper_for("docker.io"),
            Some("hub"),
            "Hub's helper is keyed by its URL"
        );
        assert_eq!(config.helper_for("index.docker.io"), Some("hub"));
        let helpers = FakeHelpers {
            answers: vec![
                ("gh", "ghcr.io", Ok(Some(("gh-user", "gh-token")))),
                ("desktop", "quay.io", Ok(None)),
                ("hub", DOCKER_HUB_KEY, Ok(Some((TOKEN_USERNAME, "hub-refresh")))),
            ],
            ..FakeHelpers::default()
        };
        assert_eq!(
            config.login_for("ghcr.io", &helpers).unwrap(),
            basic("gh-user", "gh-token")
        );
        assert_eq!(
            config.login_for("quay.io", &helpers).unwrap(),
            Login::Anonymous,
            "the store has none: the file's password is not used"
        );
        assert_eq!(
            config.login_for("file.example", &helpers).unwrap(),
            basic("from", "file")
        );
        assert_eq!(
            config.login_for("docker.io", &helpers).unwrap(),
            Login::IdentityToken(Secret::new("hub-refresh"))
        );
        assert_eq!(
            *helpers.calls.borrow(),
            [
                ("gh".to_string(), "ghcr.io".to_string()),
                ("desktop".into(), "quay.io".into()),
                ("hub".into(), DOCKER_HUB_KEY.into()),
            ],
            "each helper is asked for the key, Hub's as its URL"
        );
    }

    #[test]
    fn a_helper_keeps_the_files_registry_token_and_its_errors_are_the_answer() {
        let config = DockerConfigFile::from_json(
            r#"{"auths": {"r.example": {"registrytoken": "kept"}}, "credsStore": "s"}"#,
        )
        .unwrap();
        let helpers = FakeHelpers {
            answers: vec![
                ("s", "r.example", Ok(Some(("u", "p")))),
                (
                    "s",
                    "broken.example",
                    Err("credential helper docker-credential-s for broken.example: boom"),
                ),
            ],
            ..FakeHelpers::default()
        };
        assert_eq!(
            config.login_for("r.example", &helpers).unwrap(),
            Login::RegistryToken(Secret::new("kept"))
        );
        assert_eq!(
            config.login_for("broken.example", &helpers).unwrap_err(),
            "credential helper docker-credential-s for broken.example: boom"
        );
        assert!(config.login_for("", &helpers).is_err());
    }

    #[test]
    fn docker_auth_config_answers_first_for_its_exact_keys() {
        let mut config = DockerConfigFile::from_json(r#"{"credsStore": "s"}"#).unwrap();
        let value = format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "https://index.docker.io/v1/": {{"auth": "{}"}},
                            "https://quay.io": {{"auth": "{}"}}}}}}"#,
            b64("env:1"),
            b64("hub:2"),
            b64("quay:3")
        );
        config.apply_auth_config_env(&value).unwrap();
        assert_eq!(
            config.login_for("ghcr.io", &NoHelpers).unwrap(),
            basic("env", "1")
        );
        assert_eq!(
            config.login_for("docker.io", &NoHelpers).unwrap(),
            basic("hub", "2")
        );
        let helpers = FakeHelpers {
            answers: vec![("s", "quay.io", Ok(None))],
            ..FakeHelpers::default()
        };
        assert_eq!(
            config.login_for("quay.io", &helpers).unwrap(),
            Login::Anonymous,
            "the variable matches keys exactly, with no conversion"
        );
        assert!(!DockerConfigFile::default().contains_auth());
    }

    #[test]
    fn docker_auth_config_is_strict_and_an_error_changes_nothing() {
        let good = format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, b64("env:1"));
        for (value, error) in [
            (
                r#"{"auths": {}, "credsStore": "x"}"#.to_string(),
                "unknown field \"credsStore\"",
            ),
            (
                r#"{"auths": {"r": {"username": "u"}}}"#.into(),
                "auths[\"r\"]: unknown field \"username\"",
            ),
            (r#"{"auths": {"r": {}}}"#.into(), "auths[\"r\"]: has no `auth`"),
            (r#"{"auths": {"r": null}}"#.into(), "auths[\"r\"]: has no `auth`"),
            (
                r#"{"auths": {"r": {"auth": "%%"}}}"#.into(),
                "auths[\"r\"]: `auth` is not base64",
            ),
            (format!("{good} {good}"), "more than one JSON object"),
            ("[1]".into(), "not a JSON object"),
            (
                "{".into(),
                "not JSON (EOF while parsing an object at line 1 column 1)",
            ),
        ] {
            let mut config = DockerConfigFile::default();
            config.apply_auth_config_env(&good).unwrap();
            let err = config.apply_auth_config_env(&value).unwrap_err();
            assert_eq!(err, format!("DOCKER_AUTH_CONFIG: {error}"), "{value}");
            assert_eq!(
                config.login_for("ghcr.io", &NoHelpers).unwrap(),
                basic("env", "1")
            );
        }
        let mut config = DockerConfigFile::default();
        for fine in ["", "  ", "null", r#"{"AUTHS": null}"#, r#"{"auths": {}} }"#] {
            config.apply_auth_config_env(fine).unwrap();
        }
        let secret = format!(
            r#"{{"auths": {{"r": {{"auth": "{}", "x": 1}}}}}}"#,
            b64("u:hunter2-secret")
        );
        let err = config.apply_auth_config_env(&secret).unwrap_err();
        assert!(
            !err.contains("hunter2") && !err.contains(&b64("u:hunter2-secret")),
            "{err}"
        );
    }

    #[test]
    fn the_config_path_is_docker_config_else_home() {
        let vars = |pairs: &'static [(&str, &str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            config_path(vars(&[("DOCKER_CONFIG", "/etc/d"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/etc/d/config.json"))
        );
        assert_eq!(
            config_path(vars(&[("DOCKER_CONFIG", ""), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert_eq!(config_path(vars(&[("HOME", "")])), None);
    }

    #[test]
    fn files_are_read_bounded_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(
            DockerConfigFile::load_if_present(&path).unwrap().map(|_| ()),
            None
        );
        assert!(DockerConfigFile::load(&path)
            .unwrap_err()
            .starts_with(&path.display().to_string()));
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, b64("a:b")),
        )
        .unwrap();
        let config = DockerConfigFile::load_if_present(&path).unwrap().unwrap();
        assert_eq!(config.login_for("ghcr.io", &NoHelpers).unwrap(), basic("a", "b"));
        std::fs::write(&path, "not json, password=hunter2").unwrap();
        let err = DockerConfigFile::load(&path).unwrap_err();
        assert_eq!(
            err,
            format!("{}: not JSON (expected ident at line 1 column 2)", path.display())
        );
        std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let err = DockerConfigFile::load(&path).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let err = DockerConfigFile::load_if_present(dir.path()).unwrap_err();
        assert!(
            err.contains(&dir.path().display().to_string()),
            "a directory: {err}"
        );
    }

    #[test]
    fn logins_never_print_secrets() {
        let login = basic("alice", "hunter2-secret");
        let shown = format!("{login} {login:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(login.to_string(), "user alice");
        assert_eq!(
            Login::IdentityToken(Secret::new("x")).to_string(),
            "an identity token"
        );
    }

    /// ExecHelpers against real programs: shell scripts on a search path of their own.
    #[cfg(unix)]
    mod exec {
        use super::*;

        /// The fake helper: answers by the server on its stdin.
        const FAKE_HELPER: &str = r#"#!/bin/sh
[ "$1" = get ] || { echo "unexpected arguments: $*"; exit 2; }
server=$(cat)
case "$server" in
found.example) printf '{"ServerURL":"%s","Username":"alice","Secret":"s3cret-value"}' "$server" ;;
https://index.docker.io/v1/) printf '{"Username":"<token>","Secret":"refresh"}\n' ;;
missing.example) echo "credentials not found in native keychain"; exit 1 ;;
failing.example) echo "error getting credentials - keychain is locked"; exit 3 ;;
jwt.example) echo "rejected eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"; exit 1 ;;
json.example) printf '{"Username":"u","Secret":"s3cret-value"}'; exit 1 ;;
hanging.example) exec sleep 10 ;;
garbage.example) echo "password=s3cret-value" ;;
text.example) echo '"s3cret-value"' ;;
empty.example) ;;
env.example) printf '{"Username":"%s","Secret":"s"}' "${FAKE_VAR:-unset}" ;;
*) echo "unknown server $server"; exit 4 ;;
esac
"#;

        /// Writing an executable while another thread forks can make its exec fail (ETXTBSY:
        /// the forked child holds the file open for writing until it execs). Scripts are
        /// written under the write lock; helpers run under the read lock.
        static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

        /// A directory holding `docker-credential-fake` (and a non-executable
        /// `docker-credential-noexec`), for the search path.
        fn helper_dir() -> tempfile::TempDir {
            use std::os::unix::fs::PermissionsExt as _;
            let _writing = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
            let dir = tempfile::tempdir().unwrap();
            for (name, mode) in [
                ("docker-credential-fake", 0o755),
                ("docker-credential-noexec", 0o644),
            ] {
                let path = dir.path().join(name);
                std::fs::write(&path, FAKE_HELPER).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            dir
        }

        fn exec_get(
            exec: &ExecHelpers,
            helper: &str,
            server: &str,
        ) -> Result<Option<(String, Secret)>, String> {
            let _running = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
            exec.get(helper, server)
        }

        fn exec_in(dir: &tempfile::TempDir) -> ExecHelpers {
            let path = std::env::join_paths(["/nonexistent-dir".as_ref(), dir.path()]).unwrap();
            ExecHelpers::new(path).with_timeout(Duration::from_secs(5))
        }

        #[test]
        fn a_real_helper_answers_on_the_protocol() {
            let dir = helper_dir();
            let exec = exec_in(&dir);
            assert_eq!(exec.find("fake"), Some(dir.path().join("docker-credential-fake")));
            assert_eq!(
                exec_get(&exec, "fake", "found.example").unwrap(),
                Some(("alice".to_string(), Secret::new("s3cret-value")))
            );
            // Through a config file, for Docker Hub's key and its identity token.
            let config = DockerConfigFile::from_json(r#"{"credsStore": "fake"}"#).unwrap();
            let _running = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
            assert_eq!(
                config.login_for("docker.io", &exec).unwrap(),
                Login::IdentityToken(Secret::new("refresh"))
            );
            assert_eq!(
                config.login_for("missing.example", &exec).unwrap(),
                Login::Anonymous
            );
        }

        #[test]
        fn a_variable_can_be_kept_from_one_helper() {
            // The test process's own environment is what helpers inherit: set a variable
            // only this test reads.
            std::env::set_var("FAKE_VAR", "inherited");
            let dir = helper_dir();
            let user = |exec: &ExecHelpers| exec_get(exec, "fake", "env.example").unwrap().unwrap().0;
            assert_eq!(user(&exec_in(&dir)), "inherited");
            assert_eq!(user(&exec_in(&dir).without_env_for("fake", "FAKE_VAR")), "unset");
            assert_eq!(
                user(&exec_in(&dir).without_env_for("other", "FAKE_VAR")),
                "inherited"
            );
        }

        #[test]
        fn a_real_helper_without_credentials_is_anonymous() {
            let dir = helper_dir();
            assert_eq!(exec_get(&exec_in(&dir), "fake", "missing.example").unwrap(), None);
        }

        #[test]
        fn a_missing_helper_is_named() {
            let dir = helper_dir();
            let exec = exec_in(&dir);
            for helper in ["absent", "noexec", "../fake", ""] {
                let err = exec_get(&exec, helper, "ghcr.io").unwrap_err();
                assert_eq!(
                    err,
                    format!("credential helper docker-credential-{helper} for ghcr.io: not found on PATH")
                );
            }
            let relative = ExecHelpers::new(format!(":.:{}", "relative/dir"));
            assert_eq!(relative.find("fake"), None);
        }

        #[test]
        fn a_failing_helper_is_an_error_with_its_message_cut_and_redacted() {
            let dir = helper_dir();
            let exec = exec_in(&dir);
            let err = exec_get(&exec, "fake", "failing.example").unwrap_err();
            assert_eq!(
                err,
                "credential helper docker-credential-fake for failing.example: \
                 failed (exit status: 3): error getting credentials - keychain is locked"
            );
            let err = exec_get(&exec, "fake", "jwt.example").unwrap_err();
            assert!(
                err.ends_with("failed (exit status: 1): rejected [redacted]"),
                "{err}"
            );
            let err = exec_get(&exec, "fake", "json.example").unwrap_err();
            assert!(err.ends_with("failed (exit status: 1), printing JSON"), "{err}");
            let err = exec_get(&exec, "fake", "other.example").unwrap_err();
            assert!(
                err.ends_with("failed (exit status: 4): unknown server other.example"),
                "{err}"
            );
        }

        #[test]
        fn a_helper_that_prints_no_credentials_json_is_an_error_that_quotes_nothing() {
            let dir = helper_dir();
            let exec = exec_in(&dir);
            for (server, why) in [
                ("garbage.example", "printed an answer that is not JSON"),
                ("text.example", "printed an answer that is not a JSON object"),
                ("empty.example", "printed nothing"),
            ] {
                let err = exec_get(&exec, "fake", server).unwrap_err();
                assert_eq!(
                    err,
                    format!("credential helper docker-credential-fake for {server}: {why}")
                );
            }
        }

        #[test]
        fn answers_decode_as_go_decodes_them() {
            use std::os::unix::process::ExitStatusExt as _;
            let ok = ExitStatus::from_raw(0);
            let found = |u: &str, s: &str| Ok(Some((u.to_string(), Secret::new(s))));
            assert_eq!(
                answer(ok, br#"{"username":"u","secret":"s"} more"#),
                found("u", "s")
            );
            assert_eq!(answer(ok, b"null"), found("", ""));
            assert_eq!(answer(ok, br#"{"ServerURL":"x"}"#), found("", ""));
            assert_eq!(
                answer(ok, br#"{"Secret": 5}"#),
                Err("printed a `Secret` that is not a string".into())
            );
            let failed = ExitStatus::from_raw(1 << 8);
            assert_eq!(
                answer(failed, b"  credentials not found in native keychain\n"),
                Ok(None)
            );
            assert_eq!(
                answer(ok, b"credentials not found in native keychain"),
                Err("printed an answer that is not JSON".into()),
                "the message counts only with a failure, as in client.go"
            );
        }

        #[test]
        fn a_hanging_helper_is_killed_at_the_timeout() {
            let dir = helper_dir();
            let exec = exec_in(&dir).with_timeout(Duration::from_millis(500));
            let started = Instant::now();
            let err = exec_get(&exec, "fake", "hanging.example").unwrap_err();
            assert_eq!(
                err,
                "credential helper docker-credential-fake for hanging.example: no answer within 0.5s"
            );
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3),
                "{elapsed:?}"
            );
        }

        #[test]
        fn a_helper_that_prints_without_end_is_stopped_at_the_bound() {
            let dir = tempfile::tempdir().unwrap();
            {
                use std::os::unix::fs::PermissionsExt as _;
                let _writing = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
                let path = dir.path().join("docker-credential-yes");
                std::fs::write(&path, "#!/bin/sh\nexec yes\n").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let exec = ExecHelpers::new(dir.path()).with_timeout(Duration::from_secs(5));
            let err = exec_get(&exec, "yes", "ghcr.io").unwrap_err();
            assert_eq!(
                err,
                format!(
                    "credential helper docker-credential-yes for ghcr.io: \
                     its output is larger than {MAX_HELPER_OUTPUT_BYTES} bytes"
                )
            );
        }
    }
}
