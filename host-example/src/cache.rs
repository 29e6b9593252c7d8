//! A disk cache of precompiled components, so a CLI run skips Cranelift.
//!
//! An entry is native code the host will run, so the cache runs only what this user
//! wrote for exactly this component:
//!
//! - **The directory** must be owned by the effective user and writable by no one
//!   else (mode `& 0o022 == 0`); it is created 0700 when missing, and otherwise used as
//!   it is, never loosened or tightened. It is opened once, and entries are opened
//!   relative to that handle, so the path cannot be swapped after the check.
//! - **An entry** must be a regular file owned by the effective user and writable by no
//!   one else, opened without following a symlink (`O_NOFOLLOW`).
//! - **Its content** is bound to its key: the key is a SHA-256 over the component's bytes,
//!   the wasmtime version and the engine's [`Engine::precompile_compatibility_hash`]
//!   (target, tunables, features); the entry's header holds the key, and its digest is a
//!   SHA-256 over the key and the payload. An entry renamed from another component, or
//!   compiled by another engine, names another key and is refused; a truncated or
//!   corrupted one fails its digest.
//!
//! Anything else is reported in the outcome (one warning line for the CLI): an untrusted
//! directory or entry is not used at all (the component is compiled in memory), and an
//! entry whose content is unusable is compiled again and replaced. Either way the call
//! works. Entries are written to a temporary file and renamed into place, so processes
//! can share the directory.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::flight::{self, Flight};
use crate::sandbox::wasm_err;
use cloudsmith_gen_core::dirs::create_private_dir;
use cloudsmith_gen_core::files::{Atomic, Dir};

/// How long a process waits for another's compile of the same component before
/// compiling itself: a cold compile takes seconds (release) to tens of seconds (debug).
const COMPILE_WAIT: Duration = Duration::from_secs(30);

/// The wasmtime release this host is built against (pinned in Cargo.toml).
const WASMTIME_VERSION: &str = "48.0.8";
/// Marks our entry format; bump when it changes (version 2 binds the entry to its key).
const MAGIC: &[u8; 8] = b"CSGEN02\n";
const DIGEST_LEN: usize = 32;
/// No compiled component comes near this; a bigger file is not read.
const MAX_ENTRY_BYTES: u64 = 512 * 1024 * 1024;

/// A directory of precompiled components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// How a component was obtained, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache was used.
    Disabled,
    /// Loaded from this entry.
    Hit(PathBuf),
    /// Compiled and stored in this entry.
    Stored(PathBuf),
    /// Compiled; the entry could not be written (the reason). Not an error.
    NotStored(String),
    /// An entry existed but its content was unusable (the reason); recompiled and
    /// replaced.
    Recovered(String),
    /// The directory or the entry is not this user's private file (the reason): the
    /// cache was not used, the component was compiled in memory.
    Untrusted(String),
}

impl CacheOutcome {
    /// The warning a user should see about this outcome, if any: the cache did not do
    /// its job, and why.
    pub fn warning(&self) -> Option<String> {
        match self {
            CacheOutcome::Untrusted(why) => Some(format!("compiled-component cache not used: {why}")),
            CacheOutcome::Recovered(why) => Some(format!("compiled-component cache entry replaced: {why}")),
            _ => None,
        }
    }
}

/// Why an entry was not loaded.
enum Refused {
    /// Not this user's private file: leave it alone.
    Untrusted(String),
    /// This user's file, with content that cannot be run: replace it.
    Unusable(String),
}

impl ArtifactCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    /// The conventional location: `$XDG_CACHE_HOME/cloudsmith-gen`, else
    /// `~/.cache/cloudsmith-gen`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        cloudsmith_gen_core::dirs::cache_dir()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name for `bytes` compiled by `engine`.
    pub fn key(engine: &Engine, bytes: &[u8]) -> String {
        hex(&Self::key_digest(engine, bytes))
    }

    fn key_digest(engine: &Engine, bytes: &[u8]) -> [u8; DIGEST_LEN] {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.0.update(b"component\0");
        hasher.0.update(bytes);
        hasher.0.update(b"\0wasmtime\0");
        hasher.0.update(WASMTIME_VERSION.as_bytes());
        hasher.0.update(b"\0engine\0");
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.finalize().into()
    }

    /// The path of the entry for `bytes` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir.join(Self::entry_name(&Self::key(engine, bytes)))
    }

    fn entry_name(key: &str) -> String {
        format!("{key}.cwasm")
    }

    /// Loads the component from the cache, or compiles and stores it. Cache problems are
    /// reported in the outcome, never as an error; only a component that does not
    /// compile is an error.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let key = Self::key_digest(engine, bytes);
        let name = Self::entry_name(&hex(&key));
        let path = self.dir.join(&name);
        let dir = match self.open_dir() {
            Ok(dir) => dir,
            Err(why) => return untrusted(engine, bytes, why),
        };
        let recovered = match dir.as_ref().map(|d| Self::read(engine, d, &name, &key)) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(component))) => return Ok((component, CacheOutcome::Hit(path))),
            Some(Err(Refused::Untrusted(why))) => return untrusted(engine, bytes, why),
            Some(Err(Refused::Unusable(why))) => Some(why),
        };
        // A missing directory is created private, then checked like an existing one.
        let dir = match dir {
            Some(dir) => dir,
            None => {
                let created = create_private_dir(&self.dir, "cache directory")
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|()| self.open_dir());
                match created {
                    Ok(Some(dir)) => dir,
                    Ok(None) => return untrusted(engine, bytes, format!("{} vanished", self.dir.display())),
                    Err(why) => {
                        let component = compile(engine, bytes)?;
                        return Ok((component, CacheOutcome::NotStored(why)));
                    }
                }
            }
        };
        // A burst of processes on a cold node compiles once: the first compiles, the
        // others wait for its entry (or for COMPILE_WAIT, then compile themselves).
        let _flight = match flight::lock(&path, Instant::now() + COMPILE_WAIT) {
            Flight::Leader(lock) => {
                if let Ok(Some(component)) = Self::read(engine, &dir, &name, &key) {
                    return Ok((component, CacheOutcome::Hit(path)));
                }
                Some(lock)
            }
            Flight::TimedOut | Flight::Alone(_) => None,
        };
        let component = compile(engine, bytes)?;
        let stored = self.store(&path, &key, &component);
        let outcome = match (recovered, stored) {
            (Some(why), _) => CacheOutcome::Recovered(why),
            (None, Ok(())) => CacheOutcome::Stored(path),
            (None, Err(e)) => CacheOutcome::NotStored(format!("{e:#}")),
        };
        Ok((component, outcome))
    }

    /// The directory, opened and checked: `Ok(None)` when it does not exist, `Err`
    /// (why) when it is not this user's private directory.
    fn open_dir(&self) -> Result<Option<fs::File>, String> {
        let shown = self.dir.display();
        let dir = match open_directory(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{shown}: {e}")),
        };
        let meta = dir.metadata().map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_dir() {
            return Err(format!("{shown} is not a directory"));
        }
        private(&meta).map_err(|why| format!("directory {shown} {why}"))?;
        Ok(Some(dir))
    }

    /// The entry `name` of `dir` for `key`: `Ok(None)` when there is none.
    fn read(
        engine: &Engine,
        dir: &fs::File,
        name: &str,
        key: &[u8; DIGEST_LEN],
    ) -> Result<Option<Component>, Refused> {
        let mut file = match open_entry(dir, name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Refused::Untrusted(format!("entry {name} is a symlink")))
            }
            Err(e) => return Err(Refused::Untrusted(format!("entry {name}: {e}"))),
        };
        let meta = file
            .metadata()
            .map_err(|e| Refused::Untrusted(format!("entry {name}: {e}")))?;
        if !meta.is_file() {
            return Err(Refused::Untrusted(format!("entry {name} is not a regular file")));
        }
        private(&meta).map_err(|why| Refused::Untrusted(format!("entry {name} {why}")))?;
        if meta.len() > MAX_ENTRY_BYTES {
            return Err(Refused::Unusable(format!(
                "entry {name} is larger than any compiled component"
            )));
        }
        let mut entry = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut entry)
            .map_err(|e| Refused::Unusable(format!("entry {name}: {e}")))?;
        Self::open(engine, &entry, key)
            .map(Some)
            .map_err(|why| Refused::Unusable(format!("entry {name} {why}")))
    }

    /// Checks an entry's framing, key and digest, then deserializes it.
    fn open(engine: &Engine, entry: &[u8], key: &[u8; DIGEST_LEN]) -> Result<Component, String> {
        let rest = entry
            .strip_prefix(MAGIC)
            .ok_or("is not a cache entry of this version")?;
        if rest.len() < 2 * DIGEST_LEN {
            return Err("is truncated".into());
        }
        let (their_key, rest) = rest.split_at(DIGEST_LEN);
        let (digest, payload) = rest.split_at(DIGEST_LEN);
        if their_key != key {
            return Err("was compiled from another component or by another engine (its key differs)".into());
        }
        if entry_digest(key, payload).as_slice() != digest {
            return Err("is corrupt or truncated (digest mismatch)".into());
        }
        // SAFETY: the payload is what `Component::serialize` produced for this very
        // component and an engine with this compatibility hash (the key in the header
        // says so, and the digest over key and payload that it is unchanged since), in
        // a file and directory only this user can write (checked above).
        unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("is incompatible: {e}"))
    }

    fn store(&self, path: &Path, key: &[u8; DIGEST_LEN], component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize().map_err(wasm_err)?;
        // The directory was made and checked by `load`. A concurrent reader sees the old
        // entry or the whole new one.
        let write = Atomic {
            dir: Dir::Exists,
            ..Atomic::private("cache directory")
        };
        write.write(path, &[MAGIC, key, &entry_digest(key, &payload), &payload])
    }
}

/// The component compiled in memory, the cache left alone because of `why`.
fn untrusted(engine: &Engine, bytes: &[u8], why: String) -> anyhow::Result<(Component, CacheOutcome)> {
    Ok((compile(engine, bytes)?, CacheOutcome::Untrusted(why)))
}

fn entry_digest(key: &[u8; DIGEST_LEN], payload: &[u8]) -> [u8; DIGEST_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize().into()
}

/// Owned by the effective user and writable by no one else; else why not.
fn private(meta: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Opens `dir` as a directory (following a symlink to it: the directory reached is
/// what is checked and used).
fn open_directory(dir: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

/// Opens `name` in the directory `dir` for reading, refusing a symlink (`ELOOP`) and
/// never blocking on a FIFO.
fn open_entry(dir: &fs::File, name: &str) -> std::io::Result<fs::File> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let name = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: `dir` is an open directory for the duration of the call, `name` a valid C
    // string; a non-negative result is a new descriptor that the File takes ownership of.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// Compiles `bytes` without any cache.
pub fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, bytes)
        .map_err(wasm_err)
        .context("compiling the component")
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash is stable across
/// processes (std's hashers are randomly keyed).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0 // Never used: the digest is read from the inner state.
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    //! Each planted case: the cache is refused with a reason, the component still loads.

    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::OnceLock;

    /// One engine and the generator's bytes; compiling is the slow part, so the
    /// planted entries are copies of one stored entry.
    fn engine() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            crate::sandbox::engine(&crate::sandbox::EngineOptions {
                pooling: false,
                ..Default::default()
            })
            .expect("engine")
        })
    }

    /// A cache with a good entry for the generator, and that entry's path.
    fn stored() -> (tempfile::TempDir, ArtifactCache, PathBuf) {
        static ENTRY: OnceLock<Vec<u8>> = OnceLock::new();
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(root.path().join("cache"));
        let path = cache.entry_path(engine(), crate::COMPONENT);
        let entry = ENTRY.get_or_init(|| {
            let (_, outcome) = cache.load(engine(), crate::COMPONENT).unwrap();
            assert_eq!(outcome, CacheOutcome::Stored(path.clone()));
            fs::read(&path).unwrap()
        });
        fs::create_dir_all(cache.dir()).unwrap();
        fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(&path, entry).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        (root, cache, path)
    }

    fn outcome(cache: &ArtifactCache) -> CacheOutcome {
        let (component, outcome) = cache
            .load(engine(), crate::COMPONENT)
            .expect("the component loads whatever the cache holds");
        drop(component);
        outcome
    }

    /// Gives `path` to another user: only root can, so these cases need root (as the
    /// test command runs in CI and in its container).
    fn chown(path: &Path, uid: u32) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; lchown changes the link itself, never its target.
        let changed = unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) } == 0;
        assert!(
            changed,
            "chown {} to uid {uid} failed ({}): the foreign-owner cases need root; run the tests as root",
            path.display(),
            std::io::Error::last_os_error()
        );
    }

    #[test]
    fn a_private_entry_for_this_component_is_a_hit() {
        let (_root, cache, path) = stored();
        assert_eq!(outcome(&cache), CacheOutcome::Hit(path));
        let mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(root.path().join("new/cache"));
        // Stored or, when another test's run compiled it first, the same outcome kinds.
        assert!(matches!(outcome(&cache), CacheOutcome::Stored(_)));
        let mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn planted_entries_and_directories_are_refused() {
        // (case, how to plant it, the start of the warning, whether the entry is left as it was)
        type Plant = fn(&ArtifactCache, &Path);
        let cases: Vec<(&str, Plant, &str, bool)> = vec![
            (
                "group-writable directory",
                |cache, _| fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o770)).unwrap(),
                "compiled-component cache not used: directory ",
                true,
            ),
            (
                "world-writable directory",
                |cache, _| fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o1777)).unwrap(),
                "compiled-component cache not used: directory ",
                true,
            ),
            (
                "symlinked entry",
                |_, path| {
                    let real = path.with_extension("real");
                    fs::rename(path, &real).unwrap();
                    std::os::unix::fs::symlink(&real, path).unwrap();
                },
                "compiled-component cache not used: entry ",
                true,
            ),
            (
                "group-writable entry",
                |_, path| fs::set_permissions(path, fs::Permissions::from_mode(0o620)).unwrap(),
                "compiled-component cache not used: entry ",
                true,
            ),
            (
                "a directory in the entry's place",
                |_, path| {
                    fs::remove_file(path).unwrap();
                    fs::create_dir(path).unwrap();
                },
                "compiled-component cache not used: entry ",
                true,
            ),
            (
                "entry owned by another user",
                |_, path| chown(path, 65534),
                "compiled-component cache not used: entry ",
                true,
            ),
            (
                "directory owned by another user",
                |cache, _| chown(cache.dir(), 65534),
                "compiled-component cache not used: directory ",
                true,
            ),
            (
                "truncated entry",
                |_, path| {
                    let len = fs::metadata(path).unwrap().len();
                    fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .unwrap()
                        .set_len(len / 2)
                        .unwrap();
                },
                "compiled-component cache entry replaced: entry ",
                false,
            ),
            (
                "entry cut inside its header",
                |_, path| fs::write(path, &fs::read(path).unwrap()[..20]).unwrap(),
                "compiled-component cache entry replaced: entry ",
                false,
            ),
            (
                "entry renamed from another component",
                |cache, path| {
                    // Another component's entry, whole, private and self-consistent
                    // (its own key, its digest over that key), renamed to this one's
                    // predictable name.
                    let mut other = crate::COMPONENT.to_vec();
                    other.extend_from_slice(&[0, 6, 5, b'o', b't', b'h', b'e', b'r', 0]);
                    let theirs = cache.entry_path(engine(), &other);
                    let mut entry = fs::read(path).unwrap();
                    let their_key = ArtifactCache::key_digest(engine(), &other);
                    let payload = entry[MAGIC.len() + 2 * DIGEST_LEN..].to_vec();
                    entry.truncate(MAGIC.len());
                    entry.extend_from_slice(&their_key);
                    entry.extend_from_slice(&entry_digest(&their_key, &payload));
                    entry.extend_from_slice(&payload);
                    fs::write(&theirs, entry).unwrap();
                    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
                    fs::rename(&theirs, path).unwrap();
                },
                "compiled-component cache entry replaced: entry ",
                false,
            ),
            (
                "entry of the previous format",
                |_, path| {
                    let mut entry = fs::read(path).unwrap();
                    entry[..8].copy_from_slice(b"CSGEN01\n");
                    fs::write(path, entry).unwrap();
                },
                "compiled-component cache entry replaced: entry ",
                false,
            ),
        ];
        let mut wrong = Vec::new();
        for (case, plant, warning, left) in cases {
            let (_root, cache, path) = stored();
            plant(&cache, &path);
            let planted = fs::symlink_metadata(&path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            let got = outcome(&cache);
            let shown = got.warning().unwrap_or_default();
            if !shown.starts_with(warning) || shown.contains('\n') {
                wrong.push(format!("{case}: {got:?}"));
            }
            let after = fs::symlink_metadata(&path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            if left != (after == planted) {
                wrong.push(format!(
                    "{case}: entry left as it was: {}, wanted {left}",
                    after == planted
                ));
            }
            if !left && outcome(&cache) != CacheOutcome::Hit(path.clone()) {
                wrong.push(format!("{case}: the replaced entry is not a hit"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
