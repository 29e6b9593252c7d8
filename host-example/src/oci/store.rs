//! Components fetched from registries, kept on disk by digest.
//!
//! Two content-addressed folders, the layout of an OCI image layout's `blobs/`:
//! `manifests/sha256/<hex>` holds a manifest exactly as the registry served it, and
//! `blobs/sha256/<hex>` the component it names. Every read hashes the file again, so an
//! entry that was changed on disk is a miss, never a component that is not the one
//! pinned. Files are written to a temporary name and renamed into place, the blob before
//! its manifest: a manifest present means its whole blob is.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cloudsmith_gen_core::dirs::create_private_dir;
use cloudsmith_gen_core::files::Atomic;
use cloudsmith_gen_core::flight::{self, Flight};
use sha2::{Digest as _, Sha256};

/// A store of verified components, by manifest digest.
#[derive(Debug, Clone)]
pub struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    /// A store in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ComponentStore { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: &str, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(kind).join("sha256").join(hex)
    }

    /// The component the manifest `digest` names, when both files are here and hash to
    /// their names; `None` otherwise (the caller fetches again and replaces them).
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let manifest = read_verified(&self.path("manifests", digest), digest)?;
        let layer = super::wasm_layer(&manifest).ok()?;
        read_verified(&self.path("blobs", &layer.digest), &layer.digest)
    }

    /// Keeps `component` under the manifest `digest` (its bytes `manifest`). The caller
    /// has verified both.
    pub fn put(
        &self,
        digest: &str,
        manifest: &[u8],
        layer_digest: &str,
        component: &[u8],
    ) -> anyhow::Result<()> {
        write_atomic(&self.path("blobs", layer_digest), component)?;
        write_atomic(&self.path("manifests", digest), manifest)
    }

    /// Single flight for `digest`'s fetch, across processes: a burst of first runs
    /// fetches once. Waits for another holder until `until`.
    pub fn lock(&self, digest: &str, until: Instant) -> Flight {
        let entry = self.path("manifests", digest);
        let dir = entry.parent().expect("an entry has a directory");
        if let Err(e) = create_private_dir(dir, "component store") {
            return Flight::Alone(format!("{e:#}"));
        }
        flight::lock(&entry, until)
    }
}

/// The file's bytes, when it exists and its SHA-256 is `digest`.
fn read_verified(path: &Path, digest: &str) -> Option<Vec<u8>> {
    let bytes = fs::read(path).ok()?;
    (sha256(&bytes) == digest).then_some(bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Atomic::private("component store").write(path, &[bytes])
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    digest_of_hash(&Sha256::digest(bytes))
}

/// `sha256:<hex>` of a finished SHA-256 hash.
pub(crate) fn digest_of_hash(hash: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 2 * hash.len());
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
