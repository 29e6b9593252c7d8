//! Finding the external programs the suites drive.
//!
//! Each tool comes from its environment variable if set, else from `PATH`
//! (`cloudsmith-gen`: else beside the running test executable). A missing tool
//! is a failure with a one-line hint, never a skip: a suite that silently
//! skips proves nothing.

use std::path::{Path, PathBuf};

/// How to get the tools installed, quoted in every "not found" message.
const INSTALL_HINT: &str = "run `bash scripts/test.sh`, which installs the tools";

/// `wasm-tools` (env `WASM_TOOLS`).
pub fn wasm_tools() -> PathBuf {
    find("WASM_TOOLS", "wasm-tools", INSTALL_HINT)
}

/// `wac` (env `WAC`).
pub fn wac() -> PathBuf {
    find("WAC", "wac", INSTALL_HINT)
}

/// `wasmtime` (env `WASMTIME`).
pub fn wasmtime() -> PathBuf {
    find("WASMTIME", "wasmtime", INSTALL_HINT)
}

/// `cargo-component` 0.21 (env `CARGO_COMPONENT`), the binary cargo runs for
/// `cargo component`.
pub fn cargo_component() -> PathBuf {
    find("CARGO_COMPONENT", "cargo-component", INSTALL_HINT)
}

/// `node` (env `NODE`).
pub fn node() -> PathBuf {
    find("NODE", "node", INSTALL_HINT)
}

/// `skopeo` (env `SKOPEO`): a real registry client that reads Docker's `credHelpers`.
pub fn skopeo() -> PathBuf {
    find("SKOPEO", "skopeo", INSTALL_HINT)
}

/// [`skopeo`] as a command that no auth file of the user's can answer for: Docker's and
/// containers' auth-file variables removed, and `HOME` and the XDG directories under
/// `home`, where containers-auth.json(5) and `~/.docker/config.json` are looked for.
pub fn skopeo_in(home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(skopeo());
    command
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"));
    command
}

/// `wkg` (env `WKG`): wasm-pkg-tools' CLI, a Wasm OCI client no one here wrote
/// (`cargo install --locked wkg`, which scripts/tools.sh runs).
pub fn wkg() -> PathBuf {
    find("WKG", "wkg", INSTALL_HINT)
}

/// `docker-registry` (env `DOCKER_REGISTRY`): Debian's CNCF distribution registry.
pub fn docker_registry() -> PathBuf {
    find("DOCKER_REGISTRY", "docker-registry", INSTALL_HINT)
}

/// `kubectl` (env `KUBECTL`, else `PATH`): at least 1.27, whose kustomize knows
/// `labels:`. scripts/test.sh picks the machine's when it is new enough, else builds
/// `k8s.io/kubernetes/cmd/kubectl` into the harness (docs/real-clients.md).
pub fn kubectl() -> PathBuf {
    find("KUBECTL", "kubectl", INSTALL_HINT)
}

/// A Go program of the harness (`harness/`): a real binary built from its module
/// (`etcd`'s `server`, `kube-apiserver`, `helm`, ...) or one of `harness/cmd/`, found in
/// env `HARNESS_BIN`, else in `target/harness/bin` (where scripts/harness.sh builds them).
/// Missing: a panic saying how to build them, never a skip.
pub fn harness_bin(name: &str) -> PathBuf {
    let dir = from_env("HARNESS_BIN").unwrap_or_else(|| crate::workspace_root().join("target/harness/bin"));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !is_executable(&path) {
        panic!(
            "{name} not found in {} (HARNESS_BIN): run `bash scripts/test.sh`, which builds the Go \
             harness (or `source scripts/harness.sh` alone)",
            dir.display()
        );
    }
    path
}

/// `htpasswd` (env `HTPASSWD`, Debian package `apache2-utils`).
pub fn htpasswd() -> PathBuf {
    find("HTPASSWD", "htpasswd", INSTALL_HINT)
}

/// The `cloudsmith-gen` CLI (env `CLOUDSMITH_GEN`), else the one cargo built
/// beside the running test executable (`target/<profile>/cloudsmith-gen`).
pub fn cloudsmith_gen() -> PathBuf {
    built("CLOUDSMITH_GEN", "cloudsmith-gen")
}

/// The lean Docker credential helper (env `DOCKER_CREDENTIAL_CLOUDSMITH`), else the one
/// cargo built beside the running test executable. It needs `cloudsmith-gen` in its own
/// directory for everything but a cache hit.
pub fn docker_credential_cloudsmith() -> PathBuf {
    built("DOCKER_CREDENTIAL_CLOUDSMITH", "docker-credential-cloudsmith")
}

/// A binary of host-example: `var`, else `name` beside the running test executable.
fn built(var: &str, name: &str) -> PathBuf {
    if let Some(path) = from_env(var) {
        return path;
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| profile_dir(&exe))
        .map(|dir| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)));
    match beside {
        Some(path) if path.is_file() => path,
        other => panic!(
            "{name} not found (looked at {}); build it with `cargo build -p cloudsmith-gen` \
             or set {var}",
            other.map_or_else(|| var.to_string(), |p| p.display().to_string())
        ),
    }
}

/// `target/<profile>` for a test executable at `target/<profile>/deps/x-hash`
/// (or a binary directly in `target/<profile>`).
fn profile_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn find(var: &str, name: &str, hint: &str) -> PathBuf {
    if let Some(path) = from_env(var) {
        return path;
    }
    which(name).unwrap_or_else(|| panic!("{name} not found on PATH and {var} is not set: {hint}"))
}

/// The first executable file named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_a_test_executable_is_its_target_profile() {
        assert_eq!(
            profile_dir(Path::new("/w/target/debug/deps/cli-0123abcd")),
            Some(PathBuf::from("/w/target/debug"))
        );
        assert_eq!(
            profile_dir(Path::new("/w/target/release/cloudsmith-gen")),
            Some(PathBuf::from("/w/target/release"))
        );
    }

    #[test]
    fn which_finds_a_shell_and_not_a_made_up_name() {
        assert!(which("sh").is_some());
        assert!(which("testkit-no-such-tool-0f3a").is_none());
    }
}
