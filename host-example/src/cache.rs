//! A disk cache of precompiled components, so a CLI run skips Cranelift.
//!
//! An entry's name is a SHA-256 over the component's bytes, the wasmtime version and the
//! engine's [`Engine::precompile_compatibility_hash`] (target, tunables, features), so an
//! entry is only ever offered to an engine that can run it. Each entry carries a SHA-256
//! of its payload, checked before wasmtime sees it: a truncated or corrupted file is
//! detected and recompiled, never run and never an error. Entries are written to a
//! temporary file and renamed into place, so processes can share the directory.
//!
//! Loading native code from disk trusts the directory: it is created private (0700) and
//! must not be writable by anyone the host does not trust.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::flight::{self, Flight};
use crate::sandbox::wasm_err;
use host_core::dirs::create_private_dir;

/// How long a process waits for another's compile of the same component before
/// compiling itself: a cold compile takes seconds (release) to tens of seconds (debug).
const COMPILE_WAIT: Duration = Duration::from_secs(30);

/// The wasmtime release this host is built against (pinned in Cargo.toml).
const WASMTIME_VERSION: &str = "48.0.8";
/// Marks our entry format; bump when it changes.
const MAGIC: &[u8; 8] = b"CSGEN01\n";
const DIGEST_LEN: usize = 32;

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
    /// An entry existed but was unusable (the reason); recompiled and replaced.
    Recovered(String),
}

impl ArtifactCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    /// The conventional location: `$XDG_CACHE_HOME/cloudsmith-gen`, else
    /// `~/.cache/cloudsmith-gen`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        host_core::dirs::cache_dir()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name for `bytes` compiled by `engine`.
    pub fn key(engine: &Engine, bytes: &[u8]) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.0.update(b"component\0");
        hasher.0.update(bytes);
        hasher.0.update(b"\0wasmtime\0");
        hasher.0.update(WASMTIME_VERSION.as_bytes());
        hasher.0.update(b"\0engine\0");
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hex(&hasher.0.finalize())
    }

    /// The path of the entry for `bytes` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", Self::key(engine, bytes)))
    }

    /// Loads the component from the cache, or compiles and stores it. Cache problems are
    /// reported in the outcome, never as an error; only a component that does not
    /// compile is an error.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, bytes);
        let recovered = match self.read(engine, &path) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit(path))),
            Ok(None) => None,
            Err(why) => Some(why),
        };
        // A burst of processes on a cold node compiles once: the first compiles, the
        // others wait for its entry (or for COMPILE_WAIT, then compile themselves).
        let _flight = match create_private_dir(&self.dir, "cache directory") {
            Ok(()) => match flight::lock(&path, Instant::now() + COMPILE_WAIT) {
                Flight::Leader(lock) => {
                    if let Ok(Some(component)) = self.read(engine, &path) {
                        return Ok((component, CacheOutcome::Hit(path)));
                    }
                    Some(lock)
                }
                Flight::TimedOut | Flight::Alone(_) => None,
            },
            Err(_) => None,
        };
        let component = compile(engine, bytes)?;
        let stored = self.store(&path, &component);
        let outcome = match (recovered, stored) {
            (Some(why), _) => CacheOutcome::Recovered(why),
            (None, Ok(())) => CacheOutcome::Stored(path),
            (None, Err(e)) => CacheOutcome::NotStored(format!("{e:#}")),
        };
        Ok((component, outcome))
    }

    /// The entry at `path`: `Ok(None)` when there is none, `Err` (why) when it is unusable.
    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
        match fs::read(path) {
            Ok(entry) => Self::open(engine, &entry).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Checks an entry's framing and digest, then deserializes it.
    fn open(engine: &Engine, entry: &[u8]) -> Result<Component, String> {
        let rest = entry.strip_prefix(MAGIC).ok_or("not a cache entry")?;
        if rest.len() < DIGEST_LEN {
            return Err("truncated entry".into());
        }
        let (digest, payload) = rest.split_at(DIGEST_LEN);
        if Sha256::digest(payload).as_slice() != digest {
            return Err("entry is corrupt (digest mismatch)".into());
        }
        // SAFETY: the payload is exactly what `Component::serialize` produced for an engine
        // with this compatibility hash (the digest proves it is unchanged since), and the
        // cache directory is private to the user (see the module docs).
        unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("incompatible entry: {e}"))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize().map_err(wasm_err)?;
        create_private_dir(&self.dir, "cache directory")?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&Sha256::digest(&payload))?;
        tmp.write_all(&payload)?;
        tmp.as_file().sync_all()?;
        // Rename is atomic: a concurrent reader sees the old entry or the whole new one.
        tmp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
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
