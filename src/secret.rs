//! A token that cannot leak through formatting.

use alloc::string::String;
use core::fmt;

/// Holds an OIDC or access token. `Debug` and `Display` print `[redacted]`,
/// so a token inside any struct or error stays out of logs; reading it takes
/// an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The token itself, for the one place that must send or encode it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("eyJhbGciOi.secret.sig".into());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "eyJhbGciOi.secret.sig");
    }
}
