//! Writing a file whole or not at all: the one way the host writes its files (cache
//! entries, the component store, the kubelet provider's binary and configuration,
//! Docker's `config.json`).
//!
//! The bytes go to a temporary file beside the target, created with `O_CREAT | O_EXCL`
//! under a random name (so it follows no link an attacker planted, and is 0600 from its
//! first moment), are synced, given their mode, and renamed over the target: a reader
//! sees the old file or the whole new one, never half of one, and a file of secrets is
//! never readable by others, not even between create and rename. The rename replaces a
//! link at the target rather than writing through it.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// How the target's directory comes to be.
#[derive(Debug, Clone, Copy)]
pub enum Dir<'a> {
    /// It exists: the caller made (and checked) it.
    Exists,
    /// Created with its parents when missing, as the umask says (an install target).
    Create,
    /// Created 0700 with its parents when missing (a cache); named so in errors.
    Private(&'a str),
}

/// The written file's mode.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// 0600: a private entry.
    Private,
    /// This mode (an executable, a world-readable configuration).
    Exactly(u32),
    /// The mode (and, when the target's owner is not root, the owner) of the file at this
    /// path, 0600 when there is none: replacing a user's file keeps it theirs. Errors are
    /// ignored, as docker/cli's `copyFilePermissions` does (v29.7.2,
    /// `cli/config/configfile/file_unix.go`).
    Like(&'a Path),
}

/// How [`Atomic::write`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Atomic<'a> {
    /// The target's directory.
    pub dir: Dir<'a>,
    /// The target's mode.
    pub mode: Mode<'a>,
    /// The temporary file's name begins so (tools that list the directory can skip it).
    pub prefix: &'a str,
}

impl<'a> Atomic<'a> {
    /// A cache entry: 0600, in a 0700 directory created when missing, named `what` in
    /// errors.
    pub fn private(what: &'a str) -> Self {
        Atomic {
            dir: Dir::Private(what),
            mode: Mode::Private,
            prefix: ".tmp",
        }
    }

    /// Writes `parts`, one after the other, as the whole content of `path`.
    pub fn write(&self, path: &Path, parts: &[&[u8]]) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        match self.dir {
            Dir::Exists => {}
            Dir::Create => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?
            }
            Dir::Private(what) => crate::dirs::create_private_dir(dir, what)?,
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(self.prefix)
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        for part in parts {
            tmp.write_all(part)
                .with_context(|| format!("writing {}", tmp.path().display()))?;
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        set_mode(tmp.path(), self.mode)?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(unix)]
fn set_mode(file: &Path, mode: Mode) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let set = |mode: u32| {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", file.display()))
    };
    match mode {
        Mode::Private => Ok(()),
        Mode::Exactly(mode) => set(mode),
        Mode::Like(other) => {
            let meta = std::fs::metadata(other).ok().filter(|m| m.is_file());
            set(meta.as_ref().map_or(0o600, |m| m.mode() & 0o7777))?;
            // Only root may give a file away; anyone else keeps it as theirs.
            if let Some(meta) = meta.filter(|m| m.uid() > 0 && m.gid() > 0) {
                let _ = std::os::unix::fs::chown(file, Some(meta.uid()), Some(meta.gid()));
            }
            Ok(())
        }
    }
}

#[cfg(not(unix))]
fn set_mode(_file: &Path, _mode: Mode) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn each_rule_gives_its_directory_mode_and_content() {
        let root = tempfile::tempdir().unwrap();
        let like = root.path().join("like");
        std::fs::write(&like, "old").unwrap();
        std::fs::set_permissions(&like, std::fs::Permissions::from_mode(0o640)).unwrap();
        // (case, directory rule, mode rule, the file's mode, the directory's mode)
        let cases: [(&str, Dir, Mode, u32, Option<u32>); 5] = [
            (
                "private",
                Dir::Private("cache"),
                Mode::Private,
                0o600,
                Some(0o700),
            ),
            ("install", Dir::Create, Mode::Exactly(0o755), 0o755, None),
            ("like another", Dir::Create, Mode::Like(&like), 0o640, None),
            (
                "like none",
                Dir::Create,
                Mode::Like(Path::new("/nonexistent")),
                0o600,
                None,
            ),
            ("exists", Dir::Exists, Mode::Exactly(0o644), 0o644, None),
        ];
        let mut wrong = Vec::new();
        for (case, dir, file_mode, want_file, want_dir) in cases {
            let parent = root.path().join(case).join("sub");
            if matches!(dir, Dir::Exists) {
                std::fs::create_dir_all(&parent).unwrap();
            }
            let path = parent.join("file");
            let write = Atomic {
                dir,
                mode: file_mode,
                prefix: ".t",
            };
            write.write(&path, &[b"a", b"bc"]).unwrap();
            let got = (
                std::fs::read_to_string(&path).unwrap(),
                mode(&path),
                want_dir.map(|_| mode(&parent)),
                std::fs::read_dir(&parent).unwrap().count(),
            );
            if got != ("abc".to_string(), want_file, want_dir, 1) {
                wrong.push(format!("{case}: {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn a_link_at_the_target_is_replaced_not_written_through() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, "theirs").unwrap();
        let path = root.path().join("entry");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        Atomic::private("cache").write(&path, &[b"ours"]).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "theirs");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ours");
    }

    #[test]
    fn a_directory_that_is_a_file_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = Atomic::private("token cache directory")
            .write(&file.join("entry"), &[b"x"])
            .unwrap_err();
        assert!(format!("{e:#}").contains("token cache directory"), "{e:#}");
    }
}
