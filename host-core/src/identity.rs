//! Who a token source speaks for, read locally: the token cache's key names the identity,
//! never the token (it rotates, and a key derived from it would put a function of a
//! secret in a file name).

use std::path::Path;

use crate::jwt::Claims;

/// The largest token file read for its identity.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A token file's identity: its path and the claims of the token it holds now, so a
/// rotated token for the same account keys the same entry, and another account's another.
pub fn file(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_TOKEN_FILE_BYTES {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let claims = Claims::read(&text)?.identity()?;
    Some(format!("file {}|{claims}", path.display()))
}

/// A token variable's identity: its name and the claims of the token it holds.
pub fn env(var: &str) -> Option<String> {
    let claims = Claims::read(&std::env::var(var).ok()?)?.identity()?;
    Some(format!("env {var}|{claims}"))
}

/// The identity of a token the kubelet passed: its claims.
pub fn kubelet_token(token: &str) -> Option<String> {
    Claims::read(token)
        .and_then(|c| c.identity())
        .map(|id| format!("kubelet service account token|{id}"))
}
