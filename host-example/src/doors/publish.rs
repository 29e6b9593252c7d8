//! `component push`: the generator (or a component file) as a Wasm OCI artifact.
//!
//! Reproducible: the manifest's bytes depend on the component, the annotations and the
//! config's `created` alone, and `created` is `SOURCE_DATE_EPOCH` when set, else the
//! committer time of the commit the binary was built from, else the UNIX epoch (a build
//! outside a git checkout). So one build pushed twice, to any registry, has one digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cloudsmith_gen::oci::{self, annotation, Artifact, ComponentRef, Publication, Registry, RegistryOptions};
use cloudsmith_gen::registry_auth::{AuthError, Login};
use cloudsmith_gen::COMPONENT;

use super::Reply;
use crate::failure::Failure;

/// What `component push` does.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Where to: `REGISTRY/REPOSITORY:TAG`.
    pub target: ComponentRef,
    /// A component file instead of the embedded generator.
    pub component: Option<PathBuf>,
    /// How to reach the registry.
    pub registry: RegistryOptions,
    /// `--annotation KEY=VALUE`, applied last (they replace the defaults).
    pub annotations: Vec<(String, String)>,
}

/// The build's commit, recorded by build.rs (empty outside a git checkout).
const REVISION: &str = env!("CLOUDSMITH_GEN_REVISION");
const COMMIT_TIME: &str = env!("CLOUDSMITH_GEN_COMMIT_TIME");
const SOURCE: &str = env!("CLOUDSMITH_GEN_SOURCE");

/// The variable reproducible builds set to fix every timestamp.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// Pushes and answers the manifest digest, `sha256:<hex>`; `login` gives the registry's
/// credentials, `source_date_epoch` the variable's value when set.
pub async fn push(
    config: &PushConfig,
    source_date_epoch: Option<&str>,
    login: impl FnOnce(&str) -> Result<Login, AuthError>,
) -> Result<Reply, Failure> {
    let (bytes, title) = match &config.component {
        Some(path) => (
            std::fs::read(path).map_err(|e| Failure::usage(format!("component {}: {e}", path.display())))?,
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "component".into()),
        ),
        None => (COMPONENT.to_vec(), "cloudsmith-access-token".to_string()),
    };
    let publication = publication(config, &title, source_date_epoch)?;
    let artifact = Artifact::of(&bytes, &publication).map_err(|why| match &config.component {
        Some(path) => Failure::usage(format!("component {}: {why}", path.display())),
        None => Failure::Other(anyhow::anyhow!("the embedded component: {why}")),
    })?;
    let login = login(config.target.registry()).map_err(|e| Failure::Registry(e.into()))?;
    let registry = Registry::new(&config.registry).map_err(Failure::usage)?;
    let digest = oci::push(&registry, &config.target, &artifact, &login)
        .await
        .map_err(Failure::Registry)?;
    Ok(Reply::ok(digest))
}

/// The annotations and `created` time of this push.
fn publication(
    config: &PushConfig,
    title: &str,
    source_date_epoch: Option<&str>,
) -> Result<Publication, Failure> {
    let created = match source_date_epoch.map(str::trim).filter(|v| !v.is_empty()) {
        Some(value) => value.parse::<i64>().map_err(|_| {
            Failure::usage(format!(
                "{SOURCE_DATE_EPOCH} {value:?} is not a number of seconds"
            ))
        })?,
        None => COMMIT_TIME.parse().unwrap_or(0),
    };
    let rfc3339 = chrono::DateTime::from_timestamp(created, 0)
        .ok_or_else(|| Failure::usage(format!("{SOURCE_DATE_EPOCH} {created} is out of range")))?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut annotations = BTreeMap::from([
        (annotation::TITLE.to_string(), title.to_string()),
        (annotation::CREATED.to_string(), rfc3339),
    ]);
    // What this build knows of itself describes the embedded generator, not a file. Not
    // the tag: one build pushed under two tags is one artifact, with one digest.
    if config.component.is_none() {
        for (key, value) in [
            (annotation::VERSION, env!("CARGO_PKG_VERSION")),
            (annotation::REVISION, REVISION),
            (annotation::SOURCE, SOURCE),
            (annotation::LICENSES, env!("CARGO_PKG_LICENSE")),
        ] {
            if !value.is_empty() {
                annotations.insert(key.to_string(), value.to_string());
            }
        }
    }
    for (key, value) in &config.annotations {
        annotations.insert(key.clone(), value.clone());
    }
    Ok(Publication { annotations, created })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(component: Option<&str>, annotations: &[(&str, &str)]) -> PushConfig {
        PushConfig {
            target: ComponentRef::parse("registry.acme.com/plugins/gen:2.1").unwrap(),
            component: component.map(PathBuf::from),
            registry: RegistryOptions::default(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_generator_names_its_build_and_a_file_only_itself() {
        let p = publication(&config(None, &[]), "cloudsmith-access-token", Some("1700000000")).unwrap();
        assert_eq!(p.created, 1_700_000_000);
        assert_eq!(p.annotations[annotation::CREATED], "2023-11-14T22:13:20Z");
        assert_eq!(p.annotations[annotation::VERSION], env!("CARGO_PKG_VERSION"));
        assert_eq!(p.annotations[annotation::LICENSES], "Apache-2.0");
        assert_eq!(
            p.annotations.get(annotation::REVISION).map(String::as_str),
            (!REVISION.is_empty()).then_some(REVISION)
        );
        let p = publication(
            &config(
                Some("/x/plug.wasm"),
                &[(annotation::SOURCE, "https://example.com/plug")],
            ),
            "plug",
            Some("0"),
        )
        .unwrap();
        assert_eq!(p.annotations[annotation::TITLE], "plug");
        assert_eq!(p.annotations[annotation::SOURCE], "https://example.com/plug");
        for key in [annotation::VERSION, annotation::REVISION, annotation::LICENSES] {
            assert!(!p.annotations.contains_key(key), "{key}");
        }
    }

    #[test]
    fn created_comes_from_source_date_epoch_else_the_commit() {
        let from_commit = publication(&config(None, &[]), "t", None).unwrap().created;
        assert_eq!(from_commit, COMMIT_TIME.parse().unwrap_or(0));
        let err = publication(&config(None, &[]), "t", Some("yesterday")).unwrap_err();
        assert!(
            err.message().contains("SOURCE_DATE_EPOCH \"yesterday\""),
            "{}",
            err.message()
        );
    }
}
