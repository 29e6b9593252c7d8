//! `cloudsmith-gen install kubelet-credential-provider`: copies this binary into the
//! kubelet's credential provider bin dir and writes the kubelet's config and the
//! generator manifest where none exist (see [`kubelet_credential_provider`]).
//!
//! `cloudsmith-gen install docker-credential-helper [--dir DIR]`: links
//! `docker-credential-cloudsmith` to this binary and points Docker's `config.json` at
//! it (`credHelpers`) for every configured registry.
//!
//! `config.json` is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. Every
//! other entry is kept; the file is replaced atomically (a temporary file, then a
//! rename), so docker never reads half a file, and keeps mode 0600 since it may hold
//! `auths` secrets.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{Map, Value};

use super::docker::{DockerConfig, CRED_HELPER, HELPER_NAME};
use super::{Registries, Reply};
use crate::failure::Failure;

/// What `install docker-credential-helper` installs.
#[derive(Debug, Clone, Default)]
pub struct HelperInstall {
    /// Where to link `docker-credential-cloudsmith` (default: beside this binary).
    pub dir: Option<PathBuf>,
    /// Registries to route to the helper besides docker.cloudsmith.io and
    /// `CLOUDSMITH_REGISTRIES`.
    pub registries: Vec<String>,
}

/// What `install kubelet-credential-provider` installs, and where.
#[derive(Debug, Clone)]
pub struct KubeletInstall {
    /// The kubelet's `--image-credential-provider-bin-dir`.
    pub bin_dir: PathBuf,
    /// The kubelet's `--image-credential-provider-config` file.
    pub config: PathBuf,
    /// The generator manifest the provider reads.
    pub manifest: PathBuf,
    /// Replace a config and manifest that differ from the shipped ones.
    pub overwrite_config: bool,
}

/// Links the helper and adds `credHelpers` entries; `docker` is the helper's
/// environment (for `CLOUDSMITH_REGISTRIES`).
pub fn docker_credential_helper(args: &HelperInstall, docker: &DockerConfig) -> Result<Reply, Failure> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding this executable")
        .map_err(Failure::Other)?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        // Beside this binary: on PATH whenever cloudsmith-gen is.
        None => exe
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Failure::Other(anyhow!("{} has no directory", exe.display())))?,
    };
    let all = docker.registries()?;
    let all = if args.registries.is_empty() {
        all
    } else {
        let extra: Vec<&str> = all
            .names()
            .filter(|name| *name != super::DEFAULT_REGISTRY)
            .chain(args.registries.iter().map(String::as_str))
            .collect();
        Registries::with_default(extra).map_err(Failure::usage)?
    };
    // The lean helper answers cache hits without starting this binary; it needs this
    // binary beside it for the rest. Without it, this binary speaks the protocol itself.
    let name = format!("{HELPER_NAME}{}", std::env::consts::EXE_SUFFIX);
    let lean = exe.with_file_name(&name);
    let target = if lean.is_file() { lean } else { exe };
    // Installed side by side in `dir` already (cargo install, a package): nothing to link.
    let placed = if dir.join(&name).canonicalize().is_ok_and(|p| p == target) {
        format!("{} is in place", target.display())
    } else {
        let link = link_helper(&target, &dir).map_err(Failure::Other)?;
        format!("linked {} -> {}", link.display(), target.display())
    };
    let config = docker_config_path().map_err(Failure::Usage)?;
    let names: Vec<&str> = all.names().collect();
    add_cred_helpers(&config, &names).map_err(Failure::Other)?;
    Ok(Reply::ok(format!(
        "{placed}\nset credHelpers in {} for {}",
        config.display(),
        names.join(", ")
    )))
}

/// The kubelet's `--image-credential-provider-bin-dir` in the shipped config.
pub const KUBELET_BIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec";
/// The kubelet's `--image-credential-provider-config` in the shipped config.
pub const KUBELET_CONFIG: &str = "/etc/cloudsmith/credential-provider.yaml";
/// The generator manifest the shipped config names.
pub const KUBELET_MANIFEST: &str = "/etc/cloudsmith/generator.yaml";
/// The executable's name in the bin dir: the config's provider `name` must equal it.
const PROVIDER_NAME: &str = "cloudsmith-gen";
const SHIPPED_CONFIG: &str = include_str!("../../../deploy/kubelet/credential-provider-config.yaml");
const SHIPPED_MANIFEST: &str = include_str!("../../../deploy/kubelet/generator.yaml");

/// Installs the kubelet credential provider: `BIN_DIR/cloudsmith-gen` (replaced, through a
/// temporary file in BIN_DIR and a rename, only when its content differs), the config and
/// the manifest (written only where missing, or differing with `--overwrite-config`).
/// Never deletes, never restarts the kubelet: the kubelet reads both at its start.
pub fn kubelet_credential_provider(args: &KubeletInstall) -> Result<Reply, Failure> {
    let exe = std::env::current_exe()
        .context("finding this executable")
        .map_err(Failure::Other)?;
    let binary = std::fs::read(&exe)
        .with_context(|| format!("reading {}", exe.display()))
        .map_err(Failure::Other)?;
    let target = args.bin_dir.join(PROVIDER_NAME);
    let config = SHIPPED_CONFIG.replace(KUBELET_MANIFEST, &args.manifest.display().to_string());
    let mut lines = Vec::new();
    for (path, content, mode, replace) in [
        (&target, binary.as_slice(), 0o755, true),
        (&args.config, config.as_bytes(), 0o644, args.overwrite_config),
        (
            &args.manifest,
            SHIPPED_MANIFEST.as_bytes(),
            0o644,
            args.overwrite_config,
        ),
    ] {
        lines.push(place(path, content, mode, replace).map_err(Failure::Other)?);
    }
    Ok(Reply::ok(lines.join("\n")))
}

/// Writes `content` at `path` unless it already holds it (or holds anything, without
/// `replace`); says what it did in one line.
fn place(path: &Path, content: &[u8], mode: u32, replace: bool) -> anyhow::Result<String> {
    let name = path.display();
    match std::fs::read(path) {
        Ok(old) if old == content => return Ok(format!("unchanged {name}")),
        Ok(_) if !replace => return Ok(format!("kept {name} (differs; --overwrite-config replaces it)")),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("reading {name}: {e}")),
    }
    let existed = path.exists();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cloudsmith-gen.")
        .tempfile_in(dir)
        .map_err(|e| anyhow!("creating a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(content)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| anyhow!("writing {}: {e}", tmp.path().display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow!("setting the mode of {}: {e}", tmp.path().display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    // A rename: the kubelet execs either the old binary or the new one, never half of one.
    tmp.persist(path)
        .map_err(|e| anyhow!("writing {name}: {}", e.error))?;
    Ok(format!(
        "{} {name}",
        if existed { "replaced" } else { "installed" }
    ))
}

/// Creates (or replaces) the symlink `dir/docker-credential-cloudsmith` -> `exe`. An
/// existing file that is not a symlink is left alone: it may be someone else's helper.
fn link_helper(exe: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let link = dir.join(format!("{HELPER_NAME}{}", std::env::consts::EXE_SUFFIX));
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if !meta.file_type().is_symlink() => {
            bail!("{} exists and is not a symlink: remove it first", link.display())
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A new link under a temporary name renamed over the old one: never a moment without.
    let tmp = dir.join(format!(".{HELPER_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(exe, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
    #[cfg(not(unix))]
    std::fs::copy(exe, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("creating {}", link.display()))?;
    Ok(link)
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: where Docker reads it.
pub fn docker_config_path() -> anyhow::Result<PathBuf> {
    host_core::registry_auth::DockerConfigFile::default_path()
        .ok_or_else(|| anyhow!("neither DOCKER_CONFIG nor HOME is set: cannot find Docker's config.json"))
}

/// Adds `"credHelpers": {"<registry>": "cloudsmith"}` for each registry to the config at
/// `path` (created if missing), keeping every other entry.
pub fn add_cred_helpers(path: &Path, registries: &[&str]) -> anyhow::Result<()> {
    let name = path.display();
    let mut config: Map<String, Value> = match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => bail!("{name} is not a JSON object; not changing it"),
            Err(e) => bail!("{name} is not valid JSON ({e}); not changing it"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(anyhow!(e).context(format!("reading {name}"))),
    };
    let helpers = config
        .entry("credHelpers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(helpers) = helpers else {
        bail!("{name}: credHelpers is not an object; not changing it");
    };
    for registry in registries {
        helpers.insert(registry.to_string(), Value::String(CRED_HELPER.into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(&Value::Object(config))?;
    text.push('\n');
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn place_writes_once_keeps_what_differs_and_replaces_when_told() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin/cloudsmith-gen");
        assert!(place(&path, b"one", 0o755, false)
            .unwrap()
            .starts_with("installed "));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(place(&path, b"one", 0o755, true)
            .unwrap()
            .starts_with("unchanged "));
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert!(place(&path, b"two", 0o755, false).unwrap().starts_with("kept "));
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert!(place(&path, b"two", 0o755, true)
            .unwrap()
            .starts_with("replaced "));
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn the_shipped_config_names_the_default_paths() {
        assert!(SHIPPED_CONFIG.contains(KUBELET_MANIFEST));
        assert!(SHIPPED_CONFIG.contains(KUBELET_CONFIG));
        assert!(SHIPPED_CONFIG.contains(KUBELET_BIN_DIR));
        assert!(SHIPPED_CONFIG.contains(&format!("name: {PROVIDER_NAME}")));
    }

    #[test]
    fn cred_helpers_are_added_and_everything_else_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"ghcr.io":{"auth":"eA=="}},"credHelpers":{"gcr.io":"gcloud"},"psFormat":"table"}"#,
        )
        .unwrap();
        add_cred_helpers(&path, &["docker.cloudsmith.io", "registry.acme.com"]).unwrap();
        let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            config,
            serde_json::json!({
                "auths": {"ghcr.io": {"auth": "eA=="}},
                "credHelpers": {"gcr.io": "gcloud", "docker.cloudsmith.io": "cloudsmith", "registry.acme.com": "cloudsmith"},
                "psFormat": "table",
            })
        );
        // Idempotent.
        add_cred_helpers(&path, &["docker.cloudsmith.io"]).unwrap();
        let again: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn a_missing_config_is_created_and_a_broken_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        add_cred_helpers(&path, &["docker.cloudsmith.io"]).unwrap();
        let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"credHelpers": {"docker.cloudsmith.io": "cloudsmith"}})
        );
        std::fs::write(&path, "{broken").unwrap();
        let err = add_cred_helpers(&path, &["docker.cloudsmith.io"]).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{broken");
    }

    #[cfg(unix)]
    #[test]
    fn the_link_points_at_the_binary_and_a_foreign_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cloudsmith-gen");
        std::fs::write(&exe, "").unwrap();
        let link = link_helper(&exe, dir.path()).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), exe);
        // Again: replaced in place.
        link_helper(&exe, dir.path()).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "someone else's").unwrap();
        assert!(link_helper(&exe, dir.path()).is_err());
    }
}
