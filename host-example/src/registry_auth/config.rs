//! What Docker reads from `config.json` and `DOCKER_AUTH_CONFIG` for credentials, and
//! the login it makes of them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::exec::ExecHelpers;
use super::go_url::convert_to_hostname;
use super::{
    auth_key, AuthError, CredentialHelpers, Login, AUTH_CONFIG_ENV, CONFIG_DIR_ENV, MAX_CONFIG_BYTES,
    TOKEN_USERNAME,
};
use crate::secret::{shown, Secret};

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
    pub fn load_default() -> Result<Option<(PathBuf, Self)>, AuthError> {
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
    pub fn from_environment(helpers: &ExecHelpers) -> Result<(Option<PathBuf>, Self), AuthError> {
        let (path, mut config) = match Self::load_default()? {
            Some((path, config)) => (Some(path), config),
            None => (None, Self::default()),
        };
        if let Some(value) = std::env::var_os(AUTH_CONFIG_ENV) {
            let value = value
                .into_string()
                .map_err(|_| AuthError::Config(format!("{AUTH_CONFIG_ENV} is not UTF-8")))?;
            config.apply_auth_config_env(&value)?;
        }
        config.detect_default_store(helpers);
        Ok((path, config))
    }

    /// Reads `path`: at most [`MAX_CONFIG_BYTES`] of UTF-8 JSON. Errors name the file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let file = File::open(path).map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
        Self::read(path, file).map_err(AuthError::Config)
    }

    pub(super) fn load_if_present(path: &Path) -> Result<Option<Self>, AuthError> {
        match File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AuthError::Config(format!("{}: {e}", path.display()))),
            Ok(file) => Self::read(path, file).map(Some).map_err(AuthError::Config),
        }
    }

    fn read(path: &Path, file: File) -> Result<Self, String> {
        let bytes = cloudsmith_gen_core::read_bounded(file, MAX_CONFIG_BYTES, &path.display().to_string())
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a `config.json` as configfile/file.go `LoadFromReader` does:
    /// Go's `encoding/json` (field names matched ignoring case, `null` as absent, the
    /// first JSON value only, an empty text as an empty file), then each entry's `auth`
    /// decoded as `decodeAuth` decodes it, replacing its `username` and `password`. A
    /// bad entry fails the whole file, as in Go. Errors ([`AuthError::Config`]) are one
    /// line without any value.
    pub fn from_json(text: &str) -> Result<Self, AuthError> {
        Self::parse(text).map_err(AuthError::Config)
    }

    fn parse(text: &str) -> Result<Self, String> {
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
    pub fn apply_auth_config_env(&mut self, value: &str) -> Result<(), AuthError> {
        if value.is_empty() {
            return Ok(());
        }
        self.env_auths =
            parse_env_config(value).map_err(|e| AuthError::Config(format!("{AUTH_CONFIG_ENV}: {e}")))?;
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
    pub fn login_for(&self, registry: &str, helpers: &dyn CredentialHelpers) -> Result<Login, AuthError> {
        if registry.is_empty() {
            return Err(AuthError::NoRegistry);
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
pub(super) fn config_path(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |v: OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    let dir = var(CONFIG_DIR_ENV)
        .and_then(non_empty)
        .or_else(|| var("HOME").and_then(non_empty).map(|home| home.join(".docker")))?;
    Some(dir.join("config.json"))
}

/// Go's `json.NewDecoder(r).Decode(&v)`: the first JSON value, if any (an input that is
/// empty or blank is `io.EOF`, which callers here take as nothing); what follows the value
/// is never read.
pub(super) fn first_json_value(text: &str) -> Result<Option<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()
        .transpose()
}

/// The member of `object` that Go's `encoding/json` decodes into the field `name`: the key
/// spelled exactly so, else one equal to it ignoring case. (Go assigns every such key in
/// document order, so the last wins; a file with both spellings is not one Docker writes.)
pub(super) fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// A string, with absent and `null` as empty (a Go string field); `None` for another type.
pub(super) fn go_string(value: Option<&Value>) -> Option<String> {
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
