//! A token file, such as a projected service account token volume.

use std::path::{Path, PathBuf};

use super::{cleaned, TokenRequest, TokenSource, TokenSourceError};
use crate::secret::Secret;

/// A token is a few KiB; anything bigger is not a token file.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads the token from a file on every call, because the kubelet rotates projected
/// tokens in place. Surrounding whitespace is trimmed.
///
/// The file's audience is fixed by whoever wrote it (the volume projection), so the
/// requested audiences are not checked here; Cloudsmith checks them.
#[derive(Debug, Clone)]
pub struct FileTokenSource {
    path: PathBuf,
}

impl FileTokenSource {
    /// A source reading `path` at each call.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileTokenSource { path: path.into() }
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl TokenSource for FileTokenSource {
    async fn token(&self, _request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        let fail = |why: String| TokenSourceError::new(format!("token file {}: {why}", self.path.display()));
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(fail(format!("larger than {MAX_TOKEN_FILE_BYTES} bytes")));
        }
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
        cleaned(&text, || format!("token file {}", self.path.display()))
    }

    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }
}
