//! A disk cache of Cloudsmith access tokens, shared by the doors (`generate --token-cache`,
//! the kubelet credential provider, the Docker credential helper).
//!
//! An access token is reused until its `exp` minus a margin (at least
//! [`MIN_MARGIN`]), so a pull that starts with a cached token does not see it expire
//! halfway. A hit costs a file read: no Wasm runs and nothing goes on the network.
//!
//! # Keys
//!
//! An entry's name is a SHA-256 over the API base as written (`apiUrl` and `apiHost`),
//! the organisation, the service and the *identity* of the token source (a file path
//! with the token's issuer, subject and audiences; a kubeconfig context and service
//! account...). Never the OIDC token itself: it rotates (a projected token is replaced
//! every hour), and a key derived from it would both miss every time and put a function
//! of a secret in a file name.
//!
//! # Entries
//!
//! One JSON file per key, mode 0600, in a directory created 0700, written to a
//! temporary file and renamed into place so concurrent processes see the old entry or
//! the whole new one. An entry that is unreadable, corrupt, written for another key,
//! not owned by this user, readable by others, or expired is ignored and replaced by
//! the next store: the cache can only ever cost an exchange, never fail a call.
//!
//! This is a file of secrets (bearer tokens for the registry): see SECURITY.md for what
//! the file permissions protect and what they do not.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::Atomic;
use crate::flight::{self, Flight};
use crate::secret::{Credentials, Secret};
use crate::spec::GeneratorSpec;

/// The smallest margin before `exp` at which a cached token is dropped (the official
/// Cloudsmith CLI's).
pub const MIN_MARGIN: Duration = Duration::from_secs(60);
/// The default margin: long enough that an image pull started with a cached token
/// finishes before the token expires.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(300);
/// The environment variable that turns the cache off (any value but empty, `0` or `false`).
pub const DISABLE_ENV: &str = "CLOUDSMITH_NO_TOKEN_CACHE";
/// Marks our entry format; an entry without it is foreign.
const FORMAT: &str = "cloudsmith-gen/token-cache/v1";
/// An entry is a few hundred bytes; a bigger file is not ours.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// What an entry is for: the API, organisation, service and token source identity.
/// Only its digest is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    digest: String,
}

impl CacheKey {
    /// A key over the API base (`apiUrl` and `apiHost` as written, empty when absent),
    /// the organisation and service slugs, and the token source's identity.
    pub fn new(api_url: &str, api_host: &str, org: &str, service: &str, identity: &str) -> Self {
        let mut hasher = Sha256::new();
        // Length-prefixed fields, so no two different tuples hash the same bytes.
        for field in [FORMAT, api_url, api_host, org, service, identity] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        CacheKey {
            digest: hex(&hasher.finalize()),
        }
    }

    /// The key of a call: the API, organisation and service of `manifest` (JSON), the
    /// token source's `identity`, and whether the call may mint in another namespace
    /// than its target. `None` when the manifest names no organisation or service.
    pub fn for_call(manifest: &str, identity: &str, cross_namespace: bool) -> Option<Self> {
        let spec = GeneratorSpec::of_json(manifest)?;
        // The names NamespacePolicy's Debug prints, which earlier keys were made with.
        let namespaces = if cross_namespace {
            "AllowCrossNamespace"
        } else {
            "TargetOnly"
        };
        Some(CacheKey::new(
            spec.api_url.as_deref().unwrap_or(""),
            spec.api_host.as_deref().unwrap_or(""),
            spec.org_slug.as_deref()?,
            spec.service_slug.as_deref()?,
            &format!("{identity}|namespaces={namespaces}"),
        ))
    }

    /// The key's hex digest (the entry's file name without `.json`).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// An access token and its expiry, as cached.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedToken {
    /// The Cloudsmith access token (the password for user `token`).
    pub access_token: Secret,
    /// ESO's `expiry` text exactly as the generator returned it.
    pub expiry: String,
    /// The expiry in whole UNIX seconds.
    pub exp: u64,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &self.access_token)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl CachedToken {
    /// The access token inside `credentials` (decoded from `auth`, base64 of
    /// `token:<access token>`) and its expiry; `None` if `auth` is not of that form.
    pub fn from_credentials(credentials: &Credentials) -> Option<Self> {
        let access_token = credentials.access_token()?;
        let exp = whole_seconds(credentials.expiry())?;
        Some(CachedToken {
            access_token,
            expiry: credentials.expiry().to_string(),
            exp,
        })
    }

    /// The credentials the generator would have returned: the same `auth` and `expiry`.
    pub fn credentials(&self) -> Credentials {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("token:{}", self.access_token.expose()));
        Credentials::from_outputs(vec![
            ("auth".into(), auth.into_bytes()),
            ("expiry".into(), self.expiry.clone().into_bytes()),
        ])
        .expect("a cached token's expiry was checked when it was read or stored")
    }
}

/// The whole seconds of ESO's `expiry` text (`1700000000` or `1700000000.5`).
fn whole_seconds(expiry: &str) -> Option<u64> {
    expiry.split('.').next()?.parse().ok()
}

/// The outcome of a lookup, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A usable token.
    Hit(CachedToken),
    /// No entry.
    Miss,
    /// An entry that cannot be used (why); the next store replaces it.
    Unusable(String),
}

/// A directory of cached access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCache {
    dir: PathBuf,
    margin: Duration,
}

/// The entry file's content.
#[derive(Serialize, Deserialize)]
struct Entry {
    format: String,
    key: String,
    access_token: String,
    expiry: String,
    exp: u64,
}

impl TokenCache {
    /// A cache in `dir` (created 0700 on first store) with [`DEFAULT_MARGIN`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TokenCache {
            dir: dir.into(),
            margin: DEFAULT_MARGIN,
        }
    }

    /// The same cache with another margin before `exp`; raised to [`MIN_MARGIN`].
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin.max(MIN_MARGIN);
        self
    }

    /// The conventional location: `$XDG_CACHE_HOME/cloudsmith-gen/tokens`, else
    /// `~/.cache/cloudsmith-gen/tokens`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        crate::dirs::cache_dir().map(|d| d.join("tokens"))
    }

    /// The cache a door uses: in `dir`, else [`TokenCache::default_dir`]; `None` when
    /// turned off (`enabled` false, or [`DISABLE_ENV`]) or when there is no directory.
    pub fn configured(enabled: bool, dir: Option<&Path>) -> Option<TokenCache> {
        if !enabled || TokenCache::disabled_by_env() {
            return None;
        }
        dir.map(Path::to_path_buf)
            .or_else(TokenCache::default_dir)
            .map(TokenCache::new)
    }

    /// Whether [`DISABLE_ENV`] turns the cache off.
    pub fn disabled_by_env() -> bool {
        match std::env::var(DISABLE_ENV) {
            Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"),
            Err(std::env::VarError::NotPresent) => false,
            // Set to something: the user meant to turn it off.
            Err(std::env::VarError::NotUnicode(_)) => true,
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The margin before `exp` at which an entry stops being used.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// The entry path for `key`.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.digest))
    }

    /// Looks `key` up now.
    pub fn get(&self, key: &CacheKey) -> Lookup {
        self.get_at(key, now_unix())
    }

    /// Looks `key` up as of `now` (UNIX seconds): a hit only when the entry is ours,
    /// intact, for this key, and valid past `now + margin`.
    pub fn get_at(&self, key: &CacheKey, now: u64) -> Lookup {
        let path = self.entry_path(key);
        let text = match read_private(&path) {
            Ok(None) => return Lookup::Miss,
            Ok(Some(text)) => text,
            Err(why) => return Lookup::Unusable(why),
        };
        let entry: Entry = match serde_json::from_str(&text) {
            Ok(entry) => entry,
            Err(_) => return Lookup::Unusable("not a token cache entry".into()),
        };
        if entry.format != FORMAT {
            return Lookup::Unusable("foreign entry format".into());
        }
        if entry.key != key.digest {
            return Lookup::Unusable("entry written for another key".into());
        }
        if entry.access_token.is_empty() || whole_seconds(&entry.expiry) != Some(entry.exp) {
            return Lookup::Unusable("entry is inconsistent".into());
        }
        if entry.exp <= now.saturating_add(self.margin.as_secs()) {
            return Lookup::Unusable("entry expired or about to".into());
        }
        let token = CachedToken {
            access_token: Secret::new(entry.access_token),
            expiry: entry.expiry,
            exp: entry.exp,
        };
        // `credentials()` relies on the expiry being one the generator could return.
        if Credentials::from_outputs(vec![
            ("auth".into(), Vec::new()),
            ("expiry".into(), token.expiry.clone().into_bytes()),
        ])
        .is_err()
        {
            return Lookup::Unusable("entry is inconsistent".into());
        }
        Lookup::Hit(token)
    }

    /// Stores `token` under `key` (atomically, 0600). A token that would not be served
    /// (already within the margin) is still stored: the next lookup ignores it.
    pub fn put(&self, key: &CacheKey, token: &CachedToken) -> anyhow::Result<PathBuf> {
        create_private_dir(&self.dir)?;
        let entry = Entry {
            format: FORMAT.into(),
            key: key.digest.clone(),
            access_token: token.access_token.expose().to_string(),
            expiry: token.expiry.clone(),
            exp: token.exp,
        };
        let path = self.entry_path(key);
        let json = serde_json::to_vec(&entry).context("encoding the entry")?;
        Atomic::private("token cache directory").write(&path, &[&json])?;
        Ok(path)
    }

    /// Takes the single-flight lock of `key`'s entry (see [`crate::flight`]), waiting for
    /// another process's exchange until `until` at the latest. The leader looks the key
    /// up once more before it exchanges: the previous holder may just have stored it.
    pub fn lock(&self, key: &CacheKey, until: std::time::Instant) -> Flight {
        if let Err(e) = create_private_dir(&self.dir) {
            return Flight::Alone(format!("{e:#}"));
        }
        flight::lock(&self.entry_path(key), until)
    }

    /// How long `token` may still be used as of `now`: until `exp - margin`, zero when
    /// that has passed.
    pub fn remaining_at(&self, token: &CachedToken, now: u64) -> Duration {
        Duration::from_secs(
            token
                .exp
                .saturating_sub(now)
                .saturating_sub(self.margin.as_secs()),
        )
    }
}

/// Seconds since the UNIX epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads an entry only if it is a regular file (not a symlink), owned by this user and
/// closed to group and others; `Ok(None)` when there is none.
fn read_private(path: &Path) -> Result<Option<String>, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable entry: {e}")),
    };
    if !meta.file_type().is_file() {
        return Err("entry is not a regular file".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if meta.uid() != current_uid() {
            return Err("entry is owned by another user".into());
        }
        if meta.mode() & 0o077 != 0 {
            return Err("entry is readable or writable by others".into());
        }
    }
    if meta.len() > MAX_ENTRY_BYTES {
        return Err("entry is too large".into());
    }
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_ENTRY_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("unreadable entry: {e}"))?;
    Ok(Some(text))
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` 0700 (and its parents); an existing directory that others can enter
/// is made private, because it holds bearer tokens.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    crate::dirs::create_private_dir(dir, "token cache directory")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = fs::metadata(dir).with_context(|| format!("token cache directory {}", dir.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making token cache directory {} private", dir.display()))?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn token(exp: u64) -> CachedToken {
        CachedToken {
            access_token: Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln"),
            expiry: exp.to_string(),
            exp,
        }
    }

    fn key() -> CacheKey {
        CacheKey::new(
            "",
            "https://api.cloudsmith.io",
            "org",
            "svc",
            "file /t|iss|sub|aud",
        )
    }

    #[test]
    fn a_stored_token_is_served_until_exp_minus_the_margin() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path().join("tokens"));
        let t = token(NOW + 3600);
        cache.put(&key(), &t).unwrap();
        assert_eq!(cache.get_at(&key(), NOW), Lookup::Hit(t.clone()));
        let last_second = NOW + 3600 - DEFAULT_MARGIN.as_secs() - 1;
        assert_eq!(cache.get_at(&key(), last_second), Lookup::Hit(t.clone()));
        assert!(matches!(
            cache.get_at(&key(), last_second + 1),
            Lookup::Unusable(_)
        ));
        assert_eq!(cache.remaining_at(&t, NOW), Duration::from_secs(3600 - 300));
        assert_eq!(cache.remaining_at(&t, NOW + 4000), Duration::ZERO);
    }

    #[test]
    fn the_margin_is_at_least_a_minute() {
        let cache = TokenCache::new("/x").with_margin(Duration::from_secs(5));
        assert_eq!(cache.margin(), MIN_MARGIN);
    }

    #[cfg(unix)]
    #[test]
    fn entries_are_private_files_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path().join("a/tokens"));
        let path = cache.put(&key(), &token(NOW + 3600)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{}.json", key().digest())
        );
        // The OIDC token is not part of the key, and no temporary file is left behind.
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
    }

    #[test]
    fn keys_differ_by_every_field() {
        let base = key();
        for other in [
            CacheKey::new(
                "x",
                "https://api.cloudsmith.io",
                "org",
                "svc",
                "file /t|iss|sub|aud",
            ),
            CacheKey::new(
                "",
                "https://api.cloudsmith.io",
                "org2",
                "svc",
                "file /t|iss|sub|aud",
            ),
            CacheKey::new(
                "",
                "https://api.cloudsmith.io",
                "org",
                "svc2",
                "file /t|iss|sub|aud",
            ),
            CacheKey::new(
                "",
                "https://api.cloudsmith.io",
                "org",
                "svc",
                "file /u|iss|sub|aud",
            ),
            // Shifting a boundary between fields changes the key too.
            CacheKey::new(
                "",
                "https://api.cloudsmith.ioorg",
                "",
                "svc",
                "file /t|iss|sub|aud",
            ),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, key());
    }

    #[cfg(unix)]
    #[test]
    fn corrupt_foreign_and_open_entries_are_ignored_then_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path());
        let path = cache.entry_path(&key());
        let write = |text: &str, mode: u32| {
            let _ = fs::remove_file(&path);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        let good = serde_json::json!({"format": FORMAT, "key": key().digest(),
            "access_token": "tok", "expiry": (NOW + 3600).to_string(), "exp": NOW + 3600});
        let cases = [
            ("{not json".to_string(), 0o600, "not a token cache entry"),
            (good.to_string().replace(FORMAT, "other/v9"), 0o600, "foreign"),
            (
                good.to_string().replace(key().digest(), "00"),
                0o600,
                "another key",
            ),
            (good.to_string().replace("\"tok\"", "\"\""), 0o600, "inconsistent"),
            (good.to_string(), 0o644, "readable or writable by others"),
        ];
        for (text, mode, why) in cases {
            write(&text, mode);
            match cache.get_at(&key(), NOW) {
                Lookup::Unusable(reason) => assert!(reason.contains(why), "{reason} vs {why}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        write(&good.to_string(), 0o600);
        assert!(matches!(cache.get_at(&key(), NOW), Lookup::Hit(_)));
        // A store replaces whatever was there.
        write("garbage", 0o644);
        cache.put(&key(), &token(NOW + 3600)).unwrap();
        assert_eq!(cache.get_at(&key(), NOW), Lookup::Hit(token(NOW + 3600)));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_entry_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path());
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, "{}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, cache.entry_path(&key())).unwrap();
        assert_eq!(
            cache.get_at(&key(), NOW),
            Lookup::Unusable("entry is not a regular file".into())
        );
    }

    #[test]
    fn credentials_round_trip_through_the_cache_form() {
        let auth = base64::engine::general_purpose::STANDARD.encode("token:abc.def.ghi");
        let credentials = Credentials::from_outputs(vec![
            ("auth".into(), auth.clone().into_bytes()),
            ("expiry".into(), b"1700000000".to_vec()),
        ])
        .unwrap();
        let cached = CachedToken::from_credentials(&credentials).unwrap();
        assert_eq!(cached.access_token.expose(), "abc.def.ghi");
        assert_eq!(cached.exp, 1_700_000_000);
        assert_eq!(cached.credentials(), credentials);
        assert!(!format!("{cached:?}").contains("abc.def"));
    }

    #[test]
    fn the_environment_switch() {
        // Only this test touches the variable.
        std::env::set_var(DISABLE_ENV, "1");
        assert!(TokenCache::disabled_by_env());
        std::env::set_var(DISABLE_ENV, "0");
        assert!(!TokenCache::disabled_by_env());
        std::env::remove_var(DISABLE_ENV);
        assert!(!TokenCache::disabled_by_env());
    }
}
