//! The generators `serve` answers for: every generator document of the `--manifest`
//! files, by `metadata.name`, read again when a file changes.
//!
//! The manifests are the server's own, cluster-wide configuration (like a
//! ClusterGenerator): the target namespace is always the one in the URL. So
//! `metadata.namespace` is dropped, and so is `serviceAccountRef.namespace` (the seed's
//! example names `default`): the service account is always looked up in the URL's
//! namespace, which is what makes one manifest serve every namespace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::setup::read_manifest_file;
use cloudsmith_gen_core::manifest;

/// Generator name → the JSON manifest handed to the guest.
pub type Generators = HashMap<String, Arc<str>>;

/// The current set of generators and what it was read from.
pub struct Catalog {
    files: Vec<PathBuf>,
    current: RwLock<Arc<Generators>>,
    /// The digest of the files' bytes at the last read, to notice changes.
    digest: RwLock<[u8; 32]>,
}

/// What [`Catalog::reload`] did.
pub enum Reload {
    /// The files did not change.
    Unchanged,
    /// The files changed and now serve these names.
    Loaded(Vec<String>),
}

impl Catalog {
    /// Reads `files`; an error names the file and what is wrong with it.
    pub fn load(files: Vec<PathBuf>) -> anyhow::Result<Catalog> {
        let (digest, generators) = read(&files)?;
        Ok(Catalog {
            files,
            current: RwLock::new(Arc::new(generators)),
            digest: RwLock::new(digest),
        })
    }

    /// The generators now.
    pub fn generators(&self) -> Arc<Generators> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The manifest of generator `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        self.generators().get(name).cloned()
    }

    /// Reads the files again; a changed set replaces the current one only when it is
    /// valid as a whole (a half-edited ConfigMap must not take generators away).
    pub fn reload(&self) -> anyhow::Result<Reload> {
        let digest = digest(&self.files)?;
        if digest == *self.digest.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(Reload::Unchanged);
        }
        let (digest, generators) = read(&self.files)?;
        let mut names: Vec<String> = generators.keys().cloned().collect();
        names.sort();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(generators);
        *self.digest.write().unwrap_or_else(|p| p.into_inner()) = digest;
        Ok(Reload::Loaded(names))
    }
}

fn digest(files: &[PathBuf]) -> anyhow::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in files {
        let bytes = read_manifest_file(path)?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

fn read(files: &[PathBuf]) -> anyhow::Result<([u8; 32], Generators)> {
    let mut hasher = Sha256::new();
    let mut generators = Generators::new();
    for path in files {
        let name = path.display();
        let bytes = read_manifest_file(path)?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("manifest {name}: not UTF-8"))?;
        let documents = manifest::parse(&text).with_context(|| format!("manifest {name}"))?;
        for (generator, resource) in
            manifest::generators(documents).with_context(|| format!("manifest {name}"))?
        {
            if generators.contains_key(&generator) {
                bail!("manifest {name}: generator \"{generator}\" is also defined in another manifest");
            }
            generators.insert(generator, Arc::from(for_any_namespace(resource).to_string()));
        }
    }
    if generators.is_empty() {
        bail!("no generator document (CloudsmithAccessToken, or ClusterGenerator of that kind) in the manifests");
    }
    Ok((hasher.finalize().into(), generators))
}

/// Drops the namespaces a cluster-wide manifest must not pin (see the module docs).
fn for_any_namespace(mut resource: Map<String, Value>) -> Value {
    if let Some(Value::Object(metadata)) = resource.get_mut("metadata") {
        metadata.remove("namespace");
    }
    let mut resource = Value::Object(resource);
    cloudsmith_gen_core::spec::drop_account_namespace(&mut resource);
    resource
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dropped_for_both_forms() {
        let plain: Value = serde_json::json!({"kind": "CloudsmithAccessToken", "metadata": {"name": "a", "namespace": "default"},
            "spec": {"orgSlug": "o", "serviceAccountRef": {"name": "sa", "namespace": "default"}}});
        let out = for_any_namespace(plain.as_object().unwrap().clone());
        assert_eq!(out["metadata"], serde_json::json!({"name": "a"}));
        assert_eq!(
            out["spec"]["serviceAccountRef"],
            serde_json::json!({"name": "sa"})
        );
        let cluster: Value = serde_json::json!({"kind": "ClusterGenerator", "metadata": {"name": "b"},
            "spec": {"kind": "CloudsmithAccessToken", "generator": {"cloudsmithAccessTokenSpec":
                {"serviceAccountRef": {"name": "sa", "namespace": "x"}}}}});
        let out = for_any_namespace(cluster.as_object().unwrap().clone());
        assert_eq!(
            out["spec"]["generator"]["cloudsmithAccessTokenSpec"]["serviceAccountRef"],
            serde_json::json!({"name": "sa"})
        );
    }
}
