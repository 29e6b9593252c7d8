//! `cloudsmith-gen install kubelet-credential-provider`: copies this binary into the
//! kubelet's credential provider bin dir and writes the kubelet's config and the
//! generator manifest where none exist (see [`kubelet_credential_provider`]).
//!
//! `cloudsmith-gen install docker-credential-helper [--dir DIR]`: links
//! `docker-credential-cloudsmith` to this binary and points Docker's `config.json` at
//! it (`credHelpers`) for every configured registry.
//!
//! `config.json` is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. The file
//! is edited, not rewritten: the `credHelpers` entries are added (or set) in place and
//! every other byte is kept (the order of the keys, the indentation, keys this program
//! does not know). It is saved as docker/cli saves it (v29.7.2,
//! `cli/config/configfile/file.go`, `(*ConfigFile).Save`): a symlinked `config.json` is
//! followed, dangling or not, and its target replaced (the link stays a link), with the
//! target's mode and owner (0600 for a new file, since it may hold `auths` secrets),
//! through a temporary file renamed into place, so docker never reads half a file.
//! Unlike docker/cli, the temporary file is made beside the target rather than beside
//! the link, so the rename works when the two are on different file systems.

use cloudsmith_gen_core::files::{Atomic, Dir, Mode};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

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
    // A rename: the kubelet execs either the old binary or the new one, never half of one.
    let write = Atomic {
        dir: Dir::Create,
        mode: Mode::Exactly(mode),
        prefix: ".cloudsmith-gen.",
    };
    write.write(path, &[content])?;
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
    cloudsmith_gen::registry_auth::DockerConfigFile::default_path()
        .ok_or_else(|| anyhow!("neither DOCKER_CONFIG nor HOME is set: cannot find Docker's config.json"))
}

/// Adds `"credHelpers": {"<registry>": "cloudsmith"}` for each registry to the config at
/// `path` (created if missing), keeping every other byte of it.
pub fn add_cred_helpers(path: &Path, registries: &[&str]) -> anyhow::Result<()> {
    let name = path.display();
    // Where docker/cli writes: the symlink's target, dangling or not.
    let target = resolve_symlinks(path).with_context(|| format!("following {name}"))?;
    let old = match std::fs::read(&target) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!(e).context(format!("reading {name}"))),
    };
    let text = match &old {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
            let text =
                std::str::from_utf8(bytes).map_err(|_| anyhow!("{name} is not UTF-8; not changing it"))?;
            edit::with_cred_helpers(text, registries, CRED_HELPER)
                .map_err(|why| anyhow!("{name}: {why}; not changing it"))?
        }
        _ => edit::new_config(registries, CRED_HELPER),
    };
    if old.as_deref() == Some(text.as_bytes()) {
        return Ok(());
    }
    let write = Atomic {
        dir: Dir::Create,
        mode: Mode::Like(&target),
        prefix: ".config.json.",
    };
    write.write(&target, &[text.as_bytes()])
}

/// `path` with every symlink followed, as Go's `filepath.EvalSymlinks`; for a dangling
/// link, the path of the missing target (docker/cli's `Save` takes it from the error).
fn resolve_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Ok(real);
    }
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let next = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(parent) if next.is_relative() => parent.join(next),
                    _ => next,
                };
            }
            // Missing (or not a link): written where it is named.
            _ => return Ok(current),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Editing a JSON object in place: members added or a value replaced, every other byte
/// left as it was.
mod edit {
    use serde_json::{Map, Value};

    /// A new config holding only the `credHelpers`, as docker/cli writes one
    /// (`json.MarshalIndent(c, "", "\t")`).
    pub fn new_config(registries: &[&str], helper: &str) -> String {
        let mut helpers = Map::new();
        for r in registries {
            helpers.insert(r.to_string(), Value::String(helper.into()));
        }
        let mut config = Map::new();
        config.insert("credHelpers".into(), Value::Object(helpers));
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        serde::Serialize::serialize(&Value::Object(config), &mut ser).expect("a map of strings serializes");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// `text` with `credHelpers.<registry>` set to `helper` for each registry.
    pub fn with_cred_helpers(text: &str, registries: &[&str], helper: &str) -> Result<String, String> {
        let mut unique: Vec<&str> = Vec::new();
        for r in registries {
            if !unique.contains(r) {
                unique.push(r);
            }
        }
        let registries = unique.as_slice();
        let before: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        let Value::Object(mut expected) = before else {
            return Err("not a JSON object".into());
        };
        let helpers = expected
            .entry("credHelpers")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(helpers) = helpers else {
            return Err("credHelpers is not an object".into());
        };
        for r in registries {
            helpers.insert(r.to_string(), Value::String(helper.into()));
        }

        let top = Object::parse(text, skip_ws(text, 0))?;
        let style = Style::of(text, &top);
        let value = serde_json::to_string(helper).expect("a string serializes");
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        match top.member("credHelpers") {
            Some(member) => {
                let object = Object::parse(text, member.value.0)?;
                let mut added = Vec::new();
                for r in registries {
                    match object.member(r) {
                        Some(m) if text[m.value.0..m.value.1] == value => {}
                        Some(m) => edits.push((m.value.0, m.value.1, value.clone())),
                        None => added.push(*r),
                    }
                }
                if !added.is_empty() {
                    let members: Vec<String> = added
                        .iter()
                        .map(|r| format!("{}{}{value}", quoted(r), style.colon))
                        .collect();
                    edits.push(style.append(text, &object, &members));
                }
            }
            None => {
                let unique = registries;
                let inner = style.indent_of(text, &top) + &style.unit;
                let body = if style.multiline {
                    let members: Vec<String> = unique
                        .iter()
                        .map(|r| format!("\n{inner}{}{}{}{value}", style.unit, quoted(r), style.colon))
                        .collect();
                    format!("{{{}\n{inner}}}", members.join(","))
                } else {
                    let members: Vec<String> = unique
                        .iter()
                        .map(|r| format!("{}{}{value}", quoted(r), style.colon))
                        .collect();
                    format!("{{{}}}", members.join(","))
                };
                edits.push(style.append(text, &top, &[format!("\"credHelpers\"{}{body}", style.colon)]));
            }
        }
        edits.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut out = text.to_string();
        for (start, end, replacement) in edits {
            out.replace_range(start..end, &replacement);
        }
        // The edit must mean exactly what was intended, or the file is left alone.
        let after: Value =
            serde_json::from_str(&out).map_err(|e| format!("the edit would not be JSON ({e})"))?;
        if after != Value::Object(expected) {
            return Err("the edit would change more than credHelpers".into());
        }
        Ok(out)
    }

    fn quoted(s: &str) -> String {
        serde_json::to_string(s).expect("a string serializes")
    }

    /// A member of an object: its decoded key and the byte spans of key and value.
    struct Member {
        key: String,
        value: (usize, usize),
    }

    /// An object: its braces' offsets and its members.
    struct Object {
        open: usize,
        close: usize,
        members: Vec<Member>,
        /// The text between the key and the value of the first member (`: ` or `:`).
        first_colon: Option<String>,
    }

    impl Object {
        fn parse(text: &str, at: usize) -> Result<Object, String> {
            let bytes = text.as_bytes();
            if bytes.get(at) != Some(&b'{') {
                return Err("not an object where one was expected".into());
            }
            let mut members = Vec::new();
            let mut first_colon = None;
            let mut i = skip_ws(text, at + 1);
            if bytes.get(i) == Some(&b'}') {
                return Ok(Object {
                    open: at,
                    close: i,
                    members,
                    first_colon,
                });
            }
            loop {
                let key_end = value_end(text, i)?;
                let key: String = serde_json::from_str(&text[i..key_end]).map_err(|e| e.to_string())?;
                let colon = skip_ws(text, key_end);
                if bytes.get(colon) != Some(&b':') {
                    return Err("malformed object".into());
                }
                let start = skip_ws(text, colon + 1);
                if first_colon.is_none() {
                    first_colon = Some(text[key_end..start].to_string());
                }
                let end = value_end(text, start)?;
                members.push(Member {
                    key,
                    value: (start, end),
                });
                i = skip_ws(text, end);
                match bytes.get(i) {
                    Some(b',') => i = skip_ws(text, i + 1),
                    Some(b'}') => {
                        return Ok(Object {
                            open: at,
                            close: i,
                            members,
                            first_colon,
                        })
                    }
                    _ => return Err("malformed object".into()),
                }
            }
        }

        /// The last member named `key` (JSON decoders keep the last of duplicates).
        fn member(&self, key: &str) -> Option<&Member> {
            self.members.iter().rev().find(|m| m.key == key)
        }
    }

    /// How the file is laid out, read from its top-level object.
    struct Style {
        multiline: bool,
        /// One level of indentation.
        unit: String,
        colon: String,
    }

    impl Style {
        fn of(text: &str, top: &Object) -> Style {
            let first_gap = top
                .members
                .first()
                .map(|_| &text[top.open + 1..skip_ws(text, top.open + 1)])
                .unwrap_or("");
            // An empty object says nothing of its layout: docker/cli's, then.
            let multiline = first_gap.contains('\n') || top.members.is_empty();
            let unit = match first_gap.rsplit_once('\n') {
                Some((_, indent)) if !indent.is_empty() => indent.to_string(),
                _ => "\t".to_string(),
            };
            let colon =
                top.first_colon
                    .clone()
                    .unwrap_or_else(|| if multiline { ": ".into() } else { ":".into() });
            Style {
                multiline,
                unit,
                colon,
            }
        }

        /// The indentation of the line `object` opens on.
        fn indent_of(&self, text: &str, object: &Object) -> String {
            let line_start = text[..object.open].rfind('\n').map_or(0, |i| i + 1);
            text[line_start..object.open]
                .chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect()
        }

        /// The edit appending `members` (each `"key": value`) to `object`, laid out as its
        /// existing members are.
        fn append(&self, text: &str, object: &Object, members: &[String]) -> (usize, usize, String) {
            match object.members.last() {
                Some(last) => {
                    // Laid out as the first member: the same break and indentation.
                    let gap = &text[object.open + 1..skip_ws(text, object.open + 1)];
                    let added: String = members.iter().map(|m| format!(",{gap}{m}")).collect();
                    (last.value.1, last.value.1, added)
                }
                None => {
                    // `{}`: the members go inside, one indentation deeper than its line.
                    let outer = self.indent_of(text, object);
                    let replacement = if self.multiline {
                        let inner = format!("{outer}{}", self.unit);
                        let lines: Vec<String> = members.iter().map(|m| format!("\n{inner}{m}")).collect();
                        format!("{}\n{outer}", lines.join(","))
                    } else {
                        members.join(",")
                    };
                    (object.open + 1, object.close, replacement)
                }
            }
        }
    }

    fn skip_ws(text: &str, mut i: usize) -> usize {
        let bytes = text.as_bytes();
        while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The end of the JSON value starting at `at` (the text is valid JSON: checked first).
    fn value_end(text: &str, at: usize) -> Result<usize, String> {
        let bytes = text.as_bytes();
        let mut depth = 0usize;
        let mut i = at;
        loop {
            match bytes.get(i) {
                None => return Err("unexpected end of the file".into()),
                Some(b'"') => {
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => return Err("unterminated string".into()),
                            Some(b'\\') => i += 2,
                            Some(b'"') => break,
                            _ => i += 1,
                        }
                    }
                    i += 1;
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    i += 1;
                }
                Some(b'}' | b']') => {
                    if depth == 0 {
                        return Ok(i);
                    }
                    depth -= 1;
                    i += 1;
                }
                Some(b',') if depth == 0 => return Ok(i),
                Some(b' ' | b'\t' | b'\n' | b'\r') if depth == 0 => return Ok(i),
                Some(_) => i += 1,
            }
            if depth == 0 && i > at && matches!(bytes[at], b'"' | b'{' | b'[') {
                return Ok(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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

    /// Every byte but the new entries is kept: key order, indentation (tabs, two spaces,
    /// one line), keys this program does not know. (The writer before serialised the
    /// parsed value again: keys sorted, two-space indentation.)
    #[test]
    fn the_rest_of_config_json_is_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // (case, the file, what it must become)
        let cases = [
            (
                "docker's own layout, no credHelpers",
                "{\n\t\"auths\": {\n\t\t\"ghcr.io\": {\n\t\t\t\"auth\": \"eA==\"\n\t\t}\n\t},\n\t\"zUnknown\": [1, 2],\n\t\"psFormat\": \"table\"\n}",
                "{\n\t\"auths\": {\n\t\t\"ghcr.io\": {\n\t\t\t\"auth\": \"eA==\"\n\t\t}\n\t},\n\t\"zUnknown\": [1, 2],\n\t\"psFormat\": \"table\",\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\",\n\t\t\"registry.acme.com\": \"cloudsmith\"\n\t}\n}",
            ),
            (
                "two spaces, credHelpers present",
                "{\n  \"credHelpers\": {\n    \"gcr.io\": \"gcloud\"\n  },\n  \"aliases\": {\"builder\": \"buildx\"}\n}\n",
                "{\n  \"credHelpers\": {\n    \"gcr.io\": \"gcloud\",\n    \"docker.cloudsmith.io\": \"cloudsmith\",\n    \"registry.acme.com\": \"cloudsmith\"\n  },\n  \"aliases\": {\"builder\": \"buildx\"}\n}\n",
            ),
            (
                "one line, an entry for another helper",
                r#"{"credHelpers":{"registry.acme.com":"ecr-login","x":"y"},"credsStore":"desktop"}"#,
                r#"{"credHelpers":{"registry.acme.com":"cloudsmith","x":"y","docker.cloudsmith.io":"cloudsmith"},"credsStore":"desktop"}"#,
            ),
            (
                "an empty credHelpers",
                "{\n\t\"credHelpers\": {},\n\t\"k\": 1\n}",
                "{\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\",\n\t\t\"registry.acme.com\": \"cloudsmith\"\n\t},\n\t\"k\": 1\n}",
            ),
            (
                "an empty object",
                "{}\n",
                "{\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\",\n\t\t\"registry.acme.com\": \"cloudsmith\"\n\t}\n}\n",
            ),
        ];
        let mut wrong = Vec::new();
        for (case, before, after) in cases {
            std::fs::write(&path, before).unwrap();
            add_cred_helpers(
                &path,
                &[
                    "docker.cloudsmith.io",
                    "registry.acme.com",
                    "docker.cloudsmith.io",
                ],
            )
            .unwrap();
            let got = std::fs::read_to_string(&path).unwrap();
            if got != after {
                wrong.push(format!("{case}:\n got: {got:?}\nwant: {after:?}"));
            }
            // A second run changes nothing.
            add_cred_helpers(&path, &["registry.acme.com"]).unwrap();
            if std::fs::read_to_string(&path).unwrap() != got {
                wrong.push(format!("{case}: not idempotent"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// A symlinked config.json is followed and its target written, as docker/cli's
    /// `Save` does: the link stays a link, the target keeps its mode. (The writer before
    /// replaced the link with a regular file.)
    #[cfg(unix)]
    #[test]
    fn a_symlinked_config_is_written_through_the_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        let dotfiles = dir.path().join("dotfiles");
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::create_dir_all(&dotfiles).unwrap();
        let real = dotfiles.join("docker-config.json");
        std::fs::write(&real, "{\n\t\"auths\": {}\n}").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = docker.join("config.json");
        std::os::unix::fs::symlink("../dotfiles/docker-config.json", &link).unwrap();

        add_cred_helpers(&link, &["docker.cloudsmith.io"]).unwrap();
        assert!(
            std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
            "still a link"
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../dotfiles/docker-config.json")
        );
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "{\n\t\"auths\": {},\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\"\n\t}\n}"
        );
        assert_eq!(
            std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary file left beside the link or the target.
        assert_eq!(std::fs::read_dir(&docker).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&dotfiles).unwrap().count(), 1);

        // A dangling link: its target is created (0600), the link kept.
        std::fs::remove_file(&real).unwrap();
        add_cred_helpers(&link, &["docker.cloudsmith.io"]).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "{\n\t\"credHelpers\": {\n\t\t\"docker.cloudsmith.io\": \"cloudsmith\"\n\t}\n}"
        );
        assert_eq!(
            std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o600
        );
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
