//! Where the host keeps its caches, and how it creates their directories.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// `$XDG_CACHE_HOME/cloudsmith-gen`, else `~/.cache/cloudsmith-gen`: the root of the
/// compiled-component cache, the token cache and the component store. `None` without
/// either variable (a service account with no home).
pub fn cache_dir() -> Option<PathBuf> {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(non_empty)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(non_empty)
                .map(|h| h.join(".cache"))
        })
        .map(|base| base.join("cloudsmith-gen"))
}

/// Creates `dir` (and its parents) with mode 0700; `what` names it in errors.
pub fn create_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {what} {}", dir.display()))
}
